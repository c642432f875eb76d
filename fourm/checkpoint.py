"""Checkpoints with orbax: the train state, where the data stream stands, and the config,
saved together, asynchronously, every N steps; the last K kept.

The data stream's state is one number: batches consumed (= the step). The pipeline's
batch k is a function of (seed, k) alone, on any number of processes, so this is all a
resume needs, on the same mesh or another. The config is saved beside it as JSON so a
run can be inspected (and its shapes checked) without the file it came from.

Restoring takes the newest checkpoint that reads back whole; one that does not (a
truncated or corrupted file) is reported and the one before it is used, and the run that
owns the workdir moves it to `WORKDIR/checkpoints_unreadable/` so that the next save of
that step is not skipped over it. Generation restores the parameters alone
(`restore_latest_params`): the optimizer's arrays, twice the parameters' size with AdamW,
are never read, and no optimizer is needed to describe them.

A save the file system refuses (full, read-only) is one `WriteError` naming the step, the
reason and the checkpoints that are intact; orbax writes into a temporary directory and
renames it only when complete, and deletes old checkpoints only after a save succeeds, so
a failed or killed save loses nothing that was saved before (its temporary directory is
removed when the next run opens the workdir). Orbax's own reports of such failures, and
of reads abandoned in a damaged checkpoint, from its background threads, are kept off the
console: the one line fourm prints says it all.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from fourm.errors import UsageError, WriteError, write_refusal

# Any pytree of arrays with a `step` attribute: the 4M TrainState, a tokenizer's state.
TrainState = Any


def abstract(state):
  """Shapes, dtypes and shardings of a state: the target a checkpoint restores into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                      state)


