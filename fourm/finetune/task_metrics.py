"""Evaluation metrics of the fine-tune tasks, computed as the papers we compare with do.

Each metric is a small class on the host (numpy): `update(...)` per batch, `result()` ->
{name: float} at the end, `merge(other)` to combine the metrics of several processes
(the state is counts and sums, or for detection the per-image lists). Numbers are
fractions (AP 0.42, not 42.0).

- Detection: COCO box AP, in `fourm/finetune/coco_metrics.py`.
- Semantic segmentation: mIoU from an accumulated confusion matrix, as mmseg computes
  it: the mean over classes whose union is non-empty (a class that is in neither the
  ground truth nor the predictions is left out; one that is predicted but absent scores 0).
- Depth: the Eigen et al. (2014) set (delta < 1.25^k, abs-rel, sq-rel, RMSE, RMSE-log,
  log10), with BTS/AdaBins' evaluation conventions: ground truth is valid where finite
  and in (min_depth, max_depth), predictions are clipped to [min_depth, max_depth].
  Averaged per image by default (each image's metrics, then their mean), as the NYUv2
  tables do; `average="pixel"` pools every valid pixel of the set instead.
- Classification: top-k accuracy, ties between logits broken by class index.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, Self

import numpy as np

from fourm.errors import UsageError


class Metric(Protocol):
  """What the fine-tune loop needs of a metric."""

  def merge(self, other: Self) -> None: ...

  def result(self) -> dict[str, float]: ...


def integer_array(name: str, value, *, ndim: int | None = None) -> np.ndarray:
  array = np.asarray(value)
  if array.size == 0 and array.dtype.kind == "f":  # `[]` arrives as float64
    array = array.astype(np.int64)
  if array.dtype.kind not in "iu":
    raise UsageError(f"{name} must be integers, got dtype {array.dtype}")
  if ndim is not None and array.ndim != ndim:
    raise UsageError(f"{name} must have {ndim} dimension(s), got shape {array.shape}")
  return array


def check_range(name: str, values: np.ndarray, num_classes: int) -> None:
  if values.size and (values.min() < 0 or values.max() >= num_classes):
    raise UsageError(f"{name} must lie in [0, {num_classes}), got values from "
                     f"{values.min()} to {values.max()}")


def check_num_classes(num_classes: int) -> None:
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")


def ratio(numerator: float, denominator: float) -> float:
  return float(numerator / denominator) if denominator > 0 else math.nan


# Semantic segmentation.

def reduce_zero_label(labels) -> np.ndarray:
  """ADE20K's labels as mmseg's ADE20K setup (`reduce_zero_label=True`) trains on them:
  0 ("other") becomes the ignore index 255, classes 1..150 become 0..149, and a label
  that is 255 already stays 255."""
  labels = integer_array("labels", labels)
  dtype = np.promote_types(labels.dtype, np.uint8)  # one that holds 255
  ignored = (labels == 0) | (labels == 255)
  return np.where(ignored, 255, labels.astype(np.int64) - 1).astype(dtype)


class SegmentationMetric:
  """mIoU, pixel accuracy and mean class accuracy from a confusion matrix accumulated
  over the set (rows: ground truth, columns: prediction).

  Pixels whose label is `ignore_index` count nowhere, whatever is predicted there. For
  ADE20K (`scene_parse150`, where 0 is "other"), either train 150 classes on
  `reduce_zero_label(labels)` with ignore_index=255, as mmseg does, or keep the raw
  labels with num_classes=151 and ignore_index=0: an ignore index inside [0, num_classes)
  is also left out of the means, and predicting it on a labelled pixel is an error for
  that pixel's class. `ignore_index=None` ignores nothing.
  """

  def __init__(self, num_classes: int, ignore_index: int | None = 255):
    check_num_classes(num_classes)
    self.num_classes = int(num_classes)
    self.ignore_index = ignore_index
    self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

  def update(self, predictions, labels) -> None:
    """Predicted class indices and labels of the same shape (any, e.g. [B, H, W])."""
    predictions = integer_array("predictions", predictions)
    labels = integer_array("labels", labels)
    if predictions.shape != labels.shape:
      raise UsageError(f"predictions {predictions.shape} and labels {labels.shape} must "
                       f"have the same shape (argmax the logits first)")
    labelled = (labels != self.ignore_index if self.ignore_index is not None
                else np.ones(labels.shape, bool))
    labels, predictions = labels[labelled].astype(np.int64), predictions[labelled].astype(np.int64)
    check_range("labels (other than ignore_index)", labels, self.num_classes)
    check_range("predictions", predictions, self.num_classes)
    self.confusion += np.bincount(labels * self.num_classes + predictions,
                                  minlength=self.num_classes ** 2).reshape(self.confusion.shape)

  def merge(self, other: SegmentationMetric) -> None:
    if other.confusion.shape != self.confusion.shape or other.ignore_index != self.ignore_index:
      raise UsageError(f"cannot merge segmentation metrics of {other.num_classes} classes "
                       f"(ignore {other.ignore_index}) into {self.num_classes} classes "
                       f"(ignore {self.ignore_index})")
    self.confusion += other.confusion

  def _scored_classes(self) -> np.ndarray:
    scored = np.ones(self.num_classes, bool)
    if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
      scored[self.ignore_index] = False
    return scored

  def per_class_iou(self) -> np.ndarray:
    """IoU per class [num_classes]; NaN where a class's union is empty (or it is ignored)."""
    intersection = np.diag(self.confusion).astype(np.float64)
    union = self.confusion.sum(0) + self.confusion.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
      iou = np.where(union > 0, intersection / union, np.nan)
    return np.where(self._scored_classes(), iou, np.nan)

  def per_class_accuracy(self) -> np.ndarray:
    """Recall per class [num_classes]; NaN for classes with no labelled pixel."""
    pixels = self.confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
      accuracy = np.where(pixels > 0, np.diag(self.confusion) / pixels, np.nan)
    return np.where(self._scored_classes(), accuracy, np.nan)

  def result(self) -> dict[str, float]:
    def nan_mean(values: np.ndarray) -> float:
      defined = values[~np.isnan(values)]
      return float(defined.mean()) if defined.size else math.nan
    return {"mIoU": nan_mean(self.per_class_iou()),
            "mean_class_accuracy": nan_mean(self.per_class_accuracy()),
            "pixel_accuracy": ratio(np.trace(self.confusion), self.confusion.sum())}


