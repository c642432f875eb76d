"""The fine-tune metrics on hand-built cases whose values are worked out by hand: COCO AP
through pycocotools, mIoU from the confusion matrix, the depth metrics, top-k."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

from fourm.errors import UsageError
from fourm.finetune import coco_metrics, task_metrics
from fourm.finetune.coco_metrics import CocoDetectionMetric
from fourm.finetune.task_metrics import DepthMetric, SegmentationMetric, TopKAccuracy

SIZE = (100, 100)  # (height, width) of every test image
BOX = [10.0, 10.0, 20.0, 20.0]  # 10 x 10 pixels: COCO's "small" (area < 32^2)


def detection(gt_boxes, gt_labels, pred_boxes, pred_scores, pred_labels, *,
              num_classes=1, empty_images=0) -> CocoDetectionMetric:
  metric = CocoDetectionMetric(num_classes)
  metric.add_image(gt_boxes, gt_labels, SIZE, pred_boxes, pred_scores, pred_labels)
  for _ in range(empty_images):
    metric.add_image([], [], SIZE, [], [], [])
  return metric


# Detection.

def test_perfect_prediction_scores_one_and_undefined_areas_are_nan():
  result = detection([BOX], [0], [BOX], [0.9], [0], empty_images=2).result()
  # pycocotools' precision is tp / (tp + fp + eps): one less by an ulp or two.
  for name in ("AP", "AP50", "AP75", "APs", "AR100"):
    assert result[name] == pytest.approx(1.0, abs=1e-9), name
  # No medium or large ground truth: COCOeval's -1 is reported as NaN.
  assert math.isnan(result["APm"]) and math.isnan(result["APl"])


def test_iou_between_half_and_three_quarters_counts_at_ap50_only():
  # GT 10 x 10, prediction 10 x 6.8 inside it: IoU 0.68, which matches at thresholds
  # 0.50, 0.55, 0.60, 0.65 of the ten (0.50:0.05:0.95) -> AP = 4/10.
  result = detection([BOX], [0], [[10.0, 10.0, 20.0, 16.8]], [0.9], [0]).result()
  assert result["AP50"] == pytest.approx(1.0, abs=1e-9)
  assert result["AP75"] == 0.0
  assert result["AP"] == pytest.approx(0.4)


def test_false_positive_ranked_first_gives_hand_computed_interpolated_ap():
  # Two GTs. Ranked by score: a false positive (0.9), then a perfect hit on GT one (0.8).
  # Cumulative (recall, precision): (0, 0), (0.5, 0.5). The interpolated precision at
  # recall r is the best precision at any recall >= r: 0.5 for r in {0.00, ..., 0.50}
  # (51 of COCO's 101 points) and 0 above 0.5 (never reached). AP = 51 * 0.5 / 101
  # at every IoU threshold, as the hit is exact.
  truths = [BOX, [50.0, 50.0, 60.0, 60.0]]
  predictions = [[80.0, 80.0, 90.0, 90.0], BOX]
  result = detection(truths, [0, 0], predictions, [0.9, 0.8], [0, 0]).result()
  expected = 51 * 0.5 / 101
  for name in ("AP", "AP50", "AP75"):
    assert result[name] == pytest.approx(expected, abs=1e-6), name
  # The same two predictions with the hit ranked first: precision 1 up to recall 0.5.
  result = detection(truths, [0, 0], predictions, [0.8, 0.9], [0, 0]).result()
  assert result["AP"] == pytest.approx(51 / 101, abs=1e-6)


def test_wrong_class_scores_zero():
  # Class 1 has no GT (left out of the mean); class 0's only GT is never found.
  result = detection([BOX], [0], [BOX], [0.9], [1], num_classes=2).result()
  assert result["AP"] == result["AP50"] == 0.0


def test_no_predictions_score_zero_and_no_ground_truth_is_undefined():
  assert detection([BOX], [0], [], [], []).result()["AP"] == 0.0
  assert all(math.isnan(value) for value in detection([], [], [BOX], [0.9], [0]).result().values())
  assert all(math.isnan(value) for value in CocoDetectionMetric(3).result().values())


def test_crowd_ground_truth_is_neither_found_nor_missed():
  # GT: BOX, and a crowd region that no prediction covers but one (scored higher) lies
  # inside. As a crowd, the region need not be found, and the prediction inside it
  # (crowd IoU is intersection / prediction area = 1) is ignored: AP = 1. As an
  # ordinary GT it is missed and the prediction (IoU 16/100) is a false positive ranked
  # first: (recall, precision) (0, 0), (0.5, 0.5) -> AP = 51 * 0.5 / 101.
  crowd_region, inside = [50.0, 50.0, 60.0, 60.0], [52.0, 52.0, 56.0, 56.0]
  for crowd, expected in ((True, 1.0), (False, 51 * 0.5 / 101)):
    metric = CocoDetectionMetric(1)
    metric.add_image([BOX, crowd_region], [0, 0], SIZE, [inside, BOX], [0.9, 0.8], [0, 0],
                     gt_crowd=[False, crowd])
    assert metric.result()["AP"] == pytest.approx(expected, abs=1e-6), crowd


def test_batched_updates_and_merge_equal_one_set():
  one = CocoDetectionMetric(1)
  one.update([[BOX], [BOX, [50.0, 50.0, 60.0, 60.0]]], [[0], [0, 0]], [SIZE, SIZE],
             [[BOX], [[80.0, 80.0, 90.0, 90.0], BOX]], [[0.7], [0.9, 0.8]], [[0], [0, 0]])
  first, second = CocoDetectionMetric(1), CocoDetectionMetric(1)
  first.add_image([BOX], [0], SIZE, [BOX], [0.7], [0])
  second.add_image([BOX, [50.0, 50.0, 60.0, 60.0]], [0, 0], SIZE,
                   [[80.0, 80.0, 90.0, 90.0], BOX], [0.9, 0.8], [0, 0])
  first.merge(second)
  assert len(first) == 2
  assert first.result() == pytest.approx(one.result(), nan_ok=True)
  assert "Average Precision" in one.summary  # pycocotools' table, captured not printed


def test_coco_results_file(tmp_path):
  metric = CocoDetectionMetric(2)
  metric.add_image([BOX], [0], SIZE, [[1.0, 2.0, 4.0, 8.0]], [0.5], [1], image_id=139)
  path = str(tmp_path / "results.json")
  coco_metrics.write_coco_results(path, metric.coco_results(category_ids=[1, 3]))
  with open(path) as file:
    assert json.load(file) == [{"image_id": 139, "category_id": 3,
                                "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}]


def test_matches_pycocotools_reading_our_results_file(tmp_path):
  # A random set of 20 images, 3 classes, sizes in all three COCO area ranges, evaluated
  # both in memory and the usual way: a ground-truth file, and the results file loaded
  # by COCO.loadRes.
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  rng = np.random.default_rng(0)

  def random_boxes(count):
    corner = rng.uniform(0, 300, (count, 2))
    return np.concatenate([corner, corner + rng.uniform(5, 200, (count, 2))], axis=1)

  metric = CocoDetectionMetric(3)
  images, annotations = [], []
  for image_id in range(100, 120):
    truths = random_boxes(rng.integers(0, 5))
    labels = rng.integers(0, 3, len(truths))
    # Predictions: the truths jittered, some relabelled, plus random boxes.
    jittered = truths + rng.normal(0, 8, truths.shape)
    jittered[:, 2:] = np.maximum(jittered[:, 2:], jittered[:, :2])
    predictions = np.concatenate([jittered, random_boxes(rng.integers(0, 4))])
    predicted_labels = np.concatenate([np.where(rng.random(len(truths)) < 0.8, labels, 0),
                                       rng.integers(0, 3, len(predictions) - len(truths))])
    metric.add_image(truths, labels, (500, 500), predictions, rng.random(len(predictions)),
                     predicted_labels, image_id=image_id)
    images.append({"id": image_id, "height": 500, "width": 500})
    for box, label in zip(truths.tolist(), labels.tolist()):
      width, height = box[2] - box[0], box[3] - box[1]
      annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                          "category_id": label, "iscrowd": 0, "area": width * height,
                          "bbox": [box[0], box[1], width, height]})
  path = tmp_path / "truth.json"
  path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [
      {"id": label, "name": str(label)} for label in range(3)]}))
  results = str(tmp_path / "results.json")
  coco_metrics.write_coco_results(results, metric.coco_results())
  with contextlib.redirect_stdout(io.StringIO()):
    truth = COCO(str(path))
    evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
  expected = dict(zip(coco_metrics.COCO_METRIC_NAMES, evaluation.stats.tolist()))
  result = metric.result()
  assert 0.1 < result["AP"] < 0.9 and min(expected.values()) >= 0  # a case worth comparing
  assert result == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("change, message", [
    ({"gt_boxes": [[20.0, 10.0, 10.0, 20.0]]}, "xmax >= xmin"),
    ({"gt_labels": [1]}, r"\[0, 1\)"),
    ({"pred_labels": [-1]}, r"\[0, 1\)"),
    ({"pred_scores": [0.9, 0.8]}, "pred_scores"),
    ({"gt_boxes": [[1.0, 2.0, 3.0]]}, r"\[n, 4\]"),
])
def test_detection_refuses_bad_input(change, message):
  image = dict(gt_boxes=[BOX], gt_labels=[0], image_size=SIZE, pred_boxes=[BOX],
               pred_scores=[0.9], pred_labels=[0])
  with pytest.raises(UsageError, match=message):
    CocoDetectionMetric(1).add_image(**{**image, **change})


def test_detection_refuses_a_repeated_image_id():
  metric = CocoDetectionMetric(1)
  metric.add_image([BOX], [0], SIZE, [], [], [], image_id=7)
  with pytest.raises(UsageError, match="image_id 7"):
    metric.add_image([BOX], [0], SIZE, [], [], [], image_id=7)


# Semantic segmentation.

LABELS = np.array([[0, 0, 1],
                   [1, 2, 255]])
PREDICTIONS = np.array([[0, 1, 1],
                        [1, 1, 0]])
# The five labelled pixels as (label, prediction): (0,0) (0,1) (1,1) (1,1) (2,1).
# IoU_0 = 1 / (2 + 1 - 1) = 1/2; IoU_1 = 2 / (2 + 4 - 2) = 1/2; IoU_2 = 0 / 1 = 0.
# A class 3 in neither map is left out: mIoU = (1/2 + 1/2 + 0) / 3 = 1/3, not 1/4.
# Pixel accuracy 3/5; class accuracies 1/2, 1, 0 -> 1/2. Counting the ignored pixel
# (label 255, prediction 0) as class 0 would give IoU_0 = 2/3 instead.


def test_miou_on_a_hand_computed_map():
  metric = SegmentationMetric(num_classes=4)
  metric.update(PREDICTIONS[None], LABELS[None])
  np.testing.assert_allclose(metric.per_class_iou(), [0.5, 0.5, 0.0, np.nan])
  result = metric.result()
  assert result["mIoU"] == pytest.approx(1 / 3)
  assert result["pixel_accuracy"] == pytest.approx(3 / 5)
  assert result["mean_class_accuracy"] == pytest.approx(1 / 2)
  assert metric.confusion.sum() == 5


def test_miou_accumulates_over_batches_and_processes():
  other_labels = np.array([[2, 2, 255], [3, 0, 1]])
  other_predictions = np.array([[2, 0, 3], [3, 3, 1]])
  together = SegmentationMetric(4)
  together.update(np.stack([PREDICTIONS, other_predictions]), np.stack([LABELS, other_labels]))
  batches, process = SegmentationMetric(4), SegmentationMetric(4)
  batches.update(PREDICTIONS[None], LABELS[None])
  process.update(other_predictions[None], other_labels[None])
  batches.merge(process)
  np.testing.assert_array_equal(batches.confusion, together.confusion)
  assert batches.result() == together.result()
  sequential = SegmentationMetric(4)
  sequential.update(PREDICTIONS, LABELS)
  sequential.update(other_predictions, other_labels)
  np.testing.assert_array_equal(sequential.confusion, together.confusion)


def test_an_ignore_index_inside_the_classes_is_left_out_of_the_mean():
  # scene_parse150 kept raw: 0 is "other". Label 0 pixels count nowhere; predicting 0 on
  # a labelled pixel is a miss for its class, but class 0 gets no IoU of its own.
  labels = np.array([[0, 1, 1, 2]])
  predictions = np.array([[1, 1, 0, 2]])
  metric = SegmentationMetric(num_classes=3, ignore_index=0)
  metric.update(predictions, labels)
  # IoU_1 = 1 / (2 + 1 - 1) = 1/2, IoU_2 = 1.
  np.testing.assert_allclose(metric.per_class_iou(), [np.nan, 0.5, 1.0])
  assert metric.result()["mIoU"] == pytest.approx(0.75)
  reduced = task_metrics.reduce_zero_label(np.array([0, 1, 150, 255], np.uint8))
  np.testing.assert_array_equal(reduced, [255, 0, 149, 255])
  assert reduced.dtype == np.uint8


def test_segmentation_refuses_bad_input():
  metric = SegmentationMetric(3)
  with pytest.raises(UsageError, match="same shape"):
    metric.update(np.zeros((1, 2, 3), int), np.zeros((1, 3, 2), int))
  with pytest.raises(UsageError, match=r"labels .*\[0, 3\)"):
    metric.update(np.zeros((2, 2), int), np.array([[0, 3], [1, 255]]))
  with pytest.raises(UsageError, match=r"predictions .*\[0, 3\)"):
    metric.update(np.array([[0, 7]]), np.array([[0, 1]]))
  with pytest.raises(UsageError, match="integers"):
    metric.update(np.zeros((2, 2)), np.zeros((2, 2), int))
  assert math.isnan(metric.result()["mIoU"])  # nothing was added


# Depth.

# Four valid pixels and one without a reading (0), whose prediction must not count.
TARGET = np.array([[[1.0, 2.0, 4.0, 5.0, 0.0]]])
PREDICTION = np.array([[[1.0, 2.6, 3.0, 5.0, 7.0]]])
# max(pred/gt, gt/pred): 1, 1.3, 4/3, 1 -> delta1 = 2/4 (both 1.3 and 4/3 >= 1.25);
# delta2 = 1 (all < 1.5625). abs-rel = (0 + 0.6/2 + 1/4 + 0) / 4 = 0.1375;
# sq-rel = (0 + 0.36/2 + 1/4 + 0) / 4 = 0.1075; RMSE = sqrt((0.36 + 1) / 4) = sqrt(0.34).


def test_depth_metrics_on_four_pixels():
  metric = DepthMetric()
  metric.update(PREDICTION, TARGET)
  result = metric.result()
  assert result["delta1"] == pytest.approx(0.5)
  assert result["delta2"] == result["delta3"] == 1.0
  assert result["abs_rel"] == pytest.approx(0.1375)
  assert result["sq_rel"] == pytest.approx(0.1075)
  assert result["rmse"] == pytest.approx(math.sqrt(0.34))
  log_errors = np.log([1.0, 2.6 / 2, 3 / 4, 1.0])
  assert result["rmse_log"] == pytest.approx(math.sqrt(np.mean(log_errors ** 2)))
  assert result["log10"] == pytest.approx(np.mean(np.abs(log_errors)) / math.log(10))
  assert metric.pixels == 4 and metric.images == 1


def test_depth_range_mask_and_clipping():
  # max_depth 4.5 drops the 5.0 pixel, `valid` drops the first: left are 2.0 -> 2.6 and
  # 4.0 -> 3.0, so abs-rel = (0.3 + 0.25) / 2 = 0.275.
  metric = DepthMetric(max_depth=4.5)
  metric.update(PREDICTION, TARGET, valid=np.array([[[False, True, True, True, True]]]))
  assert metric.result()["abs_rel"] == pytest.approx(0.275)
  # A prediction above max_depth is clipped to it: 2.0 -> 10 counts as 2.0 -> 4.5.
  metric = DepthMetric(max_depth=4.5)
  metric.update(np.array([[[10.0]]]), np.array([[[2.0]]]))
  assert metric.result()["abs_rel"] == pytest.approx(1.25)


def test_depth_per_image_and_per_pixel_averages_differ_as_they_should():
  # Image A: one pixel, abs-rel 1 (2 for 1). Image B: three exact pixels, abs-rel 0.
  # Per image: (1 + 0) / 2 = 0.5; per pixel: 1 / 4.
  predictions = np.array([[[2.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]]])
  targets = np.array([[[1.0, 0.0, np.nan]], [[1.0, 1.0, 1.0]]])
  metric = DepthMetric()
  metric.update(predictions, targets)
  assert metric.result()["abs_rel"] == pytest.approx(0.5)
  assert metric.result(average="pixel")["abs_rel"] == pytest.approx(0.25)
  pooled = DepthMetric(average="pixel")
  pooled.update(predictions[:1], targets[:1])
  second = DepthMetric(average="pixel")
  second.update(predictions[1:], targets[1:])
  second.update(np.zeros((1, 1, 2)), np.zeros((1, 1, 2)))  # no valid pixel: skipped
  pooled.merge(second)
  assert pooled.result()["abs_rel"] == pytest.approx(0.25)
  assert pooled.result(average="image")["abs_rel"] == pytest.approx(0.5)
  assert pooled.skipped_images == 1


def test_depth_refuses_bad_input():
  with pytest.raises(UsageError, match="same shape"):
    DepthMetric().update(np.ones((1, 2, 2)), np.ones((1, 2, 3)))
  with pytest.raises(UsageError, match="same shape"):
    DepthMetric().update(np.ones((2, 2)), np.ones((2, 2)))  # no batch axis
  with pytest.raises(UsageError, match="NaN"):
    DepthMetric().update(np.full((1, 1, 1), np.nan), np.ones((1, 1, 1)))
  with pytest.raises(UsageError, match="average"):
    DepthMetric(average="scene")
  assert all(math.isnan(value) for value in DepthMetric().result().values())


# Classification.

LOGITS = np.array([
    [0.1, 0.9, 0.3, 0.2, 0.0, 0.5],  # label 1: rank 0 -> top-1 and top-5
    [0.8, 0.1, 0.7, 0.6, 0.5, 0.4],  # label 5: rank 4 -> top-5 only
    [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 5: rank 5 -> neither
])
TOP_LABELS = np.array([1, 5, 5])


def test_top_k_on_a_tiny_table():
  metric = TopKAccuracy()
  metric.update(LOGITS, TOP_LABELS)
  assert metric.result() == pytest.approx({"top1": 1 / 3, "top5": 2 / 3})
  other = TopKAccuracy()
  other.update(LOGITS[:1], TOP_LABELS[:1])  # one more hit at both
  metric.merge(other)
  assert metric.result() == pytest.approx({"top1": 2 / 4, "top5": 3 / 4})


def test_top_k_ties_go_to_the_lower_class_index():
  metric = TopKAccuracy(ks=(1, 2, 10))
  metric.update(np.zeros((3, 3)), np.array([0, 1, 2]))  # constant logits: chance, not 1
  assert metric.result() == pytest.approx({"top1": 1 / 3, "top2": 2 / 3, "top10": 1.0})


def test_top_k_refuses_bad_input():
  with pytest.raises(UsageError, match=r"\[0, 6\)"):
    TopKAccuracy().update(LOGITS, np.array([1, 6, 0]))
  with pytest.raises(UsageError, match="one row per label"):
    TopKAccuracy().update(LOGITS, np.array([1, 2]))
  with pytest.raises(UsageError, match="NaN"):
    TopKAccuracy().update(np.full((1, 2), np.nan), np.array([0]))
