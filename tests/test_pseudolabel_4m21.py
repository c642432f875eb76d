"""The 4M-21 modalities a library computes (canny_edge, color_palette, metadata): their
labelers on real photographs and on drawn images with known answers, the job that gives
metadata the record's other modalities, `fourm pseudolabel` end to end, and the
synthetic world's exact versions of the three. No network, no torch."""

import importlib.util
import json
import math
import os
import shutil

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("skimage")

from fourm import cli, modalities  # noqa: E402
from fourm.data import derived, ingest, measures, records, synthetic, world  # noqa: E402
from pseudolabel import TASK_MODALITIES, canny, job, palette  # noqa: E402
from pseudolabel import metadata as metadata_labeler  # noqa: E402
from tests.helpers import write_dataset  # noqa: E402
from tokenizers_vq import sequences  # noqa: E402

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "camera.png")  # camera: greyscale
TASKS = ("canny_edge", "color_palette", "metadata")
KEY = {name: i for i, name in enumerate(modalities.METADATA_KEYS)}


def _photo_dir() -> str:
  return os.path.join(importlib.util.find_spec("skimage").submodule_search_locations[0], "data")


@pytest.fixture(scope="module")
def images():
  out = []
  for name in PHOTOS:
    with open(os.path.join(_photo_dir(), name), "rb") as f:
      out.append(records.decode_image(f.read()))
  return out


@pytest.fixture(scope="module")
def codecs():
  return sequences.codecs_for(["color_palette", "metadata"])


def _round_trip(codecs, name, value):
  """The value through its codec: token ids and back."""
  ids = codecs[name](value)
  assert ids.dtype == np.int32 and len(ids) > 0
  return codecs[name].decode(ids)


def test_every_registered_task_is_wired_into_the_job():
  assert set(job.TASK_ORDER) == set(TASK_MODALITIES)
  assert {TASK_MODALITIES[t] for t in TASKS} == {"canny_edge", "color_palette", "metadata"}
  assert job.TASK_ORDER[-1] == "metadata"  # it reads what the tasks before it made


# ----------------------------------------------------------------------------- canny
def test_canny_on_photos(images):
  edges = canny.CannyLabeler.tiny()(images)
  for image, edge in zip(images, edges):
    records.validate_field("canny_edge", edge, image_hw=image.shape[:2])
    assert edge.dtype == np.uint8 and set(np.unique(edge)) <= {0, 1}
    assert 0.01 < edge.mean() < 0.25  # thin lines, not nothing and not texture everywhere
    assert not edge[0].any() and not edge[:, 0].any()  # the photo's frame is no edge


@pytest.mark.parametrize("step,found", [(60, True), (20, False)])
def test_canny_finds_the_edge_of_a_drawn_square_where_it_is(step, found):
  image = np.full((64, 80, 3), 100, np.uint8)
  image[20:40, 30:60] += np.uint8(step)  # rows 20..39, columns 30..59
  edges = canny.CannyLabeler()([image])[0].astype(bool)
  if not found:  # a step under the thresholds (25 / 50 grey levels) is no edge
    assert not edges.any()
    return
  square = np.zeros(edges.shape, bool)
  square[20:40, 30:60] = True
  border = square ^ ndimage.binary_erosion(square)
  outside = ndimage.binary_dilation(square) ^ square
  # Every edge pixel is on the square's outline, on its inner or outer side...
  assert (edges <= (border | outside)).all()
  # ...and each side is found along its whole length, corners aside.
  for rows, cols in ((slice(19, 21), slice(32, 58)), (slice(39, 41), slice(32, 58)),
                     (slice(22, 38), slice(29, 31)), (slice(22, 38), slice(59, 61))):
    along = edges[rows, cols].any(axis=0 if rows.stop - rows.start == 2 else 1)
    assert along.all()


