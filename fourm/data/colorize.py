"""Color maps that turn single modalities into uint8 RGB images.

  * depth: inverse depth through a viridis-like map; near is bright yellow, far is dark
    purple, invalid (non-positive or non-finite) depth is black.
  * normals: `(n * 0.5 + 0.5) * 255` per axis in the OpenCV camera frame, so
    R = x (right), G = y (down), B = z (forward). A surface facing the camera has
    z < 0, so it is low in blue: (0, 0, -1) is (128, 128, 0), olive.
  * class ids and instance ids: a fixed palette in which id 0 is near-black.
  * feature maps: the sample's own first three principal components.

Used by the sample grids (`visualize`) and, later, by detokenizers that show generated
modalities.
"""

from __future__ import annotations

import colorsys
import functools
import zlib

import numpy as np
from PIL import Image

BACKGROUND_CLASS_COLOR = (20, 20, 20)
# Anchors of a viridis-like color map (dark purple -> blue -> teal -> green -> yellow).
# Luminance rises monotonically along them, and so along their linear interpolation,
# so brightness alone orders values even in greyscale print.
_COLOR_MAP_ANCHORS = np.array([
    (68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37),
], dtype=np.float64)
_GOLDEN_RATIO_CONJUGATE = 0.6180339887498949


# --------------------------------------------------------------------------------------
# Color maps for single modalities.


@functools.lru_cache(maxsize=None)
def _color_lut(size: int = 256) -> np.ndarray:
  """A [size, 3] uint8 table interpolated linearly between the anchor colors."""
  positions = np.linspace(0.0, 1.0, len(_COLOR_MAP_ANCHORS))
  samples = np.linspace(0.0, 1.0, size)
  channels = [np.interp(samples, positions, _COLOR_MAP_ANCHORS[:, c]) for c in range(3)]
  return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def apply_color_map(values: np.ndarray) -> np.ndarray:
  """Maps values in [0, 1] (clipped) to uint8 RGB; 1 is the bright end."""
  lut = _color_lut()
  index = np.round(np.clip(values, 0.0, 1.0) * (len(lut) - 1)).astype(np.int64)
  return lut[index]


def depth_to_rgb(depth: np.ndarray, vmin: float | None = None,
                 vmax: float | None = None) -> np.ndarray:
  """Colors metric depth [H, W] as uint8 [H, W, 3]: near is bright and warm.

  Inverse depth is what is colored, since it spends the color range on the nearby
  structure a viewer cares about instead of on the far background. `vmin` and `vmax`
  are the nearest and farthest depths in metres that get distinct colors; by default
  they come from the 98th and 2nd percentiles of the valid pixels' inverse depth, so a
  few outliers do not wash out the rest. Invalid pixels (<= 0 or non-finite) are black.
  """
  depth = np.asarray(depth, dtype=np.float64)
  if depth.ndim == 3 and depth.shape[-1] == 1:
    depth = depth[..., 0]
  if depth.ndim != 2:
    raise ValueError(f"depth must be [H, W], got shape {depth.shape}")
  valid = np.isfinite(depth) & (depth > 0)
  inverse = np.zeros_like(depth)
  inverse[valid] = 1.0 / depth[valid]
  if not valid.any():
    return np.zeros(depth.shape + (3,), np.uint8)
  low, high = np.percentile(inverse[valid], [2.0, 98.0])
  if vmax is not None:
    low = 1.0 / vmax
  if vmin is not None:
    high = 1.0 / vmin
  if high > low:
    scaled = (inverse - low) / (high - low)
  else:  # a flat scene (or a degenerate range): one mid color rather than a division by 0
    scaled = np.full_like(inverse, 0.5)
  rgb = apply_color_map(scaled)
  rgb[~valid] = 0
  return rgb


def normal_to_rgb(normal: np.ndarray) -> np.ndarray:
  """Colors unit normals [H, W, 3] as uint8 [H, W, 3] by `(n * 0.5 + 0.5) * 255`.

  The convention is the OpenCV camera frame of the data: R encodes x (right), G encodes
  y (down), B encodes z (forward, into the scene). Normals face the camera, so z <= 0
  and blue stays low; a wall seen head-on, (0, 0, -1), is (128, 128, 0). Non-finite
  components (pixels without a normal) become 0.
  """
  normal = np.asarray(normal, dtype=np.float64)
  if normal.ndim != 3 or normal.shape[-1] != 3:
    raise ValueError(f"normal must be [H, W, 3], got shape {normal.shape}")
  finite = np.isfinite(normal).all(axis=-1)
  rgb = np.round(np.clip(normal * 0.5 + 0.5, 0.0, 1.0) * 255.0)
  rgb[~finite] = 0
  return rgb.astype(np.uint8)


@functools.lru_cache(maxsize=64)
def _palette_cached(num_classes: int) -> np.ndarray:
  colors = [BACKGROUND_CLASS_COLOR]
  seen = {BACKGROUND_CLASS_COLOR}
  # Value and saturation cycle with different periods so that neighbouring ids differ
  # in brightness too, and nothing but id 0 gets dark enough to read as background.
  values = (0.95, 0.72, 0.85)
  saturations = (0.85, 0.55, 0.95, 0.7)
  for k in range(1, num_classes):
    # Golden-ratio steps around the hue circle: any prefix of the sequence is spread
    # evenly, so the first few classes (the ones usually present) are far apart.
    hue = (0.08 + k * _GOLDEN_RATIO_CONJUGATE) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, saturations[k % 4], values[k % 3])
    color = tuple(int(round(c * 255)) for c in rgb)
    while color in seen:  # rare rounding collisions for large palettes
      color = (color[0], color[1], (color[2] + 37) % 256)
    seen.add(color)
    colors.append(color)
  palette_array = np.array(colors[:num_classes], dtype=np.uint8).reshape(num_classes, 3)
  palette_array.setflags(write=False)
  return palette_array


