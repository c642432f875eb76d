"""`fourm index build`: encode a dataset split into a memory bank, resumable.

Records are encoded a chunk at a time; each chunk (its document vectors, its
query-dropout variants, keys and parts) is written atomically to `INDEX/chunks/`, so a
killed build resumes at the first missing chunk and encodes nothing twice. When every
chunk is there, the faiss index and the neighbour table are made from them, every file
is written (the manifest last), and the chunks are removed. Running the same build on a
finished index loads it and does nothing else; a build with other arguments into the
same directory is refused.

Query-dropout variant r of record i is drawn with the seed (seed, i, r), so the vectors
do not depend on chunking, batching order or on where a build was interrupted.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

from fourm.data import derived, records
from fourm.errors import RecordError, UsageError, refused_writes_as
from fourm.retrieval import documents, encoders, index, neighbours, query_dropout

NEIGHBOURS = 32         # M: candidates kept per record, ahead of the selection rules
DROPOUT_VARIANTS = 2    # query-dropout draws per record, beside the whole query
CHUNK_SIZE = 512        # records per resumable chunk


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """Everything that decides an index's content (`batch_size` and `chunk_size` do not)."""
  encoder: str = encoders.DEFAULT_ENCODER
  split: str = "train"
  parts: tuple[str, ...] = documents.PARTS
  neighbours: int = NEIGHBOURS
  dropout_rate: float = query_dropout.RATE
  dropout_variants: int = DROPOUT_VARIANTS
  dropout_seed: int = 0
  faiss: str | None = None  # None: flat up to index.FLAT_LIMIT documents, else hnsw

  def check(self) -> BuildOptions:
    if self.neighbours < 0 or self.dropout_variants < 0:
      raise UsageError(f"--neighbours {self.neighbours} and --dropout-variants "
                       f"{self.dropout_variants} must not be negative")
    if self.faiss not in (None, "flat", "hnsw"):
      raise UsageError(f"--faiss {self.faiss}: choose flat or hnsw")
    if not 0 <= self.dropout_rate < 1:
      raise UsageError(f"--dropout-rate {self.dropout_rate}: a fraction in [0, 1)")
    return dataclasses.replace(self, parts=documents.check_parts(self.parts))


def _matches(manifest: index.Manifest, data: Sequence[str], options: BuildOptions) -> bool:
  wanted = dataclasses.asdict(options)
  if wanted["faiss"] is None:
    wanted["faiss"] = index.faiss_kind(manifest.count)
  have = dataclasses.asdict(manifest)
  return tuple(data) == manifest.data and all(have[name] == wanted[name] for name in wanted)


def _open_source(data: Sequence[str], options: BuildOptions) -> records.RecordSource:
  """The split, refused with one error when it holds none of the parts to index."""
  source = records.RecordSource(list(data), options.split)
  if not set(options.parts) & set(source.modalities):
    raise RecordError(f"the dataset has none of the document parts {list(options.parts)} "
                      f"in split {options.split!r} (it has {source.modalities})",
                      path=data[0], field=options.parts[0])
  return source


def _chunk_path(out: str, chunk: int) -> str:
  return os.path.join(out, index.CHUNKS, f"chunk-{chunk:06d}.npz")


def _encode_chunk(encoder, source: records.RecordSource, rows: range,
                  options: BuildOptions, batch_size: int) -> dict[str, np.ndarray]:
  samples = [source[i] for i in rows]
  path = source.stores[0].directory
  present = np.stack([documents.present_parts(s, options.parts) for s in samples])
  for row, has in zip(rows, present):
    documents.require_some_part(has, options.parts, path=path, record=row)
  keys = [documents.record_key(s, options.split, i) for s, i in zip(samples, rows)]
  # The document itself (variant 0), then its query-dropout draws.
  variants = [samples] + [
      [query_dropout.drop_query(s, np.random.default_rng([options.dropout_seed, i, r]),
                                grid=encoder.patch_grid, rate=options.dropout_rate)
       for s, i in zip(samples, rows)]
      for r in range(1, options.dropout_variants + 1)]
  vectors = np.zeros((len(samples), len(variants), encoder.dimension), np.float32)
  for v, queries in enumerate(variants):
    for start in range(0, len(queries), batch_size):
      batch = queries[start:start + batch_size]
      vectors[start:start + len(batch), v], _ = encoder.encode_documents(batch, options.parts)
  return {"vectors": vectors[:, 0], "dropped": vectors[:, 1:], "keys": np.array(keys, str),
          "parts": present}


def _write_chunk(path: str, arrays: dict[str, np.ndarray]) -> None:
  def write(temporary):
    with open(temporary, "wb") as f:
      np.savez(f, **arrays)
  index.atomic_write(path, write)


def _read_chunks(out: str, num_chunks: int):
  for chunk in range(num_chunks):
    path = _chunk_path(out, chunk)
    try:
      with np.load(path) as stored:
        yield {name: stored[name] for name in stored.files}
    except (OSError, ValueError, KeyError) as error:
      raise RecordError(f"cannot read this chunk of an unfinished build ({error}); delete "
                        "it and build again to re-encode it", path=path) from None


def _check_unique(keys: Sequence[str], data: Sequence[str]) -> None:
  seen: dict[str, int] = {}
  for row, key in enumerate(keys):
    if key in seen:
      raise RecordError(f"key {key!r} is also the key of record {seen[key]}: an index needs "
                        "unique keys", path=data[0], record=row, field="key")
    seen[key] = row


