"""`fourm synth --tasks edit,segment,detect,question`: the synthetic world as instruction
tasks with exact answers, a records dataset written shard-parallel and resumably by the
world's machinery (`world.plan_shards`, `world.write_shards`).

    DIR/          every record: "key", "rgb" (the scene before any edit: the model's
                  input), "instruction" (text) and its task's answer under the registry's
                  usual name: "semseg" (segment), "det" (detect), "caption" (question)
    DIR/edited/   read beside DIR's tokens: the same splits, shards and record order;
                  an edit record's answer, the edited scene, as its "rgb"; the records
                  of other tasks are empty

The edited image is a second directory's "rgb" so that `fourm tokenize --data DIR/edited`
makes its tokens under the usual name, tok_rgb, with no new field and no tokenizer
option: a model then reads the scene as rgb pixels from DIR and predicts the edited
scene as tok_rgb. A record holds only its own task's answer (a missing modality is
absent, never zero-filled). docs/instructions.md has the tasks and examples.

Sample i of a split depends only on (seed, split, i, resolution, tasks)
(`instruction_tasks.make_instruction_sample`), so the bytes do not depend on the number
of workers, a killed job resumes where it stopped, and `regenerate` gives back any
record's instruction, source scene and answer for a check (`instruction_checks.check`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

from fourm.data import derived, records, synthetic, world
from fourm.data.instruction_checks import ANSWER_FIELDS
from fourm.data.instruction_phrases import TASKS
from fourm.data.instruction_tasks import (INSTRUCTION, InstructionSample, check_tasks,
                                          make_instruction_sample)
from fourm.errors import UsageError

JOB_FILE = "instructions_job.json"
EDITED_DIR = "edited"


def _write_one_shard(out: str, args: dict, split: str, shard: int, num_shards: int,
                     indices: range) -> tuple[str, int, dict]:
  name = records.shard_name(split, shard, num_shards)
  edited = []  # only edit records hold an image: a quarter of a shard, at most

  def stream():
    for index in indices:
      sample = make_instruction_sample(args["seed"], split, index, args["resolution"],
                                       args["tasks"])
      edited.append(sample.edited_record())
      yield sample.record()

  if "edit" not in args["tasks"]:
    return name, *world.write_shard_and_sidecar(out, name, stream(), indices.start)
  count, stats = records.write_shard(os.path.join(out, name), stream(),
                                     first_record=indices.start)
  world.write_shard_and_sidecar(os.path.join(out, EDITED_DIR), name, edited, indices.start,
                                allow_empty=True)
  world.write_sidecar(out, name, count, stats)  # last: it marks both shards whole
  return name, count, stats


def write_instructions(out: str, num: int, resolution: int = 64, seed: int = 0,
                       tasks: Sequence[str] = TASKS,
                       val_fraction: float = 0.1, records_per_shard: int = 1000,
                       workers: int | None = None, progress: bool = True,
                       log: Callable[[str], None] = print) -> records.DatasetInfo:
  """Writes `num` instruction samples (a `val_fraction` of them as split 'val') of the
  `tasks` asked for into `out` (and `out`/edited when edits are among them)."""
  world.check_size(num, val_fraction)
  try:
    tasks = check_tasks(tasks)
  except ValueError as error:
    raise UsageError(f"--tasks: {error}") from None
  args = {"seed": seed, "resolution": resolution, "num": num, "val_fraction": val_fraction,
          "records_per_shard": records_per_shard, "tasks": list(tasks)}
  os.makedirs(out, exist_ok=True)
  derived.claim_directory(out, args, job_file=JOB_FILE, what="an instruction dataset")
  edited_dir = os.path.join(out, EDITED_DIR)
  if "edit" in tasks:
    os.makedirs(edited_dir, exist_ok=True)

  plan = world.plan_shards(num, val_fraction, records_per_shard)
  results = world.write_shards(out, plan, _write_one_shard, args, workers=workers,
                               progress=progress, desc=f"instructions {resolution}px", log=log)
  layout = world.split_layout(plan, results)
  made_by = f"fourm synth --tasks {','.join(tasks)}"
  if "edit" in tasks:
    # Every edited shard was written before its instruction shard's sidecar.
    edited_stats = [derived.finished_shard(edited_dir, name, count)[1]
                    for shards in layout.values() for name, count in shards]
    records.write_info(edited_dir, "synthetic_instructions_edited", layout, edited_stats,
                       {"created_by": made_by, "generator": args,
                        "content": "rgb: the edited scene of each edit record of the "
                                   "instruction dataset one directory up; other records "
                                   "are empty"})
  metadata = {"created_by": made_by, "generator": args,
              "classes": list(synthetic.CLASSES),
              "thing_classes": list(synthetic.OBJECT_CLASSES),
              "instruction_field": INSTRUCTION,
              "answer_fields": {task: ANSWER_FIELDS[task] for task in tasks},
              **({"edited": EDITED_DIR} if "edit" in tasks else {})}
  return records.write_info(out, "synthetic_instructions", layout,
                            [results[(s, k)][2] for s, k, _, _ in plan], metadata)


def job_args(data: str) -> dict:
  """The `fourm synth --tasks` arguments an instruction dataset was made with."""
  path = os.path.join(data, JOB_FILE)
  if not os.path.exists(path):
    raise UsageError(f"{data} is not an instruction dataset of the synthetic world "
                     f"(no {JOB_FILE})")
  with open(path) as f:
    return json.load(f)


def regenerate(data: str, key: str) -> InstructionSample:
  """Record `key` ("val/000003") of the instruction dataset `data`, made again: its
  instruction, source scene and exact answer, for `instruction_checks.check`."""
  args = job_args(data)
  split, _, index = key.partition("/")
  return make_instruction_sample(args["seed"], split, int(index), args["resolution"],
                                 args["tasks"])
