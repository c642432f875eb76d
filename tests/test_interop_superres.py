"""The reference's super-resolution model (4M-7-SR_L_CC12M) in fourm: one model over
224 px and 448 px grids ("tok_rgb" beside the resolution variant "tok_rgb@448"), which
reads caption, det and the 224 px grids and predicts only the 448 px ones.

The fixture `4m7_sr` is made like the others (make_reference_fixtures.py --layouts
4m7_sr, running apple/ml-4m itself): the published SR domains and image_size 224 at a
tiny width, a fixed batch through the reference's forward pass, and a greedy one-step
MaskGIT caption + tok_rgb@224 -> tok_rgb@448 with its own GenerationSampler.
"""

from __future__ import annotations

import numpy as np
import pytest

from fourm import cli, modalities
from fourm.generation.loading import load_model
from fourm.interop import reference_format as fmt
from fourm.nn.init import initialize
from test_interop import (assert_export_round_trip, assert_matches_reference, load_fixture,
                          reference_tensors, tensor_digest, write_reference_file)

LAYOUT = "4m7_sr"
VARIANTS = tuple(f"{name}@448" for name in ("tok_rgb", "tok_depth", "tok_normal",
                                            "tok_semseg", "tok_clip"))


@pytest.fixture(scope="module")
def converted_sr(tmp_path_factory):
  fixture, arrays = load_fixture(LAYOUT)
  assert tensor_digest(reference_tensors(fixture, arrays)) == fixture["digest"]
  tmp = tmp_path_factory.mktemp(LAYOUT)
  source = write_reference_file(tmp / "model.safetensors", fixture, arrays)
  assert cli.main(["convert", "--from", "reference", source, "--out", str(tmp / "wd")]) == 0
  return fixture, arrays, str(tmp / "wd"), source


def test_domains_map_to_resolution_variants_and_back():
  reference = modalities.REFERENCE_LAYOUT
  assert fmt.fourm_modality("tok_rgb@224", 224) == ("tok_rgb", 224)
  assert fmt.fourm_modality("tok_rgb@448", 224) == ("tok_rgb@448", 448)
  assert fmt.fourm_modality("rgb@448", 224) == ("rgb@448", 448)
  spec = modalities.get("tok_rgb@448")
  assert spec.grid(reference) == 28 and spec.vocab_size == modalities.get("tok_rgb").vocab_size
  assert modalities.get("rgb@448").grid(reference) == 28
  assert fmt.reference_domain("tok_rgb@448", reference) == "tok_rgb@448"
  assert fmt.reference_domain("tok_rgb", reference) == "tok_rgb@224"
  # Only grids have sizes; the variants are not what a raw modality tokenizes into.
  with pytest.raises(KeyError):
    fmt.fourm_modality("caption@448", 224)
  assert modalities.grid_modality_of("rgb") == "tok_rgb"


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_converted_sr_model_matches_the_reference_forward_pass(converted_sr):
  fixture, arrays, workdir, _ = converted_sr
  trained = load_model(workdir)
  model = trained.model
  assert set(model.target_names) == set(VARIANTS)
  assert {"caption", "det", "tok_rgb", "rgb", "rgb@448"} <= set(model.input_names)
  assert set(trained.config.input_only) == {"caption", "det", "tok_rgb", "tok_depth",
                                            "tok_normal", "tok_semseg", "tok_clip"}
  assert_matches_reference(model, arrays, fixture)
  assert set(model.target_names) == {fmt.fourm_modality(d, 224)[0]
                                     for d in fixture["outputs"]["modalities"]}


def test_sr_export_then_import_is_bitwise_identical(converted_sr, tmp_path):
  fixture, _, workdir, source = converted_sr
  assert_export_round_trip(fixture, workdir, source, tmp_path)


def _sr_conditions(arrays):
  ids = arrays["generation/caption_ids"]
  length = modalities.get("caption").max_length
  caption = {"input_tokens": np.zeros((len(ids), length), np.int32),
             "input_mask": np.zeros((len(ids), length), bool)}
  caption["input_tokens"][:, :ids.shape[1]], caption["input_mask"][:, :ids.shape[1]] = ids, True
  low = arrays["generation/tok_rgb_224"]
  return {"caption": caption, "tok_rgb": {"tokens": low, "input_mask": np.ones(low.shape, bool)}}


