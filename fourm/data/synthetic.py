"""The synthetic world: procedural 3D scenes with exactly aligned raw modalities.

This is the project's built-in dataset. A scene is a handful of primitives (spheres,
cubes, cylinders, cones, pyramids) resting on a floor in front of a backdrop wall, seen
by a pinhole camera and lit by one directional light. `raycast` renders it; every
dense map comes from the same camera-ray hit, so rgb, depth, normals, semantic and
instance labels agree to the pixel. Boxes, a caption and a CLIP-like feature map are
derived from those maps and from the scene graph. On request (`extras`) a sample also
holds 4M-21 modalities the world knows exactly (`EXTRA_MODALITIES`): its image edges,
its color palette and its metadata.

Conventions: the world is y-up, in metres, with the floor at y = 0. The camera frame is
OpenCV's (x right, y down, z forward); depth is z-depth; normals are camera-frame unit
vectors facing the camera. Sample `index` of a split depends only on (seed, split,
index), never on the dataset size or the worker that renders it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from fourm.data import captions, measures, raycast
from fourm.modalities import COLOR_PALETTE_MAX

CLASSES = ("background", "floor", "sphere", "cube", "cylinder", "cone", "pyramid")
OBJECT_CLASSES = CLASSES[2:]
COLORS = {
    "red": (0.80, 0.07, 0.06), "green": (0.10, 0.55, 0.12), "blue": (0.07, 0.17, 0.85),
    "yellow": (0.90, 0.78, 0.08), "purple": (0.42, 0.10, 0.68), "cyan": (0.07, 0.65, 0.75),
    "orange": (0.95, 0.36, 0.04), "white": (0.88, 0.88, 0.88), "gray": (0.30, 0.30, 0.30),
}
SIZES = {"small": 0.45, "large": 0.75}  # characteristic radius in metres
FOV_DEG = 50.0
SPLITS = ("train", "val")

AMBIENT = 0.28          # share of light that reaches shadowed and back-facing surfaces
SCENE_RADIUS = 2.4      # object footprints lie within this disc around the origin
BACKDROP_DISTANCE = 6.5  # the backdrop wall stands this far behind the origin
MAX_OBJECTS = 6
CHECKER_SIZE = 1.0      # floor tiles, metres: texture that gives rgb some depth cues
_FLOOR_COLOR = np.array([0.50, 0.47, 0.42])
_BACKDROP_COLOR = np.array([0.62, 0.68, 0.76])
_GAMMA_LEVELS = 4096
# 4M-21 raw modalities a sample holds when asked (`make_sample(extras=...)`).
EXTRA_MODALITIES = ("canny_edge", "color_palette", "metadata")
# Between neighbouring pixels of one surface, a normal turning by more than this is a
# crease (a cube's or pyramid's edge, a cylinder's rim: 77..90 degrees), not curvature
# (a sphere's normal turns by less between pixels unless its radius is under 2 px).
CREASE_DEG = 60.0
# The steps of luma (0..255) that make an image edge, as `fourm pseudolabel`'s Canny
# finds them (pseudolabel/canny.py): one of 50 grey levels starts an edge, which goes
# on along steps of 25. The floor's checker (a step of about 10) is below both.
EDGE_STEPS = (25.0, 50.0)
_PALETTE_STREAM = 1  # the palette's size is drawn from a stream of its own (spawn key)


# eq=False: identity equality, since fields hold numpy arrays (which do not compare to bool).
@dataclasses.dataclass(frozen=True, eq=False)
class SceneObject:
  category: str            # one of OBJECT_CLASSES
  color: str               # a key of COLORS
  size: str                # a key of SIZES
  position: np.ndarray     # [3] world center of the bounding box; the object rests on y = 0
  yaw: float               # rotation about the world's vertical axis, radians
  half_size: np.ndarray    # [3] half extents of the bounding box in the object's frame

  @property
  def footprint_radius(self) -> float:
    """Radius of the smallest vertical cylinder around the object."""
    square = self.category in ("cube", "pyramid")
    return float(self.half_size[0] * (math.sqrt(2) if square else 1.0))


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
  camera_position: np.ndarray   # [3] world
  camera_rotation: np.ndarray   # [3, 3] camera-to-world; columns: right, down, forward
  light_dir: np.ndarray         # [3] unit vector toward the light
  objects: tuple[SceneObject, ...]
  floor_color: np.ndarray       # [3] linear rgb
  backdrop_color: np.ndarray    # [3] linear rgb

  def to_camera(self, points_world: np.ndarray) -> np.ndarray:
    """World points [..., 3] to the camera frame."""
    return (np.asarray(points_world) - self.camera_position) @ self.camera_rotation


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def intrinsics(resolution: int) -> np.ndarray:
  """Pinhole K in pixels; pixel (col, row) has its center at (col + 0.5, row + 0.5)."""
  focal = resolution / 2 / math.tan(math.radians(FOV_DEG) / 2)
  return np.array([[focal, 0.0, resolution / 2], [0.0, focal, resolution / 2],
                   [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------ scene sampling
def _sample_object(rng: np.random.Generator) -> SceneObject:
  category = OBJECT_CLASSES[rng.integers(len(OBJECT_CLASSES))]
  color = list(COLORS)[rng.integers(len(COLORS))]
  size = list(SIZES)[rng.integers(len(SIZES))]
  s = SIZES[size] * rng.uniform(0.9, 1.1)
  # (horizontal half width, half height) per class, scaled so classes look alike in bulk.
  width, height = {
      "sphere": (s, s),
      "cube": (0.8 * s, 0.8 * s),
      "cylinder": (0.8 * s, s * rng.uniform(0.7, 1.2)),
      "cone": (s, s * rng.uniform(0.9, 1.4)),
      "pyramid": (0.85 * s, s * rng.uniform(0.8, 1.2)),
  }[category]
  return SceneObject(category, color, size, np.array([0.0, height, 0.0]),
                     float(rng.uniform(0, 2 * math.pi)), np.array([width, height, width]))


def _place_objects(rng: np.random.Generator, count: int) -> tuple[SceneObject, ...]:
  """Rejection-samples floor positions so that footprints keep a small gap."""
  placed = []
  for _ in range(count):
    obj = _sample_object(rng)
    for _ in range(50):
      radius, angle = SCENE_RADIUS * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
      x, z = radius * math.cos(angle), radius * math.sin(angle)
      if all(math.hypot(x - o.position[0], z - o.position[2])
             > obj.footprint_radius + o.footprint_radius + 0.1 for o in placed):
        placed.append(dataclasses.replace(obj, position=np.array([x, obj.position[1], z])))
        break
  return tuple(placed)


def _look_at(position: np.ndarray, target: np.ndarray) -> np.ndarray:
  forward = target - position
  forward /= np.linalg.norm(forward)
  right = np.cross(forward, [0.0, 1.0, 0.0])  # world y is up, camera y is down
  right /= np.linalg.norm(right)
  return np.stack([right, np.cross(forward, right), forward], axis=1)


def _direction(azimuth: float, elevation: float) -> np.ndarray:
  return np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                   math.cos(elevation) * math.cos(azimuth)])


def sample_scene(rng: np.random.Generator) -> Scene:
  """2..6 objects, a camera 15..40 degrees above the horizon, a light from above.

  The ranges keep every pixel finite: elevation + FOV/2 < 90 degrees, so every camera
  ray heads toward the backdrop, and the camera stays over 3.7 m (horizontally) from
  the origin, beyond every object (whose footprints end within 3.4 m). The light is at least 35 degrees up, so the floor
  always faces it and its dark pixels are cast shadows.
  """
  objects = _place_objects(rng, int(rng.integers(2, MAX_OBJECTS + 1)))
  target = np.array([rng.uniform(-0.3, 0.3), 0.4, rng.uniform(-0.3, 0.3)])
  view = _direction(rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(15, 40)))
  position = target + rng.uniform(5.5, 8.0) * view
  light = _direction(rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(35, 70)))
  # Mildly varied floor and backdrop colors, so that neither is a constant to memorize.
  floor_color, backdrop_color = (c + rng.uniform(-0.07, 0.07, 3)
                                 for c in (_FLOOR_COLOR, _BACKDROP_COLOR))
  return Scene(position, _look_at(position, target), light, objects, floor_color,
               backdrop_color)


# ------------------------------------------------------------------------------ render
def _primitive(obj: SceneObject):
  """The ray caster's solid for one scene object."""
  width, height = obj.half_size[0], obj.half_size[1]
  base = obj.position - np.array([0.0, height, 0.0])
  if obj.category == "sphere":
    return raycast.Sphere(obj.position, width)
  if obj.category == "cube":
    return raycast.box(obj.position, obj.yaw, obj.half_size)
  if obj.category == "cylinder":
    return raycast.Cylinder(base, width, 2 * height)
  if obj.category == "cone":
    return raycast.Cone(base, width, 2 * height)
  if obj.category == "pyramid":
    return raycast.pyramid(base, obj.yaw, width, 2 * height)
  raise ValueError(f"unknown object class {obj.category!r}")


