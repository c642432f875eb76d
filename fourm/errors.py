"""Errors a user can act on; the CLI prints these as one line, anything else is a bug."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator


class FourmError(Exception):
  """Base of the errors that describe a problem with the user's input, not with fourm."""


class UsageError(FourmError, ValueError):
  """A command-line argument or config value that does not add up."""


class RecordError(FourmError, ValueError):
  """Bad data: says which file, which record and which field."""

  def __init__(self, message: str, *, path: str | None = None, record: int | None = None,
               field: str | None = None):
    self.path, self.record, self.field = path, record, field
    where = [part for part in (path and f"{path}",
                               record is not None and f"record {record}",
                               field and f"field {field!r}") if part]
    super().__init__(f"{': '.join(where)}: {message}" if where else message)


class WriteError(FourmError):
  """The file system refused a write (full, read-only, no permission): says what was
  being written, where, and what of the earlier output is intact."""


# The errnos of a file system that refuses a write: the user's to fix, not a bug.
_REFUSALS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
             errno.EIO)
# Libraries that write from C++ (tensorstore under orbax, array_record) raise ValueError or
# RuntimeError with the path and the errno (or its text) inside the message.
_PATHS_IN_MESSAGE = (re.compile(r'local file "([^"]+)"'), re.compile(r"writing (/[^;]+);"))
_ERRNO_IN_MESSAGE = re.compile(r"os_error_code='(\d+)'")


def write_refusal(error: BaseException) -> tuple[str, str | None] | None:
  """(reason, path or None) when `error`, or an error it was raised from, is the file
  system refusing a write; None for anything else."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _REFUSALS:
      path = error.filename
      return os.strerror(error.errno), os.fsdecode(path) if path is not None else None
    text = str(error)
    code = _ERRNO_IN_MESSAGE.search(text)
    reasons = [os.strerror(int(code.group(1)))] if code and int(code.group(1)) in _REFUSALS \
        else [os.strerror(number) for number in _REFUSALS if os.strerror(number) in text]
    if reasons:
      paths = [match.group(1) for pattern in _PATHS_IN_MESSAGE
               for match in [pattern.search(text)] if match]
      return reasons[0], paths[0] if paths else None
    error = error.__cause__ or error.__context__
  return None


@contextlib.contextmanager
def refused_writes_as(what: str) -> Iterator[None]:
  """Within the block, the file system refusing a write raises `WriteError("what:
  reason")` (and names the path when `what` does not); other errors pass unchanged."""
  try:
    yield
  except Exception as error:
    refusal = write_refusal(error)
    if refusal is None:
      raise
    reason, path = refusal
    where = f" ({path})" if path and path not in what else ""
    raise WriteError(f"{what}{where}: {reason}") from None
