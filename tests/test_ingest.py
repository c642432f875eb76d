"""`fourm ingest` on real photographs (scikit-image ships a few) and on broken input."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fourm import cli
from fourm.data import ingest
from fourm.data.pipeline import Pipeline, PipelineConfig
from fourm.data.records import RecordError, RecordSource

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png")


def _skimage_data_dir():
  spec = importlib.util.find_spec("skimage")
  return os.path.join(spec.submodule_search_locations[0], "data")


@pytest.fixture
def photo_folder(tmp_path):
  folder = tmp_path / "photos"
  (folder / "nested").mkdir(parents=True)
  for i, name in enumerate(PHOTOS):
    target = folder / ("nested" if i % 2 else "") / name
    shutil.copy(os.path.join(_skimage_data_dir(), name), target)
  (folder / "notes.txt").write_text("not an image")
  return folder


def test_ingest_keeps_photos_exactly_and_joins_captions(photo_folder, tmp_path):
  captions = tmp_path / "captions.jsonl"
  captions.write_text(json.dumps({"image": "nested/chelsea.png", "caption": "a cat."}) + "\n" +
                      json.dumps({"image": "coffee.png", "caption": "a coffee cup."}))
  out = str(tmp_path / "ingested")
  assert cli.main(["ingest", "--images", str(photo_folder), "--captions", str(captions),
                   "--out", out, "--quiet"]) == 0
  source = RecordSource(out)
  assert len(source) == len(PHOTOS)
  by_key = {source[i]["key"]: source[i] for i in range(len(source))}
  chelsea = os.path.join("nested", "chelsea.png")
  assert set(by_key) == {"astronaut.png", chelsea, "coffee.png", "camera.png",
                         os.path.join("nested", "rocket.jpg")}
  original = np.asarray(Image.open(os.path.join(_skimage_data_dir(), "chelsea.png")).convert("RGB"))
  np.testing.assert_array_equal(by_key[chelsea]["rgb"], original)  # PNG: bit-exact
  assert by_key[chelsea]["caption"] == "a cat."
  assert "caption" not in by_key["astronaut.png"]  # no caption: absent, not empty
  assert by_key["camera.png"]["rgb"].shape[2] == 3  # greyscale becomes RGB
  # Photos of different sizes go through the pipeline at one static shape.
  batch = next(Pipeline(PipelineConfig(data=(out,), batch_size=5, resolution=32,
                                       modalities=("rgb",), num_epochs=1)).iterator())
  assert batch["rgb"].shape == (5, 32, 32, 3) and batch["meta"]["valid"].all()


def test_truncated_image_is_named_or_skipped_and_counted(photo_folder, tmp_path):
  data = (photo_folder / "astronaut.png").read_bytes()
  (photo_folder / "broken.png").write_bytes(data[: len(data) // 3])
  with pytest.raises(RecordError, match=r"broken.png: field 'rgb': cannot decode image"):
    ingest.ingest(str(photo_folder), str(tmp_path / "a"), progress=False)
  logged = []
  info = ingest.ingest(str(photo_folder), str(tmp_path / "b"), skip_bad=True, progress=False,
                       log=logged.append)
  assert info.splits["train"].num_records == len(PHOTOS)
  assert info.metadata["num_skipped"] == 1 and info.metadata["skipped"][0]["path"] == "broken.png"
  assert any("broken.png" in line for line in logged)


def test_empty_folder_and_bad_captions_fail_clearly(tmp_path, photo_folder, capsys):
  (tmp_path / "empty").mkdir()
  assert cli.main(["ingest", "--images", str(tmp_path / "empty"), "--out",
                   str(tmp_path / "x")]) == 2
  assert "no images found" in capsys.readouterr().err
  stray = tmp_path / "stray.json"
  stray.write_text(json.dumps({"dog.jpg": "a dog."}))
  with pytest.raises(RecordError, match=r"captions name images that are not in .*dog.jpg"):
    ingest.ingest(str(photo_folder), str(tmp_path / "y"), captions=str(stray), progress=False)
  tsv = tmp_path / "captions.tsv"
  tsv.write_text("chelsea.png\ta cat.\nno tab here\n")
  with pytest.raises(RecordError, match=r"captions.tsv: record 2: field 'caption'"):
    ingest.read_captions(str(tsv))


def test_split_assignment_is_stable_under_additions(photo_folder, tmp_path):
  first = ingest.ingest(str(photo_folder), str(tmp_path / "a"), val_fraction=0.5, progress=False)
  shutil.copy(photo_folder / "astronaut.png", photo_folder / "extra.png")
  second = ingest.ingest(str(photo_folder), str(tmp_path / "b"), val_fraction=0.5, progress=False)
  keys = lambda d, split: {s["key"] for s in RecordSource(d, split)}  # noqa: E731
  for split in first.splits:
    assert keys(str(tmp_path / "a"), split) <= keys(str(tmp_path / "b"), split)
  assert sum(s.num_records for s in second.splits.values()) == len(PHOTOS) + 1
