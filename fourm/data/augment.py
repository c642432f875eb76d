"""Cross-modal consistent augmentation: one crop and one flip for every modality.

A crop is drawn once per sample as a box in normalized image coordinates and applied
to each modality by what its `RawSpec` says: dense images are resampled (bilinear with
antialiasing for continuous values, nearest for labels), feature maps are resampled on
their own patch grid (they keep their grid size), boxes are shifted, scaled, clipped and
flipped, a flip negates the x component of camera-frame vectors (normals) and swaps
"left" and "right" in captions. Other text and vectors pass through. All randomness
comes from the `rng` argument, which the pipeline derives from (seed, position in the
sample stream).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from fourm import modalities
from fourm.errors import UsageError
from fourm.modalities import Flip, Form, Resample

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), normalized to [0, 1]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Random resized crop + horizontal flip, or a deterministic center crop (`train=False`)."""
  resolution: int
  train: bool = True
  crop_scale: tuple[float, float] = (0.8, 1.0)   # fraction of the image area kept
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.5
  min_box_pixels: float = 1.0                   # boxes thinner than this after cropping go

  def __post_init__(self):
    low, high = self.crop_scale
    if not 0 < low <= high <= 1:
      raise UsageError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
    if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
      raise UsageError(f"crop_ratio must be positive and ordered, got {self.crop_ratio}")
    if not 0 <= self.flip_prob <= 1:
      raise UsageError(f"flip_prob must be in [0, 1], got {self.flip_prob}")


def center_crop_box(height: int, width: int) -> Box:
  """The largest centered square, so the output is not stretched."""
  side = min(height, width)
  x0, y0 = (width - side) / 2 / width, (height - side) / 2 / height
  return (x0, y0, x0 + side / width, y0 + side / height)


def random_crop_box(rng: np.random.Generator, height: int, width: int,
                    scale: tuple[float, float], ratio: tuple[float, float]) -> Box:
  """Inception-style random resized crop: area fraction in `scale`, aspect in `ratio`."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = math.sqrt(target_area * aspect)
    h = math.sqrt(target_area / aspect)
    if w <= width and h <= height:
      x0 = rng.uniform(0, width - w)
      y0 = rng.uniform(0, height - h)
      return (x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height)
  return center_crop_box(height, width)


def image_size(sample: Mapping[str, Any]) -> tuple[int, int] | None:
  """(H, W) shared by the sample's dense image modalities; None when it has none."""
  for name, value in sample.items():
    raw = modalities.RAW_MODALITIES.get(name)
    if raw is not None and raw.form == Form.IMAGE:
      return value.shape[:2]
  return None


def center_crop(raw_name: str, value: Any, resolution: int) -> Any:
  """One raw value center-cropped and resized to `resolution`, as evaluation reads it."""
  crop = AugmentConfig(resolution=resolution, train=False)
  return augment({raw_name: value}, crop)[raw_name]


def augment(sample: Mapping[str, Any], config: AugmentConfig,
            rng: np.random.Generator | None = None) -> dict[str, Any]:
  """Applies one crop (+ flip) to every modality of `sample`."""
  tokens = [name for name in sample if name not in modalities.RAW_MODALITIES]
  if config.train and tokens:
    raise UsageError(f"token grids {tokens} were computed on the whole image and cannot follow "
                     "a random crop: read token records with augment=False")
  size = image_size(sample)
  if size is None:  # nothing spatial to crop (e.g. token records with captions)
    return dict(sample)
  height, width = size
  if config.train:
    if rng is None:
      raise UsageError("training augmentation needs an rng")
    box = random_crop_box(rng, height, width, config.crop_scale, config.crop_ratio)
    flip = bool(rng.uniform() < config.flip_prob)
  else:
    box, flip = center_crop_box(height, width), False
  return apply_crop(sample, box, flip, config.resolution, config.min_box_pixels)


def apply_crop(sample: Mapping[str, Any], box: Box, flip: bool, resolution: int,
               min_box_pixels: float = 1.0) -> dict[str, Any]:
  out = {}
  for name, value in sample.items():
    if name not in modalities.RAW_MODALITIES:  # token ids (tok_rgb, ...): taken as they are
      out[name] = value
      continue
    raw = modalities.get_raw(name)
    if raw.form == Form.IMAGE:
      out[name] = _crop_dense(value, box, (resolution, resolution), raw, flip)
    elif raw.form == Form.FEATURE_MAP:
      out[name] = _crop_dense(value, box, value.shape[:2], raw, flip)
    elif raw.form == Form.BOXES:
      out[name] = crop_boxes(value, box, flip, min_size=min_box_pixels / resolution)
    elif flip and raw.flip == Flip.SWAP_LEFT_RIGHT:
      out[name] = swap_left_right(value)
    else:
      out[name] = value
  return out


