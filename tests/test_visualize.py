"""Tests for fourm.data.visualize: color maps, boxes, tiles and the grid layout."""

import numpy as np
import pytest
from PIL import Image

from fourm import modalities
from fourm.data import colorize, sequence_tiles, tiles, visualize

SIZE = 16
CLASS_NAMES = ("background", "floor", "wall")


def _luminance(rgb: np.ndarray) -> np.ndarray:
  rgb = np.asarray(rgb, dtype=np.float64)
  return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _sample(**overrides) -> dict:
  """A tiny sample with every known modality, built so each has visible structure."""
  rgb = np.full((SIZE, SIZE, 3), 40, np.uint8)
  rgb[4:12, 4:12] = (220, 30, 30)  # a red square
  rows = np.arange(SIZE, dtype=np.float32)[:, None]
  depth = np.broadcast_to(1.0 + rows, (SIZE, SIZE)).astype(np.float32)
  normal = np.zeros((SIZE, SIZE, 3), np.float32)
  normal[..., 2] = -1.0  # a plane facing the camera
  semseg = np.zeros((SIZE, SIZE), np.uint8)
  semseg[SIZE // 2:] = 1
  semseg[4:8, 4:8] = 2
  instance = np.zeros((SIZE, SIZE), np.uint8)
  instance[4:12, 4:12] = 1
  sample = {
      "rgb": rgb,
      "depth": depth,
      "normal": normal,
      "semseg": semseg,
      "instance": instance,
      "det": {"boxes": np.array([[0.25, 0.25, 0.75, 0.75], [0.0, 0.5, 0.5, 1.0]], np.float32),
              "classes": ["cube", "ball"]},
      "clip": np.random.default_rng(0).normal(size=(4, 4, 8)).astype(np.float32),
      "caption": "a red cube on a floor",
  }
  sample.update(overrides)
  return sample


def _tile_box(tile: int, grid: Image.Image, column: int, num_columns: int,
              row_top: int) -> tuple[int, int, int, int]:
  """Where tile `column` of a row starting at `row_top` sits, for grids without names."""
  left = visualize.PAD + column * (tile + visualize.GAP)
  assert grid.width == 2 * visualize.PAD + num_columns * tile + (num_columns - 1) * visualize.GAP
  return left, row_top, left + tile, row_top + tile


# --------------------------------------------------------------------------------------
# Color maps.


def test_normal_facing_camera_is_olive():
  normal = np.zeros((2, 2, 3), np.float32)
  normal[..., 2] = -1.0
  rgb = colorize.normal_to_rgb(normal)
  assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
  assert set(rgb[..., 0].ravel()) <= {127, 128}
  assert set(rgb[..., 1].ravel()) <= {127, 128}
  assert (rgb[..., 2] == 0).all()


def test_normal_axes_follow_the_camera_frame():
  right_down = np.array([[[1.0, 1.0, 0.0]]], np.float32)
  assert tuple(colorize.normal_to_rgb(right_down)[0, 0]) == (255, 255, 128)
  assert tuple(colorize.normal_to_rgb(np.full((1, 1, 3), np.nan))[0, 0]) == (0, 0, 0)


def test_depth_nearer_is_brighter_along_a_ramp():
  depth = np.linspace(0.5, 20.0, 64, dtype=np.float32)[None, :].repeat(4, axis=0)
  rgb = colorize.depth_to_rgb(depth)
  assert rgb.dtype == np.uint8 and rgb.shape == (4, 64, 3)
  brightness = _luminance(rgb[0])
  # Depth grows left to right, so brightness must never rise and must fall overall.
  assert np.all(np.diff(brightness) <= 1e-9)
  assert brightness[0] - brightness[-1] > 100
  assert not np.array_equal(rgb[0, 0], rgb[0, -1])


def test_depth_invalid_pixels_are_black_and_range_is_settable():
  depth = np.array([[1.0, 2.0, 0.0, np.inf]], np.float32)
  rgb = colorize.depth_to_rgb(depth)
  assert (rgb[0, 2] == 0).all() and (rgb[0, 3] == 0).all()
  clipped = colorize.depth_to_rgb(np.array([[1.0, 2.0]], np.float32), vmin=0.5, vmax=100.0)
  # Both lie well inside [0.5 m, 100 m], so neither reaches the bright end of the map.
  assert _luminance(clipped).max() < _luminance(rgb[0, 0])


def test_palette_is_distinct_deterministic_and_prefix_stable():
  colors = colorize.palette(256)
  assert colors.shape == (256, 3) and colors.dtype == np.uint8
  assert len({tuple(c) for c in colors}) == 256
  assert _luminance(colors[0]) < 30  # background is black-ish
  assert (colors[1:].max(axis=1) > 120).all()  # nothing else looks like background
  # The first classes, the ones usually on screen, must be far apart, not just unequal.
  first = colors[:8].astype(np.float64)
  distances = np.linalg.norm(first[:, None] - first[None], axis=-1)
  assert distances[~np.eye(8, dtype=bool)].min() > 60
  np.testing.assert_array_equal(colorize.palette(256), colors)
  np.testing.assert_array_equal(colorize.palette(5), colors[:5])


def test_semseg_to_rgb_uses_the_palette():
  semseg = np.array([[0, 1], [2, 2]], np.uint8)
  rgb = colorize.semseg_to_rgb(semseg, num_classes=3)
  colors = colorize.palette(3)
  np.testing.assert_array_equal(rgb, colors[semseg])


def test_features_to_rgb_separates_two_clusters():
  features = np.zeros((4, 4, 16), np.float32)
  features[:, :2, 0] = 5.0  # left half differs from the right half along one direction
  rgb = colorize.features_to_rgb(features, 32)
  assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
  assert not np.array_equal(rgb[0, 0], rgb[0, -1])
  # NEAREST upscaling: every patch is a flat 8x8 block.
  assert (rgb[:8, :8] == rgb[0, 0]).all()


# --------------------------------------------------------------------------------------
# Boxes.


def test_draw_boxes_changes_exactly_the_border():
  image = np.full((64, 64, 3), 100, np.uint8)
  boxes = np.array([[0.25, 0.5, 0.75, 0.875]], np.float32)  # pixels x 16..47, y 32..55
  drawn = visualize.draw_boxes(image, boxes, ["cube"], line_width=1)
  color = np.array(colorize.class_color("cube"), np.uint8)
  x0, y0, x1, y1 = 16, 32, 47, 55
  border = np.zeros((64, 64), bool)
  border[y0, x0:x1 + 1] = border[y1, x0:x1 + 1] = True
  border[y0:y1 + 1, x0] = border[y0:y1 + 1, x1] = True
  assert (drawn[border] == color).all()
  # The label sits above the box, so inside the box and below/right of it nothing moves.
  np.testing.assert_array_equal(drawn[y0 + 1:y1, x0 + 1:x1], image[y0 + 1:y1, x0 + 1:x1])
  np.testing.assert_array_equal(drawn[y1 + 1:], image[y1 + 1:])
  np.testing.assert_array_equal(drawn[:, x1 + 1:], image[:, x1 + 1:])
  assert (drawn[y0 - 4, x0] == color).all()  # the label's background
  assert (image == 100).all()  # the input is not modified


def test_draw_boxes_skips_invalid_rows_and_accepts_numpy_classes():
  image = np.zeros((128, 128, 3), np.uint8)
  boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], np.float32)
  classes = np.array(["cube", "kept"], dtype=object)
  drawn = visualize.draw_boxes(image, boxes, classes, valid=np.array([False, True]),
                               line_width=1)
  # The kept box and its label lie right of x = 64, the skipped one left of it.
  assert (drawn[:, :64] == 0).all()
  assert (drawn[127, 64:] == colorize.class_color("kept")).all()
  # All-zero padded rows are empty boxes and draw nothing either.
  nothing = visualize.draw_boxes(image, np.zeros((3, 4)), np.array(["", "", ""]))
  np.testing.assert_array_equal(nothing, image)


