"""The 4M-21 sequence codecs (palette, metadata, human poses, SAM instances).

Parity: `fixtures/reference/sequences.json` holds, per family, records in fourm's layout
and the token ids the reference's own transforms (ml-4m@cda590f, their random orders
fixed) and tokenizer made of them; made by
`make_reference_fixtures.py --sequences-only`.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from fourm import modalities
from fourm.data.masking import AlphasMixture, DirichletComponent, MaskSample
from fourm.errors import RecordError, UsageError
from tokenizers_vq import human_poses, metadata, sam_instance, sequences, text

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "sequences.json")
FAMILIES = ("color_palette", "metadata", "human_poses", "sam_instance")


def as_record(family: str, value) -> np.ndarray:
  """A fixture case's JSON value as the record fourm stores."""
  if family == "color_palette":
    return np.asarray(value, np.uint8)
  if family == "metadata":
    return np.asarray([np.nan if v is None else v for v in value], np.float32)
  if family == "human_poses":
    return np.asarray(value, np.float32).reshape(-1, human_poses.WIDTH)
  return np.asarray(value, np.int32).reshape(-1, sam_instance.WIDTH)


@pytest.fixture(scope="module")
def fixture():
  with open(FIXTURE) as f:
    return json.load(f)


def cases(fixture, family):
  return [(as_record(family, case["value"]), case) for case in fixture["cases"][family]]


def test_the_metadata_kinds_are_the_references(fixture):
  assert list(metadata.METADATA_KEYS) == fixture["metadata_keys"]


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_are_the_references(fixture, family):
  codec = sequences.codec_for(family)
  found = cases(fixture, family)
  assert len(found) == 3
  for record, case in found:
    assert codec(record).tolist() == case["ids"], case["string"]


@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_gives_the_record_back_up_to_its_bins(fixture, family):
  codec = sequences.codec_for(family)
  for record, case in cases(fixture, family):
    back = codec.decode(np.asarray(case["ids"] + [text.special_tokens().eos, 0, 0]))
    if family in ("color_palette", "sam_instance"):
      np.testing.assert_array_equal(back, record)
    elif family == "human_poses":
      assert back.shape == record.shape
      clipped = record.copy()
      clipped[:, human_poses.COLUMNS["camera"]] = np.clip(
          clipped[:, human_poses.COLUMNS["camera"]], *human_poses.CAMERA_RANGE)
      # Half a bin per group: 1/999 boxes, 1/499.5 orientation, 1/166.5 betas, 1/49.95 camera.
      tolerance = np.concatenate([np.full(4, 0.5 / 999), np.full(9, 0.5 / 499.5), np.zeros(8),
                                  np.full(10, 0.5 / 166.5), np.full(3, 0.5 / 49.95)])
      assert (np.abs(back - clipped) <= tolerance + 1e-6).all()
    else:
      present = {k: v for k, v in zip(metadata.METADATA_KEYS, record.tolist())
                 if not np.isnan(v)}
      assert list(back) == list(present)
      for key, value in present.items():
        assert metadata.value_bin(key, back[key]) == metadata.value_bin(key, value), key


def test_metadata_bins():
  assert metadata.value_bin("original_width", 640) == 20
  assert metadata.value_bin("n_humans", 3000) == 999            # clipped to the words
  assert [metadata.value_bin("aesthetic_score", v) for v in (4.4, 4.5, 5.6)] == [0, 1, 2]
  assert metadata.value_bin("brightness", 255) == 49
  assert metadata.value_bin("brightness", -3) == 0
  codec = metadata.MetadataCodec()
  assert codec({"n_humans": 2}).tolist() == codec(metadata.as_array({"n_humans": 2})).tolist()


@pytest.mark.parametrize("family, record, message", [
    ("color_palette", np.zeros((0, 3), np.uint8), "K in 1..7"),
    ("color_palette", np.zeros((8, 3), np.uint8), "K in 1..7"),
    ("color_palette", np.full((2, 3), 300, np.int32), "0..255"),
    ("metadata", {"height": 3}, "unknown metadata kinds \\['height'\\]"),
    ("metadata", np.zeros(20, np.float32), "float \\[21\\]"),
    ("metadata", np.full(21, np.inf, np.float32), "'original_width' is inf"),
    ("human_poses", np.zeros((1, 33), np.float32), "float \\[N, 34\\]"),
    ("human_poses", np.full((1, 34), 2, np.float32), "boxes must be within"),
    ("human_poses", np.full((1, 34), 0.5, np.float32), "pose tokens .* whole numbers"),
    ("sam_instance", np.zeros((1, 21), np.int32), "int \\[R, 22\\]"),
    ("sam_instance", np.r_[[[1, 2, 5, 5, 4, 9] + [0] * 16]].astype(np.int32),
     "min <= max"),
    ("sam_instance", np.r_[[[1, 2] + [-1] * 20, [1, 2, 0, 0, 4, 9] + [0] * 16]].astype(np.int32),
     "with and without an instance"),
])
def test_bad_records_raise_naming_the_field(family, record, message):
  with pytest.raises(RecordError, match=message) as error:
    sequences.codec_for(family)(record)
  assert error.value.field == family


