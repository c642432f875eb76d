"""The memory bank: document vectors in a faiss index, maximum inner product search.

Why faiss (faiss-cpu): it is maintained (Meta), installs from pip on every platform we
run on, and its exact flat inner-product index searches a bank of up to millions of
unit vectors in milliseconds per query batch with nothing to train; past `FLAT_LIMIT`
documents we switch to its HNSW graph (approximate, still inner product). Documents are
unit vectors, so inner product is cosine similarity.

An index is a directory::

    INDEX/manifest.json          # written last: its presence marks a finished index
    INDEX/index.faiss            # the faiss index over the document vectors
    INDEX/vectors.npy            # float32 [N, D] the same vectors (memory-mapped on load)
    INDEX/documents.npz          # keys [N] (the records' "key"), parts bool [N, P]
    INDEX/neighbours.npy         # int32 [N, V, M]: each record's top-M other documents,
    INDEX/neighbour_scores.npy   #   for its whole query (v = 0) and V - 1 query-dropout
                                 #   draws (`neighbours.py`); what training reads

Row i of every array is record i of the indexed split (`MemoryBank.records()`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import faiss
import numpy as np

from fourm.data import records
from fourm.errors import RecordError, UsageError, refused_writes_as
from fourm.retrieval import documents
from fourm.retrieval.neighbours import NeighbourTable

FORMAT = "fourm-memory-bank"
VERSION = 1
MANIFEST = "manifest.json"
FAISS_FILE = "index.faiss"
VECTORS = "vectors.npy"
DOCUMENTS = "documents.npz"
NEIGHBOURS = "neighbours.npy"
NEIGHBOUR_SCORES = "neighbour_scores.npy"
BUILD_JOB = "build_job.json"  # an unfinished build's arguments (`build.py`)
CHUNKS = "chunks"             # an unfinished build's encoded chunks
FLAT_LIMIT = 1_000_000  # exact search up to here; HNSW above
HNSW_LINKS = 32
HNSW_SEARCH_DEPTH = 128


@dataclasses.dataclass(frozen=True)
class Manifest:
  """What an index holds and how it was made."""
  encoder: str            # hub id, local path or "tiny-random"
  dimension: int
  data: tuple[str, ...]   # the dataset directories read (side by side), absolute
  split: str
  count: int
  parts: tuple[str, ...]  # the parts indexed (of documents.PARTS)
  faiss: str              # "flat" | "hnsw"
  neighbours: int = 0     # M, 0 without a neighbour table
  dropout_rate: float = 0.0
  dropout_variants: int = 0
  dropout_seed: int = 0

  def to_json(self) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}

  @classmethod
  def from_json(cls, entries: dict[str, Any], path: str) -> Manifest:
    if entries.get("format") != FORMAT or entries.get("version") != VERSION:
      raise UsageError(f"{path}: not a {FORMAT} manifest of version {VERSION} (format "
                       f"{entries.get('format')!r}, version {entries.get('version')!r})")
    fields = {f.name for f in dataclasses.fields(cls)}
    try:
      values = {k: v for k, v in entries.items() if k in fields}
      values["data"], values["parts"] = tuple(values["data"]), tuple(values["parts"])
      return cls(**values)
    except (KeyError, TypeError) as error:
      raise RecordError(f"incomplete manifest ({error})", path=path) from None


def faiss_kind(count: int) -> str:
  return "flat" if count <= FLAT_LIMIT else "hnsw"


def make_faiss_index(dimension: int, kind: str) -> faiss.Index:
  """An empty maximum-inner-product index."""
  if kind == "flat":
    return faiss.IndexFlatIP(dimension)
  if kind == "hnsw":
    index = faiss.IndexHNSWFlat(dimension, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = HNSW_SEARCH_DEPTH
    return index
  raise UsageError(f"faiss index kind {kind!r}: choose flat or hnsw")


def atomic_write(path: str, write: Callable[[str], None]) -> None:
  """`write(temporary path)`, then a rename: a killed job leaves the old file or none."""
  temporary = path + ".tmp"
  write(temporary)
  os.replace(temporary, path)


def _save_npy(path: str, array: np.ndarray) -> None:
  def write(temporary):
    with open(temporary, "wb") as f:
      np.save(f, array)
  atomic_write(path, write)


class MemoryBank:
  """Unit document vectors of one split with their record keys and parts, searchable."""

  def __init__(self, manifest: Manifest, vectors: np.ndarray, keys: Sequence[str],
               present: np.ndarray, index: faiss.Index | None = None,
               neighbours: NeighbourTable | None = None, directory: str | None = None):
    if not len(vectors) == len(keys) == len(present) == manifest.count:
      raise ValueError(f"{len(vectors)} vectors, {len(keys)} keys, {len(present)} part "
                       f"rows for a manifest of {manifest.count} documents")
    self.manifest, self.vectors, self.present = manifest, vectors, np.asarray(present, bool)
    self.keys = [str(k) for k in keys]
    self._index = index  # None: read from `directory`, or made from the vectors, when needed
    self.neighbours: NeighbourTable | None = neighbours
    self.directory = directory
    self._rows: dict[str, int] | None = None
    self._source = None

  @property
  def index(self) -> faiss.Index:
    """The faiss index, read or made on first use: training reads only the neighbour
    table and never pays for it."""
    if self._index is None:
      if self.directory is not None:
        path = os.path.join(self.directory, FAISS_FILE)
        try:
          index = faiss.read_index(path)
        except RuntimeError as error:
          raise RecordError(f"cannot read the faiss index ({error})", path=path) from None
        if index.ntotal != len(self) or index.d != self.dimension:
          raise RecordError(f"the faiss index holds {index.ntotal} x {index.d} vectors, "
                            f"{MANIFEST} says {len(self)} x {self.dimension}", path=path)
      else:
        index = make_faiss_index(self.dimension, self.manifest.faiss)
        index.add(np.ascontiguousarray(self.vectors, np.float32))
      self._index = index
    return self._index

  def __getstate__(self):
    # Data-loader workers get a bank by pickling: a saved one is re-opened from its
    # directory (memory-mapped, faiss unread), an in-memory one travels with its arrays.
    if self.directory is not None:
      return {"directory": self.directory}
    return {**self.__dict__, "vectors": np.asarray(self.vectors), "_index": None,
            "_source": None}

  def __setstate__(self, state):
    if set(state) == {"directory"}:
      state = MemoryBank.load(state["directory"]).__dict__
    self.__dict__.update(state)

  def __len__(self) -> int:
    return self.manifest.count

  @property
  def dimension(self) -> int:
    return self.manifest.dimension

  def row_of(self, key: str) -> int | None:
    """The row (= record index in the split) of a key, None if it is not in the bank."""
    if self._rows is None:
      self._rows = {key: row for row, key in enumerate(self.keys)}
      if len(self._rows) != len(self.keys):
        raise RecordError(f"the indexed records' keys are not unique ({len(self.keys)} "
                          f"records, {len(self._rows)} keys)", path=self.directory)
    return self._rows.get(key)

  def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit query vectors [Q, D] -> (scores float32 [Q, k], rows int64 [Q, k]), best
    first; rows are -1 (scores -inf) past the end of a bank smaller than k."""
    queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    if queries.shape[1] != self.dimension:
      raise UsageError(f"query vectors of dimension {queries.shape[1]} for an index of "
                       f"dimension {self.dimension} ({self.manifest.encoder})")
    if k < 1:
      raise UsageError(f"k = {k}: search for at least one document")
    found = min(k, len(self))
    scores, rows = self.index.search(queries, found)
    if found < k:  # pad as faiss pads, with a score that sorts last
      pad = k - found
      scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
      rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
    return scores, rows

  def records(self):
    """The indexed split as a `RecordSource`: row i is record i (fetch documents by key
    with `records()[bank.row_of(key)]`)."""
    if self._source is None:
      self._source = records.RecordSource(list(self.manifest.data), self.manifest.split)
      if len(self._source) != len(self):
        raise RecordError(f"the dataset's split {self.manifest.split!r} now has "
                          f"{len(self._source)} records but the index holds {len(self)}: "
                          "rebuild the index", path=self.directory)
    return self._source

  def save(self, directory: str) -> None:
    """Every file atomically, the manifest last."""
    os.makedirs(directory, exist_ok=True)
    with refused_writes_as(f"writing the index {directory}"):
      _save_npy(os.path.join(directory, VECTORS), np.asarray(self.vectors, np.float32))

      def write_documents(temporary):
        with open(temporary, "wb") as f:
          np.savez(f, keys=np.array(self.keys, dtype=str), parts=self.present)
      atomic_write(os.path.join(directory, DOCUMENTS), write_documents)
      atomic_write(os.path.join(directory, FAISS_FILE),
                    lambda temporary: faiss.write_index(self.index, temporary))
      if self.neighbours is not None:
        _save_npy(os.path.join(directory, NEIGHBOURS), self.neighbours.rows)
        _save_npy(os.path.join(directory, NEIGHBOUR_SCORES), self.neighbours.scores)

      def write_manifest(temporary):
        with open(temporary, "w") as f:
          json.dump(self.manifest.to_json(), f, indent=2)
      atomic_write(os.path.join(directory, MANIFEST), write_manifest)
    self.directory = directory

  @classmethod
  def load(cls, directory: str) -> MemoryBank:
    """A finished index; a UsageError or RecordError naming the file if it is not one."""
    manifest = read_manifest(directory)

    def path(name):
      return os.path.join(directory, name)
    try:
      vectors = np.load(path(VECTORS), mmap_mode="r")
      with np.load(path(DOCUMENTS)) as stored:
        keys, present = stored["keys"].tolist(), stored["parts"]
      neighbours = NeighbourTable.load(path(NEIGHBOURS), path(NEIGHBOUR_SCORES)) \
          if manifest.neighbours else None
    except (OSError, ValueError, KeyError) as error:
      raise RecordError(f"cannot read the index ({type(error).__name__}: {error})",
                        path=directory) from None
    if vectors.shape != (manifest.count, manifest.dimension) or len(keys) != manifest.count:
      raise RecordError(f"the index files disagree with {MANIFEST}: vectors "
                        f"{vectors.shape} and {len(keys)} keys for {manifest.count} x "
                        f"{manifest.dimension}", path=directory)
    table_shape = (manifest.count, 1 + manifest.dropout_variants, manifest.neighbours)
    if neighbours is not None and neighbours.rows.shape != table_shape:
      raise RecordError(f"the neighbour table is {neighbours.rows.shape}, {MANIFEST} says "
                        f"{table_shape}", path=path(NEIGHBOURS))
    if not os.path.exists(path(FAISS_FILE)):
      raise RecordError("the faiss index is missing", path=path(FAISS_FILE))
    return cls(manifest, vectors, keys, present, neighbours=neighbours, directory=directory)


def read_manifest(directory: str) -> Manifest:
  """The manifest of a finished index, or one clear error."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.isdir(directory):
    raise UsageError(f"{directory}: no such index directory (make one with fourm index build)")
  if not os.path.exists(path):
    unfinished = os.path.exists(os.path.join(directory, BUILD_JOB))
    raise UsageError(f"{directory}: not a finished index (no {MANIFEST}); " + (
        "its build was interrupted: run the same fourm index build again to resume it"
        if unfinished else "make one with fourm index build"))
  try:
    with open(path) as f:
      entries = json.load(f)
  except (OSError, json.JSONDecodeError) as error:
    raise RecordError(f"cannot read the manifest ({error})", path=path) from None
  return Manifest.from_json(entries, path)


def parts_names(present_row: np.ndarray) -> list[str]:
  """The part names of one document's bool row."""
  return [name for name, has in zip(documents.PARTS, present_row) if has]
