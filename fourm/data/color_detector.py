"""Which of the synthetic world's chromatic colors each pixel of an image shows.

The world paints objects in flat colors (`synthetic.COLORS`) and shades them by a
factor (light, shadow) before a 1/2.2 gamma. Scaling a color scales all channels
alike, which changes neither its hue nor its saturation (max - min) / max, so a pixel
is named by the palette hue nearest to its own, whatever its shading, when it is
saturated and bright enough to have a hue. White and gray objects look like the floor
and the wall (both nearly gray), so they get no name: they are -1 as the floor is.

This works on any uint8 image, a rendered one or one a model generated. It is numpy
only, so the data layer (instruction checks) and the generation benchmarks can share
it.
"""

from __future__ import annotations

import functools

import numpy as np

from fourm.data import synthetic

CHROMATIC = ("red", "green", "blue", "yellow", "purple", "cyan", "orange")
# The floor and the wall stay under 0.25 saturation, every chromatic paint is over 0.5.
MIN_SATURATION = 0.45
MIN_VALUE = 0.2
# The palette's nearest hues (red and orange) are 0.084 apart; a pixel further than
# this from every palette hue (a pink, a teal) has none of the names.
HUE_TOLERANCE = 0.06
NONE = -1


def hue_saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """HSV of a uint8 (or 0..1 float) image [..., 3], each in [0, 1] (hue is circular)."""
  rgb = np.asarray(rgb, np.float64)
  if rgb.max(initial=0) > 1.0:
    rgb = rgb / 255.0
  high, low = rgb.max(-1), rgb.min(-1)
  spread = high - low
  saturation = np.where(high > 0, spread / np.maximum(high, 1e-12), 0.0)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  safe = np.maximum(spread, 1e-12)
  hue = np.select([spread == 0, high == r, high == g],
                  [0.0, ((g - b) / safe) % 6, (b - r) / safe + 2], (r - g) / safe + 4) / 6
  return hue, saturation, high


@functools.lru_cache(maxsize=1)
def palette_hues() -> np.ndarray:
  """Each chromatic paint's hue as the renderer shows it."""
  paints = np.array([synthetic.COLORS[name] for name in CHROMATIC]) ** (1 / 2.2)
  return hue_saturation_value(paints)[0]


def color_labels(rgb: np.ndarray) -> np.ndarray:
  """int8 [H, W]: the index in CHROMATIC of each pixel's color, NONE (-1) for none."""
  hue, saturation, value = hue_saturation_value(rgb)
  distance = np.abs(hue[..., None] - palette_hues())
  distance = np.minimum(distance, 1.0 - distance)  # hue is circular
  nearest = distance.argmin(-1)
  named = (saturation >= MIN_SATURATION) & (value >= MIN_VALUE) & \
      (distance.min(-1) <= HUE_TOLERANCE)
  return np.where(named, nearest, NONE).astype(np.int8)


def label_of(color: str) -> int:
  """The label of a color name: its index in CHROMATIC, NONE for white and gray."""
  return CHROMATIC.index(color) if color in CHROMATIC else NONE


def share(labels: np.ndarray, mask: np.ndarray, colors) -> float:
  """The share of the mask's pixels labelled one of `colors` (0 for an empty mask)."""
  wanted = [label_of(c) for c in colors if c in CHROMATIC]
  if not mask.any() or not wanted:
    return 0.0
  return float(np.isin(labels[mask], wanted).mean())
