"""A raw, augmented sample -> what a fine-tuning step reads: the image and its task's labels.

This is the pipeline's per-sample transform for fine-tuning (as `MaskSample` is for
pre-training), so fine-tuning reads records through the same grain pipeline and the same
cross-modal augmentation (one crop and flip for the image and its labels):

  every task      image  float32 [R, R, 3], normalized as in pre-training
  classification  label  int32 [], the class of `label` (a name), or when the record has
                         none, of its largest box (the synthetic world's "largest object")
  segmentation    label  int32 [R, R], `semseg` ids; `ignore_index` where not scored
  depth           depth  float32 [R, R], depth_valid bool [R, R] (finite and > 0)
  detection       boxes  float32 [M, 4] (xmin, ymin, xmax, ymax) in [0, 1], box_classes
                  int32 [M], box_valid bool [M]: up to `max_boxes`, padded

Class names map to ids by their position in `classes` (the config's, or the dataset's
metadata list). A name not in it, a segmentation id at or beyond the head's classes that
is not the ignore index, or a missing label field is a `RecordError` naming the field
(the pipeline adds the record).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from fourm import modalities
from fourm.data.masking.entries import ValueReader
from fourm.errors import RecordError, UsageError

# Which raw modality holds each task's labels (the pipeline loads only these and rgb).
LABEL_FIELDS = {"classification": ("label", "det"), "segmentation": ("semseg",),
                "depth": ("depth",), "detection": ("det",)}


@dataclasses.dataclass(frozen=True)
class TaskTargets:
  task: str
  resolution: int
  classes: tuple[str, ...] = ()       # class names, in head-id order (not for depth)
  pixel_normalization: str = "imagenet"
  ignore_index: int = 255             # segmentation: labels never scored
  reduce_zero_label: bool = False     # segmentation: 0 -> ignore, k -> k - 1 (ADE20K)
  max_boxes: int = 64                 # detection

  def __post_init__(self):
    if self.task not in LABEL_FIELDS:
      raise UsageError(f"task {self.task!r}; choose one of {', '.join(LABEL_FIELDS)}")
    if self.task != "depth" and not self.classes:
      raise UsageError(f"the {self.task} task needs its class names (config.head.classes "
                       "or the dataset's metadata)")

  @functools.cached_property
  def reader(self) -> ValueReader:
    return ValueReader(modalities.Layout(self.resolution, 1), self.pixel_normalization)

  def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    del rng  # the labels are a function of the (already augmented) sample
    out = {"image": self.reader.pixels("rgb", sample.get("rgb"))}
    if self.task == "classification":
      out["label"] = np.int32(self._class_id(self._image_class(sample), "label"))
    elif self.task == "segmentation":
      out["label"] = self._segmentation(self._field(sample, "semseg"))
    elif self.task == "depth":
      depth = self._field(sample, "depth").astype(np.float32)
      valid = np.isfinite(depth) & (depth > 0)
      out["depth"], out["depth_valid"] = np.where(valid, depth, 0.0), valid
    else:
      out.update(self._boxes(self._field(sample, "det")))
    return out

  def _field(self, sample, name: str):
    if name not in sample:
      raise RecordError(f"the {self.task} task needs {name!r}, which the record lacks",
                        field=name)
    return sample[name]

  def _class_id(self, name: str, field: str) -> int:
    try:
      return self.classes.index(name)
    except ValueError:
      raise RecordError(f"class {name!r} is not among the head's {len(self.classes)} classes "
                        f"({', '.join(self.classes[:8])}{', ...' if len(self.classes) > 8 else ''})",
                        field=field) from None

  def _image_class(self, sample) -> str:
    if "label" in sample:
      return str(sample["label"])
    det = self._field(sample, "det")
    if not len(det["boxes"]):
      raise RecordError("no label and no box to take the largest object's class from",
                        field="det")
    boxes = np.asarray(det["boxes"])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return str(det["classes"][int(np.argmax(area))])

  def _segmentation(self, semseg: np.ndarray) -> np.ndarray:
    labels = semseg.astype(np.int32)
    if self.reduce_zero_label:
      labels = np.where(labels == 0, self.ignore_index, labels - 1)
    bad = (labels >= len(self.classes)) & (labels != self.ignore_index)
    if bad.any():
      raise RecordError(f"class id {int(labels[bad][0])} is beyond the head's "
                        f"{len(self.classes)} classes (and is not the ignore index "
                        f"{self.ignore_index})", field="semseg")
    return labels

  def _boxes(self, det) -> dict[str, np.ndarray]:
    boxes = np.asarray(det["boxes"], np.float32).reshape(-1, 4)
    count = len(boxes)
    if count > self.max_boxes:
      raise RecordError(f"{count} boxes exceed max_boxes={self.max_boxes}; raise "
                        "config.data.max_boxes", field="det")
    if count and (boxes.min() < 0 or boxes.max() > 1 or (boxes[:, 2:] < boxes[:, :2]).any()):
      raise RecordError("a box lies outside the image or has min > max", field="det")
    padded = np.zeros((self.max_boxes, 4), np.float32)
    classes = np.zeros((self.max_boxes,), np.int32)
    valid = np.zeros((self.max_boxes,), bool)
    padded[:count] = boxes
    classes[:count] = [self._class_id(str(c), "det") for c in det["classes"]]
    valid[:count] = True
    return {"boxes": padded, "box_classes": classes, "box_valid": valid}


def required_fields(task: str) -> Sequence[str]:
  return LABEL_FIELDS[task]
