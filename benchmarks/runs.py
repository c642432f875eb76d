"""What the end-to-end benchmarks share: the `fourm` command of this environment, and a
training run made once (a rerun of the benchmark reuses it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fourm(*args: str) -> None:
  """Runs `fourm ARGS` (the venv's) from the repository root; a failure stops the benchmark."""
  subprocess.run([os.path.join(os.path.dirname(sys.executable), "fourm"), *args], check=True,
                 cwd=ROOT)


def train_once(out: str, name: str, config) -> float:
  """Trains `config` into OUT/NAME unless a finished run is there; its wall seconds."""
  from fourm.train import loop
  workdir = os.path.join(out, name)
  marker = os.path.join(workdir, "train_seconds.json")
  if os.path.exists(marker):
    with open(marker) as f:
      return json.load(f)["seconds"]
  started = time.perf_counter()
  loop.train(config, workdir, log=lambda line: print(f"  [{name}] {line}", flush=True))
  seconds = time.perf_counter() - started
  with open(marker, "w") as f:
    json.dump({"seconds": seconds}, f)
  return seconds
