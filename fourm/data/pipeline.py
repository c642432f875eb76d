"""The grain input pipeline: records -> shuffled, augmented, sharded, static-shape batches.

How the stream is laid out, and why:

* One global stream of sample positions 0, 1, 2, ... Position p of epoch e holds record
  `shuffle(seed + e)[p mod n]` (grain's index shuffle, a fresh permutation each epoch).
* The augmentation of position p draws from `np.random.default_rng([seed, p])`: the
  random draw is a function of (seed, position), so it does not depend on how many
  processes read the stream or on worker scheduling.
* Process i of P takes positions i, i + P, i + 2P, ...; its k-th batch of B / P samples
  therefore holds positions [k B, (k + 1) B) of the global stream, interleaved. The
  global batch k is the same set of samples on 1 host or on 64.
* A finite stream (`num_epochs` set) is padded up to a whole number of global batches
  with wrapped-around samples marked `meta.valid = False`: every process yields the
  same number of batches and nothing is dropped.
* Resuming needs no iterator state: global batch k depends only on the data, seed,
  batch size and k, so the train loop restarts the stream with
  `iterator(start_batch=step)` at the step of the checkpoint it restored (whose metadata
  records `batches_consumed`). The grain iterator's own state (`get_state()` /
  `set_state()`) is not checkpointed.

A batch is a dict keyed by raw modality name (static shapes), plus `meta` with the
record index, epoch, and validity of each row. Text becomes an object array of str;
boxes become {"boxes": [B, M, 4], "classes": [B, M] str, "valid": [B, M]}.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
from absl import flags
import numpy as np

from fourm.errors import UsageError
from fourm.data import augment as augment_lib
from fourm.data.records import RecordError, RecordSource


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  data: tuple[str, ...]                   # dataset directories, joined side by side
  batch_size: int                         # global batch size (over all processes)
  split: str = "train"
  modalities: tuple[str, ...] | None = None  # raw modalities required; None: all stored
  resolution: int = 64
  seed: int = 0
  shuffle: bool = True
  num_epochs: int | None = None           # None: repeat forever (training)
  augment: bool = True                    # False: center crop, no flip (evaluation)
  crop_scale: tuple[float, float] = (0.8, 1.0)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip_prob: float = 0.5
  max_boxes: int = 64                     # boxes per sample after padding
  process_index: int = 0
  process_count: int = 1
  # Loading a sample is CPU-bound Python (decode, augment): threads fight over the GIL
  # (on 2 cores, 4 threads ran at 2/3 the speed of 1), worker processes scale. Raise
  # read_threads for slow network storage, worker_count for CPU.
  read_threads: int = 1                   # per-process threads that load batches
  worker_count: int = 0                   # grain worker processes (0: none)

  def __post_init__(self):
    if isinstance(self.data, str):
      object.__setattr__(self, "data", (self.data,))
    if not 0 <= self.process_index < self.process_count:
      raise UsageError(f"process_index {self.process_index} not in [0, {self.process_count})")
    if self.batch_size <= 0 or self.batch_size % self.process_count:
      raise UsageError(f"global batch size {self.batch_size} must be a positive multiple of "
                       f"the process count {self.process_count}")
    if self.num_epochs is not None and self.num_epochs <= 0:
      raise UsageError(f"num_epochs must be positive or None, got {self.num_epochs}")

  @property
  def per_process_batch(self) -> int:
    return self.batch_size // self.process_count

  @property
  def augment_config(self) -> augment_lib.AugmentConfig:
    return augment_lib.AugmentConfig(
        resolution=self.resolution, train=self.augment, crop_scale=self.crop_scale,
        crop_ratio=self.crop_ratio, flip_prob=self.flip_prob)


SampleTransform = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


class _LoadSample(grain.transforms.MapWithIndex):
  """Global position -> (record of that position, augmented with rng(seed, position),
  then transformed, e.g. masked, with rng(seed, position, 1))."""

  def __init__(self, source: RecordSource, order: grain.MapDataset, num_real: int,
               config: PipelineConfig, transform: SampleTransform | None):
    self.source, self.order, self.num_real, self.config = source, order, num_real, config
    self.augment_config = config.augment_config
    self.transform = transform

  def map_with_index(self, position: int, _):
    num_records = len(self.source)
    valid = position < self.num_real
    if not valid:  # padding of a finite stream: wrap around, marked invalid
      position %= self.num_real
    record = int(self.order[position])
    rng = np.random.default_rng([self.config.seed, position])
    sample = augment_lib.augment(self.source[record], self.augment_config, rng)
    if self.transform is not None:
      try:
        sample = self.transform(sample, np.random.default_rng([self.config.seed, position, 1]))
      except RecordError as error:  # name the record the transform could not handle
        raise RecordError(str(error), path=",".join(self.config.data), record=record) from error
    sample["meta"] = {"record": np.int64(record), "epoch": np.int32(position // num_records),
                      "valid": np.bool_(valid)}
    return sample


def collate(samples: Sequence[Mapping[str, Any]], max_boxes: int) -> dict[str, Any]:
  """Stacks samples into a static-shape batch (see the module docstring).

  Structural, so it serves raw samples and masked ones ({modality: {key: array}}) alike:
  text becomes an object array, boxes are padded to `max_boxes`, nested dicts recurse.
  """
  def stack(values: list, path: str) -> Any:
    first = values[0]
    if isinstance(first, str):
      return np.array(values, dtype=object)
    if isinstance(first, Mapping) and "boxes" in first and "classes" in first:
      return _pad_boxes(values, max_boxes, [s["meta"] for s in samples], path)
    if isinstance(first, Mapping):
      return {key: stack([v[key] for v in values], f"{path}.{key}") for key in first}
    return np.stack(values)

  return {name: stack([sample[name] for sample in samples], name) for name in samples[0]}


def _pad_boxes(dets, max_boxes: int, metas, field: str) -> dict[str, np.ndarray]:
  boxes = np.zeros((len(dets), max_boxes, 4), np.float32)
  classes = np.full((len(dets), max_boxes), "", dtype=object)
  valid = np.zeros((len(dets), max_boxes), bool)
  for row, (det, meta) in enumerate(zip(dets, metas)):
    count = len(det["boxes"])
    if count > max_boxes:
      raise RecordError(f"{count} boxes after augmentation exceed max_boxes={max_boxes}; "
                        "raise PipelineConfig.max_boxes", record=int(meta["record"]),
                        field=field)
    boxes[row, :count] = det["boxes"]
    classes[row, :count] = det["classes"]
    valid[row, :count] = True
  return {"boxes": boxes, "classes": classes, "valid": valid}


def unbatch(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The inverse of `collate`: a batch back into per-sample dicts (padding boxes removed)."""
  size = len(batch["meta"]["record"])
  samples = []
  for row in range(size):
    sample: dict[str, Any] = {}
    for name, value in batch.items():
      if name == "meta":
        sample[name] = {key: v[row].item() for key, v in value.items()}
      elif isinstance(value, Mapping):  # boxes
        keep = value["valid"][row]
        sample[name] = {"boxes": value["boxes"][row][keep],
                        "classes": [str(c) for c in value["classes"][row][keep]]}
      elif value.dtype == object:
        sample[name] = str(value[row])
      else:
        sample[name] = value[row]
    samples.append(sample)
  return samples


