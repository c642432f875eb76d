"""Cross-modal augmentation: one crop and one flip, applied consistently to every modality."""

import numpy as np
import pytest

from fourm.data import augment
from fourm.data.augment import AugmentConfig
from tests.helpers import striped_sample


def _draws(n=20, **kwargs):
  config = AugmentConfig(resolution=32, crop_scale=(0.3, 1.0), flip_prob=0.5, **kwargs)
  for seed in range(n):
    rng = np.random.default_rng(seed)
    yield augment.augment(striped_sample(), config, rng)


def test_dense_modalities_stay_aligned_under_crop_and_flip():
  flips = 0
  for out in _draws():
    source_x = out["depth"]  # each output pixel's source x coordinate
    assert out["rgb"].shape == (32, 32, 3) and out["semseg"].shape == (32, 32)
    # Labels resample by nearest neighbour, depth bilinearly: they agree away from edges.
    agree = out["semseg"] == np.floor(source_x / 8)
    assert agree.mean() > 0.9
    # rgb blue channel also encodes x (2x): consistent with depth up to interpolation.
    np.testing.assert_allclose(out["rgb"][..., 2] / 2.0, source_x, atol=1.5)
    flipped = source_x[:, 0].mean() > source_x[:, -1].mean()
    flips += flipped
    # Normals: the x component changes sign exactly when the image is flipped.
    assert np.allclose(out["normal"][..., 0], -0.6 if flipped else 0.6, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["normal"], axis=-1), 1.0, atol=1e-5)
  assert 3 <= flips <= 17  # flip_prob 0.5 over 20 draws


def test_boxes_follow_the_pixels():
  for out in _draws():
    stripe = out["semseg"] == 2
    boxes = out["det"]["boxes"]
    if not stripe.any():
      continue
    columns = np.nonzero(stripe.any(axis=0))[0]
    assert len(boxes) == 1 and out["det"]["classes"] == ["stripe2"]
    # The box edges sit within a pixel of the stripe's edges in the output image.
    assert abs(boxes[0, 0] * 32 - columns.min()) <= 1.0
    assert abs(boxes[0, 2] * 32 - (columns.max() + 1)) <= 1.0


def test_boxes_cropped_out_are_removed_and_kept_ones_clipped():
  det = {"boxes": np.array([[0.0, 0.0, 0.1, 0.1], [0.4, 0.4, 0.9, 0.9]], np.float32),
         "classes": ["gone", "kept"], "scores": np.array([0.9, 0.8], np.float32)}
  out = augment.crop_boxes(det, (0.5, 0.5, 1.0, 1.0), flip=False, min_size=0.01)
  assert out["classes"] == ["kept"] and out["scores"].tolist() == [pytest.approx(0.8)]
  np.testing.assert_allclose(out["boxes"], [[0.0, 0.0, 0.8, 0.8]], atol=1e-6)
  flipped = augment.crop_boxes(det, (0.5, 0.5, 1.0, 1.0), flip=True, min_size=0.01)
  np.testing.assert_allclose(flipped["boxes"], [[0.2, 0.0, 1.0, 0.8]], atol=1e-6)


def test_feature_maps_keep_their_grid_and_follow_the_crop():
  out = augment.apply_crop(striped_sample(), (0.5, 0.0, 1.0, 1.0), flip=True, resolution=32)
  clip = out["clip"]  # column index encoded as value, 8 columns
  assert clip.shape == (8, 8, 4)
  assert clip[0, 0, 0] > clip[0, -1, 0]      # flipped: larger x on the left
  assert clip.min() >= 3.5 and clip.max() <= 7  # only the right half of the grid


def test_eval_mode_is_a_deterministic_center_crop():
  sample = striped_sample(height=48, width=64)
  config = AugmentConfig(resolution=24, train=False)
  a, b = augment.augment(sample, config), augment.augment(sample, config)
  np.testing.assert_array_equal(a["rgb"], b["rgb"])
  # The 48x48 center of a 64-wide image spans source x in [8, 56).
  assert a["depth"].min() >= 8 and a["depth"].max() <= 56
  assert a["depth"][:, 0].mean() < 10.5 and a["depth"][:, -1].mean() > 53.5


def test_same_rng_same_result_and_configs_are_checked():
  config = AugmentConfig(resolution=32)
  a = augment.augment(striped_sample(), config, np.random.default_rng(5))
  b = augment.augment(striped_sample(), config, np.random.default_rng(5))
  for name in ("rgb", "depth", "semseg", "normal"):
    np.testing.assert_array_equal(a[name], b[name])
  with pytest.raises(ValueError, match="crop_scale"):
    AugmentConfig(resolution=32, crop_scale=(0.0, 1.0))


def test_flip_mirrors_spatial_words_in_captions():
  assert augment.swap_left_right("A cube left of a cone. Right of it, the leftmost sphere.") == \
      "A cube right of a cone. Left of it, the rightmost sphere."
  assert augment.swap_left_right("a copyright notice, leftover paint") == \
      "a copyright notice, leftover paint"
  sample = striped_sample()
  sample["caption"] = "a red cube to the left of a cone."
  assert augment.apply_crop(sample, (0, 0, 1, 1), True, 16)["caption"] == \
      "a red cube to the right of a cone."
  assert augment.apply_crop(sample, (0, 0, 1, 1), False, 16)["caption"] == sample["caption"]


@pytest.mark.parametrize("box, out", [((0, 0, 64, 48), (48, 64)),          # identity
                                      ((5.5, 3.25, 50.0, 40.0), (16, 16)),  # shrink: antialiased
                                      ((10.0, 8.0, 30.0, 20.0), (40, 40))])  # enlarge
def test_float_resampling_matches_pils_bilinear(box, out):
  from PIL import Image
  image = np.random.default_rng(0).normal(size=(48, 64)).astype(np.float32)
  ours = augment.resize_box(image, box, out, nearest=False)
  pil = np.asarray(Image.fromarray(image).resize((out[1], out[0]), Image.Resampling.BILINEAR,
                                                 box=box))
  np.testing.assert_allclose(ours, pil, atol=2e-3)
  labels = np.random.default_rng(1).integers(0, 9, size=(48, 64)).astype(np.int32)
  ours = augment.resize_box(labels, box, out, nearest=True)
  pil = np.asarray(Image.fromarray(labels).resize((out[1], out[0]), Image.Resampling.NEAREST,
                                                  box=box))
  assert (ours == pil).mean() > 0.97  # rounding of pixel centers may differ at a few edges
