"""Run one training process on this machine (all its devices).

    python launch/local.py [--dry-run] -- fourm train --config configs/tiny_synthetic.py --workdir runs/tiny
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from _common import quote, require_command, show, split_command


def main(argv: list[str] | None = None) -> int:
  options, command = split_command(list(sys.argv[1:] if argv is None else argv))
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
  args = parser.parse_args(options)
  command = require_command(parser, command)
  if args.dry_run:
    show([quote(command)])
    return 0
  return subprocess.call(command, env=dict(os.environ))


if __name__ == "__main__":
  sys.exit(main())
