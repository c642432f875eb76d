"""Ground-truth patch tokens and the derived-dataset writer they go through."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fourm import modalities
from fourm.data import patch_tokens, world
from fourm.data.records import RecordSource
from fourm.errors import UsageError

GRID = 8


def _constant_patches(values: np.ndarray, patch: int = 8) -> np.ndarray:
  """[G, G, ...] -> an image whose every patch holds one value."""
  return np.repeat(np.repeat(values, patch, 0), patch, 1)


def test_patches_are_row_major_blocks():
  image = np.arange(16 * 16).reshape(16, 16)
  blocks = patch_tokens.patches(image, 2)
  assert blocks.shape == (2, 2, 64)
  np.testing.assert_array_equal(blocks[0, 1], image[:8, 8:].reshape(-1))


def test_each_quantizer_decodes_to_within_its_bin():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (GRID, GRID, 3)).astype(np.uint8)
  back = patch_tokens.quantizer_for("tok_rgb").decode(
      patch_tokens.quantizer_for("tok_rgb").encode(_constant_patches(rgb), GRID))
  assert np.abs(back.astype(int) - rgb).max() <= 8  # 16 levels: half a level of 16

  depth = rng.uniform(0.2, 60, (GRID, GRID)).astype(np.float32)
  back = patch_tokens.quantizer_for("tok_depth").decode(
      patch_tokens.quantizer_for("tok_depth").encode(_constant_patches(depth), GRID))
  low, high = patch_tokens.DEPTH_RANGE
  half_bin = (high / low) ** (0.5 / patch_tokens.DEPTH_BINS) - 1  # log-spaced bins
  assert np.abs(back / depth - 1).max() <= half_bin * 1.001

  normal = rng.normal(size=(GRID, GRID, 3))
  normal = (normal / np.linalg.norm(normal, axis=-1, keepdims=True)).astype(np.float32)
  back = patch_tokens.quantizer_for("tok_normal").decode(
      patch_tokens.quantizer_for("tok_normal").encode(_constant_patches(normal), GRID))
  angles = np.degrees(np.arccos(np.clip((back * normal).sum(-1), -1, 1)))
  # A cell's center is within ~2.1 cell sides (in radians) of its farthest direction, at
  # the folded corners of the octahedral map (measured over 400k directions).
  cell_side_degrees = np.degrees(2 / patch_tokens.NORMAL_GRID)
  assert angles.max() < 2.2 * cell_side_degrees

  semseg = rng.integers(0, 7, (GRID, GRID)).astype(np.uint8)
  image = _constant_patches(semseg)
  image[0, 0] = 6  # one odd pixel does not outvote 63
  back = patch_tokens.quantizer_for("tok_semseg").decode(
      patch_tokens.quantizer_for("tok_semseg").encode(image, GRID))
  np.testing.assert_array_equal(back, semseg)


def test_ids_fit_the_registered_vocabularies():
  for name, quantizer in ((n, patch_tokens.quantizer_for(n)) for n in patch_tokens.quantizable()):
    assert quantizer.num_ids <= modalities.get(name).vocab_size
  with pytest.raises(UsageError, match="tok_depth: token id 5000 is not one of"):
    patch_tokens.quantizer_for("tok_depth").decode(np.array([5000]))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("patch") / "world")
  world.write_world(directory, 12, resolution=64, seed=0, val_fraction=0.25,
                    records_per_shard=4, workers=1, progress=False, log=lambda _: None)
  return directory


def test_tokens_are_written_side_by_side_and_resume(scenes, tmp_path):
  out = str(tmp_path / "tokens")
  info = patch_tokens.write_patch_tokens(scenes, out, modalities.SMALL_LAYOUT,
                                         progress=False, log=lambda _: None)
  assert info.splits["train"].num_records == 9 and info.splits["val"].num_records == 3
  joined = RecordSource([scenes, out], "train")
  sample = joined[4]
  assert sample["tok_semseg"].shape == (GRID, GRID) and sample["tok_semseg"].dtype == np.int32
  np.testing.assert_array_equal(
      sample["tok_semseg"], patch_tokens.quantizer_for("tok_semseg").encode(sample["semseg"], GRID))

  shards = sorted(f for f in os.listdir(out) if f.endswith(".array_record"))
  before = {f: open(os.path.join(out, f), "rb").read() for f in shards}
  os.remove(os.path.join(out, shards[1]))  # as if killed while writing it
  logs = []
  patch_tokens.write_patch_tokens(scenes, out, modalities.SMALL_LAYOUT, progress=False,
                                  log=logs.append)
  assert logs and "resuming: 3 of 4 shards" in logs[0]
  assert {f: open(os.path.join(out, f), "rb").read() for f in shards} == before

  with pytest.raises(UsageError, match="already holds a derived dataset"):
    patch_tokens.write_patch_tokens(scenes, out, modalities.SMALL_LAYOUT, ("tok_rgb",),
                                    progress=False)


def test_unknown_quantizers_and_missing_sources_are_named(scenes, tmp_path):
  with pytest.raises(UsageError, match=r"no ground-truth patch quantizer for 'tok_clip'"):
    patch_tokens.write_patch_tokens(scenes, str(tmp_path / "x"), modalities.SMALL_LAYOUT,
                                    ("tok_clip",))
  with pytest.raises(Exception, match="field 'depth'"):
    patch_tokens.tokenize_sample({"rgb": np.zeros((64, 64, 3), np.uint8)},
                                 [patch_tokens.quantizer_for("tok_depth")], GRID)
