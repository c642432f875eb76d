"""A DETR-style set-prediction head on the 4M encoder (Carion et al. 2020).

Q learned object queries attend to each other and, through cross-attention, to the
encoder's feature grid, in blocks that are the 4M decoder's own (`DecoderBlock`: self-
attention, cross-attention, SwiGLU MLP, pre-norm). After every block a shared norm and
two shared predictors give class logits over `num_classes` + "no object" and a box
(cx, cy, w, h) in [0, 1] from a 3-layer MLP and a sigmoid; the outputs of the blocks
before the last are DETR's auxiliary predictions, each matched and scored by the set
loss (`fourm/finetune/set_loss.py`).

The grid's 2-D sin-cos positions are added to the memory the queries read (DETR adds them
to the keys of every cross-attention; adding them once to the memory is what the 4M
decoder does with its context, and keeps the block unchanged).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from fourm.finetune.encoder import EncoderOutput
from fourm.models.blocks import DecoderBlock
from fourm.nn.positions import sincos_2d


@flax.struct.dataclass
class Detections:
  logits: jax.Array              # [B, Q, num_classes + 1], last = no object
  boxes: jax.Array               # [B, Q, 4], (cx, cy, w, h) in [0, 1]
  auxiliary: list[tuple[jax.Array, jax.Array]]  # (logits, boxes) of the earlier blocks


class DetectionHead(nnx.Module):

  def __init__(self, dim: int, num_classes: int, *, num_queries: int = 100, depth: int = 6,
               num_heads: int = 8, mlp_ratio: float = 4.0, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"detection head: num_heads {num_heads} does not divide dim {dim}")
    self.num_classes = num_classes
    self.queries = nnx.Param(jax.random.normal(rngs.params(), (num_queries, dim)) * 0.02)
    self.memory_norm = nnx.LayerNorm(dim, rngs=rngs)
    self.blocks = nnx.List([DecoderBlock(dim, num_heads, mlp_ratio, rngs=rngs)
                            for _ in range(depth)])
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.classify = nnx.Linear(dim, num_classes + 1, rngs=rngs)
    self.box_mlp = nnx.List([nnx.Linear(dim, dim, rngs=rngs), nnx.Linear(dim, dim, rngs=rngs),
                             nnx.Linear(dim, 4, rngs=rngs)])

  def __call__(self, features: EncoderOutput) -> Detections:
    grid = features.tokens
    batch, size, dim = grid.shape[0], grid.shape[1], grid.shape[-1]
    memory = grid.reshape(batch, size * size, dim) + jnp.asarray(sincos_2d(size, dim))
    memory = self.memory_norm(memory)
    y = jnp.broadcast_to(self.queries[...], (batch,) + self.queries.shape)
    every_query = jnp.ones((batch, 1, y.shape[1], y.shape[1]), bool)
    every_cell = jnp.ones((batch, 1, 1, memory.shape[1]), bool)
    outputs = []
    for block in self.blocks:
      y = block(y, memory, every_query, every_cell)
      outputs.append(self._predict(self.norm(y)))
    (logits, boxes), auxiliary = outputs[-1], outputs[:-1]
    return Detections(logits=logits, boxes=boxes, auxiliary=auxiliary)

  def _predict(self, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    hidden = y
    for layer in self.box_mlp[:-1]:
      hidden = jax.nn.relu(layer(hidden))
    return self.classify(y), jax.nn.sigmoid(self.box_mlp[-1](hidden))
