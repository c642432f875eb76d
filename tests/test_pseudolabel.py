"""The pseudo-labelers: tiny random-init configurations of the real architectures (no
download) on real photographs, alignment with the image, thresholding, and the
depth-to-normals fallback against the synthetic world's exact normals."""

import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from fourm import cli  # noqa: E402
from fourm.data import records, synthetic  # noqa: E402
from pseudolabel import clip_features, depth, detection, normals, semseg  # noqa: E402

# Tiny networks gain nothing from intra-op threads, and on a loaded 2-core machine
# OpenMP's spinning threads slow them down a hundredfold.
torch.set_num_threads(1)

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "camera.png")  # camera: greyscale
# The bound on the mean angular error of normals from exact depth (measured 1.15 deg at
# 128 px over 8 scenes; it comes from the pixels that straddle a depth edge).
NORMALS_MEAN_ERROR_BOUND_DEG = 2.0


def photos() -> list[np.ndarray]:
  folder = os.path.join(importlib.util.find_spec("skimage").submodule_search_locations[0], "data")
  out = []
  for name in PHOTOS:
    with open(os.path.join(folder, name), "rb") as f:
      out.append(records.decode_image(f.read()))
  return out


@pytest.fixture(scope="module")
def images():
  return photos()


@pytest.fixture(scope="module")
def depth_labeler():
  return depth.DepthLabeler.tiny()


@pytest.mark.slow
def test_depth_and_normals_on_photos(images, depth_labeler):
  depths = depth_labeler(images)
  normal_maps = normals.NormalsFromDepth(depth_labeler).from_depth(depths)
  for image, d, n in zip(images, depths, normal_maps):
    assert d.shape == image.shape[:2] and d.dtype == np.float32
    assert np.isfinite(d).all() and d.min() > 0
    assert d.max() <= 1 / depth.MIN_RELATIVE_DISPARITY + 1e-3
    assert n.shape == image.shape[:2] + (3,) and n.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    points = normals.back_project(d, normals.intrinsics_from_fov(*d.shape))
    assert ((n * points).sum(-1) <= 1e-6).all()  # every normal faces the camera


def test_relative_disparity_becomes_depth_with_median_one():
  disparity = np.array([[0.0, 2.0, 4.0], [8.0, 4.0, 0.001]], np.float32)
  d = depth.disparity_to_depth(disparity)
  # Median of the positive disparities is 4: depth 1 there, 0.5 at 8, capped at 100.
  np.testing.assert_allclose(d, [[100, 2, 1], [0.5, 1, 100]], rtol=1e-6)


def test_semseg_on_photos(images):
  labeler = semseg.SemsegLabeler.tiny()
  assert len(labeler.class_names) == 133  # COCO panoptic: 80 things + 53 stuff
  for image, labels in zip(images, labeler(images)):
    assert labels.shape == image.shape[:2] and labels.dtype == np.uint8
    assert labels.max() < len(labeler.class_names)


def test_detection_on_photos(images):
  labeler = detection.DetectionLabeler.tiny()
  labeler.threshold = 0.0  # random weights score low: keep every query to check the boxes
  for det in labeler(images):
    boxes = det["boxes"]
    assert boxes.dtype == np.float32 and boxes.shape == (10, 4)  # one per query
    assert boxes.min() >= 0 and boxes.max() <= 1
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert set(det["classes"]) <= set(labeler.class_names)
    assert (np.diff(det["scores"]) <= 0).all()  # best first
    records.validate_field("det", det)


