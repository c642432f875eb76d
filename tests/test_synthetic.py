"""Tests for the synthetic world: the record contract, geometry that can really fail
(normals vs. depth, floor plane, tight boxes), shading and the primitives' hits."""

import dataclasses
import math

import numpy as np
import pytest

from fourm.data import captions, raycast, records, synthetic

SEEDS = range(12)


@pytest.fixture(scope="module")
def samples():
  """(scene, render maps, sample) for a few scenes at 64 px, rendered once."""
  out = []
  for index in SEEDS:
    scene = synthetic.sample_scene(synthetic.scene_rng(0, "train", index))
    out.append((scene, synthetic.render(scene, 64), synthetic.make_sample(0, "train", index)))
  return out


def _backproject(depth: np.ndarray) -> np.ndarray:
  """Camera-frame points [R, R, 3] from z-depth, using the public intrinsics."""
  size = depth.shape[0]
  rows, cols = np.mgrid[0:size, 0:size] + 0.5
  pixels = np.stack([cols, rows, np.ones_like(cols)], -1)
  return pixels @ np.linalg.inv(synthetic.intrinsics(size)).T * depth[..., None]


def _same_in_3x3(values: np.ndarray) -> np.ndarray:
  """Interior mask [R-2, R-2]: all 8 neighbours equal the center (any trailing dims)."""
  center = values[1:-1, 1:-1]
  same = np.ones(center.shape[:2], bool)
  size = values.shape[0]
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      other = values[1 + dy:size - 1 + dy, 1 + dx:size - 1 + dx]
      same &= np.all(np.abs(other - center) < 1e-5, axis=tuple(range(2, values.ndim)))
  return same


# ---------------------------------------------------------------------------- contract
def test_deterministic_and_index_dependent():
  a, b = synthetic.make_sample(3, "train", 5), synthetic.make_sample(3, "train", 5)
  assert records.encode_sample(a) == records.encode_sample(b)
  for other in (synthetic.make_sample(3, "train", 6), synthetic.make_sample(3, "val", 5)):
    assert not np.array_equal(a["rgb"], other["rgb"])
    assert a["caption"] != other["caption"]


@pytest.mark.parametrize("resolution,grid,dim", [(64, None, 64), (48, None, 32), (48, 4, 16)])
def test_sample_contract(resolution, grid, dim):
  sample = synthetic.make_sample(1, "val", 2, resolution, feature_grid=grid, feature_dim=dim)
  assert set(sample) == {"rgb", "depth", "normal", "semseg", "instance", "det", "caption",
                         "clip"}
  size = (resolution, resolution)
  expected = {"rgb": (size + (3,), np.uint8), "depth": (size, np.float32),
              "normal": (size + (3,), np.float32), "semseg": (size, np.uint8),
              "instance": (size, np.uint8)}
  for name, (shape, dtype) in expected.items():
    assert sample[name].shape == shape and sample[name].dtype == dtype, name
  assert np.isfinite(sample["depth"]).all() and sample["depth"].min() > 0
  np.testing.assert_allclose(np.linalg.norm(sample["normal"], axis=-1), 1.0, atol=1e-5)
  assert sample["semseg"].max() < len(synthetic.CLASSES)
  grid = grid or resolution // 8
  assert sample["clip"].shape == (grid, grid, dim) and sample["clip"].dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(sample["clip"], axis=-1), 1.0, atol=1e-5)
  caption = sample["caption"]
  assert caption == caption.lower() and caption.endswith(".")
  records.validate_sample(sample)  # the on-disk contract the rest of the project reads


def test_public_constants():
  assert synthetic.CLASSES[:2] == ("background", "floor")
  assert {"sphere", "cube", "cylinder", "cone"} <= set(synthetic.CLASSES[2:])
  assert all(0 <= c <= 1 for rgb in synthetic.COLORS.values() for c in rgb)
  k = synthetic.intrinsics(64)
  assert k[0, 2] == k[1, 2] == 32
  assert math.isclose(2 * math.degrees(math.atan(32 / k[0, 0])), synthetic.FOV_DEG)


# ---------------------------------------------------------------------------- geometry
def test_normals_from_depth_match_rendered_normals_on_planes(samples):
  errors = []
  planar = [synthetic.CLASSES.index(c) for c in ("background", "floor", "cube", "pyramid")]
  for _, maps, sample in samples:
    points = _backproject(sample["depth"].astype(np.float64))
    du = points[1:-1, 2:] - points[1:-1, :-2]
    dv = points[2:, 1:-1] - points[:-2, 1:-1]
    estimate = np.cross(dv, du)  # (down x right) points toward the camera
    estimate /= np.linalg.norm(estimate, axis=-1, keepdims=True)
    labels = np.stack([maps["object_index"], sample["semseg"]], -1).astype(np.float32)
    mask = (_same_in_3x3(labels) & _same_in_3x3(sample["normal"])
            & np.isin(sample["semseg"][1:-1, 1:-1], planar))
    cosine = np.sum(estimate[mask] * sample["normal"][1:-1, 1:-1][mask], -1)
    errors.append(np.degrees(np.arccos(np.clip(cosine, -1, 1))))
  errors = np.concatenate(errors)
  assert errors.size > 10_000
  assert errors.mean() < 0.1 and np.percentile(errors, 99) < 1.0, errors.mean()


