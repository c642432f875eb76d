"""The selection rules: which K of a query's nearest documents become its conditions.

CM3leon retrieves for relevance, modality and diversity; from the candidates of a search
(best first) we keep, in score order, those that

- are not the query's own record (`exclude`: in training the query is an indexed record),
- score below `duplicate_threshold`: a document at cosine 0.95 or more with the query is
  the query again or a copy of it, and conditions that give the answer away teach the
  model nothing,
- have every part in `required_parts` (a caption -> image model wants retrieved images),
- are below `diversity_threshold` in cosine with every document already picked, so K
  conditions are not K copies of one image,

until K are picked. Fewer come back when the candidates run out: callers search deep
enough (the neighbour table keeps M per record for this).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import numpy as np

from fourm.retrieval import documents


@dataclasses.dataclass(frozen=True)
class SelectionRules:
  duplicate_threshold: float = 0.95
  diversity_threshold: float = 0.95
  required_parts: tuple[str, ...] = ()

  def __post_init__(self):
    if self.required_parts:
      documents.check_parts(self.required_parts)


def select(rows: Sequence[int], scores: Sequence[float], k: int, *, present: np.ndarray,
           vectors: np.ndarray | None = None, rules: SelectionRules = SelectionRules(),
           exclude: Collection[int] = ()) -> list[int]:
  """Up to `k` of the candidate `rows` (best first, with their `scores`), by the rules.

  `present` is the bank's bool [N, P] parts table; `vectors` its [N, D] unit vectors,
  needed for the diversity rule (None skips that rule)."""
  need = np.array([name in rules.required_parts for name in documents.PARTS], bool)
  picked: list[int] = []
  picked_vectors: list[np.ndarray] = []
  for row, score in zip(rows, scores):
    row = int(row)
    if len(picked) == k:
      break
    if row < 0 or row in exclude or score >= rules.duplicate_threshold:
      continue
    if not present[row][need].all():
      continue
    if vectors is not None:
      vector = np.asarray(vectors[row], np.float32)
      if picked_vectors and max(float(vector @ v) for v in picked_vectors) \
          >= rules.diversity_threshold:
        continue
      picked_vectors.append(vector)
    picked.append(row)
  return picked