def _ensure_absl_flags_parsed() -> None:
  # grain's worker processes read absl flags; programs not started by absl.app (a plain
  # script, a notebook, pytest) never parse them, and grain would refuse to start.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class Pipeline:
  """Builds the per-process stream of batches; iterate it or call `iterator()`.

  `transform(sample, rng)`, if given, runs on every augmented sample (the masking
  sampler plugs in here); its rng stream is independent of the augmentation's.
  It must be picklable when `worker_count > 0`.
  """

  def __init__(self, config: PipelineConfig, transform: SampleTransform | None = None):
    self.config = config
    self.source = RecordSource(config.data, config.split, config.modalities)
    num_records = len(self.source)
    if num_records == 0:
      raise RecordError(f"split {config.split!r} has no records", path=",".join(config.data))
    order = grain.MapDataset.range(num_records)
    if config.shuffle:
      order = order.shuffle(seed=config.seed)
    order = order.repeat(config.num_epochs)  # reshuffles each epoch (seed + epoch)
    if config.num_epochs is None:
      self.num_positions = sys.maxsize
      num_real = sys.maxsize
    else:
      num_real = num_records * config.num_epochs
      # Pad to whole global batches so every process yields the same number of batches.
      self.num_positions = -(-num_real // config.batch_size) * config.batch_size
    positions = grain.MapDataset.range(self.num_positions)
    samples = positions.map_with_index(
        _LoadSample(self.source, order, num_real, config, transform))
    self.samples = samples[config.process_index::config.process_count]

  @property
  def num_batches(self) -> int | None:
    """Batches per process for a finite stream; None when it repeats forever."""
    if self.config.num_epochs is None:
      return None
    return self.num_positions // self.config.batch_size

  def dataset(self, start_batch: int = 0) -> grain.IterDataset:
    """The stream from global batch `start_batch` on.

    Batch k is the same set of samples on any number of processes, so a run resumed
    after k steps, on this process count or another, continues with `start_batch=k`.
    """
    config = self.config
    if start_batch < 0 or (self.num_batches is not None and start_batch > self.num_batches):
      raise UsageError(f"start_batch {start_batch} is outside the stream's "
                       f"{self.num_batches} batches")
    # Batch before going iterable: each element is then a whole batch, so worker
    # processes hand out complete batches in order and the batches do not depend on
    # the number of workers (grain splits an iterable stream across workers).
    batches = self.samples.batch(config.per_process_batch, drop_remainder=False,
                                 batch_fn=functools.partial(collate, max_boxes=config.max_boxes))
    if start_batch:
      batches = batches[start_batch:]
    read = grain.ReadOptions(num_threads=config.read_threads, prefetch_buffer_size=4)
    ds = batches.to_iter_dataset(read)
    if config.worker_count > 0:
      _ensure_absl_flags_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_count))
    return ds

  def iterator(self, start_batch: int = 0) -> grain.DatasetIterator:
    """A grain iterator over the stream from global batch `start_batch` on."""
    return iter(self.dataset(start_batch))

  def __iter__(self):
    return self.iterator()
