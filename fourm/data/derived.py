"""Writing a dataset derived record by record from another, to be read beside it.

Token records, pseudo-labels and other per-sample products are stored in their own
directory with the same splits, shards and record order as the data they came from, so
`RecordSource([source, derived])` joins them without rewriting the source. This module
owns that shard loop: it mirrors the source's shard layout, derives a batch of records
at a time (tokenizers want batches), skips shards already written (a killed job resumes
where it stopped) and writes `dataset_info.json` last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from tqdm import tqdm

from fourm.data import records
from fourm.errors import RecordError, UsageError

JOB_FILE = "derive_job.json"

# samples (one batch, decoded source records) -> derived records, one per sample.
DeriveFn = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


def _batches(source: records.RecordSource, indices: range, batch_size: int
             ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
  for start in range(indices.start, indices.stop, batch_size):
    stop = min(start + batch_size, indices.stop)
    yield start, [source[i] for i in range(start, stop)]


def _derived_stream(source, indices, batch_size, derive: DeriveFn, path: str, bar):
  for start, samples in _batches(source, indices, batch_size):
    derived = derive(samples)
    if len(derived) != len(samples):
      raise RecordError(f"the derivation returned {len(derived)} records for a batch of "
                        f"{len(samples)}", path=path, record=start)
    yield from derived
    bar.update(len(samples))


def finished_shard(out: str, name: str, expected: int) -> tuple[int, dict] | None:
  """(count, stats) of a shard written whole (records and sidecar), else None."""
  shard, sidecar = os.path.join(out, name), os.path.join(out, name + ".json")
  if not (os.path.exists(shard) and os.path.exists(sidecar)):
    return None
  with open(sidecar) as f:
    done = json.load(f)
  return (done["count"], done["stats"]) if done["count"] == expected else None


def claim_directory(out: str, job: Mapping[str, Any], *, job_file: str = JOB_FILE,
                    what: str = "a derived dataset") -> None:
  """One output directory holds one job: record `job` there, and refuse to resume a
  different one into it (or to write into a directory of some other job's shards)."""
  path = os.path.join(out, job_file)
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous != dict(job):
      raise UsageError(f"{out} already holds {what} made with {previous}; this run asks "
                       f"for {dict(job)}. Use a new output directory.")
    return
  if any(name.endswith(".array_record") for name in os.listdir(out)):
    raise UsageError(f"{out} already holds record shards from another job; "
                     "use a new output directory")
  with open(path, "w") as f:
    json.dump(dict(job), f, indent=2, sort_keys=True)


def write_derived(source_dir: str, out: str, derive: DeriveFn, *, job: Mapping[str, Any],
                  name: str, modalities: Sequence[str] | None = None,
                  splits: Sequence[str] | None = None, batch_size: int = 64,
                  metadata: Mapping[str, Any] | None = None, progress: bool = True,
                  log: Callable[[str], None] = print) -> records.DatasetInfo:
  """Derives every record of `source_dir` (the named `modalities` of it) into `out`.

  `job` describes the derivation (JSON-able); rerunning the same job resumes it, a
  different one is refused. Returns the new dataset's info.
  """
  if os.path.abspath(source_dir) == os.path.abspath(out):
    raise UsageError(f"the derived dataset must go to its own directory, not {source_dir}")
  info = records.DatasetInfo.load(source_dir)
  split_names = list(splits) if splits is not None else sorted(info.splits)
  unknown = [s for s in split_names if s not in info.splits]
  if unknown:
    raise UsageError(f"{source_dir} has no split(s) {unknown} (it has {sorted(info.splits)})")
  os.makedirs(out, exist_ok=True)
  claim_directory(out, {**job, "source": os.path.abspath(source_dir)})

  plan = []  # (split, shard name, record range)
  for split in split_names:
    split_info = info.splits[split]
    start = 0
    for shard, length in zip(split_info.shards, split_info.shard_lengths, strict=True):
      plan.append((split, shard, range(start, start + length)))
      start += length
  done = {shard: finished_shard(out, shard, len(indices)) for _, shard, indices in plan}
  todo = [entry for entry in plan if done[entry[1]] is None]
  if len(todo) < len(plan):
    log(f"resuming: {len(plan) - len(todo)} of {len(plan)} shards already written in {out}")

  bar = tqdm(total=sum(len(indices) for _, _, indices in todo), unit="record",
             disable=not progress, desc=name)
  sources: dict[str, records.RecordSource] = {}
  for split, shard, indices in todo:
    if split not in sources:
      sources[split] = records.RecordSource(source_dir, split, modalities)
    path = os.path.join(out, shard)
    count, stats = records.write_shard(
        path, _derived_stream(sources[split], indices, batch_size, derive, path, bar),
        first_record=indices.start)
    with open(path + ".json.tmp", "w") as f:
      json.dump({"count": count, "stats": stats}, f)
    os.replace(path + ".json.tmp", path + ".json")
    done[shard] = (count, stats)
  bar.close()

  layout = {}
  for split, shard, _ in plan:
    layout.setdefault(split, []).append((shard, done[shard][0]))
  return records.write_info(out, name, layout, [done[shard][1] for _, shard, _ in plan],
                            {"derived_from": os.path.abspath(source_dir), "job": dict(job),
                             **dict(metadata or {})})
