"""COCO box AP of fine-tuned detectors, through `pycocotools` itself, so that our numbers
are the leaderboard's (its matching, 101-point interpolation, area ranges and 100
detections per image). Ground truth and predictions are built into COCO objects in
memory; the library's printing is captured into `CocoDetectionMetric.summary`. Where
COCOeval has no answer (it writes -1: no ground truth at all, or none in an area range
such as "large"), we report NaN, as detectron2 does, so that an undefined number cannot
be averaged or plotted as a bad one. Also the COCO results json (`coco_results`).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Sequence

import numpy as np

from fourm.errors import UsageError, refused_writes_as
from fourm.finetune.task_metrics import check_num_classes, check_range, integer_array

# COCOeval.stats in its order, named as detectron2 reports them.
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                     "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _boxes(name: str, value) -> np.ndarray:
  """xyxy boxes [n, 4] in float64; `[]` is no boxes."""
  boxes = np.asarray(value, np.float64)
  if boxes.size == 0:
    return boxes.reshape(0, 4)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise UsageError(f"{name} must be [n, 4] (xmin, ymin, xmax, ymax), got shape {boxes.shape}")
  if not np.isfinite(boxes).all():
    raise UsageError(f"{name} contain non-finite coordinates")
  inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
  if inverted.any():
    raise UsageError(f"{name} must have xmax >= xmin and ymax >= ymin; box "
                     f"{int(np.flatnonzero(inverted)[0])} is {boxes[inverted][0].tolist()}")
  return boxes


def _xywh(boxes: np.ndarray) -> np.ndarray:
  return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def coco_results(image_ids: Sequence[int], pred_boxes: Sequence, pred_scores: Sequence,
                 pred_labels: Sequence, *,
                 category_ids: Sequence[int] | None = None) -> list[dict]:
  """Predictions as COCO results entries, [{image_id, category_id, bbox [x, y, w, h],
  score}], per image from pixel xyxy boxes [n, 4], scores [n] and class indices [n].

  `category_ids[label]` is the dataset's id of class index `label` (COCO's 80 classes
  have ids 1..90 with gaps); without it the class index is written."""
  if not len(image_ids) == len(pred_boxes) == len(pred_scores) == len(pred_labels):
    raise UsageError(f"image_ids, pred_boxes, pred_scores and pred_labels must have one "
                     f"entry per image, got {len(image_ids)}, {len(pred_boxes)}, "
                     f"{len(pred_scores)} and {len(pred_labels)}")
  results = []
  for image_id, boxes, scores, labels in zip(image_ids, pred_boxes, pred_scores, pred_labels):
    boxes = _boxes("pred_boxes", boxes)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = integer_array("pred_labels", labels).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
      raise UsageError(f"image {image_id}: {len(boxes)} pred_boxes, {len(scores)} "
                       f"pred_scores and {len(labels)} pred_labels")
    if category_ids is not None:
      check_range("pred_labels", labels, len(category_ids))
    for box, score, label in zip(_xywh(boxes).tolist(), scores.tolist(), labels.tolist()):
      category = int(category_ids[label]) if category_ids is not None else int(label)
      results.append({"image_id": int(image_id), "category_id": category,
                      "bbox": box, "score": score})
  return results


def write_coco_results(path: str, results: list[dict]) -> None:
  """`results` (from `coco_results`) as the JSON file COCO's evaluation servers take."""
  with refused_writes_as(f"cannot write COCO results to {path}"), open(path, "w") as file:
    json.dump(results, file)


