"""The tokenizer jobs: `fourm tokenizer train`, `fourm tokenize --tokenizers`, and decoding
tokens back to pictures, text and boxes."""

from __future__ import annotations

import glob
import os
import re

import numpy as np
import pytest

from fourm import cli, modalities
from fourm import config as config_lib
from fourm.data import patch_tokens, tiles, world
from fourm.data.masking import AlphasMixture, MaskSample
from fourm.data.pipeline import Pipeline, PipelineConfig
from fourm.data.records import RecordSource
from fourm.errors import RecordError, UsageError
from tokenizers_vq import boxes, detokenize, tokenize
from tokenizers_vq import train as train_lib
from tokenizers_vq.text import TextEncoder
from tokenizers_vq.vqvae import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("tokjob") / "world")
  world.write_world(directory, 40, resolution=64, seed=0, val_fraction=0.2,
                    records_per_shard=16, workers=1, progress=False, log=lambda _: None)
  return directory


@pytest.fixture(scope="module")
def depth_tokenizer(scenes, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tokjob") / "tok_depth")
  overrides = [f"data.paths=('{scenes}',)", "total_steps=30", "batch_size=16", "log_every=10",
               "eval_every=30", "eval_batches=1", "checkpoint.every=15",
               "checkpoint.async_save=False"]
  config = config_lib.load_config(os.path.join(ROOT, "configs/tokenizers/vqvae.py:depth_tiny"),
                                  overrides)
  lines = []
  last = train_lib.train(config, workdir, log=lines.append)
  return workdir, config, last, lines


@pytest.mark.slow
def test_training_logs_metrics_writes_reconstructions_and_resumes(depth_tokenizer):
  workdir, config, last, lines = depth_tokenizer
  assert any(line.startswith("step 10/30") and "abs_rel=" in line for line in lines)
  for key in ("eval/abs_rel", "eval/rmse", "eval/usage_pct", "eval/perplexity"):
    assert np.isfinite(last[key]), key
  first_loss = float(re.search(r"  loss=(\S+)", next(
      line for line in lines if line.startswith("step 10/30"))).group(1))
  assert last["loss"] < first_loss  # the reconstruction loss fell over the run
  assert os.path.getsize(os.path.join(workdir, "reconstructions.png")) > 1000
  config.total_steps = 32
  again = []
  train_lib.train(config, workdir, log=again.append)
  assert any("resumed from the checkpoint at step 30" in line for line in again)
  config.preset = "rgb_tiny"
  with pytest.raises(UsageError, match="holds a tokenizer"):
    train_lib.train(config, workdir, log=lambda _: None)


@pytest.mark.slow
def test_tokenize_writes_records_the_pipeline_reads_and_resumes_identically(
    scenes, depth_tokenizer, tmp_path):
  workdir = depth_tokenizer[0]
  out = str(tmp_path / "tokens")
  assert cli.main(["tokenize", "--data", scenes, "--out", out, "--tokenizers",
                   f"tok_depth={workdir}", "--batch-size", "8", "--quiet"]) == 0
  joined = RecordSource([scenes, out], "train")
  tokenizer = train_lib.load_tokenizer(workdir)
  sample = joined[3]
  assert sample["tok_depth"].shape == (8, 8) and sample["tok_depth"].dtype == np.int32
  np.testing.assert_array_equal(sample["tok_depth"],
                                tokenizer.encode(sample["depth"][None])[0])

  shards = sorted(glob.glob(os.path.join(out, "*.array_record")))
  before = [open(path, "rb").read() for path in shards]
  os.remove(shards[0])  # killed while writing the first shard
  os.remove(os.path.join(out, "dataset_info.json"))
  tokenize.tokenize_dataset(scenes, out, [workdir], batch_size=8, progress=False,
                            log=lambda _: None)
  assert [open(path, "rb").read() for path in shards] == before

  names = ("rgb", "tok_depth", "caption")
  masker = MaskSample(names, modalities.SMALL_LAYOUT, 32, 32, AlphasMixture.uniform(names),
                      sequence_encoders={"caption": TextEncoder()})
  batch = next(Pipeline(PipelineConfig(data=(scenes, out), batch_size=4, augment=False),
                        transform=masker).iterator())
  assert batch["tok_depth"]["tokens"].shape == (4, 64)


@pytest.mark.slow
def test_tokenize_refuses_the_wrong_tokenizer_and_bad_records(scenes, depth_tokenizer,
                                                              tmp_path):
  workdir = depth_tokenizer[0]
  with pytest.raises(UsageError, match="tokenizer for 'depth' .* not tok_rgb"):
    tokenize.load_tokenizers([f"tok_rgb={workdir}"])
  with pytest.raises(UsageError, match="no tokenizer checkpoints"):
    tokenize.load_tokenizers([str(tmp_path)])
  # A resolution variant's tokenizer is named for it, and must make the variant's grid.
  from fourm.generation.loading import check_tokenizer
  variant = tokenize.load_tokenizers([f"tok_depth@64={workdir}"])["tok_depth@64"][1]
  check_tokenizer("tok_depth@64", variant, modalities.SMALL_LAYOUT)
  with pytest.raises(UsageError, match="makes a 8x8 grid; the model reads 4x4"):
    check_tokenizer("tok_depth@32", variant, modalities.SMALL_LAYOUT)
  with pytest.raises(UsageError, match="not tok_rgb@64"):
    tokenize.load_tokenizers([f"tok_rgb@64={workdir}"])
  # An edit's source grid (src_tok_depth) is made by its base's tokenizer, and only by it.
  source = tokenize.load_tokenizers([f"src_tok_depth={workdir}"])["src_tok_depth"][1]
  check_tokenizer("src_tok_depth", source, modalities.SMALL_LAYOUT)
  with pytest.raises(UsageError, match="not src_tok_rgb"):
    tokenize.load_tokenizers([f"src_tok_rgb={workdir}"])
  tokenizer = train_lib.load_tokenizer(workdir)
  with pytest.raises(RecordError, match="field 'depth'"):
    tokenize.encode_batch(tokenizer, [{"rgb": np.zeros((64, 64, 3), np.uint8)}], 4)
  with pytest.raises(RecordError, match=r"token id 9999 .* outside the vocabulary \[0, 512\)"):
    tokenizer.decode(np.full((1, 8, 8), 9999))


@pytest.mark.slow
def test_detokenizer_gives_pictures_text_and_boxes(depth_tokenizer):
  tokenizer = train_lib.load_tokenizer(depth_tokenizer[0])
  detok = detokenize.Detokenizer({"tok_depth": tokenizer,
                                  "tok_semseg": patch_tokens.quantizer_for("tok_semseg")})
  depth = detok.decode("tok_depth", np.zeros(64, np.int32))
  assert depth.shape == (64, 64) and depth.dtype == np.float32
  semseg = detok.decode("tok_semseg", np.arange(64) % 7)
  assert semseg.shape == (8, 8) and semseg.max() == 6  # the quantizer decodes per patch
  pictures = dict(tiles.sample_tiles({"depth": depth, "semseg": semseg}, 32))
  assert {name: p.shape for name, p in pictures.items()} == {"depth": (32, 32, 3),
                                                             "semseg": (32, 32, 3)}
  text = TextEncoder()
  ids = np.append(text("a red cube left of a blue sphere."), 3)
  assert detok.decode("caption", ids) == "a red cube left of a blue sphere."
  det = {"boxes": np.array([[0.1, 0.2, 0.5, 0.6]], np.float32), "classes": ["dog"]}
  decoded = detok.decode("det", boxes.encode_boxes(det))
  np.testing.assert_allclose(decoded["boxes"], det["boxes"], atol=1e-3)
  assert decoded["classes"] == ["dog"]
  with pytest.raises(UsageError, match="no decoder for 'tok_rgb'"):
    detok.decode("tok_rgb", np.zeros(64, np.int32))


@pytest.mark.parametrize("variant", sorted(PRESETS))
def test_every_tokenizer_config_makes_a_valid_vqvae(variant):
  config = config_lib.load_config(os.path.join(ROOT, f"configs/tokenizers/vqvae.py:{variant}"))
  vq = train_lib.vqvae_config(config)
  assert vq.vocab_size <= modalities.get(f"tok_{vq.modality}").vocab_size
  assert variant.startswith(vq.modality)


def test_an_unknown_config_variant_is_named():
  with pytest.raises(UsageError, match="unknown variant 'rgb_huge'"):
    config_lib.load_config(os.path.join(ROOT, "configs/tokenizers/vqvae.py:rgb_huge"))