def test_class_color_is_stable():
  assert colorize.class_color("chair") == colorize.class_color("chair")
  assert colorize.class_color("chair") != tuple(colorize.palette(1)[0])


# --------------------------------------------------------------------------------------
# Tiles and grid.


def test_sample_tiles_order_and_size():
  sample = _sample(zeta=np.arange(64, dtype=np.float32).reshape(8, 8),
                   alpha=np.ones((8, 8, 5), np.float32), notes="text is not a tile",
                   vector=np.ones(7), __name__="train/000001")
  tiles = visualize.sample_tiles(sample, 48, CLASS_NAMES)
  assert [name for name, _ in tiles] == ["rgb", "det", "depth", "normal", "semseg",
                                         "instance", "clip", "alpha", "zeta"]
  for _, image in tiles:
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8


def test_label_maps_stay_exact_when_upscaled():
  tiles = dict(visualize.sample_tiles(_sample(), 48))
  allowed = {tuple(c) for c in colorize.palette(3)}
  assert {tuple(c) for c in tiles["semseg"].reshape(-1, 3)} <= allowed


def test_det_without_rgb_uses_a_grey_canvas():
  sample = _sample()
  del sample["rgb"]
  det = dict(visualize.sample_tiles(sample, 64))["det"]
  assert (det[40, 40] == visualize.CANVAS_COLOR).all()
  assert (det[16, 16:48] == colorize.class_color("cube")).all()  # the top edge


