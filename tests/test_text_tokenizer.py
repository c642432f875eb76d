"""The WordPiece text tokenizer: the reference vocabulary's layout, captions to ids and
back, detokenizing generated sequences, and training a vocabulary on a dataset."""

from __future__ import annotations

import argparse
import json
import pickle

import numpy as np
import pytest

from fourm.data import records, synthetic, world
from tokenizers_vq.text import TextSpecialIds
from fourm.errors import RecordError, UsageError
from tests.helpers import write_dataset
from tokenizers_vq import boxes, text, text_train

COCO_FIRST, COCO_LAST = "airplane", "zebra"


@pytest.fixture(scope="module")
def reference_json() -> dict:
  """The reference vocabulary file as plain JSON, read without our code."""
  with open(text.default_vocab_path()) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def encoder() -> text.TextEncoder:
  return text.TextEncoder()


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> str:
  """A tiny synthetic world (20 scenes at 32 px: 18 train, 2 val)."""
  out = str(tmp_path_factory.mktemp("world"))
  world.write_world(out, 20, 32, seed=0, workers=1, progress=False, log=lambda _: None)
  return out


@pytest.fixture(scope="module")
def trained(world_dir, tmp_path_factory) -> str:
  """A vocabulary trained on the tiny world, capped below what its captions could fill."""
  out = str(tmp_path_factory.mktemp("vocab") / "tiny.json")
  return text_train.train_text_tokenizer(world_dir, out, vocab_size=4290, progress=False,
                                         log=lambda _: None)


# The reference vocabulary ----------------------------------------------------------------


def test_reference_file_layout(reference_json):
  """The added tokens, read straight from the JSON: spellings, ids, flags."""
  added = reference_json["added_tokens"]
  assert [t["id"] for t in added] == list(range(len(added))) and len(added) == 4284
  assert [t["content"] for t in added[:4]] == ["[PAD]", "[UNK]", "[SOS]", "[EOS]"]
  assert [t["content"] for t in added[4:204]] == [f"[S_{i}]" for i in range(200)]
  assert [t["content"] for t in added[204:4204]] == [
      f"v{axis}={value}" for axis in range(4) for value in range(1000)]
  classes = [t["content"] for t in added[4204:]]
  assert len(classes) == 80 and classes == sorted(classes)
  assert (classes[0], classes[-1]) == (COCO_FIRST, COCO_LAST) and "wine glass" in classes
  assert all(t["special"] for t in added)
  assert all(t["single_word"] and not t["normalized"] for t in added[4:4204])
  assert all(t["single_word"] and t["normalized"] for t in added[4204:])
  vocab = reference_json["model"]["vocab"]
  assert len(vocab) == 30_000 and all(vocab[t["content"]] == t["id"] for t in added)
  assert reference_json["normalizer"]["type"] == "BertNormalizer"
  assert reference_json["normalizer"]["lowercase"] is True
  assert reference_json["pre_tokenizer"]["type"] == "BertPreTokenizer"
  assert reference_json["model"]["type"] == "WordPiece"
  assert reference_json["post_processor"] is None  # encode adds no [SOS] / [EOS]


def test_special_tokens_are_read_from_the_file_and_match_the_masking_defaults(encoder):
  special = text.special_tokens()
  assert (special.pad, special.unk, special.sos, special.eos) == (0, 1, 2, 3)
  assert (special.first_sentinel, special.num_sentinels) == (4, 200)
  assert special.first_coord == (204, 1204, 2204, 3204) and special.coord_bins == 1000
  assert special.vocab_size == encoder.vocab_size == 30_000
  assert special.masking_ids() == TextSpecialIds()
  tokenizer = encoder.tokenizer
  assert tokenizer.id_to_token(special.coord_id(2, 17)) == "v2=17"
  assert tokenizer.id_to_token(TextSpecialIds().sentinel(199)) == "[S_199]"
  assert special.coord_axis(np.array([203, 204, 1203, 1204, 4203, 4204])).tolist() == \
      [-1, 0, 0, 1, 3, -1]


