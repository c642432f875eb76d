"""The 4M-21 network labelers (SAM edges and instances, DINOv2, person keypoints, T5
caption embeddings): tiny random-init configurations of the real architectures on real
photographs, the records they write, and stand-in networks whose output says where it
belongs, to check that labels come back aligned with the photo."""

import types

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from fourm import modalities  # noqa: E402
from fourm.data import records  # noqa: E402
from fourm.errors import RecordError  # noqa: E402
from pseudolabel import detection, dinov2, human_poses, sam, t5_caption  # noqa: E402
from test_pseudolabel import photos  # noqa: E402
from tokenizers_vq import sequences  # noqa: E402

# Tiny networks gain nothing from intra-op threads (see tests/test_pseudolabel.py).
torch.set_num_threads(1)

@pytest.fixture(scope="module")
def images():
  return photos()


@pytest.fixture(autouse=True)
def seeded():
  torch.manual_seed(0)   # tiny random networks: the same weights every run


@pytest.fixture(scope="module")
def sam_generator():
  torch.manual_seed(0)
  return sam.SamMaskGenerator.tiny()


@pytest.fixture(scope="module")
def sam_masks(sam_generator, images):
  return sam_generator(images)


# ------------------------------------------------------------------------------ SAM
def test_sam_masks_on_photos(sam_masks):
  for masks in sam_masks:
    assert len(masks) >= 2 and masks.logits.dtype == np.float32
    assert (np.diff(masks.scores) <= 0).all()   # best first, as NMS keeps them


def test_sam_edges_are_exactly_the_mask_boundaries(sam_generator, sam_masks, images):
  labeler = sam.SamEdgeLabeler(sam_generator)
  edges = labeler.from_masks(sam_masks, images)
  cross = ndimage.generate_binary_structure(2, 1)
  for image, masks, edge in zip(images, sam_masks, edges):
    assert edge.dtype == np.uint8 and edge.shape == image.shape[:2]
    records.validate_field("sam_edge", edge, image_hw=image.shape[:2])
    expected = np.zeros(edge.shape, bool)
    for mask in masks.masks(image.shape[:2]):   # the masks the model returned
      expected |= mask & ~ndimage.binary_erosion(mask, cross, border_value=1)
    np.testing.assert_array_equal(edge, expected.astype(np.uint8))
    assert 0 < edge.sum() < edge.size
  np.testing.assert_array_equal(labeler(images[:1])[0], edges[0])  # one pass = the two steps


def _points(rows):
  starts = np.flatnonzero(np.r_[True, (rows[1:, :2] != rows[:-1, :2]).any(1)])
  return [tuple(rows[s, :2]) for s in starts]


def test_sam_instance_records_list_the_instances_at_each_point(sam_generator, sam_masks,
                                                               images):
  labeler = sam.SamInstanceLabeler(sam_generator)
  made = labeler.from_masks(sam_masks, images)
  assert modalities.get_raw("sam_instance_masks").labeler == "sam_instance"
  multiple = 0
  for image, masks, record in zip(images, sam_masks, made):
    assert record.dtype == np.int32 and record.shape[1] == sam.ROW_WIDTH + sam.MASK_SIZE ** 2
    records.validate_field("sam_instance_masks", record)
    rows = sam.instance_rows(record)
    points = _points(rows)
    assert len(points) == len(set(points)) == sam.QUERY_POINTS
    assert ((rows[:, :2] >= 0) & (rows[:, :2] < sam.FRAME)).all()
    frame = labeler.frame_masks(masks, image)
    boxes = {}
    for mask in frame:
      ys, xs = np.nonzero(mask)
      if len(xs) and (np.ptp(xs) * np.ptp(ys)) / sam.FRAME ** 2 >= sam.MIN_BOX_AREA:
        boxes.setdefault((xs.min(), ys.min(), xs.max(), ys.max()), []).append(mask)
    crops = sam.instance_masks(record)
    for x, y in points:
      at = rows[:, 0] == x
      at &= rows[:, 1] == y
      containing = sorted(box for box, ms in boxes.items() for m in ms if m[y, x])
      if not containing:
        assert at.sum() == 1 and (rows[at, 2:] == -1).all() and not crops[at].any()
        continue
      assert sorted(map(tuple, rows[at, 2:6].tolist())) == containing
      assert (rows[at, 6:] == sam.UNTOKENIZED).all()
      assert set(np.unique(crops[at])) == {0, 1}
      multiple += at.sum() > 1
  assert multiple  # some point lies in more than one instance


