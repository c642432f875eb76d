"""Boxes as text tokens, the way 4M serializes detections.

A detection record {"boxes": [N, 4] (xmin, ymin, xmax, ymax) in [0, 1], "classes": [str]}
becomes one token sequence, objects one after the other:

    v0=<xmin> v1=<ymin> v2=<xmax> v3=<ymax> <class name tokens>  v0=... v1=... ...

* Order: by the squared distance of the box's top-left corner (xmin, ymin) to the image
  origin, nearest first, ties kept in record order (the reference's default
  `bbox_order='dist_to_orig'`, sorted on the float coordinates before quantization).
  A fixed order makes the sequence a function of the set of boxes, so the model need
  not guess a permutation.
* Coordinates: bin q = round(x * (bins - 1)) with bins = 1000 for the reference
  vocabulary, so bin 0 is exactly 0 and bin 999 exactly 1; decoding returns the bin
  value q / (bins - 1) (not a bin center), the reference's inverse. The round trip
  is exact up to 0.5 / (bins - 1) per coordinate.
* Class names are tokenized as text (lowercased by the BERT normalizer; the reference
  vocabulary holds the COCO names as single tokens, "wine glass" included), and their
  ids are the same as tokenizing the whole string "v0=12 v1=34 ... cube" at once.

Decoding is strict by default: a malformed sequence raises a `UsageError` naming the
position and the token. `strict=False` is for generated sequences, which may be cut off
by the length limit or go astray: it skips incomplete or malformed objects and says how
many (`parse_boxes`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from fourm import modalities
from fourm.errors import RecordError, UsageError
from tokenizers_vq import text

COORD_NAMES = ("xmin", "ymin", "xmax", "ymax")


def _path(vocab: Any) -> str:
  """A vocabulary path from a path, an encoder that holds one, or None (reference)."""
  path = getattr(vocab, "path", vocab)
  return path or text.default_vocab_path()


def quantize(coords: np.ndarray, bins: int) -> np.ndarray:
  """Coordinates in [0, 1] -> bins 0..bins-1 (round half to even, as Python's round)."""
  return np.rint(np.asarray(coords, np.float64) * (bins - 1)).astype(np.int64)


def dequantize(values: np.ndarray, bins: int) -> np.ndarray:
  """Bins -> coordinates: bin q is q / (bins - 1), the value it was rounded from."""
  return (np.asarray(values, np.float64) / (bins - 1)).astype(np.float32)


def box_order(boxes: np.ndarray) -> np.ndarray:
  """Indices sorting boxes by xmin^2 + ymin^2, ties in input order."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.argsort(boxes[:, 0] ** 2 + boxes[:, 1] ** 2, kind="stable")


def _checked_det(det: Any) -> tuple[np.ndarray, list[str]]:
  def fail(message: str):
    raise RecordError(message, field=modalities.DET.name)

  if not isinstance(det, Mapping) or not {"boxes", "classes"} <= set(det):
    fail(f"expected {{'boxes': [N, 4], 'classes': [str]}}, got {type(det).__name__}")
  boxes = np.asarray(det["boxes"], np.float64)
  classes = list(det["classes"])
  if boxes.size == 0 and not classes:
    return boxes.reshape(0, 4), []
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    fail(f"boxes must be [N, 4], got shape {list(boxes.shape)}")
  if len(classes) != len(boxes) or not all(isinstance(c, str) for c in classes):
    fail(f"classes must be {len(boxes)} strings, got {classes!r:.80}")
  if not np.isfinite(boxes).all() or boxes.min() < 0 or boxes.max() > 1:
    fail("box coordinates must be finite and within [0, 1]")
  if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
    fail("boxes must be (xmin, ymin, xmax, ymax) with min <= max")
  return boxes, classes


@functools.lru_cache(maxsize=4096)
def _class_ids(path: str, name: str) -> tuple[int, ...]:
  """The text ids of a class name; refuses names that would not decode as a name."""
  ids = text.load_text_tokenizer(path).encode(name, add_special_tokens=False).ids
  if not ids:
    raise RecordError(f"class name {name!r} has no tokens", field=modalities.DET.name)
  special = text.special_tokens(path)
  if (special.coord_axis(ids) >= 0).any() or special.is_control(ids).any():
    raise RecordError(f"class name {name!r} contains coordinate or control tokens, so "
                      "its boxes could not be decoded", field=modalities.DET.name)
  return tuple(ids)


def encode_boxes(det: Mapping[str, Any], vocab: Any = None) -> np.ndarray:
  """A detection record -> int32 token ids (no [EOS]: the masking appends it).

  `vocab` is a vocabulary path, an encoder holding one, or None for the reference.
  Bad boxes raise a `RecordError` for field 'det'. Scores, if present, are ignored
  (thresholding detections is the labeller's or the data pipeline's business).
  """
  path = _path(vocab)
  special = text.special_tokens(path)
  if not special.coord_bins:
    raise UsageError(f"{path}: the vocabulary has no box coordinate tokens (v0=0 ...)")
  boxes, classes = _checked_det(det)
  bins = quantize(boxes, special.coord_bins) + np.asarray(special.first_coord)
  ids: list[int] = []
  for i in box_order(boxes):
    ids.extend(bins[i].tolist())
    ids.extend(_class_ids(path, classes[i]))
  return np.asarray(ids, np.int32)


class _Malformed(Exception):
  """One object that does not parse: where, and what was expected there."""

  def __init__(self, position: int, message: str):
    super().__init__(message)
    self.position, self.message = position, message


def parse_boxes(ids: Iterable[int], vocab: Any = None, *,
                strict: bool = True) -> tuple[dict[str, Any], int]:
  """Token ids -> (detection record, number of malformed pieces skipped).

  The sequence ends at the first [EOS] or [PAD]; only padding may follow. Ids outside
  the vocabulary always raise. With `strict`, anything else out of place raises a
  `UsageError` naming the position and the token (the count is then always 0);
  without, each incomplete or malformed object (or stray token) is skipped up to the
  next v0= token and counted, which is what a sequence cut off by a length limit needs.
  """
  path = _path(vocab)
  special = text.special_tokens(path)
  tokenizer = text.load_text_tokenizer(path)
  array = text.check_ids(ids, special.vocab_size, "det tokens")
  axis = special.coord_axis(array)
  control = special.is_control(array)

  def describe(position: int) -> str:
    if position >= len(array):
      return "the end of the sequence"
    token_id = int(array[position])
    return f"{tokenizer.id_to_token(token_id)!r} (id {token_id})"

  stops = np.flatnonzero((array == special.eos) | (array == special.pad))
  end = int(stops[0]) if stops.size else len(array)
  if strict:
    after = np.flatnonzero(array[end + 1:] != special.pad)
    if after.size:
      position = end + 1 + int(after[0])
      raise UsageError(f"det tokens: position {position}: {describe(position)} after the "
                       f"end of the sequence ({describe(end)} at position {end})")

  boxes, classes, skipped = [], [], 0
  position = 0
  while position < end:
    try:
      values, names_end = _parse_object(array, axis, control, position, end, len(boxes),
                                        special, describe)
    except _Malformed as error:
      if strict:
        raise UsageError(f"det tokens: position {error.position}: {error.message}") from None
      skipped += 1
      starts = np.flatnonzero(axis[position + 1:end] == 0)
      position = position + 1 + int(starts[0]) if starts.size else end
      continue
    boxes.append(values)
    classes.append(tokenizer.decode(array[position + 4:names_end].tolist(),
                                    skip_special_tokens=False))
    position = names_end
  coords = dequantize(np.asarray(boxes, np.int64).reshape(-1, 4), special.coord_bins)
  return {"boxes": coords, "classes": classes}, skipped


def _parse_object(array: np.ndarray, axis: np.ndarray, control: np.ndarray, start: int,
                  end: int, index: int, special: text.SpecialTokens,
                  describe) -> tuple[list[int], int]:
  """Bins of the object at `start` and where its class name ends; or `_Malformed`."""
  for k in range(4):
    position = start + k
    if position >= end or axis[position] != k:
      got = describe(position) if position < end else "the end of the sequence"
      raise _Malformed(position, f"expected v{k}=<bin> ({COORD_NAMES[k]} of object "
                                 f"{index}), got {got}")
  names_end = start + 4
  while names_end < end and axis[names_end] < 0 and not control[names_end]:
    names_end += 1
  if names_end == start + 4:
    got = describe(names_end) if names_end < end else "the end of the sequence"
    raise _Malformed(names_end, f"expected the class name of object {index} after its "
                                f"ymax, got {got}")
  values = [int(array[start + k]) - special.first_coord[k] for k in range(4)]
  for low, high in ((0, 2), (1, 3)):
    if values[high] < values[low]:
      raise _Malformed(start + high, f"object {index}: {COORD_NAMES[high]} bin "
                                     f"{values[high]} < {COORD_NAMES[low]} bin {values[low]}")
  return values, names_end


def decode_boxes(ids: Iterable[int], vocab: Any = None, *,
                 strict: bool = True) -> dict[str, Any]:
  """Token ids -> {"boxes": float32 [N, 4], "classes": [str]} (see `parse_boxes`)."""
  return parse_boxes(ids, vocab, strict=strict)[0]


class BoxEncoder:
  """Detection record -> int32 token ids, for `MaskSample(sequence_encoders={"det": ...})`.

  Picklable (it holds the vocabulary path, not the tokenizer), so grain worker
  processes can carry it.
  """

  def __init__(self, path: str | None = None):
    self.path = path or text.default_vocab_path()
    special = text.special_tokens(self.path)
    if not special.coord_bins:
      raise UsageError(f"{self.path}: the vocabulary has no box coordinate tokens "
                       "(v0=0 ...)")
    self.vocab_size = special.vocab_size

  def __call__(self, det: Mapping[str, Any]) -> np.ndarray:
    return encode_boxes(det, self.path)

  def decode(self, ids: Iterable[int], *, strict: bool = True) -> dict[str, Any]:
    return decode_boxes(ids, self.path, strict=strict)

  def detokenize(self, ids: Iterable[int]) -> dict[str, Any]:
    """Generated ids -> the boxes that parse (a malformed tail is dropped)."""
    return self.decode(ids, strict=False)
