"""`Retriever`: a query in, the keys of K selected documents out (and their records).

Two ways to the candidates, one set of selection rules:

- an indexed record (a training sample: its "key" is in the bank) reads its row of the
  precomputed neighbour table: no encoder, no search, so a data-pipeline transform can
  call `retrieve` per sample cheaply. With an rng (training) it reads one of the
  query-dropout variants, picked by that rng; without one, the whole query's row.
- any other query (a user's caption or image at generation, a held-out record) is
  encoded and searched; with an rng, query dropout is applied to it first.

The query's own record is never retrieved for itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fourm import modalities
from fourm.errors import UsageError
from fourm.retrieval import documents, query_dropout
from fourm.retrieval.index import MemoryBank
from fourm.retrieval.selection import SelectionRules, select

SEARCH_DEPTH = 32  # candidates searched for an encoded query, before the rules


class Retriever:
  """Selects documents of `bank` for queries; `encoder` (a `ClipDocumentEncoder`) is
  needed only for queries that are not indexed records."""

  def __init__(self, bank: MemoryBank, encoder=None, rules: SelectionRules = SelectionRules(),
               search_depth: int = SEARCH_DEPTH):
    self.bank, self.encoder, self.rules = bank, encoder, rules
    table = bank.neighbours
    self.search_depth = max(search_depth, table.size if table is not None else 0)
    self.dropout_rate = bank.manifest.dropout_rate or query_dropout.RATE

  @classmethod
  def load(cls, directory: str, encoder=None, **kwargs) -> Retriever:
    return cls(MemoryBank.load(directory), encoder, **kwargs)

  def retrieve(self, query: Mapping[str, Any], k: int,
               rng: np.random.Generator | None = None) -> list[str]:
    """The keys of up to `k` documents for `query`: a record (with its "key"), or a
    query such as {"caption": "a red cube"} or {"rgb": uint8 [H, W, 3]}."""
    return [self.bank.keys[row] for row in self.retrieve_rows(query, k, rng)]

  def retrieve_rows(self, query: Mapping[str, Any], k: int,
                    rng: np.random.Generator | None = None) -> list[int]:
    own = self._own_row(query)
    if own is not None and self.bank.neighbours is not None:
      rows, scores = self._table_candidates(own, rng)
    else:
      rows, scores = self._searched_candidates(query, rng)
    return select(rows, scores, k, present=self.bank.present, vectors=self.bank.vectors,
                  rules=self.rules, exclude=() if own is None else (own,))

  def documents(self, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The records of retrieved keys, read from the indexed dataset."""
    source = self.bank.records()
    rows = [self.bank.row_of(key) for key in keys]
    missing = [key for key, row in zip(keys, rows) if row is None]
    if missing:
      raise UsageError(f"keys {missing[:3]} are not in the index {self.bank.directory}")
    return [source[row] for row in rows]

  def _own_row(self, query: Mapping[str, Any]) -> int | None:
    key = query.get(modalities.KEY.name)
    return None if key is None else self.bank.row_of(str(key))

  def _table_candidates(self, row: int, rng):
    variants = self.bank.neighbours.num_variants
    variant = int(rng.integers(1, variants)) if rng is not None and variants > 1 else 0
    return self.bank.neighbours.candidates(row, variant)

  def _searched_candidates(self, query, rng):
    if self.encoder is None:
      raise UsageError("this query is not an indexed record, so it must be encoded: give "
                       "the Retriever an encoder (encoders.ClipDocumentEncoder)")
    if not documents.present_parts(query).any():
      raise UsageError(f"a query needs one of {list(documents.PARTS)} (got "
                       f"{sorted(query)})")
    if rng is not None:
      query = query_dropout.drop_query(query, rng, grid=self.encoder.patch_grid,
                                       rate=self.dropout_rate)
    # Any part the encoder reads can query any bank: CLIP's two towers share one space.
    vectors, _ = self.encoder.encode_documents([query])
    scores, rows = self.bank.search(vectors, self.search_depth)
    return rows[0], scores[0]