def _backdrop(scene: Scene) -> raycast.Plane:
  """A vertical wall square to the camera's horizontal view direction, facing it."""
  ahead = scene.camera_rotation[:, 2] * [1.0, 0.0, 1.0]
  ahead /= np.linalg.norm(ahead)
  return raycast.Plane(-ahead, -BACKDROP_DISTANCE)


@functools.lru_cache(maxsize=1)
def _gamma_table() -> np.ndarray:
  """Linear intensity (quantized to _GAMMA_LEVELS) -> sRGB-ish uint8, gamma 1/2.2."""
  levels = np.linspace(0.0, 1.0, _GAMMA_LEVELS)
  return np.round(255 * levels ** (1 / 2.2)).astype(np.uint8)


def render(scene: Scene, resolution: int) -> dict:
  """Dense maps of one scene at `resolution` x `resolution`.

  Returns `rgb` uint8 [R,R,3], `depth` float32 [R,R], `normal` float32 [R,R,3],
  `semseg` uint8 [R,R], and maps for checks and derived modalities: `object_index`
  int16 [R,R] (position in `scene.objects`, -1 on floor and backdrop), `shading`
  float32 [R,R] (the lighting factor in [AMBIENT, 1] applied to the albedo),
  `floor_tile` int8 [R,R] (the checker parity 0 / 1 on the floor, -1 elsewhere) and
  `cast_shadow` bool [R,R] (facing the light, but shadowed by an object).
  """
  objects = [_primitive(obj) for obj in scene.objects]
  # Surface index 0 is the backdrop, 1 the floor, 2 + k object k: as the class table.
  surfaces = [_backdrop(scene), raycast.Plane([0.0, 1.0, 0.0], 0.0)] + objects
  hits = raycast.cast(surfaces, objects, scene.camera_position, scene.camera_rotation,
                      FOV_DEG, resolution, scene.light_dir)
  index = hits["index"]

  albedo_table = np.stack([scene.backdrop_color, scene.floor_color] +
                          [COLORS[obj.color] for obj in scene.objects])
  albedo = albedo_table[index]
  floor = np.flatnonzero(index == 1)
  x, z = hits["points"][0, floor], hits["points"][2, floor]
  tile = (np.floor(x / CHECKER_SIZE) + np.floor(z / CHECKER_SIZE)) % 2
  albedo[floor] *= (1.0 - 0.12 * tile)[:, None]
  floor_tile = np.full(index.shape, -1, np.int8)
  floor_tile[floor] = tile
  cast_shadow = (np.asarray(scene.light_dir) @ hits["normals"] > 0) & (hits["direct"] == 0)
  shading = AMBIENT + (1 - AMBIENT) * hits["direct"]
  linear = np.clip(albedo * shading[:, None], 0.0, 1.0)
  rgb = _gamma_table()[(linear * (_GAMMA_LEVELS - 1) + 0.5).astype(np.intp)]

  class_table = np.array([0, 1] + [CLASSES.index(o.category) for o in scene.objects], np.uint8)
  shape = (resolution, resolution)
  return {
      "rgb": rgb.reshape(shape + (3,)),
      "depth": hits["depth"].astype(np.float32).reshape(shape),
      "normal": hits["camera_normals"].T.astype(np.float32).reshape(shape + (3,)),
      "semseg": class_table[index].reshape(shape),
      "object_index": (np.maximum(index, 1).astype(np.int16) - 2).reshape(shape),
      "shading": shading.astype(np.float32).reshape(shape),
      "floor_tile": floor_tile.reshape(shape),
      "cast_shadow": cast_shadow.reshape(shape),
  }


