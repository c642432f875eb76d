"""The on-disk record format: one ArrayRecord record per sample, every modality it has.

A dataset is a directory::

    DIR/dataset_info.json                     # written last: its presence marks a complete dataset
    DIR/train-00000-of-00004.array_record     # ArrayRecord shards, group_size 1 (random access)
    DIR/val-00000-of-00001.array_record

A record is a msgpack map keyed by modality name. Arrays are stored raw with dtype and
shape; text as str; boxes as {"boxes": [N, 4] array, "classes": [str]}; user photos may
stay as their original JPEG/PNG bytes (`EncodedImage`) and are decoded on read. A
modality a sample lacks is absent from its record, never zero-filled.

Several directories with the same splits and record counts can be read side by side
(`RecordSource([world, world_labels])`): this is how pseudo-labels and token records
join the records they were computed from without rewriting them.

Every failure names the file, the record index and the field (`RecordError`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
from array_record.python import array_record_module
from PIL import Image, ImageOps

from fourm import modalities
from fourm.errors import RecordError
from fourm.modalities import Form, Kind

FORMAT_NAME = "fourm-records"
FORMAT_VERSION = 1
INFO_FILE = "dataset_info.json"
# group_size:1 makes every record individually addressable, which the grain pipeline's
# global shuffle needs; zstd (the default codec) keeps float maps compact.
WRITER_OPTIONS = "group_size:1"
READER_OPTIONS = "readahead_buffer_size:0"


@dataclasses.dataclass(frozen=True)
class EncodedImage:
  """A compressed image kept as its original bytes (JPEG/PNG), decoded on read."""
  data: bytes
  format: str


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


# ----------------------------------------------------------------------------- codec
def _pack_value(value: Any) -> Any:
  if isinstance(value, np.ndarray):
    if value.dtype == object:
      raise TypeError("object arrays cannot be stored; use a list of str")
    return {"__nd__": [value.dtype.str, list(value.shape)],
            "data": np.ascontiguousarray(value).tobytes()}
  if isinstance(value, EncodedImage):
    return {"__img__": value.format, "data": value.data}
  if isinstance(value, Mapping):
    return {str(key): _pack_value(value[key]) for key in sorted(value)}
  if isinstance(value, (list, tuple)):
    return [_pack_value(item) for item in value]
  if isinstance(value, (str, bytes, int, float, bool)) or value is None:
    return value
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"cannot store a value of type {type(value).__name__}")


def _unpack_value(value: Any) -> Any:
  if isinstance(value, dict):
    if "__nd__" in value:
      dtype, shape = value["__nd__"]
      return np.frombuffer(value["data"], dtype=np.dtype(dtype)).reshape(shape)
    if "__img__" in value:
      return decode_image(value["data"])
    return {key: _unpack_value(item) for key, item in value.items()}
  if isinstance(value, list):
    return [_unpack_value(item) for item in value]
  return value


def encode_sample(sample: Mapping[str, Any]) -> bytes:
  """Serialises a sample deterministically (keys sorted), so equal samples give equal bytes."""
  return msgpack.packb(_pack_value(dict(sample)), use_bin_type=True)


def decode_sample(data: bytes, *, path: str | None = None, record: int | None = None,
                  keep: Iterable[str] | None = None) -> dict[str, Any]:
  """Parses one record; `keep` limits decoding to the named modalities (others skipped)."""
  try:
    packed = msgpack.unpackb(data, raw=False)
  except Exception as error:  # msgpack raises several unrelated types on garbage
    raise RecordError(f"not a valid record ({type(error).__name__}: {error})",
                      path=path, record=record) from error
  if not isinstance(packed, dict):
    raise RecordError("not a valid record (expected a map of modalities)", path=path,
                      record=record)
  names = packed if keep is None else [name for name in keep if name in packed]
  sample = {}
  for name in names:
    try:
      sample[name] = _unpack_value(packed[name])
    except Exception as error:
      raise RecordError(f"cannot decode ({type(error).__name__}: {error})",
                        path=path, record=record, field=name) from error
  return sample


def decode_image(data: bytes) -> np.ndarray:
  """JPEG/PNG bytes -> uint8 [H, W, 3]; raises on truncated or corrupt data."""
  with Image.open(io.BytesIO(data)) as image:
    image.load()  # forces a full decode now, so truncation is caught here
    # Phone photos store their rotation in EXIF; pixels must come out upright.
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


# ------------------------------------------------------------------------ validation
def validate_field(name: str, value: Any, *, image_hw: tuple[int, int] | None = None,
                   path: str | None = None, record: int | None = None) -> None:
  """Checks one field: a raw modality against its `RawSpec` (dtype, rank, channels,
  ranges), or the token ids of a tokenized modality (`tok_rgb`, ...) against its vocab."""
  def fail(message: str):
    raise RecordError(message, path=path, record=record, field=name)

  if name not in modalities.RAW_MODALITIES and name in modalities.MODALITIES:
    _validate_token_ids(modalities.get(name), value, fail)
    return
  try:
    raw = modalities.get_raw(name)
  except KeyError as error:
    fail(str(error.args[0]))
  if raw.form == Form.TEXT:
    if not isinstance(value, str):
      fail(f"expected text (str), got {type(value).__name__}")
    return
  if raw.form == Form.BOXES:
    _validate_boxes(value, fail)
    return
  if not isinstance(value, np.ndarray):
    fail(f"expected a numpy array, got {type(value).__name__}")
  if value.dtype != np.dtype(raw.dtype):
    fail(f"expected dtype {raw.dtype}, got {value.dtype}")
  if raw.form == Form.VECTOR:
    if value.ndim not in (1, 2):
      fail(f"expected shape [D] or [N, D], got {list(value.shape)}")
    return
  if raw.form == Form.FEATURE_MAP:
    if value.ndim != 3 or value.shape[0] == 0 or value.shape[1] == 0:
      fail(f"expected shape [G, G, D], got {list(value.shape)}")
    if raw.channels is not None and value.shape[2] != raw.channels:
      fail(f"expected {raw.channels} channels, got shape {list(value.shape)}")
    return
  want = "[H, W]" if raw.channels is None else f"[H, W, {raw.channels}]"
  if raw.channels is None and value.ndim != 2:
    fail(f"expected shape {want}, got {list(value.shape)}")
  if raw.channels is not None and (value.ndim != 3 or value.shape[2] != raw.channels):
    fail(f"expected shape {want}, got {list(value.shape)}")
  if value.shape[0] == 0 or value.shape[1] == 0:
    fail(f"empty image of shape {list(value.shape)}")
  if image_hw is not None and tuple(value.shape[:2]) != tuple(image_hw):
    fail(f"size {list(value.shape[:2])} does not match the sample's other images {list(image_hw)}")
  if value.dtype.kind == "f" and not np.isfinite(value).all():
    fail("contains NaN or Inf")


def _validate_token_ids(spec: modalities.ModalitySpec, value: Any, fail) -> None:
  if spec.vocab_size is None or spec.kind not in (Kind.IMAGE_TOKENS, Kind.GLOBAL):
    fail(f"modality {spec.name!r} of kind {spec.kind} is not stored as token ids")
  if not isinstance(value, np.ndarray) or value.dtype != np.int32:
    fail(f"token ids must be an int32 array, got {getattr(value, 'dtype', type(value).__name__)}")
  square = value.ndim == 2 and value.shape[0] == value.shape[1]
  if not (value.ndim == 1 or square) or value.size == 0:
    fail(f"token ids must be [N] or a square grid [G, G], got shape {list(value.shape)}")
  if value.min() < 0 or value.max() >= spec.vocab_size:
    bad = int(value.max() if value.max() >= spec.vocab_size else value.min())
    fail(f"token id {bad} is outside the vocabulary [0, {spec.vocab_size})")


def _validate_boxes(value: Any, fail) -> None:
  if not isinstance(value, Mapping) or set(value) - {"boxes", "classes", "scores"} or \
      not {"boxes", "classes"} <= set(value):
    fail("expected {'boxes': float32 [N, 4], 'classes': [str]} (optional 'scores')")
  boxes, classes = value["boxes"], value["classes"]
  if not isinstance(boxes, np.ndarray) or boxes.dtype != np.float32 or boxes.ndim != 2 \
      or boxes.shape[1] != 4:
    fail(f"boxes must be float32 [N, 4], got {getattr(boxes, 'dtype', type(boxes).__name__)} "
         f"{list(getattr(boxes, 'shape', []))}")
  if len(classes) != len(boxes) or not all(isinstance(c, str) for c in classes):
    fail(f"classes must be {len(boxes)} strings, got {classes!r:.80}")
  if len(boxes) and (not np.isfinite(boxes).all() or boxes.min() < 0 or boxes.max() > 1 or
                     (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
    fail("boxes must be (xmin, ymin, xmax, ymax) within [0, 1] with min <= max")


def validate_sample(sample: Mapping[str, Any], *, path: str | None = None,
                    record: int | None = None) -> None:
  """Validates every field and that all dense images share one size."""
  if not sample:
    raise RecordError("the record holds no modality", path=path, record=record)
  image_hw = None
  for name in sorted(sample):
    value = sample[name]
    raw = modalities.RAW_MODALITIES.get(name)
    hw = None
    if raw is not None and raw.form == Form.IMAGE and isinstance(value, np.ndarray):
      hw = image_hw
    validate_field(name, value, image_hw=hw, path=path, record=record)
    if hw is None and raw is not None and raw.form == Form.IMAGE:
      image_hw = value.shape[:2]


# --------------------------------------------------------------------------- info
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


# -------------------------------------------------------------------------- writing
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


# -------------------------------------------------------------------------- reading
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

  def __getstate__(self):
    # Readers hold file handles: each process (grain worker) opens its own.
    return {**self.__dict__, "_readers": {}}

  def read(self, index: int) -> tuple[bytes, str]:
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
