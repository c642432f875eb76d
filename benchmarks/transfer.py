"""Transfer: does 4M pre-training help? Fine-tunes the encoder of a pre-trained fourm
checkpoint for segmentation, depth and detection on the synthetic world, and the same
architecture from random weights for the same steps, plus LoRA and VPT from the
pre-trained weights; prints one table of held-out metrics side by side.

    python benchmarks/transfer.py --init demo_out/train --data demo_out/world
    python benchmarks/transfer.py --init demo_out/train --data demo_out/world \
        --tasks segmentation --modes pretrained,scratch --steps 300

`--modes` also takes linear / scratch_linear (the encoder frozen, pre-trained or random:
a probe of the features themselves), and `--train-split 'train[:64]'` fine-tunes on a
few labelled scenes.

Every row runs `fourm finetune`'s loop (`configs/finetune/<task>_synthetic.py`, its
batch size and learning rate, `--steps` steps) in a temporary workdir and evaluates the
whole val split. Exit status 1 when a pre-trained row does not beat its scratch row
(pretrained vs scratch, linear vs scratch_linear) on the task's main metric (mIoU,
delta1, AP50): the claim the table is for.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time

from fourm import config as config_lib
from fourm.finetune import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_METRIC = {"segmentation": "mIoU", "depth": "delta1", "detection": "AP50",
               "classification": "top1"}
SHOWN = {"segmentation": ("mIoU", "pixel_accuracy"), "depth": ("delta1", "abs_rel", "rmse"),
         "detection": ("AP50", "AP"), "classification": ("top1",)}
MODES = {"pretrained": {}, "scratch": {"from_scratch": True},
         "lora": {"tuning.mode": "lora"}, "vpt": {"tuning.mode": "vpt"},
         # Frozen encoders, the head alone trained: the features themselves compared.
         "linear": {"tuning.mode": "linear"},
         "scratch_linear": {"from_scratch": True, "tuning.mode": "linear"}}
# The claim each row pair makes: the first (from the checkpoint) beats the second.
CLAIMS = (("pretrained", "scratch"), ("linear", "scratch_linear"))


def run(task: str, mode: str, args) -> dict:
  config = config_lib.load_config(os.path.join(ROOT, f"configs/finetune/{task}_synthetic.py"))
  overrides = {"init": args.init, "data.paths": (args.data,), "total_steps": args.steps,
               "data.train_split": args.train_split,
               "eval_every": 0, "log_every": max(args.steps // 3, 1),
               "checkpoint.every": args.steps, **MODES[mode]}
  if mode in ("lora", "vpt"):  # adapters start at zero effect: a higher lr, as usual
    overrides["optimizer.lr"] = config.optimizer.lr * args.adapter_lr_scale
  for key, value in overrides.items():
    config_lib.apply_override(config, f"{key}={value!r}")
  lines = []
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    loop.finetune(config, workdir, log=lines.append)
    seconds = time.perf_counter() - start
    result = loop.evaluate_workdir(workdir, out=os.path.join(workdir, "eval"),
                                   log=lambda _: None)
  counts = [re.search(r"([\d,]+) trainable of", line) for line in lines]
  trainable = next((match.group(1) for match in counts if match), "?")
  return {"task": task, "mode": mode, "metrics": result.metrics, "seconds": seconds,
          "trainable": trainable}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--init", default="demo_out/train", help="a fourm train workdir")
  parser.add_argument("--data", default="demo_out/world", help="the synthetic world")
  parser.add_argument("--tasks", default="segmentation,depth,detection")
  parser.add_argument("--modes", default="pretrained,scratch,lora,vpt")
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--train-split", default="train",
                      help="the labelled scenes, e.g. 'train[:64]' for a low-data fine-tune")
  parser.add_argument("--adapter-lr-scale", type=float, default=3.0)
  args = parser.parse_args()
  rows = []
  for task in args.tasks.split(","):
    for mode in args.modes.split(","):
      rows.append(run(task, mode, args))
      main_metric = MAIN_METRIC[task]
      print(f"done: {task} {mode}: {main_metric} {rows[-1]['metrics'][main_metric]:.3f} "
            f"({rows[-1]['seconds']:.0f} s)", flush=True)
  print(f"\ntransfer on {args.data} ({args.train_split}) from {args.init}, {args.steps} steps "
        "each, val split")
  print(f"{'task':<14}{'init / tuning':<16}{'trainable':>12}  {'metrics':<44}{'time':>8}")
  for row in rows:
    shown = "  ".join(f"{name} {row['metrics'][name]:.3f}" for name in SHOWN[row["task"]])
    print(f"{row['task']:<14}{row['mode']:<16}{row['trainable']:>12}  {shown:<44}"
          f"{row['seconds']:>7.0f}s")
  failed = []
  for task in args.tasks.split(","):
    by_mode = {row["mode"]: row["metrics"][MAIN_METRIC[task]] for row in rows
               if row["task"] == task}
    for mine, baseline in CLAIMS:
      if mine in by_mode and baseline in by_mode and not by_mode[mine] > by_mode[baseline]:
        failed.append(f"{task}: {mine} {by_mode[mine]:.3f} <= {baseline} "
                      f"{by_mode[baseline]:.3f} ({MAIN_METRIC[task]})")
  for line in failed:
    print(f"NOT BEATEN: {line}", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
