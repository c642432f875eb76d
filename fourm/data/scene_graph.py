"""What a viewer can say about a synthetic scene: the objects in view, the phrases that
pick exactly one of them out, and where one stands relative to another.

Instruction tasks are phrased from these facts and their checks resolve the phrases
against them again (`instruction_answers.py`), so a task and its check agree on what
"the red cube" or "left of" means. Positions are camera-frame, as the captions' are
(`captions.py`): left / right along the image's x axis, front / behind along the
viewing direction.

An object is *in view* when at least one pixel shows it, and *clearly* in view from
`CLEAR_SHARE` of the image on. Tasks name only objects clearly in view, and no answer
may depend on an object that is barely in view (whether a viewer noticed it or not):
such a phrase, count or relation is refused (None) rather than guessed.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from fourm.data import synthetic

OBJECT_NOUN = "object"  # the noun of a phrase that leaves the class out: "the red object"
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
RELATIONS = ("left", "right", "front", "behind")
# 0.4 % of the image: 16 pixels at 64 px, about a 4-pixel-wide patch of an object.
CLEAR_SHARE = 0.004
# A relation holds when its axis dominates: "left of" needs |dx| >= 1.5 |dz| (camera
# frame). An object nearer the diagonal is in no clear relation, and questions whose
# answer would depend on it are not asked.
DOMINANCE = 1.5
# Attributes a phrase can name, in the order it names them: "the large red cube".
ATTRIBUTES = ("size", "color", "category")


def plural(category: str) -> str:
  return category + "s"  # every class of the world: spheres, cubes, cones, ...


# eq=False: fields hold numpy arrays.
@dataclasses.dataclass(frozen=True, eq=False)
class SeenObject:
  """One object in view: its attributes, where it is, and how much of it shows."""
  index: int                   # its position in `scene.objects` (object_index's ids)
  category: str
  color: str
  size: str
  camera_position: np.ndarray  # [3] center, camera frame (x right, y down, z forward)
  pixels: int
  clear: bool                  # clearly in view (`CLEAR_SHARE`)


@dataclasses.dataclass(frozen=True, eq=False)
class SceneView:
  """A scene with its render and the objects in view: what tasks and checks read."""
  scene: synthetic.Scene
  maps: dict                   # `synthetic.render`'s maps
  seen: tuple[SeenObject, ...]  # in scene order

  @classmethod
  def render(cls, scene: synthetic.Scene, resolution: int) -> SceneView:
    maps = synthetic.render(scene, resolution)
    return cls(scene, maps, seen_objects(scene, maps["object_index"]))

  @property
  def resolution(self) -> int:
    return self.maps["rgb"].shape[0]

  def mask(self, obj: SeenObject) -> np.ndarray:
    return self.maps["object_index"] == obj.index


def seen_objects(scene: synthetic.Scene, object_index: np.ndarray) -> tuple[SeenObject, ...]:
  pixels = np.bincount(object_index.ravel() + 1, minlength=len(scene.objects) + 1)[1:]
  clear_from = CLEAR_SHARE * object_index.size
  return tuple(
      SeenObject(k, obj.category, obj.color, obj.size, scene.to_camera(obj.position),
                 int(pixels[k]), bool(pixels[k] >= clear_from))
      for k, obj in enumerate(scene.objects) if pixels[k])


@dataclasses.dataclass(frozen=True)
class Referent:
  """A definite description ("the large red cube"); unset attributes are not named,
  and a referent without a class says "object"."""
  category: str | None = None
  color: str | None = None
  size: str | None = None

  def fits(self, obj: SeenObject) -> bool:
    return all(getattr(self, name) in (None, getattr(obj, name)) for name in ATTRIBUTES)

  @property
  def phrase(self) -> str:
    words = [self.size, self.color, self.category or OBJECT_NOUN]
    return "the " + " ".join(w for w in words if w)


def referents(obj: SeenObject, seen: tuple[SeenObject, ...], *,
              without: tuple[str, ...] = ()) -> list[Referent]:
  """Every description of `obj` that fits no other object in view, shortest first,
  naming none of the attributes in `without` ("color" for "what color is ...?"). The
  class is named unless it is left out; then at least one other attribute is. None
  for an object not clearly in view."""
  if not obj.clear:
    return []
  named = [a for a in ATTRIBUTES if a not in without]
  found = []
  for length in range(1, len(named) + 1):
    for subset in itertools.combinations(named, length):
      if "category" in named and "category" not in subset:
        continue
      referent = Referent(**{a: getattr(obj, a) for a in subset})
      if sum(referent.fits(o) for o in seen) == 1:
        found.append(referent)
  return found


def resolve(referent: Referent, seen: tuple[SeenObject, ...]) -> SeenObject | None:
  """The one object in view the description fits, clearly in view; else None."""
  fitting = [o for o in seen if referent.fits(o)]
  return fitting[0] if len(fitting) == 1 and fitting[0].clear else None


def relations(a: SeenObject, b: SeenObject) -> tuple[str, ...]:
  """Where `a` is relative to `b` as the viewer sees it: one relation when its axis
  dominates (`DOMINANCE`), else both that a viewer might say ("left", "front")."""
  dx = a.camera_position[0] - b.camera_position[0]
  dz = a.camera_position[2] - b.camera_position[2]
  across, along = ("left" if dx < 0 else "right"), ("front" if dz < 0 else "behind")
  if abs(dx) >= DOMINANCE * abs(dz):
    return (across,)
  if abs(dz) >= DOMINANCE * abs(dx):
    return (along,)
  return (across, along)


def related(seen: tuple[SeenObject, ...], anchor: SeenObject, rel: str) -> SeenObject | None:
  """The one object that is `rel` of `anchor` ("what is left of the red cone?"), or
  None: when none or several are, when it is not clearly in view, or when another
  object might be said to be `rel` of the anchor too (it is near the diagonal)."""
  others = [(o, relations(o, anchor)) for o in seen if o.index != anchor.index]
  if any(rel in found and len(found) > 1 for _, found in others):
    return None
  matches = [o for o, found in others if found == (rel,)]
  return matches[0] if len(matches) == 1 and matches[0].clear else None


def count(seen: tuple[SeenObject, ...], category: str) -> int | None:
  """How many objects of the class are in view, or None when one is barely in view."""
  of_class = [o for o in seen if o.category == category]
  if not all(o.clear for o in of_class):
    return None
  return len(of_class)
