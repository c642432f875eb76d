"""The dataset converters on tiny copies of the real layouts: COCO's folder, ADE20K's
`ADEChallengeData2016/`, and prepared tfds builders (array_record, read without
TensorFlow), plus the broken inputs each must name in one line."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from fourm.data import ingest_common, records
from fourm.data.ingest_ade20k import SEMSEG_CLASSES, ingest_ade20k
from fourm.data.ingest_coco import ingest_coco
from fourm.data.pipeline import Pipeline, PipelineConfig
from fourm.data.records import RecordError, RecordSource
from fourm.errors import UsageError

ORIENTED = 6  # EXIF "rotate 90 degrees clockwise to view": swaps width and height


def _image(h, w, seed=0, rect=None) -> Image.Image:
  pixels = np.random.default_rng(seed).integers(0, 80, (h, w, 3), dtype=np.uint8)
  if rect is not None:  # a bright rectangle (x0, y0, x1, y1) in pixels, to find again
    x0, y0, x1, y1 = rect
    pixels[y0:y1, x0:x1] = 255
  return Image.fromarray(pixels)


def _jpeg(h, w, seed=0, rect=None, orientation=None) -> bytes:
  buffer = io.BytesIO()
  exif = Image.Exif()
  if orientation:
    exif[0x0112] = orientation
  _image(h, w, seed, rect).save(buffer, format="JPEG", quality=95, exif=exif)
  return buffer.getvalue()


def _png(array) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def _by_key(source):
  return {sample["key"]: sample for sample in source}


def _one_line(error: RecordError, *parts: str) -> str:
  text = str(error)
  assert "\n" not in text
  for part in parts:
    assert part in text, (part, text)
  return text


# --- EXIF frames --------------------------------------------------------------------

TRANSPOSES = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("orientation", sorted(TRANSPOSES))
def test_labels_follow_pixels_through_every_exif_orientation(orientation):
  ids = np.random.default_rng(orientation).integers(0, 9, (5, 8), dtype=np.uint8)
  upright = np.asarray(Image.fromarray(ids).transpose(TRANSPOSES[orientation]))
  np.testing.assert_array_equal(ingest_common.orient_map(ids, orientation), upright)
  mark = np.zeros((20, 30), np.uint8)
  mark[4:9, 6:21] = 1  # the box (6, 4, 21, 9) in pixels
  turned = np.asarray(Image.fromarray(mark).transpose(TRANSPOSES[orientation]))
  ys, xs = np.nonzero(turned)
  h, w = turned.shape
  want = [xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]
  box = np.array([[6 / 30, 4 / 20, 21 / 30, 9 / 20]], np.float32)
  np.testing.assert_allclose(ingest_common.orient_boxes(box, orientation)[0], want, atol=1e-6)


# --- COCO ---------------------------------------------------------------------------

CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"},
              {"id": 3, "name": "car"}]  # out of order and with gaps, as in COCO


@pytest.fixture
def coco(tmp_path):
  root = tmp_path / "coco"
  for folder in ("annotations", "train2017", "val2017"):
    (root / folder).mkdir(parents=True)
  (root / "train2017" / "000000000001.jpg").write_bytes(_jpeg(30, 40, 1))
  (root / "train2017" / "000000000002.jpg").write_bytes(_jpeg(30, 40, 2))
  # Stored 30x40 (the frame COCO's width/height and boxes use), shown rotated to 40x30.
  (root / "train2017" / "000000000003.jpg").write_bytes(
      _jpeg(30, 40, 3, rect=(8, 6, 20, 12), orientation=ORIENTED))
  (root / "train2017" / "README.txt").write_text("not listed in the JSON")
  (root / "val2017" / "000000000009.jpg").write_bytes(_jpeg(20, 20, 9))
  image = lambda i, w=40, h=30: {"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h}
  box = lambda i, image_id, cat, bbox, crowd=0: {"id": i, "image_id": image_id,
                                                 "category_id": cat, "bbox": bbox,
                                                 "iscrowd": crowd, "area": 1.0}
  train = {"images": [image(3), image(1), image(2)], "categories": CATEGORIES,
           "annotations": [box(10, 1, 1, [4, 3, 20, 15]),
                           box(11, 1, 3, [0, 0, 40, 30], crowd=1),
                           box(12, 1, 3, [30, 20, 20, 20]),     # crosses the corner
                           box(13, 1, 90, [5, 5, 0, 10]),       # no width
                           box(14, 3, 3, [8, 6, 12, 6])]}
  val = {"images": [image(9, 20, 20)], "categories": CATEGORIES,
         "annotations": [box(20, 9, 90, [2, 2, 10, 10])]}
  (root / "annotations" / "instances_train2017.json").write_text(json.dumps(train))
  (root / "annotations" / "instances_val2017.json").write_text(json.dumps(val))
  return root


def _rewrite(path, change):
  data = json.loads(path.read_text())
  change(data)
  path.write_text(json.dumps(data))


def test_coco_boxes_classes_and_counts(coco, tmp_path):
  logged = []
  out = str(tmp_path / "out")
  info = ingest_coco(str(coco), out, progress=False, log=logged.append)
  assert info.splits["train"].num_records == 3 and info.splits["val"].num_records == 1
  meta = info.metadata
  assert meta["det_classes"] == ["person", "car", "toothbrush"]  # COCO category-id order
  assert meta["det_category_ids"] == [1, 3, 90]
  assert meta["counts"]["train"] == {"boxes_clipped": 1, "boxes_empty": 1, "crowd_skipped": 1,
                                     "exif_reoriented": 1, "images_without_boxes": 1}
  assert meta["files_not_listed"] == {"train": 1, "val": 0}
  assert any("crowd_skipped 1" in line for line in logged)
  assert any("README.txt" in line for line in logged)

  train = RecordSource(out, "train")
  assert [s["key"] for s in train] == [f"{i:012d}.jpg" for i in (1, 2, 3)]  # file order
  first, empty, turned = list(train)
  np.testing.assert_array_equal(  # the JPEG's own bytes, decoded as fourm always does
      first["rgb"], records.decode_image((coco / "train2017" / first["key"]).read_bytes()))
  np.testing.assert_allclose(first["det"]["boxes"], [[0.1, 0.1, 0.6, 0.6],
                                                     [0.75, 20 / 30, 1.0, 1.0]], atol=1e-6)
  assert first["det"]["classes"] == ["person", "car"]
  assert empty["det"]["boxes"].shape == (0, 4) and empty["det"]["classes"] == []
  # The rotated photo decodes upright, and its box moved with the pixels.
  assert turned["rgb"].shape == (40, 30, 3)
  x0, y0, x1, y1 = (turned["det"]["boxes"][0] * [30, 40, 30, 40]).round().astype(int)
  assert turned["rgb"][y0 + 1:y1 - 1, x0 + 1:x1 - 1].min() > 200  # the bright rectangle
  assert RecordSource(out, "val")[0]["det"]["classes"] == ["toothbrush"]

  batch = next(Pipeline(PipelineConfig(data=(out,), batch_size=3, resolution=32,
                                       modalities=("rgb", "det"), num_epochs=1)).iterator())
  assert batch["rgb"].shape == (3, 32, 32, 3) and batch["det"]["boxes"].shape[0] == 3
  with pytest.raises(UsageError, match="already holds a dataset"):
    ingest_coco(str(coco), out, progress=False, log=logged.append)


def test_coco_annotation_naming_a_missing_image_is_one_line(coco, tmp_path):
  path = coco / "annotations" / "instances_train2017.json"
  _rewrite(path, lambda d: d["annotations"][2].update(image_id=777))
  with pytest.raises(RecordError) as caught:
    ingest_coco(str(coco), str(tmp_path / "out"), progress=False, log=lambda _: None)
  assert (caught.value.path, caught.value.record, caught.value.field) == (str(path), 2,
                                                                          "image_id")
  _one_line(caught.value, "annotation id 12", "image_id 777")


@pytest.mark.parametrize("breakage, where, field, words", [
    (lambda root: (root / "val2017").rename(root / "elsewhere"), "val2017", None,
     "no such image folder"),
    (lambda root: (root / "train2017" / "000000000002.jpg").unlink(),
     "train2017/000000000002.jpg", "rgb", "not found"),
    (lambda root: _rewrite(root / "annotations" / "instances_train2017.json",
                           lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4])),
     "instances_train2017.json", "bbox", "annotation id 10"),
    (lambda root: _rewrite(root / "annotations" / "instances_train2017.json",
                           lambda d: d["images"][1].update(width=41)),
     "train2017/000000000001.jpg", "rgb", "has size 30x41"),
    (lambda root: (root / "train2017" / "000000000001.jpg").write_bytes(b"\xff\xd8 cut"),
     "train2017/000000000001.jpg", "rgb", "cannot decode"),
])
def test_coco_bad_input_names_file_record_and_field(coco, tmp_path, breakage, where, field,
                                                    words):
  breakage(coco)
  out = tmp_path / "out"
  with pytest.raises(RecordError) as caught:
    ingest_coco(str(coco), str(out), progress=False, log=lambda _: None)
  assert caught.value.path.endswith(where) and caught.value.field == field
  _one_line(caught.value, words)
  assert not (out / records.INFO_FILE).exists()


# --- ADE20K -------------------------------------------------------------------------

@pytest.fixture
def ade(tmp_path):
  root = tmp_path / "ADEChallengeData2016"
  for kind in ("images", "annotations"):
    for split in ("training", "validation"):
      (root / kind / split).mkdir(parents=True)
  for split, stem, seed in (("training", "ADE_train_00000001", 1),
                            ("training", "ADE_train_00000002", 2),
                            ("validation", "ADE_val_00000001", 3)):
    (root / "images" / split / f"{stem}.jpg").write_bytes(_jpeg(12, 16, seed))
    ids = np.random.default_rng(seed).integers(0, 151, (12, 16), dtype=np.uint8)
    ids[0, :2] = (0, 150)
    (root / "annotations" / split / f"{stem}.png").write_bytes(_png(ids))
  return root


def test_ade20k_ids_stored_as_is(ade, tmp_path):
  out = str(tmp_path / "out")
  info = ingest_ade20k(str(tmp_path), out, progress=False, log=lambda _: None)  # the parent
  assert info.metadata["semseg_classes"] == list(SEMSEG_CLASSES)
  assert len(SEMSEG_CLASSES) == 151 and SEMSEG_CLASSES[:3] == ("other", "wall", "building")
  assert SEMSEG_CLASSES[150] == "flag" and info.metadata["semseg_ignore_index"] == 0
  train = _by_key(RecordSource(out, "train"))
  assert sorted(train) == ["ADE_train_00000001.jpg", "ADE_train_00000002.jpg"]
  sample = train["ADE_train_00000002.jpg"]
  stored = np.asarray(Image.open(ade / "annotations/training/ADE_train_00000002.png"))
  np.testing.assert_array_equal(sample["semseg"], stored)
  assert sample["semseg"].dtype == np.uint8 and sample["rgb"].shape == (12, 16, 3)
  assert len(RecordSource(out, "val")) == 1
  batch = next(Pipeline(PipelineConfig(data=(out,), batch_size=2, resolution=8,
                                       modalities=("rgb", "semseg"), num_epochs=1)).iterator())
  assert batch["semseg"].shape == (2, 8, 8)


def _replace_annotation(ade, array):
  (ade / "annotations/training/ADE_train_00000002.png").write_bytes(_png(array))


@pytest.mark.parametrize("breakage, where, field, words", [
    (lambda ade: _replace_annotation(ade, np.zeros((12, 15), np.uint8)),
     "annotations/training/ADE_train_00000002.png", "semseg", "has size 12x15"),
    (lambda ade: _replace_annotation(ade, np.full((12, 16), 200, np.uint8)),
     "annotations/training/ADE_train_00000002.png", "semseg", "class id 200"),
    (lambda ade: _replace_annotation(ade, np.zeros((12, 16, 3), np.uint8)),
     "annotations/training/ADE_train_00000002.png", "semseg", "single-channel"),
    (lambda ade: (ade / "images/validation").rename(ade / "images/elsewhere"),
     "images/validation", None, "no such folder"),
    (lambda ade: (ade / "annotations/training/ADE_train_00000001.png").unlink(),
     "images/training/ADE_train_00000001.jpg", "semseg", "has no annotation"),
])
def test_ade20k_bad_input_names_file_record_and_field(ade, tmp_path, breakage, where, field,
                                                      words):
  breakage(ade)
  with pytest.raises(RecordError) as caught:
    ingest_ade20k(str(ade), str(tmp_path / "out"), progress=False, log=lambda _: None)
  assert caught.value.path.endswith(where) and caught.value.field == field
  if field == "semseg" and "annotation" not in words:
    assert caught.value.record == 1
  _one_line(caught.value, words)


def test_interrupted_conversion_resumes_at_the_missing_shard(ade, tmp_path):
  out = tmp_path / "out"
  good = np.asarray(Image.open(ade / "annotations/training/ADE_train_00000002.png"))
  _replace_annotation(ade, np.full((12, 16), 200, np.uint8))
  with pytest.raises(RecordError):
    ingest_ade20k(str(ade), str(out), records_per_shard=1, progress=False, log=lambda _: None)
  assert (out / "train-00000-of-00002.array_record").exists()
  _replace_annotation(ade, good)
  with pytest.raises(UsageError, match="other options"):  # a different plan is refused
    ingest_ade20k(str(ade), str(out), records_per_shard=2, progress=False, log=lambda _: None)
  logged = []
  ingest_ade20k(str(ade), str(out), records_per_shard=1, progress=False, log=logged.append)
  assert any("resumed: 1 shards" in line for line in logged)
  assert sorted(os.listdir(out)) == [records.INFO_FILE, "train-00000-of-00002.array_record",
                                     "train-00001-of-00002.array_record",
                                     "val-00000-of-00001.array_record"]
  np.testing.assert_array_equal(RecordSource(str(out), "train")[1]["semseg"], good)


# --- tfds ---------------------------------------------------------------------------
# Tiny builders with the real ones' names, versions and feature dicts, prepared as
# array_record here without TensorFlow; the converter then reads them through
# tfds.data_source exactly as it reads the real ones.

WNIDS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  tfds = pytest.importorskip("tensorflow_datasets")
  features = tfds.features
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  bbox = tfds.features.BBox

  def builder(dataset, version, feature_dict, splits, config=None):
    class Fake(tfds.core.GeneratorBasedBuilder, skip_registration=True):
      name = dataset
      VERSION = tfds.core.Version(version)
      BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config)] if config else []

      def _info(self):
        return tfds.core.DatasetInfo(builder=self,
                                     features=features.FeaturesDict(feature_dict))

      def _split_generators(self, dl_manager):
        return {split: self._generate_examples(examples) for split, examples in splits.items()}

      def _generate_examples(self, examples):
        yield from enumerate(examples)

    Fake(data_dir=data_dir, file_format="array_record").download_and_prepare()

  objects = lambda *boxes: [{"id": i, "area": 1, "bbox": b, "label": c, "is_crowd": crowd}
                            for i, (b, c, crowd) in enumerate(boxes)]
  builder("coco", "1.1.0", {
      "image": features.Image(encoding_format="jpeg"), "image/filename": features.Text(),
      "image/id": np.int64,
      "objects": features.Sequence({
          "id": np.int64, "area": np.int64, "bbox": features.BBoxFeature(),
          "label": features.ClassLabel(names=["person", "bicycle", "car"]),
          "is_crowd": np.bool_})},
      {"train": [{"image": _jpeg(20, 40, 1), "image/filename": "000000000001.jpg",
                  "image/id": 1,
                  "objects": objects((bbox(0.1, 0.2, 0.5, 0.6), "car", False),
                                     (bbox(0.0, 0.0, 1.0, 1.0), "person", True),
                                     (bbox(0.3, 0.3, 0.3, 0.9), "bicycle", False))},
                 {"image": _jpeg(20, 40, 2), "image/filename": "000000000002.jpg",
                  "image/id": 2, "objects": []}],
       "validation": [{"image": _jpeg(10, 10, 3), "image/filename": "000000000003.jpg",
                       "image/id": 3, "objects": objects((bbox(0.0, 0.0, 0.5, 0.5), "person",
                                                          False))}]},
      config="2017")
  annotation = np.zeros((12, 16, 3), np.uint8)
  annotation[2:6, 3:9] = (4, 1, 0)     # a "person", instance 1
  annotation[7:10, 1:5] = (100, 2, 0)  # a "flag", instance 2
  builder("scene_parse150", "1.0.0", {"image": features.Image(encoding_format="jpeg"),
                                      "annotation": features.Image(encoding_format="png")},
          {"train": [{"image": _jpeg(12, 16, 4), "annotation": _png(annotation)}],
           "test": [{"image": _jpeg(12, 16, 5), "annotation": _png(annotation)}]})
  depth = np.linspace(0.5, 9.5, 8 * 12, dtype=np.float16).reshape(8, 12)
  depth[0, 0], depth[1, 1] = 0, np.nan
  builder("nyu_depth_v2", "0.0.1", {"image": features.Image(shape=(8, 12, 3)),
                                    "depth": features.Tensor(shape=(8, 12), dtype=np.float16)},
          {"train": [{"image": _png(np.asarray(_image(8, 12))), "depth": depth}],
           "validation": [{"image": _png(np.asarray(_image(8, 12, 1))), "depth": depth}]})
  builder("imagenet2012", "5.1.0", {"image": features.Image(encoding_format="jpeg"),
                                    "label": features.ClassLabel(names=WNIDS),
                                    "file_name": features.Text()},
          {"train": [{"image": _jpeg(9, 7, i), "label": WNIDS[i], "file_name": f"t{i}.JPEG"}
                     for i in range(3)],
           "validation": [{"image": _jpeg(9, 7), "label": WNIDS[2], "file_name": "v.JPEG"}],
           "test": [{"image": _jpeg(9, 7), "label": -1, "file_name": "x.JPEG"}]})
  return data_dir


def test_tfds_coco(tfds_dir, tmp_path):
  from fourm.data.ingest_tfds import ingest_tfds
  out = str(tmp_path / "out")
  info = ingest_tfds("coco/2017", out, data_dir=tfds_dir, progress=False, log=lambda _: None)
  assert info.metadata["det_classes"] == ["person", "bicycle", "car"]
  assert info.metadata["tfds_name"] == "coco/2017:1.1.0"
  assert info.metadata["counts"]["train"] == {"boxes_clipped": 0, "boxes_empty": 1,
                                              "crowd_skipped": 1, "exif_reoriented": 0,
                                              "images_without_boxes": 1}
  train = _by_key(RecordSource(out, "train"))
  det = train["000000000001.jpg"]["det"]
  np.testing.assert_allclose(det["boxes"], [[0.2, 0.1, 0.6, 0.5]], atol=1e-6)  # xyxy now
  assert det["classes"] == ["car"] and train["000000000001.jpg"]["rgb"].shape == (20, 40, 3)
  assert train["000000000002.jpg"]["det"]["boxes"].shape == (0, 4)
  assert RecordSource(out, "val")[0]["det"]["classes"] == ["person"]


def test_tfds_scene_parse150_nyu_imagenet(tfds_dir, tmp_path):
  from fourm.data.ingest_tfds import ADE20K_INSTANCE_CLASSES, ingest_tfds
  quiet = dict(data_dir=tfds_dir, progress=False, log=lambda _: None)
  info = ingest_tfds("scene_parse150", str(tmp_path / "ade"), **quiet)
  assert set(info.splits) == {"train", "val"}  # tfds "test" is ADE20K's validation set
  classes = info.metadata["semseg_classes"]
  assert len(classes) == 101 and classes[4] == "person" and classes[100] == "flag"
  assert classes[1:] == list(ADE20K_INSTANCE_CLASSES)
  assert set(ADE20K_INSTANCE_CLASSES) <= set(SEMSEG_CLASSES)  # one naming for both lists
  sample = RecordSource(str(tmp_path / "ade"), "train")[0]
  assert sorted(np.unique(sample["semseg"])) == [0, 4, 100]
  assert sorted(np.unique(sample["instance"])) == [0, 1, 2] and sample["key"] == "train/0"

  info = ingest_tfds("nyu_depth_v2", str(tmp_path / "nyu"), **quiet)
  assert info.metadata["counts"]["train"] == {"depth_nonfinite_pixels": 1}
  depth = RecordSource(str(tmp_path / "nyu"), "val")[0]["depth"]
  assert depth.dtype == np.float32 and depth.shape == (8, 12)
  assert depth[0, 0] == 0 and depth[1, 1] == 0 and depth[7, 11] == pytest.approx(9.5, 0.01)

  info = ingest_tfds("imagenet2012", str(tmp_path / "in"), **quiet)
  assert info.metadata["label_classes"] == WNIDS
  train = _by_key(RecordSource(str(tmp_path / "in"), "train"))
  assert {k: s["label"] for k, s in train.items()} == {f"t{i}.JPEG": WNIDS[i] for i in range(3)}
  info = ingest_tfds("imagenet2012", str(tmp_path / "test"), splits={"test": "test"}, **quiet)
  assert info.metadata["counts"]["test"] == {"unlabeled": 1}
  assert "label" not in RecordSource(str(tmp_path / "test"), "test")[0]


def test_tfds_names_what_is_missing(tfds_dir, tmp_path):
  from fourm.data.ingest_tfds import ingest_tfds, resolve
  assert resolve("coco", tfds_dir)[0] == "coco/2017:1.1.0"  # the one config prepared
  quiet = dict(data_dir=tfds_dir, progress=False, log=lambda _: None)
  with pytest.raises(UsageError, match="not supported"):
    ingest_tfds("mnist", str(tmp_path / "a"), **quiet)
  with pytest.raises(RecordError, match="version 9.9.9 is not prepared"):
    ingest_tfds("coco/2017:9.9.9", str(tmp_path / "b"), **quiet)
  with pytest.raises(UsageError, match="no split 'testdev'"):
    ingest_tfds("coco/2017", str(tmp_path / "c"), splits={"val": "testdev"}, **quiet)
  tfrecord = tmp_path / "tfrecord"
  shutil.copytree(os.path.join(tfds_dir, "coco"), tfrecord / "coco")
  info_path = tfrecord / "coco" / "2017" / "1.1.0" / "dataset_info.json"
  info_path.write_text(info_path.read_text().replace('"array_record"', '"tfrecord"'))
  with pytest.raises(UsageError, match="prepared as tfrecord, which tfds.data_source cannot"):
    ingest_tfds("coco/2017", str(tmp_path / "e"), data_dir=str(tfrecord), progress=False)
  with pytest.raises(RecordError, match="no prepared tfds dataset") as caught:
    ingest_tfds("coco/2017", str(tmp_path / "d"), data_dir=str(tmp_path), progress=False)
  _one_line(caught.value, str(tmp_path / "coco"))


def test_fourm_ingest_reads_each_layout_and_wants_one_source(coco, ade, tmp_path, capsys):
  from fourm import cli
  assert cli.main(["ingest", "--coco", str(coco), "--out", str(tmp_path / "c"), "--quiet"]) == 0
  assert "det" in capsys.readouterr().out
  assert cli.main(["ingest", "--ade20k", str(ade), "--out", str(tmp_path / "a"),
                   "--quiet"]) == 0
  assert "semseg" in capsys.readouterr().out
  assert cli.main(["ingest", "--coco", str(coco), "--ade20k", str(ade), "--out",
                   str(tmp_path / "both")]) == 2
  assert "exactly one of --images" in capsys.readouterr().err
