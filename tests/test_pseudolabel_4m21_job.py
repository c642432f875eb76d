"""The 4M-21 network labelers in `fourm pseudolabel`: tasks that share a network run it
once per batch (its failure logged once, under all their names); t5_caption reads the
record's caption, and a record without one gets none without failing; the whole 4M-21
set (and 4M-7's) end to end over ingested photographs with captions, then `fourm show`."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402

from fourm import cli, modalities  # noqa: E402
from fourm.data import derived, ingest, records  # noqa: E402
from pseudolabel import TASK_MODALITIES, human_poses, job, sam, t5_caption  # noqa: E402

torch.set_num_threads(1)  # see test_pseudolabel.py

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "camera.png")  # camera: greyscale
CAPTIONS = {"astronaut.png": "An astronaut. A flag behind her.",
            "coffee.png": "A cup of coffee on a saucer."}
TASKS_4M21 = ("sam_edge", "sam_instance", "dinov2", "dinov2_global", "human_keypoints",
              "t5_caption", "canny_edge", "color_palette", "metadata")
TASKS_4M7 = ("depth", "normals", "semseg", "det", "clip")
KEY = {name: i for i, name in enumerate(modalities.METADATA_KEYS)}


def test_the_new_tasks_write_registered_raw_modalities():
  assert {t: TASK_MODALITIES[t] for t in TASKS_4M21[:6]} == {
      "sam_edge": "sam_edge", "sam_instance": "sam_instance_masks", "dinov2": "dinov2",
      "dinov2_global": "dinov2_global", "human_keypoints": "human_keypoints",
      "t5_caption": "t5_caption"}
  # Raw only: no model modality reads the untokenized instances or the keypoints.
  for raw in ("sam_instance_masks", "human_keypoints"):
    assert not any(spec.source.name == raw for spec in modalities.MODALITIES.values())
  assert job.TASK_ORDER.index("human_keypoints") < job.TASK_ORDER.index("metadata")
  # One model option per network: the tasks that share SAM or DINOv2 name it once.
  assert {"sam", "dinov2", "human_keypoints", "t5_caption"} <= set(job.DEFAULT_MODELS)
  assert not {"sam_edge", "sam_instance", "dinov2_global"} & set(job.DEFAULT_MODELS)


# ----------------------------------------------------------------- shared networks
class _Network:
  """A network two tasks share: counts its batches, fails on images of one height."""

  name = "stub"

  def __init__(self, fails_on_height):
    self.calls, self.fails_on_height = 0, fails_on_height

  def __call__(self, images):
    self.calls += 1
    if any(image.shape[0] == self.fails_on_height for image in images):
      raise RuntimeError("cannot run on this one")
    return [float(image.shape[0]) for image in images]


class _Map:
  """dinov2 from the shared network's outputs."""

  def __init__(self, network):
    self.shared, self.name = network, network.name

  def from_shared(self, outputs, images):
    return [np.full((2, 2, 768), output, np.float32) for output in outputs]


class _Vector(_Map):
  def from_shared(self, outputs, images):
    return [np.full(768, output, np.float32) for output in outputs]


def _samples(*heights):
  return [{"rgb": np.zeros((h, 8, 3), np.uint8), "key": f"h{h}"} for h in heights]


def test_a_shared_network_runs_once_per_batch_and_fails_once():
  network = _Network(fails_on_height=6)
  labelers = {"dinov2": _Map(network), "dinov2_global": _Vector(network)}
  out = job.label_batch(labelers, _samples(4, 5))
  assert network.calls == 1
  assert [o["dinov2_global"][0] for o in out] == [4, 5] and out[1]["dinov2"][0, 0, 0] == 5

  network.calls = 0
  out = job.label_batch(labelers, _samples(4, 6, 5))
  assert network.calls == 1 + 3   # the batch, then each image alone; not again per task
  assert isinstance(out[1], derived.Failure) and not out[1].record   # neither made
  assert out[1].error == "dinov2+dinov2_global: RuntimeError: cannot run on this one"
  assert not isinstance(out[0], derived.Failure) and set(out[2]) == {"dinov2", "dinov2_global"}


# ----------------------------------------------------------------------- t5_caption
@pytest.fixture(scope="module")
def t5():
  torch.manual_seed(0)
  return t5_caption.T5CaptionLabeler.tiny()


def test_t5_caption_reads_captions_and_a_record_without_one_is_no_failure(t5):
  samples = _samples(4, 5, 6)
  samples[0]["caption"] = "a red cat"
  samples[2]["caption"] = "A man with a dog."
  out = job.label_batch({"t5_caption": t5}, samples)
  assert not any(isinstance(o, derived.Failure) for o in out)
  assert set(out[1]) == set()                  # no caption: no t5_caption, and no failure
  for o, sample in zip(out[::2], samples[::2]):
    np.testing.assert_allclose(o["t5_caption"], t5([sample["caption"]])[0], atol=1e-5)
  # A caption that is not text is that record's failure; the others are labelled.
  samples[1]["caption"] = b"bytes"
  out = job.label_batch({"t5_caption": t5}, samples)
  assert isinstance(out[1], derived.Failure) and "t5_caption: ValueError" in out[1].error
  assert "t5_caption" in out[0] and "t5_caption" in out[2]