# -------------------------------------------------------------------- derived modalities
def instances_and_boxes(object_index: np.ndarray, scene: Scene):
  """(instance map, det, visible): ids 1..N for the visible objects in scene order, their
  tight boxes, and the positions in `scene.objects` of those N objects."""
  resolution = object_index.shape[0]
  pixels = np.bincount(object_index.ravel() + 1, minlength=len(scene.objects) + 1)[1:]
  visible = np.flatnonzero(pixels)
  lookup = np.zeros(len(scene.objects) + 1, np.uint8)  # slot 0: floor and backdrop (-1)
  lookup[visible + 1] = np.arange(1, len(visible) + 1)
  boxes = np.zeros((len(visible), 4), np.float32)
  for row, k in enumerate(visible):
    mask = object_index == k
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    boxes[row] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
  boxes /= resolution
  det = {"boxes": boxes, "classes": [scene.objects[k].category for k in visible]}
  return lookup[object_index + 1], det, visible


@functools.lru_cache(maxsize=8)
def _feature_projections(in_dim: int, hidden: int, out_dim: int):
  """Fixed random two-layer map, the same in every process and for every scene."""
  rng = np.random.default_rng(1234)
  w1 = rng.normal(0, 2 / math.sqrt(in_dim), (in_dim, hidden)).astype(np.float32)
  b1 = rng.normal(0, 0.5, hidden).astype(np.float32)
  w2 = rng.normal(0, 1 / math.sqrt(hidden), (hidden, out_dim)).astype(np.float32)
  return w1, b1, w2


