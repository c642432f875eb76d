"""What fixes a VQ-VAE tokenizer's tokens: `VQVAEConfig`, and the named presets.

The config holds everything that makes encode and decode agree (layout, channels,
vocabulary, normalization); a checkpoint stores `config.to_dict()`. Presets
(`preset("rgb_tiny")`) exist for every raw modality a VQ-VAE can tokenize, with the
registry's vocabularies (tiny ones use 1/16 of them) and defaults by what the values mean.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fourm import modalities
from fourm.errors import UsageError
from tokenizers_vq import modality_io
from tokenizers_vq import quantizer as quantizer_lib


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
  """Everything that fixes what a tokenizer's tokens mean. JSON-serialisable.

  Fields left None take the default for what the modality's values mean
  (modality_io.DEFAULTS) at construction, so a stored config is always explicit.
  """
  modality: str                      # raw modality (a registry name: rgb, depth, ...)
  name: str = ""                     # e.g. the preset name; used in error messages
  resolution: int = 64               # the image layout this tokenizer serves ...
  patch_size: int = 8                # ... (tokens per side: resolution // patch_size)
  channels: int | None = None        # raw channels (rgb 3, depth 1, normal 3, clip C)
  num_classes: int | None = None     # class maps (semseg) only
  class_embed_dim: int = 32          # class maps: width of the per-pixel class embedding
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
    defaults = modality_io.defaults_for(self.modality)
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
    if self.is_class_map:
      if self.num_classes is None or self.num_classes < 2:
        problems.append(f"{self.modality} needs num_classes >= 2")
      if self.channels is not None:
        problems.append(f"{self.modality} takes num_classes, not channels")
    else:
      if self.num_classes is not None:
        problems.append(f"num_classes is for class maps, not {self.modality}")
      if self.channels is None or self.channels < 1:
        problems.append(f"channels must be >= 1, got {self.channels}")
      fixed = defaults.channels if self.values != modality_io.Values.FEATURES else None
      if fixed is not None and self.channels != fixed:
        problems.append(f"{self.modality} has {fixed} channel{'s' * (fixed > 1)}, got "
                        f"{self.channels}")
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
  def values(self) -> str:
    """What the raw values mean (the registry's RawSpec.values)."""
    return modality_io.values_of(self.modality)

  @property
  def is_class_map(self) -> bool:
    return self.values == modality_io.Values.CLASSES

  @property
  def is_feature_map(self) -> bool:
    return modalities.get_raw(self.modality).form == modalities.Form.FEATURE_MAP

  @property
  def input_patch(self) -> int:
    """Patch size of the encoder input: feature maps already have one vector per patch."""
    return 1 if self.is_feature_map else self.patch_size

  @property
  def in_channels(self) -> int:
    return self.class_embed_dim if self.is_class_map else self.channels

  @property
  def out_channels(self) -> int:
    return self.num_classes if self.is_class_map else self.channels

  # Serialization ---------------------------------------------------------------------

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

# The reference 4M vocabularies are the registry's; the small layout uses 1/16 of them: a
# batch of 32 images at 8 x 8 tokens has 2,048 vectors, which cannot exercise a 16k codebook.
TINY_VOCAB_DIVISOR = 16
_SMALL, _REFERENCE = modalities.SMALL_LAYOUT, modalities.REFERENCE_LAYOUT
_TINY = dict(resolution=_SMALL.resolution, patch_size=_SMALL.patch_size, enc_width=128,
             enc_depth=2, enc_heads=4, dec_width=128, dec_depth=2, dec_heads=4)
# ViT-B encoder and decoder (the reference's vit_b_enc / vit_b_dec).
_BASE = dict(resolution=_REFERENCE.resolution, patch_size=_REFERENCE.patch_size,
             enc_width=768, enc_depth=12, enc_heads=12, dec_width=768, dec_depth=12,
             dec_heads=12)
# By what the values mean. Synthetic world: 7 classes and 64-d CLIP-like features. Base:
# COCO's 133 panoptic classes and 512-d features; set both to what your pseudo-labeler
# produces.
_EXTRAS = {
    "tiny": {modality_io.Values.CLASSES: dict(num_classes=7, class_embed_dim=32),
             modality_io.Values.FEATURES: dict(channels=64)},
    "base": {modality_io.Values.CLASSES: dict(num_classes=133, class_embed_dim=64),
             modality_io.Values.FEATURES: dict(channels=512)},
}


def _preset(modality: str, size: str) -> dict[str, Any]:
  base = _TINY if size == "tiny" else _BASE
  vocab = modalities.get(modalities.grid_modality_of(modality)).vocab_size
  if size == "tiny":
    vocab = max(2, vocab // TINY_VOCAB_DIVISOR)
  return dict(base, modality=modality, name=f"{modality}_{size}", vocab_size=vocab,
              **_EXTRAS[size].get(modality_io.values_of(modality), {}))


def preset_names() -> tuple[str, ...]:
  """MODALITY_SIZE for every raw modality a VQ-VAE can tokenize now (registered ones
  included) and SIZE tiny or base."""
  return tuple(f"{modality}_{size}" for size in ("tiny", "base")
               for modality in modality_io.tokenizable())


# The presets of the built-in modalities (`preset` also knows modalities registered later).
PRESETS: dict[str, dict[str, Any]] = {name: _preset(*name.rsplit("_", 1))
                                      for name in preset_names()}


def preset(name: str, **overrides) -> VQVAEConfig:
  """A named config (`rgb_tiny`, `depth_base`, ...), with fields overridden."""
  if name in PRESETS:
    return VQVAEConfig(**dict(PRESETS[name], **overrides))
  if name not in preset_names():
    raise UsageError(f"unknown VQ-VAE preset {name!r}; known: {sorted(preset_names())}")
  return VQVAEConfig(**dict(_preset(*name.rsplit("_", 1)), **overrides))