def test_sam_instance_records_need_tokens_before_the_codec(sam_generator, sam_masks, images):
  record = sam.SamInstanceLabeler(sam_generator).from_masks(sam_masks[:1], images[:1])[0]
  codec = sequences.codecs_for(["sam_instance"])["sam_instance"]
  with pytest.raises(RecordError, match="tokens"):
    codec(sam.instance_rows(record))      # -1 tokens: refused, not written as words
  hit = sam.has_instance(record)
  assert hit.any() and (sam.instance_masks(record)[hit].reshape(hit.sum(), -1).any(1)).all()
  stand_in = np.arange(hit.sum() * 16).reshape(-1, 16) % 1024   # a tokenizer's ids
  complete = sam.with_tokens(record, stand_in)
  assert complete.dtype == np.int32 and complete.shape == (len(record), 22)
  records.validate_field("sam_instance", complete)
  ids = codec(complete)
  assert ids.dtype == np.int32 and len(ids)
  np.testing.assert_array_equal(codec.decode(ids), complete)   # strict: every word read
  with pytest.raises(ValueError, match="tokens"):
    sam.with_tokens(record, stand_in[1:])


def test_sam_query_points_follow_the_photo():
  a, b = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8, 3), np.uint8)
  np.testing.assert_array_equal(sam.query_points(a), sam.query_points(a.copy()))
  assert not np.array_equal(sam.query_points(a), sam.query_points(b))
  assert not np.array_equal(sam.query_points(a), sam.query_points(a, seed=1))


def test_box_nms_and_mask_boxes():
  boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9.]])
  scores = torch.tensor([0.5, 0.9, 0.8, 0.7])
  # 1 (best) suppresses 0 (IoU 0.81) and 3 (IoU 0.73); 2 overlaps nothing. At 0.85 both
  # survive 1, but 3 suppresses 0 (IoU 0.9).
  assert sam.box_nms(boxes, scores, 0.7).tolist() == [1, 2]
  assert sam.box_nms(boxes, scores, 0.85).tolist() == [1, 2, 3]
  masks = torch.zeros((2, 5, 6), dtype=torch.bool)
  masks[0, 1:3, 2:5] = True
  assert sam.mask_boxes(masks).tolist() == [[2, 1, 4, 2], [0, 0, 0, 0]]


class _RedSam(torch.nn.Module):
  """A SAM stand-in: the image embedding is the input itself, and a point prompt on red
  pixels gets the red region as its mask, any other point the rest of the photo. The
  padding SAM's input has below or right of the photo is in neither."""

  def get_image_embeddings(self, pixel_values):
    return pixel_values

  def forward(self, image_embeddings, input_points, input_labels, multimask_output):
    red = image_embeddings[0, 0]                  # +1 red, -1 not, 0 padding
    x, y = input_points[0, :, 0].long().unbind(-1)
    sign = torch.where(red[y, x] > 0, 20.0, -20.0)[:, None, None]
    masks = (sign * red)[None, :, None].expand(-1, -1, 3, -1, -1)
    return types.SimpleNamespace(pred_masks=masks, iou_scores=torch.ones(masks.shape[:3]))


def test_sam_labels_come_back_aligned_with_the_photo():
  image = np.zeros((48, 90, 3), np.uint8)
  image[:, :37, 0] = 255                          # red on the left 37 columns
  generator = sam.SamMaskGenerator(_RedSam(), name="stub", input_size=64, mean=(0.5,) * 3,
                                   std=(0.5,) * 3, points_per_side=8)
  masks = generator([image])
  assert len(masks[0]) == 2                       # red, and the rest
  edge = sam.SamEdgeLabeler(generator).from_masks(masks, [image])[0]
  # Only the red boundary, down the whole height; none where the padding begins.
  assert edge[:, :34].sum() == 0 and edge[:, 41:].sum() == 0
  assert edge[:, 34:41].any(1).all()
  rows = sam.instance_rows(sam.SamInstanceLabeler(generator).from_masks(masks, [image])[0])
  # The center square is columns 21..68; red covers its first 16 of 48: 74.7 of 224 px.
  assert len(rows) == sam.QUERY_POINTS            # each point in exactly one instance
  for x, y, *box in rows[:, :6].tolist():
    expected = (0, 0, 74, 223) if x <= 74 else (75, 0, 223, 223)
    np.testing.assert_allclose(box, expected, atol=1)


# --------------------------------------------------------------------------- DINOv2
@pytest.fixture(scope="module")
def dinov2_labeler():
  torch.manual_seed(0)
  return dinov2.Dinov2Labeler.tiny()


