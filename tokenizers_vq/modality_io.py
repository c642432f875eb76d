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

# How raw values become the encoder's input, by what they mean; the first is the default
# (fourm's own tokenizers). The others are the input formats of the reference's published
# tokenizers, which `fourm convert` sets so that converted ones see what they were
# trained on (apple/ml-4m fourm/data/modality_transforms.py):
#   distance "truncated_standard": per image, (d - mean) / sqrt(var + 1e-6) over the
#            values between the 10th and 90th percentile (DepthTransform);
#   classes  "ids_plus_one": class id + 1 in uint8, so 255 ("unlabeled") becomes 0
#            (SemsegTransform(shift_idx_by_one=True)), decoded back the same way;
#   classes  "binary": a 0 / 1 map (edges) as a one-channel image in [-1, 1], decoded by
#            thresholding at 0 (the edge DiVAEs read edges as images);
#   classes  "binary_sigmoid": a 0 / 1 map (a SAM instance mask) as a one-channel image
#            of 0 and 1, the decoder giving a logit per pixel, decoded as sigmoid >= 0.5
#            (SAMInstanceTransform's masks and the SAM-instance tokenizer's binary
#            cross-entropy).
INPUT_NORMS: dict[str, tuple[str, ...]] = {
    Values.COLOR: ("inception",),            # (v - 127.5) / 127.5: the Inception mean / std
    Values.DISTANCE: ("quantile", "truncated_standard"),
    Values.DIRECTION: ("unit",),
    Values.CLASSES: ("ids", "ids_plus_one", "binary", "binary_sigmoid"),
    Values.FEATURES: ("scaled",),            # f / norm_scale (sqrt(C) by default, 1: as is)
}
# A binary map is read as an image: its defaults are an image's, not a class map's.
BINARY_DEFAULTS = {
    "binary": Defaults(1, 0.5, 0.5, "mse", ("mse", "l1")),
    "binary_sigmoid": Defaults(1, 0.0, 1.0, "binary_cross_entropy",
                               ("binary_cross_entropy",)),
}
BINARY_NORMS = tuple(BINARY_DEFAULTS)        # class maps read as one-channel images
TRUNCATED_FRACTION = 0.1  # the reference's DepthTransform drops 10% at either end


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
    """(shift, scale) of each depth map [B, H, W] -> [B, 2]: the median and half the
    low-high quantile spread, or (input_norm "truncated_standard") the mean and standard
    deviation of the middle 80% of its values, as the reference's tokenizers read depth."""
    flat = depth.reshape(depth.shape[0], -1).astype(jnp.float32)
    if self.config.input_norm == "truncated_standard":
      n = flat.shape[1]
      kept = jnp.sort(flat, axis=1)[:, int(TRUNCATED_FRACTION * n):int((1 - TRUNCATED_FRACTION) * n)]
      mean = jnp.mean(kept, axis=1)
      var = jnp.var(kept, axis=1, ddof=1)  # torch's var is the unbiased one
      return jnp.stack([mean, jnp.sqrt(var + 1e-6)], axis=1)
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

  def _check_values(self, raw, where):
    super()._check_values(raw, where)
    if not isinstance(raw, np.ndarray) or not raw.size:
      return
    norms = np.linalg.norm(raw.astype(np.float32), axis=-1)
    # Zero vectors (no surface) pass; anything far from unit length is another encoding
    # (an 8-bit normal map, [0, 1] colors), which would tokenize silently wrong.
    stray = (norms > 1e-3) & (np.abs(norms - 1.0) > 0.1)
    if stray.mean() > 0.01:
      raise RecordError(f"{self.tokenizer_label()}: {self.name} must be unit vectors "
                        f"(float32 x, y, z in [-1, 1]); {stray.mean():.0%} of these have "
                        f"lengths like {float(norms[stray].flat[0]):.3g} (an image-encoded "
                        "normal map? decode it to vectors first)", path=where,
                        field=self.name)

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

  @property
  def _shift(self) -> int:
    return 1 if self.config.input_norm == "ids_plus_one" else 0

  def _check_values(self, raw, where):
    if isinstance(raw, np.ndarray) and raw.size:
      ids = raw.astype(np.int64)
      if self._shift:  # 255 is "unlabeled", the model's class 0
        ids = np.where(ids == 255, -1, ids)
      low, high = int(ids.min()), int(ids.max())
      top = self.config.num_classes - self._shift
      if low < -self._shift or high >= top:
        bad = low if low < -self._shift else high
        allowed = f"[0, {top})" + (" or 255 (unlabeled)" if self._shift else "")
        raise RecordError(f"{self.tokenizer_label()}: class id {bad} is outside {allowed}",
                          path=where, field=self.name)

  def normalize(self, raw):
    ids = raw.astype(jnp.int32)
    if self._shift:
      ids = (ids + 1) % 256  # as uint8 arithmetic: 255 -> 0
    ids = jnp.clip(ids, 0, self.config.num_classes - 1)
    return ids, self.default_stats(raw.shape[0])

  def denormalize(self, out, stats):
    del stats
    ids = jnp.argmax(out, axis=-1).astype(jnp.int32)
    return (ids - 1) % 256 if self._shift else ids

  def to_raw(self, values):
    return values.astype(jnp.uint8 if self.config.num_classes <= 256 else jnp.int32)

  def metrics(self, out, raw, stats):
    if self._shift:  # compare in the model's ids
      raw = (raw.astype(jnp.int32) + 1) % 256
      return self._class_metrics(jnp.argmax(out, axis=-1), raw)
    return self._class_metrics(self.denormalize(out, stats), raw)

  def loss(self, out, x):
    logits = out.astype(jnp.float32)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, x))

  def _class_metrics(self, pred, raw):
    k = self.config.num_classes
    pred = pred.astype(jnp.int32).reshape(-1)
    target = jnp.clip(raw.astype(jnp.int32), 0, k - 1).reshape(-1)
    confusion = jnp.bincount(target * k + pred, length=k * k).reshape(k, k)
    inter = jnp.diag(confusion).astype(jnp.float32)
    union = (confusion.sum(0) + confusion.sum(1)).astype(jnp.float32) - inter
    present = union > 0
    miou = jnp.sum(jnp.where(present, inter / jnp.maximum(union, 1.0), 0.0)) / jnp.maximum(
        jnp.sum(present), 1)
    return {"pixel_acc": jnp.mean(pred == target), "miou": miou}


