"""Runs independent shell commands at the same time and prints each one's output, whole,
as it finishes; fails if any failed.

    python launch/side_by_side.py --logs demo_out/logs \\
        "generate=fourm generate ... && fourm generate ..." "quality=python ..."

`make demo` runs its last jobs (generation, fine-tuning, the quality table) this way: on a
2-core machine they are mostly XLA compilation, which uses one core, so two or three at a
time finish well before the same jobs one after another. Each job's output also stays in
LOGS/NAME.log.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def parse_job(text: str) -> tuple[str, str]:
  name, sep, command = text.partition("=")
  if not sep or not name.isidentifier() or not command.strip():
    raise SystemExit(f"side_by_side: expected NAME=COMMAND, got {text!r}")
  return name, command


def run(jobs: list[tuple[str, str]], logs: str, out=sys.stdout) -> list[str]:
  """Starts every job, prints each log as its job ends; returns the names that failed."""
  os.makedirs(logs, exist_ok=True)
  started = time.perf_counter()
  running = {}
  for name, command in jobs:
    path = os.path.join(logs, f"{name}.log")
    log = open(path, "w")
    running[name] = (subprocess.Popen(["bash", "-c", command], stdout=log,
                                      stderr=subprocess.STDOUT), log, path)
    print(f"[{name}] started: {command}  (output: {path})", file=out, flush=True)
  failed = []
  while running:
    for name, (process, log, path) in list(running.items()):
      if process.poll() is None:
        continue
      log.close()
      del running[name]
      seconds = time.perf_counter() - started
      status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
      print(f"\n[{name}] {status} after {seconds:.0f} s:", file=out)
      with open(path) as f:
        out.write(f.read())
      out.flush()
      if process.returncode:
        failed.append(name)
    time.sleep(0.2)
  return failed


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--logs", required=True, help="directory for NAME.log files")
  parser.add_argument("jobs", nargs="+", metavar="NAME=COMMAND")
  args = parser.parse_args()
  failed = run([parse_job(job) for job in args.jobs], args.logs)
  if failed:
    raise SystemExit(f"side_by_side: {', '.join(failed)} failed; see {args.logs}/")


if __name__ == "__main__":
  main()
