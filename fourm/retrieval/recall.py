"""Recall@k of an index: how often a query finds its own record among the top k.

The queries are one part of records that are themselves indexed (their caption, or
their image), and the hit is that record's document. Over a bank of the records'
whole documents this is "text -> document" (or "image -> document"); over a bank of
their images only (`parts=("rgb",)`) a caption query measures text -> image retrieval
on held-out pairs, the number a retriever is judged by.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fourm.errors import UsageError
from fourm.retrieval import documents
from fourm.retrieval.index import MemoryBank


def recall_at_k(bank: MemoryBank, encoder, records: Iterable[Mapping[str, Any]],
                k: int | Sequence[int], *, query_part: str = documents.TEXT,
                batch_size: int = 32) -> dict[int, float]:
  """{k: fraction of the records whose own document is in the top k for the query made
  of their `query_part` alone}. Records without that part are left out; a record that
  is not in the bank is an error."""
  ks = sorted({int(k)} if isinstance(k, (int, np.integer)) else {int(x) for x in k})
  if not ks or ks[0] < 1:
    raise UsageError(f"recall@k needs k >= 1 (got {ks})")
  documents.check_parts([query_part])
  queries, targets = [], []
  for record in records:
    value = record.get(query_part)
    if value is None or (isinstance(value, str) and not value.strip()):
      continue
    key = record.get("key")
    row = None if key is None else bank.row_of(str(key))
    if row is None:
      raise UsageError(f"record {key!r} is not in the index {bank.directory}: recall@k "
                       "measures records that are indexed")
    queries.append({query_part: value})
    targets.append(row)
  if not queries:
    raise UsageError(f"no record has a {query_part!r} to query with")
  ranks = np.empty(len(queries), np.int64)
  deepest = min(ks[-1], len(bank))
  for start in range(0, len(queries), batch_size):
    batch = queries[start:start + batch_size]
    vectors, _ = encoder.encode_documents(batch)
    _, rows = bank.search(vectors, deepest)
    want = np.asarray(targets[start:start + len(batch)])[:, None]
    hit = rows == want
    # The rank of the hit, or `deepest` (a miss at every k searched).
    ranks[start:start + len(batch)] = np.where(hit.any(1), hit.argmax(1), deepest)
  return {k: float((ranks < k).mean()) for k in ks}
