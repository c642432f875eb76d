"""Submit a multi-node GPU training job to SLURM (sbatch), one task per node.

    python launch/slurm.py --nodes 4 --gpus-per-node 8 --time 24:00:00 --partition gpu \\
        [--dry-run] -- fourm train --config configs/4m_mod7.py:b --workdir /shared/runs/4m_b

Every task runs the command under `srun` with FOURM_DISTRIBUTED=auto: jax reads the SLURM
environment to find the coordinator, the process count and this task's id, and each
process drives its node's GPUs. The workdir must be on storage every node sees.
--dry-run prints the batch script instead of submitting it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from _common import quote, require_command, show, split_command

TEMPLATE = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus_per_node}
#SBATCH --cpus-per-task={cpus_per_task}
#SBATCH --time={time}
#SBATCH --output={log_dir}/%x-%j.out
{partition_line}{extra_lines}
# SLURM sends SIGTERM before the time limit (and on preemption): fourm saves and exits.
#SBATCH --signal=TERM@120

set -euo pipefail
{setup}
export FOURM_DISTRIBUTED=auto
srun --kill-on-bad-exit=1 {command}
"""


def render(args: argparse.Namespace, command: list[str]) -> str:
  return TEMPLATE.format(
      job_name=args.job_name, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
      cpus_per_task=args.cpus_per_task, time=args.time, log_dir=args.log_dir,
      partition_line=f"#SBATCH --partition={args.partition}\n" if args.partition else "",
      extra_lines="".join(f"#SBATCH {line}\n" for line in args.sbatch),
      setup=args.setup, command=quote(command))


def main(argv: list[str] | None = None) -> int:
  options, command = split_command(list(sys.argv[1:] if argv is None else argv))
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--nodes", type=int, default=1)
  parser.add_argument("--gpus-per-node", type=int, default=8)
  parser.add_argument("--cpus-per-task", type=int, default=32)
  parser.add_argument("--time", default="24:00:00")
  parser.add_argument("--partition", default="")
  parser.add_argument("--job-name", default="fourm")
  parser.add_argument("--log-dir", default="slurm_logs")
  parser.add_argument("--setup", default="source .venv/bin/activate",
                      help="shell line(s) run before srun on the first node")
  parser.add_argument("--sbatch", action="append", default=[],
                      help="an extra #SBATCH option, e.g. --sbatch=--account=abc (repeatable)")
  parser.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
  args = parser.parse_args(options)
  script = render(args, require_command(parser, command))
  if args.dry_run:
    show([script.rstrip("\n")])
    return 0
  os.makedirs(args.log_dir, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", suffix=".sbatch", delete=False) as f:
    f.write(script)
  return subprocess.call(["sbatch", f.name])


if __name__ == "__main__":
  sys.exit(main())
