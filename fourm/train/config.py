"""Experiment configs: ml_collections `.py` files with `get_config(arg=None)`.

`load_config("configs/tiny_synthetic.py:smoke", ["model.size=base", "batch_size=64"])`
imports the file, calls `get_config("smoke")` and applies the overrides, written as on
the command line (`--config.batch_size=64` becomes `batch_size=64`). Values are parsed
as Python literals where they parse (numbers, tuples, booleans), else kept as strings;
ConfigDict's own type checks refuse a value of the wrong type for its field.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Sequence

import ml_collections

from fourm.errors import UsageError


def _import_config_file(path: str):
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
  if leaf not in node:
    raise UsageError(f"config override {override!r}: no field {key!r}; the group has "
                     f"{sorted(node.keys())}")
  value = _parse_value(text)
  old = node[leaf]
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
  module = _import_config_file(path)
  config = module.get_config(arg) if arg else module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(f"--config {path}: get_config() returned {type(config).__name__}, "
                     "expected an ml_collections.ConfigDict")
  for override in overrides:
    apply_override(config, override)
  return config


def default_config() -> ml_collections.ConfigDict:
  """Every field a training config has, with defaults; experiment files start here.

  Fields
    modalities, layout ("small": 64 px / 8 px patches, "reference": 224 / 16)
    input_budget, target_budget: tokens per sample for the encoder / the decoder
    alphas: kind "all2all" | "rgb2all_and_all2all" (alpha) | "sources2all_and_all2all"
      (alpha, sources: e.g. ("rgb", "caption")) | "reference_yaml" (path)
    model: size (tiny/base/large/xlarge) and optional dim/depth/heads overrides,
      dtype (compute), param_dtype, remat
    data: paths (directories read side by side), splits, augment, worker_count
    optimizer: AdamW, lr = base_lr * batch_size / lr_batch_base, warmup then cosine
    mesh: data / fsdp / tensor sizes, one may be -1 (the devices left)
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.modalities = ("rgb", "tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "caption")
  c.layout = "small"
  c.input_budget = 64
  c.target_budget = 64
  c.pixel_normalization = "imagenet"
  c.text_tokenizer = ""            # "" = the reference 4M WordPiece vocabulary
  c.loss_type = "mod"
  c.alphas = ml_collections.ConfigDict(dict(kind="all2all", alpha=1.0, path="",
                                                  sources=("rgb",)))
  c.model = ml_collections.ConfigDict(dict(
      size="tiny", dim=0, encoder_depth=0, decoder_depth=0, num_heads=0,
      dtype="float32", param_dtype="float32", remat=False))
  c.data = ml_collections.ConfigDict(dict(
      paths=("demo_out/world", "demo_out/tokens"), train_split="train", eval_split="val",
      augment=False, worker_count=0))
  c.batch_size = 32
  c.eval_batch_size = 0            # 0 = batch_size
  c.eval_batches = 4               # 0 = the whole eval split
  c.total_steps = 1000
  c.optimizer = ml_collections.ConfigDict(dict(
      base_lr=1e-4, lr_batch_base=256, warmup_steps=100, min_lr_ratio=0.0, b1=0.9, b2=0.95,
      eps=1e-8, weight_decay=0.05, grad_clip=1.0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.log_every = 10
  c.eval_every = 100
  c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3, async_save=True))
  c.max_consecutive_nonfinite = 5
  c.profile_steps = ()             # (first, last): a jax profiler trace in WORKDIR/profile
  return c


# The reference 4M-7 pretraining runs (apple/ml-4m cfgs/default/4m/models/main/
# 4m-{b,l,xl}_mod7_500b.yaml): 500B tokens, 10B of warmup, at 8192 x 256 tokens per step.
MOD7_MODALITIES = ("rgb", "tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_clip",
                   "caption", "det")
MOD7_BATCH = 8192
_TOKENS_PER_STEP = MOD7_BATCH * (128 + 128)


def mod7_pretraining(size: str) -> ml_collections.ConfigDict:
  """The reference's 4M-7 recipe at one model size (the config files call this)."""
  c = default_config()
  c.modalities = MOD7_MODALITIES
  c.layout = "reference"
  c.input_budget = c.target_budget = 128
  c.alphas.kind, c.alphas.alpha = "rgb2all_and_all2all", 0.5  # mix_mod7_all2all_rgb2all_a0.5
  c.model.size = size
  c.model.dtype = "bfloat16"
  c.batch_size = MOD7_BATCH
  c.total_steps = round(500e9 / _TOKENS_PER_STEP)
  c.optimizer.base_lr = 1e-4  # lr = 1e-4 * 8192 / 256 = 3.2e-3
  c.optimizer.warmup_steps = round(10e9 / _TOKENS_PER_STEP)
  c.optimizer.weight_decay = 0.05
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
  c.optimizer.grad_clip = 1.0
  c.data.paths = ("/path/to/cc12m", "/path/to/cc12m_tokens")  # change me
  c.data.augment = False       # tokens are computed once, on fixed crops
  c.data.worker_count = 8
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1  # FSDP over every device
  c.log_every = 50
  c.eval_every = 5000
  c.eval_batches = 10
  c.checkpoint.every = 2000
  return c
