"""Tiles of 4M-21's sequence modalities, drawn by what their values mean.

Registered with `fourm.data.tiles.register_drawer` under the `values` of their raw
modalities (never their names), so any raw modality of one of these meanings draws:

* "color_palette", uint8 [K, 3]: K horizontal bands, the most prominent color on top,
  each with its hex code where it fits.
* "human_poses", float32 [N, 34]: each person's box (columns 0:4, normalized (xmin,
  ymin, xmax, ymax)) labelled "person" over the sample's image (a grey canvas without
  one); no one: the image alone.
* "sam_instance", int [R, 22]: the query points (columns 0:2, (x, y) in pixels of the
  224 px image) as dots, each with the boxes of the instances that contain it (columns
  2:6, (xmin, ymin, xmax, ymax) pixels, the max the last pixel covered) in the point's
  color; a point that no instance contains (box -1) is a ring.
* "metadata", float [21] in `METADATA_KEYS` order (NaN where absent), or the {kind:
  value} dict decoding gives: a "kind: value" line per present entry, as many as fit.

Two raw-only modalities that the 4M-21 pseudo-labelers write draw like their families:

* "sam_instance_masks", int32 [R, 22 + 64*64] (sam_instance rows, tokens -1, each with
  its instance's mask): drawn as "sam_instance" over the image's center square, the
  frame its pixels are of.
* "human_keypoints", float32 [N, 56] (box, score, 17 (x, y, score) in [0, 1] of the
  image): each person's box labelled "person" and its keypoints as dots, a color a
  person.

The layouts are those of the codecs in `tokenizers_vq` (palette.py, human_poses.py,
sam_instance.py, metadata.py), which `fourm.data` may not import (the import layers of
pyproject.toml), so the few constants needed are repeated here; tests/test_visualize.py
checks that they agree. Decoded (generated) values have the same layouts and may be empty
(no colors, no entries): those draw as a blank tile saying so. A value of the wrong shape
draws nothing (the column is left out for that sample).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fourm import modalities
from fourm.data.colorize import palette
from fourm.modalities import METADATA_KEYS
from fourm.data.draw import (TEXT_SIZE, draw_boxes, draw_points, font, line_height,
                             readable_text_color, text_width, wrap_text)
from fourm.data.tiles import (TileContext, blank_tile, image_or_canvas, pad_to_square,
                              register_drawer)

# tokenizers_vq/human_poses.py: a person's row and where its box is in it.
POSE_WIDTH = 34
POSE_BOX = slice(0, 4)
# tokenizers_vq/sam_instance.py: a row (point, box, 16 tokens) and the image its pixels are of.
SAM_WIDTH = 22
SAM_IMAGE_SIZE = 224
# pseudolabel/sam.py: an untokenized row carries its instance's 64 x 64 mask after the 22.
SAM_MASK_SIZE = 64
# pseudolabel/human_poses.py: box, score, then 17 keypoints (x, y, score).
KEYPOINTS_BOX = slice(0, 4)
KEYPOINTS_FIRST = 5
KEYPOINTS = 17

TEXT_COLOR = (30, 30, 30)
PAPER_COLOR = (250, 250, 250)   # a text tile's background (lighter than an absent tile)
PAPER_EDGE_COLOR = (215, 215, 215)
MARGIN = 4


def tile_font(tile: int):
  """The text size of a tile: TEXT_SIZE at the usual 160 px, smaller in small tiles."""
  return font(max(9, min(TEXT_SIZE, tile // 12)))


# --------------------------------------------------------------------------------------
# Color palette.


def draw_palette(value, context: TileContext) -> np.ndarray | None:
  """K colors as K horizontal bands filling the tile, each with its hex code if it fits."""
  colors = np.asarray(value)
  if colors.size % 3 or colors.dtype.kind not in "iuf":
    return None
  colors = np.clip(np.nan_to_num(colors.reshape(-1, 3)), 0, 255).round().astype(np.uint8)
  tile = context.tile
  if not len(colors):
    return blank_tile(tile, "no colors")
  canvas = Image.new("RGB", (tile, tile))
  draw = ImageDraw.Draw(canvas)
  text_font = tile_font(tile)
  edges = np.linspace(0, tile, len(colors) + 1).round().astype(int)
  for color, top, bottom in zip(colors.tolist(), edges[:-1], edges[1:]):
    color = tuple(color)
    draw.rectangle((0, top, tile - 1, bottom - 1), fill=color)
    label = "#{:02x}{:02x}{:02x}".format(*color)
    room = bottom - top
    if room >= line_height(text_font) and text_width(label, text_font) <= tile - 2 * MARGIN:
      # Centered; the band's ends stay the pure color.
      left = (tile - text_width(label, text_font)) // 2
      glyph_top = text_font.getbbox(label)[1]
      glyph_height = text_font.getbbox(label)[3] - glyph_top
      draw.text((left, top + (room - glyph_height) // 2 - glyph_top), label,
                font=text_font, fill=readable_text_color(color))
  return np.asarray(canvas)


# --------------------------------------------------------------------------------------
# Human poses.


def draw_human_poses(value, context: TileContext) -> np.ndarray | None:
  """Each person's box, labelled "person", over the sample's image."""
  people = np.asarray(value)
  if people.dtype.kind not in "iuf" or people.size % POSE_WIDTH:
    return None
  boxes = people.reshape(-1, POSE_WIDTH)[:, POSE_BOX]
  drawn = draw_boxes(image_or_canvas(context), boxes, ["person"] * len(boxes))
  return pad_to_square(drawn, context.tile)


# --------------------------------------------------------------------------------------
# SAM instances.


def draw_sam_instances(value, context: TileContext) -> np.ndarray | None:
  """The query points as dots and the boxes of their instances, a color per point."""
  rows = np.asarray(value)
  if rows.dtype.kind not in "iuf" or rows.size % SAM_WIDTH:
    return None
  rows = rows.reshape(-1, SAM_WIDTH).astype(np.float64)
  base = image_or_canvas(context)
  # The points in order of appearance; the rows of a point are consecutive when written.
  points: dict[tuple[float, float], int] = {}
  for x, y in rows[:, :2].tolist():
    points.setdefault((x, y), len(points))
  colors = palette(len(points) + 1)[1:]  # id 0 is the near-black background color
  index = np.asarray([points[(x, y)] for x, y in rows[:, :2].tolist()], np.int64)
  hit = ~(rows[:, 2:6] < 0).any(axis=1)
  boxes = rows[hit, 2:6] + np.array([0.0, 0.0, 1.0, 1.0])  # the max pixel is covered
  drawn = draw_boxes(base, boxes / SAM_IMAGE_SIZE, [""] * len(boxes),
                     colors=colors[index[hit]])
  centers = (np.asarray(list(points), np.float64).reshape(-1, 2) + 0.5) / SAM_IMAGE_SIZE
  found = np.zeros(len(points), bool)
  found[index[hit]] = True
  drawn = draw_points(drawn, centers, colors, hollow=~found)
  return pad_to_square(drawn, context.tile)


def draw_sam_instance_masks(value, context: TileContext) -> np.ndarray | None:
  """The sam_instance columns of untokenized rows, over the image's center square (the
  224 px frame of their pixels is that square)."""
  rows = np.asarray(value)
  if rows.ndim != 2 or rows.shape[1] != SAM_WIDTH + SAM_MASK_SIZE ** 2 or \
      rows.dtype.kind not in "iu":
    return None
  sample = dict(context.sample)
  for name, image in context.sample.items():
    if _is_color_image(name, image):
      height, width = image.shape[:2]
      side = min(height, width)
      top, left = (height - side) // 2, (width - side) // 2
      sample[name] = image[top:top + side, left:left + side]
  square = TileContext(sample, context.tile, context.num_classes)
  return draw_sam_instances(rows[:, :SAM_WIDTH], square)


def _is_color_image(name: str, value) -> bool:
  raw = modalities.RAW_MODALITIES.get(name)
  return (raw is not None and raw.values == modalities.Values.COLOR
          and raw.form == modalities.Form.IMAGE and isinstance(value, np.ndarray)
          and value.ndim >= 2)


def draw_human_keypoints(value, context: TileContext) -> np.ndarray | None:
  """Each person's box, labelled "person", and keypoints over the sample's image."""
  people = np.asarray(value)
  width = KEYPOINTS_FIRST + 3 * KEYPOINTS
  if people.ndim != 2 or people.shape[1] != width or people.dtype.kind != "f":
    return None
  colors = palette(len(people) + 1)[1:]
  drawn = draw_boxes(image_or_canvas(context), people[:, KEYPOINTS_BOX], ["person"] * len(people),
                     colors=colors)
  joints = people[:, KEYPOINTS_FIRST:].reshape(len(people), KEYPOINTS, 3)[..., :2]
  drawn = draw_points(drawn, joints.reshape(-1, 2), np.repeat(colors, KEYPOINTS, axis=0),
                      radius=max(1, context.tile // 80))
  return pad_to_square(drawn, context.tile)


# --------------------------------------------------------------------------------------
# Metadata.


def metadata_entries(value) -> list[tuple[str, float]] | None:
  """(kind, value) of the present entries of a [21] array (NaN: absent) or a dict, in
  `METADATA_KEYS` order (kinds a dict has beyond them follow); None if neither."""
  if isinstance(value, Mapping):
    known = [(k, value[k]) for k in METADATA_KEYS if k in value]
    other = [(str(k), v) for k, v in value.items() if k not in METADATA_KEYS]
    entries = known + other
  else:
    array = np.asarray(value)
    if array.shape != (len(METADATA_KEYS),) or array.dtype.kind not in "iuf":
      return None
    entries = list(zip(METADATA_KEYS, array.tolist()))
  present = []
  for key, number in entries:
    try:
      number = float(number)
    except (TypeError, ValueError):
      continue
    if not math.isnan(number):
      present.append((key, number))
  return present


def format_number(number: float) -> str:
  """Whole numbers as integers, others with 3 significant digits (no exponent below
  a million)."""
  if not math.isfinite(number):
    return str(number)
  if number == round(number) or abs(number) >= 100:
    return str(int(round(number)))
  return f"{number:.3g}"


def draw_metadata(value, context: TileContext) -> np.ndarray | None:
  """"kind: value" lines, wrapped to the tile, as many entries as fit (then "+N more")."""
  entries = metadata_entries(value)
  if entries is None:
    return None
  tile = context.tile
  if not entries:
    return blank_tile(tile, "no entries")
  text_font = tile_font(tile)
  line = line_height(text_font)
  width = tile - 2 * MARGIN
  max_lines = max(1, (tile - 2 * MARGIN) // line)
  blocks = [wrap_text(f"{key}: {format_number(number)}", width, text_font)
            for key, number in entries]
  lines: list[str] = []
  for i, block in enumerate(blocks):
    # Room for this entry, and for a "+N more" line unless it is the last entry.
    reserve = 0 if i == len(blocks) - 1 else 1
    if len(lines) + len(block) + reserve > max_lines:
      lines.append(f"+{len(blocks) - i} more")
      break
    lines.extend(block)
  canvas = Image.new("RGB", (tile, tile), PAPER_COLOR)
  draw = ImageDraw.Draw(canvas)
  draw.rectangle((0, 0, tile - 1, tile - 1), outline=PAPER_EDGE_COLOR)
  for j, text in enumerate(lines[:max_lines]):
    draw.text((MARGIN, MARGIN + j * line), text, font=text_font, fill=TEXT_COLOR)
  return np.asarray(canvas)


SEQUENCE_DRAWERS: dict[str, Any] = {
    "color_palette": draw_palette,
    "human_poses": draw_human_poses,
    "sam_instance": draw_sam_instances,
    "metadata": draw_metadata,
    "sam_instance_masks": draw_sam_instance_masks,
    "human_keypoints": draw_human_keypoints,
}
for _values, _drawer in SEQUENCE_DRAWERS.items():
  register_drawer(_values, _drawer)
