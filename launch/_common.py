"""What the launchers share: parsing the command to launch, and dry runs."""

from __future__ import annotations

import argparse
import shlex
import sys


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
  """`[launcher options] -- COMMAND...` -> (options, command)."""
  if "--" not in argv:
    return argv, []
  index = argv.index("--")
  return argv[:index], argv[index + 1:]


def require_command(parser: argparse.ArgumentParser, command: list[str]) -> list[str]:
  if not command:
    parser.error("give the command to run after --, e.g. -- fourm train --config "
                 "configs/tiny_synthetic.py --workdir runs/tiny")
  return command


def quote(command: list[str]) -> str:
  return " ".join(shlex.quote(part) for part in command)


def show(lines: list[str]) -> None:
  """A dry run: print exactly what would run."""
  sys.stdout.write("\n".join(lines) + "\n")