def test_strict_decoding_names_the_position_and_token():
  codec = human_poses.HumanPoseCodec()
  ids = codec(np.zeros((1, 34), np.float32)).tolist()
  tokenizer = text.load_text_tokenizer()
  bad = ids[:6] + [tokenizer.token_to_id("dog")] + ids[7:]
  with pytest.raises(UsageError, match="human_poses tokens: position 6: .*'dog'"):
    codec.decode(bad)
  with pytest.raises(UsageError, match="position 0: expected v1=<0..7> .*'v0=3'"):
    sequences.codec_for("color_palette").decode([tokenizer.token_to_id("v0=3")] * 2)


def test_lenient_decoding_keeps_the_whole_pieces_of_a_cut_off_sequence(fixture):
  """What generation needs: a sequence cut by the length limit keeps what is complete."""
  for family, keep in (("human_poses", 2), ("sam_instance", 2)):
    codec = sequences.codec_for(family)
    record, case = cases(fixture, family)[2]
    ids = case["ids"]
    starts = [i for i, t in enumerate(ids) if t == ids[0]]   # 'human' / 'point' words
    cut = ids[:starts[keep] + 5]
    with pytest.raises(UsageError):
      codec.decode(cut)
    value, skipped = codec.parse_ids(cut, strict=False)
    assert skipped == 1
    whole = codec.decode(ids[:starts[keep]])
    np.testing.assert_array_equal(value, whole)
    assert 0 < len(whole) < len(record)
  palette = sequences.codec_for("color_palette")
  ids = fixture["cases"]["color_palette"][2]["ids"]
  assert palette.detokenize(ids[:8]).shape == (2, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_codecs_feed_the_masking(fixture, family):
  """Through MaskSample (pickled, as a grain worker gets it): every token visible, the
  input is the encoding cut to max_length with [EOS]."""
  spec = modalities.get(family)
  component = DirichletComponent({family: 1.0}, {family: 1.0}, keep={family: "all"})
  transform = MaskSample((family,), modalities.SMALL_LAYOUT, 1000, 0,
                         AlphasMixture((component,)),
                         sequence_encoders=sequences.codecs_for([family]))
  transform = pickle.loads(pickle.dumps(transform))
  record, case = cases(fixture, family)[1]
  out = transform({family: record}, np.random.default_rng(0))
  seen = out[family]["input_tokens"][out[family]["input_mask"]]
  assert seen.tolist() == (case["ids"] + [text.special_tokens().eos])[:spec.max_length]


def _span_lengths(tokens: np.ndarray, special: text.SpecialTokens) -> list[int]:
  """Lengths of the runs between sentinels (a trailing [EOS] not counted)."""
  runs, run = [], 0
  for token in tokens.tolist():
    if special.first_sentinel <= token < special.first_sentinel + special.num_sentinels:
      runs.append(run)
      run = 0
    elif token != special.eos:
      run += 1
  return runs + [run]


def test_metadata_is_masked_an_entry_at_a_time(fixture):
  """The reference masks metadata by whole entries (chunk span masking): an encoder run
  and a decoder span always hold whole "v1=<kind> v0=<bin>" pairs. Given as bare ids,
  without the codec's chunks, the same record is cut mid-entry: the check can fail."""
  record, case = cases(fixture, "metadata")[0]
  codec = metadata.MetadataCodec()
  chunks = codec.chunks(record)
  assert [len(c) for c in chunks] == [2] * len(chunks)
  assert np.concatenate(chunks).tolist() == case["ids"]
  special = text.special_tokens()
  component = DirichletComponent({"metadata": 1.0}, {"metadata": 1.0},
                                 keep={"metadata": "random"})

  def odd_runs(value, encoders) -> int:
    transform = MaskSample(("metadata",), modalities.SMALL_LAYOUT, 30, 60,
                           AlphasMixture((component,)), sequence_encoders=encoders)
    odd = 0
    for seed in range(200):
      out = transform({"metadata": value}, np.random.default_rng(seed))["metadata"]
      seen = out["input_tokens"][out["input_mask"]]
      # A decoder span is the target tokens (its labels, closed by the next sentinel).
      spans = out["target_labels"][out["target_mask"]]
      odd += sum(n % 2 for n in _span_lengths(seen, special) + _span_lengths(spans, special))
    return odd

  assert odd_runs(record, {"metadata": codec}) == 0
  assert odd_runs(record, {"metadata": lambda value: codec(value)}) > 0  # no chunks