@functools.lru_cache(maxsize=8)
def _patch_ids(height: int, width: int, grid: int) -> np.ndarray:
  """Which of the grid x grid patches (row-major) each pixel falls in."""
  rows = np.arange(height) * grid // height
  cols = np.arange(width) * grid // width
  return rows[:, None] * grid + cols[None, :]


def clip_like_features(semseg: np.ndarray, rgb: np.ndarray, depth: np.ndarray, grid: int,
                       dim: int) -> np.ndarray:
  """A deterministic stand-in for a CLIP patch-feature map, float32 [grid, grid, dim].

  Each patch pools what a semantic encoder would see: the fraction of each class, the
  color of each class (so "red cube" differs from "blue cube"), and nearness (inverse
  depth); a scene-wide mean adds global context, as CLIP's attention does. A fixed
  random MLP mixes these nonlinearly and each vector is L2-normalized.
  """
  height, width = semseg.shape
  if not 0 < grid <= min(height, width):
    raise ValueError(f"feature grid {grid} must be in [1, {min(height, width)}]")
  num_classes = len(CLASSES)
  patch = _patch_ids(height, width, grid).ravel()
  key = patch * num_classes + semseg.ravel()  # (patch, class) pairs, counted by bincount
  color = rgb.reshape(-1, 3) / 255.0

  def per_key(weights=None):
    return np.bincount(key, weights, minlength=grid * grid * num_classes)

  pixels = np.bincount(patch, minlength=grid * grid)[:, None]
  class_share = per_key().reshape(-1, num_classes) / pixels
  # Color summed per class over the patch: a class's mean color weighted by its share.
  class_color = np.stack([per_key(color[:, c]) for c in range(3)], -1)
  class_color = class_color.reshape(-1, 3 * num_classes) / pixels
  nearness = np.bincount(patch, 4.0 / depth.ravel(), minlength=grid * grid)[:, None] / pixels
  local = np.concatenate([class_share, class_color, nearness], -1)
  local = local.reshape(grid, grid, -1).astype(np.float32)
  context = np.broadcast_to(local.mean((0, 1)), local.shape)
  pooled = np.concatenate([local, context], axis=-1)

  w1, b1, w2 = _feature_projections(pooled.shape[-1], 128, dim)
  features = np.tanh(pooled @ w1 + b1) @ w2
  features /= np.linalg.norm(features, axis=-1, keepdims=True) + 1e-12
  return features.astype(np.float32)


