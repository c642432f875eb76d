"""Captions for synthetic scenes, written from the scene graph rather than the pixels.

Each visible object is introduced once with its size, color and class ("a large red
cube"); the first sentence relates the first two objects and every later object is
related to one already mentioned, which is then named as briefly as stays unambiguous
("the cube", "the red cube"). Relations come from camera-frame positions, i.e. as the
viewer sees them. Object order, anchors and phrasing are drawn from the given rng, so a
caption is a deterministic function of (scene, rng state).
"""

from __future__ import annotations

import dataclasses

import numpy as np

NEAR_GAP = 0.35  # metres between footprints under which two objects are "next to" each other

_RELATION_WORDS = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "front": ("in front of",),
    "behind": ("behind",),
    "near": ("next to", "beside", "close to"),
}
_FIRST_TEMPLATES = ("{a} {rel} {b}.", "{a} is {rel} {b}.", "there is {a} {rel} {b}.")
_LATER_TEMPLATES = ("{new} is {rel} {ref}.", "{rel} {ref} is {new}.",
                    "there is {new} {rel} {ref}.", "{new} stands {rel} {ref}.")
_ALONE_TEMPLATES = ("{a} on the floor.", "{a} stands alone on the floor.",
                    "a single object: {a}.")
_EMPTY = "an empty floor in front of a wall."


@dataclasses.dataclass(frozen=True)
class ObjectView:
  """What a caption needs of one visible object."""
  category: str
  color: str
  size: str
  camera_position: np.ndarray  # [3] center in the camera frame (x right, y down, z forward)
  radius: float                # footprint radius, metres


def relation(a: ObjectView, b: ObjectView) -> str:
  """Where `a` is relative to `b` as the viewer sees it: left, right, front, behind or near."""
  dx = a.camera_position[0] - b.camera_position[0]
  dz = a.camera_position[2] - b.camera_position[2]
  if np.hypot(dx, dz) < a.radius + b.radius + NEAR_GAP:
    return "near"
  if abs(dx) >= abs(dz):
    return "left" if dx < 0 else "right"
  return "front" if dz < 0 else "behind"


def full_name(obj: ObjectView) -> str:
  return f"a {obj.size} {obj.color} {obj.category}"


def short_name(obj: ObjectView, others: list[ObjectView]) -> str:
  """The shortest 'the ...' that no other visible object also fits."""
  keys = ((lambda o: o.category), (lambda o: (o.color, o.category)))
  for words, key in zip((obj.category, f"{obj.color} {obj.category}"), keys):
    if sum(key(o) == key(obj) for o in others) == 1:
      return f"the {words}"
  return f"the {obj.size} {obj.color} {obj.category}"


def _pick(rng: np.random.Generator, options):
  return options[rng.integers(len(options))]


def describe(objects: list[ObjectView], rng: np.random.Generator) -> str:
  """A lowercase caption ending with a period that mentions every object's class."""
  if not objects:
    return _EMPTY
  order = [objects[i] for i in rng.permutation(len(objects))]
  if len(order) == 1:
    return _pick(rng, _ALONE_TEMPLATES).format(a=full_name(order[0]))
  first, second = order[:2]
  sentences = [_pick(rng, _FIRST_TEMPLATES).format(
      a=full_name(first), b=full_name(second),
      rel=_pick(rng, _RELATION_WORDS[relation(first, second)]))]
  for k in range(2, len(order)):
    new, anchor = order[k], order[rng.integers(k)]
    rel = _pick(rng, _RELATION_WORDS[relation(new, anchor)])
    sentences.append(_pick(rng, _LATER_TEMPLATES).format(
        new=full_name(new), ref=short_name(anchor, objects), rel=rel))
  return " ".join(sentences)