def test_unknown_array_is_shown_in_grey():
  ramp = np.arange(16, dtype=np.float32).reshape(4, 4)
  tiles = dict(visualize.sample_tiles({"mystery": ramp}, 32))
  image = tiles["mystery"]
  assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
  assert image.min() == 0 and image.max() == 255


def test_grid_size_follows_rows_and_columns():
  def size(samples, tile):
    return visualize.make_grid(samples, tile=tile).size

  no_text = _sample()
  del no_text["caption"]
  width, height = size([no_text, no_text], 100)
  num_columns = 7
  assert width == 2 * visualize.PAD + num_columns * 100 + (num_columns - 1) * visualize.GAP
  # One more row adds a tile and a row gap; a larger tile grows every row and column.
  assert size([no_text] * 3, 100) == (width, height + 100 + visualize.ROW_GAP)
  assert size([no_text, no_text], 120) == (width + num_columns * 20, height + 2 * 20)
  # One more modality adds a column.
  extra = dict(no_text, extra=np.zeros((4, 4), np.float32))
  assert size([extra, no_text], 100) == (width + 100 + visualize.GAP, height)
  # A caption adds lines under its row, never width.
  with_caption = size([_sample(), no_text], 100)
  assert with_caption[0] == width and with_caption[1] > height


def test_missing_modality_gets_a_blank_tile():
  tile = 64
  full = _sample(caption=None)
  missing = _sample(caption=None)
  del missing["depth"]
  grid = visualize.make_grid([full, missing], tile=tile)
  pixels = np.asarray(grid)
  # Both rows have the same height: tile + ROW_GAP apart. Depth is column 2.
  header = visualize.line_height(visualize.font(visualize.TEXT_SIZE))
  first_top = visualize.PAD + header
  second_top = first_top + tile + visualize.ROW_GAP
  left, _, right, _ = _tile_box(tile, grid, 2, 7, first_top)
  present = pixels[first_top:first_top + tile, left:right]
  blank = pixels[second_top:second_top + tile, left:right]
  assert (blank == visualize.BLANK_COLOR).all(axis=-1).mean() > 0.9
  assert (present == visualize.BLANK_COLOR).all(axis=-1).mean() < 0.1
  # The tile really is the depth map of the first sample, upscaled.
  expected = dict(visualize.sample_tiles(full, tile))["depth"]
  np.testing.assert_array_equal(present, expected)


def test_grid_with_names_title_caption_and_legend():
  samples = [_sample(__name__="train/000000"), _sample(__name__="train/000001",
                                                       caption="x " * 400)]
  grid = visualize.make_grid(samples, tile=48, class_names=CLASS_NAMES, title="a title")
  plain = visualize.make_grid([{k: v for k, v in s.items() if k != "__name__"}
                               for s in samples], tile=48)
  assert grid.mode == "RGB"
  assert grid.width > plain.width  # room for the names
  assert grid.height > plain.height  # title and legend
  assert np.asarray(grid)[0, 0].tolist() == [255, 255, 255]


def test_empty_and_text_only_samples_do_not_crash():
  assert visualize.make_grid([]).size[0] > 0
  grid = visualize.make_grid([{"caption": "only words", "__name__": "a"}], tile=32)
  assert grid.height > 32


def test_save_grid_writes_a_png(tmp_path):
  path = tmp_path / "nested" / "dir" / "grid.png"
  written = visualize.save_grid([_sample(), _sample(rgb=None)], path, tile=40,
                                class_names=CLASS_NAMES, title="t")
  assert written == str(path)
  with Image.open(written) as image:
    assert image.format == "PNG"
    assert image.mode == "RGB"
    assert image.size == visualize.make_grid([_sample(), _sample(rgb=None)], tile=40,
                                             class_names=CLASS_NAMES, title="t").size


