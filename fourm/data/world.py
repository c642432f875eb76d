"""`fourm synth`: writes the synthetic world as a records dataset, shard-parallel, resumable.

Sample i of a split depends only on (seed, split, i), so the bytes of a dataset do not
depend on the number of workers, and a killed job can resume: shards are written
atomically (temporary file, then rename) with a small `.json` beside each holding its
record count and modality statistics; a rerun skips shards whose both files exist.
The shard plan and loop (`plan_shards`, `write_shards`) write the world's instruction
tasks too (`instructions.py`).
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
from collections.abc import Callable, Sequence

from tqdm import tqdm

from fourm.data import records
from fourm.errors import UsageError
from fourm.data import derived, synthetic

JOB_FILE = "synth_job.json"


def _sample_stream(args: dict, split: str, indices: range):
  for index in indices:
    sample = synthetic.make_sample(args["seed"], split, index, args["resolution"],
                                   feature_dim=args["feature_dim"],
                                   extras=args.get("extras", ()))
    sample["key"] = f"{split}/{index:06d}"
    yield sample


def write_shard_and_sidecar(directory: str, name: str, samples, first_record: int,
                            allow_empty: bool = False) -> tuple[int, dict]:
  """Writes one shard, then the sidecar that marks it whole; returns (count, stats)."""
  count, stats = records.write_shard(os.path.join(directory, name), samples,
                                     first_record=first_record, allow_empty=allow_empty)
  write_sidecar(directory, name, count, stats)
  return count, stats


def write_sidecar(directory: str, name: str, count: int, stats: dict) -> None:
  """The `.json` beside a shard (atomically): `derived.finished_shard` reads it."""
  sidecar = os.path.join(directory, name + ".json")
  with open(sidecar + ".tmp", "w") as f:
    json.dump({"count": count, "stats": stats}, f)
  os.replace(sidecar + ".tmp", sidecar)


def _write_one_shard(out: str, args: dict, split: str, shard: int, num_shards: int,
                     indices: range) -> tuple[str, int, dict]:
  name = records.shard_name(split, shard, num_shards)
  count, stats = write_shard_and_sidecar(out, name, _sample_stream(args, split, indices),
                                         indices.start)
  return name, count, stats


def check_size(num: int, val_fraction: float) -> None:
  if num <= 0:
    raise UsageError(f"--num must be positive, got {num}")
  if not 0 <= val_fraction < 1:
    raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")


def plan_shards(num: int, val_fraction: float,
                records_per_shard: int) -> list[tuple[str, int, int, range]]:
  """(split, shard, num_shards, indices) of every shard: round(num * val_fraction)
  samples in split 'val', the rest in 'train', each split cut into shards of contiguous
  indices."""
  num_val = int(round(num * val_fraction))
  split_sizes = {"train": num - num_val, "val": num_val}
  plan = []
  for split, size in split_sizes.items():
    if size == 0:
      continue
    ranges = records.split_into_shards(size, records_per_shard)
    plan += [(split, k, len(ranges), indices) for k, indices in enumerate(ranges)]
  return plan


# (out, args, split, shard, num_shards, indices) -> (shard name, count, stats); a
# module-level function, so that worker processes can be handed it.
ShardWriter = Callable[[str, dict, str, int, int, range], tuple[str, int, dict]]


def write_shards(out: str, plan: list[tuple[str, int, int, range]], write_one: ShardWriter,
                 args: dict, *, workers: int | None, progress: bool, desc: str,
                 log: Callable[[str], None]) -> dict[tuple[str, int], tuple[str, int, dict]]:
  """Runs `write_one` on every shard of `plan` not yet written whole (records and
  sidecar), in `workers` processes; {(split, shard): (name, count, stats)} of all."""
  results: dict[tuple[str, int], tuple[str, int, dict]] = {}
  todo = []
  for split, shard, num_shards, indices in plan:
    name = records.shard_name(split, shard, num_shards)
    done = derived.finished_shard(out, name, len(indices))
    if done is not None:
      results[(split, shard)] = (name, *done)
    else:
      todo.append((split, shard, num_shards, indices))
  if results:
    log(f"resuming: {len(results)} of {len(plan)} shards already written in {out}")

  workers = min(workers or os.cpu_count() or 1, max(len(todo), 1))
  bar = tqdm(total=sum(len(t[3]) for t in todo), unit="scene", disable=not progress,
             desc=desc)
  if workers <= 1:
    for split, shard, num_shards, indices in todo:
      results[(split, shard)] = write_one(out, args, split, shard, num_shards, indices)
      bar.update(len(indices))
  else:
    # spawn, not fork: the parent may hold threads (grain, jax) that fork would copy.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
      futures = {pool.submit(write_one, out, args, *task): task for task in todo}
      for future in concurrent.futures.as_completed(futures):
        split, shard, _, indices = futures[future]
        results[(split, shard)] = future.result()
        bar.update(len(indices))
  bar.close()
  return results


def split_layout(plan, results) -> dict[str, list[tuple[str, int]]]:
  """{split: [(shard name, count)]} in plan order, as `records.write_info` takes it."""
  splits: dict[str, list[tuple[str, int]]] = {}
  for split, shard, _, _ in plan:
    name, count, _ = results[(split, shard)]
    splits.setdefault(split, []).append((name, count))
  return splits


def write_world(out: str, num: int, resolution: int = 64, seed: int = 0,
                val_fraction: float = 0.1, records_per_shard: int = 1000,
                feature_dim: int = 64, extras: Sequence[str] = (),
                workers: int | None = None, progress: bool = True,
                log: Callable[[str], None] = print) -> records.DatasetInfo:
  """Renders `num` scenes (a `val_fraction` of them as split 'val') into `out`, with the
  4M-21 `extras` asked for (of `synthetic.EXTRA_MODALITIES`)."""
  check_size(num, val_fraction)
  unknown = sorted(set(extras) - set(synthetic.EXTRA_MODALITIES))
  if unknown:
    raise UsageError(f"--extras: the world renders no {unknown}; choose from "
                     f"{','.join(synthetic.EXTRA_MODALITIES)}")
  args = {"seed": seed, "resolution": resolution, "feature_dim": feature_dim,
          "num": num, "val_fraction": val_fraction, "records_per_shard": records_per_shard}
  if extras:  # absent otherwise, so a world made before extras existed still resumes
    args["extras"] = [m for m in synthetic.EXTRA_MODALITIES if m in extras]
  os.makedirs(out, exist_ok=True)
  derived.claim_directory(out, args, job_file=JOB_FILE, what="a synthetic world")

  plan = plan_shards(num, val_fraction, records_per_shard)
  results = write_shards(out, plan, _write_one_shard, args, workers=workers,
                         progress=progress, desc=f"synth {resolution}px", log=log)
  metadata = {"created_by": "fourm synth", "generator": args,
              "classes": list(synthetic.CLASSES),
              "thing_classes": list(synthetic.OBJECT_CLASSES),
              "camera": {"fov_deg": synthetic.FOV_DEG,
                         "depth": "metric z-depth in metres",
                         "normal": "unit vectors, camera frame, x right, y down, z forward"}}
  return records.write_info(out, "synthetic_world", split_layout(plan, results),
                            [results[(s, k)][2] for s, k, _, _ in plan], metadata)
