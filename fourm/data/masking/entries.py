"""A raw value of one modality -> what the model reads, by the modality's kind.

Training's per-sample transform (`MaskSample`) and generation's `ConditionEncoder` both
turn values into model inputs; this is the one place that knows how, so a condition
reads exactly like a training sample:

  PIXELS        uint8 [R, R, 3] -> float32 [R, R, 3], (x / 255 - mean) / std
  FEATURE_MAP   float [G, G, D] -> float32 [G*G, D]
  IMAGE_TOKENS  int [G, G] or [G*G] in [0, vocab) -> int32 [G*G]
  (any token kind) `checked_ids`: integer ids inside the vocabulary

Bad values raise a `RecordError` naming the field; generation turns it into a usage
error for the condition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fourm import modalities
from fourm.errors import RecordError, UsageError


def describe(value: Any) -> str:
  if isinstance(value, np.ndarray):
    return f"{value.dtype} {list(value.shape)}"
  return type(value).__name__


class ValueReader:
  """Per-kind conversion of raw values for one layout and pixel normalization."""

  def __init__(self, layout: modalities.Layout, pixel_normalization: str = "imagenet"):
    if pixel_normalization not in modalities.PIXEL_STATS:
      raise UsageError(f"pixel_normalization is {pixel_normalization!r}, expected one of "
                       f"{list(modalities.PIXEL_STATS)}")
    self.layout, self.pixel_normalization = layout, pixel_normalization
    mean, std = (np.asarray(v, np.float32) for v in modalities.PIXEL_STATS[pixel_normalization])
    # (x / 255 - mean) / std as one multiply-add.
    self._pixel_scale, self._pixel_shift = 1.0 / (255.0 * std), -mean / std

  def pixels(self, field: str, value: Any, size: int | None = None) -> np.ndarray:
    """uint8 [size, size, 3] (the layout's resolution unless given) -> normalized."""
    size = size or self.layout.resolution
    if not isinstance(value, np.ndarray) or value.shape != (size, size, 3):
      raise RecordError(f"expected a uint8 image [{size}, {size}, 3], got "
                        f"{describe(value)}", field=field)
    if value.dtype != np.uint8:
      raise RecordError(f"expected uint8 pixels, got {value.dtype}", field=field)
    return value * self._pixel_scale + self._pixel_shift

  def features(self, spec: modalities.ModalitySpec, field: str, value: Any) -> np.ndarray:
    grid, channels = spec.grid(self.layout), spec.source.channels
    if not isinstance(value, np.ndarray) or value.shape != (grid, grid, channels):
      raise RecordError(f"expected a feature map [{grid}, {grid}, {channels}], got "
                        f"{describe(value)}", field=field)
    if value.dtype.kind != "f":
      raise RecordError(f"expected float features, got {value.dtype}", field=field)
    return value.reshape(grid * grid, channels).astype(np.float32, copy=False)

  def embedding_sequence(self, spec: modalities.ModalitySpec, value: Any) -> np.ndarray:
    """float [L, F] vectors, cut to the modality's max_length (as the reference cuts)."""
    channels = spec.source.channels
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.shape[1] != channels:
      raise RecordError(f"expected a sequence of {channels}-d vectors [L, {channels}], got "
                        f"{describe(value)}", field=spec.name)
    if value.dtype.kind != "f":
      raise RecordError(f"expected float vectors, got {value.dtype}", field=spec.name)
    return value[:spec.max_length].astype(np.float32, copy=False)

  def token_grid(self, spec: modalities.ModalitySpec, value: Any) -> np.ndarray:
    n = spec.num_tokens(self.layout)
    shapes = [(n,)] + ([spec.grid_shape(self.layout)] if spec.grid_shape(self.layout) else [])
    if not isinstance(value, np.ndarray) or value.shape not in shapes:
      raise RecordError(f"expected token ids of shape {' or '.join(map(str, shapes))}, got "
                        f"{describe(value)}", field=spec.name)
    return checked_ids(spec, value.reshape(n))


def checked_ids(spec: modalities.ModalitySpec, ids: np.ndarray) -> np.ndarray:
  """`ids` as int32, if they are integers inside the modality's vocabulary."""
  if ids.dtype.kind not in "iu":
    raise RecordError(f"expected integer token ids, got {ids.dtype}", field=spec.name)
  if ids.size and (ids.min() < 0 or ids.max() >= spec.vocab_size):
    bad = ids[(ids < 0) | (ids >= spec.vocab_size)]
    raise RecordError(f"token id {int(bad[0])} outside the vocabulary [0, "
                      f"{spec.vocab_size})", field=spec.name)
  return ids.astype(np.int32, copy=False)
