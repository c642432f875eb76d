"""The VQ-VAE tokenizers: a ViT encoder over patches, a vector quantizer, a ViT decoder.

One model for every image-like modality; `VQVAEConfig` (tokenizers_vq/vqvae_config.py)
says which, and holds everything that makes encode and decode agree, so a checkpoint
that stores `config.to_dict()` decodes exactly what it encoded.

    x [B, R, R, C]  --encoder-->  z [B, G, G, code_dim]  --quantizer-->  codes [B, G, G]
                                  (patch embed, blocks,                    | lookup
                                   post MLP, quant_proj)                   v
    out [B, R, R, C_out]  <--decoder--  quantized [B, G, G, code_dim]
                          (post_quant_proj, blocks, post MLP, out_proj)

G is the layout's grid: 224 px with 16 px patches gives 14 x 14 tokens, 64 px with
8 px patches 8 x 8. CLIP-like feature maps are already one vector per patch ([G, G, C]),
so their tokenizer runs on the feature grid with 1 x 1 patches (the reference's
`patch_proj=False`). Class maps (semantic segmentation) embed class ids before the encoder
(`cls_emb`) and predicts per-pixel class logits.

The decoder is a separate part with a one-line contract, code-space vectors
[B, G, G, code_dim] in, [B, R, R, C_out] out (`Decoder`), and can be passed in. A config
with `decoder="diffusion"` makes a DiVAE: the same encoder and quantizer with the
diffusion decoder of tokenizers_vq/divae.py, trained by the DDPM loss
(`reconstruction_loss`) and decoded by DDIM from a key (`decode_quant(..., key=)`).

Parameter names follow apple/ml-4m (`fourm/vq/vqvae.py`, `vit_models.py`) so published
weights convert by renaming, transposing and reshaping only (torch Linear [out, in]):

  reference                          here
  cls_emb.weight [K, C]              cls_emb.embedding [K, C]
  encoder.proj.weight [D, C, P, P]   encoder.proj.kernel [C, P, P, D]   (Conv2d, stride P)
  encoder.proj.bias [D]              encoder.proj.bias [D]
  encoder.pos_emb                    (fixed sin-cos, not stored)
  encoder.blocks.i.norm1 / norm2     encoder.blocks.i.norm1 / norm2 .scale, .bias
  encoder.blocks.i.attn.qkv [3D, D]  encoder.blocks.i.attn.qkv.kernel [D, 3, H, Dh] (+bias)
  encoder.blocks.i.attn.proj [D, D]  encoder.blocks.i.attn.proj.kernel [H, Dh, D] (+bias)
  encoder.blocks.i.mlp.fc1 / fc2     encoder.blocks.i.mlp.fc1 / fc2 .kernel [in, out] (+bias)
  encoder.norm_mlp, encoder.post_mlp encoder.norm_mlp, encoder.post_mlp (tanh MLP)
  quant_proj.weight [d, D, 1, 1]     encoder.quant_proj.kernel [D, d]
  quantize._codebook.embed [K, d]    quantizer.codebook [K, d]  (see quantizer.py)
  post_quant_proj.weight [D, d, 1, 1] decoder.post_quant_proj.kernel [d, D]
  decoder.blocks.i...., decoder.norm_mlp, decoder.post_mlp: as in the encoder
  decoder.out_proj.weight [C*P*P, D] decoder.out_proj.kernel [D, C, P, P]  ('(c ph pw)' order)
  decoder.out_conv.i (ConvNeXt)      decoder.out_conv.i.dwconv .kernel [7, 7, 1, C], .norm,
                                     .pwconv1 / pwconv2 .kernel [in, out], .gamma [C]

`quant_proj` and `post_quant_proj` sit at the top of the reference model; here they
belong to the encoder and decoder, which makes the decoder's interface the code space
itself. Blocks are the reference's pre-norm ViT blocks: biased LayerNorm (eps 1e-6),
biased fused qkv, exact GELU MLP, no final norm before `quant_proj` / `out_proj`.
With `out_conv` the decoder's pixels go through two ConvNeXt blocks (`ConvNeXtBlock`),
as in the reference's SAM-instance tokenizer.
"""

from __future__ import annotations

import math
from typing import Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from fourm.nn.dense import Dense, uniform_init
from fourm.nn.positions import sincos_2d_resized
from tokenizers_vq import quantizer as quantizer_lib
from tokenizers_vq.divae import DiffusionDecoder
from tokenizers_vq.vqvae_config import (DIVAE_PRESETS, PRESETS, TINY_VOCAB_DIVISOR,
                                        DiffusionConfig, VQVAEConfig, divae_preset, preset,
                                        preset_names)

