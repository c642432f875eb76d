"""The exact answer of an instruction on a synthetic scene, from its scene graph.

* segment the <class>: the scene's semantic map with every *other* object turned to
  the background class; the floor and the wall keep their classes. The class asked for
  is then exactly the pixels that hold its id, and the map otherwise looks like the
  world's maps (a floor under a wall), which a semseg tokenizer was trained on.
* detect the <class>: the boxes of the objects of that class in view (the world's det,
  filtered); none if no such object is in view.
* questions: a short text ("a small blue sphere", "green", "two", "cube", "small").
* edits: the edited scene (`scene_edits`), which `synthetic.render` draws exactly.

A question the scene cannot answer unambiguously (the referent fits no single object,
a relation or a count depends on an object barely in view) has no answer: None.
"""

from __future__ import annotations

import numpy as np

from fourm.data import captions, scene_edits, scene_graph, synthetic
from fourm.data.instruction_phrases import Edit, Question
from fourm.data.scene_graph import SceneView

BACKGROUND = synthetic.CLASSES.index("background")
OBJECT_IDS = np.array([synthetic.CLASSES.index(c) for c in synthetic.OBJECT_CLASSES])


def class_id(category: str) -> int:
  if category not in synthetic.OBJECT_CLASSES:
    raise ValueError(f"unknown object class {category!r}; one of {synthetic.OBJECT_CLASSES}")
  return synthetic.CLASSES.index(category)


def segment_answer(category: str, view: SceneView) -> np.ndarray:
  semseg = view.maps["semseg"]
  others = np.isin(semseg, OBJECT_IDS) & (semseg != class_id(category))
  return np.where(others, BACKGROUND, semseg).astype(np.uint8)


def detect_answer(category: str, view: SceneView) -> dict:
  class_id(category)  # names an object class
  _, det, _ = synthetic.instances_and_boxes(view.maps["object_index"], view.scene)
  keep = [i for i, c in enumerate(det["classes"]) if c == category]
  return {"boxes": det["boxes"][keep].reshape(-1, 4), "classes": [category] * len(keep)}


def question_answer(question: Question, view: SceneView) -> str | None:
  if question.kind == "count":
    number = scene_graph.count(view.seen, question.category)
    return None if number is None else scene_graph.NUMBER_WORDS[number]
  obj = scene_graph.resolve(question.referent, view.seen)
  if obj is None:
    return None
  if question.kind == "relation":
    other = scene_graph.related(view.seen, obj, question.relation)
    return None if other is None else captions.full_name(other)
  return {"color": obj.color, "shape": obj.category, "size": obj.size}[question.kind]


def edited_scene(edit: Edit, view: SceneView, distance: float) -> synthetic.Scene | None:
  """The scene with the edit made (a move goes `distance` metres), or None when the
  referent fits no single object or the edited object would not fit on the floor."""
  obj = scene_graph.resolve(edit.referent, view.seen)
  if obj is None:
    return None
  if edit.attribute == "color":
    return scene_edits.recolor(view.scene, obj.index, edit.value)
  if edit.attribute == "size":
    return scene_edits.resize(view.scene, obj.index, edit.value)
  return scene_edits.move(view.scene, obj.index, edit.value, distance)
