"""`dataset_info.json`: what a dataset directory holds, and the mark that it is complete.

The writer saves it last, so a directory without it is not a dataset (or one whose
writing did not finish); the reader loads it first to find the splits, their shards and
record counts, and the modalities stored (dtype, shape, how many records have each).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from fourm.errors import RecordError

FORMAT_NAME = "fourm-records"
FORMAT_VERSION = 1
INFO_FILE = "dataset_info.json"


@dataclasses.dataclass
class SplitInfo:
  num_records: int
  shards: list[str]
  shard_lengths: list[int]


@dataclasses.dataclass
class DatasetInfo:
  """What `dataset_info.json` holds."""
  name: str
  splits: dict[str, SplitInfo]
  modalities: dict[str, dict[str, Any]]   # name -> {"dtype", "shape" (None = varies), "count"}
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> str:
    return json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION,
                       **dataclasses.asdict(self)}, indent=2, sort_keys=True)

  @classmethod
  def load(cls, directory: str) -> DatasetInfo:
    path = os.path.join(directory, INFO_FILE)
    if not os.path.isdir(directory):
      raise RecordError("no such dataset directory", path=directory)
    if not os.path.exists(path):
      raise RecordError(f"no {INFO_FILE}: not a fourm dataset, or one whose writing did not "
                        "finish (run the command that makes it again)", path=directory)
    try:
      with open(path) as f:
        data = json.load(f)
      if data.get("format") != FORMAT_NAME:
        raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT_NAME!r}")
      if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"version {data.get('version')} is not supported "
                         f"(this fourm reads version {FORMAT_VERSION})")
      splits = {name: SplitInfo(**split) for name, split in data["splits"].items()}
      return cls(name=data["name"], splits=splits, modalities=data["modalities"],
                 metadata=data.get("metadata", {}))
    except (ValueError, KeyError, TypeError) as error:
      raise RecordError(f"invalid dataset info ({error})", path=path) from error