# ----------------------------------------------------------------------------- palette
def test_palette_of_two_flat_colors_is_those_colors_most_pixels_first(codecs):
  red, blue = np.array([200, 30, 40], np.uint8), np.array([20, 60, 220], np.uint8)
  image = np.empty((40, 50, 3), np.uint8)
  image[:, :35], image[:, 35:] = red, blue  # red covers 70 %
  for k in range(2, modalities.COLOR_PALETTE_MAX + 1):
    colors = palette.PaletteLabeler(num_colors=k)([image])[0]
    np.testing.assert_array_equal(colors, [red, blue])
    np.testing.assert_array_equal(_round_trip(codecs, "color_palette", colors), colors)
  one = palette.PaletteLabeler(num_colors=1)([image])[0]
  np.testing.assert_array_equal(one, [np.rint(0.7 * red + 0.3 * blue)])


def _quantization_error(image, colors):
  pixels = image.reshape(-1, 1, 3).astype(np.float64)
  return ((pixels - colors[None].astype(np.float64)) ** 2).sum(-1).min(1).mean()


def test_palette_on_photos(images, codecs):
  labeler = palette.PaletteLabeler()
  palettes = labeler(images)
  for image, colors in zip(images, palettes):
    records.validate_field("color_palette", colors)
    assert colors.dtype == np.uint8 and colors.ndim == 2 and colors.shape[1] == 3
    assert 1 <= len(colors) <= modalities.COLOR_PALETTE_MAX
    np.testing.assert_array_equal(_round_trip(codecs, "color_palette", colors), colors)
  # Deterministic: the size and the colors are a function of the image.
  for a, b in zip(palettes, labeler(images)):
    np.testing.assert_array_equal(a, b)
  # A real k-means: more colors describe the photo better, and the first is the largest.
  astronaut = images[0]
  errors = [_quantization_error(astronaut, palette.PaletteLabeler(num_colors=k)([astronaut])[0])
            for k in (1, 3, 7)]
  assert errors[0] > errors[1] > errors[2]
  colors = palette.PaletteLabeler(num_colors=4)([astronaut])[0]
  nearest = ((astronaut.reshape(-1, 1, 3).astype(float) - colors[None]) ** 2).sum(-1).argmin(1)
  counts = np.bincount(nearest, minlength=4)
  assert counts[0] == counts.max()


def test_palette_sizes_cover_one_to_seven():
  rng = np.random.default_rng(0)
  sizes = {len(palette.PaletteLabeler()([rng.integers(0, 256, (8, 8, 3), np.uint8)])[0])
           for _ in range(60)}
  assert sizes == set(range(1, modalities.COLOR_PALETTE_MAX + 1))


# ---------------------------------------------------------------------------- metadata
def test_image_statistics_of_known_images():
  white = measures.image_statistics(np.full((10, 20, 3), 255, np.uint8))
  assert white["brightness"] == 255 and white["contrast"] == 0 and white["entropy"] == 0
  assert white["saturation"] == 0 and white["colorfulness"] == 0
  assert (white["original_width"], white["original_height"]) == (20, 10)
  halves = np.zeros((10, 20, 3), np.uint8)
  halves[:, 10:] = 255
  stats = measures.image_statistics(halves)
  assert stats["brightness"] == pytest.approx(127.5) and stats["contrast"] == pytest.approx(127.5)
  assert stats["entropy"] == pytest.approx(1.0)  # two equally likely grey levels: one bit
  red = measures.image_statistics(np.full((4, 4, 3), (255, 0, 0), np.uint8))
  assert red["saturation"] == 255
  assert red["colorfulness"] == pytest.approx(0.3 * math.hypot(255, 127.5))
  assert measures.caption_counts("A red cube. A blue ball!  Three") == {
      "caption_n_chars": 31, "caption_n_words": 7, "caption_n_sentences": 3}


