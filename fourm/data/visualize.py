"""Render raw multimodal samples as one readable PNG grid.

A sample is a dict keyed by modality name (see `fourm.modalities`); any modality may be
absent. `make_grid` lays samples out one per row and modalities one per column (the
union over all samples, with a blank tile where a sample lacks one), with the modality
names as column headers, each sample's caption under its row and, given class names, a
legend of the semantic classes that occur. Every modality becomes a square uint8 RGB
tile of the same size, so tiny (64 px) samples are upscaled enough to be read.

Colour conventions are those of `fourm.data.colorize`.

Only numpy and PIL are used, so this runs wherever the data pipeline runs.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fourm.data.colorize import (class_colour, depth_to_rgb, features_to_rgb, generic_to_rgb,
                                 image_to_uint8_rgb, normal_to_rgb, palette, semseg_to_rgb)

# Tile order: the image first, then its boxes next to it, then the dense geometry and
# labels, then features; unknown modalities follow in name order.
KNOWN_ORDER = ("rgb", "det", "depth", "normal", "semseg", "instance", "clip")
# Keys that are text or bookkeeping, never a tile.
_NOT_TILES = frozenset({"caption", "key", "meta"})

BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (30, 30, 30)
CAPTION_COLOUR = (70, 70, 70)
BLANK_COLOUR = (236, 236, 236)       # a modality the sample does not have
BLANK_TEXT_COLOUR = (170, 170, 170)
CANVAS_COLOUR = (128, 128, 128)      # what boxes are drawn on when there is no rgb
RULE_COLOUR = (222, 222, 222)        # between rows

PAD = 10           # outer margin
GAP = 6            # between the tiles of a row
ROW_GAP = 14       # between one row's caption and the next row
TEXT_SIZE = 13
TITLE_SIZE = 16
MAX_CAPTION_LINES = 4

# Sample names are often paths: break long ones after these rather than mid-word.
_BREAK_AFTER = frozenset("/_-.")


# --------------------------------------------------------------------------------------
# Text.


@functools.lru_cache(maxsize=8)
def font(size: int = TEXT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  """PIL's built-in font at `size`, or its fixed bitmap font without FreeType."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ImportError, OSError):
    return ImageFont.load_default()


def _text_width(text: str, text_font) -> int:
  return int(math.ceil(text_font.getlength(text)))


def _line_height(text_font) -> int:
  # The bottom of a descender, measured from where PIL places the line, plus leading.
  return text_font.getbbox("Ag|")[3] + 3


def _draw_centred(draw: ImageDraw.ImageDraw, centre_x: float, top: float, text: str,
                  text_font, fill) -> None:
  # Measured by hand rather than with PIL's text anchors, which the bitmap fallback
  # font does not support.
  draw.text((round(centre_x - text_font.getlength(text) / 2), round(top)), text,
            font=text_font, fill=fill)


def wrap_text(text: str, width: int, text_font) -> list[str]:
  """Greedy word wrap to `width` pixels; words wider than a line are split by letter."""
  lines: list[str] = []
  for paragraph in str(text).splitlines() or [""]:
    line = ""
    for word in paragraph.split():
      candidate = f"{line} {word}" if line else word
      if _text_width(candidate, text_font) <= width:
        line = candidate
        continue
      if line:
        lines.append(line)
      while _text_width(word, text_font) > width and len(word) > 1:
        cut = _split_point(word, width, text_font)
        lines.append(word[:cut])
        word = word[cut:]
      line = word
    lines.append(line)
  return lines


def _split_point(word: str, width: int, text_font) -> int:
  """Where to split a word too wide for a line: after a path separator if one fits."""
  fits = len(word) - 1
  while fits > 1 and _text_width(word[:fits], text_font) > width:
    fits -= 1
  separators = [i + 1 for i in range(1, fits) if word[i] in _BREAK_AFTER]
  return separators[-1] if separators else fits


def _truncate_lines(lines: list[str], max_lines: int, width: int, text_font) -> list[str]:
  """Keeps `max_lines`, marking the cut with an ellipsis that still fits the width."""
  if len(lines) <= max_lines:
    return lines
  kept = lines[:max_lines]
  last = kept[-1]
  while last and _text_width(last + " ...", text_font) > width:
    last = last[:-1]
  kept[-1] = last.rstrip() + " ..."
  return kept


def _as_text(value: Any) -> str:
  """Text as it may come out of records or a batch: str, bytes or a 0-d numpy array."""
  if isinstance(value, np.ndarray):
    value = value.item() if value.ndim == 0 else " ".join(_as_text(v) for v in value.ravel())
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  return str(value)


# --------------------------------------------------------------------------------------
# Boxes.


