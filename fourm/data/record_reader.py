"""Reading a dataset: `RecordSource`, random access to the decoded samples of a split.

Several directories with the same splits and record counts can be read side by side
(`RecordSource([world, world_labels])`): this is how pseudo-labels and token records
join the records they were computed from without rewriting them. Every failure is a
`RecordError` naming the file, the record index and the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from array_record.python import array_record_module

from fourm.data.dataset_info import INFO_FILE, DatasetInfo
from fourm.data.record_codec import decode_sample
from fourm.data.record_validation import validate_sample
from fourm.errors import RecordError

READER_OPTIONS = "readahead_buffer_size:0"


class _Store:
  """One dataset directory's split: maps a record index to (shard file, position)."""

  def __init__(self, directory: str, split: str):
    self.directory = directory
    self.info = DatasetInfo.load(directory)
    if split not in self.info.splits:
      raise RecordError(f"no split {split!r} (it has: {sorted(self.info.splits)})",
                        path=directory)
    split_info = self.info.splits[split]
    self.paths = [os.path.join(directory, shard) for shard in split_info.shards]
    self.offsets = np.cumsum([0] + split_info.shard_lengths)
    self.num_records = split_info.num_records
    self._readers: dict[int, Any] = {}
    self._verify(split)

  def _verify(self, split: str) -> None:
    """The metadata must describe the files: every shard there, holding the records the
    JSON says (read from each shard's footer, cheaply), and the split's count their sum.
    A truncated or miscounted shard is an error here, not wrong counts later."""
    info_path = os.path.join(self.directory, INFO_FILE)
    if int(self.offsets[-1]) != self.num_records:
      raise RecordError(f"split {split!r} says num_records {self.num_records} but its "
                        f"shard lengths add up to {int(self.offsets[-1])}", path=info_path)
    for shard, path in enumerate(self.paths):
      expected = int(self.offsets[shard + 1] - self.offsets[shard])
      if not os.path.exists(path):
        raise RecordError(f"shard file is missing ({INFO_FILE} lists it with {expected} "
                          "records)", path=path)
      try:
        reader = array_record_module.ArrayRecordReader(path, READER_OPTIONS)
        found = reader.num_records()
        reader.close()
      except Exception as error:  # noqa: BLE001 - any reader failure is this file's fault
        raise RecordError(f"cannot open the shard ({type(error).__name__}: {error})",
                          path=path) from None
      if found != expected:
        raise RecordError(f"shard holds {found} records but {INFO_FILE} says {expected}",
                          path=path)

  def __getstate__(self):
    # Readers hold file handles: each process (grain worker) opens its own.
    return {**self.__dict__, "_readers": {}}

  def read(self, index: int) -> tuple[bytes, str]:
    if not 0 <= index < self.num_records:
      raise RecordError(f"record {index} does not exist: the split has {self.num_records}",
                        path=self.directory, record=index)
    shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
    position = index - int(self.offsets[shard])
    path = self.paths[shard]
    reader = self._readers.get(shard)
    try:
      if reader is None:
        if not os.path.exists(path):
          raise FileNotFoundError("shard file is missing")
        reader = array_record_module.ArrayRecordReader(path, READER_OPTIONS)
        expected = int(self.offsets[shard + 1] - self.offsets[shard])
        if reader.num_records() != expected:
          raise ValueError(f"shard holds {reader.num_records()} records but "
                           f"{INFO_FILE} says {expected}")
        self._readers[shard] = reader
      data = reader.read([position])[0]
    except Exception as error:
      self._readers.pop(shard, None)
      raise RecordError(f"cannot read record at position {position} of this shard "
                        f"({type(error).__name__}: {error})", path=path, record=index) from error
    return data, path


class RecordSource:
  """Random-access source of decoded samples for one split (a grain data source).

  `directories` may name several datasets of the same records (side-by-side stores);
  their modalities are joined record by record. `modalities` names the raw modalities
  to read: a record lacking one raises a `RecordError`; None reads all, as stored.
  """

  def __init__(self, directories: str | Sequence[str], split: str = "train",
               modalities: Sequence[str] | None = None, validate: bool = True):
    directories = [directories] if isinstance(directories, (str, os.PathLike)) else \
        list(directories)
    if not directories:
      raise ValueError("RecordSource needs at least one dataset directory")
    self.split = split
    self.stores = [_Store(str(d), split) for d in directories]
    self.validate = validate
    sizes = {store.directory: store.num_records for store in self.stores}
    if len(set(sizes.values())) != 1:
      raise RecordError(f"side-by-side datasets disagree on the size of split {split!r}: "
                        f"{sizes}")
    self._owner = self._modality_owners()
    if modalities is not None:
      missing = [m for m in modalities if m not in self._owner]
      if missing:
        raise RecordError(f"no record of split {split!r} has modalities {missing}; "
                          f"available: {sorted(self._owner)}", path=", ".join(directories))
    self.modalities = list(modalities) if modalities is not None else sorted(self._owner)
    self._required = set(modalities or ())

  def _modality_owners(self) -> dict[str, int]:
    owner: dict[str, int] = {}
    for i, store in enumerate(self.stores):
      for name in store.info.modalities:
        if name in owner:
          raise RecordError(f"modality {name!r} is stored in both "
                            f"{self.stores[owner[name]].directory} and {store.directory}")
        owner[name] = i
    return owner

  @property
  def info(self) -> DatasetInfo:
    return self.stores[0].info

  def __len__(self) -> int:
    return self.stores[0].num_records

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)}) of split {self.split!r}")
    sample: dict[str, Any] = {}
    path = self.stores[0].paths[0]
    for i, store in enumerate(self.stores):
      names = [m for m in self.modalities if self._owner[m] == i]
      if not names:
        continue
      data, path = store.read(index)
      sample.update(decode_sample(data, path=path, record=index, keep=names))
    missing = sorted(self._required - set(sample))
    if missing:
      raise RecordError(f"missing modalities {missing} that this pipeline requires "
                        f"(the record has: {sorted(sample)})", path=path, record=index,
                        field=missing[0])
    if self.validate:
      validate_sample(sample, path=path, record=index)
    return sample

  def __iter__(self) -> Iterator[dict[str, Any]]:
    for index in range(len(self)):
      yield self[index]

  def __repr__(self) -> str:
    dirs = ", ".join(store.directory for store in self.stores)
    return f"RecordSource([{dirs}], split={self.split!r}, n={len(self)})"