def test_special_tokens_refuse_a_vocabulary_with_shuffled_sentinels(reference_json, tmp_path):
  """The masking tells sentinels apart by id range, so the ids must be consecutive."""
  data = json.loads(json.dumps(reference_json))
  vocab = data["model"]["vocab"]
  vocab["[S_3]"], vocab["[S_4]"] = vocab["[S_4]"], vocab["[S_3]"]
  for token in data["added_tokens"]:
    if token["content"] in ("[S_3]", "[S_4]"):
      token["id"] = vocab[token["content"]]
  data["added_tokens"].sort(key=lambda token: token["id"])
  path = tmp_path / "shuffled.json"
  path.write_text(json.dumps(data))
  with pytest.raises(UsageError, match="sentinel .* consecutive ids"):
    text.special_tokens(str(path))


def test_missing_or_broken_vocabulary_files(tmp_path):
  with pytest.raises(UsageError, match="no such text tokenizer file"):
    text.TextEncoder(str(tmp_path / "nothing.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(UsageError, match="not a text tokenizer file"):
    text.TextEncoder(str(bad))


def test_encoding_follows_the_reference_pipeline(encoder, reference_json):
  vocab = reference_json["model"]["vocab"]
  ids = encoder("A Red CUBE, left of a Wine Glass.")
  words = ["a", "red", "cube", ",", "left", "of", "a", "wine glass", "."]
  assert ids.dtype == np.int32 and ids.tolist() == [vocab[w] for w in words]
  # Sentinels and coordinates are whole tokens only as separate words.
  assert encoder("v0=12 [S_3]").tolist() == [vocab["v0=12"], vocab["[S_3]"]]
  assert len(encoder("a[S_3]")) > 2
  # Unseen words split into word pieces, not [UNK].
  pieces = encoder("tokenizerology")
  assert len(pieces) > 1 and 1 not in pieces.tolist()


def test_synthetic_captions_round_trip(encoder):
  for index in range(10):
    caption = synthetic.make_sample(0, "train", index)["caption"]
    ids = encoder(caption)
    special = text.special_tokens()
    assert special.unk not in ids and not special.is_control(ids).any()
    assert encoder.detokenize(ids) == caption.lower()


def test_detokenize_reads_a_generated_sequence(encoder, reference_json):
  vocab = reference_json["model"]["vocab"]
  ids = ([2, vocab["a"], 5, vocab["dog"], 0, vocab["sits"], vocab["."], 3]
         + [vocab["cat"], 0, 0])
  # "dog" is a special (class) token in the reference file: decoding must keep it.
  assert encoder.detokenize(ids) == "a dog sits."
  assert encoder.detokenize(np.array(ids, np.int32)) == "a dog sits."
  assert text.detokenize([3, vocab["a"]]) == ""
  assert text.detokenize([vocab["a"], 1]) == "a [UNK]"
  assert encoder.decode(ids[:3]) == "[SOS] a [S_1]"


@pytest.mark.parametrize("ids,message", [
    ([5, 30_000], r"position 1: id 30000 is outside the vocabulary \[0, 30000\)"),
    ([-1], r"position 0: id -1 is outside"),
    ([[1, 2]], r"expected a 1-D sequence"),
    ([0.5], r"expected a 1-D sequence of integer token ids"),
])
def test_detokenize_rejects_bad_ids(ids, message):
  with pytest.raises(UsageError, match=message):
    text.detokenize(ids)


def test_encoders_pickle_by_path(encoder):
  """grain workers get the encoders pickled: small, and the same after unpickling."""
  caption = "a small red cube left of a blue sphere."
  det = synthetic.make_sample(0, "train", 1)["det"]
  for original, value in ((encoder, caption), (boxes.BoxEncoder(), det)):
    data = pickle.dumps(original)
    assert len(data) < 1000  # the path, not the 30,000-token tokenizer
    copy = pickle.loads(data)
    assert copy.path == original.path
    np.testing.assert_array_equal(copy(value), original(value))


def test_text_encoder_points_boxes_elsewhere(encoder):
  with pytest.raises(UsageError, match="BoxEncoder"):
    encoder({"boxes": np.zeros((0, 4), np.float32), "classes": []})


# Training a vocabulary ---------------------------------------------------------------------


def test_trained_vocabulary_keeps_the_reference_layout(trained, reference_json):
  with open(trained) as f:
    data = json.load(f)
  reference = reference_json["added_tokens"][:4204]
  assert data["added_tokens"][:4204] == reference  # same spellings, ids and flags
  for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
    assert data[key] == reference_json[key], key
  special = text.special_tokens(trained)
  assert special.masking_ids() == TextSpecialIds()
  assert special.first_coord == text.special_tokens().first_coord
  assert 4204 < special.vocab_size <= 4290


def test_trained_vocabulary_holds_the_class_names_as_tokens(trained, world_dir):
  tokenizer = text.load_text_tokenizer(trained)
  names = set(synthetic.CLASSES) | set(records.DatasetInfo.load(world_dir).metadata["classes"])
  # After the reserved tokens, in sorted order (so their ids do not depend on reading order).
  assert [tokenizer.id_to_token(4204 + i) for i in range(len(names))] == sorted(names)
  for name in names:
    assert tokenizer.encode(name, add_special_tokens=False).ids == \
        [tokenizer.token_to_id(name)]


def test_trained_vocabulary_encodes_captions_and_boxes(trained, world_dir):
  source = records.RecordSource(world_dir, "val")
  caption_encoder, box_encoder = text.TextEncoder(trained), boxes.BoxEncoder(trained)
  for sample in source:
    ids = caption_encoder(sample["caption"])
    assert ids.max() < caption_encoder.vocab_size
    assert caption_encoder.detokenize(ids) == sample["caption"].lower()
    det = sample["det"]
    ids = box_encoder(det)
    assert len(ids) == 5 * len(det["classes"])  # every class name is one token
    decoded = box_encoder.decode(ids)
    assert sorted(decoded["classes"]) == sorted(det["classes"])


def test_multi_word_class_names_become_single_tokens(tmp_path):
  captions = ["a traffic light next to a Fire Hydrant.", "two stop signs and a cat.",
              "the traffic light is red."]
  samples = [{"caption": caption,
              "det": {"boxes": np.array([[0.1, 0.1, 0.5, 0.5]], np.float32),
                      "classes": [name]}}
             for caption, name in zip(captions, ["Traffic Light", "fire  hydrant", "cat"])]
  data = str(tmp_path / "data")
  write_dataset(data, {"train": samples}, metadata={"classes": ["stop sign"]})
  out = text_train.train_text_tokenizer(data, str(tmp_path / "v.json"), vocab_size=4300,
                                        progress=False, log=lambda _: None)
  tokenizer = text.load_text_tokenizer(out)
  assert [tokenizer.id_to_token(4204 + i) for i in range(4)] == \
      ["cat", "fire hydrant", "stop sign", "traffic light"]
  assert text.TextEncoder(out)("A TRAFFIC LIGHT").tolist() == \
      [tokenizer.token_to_id("a"), tokenizer.token_to_id("traffic light")]


def test_training_reads_several_datasets_and_the_cli_pair(world_dir, tmp_path):
  other = str(tmp_path / "other")
  write_dataset(other, {"train": [{"caption": "zebras graze quietly."}]})
  parser = argparse.ArgumentParser()
  text_train.add_arguments(parser)
  out = str(tmp_path / "sub" / "cli.json")
  args = parser.parse_args(["--data", world_dir, other, "--out", out, "--vocab-size", "5000",
                            "--quiet"])
  text_train.run(args)
  encoder = text.TextEncoder(out)
  assert encoder.detokenize(encoder("zebras graze")) == "zebras graze"
  assert text.special_tokens(out).unk not in encoder("zebras graze quietly").tolist()


def test_training_refuses_datasets_without_captions(tmp_path):
  empty = str(tmp_path / "empty")
  write_dataset(empty, {"train": []})
  with pytest.raises(UsageError, match=f"{empty}: split 'train' has no captions"):
    text_train.train_text_tokenizer(empty, str(tmp_path / "v.json"), progress=False)
  blank = str(tmp_path / "blank")
  write_dataset(blank, {"train": [{"caption": "  "}, {"det": {
      "boxes": np.zeros((0, 4), np.float32), "classes": []}}]})
  with pytest.raises(UsageError, match=f"{blank}: split 'train' has 2 records but no "
                                       "non-empty caption"):
    text_train.train_text_tokenizer(blank, str(tmp_path / "v.json"), progress=False)
  with pytest.raises(RecordError, match="no split 'test'"):
    text_train.train_text_tokenizer(blank, str(tmp_path / "v.json"), split="test",
                                    progress=False)
  assert not (tmp_path / "v.json").exists()


def test_training_refuses_a_vocab_size_without_room_for_words(world_dir, tmp_path):
  with pytest.raises(UsageError, match=r"--vocab-size 4210 leaves no room for words: the "
                                       r"special tokens and 7 class names already take 4211"):
    text_train.train_text_tokenizer(world_dir, str(tmp_path / "v.json"), vocab_size=4210,
                                    progress=False)
