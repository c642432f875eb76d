"""Create a Cloud TPU VM slice, run the training command on all its workers, delete it.

    python launch/tpu.py create --name fourm-v5 --zone us-east5-a --accelerator v5p-64 \\
        [--version tpu-ubuntu2204-base] [--queued] [--spot]
    python launch/tpu.py run --name fourm-v5 --zone us-east5-a \\
        -- fourm train --config configs/4m_mod7.py:b --workdir gs://bucket/runs/4m_b
    python launch/tpu.py stop --name fourm-v5 --zone us-east5-a

Everything goes through `gcloud compute tpus` (queued resources with --queued). `run`
starts the command on every worker at once (`--worker=all`) with FOURM_DISTRIBUTED=auto,
so jax finds the other hosts itself. --dry-run prints the gcloud command.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from _common import quote, require_command, show, split_command


def gcloud_command(args: argparse.Namespace, command: list[str]) -> list[str]:
  base = ["gcloud", "compute", "tpus"]
  where = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
  if args.action == "create" and args.queued:
    return base + ["queued-resources", "create", args.name, f"--node-id={args.name}",
                   f"--accelerator-type={args.accelerator}",
                   f"--runtime-version={args.version}", *where] + \
        (["--spot"] if args.spot else [])
  if args.action == "create":
    return base + ["tpu-vm", "create", args.name, f"--accelerator-type={args.accelerator}",
                   f"--version={args.version}", *where] + (["--spot"] if args.spot else [])
  if args.action == "run":
    remote = f"cd {args.remote_dir} && {args.setup} && FOURM_DISTRIBUTED=auto {quote(command)}"
    return base + ["tpu-vm", "ssh", args.name, *where, "--worker=all", f"--command={remote}"]
  if args.queued:
    return base + ["queued-resources", "delete", args.name, *where, "--force", "--quiet"]
  return base + ["tpu-vm", "delete", args.name, *where, "--quiet"]


def main(argv: list[str] | None = None) -> int:
  options, command = split_command(list(sys.argv[1:] if argv is None else argv))
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("action", choices=("create", "run", "stop"))
  parser.add_argument("--name", required=True)
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default="")
  parser.add_argument("--accelerator", default="v5p-8", help="e.g. v4-32, v5p-64, v6e-16")
  parser.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU runtime version")
  parser.add_argument("--queued", action="store_true", help="use queued resources")
  parser.add_argument("--spot", action="store_true", help="spot (preemptible) capacity")
  parser.add_argument("--remote-dir", default="~/fourm", help="the checkout on each worker")
  parser.add_argument("--setup", default="source .venv/bin/activate")
  parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
  args = parser.parse_args(options)
  if args.action == "run":
    command = require_command(parser, command)
  elif command:
    parser.error(f"{args.action} takes no command after --")
  gcloud = gcloud_command(args, command)
  if args.dry_run:
    show([quote(gcloud)])
    return 0
  return subprocess.call(gcloud)


if __name__ == "__main__":
  sys.exit(main())