def test_dinov2_features_on_photos(dinov2_labeler, images):
  features = dinov2_labeler.features(images)
  with torch.inference_mode():
    out = dinov2_labeler.model(pixel_values=dinov2_labeler.pixels(images))
  grid = dinov2_labeler.grid
  assert grid == 56 // 14
  for (patches, vector), hidden, pooled in zip(features, out.last_hidden_state,
                                               out.pooler_output):
    assert patches.shape == (grid, grid, 768) and patches.dtype == np.float32
    assert vector.shape == (768,) and vector.dtype == np.float32
    records.validate_field("dinov2", patches)
    records.validate_field("dinov2_global", vector)
    np.testing.assert_allclose(vector, pooled.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vector, hidden[0].numpy(), rtol=1e-6, atol=1e-6)  # class token
    np.testing.assert_allclose(patches[1, 2], hidden[1 + 1 * grid + 2].numpy(), atol=1e-6)
  globals_ = dinov2.Dinov2GlobalLabeler(dinov2_labeler)(images[:2])
  np.testing.assert_allclose(globals_[1], features[1][1], atol=1e-6)
  np.testing.assert_allclose(dinov2_labeler(images[:1])[0], features[0][0], atol=1e-5)


def test_dinov2_map_is_aligned_with_the_photo(dinov2_labeler, images):
  image = images[1]                               # 300 x 451: not square
  changed = image.copy()
  height, width = image.shape[:2]
  changed[:height // 4, width * 3 // 4:] = 255 - changed[:height // 4, width * 3 // 4:]
  before, after = dinov2_labeler([image, changed])
  change = np.linalg.norm(after - before, axis=-1)
  # The top-right patch changes most (nothing transposed or flipped).
  assert np.unravel_index(change.argmax(), change.shape) == (0, dinov2_labeler.grid - 1)


# ------------------------------------------------------------------- person keypoints
def test_human_keypoints_on_photos(images):
  labeler = human_poses.HumanKeypointsLabeler.tiny()
  assert modalities.get_raw("human_keypoints").labeler == "human_keypoints"
  for rows in labeler(images):
    assert rows.dtype == np.float32 and rows.shape == (10, human_poses.WIDTH)  # every query
    records.validate_field("human_keypoints", rows)
    boxes, scores = rows[:, :4], rows[:, 4]
    assert (np.diff(scores) <= 0).all()
    # The boxes are human_poses' columns 0:4, and a det record as they stand.
    records.validate_field("det", {"boxes": boxes, "classes": ["person"] * len(rows),
                                   "scores": scores})
    keypoints = rows[:, 5:].reshape(-1, 17, 3)
    assert np.isfinite(keypoints).all()
    # (Random heatmaps have no peak for DARK's refinement to find, so their joints may
    # land anywhere: where joints come back is checked with a stand-in below.)


class _OnePerson(torch.nn.Module):
  """A DETR stand-in: one query, a person at a fixed box (cx, cy, w, h)."""

  BOX = (0.3, 0.6, 0.2, 0.5)

  def __init__(self):
    super().__init__()
    self.config = types.SimpleNamespace(id2label={0: "person", 1: "cat"}, num_labels=2,
                                        model_type="detr")

  def forward(self, pixel_values):
    logits = torch.tensor([[[9.0, 0.0, 0.0]]]).expand(len(pixel_values), -1, -1)
    boxes = torch.tensor([[self.BOX]]).expand(len(pixel_values), -1, -1)
    return types.SimpleNamespace(logits=logits, pred_boxes=boxes)


class _CentredPose(torch.nn.Module):
  """A ViTPose stand-in: every joint's heatmap peaks at the crop's centre."""

  def __init__(self):
    super().__init__()
    self.config = types.SimpleNamespace(backbone_config=types.SimpleNamespace(num_experts=1))

  def forward(self, pixel_values):
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(12.0), indexing="ij")
    peak = torch.exp(-((xs - 5.5) ** 2 + (ys - 7.5) ** 2) / 2)
    return types.SimpleNamespace(heatmaps=peak.expand(len(pixel_values), 17, -1, -1))


