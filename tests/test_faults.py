"""Fault injection: what a careless (or unlucky) user does gives one clear line, exit
status 2, naming the place, and loses nothing already written. Each probe runs the real
CLI (`fourm.cli.main`) or the library call a notebook makes.

The probes of tests elsewhere are listed at the end (COVERED_ELSEWHERE) so this file is
the table of every guarantee; the ones that need a training run in a subprocess (kill -9 /
SIGTERM / SIGINT, two concurrent runs on one workdir) live in tests/test_train.py.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from fourm import cli
from fourm.data import record_codec, records, synthetic
from fourm.errors import UsageError, WriteError, write_refusal
from fourm.train import loop
from tests.helpers import small_config, write_dataset, write_train_data
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


@pytest.mark.parametrize("side", [40, 50])  # PIL warns over 1,000 pixels, raises over 2,000
def test_an_image_over_the_pixel_limit_is_refused_with_the_file_named(tmp_path, capsys,
                                                                      monkeypatch, side):
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
  photos = tmp_path / "photos"
  photos.mkdir()
  Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(photos / "huge.png")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "fine.png")
  status, err = run_cli(capsys, "ingest", "--images", str(photos), "--out",
                        str(tmp_path / "out"), "--quiet")
  assert status == 2, err
  assert re.fullmatch(r"fourm ingest: error: \S+/huge.png: field 'rgb': too large \(.*"
                      r"raise PIL.Image.MAX_IMAGE_PIXELS \(now 1,000\) if you trust it\n", err)


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


# File systems that refuse writes ----------------------------------------------------------
# A real full disk is a small tmpfs and a real read-only one a read-only bind mount; both
# need mount(2) (root with CAP_SYS_ADMIN, as on this project's machines and CI). Where
# mounting is not allowed those tests skip, and the simulated ENOSPC below still runs.


@contextlib.contextmanager
def mounted(target, *options: str):
  os.makedirs(target, exist_ok=True)
  done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
  if done.returncode:
    pytest.skip(f"cannot mount here ({done.stderr.strip()[:80]})")
  try:
    yield str(target)
  finally:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
  return write_train_data(tmp_path_factory.mktemp("faults_data"))


def quiet(_):
  pass


def assert_quiet(err: str) -> None:
  """Nothing but fourm's own lines: no traceback or log record from a background thread."""
  assert "Traceback" not in err and "ERROR:" not in err and "Event loop" not in err, err[:2000]


def resumes_from(data, workdir, step: int, total_steps: int) -> None:
  lines = []
  loop.train(small_config(data, eval_every=0, total_steps=total_steps,
                          **{"checkpoint.every": 2}), workdir, log=lines.append)
  assert f"resumed from the checkpoint at step {step} in" in "\n".join(lines), lines
  names = os.listdir(os.path.join(workdir, "checkpoints"))
  assert str(total_steps) in names and not [n for n in names if "tmp" in n], names


@pytest.mark.slow
def test_a_full_disk_stops_training_with_one_line_and_the_checkpoints_before_intact(
    train_data, tmp_path, capfd):
  # One checkpoint of this model is ~24 MB: the first fits in 40 MB, the second does not.
  with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=40M", "tmpfs") as disk:
    workdir = os.path.join(disk, "run")
    config = small_config(train_data, eval_every=0, total_steps=6,
                          **{"checkpoint.every": 2, "checkpoint.async_save": True})
    with pytest.raises(WriteError) as raised:
      loop.train(config, workdir, log=quiet)
    message = str(raised.value)
    assert re.search(r"cannot save the checkpoint of step 4 in \S+/run/checkpoints: No space "
                     r"left on device \(writing \S+\); the checkpoints of steps \[2\] are "
                     "intact", message), message
    assert "\n" not in message
    assert_quiet(capfd.readouterr().err)
    subprocess.run(["mount", "-o", "remount,size=200M", disk], check=True)
    resumes_from(train_data, workdir, 2, total_steps=6)  # and the failed save's litter goes


