"""Reading a dataset: `RecordSource`, random access to the decoded samples of a split.

Several directories with the same splits and record counts can be read side by side
(`RecordSource([world, world_labels])`): this is how pseudo-labels and token records
join the records they were computed from without rewriting them. Every failure is a
`RecordError` naming the file, the record index and the field.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from array_record.python import array_record_module

from fourm.data.dataset_info import INFO_FILE, DatasetInfo
from fourm.data.record_codec import decode_sample
from fourm.data.record_validation import validate_sample
from fourm.errors import RecordError

READER_OPTIONS = "readahead_buffer_size:0"
# A part of a split, written as tensorflow-datasets writes it: "train[:64]", "train[10%:]",
# "val[100:200]" (low-data fine-tuning, a quick look at a few records).
_SLICE = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<start>(-?\d+%?)?):(?P<stop>(-?\d+%?)?)\]$")


def _parse_split(split: str) -> tuple[str, str, str] | None:
  """(name, start, stop) as written for "NAME[START:STOP]"; None for a plain name."""
  if "[" not in split:
    return None
  match = _SLICE.match(split)
  if not match:
    raise RecordError(f"split {split!r}: expected NAME or NAME[START:STOP] (e.g. "
                      "'train[:64]', 'train[10%:]')")
  return match["name"], match["start"], match["stop"]


def split_name(split: str) -> str:
  """The stored split a split string reads: "train" for "train" and "train[:64]"."""
  parsed = _parse_split(split)
  return split if parsed is None else parsed[0]


def split_slice(split: str, num_records: int) -> slice:
  """The records of its stored split (of `num_records`) that a split string reads:
  slice(0, 64) for "train[:64]", all of them for a plain name. Percent bounds are of
  `num_records`, rounded to the nearest record; negative bounds count from the end."""
  parsed = _parse_split(split)
  if parsed is None:
    return slice(0, num_records)
  name, start_text, stop_text = parsed

  def bound(text: str) -> int | None:
    if not text:
      return None
    if not text.endswith("%"):
      return int(text)
    percent = int(text[:-1])
    if not -100 <= percent <= 100:
      raise RecordError(f"split {split!r}: {percent}% is not a part of the split")
    return round(num_records * percent / 100)

  start, stop, _ = slice(bound(start_text), bound(stop_text)).indices(num_records)
  if stop <= start:
    raise RecordError(f"split {split!r} selects no records of the {num_records} in {name!r}")
  return slice(start, stop)


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
  `optional` names those of `modalities` that a record may lack (read where the record
  has them: a job deriving tokens from a field that only some records hold).
  """

  def __init__(self, directories: str | Sequence[str], split: str = "train",
               modalities: Sequence[str] | None = None, validate: bool = True,
               optional: Sequence[str] = ()):
    directories = [directories] if isinstance(directories, (str, os.PathLike)) else \
        list(directories)
    if not directories:
      raise ValueError("RecordSource needs at least one dataset directory")
    self.split = split
    self.stores = [_Store(str(d), split_name(split)) for d in directories]
    # "train[:64]": record i of this source is record start + i of the stored split.
    self._part = split_slice(split, self.stores[0].num_records)
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
    self._required = set(modalities or ()) - set(optional)

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
    return self._part.stop - self._part.start

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range [0, {len(self)}) of split {self.split!r}")
    index += self._part.start  # the stored record's index, which errors name
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
    # A record that holds nothing is the absent sample of a side-by-side store (the
    # instruction dataset's edited/ records of tasks other than edits, a token record
    # of a sample without the tokenized field, a failed pseudo-label): the writer stores
    # one only when asked to (`write_shard(allow_empty=True)`), so reading it back is no
    # error. What a reader requires is checked above (`missing`), and every field a
    # record does hold is validated as strictly as ever.
    if self.validate and sample:
      validate_sample(sample, path=path, record=index)
    return sample

  def __iter__(self) -> Iterator[dict[str, Any]]:
    for index in range(len(self)):
      yield self[index]

  def __repr__(self) -> str:
    dirs = ", ".join(store.directory for store in self.stores)
    return f"RecordSource([{dirs}], split={self.split!r}, n={len(self)})"
