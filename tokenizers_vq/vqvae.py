"""The VQ-VAE tokenizers: a ViT encoder over patches, a vector quantizer, a ViT decoder.

One model for every image-like modality; `VQVAEConfig` says which, and holds everything
that makes encode and decode agree (layout, channels, vocabulary, normalisation), so a
checkpoint that stores `config.to_dict()` decodes exactly what it encoded.

    x [B, R, R, C]  --encoder-->  z [B, G, G, code_dim]  --quantizer-->  codes [B, G, G]
                                  (patch embed, blocks,                    | lookup
                                   post MLP, quant_proj)                   v
    out [B, R, R, C_out]  <--decoder--  quantized [B, G, G, code_dim]
                          (post_quant_proj, blocks, post MLP, out_proj)

G is the layout's grid: 224 px with 16 px patches gives 14 x 14 tokens, 64 px with
8 px patches 8 x 8. CLIP-like feature maps are already one vector per patch ([G, G, C]),
so their tokenizer runs on the feature grid with 1 x 1 patches (the reference's
`patch_proj=False`). Semantic segmentation embeds class ids before the encoder
(`cls_emb`) and predicts per-pixel class logits.

The decoder is a separate part with a one-line contract, code-space vectors
[B, G, G, code_dim] in, [B, R, R, C_out] out (`Decoder`), and can be passed in, so a
diffusion decoder can replace the ViT one without touching encoder or quantizer.

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

`quant_proj` and `post_quant_proj` sit at the top of the reference model; here they
belong to the encoder and decoder, which makes the decoder's interface the code space
itself. Blocks are the reference's pre-norm ViT blocks: biased LayerNorm (eps 1e-6),
biased fused qkv, exact GELU MLP, no final norm before `quant_proj` / `out_proj`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from fourm import modalities
from fourm.errors import UsageError
from fourm.nn.positions import sincos_2d
from fourm.nn.dense import Dense
from tokenizers_vq import modality_io
from tokenizers_vq import quantizer as quantizer_lib

@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
  """Everything that fixes what a tokenizer's tokens mean. JSON-serialisable.

  Fields left None take the modality's default (modality_io.DEFAULTS) at construction, so
  a stored config is always explicit.
  """
  modality: str                      # raw modality: rgb | depth | normal | semseg | clip
  name: str = ""                     # e.g. the preset name; used in error messages
  resolution: int = 64               # the image layout this tokenizer serves ...
  patch_size: int = 8                # ... (tokens per side: resolution // patch_size)
  channels: int | None = None        # raw channels (rgb 3, depth 1, normal 3, clip C)
  num_classes: int | None = None     # semseg only
  class_embed_dim: int = 32          # semseg: width of the per-pixel class embedding
  vocab_size: int = 1024
  code_dim: int = quantizer_lib.DEFAULT_CODE_DIM
  enc_width: int = 128
  enc_depth: int = 2
  enc_heads: int = 4
  dec_width: int = 128
  dec_depth: int = 2
  dec_heads: int = 4
  mlp_ratio: float = 4.0
  post_mlp: bool = True              # the reference's tanh MLP before quant / after blocks
  norm_shift: float | None = None    # x = (raw - shift) / scale (depth: decode fallback)
  norm_scale: float | None = None
  depth_quantiles: tuple[float, float] = (0.05, 0.95)
  loss: str | None = None
  commitment_weight: float = quantizer_lib.DEFAULT_COMMITMENT_WEIGHT
  ema_decay: float = quantizer_lib.DEFAULT_DECAY
  laplace_eps: float = 1e-5
  dead_code_replacement: bool = True
  replace_c: float = quantizer_lib.DEFAULT_REPLACE_C

  def __post_init__(self):
    if self.modality not in modality_io.DEFAULTS:
      raise UsageError(f"VQ-VAE config: unknown modality {self.modality!r}; known: "
                       f"{list(modality_io.MODALITIES)}")
    defaults = modality_io.DEFAULTS[self.modality]
    fill = {}
    if self.channels is None and defaults.channels is not None:
      fill["channels"] = defaults.channels
    if self.norm_shift is None:
      fill["norm_shift"] = defaults.norm_shift
    if self.norm_scale is None:
      fill["norm_scale"] = modality_io.default_norm_scale(
          self.modality, fill.get("channels", self.channels))
    if self.loss is None:
      fill["loss"] = defaults.loss
    for key, value in fill.items():
      object.__setattr__(self, key, value)
    object.__setattr__(self, "depth_quantiles", tuple(self.depth_quantiles))
    self._validate(defaults)

  def _validate(self, defaults: modality_io.Defaults) -> None:
    problems = []
    if self.resolution <= 0 or self.patch_size <= 0 or self.resolution % self.patch_size:
      problems.append(f"resolution {self.resolution} must be a positive multiple of "
                      f"patch_size {self.patch_size}")
    for side in ("enc", "dec"):
      width, heads = getattr(self, f"{side}_width"), getattr(self, f"{side}_heads")
      if heads <= 0 or width % heads or width % 4:
        problems.append(f"{side}_width {width} must divide into {side}_heads {heads} and "
                        f"by 4 (2D sin-cos positions)")
    if self.modality == "semseg":
      if self.num_classes is None or self.num_classes < 2:
        problems.append("semseg needs num_classes >= 2")
      if self.channels is not None:
        problems.append("semseg takes num_classes, not channels")
    else:
      if self.num_classes is not None:
        problems.append(f"num_classes is for semseg, not {self.modality}")
      if self.channels is None or self.channels < 1:
        problems.append(f"channels must be >= 1, got {self.channels}")
      if self.modality in ("rgb", "normal") and self.channels != 3:
        problems.append(f"{self.modality} has 3 channels, got {self.channels}")
      if self.modality == "depth" and self.channels != 1:
        problems.append(f"depth has 1 channel, got {self.channels}")
    if self.vocab_size < 2 or self.code_dim < 1:
      problems.append(f"vocab_size {self.vocab_size} must be >= 2 and code_dim "
                      f"{self.code_dim} >= 1")
    if self.loss not in defaults.losses:
      problems.append(f"loss {self.loss!r} does not fit {self.modality}; choose from "
                      f"{list(defaults.losses)}")
    if not self.norm_scale or self.norm_scale <= 0:
      problems.append(f"norm_scale must be positive, got {self.norm_scale}")
    low, high = self.depth_quantiles
    if not 0.0 <= low < 0.5 < high <= 1.0:
      problems.append(f"depth_quantiles {self.depth_quantiles} must straddle the median")
    if not 0.0 < self.ema_decay < 1.0:
      problems.append(f"ema_decay must be in (0, 1), got {self.ema_decay}")
    if self.replace_c <= 0:
      problems.append(f"replace_c must be positive, got {self.replace_c}")
    if problems:
      raise UsageError(f"VQ-VAE config {self.name or self.modality!r}: " + "; ".join(problems))

  # Derived sizes ---------------------------------------------------------------------

  @property
  def layout(self) -> modalities.Layout:
    return modalities.Layout(self.resolution, self.patch_size)

  @property
  def grid(self) -> int:
    """Tokens per side."""
    return self.layout.grid

  @property
  def tokens_per_image(self) -> int:
    return self.grid * self.grid

  @property
  def is_feature_map(self) -> bool:
    return self.modality == "clip"

  @property
  def input_patch(self) -> int:
    """Patch size of the encoder input: feature maps already have one vector per patch."""
    return 1 if self.is_feature_map else self.patch_size

  @property
  def in_channels(self) -> int:
    return self.class_embed_dim if self.modality == "semseg" else self.channels

  @property
  def out_channels(self) -> int:
    return self.num_classes if self.modality == "semseg" else self.channels

  # Serialisation ---------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    """A JSON-able dict (tuples become lists)."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> VQVAEConfig:
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise UsageError(f"VQ-VAE config: unknown keys {unknown}")
    if "modality" not in data:
      raise UsageError("VQ-VAE config: missing 'modality'")
    values = dict(data)
    if "depth_quantiles" in values:
      values["depth_quantiles"] = tuple(values["depth_quantiles"])
    return cls(**values)


