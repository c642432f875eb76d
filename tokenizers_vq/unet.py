"""The DiVAE's denoiser: a conditional UNet over patched pixels (Flax NNX).

    x_t [B, R, R, C] --fold P x P patches--> [B, R/P, R/P, C*P*P]
    codes [B, G, G, d] --nearest upsample--> [B, R/P, R/P, d]      } concatenated
                          UNet(., t) -> [B, R/P, R/P, C*P*P] --unfold--> [B, R, R, C]

The UNet is the classic diffusion one (Ho et al. 2020; Dhariwal & Nichol 2021) that the
reference's `PatchedUNetCondCat` (apple/ml-4m fourm/vq/models/unet/unet.py, after
Pernias et al., arXiv 2207.04316) builds: a 3x3 input conv, then per level
`num_res_blocks` residual blocks (GroupNorm, SiLU, conv; the timestep embedding added
between the two convs; the second conv zero-initialised) and a strided-conv downsampling,
a middle of block / attention / block, and the mirror image on the way up with one more
block per level, each reading the matching skip activation concatenated. Kernels start
as torch's default U(+-1/sqrt(fan_in)), biases at zero. Self-attention
(one residual GroupNorm + attention layer after each block) runs at the
`attention_levels` smallest levels, where few positions make it cheap. The output conv is
zero-initialised, so an untrained UNet predicts 0.

Sizes come from the caller (a `DiffusionConfig`): `UNet(width=32, norm_groups=8, ...)`
compiles and trains on a CPU in seconds; the reference's is width 256.
Patch channels are ordered '(c ph pw)' as in the reference's einops rearrange.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fourm.nn.dense import uniform_init

_ZEROS = nnx.initializers.zeros_init()


def _torch_default(fan_in: int):
  """U(+-1/sqrt(fan_in)): torch's default Conv / Linear kernel init, which the reference
  UNet keeps (and cheaper to compile per shape than a truncated normal)."""
  return uniform_init(1.0 / math.sqrt(fan_in))


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps [B]: cos then sin."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
  return embedding


def fold_patches(x: jax.Array, patch: int) -> jax.Array:
  """[B, H, W, C] -> [B, H/p, W/p, C*p*p], channels in '(c ph pw)' order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // patch, w // patch, c * patch * patch)


def unfold_patches(x: jax.Array, patch: int) -> jax.Array:
  """Inverse of `fold_patches`: [B, N, N, C*p*p] -> [B, N*p, N*p, C]."""
  b, nh, nw, cpp = x.shape
  c = cpp // (patch * patch)
  x = x.reshape(b, nh, nw, c, patch, patch).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, nh * patch, nw * patch, c)


def upsample_nearest(x: jax.Array, size: int) -> jax.Array:
  """[B, G, G, D] -> [B, size, size, D] by repeating each position (size a multiple of G)."""
  factor = size // x.shape[1]
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def _conv(cin: int, cout: int, kernel: int, *, rngs: nnx.Rngs, stride: int = 1,
          zero: bool = False) -> nnx.Conv:
  init = _ZEROS if zero else _torch_default(cin * kernel * kernel)
  pad = kernel // 2  # as torch's padding=k//2: a strided conv keeps the first pixel's window
  return nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride),
                  padding=((pad, pad), (pad, pad)), kernel_init=init, rngs=rngs)


def _linear(din: int, dout: int, *, rngs: nnx.Rngs, zero: bool = False) -> nnx.Linear:
  init = _ZEROS if zero else _torch_default(din)
  return nnx.Linear(din, dout, kernel_init=init, rngs=rngs)


class ResBlock(nnx.Module):
  """x + conv(silu(norm(conv(silu(norm(x))) + emb))), with a 1x1 skip when widths differ."""

  def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.GroupNorm(cin, num_groups=groups, epsilon=1e-5, rngs=rngs)
    self.conv1 = _conv(cin, cout, 3, rngs=rngs)
    self.emb_proj = _linear(emb_dim, cout, rngs=rngs)
    self.norm2 = nnx.GroupNorm(cout, num_groups=groups, epsilon=1e-5, rngs=rngs)
    self.conv2 = _conv(cout, cout, 3, rngs=rngs, zero=True)
    self.skip = _conv(cin, cout, 1, rngs=rngs) if cin != cout else None

  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = h + self.emb_proj(jax.nn.silu(emb))[:, None, None, :]
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return (x if self.skip is None else self.skip(x)) + h