def build_index(data: str | Sequence[str], out: str, options: BuildOptions = BuildOptions(),
                *, batch_size: int = 32, chunk_size: int = CHUNK_SIZE, device: str = "cpu",
                progress: bool = True, max_chunks: int | None = None, encoder=None,
                log: Callable[[str], None] = print) -> index.MemoryBank | None:
  """Indexes split `options.split` of `data` (one dataset directory, or several read
  side by side) into `out`. Returns the bank, or None when `max_chunks` chunks were
  encoded and more remain (a deliberate stop; rerun to go on). `encoder`, if given, is
  the already loaded `options.encoder`; otherwise it is loaded when needed."""
  data = [os.path.abspath(d) for d in ([data] if isinstance(data, (str, os.PathLike))
                                       else data)]
  options = options.check()
  if batch_size < 1 or chunk_size < 1:
    raise UsageError(f"--batch-size {batch_size} and --chunk-size {chunk_size} must be "
                     "positive")
  if os.path.exists(os.path.join(out, index.MANIFEST)):
    return _finished(out, data, options, log)

  source = _open_source(data, options)
  os.makedirs(os.path.join(out, index.CHUNKS), exist_ok=True)
  count = len(source)
  # As JSON stores it (lists), so that a resumed build's arguments compare equal; the
  # record count and chunk size fix which records each chunk file holds.
  job = {"data": data, **dataclasses.asdict(options), "parts": list(options.parts),
         "count": count, "chunk_size": chunk_size}
  derived.claim_directory(out, job, job_file=index.BUILD_JOB, what="an index build")
  num_chunks = -(-count // chunk_size)
  todo = [c for c in range(num_chunks) if not os.path.exists(_chunk_path(out, c))]
  bar = tqdm(total=count, initial=count - sum(len(_rows(c, chunk_size, count)) for c in todo),
             unit="record", disable=not progress, desc="encode")
  with refused_writes_as(f"writing the index {out}"):
    for done, chunk in enumerate(todo):
      if max_chunks is not None and done == max_chunks:
        bar.close()
        log(f"stopped after {max_chunks} chunk(s); {len(todo) - done} to go: run the same "
            "command again to resume")
        return None
      # Loaded only when there is something to encode: a resumed build with all chunks
      # done, or a finished one, does not start torch.
      if encoder is None:
        encoder = encoders.ClipDocumentEncoder.from_pretrained(options.encoder, device=device)
      rows = _rows(chunk, chunk_size, count)
      _write_chunk(_chunk_path(out, chunk),
                   _encode_chunk(encoder, source, rows, options, batch_size))
      bar.update(len(rows))
  bar.close()
  bank = _assemble(out, data, options, num_chunks, progress)
  shutil.rmtree(os.path.join(out, index.CHUNKS), ignore_errors=True)
  os.remove(os.path.join(out, index.BUILD_JOB))
  return bank


def _rows(chunk: int, chunk_size: int, count: int) -> range:
  return range(chunk * chunk_size, min((chunk + 1) * chunk_size, count))


def _finished(out: str, data: Sequence[str], options: BuildOptions, log) -> index.MemoryBank:
  bank = index.MemoryBank.load(out)
  if not _matches(bank.manifest, data, options):
    raise UsageError(f"{out} already holds an index made with {bank.manifest}; this build "
                     f"asks for data {list(data)} and {options}. Use a new --out.")
  count = len(records.RecordSource(list(data), options.split, validate=False))
  if count != len(bank):
    raise UsageError(f"{out} indexes {len(bank)} records but split {options.split!r} of the "
                     f"dataset now has {count}: delete the index or use a new --out")
  # A build killed after its manifest was written leaves chunks behind: tidy up.
  shutil.rmtree(os.path.join(out, index.CHUNKS), ignore_errors=True)
  if os.path.exists(os.path.join(out, index.BUILD_JOB)):
    os.remove(os.path.join(out, index.BUILD_JOB))
  log(f"{out} is already a finished index of the same build: nothing to do")
  return bank


def _assemble(out: str, data: Sequence[str], options: BuildOptions, num_chunks: int,
              progress: bool) -> index.MemoryBank:
  # Two passes over the chunks: the vectors first, then (for the neighbour table) the
  # query variants a chunk at a time, which for a large bank would not fit in memory.
  vectors, keys, present = [], [], []
  for chunk in _read_chunks(out, num_chunks):
    vectors.append(chunk["vectors"])
    keys += [str(k) for k in chunk["keys"]]
    present.append(chunk["parts"])
  vectors, present = np.concatenate(vectors), np.concatenate(present)
  _check_unique(keys, data)
  manifest = index.Manifest(
      encoder=options.encoder, dimension=int(vectors.shape[1]), data=tuple(data),
      split=options.split, count=len(keys), parts=options.parts,
      faiss=options.faiss or index.faiss_kind(len(keys)), neighbours=options.neighbours,
      dropout_rate=options.dropout_rate, dropout_variants=options.dropout_variants,
      dropout_seed=options.dropout_seed)
  bank = index.MemoryBank(manifest, vectors, keys, present)
  if options.neighbours:
    blocks = (np.concatenate([chunk["vectors"][:, None], chunk["dropped"]], axis=1)
              for chunk in _read_chunks(out, num_chunks))
    bank.neighbours = neighbours.compute_neighbours(bank.search, blocks, len(keys),
                                                    options.neighbours, progress=progress)
  bank.save(out)
  return bank