# Presets ---------------------------------------------------------------------------------

# The reference 4M vocabularies, and smaller ones for the small layout: a batch of 32
# images at 8 x 8 tokens has 2,048 vectors, which cannot exercise a 16k codebook.
REFERENCE_VOCAB = {"rgb": 16384, "depth": 8192, "normal": 8192, "semseg": 4096, "clip": 8192}
TINY_VOCAB = {"rgb": 1024, "depth": 512, "normal": 512, "semseg": 256, "clip": 512}
_SMALL, _REFERENCE = modalities.SMALL_LAYOUT, modalities.REFERENCE_LAYOUT
_TINY = dict(resolution=_SMALL.resolution, patch_size=_SMALL.patch_size, enc_width=128,
             enc_depth=2, enc_heads=4, dec_width=128, dec_depth=2, dec_heads=4)
# ViT-B encoder and decoder (the reference's vit_b_enc / vit_b_dec).
_BASE = dict(resolution=_REFERENCE.resolution, patch_size=_REFERENCE.patch_size,
             enc_width=768, enc_depth=12, enc_heads=12, dec_width=768, dec_depth=12,
             dec_heads=12)
# Synthetic world: 7 classes and 64-d CLIP-like features. Base: COCO's 133 panoptic
# classes and 512-d features; set both to what your pseudo-labeler produces.
_MODALITY_EXTRAS = {
    "tiny": {"semseg": dict(num_classes=7, class_embed_dim=32), "clip": dict(channels=64)},
    "base": {"semseg": dict(num_classes=133, class_embed_dim=64), "clip": dict(channels=512)},
}


