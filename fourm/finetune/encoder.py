"""The 4M encoder as fine-tuning uses it: rgb pixels in, a grid of features out.

Transfer keeps the pre-trained encoder and discards the decoder (4M, section 4). The
modules here are the FourM's own (its rgb patch embedding, encoder blocks and final
norm), moved out of the model, not re-implemented, so a checkpoint's encoder weights load
into them unchanged and any change to the encoder reaches fine-tuning by construction.

Two things fine-tuning adds on top:
  - any resolution that is a multiple of the patch size: the 2-D sin-cos positions are
    recomputed for the new grid (they are fixed, not learned, so this loses nothing; the
    reference fine-tunes at higher resolutions the same way);
  - stochastic depth ("drop path"), linearly increasing with depth as in DeiT / BEiT
    fine-tuning. A dropped block skips its whole residual update for that sample (the
    two branches of a block drop together): the block is the FourM's and stays
    unchanged, and at the rates used (0.1-0.2) this regularizes as per-branch dropping.

`EncoderOutput.layers` holds the outputs of chosen blocks (before the final norm), which
the dense heads (DPT, the feature pyramid) read; `tokens` is the normed last layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fourm import modalities
from fourm.errors import UsageError
from fourm.models.embeddings import PatchEncoderEmbedding
from fourm.models.fourm import FourM
from fourm.nn.positions import sincos_2d

RGB = "rgb"


@dataclasses.dataclass
class EncoderOutput:
  tokens: jax.Array          # [B, G, G, D] after the final norm
  layers: list[jax.Array]    # [B, G, G, D] per block of `layer_indices`, before the norm
  resolution: int            # of the input image: where dense heads bring their outputs


def evenly_spaced_layers(depth: int, count: int = 4) -> tuple[int, ...]:
  """The blocks DPT-style heads read: the last of each of `count` equal stages (for 12
  blocks, 2, 5, 8, 11 as DPT/ViT-B uses). An encoder of fewer blocks repeats some (a
  1-block encoder gives its one block four times)."""
  return tuple(max(depth * (k + 1) // count - 1, 0) for k in range(count))


class RGBEncoder(nnx.Module):
  """Pixels [B, R, R, 3] (normalized as in pre-training) -> `EncoderOutput`."""

  def __init__(self, model: FourM, *, resolution: int | None = None, drop_path: float = 0.0,
               layer_indices: Sequence[int] | None = None, rngs: nnx.Rngs):
    if RGB not in model.input_names:
      raise UsageError(f"the checkpoint's model has no rgb pixel input (its inputs: "
                       f"{list(model.input_names)}); fine-tuning reads rgb images")
    embedding = model.encoder_embeddings[RGB]
    if not isinstance(embedding, PatchEncoderEmbedding):
      raise UsageError(f"the checkpoint's rgb input is {type(embedding).__name__}, not "
                       "pixels; fine-tuning needs an rgb patch embedding")
    patch = model.layout.patch_size
    resolution = resolution or model.layout.resolution
    if resolution % patch:
      raise UsageError(f"resolution {resolution} is not a multiple of the model's patch "
                       f"size {patch}")
    self.layout = modalities.Layout(resolution=resolution, patch_size=patch)
    self.dim = model.config.dim
    embedding.layout = self.layout  # patchify at the fine-tuning grid
    self.patch_embedding = embedding
    self.blocks = model.encoder
    self.norm = model.encoder_norm
    depth = len(self.blocks)
    self.layer_indices = tuple(layer_indices if layer_indices is not None
                               else evenly_spaced_layers(depth))
    if any(not 0 <= i < depth for i in self.layer_indices):
      raise UsageError(f"layer_indices {self.layer_indices} outside the encoder's {depth} "
                       "blocks")
    self.drop_rates = tuple(float(drop_path) * i / max(depth - 1, 1) for i in range(depth))
    self.rngs = rngs
    self.deterministic = False

  @property
  def grid(self) -> int:
    return self.layout.grid

  def positions(self) -> jax.Array:
    """Fixed 2-D positions at this grid plus the rgb modality embedding: [G*G, D]."""
    fixed = jnp.asarray(sincos_2d(self.grid, self.dim))
    return (fixed + self.patch_embedding.mod_emb[...]).astype(self.patch_embedding.dtype)

  def embed(self, pixels: jax.Array) -> jax.Array:
    """[B, R, R, 3] -> patch tokens with positions, [B, G*G, D]."""
    if pixels.ndim != 4 or pixels.shape[1:] != (self.layout.resolution,) * 2 + (3,):
      raise UsageError(f"expected pixels [B, {self.layout.resolution}, "
                       f"{self.layout.resolution}, 3], got {list(pixels.shape)}")
    return self.patch_embedding({"tokens": pixels}) + self.positions()

  def run_blocks(self, x: jax.Array, *, prompts=None) -> tuple[jax.Array, list[jax.Array]]:
    """The encoder blocks over tokens [B, N, D]; returns the last output and those of
    `layer_indices`. `prompts` (visual prompt tuning) may add tokens per block."""
    batch, num_patches = x.shape[0], x.shape[1]
    kept = {}
    for index, block in enumerate(self.blocks):
      if prompts is not None:
        x = prompts.insert(x, index)
      mask = jnp.ones((batch, 1, 1, x.shape[1]), bool)
      update = block(x, mask) - x
      x = x + self._drop_path(update, self.drop_rates[index])
      if prompts is not None:
        x = prompts.remove(x, index)
      if index in self.layer_indices:
        kept[index] = x[:, x.shape[1] - num_patches:]
    return x, [kept[index] for index in self.layer_indices]

  def __call__(self, pixels: jax.Array, *, prompts=None) -> EncoderOutput:
    x, layers = self.run_blocks(self.embed(pixels), prompts=prompts)
    x = x[:, x.shape[1] - self.grid * self.grid:]
    as_grid = lambda t: t.reshape(t.shape[0], self.grid, self.grid, t.shape[-1])  # noqa: E731
    return EncoderOutput(tokens=as_grid(self.norm(x)), layers=[as_grid(t) for t in layers],
                         resolution=self.layout.resolution)

  def _drop_path(self, update: jax.Array, rate: float) -> jax.Array:
    if self.deterministic or rate == 0.0:
      return update
    keep = 1.0 - rate
    kept = jax.random.bernoulli(self.rngs.dropout(), keep, (update.shape[0], 1, 1))
    return update * kept.astype(update.dtype) / keep
