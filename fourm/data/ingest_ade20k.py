"""ADE20K as released for the SceneParsing benchmark (`ADEChallengeData2016/`) -> a fourm
records dataset with `rgb`, `semseg` and `key` per image, for segmentation fine-tuning.

The layout is `images/{training,validation}/*.jpg` and `annotations/{same}/*.png`, one
single-channel PNG per image whose values are class ids: 0 is "other" (unscored by the
benchmark), 1..150 the classes of `ADE20K_CLASSES`. Choices, and why:

* `rgb` keeps the JPEG bytes; `semseg` stores the ids exactly as the PNG holds them, so
  the metadata says `semseg_classes` (151 names, "other" first) and
  `semseg_ignore_index` = 0: a head either scores 151 ids ignoring 0, or shifts them
  down (reduce_zero_label) to 150 classes, as mmseg does. Nothing here decides that.
* Every annotation is read fully and checked now: its size must be the image's, its ids
  at most 150. A failure is one `RecordError` naming the PNG, the record and the field.
* Image and annotation files must pair up one to one: a stray file on either side means
  a damaged copy, and is an error rather than a silent omission.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from fourm.data import ingest_common, records
from fourm.errors import UsageError

# The benchmark's class names, ids 1..150: the first name of each line of its public
# objectInfo150 list, but "television receiver" (for "television, television receiver,
# ..."), the short name its 2017 instance list and common tooling use.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage",
    "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150
SEMSEG_CLASSES = ("other",) + ADE20K_CLASSES
IGNORE_INDEX = 0

# fourm split -> the folder name under images/ and annotations/.
ADE20K_SPLITS = {"train": "training", "val": "validation"}
ROOT_NAME = "ADEChallengeData2016"


def find_root(path: str) -> str:
  """`path` itself, or its `ADEChallengeData2016/` (where the archive unpacks)."""
  nested = os.path.join(path, ROOT_NAME)
  return nested if os.path.isdir(nested) else path


def _stems(folder: str, extension: str) -> dict[str, str]:
  if not os.path.isdir(folder):
    raise records.RecordError("no such folder", path=folder)
  return {os.path.splitext(name)[0]: name for name in os.listdir(folder)
          if name.lower().endswith(extension)}


def pair_files(root: str, split: str) -> list[tuple[str, str]]:
  """(image path, annotation path) of a split, sorted by file name; unpaired files are an
  error naming one of them."""
  folder = ADE20K_SPLITS[split]
  image_dir = os.path.join(root, "images", folder)
  label_dir = os.path.join(root, "annotations", folder)
  images, labels = _stems(image_dir, ".jpg"), _stems(label_dir, ".png")
  if not images:
    raise records.RecordError("no .jpg images", path=image_dir)
  no_label = sorted(set(images) - set(labels))
  if no_label:
    raise records.RecordError(
        f"has no annotation {no_label[0]}.png in {label_dir} ({len(no_label)} images lack "
        "one)", path=os.path.join(image_dir, images[no_label[0]]), field="semseg")
  no_image = sorted(set(labels) - set(images))
  if no_image:
    raise records.RecordError(
        f"has no image {no_image[0]}.jpg in {image_dir} ({len(no_image)} annotations lack "
        "one)", path=os.path.join(label_dir, labels[no_image[0]]), field="rgb")
  return [(os.path.join(image_dir, images[stem]), os.path.join(label_dir, labels[stem]))
          for stem in sorted(images)]


def read_annotation(path: str, record: int | None = None) -> np.ndarray:
  """A class-id PNG -> uint8 [H, W]; ids beyond 150, or a PNG that is not one channel of
  8 bits, are a `RecordError`."""
  def fail(message: str):
    raise records.RecordError(message, path=path, record=record, field="semseg")

  try:
    with Image.open(path) as image:
      image.load()
      mode = image.mode
      ids = np.asarray(image)
  except Exception as error:  # noqa: BLE001 - PIL raises many types on bad data
    fail(f"cannot decode annotation ({type(error).__name__}: {error})")
  # "P" keeps palette indices, which are the ids; anything else would be colours or 16 bits.
  if mode not in ("L", "P") or ids.dtype != np.uint8 or ids.ndim != 2:
    fail(f"expected a single-channel 8-bit PNG of class ids, got mode {mode} "
         f"{ids.dtype} {list(ids.shape)}")
  if ids.size and int(ids.max()) > len(ADE20K_CLASSES):
    bad = int(ids.max())
    fail(f"class id {bad} is beyond ADE20K's {len(ADE20K_CLASSES)} classes (ids 0..150, "
         f"0 = other); {int((ids > len(ADE20K_CLASSES)).sum())} pixels have such ids")
  return ids


def ade20k_sample(image_path: str, label_path: str, record: int,
                  counts: Counter) -> dict[str, Any]:
  with open(image_path, "rb") as f:
    image = ingest_common.check_image(f.read(), path=image_path, record=record)
  ids = read_annotation(label_path, record)
  orientation = ingest_common.label_orientation(
      image, ids.shape, path=label_path, record=record, field="semseg",
      label="the annotation")
  counts["exif_reoriented"] += int(orientation != 1)
  return {"rgb": image.image, "semseg": ingest_common.orient_map(ids, orientation),
          "key": os.path.basename(image_path)}


def ingest_ade20k(root: str, out: str, splits: Sequence[str] = ("train", "val"),
                  records_per_shard: int = 1000, progress: bool = True,
                  log: Callable[[str], None] = print) -> records.DatasetInfo:
  """Converts `root` (`ADEChallengeData2016/` or the folder holding it) into a records
  dataset at `out` with fourm splits `splits` ("train", "val")."""
  splits = (splits,) if isinstance(splits, str) else tuple(splits)
  unknown = [s for s in splits if s not in ADE20K_SPLITS]
  if unknown or not splits:
    raise UsageError(f"ADE20K splits {unknown or list(splits)}; choose from "
                     f"{', '.join(ADE20K_SPLITS)}")
  if not os.path.isdir(root):
    raise records.RecordError("no such ADE20K folder", path=root)
  root = find_root(root)
  files = {split: pair_files(root, split) for split in splits}

  def convert(split: str, indices: range, counts: Counter) -> Iterator[dict[str, Any]]:
    for index in indices:
      yield ade20k_sample(*files[split][index], index, counts)

  metadata = {"created_by": "fourm.data.ingest_ade20k", "source": os.path.abspath(root),
              "semseg_classes": list(SEMSEG_CLASSES), "semseg_ignore_index": IGNORE_INDEX,
              "num_images": {s: len(files[s]) for s in splits}}
  plan = {"converter": "ade20k", "source": os.path.abspath(root)}
  return ingest_common.write_dataset(
      out, "ade20k", {s: len(files[s]) for s in splits}, convert, plan=plan,
      metadata=metadata, records_per_shard=records_per_shard, progress=progress, log=log)
