"""What the dataset converters (`ingest_coco`, `ingest_ade20k`, `ingest_tfds`) share.

* `check_image`: an image's bytes, fully decoded once so a corrupt file fails now, by
  name, and kept as they are (`EncodedImage`), as `fourm ingest` keeps photos.
* The EXIF frame. fourm decodes pixels upright (`record_codec.decode_image` applies the
  EXIF orientation), but benchmark labels were drawn on the pixels as stored: COCO's
  width/height and boxes, ADE20K's annotation PNGs and every TensorFlow-based reader
  ignore EXIF. Labels therefore follow the pixels through the same transpose
  (`label_orientation`, `orient_map`, `orient_boxes`) instead of the bytes being
  re-encoded. A label whose size matches the upright picture (and not the stored one)
  was drawn upright and is left alone.
* `tidy_boxes`: boxes clipped to the image and zero-area ones dropped, both counted.
* `write_dataset`: splits cut into shards; after each shard a small sidecar records its
  count, modality stats and counters, so a conversion killed after hours resumes at the
  first missing shard. `dataset_info.json` is written last, as everywhere in fourm, and an
  existing dataset is never overwritten.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from fourm.data import record_codec, records
from fourm.errors import UsageError

_KEEP_BYTES = {"JPEG": "jpeg", "PNG": "png"}
_ORIENTATION_TAG = 0x0112
# EXIF orientations that swap width and height (transpose, rotations by 90 degrees).
_SWAPS_AXES = (5, 6, 7, 8)


@dataclasses.dataclass(frozen=True)
class CheckedImage:
  """An image that decodes, as stored bytes, with the frame fourm will decode it in."""
  image: records.EncodedImage
  raw_hw: tuple[int, int]   # (height, width) of the pixels as stored
  orientation: int          # the EXIF orientation `decode_image` applies (1: none)

  @property
  def upright_hw(self) -> tuple[int, int]:
    h, w = self.raw_hw
    return (w, h) if self.orientation in _SWAPS_AXES else (h, w)


def check_image(data: bytes, *, path: str, record: int | None = None,
                field: str = "rgb") -> CheckedImage:
  """Decodes `data` fully (refusing what `fourm ingest` refuses); JPEG and PNG bytes are
  kept as they are, anything else becomes a PNG of its pixels as stored."""
  def fail(message: str):
    raise records.RecordError(message, path=path, record=record, field=field)

  try:
    # Over PIL's pixel limit (a guard against decompression bombs) PIL only warns, up to
    # twice the limit, and then decodes a picture of gigabytes: refused here, like any
    # bad image, whichever side of twice the limit it falls.
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
    with image:
      image_format = image.format
      image.load()
      pixels = record_codec.to_rgb8(image)
      raw_hw = (image.height, image.width)
      orientation = int(image.getexif().get(_ORIENTATION_TAG, 1))
  except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
    fail(f"too large ({error}); downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS (now "
         f"{Image.MAX_IMAGE_PIXELS:,}) if you trust it")
  except Exception as error:  # noqa: BLE001 - PIL raises many types on bad data
    fail(f"cannot decode image ({type(error).__name__}: {error})")
  if orientation not in range(1, 9):
    orientation = 1  # PIL's exif_transpose ignores values outside 1..8 too
  if image_format not in _KEEP_BYTES:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    # The PNG carries no EXIF: it decodes in the stored frame.
    return CheckedImage(records.EncodedImage(buffer.getvalue(), "png"), raw_hw, 1)
  return CheckedImage(records.EncodedImage(data, _KEEP_BYTES[image_format]), raw_hw,
                      orientation)


def label_orientation(image: CheckedImage, label_hw: tuple[int, int], *, path: str,
                      record: int | None, field: str, label: str = "the label") -> int:
  """The orientation to apply to a label drawn in a frame of size `label_hw`: the image's
  own when the label matches the stored pixels (the usual case), none when it matches
  only the upright picture; a label matching neither is a `RecordError`."""
  label_hw = tuple(int(n) for n in label_hw)
  if label_hw == image.raw_hw:
    return image.orientation
  if label_hw == image.upright_hw:
    return 1
  raise records.RecordError(
      f"{label} has size {label_hw[0]}x{label_hw[1]} (height x width) but the image is "
      f"{image.raw_hw[0]}x{image.raw_hw[1]}", path=path, record=record, field=field)


def orient_map(array: np.ndarray, orientation: int) -> np.ndarray:
  """A dense [H, W, ...] label map through the transpose PIL's `exif_transpose` applies
  for `orientation` (the numpy twin of its FLIP / ROTATE / TRANSPOSE methods)."""
  if orientation == 2:
    array = array[:, ::-1]
  elif orientation == 3:
    array = array[::-1, ::-1]
  elif orientation == 4:
    array = array[::-1]
  elif orientation == 5:
    array = array.swapaxes(0, 1)
  elif orientation == 6:
    array = np.rot90(array, -1)
  elif orientation == 7:
    array = np.rot90(array, 2).swapaxes(0, 1)
  elif orientation == 8:
    array = np.rot90(array, 1)
  return np.ascontiguousarray(array)


def orient_boxes(boxes: np.ndarray, orientation: int) -> np.ndarray:
  """Normalized (xmin, ymin, xmax, ymax) boxes through the same transpose as `orient_map`."""
  if orientation == 1 or not len(boxes):
    return boxes
  x0, y0, x1, y1 = boxes.T
  # Where each raw corner lands in the upright picture, as (x, y) in [0, 1].
  move = {2: lambda x, y: (1 - x, y), 3: lambda x, y: (1 - x, 1 - y),
          4: lambda x, y: (x, 1 - y), 5: lambda x, y: (y, x),
          6: lambda x, y: (1 - y, x), 7: lambda x, y: (1 - y, 1 - x),
          8: lambda x, y: (y, 1 - x)}[orientation]
  (ax, ay), (bx, by) = move(x0, y0), move(x1, y1)
  return np.stack([np.minimum(ax, bx), np.minimum(ay, by),
                   np.maximum(ax, bx), np.maximum(ay, by)], axis=1).astype(boxes.dtype)


def tidy_boxes(boxes: np.ndarray, classes: list[str], counts: Counter) -> dict[str, Any]:
  """Normalized xyxy boxes -> a `det` value: clipped to [0, 1] (counted as
  `boxes_clipped`), those left with no area dropped (counted as `boxes_empty`)."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  clipped = np.clip(boxes, 0.0, 1.0)
  counts["boxes_clipped"] += int((clipped != boxes).any(axis=1).sum())
  keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
  counts["boxes_empty"] += int((~keep).sum())
  return {"boxes": clipped[keep].astype(np.float32),
          "classes": [c for c, k in zip(classes, keep) if k]}