def test_normals_face_the_camera(samples):
  for _, _, sample in samples:
    rays = _backproject(np.ones_like(sample["depth"], np.float64))
    assert (np.sum(rays * sample["normal"], -1) < 0).all()


def test_floor_and_backdrop_pixels_lie_on_their_planes(samples):
  for scene, _, sample in samples:
    world = _backproject(sample["depth"].astype(np.float64)) @ scene.camera_rotation.T + \
        scene.camera_position
    world_normals = sample["normal"] @ scene.camera_rotation.T
    floor, backdrop = sample["semseg"] == 1, sample["semseg"] == 0
    assert floor.any() and backdrop.any()
    np.testing.assert_allclose(world[floor][:, 1], 0.0, atol=1e-3)
    np.testing.assert_allclose(world_normals[floor], np.tile([0.0, 1.0, 0.0], (floor.sum(), 1)),
                               atol=1e-5)
    # The backdrop is the vertical wall square to the camera's horizontal view direction.
    ahead = scene.camera_rotation[:, 2] * [1, 0, 1]
    ahead /= np.linalg.norm(ahead)
    np.testing.assert_allclose(world[backdrop] @ ahead, synthetic.BACKDROP_DISTANCE, atol=1e-3)
    assert (world[backdrop][:, 1] > -1e-3).all()


def test_labels_agree(samples):
  for scene, maps, sample in samples:
    semseg, instance = sample["semseg"], sample["instance"]
    objects = semseg >= 2
    assert ((semseg == 0) == ((maps["object_index"] < 0) & (semseg != 1))).all()
    assert ((instance > 0) == objects).all()
    visible = np.unique(maps["object_index"][objects])
    assert len(sample["det"]["classes"]) == len(visible) == instance.max()
    for k, obj in enumerate(visible, start=1):
      assert ((instance == k) == (maps["object_index"] == obj)).all()
      assert (semseg[instance == k] ==
              synthetic.CLASSES.index(scene.objects[obj].category)).all()


def test_boxes_are_tight_around_visible_instances(samples):
  for _, _, sample in samples:
    boxes, classes = sample["det"]["boxes"], sample["det"]["classes"]
    size = sample["instance"].shape[0]
    for k, (box, name) in enumerate(zip(boxes, classes), start=1):
      rows, cols = np.nonzero(sample["instance"] == k)
      expected = [cols.min() / size, rows.min() / size, (cols.max() + 1) / size,
                  (rows.max() + 1) / size]
      np.testing.assert_allclose(box, expected, atol=1e-7)
      assert set(sample["semseg"][rows, cols]) == {synthetic.CLASSES.index(name)}


def test_occluded_objects_get_no_box():
  # Put a large cube straight in front of a small sphere, as seen by the camera.
  scene = synthetic.sample_scene(synthetic.scene_rng(0, "train", 0))
  ahead = scene.camera_rotation[:, 2] * [1, 0, 1]
  ahead /= np.linalg.norm(ahead)
  near = scene.camera_position * [1, 0, 1] + 2.5 * ahead
  cube = synthetic.SceneObject("cube", "red", "large", near + [0, 1.5, 0], 0.0,
                               np.array([1.5, 1.5, 1.5]))
  hidden = synthetic.SceneObject("sphere", "blue", "small", near + 3 * ahead + [0, 0.3, 0],
                                 0.0, np.array([0.3, 0.3, 0.3]))
  alone = dataclasses.replace(scene, objects=(hidden,))
  assert (synthetic.render(alone, 32)["object_index"] == 0).any()  # in view on its own
  scene = dataclasses.replace(scene, objects=(hidden, cube))
  maps = synthetic.render(scene, 32)
  instance, det, visible = synthetic.instances_and_boxes(maps["object_index"], scene)
  assert list(visible) == [1] and det["classes"] == ["cube"] and instance.max() == 1


def test_captions_mention_every_visible_object(samples):
  for scene, maps, sample in samples:
    for name in sample["det"]["classes"]:
      assert name in sample["caption"]
    for k, obj in enumerate(scene.objects):  # visible ones appear with size and color
      if (maps["object_index"] == k).any():
        assert f"{obj.size} {obj.color} {obj.category}" in sample["caption"]


def test_caption_relations_follow_the_camera_frame():
  def view(x, z):
    return captions.ObjectView("cube", "red", "small", np.array([x, 0.0, z]), 0.3)
  assert captions.relation(view(-2, 5), view(2, 5)) == "left"
  assert captions.relation(view(2, 5), view(-2, 5)) == "right"
  assert captions.relation(view(0, 3), view(0, 7)) == "front"
  assert captions.relation(view(0, 7), view(0, 3)) == "behind"
  assert captions.relation(view(0, 5), view(0.5, 5.2)) == "near"