def _readable_text_colour(background: Sequence[int]) -> tuple[int, int, int]:
  luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
  return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def box_to_pixels(box: Sequence[float], height: int,
                  width: int) -> tuple[int, int, int, int] | None:
  """Normalised (xmin, ymin, xmax, ymax) -> inclusive pixel bounds, or None if empty.

  A box covers every pixel it overlaps: columns floor(xmin * W) .. ceil(xmax * W) - 1.
  """
  xmin, ymin, xmax, ymax = (float(v) for v in box)
  if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
    return None
  x0 = max(0, math.floor(xmin * width))
  y0 = max(0, math.floor(ymin * height))
  x1 = min(width - 1, math.ceil(xmax * width) - 1)
  y1 = min(height - 1, math.ceil(ymax * height) - 1)
  # Padded rows are usually all zeros: zero area in normalised terms means no box.
  if xmax <= xmin or ymax <= ymin or x1 < x0 or y1 < y0:
    return None
  return x0, y0, x1, y1


def draw_boxes(image: np.ndarray, boxes, classes, valid=None, *, line_width: int | None = None,
               font_size: int = 12) -> np.ndarray:
  """Draws labelled boxes over a copy of `image` (uint8 [H, W, 3]).

  `boxes` is [N, 4] normalised (xmin, ymin, xmax, ymax); `classes` is N names (a list or
  a numpy str/bytes/object array); rows with `valid[i]` False, and empty boxes, are
  skipped. Each class gets a colour from its name. The outline is drawn inward from the
  box's pixel bounds, and the label sits just above the box when there is room (so it
  hides nothing inside the box), otherwise just inside its top-left corner.
  """
  canvas = Image.fromarray(image_to_uint8_rgb(image))
  draw = ImageDraw.Draw(canvas)
  width, height = canvas.size
  boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  names = [_as_text(c) for c in (np.asarray(classes, dtype=object).ravel()
                                 if classes is not None else [])]
  keep = (np.ones(len(boxes), bool) if valid is None
          else np.asarray(valid, dtype=bool).ravel())
  if line_width is None:
    line_width = max(1, round(min(width, height) / 80))
  label_font = font(font_size)
  for i, box in enumerate(boxes):
    if i >= len(keep) or not keep[i]:
      continue
    bounds = box_to_pixels(box, height, width)
    if bounds is None:
      continue
    name = names[i] if i < len(names) else "?"
    colour = class_colour(name)
    draw.rectangle(bounds, outline=colour, width=line_width)
    if name:
      _draw_box_label(draw, bounds, name, colour, label_font, width)
  return np.asarray(canvas)


def _draw_box_label(draw: ImageDraw.ImageDraw, bounds: tuple[int, int, int, int], name: str,
                    colour: tuple[int, int, int], label_font, image_width: int) -> None:
  x0, y0, _, _ = bounds
  left, top, right, bottom = draw.textbbox((0, 0), name, font=label_font)
  label_width, label_height = right - left + 4, bottom - top + 2
  label_x = max(0, min(x0, image_width - label_width))
  label_y = y0 - label_height if y0 >= label_height else y0
  draw.rectangle((label_x, label_y, label_x + label_width - 1, label_y + label_height - 1),
                 fill=colour)
  draw.text((label_x + 2 - left, label_y + 1 - top), name, font=label_font,
            fill=_readable_text_colour(colour))


# --------------------------------------------------------------------------------------
# Tiles.


def _fit_to_square(image: np.ndarray, tile: int, resample: Image.Resampling) -> np.ndarray:
  """Resizes so the longer side is `tile`, keeping the aspect ratio (not yet padded)."""
  height, width = image.shape[:2]
  scale = tile / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  if size == (width, height):
    return image
  return np.asarray(Image.fromarray(image).resize(size, resample))


def _pad_to_square(image: np.ndarray, tile: int) -> np.ndarray:
  """Centres a fitted image on a blank tile (a no-op for square images)."""
  height, width = image.shape[:2]
  if (height, width) == (tile, tile):
    return image
  out = np.empty((tile, tile, 3), np.uint8)
  out[...] = BLANK_COLOUR
  top, left = (tile - height) // 2, (tile - width) // 2
  out[top:top + height, left:left + width] = image
  return out


def _to_tile(image: np.ndarray, tile: int, labels: bool) -> np.ndarray:
  resample = Image.Resampling.NEAREST if labels else Image.Resampling.BILINEAR
  return _pad_to_square(_fit_to_square(image, tile, resample), tile)


def blank_tile(tile: int, text: str = "absent") -> np.ndarray:
  """The tile for a modality a sample lacks: flat light grey with a faint note."""
  canvas = Image.new("RGB", (tile, tile), BLANK_COLOUR)
  draw = ImageDraw.Draw(canvas)
  note_font = font(TEXT_SIZE - 2)
  _draw_centred(draw, tile / 2, (tile - _line_height(note_font)) / 2, text, note_font,
                BLANK_TEXT_COLOUR)
  return np.asarray(canvas)


