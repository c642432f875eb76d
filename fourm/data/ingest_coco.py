"""COCO as downloaded (`annotations/instances_{split}2017.json` + `{split}2017/*.jpg`) ->
a fourm records dataset with `rgb`, `det` and `key` per image, for detection fine-tuning.

Choices, and why:

* `rgb` keeps the original JPEG bytes (`EncodedImage`), as `fourm ingest` does.
* `det` boxes are COCO's [x, y, w, h] pixels turned into (xmin, ymin, xmax, ymax) in
  [0, 1] by the width/height the JSON gives for the image (the frame the boxes were drawn
  in), clipped to the image; boxes left with no area are dropped. Both are counted.
* Crowd regions (`iscrowd=1`) are not training targets (COCO's evaluation ignores them
  too): they are left out and counted.
* Classes are stored by name; `det_classes` in the metadata lists the names in COCO
  category-id order, so a head's contiguous ids 0..79 are their positions (and
  `det_category_ids` maps them back to COCO's ids, e.g. for pycocotools).
* Images without annotations are kept, with no boxes: they are negatives for a detector.
* Records are sorted by file name; `key` is the file name, which in COCO holds the id.
* Bad input (a missing image, a box that is not four numbers, an annotation naming an
  image or category the file does not define) is one `RecordError` naming the file, the
  record (the index in the JSON list) and the field. Nothing is dropped silently: every
  count is in `metadata["counts"]` and the log.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from fourm.data import ingest_common, records
from fourm.errors import UsageError

# fourm split -> the COCO split name (the folder is f"{name}{year}").
COCO_SPLITS = {"train": "train", "val": "val"}


def annotation_path(root: str, split: str, year: str = "2017") -> str:
  return os.path.join(root, "annotations", f"instances_{COCO_SPLITS[split]}{year}.json")


def image_folder(root: str, split: str, year: str = "2017") -> str:
  return os.path.join(root, f"{COCO_SPLITS[split]}{year}")


def _positive_int(value: Any) -> bool:
  # Some COCO-style exporters write 640.0 for 640.
  return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and \
      float(value).is_integer()


class CocoSplit:
  """One instances_*.json, checked: its categories (id order), its images (file-name
  order) and each image's annotations (file order)."""

  def __init__(self, path: str):
    self.path = path
    if not os.path.exists(path):
      raise records.RecordError("no such COCO annotation file", path=path)
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      raise records.RecordError(f"invalid JSON ({error})", path=path) from None
    if not isinstance(data, dict):
      raise records.RecordError("expected a JSON object with 'images', 'annotations' and "
                                "'categories'", path=path)
    for key in ("images", "annotations", "categories"):
      if not isinstance(data.get(key), list):
        raise records.RecordError(f"expected a list under {key!r}", path=path, field=key)
    self.categories = self._categories(data["categories"])
    self.images = self._images(data["images"])
    self.annotations = self._annotations(data["annotations"])

  def _fail(self, message: str, index: int, field: str):
    raise records.RecordError(message, path=self.path, record=index, field=field)

  def _categories(self, entries: list) -> list[tuple[int, str]]:
    seen: dict[int, str] = {}
    for i, entry in enumerate(entries):
      if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or \
          not isinstance(entry.get("name"), str):
        self._fail("a category needs an integer 'id' and a string 'name'", i, "categories")
      if entry["id"] in seen:
        self._fail(f"category id {entry['id']} is defined twice", i, "categories")
      seen[entry["id"]] = entry["name"]
    if not seen:
      raise records.RecordError("no categories", path=self.path, field="categories")
    return sorted(seen.items())

  def _images(self, entries: list) -> list[dict[str, Any]]:
    by_id, names = {}, set()
    for i, entry in enumerate(entries):
      ok = isinstance(entry, dict) and isinstance(entry.get("id"), int) and \
          isinstance(entry.get("file_name"), str) and all(_positive_int(entry.get(k))
                                                          for k in ("width", "height"))
      if not ok:
        self._fail("an image needs an integer 'id', a 'file_name' and positive integer "
                   "'width' and 'height'", i, "images")
      entry = dict(entry, width=int(entry["width"]), height=int(entry["height"]))
      if entry["id"] in by_id:
        self._fail(f"image id {entry['id']} is listed twice", i, "images")
      if entry["file_name"] in names:
        self._fail(f"file {entry['file_name']!r} is listed twice", i, "images")
      by_id[entry["id"]] = entry
      names.add(entry["file_name"])
    return sorted(by_id.values(), key=lambda entry: entry["file_name"])

  def _annotations(self, entries: list) -> dict[int, list[dict[str, Any]]]:
    image_ids = {entry["id"] for entry in self.images}
    category_ids = {cid for cid, _ in self.categories}
    by_image = defaultdict(list)
    for i, entry in enumerate(entries):
      if not isinstance(entry, dict):
        self._fail("an annotation must be a JSON object", i, "annotations")
      which = f"annotation id {entry.get('id')}"
      if entry.get("image_id") not in image_ids:
        self._fail(f"{which} refers to image_id {entry.get('image_id')!r}, which no entry "
                   "of 'images' has", i, "image_id")
      if entry.get("category_id") not in category_ids:
        self._fail(f"{which} refers to category_id {entry.get('category_id')!r}, which no "
                   "entry of 'categories' has", i, "category_id")
      box = entry.get("bbox")
      if not (isinstance(box, list) and len(box) == 4 and
              all(isinstance(v, (int, float)) and math.isfinite(v) for v in box) and
              box[2] >= 0 and box[3] >= 0):
        self._fail(f"{which}: bbox must be [x, y, width, height] (finite, width and height "
                   f">= 0), got {box!r:.80}", i, "bbox")
      if entry.get("iscrowd", 0) not in (0, 1, True, False):
        self._fail(f"{which}: iscrowd must be 0 or 1, got {entry['iscrowd']!r}", i, "iscrowd")
      by_image[entry["image_id"]].append(entry)
    return by_image


