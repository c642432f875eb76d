"""Documents of the memory bank: which parts a record has and how part vectors combine.

A document is one record of a dataset. Its parts are the modalities the retriever
encodes (the image and the caption); a record may lack some of them, and a query may
hold only one (a caption typed by a user, an image). As CM3leon does, a document's
vector is the mean of its parts' L2-normalised vectors, normalised again, so that inner
products are cosines whatever parts the two sides have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fourm import modalities
from fourm.errors import RecordError, UsageError

IMAGE = modalities.RGB.name
TEXT = modalities.CAPTION.name
PARTS = (IMAGE, TEXT)  # the order of the parts axis wherever parts are stored


def check_parts(parts: Sequence[str]) -> tuple[str, ...]:
  """`parts` in the canonical order; a UsageError for unknown or no parts."""
  unknown = [p for p in parts if p not in PARTS]
  if unknown or not parts:
    raise UsageError(f"document parts {list(parts)}: choose one or more of {list(PARTS)}")
  return tuple(p for p in PARTS if p in parts)


def present_parts(sample: Mapping[str, Any], parts: Sequence[str] = PARTS) -> np.ndarray:
  """bool [len(PARTS)]: which of `parts` the sample holds (an empty caption counts as none)."""
  def holds(name: str) -> bool:
    value = sample.get(name)
    return value is not None and not (isinstance(value, str) and not value.strip())
  return np.array([name in parts and holds(name) for name in PARTS], bool)


def record_key(sample: Mapping[str, Any], split: str, index: int) -> str:
  """The record's own key, or "SPLIT/INDEX" for a dataset written without keys."""
  key = sample.get(modalities.KEY.name)
  return str(key) if key is not None else f"{split}/{index:06d}"


def require_some_part(present: np.ndarray, parts: Sequence[str], *, path: str | None,
                      record: int | None) -> None:
  """A document must have at least one part to have a vector."""
  if not present.any():
    raise RecordError(f"the record has none of the document parts {list(parts)}, so it "
                      "has no vector to index", path=path, record=record, field=parts[0])


def normalize(vectors: np.ndarray) -> np.ndarray:
  """Rows scaled to unit length (zero rows stay zero)."""
  vectors = np.asarray(vectors, np.float32)
  norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
  return vectors / np.maximum(norms, 1e-12)


def document_vectors(part_vectors: np.ndarray, present: np.ndarray) -> np.ndarray:
  """[N, P, D] part vectors and bool [N, P] presence -> float32 [N, D] unit vectors: the
  mean of the present parts' unit vectors, re-normalised."""
  present = np.asarray(present, bool)
  if not present.any(axis=-1).all():
    raise ValueError("every document needs at least one part")
  units = normalize(part_vectors) * present[..., None]
  return normalize(units.sum(axis=-2) / present.sum(axis=-1, keepdims=True))
