"""Tokenizer input formats that cannot be got wrong: each config declares what it reads
(`input_norm`, `modality_io.input_format`), converted tokenizers read what the reference's
were trained on (its own transforms, run on fixed arrays by make_tokenizer_fixtures.py),
and a wrong batch through the Python API is one clear error naming the field.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from fourm.errors import RecordError, UsageError
from tokenizers_vq import modality_io
from tokenizers_vq.train_step import VQTokenizer
from tokenizers_vq.vqvae import VQVAE
from tokenizers_vq.vqvae_config import DiffusionConfig, VQVAEConfig, divae_preset, preset
from fourm.nn.init import initialize

FORMATS = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "tokenizers",
                       "input_formats.npz")
TINY = dict(resolution=32, patch_size=8, enc_width=32, enc_depth=1, enc_heads=2,
            dec_width=32, dec_depth=1, dec_heads=2, vocab_size=16, code_dim=8)


def tokenizer(**config) -> VQTokenizer:
  return VQTokenizer.from_model(initialize(
      lambda rngs: VQVAE(VQVAEConfig(**dict(TINY, **config)), rngs=rngs)))


def test_depth_reads_as_the_references_truncated_standardization():
  arrays = dict(np.load(FORMATS))
  config = VQVAEConfig(**dict(TINY, resolution=24, patch_size=8, modality="depth",
                              input_norm="truncated_standard"))
  x, stats = modality_io.for_config(config).normalize(jnp.asarray(arrays["depth"]))
  np.testing.assert_allclose(np.asarray(x)[..., 0], arrays["depth_standardized"], atol=2e-5)
  # fourm's own (median, quantile spread) is a different input: the flag matters.
  own, _ = modality_io.for_config(VQVAEConfig(**dict(TINY, resolution=24, modality="depth"))
                                  ).normalize(jnp.asarray(arrays["depth"]))
  assert np.abs(np.asarray(own)[..., 0] - arrays["depth_standardized"]).max() > 0.1
  assert np.asarray(stats).shape == (2, 2)


def test_semseg_ids_shift_by_one_as_the_reference_and_decode_back():
  arrays = dict(np.load(FORMATS))
  config = VQVAEConfig(**dict(TINY, resolution=16, patch_size=8, modality="semseg",
                              num_classes=7, input_norm="ids_plus_one"))
  io = modality_io.for_config(config)
  ids, _ = io.normalize(jnp.asarray(arrays["semseg"]))
  np.testing.assert_array_equal(np.asarray(ids), arrays["semseg_shifted"])
  logits = np.eye(7)[arrays["semseg_shifted"]]  # a perfect decoder output
  back = io.to_raw(io.denormalize(jnp.asarray(logits), io.default_stats(2)))
  np.testing.assert_array_equal(np.asarray(back), arrays["semseg"])
  io.check(arrays["semseg"])  # 255 is allowed (unlabeled) ...
  with pytest.raises(RecordError, match=r"class id 6 is outside \[0, 6\) or 255"):
    io.check(np.full((1, 16, 16), 6, np.uint8))  # ... the top id is not: it is 7 shifted


def test_edges_read_as_a_binary_image_and_a_divae_decodes_them_to_0_1():
  config = VQVAEConfig(**dict(TINY, modality="canny_edge", input_norm="binary",
                              decoder="diffusion",
                              diffusion=DiffusionConfig(width=32, channel_mult=(1, 2),
                                                        num_res_blocks=1, norm_groups=8,
                                                        sample_steps=2)))
  assert (config.channels, config.is_class_map, config.loss) == (1, False, "mse")
  edges = (np.random.default_rng(0).random((2, 32, 32)) < 0.1).astype(np.uint8)
  x, _ = modality_io.for_config(config).normalize(jnp.asarray(edges))
  np.testing.assert_array_equal(np.asarray(x)[..., 0], edges * 2.0 - 1.0)
  tok = VQTokenizer.from_model(initialize(lambda rngs: VQVAE(config, rngs=rngs)))
  decoded = tok.decode(tok.encode(edges))
  assert decoded.dtype == np.uint8 and set(np.unique(decoded)) <= {0, 1}
  with pytest.raises(RecordError, match=r"only 0 and 1, found \[255\]"):
    tok.encode(edges * 255)


def test_sam_masks_read_as_0_1_and_decode_from_logits():
  """The reference's SAM-instance tokenizer reads masks as 0 / 1 floats (SAMInstanceTransform)
  and is trained with binary cross-entropy on logits: its decoder's output is a logit."""
  config = VQVAEConfig(**dict(TINY, modality="sam_mask", input_norm="binary_sigmoid"))
  assert (config.channels, config.is_class_map, config.loss) == (1, False,
                                                                 "binary_cross_entropy")
  assert modality_io.input_format(config)["values"] == "0 / 1"
  io = modality_io.for_config(config)
  masks = (np.random.default_rng(0).random((2, 32, 32)) < 0.5).astype(np.uint8)
  x, stats = io.normalize(jnp.asarray(masks))
  np.testing.assert_array_equal(np.asarray(x)[..., 0], masks)  # as they are, not [-1, 1]
  logits = jnp.asarray(3.0 * (2.0 * masks - 1.0))[..., None]
  off = 1.0 / (1.0 + np.exp(3.0))  # sigmoid(-3)
  np.testing.assert_allclose(np.asarray(io.denormalize(logits, stats)),
                             np.where(masks == 1, 1.0 - off, off), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(io.to_raw(io.denormalize(logits, stats))), masks)
  # float32 softplus against float64: XLA's vectorized exp / log differ by machine (2e-5
  # relative on AVX-512).
  np.testing.assert_allclose(float(io.loss(logits, x)), np.log1p(np.exp(-3.0)), rtol=1e-4)
  with pytest.raises(RecordError, match=r"only 0 and 1, found \[255\]"):
    io.check(masks * 255)