def _crop_dense(array: np.ndarray, box: Box, out_hw: tuple[int, int], raw: modalities.RawSpec,
                flip: bool) -> np.ndarray:
  height, width = array.shape[:2]
  pixel_box = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
  nearest = raw.resample == Resample.NEAREST
  result = resize_box(array, pixel_box, out_hw, nearest=nearest)
  if flip:
    result = result[:, ::-1]
    if raw.flip == Flip.NEGATE_X:
      result = result.copy()
      result[..., 0] = -result[..., 0]
  if raw.unit_vectors:
    # Interpolating unit vectors shortens them; renormalize so they stay unit length.
    norm = np.linalg.norm(result, axis=-1, keepdims=True)
    result = result / np.maximum(norm, 1e-6)
  return np.ascontiguousarray(result, dtype=array.dtype)


def resize_box(array: np.ndarray, pixel_box: tuple[float, float, float, float],
               out_hw: tuple[int, int], *, nearest: bool) -> np.ndarray:
  """Resamples the region `pixel_box` (x0, y0, x1, y1, pixels) of `array` to `out_hw`.

  uint8 images and label maps go through PIL in one call. Float maps of any channel
  count (depth, normals, 64-channel features) are resampled in numpy with two separable
  weight matrices: one matrix product per axis instead of one PIL image per channel.
  """
  if array.dtype == np.uint8 and (array.ndim == 2 or array.shape[2] == 3):
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((out_hw[1], out_hw[0]), method,
                                                    box=pixel_box))
  x0, y0, x1, y1 = pixel_box
  rows = _axis_weights(array.shape[0], out_hw[0], y0, y1, nearest)   # [out_h, H]
  cols = _axis_weights(array.shape[1], out_hw[1], x0, x1, nearest)   # [out_w, W]
  channels = array.reshape(array.shape[0], array.shape[1], -1).astype(np.float32)
  result = np.matmul(cols, np.tensordot(rows, channels, axes=(1, 0)))  # [out_h, out_w, C]
  if nearest:
    result = np.rint(result)
  return result.reshape(out_hw + array.shape[2:]).astype(array.dtype)


def _axis_weights(in_size: int, out_size: int, start: float, end: float,
                  nearest: bool) -> np.ndarray:
  """[out_size, in_size] resampling weights for the source interval [start, end).

  Bilinear is a triangle filter, widened by the shrink factor when shrinking so that
  every source pixel contributes (antialiasing, as PIL does); nearest picks the source
  pixel under each output pixel's center. Taps outside the image are dropped and the
  rest renormalized, which clamps at the borders.
  """
  scale = (end - start) / out_size
  centers = start + (np.arange(out_size) + 0.5) * scale
  source = np.arange(in_size) + 0.5
  if nearest:
    nearest_index = np.clip(np.floor(centers), 0, in_size - 1).astype(int)
    return np.eye(in_size, dtype=np.float32)[nearest_index]
  support = max(scale, 1.0)
  weights = np.maximum(0.0, 1.0 - np.abs(source[None, :] - centers[:, None]) / support)
  total = weights.sum(axis=1, keepdims=True)
  return (weights / np.where(total > 0, total, 1.0)).astype(np.float32)


_LEFT_RIGHT = re.compile(r"\b(left|right)(most)?\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
  """Mirrors a description: left <-> right (case kept), for horizontally flipped images."""
  def swap(match: re.Match) -> str:
    word = match.group(1)
    other = {"left": "right", "right": "left"}[word.lower()]
    if word.isupper():
      other = other.upper()
    elif word[0].isupper():
      other = other.capitalize()
    return other + (match.group(2) or "")
  return _LEFT_RIGHT.sub(swap, text)


def crop_boxes(det: Mapping[str, Any], box: Box, flip: bool, min_size: float) -> dict[str, Any]:
  """Maps boxes into the crop; boxes left thinner than `min_size` (normalized) go."""
  boxes = np.asarray(det["boxes"], np.float32).reshape(-1, 4)
  x0, y0, x1, y1 = box
  scale = np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0], np.float32)
  offset = np.array([x0, y0, x0, y0], np.float32)
  moved = np.clip((boxes - offset) / scale, 0.0, 1.0)
  keep = ((moved[:, 2] - moved[:, 0]) >= min_size) & ((moved[:, 3] - moved[:, 1]) >= min_size)
  if flip:
    moved = np.stack([1 - moved[:, 2], moved[:, 1], 1 - moved[:, 0], moved[:, 3]], axis=1)
  out = {"boxes": moved[keep].astype(np.float32),
         "classes": [c for c, k in zip(det["classes"], keep) if k]}
  if "scores" in det:
    out["scores"] = np.asarray(det["scores"], np.float32)[keep]
  return out
