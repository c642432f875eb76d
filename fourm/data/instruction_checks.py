"""Does an answer follow an instruction? `check(instruction, answer, source)` says so for
a true answer or a generated one, and gives the measure behind the verdict.

`source` is the scene the instruction was given on (`SceneView`); the instruction is
parsed and resolved against it, so any text in the templates' words can be checked,
held-out ones included. The answer is a dict holding the task's answer field
(`ANSWER_FIELDS`), at the source's resolution or resampled to it:

* edit (rgb): the object the instruction names must show the change, judged by color
  (`color_detector`) on the pixels where the object is: a recolor turns at least
  `EDIT_MIN_SHARE` of the object's pixels the new color; "make ... large / small"
  grows / shrinks the pixels of its color by `SIZE_RATIO` (keeping `MIN_REMAINING`);
  a move shifts their center by `MIN_SHIFT` of the image width the named way, keeping
  about their area. Only pixels where the edited object can be are counted (around its
  box, scaled for a resize, in its rows for a move), and none of other objects of the
  same color. And the rest must stay: every other chromatic object clearly in view
  keeps `KEEP_SHARE` of its pixels in its own color (or, after a resize or move, the
  edited object's, which may now cover it). Size and move checks find the object by
  its color, so they need a chromatic object; the task generator makes only such edits.
* segment (semseg): IoU of the pixels labelled the class with the true ones of at least
  `SEGMENT_MIN_IOU` (1 when both are empty), and no other object class on more than
  `OTHER_CLASS_SHARE` of the image.
* detect (det): every true box matched by a box of the class at IoU `BOX_MIN_IOU`, and
  no other box; the score is the F1.
* question (caption): exact match after `normalize_answer` (case, punctuation,
  articles, digits as words).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from fourm.data import augment, color_detector, scene_graph, synthetic
from fourm.data.instruction_answers import (OBJECT_IDS, class_id, detect_answer,
                                            question_answer)
from fourm.data.instruction_phrases import Detect, Edit, Instruction, Question, Segment, parse
from fourm.data.scene_graph import SceneView

ANSWER_FIELDS = {"edit": "rgb", "segment": "semseg", "detect": "det", "question": "caption"}
EDIT_MIN_SHARE = 0.5
SIZE_RATIO = 1.4    # "large" makes a small object's area about 2.8 times larger
MIN_SHIFT = 0.04    # of the image width; a move goes 0.8 m or more, 0.1 of the width or more
MOVE_AREA = (0.5, 2.0)
MIN_REMAINING = 0.1  # "make ... small" shrinks the object, it does not remove it
WINDOW_MARGIN = 0.25
KEEP_SHARE = 0.4
SEGMENT_MIN_IOU = 0.5
OTHER_CLASS_SHARE = 0.01
BOX_MIN_IOU = 0.5


@dataclasses.dataclass(frozen=True)
class Verdict:
  follows: bool
  score: float  # the measure behind the verdict: a share, ratio, shift, IoU, F1 or 0 / 1
  detail: str
  # Edits: whether the named attribute changed as asked, whatever became of the rest of
  # the scene (`follows` also asks that the other objects stay); None for other tasks.
  changed: bool | None = None


def check(instruction: str | Instruction, answer: Mapping[str, Any],
          source: SceneView) -> Verdict:
  """Whether `answer` follows `instruction` given on the scene `source`. ValueError
  for an instruction that names no single object clearly in view there, or that the
  scene cannot answer."""
  parsed = parse(instruction) if isinstance(instruction, str) else instruction
  field = ANSWER_FIELDS[parsed.task]
  if field not in answer:
    raise ValueError(f"a {parsed.task} answer is a {field!r}; got fields {sorted(answer)}")
  value = answer[field]
  if isinstance(parsed, Edit):
    return _edit(parsed, _at_resolution(value, source.resolution, nearest=False), source)
  if isinstance(parsed, Segment):
    return _segment(parsed, _at_resolution(value, source.resolution, nearest=True), source)
  if isinstance(parsed, Detect):
    return _detect(parsed, value, source)
  return _question(parsed, value, source)


def normalize_answer(text: str) -> str:
  words = re.findall(r"[a-z0-9]+", text.lower())
  numbers = scene_graph.NUMBER_WORDS
  words = [numbers[int(w)] if w.isdigit() and int(w) < len(numbers) else w for w in words]
  words = ["gray" if w == "grey" else w for w in words]
  return " ".join(w for w in words if w not in ("a", "an", "the"))


def _at_resolution(image: np.ndarray, size: int, *, nearest: bool) -> np.ndarray:
  image = np.asarray(image)
  height, width = image.shape[:2]
  if (height, width) == (size, size):
    return image
  return augment.resize_box(image, (0, 0, width, height), (size, size), nearest=nearest)


def _named(edit: Edit, view: SceneView) -> scene_graph.SeenObject:
  obj = scene_graph.resolve(edit.referent, view.seen)
  if obj is None:
    raise ValueError(f"{edit.referent.phrase!r} names no single object clearly in view")
  return obj


def _edit(edit: Edit, image: np.ndarray, view: SceneView) -> Verdict:
  obj = _named(edit, view)
  labels = color_detector.color_labels(image)
  if edit.attribute == "color":
    if edit.value not in color_detector.CHROMATIC:
      raise ValueError(f"only recolors to {color_detector.CHROMATIC} can be seen, not "
                       f"{edit.value!r}")
    score = color_detector.share(labels, view.mask(obj), [edit.value])
    changed = score >= EDIT_MIN_SHARE
    what = f"{score:.0%} of the object is {edit.value}"
    cover = ()  # a recolored object covers what it covered before
  else:
    if obj.color not in color_detector.CHROMATIC:
      raise ValueError(f"a {edit.attribute} edit of a {obj.color} object cannot be seen by color")
    changed, score, what = _shape_change(edit, obj, labels, view)
    cover = (obj.color,)  # a grown or moved object may now hide part of another
  lost = [o for o in view.seen if o.index != obj.index and o.clear and
          o.color in color_detector.CHROMATIC and
          color_detector.share(labels, view.mask(o), [o.color, *cover]) < KEEP_SHARE]
  detail = what + ("" if not lost else
                   f"; lost: {', '.join(f'the {o.color} {o.category}' for o in lost)}")
  return Verdict(bool(changed and not lost), float(score), detail, changed=bool(changed))


def _shape_change(edit: Edit, obj, labels: np.ndarray, view: SceneView):
  """(changed, score, detail) of a size or position edit, from the pixels of the
  object's color before (its exact mask) and after (detected), where the edited object
  can be (`_where_it_can_be`)."""
  same_color = np.zeros(labels.shape, bool)
  for other in view.seen:
    if other.index != obj.index and other.color == obj.color:
      same_color |= view.mask(other)
  before = view.mask(obj)
  after = (labels == color_detector.label_of(obj.color)) & ~same_color & \
      _where_it_can_be(edit, obj, before)
  ratio = after.sum() / before.sum()
  if edit.attribute == "size":
    changed = (ratio >= SIZE_RATIO if edit.value == "large" else
               MIN_REMAINING <= ratio <= 1 / SIZE_RATIO)
    return changed, ratio, f"its area changed {ratio:.2f} times"
  if not after.any():
    return False, 0.0, "its color is gone"
  shift = (np.nonzero(after)[1].mean() - np.nonzero(before)[1].mean()) / view.resolution
  toward = -shift if edit.value == "left" else shift
  changed = toward >= MIN_SHIFT and MOVE_AREA[0] <= ratio <= MOVE_AREA[1]
  return changed, toward, f"it moved {toward:+.2f} of the width {edit.value}, area x{ratio:.2f}"


def _where_it_can_be(edit: Edit, obj, before: np.ndarray) -> np.ndarray:
  """The pixels an object edited so can cover, from its box before, with a margin of
  `WINDOW_MARGIN` of its size (+ 1 px). Resized, it keeps its footprint's center, so
  its box scales about its bottom center (by the size classes' ratio, as near as
  perspective allows); moved across the view at the same depth, it keeps its rows
  (the camera never rolls) and goes to the named side."""
  rows, cols = np.nonzero(before)
  top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
  height, width = bottom - top, right - left
  if edit.attribute == "size":
    scale = synthetic.SIZES[edit.value] / synthetic.SIZES[obj.size]
    height, width = height * scale, width * scale
    center = (left + right) / 2
    left, right, top = center - width / 2, center + width / 2, bottom - height
  margin_y, margin_x = WINDOW_MARGIN * height + 1, WINDOW_MARGIN * width + 1
  window = np.zeros(before.shape, bool)
  row_range = slice(max(0, int(np.floor(top - margin_y))), int(np.ceil(bottom + margin_y)))
  if edit.attribute == "size":
    window[row_range, max(0, int(np.floor(left - margin_x))):int(np.ceil(right + margin_x))] = True
  elif edit.value == "left":
    window[row_range, :int(np.ceil(right + margin_x))] = True
  else:
    window[row_range, max(0, int(np.floor(left - margin_x))):] = True
  return window


def _segment(segment: Segment, semseg: np.ndarray, view: SceneView) -> Verdict:
  wanted = class_id(segment.category)
  truth, mine = view.maps["semseg"] == wanted, semseg == wanted
  union = (truth | mine).sum()
  iou = 1.0 if union == 0 else float((truth & mine).sum() / union)
  others = float((np.isin(semseg, OBJECT_IDS) & ~mine).mean())
  return Verdict(iou >= SEGMENT_MIN_IOU and others <= OTHER_CLASS_SHARE, iou,
                 f"IoU {iou:.2f}, other objects on {others:.1%} of the image")


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
  width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = width * height
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _detect(detect: Detect, det: Mapping[str, Any], view: SceneView) -> Verdict:
  truth = list(detect_answer(detect.category, view)["boxes"])
  boxes = np.asarray(det["boxes"], np.float32).reshape(-1, 4)
  wrong_class = sum(c != detect.category for c in det["classes"])
  matched = 0
  for box, category in zip(boxes, det["classes"]):
    if category != detect.category or not truth:
      continue
    ious = [_box_iou(box, t) for t in truth]
    best = int(np.argmax(ious))
    if ious[best] >= BOX_MIN_IOU:
      truth.pop(best)
      matched += 1
  extra = len(boxes) - matched
  missed = len(truth)
  f1 = 1.0 if matched + extra + missed == 0 else 2 * matched / (2 * matched + extra + missed)
  return Verdict(extra == 0 and missed == 0, f1,
                 f"{matched} found, {missed} missed, {extra} extra "
                 f"({wrong_class} of another class)")


def _question(question: Question, text: str, view: SceneView) -> Verdict:
  if question.referent is not None and scene_graph.resolve(question.referent, view.seen) is None:
    raise ValueError(f"{question.referent.phrase!r} names no single object clearly in view")
  truth = question_answer(question, view)
  if truth is None:
    raise ValueError("the scene gives this question no single answer")
  same = normalize_answer(text) == normalize_answer(truth)
  return Verdict(same, float(same), f"{text!r} against {truth!r}")
