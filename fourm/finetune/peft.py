"""Parameter-efficient tuning of the 4M encoder: LoRA and visual prompt tuning.

LoRA (Hu et al. 2021) adds to a frozen projection W a low-rank update (alpha / r) * x A B,
A [in, r] random and B [r, out] zero, so training starts from the pre-trained function
exactly. Here it wraps the encoder's attention (qkv, output) and SwiGLU (fc1, fc2, fc3)
projections in place; W itself is never updated.

Visual prompt tuning (VPT, Jia et al. 2022) prepends P learned tokens to the patch tokens:
"shallow" once, before the first block, kept through the encoder; "deep" a fresh set
before every block, dropped after it. The patch tokens are what the heads read.

The adapters' weights are variables of their own types (`LoRAParam`, `PromptParam`, both
`nnx.Param`s), which is what `trainable_filter` selects by: a tuning mode names what is
trained, everything else is frozen, and the optimizer never sees it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fourm.errors import UsageError
from fourm.nn.dense import Dense

# The encoder projections LoRA wraps, as attribute paths inside an EncoderBlock.
LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "mlp.fc3")
TUNING_MODES = ("full", "lora", "vpt", "linear")


class LoRAParam(nnx.Param):
  """A low-rank adapter weight: trained while the projection it adapts is frozen."""


class PromptParam(nnx.Param):
  """Learned prompt tokens of visual prompt tuning."""


class LoRADense(nnx.Module):
  """`base(x) + (alpha / rank) * x A B` for one of the encoder's `Dense` projections."""

  def __init__(self, base: Dense, *, rank: int, alpha: float, rngs: nnx.Rngs):
    fan_in, fan_out = math.prod(base.in_shape), math.prod(base.out_shape)
    self.base, self.scale = base, alpha / rank
    # A as LoRA's reference code draws it (Kaiming-uniform over the input), B zero.
    bound = 1.0 / math.sqrt(fan_in)
    self.down = LoRAParam(jax.random.uniform(rngs.params(), (fan_in, rank), jnp.float32,
                                             -bound, bound))
    self.up = LoRAParam(jnp.zeros((rank, fan_out), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    base = self.base
    leading = x.shape[:x.ndim - len(base.in_shape)]
    flat = x.reshape(-1, self.down.shape[0]).astype(base.dtype)
    delta = (flat @ self.down[...].astype(base.dtype)) @ self.up[...].astype(base.dtype)
    return base(x) + (self.scale * delta).reshape(leading + base.out_shape)


def add_lora(blocks: Sequence[nnx.Module], *, rank: int = 8, alpha: float = 16.0,
             targets: Sequence[str] = LORA_TARGETS, rngs: nnx.Rngs) -> int:
  """Wraps `targets` in every block with LoRA, in place; returns how many were wrapped."""
  wrapped = 0
  for block in blocks:
    for target in targets:
      *parents, name = target.split(".")
      owner = block
      for parent in parents:
        owner = getattr(owner, parent, None)
      layer = getattr(owner, name, None)
      if not isinstance(layer, Dense):
        raise UsageError(f"LoRA target {target!r} is not a projection of the encoder block "
                         f"({type(layer).__name__}); targets: {', '.join(LORA_TARGETS)}")
      setattr(owner, name, LoRADense(layer, rank=rank, alpha=alpha, rngs=rngs))
      wrapped += 1
  return wrapped


class VisualPrompts(nnx.Module):
  """P prompt tokens for an encoder of `depth` blocks; `deep` gives each block its own."""

  def __init__(self, dim: int, num_tokens: int, depth: int, *, deep: bool = False,
               rngs: nnx.Rngs):
    self.num_tokens, self.depth, self.deep = num_tokens, depth, deep
    # VPT draws prompts uniformly with Xavier's bound over (patch features, dim); the
    # patch-embedding fan-in is unknown here, so the bound uses dim on both sides.
    bound = math.sqrt(6.0 / (dim + dim))
    self.tokens = PromptParam(jax.random.uniform(
        rngs.params(), (depth if deep else 1, num_tokens, dim), jnp.float32, -bound, bound))

  def insert(self, x: jax.Array, block: int) -> jax.Array:
    """Before `block`: prepends the prompts it reads."""
    if not self.deep and block > 0:
      return x
    prompts = self.tokens[block if self.deep else 0].astype(x.dtype)
    return jnp.concatenate([jnp.broadcast_to(prompts, (x.shape[0],) + prompts.shape), x], 1)

  def remove(self, x: jax.Array, block: int) -> jax.Array:
    """After `block`: drops the prompts that were only for it (deep: each block's; shallow:
    all of them after the last block)."""
    if self.deep or block == self.depth - 1:
      return x[:, self.num_tokens:]
    return x


def trainable_filter(mode: str):
  """What a tuning mode trains: `full` everything; `lora` the adapters and the head; `vpt`
  the prompts and the head; `linear` the head alone (a linear probe of frozen features)."""
  head = nnx.All(nnx.Param, nnx.PathContains("head"))
  filters = {"full": nnx.Param, "lora": nnx.Any(LoRAParam, head),
             "vpt": nnx.Any(PromptParam, head), "linear": head}
  if mode not in filters:
    raise UsageError(f"tuning mode {mode!r}; choose one of {', '.join(TUNING_MODES)}")
  return filters[mode]


def count_params(module: nnx.Module, which=nnx.Param) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, which)))
