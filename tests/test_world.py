"""`fourm synth` end to end: determinism, contents, resume, and the CLI around it."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fourm import cli, modalities
from fourm.data import records, synthetic
from fourm.data.records import RecordSource

RAW_4M7 = {"rgb", "depth", "normal", "semseg", "det", "caption", "clip"}


def _shard_bytes(directory):
  return {name: open(os.path.join(directory, name), "rb").read()
          for name in sorted(os.listdir(directory)) if name.endswith(".array_record")}


@pytest.fixture(scope="module")
def world_200(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synth") / "world")
  assert cli.main(["synth", "--out", out, "--num", "200", "--resolution", "64", "--seed", "0",
                   "--records-per-shard", "64", "--quiet"]) == 0
  return out


def test_synth_twice_gives_byte_identical_records(world_200, tmp_path):
  again = str(tmp_path / "again")
  assert cli.main(["synth", "--out", again, "--num", "200", "--resolution", "64", "--seed", "0",
                   "--records-per-shard", "64", "--workers", "1", "--quiet"]) == 0
  first, second = _shard_bytes(world_200), _shard_bytes(again)
  assert list(first) == ["train-00000-of-00003.array_record", "train-00001-of-00003.array_record",
                         "train-00002-of-00003.array_record", "val-00000-of-00001.array_record"]
  assert first == second  # 2 worker processes vs 1: same bytes
  other_seed = str(tmp_path / "seed1")
  cli.main(["synth", "--out", other_seed, "--num", "200", "--seed", "1",
            "--records-per-shard", "64", "--quiet"])
  assert _shard_bytes(other_seed) != first


def test_every_record_holds_the_4m7_raw_modalities(world_200):
  info = records.DatasetInfo.load(world_200)
  assert info.splits["train"].num_records == 180 and info.splits["val"].num_records == 20
  assert info.metadata["classes"] == list(synthetic.CLASSES)
  for split in ("train", "val"):
    source = RecordSource(world_200, split, modalities=sorted(RAW_4M7))
    for index in range(0, len(source), 7):
      sample = source[index]
      assert sample["rgb"].shape == (64, 64, 3) and sample["depth"].shape == (64, 64)
      assert sample["normal"].shape == (64, 64, 3) and sample["semseg"].shape == (64, 64)
      assert sample["clip"].shape == (8, 8, 64) and isinstance(sample["caption"], str)
      assert sample["det"]["boxes"].shape[1] == 4
  # The raw sources of every 4M-7 model modality are present.
  assert set(modalities.sources(modalities.MODALITY_SET_4M7)) <= set(info.modalities)
  # Record i of a split is scene i: a smaller world is a prefix of a bigger one.
  np.testing.assert_array_equal(RecordSource(world_200, "val")[3]["depth"],
                                synthetic.make_sample(0, "val", 3, 64)["depth"])


def test_a_killed_job_resumes_and_mixed_worlds_are_refused(world_200, tmp_path, capsys):
  import shutil
  copy = str(tmp_path / "copy")
  shutil.copytree(world_200, copy)
  lost = "train-00001-of-00003.array_record"
  os.remove(os.path.join(copy, lost))  # as if killed while writing it
  os.remove(os.path.join(copy, records.INFO_FILE))
  assert cli.main(["synth", "--out", copy, "--num", "200", "--records-per-shard", "64",
                   "--quiet"]) == 0
  assert "resuming: 3 of 4 shards already written" in capsys.readouterr().out
  assert _shard_bytes(copy) == _shard_bytes(world_200)
  assert cli.main(["synth", "--out", copy, "--num", "300", "--quiet"]) == 2
  assert "already holds a synthetic world made with" in capsys.readouterr().err


def test_show_writes_a_readable_grid(world_200, tmp_path, capsys):
  out = str(tmp_path / "grid.png")
  assert cli.main(["show", world_200, "--num", "3", "--tile", "96", "--out", out]) == 0
  assert "wrote" in capsys.readouterr().out
  with Image.open(out) as image:
    grid = np.asarray(image.convert("RGB"))
  # Three rows of 7 tiles (rgb det depth normal semseg instance clip) of 96 px each.
  assert grid.shape[0] > 3 * 96 and grid.shape[1] > 7 * 96
  assert grid.std() > 20  # not a blank canvas
  augmented = str(tmp_path / "augmented.png")
  assert cli.main(["show", world_200, "--augmented", "--num", "2", "--out", augmented]) == 0
  assert os.path.getsize(augmented) > 10_000


def test_cli_help_lists_the_subcommands_and_errors_are_one_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "fourm.cli", "--help"], capture_output=True,
                          text=True, check=True)
  for command in ("synth", "ingest", "show", "info", "modalities"):
    assert command in result.stdout
  result = subprocess.run([sys.executable, "-m", "fourm.cli", "modalities", "--layout", "small"],
                          capture_output=True, text=True, check=True)
  assert "tok_depth" in result.stdout and "8x8 grid" in result.stdout
  result = subprocess.run([sys.executable, "-m", "fourm.cli", "info", str(tmp_path)],
                          capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0 and "no dataset_info.json" in result.stderr
