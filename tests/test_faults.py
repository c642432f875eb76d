"""Fault injection: what a careless (or unlucky) user does gives one clear line, exit
status 2, naming the place, and loses nothing already written. Each probe runs the real
CLI (`fourm.cli.main`) or the library call a notebook makes.

The probes of tests elsewhere are listed at the end (COVERED_ELSEWHERE) so this file is
the table of every guarantee; the slow ones (kill -9 / SIGTERM / SIGINT during training,
two concurrent runs on one workdir) live in tests/test_train.py.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from fourm import cli
from fourm.data import record_codec, records, synthetic
from fourm.errors import UsageError
from tests.helpers import write_dataset
from tokenizers_vq.text import TextSpecialIds


def run_cli(capsys, *argv) -> tuple[int, str]:
  status = cli.main(list(argv))
  return status, capsys.readouterr().err


def png_bytes(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


# Images ---------------------------------------------------------------------------------


def test_a_16_bit_png_keeps_its_gradient():
  gradient = (np.arange(64, dtype=np.uint16) * 1040)[None].repeat(8, 0)  # 0 .. 65520
  decoded = record_codec.decode_image(png_bytes(Image.fromarray(gradient)))
  assert decoded.dtype == np.uint8 and decoded.shape == (8, 64, 3)
  # PIL's convert("RGB") would clip all but the first column to 255.
  assert len(np.unique(decoded[0, :, 0])) == 64
  np.testing.assert_allclose(decoded[0, :, 0], gradient[0] / 257, atol=1)


def test_a_transparent_png_is_composited_over_white():
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
  decoded = record_codec.decode_image(png_bytes(Image.fromarray(rgba)))
  assert (decoded[0, 0] == (200, 0, 0)).all() and (decoded[3, 3] == 255).all()


def test_a_float_image_is_refused_with_the_file_named(tmp_path, capsys):
  photos = tmp_path / "photos"
  photos.mkdir()
  Image.fromarray(np.ones((8, 8), np.float32)).save(photos / "depth.tiff")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "fine.png")
  status, err = run_cli(capsys, "ingest", "--images", str(photos), "--out",
                        str(tmp_path / "out"), "--quiet")
  assert status == 2 and "depth.tiff" in err and "floating-point image" in err
  assert len(err.strip().splitlines()) == 1


# Datasets -------------------------------------------------------------------------------


def test_fourm_info_refuses_a_truncated_shard(tmp_path, capsys):
  directory = str(tmp_path / "world")
  write_dataset(directory, {"train": [synthetic.make_sample(0, "train", i)
                                      for i in range(3)]})
  shard = os.path.join(directory, records.shard_name("train", 0, 1))
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) // 2)
  status, err = run_cli(capsys, "info", directory)
  assert status == 2 and "train-00000-of-00001.array_record" in err


def test_fourm_show_of_no_samples_is_refused(tmp_path, capsys):
  directory = str(tmp_path / "world")
  write_dataset(directory, {"train": [synthetic.make_sample(0, "train", 0)]})
  status, err = run_cli(capsys, "show", directory, "--num", "0", "--out",
                        str(tmp_path / "grid.png"))
  assert status == 2 and "--num 0" in err and not os.path.exists(tmp_path / "grid.png")


# Configs and workdirs --------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("--config.model.num_heads=5", "config.model: dim .* is not divisible by num_heads 5"),
    ("--config.sharding.rules.embd=None", "config.sharding.rules.embd: no logical axis"),
    ("--config.batch_sizee=3", "no field 'batch_sizee'"),
])
def test_bad_config_values_are_one_line(tmp_path, capsys, override, message):
  status, err = run_cli(capsys, "train", "--config", "configs/tiny_synthetic.py:smoke",
                        "--workdir", str(tmp_path / "run"), override)
  assert status == 2, err
  assert len(err.strip().splitlines()) == 1
  assert re.search(message, err), err


def test_a_workdir_that_cannot_be_made_is_one_line(tmp_path, capsys):
  (tmp_path / "a_file").write_text("")
  status, err = run_cli(capsys, "train", "--config", "configs/tiny_synthetic.py:smoke",
                        "--workdir", str(tmp_path / "a_file" / "run"))
  assert status == 2 and "a_file/run: cannot create it" in err


def test_a_tokenizer_run_without_an_eval_split_fails_before_training(tmp_path, capsys):
  directory = str(tmp_path / "world")
  write_dataset(directory, {"train": [synthetic.make_sample(0, "train", i) for i in range(2)]})
  status, err = run_cli(capsys, "tokenizer", "train", "--config",
                        "configs/tokenizers/vqvae.py:rgb_tiny", "--workdir",
                        str(tmp_path / "tok"), f"--config.data.paths=('{directory}',)")
  assert status == 2 and "no split 'val'" in err, err
  assert not os.path.isdir(tmp_path / "tok" / "checkpoints")


def test_generate_refuses_an_out_that_is_a_file_before_loading_anything(tmp_path, capsys):
  (tmp_path / "taken").write_text("")
  status, err = run_cli(capsys, "generate", "--checkpoint", str(tmp_path / "no_model"),
                        "--targets", "tok_rgb", "--condition", "caption=a red cube.",
                        "--out", str(tmp_path / "taken"))
  assert status == 2 and "taken: exists and is not a folder" in err, err


# Generation conditions --------------------------------------------------------------------


def test_conditions_are_checked_before_any_model_code_runs():
  from fourm import modalities
  from fourm.data import patch_tokens
  from fourm.generation.conditions import ConditionEncoder
  encoder = ConditionEncoder(("rgb", "tok_depth"), ("rgb", "tok_depth"),
                             modalities.SMALL_LAYOUT,
                             {"tok_depth": patch_tokens.quantizer_for("tok_depth")})
  with pytest.raises(UsageError, match=r"--condition depth: field 'depth': expected shape "
                                       r"\[H, W\], got \[64, 64, 3\]"):
    encoder.encode("depth", [np.ones((64, 64, 3), np.float32)])
  with pytest.raises(UsageError, match=r"--condition depth: field 'depth': contains NaN"):
    encoder.encode("depth", [np.full((64, 64), np.nan)])
  with pytest.raises(UsageError, match=r"rgb: expected a uint8 image"):
    encoder.encode("rgb", [np.zeros((64, 64), np.uint8)])
  # Another width of the right kind is converted, not refused.
  _, entry = encoder.encode("depth", [np.full((64, 64), 3.0, np.float64)])
  assert entry["tokens"].shape == (1, 64)


def test_text_conditions_that_lose_words_say_so():
  from fourm import modalities
  from fourm.generation.conditions import ConditionEncoder
  encoder = ConditionEncoder(("caption",), ("caption",), modalities.SMALL_LAYOUT, {})
  with pytest.warns(UserWarning, match=r"--condition caption: 1 of 2 values have more than "
                                       r"255 tokens"):
    _, entry = encoder.encode("caption", ["a red cube.", "cube " * 400])
  assert entry["input_mask"][1].sum() == 256  # cut, as the warning says
  with pytest.warns(UserWarning, match=r"tokens are unknown to the text vocabulary"):
    encoder.encode("caption", ["a \U0001F600 cube"])


def test_a_complete_caption_target_fails_before_the_first_step():
  import jax
  from fourm.generation.chain import run_chain
  from fourm.generation.sampler import Decoding, sequence_entry

  class NeverCalled:  # a sampler whose every step is a failure
    text_ids = TextSpecialIds()

    def generate(self, *args):
      raise AssertionError("a step ran")

  known = {"caption": sequence_entry([np.array([1000, 1001], np.int32)], 256)}
  chain = [Decoding("tok_rgb"), Decoding("caption")]
  with pytest.raises(UsageError, match="caption: the given text has no sentinel"):
    run_chain(NeverCalled(), known, chain, jax.random.key(0))
  with pytest.raises(UsageError, match="caption: generated twice in the chain"):
    run_chain(NeverCalled(), {}, [Decoding("caption"), Decoding("caption")],
              jax.random.key(0))


# What other tests already guarantee, for the table's sake (file: test).
COVERED_ELSEWHERE = {
    "corrupt / truncated / zero-byte / CMYK / EXIF images": "test_ingest.py",
    "malformed caption files (JSON, JSON lines, TSV)": "test_ingest.py",
    "a corrupt record, a truncated shard, a miscounted dataset_info.json": "test_records.py",
    "NaN and wrong dtypes / shapes in a raw modality": "test_records.py",
    "unknown config variants": "test_train.py::test_every_config_loads_and_initializes_abstractly",
    "meshes that do not divide the batch, too many devices": "test_train.py",
    "resuming with another model, budget, batch size or seed": "test_train.py",
    "kill -9 after a checkpoint, then resume bitwise": "test_train.py",
    "SIGTERM and Ctrl-C save a checkpoint; a second run on the workdir is refused":
        "test_train.py",
    "a damaged newest checkpoint falls back to the one before": "test_train.py, test_loading.py",
    "the lock of a killed run is taken over": "test_workdir.py",
}


def test_the_table_names_real_tests():
  here = os.path.dirname(__file__)
  for where in COVERED_ELSEWHERE.values():
    for name in where.split(", "):
      path, _, test = name.partition("::")
      with open(os.path.join(here, path)) as f:
        source = f.read()
      assert not test or f"def {test}(" in source, name