def palette(num_classes: int) -> np.ndarray:
  """uint8 [num_classes, 3] distinct colors; id 0 is near-black.

  Deterministic, and every palette is a prefix of the larger ones, so a class keeps its
  color whatever `num_classes` a caller asks for.
  """
  if num_classes < 0:
    raise ValueError(f"num_classes must be >= 0, got {num_classes}")
  return _palette_cached(int(num_classes)).copy()


def semseg_to_rgb(semseg: np.ndarray, num_classes: int | None = None) -> np.ndarray:
  """Colors class ids [H, W] with `palette`; ids beyond `num_classes` still get colors."""
  semseg = np.asarray(semseg)
  if semseg.ndim == 3 and semseg.shape[-1] == 1:
    semseg = semseg[..., 0]
  if semseg.ndim != 2:
    raise ValueError(f"semseg must be [H, W], got shape {semseg.shape}")
  ids = semseg.astype(np.int64)
  if ids.size and ids.min() < 0:
    raise ValueError("class ids must be non-negative")
  needed = int(ids.max()) + 1 if ids.size else 1
  return palette(max(needed, num_classes or 0))[ids]


def class_color(name: str) -> tuple[int, int, int]:
  """A color for a class name that is stable across runs and processes.

  Python's `hash` of a str is salted per process, so a CRC picks the palette entry.
  """
  index = 1 + zlib.crc32(name.encode("utf-8")) % 63
  return tuple(int(c) for c in palette(64)[index])


def features_to_rgb(features: np.ndarray, size: int) -> np.ndarray:
  """Shows a feature map [G, G, D] as uint8 [size, size, 3].

  The sample's own G*G vectors are projected on their 3 principal components, so the
  colors show which patches the features group together. Each channel is min-max
  normalized, and the grid is upscaled with NEAREST so each patch stays a flat square.
  """
  features = np.asarray(features, dtype=np.float64)
  if features.ndim == 2:
    features = features[..., None]
  if features.ndim != 3:
    raise ValueError(f"features must be [G, G, D], got shape {features.shape}")
  rows, cols, dim = features.shape
  vectors = np.nan_to_num(features.reshape(rows * cols, dim))
  centered = vectors - vectors.mean(axis=0, keepdims=True)
  projected = np.zeros((rows * cols, 3))
  if centered.size and np.any(centered):
    _, _, components = np.linalg.svd(centered, full_matrices=False)
    components = components[:3]
    # A principal direction's sign is arbitrary; pin it so the colors are reproducible.
    signs = np.sign(components[np.arange(len(components)),
                               np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    projected[:, :len(components)] = centered @ components.T
  rgb = _min_max_to_uint8(projected, per_channel=True).reshape(rows, cols, 3)
  return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.NEAREST))


def _min_max_to_uint8(values: np.ndarray, per_channel: bool = False) -> np.ndarray:
  """Linearly stretches finite values to [0, 255]; constant input becomes 0."""
  values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0,
                         neginf=0.0)
  axis = tuple(range(values.ndim - 1)) if per_channel else None
  low = values.min(axis=axis, keepdims=True) if values.size else 0.0
  high = values.max(axis=axis, keepdims=True) if values.size else 1.0
  span = np.where(high > low, high - low, 1.0)
  return np.round((values - low) / span * 255.0).astype(np.uint8)


def generic_to_rgb(array: np.ndarray) -> np.ndarray | None:
  """Best-effort picture of an unknown modality, or None if it is not an image.

  2D arrays are shown in grey; [H, W, C] arrays by their first 3 channels (one channel
  in grey, two with an empty blue). Both are min-max stretched over all shown values,
  which keeps the relative color of image-like data.
  """
  array = np.asarray(array)
  if array.dtype == bool:
    array = array.astype(np.uint8)
  if not (np.issubdtype(array.dtype, np.number)) or array.ndim not in (2, 3):
    return None
  if array.ndim == 2:
    array = array[..., None]
  if array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] == 0:
    return None
  channels = _min_max_to_uint8(array[..., :3])
  if channels.shape[-1] == 1:
    return np.repeat(channels, 3, axis=-1)
  if channels.shape[-1] == 2:
    return np.concatenate([channels, np.zeros_like(channels[..., :1])], axis=-1)
  return channels


def image_to_uint8_rgb(image: np.ndarray) -> np.ndarray:
  """rgb as stored (uint8) or as float in [0, 1] / [0, 255], grey or RGB -> uint8 RGB."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise ValueError(f"rgb must be [H, W, C], got shape {image.shape}")
  if image.dtype != np.uint8:
    image = np.nan_to_num(image.astype(np.float64))
    scale = 255.0 if image.size and image.max() <= 1.0 else 1.0
    image = np.round(np.clip(image * scale, 0, 255)).astype(np.uint8)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image[..., :3])