def on_one_device(tree: Any) -> Any:
  """`tree`'s arrays (abstract ones too) as abstract arrays placed on the first device:
  the `like` a small model (a tokenizer) restores into with `restore_latest_items`."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)


class Checkpoints:
  """The checkpoints of one run directory (`WORKDIR/checkpoints`), for any train state
  that is a pytree of arrays with a `step` (the 4M model's, a tokenizer's)."""

  def __init__(self, workdir: str, *, every: int, keep: int, async_save: bool = True,
               log: Callable[[str], None] = print, owner: bool = True):
    """`owner`: this is the run that writes the workdir (and holds its lock). Only the
    owner removes what a killed save left and sets unreadable checkpoints aside; a
    reader (generation, loading a tokenizer) may look while a run is writing."""
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.every, self.log, self.owner = max(every, 1), log, owner
    self._pending: int | None = None  # the step of a save that may still be in flight
    _keep_orbax_failures_off_the_console(self.directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(every, 1), max_to_keep=keep,
        enable_async_checkpointing=async_save, create=owner, cleanup_tmp_directories=owner)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_names=("state", "meta"))
    except Exception as error:
      raise self._refused(error, "cannot open the checkpoint directory") from None

  def save(self, state: TrainState, meta: Mapping[str, Any], *, force: bool = False) -> bool:
    """Saves if the step is due (or `force`); returns whether a save started. Raises
    WriteError when the file system refuses this save or the one before (async)."""
    step = int(state.step)
    if not force and step % self.every:
      return False
    self.wait()  # a failure of the save before is reported as that step's
    if step == self.manager.latest_step():
      return False
    try:
      started = self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))),
          force=force)
    except Exception as error:
      raise self._refused(error, f"cannot save the checkpoint of step {step}") from None
    self._pending = step if started else None
    return started

  def _refused(self, error: Exception, what: str) -> Exception:
    """A WriteError for `error` when it is the file system refusing a write; else `error`
    itself (a bug, to be raised as it is)."""
    refusal = write_refusal(error)
    if refusal is None:
      return error
    reason, path = refusal
    intact = [s for s in self._steps_on_disk() if s != self._pending]
    kept = (f"the checkpoints of steps {intact} are intact" if intact else
            "no earlier checkpoint exists")
    return WriteError(f"{what} in {self.directory}: {reason}"
                      f"{f' (writing {path})' if path else ''}; {kept}. Free space or fix "
                      "the directory's permissions, then run the same command to resume")

  def _steps_on_disk(self) -> list[int]:
    try:
      return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())
    except OSError:
      return []

  def steps(self) -> list[int]:
    """The steps of the checkpoints in the directory, readable or not."""
    return sorted(self.manager.all_steps())

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
    state, step, meta = found
    self._set_aside_newer_than(step)
    return state, meta

  def _set_aside_newer_than(self, step: int) -> None:
    """Moves the unreadable checkpoints after `step` out of the way (to
    `WORKDIR/checkpoints_unreadable/`), so that this run saves those steps afresh rather
    than skipping them as saved. Only the run that owns the workdir does this."""
    unreadable = [s for s in self.manager.all_steps() if s > step]
    if not unreadable or not self.owner or jax.process_index() != 0:
      return
    aside = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable")
    os.makedirs(aside, exist_ok=True)
    for bad in unreadable:
      target = os.path.join(aside, str(bad))
      if os.path.exists(target):
        shutil.rmtree(target)
      os.rename(os.path.join(self.directory, str(bad)), target)
      self.log(f"moved the unreadable checkpoint of step {bad} to {target}; delete it once "
               "you have looked at it")
    self.manager.reload()

  def restore_latest_params(self, params_like) -> tuple[Any, int, dict] | None:
    """(params, step, meta) of the newest checkpoint whose parameters read back, or None
    when the directory holds none; raises when none reads, as `restore_latest` does.

    `params_like` is the saved state's `params` subtree as abstract arrays
    (`jax.ShapeDtypeStruct`s with shardings): each parameter is read straight into its
    sharding. The rest of the state (the optimizer's moments) is skipped, not read."""
    found = self.restore_latest_items({"params": params_like})
    if found is None:
      return None
    state, step, meta = found
    return state["params"], step, meta

  def restore_latest_items(self, like: dict[str, Any]) -> tuple[dict, int, dict] | None:
    """({name: subtree}, step, meta) of the newest checkpoint whose top-level items `like`
    names read back (the others are not read); None and errors as `restore_latest_params`."""
    item = dict(like)
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
      return self._restore_newest(reader, args, f"into this model's {', '.join(item)}")
    finally:
      reader.close()

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
    """Waits for a save in flight; raises WriteError when the file system refused it."""
    try:
      self.manager.wait_until_finished()
    except Exception as error:
      raise self._refused(error, f"cannot save the checkpoint of step {self._pending}"
                          ) from None
    self._pending = None

  def close(self) -> None:
    """Waits for a save in flight and closes; a second call does nothing."""
    if getattr(self, "_closed", False):
      return
    self._closed = True
    try:
      self.wait()
    finally:
      self.manager.close()


# Orbax (through tensorstore and asyncio) reports failures from its background threads
# besides raising them where the caller waits: a refused write is logged with its traceback
# by every thread it touched, and the reads left running when one read of a damaged
# checkpoint fails end in "Event loop is closed" tracebacks (the loop orbax ran them on is
# gone) and asyncio's "Future exception was never retrieved". fourm reports each of these
# as one line already (WriteError, "cannot be read; trying the one before"), so they are
# kept off the console; anything else orbax or asyncio reports still shows.
_QUIETED_DIRECTORIES: set[str] = set()


def _keep_orbax_failures_off_the_console(directory: str) -> None:
  if not _QUIETED_DIRECTORIES:
    logging.getLogger("absl").addFilter(_orbax_report_of_a_refused_write)
    logging.getLogger("asyncio").addFilter(_abandoned_checkpoint_read)
    sys.unraisablehook = _without_orbax_leftovers(sys.unraisablehook)
  _QUIETED_DIRECTORIES.add(directory)


def _orbax_report_of_a_refused_write(record: logging.LogRecord) -> bool:
  if "orbax" not in record.pathname or record.levelno < logging.ERROR:
    return True
  error = record.exc_info[1] if record.exc_info else None
  refused = (error is not None and write_refusal(error)) or \
      write_refusal(Exception(record.getMessage()))
  return not refused


def _abandoned_checkpoint_read(record: logging.LogRecord) -> bool:
  message = record.getMessage()
  return not (message.startswith("Future exception was never retrieved") and
              any(directory in message for directory in _QUIETED_DIRECTORIES))


def _without_orbax_leftovers(previous):
  def hook(unraisable) -> None:
    error, source = unraisable.exc_value, unraisable.object
    code = getattr(source, "cr_code", None)
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return
    if code is not None and "orbax" in code.co_filename:  # coroutines cut off at exit
      return
    previous(unraisable)
  return hook