def surface_index(maps: dict) -> np.ndarray:
  """Which surface each pixel shows: 0 backdrop, 1 floor, 2 + k object k."""
  return np.where(maps["object_index"] >= 0, maps["object_index"].astype(np.int64) + 2,
                  maps["semseg"].astype(np.int64))


def image_edges(maps: dict) -> np.ndarray:
  """4M-21's canny_edge for the world: the step edges of the rendered image, exactly.

  Canny looks for the steps of an image's intensity. The world's rgb is smooth except
  across a surface's outline (occluding or touching another), a floor tile's border, a
  cast shadow's border and a crease (`CREASE_DEG`). The edge map marks those steps,
  on the nearer of the two pixels each falls between (the occluding side), so a line is
  one pixel wide as Canny's are, and keeps those that Canny's hysteresis would: a
  connected line with steps of at least `EDGE_STEPS[0]` and one of `EDGE_STEPS[1]`.
  No smoothing moves an edge and no noise adds one. uint8 [R, R], 1 on an edge.
  """
  region = (surface_index(maps) * 3 + maps["floor_tile"].astype(np.int64) + 1) * 2 + \
      maps["cast_shadow"]
  normal, depth = maps["normal"].astype(np.float64), maps["depth"]
  gray = measures.luma(maps["rgb"])
  crease = math.cos(math.radians(CREASE_DEG))
  strength = np.zeros(region.shape)  # the largest luma step marked on each pixel
  for axis in (0, 1):
    first = [slice(None)] * 2
    second = [slice(None)] * 2
    first[axis], second[axis] = slice(0, -1), slice(1, None)
    first, second = tuple(first), tuple(second)
    step = (region[first] != region[second]) | \
        ((normal[first] * normal[second]).sum(-1) < crease)
    height = np.where(step, np.abs(gray[first] - gray[second]), 0.0)
    nearer_first = depth[first] <= depth[second]
    strength[first] = np.maximum(strength[first], np.where(nearer_first, height, 0.0))
    strength[second] = np.maximum(strength[second], np.where(nearer_first, 0.0, height))
  low, high = EDGE_STEPS
  lines, _ = ndimage.label(strength >= low, structure=np.ones((3, 3)))
  seeded = np.unique(lines[strength >= high])
  return np.isin(lines, seeded[seeded > 0]).astype(np.uint8)


def painted_color(albedo) -> np.ndarray:
  """A linear albedo as the uint8 color `render` gives it fully lit."""
  levels = (np.asarray(albedo, np.float64) * (_GAMMA_LEVELS - 1) + 0.5).astype(np.intp)
  return _gamma_table()[levels]


def scene_palette(scene: Scene, maps: dict, num_colors: int = COLOR_PALETTE_MAX
                  ) -> np.ndarray:
  """4M-21's color_palette for the world: the colors the scene is painted with (backdrop,
  floor, each object color; fully lit, as `painted_color`), most pixels first, at most
  `num_colors`. uint8 [K, 3]."""
  paints = [scene.backdrop_color, scene.floor_color] + \
      [np.asarray(COLORS[obj.color]) for obj in scene.objects]
  names = ["backdrop", "floor"] + [obj.color for obj in scene.objects]
  pixels = np.bincount(surface_index(maps).ravel(), minlength=len(paints))
  share: dict[str, int] = {}
  color: dict[str, np.ndarray] = {}
  for name, paint, count in zip(names, paints, pixels):
    if count:
      share[name] = share.get(name, 0) + int(count)
      color[name] = paint
  order = sorted(share, key=lambda name: -share[name])[:num_colors]  # stable: ties in scene order
  return np.stack([painted_color(color[name]) for name in order]).astype(np.uint8)


