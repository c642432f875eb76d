"""Experiment configs: ml_collections `.py` files with `get_config(arg=None)`.

`load_config("configs/tiny_synthetic.py:smoke", ["model.size=base", "batch_size=64"])`
imports the file, calls `get_config("smoke")` and applies the overrides, written as on
the command line (`--config.batch_size=64` becomes `batch_size=64`). Values are parsed
as Python literals where they parse (numbers, tuples, booleans), else kept as strings;
ConfigDict's own type checks refuse a value of the wrong type for its field. A group made
with `ConfigDict(type_safe=False)` is a free mapping: it takes new fields, of any type.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence

import ml_collections

from fourm.errors import UsageError


def import_config_file(path: str):
  if not os.path.isfile(path):
    raise UsageError(f"--config {path}: no such file")
  spec = importlib.util.spec_from_file_location(f"fourm_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise UsageError(f"--config {path}: the file defines no get_config()")
  return module


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
  """Sets `a.b.c=value` in place; the field must already exist."""
  key, sep, text = override.partition("=")
  key = key.strip().removeprefix("--").removeprefix("config.")
  if not sep or not key:
    raise UsageError(f"config override {override!r}: expected key=value")
  *parents, leaf = key.split(".")
  node = config
  for depth, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise UsageError(f"config override {override!r}: no config group "
                       f"{'.'.join(parents[:depth + 1])!r}")
    node = node[part]
  # A group built with type_safe=False is a free mapping (config.sharding.rules, say):
  # it takes fields it does not have yet.
  if leaf not in node and node.is_type_safe:
    raise UsageError(f"config override {override!r}: no field {key!r}; the group has "
                     f"{sorted(node.keys())}")
  value = _parse_value(text)
  old = node.get(leaf)
  if isinstance(old, tuple) and isinstance(value, (list, str)):
    value = tuple(value.split(",")) if isinstance(value, str) else tuple(value)
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  try:
    node[leaf] = value
  except TypeError as error:
    raise UsageError(f"config override {override!r}: {error}") from None


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`path[:arg]` -> the file's get_config(arg) with the overrides applied."""
  path, _, arg = spec.partition(":")
  module = import_config_file(path)
  config = module.get_config(arg) if arg else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(f"--config {path}: get_config() returned {type(config).__name__}, "
                     "expected an ml_collections.ConfigDict")
  for override in overrides:
    apply_override(config, override)
  return config