def test_detection_keeps_scores_at_or_above_threshold():
  scores = np.array([0.59, 0.6, 0.95, 0.2], np.float32)
  labels = np.array([1, 2, 3, 1])
  boxes = np.array([[0.5, 0.5, 0.2, 0.2], [0.1, 0.2, 0.4, 0.2], [0.5, 0.5, 1.0, 0.5],
                    [0.5, 0.5, 0.1, 0.1]], np.float32)
  det = detection.select_detections(scores, labels, boxes, ["a", "b", "c", "d"])
  assert det["classes"] == ["d", "c"]  # 0.95 first, 0.6 kept, 0.59 dropped
  np.testing.assert_allclose(det["scores"], [0.95, 0.6])
  # cxcywh -> xyxy, clipped to the image: (-0.1, 0.1, 0.3, 0.3) -> (0, 0.1, 0.3, 0.3).
  np.testing.assert_allclose(det["boxes"], [[0.0, 0.25, 1.0, 0.75], [0.0, 0.1, 0.3, 0.3]],
                             atol=1e-6)


def test_clip_grid_is_input_size_over_patch(images):
  for size in (64, 96):
    labeler = clip_features.ClipLabeler(_clip_model(size), name="t", input_size=size,
                                        mean=clip_features.CLIP_MEAN, std=clip_features.CLIP_STD)
    for features in labeler(images[:2]):
      assert features.shape == (size // 16, size // 16, 32) and features.dtype == np.float32
      assert np.isfinite(features).all()
      records.validate_field("clip", features)


def _clip_model(size):
  from transformers import CLIPVisionModel

  from pseudolabel import tiny
  config = tiny.clip_config()
  config.image_size = size
  return CLIPVisionModel(config)


@pytest.mark.parametrize("cls", [depth.DepthLabeler, semseg.SemsegLabeler,
                                 detection.DetectionLabeler, clip_features.ClipLabeler])
def test_from_pretrained_loads_a_local_checkpoint(cls, tmp_path, images):
  saved = cls.tiny()
  saved.model.save_pretrained(tmp_path)
  (tmp_path / "preprocessor_config.json").write_text(
      '{"size": {"height": 64, "width": 64}, "image_mean": [0.1, 0.2, 0.3]}')
  loaded = cls.from_pretrained(str(tmp_path))
  assert loaded.input_size == 64 and loaded.name == str(tmp_path)
  np.testing.assert_allclose(loaded.mean.flatten().tolist(), [0.1, 0.2, 0.3])
  loaded.mean, loaded.std = saved.mean, saved.std
  for a, b in zip(saved(images[:1]), loaded(images[:1])):  # same weights, same labels
    if isinstance(a, dict):
      np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-5)
    else:
      np.testing.assert_allclose(a, b, atol=1e-4)


# ------------------------------------------------------------------------- alignment
class _RedIsDisparity(torch.nn.Module):
  """A stand-in network whose "disparity" is the input's red channel: whatever the
  labeler does to pixels on the way in and out must bring the red channel back."""

  def forward(self, pixel_values):
    return types.SimpleNamespace(predicted_depth=pixel_values[:, 0] * 0.5 + 0.5 + 0.25)


class _LeftRightSegmenter(torch.nn.Module):
  """Two queries: class 5 where the input is red, class 7 where it is not."""

  def __init__(self):
    super().__init__()
    self.config = types.SimpleNamespace(id2label={i: f"c{i}" for i in range(10)}, num_labels=10)

  def forward(self, pixel_values):
    red = pixel_values[:, :1]
    classes = torch.full((len(red), 2, 11), -20.0)
    classes[:, 0, 5] = classes[:, 1, 7] = 20.0
    masks = torch.cat([red * 20, -red * 20], 1)
    masks = torch.nn.functional.interpolate(masks, scale_factor=0.25, mode="bilinear")
    return types.SimpleNamespace(class_queries_logits=classes, masks_queries_logits=masks)


def _ramp_image(height=60, width=100):
  """Red rises left to right: a non-square image whose content says where each pixel is."""
  image = np.zeros((height, width, 3), np.uint8)
  image[..., 0] = np.linspace(0, 255, width)[None, :]
  return image