def _preset(modality: str, size: str) -> dict[str, Any]:
  base = _TINY if size == "tiny" else _BASE
  vocab = (TINY_VOCAB if size == "tiny" else REFERENCE_VOCAB)[modality]
  return dict(base, modality=modality, name=f"{modality}_{size}", vocab_size=vocab,
              **_MODALITY_EXTRAS[size].get(modality, {}))


PRESETS: dict[str, dict[str, Any]] = {
    f"{modality}_{size}": _preset(modality, size)
    for size in ("tiny", "base") for modality in modality_io.MODALITIES}


def preset(name: str, **overrides) -> VQVAEConfig:
  """A named config (`rgb_tiny`, `depth_base`, ...), with fields overridden."""
  if name not in PRESETS:
    raise UsageError(f"unknown VQ-VAE preset {name!r}; known: {sorted(PRESETS)}")
  return VQVAEConfig(**dict(PRESETS[name], **overrides))


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


class _ViTStack(nnx.Module):
  """Sin-cos positions, blocks and the optional tanh post-MLP on [B, G*G, D] tokens.

  A base class rather than a child module, so the blocks are named `encoder.blocks.i`
  and `decoder.blocks.i` as in the reference.
  """

  def _init_stack(self, grid: int, width: int, depth: int, num_heads: int,
                  mlp_ratio: float, post_mlp: bool, rngs: nnx.Rngs) -> None:
    self.grid, self.width = grid, width
    self.blocks = nnx.List([Block(width, num_heads, mlp_ratio, rngs=rngs)
                            for _ in range(depth)])
    if post_mlp:
      self.norm_mlp = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
      self.post_mlp = Mlp(width, int(width * mlp_ratio), activation=jnp.tanh, rngs=rngs)
    else:
      self.norm_mlp = self.post_mlp = None

  def _run_stack(self, tokens: jax.Array) -> jax.Array:
    tokens = tokens + jnp.asarray(sincos_2d(self.grid, self.width))
    for block in self.blocks:
      tokens = block(tokens)
    if self.post_mlp is not None:
      tokens = tokens + self.post_mlp(self.norm_mlp(tokens))
    return tokens


