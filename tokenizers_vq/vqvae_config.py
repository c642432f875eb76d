"""What fixes a VQ-VAE tokenizer's tokens: `VQVAEConfig`, and the named presets.

The config holds everything that makes encode and decode agree (layout, channels,
vocabulary, normalization, the decoder); a checkpoint stores `config.to_dict()`. Presets
(`preset("rgb_tiny")`) exist for every raw modality a VQ-VAE can tokenize, with the
registry's vocabularies (tiny ones use 1/16 of them) and defaults by what the values mean.

A DiVAE is the same config with `decoder="diffusion"` and a `DiffusionConfig` (the
conditional UNet and its noise schedule, tokenizers_vq/unet.py and diffusion.py);
`divae_preset("rgb_tiny")` gives one for rgb, depth or normals. A ViT config serializes
without the two fields, exactly as before they existed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fourm import modalities
from fourm.errors import UsageError
from tokenizers_vq import modality_io
from tokenizers_vq import quantizer as quantizer_lib


DECODERS = ("vit", "diffusion")
PREDICTIONS = ("x0", "epsilon", "v")
BETA_SCHEDULES = ("linear",)
# Diffusion decodes pixel values: colors, distances, directions (not class ids or features).
DIFFUSABLE = (modality_io.Values.COLOR, modality_io.Values.DISTANCE,
              modality_io.Values.DIRECTION)


def _check_keys(cls, data: dict[str, Any], what: str) -> None:
  """A saved or given config names only fields of the dataclass `cls`."""
  unknown = sorted(set(data) - {field.name for field in dataclasses.fields(cls)})
  if unknown:
    raise UsageError(f"{what}: unknown keys {unknown}")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """The DiVAE decoder: a UNet over P x P patches and its DDPM / DDIM schedule.

  Defaults are the reference's `unet_patched` with `prediction_type: sample`
  (apple/ml-4m cfgs/default/tokenization/divae/*_predx0.yaml): 4 px patches, 256 base
  channels times (1, 2, 2, 2), 3 residual blocks per level, one-head self-attention at the
  two smallest levels and in the middle, 1,000 training steps of linear betas rescaled to
  zero terminal SNR, x0 prediction, DDIM on "trailing" timesteps.
  """
  patch_size: int = 4                  # pixels folded into channels: C x P x P
  width: int = 256                     # base channels of the UNet
  channel_mult: tuple[int, ...] = (1, 2, 2, 2)  # one per level; levels - 1 downsamplings
  num_res_blocks: int = 3              # per level on the way down (one more on the way up)
  attention_levels: int = 2            # self-attention at this many smallest levels
  num_heads: int = 1
  norm_groups: int = 32                # GroupNorm groups (must divide every level's width)
  num_train_timesteps: int = 1000
  beta_schedule: str = "linear"
  beta_start: float = 1e-4
  beta_end: float = 0.02
  zero_terminal_snr: bool = True       # the last step is pure noise (Lin et al. 2023)
  prediction: str = "x0"               # what the UNet predicts: x0, epsilon or v
  sample_steps: int = 25               # DDIM steps of `decode` (1: the one-step preview)
  eta: float = 0.0                     # DDIM noise: 0 is deterministic given the seed
  clip_x0: bool | None = None          # clip predicted x0 to [-1, 1] while sampling
                                       # (None: yes for colors and directions)

  def __post_init__(self):
    object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))

  @property
  def levels(self) -> int:
    return len(self.channel_mult)

  def problems(self, resolution: int, grid: int) -> list[str]:
    """What does not add up for images of `resolution` px coded on a `grid` x `grid` map."""
    found = []
    p, levels = self.patch_size, self.levels
    if p <= 0 or resolution % p:
      return [f"diffusion.patch_size {p} must divide resolution {resolution}"]
    patches = resolution // p
    if levels < 1 or any(m < 1 for m in self.channel_mult):
      found.append(f"diffusion.channel_mult {self.channel_mult} needs one positive entry per "
                   "level")
    elif patches % 2 ** (levels - 1):
      found.append(f"{levels} UNet levels halve the {patches}x{patches} patch grid "
                   f"{levels - 1} times: it must divide by {2 ** (levels - 1)}")
    if patches % grid:
      found.append(f"the {grid}x{grid} code map must upsample to the {patches}x{patches} "
                   f"patch grid by an integer factor")
    if self.width < 1 or self.norm_groups < 1 or self.num_heads < 1:
      found.append(f"diffusion: width {self.width}, norm_groups {self.norm_groups} and "
                   f"num_heads {self.num_heads} must be positive")
      return found
    for mult in self.channel_mult:
      channels = self.width * mult
      if channels % self.norm_groups or channels % self.num_heads:
        found.append(f"diffusion: {channels} channels do not divide into norm_groups "
                     f"{self.norm_groups} and num_heads {self.num_heads}")
        break
    if not 0 <= self.attention_levels <= levels:
      found.append(f"diffusion.attention_levels {self.attention_levels} must be in "
                   f"[0, {levels}]")
    if self.num_res_blocks < 1:
      found.append(f"diffusion.num_res_blocks must be >= 1, got {self.num_res_blocks}")
    if self.beta_schedule not in BETA_SCHEDULES:
      found.append(f"diffusion.beta_schedule {self.beta_schedule!r} is not one of "
                   f"{list(BETA_SCHEDULES)}")
    if not 0.0 < self.beta_start < self.beta_end < 1.0:
      found.append(f"diffusion betas must satisfy 0 < beta_start {self.beta_start} < "
                   f"beta_end {self.beta_end} < 1")
    if self.prediction not in PREDICTIONS:
      found.append(f"diffusion.prediction {self.prediction!r} is not one of "
                   f"{list(PREDICTIONS)}")
    if self.prediction == "epsilon" and self.zero_terminal_snr:
      found.append("diffusion: epsilon prediction cannot recover x0 from pure noise at zero "
                   "terminal SNR; predict x0 or v, or set zero_terminal_snr=False")
    if not 1 <= self.sample_steps <= self.num_train_timesteps:
      found.append(f"diffusion.sample_steps {self.sample_steps} must be in "
                   f"[1, num_train_timesteps {self.num_train_timesteps}]")
    if self.eta < 0:
      found.append(f"diffusion.eta must be >= 0, got {self.eta}")
    return found

  def to_dict(self) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()}

  # How `decode` samples by default: no part of what is trained, so a run may change them.
  SAMPLING_FIELDS = ("sample_steps", "eta", "clip_x0")

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
    _check_keys(cls, data, "diffusion decoder config")
    return cls(**data)


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
  decoder: str = "vit"               # "vit" (dec_* fields) or "diffusion" (a DiVAE)
  input_norm: str | None = None      # how raw values become encoder input (modality_io.
                                     # INPUT_NORMS; None: the first, fourm's own)
  pos_grid: int | None = None        # grid the ViTs' sin-cos positions were built for, resized
                                     # bicubically to `grid` (a converted reference tokenizer
                                     # used away from its training size); None: the grid
  out_conv: bool = False             # two ConvNeXt blocks after the ViT decoder's patches
                                     # (against patch seams; the reference's SAM-instance
                                     # tokenizer has them)
  diffusion: DiffusionConfig | None = None  # the diffusion decoder (decoder="diffusion")

  def __post_init__(self):
    norms = modality_io.INPUT_NORMS[modality_io.values_of(self.modality)]
    if self.input_norm is None:
      object.__setattr__(self, "input_norm", norms[0])
    elif self.input_norm not in norms:
      raise UsageError(f"VQ-VAE config {self.name or self.modality!r}: input_norm "
                       f"{self.input_norm!r} does not fit {self.modality}; choose from "
                       f"{list(norms)}")
    defaults = modality_io.defaults_for(self.modality, self.input_norm)
    fill = {}
    if self.channels is None and defaults.channels is not None:
      fill["channels"] = defaults.channels
    if self.norm_shift is None:
      fill["norm_shift"] = defaults.norm_shift
    if self.norm_scale is None:
      fill["norm_scale"] = modality_io.default_norm_scale(
          self.modality, fill.get("channels", self.channels), self.input_norm)
    if self.loss is None:
      fill["loss"] = defaults.loss
    diffusion = self.diffusion
    if isinstance(diffusion, dict):
      diffusion = DiffusionConfig.from_dict(diffusion)
    if self.decoder == "diffusion":
      diffusion = diffusion or DiffusionConfig()
      if diffusion.clip_x0 is None:
        diffusion = dataclasses.replace(
            diffusion, clip_x0=modality_io.values_of(self.modality) != modality_io.Values.DISTANCE)
    fill["diffusion"] = diffusion
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
    if self.pos_grid is not None and self.pos_grid < 1:
      problems.append(f"pos_grid must be >= 1, got {self.pos_grid}")
    if self.out_conv and self.decoder != "vit":
      problems.append("out_conv follows a ViT decoder's patches; a diffusion decoder has none")
    if self.decoder not in DECODERS:
      problems.append(f"decoder {self.decoder!r} is not one of {list(DECODERS)}")
    elif self.decoder == "vit" and self.diffusion is not None:
      problems.append("a diffusion config needs decoder='diffusion'")
    elif self.decoder == "diffusion":
      if (self.values not in DIFFUSABLE and self.input_norm != "binary"
          or self.is_feature_map):
        problems.append(f"a diffusion decoder makes pixel values ({', '.join(DIFFUSABLE)}); "
                        f"{self.modality} is {self.values}")
      else:
        problems += self.diffusion.problems(self.resolution, self.grid)
        if self.loss == "angular" and self.diffusion.prediction != "x0":
          problems.append("the angular loss compares directions: it needs prediction x0")
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
  def position_grid(self) -> int:
    """The grid the sin-cos positions are built for (then resized to `grid`)."""
    return self.grid if self.pos_grid is None else self.pos_grid

  @property
  def tokens_per_image(self) -> int:
    return self.grid * self.grid

  @property
  def values(self) -> str:
    """What the raw values mean (the registry's RawSpec.values)."""
    return modality_io.values_of(self.modality)

  @property
  def is_class_map(self) -> bool:
    """Class ids the model embeds (a binary map is read as an image instead)."""
    return (self.values == modality_io.Values.CLASSES
            and self.input_norm not in modality_io.BINARY_NORMS)

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

  @property
  def is_diffusion(self) -> bool:
    """A DiVAE: the decoder is a diffusion model sampled from noise."""
    return self.decoder == "diffusion"

  # Serialization ---------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    """A JSON-able dict (tuples become lists). A ViT config leaves out `decoder` and
    `diffusion`, and `pos_grid` / `input_norm` / `out_conv` when unset / the default /
    False, so it is the dict that checkpoints and token records stored before those fields
    existed (and their resume checks still match)."""
    data = {key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
            if key not in ("decoder", "diffusion", "pos_grid", "input_norm", "out_conv")}
    if self.pos_grid is not None:
      data["pos_grid"] = self.pos_grid
    if self.out_conv:
      data["out_conv"] = True
    if self.input_norm != modality_io.INPUT_NORMS[self.values][0]:
      data["input_norm"] = self.input_norm
    if self.is_diffusion:
      data.update(decoder=self.decoder, diffusion=self.diffusion.to_dict())
    return data

  def trained_dict(self) -> dict[str, Any]:
    """`to_dict()` without the diffusion decoder's sampling settings: what a checkpoint's
    weights were trained for (a resumed run may decode differently by default)."""
    data = self.to_dict()
    if self.is_diffusion:
      data["diffusion"] = {key: value for key, value in data["diffusion"].items()
                           if key not in DiffusionConfig.SAMPLING_FIELDS}
    return data

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> VQVAEConfig:
    _check_keys(cls, data, "VQ-VAE config")
    if "modality" not in data:
      raise UsageError("VQ-VAE config: missing 'modality'")
    values = dict(data)
    if "depth_quantiles" in values:
      values["depth_quantiles"] = tuple(values["depth_quantiles"])
    if values.get("diffusion") is not None:
      values["diffusion"] = DiffusionConfig.from_dict(values["diffusion"])
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


# DiVAE presets --------------------------------------------------------------------------

# 4M's diffusion-decoder tokenizers: rgb, depth and normals. Each is the ViT preset of the
# same name (layout, encoder, quantizer, vocabulary) with a diffusion decoder in place of
# the ViT one (whose dec_* fields it then ignores). base: the reference's unet_patched;
# tiny: the same four levels of three blocks at width 32, for minutes on a CPU.
DIVAE_MODALITIES = ("rgb", "depth", "normal")
_DIFFUSION_SIZES = {"tiny": dict(width=32, norm_groups=8), "base": {}}
DIVAE_PRESETS: dict[str, dict[str, Any]] = {
    f"{modality}_{size}": dict(PRESETS[f"{modality}_{size}"], name=f"{modality}_divae_{size}",
                               decoder="diffusion",
                               diffusion=DiffusionConfig(**_DIFFUSION_SIZES[size]))
    for size in ("tiny", "base") for modality in DIVAE_MODALITIES}


def divae_preset(name: str, **overrides) -> VQVAEConfig:
  """A DiVAE config (`rgb_tiny`, `normal_base`, ...), with fields overridden (`diffusion`
  may be a DiffusionConfig or a dict of its fields to change)."""
  if name not in DIVAE_PRESETS:
    raise UsageError(f"unknown DiVAE preset {name!r}; known: {sorted(DIVAE_PRESETS)}")
  values = dict(DIVAE_PRESETS[name])
  diffusion = overrides.pop("diffusion", None)
  if isinstance(diffusion, dict):
    diffusion = dataclasses.replace(values["diffusion"], **diffusion)
  if diffusion is not None:
    values["diffusion"] = diffusion
  return VQVAEConfig(**dict(values, **overrides))
