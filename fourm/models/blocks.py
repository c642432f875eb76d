"""Pre-norm transformer blocks of the 4M encoder and decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fourm.nn import sharding
from fourm.models.layers import Attention, CrossAttention, GatedMlp, LayerNorm

_RESIDUAL_AXES = ("act_batch", "act_len", "act_embed")


class EncoderBlock(nnx.Module):
  """x + attn(norm1(x)), then + mlp(norm2(x))."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, eps: float = 1e-6,
               dtype=jnp.float32, param_dtype=jnp.float32,
               attention_impl: str | None = None, rngs: nnx.Rngs):
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = LayerNorm(dim, eps=eps, **common)
    self.attn = Attention(dim, num_heads, attention_impl=attention_impl, **common)
    self.norm2 = LayerNorm(dim, eps=eps, **common)
    self.mlp = GatedMlp(dim, mlp_ratio, **common)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x), mask)
    x = sharding.constrain(x, _RESIDUAL_AXES)
    x = x + self.mlp(self.norm2(x))
    return sharding.constrain(x, _RESIDUAL_AXES)


class DecoderBlock(nnx.Module):
  """Self-attention, cross-attention to the encoder context, then the MLP; 4 norms.

  The context gets its own norm in every block (`context_norm`), as in the reference.
  """

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, eps: float = 1e-6,
               dtype=jnp.float32, param_dtype=jnp.float32,
               attention_impl: str | None = None, rngs: nnx.Rngs):
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = LayerNorm(dim, eps=eps, **common)
    self.self_attn = Attention(dim, num_heads, attention_impl=attention_impl, **common)
    self.query_norm = LayerNorm(dim, eps=eps, **common)
    self.context_norm = LayerNorm(dim, eps=eps, **common)
    self.cross_attn = CrossAttention(dim, num_heads, attention_impl=attention_impl, **common)
    self.norm2 = LayerNorm(dim, eps=eps, **common)
    self.mlp = GatedMlp(dim, mlp_ratio, **common)

  def __call__(self, y: jax.Array, context: jax.Array, self_mask: jax.Array,
               cross_mask: jax.Array) -> jax.Array:
    y = y + self.self_attn(self.norm1(y), self_mask)
    y = sharding.constrain(y, _RESIDUAL_AXES)
    y = y + self.cross_attn(self.query_norm(y), self.context_norm(context), cross_mask)
    y = sharding.constrain(y, _RESIDUAL_AXES)
    y = y + self.mlp(self.norm2(y))
    return sharding.constrain(y, _RESIDUAL_AXES)