@pytest.mark.parametrize("config, batch, message", [
    (dict(modality="rgb"), np.zeros((1, 32, 32, 3), np.float32), "expects batches .*uint8"),
    (dict(modality="rgb"), np.zeros((1, 3, 32, 32), np.uint8), "wrong modality or layout"),
    (dict(modality="depth"), np.zeros((1, 32, 32), np.float32), "must be positive metres"),
    (dict(modality="normal"), np.full((1, 32, 32, 3), 128.0, np.float32),
     "must be unit vectors"),
    (dict(modality="normal"), np.full((1, 32, 32, 3), 0.5, np.float32),
     "image-encoded normal map"),
    (dict(modality="semseg", num_classes=5), np.full((1, 32, 32), 5, np.uint8),
     r"class id 5 is outside \[0, 5\)"),
    (dict(modality="clip", channels=16), np.full((1, 4, 4, 16), np.nan, np.float32),
     "non-finite"),
])
def test_a_wrong_batch_through_the_python_api_is_one_clear_error(config, batch, message):
  with pytest.raises(RecordError, match=message) as error:
    tokenizer(**config).encode(batch)
  assert error.value.field == config["modality"]


def test_unit_normals_and_zero_vectors_pass():
  normals = np.zeros((1, 32, 32, 3), np.float32)
  normals[:, :16, :, 2] = -1.0  # a wall facing the camera; the rest has no surface
  assert tokenizer(modality="normal").encode(normals).shape == (1, 4, 4)


def test_every_preset_declares_its_input_and_old_configs_read_unchanged():
  for name in ("rgb_tiny", "depth_tiny", "normal_tiny", "semseg_tiny", "clip_tiny"):
    config = preset(name)
    form = modality_io.input_format(config)
    assert set(form) == {"raw", "values", "input_norm", "normalization", "resolution"}
    assert config.input_norm == modality_io.INPUT_NORMS[config.values][0]
    # The default is left out of the stored dict: checkpoints written before the field
    # existed compare equal on resume, and read back to the same config.
    assert "input_norm" not in config.to_dict()
    assert VQVAEConfig.from_dict(config.to_dict()) == config
  assert divae_preset("depth_tiny").input_norm == "quantile"
  changed = preset("depth_tiny", input_norm="truncated_standard")
  assert changed.to_dict()["input_norm"] == "truncated_standard"
  assert VQVAEConfig.from_dict(changed.to_dict()) == changed
  with pytest.raises(UsageError, match="input_norm 'binary' does not fit rgb"):
    preset("rgb_tiny", input_norm="binary")


def test_the_tokenizers_page_lists_every_input_format():
  page = open(os.path.join(os.path.dirname(__file__), "..", "docs", "tokenizers.md")).read()
  for norms in modality_io.INPUT_NORMS.values():
    for norm in norms:
      assert f"`{norm}`" in page, norm
