"""The precomputed neighbour table: each indexed record's nearest other documents.

Training retrieves for its own records, which are the indexed ones, so an index build
searches once for every record and stores the top M rows (the record itself left out)
with their scores. A training step then needs no encoder and no search: it reads a row
(memory-mapped) and applies the selection rules.

Variant 0 of a record is its whole document as the query; variants 1..V-1 are queries
with CM3leon's query dropout applied (`query_dropout.py`), drawn at build time with
seeds derived from (seed, record, variant), so a training step picks one of them with
its own rng to get a dropped query's neighbours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np
from tqdm import tqdm

# (queries [Q, D], k) -> (scores [Q, k], rows [Q, k]): `MemoryBank.search`.
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass
class NeighbourTable:
  rows: np.ndarray    # int32 [N, V, M], -1 past the end of a bank of fewer than M + 1
  scores: np.ndarray  # float32 [N, V, M], best first, -inf where rows is -1

  @property
  def num_variants(self) -> int:
    return self.rows.shape[1]

  @property
  def size(self) -> int:
    """M: the candidates stored per query."""
    return self.rows.shape[2]

  def candidates(self, row: int, variant: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of one record's query variant, best first, padding removed."""
    rows, scores = self.rows[row, variant], self.scores[row, variant]
    valid = rows >= 0
    return np.asarray(rows[valid]), np.asarray(scores[valid])

  @classmethod
  def load(cls, rows_path: str, scores_path: str) -> NeighbourTable:
    rows, scores = np.load(rows_path, mmap_mode="r"), np.load(scores_path, mmap_mode="r")
    if rows.shape != scores.shape or rows.ndim != 3:
      raise ValueError(f"neighbour table shapes {rows.shape} and {scores.shape}")
    return cls(rows, scores)


def without_self(rows: np.ndarray, scores: np.ndarray, own: np.ndarray, m: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Search results [B, m + 1] of records `own` [B] -> their first m results that are
  not the record itself (its own vector is usually first, but ties and dropped queries
  can put it anywhere, or nowhere, in the list)."""
  others = rows != own[:, None]
  # Stable sort of "is self" moves the record's own row last, keeping the others' order.
  order = np.argsort(~others, axis=1, kind="stable")[:, :m]
  return np.take_along_axis(rows, order, 1), np.take_along_axis(scores, order, 1)


def compute_neighbours(search: Search, query_blocks: Iterable[np.ndarray], count: int, m: int,
                       *, batch_size: int = 1024, progress: bool = False) -> NeighbourTable:
  """The table of `count` records' queries against the bank that `search` searches, m
  neighbours per query. `query_blocks` yields [B, V, D] blocks of consecutive records'
  query variants, from record 0 on (blocks keep a large bank's queries out of memory)."""
  rows = scores = None
  bar = tqdm(total=count, unit="record", disable=not progress, desc="neighbours")
  first = 0
  for block in query_blocks:
    if rows is None:
      rows = np.full((count, block.shape[1], m), -1, np.int32)
      scores = np.full((count, block.shape[1], m), -np.inf, np.float32)
    for start in range(0, len(block), batch_size):
      part = block[start:start + batch_size]
      own = np.arange(first + start, first + start + len(part))
      for variant in range(block.shape[1]):
        found_scores, found_rows = search(part[:, variant], m + 1)
        rows[own, variant], scores[own, variant] = without_self(found_rows, found_scores,
                                                                own, m)
    first += len(block)
    bar.update(len(block))
  bar.close()
  if first != count or rows is None:
    raise ValueError(f"query blocks for {first} records, expected {count}")
  return NeighbourTable(rows, scores)
