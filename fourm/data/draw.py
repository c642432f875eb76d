"""Drawing primitives for pictures of samples: fonts, wrapped text, labelled boxes.

Only numpy and PIL, so this runs wherever the data pipeline runs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fourm.data.colorize import class_color, image_to_uint8_rgb

TEXT_SIZE = 13
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


def text_width(text: str, text_font) -> int:
  return int(math.ceil(text_font.getlength(text)))


def line_height(text_font) -> int:
  # The bottom of a descender, measured from where PIL places the line, plus leading.
  return text_font.getbbox("Ag|")[3] + 3


def draw_centered(draw: ImageDraw.ImageDraw, center_x: float, top: float, text: str,
                  text_font, fill) -> None:
  # Measured by hand rather than with PIL's text anchors, which the bitmap fallback
  # font does not support.
  draw.text((round(center_x - text_font.getlength(text) / 2), round(top)), text,
            font=text_font, fill=fill)


def wrap_text(text: str, width: int, text_font) -> list[str]:
  """Greedy word wrap to `width` pixels; words wider than a line are split by letter."""
  lines: list[str] = []
  for paragraph in str(text).splitlines() or [""]:
    line = ""
    for word in paragraph.split():
      candidate = f"{line} {word}" if line else word
      if text_width(candidate, text_font) <= width:
        line = candidate
        continue
      if line:
        lines.append(line)
      while text_width(word, text_font) > width and len(word) > 1:
        cut = _split_point(word, width, text_font)
        lines.append(word[:cut])
        word = word[cut:]
      line = word
    lines.append(line)
  return lines


def _split_point(word: str, width: int, text_font) -> int:
  """Where to split a word too wide for a line: after a path separator if one fits."""
  fits = len(word) - 1
  while fits > 1 and text_width(word[:fits], text_font) > width:
    fits -= 1
  separators = [i + 1 for i in range(1, fits) if word[i] in _BREAK_AFTER]
  return separators[-1] if separators else fits


def truncate_lines(lines: list[str], max_lines: int, width: int, text_font) -> list[str]:
  """Keeps `max_lines`, marking the cut with an ellipsis that still fits the width."""
  if len(lines) <= max_lines:
    return lines
  kept = lines[:max_lines]
  last = kept[-1]
  while last and text_width(last + " ...", text_font) > width:
    last = last[:-1]
  kept[-1] = last.rstrip() + " ..."
  return kept


def as_text(value: Any) -> str:
  """Text as it may come out of records or a batch: str, bytes or a 0-d numpy array."""
  if isinstance(value, np.ndarray):
    value = value.item() if value.ndim == 0 else " ".join(as_text(v) for v in value.ravel())
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  return str(value)


# --------------------------------------------------------------------------------------
# Boxes.


def readable_text_color(background: Sequence[int]) -> tuple[int, int, int]:
  luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
  return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def box_to_pixels(box: Sequence[float], height: int,
                  width: int) -> tuple[int, int, int, int] | None:
  """Normalized (xmin, ymin, xmax, ymax) -> inclusive pixel bounds, or None if empty.

  A box covers every pixel it overlaps: columns floor(xmin * W) .. ceil(xmax * W) - 1.
  """
  xmin, ymin, xmax, ymax = (float(v) for v in box)
  if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
    return None
  x0 = max(0, math.floor(xmin * width))
  y0 = max(0, math.floor(ymin * height))
  x1 = min(width - 1, math.ceil(xmax * width) - 1)
  y1 = min(height - 1, math.ceil(ymax * height) - 1)
  # Padded rows are usually all zeros: zero area in normalized terms means no box.
  if xmax <= xmin or ymax <= ymin or x1 < x0 or y1 < y0:
    return None
  return x0, y0, x1, y1


def draw_boxes(image: np.ndarray, boxes, classes, valid=None, *, line_width: int | None = None,
               font_size: int = 12, colors=None) -> np.ndarray:
  """Draws labelled boxes over a copy of `image` (uint8 [H, W, 3]).

  `boxes` is [N, 4] normalized (xmin, ymin, xmax, ymax); `classes` is N names (a list or
  a numpy str/bytes/object array); rows with `valid[i]` False, and empty boxes, are
  skipped. Each class gets a color from its name, unless `colors` gives one per box (an
  empty name then draws the box without a label). The outline is drawn inward from the
  box's pixel bounds, and the label sits just above the box when there is room (so it
  hides nothing inside the box), otherwise just inside its top-left corner.
  """
  canvas = Image.fromarray(image_to_uint8_rgb(image))
  draw = ImageDraw.Draw(canvas)
  width, height = canvas.size
  boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
  names = [as_text(c) for c in (np.asarray(classes, dtype=object).ravel()
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
    color = (tuple(int(c) for c in colors[i]) if colors is not None
             else class_color(name))
    draw.rectangle(bounds, outline=color, width=line_width)
    if name:
      _draw_box_label(draw, bounds, name, color, label_font, width)
  return np.asarray(canvas)


def _draw_box_label(draw: ImageDraw.ImageDraw, bounds: tuple[int, int, int, int], name: str,
                    color: tuple[int, int, int], label_font, image_width: int) -> None:
  x0, y0, _, _ = bounds
  left, top, right, bottom = draw.textbbox((0, 0), name, font=label_font)
  label_width, label_height = right - left + 4, bottom - top + 2
  label_x = max(0, min(x0, image_width - label_width))
  label_y = y0 - label_height if y0 >= label_height else y0
  draw.rectangle((label_x, label_y, label_x + label_width - 1, label_y + label_height - 1),
                 fill=color)
  draw.text((label_x + 2 - left, label_y + 1 - top), name, font=label_font,
            fill=readable_text_color(color))


def draw_points(image: np.ndarray, points, colors, hollow=None, *,
                radius: int | None = None) -> np.ndarray:
  """Draws dots over a copy of `image` (uint8 [H, W, 3]).

  `points` is [N, 2] normalized (x, y), a pixel's center at (col + 0.5) / W; `colors`
  one RGB per point. A dot is filled with its color inside a dark outline, so it shows
  on light and dark images alike; `hollow[i]` True draws point i as a ring instead
  (its color inside a dark outline).
  Points with a non-finite coordinate are skipped; points outside are clipped inward.
  """
  canvas = Image.fromarray(image_to_uint8_rgb(image))
  draw = ImageDraw.Draw(canvas)
  width, height = canvas.size
  points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
  rings = (np.zeros(len(points), bool) if hollow is None
           else np.asarray(hollow, dtype=bool).ravel())
  if radius is None:
    radius = max(2, round(min(width, height) / 32))
  for i, (x, y) in enumerate(points):
    if not (math.isfinite(x) and math.isfinite(y)):
      continue
    col = min(max(x * width, 0.0), width - 1.0)
    row = min(max(y * height, 0.0), height - 1.0)
    bounds = (col - radius, row - radius, col + radius, row + radius)
    color = tuple(int(c) for c in colors[i])
    if i < len(rings) and rings[i]:
      # A ring a little larger than a dot: dark, colored (2 px), dark, the image inside.
      for grow, ring_color, ring_width in ((3, (0, 0, 0), 1), (2, color, 2), (0, (0, 0, 0), 1)):
        draw.ellipse((col - radius - grow, row - radius - grow, col + radius + grow,
                      row + radius + grow), outline=ring_color, width=ring_width)
    else:
      draw.ellipse(bounds, fill=color, outline=(0, 0, 0), width=1)
  return np.asarray(canvas)
