"""Retrieved documents as conditions: the K documents a `Retriever` selects for a sample
become extra input modalities "ret<k>_<name>" (`modalities.retrieved`), each with
embeddings of its own, so the model tells them from the sample's own modalities.

A run asks for them by naming them among its modalities, e.g. ("rgb", "tok_rgb",
"caption", "ret1_tok_rgb", "ret1_caption"), and an index (`config.retrieval.index`,
built by `fourm index build` over the run's training split). Then:

* training (`RetrievedDocuments`, a pipeline transform run before the masking): each
  sample's documents come from the index's precomputed neighbour table, with query
  dropout in training, never the sample itself; their values are read from the run's
  own datasets (records and tokens side by side), so a retrieved document carries
  its token grids, not only what the index encoded. The masking then treats them as
  any input: they take part of the input budget.
* generation (`documents_for_queries`): the user's conditions (a caption, an image) are
  the query, encoded and searched; the documents' values come from the same datasets.

Row i of an index is record i of its split (`index.py`); the run's datasets are read
at that split and each record's key is checked against the index's, so an index built
over other data is refused, not silently misread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fourm import modalities
from fourm.data.records import RecordSource
from fourm.errors import RecordError, UsageError
from fourm.retrieval import documents
from fourm.retrieval.index import MemoryBank
from fourm.retrieval.retriever import Retriever
from fourm.retrieval.selection import SelectionRules


def retrieved_names(names: Sequence[str]) -> dict[int, tuple[str, ...]]:
  """{k: the base modalities of document k} for the "ret<k>_<name>" among `names`;
  documents are numbered 1..K with none missing."""
  documents: dict[int, list[str]] = {}
  for name in names:
    parsed = modalities.retrieved_base(name)
    if parsed is not None:
      documents.setdefault(parsed[0], []).append(parsed[1])
  if documents and sorted(documents) != list(range(1, max(documents) + 1)):
    raise UsageError(f"retrieved documents are numbered 1..K: the modalities name documents "
                     f"{sorted(documents)}")
  return {k: tuple(bases) for k, bases in sorted(documents.items())}


@dataclasses.dataclass(frozen=True)
class RetrievalConfig:
  """Where the documents come from and how they are picked (`config.retrieval`)."""
  index: str
  data: tuple[str, ...]          # the run's datasets (records and tokens side by side)
  split: str                     # the index's split, which the datasets are read at
  duplicate_threshold: float = 0.95
  diversity_threshold: float = 0.95
  required_parts: tuple[str, ...] = ()  # the modality rule: see `parts_for`

  @property
  def rules(self) -> SelectionRules:
    return SelectionRules(duplicate_threshold=self.duplicate_threshold,
                          diversity_threshold=self.diversity_threshold,
                          required_parts=self.required_parts)


def parts_for(names: Sequence[str]) -> tuple[str, ...]:
  """The selection rules' modality rule for a model that reads these "ret<k>_<name>":
  the document parts (of `documents.PARTS`) its documents are made from, so a document
  without them (no caption, for ret1_caption) is passed over for the next candidate."""
  sources = {modalities.get(base).source.name
             for bases in retrieved_names(names).values() for base in bases}
  return tuple(part for part in documents.PARTS if part in sources)


class DocumentReader:
  """The values of index rows, from the run's datasets: picklable (grain workers open
  their own index and record files on first use)."""

  def __init__(self, config: RetrievalConfig, encoder=None):
    self.config = config
    self._encoder = encoder
    self._retriever: Retriever | None = None
    self._source: RecordSource | None = None

  def __getstate__(self):
    return {"config": self.config, "_encoder": None, "_retriever": None, "_source": None}

  @property
  def retriever(self) -> Retriever:
    if self._retriever is None:
      bank = MemoryBank.load(self.config.index)
      # Only parts the index encoded can be asked for: its table knows no others.
      rules = dataclasses.replace(self.config.rules, required_parts=tuple(
          part for part in self.config.required_parts if part in bank.manifest.parts))
      self._retriever = Retriever(bank, self._encoder, rules=rules)
    return self._retriever

  def searching_retriever(self) -> Retriever:
    """The retriever, with the encoder the index was built with (loaded on first use):
    for queries that are not indexed records."""
    retriever = self.retriever
    if retriever.encoder is None:
      from fourm.retrieval.encoders import ClipDocumentEncoder
      retriever.encoder = ClipDocumentEncoder.from_pretrained(retriever.bank.manifest.encoder)
    return retriever

  @property
  def source(self) -> RecordSource:
    if self._source is None:
      self._source = RecordSource(self.config.data, self.config.split, None)
      bank = self.retriever.bank
      if len(self._source) != len(bank):
        raise UsageError(f"the index {self.config.index} holds {len(bank)} documents of "
                         f"split {self.config.split!r}, the datasets "
                         f"{list(self.config.data)} {len(self._source)} records: build the "
                         "index over the run's training data (fourm index build)")
    return self._source

  def values(self, row: int, bases: Sequence[str]) -> dict[str, Any]:
    """{base modality: value} of index row `row`, for those of `bases` the record has."""
    record = self.source[row]
    expected = self.retriever.bank.keys[row]
    if str(record.get(modalities.KEY.name)) != expected:
      raise RecordError(f"holds key {record.get(modalities.KEY.name)!r} where the index "
                        f"{self.config.index} has {expected!r}: the index was built over "
                        "other data", path=",".join(self.config.data), record=row,
                        field=modalities.KEY.name)
    return {base: record[base] for base in bases if base in record}


class RetrievedDocuments:
  """The pipeline transform that adds a sample's retrieved documents (before masking):
  `sample` -> `sample` with "ret<k>_<name>" for each document k and base modality
  `name` the run shows. A document that lacks a modality, or fewer than K documents
  passing the selection rules, leaves those entries absent (the masking gives their
  budget to the others)."""

  def __init__(self, names: Sequence[str], config: RetrievalConfig, *, train: bool):
    self.documents = retrieved_names(names)
    if not self.documents:
      raise UsageError("config.retrieval.index is set but no modality is a retrieved "
                       "document: add ret1_<name> (e.g. ret1_tok_rgb) to config.modalities")
    self.reader = DocumentReader(config)
    self.train = train

  def __call__(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if modalities.KEY.name not in sample:
      raise RecordError("has no key, which retrieval looks its documents up by",
                        field=modalities.KEY.name)
    indexed = self.reader.retriever.bank.row_of(str(sample[modalities.KEY.name])) is not None
    # An indexed sample reads its neighbours; another (a held-out one) is encoded and
    # searched, which needs the index's encoder. Query dropout is training's only.
    retriever = self.reader.retriever if indexed else self.reader.searching_retriever()
    rows = retriever.retrieve_rows(sample, len(self.documents), rng if self.train else None)
    out = dict(sample)
    for k, row in zip(self.documents, rows):
      for base, value in self.reader.values(row, self.documents[k]).items():
        out[f"ret{k}_{base}"] = value
    return out


class Then:
  """Two sample transforms, one after the other, sharing the sample's rng."""

  def __init__(self, first, second):
    self.first, self.second = first, second

  def __call__(self, sample, rng):
    return self.second(self.first(sample, rng), rng)


