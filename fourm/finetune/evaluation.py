"""A fine-tuned model on a split: the task's metrics as the field computes them, the
predictions, and a picture grid of predictions beside the ground truth.

  classification  top-1 / top-5 accuracy
  segmentation    mIoU, mean class accuracy, pixel accuracy (`ignore_index` unscored)
  depth           delta1..3, abs-rel, sq-rel, RMSE, RMSE-log (per image, then averaged)
  detection       COCO box AP, AP50, AP75, ... through pycocotools

Evaluation reads the split unaugmented (a center crop at the fine-tuning resolution), so
dense metrics are those of that crop, and COCO AP is computed on boxes in the crop's
pixels: the protocol of the synthetic world; on COCO itself it differs from the official
full-image evaluation wherever the crop cuts boxes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from fourm import modalities
from fourm.data.colorize import depth_to_rgb
from fourm.finetune import coco_metrics, task_metrics
from fourm.finetune.set_loss import ScoredBoxes, coco_detections, postprocess


@dataclasses.dataclass
class Evaluation:
  metrics: dict[str, float]
  examples: list[dict[str, Any]]       # for the picture grid: rgb, truth and prediction
  coco_results: list[dict[str, Any]]   # detection only: COCO results json entries


def _metric(task: str, num_classes: int, ignore_index: int):
  if task == "classification":
    return task_metrics.TopKAccuracy(ks=(1, 5))
  if task == "segmentation":
    return task_metrics.SegmentationMetric(num_classes, ignore_index=ignore_index)
  if task == "depth":
    return task_metrics.DepthMetric()
  return coco_metrics.CocoDetectionMetric(num_classes)


def to_uint8(image: np.ndarray, pixel_normalization: str) -> np.ndarray:
  """A normalized image back to uint8 pixels, to draw."""
  mean, std = (np.asarray(v, np.float32) for v in modalities.PIXEL_STATS[pixel_normalization])
  return np.clip(np.round((image * std + mean) * 255.0), 0, 255).astype(np.uint8)


def evaluate(task: str, predict: Callable[[Any], Any], batches: Iterable[Mapping[str, Any]],
             *, classes: tuple[str, ...], ignore_index: int, pixel_normalization: str,
             resolution: int, num_examples: int = 8) -> Evaluation:
  """Runs `predict(images)` over `batches` (TaskTargets' fields plus the pipeline's `meta`;
  rows with meta.valid False are padding and are skipped)."""
  metric = _metric(task, len(classes), ignore_index)
  examples: list[dict[str, Any]] = []
  results: list[dict[str, Any]] = []
  for batch in batches:
    valid = np.asarray(batch["meta"]["valid"])
    outputs = jax.device_get(predict(batch["image"]))
    rows = np.flatnonzero(valid)
    if task == "classification":
      metric.update(np.asarray(outputs)[rows], np.asarray(batch["label"])[rows])
      predicted = {"__text__": [
          f"predicted {classes[p]}, truth {classes[t]}" for p, t in
          zip(np.asarray(outputs).argmax(-1), np.asarray(batch["label"]), strict=True)]}
    elif task == "segmentation":
      labels = np.asarray(outputs).argmax(-1)
      metric.update(labels[rows], np.asarray(batch["label"])[rows])
      truth = np.asarray(batch["label"])
      predicted = {"semseg (predicted)": labels.astype(np.uint8),
                   "semseg (truth)": np.where(truth == ignore_index, 0, truth).astype(np.uint8)}
    elif task == "depth":
      depth = np.asarray(outputs)
      metric.update(depth[rows], np.asarray(batch["depth"])[rows],
                    np.asarray(batch["depth_valid"])[rows])
      predicted = _depth_pictures(depth, np.asarray(batch["depth"]),
                                  np.asarray(batch["depth_valid"]))
    else:
      predicted = _detections(metric, results, outputs, batch, rows, classes, resolution)
    for row in rows[:max(num_examples - len(examples), 0)]:
      example = {"rgb": to_uint8(np.asarray(batch["image"][row]), pixel_normalization),
                 "__name__": f"record {int(batch['meta']['record'][row])}"}
      example.update({key: value[row] for key, value in predicted.items()})
      examples.append(example)
  scores = metric.result()
  return Evaluation(metrics=scores, examples=examples, coco_results=results)


def _depth_pictures(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray
                    ) -> dict[str, list[np.ndarray]]:
  """Prediction and truth colored on one scale per image, the truth's (colored alone,
  each would stretch its own range and a wrong scale would look right)."""
  shown = {"predicted depth": [], "true depth": []}
  for pred, true, keep in zip(predicted, truth, valid, strict=True):
    near, far = (np.percentile(true[keep], [2.0, 98.0]) if keep.any() else (None, None))
    shown["predicted depth"].append(depth_to_rgb(pred, near, far))
    shown["true depth"].append(depth_to_rgb(np.where(keep, true, 0.0), near, far))
  return shown


def _detections(metric, results, outputs, batch, rows, classes, resolution):
  size = np.full((len(batch["image"]), 2), resolution)
  found = jax.device_get(postprocess(outputs.logits, outputs.boxes, size))
  scale = np.array([resolution] * 4, np.float32)
  truth_boxes, truth_classes = np.asarray(batch["boxes"]), np.asarray(batch["box_classes"])
  truth_valid = np.asarray(batch["box_valid"])
  record = np.asarray(batch["meta"]["record"])
  for row in rows:
    keep = truth_valid[row]
    metric.add_image(truth_boxes[row][keep] * scale, truth_classes[row][keep],
                     (resolution, resolution), found.boxes[row], found.scores[row],
                     found.labels[row], image_id=int(record[row]))
  results.extend(coco_detections(ScoredBoxes(*(np.asarray(a)[rows] for a in found)),
                                 [int(record[row]) for row in rows]))
  # The grid shows each image's confident boxes (score > 0.5) beside the truth.
  shown, truth = [], []
  for row in range(len(batch["image"])):
    confident = found.scores[row] > 0.5
    shown.append({"boxes": np.clip(found.boxes[row][confident] / scale, 0, 1),
                  "classes": [classes[i] for i in found.labels[row][confident]]})
    keep = truth_valid[row]
    truth.append({"boxes": truth_boxes[row][keep],
                  "classes": [classes[i] for i in truth_classes[row][keep]]})
  return {"det (predicted)": shown, "det (truth)": truth}