# The config lives in its own module; it is re-exported here, where callers look for it.
__all__ = ["ConvNeXtBlock", "DIVAE_PRESETS", "Decoder", "DiffusionConfig", "DiffusionDecoder",
           "PRESETS", "VQVAE", "VQVAEConfig", "ViTDecoder", "ViTEncoder", "TINY_VOCAB_DIVISOR",
           "divae_preset", "num_params", "patchify", "preset", "preset_names", "unpatchify"]


# Layers -------------------------------------------------------------------------------------


def patchify(x: jax.Array, patch: int) -> jax.Array:
  """[B, H, W, C] -> [B, H/p, W/p, C, p, p]: the order of a torch Conv2d kernel."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 5, 2, 4)


def unpatchify(x: jax.Array) -> jax.Array:
  """[B, G, G, C, p, p] -> [B, G*p, G*p, C]."""
  b, gh, gw, c, p, _ = x.shape
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, gh * p, gw * p, c)


class Mlp(nnx.Module):
  """fc2(act(fc1(x))), biased: GELU in blocks, tanh in the post-MLP."""

  def __init__(self, dim: int, hidden: int, *, activation=None, rngs: nnx.Rngs):
    self.activation = activation or (lambda x: jax.nn.gelu(x, approximate=False))
    self.fc1 = Dense((dim,), (hidden,), logical_axes=("embed", "mlp"), use_bias=True,
                     rngs=rngs)
    self.fc2 = Dense((hidden,), (dim,), logical_axes=("mlp", "embed"), use_bias=True,
                     rngs=rngs)

  def __call__(self, x):
    return self.fc2(self.activation(self.fc1(x)))


class Attention(nnx.Module):
  """Full self-attention over the patch tokens, biased fused qkv as in the reference."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
    head_dim = dim // num_heads
    self.qkv = Dense((dim,), (3, num_heads, head_dim),
                     logical_axes=("embed", None, "heads", "kv"), fused=True,
                     use_bias=True, rngs=rngs)
    self.proj = Dense((num_heads, head_dim), (dim,), logical_axes=("heads", "kv", "embed"),
                      use_bias=True, rngs=rngs)

  def __call__(self, x):
    qkv = self.qkv(x)  # [B, T, 3, H, Dh]
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return self.proj(out)