# ---------------------------------------------------------------------------- plausibility
def test_scenes_show_several_objects(samples):
  visible = [len(sample["det"]["classes"]) for _, _, sample in samples]
  more = [len(synthetic.make_sample(7, "val", i, 32)["det"]["classes"]) for i in range(10)]
  assert np.mean(visible + more) >= 2.0 and min(visible) >= 1


def test_rgb_is_albedo_times_shading(samples):
  """Object pixels decode to color x shading, and shadows darken the floor."""
  darker_shadows = 0
  for scene, maps, sample in samples:
    linear = (sample["rgb"].astype(np.float64) / 255) ** 2.2
    for k, obj in enumerate(scene.objects):
      mask = maps["object_index"] == k
      expected = np.asarray(synthetic.COLORS[obj.color]) * maps["shading"][mask][:, None]
      np.testing.assert_allclose(linear[mask], expected, atol=0.02)
    floor = sample["semseg"] == 1
    shadow = floor & np.isclose(maps["shading"], synthetic.AMBIENT)  # floor faces the light
    lit = floor & (maps["shading"] > 0.6)
    if shadow.sum() > 5 and lit.sum() > 5:
      darker_shadows += linear[shadow].mean() < 0.6 * linear[lit].mean()
  assert darker_shadows >= len(samples) // 2  # most scenes show a cast shadow


def test_clip_like_features_depend_on_content_only(samples):
  _, _, sample = samples[0]
  again = synthetic.clip_like_features(sample["semseg"], sample["rgb"], sample["depth"], 8, 64)
  np.testing.assert_array_equal(again, sample["clip"])
  # Patches of floor and of objects point different ways; recoloring changes features.
  semseg = sample["semseg"][::8, ::8]
  floor, objects = sample["clip"][semseg == 1], sample["clip"][semseg >= 2]
  if len(objects):
    assert (floor @ objects.T).mean() < (floor @ floor.T).mean()
  recolored = synthetic.clip_like_features(sample["semseg"], 255 - sample["rgb"],
                                            sample["depth"], 8, 64)
  assert not np.allclose(recolored, sample["clip"], atol=1e-3)


# ---------------------------------------------------------------------------- ray caster
def _inside(kind: str, points: np.ndarray, size: float, height: float, yaw: float):
  """Independent point-in-solid tests (object at the origin, resting on y = 0)."""
  c, s = math.cos(yaw), math.sin(yaw)
  x = c * points[..., 0] - s * points[..., 2]  # world -> object frame (undo the yaw)
  z = s * points[..., 0] + c * points[..., 2]
  y = points[..., 1]
  rho = np.hypot(x, z)
  taper = 1 - y / height
  return {
      "sphere": np.linalg.norm(points - [0, size, 0], axis=-1) <= size,
      "cube": (np.abs(x) <= size) & (np.abs(y - size) <= size) & (np.abs(z) <= size),
      "cylinder": (rho <= size) & (y >= 0) & (y <= height),
      "cone": (rho <= size * taper) & (y >= 0),
      "pyramid": (np.abs(x) <= size * taper) & (np.abs(z) <= size * taper) & (y >= 0),
  }[kind]


@pytest.mark.parametrize("kind", ["sphere", "cube", "cylinder", "cone", "pyramid"])
def test_primitive_hits_match_ray_marching(kind):
  size, height, yaw = 0.8, 1.6, 0.6
  primitive = {
      "sphere": raycast.Sphere([0, size, 0], size),
      "cube": raycast.box([0, size, 0], yaw, [size] * 3),
      "cylinder": raycast.Cylinder([0, 0, 0], size, height),
      "cone": raycast.Cone([0, 0, 0], size, height),
      "pyramid": raycast.pyramid([0, 0, 0], yaw, size, height),
  }[kind]
  rng = np.random.default_rng(0)
  origins = rng.normal(0, 1, (300, 3)) * [1, 0.3, 1] + [0, 3.5, 0]
  origins[:, [0, 2]] += 3 * rng.choice([-1, 1], (300, 2))
  targets = rng.uniform(-1, 1, (300, 3)) * [size, height / 2, size] + [0, height / 2, 0]
  dirs = targets - origins
  dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    t = primitive.distance(origins.T, dirs.T)
  steps = np.linspace(0, 8, 4001)
  inside = _inside(kind, origins[:, None] + steps[None, :, None] * dirs[:, None], size,
                   height, yaw)
  inside[:, 0] = False  # rays start outside
  marched = np.where(inside.any(1), steps[np.argmax(inside, 1)], np.inf)
  hit = np.isfinite(marched)
  assert hit.mean() > 0.5
  assert (np.isfinite(t) == hit).mean() > 0.97  # grazing rays may differ by a step
  both = hit & np.isfinite(t)
  np.testing.assert_allclose(t[both], marched[both], atol=0.01)
  # Normals are unit length and face the incoming rays.
  normals = primitive.normal_at((origins[both] + t[both, None] * dirs[both]).T)
  np.testing.assert_allclose(np.linalg.norm(normals, axis=0), 1.0, atol=1e-6)
  assert (np.sum(normals.T * dirs[both], -1) < 1e-6).all()
