"""Where training metrics go: TensorBoard event files and the console.

`clu.metric_writers` needs TensorFlow for its TensorBoard writer (it imports it at
package import), which would make TF a dependency of every run. TensorBoard's own
package writes the same event files with no TensorFlow, so the writer here uses it,
behind the same small interface (`write_scalars(step, {name: value})`).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from fourm.errors import refused_writes_as

_WRITER_IDS = itertools.count()


class TensorBoardWriter:
  """Scalars into `logdir` as TensorBoard event files (one file per writer).

  Writes are synchronous (TensorBoard's EventFileWriter queues them for a thread of its
  own): a few scalars per logged step cost nothing to write at once, and a file system
  that refuses them is then one WriteError where the loop writes, not a traceback from
  a thread followed by another at the next write."""

  def __init__(self, logdir: str):
    self.logdir = logdir
    name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_WRITER_IDS)}")
    self.path = os.path.join(logdir, name)
    self._writer = None
    with self._writing():
      os.makedirs(logdir, exist_ok=True)
      self._writer = RecordWriter(open(self.path, "wb"))
      self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
      self._writer.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=name, simple_value=float(value))
        for name, value in scalars.items()])
    with self._writing():
      self._add(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    with self._writing():
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:  # a second call does nothing
      writer, self._writer = self._writer, None
      with self._writing():
        writer.close()

  def _add(self, event: event_pb2.Event) -> None:
    self._writer.write(event.SerializeToString())

  def _writing(self):
    return refused_writes_as(f"cannot write TensorBoard events to {self.path}")


class NullWriter:
  """What processes other than the first write: nothing (one process logs a run)."""

  def write_scalars(self, step, scalars) -> None:
    del step, scalars

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Every scalar in the event files of `logdir`: {tag: [(step, value), ...]} (tests, notebooks)."""
  # The legacy loader yields events as written (the other converts scalars to tensors).
  from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
  scalars: dict[str, list[tuple[int, float]]] = {}
  for name in sorted(os.listdir(logdir)):
    if "tfevents" not in name:
      continue
    for event in LegacyEventFileLoader(os.path.join(logdir, name)).Load():
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def format_progress(step: int, total: int, scalars: Mapping[str, float], tokens_per_s: float,
                    eta_s: float) -> str:
  """One console line: step, loss and per-modality losses, tokens/s, ETA."""
  losses = " ".join(f"{name.removeprefix('loss/')}={value:.3f}"
                    for name, value in scalars.items() if name.startswith("loss/"))
  eta = time.strftime("%H:%M:%S", time.gmtime(max(eta_s, 0)))
  return (f"step {step}/{total}  loss {scalars.get('loss', float('nan')):.4f}  [{losses}]  "
          f"{tokens_per_s:,.0f} tok/s  ETA {eta}")
