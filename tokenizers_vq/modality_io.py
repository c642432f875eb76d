"""What a modality's VQ-VAE reads and writes: input normalization, loss, metrics.

The handling follows from what the raw values mean (the registry's `RawSpec.values`),
so any raw modality of a known meaning gets a VQ-VAE without code here. A tokenizer
sees raw arrays exactly as records store them (docs/data.md, "The synthetic world"),
batched, and returns them in the same form after decoding:

  values     (4M-7)  raw batch             encoder input x              losses (first: default)
  color      rgb     uint8 [B, R, R, 3]    (v - 127.5) / 127.5, [-1, 1]  mse, l1
  distance   depth   float32 [B, R, R]     (d - median) / s, per image   l1, mse
  direction  normal  float32 [B, R, R, 3]  unit vectors as they are      l1, mse, angular
  classes    semseg  uint8 [B, R, R]       class ids (the model embeds)  cross_entropy
  features   clip    float32 [B, G, G, C]  f * sqrt(C): ~unit variance   smooth_l1, mse, l1

Metrics: color psnr (0-255 scale); distance abs_rel and rmse (metres); direction
angle_deg (mean angular error); classes pixel_acc and miou (over the classes present in
prediction or target); features cosine (mean cosine similarity per patch vector).

Every modality normalizes affinely, x = (raw - shift) / scale, with `stats` = (shift,
scale) per image, [B, 2]. For all but distances the pair is a constant of the config.
Depth is normalized per image, robustly, because scenes differ in scale far more than in shape:
shift = the median depth, scale = half the spread between the `depth_quantiles` (5th and
95th percentile by default), floored at 1 mm, so the middle 90% of a scene spans two
units around 0 whatever its distance. The stats are what inverts it: training metrics use each
image's own; decoding tokens without them (generation) falls back to the config's
`norm_shift` / `norm_scale`, i.e. relative depth placed at a typical distance.

The losses are taken in the normalized space the decoder predicts; the metrics in raw
units, after the inverse normalization, so they mean the same whatever the config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fourm import modalities
from fourm.errors import RecordError, UsageError

if TYPE_CHECKING:
  from tokenizers_vq.vqvae import VQVAEConfig


class Defaults(NamedTuple):
  """What a modality's config gets unless it says otherwise."""
  channels: int | None   # raw channels (None: given by num_classes)
  norm_shift: float
  norm_scale: float | None  # None: 1 / sqrt(channels)
  loss: str
  losses: tuple[str, ...]  # the losses that make sense for it


Values = modalities.Values

# By what the values mean.
DEFAULTS: dict[str, Defaults] = {
    Values.COLOR: Defaults(3, 127.5, 127.5, "mse", ("mse", "l1")),
    # Distance shift/scale are only the fallback for decoding without per-image stats.
    Values.DISTANCE: Defaults(1, 5.0, 2.0, "l1", ("l1", "mse")),
    Values.DIRECTION: Defaults(3, 0.0, 1.0, "l1", ("l1", "mse", "angular")),
    Values.CLASSES: Defaults(None, 0.0, 1.0, "cross_entropy", ("cross_entropy",)),
    Values.FEATURES: Defaults(64, 0.0, None, "smooth_l1", ("smooth_l1", "mse", "l1")),
}
MIN_DEPTH_SCALE = 1e-3  # metres: a flat depth map must not divide by zero


def _mean_error(out: jax.Array, target: jax.Array, loss: str) -> jax.Array:
  diff = out.astype(jnp.float32) - target.astype(jnp.float32)
  if loss == "mse":
    return jnp.mean(jnp.square(diff))
  if loss == "l1":
    return jnp.mean(jnp.abs(diff))
  if loss == "smooth_l1":  # Huber with delta 1 = torch's smooth_l1 with beta 1
    return jnp.mean(optax.huber_loss(diff, delta=1.0))
  raise ValueError(f"unknown loss {loss!r}")