@pytest.mark.slow
def test_a_workdir_made_read_only_mid_run_is_one_line_and_loses_nothing(train_data, tmp_path,
                                                                        capfd):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  protect = contextlib.ExitStack()

  def log(line: str) -> None:  # after step 2's checkpoint (saved synchronously)
    if line.startswith("step 3/"):
      protect.enter_context(mounted(workdir, "--bind", workdir))
      subprocess.run(["mount", "-o", "remount,bind,ro", workdir], check=True)

  with protect, pytest.raises(WriteError) as raised:
    loop.train(small_config(train_data, eval_every=0, total_steps=6,
                            **{"checkpoint.every": 2}), workdir, log=log)
  assert re.search(r"(cannot save the checkpoint of step 4 in \S+|cannot write TensorBoard "
                   r"events to \S+): Read-only file system", str(raised.value)), raised.value
  assert_quiet(capfd.readouterr().err)
  resumes_from(train_data, workdir, 2, total_steps=6)


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_an_async_save_the_disk_refuses_names_its_step(train_data, tmp_path, monkeypatch,
                                                       capfd):
  """A simulated ENOSPC in orbax's background save of step 4 (of the metadata it writes
  from Python): it surfaces at the next save, as that step's failure."""
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as json_handler
  real = json_handler.JsonCheckpointHandler._save_fn

  async def full_from_step_4(self, x, directory):
    if int(str(directory).split("/checkpoints/")[1].split(".")[0]) >= 4:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
    await real(self, x, directory)

  monkeypatch.setattr(json_handler.JsonCheckpointHandler, "_save_fn", full_from_step_4)
  config = small_config(train_data, eval_every=0, total_steps=8,
                        **{"checkpoint.every": 2, "checkpoint.async_save": True})
  status_line = None
  try:
    loop.train(config, str(tmp_path), log=quiet)
  except WriteError as error:
    status_line = str(error)
  assert status_line and re.search(r"cannot save the checkpoint of step 4 .*No space left on "
                                   r"device \(writing \S+/metadata\); the checkpoints of "
                                   r"steps \[2\] are intact", status_line), status_line
  assert_quiet(capfd.readouterr().err)
  monkeypatch.undo()
  # The failed save's array writes may still be running in this process's tensorstore
  # threads (a user's resumed run is another process): let them land before the resumed
  # run deletes their directory, or the two race.
  _until_settled(os.path.join(str(tmp_path), "checkpoints"))
  resumes_from(train_data, str(tmp_path), 2, total_steps=8)


def _until_settled(directory: str, quiet_s: float = 1.0, timeout_s: float = 60.0) -> None:
  """Waits until no file under `directory` has appeared, gone or changed size for
  `quiet_s` seconds."""
  def snapshot():
    sizes = {}
    for root, _, names in os.walk(directory):
      for name in names:
        with contextlib.suppress(FileNotFoundError):  # gone since the listing: a change too
          sizes[os.path.join(root, name)] = os.path.getsize(os.path.join(root, name))
    return sizes
  deadline, last, since = time.time() + timeout_s, snapshot(), time.time()
  while time.time() - since < quiet_s:
    assert time.time() < deadline, f"{directory} still changing after {timeout_s} s"
    time.sleep(0.1)
    now = snapshot()
    if now != last:
      last, since = now, time.time()


def test_a_full_disk_while_writing_records_is_one_line(tmp_path, capsys):
  with mounted(tmp_path / "disk", "-t", "tmpfs", "-o", "size=1M", "tmpfs") as disk:
    status, err = run_cli(capsys, "synth", "--out", os.path.join(disk, "world"), "--num",
                          "100", "--resolution", "64", "--workers", "1", "--quiet")
    assert status == 2, err
    assert re.fullmatch(r"fourm synth: error: cannot write \S+/world/\S+\.array_record\.tmp: "
                        r"No space left on device\n", err), err
    # What was finished is whole: no shard without its footer is left under its final name.
    for name in os.listdir(os.path.join(disk, "world")):
      assert name.endswith((".tmp", ".json")) or os.path.exists(
          os.path.join(disk, "world", name + ".json")), name


def test_a_refused_write_names_the_path_and_the_reason():
  chained = RuntimeError("write() failed: No space left on device; writing /d/x.tmp; at byte 9")
  assert write_refusal(chained) == ("No space left on device", "/d/x.tmp")
  orbax_style = ValueError('PERMISSION_DENIED: Error writing local file "/w/c/4/_sharding": '
                           "Read-only file system [os_error_code='30']")
  assert write_refusal(orbax_style) == ("Read-only file system", "/w/c/4/_sharding")
  try:
    try:
      raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/q/file")
    except OSError as error:
      raise RuntimeError("saving failed") from error
  except RuntimeError as wrapped:
    assert write_refusal(wrapped) == (os.strerror(errno.EDQUOT), "/q/file")
  assert write_refusal(ValueError("DATA_LOSS: corrupt")) is None
  assert write_refusal(FileNotFoundError(errno.ENOENT, "missing", "/a")) is None


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
    "kill -9 after and during a checkpoint write, then resume bitwise": "test_train.py",
    "float or out-of-vocabulary token ids": "test_masking.py",
    "a garbled newest checkpoint: fallback with no orbax tracebacks": "test_loading.py",
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