def scene_metadata(maps: dict, det: dict, caption: str) -> np.ndarray:
  """4M-21's metadata for the world, float32 [21] (`measures.metadata_vector`).

  Exact where the world knows the answer: no people (n_humans 0) and no watermark
  (watermark_score 0); the COCO-style instances are the visible objects (det);
  SAM-style instances every visible surface (objects, floor, backdrop); the floor is
  what is walkable, the objects are the things. Image statistics, geometric complexity
  and occlusion score are `measures`' on the exact rgb, normals and depth. Only the
  aesthetic score is absent (NaN).
  """
  semseg = maps["semseg"]
  values = measures.image_statistics(maps["rgb"])
  values.update(measures.caption_counts(caption))
  values.update({
      "n_humans": 0.0,
      "n_sam_instances": float(np.unique(surface_index(maps)).size),
      "n_coco_instances": float(len(det["classes"])),
      "coco_instance_diversity": float(len(set(det["classes"]))),
      "walkability": measures.class_share(semseg, [CLASSES.index("floor")]),
      "objectness": measures.class_share(
          semseg, [CLASSES.index(name) for name in OBJECT_CLASSES]),
      "semantic_diversity": measures.semantic_diversity(semseg),
      "geometric_complexity": measures.geometric_complexity(maps["normal"]),
      "occlusion_score": measures.occlusion_score(maps["depth"]),
      "watermark_score": 0.0,
  })
  return measures.metadata_vector(values)


def default_feature_grid(resolution: int) -> int:
  return max(1, resolution // 8 if resolution < 224 else resolution // 16)


def make_sample(seed: int, split: str, index: int, resolution: int = 64,
                feature_grid: int | None = None, feature_dim: int = 64,
                extras: Sequence[str] = ()) -> dict:
  """Sample `index` of `split`: every raw modality of one rendered scene (record contract),
  plus the `extras` asked for (of `EXTRA_MODALITIES`), which change nothing else."""
  unknown = sorted(set(extras) - set(EXTRA_MODALITIES))
  if unknown:
    raise ValueError(f"the world renders no {unknown}; extras are {list(EXTRA_MODALITIES)}")
  rng = scene_rng(seed, split, index)
  scene = sample_scene(rng)
  maps = render(scene, resolution)
  instance, det, visible = instances_and_boxes(maps["object_index"], scene)
  views = [captions.ObjectView(o.category, o.color, o.size, scene.to_camera(o.position),
                               o.footprint_radius)
           for o in (scene.objects[k] for k in visible)]
  grid = feature_grid or default_feature_grid(resolution)
  sample = {
      "rgb": maps["rgb"],
      "depth": maps["depth"],
      "normal": maps["normal"],
      "semseg": maps["semseg"],
      "instance": instance,
      "det": det,
      # The caption continues the scene's random stream, so it is deterministic too.
      "caption": captions.describe(views, rng),
      "clip": clip_like_features(maps["semseg"], maps["rgb"], maps["depth"], grid,
                                 feature_dim),
  }
  if "canny_edge" in extras:
    sample["canny_edge"] = image_edges(maps)
  if "color_palette" in extras:
    # 4M-21 trains on palettes of 1..7 colors; the size comes from a stream of its own,
    # so asking for a palette changes no other value of the sample.
    size_rng = np.random.default_rng(np.random.SeedSequence(
        [seed, SPLITS.index(split), index], spawn_key=(_PALETTE_STREAM,)))
    sample["color_palette"] = scene_palette(
        scene, maps, int(size_rng.integers(1, COLOR_PALETTE_MAX + 1)))
  if "metadata" in extras:
    sample["metadata"] = scene_metadata(maps, det, sample["caption"])
  return sample