def test_keypoints_come_back_at_their_pixels():
  from transformers import VitPoseImageProcessorPil
  detector = detection.DetectionLabeler(_OnePerson(), name="stub", input_size=32,
                                        mean=(0.5,) * 3, std=(0.5,) * 3)
  labeler = human_poses.HumanKeypointsLabeler(
      detector, _CentredPose(), VitPoseImageProcessorPil(size={"height": 64, "width": 48}))
  image = np.zeros((60, 100, 3), np.uint8)
  rows = labeler([image])[0]
  cx, cy, w, h = _OnePerson.BOX
  np.testing.assert_allclose(rows[0, :4], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
                             atol=1e-6)
  joints = rows[0, 5:].reshape(17, 3)
  np.testing.assert_allclose(joints[:, 0], cx, atol=0.1 / 100)   # within a tenth of a pixel
  np.testing.assert_allclose(joints[:, 1], cy, atol=0.1 / 60)
  labeler.threshold = 1.0                         # no one that sure: an empty record
  assert labeler([image])[0].shape == (0, human_poses.WIDTH)


# ----------------------------------------------------------------------- T5 captions
@pytest.fixture(scope="module")
def t5_labeler():
  torch.manual_seed(0)
  return t5_caption.T5CaptionLabeler.tiny()


def test_t5_caption_states_follow_the_caption_tokens(t5_labeler):
  captions = ["a cat", "A man sitting on a red table, with a dog.", "", "photo " * 100]
  states = t5_labeler(captions)
  eos = t5_labeler.tokenizer.eos_token_id
  for caption, s in zip(captions, states):
    ids = t5_labeler.token_ids(caption)
    assert ids[-1] == eos
    assert s.shape == (len(ids), 4096) and s.dtype == np.float32
    records.validate_field("t5_caption", s)
  assert [len(s) for s in states[:3]] == [3, 14, 1]   # ▁a ▁cat </s>; ...; </s> alone
  assert len(states[3]) == t5_caption.MAX_TOKENS      # truncated, still ending in </s>
  # Padding to the batch's longest caption changes no caption's states.
  for caption, s in zip(captions, states):
    np.testing.assert_allclose(t5_labeler([caption])[0], s, atol=1e-5)
  with torch.inference_mode():
    ids = torch.tensor([t5_labeler.token_ids(captions[1])])
    direct = t5_labeler.model(input_ids=ids).last_hidden_state[0].numpy()
  np.testing.assert_allclose(states[1], direct, atol=1e-5)
  assert t5_labeler([]) == []
  with pytest.raises(ValueError, match="caption"):
    t5_labeler([None])


# ------------------------------------------------------------- local checkpoints
def test_from_pretrained_loads_local_checkpoints(tmp_path, images):
  """Each labeler's from_pretrained on a saved tiny model gives the tiny model's labels."""
  generator = sam.SamMaskGenerator.tiny()
  generator.model.save_pretrained(tmp_path / "sam")
  loaded = sam.SamEdgeLabeler.from_pretrained(str(tmp_path / "sam"), points_per_side=8,
                                              pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                              box_nms_thresh=0.95)
  assert loaded.sam.input_size == 64 and loaded.name == str(tmp_path / "sam")
  np.testing.assert_array_equal(loaded(images[:1])[0],
                                sam.SamEdgeLabeler(generator)(images[:1])[0])

  features = dinov2.Dinov2Labeler.tiny()
  features.model.save_pretrained(tmp_path / "dinov2")
  loaded = dinov2.Dinov2GlobalLabeler.from_pretrained(str(tmp_path / "dinov2"), input_size=56)
  np.testing.assert_allclose(loaded(images[:1])[0], features.features(images[:1])[0][1],
                             atol=1e-5)

  text = t5_caption.T5CaptionLabeler.tiny()
  text.model.save_pretrained(tmp_path / "t5")
  text.tokenizer.save_pretrained(tmp_path / "t5")
  loaded = t5_caption.T5CaptionLabeler.from_pretrained(str(tmp_path / "t5"))
  np.testing.assert_allclose(loaded(["a red cat"])[0], text(["a red cat"])[0], atol=1e-5)

  people = human_poses.HumanKeypointsLabeler.tiny()
  people.pose_model.save_pretrained(tmp_path / "vitpose")
  people.processor.save_pretrained(tmp_path / "vitpose")
  people.detector.model.save_pretrained(tmp_path / "detr")
  (tmp_path / "detr" / "preprocessor_config.json").write_text('{"size": {"height": 64}}')
  loaded = human_poses.HumanKeypointsLabeler.from_pretrained(
      str(tmp_path / "vitpose"), detector=str(tmp_path / "detr"), person_class="coco_id_1",
      threshold=0.0)
  assert loaded.person_ids == people.person_ids == [1]
  np.testing.assert_allclose(loaded(images[:1])[0], people(images[:1])[0], atol=1e-4)
