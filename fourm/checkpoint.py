"""Checkpoints with orbax: the train state, where the data stream stands, and the config,
saved together, asynchronously, every N steps; the last K kept.

The data stream's state is one number: batches consumed (= the step). The pipeline's
batch k is a function of (seed, k) alone, on any number of processes, so this is all a
resume needs, on the same mesh or another. The config is saved beside it as JSON so a
run can be inspected (and its shapes checked) without the file it came from.

Restoring takes the newest checkpoint that reads back whole; one that does not (a
truncated or corrupted file) is reported and the one before it is used. Generation
restores the parameters alone (`restore_latest_params`): the optimizer's arrays, twice
the parameters' size with AdamW, are never read, and no optimizer is needed to describe
them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from fourm.errors import UsageError

# Any pytree of arrays with a `step` attribute: the 4M TrainState, a tokenizer's state.
TrainState = Any


def abstract(state):
  """Shapes, dtypes and shardings of a state: the target a checkpoint restores into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


class Checkpoints:
  """The checkpoints of one run directory (`WORKDIR/checkpoints`), for any train state
  that is a pytree of arrays with a `step` (the 4M model's, a tokenizer's)."""

  def __init__(self, workdir: str, *, every: int, keep: int, async_save: bool = True,
               log: Callable[[str], None] = print):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.every, self.log = max(every, 1), log
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(every, 1), max_to_keep=keep,
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def save(self, state: TrainState, meta: Mapping[str, Any], *, force: bool = False) -> bool:
    """Saves if the step is due (or `force`); returns whether a save started."""
    step = int(state.step)
    if not force and step % self.every:
      return False
    if step == self.manager.latest_step():
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))), force=force)

  def latest_meta(self) -> dict | None:
    """The metadata (step, data position, config) of the newest checkpoint whose metadata
    reads back, or None when there is none: check it before restoring the state."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return dict(self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"])
      except Exception:  # damaged: restore_latest will say so
        continue
    return None

  def restore_latest(self, like: TrainState) -> tuple[TrainState, dict] | None:
    """The newest readable checkpoint restored onto `like`'s shardings, or None when the
    directory holds none. Raises when there are checkpoints but none reads back: starting
    afresh over them would hide the problem."""
    found = self._restore_newest(
        self.manager, ocp.args.StandardRestore(abstract(like)),
        "into this run's state; move the directory away to start afresh")
    if found is None:
      return None
    state, _, meta = found
    return state, meta

  def restore_latest_params(self, params_like) -> tuple[Any, int, dict] | None:
    """(params, step, meta) of the newest checkpoint whose parameters read back, or None
    when the directory holds none; raises when none reads, as `restore_latest` does.

    `params_like` is the saved state's `params` subtree as abstract arrays
    (`jax.ShapeDtypeStruct`s with shardings): each parameter is read straight into its
    sharding. The rest of the state (the optimizer's moments) is skipped, not read."""
    item = {"params": params_like}
    # A partial restore reads only the leaves `item` names; explicit restore args carry
    # each leaf's sharding (PyTreeRestore does not take them from the item).
    args = ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)
    # Orbax ties an item to the first handler a manager used for it, and the run's
    # manager saves and restores "state" with the standard one, which cannot restore
    # part of a tree: read through a manager of our own (which never saves; orbax's
    # read_only option would log a warning on every load), after any save in flight.
    self.wait()
    reader = ocp.CheckpointManager(self.directory, item_names=("state", "meta"),
                                   options=ocp.CheckpointManagerOptions(create=False))
    try:
      found = self._restore_newest(reader, args, "into this model's parameters")
    finally:
      reader.close()
    if found is None:
      return None
    state, step, meta = found
    return state["params"], step, meta

  def _restore_newest(self, manager: ocp.CheckpointManager, state_args, target: str
                      ) -> tuple[Any, int, dict] | None:
    """(state, step, meta) of the newest checkpoint that `state_args` read back; older
    ones are tried in turn, each failure reported. `target` ends the error message."""
    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=state_args, meta=ocp.args.JsonRestore()))
      except Exception as error:  # orbax raises many kinds for a damaged checkpoint
        self.log(f"checkpoint at step {step} in {self.directory} cannot be read "
                 f"({type(error).__name__}: {str(error)[:200]}); trying the one before")
        continue
      return restored["state"], step, dict(restored["meta"])
    if steps:
      raise UsageError(f"none of the checkpoints {steps} in {self.directory} can be read "
                       f"{target}")
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for a save in flight and closes; a second call does nothing."""
    if getattr(self, "_closed", False):
      return
    self._closed = True
    self.manager.wait_until_finished()
    self.manager.close()
