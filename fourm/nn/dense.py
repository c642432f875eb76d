"""A dense layer over named axes, and the reference's initializers.

Shared by the 4M transformer (`fourm/models`) and the VQ-VAE tokenizers
(`tokenizers_vq`): the kernel keeps every input and output axis (heads apart from
per-head features, say) so that a logical-axis rule can shard any one of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fourm.nn import sharding


def uniform_init(bound: float):
  """U(-bound, bound): the reference's xavier_uniform with explicit fans (see below)."""
  def init(key, shape, dtype):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def xavier_bound(fan_in: int, fan_out: int) -> float:
  # The reference initializes every Linear with xavier_uniform, treating the q, k, v
  # (or k, v) blocks of a fused projection as separate matrices: fan_out = D, not 3*D.
  return math.sqrt(6.0 / (fan_in + fan_out))


def normal_init(std: float):
  def init(key, shape, dtype):
    return std * jax.random.normal(key, shape, dtype)
  return init


def zeros_init(key, shape, dtype):
  del key
  return jnp.zeros(shape, dtype)


class Dense(nnx.Module):
  """x @ kernel over x's trailing `in_shape` axes, producing `out_shape` axes."""

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], *,
               logical_axes: Sequence[str | None], use_bias: bool = False,
               fused: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
    self.dtype = dtype
    fan_in = math.prod(self.in_shape)
    # fused: out_shape[0] stacks separate matrices (the 3 of qkv, the 2 of kv), which
    # the reference initializes one by one, so it does not count toward fan-out.
    fan_out = math.prod(self.out_shape[1:] if fused else self.out_shape)
    self.kernel = sharding.param(
        uniform_init(xavier_bound(fan_in, fan_out)), rngs.params(),
        self.in_shape + self.out_shape, param_dtype, logical_axes)
    if use_bias:
      out_axes = tuple(logical_axes)[len(self.in_shape):]
      self.bias = sharding.param(zeros_init, rngs.params(), self.out_shape, param_dtype,
                                 out_axes)
    else:
      self.bias = None

  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_shape)
    leading = x.shape[:x.ndim - n_in]
    # One flat token axis: XLA:CPU computes the weight gradient of a dot that
    # contracts [B, T] about twice as slowly as one contracting [B*T] (GPU/TPU don't
    # mind). Merging a batch-sharded axis with the one after it keeps the sharding.
    x = x.reshape((-1,) + self.in_shape).astype(self.dtype)
    contract = (tuple(range(1, n_in + 1)), tuple(range(n_in)))
    y = jax.lax.dot_general(x, self.kernel[...].astype(self.dtype), (contract, ((), ())))
    y = y.reshape(leading + self.out_shape)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y
