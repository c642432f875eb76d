"""The object-level quality checks of `fourm/generation/evaluate.py` (issue 20's table):
the largest object named by a caption, boxes scored by COCO AP, object mIoU."""

from __future__ import annotations

import numpy as np
import pytest

from fourm.data import synthetic, world
from fourm.finetune.coco_metrics import CocoDetectionMetric
from fourm.generation import evaluate


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
  data = str(tmp_path_factory.mktemp("objects") / "world")
  world.write_world(data, 40, 64, seed=3, val_fraction=0.5, workers=1, progress=False,
                    log=lambda _: None)
  return [data], evaluate.held_out_records([data], "val", 20)


def test_the_true_caption_names_the_largest_object_and_another_scenes_rarely(scenes):
  data, held_out = scenes
  largest = [evaluate.largest_object(data, r) for r in held_out]
  assert all(obj is not None for obj in largest)
  for (color, category), record in zip(largest, held_out):
    # The re-drawn scene agrees with the record: the object's class covers most object pixels.
    counts = np.bincount(record["instance"].ravel())
    biggest = int(np.argmax(counts[1:]))
    assert record["det"]["classes"][biggest] == category
    assert evaluate.names_object(record["caption"], color, category)
  shifted = [evaluate.names_object(held_out[(i + 1) % len(held_out)]["caption"], *obj)
             for i, obj in enumerate(largest)]
  assert np.mean(shifted) < 0.5


def test_names_object_wants_color_and_shape_together():
  assert evaluate.names_object("A large Red cube left of a blue sphere.", "red", "cube")
  assert not evaluate.names_object("a large blue cube left of a red sphere.", "red", "cube")
  assert not evaluate.names_object("a red cubes", "red", "cube")


def test_boxes_want_an_empty_metric_over_the_object_classes(scenes):
  data, held_out = scenes
  with pytest.raises(Exception, match="empty metric over the 5 object classes"):
    evaluate.rgb_to_boxes(_Boxes(held_out, lambda r: r["det"]), data,
                          CocoDetectionMetric(80), count=4)


def test_a_world_is_needed_to_redraw_scenes(tmp_path, scenes):
  _, held_out = scenes
  with pytest.raises(Exception, match="synthetic world"):
    evaluate.largest_object([str(tmp_path)], held_out[0])


def _metric():
  return CocoDetectionMetric(len(synthetic.OBJECT_CLASSES))


class _Boxes:
  """A stand-in generator whose det output is a function of the held-out record."""

  def __init__(self, records, boxes_of):
    self.by_image = {r["rgb"].tobytes(): boxes_of(r) for r in records}

  def generate(self, conditions, chain, num_samples):
    found = [self.by_image[np.asarray(image).tobytes()] for image in conditions["rgb"]]
    return type("Result", (), {"decode": lambda _, name, i: found[i]})()


def test_boxes_ap50_is_one_for_the_truth_and_low_for_other_scenes(scenes):
  data, held_out = scenes
  truth = evaluate.rgb_to_boxes(_Boxes(held_out, lambda r: r["det"]), data, _metric(),
                                count=20, batch_size=8)
  assert truth["box_ap50"] == pytest.approx(1.0) and truth["boxes_unknown_class"] == 0
  following = {id(r): held_out[(i + 1) % len(held_out)]["det"] for i, r in enumerate(held_out)}
  other = evaluate.rgb_to_boxes(_Boxes(held_out, lambda r: following[id(r)]), data,
                                _metric(), count=20, batch_size=8)
  assert other["box_ap50"] < 0.3
  # Boxes of a class the world does not have are counted, not scored.
  trees = _Boxes(held_out, lambda r: {"boxes": r["det"]["boxes"],
                                      "classes": ["tree"] * len(r["det"]["classes"])})
  odd = evaluate.rgb_to_boxes(trees, data, _metric(), count=20, batch_size=8)
  assert odd["boxes_unknown_class"] == odd["boxes_generated"] > 0 and odd["box_ap50"] == 0


def test_object_miou_leaves_out_floor_and_wall():
  truth = np.zeros((1, 4, 4), np.int64)
  truth[0, 2:] = 1  # floor
  truth[0, 0, 0] = evaluate.OBJECT_CLASS_IDS[0]
  prediction = truth.copy()
  prediction[0, 0, 0] = 0
  assert evaluate.miou(prediction, truth, evaluate.OBJECT_CLASS_IDS) == 0.0
  assert evaluate.miou(prediction, truth) > 0.5
  assert evaluate.miou(truth, truth, evaluate.OBJECT_CLASS_IDS) == 1.0
