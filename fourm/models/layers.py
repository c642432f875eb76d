"""The layers of a 4M transformer block: bias-free LayerNorm, attention, SwiGLU.

Parameter layout mirrors the reference PyTorch model (apple/ml-4m, fm_utils.py) so a
checkpoint converts by transposing and reshaping only:

  reference (torch, [out, in])            here
  attn.qkv.weight   [3*D, D]              attn.qkv.kernel    [D, 3, H, Dh]
  attn.proj.weight  [D, D]                attn.proj.kernel   [H, Dh, D]
  cross_attn.q      [D, D]                cross_attn.q.kernel  [D, H, Dh]
  cross_attn.kv     [2*D, D]              cross_attn.kv.kernel [D, 2, H, Dh]
  mlp.fc1 / fc3     [F, D]                mlp.fc1 / fc3.kernel [D, F]
  mlp.fc2           [D, F]                mlp.fc2.kernel     [F, D]
  normX.weight      [D]                   normX.scale        [D]

(The torch fused axis 3*D is (3, H, Dh) row-major, exactly as the reference reshapes it.)
Weights keep heads as their own axis so tensor parallelism splits whole heads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fourm.nn import sharding
from fourm.nn.dense import Dense


class LayerNorm(nnx.Module):
  """LayerNorm with a scale and no bias (the reference's `LayerNorm(bias=False)`).

  Statistics are taken in float32 whatever the compute dtype, as torch autocast does.
  """

  def __init__(self, dim: int, *, eps: float = 1e-6, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    del rngs  # the scale starts at one
    self.eps, self.dtype = eps, dtype
    self.scale = sharding.param(lambda k, s, d: jnp.ones(s, d), None, (dim,), param_dtype,
                                ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
    return y.astype(self.dtype)


def attend(q, k, v, mask, implementation=None):
  """Multi-head attention over [B, T, H, Dh] with a boolean mask [B, 1, T|1, S]."""
  # cuDNN's kernel takes no mask broadcast over queries: spell out [B, 1, T, S].
  mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
  q = sharding.constrain(q, ("act_batch", "act_len", "act_heads", "act_kv"))
  k = sharding.constrain(k, ("act_batch", "act_len", "act_heads", "act_kv"))
  v = sharding.constrain(v, ("act_batch", "act_len", "act_heads", "act_kv"))
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
  return sharding.constrain(out, ("act_batch", "act_len", "act_heads", "act_kv"))


class Attention(nnx.Module):
  """Self-attention with a fused, bias-free qkv projection and a bias-free output."""

  def __init__(self, dim: int, num_heads: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, attention_impl: str | None = None, rngs: nnx.Rngs):
    head_dim = dim // num_heads
    self.attention_impl = attention_impl
    self.qkv = Dense((dim,), (3, num_heads, head_dim),
                     logical_axes=("embed", None, "heads", "kv"), fused=True,
                     dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.proj = Dense((num_heads, head_dim), (dim,), logical_axes=("heads", "kv", "embed"),
                      dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    qkv = self.qkv(x)  # [B, T, 3, H, Dh]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    return self.proj(attend(q, k, v, mask, self.attention_impl))


class CrossAttention(nnx.Module):
  """Attention from queries x to a context, with separate q and fused kv projections."""

  def __init__(self, dim: int, num_heads: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, attention_impl: str | None = None, rngs: nnx.Rngs):
    head_dim = dim // num_heads
    self.attention_impl = attention_impl
    self.q = Dense((dim,), (num_heads, head_dim), logical_axes=("embed", "heads", "kv"),
                   dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.kv = Dense((dim,), (2, num_heads, head_dim),
                    logical_axes=("embed", None, "heads", "kv"), fused=True,
                    dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.proj = Dense((num_heads, head_dim), (dim,), logical_axes=("heads", "kv", "embed"),
                      dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array) -> jax.Array:
    q = self.q(x)
    kv = self.kv(context)  # [B, S, 2, H, Dh]
    return self.proj(attend(q, kv[:, :, 0], kv[:, :, 1], mask, self.attention_impl))


def swiglu_hidden_dim(dim: int, mlp_ratio: float) -> int:
  # The reference's GatedMlp shrinks the hidden width by 2/3 to pay for the extra matmul.
  return int(2 * int(dim * mlp_ratio) / 3)


class GatedMlp(nnx.Module):
  """SwiGLU feed-forward, bias-free: fc2(silu(fc1(x)) * fc3(x)), named as the reference."""

  def __init__(self, dim: int, mlp_ratio: float, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    hidden = swiglu_hidden_dim(dim, mlp_ratio)
    self.fc1 = Dense((dim,), (hidden,), logical_axes=("embed", "mlp"), dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)
    self.fc3 = Dense((dim,), (hidden,), logical_axes=("embed", "mlp"), dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)
    self.fc2 = Dense((hidden,), (dim,), logical_axes=("mlp", "embed"), dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    gated = jax.nn.silu(self.fc1(x)) * self.fc3(x)
    gated = sharding.constrain(gated, ("act_batch", "act_len", "act_mlp"))
    return self.fc2(gated)
