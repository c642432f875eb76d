"""Boxes as tokens: the reference serialization, the round trip, sort order, quantization,
and the errors a malformed (or cut-off generated) sequence gets."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from fourm import modalities
from fourm.data import synthetic
from fourm.data.masking import AlphasMixture, DirichletComponent, MaskSample
from tokenizers_vq.text import TextSpecialIds
from fourm.errors import RecordError, UsageError
from tokenizers_vq import boxes, text

BINS = 1000
IDS = TextSpecialIds()


def det(rows, classes) -> dict:
  return {"boxes": np.asarray(rows, np.float32).reshape(-1, 4), "classes": list(classes)}


def reference_string(record: dict) -> str:
  """The reference's detection string, written out independently of `boxes.py`:
  sorted by xmin^2 + ymin^2, each coordinate round(x * 999), then the class name."""
  objects = sorted(zip(record["boxes"].tolist(), record["classes"]),
                   key=lambda item: item[0][0] ** 2 + item[0][1] ** 2)
  return " ".join(f"v0={round(x0 * (BINS - 1))} v1={round(y0 * (BINS - 1))} "
                  f"v2={round(x1 * (BINS - 1))} v3={round(y1 * (BINS - 1))} {name}"
                  for (x0, y0, x1, y1), name in objects)


@pytest.fixture(scope="module")
def tokenizer():
  return text.load_text_tokenizer()


@pytest.fixture(scope="module")
def worlds() -> list[dict]:
  return [synthetic.make_sample(0, "train", index)["det"] for index in range(12)]


HAND = det([[0.5, 0.5, 0.9, 0.9], [0.1, 0.6, 0.2, 0.7], [0.0, 0.0, 1.0, 1.0],
            [0.6, 0.1, 0.7, 0.3], [0.6, 0.1, 0.65, 0.2]],
           ["Wine Glass", "person", "dining table", "traffic light", "dog"])


def test_ids_equal_the_reference_string_tokenized(tokenizer, worlds):
  """Same ids as 4M tokenizing its det string: order, quantization, token spelling."""
  for record in worlds + [HAND]:
    expected = tokenizer.encode(reference_string(record), add_special_tokens=False).ids
    ids = boxes.encode_boxes(record)
    assert ids.dtype == np.int32 and ids.tolist() == expected


def test_round_trip_is_exact_up_to_quantization(worlds):
  for record in worlds + [HAND]:
    decoded = boxes.decode_boxes(boxes.encode_boxes(record))
    order = boxes.box_order(record["boxes"])
    assert decoded["boxes"].dtype == np.float32 and decoded["boxes"].shape == (len(order), 4)
    np.testing.assert_allclose(decoded["boxes"], record["boxes"][order],
                               atol=0.5 / (BINS - 1) + 1e-6, rtol=0)
    assert decoded["classes"] == [record["classes"][i].lower() for i in order]
    # Decoding gives bin values, so a second round trip changes nothing.
    again = boxes.decode_boxes(boxes.encode_boxes(decoded))
    np.testing.assert_array_equal(again["boxes"], decoded["boxes"])


def test_sort_order_is_by_the_top_left_corner_and_stable():
  # Corner distances^2: 0.5, 0.37, 0, 0.37, 0.37 -> table, person, light, dog, glass.
  decoded = boxes.decode_boxes(boxes.encode_boxes(HAND))
  assert decoded["classes"] == ["dining table", "person", "traffic light", "dog",
                                "wine glass"]
  # Each pair sorts the other way by area, by center, or by xmin alone.
  for rows in ([[0.3, 0.3, 0.31, 0.31], [0.4, 0.4, 1.0, 1.0]],
               [[0.3, 0.3, 1.0, 1.0], [0.35, 0.35, 0.4, 0.4]],
               [[0.2, 0.2, 0.3, 0.3], [0.1, 0.5, 0.2, 0.6]]):
    record = det(rows, ["first", "second"])
    assert boxes.decode_boxes(boxes.encode_boxes(record))["classes"] == ["first", "second"]
    swapped = det(rows[::-1], ["second", "first"])
    assert boxes.decode_boxes(boxes.encode_boxes(swapped))["classes"] == ["first", "second"]


def test_quantization_matches_python_round():
  values = np.random.default_rng(0).random(10_000)
  values = np.concatenate([values, np.arange(BINS) / (BINS - 1), [0.0, 1.0, 0.5]])
  expected = [round(float(v) * (BINS - 1)) for v in values]
  assert boxes.quantize(values, BINS).tolist() == expected
  np.testing.assert_array_equal(boxes.dequantize([0, 999], BINS), [0.0, 1.0])


def test_empty_detections(tokenizer):
  empty = det(np.zeros((0, 4)), [])
  ids = boxes.encode_boxes(empty)
  assert ids.dtype == np.int32 and ids.shape == (0,)
  decoded = boxes.decode_boxes(ids)
  assert decoded["boxes"].shape == (0, 4) and decoded["classes"] == []
  assert boxes.decode_boxes([IDS.eos, IDS.pad])["classes"] == []


def test_end_of_sequence_and_padding_are_accepted():
  ids = boxes.encode_boxes(HAND).tolist()
  for tail in ([IDS.eos], [IDS.eos, IDS.pad, IDS.pad], [IDS.pad, IDS.pad]):
    assert boxes.decode_boxes(ids + tail)["classes"] == \
        boxes.decode_boxes(ids)["classes"]


def _hand_ids() -> list[int]:
  return boxes.encode_boxes(det([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.6, 0.7]],
                                ["dog", "hot dog"])).tolist()


# ids of the two objects: [v0 v1 v2 v3 dog v0 v1 v2 v3 hot dog]; positions 0..9.
@pytest.mark.parametrize("edit,message", [
    (lambda ids: ids[:7], r"position 7: expected v2=<bin> \(xmax of object 1\), got the end"),
    (lambda ids: ids[:4], r"position 4: expected the class name of object 0 after its ymax, "
                          r"got the end"),
    (lambda ids: ids[:1] + ids[2:], r"position 1: expected v1=<bin> \(ymin of object 0\), "
                                    r"got 'v2=300' \(id 2504\)"),
    (lambda ids: ids[:4] + ids[5:], r"position 4: expected the class name of object 0 .* "
                                    r"got 'v0=500' \(id 704\)"),
    (lambda ids: ids + [30_000], r"position 10: id 30000 is outside the vocabulary"),
    (lambda ids: ids[:5] + [IDS.sentinel(2)] + ids[5:],
     r"position 5: expected v0=<bin> \(xmin of object 1\), got '\[S_2\]' \(id 6\)"),
    (lambda ids: [ids[2] - 2000, ids[1], ids[0] + 2000] + ids[3:],
     r"position 2: object 0: xmax bin 100 < xmin bin 300"),
    (lambda ids: ids + [IDS.eos, ids[0]], r"position 11: 'v0=100' \(id 304\) after the end "
                                          r"of the sequence \('\[EOS\]' \(id 3\) at position 10\)"),
    (lambda ids: [IDS.sos] + ids, r"position 0: expected v0=<bin> \(xmin of object 0\), got "
                                  r"'\[SOS\]'"),
])
def test_malformed_sequences_raise_naming_position_and_token(edit, message):
  ids = _hand_ids()
  assert len(ids) == 10 and boxes.decode_boxes(ids)["classes"] == ["dog", "hot dog"]
  with pytest.raises(UsageError, match=message):
    boxes.decode_boxes(edit(ids))


def test_lenient_decoding_drops_what_does_not_parse_and_counts_it():
  ids = _hand_ids()
  record, dropped = boxes.parse_boxes(ids[:7], strict=False)  # cut off by a length limit
  assert (record["classes"], dropped) == (["dog"], 1)
  np.testing.assert_allclose(record["boxes"], [[0.1, 0.2, 0.3, 0.4]], atol=1e-3)
  # A stray sentinel and a broken first object; garbage after [EOS] is ignored.
  mangled = ids[:3] + ids[5:] + [IDS.sentinel(1)] + ids[:5] + [IDS.eos, 17, 5]
  record, dropped = boxes.parse_boxes(mangled, strict=False)
  assert (record["classes"], dropped) == (["hot dog", "dog"], 2)
  assert boxes.decode_boxes(ids[:7], strict=False)["classes"] == ["dog"]
  assert boxes.parse_boxes(ids)[1] == 0
  with pytest.raises(UsageError, match="outside the vocabulary"):
    boxes.parse_boxes(ids + [40_000], strict=False)


@pytest.mark.parametrize("record,message", [
    (det([[0.1, 0.1, 1.2, 0.5]], ["dog"]), "within \\[0, 1\\]"),
    (det([[0.5, 0.1, 0.2, 0.5]], ["dog"]), "min <= max"),
    (det([[0.1, 0.1, 0.2, 0.5]], ["dog", "cat"]), "classes must be 1 strings"),
    (det([[0.1, 0.1, 0.2, 0.5]], [""]), "class name '' has no tokens"),
    (det([[0.1, 0.1, 0.2, 0.5]], ["v0=3"]), "contains coordinate or control tokens"),
    ({"boxes": np.zeros((1, 3), np.float32), "classes": ["dog"]}, "must be \\[N, 4\\]"),
    ("a dog", "expected {'boxes'"),
])
def test_bad_detection_records_raise(record, message):
  with pytest.raises(RecordError, match=message) as error:
    boxes.encode_boxes(record)
  assert error.value.field == "det"


def test_box_encoder_is_picklable_and_feeds_the_masking(worlds):
  """MaskSample with both encoders: everything visible, the inputs are the encodings."""
  encoders = {"caption": text.TextEncoder(), "det": boxes.BoxEncoder()}
  names = ("caption", "det")
  component = DirichletComponent({n: 1.0 for n in names}, {n: 1.0 for n in names},
                                 keep={n: "all" for n in names})
  transform = MaskSample(names, modalities.SMALL_LAYOUT, 1000, 0, AlphasMixture((component,)),
                         sequence_encoders=encoders)
  transform = pickle.loads(pickle.dumps(transform))  # as a grain worker receives it
  sample = synthetic.make_sample(0, "train", 3)
  out = transform({"caption": sample["caption"], "det": sample["det"]},
                  np.random.default_rng(0))
  det_inputs = out["det"]["input_tokens"][out["det"]["input_mask"]]
  assert det_inputs.tolist() == boxes.encode_boxes(sample["det"]).tolist() + [IDS.eos]
  assert boxes.decode_boxes(det_inputs)["classes"] == \
      boxes.decode_boxes(boxes.encode_boxes(sample["det"]))["classes"]
  caption_inputs = out["caption"]["input_tokens"][out["caption"]["input_mask"]]
  assert text.detokenize(caption_inputs) == sample["caption"].lower()


def test_box_encoder_needs_coordinate_tokens(tmp_path):
  import tokenizers
  from tokenizers import models
  vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[SOS]", "[EOS]", "[S_0]", "a"])}
  tokenizer = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  path = str(tmp_path / "nocoords.json")
  tokenizer.save(path)
  assert text.special_tokens(path).coord_bins == 0
  with pytest.raises(UsageError, match="no box coordinate tokens"):
    boxes.BoxEncoder(path)