# ---------------------------------------------------------------------------------------
# Writing, resumably

_PLAN_FILE = ".fourm_convert.json"


def _sidecar(out: str, shard: str) -> str:
  return os.path.join(out, f".{shard}.done.json")


def _write_json(path: str, value: Any) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(path + ".tmp", path)


def start_output(out: str, plan: Mapping[str, Any]) -> None:
  """Refuses an `out` that holds a finished dataset, or anything but an unfinished
  conversion of the same `plan` (JSON-able: source, split sizes, shard size)."""
  if os.path.exists(os.path.join(out, records.INFO_FILE)):
    raise UsageError(f"{out} already holds a dataset; choose a new --out directory")
  plan_path = os.path.join(out, _PLAN_FILE)
  plan = json.loads(json.dumps(plan))  # as it reads back (tuples become lists)
  if os.path.exists(plan_path):
    with open(plan_path) as f:
      if json.load(f) != plan:
        raise UsageError(f"{out} holds an unfinished conversion of other data (or other "
                         "options); remove it or choose a new --out directory")
    return
  if os.path.isdir(out) and os.listdir(out):
    raise UsageError(f"{out} is not empty; choose a new --out directory")
  os.makedirs(out, exist_ok=True)
  _write_json(plan_path, plan)


# `convert(split, indices, counts)` yields the samples of those records of the split,
# adding what it skipped or changed to `counts`.
Converter = Callable[[str, range, Counter], Iterator[Mapping[str, Any]]]


def _counted(samples: Iterator[Mapping[str, Any]], bar) -> Iterator[Mapping[str, Any]]:
  for sample in samples:
    yield sample
    bar.update(1)


def write_dataset(out: str, name: str, split_sizes: Mapping[str, int], convert: Converter, *,
                  plan: Mapping[str, Any], metadata: Mapping[str, Any],
                  records_per_shard: int = 1000, progress: bool = True,
                  log: Callable[[str], None] = print) -> records.DatasetInfo:
  """Writes every split in shards of about `records_per_shard`, skipping the shards an
  interrupted run of the same `plan` finished, then `dataset_info.json`. The counters of
  all shards are summed per split into `metadata["counts"]` and logged."""
  if records_per_shard < 1:
    raise UsageError(f"records_per_shard must be positive, got {records_per_shard}")
  empty = [split for split, size in split_sizes.items() if size == 0]
  if empty or not split_sizes:
    raise UsageError(f"{name}: no records to convert in splits {empty or list(split_sizes)}")
  start_output(out, {**plan, "splits": dict(split_sizes), "records_per_shard": records_per_shard})
  splits, stats, counts = {}, [], {}
  total = sum(split_sizes.values())
  bar = tqdm(total=total, unit="record", disable=not progress, desc=f"convert {name}")
  resumed = 0
  for split, size in split_sizes.items():
    ranges = records.split_into_shards(size, records_per_shard)
    split_counts: Counter = Counter()
    for k, indices in enumerate(ranges):
      shard = records.shard_name(split, k, len(ranges))
      path, sidecar = os.path.join(out, shard), _sidecar(out, shard)
      if os.path.exists(path) and os.path.exists(sidecar):
        with open(sidecar) as f:
          done = json.load(f)
        resumed += 1
        bar.update(len(indices))
      else:
        shard_counts: Counter = Counter()
        count, shard_stats = records.write_shard(
            path, _counted(convert(split, indices, shard_counts), bar),
            first_record=indices.start)
        if count != len(indices):
          raise RuntimeError(f"{name}: the converter gave {count} samples for the "
                             f"{len(indices)} records of {shard}")  # a bug, not the data's
        done = {"count": count, "stats": shard_stats, "counts": dict(shard_counts)}
        _write_json(sidecar, done)
      splits.setdefault(split, []).append((shard, done["count"]))
      stats.append(done["stats"])
      split_counts.update(done["counts"])
    counts[split] = dict(sorted(split_counts.items()))
  bar.close()
  if resumed:
    log(f"resumed: {resumed} shards were already written by an earlier run")
  for split, entry in counts.items():
    if any(entry.values()):
      log(f"{name} {split}: " + ", ".join(f"{k} {v}" for k, v in entry.items() if v))
  info = records.write_info(out, name, splits, stats, {**metadata, "counts": counts})
  for shards in splits.values():
    for shard, _ in shards:
      os.remove(_sidecar(out, shard))
  os.remove(os.path.join(out, _PLAN_FILE))
  return info
