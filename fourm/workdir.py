"""One workdir, one writer: the lock a training job holds on its workdir.

Two `fourm train` (or `fourm tokenizer train`) runs on one workdir would interleave their
checkpoints and silently keep the second run's; so a job takes an exclusive lock on
`WORKDIR/.fourm.lock` for as long as it runs, and a second one is refused at once, with
the holder named (command, host, pid, start time).

The lock is an `fcntl.flock` on that file, which the kernel drops when its process dies
however it dies (kill -9 included), so a lock left by a killed run is never stale: the
next run takes it over, and says whose it was. The file itself only records who holds it.
On a shared file system each host's kernel sees the others' locks where the file system
supports them (NFSv4, Lustre, GPFS); a multi-host job takes the lock from process 0 only.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

from fourm.errors import UsageError

LOCK_FILE = ".fourm.lock"


def make_workdir(workdir: str) -> str:
  """Creates `workdir` (and its parents); an unwritable place is one clear error."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise UsageError(f"--workdir {workdir}: cannot create it ({os.strerror(error.errno)})"
                     ) from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UsageError(f"--workdir {workdir}: not writable")
  return workdir


def _describe(holder: dict[str, Any]) -> str:
  return (f"{holder.get('command', 'a fourm job')} (host {holder.get('host', '?')}, pid "
          f"{holder.get('pid', '?')}, since {holder.get('started', '?')})")


def _read_holder(fd: int) -> dict[str, Any]:
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    return json.loads(os.read(fd, 4096).decode() or "{}")
  except (ValueError, UnicodeDecodeError):
    return {}


class WorkdirLock:
  """An exclusive lock on a workdir: `acquire()` or raise UsageError naming the holder."""

  def __init__(self, workdir: str, command: str):
    self.workdir, self.command = workdir, command
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None
    self.previous: dict[str, Any] | None = None  # the record of a dead run we took over

  def acquire(self) -> WorkdirLock:
    make_workdir(self.workdir)
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
      raise UsageError(f"--workdir {self.workdir}: cannot create its lock file {self.path} "
                       f"({os.strerror(error.errno)})") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      holder = _read_holder(fd)
      os.close(fd)
      if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise UsageError(f"--workdir {self.workdir} is in use by {_describe(holder)}; wait "
                         "for it to finish, stop it, or use another --workdir") from None
      raise UsageError(f"--workdir {self.workdir}: cannot lock {self.path} "
                       f"({os.strerror(error.errno)})") from None
    previous = _read_holder(fd)
    # A record without "finished" is a run that died holding the lock.
    self.previous = previous if previous and "finished" not in previous else None
    record = {"command": self.command, "host": socket.gethostname(), "pid": os.getpid(),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(record).encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      # The record stays, marked finished (it tells who ran last); the lock goes. On a
      # file system that now refuses writes the record stays unmarked: the next run then
      # says it took the lock over, which is harmless, and the run's own error is the one
      # reported.
      record = _read_holder(self._fd)
      record["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
      try:
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, json.dumps(record).encode())
      except OSError:
        pass
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  @property
  def held(self) -> bool:
    return self._fd is not None


def closing_quietly(close: Callable[[], None]) -> Callable[[], None]:
  """`close` for a job's error path (an ExitStack callback): the error that ended the run
  is the one to report, not a second one from closing its checkpoint manager or writer."""
  def run() -> None:
    try:
      close()
    except Exception:  # noqa: BLE001
      pass
  return run


@contextlib.contextmanager
def exclusive(workdir: str, command: str, *, enabled: bool = True,
              log: Callable[[str], None] = print) -> Iterator[WorkdirLock | None]:
  """Holds the workdir's lock for the block (`enabled=False`: processes other than 0 of a
  multi-host job, which must not contend with their own chief)."""
  if not enabled:
    make_workdir(workdir)
    yield None
    return
  lock = WorkdirLock(workdir, command).acquire()
  if lock.previous:
    log(f"{workdir}: took over the lock of {_describe(lock.previous)}, which no longer runs")
  try:
    yield lock
  finally:
    lock.release()