def test_sr_greedy_generation_gives_the_reference_ids(converted_sr):
  """caption + tok_rgb (224 px) -> tok_rgb@448, every token in one greedy MaskGIT step,
  against the reference's own GenerationSampler on the same weights."""
  import jax
  from fourm.generation.decoding import Decoding
  from fourm.generation.sampler import Sampler
  fixture, arrays, workdir, _ = converted_sr
  model = load_model(workdir).model
  ref = fixture["outputs"]["generation"]["caption_tok_rgb_to_tok_rgb448_1step"]
  decoding = Decoding("tok_rgb@448", method="maskgit", num_steps=1, token_schedule=(784,),
                      temperature=0.0)
  got = Sampler(model).generate(_sr_conditions(arrays), decoding, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(got["tok_rgb@448"]["tokens"]).reshape(2, -1),
                                ref["tokens"])


def test_sr_generates_from_the_command_line(converted_sr, tmp_path):
  """What a user runs: the 224 px grid a base model made, given as a condition file,
  upsampled to the 448 px grid."""
  _, arrays, workdir, _ = converted_sr
  low = tmp_path / "tok_rgb.npy"
  np.save(low, arrays["generation/tok_rgb_224"][0].reshape(14, 14))
  out = tmp_path / "out"
  assert cli.main(["generate", "--checkpoint", workdir, "--condition", f"tok_rgb={low}",
                   "--condition", "caption=a red cube", "--targets", "tok_rgb@448",
                   "--num-steps", "2", "--out", str(out)]) == 0
  tokens = np.load(out / "tokens.npz")
  grid = tokens["tok_rgb@448"]
  assert grid.shape[-2:] == (28, 28) or grid.shape[-1] == 784
  assert grid.min() >= 0 and grid.max() < modalities.get("tok_rgb").vocab_size


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_a_model_reads_one_image_at_two_sizes_and_predicts_only_what_it_may():
  """Training side of a mixed-size model: the sample's one rgb image feeds rgb and the
  resized rgb@32 variant; input_only modalities are never targets, whatever the draw."""
  import jax
  from fourm.data.masking import AlphasMixture, MaskSample
  from fourm.models.config import PRESETS
  from fourm.models.fourm import FourM
  names = ("rgb", "rgb@32", "tok_semseg", "tok_semseg@32", "caption")
  small = modalities.SMALL_LAYOUT
  assert [modalities.get(n).num_tokens(small) for n in names[:4]] == [64, 16, 64, 16]
  transform = MaskSample(names, small, 48, 48, AlphasMixture.uniform(names),
                         input_only=("tok_semseg", "caption"))
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
  sample = {"rgb": image, "tok_semseg": rng.integers(0, 4096, 64).astype(np.int32),
            "tok_semseg@32": rng.integers(0, 4096, 16).astype(np.int32),
            "caption": rng.integers(204, 30_000, 12).astype(np.int32)}
  predicted = {n: 0 for n in names}
  for seed in range(200):
    out = transform(sample, np.random.default_rng(seed))
    for name in names:
      predicted[name] += int(out[name]["target_mask"].sum())
  assert out["rgb@32"]["tokens"].shape == (32, 32, 3)
  # The variant's pixels are the image resized, not another crop: its mean color stays.
  np.testing.assert_allclose(out["rgb@32"]["tokens"].mean((0, 1)),
                             out["rgb"]["tokens"].mean((0, 1)), atol=0.05)
  assert predicted["tok_semseg"] == predicted["caption"] == 0
  assert predicted["tok_semseg@32"] > 0
  with pytest.raises(Exception, match="input_only"):
    MaskSample(names, small, 48, 48, AlphasMixture.uniform(names), input_only=("det",))

  model = initialize(lambda rngs: FourM(PRESETS["tiny"](), names, small, 48, 48,
                                        input_only=("tok_semseg", "caption"), rngs=rngs))
  assert model.target_names == ("tok_semseg@32",)
  assert model.encoder_embeddings["rgb@32"].proj.kernel.shape[0] == 8 * 8 * 3
  batch = jax.tree.map(lambda x: np.asarray(x)[None], {n: out[n] for n in names})
  result = model(batch)
  assert np.isfinite(np.asarray(result.hidden)).all()


def test_the_reference_loaded_our_sr_export_when_the_fixtures_were_made():
  """make_reference_fixtures.py --check-export 4m7_sr=FILE: the reference's own loader
  and FM class (strict) on a fourm export of the converted SR fixture."""
  import json
  import os
  from test_interop import FIXTURES
  with open(os.path.join(FIXTURES, "export_checks.json")) as f:
    check = json.load(f)[LAYOUT]
  assert check["loaded_strict"]
  assert abs(check["loss"] - check["fixture_loss"]) < 1e-4
  assert check["worst_probe_difference"] < 1e-4
