"""Errors a user can act on; the CLI prints these as one line, anything else is a bug."""

from __future__ import annotations


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
