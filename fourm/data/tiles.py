"""One square picture per modality of a sample, drawn by what the values mean.

The drawer of a raw modality is chosen by its registry entry's `values` (colors as
they are, distances color-mapped, directions as colors, classes with the palette,
features by PCA, boxes over the sample's image), never by its name, so a new modality
of a known meaning is drawn without code here; a new meaning registers a drawer:

    register_drawer("palette", lambda value, context: ...)   # -> uint8 [tile, tile, 3]

4M-21's sequence families (color palettes, metadata, human poses, SAM instances) are
drawn by `fourm.data.sequence_tiles`, registered here on import.

Keys that are not registered raw modalities (token grids, "<raw> (given)" columns of
generation, which draw as their raw) fall back to a generic rendering of numeric arrays.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fourm import modalities
from fourm.data.colorize import (depth_to_rgb, features_to_rgb, generic_to_rgb,
                                 image_to_uint8_rgb, normal_to_rgb, semseg_to_rgb)
from fourm.data.draw import (TEXT_SIZE, as_text, draw_boxes, draw_centered, font,
                             line_height)

Values = modalities.Values

BLANK_COLOR = (236, 236, 236)       # a modality the sample does not have
BLANK_TEXT_COLOR = (170, 170, 170)
CANVAS_COLOR = (128, 128, 128)      # what boxes are drawn on when there is no image

# Column order by meaning: the image first, what is drawn over it next to it (boxes, people,
# queried instances), then dense geometry and labels, then features, then the image's
# colors and metadata; meanings without a place here follow, then unregistered keys.
TILE_ORDER = (Values.COLOR, Values.BOXES, "human_poses", "human_keypoints", "sam_instance",
              "sam_instance_masks", Values.DISTANCE, Values.DIRECTION, Values.CLASSES,
              Values.INSTANCES, Values.FEATURES, "color_palette", "metadata")
# Meanings shown as text under a sample's row (TEXT) or not at all (NAME).
NOT_TILES = frozenset({Values.TEXT, Values.NAME})


@dataclasses.dataclass(frozen=True)
class TileContext:
  """What a drawer may need besides the value: the whole sample and the tile size."""
  sample: Mapping[str, Any]
  tile: int
  num_classes: int | None = None


Drawer = Callable[[Any, TileContext], np.ndarray]


def fit_to_square(image: np.ndarray, tile: int, resample: Image.Resampling) -> np.ndarray:
  """Resizes so the longer side is `tile`, keeping the aspect ratio (not yet padded)."""
  height, width = image.shape[:2]
  scale = tile / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  if size == (width, height):
    return image
  return np.asarray(Image.fromarray(image).resize(size, resample))


def pad_to_square(image: np.ndarray, tile: int) -> np.ndarray:
  """Centers a fitted image on a blank tile (a no-op for square images)."""
  height, width = image.shape[:2]
  if (height, width) == (tile, tile):
    return image
  out = np.empty((tile, tile, 3), np.uint8)
  out[...] = BLANK_COLOR
  top, left = (tile - height) // 2, (tile - width) // 2
  out[top:top + height, left:left + width] = image
  return out


def to_tile(image: np.ndarray, tile: int, labels: bool) -> np.ndarray:
  """A uint8 RGB picture as a tile; label maps upscale NEAREST (no invented values)."""
  resample = Image.Resampling.NEAREST if labels else Image.Resampling.BILINEAR
  return pad_to_square(fit_to_square(image, tile, resample), tile)


def blank_tile(tile: int, text: str = "absent") -> np.ndarray:
  """The tile for a modality a sample lacks: flat light grey with a faint note."""
  canvas = Image.new("RGB", (tile, tile), BLANK_COLOR)
  draw = ImageDraw.Draw(canvas)
  note_font = font(TEXT_SIZE - 2)
  draw_centered(draw, tile / 2, (tile - line_height(note_font)) / 2, text, note_font,
                BLANK_TEXT_COLOR)
  return np.asarray(canvas)


def _picture(to_rgb: Callable[[np.ndarray], np.ndarray], labels: bool) -> Drawer:
  return lambda value, context: to_tile(to_rgb(value), context.tile, labels)


def _classes(value, context: TileContext) -> np.ndarray:
  return to_tile(semseg_to_rgb(value, context.num_classes), context.tile, labels=True)


def _features(value, context: TileContext) -> np.ndarray | None:
  """A feature map [G, G, D] by its principal components; a sequence of vectors [L, D]
  (4M-21's t5_caption) the same way, as L vertical bands in order; one vector [D] (a
  global feature) as its values in grey, row-major on the smallest square grid."""
  value = np.asarray(value)
  if value.ndim == 2:
    return features_to_rgb(value[None], context.tile)
  if value.ndim == 1 and value.size:
    grey = generic_to_rgb(value[None])
    if grey is None:
      return None
    side = math.ceil(math.sqrt(value.size))
    cells = np.empty((side * side, 3), np.uint8)
    cells[...] = BLANK_COLOR                  # the square's cells past the vector's end
    cells[:value.size] = grey[0]
    return to_tile(cells.reshape(side, side, 3), context.tile, labels=True)
  if value.ndim != 3:
    return None
  return features_to_rgb(value, context.tile)


def image_or_canvas(context: TileContext) -> np.ndarray:
  """What is drawn over: the sample's image fitted to the tile (not yet padded, so
  normalized coordinates stay the image's), or a grey tile when it has none."""
  image = next((context.sample[raw.name] for raw in modalities.raws_with(Values.COLOR)
                if raw.form == modalities.Form.IMAGE
                and context.sample.get(raw.name) is not None), None)
  if image is not None:
    return fit_to_square(image_to_uint8_rgb(image), context.tile, Image.Resampling.BILINEAR)
  base = np.empty((context.tile, context.tile, 3), np.uint8)
  base[...] = CANVAS_COLOR
  return base