class Block(nnx.Module):
  """Pre-norm ViT block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
    self.attn = Attention(dim, num_heads, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class ConvNeXtBlock(nnx.Module):
  """x + gamma * pwconv2(gelu(pwconv1(norm(dwconv(x))))) on [B, H, W, C] pixels.

  The reference's `ConvNeXtBlock` (Liu et al. 2022), which its ViT decoder may run twice
  on its output to smooth the seams between patches (`out_conv`): a depthwise 7x7 conv,
  LayerNorm over channels (eps 1e-6), a 4x MLP with exact GELU, a per-channel scale
  `gamma` started at 1e-6 so the block starts as the identity. Inits are the reference's
  (its decoder's xavier Linears; torch's default for the conv). Over one channel (a
  mask's logits) the LayerNorm gives its bias whatever the input, so each block adds a
  constant: the reference's, kept as it is.
  """

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    torch_default = uniform_init(1.0 / math.sqrt(7 * 7))  # Conv2d's, fan_in 1 * 7 * 7
    self.dwconv = nnx.Conv(channels, channels, (7, 7), padding=((3, 3), (3, 3)),
                           feature_group_count=channels, kernel_init=torch_default,
                           bias_init=torch_default, rngs=rngs)
    self.norm = nnx.LayerNorm(channels, epsilon=1e-6, rngs=rngs)
    self.pwconv1 = Dense((channels,), (4 * channels,), logical_axes=(None, None),
                         use_bias=True, rngs=rngs)
    self.pwconv2 = Dense((4 * channels,), (channels,), logical_axes=(None, None),
                         use_bias=True, rngs=rngs)
    self.gamma = nnx.Param(jnp.full((channels,), 1e-6, jnp.float32))

  def __call__(self, x):
    y = self.norm(self.dwconv(x))
    y = self.pwconv2(jax.nn.gelu(self.pwconv1(y), approximate=False))
    return x + self.gamma[...] * y


class _ViTStack(nnx.Module):
  """Sin-cos positions, blocks and the optional tanh post-MLP on [B, G*G, D] tokens.

  A base class rather than a child module, so the blocks are named `encoder.blocks.i`
  and `decoder.blocks.i` as in the reference.
  """

  def _init_stack(self, grid: int, width: int, depth: int, num_heads: int,
                  mlp_ratio: float, post_mlp: bool, pos_grid: int | None,
                  rngs: nnx.Rngs) -> None:
    self.grid, self.width = grid, width
    self.pos_grid = grid if pos_grid is None else pos_grid
    self.blocks = nnx.List([Block(width, num_heads, mlp_ratio, rngs=rngs)
                            for _ in range(depth)])
    if post_mlp:
      self.norm_mlp = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
      self.post_mlp = Mlp(width, int(width * mlp_ratio), activation=jnp.tanh, rngs=rngs)
    else:
      self.norm_mlp = self.post_mlp = None

  def _run_stack(self, tokens: jax.Array) -> jax.Array:
    tokens = tokens + jnp.asarray(sincos_2d_resized(self.pos_grid, self.grid, self.width))
    for block in self.blocks:
      tokens = block(tokens)
    if self.post_mlp is not None:
      tokens = tokens + self.post_mlp(self.norm_mlp(tokens))
    return tokens


class ViTEncoder(_ViTStack):
  """Encoder input [B, G*p, G*p, C] -> code-space vectors [B, G, G, code_dim]."""

  def __init__(self, *, in_channels: int, patch_size: int, grid: int, width: int, depth: int,
               num_heads: int, mlp_ratio: float, code_dim: int, post_mlp: bool,
               pos_grid: int | None = None, rngs: nnx.Rngs):
    self.patch_size, self.in_channels = patch_size, in_channels
    self.proj = Dense((in_channels, patch_size, patch_size), (width,),
                      logical_axes=("patch", None, None, "embed"), use_bias=True, rngs=rngs)
    self._init_stack(grid, width, depth, num_heads, mlp_ratio, post_mlp, pos_grid, rngs)
    self.quant_proj = Dense((width,), (code_dim,), logical_axes=("embed", None),
                            use_bias=True, rngs=rngs)

  def __call__(self, x):
    size = self.grid * self.patch_size
    if x.shape[1:] != (size, size, self.in_channels):
      raise ValueError(f"encoder expects [B, {size}, {size}, {self.in_channels}], got "
                       f"{x.shape}")
    tokens = self.proj(patchify(x, self.patch_size))  # [B, G, G, D]
    tokens = self._run_stack(tokens.reshape(x.shape[0], self.grid * self.grid, -1))
    z = self.quant_proj(tokens)
    return z.reshape(x.shape[0], self.grid, self.grid, -1)


class Decoder(Protocol):
  """What a VQ-VAE decoder is: code-space vectors [B, G, G, code_dim] -> [B, R, R, C_out]."""

  def __call__(self, quantized: jax.Array) -> jax.Array: ...


class ViTDecoder(_ViTStack):
  """Code-space vectors [B, G, G, code_dim] -> per-pixel outputs [B, G*p, G*p, C_out]."""

  def __init__(self, *, out_channels: int, patch_size: int, grid: int, width: int,
               depth: int, num_heads: int, mlp_ratio: float, code_dim: int, post_mlp: bool,
               pos_grid: int | None = None, out_conv: bool = False, rngs: nnx.Rngs):
    self.patch_size, self.out_channels = patch_size, out_channels
    self.post_quant_proj = Dense((code_dim,), (width,), logical_axes=(None, "embed"),
                                 use_bias=True, rngs=rngs)
    self._init_stack(grid, width, depth, num_heads, mlp_ratio, post_mlp, pos_grid, rngs)
    self.out_proj = Dense((width,), (out_channels, patch_size, patch_size),
                          logical_axes=("embed", None, None, None), use_bias=True, rngs=rngs)
    self.out_conv = (nnx.List([ConvNeXtBlock(out_channels, rngs=rngs) for _ in range(2)])
                     if out_conv else None)

  def __call__(self, quantized):
    b = quantized.shape[0]
    tokens = self.post_quant_proj(quantized.reshape(b, self.grid * self.grid, -1))
    patches = self.out_proj(self._run_stack(tokens))  # [B, G*G, C, p, p]
    out = unpatchify(patches.reshape((b, self.grid, self.grid) + patches.shape[2:]))
    if self.out_conv is not None:
      for block in self.out_conv:
        out = block(out)
    return out


class VQVAE(nnx.Module):
  """encoder -> quantizer -> decoder, with the semseg class embedding in front.

  Works on normalized inputs (see modality_io); `tokenizers_vq.train_step` wraps it with
  the raw-array normalization, the training step and jitted encode / decode. With
  `config.decoder == "diffusion"` it is a DiVAE: decoding draws from noise, so
  `decode_quant` / `decode_tokens` take a `key` (and the number of DDIM `steps`).
  """

  def __init__(self, config: VQVAEConfig, *, rngs: nnx.Rngs, decoder: Decoder | None = None):
    self.config = config
    c = config
    self.cls_emb = (nnx.Embed(c.num_classes, c.class_embed_dim, rngs=rngs)
                    if c.is_class_map else None)
    self.encoder = ViTEncoder(
        in_channels=c.in_channels, patch_size=c.input_patch, grid=c.grid, width=c.enc_width,
        depth=c.enc_depth, num_heads=c.enc_heads, mlp_ratio=c.mlp_ratio, code_dim=c.code_dim,
        post_mlp=c.post_mlp, pos_grid=c.pos_grid, rngs=rngs)
    self.quantizer = quantizer_lib.VectorQuantizer(
        c.vocab_size, c.code_dim, commitment_weight=c.commitment_weight, decay=c.ema_decay,
        eps=c.laplace_eps, replace_c=c.replace_c if c.dead_code_replacement else None,
        rngs=rngs)
    if decoder is not None:
      self.decoder = decoder
    elif c.is_diffusion:
      self.decoder = DiffusionDecoder(channels=c.out_channels, code_dim=c.code_dim,
                                      resolution=c.resolution, config=c.diffusion, rngs=rngs)
    else:
      self.decoder = ViTDecoder(
          out_channels=c.out_channels, patch_size=c.input_patch, grid=c.grid,
          width=c.dec_width, depth=c.dec_depth, num_heads=c.dec_heads,
          mlp_ratio=c.mlp_ratio, code_dim=c.code_dim, post_mlp=c.post_mlp,
          pos_grid=c.pos_grid, out_conv=c.out_conv, rngs=rngs)

  def prepare_input(self, x: jax.Array) -> jax.Array:
    """Normalized input -> encoder input: semseg class ids [B, R, R] become embeddings."""
    if self.cls_emb is not None:
      return self.cls_emb(x)
    return x

  def encode(self, x: jax.Array) -> quantizer_lib.QuantizerOutput:
    return self.quantizer(self.encoder(self.prepare_input(x)))

  def decode_quant(self, quantized: jax.Array, *, key: jax.Array | None = None,
                   steps: int | None = None) -> jax.Array:
    """Code-space vectors -> decoder output. A DiVAE samples by DDIM from `key` (default
    key(0)) in `steps` (default its config's); a ViT decoder takes neither."""
    if self.config.is_diffusion:
      return self.decoder.sample(quantized, jax.random.key(0) if key is None else key, steps)
    return self.decoder(quantized)

  def decode_tokens(self, codes: jax.Array, **sampling) -> jax.Array:
    """int32 codes [B, G, G] (in range: callers check) -> decoder output."""
    return self.decode_quant(self.quantizer.lookup(codes), **sampling)

  def reconstruction_loss(self, x: jax.Array, loss_fn, key: jax.Array | None = None
                          ) -> tuple[jax.Array, jax.Array, quantizer_lib.QuantizerOutput]:
    """(reconstruction loss, decoder output, quantizer output) of normalized inputs x.

    ViT: loss_fn(decode(encode(x)), x). DiVAE: the DDPM loss at noise levels and noise
    drawn from `key`, and the decoder output is the x0 estimate at those levels.
    """
    quantized = self.encode(x)
    if self.config.is_diffusion:
      if key is None:
        raise ValueError("a DiVAE's training loss draws noise: give a key")
      recon, out = self.decoder.loss(x, quantized.quantized, key, loss_fn)
      return recon, out, quantized
    out = self.decode_quant(quantized.quantized)
    return loss_fn(out, x), out, quantized

  def __call__(self, x: jax.Array) -> tuple[jax.Array, quantizer_lib.QuantizerOutput]:
    quantized = self.encode(x)
    return self.decode_quant(quantized.quantized), quantized


def num_params(model: nnx.Module) -> int:
  return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