def _det_tile(sample: dict, tile: int) -> np.ndarray:
  """Boxes over the (tile-sized) rgb, so labels are drawn at a readable size."""
  if sample.get("rgb") is not None:
    base = _fit_to_square(image_to_uint8_rgb(sample["rgb"]), tile,
                          Image.Resampling.BILINEAR)
  else:
    base = np.empty((tile, tile, 3), np.uint8)
    base[...] = CANVAS_COLOUR
  det = sample["det"]
  drawn = draw_boxes(base, det.get("boxes", np.zeros((0, 4))), det.get("classes", []),
                     det.get("valid"))
  return _pad_to_square(drawn, tile)


def _is_hidden_key(key: str) -> bool:
  return key.startswith("__") or key in _NOT_TILES


def _known_tile(name: str, sample: dict, tile: int, num_classes: int | None) -> np.ndarray:
  value = sample[name]
  if name == "rgb":
    return _to_tile(image_to_uint8_rgb(value), tile, labels=False)
  if name == "det":
    return _det_tile(sample, tile)
  if name == "depth":
    return _to_tile(depth_to_rgb(value), tile, labels=False)
  if name == "normal":
    return _to_tile(normal_to_rgb(value), tile, labels=False)
  if name == "semseg":
    return _to_tile(semseg_to_rgb(value, num_classes), tile, labels=True)
  if name == "instance":
    return _to_tile(semseg_to_rgb(value), tile, labels=True)
  if name == "clip":
    return features_to_rgb(value, tile)
  raise KeyError(name)