@pytest.mark.parametrize("bad", [np.zeros((4,)), np.zeros((2, 2, 2, 2))])
def test_color_maps_reject_wrong_shapes(bad):
  with pytest.raises(ValueError):
    colorize.depth_to_rgb(bad)
  with pytest.raises(ValueError):
    colorize.normal_to_rgb(bad)


# --------------------------------------------------------------------------------------
# 4M-21 sequences: color palette, human poses, SAM instances, metadata.

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _grey_rgb(size: int, level: int = 100) -> np.ndarray:
  return np.full((size, size, 3), level, np.uint8)


def _pose_rows(*boxes) -> np.ndarray:
  rows = np.zeros((len(boxes), 34), np.float32)
  rows[:, :4] = np.asarray(boxes, np.float32).reshape(-1, 4)
  return rows


def _tile(key: str, value, tile: int, **sample) -> np.ndarray:
  return dict(visualize.sample_tiles({key: value, **sample}, tile))[key]


def test_sequence_layouts_match_the_codecs():
  from tokenizers_vq import human_poses, metadata, sam_instance
  assert sequence_tiles.METADATA_KEYS == metadata.METADATA_KEYS
  assert sequence_tiles.POSE_WIDTH == human_poses.WIDTH
  assert sequence_tiles.POSE_BOX == human_poses.COLUMNS["box"]
  assert sequence_tiles.SAM_WIDTH == sam_instance.WIDTH
  for raw in (modalities.COLOR_PALETTE, modalities.HUMAN_POSES, modalities.SAM_INSTANCE,
              modalities.METADATA):
    assert tiles.DRAWERS[raw.values] is sequence_tiles.SEQUENCE_DRAWERS[raw.values]


