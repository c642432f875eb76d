"""Render raw multimodal samples as one readable PNG grid.

A sample is a dict keyed by modality name (see `fourm.modalities`); any modality may be
absent. `make_grid` lays samples out one per row and modalities one per column (the
union over all samples, with a blank tile where a sample lacks one), with the modality
names as column headers, each sample's caption under its row and, given class names, a
legend of the semantic classes that occur. Every modality becomes a square uint8 RGB
tile of the same size, so tiny (64 px) samples are upscaled enough to be read.

Columns are ordered and drawn by what each modality's values mean (`fourm/data/tiles.py`);
color conventions are those of `fourm.data.colorize`.

Only numpy and PIL are used, so this runs wherever the data pipeline runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from fourm import modalities
from fourm.data.colorize import palette
# The drawing primitives and tiles, re-exported: callers draw grids from here.
from fourm.data.draw import (TEXT_SIZE, as_text, box_to_pixels, draw_boxes, draw_centered,
                             font, line_height, text_width, truncate_lines, wrap_text)
from fourm.data.tiles import (BLANK_COLOR, CANVAS_COLOR, blank_tile, column_key,
                              register_drawer, sample_text, sample_tiles)

__all__ = ["BLANK_COLOR", "CANVAS_COLOR", "TEXT_SIZE", "blank_tile", "box_to_pixels",
           "draw_boxes", "font", "line_height", "make_grid", "register_drawer", "sample_tiles",
           "save_grid", "wrap_text"]

BACKGROUND = (255, 255, 255)
TEXT_COLOR = (30, 30, 30)
CAPTION_COLOR = (70, 70, 70)
RULE_COLOR = (222, 222, 222)        # between rows

PAD = 10           # outer margin
GAP = 6            # between the tiles of a row
ROW_GAP = 14       # between one row's caption and the next row
TITLE_SIZE = 16
MAX_CAPTION_LINES = 4


# --------------------------------------------------------------------------------------
# The grid.


def _present_class_ids(samples: Sequence[dict], num_classes: int) -> list[int]:
  present: set[int] = set()
  class_maps = [raw.name for raw in modalities.raws_with(modalities.Values.CLASSES)]
  for sample in samples:
    for name in class_maps:
      if sample.get(name) is not None:
        present.update(int(i) for i in np.unique(np.asarray(sample[name])))
  return sorted(i for i in present if i < num_classes)


def _legend_entries(samples, class_names) -> list[tuple[str, tuple[int, int, int]]]:
  """(name, color) for each class that occurs in a class map of the grid."""
  if not class_names:
    return []
  colors = palette(len(class_names))
  return [(as_text(class_names[i]), tuple(int(c) for c in colors[i]))
          for i in _present_class_ids(samples, len(class_names))]


def _layout_legend(entries, width: int, text_font) -> list[list[tuple[int, str, tuple]]]:
  """Flows legend entries into lines no wider than `width`: [(x, name, color)] each."""
  swatch = line_height(text_font) - 3
  lines: list[list[tuple[int, str, tuple]]] = [[]]
  x = 0
  for name, color in entries:
    entry_width = swatch + 4 + text_width(name, text_font)
    if x > 0 and x + entry_width > width:
      lines.append([])
      x = 0
    lines[-1].append((x, name, color))
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
  line = line_height(text_font)
  per_sample = [dict(sample_tiles(s, tile, class_names)) for s in samples]
  columns = sorted({name for tiles in per_sample for name in tiles}, key=column_key)
  names = [as_text(s["__name__"]) if s.get("__name__") is not None else "" for s in samples]
  captions = [sample_text(s) for s in samples]

  num_columns = max(1, len(columns))
  tiles_width = num_columns * tile + (num_columns - 1) * GAP
  # Names get a column of their own, as wide as the longest one but at most one tile.
  name_width = min(tile, max((text_width(n, text_font) for n in names), default=0))
  name_column = name_width + GAP if name_width else 0
  inner_width = name_column + tiles_width
  tiles_x = PAD + name_column

  title_lines = wrap_text(title, inner_width, title_font) if title else []
  title_height = len(title_lines) * line_height(title_font) + (GAP if title_lines else 0)
  caption_lines = [truncate_lines(wrap_text(c, tiles_width, text_font), MAX_CAPTION_LINES,
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
    draw.text((PAD, PAD + i * line_height(title_font)), text, font=title_font,
              fill=TEXT_COLOR)
  for c, column in enumerate(columns):
    header = truncate_lines(wrap_text(column, tile, text_font), 1, tile, text_font)[0]
    draw_centered(draw, tiles_x + c * (tile + GAP) + tile / 2, header_y, header, text_font,
                  TEXT_COLOR)

  y = rows_y
  for tiles, sample_name, lines, row_height in zip(per_sample, names, caption_lines,
                                                    row_heights):
    if sample_name:
      name_lines = truncate_lines(wrap_text(sample_name, name_width, text_font),
                                   max(1, tile // line), name_width, text_font)
      block_top = y + (tile - len(name_lines) * line) // 2
      for j, text in enumerate(name_lines):
        draw.text((PAD, block_top + j * line), text, font=text_font, fill=TEXT_COLOR)
    for c, column in enumerate(columns):
      image = tiles.get(column)
      if image is None:
        image = blank_tile(tile)
      canvas.paste(Image.fromarray(image), (tiles_x + c * (tile + GAP), y))
    for j, text in enumerate(lines):
      draw.text((tiles_x, y + tile + GAP // 2 + j * line), text, font=text_font,
                fill=CAPTION_COLOR)
    y += row_height + ROW_GAP
    if y < rows_y + rows_height:  # a faint rule tells whose caption is whose
      rule_y = y - ROW_GAP // 2
      draw.line((PAD, rule_y, width - PAD - 1, rule_y), fill=RULE_COLOR)

  if legend_lines:
    _draw_legend(draw, legend_lines, PAD, y, text_font)  # y already includes ROW_GAP
  return canvas


def _draw_legend(draw: ImageDraw.ImageDraw, lines, x: int, y: int, text_font) -> None:
  line = line_height(text_font)
  swatch = line - 3
  draw.text((x, y), "classes", font=text_font, fill=TEXT_COLOR)
  for j, entries in enumerate(lines):
    top = y + (j + 1) * line
    for offset, name, color in entries:
      draw.rectangle((x + offset, top + 1, x + offset + swatch - 1, top + swatch),
                     fill=color, outline=(120, 120, 120))
      draw.text((x + offset + swatch + 4, top), name, font=text_font, fill=TEXT_COLOR)


def save_grid(samples: Sequence[dict], path: str | os.PathLike, **kwargs) -> str:
  """Writes `make_grid(samples, **kwargs)` as a PNG, creating parent folders."""
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  make_grid(samples, **kwargs).save(path, format="PNG")
  return path