# Depth.

DEPTH_METRIC_NAMES = ("delta1", "delta2", "delta3", "abs_rel", "sq_rel", "rmse", "rmse_log",
                      "log10")
DEPTH_AVERAGES = ("image", "pixel")
# Summed per pixel; RMSE and RMSE-log are square roots of the means of the squared terms.
_DEPTH_TERMS = ("delta1", "delta2", "delta3", "abs_rel", "sq_rel", "squared_error",
                "squared_log_error", "log10")


class DepthMetric:
  """Eigen et al.'s depth metrics over the valid pixels of a set of images.

  A pixel is valid where the ground truth is finite and in (min_depth, max_depth) (strict,
  as in BTS / AdaBins; 0 marks a missing reading) and the optional `valid` mask is set
  (e.g. the Eigen crop of NYUv2). Predictions are clipped to [min_depth, max_depth] so
  that ratios and logs are defined. `average="image"` (default) averages each metric over
  an image's valid pixels (RMSE: root of that image's mean squared error), then over the
  images, as the NYUv2 / KITTI tables do; `"pixel"` pools all valid pixels of the set,
  so that large or dense images weigh more. Both are accumulated, so either can be read:
  `result(average=...)`. Images without a valid pixel are counted in `skipped_images`.
  """

  def __init__(self, *, min_depth: float = 1e-3, max_depth: float | None = None,
               average: str = "image"):
    if not min_depth > 0:
      raise UsageError(f"min_depth must be > 0 (predictions are clipped to it), got {min_depth}")
    if max_depth is not None and not max_depth > min_depth:
      raise UsageError(f"max_depth ({max_depth}) must exceed min_depth ({min_depth})")
    if average not in DEPTH_AVERAGES:
      raise UsageError(f"average is {average!r}, expected one of {list(DEPTH_AVERAGES)}")
    self.min_depth, self.max_depth, self.average = float(min_depth), max_depth, average
    self.pixel_sums = np.zeros(len(_DEPTH_TERMS))   # over all valid pixels
    self.pixels = 0
    self.image_sums = np.zeros(len(DEPTH_METRIC_NAMES))  # over images' own metrics
    self.images = 0
    self.skipped_images = 0

  def update(self, predictions, targets, valid=None) -> None:
    """Depths [B, H, W] (or [B, H, W, 1]; axis 0 is the image), in the same units."""
    predictions = np.asarray(predictions, np.float64)
    targets = np.asarray(targets, np.float64)
    if predictions.shape != targets.shape or predictions.ndim < 3:
      raise UsageError(f"predictions {predictions.shape} and targets {targets.shape} must "
                       f"have the same shape [batch, height, width, ...]")
    shape, batch = targets.shape, len(targets)
    targets, predictions = targets.reshape(batch, -1), predictions.reshape(batch, -1)
    with np.errstate(invalid="ignore"):  # NaN targets compare False: invalid
      usable = np.isfinite(targets) & (targets > self.min_depth)
      if self.max_depth is not None:
        usable &= targets < self.max_depth
    if valid is not None:
      valid = np.asarray(valid)
      if valid.dtype != bool or valid.shape != shape:
        raise UsageError(f"valid must be a boolean mask of the targets' shape, got "
                         f"{valid.dtype} {valid.shape}")
      usable &= valid.reshape(batch, -1)
    if np.isnan(predictions[usable]).any():
      raise UsageError("predictions contain NaN at valid pixels")
    # Invalid pixels get 1 / 1, which contributes nothing once masked below.
    gt = np.where(usable, targets, 1.0)
    pred = np.where(usable, np.clip(predictions, self.min_depth, self.max_depth), 1.0)
    ratio = np.maximum(pred / gt, gt / pred)
    error = pred - gt
    terms = np.stack([ratio < 1.25, ratio < 1.25 ** 2, ratio < 1.25 ** 3,
                      np.abs(error) / gt, error ** 2 / gt, error ** 2,
                      (np.log(pred) - np.log(gt)) ** 2,
                      np.abs(np.log10(pred) - np.log10(gt))], axis=-1)
    sums = (terms * usable[..., None]).sum(1)  # [B, terms]
    counts = usable.sum(1)
    self.pixel_sums += sums.sum(0)
    self.pixels += int(counts.sum())
    seen = counts > 0
    self.skipped_images += int((~seen).sum())
    self.images += int(seen.sum())
    if seen.any():
      self.image_sums += self._metrics(sums[seen], counts[seen, None]).sum(0)

  @staticmethod
  def _metrics(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[..., terms] sums over [..., 1] pixels -> [..., DEPTH_METRIC_NAMES]."""
    means = sums / counts
    return np.concatenate([means[..., :5], np.sqrt(means[..., 5:7]), means[..., 7:]], axis=-1)

  def merge(self, other: DepthMetric) -> None:
    if (other.min_depth, other.max_depth) != (self.min_depth, self.max_depth):
      raise UsageError(f"cannot merge depth metrics over ({other.min_depth}, "
                       f"{other.max_depth}) and ({self.min_depth}, {self.max_depth})")
    self.pixel_sums += other.pixel_sums
    self.pixels += other.pixels
    self.image_sums += other.image_sums
    self.images += other.images
    self.skipped_images += other.skipped_images

  def result(self, average: str | None = None) -> dict[str, float]:
    average = average or self.average
    if average not in DEPTH_AVERAGES:
      raise UsageError(f"average is {average!r}, expected one of {list(DEPTH_AVERAGES)}")
    if average == "image":
      values = self.image_sums / self.images if self.images else None
    else:
      values = self._metrics(self.pixel_sums, np.array([self.pixels])) if self.pixels else None
    if values is None:
      return {name: math.nan for name in DEPTH_METRIC_NAMES}
    return dict(zip(DEPTH_METRIC_NAMES, values.tolist()))


# Classification.

class TopKAccuracy:
  """Top-k accuracy from logits [B, C] and integer labels [B].

  A label is in the top k when fewer than k classes rank above it, sorting by logit and
  then by class index: deterministic, and constant logits (a dead head) score as chance,
  not as perfect. A k above the number of classes counts every sample (as timm does).
  """

  def __init__(self, ks: Sequence[int] = (1, 5)):
    if not ks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
      raise UsageError(f"ks must be positive integers, got {list(ks)!r}")
    self.ks = tuple(int(k) for k in ks)
    self.correct = np.zeros(len(self.ks), np.int64)
    self.count = 0

  def update(self, logits, labels) -> None:
    logits = np.asarray(logits)
    labels = integer_array("labels", labels, ndim=1)
    if logits.ndim != 2 or len(logits) != len(labels):
      raise UsageError(f"logits must be [batch, classes] with one row per label, got "
                       f"logits {logits.shape} and labels {labels.shape}")
    if np.isnan(logits).any():
      raise UsageError("logits contain NaN")
    check_range("labels", labels, logits.shape[1])
    label_logits = logits[np.arange(len(labels)), labels][:, None]
    earlier_class = np.arange(logits.shape[1])[None, :] < labels[:, None]
    rank = ((logits > label_logits) | ((logits == label_logits) & earlier_class)).sum(1)
    self.correct += (rank[:, None] < np.array(self.ks)[None, :]).sum(0)
    self.count += len(labels)

  def merge(self, other: TopKAccuracy) -> None:
    if other.ks != self.ks:
      raise UsageError(f"cannot merge top-k accuracies for ks {other.ks} and {self.ks}")
    self.correct += other.correct
    self.count += other.count

  def result(self) -> dict[str, float]:
    return {f"top{k}": ratio(correct, self.count) for k, correct in zip(self.ks, self.correct)}