def test_brightness_of_a_white_image_is_the_top_bin(codecs):
  vector = metadata_labeler.MetadataLabeler()([np.full((32, 32, 3), 255, np.uint8)])[0]
  records.validate_field("metadata", vector)
  decoded = _round_trip(codecs, "metadata", vector)
  assert decoded["brightness"] == 255.0  # the top bin reads back as the top of the range
  assert vector[KEY["brightness"]] == 255 and decoded["original_width"] == 32
  # Bare images give the image's kinds only; the rest is absent.
  assert set(decoded) == {"original_width", "original_height", "brightness", "contrast",
                          "saturation", "colorfulness", "entropy"}


def _record():
  """A 10 x 20 record whose counts and shares are known."""
  semseg = np.zeros((10, 20), np.uint8)   # class 0: sky
  semseg[5:, :] = 1                       # class 1: pavement, the lower half
  semseg[5:, :4] = 2                      # class 2: person, 20 pixels
  depth = np.ones((10, 20), np.float32)
  depth[:, 10:] = 3.0                     # one vertical occluding edge: 2 of 20 columns
  normal = np.zeros((10, 20, 3), np.float32)
  normal[..., 2] = -1.0
  det = {"boxes": np.array([[0, .5, .2, 1], [.1, .5, .2, 1], [.5, .5, .9, .9]], np.float32),
         "classes": ["person", "person", "car"]}
  return {"rgb": np.full((10, 20, 3), 90, np.uint8), "semseg": semseg, "depth": depth,
          "normal": normal, "det": det, "caption": "Two people cross a road. A car waits."}


CLASSES = ["sky-other-merged", "pavement-merged", "person"]  # COCO panoptic's names


def test_metadata_reads_the_records_other_modalities(codecs):
  labeler = metadata_labeler.MetadataLabeler(semseg_classes=CLASSES)
  vector = labeler.label_records([_record()])[0]
  records.validate_field("metadata", vector)
  expected = {"n_coco_instances": 3, "coco_instance_diversity": 2, "n_humans": 2,
              "semantic_diversity": 3, "objectness": 20 / 200, "walkability": 80 / 200,
              "geometric_complexity": 0.0, "occlusion_score": 20 / 200,
              "caption_n_words": 8, "caption_n_sentences": 2, "brightness": 90.0,
              "contrast": 0.0}
  for kind, value in expected.items():
    assert vector[KEY[kind]] == pytest.approx(value, abs=1e-6), kind
  for kind in ("n_sam_instances", "watermark_score", "aesthetic_score"):
    assert np.isnan(vector[KEY[kind]])  # nothing here can measure these
  decoded = _round_trip(codecs, "metadata", vector)
  assert decoded["n_coco_instances"] == 3 and decoded["semantic_diversity"] == 3
  assert "aesthetic_score" not in decoded

  # Human poses, where the record has them, count the people.
  with_poses = dict(_record(), human_poses=np.zeros((1, 34), np.float32))
  assert labeler.label_records([with_poses])[0][KEY["n_humans"]] == 1
  # Class names it cannot read (a tiny random network's) leave the shares absent.
  unnamed = metadata_labeler.MetadataLabeler(semseg_classes=["coco_class_0", "coco_class_1",
                                                             "coco_class_2"])
  vector = unnamed.label_records([_record()])[0]
  assert np.isnan(vector[KEY["walkability"]]) and np.isnan(vector[KEY["objectness"]])
  assert vector[KEY["semantic_diversity"]] == 3


class _FixedDetector:
  """Stands in for a detection network: the same two boxes for every image."""
  name = "fixed"

  def __call__(self, images):
    return [{"boxes": np.array([[0, 0, .5, .5], [.5, .5, 1, 1]], np.float32),
             "classes": ["dog", "person"]} for _ in images]


def test_metadata_sees_what_the_tasks_before_it_made_in_the_same_run():
  labelers = {"det": _FixedDetector(), "metadata": metadata_labeler.MetadataLabeler()}
  out = job.label_batch(labelers, [{"rgb": np.zeros((8, 8, 3), np.uint8), "key": "a"}])[0]
  assert out["metadata"][KEY["n_coco_instances"]] == 2
  assert out["metadata"][KEY["n_humans"]] == 1 and len(out["det"]["classes"]) == 2