def test_palette_tile_is_bands_of_exactly_its_colors():
  tile = 96
  image = _tile("color_palette", np.array([RED, BLUE], np.uint8), tile)
  assert image.shape == (tile, tile, 3) and image.dtype == np.uint8
  top, bottom = image[:tile // 2], image[tile // 2:]
  # Horizontal bands, the first color on top; the hex code sits in the middle of a band,
  # so its ends and most of it are the pure color, and no color leaks into the other.
  assert (top[:, :4] == RED).all() and (top[:, -4:] == RED).all()
  assert (bottom[:, :4] == BLUE).all() and (bottom[:, -4:] == BLUE).all()
  assert (top == RED).all(axis=-1).mean() > 0.8
  assert (bottom == BLUE).all(axis=-1).mean() > 0.8
  assert not (top == BLUE).all(axis=-1).any() and not (bottom == RED).all(axis=-1).any()
  assert not (top == RED).all()  # the hex code is written
  # Seven colors: seven bands, each showing its color.
  seven = colorize.palette(8)[1:]
  image = _tile("color_palette", seven, 70)
  for k, color in enumerate(seven):
    assert (image[k * 10:(k + 1) * 10, 0] == color).all()


def test_empty_palette_says_so():
  image = _tile("color_palette", np.zeros((0, 3), np.uint8), 64)
  assert (image == visualize.BLANK_COLOR).all(axis=-1).mean() > 0.9


def test_pose_box_is_drawn_at_its_place_labelled_person():
  size = 64
  rgb = _grey_rgb(size)
  image = _tile("human_poses", _pose_rows([0.25, 0.5, 0.75, 0.875]), size, rgb=rgb)
  assert image.shape == (size, size, 3)
  color = np.array(colorize.class_color("person"), np.uint8)
  x0, y0, x1, y1 = 16, 32, 47, 55  # the box's pixels (draw_boxes' convention)
  assert (image[y0, x0:x1 + 1] == color).all() and (image[y1, x0:x1 + 1] == color).all()
  assert (image[y0:y1 + 1, x0] == color).all() and (image[y0:y1 + 1, x1] == color).all()
  # Inside, below, left of the box and well above it (past its label) nothing changes.
  np.testing.assert_array_equal(image[y0 + 1:y1, x0 + 1:x1], rgb[y0 + 1:y1, x0 + 1:x1])
  np.testing.assert_array_equal(image[y1 + 1:], rgb[y1 + 1:])
  np.testing.assert_array_equal(image[:, :x0], rgb[:, :x0])
  np.testing.assert_array_equal(image[:y0 - 20], rgb[:y0 - 20])
  assert (image[y0 - 4, x0] == color).all()  # the label's background, above the box
  # The same box as drawn for a detection of class "person".
  det = _tile("det", {"boxes": np.array([[0.25, 0.5, 0.75, 0.875]]), "classes": ["person"]},
              size, rgb=rgb)
  np.testing.assert_array_equal(image, det)


def test_poses_without_people_or_image():
  size = 48
  rgb = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
  np.testing.assert_array_equal(_tile("human_poses", _pose_rows(), size, rgb=rgb), rgb)
  canvas = _tile("human_poses", _pose_rows([0.25, 0.25, 0.75, 0.75]), size)
  assert (canvas[size // 2, size // 2] == visualize.CANVAS_COLOR).all()
  assert (canvas[12, 12:36] == colorize.class_color("person")).all()  # the top edge


def _sam_rows() -> np.ndarray:
  """Point (56, 168) inside one instance, box (20, 150)-(100, 200) px of the 224 px
  image; point (180, 40) in none."""
  rows = np.full((2, 22), 7, np.int32)
  rows[0, :6] = (56, 168, 20, 150, 100, 200)
  rows[1, :2] = (180, 40)
  rows[1, 2:] = -1
  return rows


def test_sam_instance_points_and_boxes_are_at_their_pixels():
  size = 112  # half the 224 px the coordinates are in
  rgb = _grey_rgb(size)
  image = _tile("sam_instance", _sam_rows(), size, rgb=rgb)
  assert image.shape == (size, size, 3)
  first, second = colorize.palette(3)[1:]
  # The box covers pixels 20..100 x 150..200 of 224: 10..50 x 75..100 here.
  assert (image[75, 10:51] == first).all() and (image[100, 10:51] == first).all()
  assert (image[75:101, 10] == first).all() and (image[75:101, 50] == first).all()
  np.testing.assert_array_equal(image[77:99, 12:20], rgb[77:99, 12:20])  # inside
  # The point with an instance is a dot of the box's color at (28.25, 84.25).
  assert (image[84, 28] == first).all()
  # The point without one is a ring of the next color around (90.25, 20.25), hollow.
  np.testing.assert_array_equal(image[20, 90], rgb[20, 90])
  rows, cols = np.mgrid[:size, :size]
  distance = np.hypot(rows + 0.5 - 20.25, cols + 0.5 - 90.25)
  assert (image[(distance > 4.5) & (distance < 7)] == second).all(axis=-1).any()
  # Away from the box and the points nothing changes.
  far = (distance > 12) & ~((rows >= 66) & (rows <= 102) & (cols <= 52))
  np.testing.assert_array_equal(image[far], rgb[far])


def test_sam_instance_without_rows_is_the_image():
  rgb = _grey_rgb(32, 60)
  np.testing.assert_array_equal(_tile("sam_instance", np.zeros((0, 22), np.int32), 32,
                                      rgb=rgb), rgb)


def _metadata(**entries) -> np.ndarray:
  array = np.full(len(sequence_tiles.METADATA_KEYS), np.nan, np.float32)
  for key, value in entries.items():
    array[sequence_tiles.METADATA_KEYS.index(key)] = value
  return array


def _ink(image: np.ndarray) -> np.ndarray:
  return _luminance(image) < 128


def test_metadata_tile_lists_the_present_entries():
  tile = 128
  two = _tile("metadata", _metadata(n_humans=2, brightness=120.0), tile)
  assert two.shape == (tile, tile, 3)
  assert _ink(two).sum() > 50  # text is written
  # Different values, different text; one entry more, more lines.
  assert not np.array_equal(two, _tile("metadata", _metadata(n_humans=3, brightness=120.0),
                                       tile))
  three = _tile("metadata", _metadata(n_humans=2, brightness=120.0, aesthetic_score=5.0), tile)
  assert _ink(three)[40:].sum() > _ink(two)[40:].sum()
  # A decoded {kind: value} dict draws as the record holding the same values.
  np.testing.assert_array_equal(
      _tile("metadata", {"n_humans": 2.0, "brightness": 120.0}, tile), two)
  # Absent entries and an empty dict: a tile that says so, no text of entries.
  for empty in (_metadata(), {}):
    image = _tile("metadata", empty, tile)
    assert (image == visualize.BLANK_COLOR).all(axis=-1).mean() > 0.9


def test_metadata_with_every_entry_fills_its_tile_in_key_order():
  tile = 128
  full = _tile("metadata", _metadata(**{key: 1.5 for key in sequence_tiles.METADATA_KEYS}),
               tile)
  assert full.shape == (tile, tile, 3)
  # Not all 21 fit: the lines run down to the bottom ("+N more" last) ...
  assert _ink(full)[-tile // 5:].any()
  # ... and start with the first kinds, as a tile of only those shows them.
  first_two = _tile("metadata", _metadata(original_width=1.5, original_height=1.5), tile)
  lines = sequence_tiles.MARGIN + 2 * visualize.line_height(sequence_tiles.tile_font(tile))
  np.testing.assert_array_equal(full[1:lines, 1:-1], first_two[1:lines, 1:-1])
  assert not np.array_equal(full[lines:], first_two[lines:])
  small = _tile("metadata", _metadata(**{key: 1.5 for key in sequence_tiles.METADATA_KEYS}),
                40)
  assert small.shape == (40, 40, 3) and _ink(small).any()
  assert sequence_tiles.format_number(512.0) == "512"
  assert sequence_tiles.format_number(122.296) == "122"
  assert sequence_tiles.format_number(0.3125) == "0.312"


def test_sequence_drawers_follow_the_meaning_not_the_name():
  other = modalities.RawSpec("my_palette", modalities.Form.VECTOR, "uint8", "color_palette",
                             channels=3)
  modalities.register_raw(other)
  try:
    colors = np.array([RED, BLUE], np.uint8)
    np.testing.assert_array_equal(_tile("my_palette", colors, 32),
                                  _tile("color_palette", colors, 32))
  finally:
    modalities.RAW_MODALITIES.pop("my_palette")
  # A condition shown beside its generated modality draws as its raw.
  np.testing.assert_array_equal(_tile("color_palette (given)", colors, 32),
                                _tile("color_palette", colors, 32))


def test_decoded_sequences_draw_like_their_records():
  """What the codecs' detokenize gives (generation's output) draws."""
  from tokenizers_vq import sequences
  size = 64
  rgb = _grey_rgb(size)
  records = {"color_palette": np.array([RED, BLUE], np.uint8),
             "human_poses": _pose_rows([0.25, 0.5, 0.75, 0.875]),
             "sam_instance": _sam_rows(),
             "metadata": _metadata(n_humans=2, original_width=640.0)}
  for name, record in records.items():
    codec = sequences.codec_for(name)
    decoded = codec.detokenize(codec(record))
    drawn = _tile(name, decoded, size, rgb=rgb)
    expected = _tile(name, record, size, rgb=rgb)
    assert drawn.shape == (size, size, 3)
    if name == "metadata":  # a dict of the bins read back: here the same numbers
      assert isinstance(decoded, dict)
    np.testing.assert_array_equal(drawn, expected, err_msg=name)


def test_grid_of_rgb_and_the_four_sequences(tmp_path):
  tile = 96
  rgb = _grey_rgb(tile)
  sample = {"__name__": "s", "rgb": rgb, "caption": "a grey square",
            "color_palette": np.array([RED, BLUE], np.uint8),
            "human_poses": _pose_rows([0.25, 0.5, 0.75, 0.875]),
            "sam_instance": _sam_rows(),
            "metadata": _metadata(n_humans=1, brightness=100.0)}
  names = [name for name, _ in visualize.sample_tiles(sample, tile)]
  assert names == ["rgb", "human_poses", "sam_instance", "color_palette", "metadata"]
  plain = {k: v for k, v in sample.items() if k not in ("__name__", "caption")}
  grid = visualize.make_grid([plain], tile=tile)
  pixels = np.asarray(grid)
  top = visualize.PAD + visualize.line_height(visualize.font(visualize.TEXT_SIZE))
  expected = dict(visualize.sample_tiles(plain, tile))
  for column, name in enumerate(names):
    left, _, right, bottom = _tile_box(tile, grid, column, len(names), top)
    np.testing.assert_array_equal(pixels[top:bottom, left:right], expected[name], name)
  path = visualize.save_grid([sample, {"rgb": rgb}], tmp_path / "grid.png", tile=tile)
  with Image.open(path) as image:
    assert image.size[0] > 5 * tile
