"""One-attribute edits of a synthetic scene: an object's color, size or position.

An edit returns a new `Scene` with one object replaced and everything else (camera,
light, floor, backdrop, the other objects) untouched, so rendering it with
`synthetic.render` gives the same picture but for that object (and its cast shadow).
An edit that would make the object overlap another one, or reach further from the
scene's center than sampled footprints do (which keeps it clear of the camera), returns
None.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from fourm.data import synthetic

# Kept between footprints, as `synthetic._place_objects` keeps it when it samples scenes.
FOOTPRINT_GAP = 0.1
# Sampled footprints end within this distance of the origin (centers within
# SCENE_RADIUS, footprint radii under 1 m), and the camera stands beyond 3.7 m.
MAX_REACH = synthetic.SCENE_RADIUS + 1.0
DIRECTIONS = ("left", "right")


def recolor(scene: synthetic.Scene, index: int, color: str) -> synthetic.Scene:
  if color not in synthetic.COLORS:
    raise ValueError(f"unknown color {color!r}; the world paints {list(synthetic.COLORS)}")
  return _replace(scene, index, dataclasses.replace(scene.objects[index], color=color))


def resize(scene: synthetic.Scene, index: int, size: str) -> synthetic.Scene | None:
  """The object at the other size class, scaled about its footprint's center: its own
  jitter within the class is kept, and it still rests on the floor."""
  if size not in synthetic.SIZES:
    raise ValueError(f"unknown size {size!r}; the world has {list(synthetic.SIZES)}")
  obj = scene.objects[index]
  scale = synthetic.SIZES[size] / synthetic.SIZES[obj.size]
  half_size = obj.half_size * scale
  position = np.array([obj.position[0], half_size[1], obj.position[2]])
  return _placed(scene, index, dataclasses.replace(obj, size=size, half_size=half_size,
                                                    position=position))


def move(scene: synthetic.Scene, index: int, direction: str,
         distance: float) -> synthetic.Scene | None:
  """The object slid `distance` metres along the floor to the viewer's left or right
  (the camera's x axis, which is horizontal: the camera never rolls)."""
  if direction not in DIRECTIONS:
    raise ValueError(f"unknown direction {direction!r}; one of {DIRECTIONS}")
  right = scene.camera_rotation[:, 0]
  step = (distance if direction == "right" else -distance) * right
  obj = scene.objects[index]
  return _placed(scene, index, dataclasses.replace(obj, position=obj.position + step))


def _placed(scene: synthetic.Scene, index: int,
            obj: synthetic.SceneObject) -> synthetic.Scene | None:
  x, z = obj.position[0], obj.position[2]
  if math.hypot(x, z) + obj.footprint_radius > MAX_REACH:
    return None
  for k, other in enumerate(scene.objects):
    gap = math.hypot(x - other.position[0], z - other.position[2])
    if k != index and gap <= obj.footprint_radius + other.footprint_radius + FOOTPRINT_GAP:
      return None
  return _replace(scene, index, obj)


def _replace(scene: synthetic.Scene, index: int,
             obj: synthetic.SceneObject) -> synthetic.Scene:
  objects = scene.objects[:index] + (obj,) + scene.objects[index + 1:]
  return dataclasses.replace(scene, objects=objects)
