"""SIGTERM (a preemption) and SIGINT (Ctrl-C) as a flag a training loop checks between
steps, so that both save a checkpoint and exit cleanly instead of losing the steps since
the last one. Used by `fourm train` and `fourm finetune`."""

from __future__ import annotations

import signal
from typing import Any


class Preemption:
  """Turns SIGTERM (a preemption) and SIGINT (Ctrl-C) into a flag the loop checks after
  each step, so both save a checkpoint and exit cleanly. A second Ctrl-C interrupts at
  once, as a user pressing it again expects."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: str | None = None  # the signal's name, once one came
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    for signum in self.SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread (e.g. a notebook worker): no handler
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name
    if signum == signal.SIGINT:  # the next Ctrl-C is not deferred
      signal.signal(signum, self._previous.get(signum, signal.default_int_handler))

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