def test_depth_comes_back_aligned_with_the_image():
  labeler = depth.DepthLabeler(_RedIsDisparity(), name="stub", input_size=32, mean=(0.5,) * 3,
                               std=(0.5,) * 3, metric=False)
  image = _ramp_image()
  d = labeler([image])[0]
  assert d.shape == image.shape[:2]
  disparity = 1 / d                                    # proportional to red + 0.25
  expected = image[..., 0] / 255.0 + 0.25
  ratio = disparity / expected
  # Away from the two borders (where a 32 px input blurs the ramp's ends) the map is the
  # ramp, up to the unknown scale, columns not mirrored nor shifted.
  inner = ratio[:, 5:-5]
  assert inner.std() / inner.mean() < 0.02
  assert (np.diff(d.mean(0)[5:-5]) < 0).all()          # nearer (brighter red) to the right


def test_semseg_comes_back_aligned_with_the_image():
  image = np.zeros((48, 90, 3), np.uint8)
  image[:, :37, 0] = 255                               # red on the left 37 columns
  labeler = semseg.SemsegLabeler(_LeftRightSegmenter(), name="stub", input_size=64,
                                 mean=(0.5,) * 3, std=(0.5,) * 3)
  labels = labeler([image])[0]
  assert labels.shape == image.shape[:2]
  assert (labels[:, :35] == 5).all() and (labels[:, 39:] == 7).all()


# ----------------------------------------------------------------- normals fallback
def test_normals_from_exact_depth_match_the_synthetic_world():
  resolution, errors = 128, []
  intrinsics = normals.intrinsics_from_fov(resolution, resolution, synthetic.FOV_DEG)
  # The synthetic world's camera is the same pinhole model.
  k = synthetic.intrinsics(resolution)
  assert intrinsics == (k[0, 0], k[1, 1], k[0, 2], k[1, 2])
  for index in range(8):
    sample = synthetic.make_sample(0, "train", index, resolution=resolution)
    derived = normals.normals_from_depth(sample["depth"], intrinsics)
    cosine = np.clip((derived * sample["normal"]).sum(-1), -1, 1)
    errors.append(np.degrees(np.arccos(cosine)).mean())
    assert errors[-1] < 2 * NORMALS_MEAN_ERROR_BOUND_DEG, (index, errors[-1])
  # Every pixel counts, depth edges included.
  assert np.mean(errors) < NORMALS_MEAN_ERROR_BOUND_DEG, errors


def test_normals_of_a_tilted_plane_are_exact():
  # The plane z = 2 + 0.5 y seen through the default camera: n is (0, -0.5, 1) normalized,
  # flipped toward the camera, at every pixel.
  fx, fy, cx, cy = normals.intrinsics_from_fov(40, 50)
  ys = (np.arange(40) + 0.5 - cy) / fy
  depth_map = np.repeat((2 / (1 - 0.5 * ys))[:, None], 50, axis=1).astype(np.float64)
  n = normals.normals_from_depth(depth_map, (fx, fy, cx, cy))
  expected = -np.array([0.0, -0.5, 1.0]) / np.linalg.norm([0.0, -0.5, 1.0])
  np.testing.assert_allclose(n, np.broadcast_to(expected, n.shape), atol=1e-5)


# ------------------------------------------------------------------------ packaging
def test_importing_the_labelers_and_the_cli_needs_no_torch():
  code = ("import sys, pseudolabel, pseudolabel.job, pseudolabel.depth, pseudolabel.semseg, "
          "pseudolabel.detection, pseudolabel.clip_features, pseudolabel.normals\n"
          "from fourm import cli; cli.build_parser()\n"
          "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(cli.__file__))


def test_unreachable_model_is_one_clear_error(tmp_path, capsys, monkeypatch):
  import huggingface_hub.constants
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  synthetic_dir = str(tmp_path / "world")
  from fourm.data import world
  world.write_world(synthetic_dir, 2, resolution=32, progress=False, log=lambda _: None)
  status = cli.main(["pseudolabel", "--data", synthetic_dir, "--tasks", "clip", "--quiet",
                     "--clip-model", "nobody/no-such-clip"])
  err = capsys.readouterr().err.strip()
  assert status == 2 and "\n" not in err
  assert "clip" in err and "nobody/no-such-clip" in err and "local directory" in err