class SelfAttention(nnx.Module):
  """x + proj(attention(qkv(norm(x)))) over all positions of a feature map."""

  def __init__(self, channels: int, num_heads: int, groups: int, *, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.norm = nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-5, rngs=rngs)
    self.qkv = _linear(channels, 3 * channels, rngs=rngs)
    self.proj = _linear(channels, channels, rngs=rngs, zero=True)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    qkv = self.qkv(self.norm(x)).reshape(b, h * w, 3, self.num_heads, c // self.num_heads)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return x + self.proj(out.reshape(b, h, w, c))


class Upsample(nnx.Module):
  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv = _conv(channels, channels, 3, rngs=rngs)

  def __call__(self, x):
    return self.conv(upsample_nearest(x, 2 * x.shape[1]))


class Stage(nnx.Module):
  """Blocks of one level, each followed by self-attention where the level has it, then an
  optional resampling conv."""

  def __init__(self, widths: Sequence[tuple[int, int]], emb_dim: int, groups: int,
               attention_heads: int | None, resample: str | None, *, rngs: nnx.Rngs):
    self.blocks = nnx.List([ResBlock(cin, cout, emb_dim, groups, rngs=rngs)
                            for cin, cout in widths])
    out = widths[-1][1]
    self.attns = nnx.List([SelfAttention(cout, attention_heads, groups, rngs=rngs)
                           for _, cout in widths]) if attention_heads else None
    self.resample = (_conv(out, out, 3, stride=2, rngs=rngs) if resample == "down" else
                     Upsample(out, rngs=rngs) if resample == "up" else None)


class UNet(nnx.Module):
  """Denoiser [B, N, N, in_channels], timesteps [B] -> [B, N, N, out_channels].

  N must divide by 2 ** (len(channel_mult) - 1).
  """

  def __init__(self, *, in_channels: int, out_channels: int, width: int,
               channel_mult: Sequence[int], num_res_blocks: int, attention_levels: int,
               num_heads: int, norm_groups: int, rngs: nnx.Rngs):
    levels = len(channel_mult)
    widths = [width * m for m in channel_mult]
    attends = [level >= levels - attention_levels for level in range(levels)]
    emb_dim = 4 * width
    self.width = width
    self.time_fc1 = _linear(width, emb_dim, rngs=rngs)
    self.time_fc2 = _linear(emb_dim, emb_dim, rngs=rngs)
    self.conv_in = _conv(in_channels, widths[0], 3, rngs=rngs)

    heads = lambda level: num_heads if attends[level] else None
    down, skips, ch = [], [widths[0]], widths[0]
    for level, out in enumerate(widths):
      pairs = []
      for _ in range(num_res_blocks):
        pairs.append((ch, out))
        ch = out
        skips.append(ch)
      last = level == levels - 1
      down.append(Stage(pairs, emb_dim, norm_groups, heads(level), None if last else "down",
                        rngs=rngs))
      if not last:
        skips.append(ch)
    self.down = nnx.List(down)
    self.mid_block1 = ResBlock(ch, ch, emb_dim, norm_groups, rngs=rngs)
    self.mid_attn = SelfAttention(ch, num_heads, norm_groups, rngs=rngs)
    self.mid_block2 = ResBlock(ch, ch, emb_dim, norm_groups, rngs=rngs)

    up = []
    for level in reversed(range(levels)):
      pairs = []
      for _ in range(num_res_blocks + 1):
        pairs.append((ch + skips.pop(), widths[level]))
        ch = widths[level]
      up.append(Stage(pairs, emb_dim, norm_groups, heads(level), "up" if level else None,
                      rngs=rngs))
    self.up = nnx.List(up)
    self.norm_out = nnx.GroupNorm(ch, num_groups=norm_groups, epsilon=1e-5, rngs=rngs)
    self.conv_out = _conv(ch, out_channels, 3, rngs=rngs, zero=True)

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    emb = self.time_fc2(jax.nn.silu(self.time_fc1(timestep_embedding(t, self.width))))
    h = self.conv_in(x)
    skips = [h]
    for stage in self.down:
      for i, block in enumerate(stage.blocks):
        h = block(h, emb)
        if stage.attns is not None:
          h = stage.attns[i](h)
        skips.append(h)
      if stage.resample is not None:
        h = stage.resample(h)
        skips.append(h)
    h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)
    for stage in self.up:
      for i, block in enumerate(stage.blocks):
        h = block(jnp.concatenate([h, skips.pop()], axis=-1), emb)
        if stage.attns is not None:
          h = stage.attns[i](h)
      if stage.resample is not None:
        h = stage.resample(h)
    return self.conv_out(jax.nn.silu(self.norm_out(h)))
