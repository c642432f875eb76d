"""`config.init`: a fresh run starts from another run's parameters (fine-tuning a
pre-trained 4M model on new data, new modalities or instructions).

Every parameter the two models share (same path, same shape) is copied; parameters only
the new model has (a new modality's embeddings and head) keep their fresh
initialization; the optimizer starts fresh at step 0. A shared path whose shape differs
(another width, another vocabulary) is an error naming it: copying would be wrong and
silently skipping it would hide a config mistake. What was copied and what was not is
logged, so a run that was meant to start pre-trained cannot start from scratch unseen.
A run that resumes from its own checkpoint never reads `init` again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from fourm.checkpoint import Checkpoints
from fourm.errors import UsageError
from fourm.train.state import TrainState, model_factory


def _by_path(tree) -> dict[str, jax.Array]:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def read_run_parameters(workdir: str, place: Callable[[Any, ml_collections.ConfigDict], Any],
                        label: str) -> tuple[nnx.Module, Any, ml_collections.ConfigDict, int]:
  """(the abstract model, its parameters, the run's config, the step) of the newest
  readable checkpoint of the `fourm train` workdir `workdir`; `place(abstract params,
  config)` gives the restore target (where each parameter is read to). Errors start
  with `label` (the flag or field that named the workdir)."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise UsageError(f"{label} {workdir}: no checkpoints there (expected {directory}; "
                     "train a model with fourm train)")
  checkpoints = Checkpoints(workdir, every=1, keep=1_000_000, async_save=False, owner=False)
  try:
    meta = checkpoints.latest_meta()
    if meta is None or "config" not in meta:
      raise UsageError(f"{label} {workdir}: holds no readable 4M checkpoint")
    config = ml_collections.ConfigDict(meta["config"])
    if "modalities" not in config or "input_budget" not in config:
      raise UsageError(f"{label} {workdir}: its checkpoint is not a 4M model's (a "
                       "tokenizer's? load those with --tokenizers)")
    abstract_model = nnx.eval_shape(model_factory(config))
    restored = checkpoints.restore_latest_params(
        place(nnx.state(abstract_model, nnx.Param), config))
  finally:
    checkpoints.close()
  if restored is None:
    raise UsageError(f"{label} {workdir}: no checkpoint could be read")
  params, step, _ = restored
  return abstract_model, params, config, step


def initialize_from(state: TrainState, init: str, log: Callable[[str], None] = print
                    ) -> TrainState:
  """`state` (fresh) with the parameters of the newest checkpoint of the `fourm train`
  workdir `init` copied in wherever the models share them."""
  # Read onto this process's first device; the copy below places each array as the
  # new state's parameter is placed.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  _, pretrained, _, step = read_run_parameters(
      init, lambda params, _: jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params),
      "config.init")
  old, new = _by_path(pretrained), _by_path(state.params)
  mismatched = [f"{path} {old[path].shape} -> {new[path].shape}" for path in new
                if path in old and old[path].shape != new[path].shape]
  if mismatched:
    raise UsageError(f"config.init {init}: parameters of another shape in this model: "
                     f"{mismatched[:4]}{' ...' if len(mismatched) > 4 else ''}")
  copied = {path: jax.device_put(old[path].astype(leaf.dtype), leaf.sharding)
            for path, leaf in new.items() if path in old}
  fresh = sorted(set(new) - set(old))
  unused = sorted(set(old) - set(new))
  log(f"initialized from {init} (step {step}): {len(copied)} of {len(new)} parameter arrays; "
      f"new here: {_summary(fresh)}; not used: {_summary(unused)}")
  params = jax.tree_util.tree_map_with_path(
      lambda path, leaf: copied.get(jax.tree_util.keystr(path), leaf), state.params)
  return state.replace(params=params)


def _summary(paths: list[str]) -> str:
  """The modalities (or top-level parts) a list of parameter paths belongs to."""
  if not paths:
    return "none"
  parts = sorted({"/".join(p.strip("[]'") for p in path.split("][")[:2]) for path in paths})
  return ", ".join(parts[:8]) + (f" (+{len(parts) - 8} more)" if len(parts) > 8 else "")