class ViTEncoder(_ViTStack):
  """Encoder input [B, G*p, G*p, C] -> code-space vectors [B, G, G, code_dim]."""

  def __init__(self, *, in_channels: int, patch_size: int, grid: int, width: int, depth: int,
               num_heads: int, mlp_ratio: float, code_dim: int, post_mlp: bool,
               rngs: nnx.Rngs):
    self.patch_size, self.in_channels = patch_size, in_channels
    self.proj = Dense((in_channels, patch_size, patch_size), (width,),
                      logical_axes=("patch", None, None, "embed"), use_bias=True, rngs=rngs)
    self._init_stack(grid, width, depth, num_heads, mlp_ratio, post_mlp, rngs)
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
               rngs: nnx.Rngs):
    self.patch_size, self.out_channels = patch_size, out_channels
    self.post_quant_proj = Dense((code_dim,), (width,), logical_axes=(None, "embed"),
                                 use_bias=True, rngs=rngs)
    self._init_stack(grid, width, depth, num_heads, mlp_ratio, post_mlp, rngs)
    self.out_proj = Dense((width,), (out_channels, patch_size, patch_size),
                          logical_axes=("embed", None, None, None), use_bias=True, rngs=rngs)

  def __call__(self, quantized):
    b = quantized.shape[0]
    tokens = self.post_quant_proj(quantized.reshape(b, self.grid * self.grid, -1))
    patches = self.out_proj(self._run_stack(tokens))  # [B, G*G, C, p, p]
    return unpatchify(patches.reshape((b, self.grid, self.grid) + patches.shape[2:]))


class VQVAE(nnx.Module):
  """encoder -> quantizer -> decoder, with the semseg class embedding in front.

  Works on normalised inputs (see modality_io); `tokenizers_vq.train_step` wraps it with
  the raw-array normalisation, the training step and jitted encode / decode.
  """

  def __init__(self, config: VQVAEConfig, *, rngs: nnx.Rngs, decoder: Decoder | None = None):
    self.config = config
    c = config
    self.cls_emb = (nnx.Embed(c.num_classes, c.class_embed_dim, rngs=rngs)
                    if c.modality == "semseg" else None)
    self.encoder = ViTEncoder(
        in_channels=c.in_channels, patch_size=c.input_patch, grid=c.grid, width=c.enc_width,
        depth=c.enc_depth, num_heads=c.enc_heads, mlp_ratio=c.mlp_ratio, code_dim=c.code_dim,
        post_mlp=c.post_mlp, rngs=rngs)
    self.quantizer = quantizer_lib.VectorQuantizer(
        c.vocab_size, c.code_dim, commitment_weight=c.commitment_weight, decay=c.ema_decay,
        eps=c.laplace_eps, replace_c=c.replace_c if c.dead_code_replacement else None,
        rngs=rngs)
    self.decoder = decoder if decoder is not None else ViTDecoder(
        out_channels=c.out_channels, patch_size=c.input_patch, grid=c.grid,
        width=c.dec_width, depth=c.dec_depth, num_heads=c.dec_heads, mlp_ratio=c.mlp_ratio,
        code_dim=c.code_dim, post_mlp=c.post_mlp, rngs=rngs)

  def prepare_input(self, x: jax.Array) -> jax.Array:
    """Normalised input -> encoder input: semseg class ids [B, R, R] become embeddings."""
    if self.cls_emb is not None:
      return self.cls_emb(x)
    return x

  def encode(self, x: jax.Array) -> quantizer_lib.QuantizerOutput:
    return self.quantizer(self.encoder(self.prepare_input(x)))

  def decode_quant(self, quantized: jax.Array) -> jax.Array:
    return self.decoder(quantized)

  def decode_tokens(self, codes: jax.Array) -> jax.Array:
    """int32 codes [B, G, G] (in range: callers check) -> decoder output."""
    return self.decode_quant(self.quantizer.lookup(codes))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, quantizer_lib.QuantizerOutput]:
    quantized = self.encode(x)
    return self.decode_quant(quantized.quantized), quantized


def num_params(model: nnx.Module) -> int:
  return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
