"""Writing a dataset derived record by record from another, to be read beside it.

Token records, pseudo-labels and other per-sample products are stored in their own
directory with the same splits, shards and record order as the data they came from, so
`RecordSource([source, derived])` joins them without rewriting the source. This module
owns that shard loop: it mirrors the source's shard layout, derives a batch of records
at a time (tokenizers want batches), skips shards already written (a killed job resumes
where it stopped) and writes `dataset_info.json` last.

A job that may fail on single samples (a pseudo-labeler on one odd photo) passes
`tolerate_failures=True` and returns a `Failure` for such a sample: the record is
written with what could be derived (a modality that failed is absent), the sample is
logged by key and counted, and the count and list land in `dataset_info.json`.

A job that derives a modality from a field only some records hold (tok_semseg of an
instruction dataset, whose question records have no semseg) names it in `optional`: a
record without the field gets a derived record without that modality (the stores keep
one record per sample, so they still read side by side), and the records without it are
counted, logged and recorded in `dataset_info.json` (`without_source`). A source in which
no record has the field is an error naming it: that is a wrong dataset, not a mixed one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from tqdm import tqdm

from fourm import modalities
from fourm.data import records
from fourm.errors import RecordError, UsageError

JOB_FILE = "derive_job.json"


@dataclasses.dataclass
class Failure:
  """A sample the derivation could not finish: `record` holds what it could derive
  (possibly nothing), `error` says what failed."""
  record: dict[str, Any]
  error: str


# samples (one batch, decoded source records) -> derived records (or `Failure`s), one each.
DeriveFn = Callable[[list[dict[str, Any]]], list[dict[str, Any] | Failure]]


def _batches(source: records.RecordSource, indices: range, batch_size: int
             ) -> Iterator[tuple[int, list[dict[str, Any]]]]:
  for start in range(indices.start, indices.stop, batch_size):
    stop = min(start + batch_size, indices.stop)
    yield start, [source[i] for i in range(start, stop)]


def _readable_batches(source, indices, batch_size):
  """Like `_batches`, but a record that cannot be read becomes a `Failure` in place."""
  for start in range(indices.start, indices.stop, batch_size):
    batch = []
    for i in range(start, min(start + batch_size, indices.stop)):
      try:
        batch.append(source[i])
      except RecordError as error:
        batch.append(Failure({}, str(error)))
    yield start, batch


def _derived_stream(source, indices, batch_size, derive: DeriveFn, path: str, bar,
                    failed: list[dict[str, Any]] | None, log,
                    optional: Mapping[str, str], without: dict[str, int]):
  """Derived records of `indices`; with `failed` a list, failures are logged into it.
  `without` counts, per modality of `optional`, the samples that lack its source field."""
  batches = (_batches if failed is None else _readable_batches)(source, indices, batch_size)
  for start, samples in batches:
    readable = [s for s in samples if not isinstance(s, Failure)]
    derived = list(derive(readable)) if readable else []
    if len(derived) != len(readable):
      raise RecordError(f"the derivation returned {len(derived)} records for a batch of "
                        f"{len(readable)}", path=path, record=start)
    in_order = iter(derived)
    outputs = [s if isinstance(s, Failure) else next(in_order) for s in samples]
    for offset, (sample, output) in enumerate(zip(samples, outputs)):
      if isinstance(output, Failure):
        if failed is None:
          raise RecordError(output.error, path=path, record=start + offset)
        key = None if isinstance(sample, Failure) else sample.get(modalities.KEY.name)
        failed.append({"record": start + offset, "key": key, "error": output.error})
        log(f"failed: {os.path.basename(path)} record {start + offset}"
            f"{f' ({key})' if key else ''}: {output.error}")
        output = output.record
      else:
        _count_without(sample, output, optional, without, path, start + offset)
      yield output
    bar.update(len(samples))


def _count_without(sample: Mapping[str, Any], output: Mapping[str, Any],
                   optional: Mapping[str, str], without: dict[str, int], path: str,
                   record: int) -> None:
  """Counts a sample lacking an optional source field, and holds the derivation to the
  contract: a modality is derived exactly where its source is (absent where the source
  is, never zero-filled; never dropped where the source is there)."""
  for name, field in optional.items():
    has_field, has_output = field in sample, name in output
    if has_field != has_output:
      raise RecordError(f"the derivation {'made' if has_output else 'did not make'} {name} "
                        f"for a record {'without' if has_output else 'with'} {field!r}",
                        path=path, record=record, field=name)
    without[name] += not has_field


def _check_some_record_has(directories: Sequence[str], optional: Mapping[str, str]) -> None:
  """An optional source that no record holds is a mistake (the wrong dataset or the wrong
  tokenizer), not a mixed dataset: refuse it, naming the field, before writing anything."""
  stored: set[str] = set()
  for directory in directories:
    stored |= set(records.DatasetInfo.load(directory).modalities)
  for name, field in optional.items():
    if field not in stored:
      raise UsageError(f"no record of {', '.join(directories)} has {field!r}, which {name} "
                       f"is made from (its records hold {sorted(stored)})")


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
                  beside: Sequence[str] = (),
                  splits: Sequence[str] | None = None, batch_size: int = 64,
                  metadata: Mapping[str, Any] | None = None, progress: bool = True,
                  log: Callable[[str], None] = print,
                  tolerate_failures: bool = False,
                  optional: Mapping[str, str] | None = None) -> records.DatasetInfo:
  """Derives every record of `source_dir` (the named `modalities` of it) into `out`.

  `job` describes the derivation (JSON-able); rerunning the same job resumes it, a
  different one is refused. `beside` names side-by-side stores of the source whose
  modalities the derivation reads too (joined record by record, as `RecordSource`
  joins them). With `tolerate_failures`, unreadable source records and `Failure`s are
  logged and counted (`num_failed`, `failed` in the metadata) and the job goes on;
  without, they stop it. `optional` maps a derived modality to the source field it is
  made from where records may lack that field ({"tok_semseg": "semseg"}): such a record
  gets a derived record without the modality; the count of them is logged and lands in
  the metadata (`without_source`); a source in which no record has the field is an
  error. Returns the new dataset's info.
  """
  for directory in [source_dir, *beside]:
    if os.path.abspath(directory) == os.path.abspath(out):
      raise UsageError(f"the derived dataset must go to its own directory, not {directory}")
  optional = dict(optional or {})
  if optional:
    _check_some_record_has([source_dir, *beside], optional)
  info = records.DatasetInfo.load(source_dir)
  split_names = list(splits) if splits is not None else sorted(info.splits)
  unknown = [s for s in split_names if s not in info.splits]
  if unknown:
    raise UsageError(f"{source_dir} has no split(s) {unknown} (it has {sorted(info.splits)})")
  os.makedirs(out, exist_ok=True)
  claim_directory(out, {**job, "source": os.path.abspath(source_dir),
                        **({"beside": [os.path.abspath(d) for d in beside]} if beside else {})})

  plan = []  # (split, shard name, record range)
  for split in split_names:
    split_info = info.splits[split]
    start = 0
    for shard, length in zip(split_info.shards, split_info.shard_lengths, strict=True):
      plan.append((split, shard, range(start, start + length)))
      start += length
  done = {shard: finished_shard(out, shard, len(indices)) for _, shard, indices in plan}
  failed = {shard: _recorded_failures(out, shard) for _, shard, _ in plan if done[shard]}
  without = {shard: _recorded_without(out, shard, optional)
             for _, shard, _ in plan if done[shard]}
  todo = [entry for entry in plan if done[entry[1]] is None]
  if len(todo) < len(plan):
    log(f"resuming: {len(plan) - len(todo)} of {len(plan)} shards already written in {out}")

  bar = tqdm(total=sum(len(indices) for _, _, indices in todo), unit="record",
             disable=not progress, desc=name)
  sources: dict[str, records.RecordSource] = {}
  for split, shard, indices in todo:
    if split not in sources:
      sources[split] = records.RecordSource([source_dir, *beside], split, modalities,
                                            optional=sorted(set(optional.values())))
    path = os.path.join(out, shard)
    failed[shard] = [] if tolerate_failures else None
    without[shard] = dict.fromkeys(optional, 0)
    # A record whose sample lacks every optional field derives nothing: it is stored
    # empty, the absent sample that keeps the stores aligned record by record.
    count, stats = records.write_shard(
        path, _derived_stream(sources[split], indices, batch_size, derive, path, bar,
                              failed[shard], log, optional, without[shard]),
        first_record=indices.start, allow_empty=tolerate_failures or bool(optional))
    with open(path + ".json.tmp", "w") as f:
      json.dump({"count": count, "stats": stats,
                 **({"failed": failed[shard]} if tolerate_failures else {}),
                 **({"without_source": without[shard]} if optional else {})}, f)
    os.replace(path + ".json.tmp", path + ".json")
    done[shard] = (count, stats)
  bar.close()

  layout = {}
  for split, shard, _ in plan:
    layout.setdefault(split, []).append((shard, done[shard][0]))
  failures = {}
  if tolerate_failures:
    listed = [dict(entry, shard=shard) for _, shard, _ in plan for entry in failed[shard] or []]
    failures = {"num_failed": len(listed), "failed": listed}
  total = sum(len(indices) for _, _, indices in plan)
  lacking = {}
  for modality, field in optional.items():
    count = sum(without[shard][modality] for _, shard, _ in plan)
    lacking[modality] = {"source": field, "records": count, "of": total}
    if count:  # never silently: a user who expected the field everywhere sees it here
      log(f"{modality}: {count} of {total} records have no {field} (written without it)")
  return records.write_info(out, name, layout, [done[shard][1] for _, shard, _ in plan],
                            {"derived_from": os.path.abspath(source_dir), "job": dict(job),
                             **dict(metadata or {}), **failures,
                             **({"without_source": lacking} if optional else {})})


def _recorded_without(out: str, name: str, optional: Mapping[str, str]) -> dict[str, int]:
  """Per optional modality, the records a finished shard's sidecar counts as lacking its
  source. A shard written before the count existed was written by a job that required
  the field in every record: none lacks it."""
  counted = _sidecar(out, name).get("without_source", {})
  return {modality: counted.get(modality, 0) for modality in optional}


def _recorded_failures(out: str, name: str) -> list[dict[str, Any]]:
  """The failures a finished shard's sidecar lists (none for jobs that allow none)."""
  return _sidecar(out, name).get("failed", [])


def _sidecar(out: str, name: str) -> dict[str, Any]:
  """A finished shard's sidecar: its count, stats and what the job recorded beside them."""
  with open(os.path.join(out, name + ".json")) as f:
    return json.load(f)
