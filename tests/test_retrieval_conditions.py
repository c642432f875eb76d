"""Retrieved documents as conditions: training's pipeline transform and the errors of a
run that asks for them wrongly. (The index itself: test_retrieval.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from fourm.data.records import RecordSource
from fourm.errors import RecordError, UsageError
from fourm.retrieval import conditions
from fourm.retrieval.build import BuildOptions, build_index
from fourm.retrieval.encoders import TINY
from fourm.train import loop
from tests.helpers import small_config, write_train_data

RETRIEVED = ("ret1_tok_rgb", "ret1_caption", "ret2_tok_rgb")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return write_train_data(tmp_path_factory.mktemp("retrieval_data"))


@pytest.fixture(scope="module")
def index(data, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("index") / "index")
  build_index(data[0], out, BuildOptions(encoder=TINY, neighbours=8), progress=False,
              log=lambda _: None)
  return out


def retrieval_config(data, index, **overrides):
  config = small_config(data, eval_every=0, total_steps=2, **overrides)
  config.modalities = tuple(config.modalities) + RETRIEVED
  config.retrieval.index = index
  # The tiny random encoder's documents are all alike (cosines 0.85-0.98): the default
  # near-duplicate thresholds would skip most of them.
  config.retrieval.duplicate_threshold = config.retrieval.diversity_threshold = 1.01
  return config


def test_names_parse_into_documents():
  assert conditions.retrieved_names(("rgb",) + RETRIEVED) == {
      1: ("tok_rgb", "caption"), 2: ("tok_rgb",)}
  with pytest.raises(UsageError, match="numbered 1..K"):
    conditions.retrieved_names(("ret2_caption",))


def test_training_samples_read_their_neighbours_values(data, index):
  config = retrieval_config(data, index)
  retrieved = conditions.RetrievedDocuments(config.modalities, conditions.RetrievalConfig(
      index=index, data=tuple(data), split="train", duplicate_threshold=1.01,
      diversity_threshold=1.01), train=True)
  source = RecordSource(tuple(data), "train", None)
  bank = retrieved.reader.retriever.bank
  for record in range(6):
    sample = source[record]
    out = retrieved(sample, np.random.default_rng(record))
    keys = set()
    for k in (1, 2):
      row = [r for r in range(len(source))
             if np.array_equal(source[r]["tok_rgb"], out[f"ret{k}_tok_rgb"])]
      assert row, "a retrieved grid is some record's own tokens"
      keys.add(bank.keys[row[0]])
    assert sample["key"] not in keys, "a sample never retrieves itself"
    assert len(keys) == 2
    assert out["ret1_caption"] in {source[r]["caption"] for r in range(len(source))}
  # Evaluation: the whole query, so the same documents every time.
  evaluating = conditions.RetrievedDocuments(config.modalities, retrieved.reader.config,
                                             train=False)
  first = evaluating(source[0], np.random.default_rng(1))
  again = evaluating(source[0], np.random.default_rng(2))
  np.testing.assert_array_equal(first["ret1_tok_rgb"], again["ret1_tok_rgb"])


@pytest.mark.slow
def test_a_run_with_retrieved_documents_trains_evaluates_and_generates(data, index, tmp_path,
                                                                       capsys):
  config = retrieval_config(data, index)
  config.eval_every = 2
  batch = next(iter(loop.make_pipeline(config, split="train", train=True, batch_size=4)))
  assert batch["ret1_tok_rgb"]["input_mask"].any()
  assert not batch["ret1_tok_rgb"]["target_mask"].any(), "documents are inputs only"
  # Held-out samples are not in the index: they are encoded and searched.
  held_out = next(iter(loop.make_pipeline(config, split="val", train=False, batch_size=4)))
  assert held_out["ret1_caption"]["input_mask"].any()
  lines = []
  last = loop.train(config, str(tmp_path / "run"), log=lines.append)
  assert np.isfinite(last["loss"])
  assert any(line.startswith("eval at step 2") for line in lines)

  # Generation: the caption is the query, its documents join the conditions.
  from fourm.cli import main
  out = tmp_path / "generated"
  assert main(["generate", "--checkpoint", str(tmp_path / "run"), "--condition",
               "caption=a red cube left of a blue sphere.", "--targets", "tok_rgb",
               "--num-steps", "1", "--num-samples", "2", "--retrieve", "2",
               "--out", str(out)]) in (0, None)
  printed = capsys.readouterr().out
  assert printed.count("retrieved for sample") == 2
  tokens = np.load(out / "tokens.npz")
  assert tokens["ret1_tok_rgb"].shape == tokens["ret2_tok_rgb"].shape == (2, 64)
  assert not np.array_equal(tokens["ret1_tok_rgb"], tokens["ret2_tok_rgb"])
  assert main(["generate", "--checkpoint", str(tmp_path / "run"), "--condition",
               "caption=a cube.", "--targets", "tok_rgb", "--retrieve", "3", "--out",
               str(out)]) == 2
  assert "--retrieve 3: this model reads 1 to 2 documents" in capsys.readouterr().err


def test_a_run_that_asks_for_documents_wrongly_is_refused(data, index, tmp_path):
  config = small_config(data)
  config.modalities = tuple(config.modalities) + ("ret1_tok_rgb",)
  with pytest.raises(UsageError, match="config.retrieval.index"):
    loop.make_pipeline(config, split="train", train=True, batch_size=4)
  config = small_config(data)
  config.retrieval.index = index
  with pytest.raises(UsageError, match="no modality is a retrieved"):
    loop.make_pipeline(config, split="train", train=True, batch_size=4)
  # An index over other data: the keys of its rows are not the run's records'.
  other = str(tmp_path / "other")
  world = write_train_data(tmp_path / "other_data")
  build_index(world[0], other, BuildOptions(encoder=TINY, neighbours=4, split="val"),
              progress=False, log=lambda _: None)
  reader = conditions.DocumentReader(conditions.RetrievalConfig(
      index=other, data=tuple(data), split="train"))
  with pytest.raises(UsageError, match="build the index over the run's training data"):
    reader.values(0, ("tok_rgb",))


def test_the_modality_rule_asks_documents_for_the_parts_the_model_reads():
  assert conditions.parts_for(("rgb", "ret1_tok_rgb", "ret2_tok_rgb")) == ("rgb",)
  assert conditions.parts_for(("ret1_tok_rgb", "ret1_caption")) == ("rgb", "caption")
  assert conditions.parts_for(("ret1_det",)) == ()  # boxes are no part of a document
