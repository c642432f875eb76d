"""Run N cooperating processes on this machine, as a multi-host job would run on N hosts.

    python launch/multiprocess.py --num-processes 2 --devices-per-process 4 [--dry-run] \\
        -- fourm train --config configs/tiny_synthetic.py --workdir runs/mp

Each process gets FOURM_COORDINATOR / FOURM_NUM_PROCESSES / FOURM_PROCESS_ID (read by
fourm/train/distributed.py) and, on CPU, FOURM_CPU_DEVICES devices of its own. Output
lines are prefixed with the process id; if one process fails the others are stopped.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading

from _common import quote, require_command, show, split_command


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(index: int, args: argparse.Namespace, port: int) -> dict[str, str]:
  env = {"FOURM_COORDINATOR": f"127.0.0.1:{port}",
         "FOURM_NUM_PROCESSES": str(args.num_processes), "FOURM_PROCESS_ID": str(index)}
  if args.devices_per_process:
    env.update(FOURM_CPU_DEVICES=str(args.devices_per_process), JAX_PLATFORMS="cpu")
  return env


def _relay(index: int, stream) -> None:
  for line in iter(stream.readline, ""):
    sys.stdout.write(f"[{index}] {line}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
  options, command = split_command(list(sys.argv[1:] if argv is None else argv))
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num-processes", type=int, default=2)
  parser.add_argument("--devices-per-process", type=int, default=0,
                      help="CPU devices per process (0: leave the platform alone)")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
  args = parser.parse_args(options)
  command = require_command(parser, command)
  port = args.port or free_port()
  envs = [process_env(i, args, port) for i in range(args.num_processes)]
  if args.dry_run:
    show([" ".join(f"{k}={v}" for k, v in env.items()) + " " + quote(command) for env in envs])
    return 0

  base = dict(os.environ)
  base.pop("XLA_FLAGS", None)  # forced host device counts would fight FOURM_CPU_DEVICES
  procs = [subprocess.Popen(command, env={**base, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for env in envs]
  relays = [threading.Thread(target=_relay, args=(i, p.stdout), daemon=True)
            for i, p in enumerate(procs)]
  for relay in relays:
    relay.start()
  codes = [None] * len(procs)
  while any(code is None for code in codes):
    for i, proc in enumerate(procs):
      if codes[i] is None:
        try:
          codes[i] = proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
          continue
        if codes[i] != 0:  # one failed: the others would wait for it forever
          for other in procs:
            if other.poll() is None:
              other.terminate()
  for relay in relays:
    relay.join(timeout=5)
  return next((code for code in codes if code), 0)


if __name__ == "__main__":
  sys.exit(main())
