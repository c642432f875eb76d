"""Which training choices make the demo's model learn in its minutes: one short run per
variant of `configs/tiny_synthetic.py`, each scored on held-out scenes.

    python benchmarks/demo_sweep.py --variant base --variant "lr2x:optimizer.base_lr=0.0256"
    python benchmarks/demo_sweep.py --variant "rgb_only:alphas.sources=('rgb',)" --steps 300

A variant is NAME or NAME:OVERRIDE[;OVERRIDE...] with the `fourm train --config.x=y`
syntax. Each trains from scratch into `--out/NAME` (an existing finished run is reused,
so a table can be extended) on the data `make demo` writes, then decodes rgb -> depth
and rgb -> segmentation greedily on `--count` held-out scenes and prints one row:
held-out loss per target, depth abs-rel, segmentation object mIoU and pixel accuracy,
how much lower the tok_semseg loss is with the right image than with another scene's
("img gain", nats: 0 for a model that ignores its image), and the training's wall time. Issue 20 asks for these measurements before changes.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from fourm import config as config_lib


def parse_variant(text: str) -> tuple[str, list[str]]:
  name, _, overrides = text.partition(":")
  return name, [o for o in overrides.split(";") if o.strip()]


def run_variant(name: str, overrides: list[str], args) -> dict:
  from fourm.generation import evaluate
  from fourm.generation.generator import Generator
  from fourm.train import loop

  workdir = os.path.join(args.out, name)
  result_path = os.path.join(workdir, "sweep_result.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  config = config_lib.load_config(args.config, [f"total_steps={args.steps}",
                                                "checkpoint.every=100000"] + overrides)
  started = time.perf_counter()
  scalars = loop.train(config, workdir, log=lambda line: None)
  seconds = time.perf_counter() - started
  generator = Generator.from_checkpoint(workdir)
  maps = evaluate.rgb_to_maps(generator, config.data.paths, count=args.count)
  use = evaluate.image_use(generator, config.data.paths, count=args.count)
  row = {"name": name, "overrides": overrides, "train_s": seconds,
         **{k: v for k, v in scalars.items() if k.startswith("eval/")}, **maps,
         "semseg_image_gain": use["gain"]}
  with open(result_path, "w") as f:
    json.dump(row, f, indent=1)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", action="append", required=True)
  parser.add_argument("--config", default="configs/tiny_synthetic.py")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--count", type=int, default=100)
  parser.add_argument("--out", default="sweep_out")
  args = parser.parse_args()
  rows = []
  for text in args.variant:
    name, overrides = parse_variant(text)
    rows.append(run_variant(name, overrides, args))
    print(json.dumps(rows[-1]), flush=True)
  targets = sorted({k.removeprefix("eval/loss/") for r in rows for k in r
                    if k.startswith("eval/loss/")})
  print(f"\n{'variant':<16}{'train s':>8}" + "".join(f"{t[:10]:>11}" for t in targets)
        + f"{'depth':>8}{'obj mIoU':>9}{'pix acc':>8}{'img gain':>9}")
  for r in rows:
    print(f"{r['name']:<16}{r['train_s']:>8.0f}"
          + "".join(f"{r.get('eval/loss/' + t, float('nan')):>11.3f}" for t in targets)
          + f"{r['depth_abs_rel']:>8.3f}{r['semseg_object_miou']:>9.3f}"
          f"{r['semseg_pixel_acc']:>8.3f}{r.get('semseg_image_gain', float('nan')):>9.3f}")
  print(f"baselines: depth abs-rel per-pixel mean {rows[0]['depth_abs_rel_mean_map_baseline']:.3f}; "
        f"pixel acc per-pixel majority {rows[0]['semseg_pixel_acc_majority_map_baseline']:.3f}")


if __name__ == "__main__":
  main()
