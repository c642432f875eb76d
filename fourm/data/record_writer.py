"""Writing a dataset: validated samples into ArrayRecord shards, then `dataset_info.json`.

Each shard is written to a temporary file and renamed when complete, and the info file
is written last the same way, so a crash never leaves a directory that looks finished.
While writing, the dtype / shape / count of every modality is gathered for the info.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from array_record.python import array_record_module

from fourm.data.dataset_info import INFO_FILE, DatasetInfo, SplitInfo
from fourm.data.record_codec import EncodedImage, decode_image, encode_sample
from fourm.data.record_validation import validate_sample

# group_size:1 makes every record individually addressable, which the grain pipeline's
# global shuffle needs; zstd (the default codec) keeps float maps compact.
WRITER_OPTIONS = "group_size:1"


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


class _ModalityStats:
  """Accumulates the dtype / shape / count of each modality while writing."""

  def __init__(self):
    self.stats: dict[str, dict[str, Any]] = {}

  def add(self, sample: Mapping[str, Any]) -> None:
    for name, value in sample.items():
      dtype, shape = _describe(value)
      self.merge({name: {"dtype": dtype, "shape": shape, "count": 1}})

  def merge(self, other: Mapping[str, dict[str, Any]]) -> None:
    for name, entry in other.items():
      mine = self.stats.setdefault(name, dict(entry, count=0))
      mine["count"] += entry["count"]
      mine["shape"] = _common_shape(mine["shape"], entry["shape"])


def _common_shape(a: list | None, b: list | None) -> list | None:
  """The shape two entries share: differing dimensions become None, differing ranks None."""
  if a is None or b is None or len(a) != len(b):
    return a if a == b else None
  return [x if x == y else None for x, y in zip(a, b)]


def _describe(value: Any) -> tuple[str, list[int | None] | None]:
  if isinstance(value, np.ndarray):
    return value.dtype.name, list(value.shape)
  if isinstance(value, EncodedImage):
    return "uint8", [None, None, 3]
  if isinstance(value, str):
    return "str", None
  if isinstance(value, Mapping) and "boxes" in value:
    return "boxes", [None, 4]
  return type(value).__name__, None


def write_shard(path: str, samples: Iterable[Mapping[str, Any]], *,
                first_record: int = 0, allow_empty: bool = False
                ) -> tuple[int, dict[str, dict[str, Any]]]:
  """Validates and writes samples to one shard (atomically); returns (count, stats).

  `allow_empty` lets a side-by-side store hold an empty record where a derivation
  failed for that sample (its modalities are then absent, never zero-filled).
  """
  stats = _ModalityStats()
  tmp_path = path + ".tmp"
  writer = array_record_module.ArrayRecordWriter(tmp_path, WRITER_OPTIONS)
  count = 0
  try:
    for count, sample in enumerate(samples, start=1):
      if sample or not allow_empty:
        validate_sample(_decoded_view(sample), path=path, record=first_record + count - 1)
      stats.add(sample)
      writer.write(encode_sample(sample))
  except BaseException:
    writer.close()
    os.remove(tmp_path)
    raise
  writer.close()
  os.replace(tmp_path, path)
  return count, stats.stats


def _decoded_view(sample: Mapping[str, Any]) -> Mapping[str, Any]:
  """Validation sees encoded images as decoded arrays (so their sizes are checked too)."""
  if not any(isinstance(value, EncodedImage) for value in sample.values()):
    return sample
  return {name: decode_image(value.data) if isinstance(value, EncodedImage) else value
          for name, value in sample.items()}


def write_info(directory: str, name: str, splits: Mapping[str, Sequence[tuple[str, int]]],
               shard_stats: Iterable[dict[str, dict[str, Any]]],
               metadata: Mapping[str, Any] | None = None) -> DatasetInfo:
  """Writes `dataset_info.json` last, atomically; `splits` maps split -> [(shard, count)]."""
  stats = _ModalityStats()
  for entry in shard_stats:
    stats.merge(entry)
  info = DatasetInfo(
      name=name,
      splits={split: SplitInfo(num_records=sum(n for _, n in shards),
                               shards=[s for s, _ in shards], shard_lengths=[n for _, n in shards])
              for split, shards in splits.items()},
      modalities=dict(sorted(stats.stats.items())),
      metadata=dict(metadata or {}))
  tmp = os.path.join(directory, INFO_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(info.to_json())
  os.replace(tmp, os.path.join(directory, INFO_FILE))
  return info


def split_into_shards(num_records: int, records_per_shard: int) -> list[range]:
  """Contiguous record ranges, one per shard, as even as possible."""
  num_shards = max(1, -(-num_records // records_per_shard))
  bounds = np.linspace(0, num_records, num_shards + 1).round().astype(int)
  return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