class BinaryIO(ModalityIO):
  """A 0 / 1 map (edges) read as a one-channel image in [-1, 1] (input_norm "binary")."""
  expected_dtype = "uint8"

  def sample_shape(self):
    r = self.config.resolution
    return (r, r)

  def _dtype_ok(self, dtype):
    return np.issubdtype(dtype, np.integer) or dtype == np.bool_

  def _check_values(self, raw, where):
    if isinstance(raw, np.ndarray) and raw.size and not np.isin(raw, (0, 1)).all():
      raise RecordError(f"{self.tokenizer_label()}: a binary map holds only 0 and 1, found "
                        f"{sorted(set(np.unique(raw).tolist()) - {0, 1})[:5]}", path=where,
                        field=self.name)

  def normalize(self, raw):
    stats = self.default_stats(raw.shape[0])
    return self._affine(raw.astype(jnp.float32), stats)[..., None], stats

  def denormalize(self, out, stats):
    return self._inverse(out[..., 0].astype(jnp.float32), stats)

  def to_raw(self, values):
    return (values >= 0.5).astype(jnp.uint8)

  def metrics(self, out, raw, stats):
    pred = self.denormalize(out, stats) >= 0.5
    target = raw.astype(bool)
    inter = jnp.sum(pred & target)
    union = jnp.sum(pred | target)
    return {"pixel_acc": jnp.mean(pred == target),
            "iou": jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)}


class BinarySigmoidIO(BinaryIO):
  """A 0 / 1 mask read as it is (input_norm "binary_sigmoid"): the decoder's output is a
  logit per pixel, so decoding is its sigmoid (the probability of a 1), thresholded at 0.5
  for records, as the reference reads its SAM-instance tokenizer's output."""

  def denormalize(self, out, stats):
    del stats  # (0, 1): they normalize the input; the output is a logit whatever they are
    return jax.nn.sigmoid(out[..., 0].astype(jnp.float32))

  def loss(self, out, x):
    # The usual binary cross-entropy on logits. (The reference trains with cross-entropy
    # over the two "logits" (sigmoid(out), 1 - sigmoid(out)): a bounded variant of it.)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(out.astype(jnp.float32),
                                                       x.astype(jnp.float32)))


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


def defaults_for(modality: str, input_norm: str | None = None) -> Defaults:
  if input_norm in BINARY_DEFAULTS:
    return BINARY_DEFAULTS[input_norm]
  return DEFAULTS[values_of(modality)]


def default_norm_scale(modality: str, channels: int | None, input_norm: str | None = None
                       ) -> float:
  scale = defaults_for(modality, input_norm).norm_scale
  return 1.0 / math.sqrt(channels) if scale is None else scale


def for_config(config: VQVAEConfig) -> ModalityIO:
  """The input/output handling of `config.modality` read as `config.input_norm` says."""
  if config.input_norm == "binary":
    return BinaryIO(config)
  if config.input_norm == "binary_sigmoid":
    return BinarySigmoidIO(config)
  return _CLASSES[values_of(config.modality)](config)


def input_format(config: VQVAEConfig) -> dict[str, str]:
  """What a tokenizer reads and how it normalizes it, in words (docs, `fourm convert`)."""
  io = for_config(config)
  norm = config.input_norm
  shift, scale = config.norm_shift, config.norm_scale
  how = {
      "inception": f"(v - {shift:g}) / {scale:g}: [-1, 1] (Inception mean and std)",
      "quantile": (f"per image, (d - median) / half the {config.depth_quantiles[0]:g}-"
                   f"{config.depth_quantiles[1]:g} quantile spread"),
      "truncated_standard": ("per image, (d - mean) / std of the values between the 10th "
                             "and 90th percentile (the reference's)"),
      "unit": "unit vectors as they are",
      "ids": "class ids, embedded by the model",
      "ids_plus_one": "class id + 1 (255, unlabeled, becomes 0; the reference's semseg)",
      "binary": "0 / 1 as -1 / +1, one channel",
      "binary_sigmoid": "0 / 1 as they are, one channel; decoded 1 where sigmoid(logit) >= 0.5",
      "scaled": f"f / {scale:g}",
  }[norm]
  if norm in BINARY_NORMS:
    values = "0 / 1"
  elif config.is_class_map:
    shift = norm == "ids_plus_one"
    values = f"class ids below {config.num_classes - shift}" + (" or 255" if shift else "")
  else:
    values = {Values.COLOR: "0..255", Values.DISTANCE: "metres, > 0",
              Values.DIRECTION: "unit vectors", Values.FEATURES: "any finite"}[config.values]
  return {"raw": io.describe(), "values": values, "input_norm": norm,
          "normalization": how, "resolution": f"{config.resolution} px"}