# ------------------------------------------------------------------- fourm pseudolabel
@pytest.fixture(scope="module")
def photo_data(tmp_path_factory):
  """Three photos ingested, two of them with captions."""
  root = tmp_path_factory.mktemp("photos")
  folder = root / "images"
  folder.mkdir()
  for name in PHOTOS[:3]:
    shutil.copy(os.path.join(_photo_dir(), name), folder / name)
  captions = root / "captions.json"
  captions.write_text(json.dumps({"astronaut.png": "An astronaut. A flag behind her.",
                                  "coffee.png": "A cup of coffee on a saucer."}))
  out = str(root / "ingested")
  ingest.ingest(str(folder), out, captions=str(captions), records_per_shard=2,
                progress=False, log=lambda _: None)
  return out


def test_cli_writes_the_three_modalities(photo_data, tmp_path, capsys, codecs):
  out = str(tmp_path / "labels")
  assert cli.main(["pseudolabel", "--data", photo_data, "--out", out, "--tiny", "--tasks",
                   ",".join(TASKS), "--batch-size", "2", "--quiet"]) == 0
  printed = capsys.readouterr().out
  assert "0 of 3 images failed" in printed and "meaningless" not in printed
  info = records.DatasetInfo.load(out)
  assert set(info.modalities) == set(TASKS)
  assert "canny" in info.metadata["models"]["canny_edge"].lower()
  source = records.RecordSource([photo_data, out])
  for i in range(len(source)):
    sample = source[i]  # validated on read
    records.validate_sample(sample)
    assert sample["canny_edge"].shape == sample["rgb"].shape[:2]
    np.testing.assert_array_equal(_round_trip(codecs, "color_palette", sample["color_palette"]),
                                  sample["color_palette"])
    meta = _round_trip(codecs, "metadata", sample["metadata"])
    assert meta["original_width"] == sample["rgb"].shape[1] // 32 * 32
    if "caption" in sample:
      assert meta["caption_n_words"] == len(sample["caption"].split())
    else:
      assert "caption_n_words" not in meta  # no caption: absent, never zero


def test_metadata_reads_a_store_beside_the_data(photo_data, tmp_path):
  """An earlier run's boxes (here written by hand) counted by a later metadata run."""
  source = records.RecordSource(photo_data)
  counts = [0, 3, 1]
  boxes = str(tmp_path / "boxes")
  write_dataset(boxes, {"train": [
      {"det": {"boxes": np.tile(np.array([[0, 0, 1, 1]], np.float32), (n, 1)),
               "classes": ["person"] * n}} for n in counts]})
  out = str(tmp_path / "meta")
  assert cli.main(["pseudolabel", "--data", photo_data, "--beside", boxes, "--out", out,
                   "--tasks", "metadata", "--quiet"]) == 0
  labels = records.RecordSource([photo_data, out])
  assert len(labels) == len(source) == 3
  for i, n in enumerate(counts):
    vector = labels[i]["metadata"]
    assert vector[KEY["n_coco_instances"]] == n and vector[KEY["n_humans"]] == n
  with open(os.path.join(out, derived.JOB_FILE)) as f:
    assert json.load(f)["beside"] == [os.path.abspath(boxes)]


def test_unknown_task_names_the_new_tasks(photo_data, tmp_path, capsys):
  assert cli.main(["pseudolabel", "--data", photo_data, "--out", str(tmp_path / "x"),
                   "--tasks", "canny"]) == 2
  assert "canny_edge" in capsys.readouterr().err


# ------------------------------------------------------------------- the synthetic world
def test_world_extras_change_nothing_else():
  plain = synthetic.make_sample(0, "train", 4)
  full = synthetic.make_sample(0, "train", 4, extras=synthetic.EXTRA_MODALITIES)
  assert set(full) - set(plain) == set(synthetic.EXTRA_MODALITIES)
  assert records.encode_sample({k: full[k] for k in plain}) == records.encode_sample(plain)
  records.validate_sample(full)
  with pytest.raises(ValueError, match="sam_edge"):
    synthetic.make_sample(0, "train", 4, extras=("sam_edge",))