# ------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def photo_data(tmp_path_factory):
  """The four photos ingested into 2 shards of 2, two of them with captions."""
  root = tmp_path_factory.mktemp("photos")
  folder = root / "images"
  folder.mkdir()
  skimage_data = os.path.join(importlib.util.find_spec("skimage").submodule_search_locations[0],
                              "data")
  for name in PHOTOS:
    shutil.copy(os.path.join(skimage_data, name), folder / name)
  (root / "captions.json").write_text(json.dumps(CAPTIONS))
  out = str(root / "ingested")
  ingest.ingest(str(folder), out, captions=str(root / "captions.json"), records_per_shard=2,
                progress=False, log=lambda _: None)
  return out


@pytest.mark.slow
def test_cli_labels_every_4m21_task_and_show_draws_them(photo_data, tmp_path, capsys,
                                                        monkeypatch):
  built, calls = {}, {"sam": 0, "dinov2": 0}
  original = job.build_labelers

  def counted(*args, **kwargs):
    """The CLI's labelers, kept; the shared networks' forward passes counted."""
    labelers = original(*args, **kwargs)
    built.update(labelers)
    labelers["sam_edge"].sam.model.vision_encoder.register_forward_hook(
        lambda *_: calls.__setitem__("sam", calls["sam"] + 1))
    labelers["dinov2"].model.register_forward_hook(
        lambda *_: calls.__setitem__("dinov2", calls["dinov2"] + 1))
    return labelers

  monkeypatch.setattr(job, "build_labelers", counted)
  torch.manual_seed(0)
  out = str(tmp_path / "labels")
  assert cli.main(["pseudolabel", "--data", photo_data, "--out", out, "--tiny", "--tasks",
                   ",".join(TASKS_4M21 + TASKS_4M7), "--batch-size", "2", "--quiet"]) == 0
  printed = capsys.readouterr().out
  assert "meaningless" in printed and "0 of 4 images failed" in printed

  # One SAM and one DINOv2 for two tasks each, run once per batch (2 shards of 2 records,
  # batches of 2): no second pass, and no per-image retry.
  assert built["sam_edge"].sam is built["sam_instance"].sam
  assert built["dinov2_global"].dinov2 is built["dinov2"]
  assert calls == {"sam": 2, "dinov2": 2}

  info = records.DatasetInfo.load(out)
  assert info.metadata["num_failed"] == 0
  made = {TASK_MODALITIES[t] for t in TASKS_4M21 + TASKS_4M7}
  assert set(info.modalities) == made
  counts = {name: info.modalities[name]["count"] for name in made}
  assert counts.pop("t5_caption") == len(CAPTIONS) and set(counts.values()) == {len(PHOTOS)}
  for name in ("sam_edge", "sam_instance_masks", "dinov2", "dinov2_global", "human_keypoints",
               "t5_caption"):
    assert info.metadata[name]  # what the values mean
  assert info.metadata["models"]["sam_instance"] == "tiny-random"

  source = records.RecordSource([photo_data, out])
  assert len(source) == len(PHOTOS)
  for i in range(len(source)):
    sample = source[i]
    records.validate_sample(sample)
    image = sample["rgb"]
    height, width = image.shape[:2]
    edges = sample["sam_edge"]
    assert edges.shape == (height, width) and edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 1}

    masks = sample["sam_instance_masks"]
    assert masks.dtype == np.int32 and masks.shape[1] == sam.ROW_WIDTH + sam.MASK_SIZE ** 2
    rows = sam.instance_rows(masks)
    assert len({tuple(p) for p in rows[:, :2].tolist()}) == sam.QUERY_POINTS
    assert (rows[:, 6:] == sam.UNTOKENIZED).all()          # no tokenizer yet
    hit = sam.has_instance(masks)
    boxes = {tuple(b) for b in rows[hit, 2:6].tolist()}
    assert hit.any() and ((rows[hit, 2:6] >= 0) & (rows[hit, 2:6] < sam.FRAME)).all()

    assert sample["dinov2"].shape == (4, 4, 768)            # tiny: 56 px / 14 px patches
    assert sample["dinov2"].dtype == sample["dinov2_global"].dtype == np.float32
    assert sample["dinov2_global"].shape == (768,)
    # The global vector is this photo's, from the batch's one pass.
    np.testing.assert_allclose(sample["dinov2_global"],
                               built["dinov2"].features([image])[0][1], atol=1e-4)

    people = sample["human_keypoints"]
    assert people.dtype == np.float32 and people.shape == (10, human_poses.WIDTH)

    key = sample["key"]
    if key in CAPTIONS:
      assert sample["caption"] == CAPTIONS[key]
      states = sample["t5_caption"]
      tokens = built["t5_caption"].token_ids(CAPTIONS[key])
      assert states.shape == (len(tokens), 4096) and states.dtype == np.float32
      np.testing.assert_allclose(states, built["t5_caption"]([CAPTIONS[key]])[0], atol=1e-5)
    else:
      assert "t5_caption" not in sample and "caption" not in sample

    meta = sample["metadata"]
    assert meta[KEY["n_humans"]] == len(people)              # the keypoint rows
    # Every SAM mask is counted; a record lists only the instances at its points.
    assert meta[KEY["n_sam_instances"]] >= len(boxes) >= 1
    assert ("caption" in sample) == np.isfinite(meta[KEY["caption_n_words"]])

  png = str(tmp_path / "grid.png")
  assert cli.main(["show", photo_data, out, "--num", str(len(PHOTOS)), "--out", png]) == 0
  shown = capsys.readouterr().out
  for name in made:
    assert name in shown
  assert os.path.getsize(png) > 0