class ModalityIO:
  """Affine normalization by config constants; subclasses add what their modality needs.

  Host-side methods (`sample_shape`, `check`) take numpy-like arrays and raise
  `RecordError`; the others are pure jax and run inside jit.
  """

  int_input = False  # classes: x holds class ids, not floats

  def __init__(self, config: VQVAEConfig):
    self.config = config
    self.name = config.modality  # the raw modality: records' field, errors' field

  # Host side ---------------------------------------------------------------------------

  def sample_shape(self) -> tuple[int, ...]:
    r = self.config.resolution
    return (r, r, self.config.channels)

  def _dtype_ok(self, dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating)

  def describe(self) -> str:
    shape = ", ".join(["B", *map(str, self.sample_shape())])
    return f"[{shape}] {self.expected_dtype}"

  expected_dtype = "float32"

  def check(self, raw, *, where: str | None = None) -> None:
    """Raises RecordError unless `raw` is a batch of this modality."""
    shape, dtype = getattr(raw, "shape", None), getattr(raw, "dtype", None)
    if shape is None or dtype is None:
      raise RecordError(f"{self.tokenizer_label()} expects an array batch "
                        f"{self.describe()}, got {type(raw).__name__}", path=where,
                        field=self.name)
    if tuple(shape[1:]) != self.sample_shape() or len(shape) < 2 or not self._dtype_ok(
        np.dtype(dtype)):
      raise RecordError(f"{self.tokenizer_label()} expects batches {self.describe()}, got "
                        f"{np.dtype(dtype).name} {list(shape)} (wrong modality or layout?)",
                        path=where, field=self.name)
    self._check_values(raw, where)

  def _check_values(self, raw, where) -> None:
    # Values are checked on numpy batches only: a device array would need a transfer.
    if isinstance(raw, np.ndarray) and not np.all(np.isfinite(raw)):
      raise RecordError(f"{self.tokenizer_label()}: the batch holds non-finite values",
                        path=where, field=self.name)

  def tokenizer_label(self) -> str:
    """How errors name the tokenizer: "tokenizer 'rgb_tiny' (rgb)"."""
    label = self.config.name or f"vqvae_{self.name}"
    return f"tokenizer {label!r} ({self.name})"

  # Inside jit --------------------------------------------------------------------------

  def default_stats(self, batch_size: int) -> jax.Array:
    pair = jnp.array([self.config.norm_shift, self.config.norm_scale], jnp.float32)
    return jnp.broadcast_to(pair, (batch_size, 2))

  def normalize(self, raw: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Encoder input x [B, H, W, C] and the per-image (shift, scale) stats [B, 2]."""
    stats = self.default_stats(raw.shape[0])
    return self._affine(raw.astype(jnp.float32), stats), stats

  @staticmethod
  def _affine(values: jax.Array, stats: jax.Array) -> jax.Array:
    shift, scale = stats[:, 0], stats[:, 1]
    expand = (slice(None),) + (None,) * (values.ndim - 1)
    return (values - shift[expand]) / scale[expand]

  @staticmethod
  def _inverse(x: jax.Array, stats: jax.Array) -> jax.Array:
    shift, scale = stats[:, 0], stats[:, 1]
    expand = (slice(None),) + (None,) * (x.ndim - 1)
    return x * scale[expand] + shift[expand]

  def denormalize(self, out: jax.Array, stats: jax.Array) -> jax.Array:
    """Decoder output -> float values in raw units and raw layout."""
    return self._inverse(out.astype(jnp.float32), stats)

  def to_raw(self, values: jax.Array) -> jax.Array:
    """Raw-unit floats -> the dtype records store."""
    return values.astype(jnp.float32)

  def loss(self, out: jax.Array, x: jax.Array) -> jax.Array:
    return _mean_error(out, x, self.config.loss)

  def metrics(self, out: jax.Array, raw: jax.Array, stats: jax.Array) -> dict[str, jax.Array]:
    del out, raw, stats
    return {}


class ColorIO(ModalityIO):
  expected_dtype = "uint8"

  def _dtype_ok(self, dtype):
    return dtype == np.uint8  # floats in [0, 1] would be silently wrong

  def _check_values(self, raw, where):
    pass

  def denormalize(self, out, stats):
    return jnp.clip(super().denormalize(out, stats), 0.0, 255.0)

  def to_raw(self, values):
    return jnp.round(values).astype(jnp.uint8)

  def metrics(self, out, raw, stats):
    pred = self.denormalize(out, stats)
    mse = jnp.mean(jnp.square(pred - raw.astype(jnp.float32)), axis=(1, 2, 3))
    psnr = 10.0 * jnp.log10(255.0 ** 2 / jnp.maximum(mse, 1e-10))
    return {"psnr": jnp.mean(psnr)}


class DistanceIO(ModalityIO):

  def sample_shape(self):
    r = self.config.resolution
    return (r, r)

  def _check_values(self, raw, where):
    super()._check_values(raw, where)
    if isinstance(raw, np.ndarray) and raw.size and raw.min() <= 0:
      raise RecordError(f"{self.tokenizer_label()}: {self.name} must be positive metres, found "
                        f"{raw.min()}", path=where, field=self.name)

  def image_stats(self, depth: jax.Array) -> jax.Array:
    """(median, half the low-high quantile spread) of each depth map [B, H, W] -> [B, 2]."""
    flat = depth.reshape(depth.shape[0], -1).astype(jnp.float32)
    low, high = self.config.depth_quantiles
    q = jnp.quantile(flat, jnp.array([low, 0.5, high], jnp.float32), axis=1)  # [3, B]
    scale = jnp.maximum((q[2] - q[0]) / 2.0, MIN_DEPTH_SCALE)
    return jnp.stack([q[1], scale], axis=1)

  def normalize(self, raw):
    stats = self.image_stats(raw)
    return self._affine(raw.astype(jnp.float32), stats)[..., None], stats

  def denormalize(self, out, stats):
    return self._inverse(out[..., 0].astype(jnp.float32), stats)

  def metrics(self, out, raw, stats):
    pred = jnp.maximum(self.denormalize(out, stats), 0.0)
    target = raw.astype(jnp.float32)
    return {"abs_rel": jnp.mean(jnp.abs(pred - target) / target),
            "rmse": jnp.sqrt(jnp.mean(jnp.square(pred - target)))}


class DirectionIO(ModalityIO):

  def denormalize(self, out, stats):
    values = super().denormalize(out, stats)
    norm = jnp.linalg.norm(values, axis=-1, keepdims=True)
    return values / jnp.maximum(norm, 1e-6)

  def loss(self, out, x):
    if self.config.loss == "angular":
      cos = jnp.sum(_unit(out) * _unit(x), axis=-1)
      return jnp.mean(1.0 - cos)
    return super().loss(out, x)

  def metrics(self, out, raw, stats):
    cos = jnp.sum(self.denormalize(out, stats) * _unit(raw), axis=-1)
    angle = jnp.degrees(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))
    return {"angle_deg": jnp.mean(angle)}


class ClassesIO(ModalityIO):
  int_input = True
  expected_dtype = "uint8"

  def sample_shape(self):
    r = self.config.resolution
    return (r, r)

  def _dtype_ok(self, dtype):
    return np.issubdtype(dtype, np.integer)

  def _check_values(self, raw, where):
    if isinstance(raw, np.ndarray) and raw.size:
      low, high = int(raw.min()), int(raw.max())
      if low < 0 or high >= self.config.num_classes:
        bad = low if low < 0 else high
        raise RecordError(f"{self.tokenizer_label()}: class id {bad} is outside [0, "
                          f"{self.config.num_classes})", path=where, field=self.name)

  def normalize(self, raw):
    ids = jnp.clip(raw.astype(jnp.int32), 0, self.config.num_classes - 1)
    return ids, self.default_stats(raw.shape[0])

  def denormalize(self, out, stats):
    del stats
    return jnp.argmax(out, axis=-1).astype(jnp.int32)

  def to_raw(self, values):
    return values.astype(jnp.uint8 if self.config.num_classes <= 256 else jnp.int32)

  def loss(self, out, x):
    logits = out.astype(jnp.float32)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, x))

  def metrics(self, out, raw, stats):
    k = self.config.num_classes
    pred = self.denormalize(out, stats).reshape(-1)
    target = jnp.clip(raw.astype(jnp.int32), 0, k - 1).reshape(-1)
    confusion = jnp.bincount(target * k + pred, length=k * k).reshape(k, k)
    inter = jnp.diag(confusion).astype(jnp.float32)
    union = (confusion.sum(0) + confusion.sum(1)).astype(jnp.float32) - inter
    present = union > 0
    miou = jnp.sum(jnp.where(present, inter / jnp.maximum(union, 1.0), 0.0)) / jnp.maximum(
        jnp.sum(present), 1)
    return {"pixel_acc": jnp.mean(pred == target), "miou": miou}


class FeaturesIO(ModalityIO):

  def sample_shape(self):
    g = self.config.grid
    return (g, g, self.config.channels)

  def metrics(self, out, raw, stats):
    pred = self.denormalize(out, stats)
    cos = jnp.sum(_unit(pred) * _unit(raw), axis=-1)
    return {"cosine": jnp.mean(cos)}


def _unit(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


_CLASSES: Mapping[str, type[ModalityIO]] = {
    Values.COLOR: ColorIO, Values.DISTANCE: DistanceIO, Values.DIRECTION: DirectionIO,
    Values.CLASSES: ClassesIO, Values.FEATURES: FeaturesIO}


def tokenizable() -> tuple[str, ...]:
  """The registered raw modalities a VQ-VAE can tokenize (a token-grid modality is made
  from them and their values have a handling here), in registry order."""
  made = {spec.source.name for spec in modalities.MODALITIES.values()
          if spec.kind == modalities.Kind.IMAGE_TOKENS}
  return tuple(raw.name for raw in modalities.RAW_MODALITIES.values()
               if raw.name in made and raw.values in DEFAULTS)


def values_of(modality: str) -> str:
  """What raw modality `modality`'s values mean; a UsageError unless a VQ-VAE handles it."""
  raw = modalities.RAW_MODALITIES.get(modality)
  if raw is None or raw.values not in DEFAULTS:
    raise UsageError(f"VQ-VAE config: no VQ-VAE handling for modality {modality!r}; it "
                     f"handles raw modalities whose values are {sorted(map(str, DEFAULTS))} "
                     f"(registered: {list(tokenizable())})")
  return raw.values


def defaults_for(modality: str) -> Defaults:
  return DEFAULTS[values_of(modality)]


def default_norm_scale(modality: str, channels: int | None) -> float:
  scale = defaults_for(modality).norm_scale
  return 1.0 / math.sqrt(channels) if scale is None else scale


def for_config(config: VQVAEConfig) -> ModalityIO:
  """The input/output handling of `config.modality`."""
  return _CLASSES[values_of(config.modality)](config)