def _scene(index, resolution=64):
  scene = synthetic.sample_scene(synthetic.scene_rng(0, "train", index))
  return scene, synthetic.render(scene, resolution)


def test_world_palette_is_the_scenes_paint_by_pixel_share(codecs):
  sizes = set()
  for index in range(24):
    scene, maps = _scene(index)
    sample = synthetic.make_sample(0, "train", index, extras=("color_palette",))
    colors = sample["color_palette"]
    sizes.add(len(colors))
    np.testing.assert_array_equal(_round_trip(codecs, "color_palette", colors), colors)
    # Every surface's pixels, by paint: backdrop, floor, each visible object's color name.
    surface = synthetic.surface_index(maps)
    paint_of = ["backdrop", "floor"] + [o.color for o in scene.objects]
    albedo_of = {"backdrop": scene.backdrop_color, "floor": scene.floor_color,
                 **{o.color: synthetic.COLORS[o.color] for o in scene.objects}}
    share = {}
    for k, count in enumerate(np.bincount(surface.ravel(), minlength=len(paint_of))):
      share[paint_of[k]] = share.get(paint_of[k], 0) + count
    ranked = sorted((n for n in share if share[n]), key=lambda n: -share[n])
    expected = [synthetic.painted_color(albedo_of[n]) for n in ranked[:len(colors)]]
    np.testing.assert_array_equal(colors, expected)
    assert len(colors) == len(ranked) or len(colors) < modalities.COLOR_PALETTE_MAX
  assert len(sizes) >= 4  # the size is drawn per sample, as 4M-21's 1..7
  # `painted_color` is the render's own color mapping: the backdrop's pixels are its paint
  # times their shading, to the bit.
  scene, maps = _scene(0)
  backdrop = synthetic.surface_index(maps) == 0
  lit = scene.backdrop_color[None] * maps["shading"][backdrop][:, None]
  np.testing.assert_array_equal(maps["rgb"][backdrop], synthetic.painted_color(lit))


def test_world_metadata_is_exact(codecs):
  for index in range(6):
    sample = synthetic.make_sample(0, "train", index, extras=("metadata",))
    vector, semseg = sample["metadata"], sample["semseg"]
    floor, objects = synthetic.CLASSES.index("floor"), semseg >= 2
    exact = {"n_coco_instances": len(np.unique(sample["instance"])) - 1,
             "coco_instance_diversity": len(set(sample["det"]["classes"])),
             "n_humans": 0, "watermark_score": 0, "original_width": 64,
             "walkability": (semseg == floor).mean(), "objectness": objects.mean(),
             "semantic_diversity": len(np.unique(semseg)),
             "brightness": measures.luma(sample["rgb"]).mean(),
             "caption_n_chars": len(sample["caption"])}
    for kind, value in exact.items():
      assert vector[KEY[kind]] == pytest.approx(value, rel=1e-6), kind
    assert 0 < vector[KEY["occlusion_score"]] < 0.25
    assert 0 < vector[KEY["geometric_complexity"]] < 0.75
    assert np.isnan(vector[KEY["aesthetic_score"]])
    assert "aesthetic_score" not in _round_trip(codecs, "metadata", vector)
  # The metadata labeler, given the world's exact modalities and class names, agrees.
  labeler = metadata_labeler.MetadataLabeler(semseg_classes=synthetic.CLASSES,
                                             thing_classes=synthetic.OBJECT_CLASSES)
  sample = synthetic.make_sample(0, "train", 1, extras=("metadata",))
  measured = labeler.label_records([sample])[0]
  for kind in ("brightness", "walkability", "objectness", "semantic_diversity",
               "n_coco_instances", "geometric_complexity", "occlusion_score"):
    assert measured[KEY[kind]] == pytest.approx(sample["metadata"][KEY[kind]]), kind