def documents_for_queries(reader: DocumentReader, queries: Sequence[Mapping[str, Any]],
                          names: Sequence[str]) -> tuple[dict[str, list[Any]], list[list[str]]]:
  """Generation's documents: ({ret modality: one value per query}, each query's keys).
  A query is {"caption": str} and / or {"rgb": uint8 image}; it is encoded and searched
  (no dropout). Every query must get every document the model reads (a missing one
  would have to be an absent entry for some rows of the batch, which the encoder's
  batched entries cannot say): fewer is an error naming the query."""
  documents = retrieved_names(names)
  values: dict[str, list[Any]] = {}
  chosen = []
  retriever = reader.searching_retriever()
  for number, query in enumerate(queries):
    rows = retriever.retrieve_rows(query, len(documents))
    if len(rows) < len(documents):
      raise UsageError(f"sample {number}: the index gave {len(rows)} documents passing the "
                       f"selection rules, the model reads {len(documents)}")
    chosen.append([retriever.bank.keys[row] for row in rows])
    for k, row in zip(documents, rows):
      found = reader.values(row, documents[k])
      for base in documents[k]:
        if base not in found:
          raise UsageError(f"sample {number}: retrieved document {k} "
                           f"({retriever.bank.keys[row]}) has no {base}")
        values.setdefault(f"ret{k}_{base}", []).append(found[base])
  return values, chosen
