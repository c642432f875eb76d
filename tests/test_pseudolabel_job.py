"""`fourm pseudolabel` end to end with the tiny random-init labelers: ingested photos and
synthetic scenes in, side-by-side records out, through the pipeline and `fourm tokenize`;
resume after a kill; a failing image logged, counted, and the job going on."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from fourm import cli  # noqa: E402
from fourm.data import ingest, records, world  # noqa: E402
from fourm.data.pipeline import Pipeline, PipelineConfig  # noqa: E402
from pseudolabel import job, normals  # noqa: E402

torch.set_num_threads(1)  # see test_pseudolabel.py

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "camera.png")
ALL = ("depth", "normals", "semseg", "det", "clip")
MODALITIES = {"depth", "normal", "semseg", "det", "clip"}


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory):
  """The five photos ingested into 3 shards of 2, 2 and 1 records."""
  root = tmp_path_factory.mktemp("photos")
  skimage_data = os.path.join(importlib.util.find_spec("skimage").submodule_search_locations[0],
                              "data")
  for name in PHOTOS:
    shutil.copy(os.path.join(skimage_data, name), root / name)
  out = str(root.parent / "ingested")
  ingest.ingest(str(root), out, records_per_shard=2, progress=False, log=lambda _: None)
  return out


@pytest.fixture(scope="module")
def tiny_labelers():
  return job.build_labelers(ALL, {task: "tiny-random" for task in job.DEFAULT_MODELS})


def _shard_files(directory):
  return sorted(n for n in os.listdir(directory) if n.endswith(".array_record"))


def test_cli_labels_ingested_photos_and_the_pipeline_reads_them(photo_data, tmp_path, capsys):
  out = str(tmp_path / "labels")
  assert cli.main(["pseudolabel", "--data", photo_data, "--out", out, "--tiny",
                   "--batch-size", "2", "--quiet"]) == 0
  printed = capsys.readouterr().out
  assert "meaningless" in printed and "0 of 5 images failed" in printed
  info = records.DatasetInfo.load(out)
  assert set(info.modalities) == MODALITIES
  assert info.metadata["num_failed"] == 0 and len(info.metadata["classes"]) == 133
  assert "meaningless" in info.metadata["warning"]
  assert info.metadata["normal"].endswith("fov 60 deg")  # photos: the default camera

  source = records.RecordSource([photo_data, out])
  assert len(source) == len(PHOTOS)
  for i in range(len(source)):
    sample = source[i]
    height, width = sample["rgb"].shape[:2]
    assert sample["depth"].shape == (height, width)
    assert sample["normal"].shape == (height, width, 3)
    assert sample["semseg"].shape == (height, width)
    assert sample["clip"].shape == (4, 4, 32)  # tiny CLIP: 64 px input / 16 px patches
    assert sample["det"]["boxes"].shape[1] == 4

  batch = next(Pipeline(PipelineConfig(data=(photo_data, out), batch_size=5, resolution=32,
                                       num_epochs=1, shuffle=False)).iterator())
  assert batch["depth"].shape == (5, 32, 32) and batch["normal"].shape == (5, 32, 32, 3)
  assert batch["semseg"].shape == (5, 32, 32) and batch["meta"]["valid"].all()
  assert batch["clip"].shape[0] == 5 and "det" in batch


def test_synthetic_scenes_go_through_tokenize(tmp_path, tiny_labelers):
  data, out, tokens = (str(tmp_path / name) for name in ("world", "labels", "tokens"))
  world.write_world(data, 6, resolution=64, progress=False, log=lambda _: None)
  assert job.camera_fov(data) == 50.0  # the world records its camera
  labelers = {"depth": tiny_labelers["depth"], "semseg": tiny_labelers["semseg"],
              "normals": normals.NormalsFromDepth(tiny_labelers["depth"], job.camera_fov(data))}
  info = job.pseudolabel_dataset(data, out, labelers, batch_size=4, progress=False)
  assert info.splits.keys() == records.DatasetInfo.load(data).splits.keys()
  assert info.modalities["depth"]["shape"] == [64, 64]
  assert info.metadata["normal"].endswith("fov 50 deg")
  assert cli.main(["tokenize", "--data", out, "--out", tokens, "--method", "patches",
                   "--modalities", "tok_depth,tok_normal,tok_semseg", "--quiet"]) == 0
  sample = records.RecordSource([out, tokens], "train")[0]
  assert sample["tok_depth"].shape == sample["tok_semseg"].shape == (8, 8)


class _KilledAfter:
  """Wraps a labeler; after `calls` batches it raises as a kill would (not an Exception,
  so the job's per-image retry does not catch it)."""

  def __init__(self, labeler, calls):
    self.labeler, self.calls = labeler, calls

  def __getattr__(self, name):  # name, class_names, ... of the wrapped labeler
    return getattr(self.labeler, name)

  def __call__(self, images):
    if self.calls == 0:
      raise KeyboardInterrupt
    self.calls -= 1
    return self.labeler(images)


def test_killed_job_resumes_without_redoing_finished_shards(photo_data, tmp_path,
                                                            tiny_labelers):
  out = str(tmp_path / "labels")
  labelers = {"depth": tiny_labelers["depth"], "clip": tiny_labelers["clip"]}
  killed = dict(labelers, clip=_KilledAfter(labelers["clip"], calls=1))  # dies in shard 2
  with pytest.raises(KeyboardInterrupt):
    job.pseudolabel_dataset(photo_data, out, killed, batch_size=2, progress=False)
  assert not os.path.exists(os.path.join(out, records.INFO_FILE))
  finished = _shard_files(out)
  assert len(finished) == 1
  mtime = os.stat(os.path.join(out, finished[0])).st_mtime_ns

  log = []
  info = job.pseudolabel_dataset(photo_data, out, labelers, batch_size=2, progress=False,
                                 log=log.append)
  assert any("resuming: 1 of 3 shards" in line for line in log)
  assert os.stat(os.path.join(out, finished[0])).st_mtime_ns == mtime
  assert len(_shard_files(out)) == 3 and info.modalities["clip"]["count"] == len(PHOTOS)
  source = records.RecordSource([photo_data, out])
  assert all({"depth", "clip"} <= set(source[i]) for i in range(len(source)))


class _FailsOn:
  """Wraps a labeler so that it fails on images of one size (only chelsea is 300 x 451)."""

  def __init__(self, labeler, shape):
    self.labeler, self.shape = labeler, shape

  def __getattr__(self, name):
    return getattr(self.labeler, name)

  def __call__(self, images):
    if any(image.shape[:2] == self.shape for image in images):
      raise RuntimeError("cannot label this one")
    return self.labeler(images)


def test_failing_image_is_logged_counted_and_the_job_goes_on(photo_data, tmp_path,
                                                             tiny_labelers):
  out = str(tmp_path / "labels")
  labelers = {"semseg": _FailsOn(tiny_labelers["semseg"], (300, 451)),
              "clip": tiny_labelers["clip"]}
  log = []
  info = job.pseudolabel_dataset(photo_data, out, labelers, batch_size=2, progress=False,
                                 log=log.append)
  failed_lines = [line for line in log if line.startswith("failed")]
  assert len(failed_lines) == 1 and "chelsea.png" in failed_lines[0]
  assert "semseg" in failed_lines[0] and "cannot label this one" in failed_lines[0]
  assert info.metadata["num_failed"] == 1
  assert info.metadata["failed"][0]["key"] == "chelsea.png"
  assert info.modalities["semseg"]["count"] == len(PHOTOS) - 1
  source = records.RecordSource([photo_data, out])
  by_key = {source[i]["key"]: source[i] for i in range(len(source))}
  assert "semseg" not in by_key["chelsea.png"] and "clip" in by_key["chelsea.png"]
  assert all("semseg" in s for k, s in by_key.items() if k != "chelsea.png")

  # A sample whose only labeler fails gets an empty record: absent, never zero-filled.
  only = str(tmp_path / "only_semseg")
  info = job.pseudolabel_dataset(photo_data, only, {"semseg": labelers["semseg"]},
                                 batch_size=2, progress=False, log=lambda _: None)
  source = records.RecordSource([photo_data, only])
  chelsea = next(source[i] for i in range(len(source)) if source[i]["key"] == "chelsea.png")
  assert set(chelsea) == {"rgb", "key"}
  with open(os.path.join(only, records.INFO_FILE)) as f:
    assert json.load(f)["metadata"]["num_failed"] == 1


class _NanOn(_FailsOn):
  """Returns a NaN map for the image of one size instead of raising."""

  def __call__(self, images):
    outputs = self.labeler(images)
    return [np.full_like(o, np.nan) if image.shape[:2] == self.shape else o
            for image, o in zip(images, outputs)]


def test_invalid_output_is_that_images_failure(photo_data, tmp_path, tiny_labelers):
  labelers = {"depth": _NanOn(tiny_labelers["depth"], (300, 451))}
  labelers["normals"] = normals.NormalsFromDepth(labelers["depth"])
  log = []
  info = job.pseudolabel_dataset(photo_data, str(tmp_path / "labels"), labelers,
                                 batch_size=2, progress=False, log=log.append)
  assert info.metadata["num_failed"] == 1 and "NaN" in info.metadata["failed"][0]["error"]
  assert info.modalities["depth"]["count"] == info.modalities["normal"]["count"] == 4


def test_unknown_task_is_refused(photo_data, tmp_path, capsys):
  assert cli.main(["pseudolabel", "--data", photo_data, "--out", str(tmp_path / "x"),
                   "--tasks", "depth,edges", "--tiny"]) == 2
  assert "edges" in capsys.readouterr().err