class CocoDetectionMetric:
  """COCO box AP / AR over a set of images, evaluated by pycocotools at `result()`.

  Per image: ground-truth boxes in pixels (xmin, ymin, xmax, ymax) with class indices in
  [0, num_classes) and the image's (height, width); predicted boxes, scores and class
  indices. fourm stores boxes normalized to [0, 1]: multiply by (width, height, width,
  height) first, since COCO's small / medium / large ranges are areas in pixels.

  Box area stands in for the mask area COCO's own annotations carry (only boxes here),
  which moves APs/APm/APl slightly from the official numbers on COCO itself; AP does not
  depend on it. Crowd ground truth (`gt_crowd`) is matched but neither rewarded nor
  penalized, as in COCO. Images with no ground truth and no predictions change nothing.
  Only each image's 100 highest-scoring predictions count (COCO's limit).
  """

  def __init__(self, num_classes: int):
    check_num_classes(num_classes)
    self.num_classes = int(num_classes)
    self._images: list[dict] = []
    self._given_ids: set[int] = set()
    self.summary = ""  # pycocotools' printed table from the last `result()`

  def __len__(self) -> int:
    return len(self._images)

  def add_image(self, gt_boxes, gt_labels, image_size: tuple[int, int], pred_boxes,
                pred_scores, pred_labels, *, gt_crowd=None, image_id: int | None = None
                ) -> None:
    """One image's ground truth and predictions. `image_id` (the dataset's, unique) is
    what `coco_results` writes, by default the image's position in the set (give ids
    for all images or none); the evaluation itself does not use it."""
    where = f"image {image_id if image_id is not None else len(self._images)}"
    gt_boxes = _boxes(f"{where}: gt_boxes", gt_boxes)
    pred_boxes = _boxes(f"{where}: pred_boxes", pred_boxes)
    gt_labels = integer_array(f"{where}: gt_labels", gt_labels).reshape(-1)
    pred_labels = integer_array(f"{where}: pred_labels", pred_labels).reshape(-1)
    pred_scores = np.asarray(pred_scores, np.float64).reshape(-1)
    gt_crowd = (np.zeros(len(gt_boxes), bool) if gt_crowd is None
                else np.asarray(gt_crowd, bool).reshape(-1))
    if not len(gt_boxes) == len(gt_labels) == len(gt_crowd):
      raise UsageError(f"{where}: {len(gt_boxes)} gt_boxes, {len(gt_labels)} gt_labels "
                       f"and {len(gt_crowd)} gt_crowd flags")
    if not len(pred_boxes) == len(pred_scores) == len(pred_labels):
      raise UsageError(f"{where}: {len(pred_boxes)} pred_boxes, {len(pred_scores)} "
                       f"pred_scores and {len(pred_labels)} pred_labels")
    if not np.isfinite(pred_scores).all():
      raise UsageError(f"{where}: pred_scores contain non-finite values")
    check_range(f"{where}: gt_labels", gt_labels, self.num_classes)
    check_range(f"{where}: pred_labels", pred_labels, self.num_classes)
    image_size = tuple(np.asarray(image_size).reshape(-1).tolist())
    if len(image_size) != 2 or min(image_size) <= 0:
      raise UsageError(f"{where}: image_size must be (height, width), both positive, got "
                       f"{image_size}")
    height, width = (int(size) for size in image_size)
    if image_id is not None:
      # A repeated id is usually an evaluation batch padded with repeated images,
      # which would count them twice.
      if int(image_id) in self._given_ids:
        raise UsageError(f"image_id {image_id} was added before")
      self._given_ids.add(int(image_id))
    self._images.append(dict(
        image_id=None if image_id is None else int(image_id), height=height, width=width,
        gt_boxes=gt_boxes, gt_labels=gt_labels, gt_crowd=gt_crowd,
        pred_boxes=pred_boxes, pred_scores=pred_scores, pred_labels=pred_labels))

  def update(self, gt_boxes: Sequence, gt_labels: Sequence, image_sizes: Sequence,
             pred_boxes: Sequence, pred_scores: Sequence, pred_labels: Sequence, *,
             gt_crowd: Sequence | None = None, image_ids: Sequence[int] | None = None
             ) -> None:
    """A batch: one entry per image in each sequence (see `add_image`). A padded batch
    is sliced first, e.g. `[boxes[i][valid[i]] for i in range(len(boxes))]`."""
    count = len(gt_boxes)
    lengths = {"gt_labels": len(gt_labels), "image_sizes": len(image_sizes),
               "pred_boxes": len(pred_boxes), "pred_scores": len(pred_scores),
               "pred_labels": len(pred_labels)}
    if gt_crowd is not None:
      lengths["gt_crowd"] = len(gt_crowd)
    if image_ids is not None:
      lengths["image_ids"] = len(image_ids)
    wrong = {name: length for name, length in lengths.items() if length != count}
    if wrong:
      raise UsageError(f"gt_boxes has {count} images but "
                       + ", ".join(f"{name} has {length}" for name, length in wrong.items()))
    for i in range(count):
      self.add_image(gt_boxes[i], gt_labels[i], image_sizes[i], pred_boxes[i],
                     pred_scores[i], pred_labels[i],
                     gt_crowd=None if gt_crowd is None else gt_crowd[i],
                     image_id=None if image_ids is None else image_ids[i])

  def merge(self, other: CocoDetectionMetric) -> None:
    """Adds `other`'s images (another process's share of the set) to these."""
    if other.num_classes != self.num_classes:
      raise UsageError(f"cannot merge detection metrics of {other.num_classes} and "
                       f"{self.num_classes} classes")
    repeated = self._given_ids & other._given_ids
    if repeated:
      raise UsageError(f"both detection metrics hold image_id {min(repeated)}")
    self._images.extend(other._images)
    self._given_ids |= other._given_ids

  def coco_results(self, category_ids: Sequence[int] | None = None) -> list[dict]:
    """The predictions so far as COCO results entries (see the function `coco_results`)."""
    image_ids = [image["image_id"] if image["image_id"] is not None else position
                 for position, image in enumerate(self._images)]
    return coco_results(image_ids, [image["pred_boxes"] for image in self._images],
                        [image["pred_scores"] for image in self._images],
                        [image["pred_labels"] for image in self._images],
                        category_ids=category_ids)

  def result(self) -> dict[str, float]:
    # Imported here: the other tasks' metrics do not need pycocotools.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not any(len(image["gt_boxes"]) for image in self._images):
      return {name: math.nan for name in COCO_METRIC_NAMES}  # nothing to find: undefined
    # Ids count from 1 (pycocotools takes a matched annotation id of 0 for "unmatched");
    # images are numbered by position, since the caller's ids are optional and only the
    # results file needs them. Category = class index + 1.
    categories = [{"id": label + 1, "name": str(label)} for label in range(self.num_classes)]
    images, truths, detections = [], [], []
    for number, image in enumerate(self._images, start=1):
      images.append({"id": number, "height": image["height"], "width": image["width"]})
      for box, label, crowd in zip(_xywh(image["gt_boxes"]).tolist(),
                                   image["gt_labels"].tolist(), image["gt_crowd"].tolist()):
        truths.append({"id": len(truths) + 1, "image_id": number, "category_id": label + 1,
                       "bbox": box, "area": box[2] * box[3], "iscrowd": int(crowd)})
      for box, score, label in zip(_xywh(image["pred_boxes"]).tolist(),
                                   image["pred_scores"].tolist(), image["pred_labels"].tolist()):
        detections.append({"id": len(detections) + 1, "image_id": number,
                           "category_id": label + 1, "bbox": box, "score": score,
                           "area": box[2] * box[3], "iscrowd": 0})
    # Built directly rather than through COCO.loadRes, which fails on an empty list.
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      ground_truth, predicted = COCO(), COCO()
      ground_truth.dataset = {"images": images, "annotations": truths, "categories": categories}
      predicted.dataset = {"images": images, "annotations": detections,
                           "categories": categories}
      ground_truth.createIndex()
      predicted.createIndex()
      evaluation = COCOeval(ground_truth, predicted, iouType="bbox")
      evaluation.evaluate()
      evaluation.accumulate()
      evaluation.summarize()
    self.summary = printed.getvalue()
    return {name: float(value) if value >= 0 else math.nan
            for name, value in zip(COCO_METRIC_NAMES, evaluation.stats)}