def test_world_edges_are_the_rendered_steps_and_canny_finds_them():
  hits = found = marked = canny_marked = object_side = 0
  for index in range(8):
    _, maps = _scene(index, 128)
    edges = synthetic.image_edges(maps).astype(bool)
    # Every edge pixel borders another surface, tile or shadow, or a crease.
    region = (synthetic.surface_index(maps) * 3 + maps["floor_tile"] + 1) * 2 + \
        maps["cast_shadow"]
    differs = np.zeros(edges.shape, bool)
    for axis in (0, 1):
      for shift in (1, -1):
        other = np.roll(region, shift, axis)
        turned = (np.roll(maps["normal"], shift, axis) * maps["normal"]).sum(-1) < \
            math.cos(math.radians(synthetic.CREASE_DEG))
        inside = np.ones(edges.shape, bool)
        index_ = [slice(None)] * 2
        index_[axis] = 0 if shift == 1 else -1
        inside[tuple(index_)] = False  # np.roll wraps around: not a neighbour
        differs |= inside & ((other != region) | turned)
    assert (edges <= differs).all()
    # An outline is drawn on the occluding side: objects, never the backdrop behind them.
    surface = synthetic.surface_index(maps)
    backdrop_by_object = (surface == 0) & ndimage.binary_dilation(surface >= 2)
    object_by_backdrop = (surface >= 2) & ndimage.binary_dilation(surface == 0)
    assert not edges[backdrop_by_object].any()
    object_side += edges[object_by_backdrop].sum()
    # Canny on the world's rgb finds the same lines, within a pixel.
    found_edges = canny.canny_edges(maps["rgb"]).astype(bool)
    near = ndimage.binary_dilation(edges, np.ones((3, 3)))
    near_found = ndimage.binary_dilation(found_edges, np.ones((3, 3)))
    hits += (found_edges & near).sum()
    canny_marked += found_edges.sum()
    found += (edges & near_found).sum()
    marked += edges.sum()
  assert hits / canny_marked > 0.85 and found / marked > 0.85 and object_side > 0


def test_synth_cli_writes_the_extras_and_show_draws_them(tmp_path, capsys):
  out = str(tmp_path / "world")
  assert cli.main(["synth", "--out", out, "--num", "4", "--val-fraction", "0", "--workers",
                   "1", "--extras", ",".join(synthetic.EXTRA_MODALITIES), "--quiet"]) == 0
  info = records.DatasetInfo.load(out)
  assert set(synthetic.EXTRA_MODALITIES) <= set(info.modalities)
  assert info.metadata["thing_classes"] == list(synthetic.OBJECT_CLASSES)
  sample = records.RecordSource(out)[2]
  expected = synthetic.make_sample(0, "train", 2, extras=synthetic.EXTRA_MODALITIES)
  for name in synthetic.EXTRA_MODALITIES:
    np.testing.assert_array_equal(sample[name], expected[name])
  png = str(tmp_path / "grid.png")
  assert cli.main(["show", out, "--num", "2", "--out", png]) == 0
  assert os.path.getsize(png) > 0
  assert cli.main(["synth", "--out", str(tmp_path / "bad"), "--num", "2",
                   "--extras", "dinov2"]) == 2
  assert "dinov2" in capsys.readouterr().err


def test_world_metadata_labeled_by_the_job_uses_the_worlds_class_names(tmp_path):
  data = str(tmp_path / "world")
  world.write_world(data, 3, resolution=32, val_fraction=0, workers=1, progress=False,
                    log=lambda _: None)
  out = str(tmp_path / "meta")
  job.pseudolabel_dataset(data, out, job.build_labelers(["metadata"]), progress=False,
                          log=lambda _: None)
  labels = records.RecordSource([data, out])
  for i in range(3):
    exact = synthetic.make_sample(0, "train", i, 32, extras=("metadata",))["metadata"]
    for kind in ("objectness", "walkability", "n_coco_instances", "caption_n_words"):
      assert labels[i]["metadata"][KEY[kind]] == pytest.approx(exact[KEY[kind]]), kind