def _boxes(value, context: TileContext) -> np.ndarray:
  """Boxes over the (tile-sized) image of the sample, so labels are drawn readably."""
  drawn = draw_boxes(image_or_canvas(context), value.get("boxes", np.zeros((0, 4))),
                     value.get("classes", []), value.get("valid"))
  return pad_to_square(drawn, context.tile)


DRAWERS: dict[str, Drawer] = {
    Values.COLOR: _picture(image_to_uint8_rgb, labels=False),
    Values.DISTANCE: _picture(depth_to_rgb, labels=False),
    Values.DIRECTION: _picture(normal_to_rgb, labels=False),
    Values.CLASSES: _classes,
    Values.INSTANCES: _picture(semseg_to_rgb, labels=True),
    Values.FEATURES: _features,
    Values.BOXES: _boxes,
}


def register_drawer(values: str, drawer: Drawer) -> None:
  """How raw modalities whose values mean `values` are drawn."""
  DRAWERS[values] = drawer


def raw_of(key: str) -> modalities.RawSpec | None:
  """The registered raw modality a sample key shows ("depth (given)" shows depth)."""
  name = key.split(" (", 1)[0]
  return modalities.RAW_MODALITIES.get(name)


def is_text(key: str) -> bool:
  raw = raw_of(key)
  return raw is not None and raw.values == Values.TEXT


def _is_hidden(key: str) -> bool:
  if key.startswith("__") or key in modalities.RESERVED_NAMES:
    return True
  raw = raw_of(key)
  return raw is not None and raw.values in NOT_TILES


def column_key(key: str) -> tuple:
  """Sort key of a column: by meaning (TILE_ORDER), then registration order, then name."""
  raw = raw_of(key)
  if raw is None:
    return (len(TILE_ORDER) + 1, 0, key)
  rank = TILE_ORDER.index(raw.values) if raw.values in TILE_ORDER else len(TILE_ORDER)
  return (rank, list(modalities.RAW_MODALITIES).index(raw.name), key)


def _generic(value: Any, tile: int) -> np.ndarray | None:
  if not isinstance(value, np.ndarray):
    return None
  image = generic_to_rgb(value)
  if image is None:
    return None
  # Integer maps are ids or tokens; many channels mean a patch-feature grid. Both are
  # shown as flat cells, since interpolating them would invent values.
  many_channels = value.ndim == 3 and value.shape[-1] not in (1, 3, 4)
  labels = np.issubdtype(value.dtype, np.integer) or value.dtype == bool or many_channels
  return to_tile(image, tile, labels=labels)


def sample_tiles(sample: Mapping[str, Any], tile: int,
                 class_names=None) -> list[tuple[str, np.ndarray]]:
  """(title, uint8 [tile, tile, 3]) for every modality of `sample` that can be shown,
  in `column_key` order. Text, bookkeeping keys ("__name__", "meta", a sample's key)
  and values nothing can draw are left out."""
  context = TileContext(sample, tile, len(class_names) if class_names is not None else None)
  tiles = []
  for key in sorted((k for k in sample if not _is_hidden(k) and sample[k] is not None),
                    key=column_key):
    raw = raw_of(key)
    drawer = DRAWERS.get(raw.values) if raw is not None else None
    picture = drawer(sample[key], context) if drawer else _generic(sample[key], tile)
    if picture is not None:
      tiles.append((key, picture))
  return tiles


def sample_text(sample: Mapping[str, Any]) -> str:
  """The text shown under a sample's row: its "__text__", else its text modalities."""
  if sample.get("__text__") is not None:
    return str(sample["__text__"])
  return " | ".join(as_text(sample[k]) for k in sample
                    if is_text(k) and sample[k] is not None)


# The 4M-21 sequence drawers register themselves; imported last, as they use this module.
from fourm.data import sequence_tiles  # noqa: E402,F401  pylint: disable=wrong-import-position
