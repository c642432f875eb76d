"""Prepared tensorflow-datasets builders -> fourm records datasets, without TensorFlow.

Supported: `coco/2014`, `coco/2017` (-> `rgb`, `det`), `scene_parse150` (-> `rgb`,
`semseg`, `instance`), `nyu_depth_v2` (-> `rgb`, `depth`), `imagenet2012` (-> `rgb`,
`label`), each with `key`, and the class lists in the metadata (`det_classes`,
`semseg_classes` + `semseg_ignore_index`, `label_classes`), so the same grain pipeline and
augmentation as pre-training read them.

How the data is read, and why:

* `tfds.data_source(name:version, ..., download=False)` over the builder's array_record
  files. The version is found on disk and always named: given a version, tfds builds the
  reader from the prepared directory's JSON files; without one it runs the builder's
  code, and COCO's code (`'image/id': tf.int64`) needs TensorFlow. `download=False`
  because a converter must never start a download of hundreds of GB. Preparing a
  dataset (`tfds build`) runs the builders' code and does need TensorFlow; reading it
  here does not.
* Images are read with `tfds.decode.SkipDecoding()`, so `rgb` keeps the prepared JPEG/PNG
  bytes as `fourm ingest` keeps photos, and fourm decodes (and checks) them itself: the
  numpy decoder of tfds (PIL's `np.asarray`) would hand back a CMYK JPEG as 4 channels
  and ignore EXIF orientation.
* Sequence features come back from the numpy decoder as lists (of scalars or arrays),
  empty lists when an image has no objects; Text as bytes; ClassLabel as int64 ids, whose
  names the builder's ClassLabel holds.
* Caveats of the builders themselves, kept visible in the metadata:
  - `scene_parse150` stores the 2017 Places Challenge *instance* annotations
    (`annotations_instance`: red = one of 100 object categories, green = instance id),
    not the 150-class SceneParsing maps. `semseg` is therefore its red channel with
    `semseg_classes` = "other" + those 100 names (stuff such as wall, sky, floor is 0),
    and `instance` its green channel. For the 150-class benchmark convert
    `ADEChallengeData2016/` with `ingest_ade20k`.
  - `scene_parse150`'s "test" split is ADE20K's validation set: it becomes "val".
  - `imagenet2012`'s class names are WordNet ids (n01440764, ...); its test split has
    no labels (-1): such records have no `label`, and are counted.
  - `nyu_depth_v2` depth is float16 metres; it is stored as float32 with 0 = missing
    (a non-finite value becomes 0 and is counted).
* Every failure names the prepared directory and split, the record index and the field;
  what was skipped, clipped or changed is counted in `metadata["counts"]` and logged.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from fourm.data import ingest_common, records
from fourm.errors import UsageError

# The 100 object categories of the Places Challenge 2017 instance task, ids 1..100 (its
# public instanceInfo100 list), which tfds' scene_parse150 annotations hold.
ADE20K_INSTANCE_CLASSES = (
    "bed", "windowpane", "cabinet", "person", "door", "table", "curtain", "chair", "car",
    "painting", "sofa", "shelf", "mirror", "armchair", "seat", "fence", "desk", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "box", "column", "signboard",
    "chest of drawers", "counter", "sink", "fireplace", "refrigerator", "stairs", "case",
    "pool table", "pillow", "screen door", "bookcase", "coffee table", "toilet", "flower",
    "book", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "arcade machine", "bus", "towel", "light", "truck",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "apparel", "pole", "bannister", "ottoman", "bottle", "van", "ship", "fountain",
    "washer", "plaything", "stool", "barrel", "basket", "bag", "minibike", "oven", "ball",
    "food", "step", "trade name", "microwave", "pot", "animal", "bicycle", "dishwasher",
    "screen", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan",
    "fan", "plate", "monitor", "bulletin board", "radiator", "glass", "clock", "flag",
)
assert len(ADE20K_INSTANCE_CLASSES) == 100

# (example, classes, path=, record=, key=, counts=) -> sample
ExampleConverter = Callable[..., dict[str, Any]]


def _text(value: Any, *, path: str, record: int, field: str) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      raise records.RecordError(f"not UTF-8 text: {value[:40]!r}", path=path, record=record,
                                field=field) from None
  return str(value)


def _bytes(value: Any, *, path: str, record: int, field: str) -> bytes:
  if isinstance(value, np.ndarray) and value.dtype == object:
    value = value.item()
  if not isinstance(value, bytes):
    raise records.RecordError(f"expected encoded image bytes, got {type(value).__name__} "
                              "(read it with tfds.decode.SkipDecoding())", path=path,
                              record=record, field=field)
  return value


def _rgb(example: Mapping[str, Any], *, path: str, record: int) -> ingest_common.CheckedImage:
  data = _bytes(example["image"], path=path, record=record, field="rgb")
  return ingest_common.check_image(data, path=path, record=record)


def _column(objects: Mapping[str, Any], name: str, dtype, shape: tuple[int, ...]) -> np.ndarray:
  values = objects[name]
  return np.asarray(values if len(values) else np.zeros((0, *shape)), dtype).reshape(-1, *shape)


def coco_example(example: Mapping[str, Any], classes: Sequence[str], *, path: str,
                 record: int, key: str, counts: Counter) -> dict[str, Any]:
  """A tfds `coco` example (image bytes; `objects` = {bbox (ymin, xmin, ymax, xmax) in
  [0, 1], label, is_crowd, ...}) -> rgb, det (crowd left out), key (the file name)."""
  image = _rgb(example, path=path, record=record)
  objects = example["objects"]
  bbox = _column(objects, "bbox", np.float64, (4,))
  label = _column(objects, "label", np.int64, ())
  crowd = _column(objects, "is_crowd", bool, ())
  if not len(bbox) == len(label) == len(crowd):
    raise records.RecordError(f"objects disagree in length: {len(bbox)} boxes, {len(label)} "
                              f"labels, {len(crowd)} is_crowd", path=path, record=record,
                              field="det")
  if len(label) and (label.min() < 0 or label.max() >= len(classes)):
    raise records.RecordError(f"label {int(label.max())} is outside the builder's "
                              f"{len(classes)} classes", path=path, record=record, field="det")
  keep = ~crowd
  counts["crowd_skipped"] += int(crowd.sum())
  boxes = bbox[keep][:, [1, 0, 3, 2]]  # tfds BBox order -> (xmin, ymin, xmax, ymax)
  det = ingest_common.tidy_boxes(boxes, [classes[i] for i in label[keep]], counts)
  # Normalized by COCO's width/height, i.e. in the stored frame (TF decodes ignoring EXIF).
  det["boxes"] = ingest_common.orient_boxes(det["boxes"], image.orientation)
  counts["exif_reoriented"] += int(image.orientation != 1)
  counts["images_without_boxes"] += int(len(det["boxes"]) == 0)
  name = _text(example.get("image/filename", key), path=path, record=record, field="key")
  return {"rgb": image.image, "det": det, "key": name}


def scene_parse150_example(example: Mapping[str, Any], classes: Sequence[str], *, path: str,
                           record: int, key: str, counts: Counter) -> dict[str, Any]:
  """A tfds `scene_parse150` example (image, annotation: PNG bytes, red = instance-task
  category 0..100, green = instance id) -> rgb, semseg (red), instance (green), key."""
  image = _rgb(example, path=path, record=record)
  data = _bytes(example["annotation"], path=path, record=record, field="semseg")
  try:
    with Image.open(io.BytesIO(data)) as annotation:
      annotation.load()
      mode, pixels = annotation.mode, np.asarray(annotation)
  except Exception as error:  # noqa: BLE001 - PIL raises many types on bad data
    raise records.RecordError(f"cannot decode annotation ({type(error).__name__}: {error})",
                              path=path, record=record, field="semseg") from None
  if mode != "RGB":
    raise records.RecordError(f"expected an RGB annotation (red = category, green = "
                              f"instance), got mode {mode}", path=path, record=record,
                              field="semseg")
  semseg, instance = pixels[..., 0], pixels[..., 1]
  if semseg.max(initial=0) >= len(classes):
    raise records.RecordError(f"category id {int(semseg.max())} is beyond the "
                              f"{len(classes) - 1} categories", path=path, record=record,
                              field="semseg")
  orientation = ingest_common.label_orientation(image, semseg.shape, path=path, record=record,
                                                field="semseg", label="the annotation")
  counts["exif_reoriented"] += int(orientation != 1)
  return {"rgb": image.image, "semseg": ingest_common.orient_map(semseg, orientation),
          "instance": ingest_common.orient_map(instance, orientation), "key": key}


def nyu_depth_v2_example(example: Mapping[str, Any], classes: Sequence[str], *, path: str,
                         record: int, key: str, counts: Counter) -> dict[str, Any]:
  """A tfds `nyu_depth_v2` example (image bytes, depth float16 [480, 640] metres) ->
  rgb, depth (float32, 0 = missing), key."""
  del classes
  image = _rgb(example, path=path, record=record)
  depth = np.asarray(example["depth"]).astype(np.float32)
  if depth.ndim == 3 and depth.shape[-1] == 1:
    depth = depth[..., 0]
  if depth.ndim != 2:
    raise records.RecordError(f"expected depth [H, W], got {list(depth.shape)}", path=path,
                              record=record, field="depth")
  finite = np.isfinite(depth)
  counts["depth_nonfinite_pixels"] += int((~finite).sum())
  depth = np.where(finite, depth, np.float32(0))
  if (depth < 0).any():
    raise records.RecordError(f"negative depth {float(depth.min())}", path=path,
                              record=record, field="depth")
  orientation = ingest_common.label_orientation(image, depth.shape, path=path, record=record,
                                                field="depth", label="the depth map")
  return {"rgb": image.image, "depth": ingest_common.orient_map(depth, orientation),
          "key": key}


def imagenet2012_example(example: Mapping[str, Any], classes: Sequence[str], *, path: str,
                         record: int, key: str, counts: Counter) -> dict[str, Any]:
  """A tfds `imagenet2012` example (image bytes, label id, file_name) -> rgb, label (the
  class name; absent for the unlabeled test split's -1), key (the file name)."""
  image = _rgb(example, path=path, record=record)
  label = int(np.asarray(example["label"]))
  sample = {"rgb": image.image,
            "key": _text(example.get("file_name", key), path=path, record=record, field="key")}
  if label == -1:
    counts["unlabeled"] += 1
  elif not 0 <= label < len(classes):
    raise records.RecordError(f"label {label} is outside the builder's {len(classes)} "
                              "classes", path=path, record=record, field="label")
  else:
    sample["label"] = classes[label]
  return sample


@dataclasses.dataclass(frozen=True)
class Builder:
  """How one tfds builder becomes records."""
  convert: ExampleConverter
  needs: tuple[str, ...]                # top-level features it reads
  images: tuple[str, ...]               # Image features read as bytes (SkipDecoding)
  default_splits: Mapping[str, str]     # fourm split -> tfds split
  classes: Callable[[Any], list[str]]   # the builder's DatasetInfo -> class names
  class_key: str | None                 # the metadata entry that lists them
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


BUILDERS = {
    "coco": Builder(
        coco_example, ("image", "objects"), ("image",), {"train": "train", "val": "validation"},
        lambda info: list(info.features["objects"]["label"].names), "det_classes"),
    "scene_parse150": Builder(
        scene_parse150_example, ("image", "annotation"), ("image", "annotation"),
        {"train": "train", "val": "test"},
        lambda info: ["other", *ADE20K_INSTANCE_CLASSES], "semseg_classes",
        {"semseg_ignore_index": 0,
         "semseg_note": "tfds scene_parse150 holds the Places Challenge 2017 instance "
                        "annotations: semseg ids are its 100 object categories (stuff such "
                        "as wall, sky, floor is 0 = other), instance its instance ids; not "
                        "the 150-class SceneParsing benchmark (use ingest_ade20k on "
                        "ADEChallengeData2016 for that)"}),
    "nyu_depth_v2": Builder(
        nyu_depth_v2_example, ("image", "depth"), ("image",),
        {"train": "train", "val": "validation"}, lambda info: [], None,
        {"depth_units": "metres", "depth_missing_value": 0.0}),
    "imagenet2012": Builder(
        imagenet2012_example, ("image", "label"), ("image",),
        {"train": "train", "val": "validation"},
        lambda info: list(info.features["label"].names), "label_classes"),
}


def _tfds():
  # Imported on use: tfds takes seconds to import, and only this converter needs it.
  import tensorflow_datasets as tfds  # noqa: PLC0415
  return tfds


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def resolve(name: str, data_dir: str) -> tuple[str, str]:
  """'coco/2017' (optionally ':1.1.0') -> ('coco/2017:1.1.0', its prepared directory),
  taking the newest version prepared under `data_dir` when none is named."""
  tfds = _tfds()
  base, _, version = name.partition(":")
  dataset, _, config = base.partition("/")
  if dataset not in BUILDERS:
    raise UsageError(f"tfds builder {dataset!r} is not supported; choose from "
                     f"{', '.join(BUILDERS)}")
  folder = os.path.join(data_dir, dataset)
  if not os.path.isdir(folder):
    raise records.RecordError(f"no prepared tfds dataset {dataset!r} here (prepare it with "
                              f"`tfds build {base} --file_format=array_record`, which "
                              "needs TensorFlow, or pass its data_dir)", path=folder)

  def versions(directory: str) -> list[tuple[Any, str]]:
    found = []
    for entry in os.listdir(directory) if os.path.isdir(directory) else ():
      path = os.path.join(directory, entry)
      if os.path.exists(os.path.join(path, "dataset_info.json")):
        try:
          found.append((tfds.core.Version(entry), entry))
        except ValueError:
          pass  # not a version folder (e.g. "incomplete.XYZ_1.1.0")
    return sorted(found)

  if not config and not versions(folder):
    configs = sorted(entry for entry in os.listdir(folder)
                     if versions(os.path.join(folder, entry)))
    if len(configs) != 1:
      raise UsageError(f"name the config of {dataset!r}: "
                       f"{', '.join(f'{dataset}/{c}' for c in configs) or 'none is prepared'}")
    config = configs[0]
    base = f"{dataset}/{config}"
  directory = os.path.join(folder, config) if config else folder
  found = versions(directory)
  if version:
    if version not in [v for _, v in found]:
      raise records.RecordError(f"version {version} is not prepared here (found: "
                                f"{[v for _, v in found]})", path=directory)
  elif not found:
    raise records.RecordError(f"no prepared version of {base!r} here (prepare it with "
                              f"`tfds build {base} --file_format=array_record`)",
                              path=directory)
  else:
    version = found[-1][1]
  return f"{base}:{version}", os.path.join(directory, version)


def ingest_tfds(name: str, out: str, *, data_dir: str | None = None,
                splits: Mapping[str, str] | None = None, records_per_shard: int = 1000,
                progress: bool = True, log: Callable[[str], None] = print
                ) -> records.DatasetInfo:
  """Converts the prepared tfds dataset `name` ('coco/2017', 'scene_parse150',
  'nyu_depth_v2', 'imagenet2012', optionally ':version') under `data_dir` into a records
  dataset at `out`. `splits` maps fourm split -> tfds split (slices such as
  'train[:1%]' allowed); by default each builder's train and validation splits."""
  tfds = _tfds()
  data_dir = os.path.abspath(data_dir or default_data_dir())
  full_name, directory = resolve(name, data_dir)
  spec = BUILDERS[full_name.partition("/")[0].partition(":")[0]]
  info = tfds.builder_from_directory(directory).info
  missing = [f for f in spec.needs if f not in info.features]
  if missing:
    raise UsageError(f"{full_name} has no features {missing} (it has "
                     f"{sorted(info.features)}); this converter reads {list(spec.needs)}")
  available = set(info.splits)
  if splits is None:
    splits = {ours: theirs for ours, theirs in spec.default_splits.items()
              if theirs in available}
    if not splits:
      raise UsageError(f"{full_name} has none of the splits "
                       f"{sorted(spec.default_splits.values())}; name them with splits=")
  for theirs in splits.values():
    if theirs.partition("[")[0] not in available:
      raise UsageError(f"{full_name} has no split {theirs!r} (it has {sorted(available)})")
  random_access = tfds.core.file_adapters.FileFormat.with_random_access()
  if not set(info.available_file_formats()) & set(random_access):
    # Reading TFRecord, or converting it (`tfds convert_format`), needs TensorFlow.
    raise UsageError(
        f"{directory} is prepared as {getattr(info.file_format, 'value', info.file_format)}, "
        "which tfds.data_source cannot read; prepare it as array_record (`tfds build "
        f"{full_name.partition(':')[0]} --file_format=array_record`) or convert it (`tfds "
        f"convert_format --dataset_version_dir={directory} --out_file_format=array_record`); "
        "both need TensorFlow, once")
  decoders = {feature: tfds.decode.SkipDecoding() for feature in spec.images}
  sources = {ours: tfds.data_source(full_name, split=theirs, data_dir=data_dir,
                                    download=False, decoders=decoders)
             for ours, theirs in splits.items()}
  classes = spec.classes(info)
  log(f"{full_name}: " + ", ".join(f"{ours} = {theirs} ({len(sources[ours])})"
                                   for ours, theirs in splits.items()))

  def convert(split: str, indices: range, counts: Counter) -> Iterator[dict[str, Any]]:
    source, where = sources[split], f"{directory}[{splits[split]}]"
    for index in indices:
      try:
        example = source[index]
      except Exception as error:  # noqa: BLE001 - any read failure is this record's
        raise records.RecordError(f"cannot read the example ({type(error).__name__}: "
                                  f"{error})", path=where, record=index) from error
      yield spec.convert(example, classes, path=where, record=index,
                         key=f"{splits[split]}/{index}", counts=counts)

  metadata = {"created_by": "fourm.data.ingest_tfds", "source": directory,
              "tfds_name": full_name, "tfds_splits": dict(splits), **spec.metadata,
              **({spec.class_key: classes} if spec.class_key else {})}
  if "semseg_note" in metadata:
    log(metadata["semseg_note"])
  plan = {"converter": "tfds", "name": full_name, "source": directory,
          "tfds_splits": dict(splits)}
  return ingest_common.write_dataset(
      out, full_name.replace("/", "_").replace(":", "_"),
      {ours: len(source) for ours, source in sources.items()}, convert, plan=plan,
      metadata=metadata, records_per_shard=records_per_shard, progress=progress, log=log)
