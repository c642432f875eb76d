"""What a stored sample may hold: each field checked against its modality's spec.

A raw modality is checked against its `RawSpec` (dtype, rank, channels, value ranges);
a tokenized one (`tok_rgb`, ...) as token ids within its vocabulary. Every failure is a
`RecordError` naming the file, the record and the field. The writer validates before it
stores, the reader after it loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fourm import modalities
from fourm.errors import RecordError
from fourm.modalities import Form, Kind


def validate_field(name: str, value: Any, *, image_hw: tuple[int, int] | None = None,
                   path: str | None = None, record: int | None = None) -> None:
  """Checks one field: a raw modality against its `RawSpec` (dtype, rank, channels,
  ranges), or the token ids of a tokenized modality (`tok_rgb`, ...) against its vocab."""
  def fail(message: str):
    raise RecordError(message, path=path, record=record, field=name)

  if name not in modalities.RAW_MODALITIES and modalities.is_known(name):
    _validate_token_ids(modalities.get(name), value, fail)
    return
  try:
    raw = modalities.get_raw(name)
  except KeyError as error:
    fail(str(error.args[0]))
  if raw.form == Form.TEXT:
    if not isinstance(value, str):
      fail(f"expected text (str), got {type(value).__name__}")
    return
  if raw.form == Form.BOXES:
    _validate_boxes(value, fail)
    return
  if not isinstance(value, np.ndarray):
    fail(f"expected a numpy array, got {type(value).__name__}")
  if value.dtype != np.dtype(raw.dtype):
    fail(f"expected dtype {raw.dtype}, got {value.dtype}")
  if raw.form == Form.VECTOR:
    if value.ndim not in (1, 2):
      fail(f"expected shape [D] or [N, D], got {list(value.shape)}")
    return
  if raw.form == Form.FEATURE_MAP:
    if value.ndim != 3 or value.shape[0] == 0 or value.shape[1] == 0:
      fail(f"expected shape [G, G, D], got {list(value.shape)}")
    if raw.channels is not None and value.shape[2] != raw.channels:
      fail(f"expected {raw.channels} channels, got shape {list(value.shape)}")
    return
  want = "[H, W]" if raw.channels is None else f"[H, W, {raw.channels}]"
  if raw.channels is None and value.ndim != 2:
    fail(f"expected shape {want}, got {list(value.shape)}")
  if raw.channels is not None and (value.ndim != 3 or value.shape[2] != raw.channels):
    fail(f"expected shape {want}, got {list(value.shape)}")
  if value.shape[0] == 0 or value.shape[1] == 0:
    fail(f"empty image of shape {list(value.shape)}")
  if image_hw is not None and tuple(value.shape[:2]) != tuple(image_hw):
    fail(f"size {list(value.shape[:2])} does not match the sample's other images {list(image_hw)}")
  if value.dtype.kind == "f" and not np.isfinite(value).all():
    fail("contains NaN or Inf")


def _validate_token_ids(spec: modalities.ModalitySpec, value: Any, fail) -> None:
  if spec.vocab_size is None or spec.kind not in (Kind.IMAGE_TOKENS, Kind.GLOBAL):
    fail(f"modality {spec.name!r} of kind {spec.kind} is not stored as token ids")
  if not isinstance(value, np.ndarray) or value.dtype != np.int32:
    fail(f"token ids must be an int32 array, got {getattr(value, 'dtype', type(value).__name__)}")
  square = value.ndim == 2 and value.shape[0] == value.shape[1]
  if not (value.ndim == 1 or square) or value.size == 0:
    fail(f"token ids must be [N] or a square grid [G, G], got shape {list(value.shape)}")
  if value.min() < 0 or value.max() >= spec.vocab_size:
    bad = int(value.max() if value.max() >= spec.vocab_size else value.min())
    fail(f"token id {bad} is outside the vocabulary [0, {spec.vocab_size})")


def _validate_boxes(value: Any, fail) -> None:
  if not isinstance(value, Mapping) or set(value) - {"boxes", "classes", "scores"} or \
      not {"boxes", "classes"} <= set(value):
    fail("expected {'boxes': float32 [N, 4], 'classes': [str]} (optional 'scores')")
  boxes, classes = value["boxes"], value["classes"]
  if not isinstance(boxes, np.ndarray) or boxes.dtype != np.float32 or boxes.ndim != 2 \
      or boxes.shape[1] != 4:
    fail(f"boxes must be float32 [N, 4], got {getattr(boxes, 'dtype', type(boxes).__name__)} "
         f"{list(getattr(boxes, 'shape', []))}")
  if len(classes) != len(boxes) or not all(isinstance(c, str) for c in classes):
    fail(f"classes must be {len(boxes)} strings, got {classes!r:.80}")
  if len(boxes) and (not np.isfinite(boxes).all() or boxes.min() < 0 or boxes.max() > 1 or
                     (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
    fail("boxes must be (xmin, ymin, xmax, ymax) within [0, 1] with min <= max")


def validate_sample(sample: Mapping[str, Any], *, path: str | None = None,
                    record: int | None = None) -> None:
  """Validates every field and that all dense images share one size."""
  if not sample:
    raise RecordError("the record holds no modality", path=path, record=record)
  image_hw = None
  for name in sorted(sample):
    value = sample[name]
    raw = modalities.RAW_MODALITIES.get(name)
    hw = None
    if raw is not None and raw.form == Form.IMAGE and isinstance(value, np.ndarray):
      hw = image_hw
    validate_field(name, value, image_hw=hw, path=path, record=record)
    if hw is None and raw is not None and raw.form == Form.IMAGE:
      image_hw = value.shape[:2]