def sample_tiles(sample: dict, tile: int,
                 class_names: Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
  """(title, uint8 [tile, tile, 3]) for every modality of `sample` that can be shown.

  Order: rgb, det, depth, normal, semseg, instance, clip, then unknown modalities by
  name. Label maps are upscaled with NEAREST, everything else with BILINEAR; images
  that are not square are letterboxed. Text, bookkeeping keys ("__name__", "key",
  "meta") and unknown values that are not 2D/3D numeric arrays are left out.
  """
  num_classes = len(class_names) if class_names is not None else None
  tiles = []
  for name in KNOWN_ORDER:
    if name in sample and sample[name] is not None:
      tiles.append((name, _known_tile(name, sample, tile, num_classes)))
  for name in sorted(k for k in sample if k not in KNOWN_ORDER and not _is_hidden_key(k)):
    value = sample[name]
    if not isinstance(value, np.ndarray):
      continue
    image = generic_to_rgb(value)
    if image is None:
      continue
    # Integer maps are ids or tokens; many channels mean a patch-feature grid. Both are
    # shown as flat cells, since interpolating them would invent values.
    many_channels = value.ndim == 3 and value.shape[-1] not in (1, 3, 4)
    labels = (np.issubdtype(value.dtype, np.integer) or value.dtype == bool
              or many_channels)
    tiles.append((name, _to_tile(image, tile, labels=labels)))
  return tiles


def _column_order(names) -> list[str]:
  known = {name: i for i, name in enumerate(KNOWN_ORDER)}
  return sorted(set(names), key=lambda n: (known.get(n, len(known)), n))


# --------------------------------------------------------------------------------------
# The grid.


def _present_class_ids(samples: Sequence[dict], num_classes: int) -> list[int]:
  present: set[int] = set()
  for sample in samples:
    if sample.get("semseg") is not None:
      present.update(int(i) for i in np.unique(np.asarray(sample["semseg"])))
  return sorted(i for i in present if i < num_classes)


def _legend_entries(samples, class_names) -> list[tuple[str, tuple[int, int, int]]]:
  """(name, colour) for each class that occurs in a semseg map of the grid."""
  if not class_names:
    return []
  colours = palette(len(class_names))
  return [(_as_text(class_names[i]), tuple(int(c) for c in colours[i]))
          for i in _present_class_ids(samples, len(class_names))]


def _layout_legend(entries, width: int, text_font) -> list[list[tuple[int, str, tuple]]]:
  """Flows legend entries into lines no wider than `width`: [(x, name, colour)] each."""
  swatch = _line_height(text_font) - 3
  lines: list[list[tuple[int, str, tuple]]] = [[]]
  x = 0
  for name, colour in entries:
    entry_width = swatch + 4 + _text_width(name, text_font)
    if x > 0 and x + entry_width > width:
      lines.append([])
      x = 0
    lines[-1].append((x, name, colour))
    x += entry_width + 14
  return lines if lines[0] else []


def make_grid(samples: Sequence[dict], *, tile: int = 160,
              class_names: Sequence[str] | None = None,
              title: str | None = None) -> Image.Image:
  """One PNG-ready RGB image: a row per sample, a column per modality.

  Top to bottom: the optional `title`, the modality names over their columns, then per
  sample its tiles (a blank tile where it lacks a modality) with its caption wrapped
  under them, and last, given `class_names`, a legend of the semantic classes present.
  A sample's "__name__" is printed at the start of its row.
  """
  text_font, title_font = font(TEXT_SIZE), font(TITLE_SIZE)
  line = _line_height(text_font)
  per_sample = [dict(sample_tiles(s, tile, class_names)) for s in samples]
  columns = _column_order(name for tiles in per_sample for name in tiles)
  names = [_as_text(s["__name__"]) if s.get("__name__") is not None else "" for s in samples]
  captions = [_as_text(s["caption"]) if s.get("caption") is not None else "" for s in samples]

  num_columns = max(1, len(columns))
  tiles_width = num_columns * tile + (num_columns - 1) * GAP
  # Names get a column of their own, as wide as the longest one but at most one tile.
  name_width = min(tile, max((_text_width(n, text_font) for n in names), default=0))
  name_column = name_width + GAP if name_width else 0
  inner_width = name_column + tiles_width
  tiles_x = PAD + name_column

  title_lines = wrap_text(title, inner_width, title_font) if title else []
  title_height = len(title_lines) * _line_height(title_font) + (GAP if title_lines else 0)
  caption_lines = [_truncate_lines(wrap_text(c, tiles_width, text_font), MAX_CAPTION_LINES,
                                   tiles_width, text_font) if c else [] for c in captions]
  row_heights = [tile + (GAP // 2 + len(lines) * line if lines else 0)
                 for lines in caption_lines]
  legend_lines = _layout_legend(_legend_entries(samples, class_names), inner_width, text_font)
  legend_height = (ROW_GAP + line + len(legend_lines) * line) if legend_lines else 0

  header_y = PAD + title_height
  rows_y = header_y + line
  rows_height = sum(row_heights) + ROW_GAP * max(0, len(samples) - 1)
  height = rows_y + rows_height + legend_height + PAD
  width = PAD + inner_width + PAD

  canvas = Image.new("RGB", (width, height), BACKGROUND)
  draw = ImageDraw.Draw(canvas)
  for i, text in enumerate(title_lines):
    draw.text((PAD, PAD + i * _line_height(title_font)), text, font=title_font,
              fill=TEXT_COLOUR)
  for c, column in enumerate(columns):
    header = _truncate_lines(wrap_text(column, tile, text_font), 1, tile, text_font)[0]
    _draw_centred(draw, tiles_x + c * (tile + GAP) + tile / 2, header_y, header, text_font,
                  TEXT_COLOUR)

  y = rows_y
  for tiles, sample_name, lines, row_height in zip(per_sample, names, caption_lines,
                                                    row_heights):
    if sample_name:
      name_lines = _truncate_lines(wrap_text(sample_name, name_width, text_font),
                                   max(1, tile // line), name_width, text_font)
      block_top = y + (tile - len(name_lines) * line) // 2
      for j, text in enumerate(name_lines):
        draw.text((PAD, block_top + j * line), text, font=text_font, fill=TEXT_COLOUR)
    for c, column in enumerate(columns):
      image = tiles.get(column)
      if image is None:
        image = blank_tile(tile)
      canvas.paste(Image.fromarray(image), (tiles_x + c * (tile + GAP), y))
    for j, text in enumerate(lines):
      draw.text((tiles_x, y + tile + GAP // 2 + j * line), text, font=text_font,
                fill=CAPTION_COLOUR)
    y += row_height + ROW_GAP
    if y < rows_y + rows_height:  # a faint rule tells whose caption is whose
      rule_y = y - ROW_GAP // 2
      draw.line((PAD, rule_y, width - PAD - 1, rule_y), fill=RULE_COLOUR)

  if legend_lines:
    _draw_legend(draw, legend_lines, PAD, y, text_font)  # y already includes ROW_GAP
  return canvas


def _draw_legend(draw: ImageDraw.ImageDraw, lines, x: int, y: int, text_font) -> None:
  line = _line_height(text_font)
  swatch = line - 3
  draw.text((x, y), "semseg classes", font=text_font, fill=TEXT_COLOUR)
  for j, entries in enumerate(lines):
    top = y + (j + 1) * line
    for offset, name, colour in entries:
      draw.rectangle((x + offset, top + 1, x + offset + swatch - 1, top + swatch),
                     fill=colour, outline=(120, 120, 120))
      draw.text((x + offset + swatch + 4, top), name, font=text_font, fill=TEXT_COLOUR)


def save_grid(samples: Sequence[dict], path: str | os.PathLike, **kwargs) -> str:
  """Writes `make_grid(samples, **kwargs)` as a PNG, creating parent folders."""
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  make_grid(samples, **kwargs).save(path, format="PNG")
  return path