def coco_sample(split: CocoSplit, index: int, folder: str, class_of: dict[int, str],
                counts: Counter) -> dict[str, Any]:
  """The record of the split's `index`-th image (file-name order)."""
  entry = split.images[index]
  path = os.path.join(folder, entry["file_name"])
  if not os.path.exists(path):
    raise records.RecordError(
        f"listed in {os.path.basename(split.path)} (image id {entry['id']}) but not found",
        path=path, record=index, field="rgb")
  with open(path, "rb") as f:
    image = ingest_common.check_image(f.read(), path=path, record=index)
  orientation = ingest_common.label_orientation(
      image, (entry["height"], entry["width"]), path=path, record=index, field="rgb",
      label=f"{os.path.basename(split.path)} (image id {entry['id']})")
  boxes, classes, crowd = [], [], 0
  for annotation in split.annotations.get(entry["id"], ()):
    if annotation.get("iscrowd", 0):
      crowd += 1
      continue
    x, y, w, h = annotation["bbox"]
    boxes.append((x / entry["width"], y / entry["height"],
                  (x + w) / entry["width"], (y + h) / entry["height"]))
    classes.append(class_of[annotation["category_id"]])
  det = ingest_common.tidy_boxes(np.asarray(boxes, np.float64), classes, counts)
  det["boxes"] = ingest_common.orient_boxes(det["boxes"], orientation)
  counts["crowd_skipped"] += crowd
  counts["exif_reoriented"] += int(orientation != 1)
  counts["images_without_boxes"] += int(len(det["boxes"]) == 0)
  return {"rgb": image.image, "det": det, "key": entry["file_name"]}


def ingest_coco(root: str, out: str, splits: Sequence[str] = ("train", "val"),
                year: str = "2017", records_per_shard: int = 1000, progress: bool = True,
                log: Callable[[str], None] = print) -> records.DatasetInfo:
  """Converts the COCO folder `root` (holding `annotations/` and `{split}{year}/`) into a
  records dataset at `out` with fourm splits `splits` ("train", "val")."""
  splits = (splits,) if isinstance(splits, str) else tuple(splits)
  unknown = [s for s in splits if s not in COCO_SPLITS]
  if unknown or not splits:
    raise UsageError(f"COCO splits {unknown or list(splits)}; choose from "
                     f"{', '.join(COCO_SPLITS)}")
  if not os.path.isdir(root):
    raise records.RecordError("no such COCO folder", path=root)
  parsed, folders = {}, {}
  for split in splits:
    folders[split] = image_folder(root, split, year)
    if not os.path.isdir(folders[split]):
      raise records.RecordError("no such image folder", path=folders[split])
    parsed[split] = CocoSplit(annotation_path(root, split, year))
  first = parsed[splits[0]]
  for split in splits[1:]:
    if parsed[split].categories != first.categories:
      raise records.RecordError(f"its categories differ from those of {first.path}",
                                path=parsed[split].path, field="categories")
  class_of = dict(first.categories)
  not_listed = {}
  for split in splits:
    listed = {entry["file_name"] for entry in parsed[split].images}
    present = set(os.listdir(folders[split]))
    absent = sorted(name for name in listed - present
                    if not os.path.exists(os.path.join(folders[split], name)))
    if absent:  # found now, before hours of converting, rather than at that record
      index = [entry["file_name"] for entry in parsed[split].images].index(absent[0])
      raise records.RecordError(
          f"listed in {os.path.basename(parsed[split].path)} but not found ({len(absent)} "
          "listed images are missing)", path=os.path.join(folders[split], absent[0]),
          record=index, field="rgb")
    unlisted = sorted(present - listed)
    not_listed[split] = len(unlisted)
    if unlisted:  # the JSON defines the split: left out, but said
      log(f"{folders[split]}: {len(unlisted)} file(s) not listed in "
          f"{os.path.basename(parsed[split].path)} are left out, e.g. {unlisted[:3]}")

  def convert(split: str, indices: range, counts: Counter) -> Iterator[dict[str, Any]]:
    for index in indices:
      yield coco_sample(parsed[split], index, folders[split], class_of, counts)

  metadata = {
      "created_by": "fourm.data.ingest_coco", "source": os.path.abspath(root),
      "coco_year": year,
      "annotation_files": {s: os.path.abspath(parsed[s].path) for s in splits},
      "det_classes": [name for _, name in first.categories],
      "det_category_ids": [cid for cid, _ in first.categories],
      "num_images": {s: len(parsed[s].images) for s in splits},
      "files_not_listed": not_listed,
  }
  plan = {"converter": "coco", "source": os.path.abspath(root), "year": year}
  return ingest_common.write_dataset(
      out, f"coco{year}", {s: len(parsed[s].images) for s in splits}, convert, plan=plan,
      metadata=metadata, records_per_shard=records_per_shard, progress=progress, log=log)
