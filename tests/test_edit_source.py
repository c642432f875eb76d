"""An edit's source scene as tokens ("src_<grid>", fourm/modalities.py): the registry's
variant, tokenizing into it, the mixture that shows all of it beside every source, and a
tuned model that reads it from the given image."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fourm import cli, modalities
from fourm.data import patch_tokens
from fourm.data.instructions import EDITED_DIR
from fourm.train import loop
from tests.helpers import small_config

INSTRUCTION_TEXT = 32  # the instruction's tokens at most (its registry max_length)


@pytest.fixture(scope="module")
def edits(tmp_path_factory):
  """12 edit instructions, the edited scenes' tok_rgb (the answers) and the source
  scenes' src_tok_rgb, both by the ground-truth patch quantizer."""
  root = tmp_path_factory.mktemp("edits")
  data, answers, sources = (str(root / name) for name in ("edits", "answers", "sources"))
  assert cli.main(["synth", "--out", data, "--num", "12", "--tasks", "edit", "--workers", "1",
                   "--quiet"]) == 0
  assert cli.main(["tokenize", "--data", os.path.join(data, EDITED_DIR), "--out", answers,
                   "--method", "patches", "--modalities", "tok_rgb", "--quiet"]) == 0
  assert cli.main(["tokenize", "--data", data, "--out", sources, "--method", "patches",
                   "--modalities", "src_tok_rgb", "--quiet"]) == 0
  return data, answers, sources


def edit_config(edits, **overrides):
  config = small_config(edits, **overrides)
  config.modalities = ("rgb", "instruction", "tok_rgb", "src_tok_rgb")
  config.alphas.kind, config.alphas.sources, config.alphas.weights = (
      "sources2all_and_all2all", ("rgb",), (1, 0))
  config.input_budget = 2 * 64 + INSTRUCTION_TEXT
  config.target_budget = 64
  return config


def test_the_source_variant_is_its_grids_input_twin():
  spec, base = modalities.get("src_tok_rgb"), modalities.get("tok_rgb")
  assert (spec.kind, spec.vocab_size, spec.source, spec.tokenizer) == (
      base.kind, base.vocab_size, base.source, base.tokenizer)
  assert spec.can_input and not spec.can_target and spec.derived
  assert modalities.get("src_tok_rgb", {"tok_rgb": 1024}).vocab_size == 1024
  assert modalities.grid_modality_of("rgb") == "tok_rgb", "the base stays rgb's grid"
  assert modalities.input_variant_base("src_tok_rgb") == "tok_rgb"
  assert modalities.input_variant_base("ret2_caption") == "caption"
  assert modalities.input_variant_base("tok_rgb") is None
  with pytest.raises(ValueError, match="an edit's source is a registered token grid, not "
                                       "sequence"):
    modalities.get("src_caption")
  with pytest.raises(KeyError, match="src_NAME"):
    modalities.get("src_no_such_grid")


def test_the_source_tokens_are_the_source_scenes_and_the_answer_the_edited_ones(edits):
  from fourm.data.instructions import regenerate
  from fourm.data.records import RecordSource
  config = edit_config(edits)
  batch = next(iter(loop.make_pipeline(config, split="train", train=False, batch_size=4)))
  records = RecordSource((edits[0],), "train", ("key", "rgb"))
  quantizer = patch_tokens.quantizer_for("tok_rgb")
  for row, index in enumerate(batch["meta"]["record"]):
    record = records[int(index)]
    sample = regenerate(edits[0], record["key"])
    np.testing.assert_array_equal(batch["src_tok_rgb"]["tokens"][row],
                                  quantizer.encode(record["rgb"], 8).ravel())
    np.testing.assert_array_equal(batch["tok_rgb"]["tokens"][row],
                                  quantizer.encode(sample.answer["rgb"], 8).ravel())
    assert not np.array_equal(batch["tok_rgb"]["tokens"][row],
                              batch["src_tok_rgb"]["tokens"][row]), "an edit is visible"
  # Every sample reads all of its source scene and its image, and predicts the answer.
  assert batch["src_tok_rgb"]["input_mask"].all()
  assert batch["rgb"]["input_mask"].all()
  assert not batch["src_tok_rgb"]["target_mask"].any(), "the source is an input only"
  assert batch["tok_rgb"]["target_mask"].any() and not batch["tok_rgb"]["input_mask"].any()


@pytest.mark.slow
def test_a_tuned_model_reads_the_source_from_the_given_image(edits, tmp_path, capsys):
  run = str(tmp_path / "run")
  last = loop.train(edit_config(edits, total_steps=2, eval_every=0), run,
                    log=lambda _: None)
  assert np.isfinite(last["loss"])
  out = tmp_path / "generated"
  assert cli.main(["generate", "--checkpoint", run, "--data", edits[0], "--use", "rgb",
                   "--split", "train", "--indices", "0,1", "--instruction",
                   "make the cube blue", "--targets",
                   "tok_rgb", "--num-steps", "1", "--out", str(out)]) in (0, None)
  tokens = np.load(out / "tokens.npz")
  from fourm.data.records import RecordSource
  source = RecordSource((edits[0],), "train", ("rgb",))
  quantizer = patch_tokens.quantizer_for("src_tok_rgb")
  for row in range(2):  # the given image, tokenized by the source's tokenizer
    np.testing.assert_array_equal(tokens["src_tok_rgb"][row],
                                  quantizer.encode(source[row]["rgb"], 8).ravel())
  assert tokens["tok_rgb"].shape == (2, 64)
  # The grid shows the source's tokens decoded, apart from the given image.
  from fourm.generation.chain import default_chain
  from fourm.generation.generator import Generator
  generation = Generator.from_checkpoint(run).generate(
      {"rgb": source[0]["rgb"], "instruction": "make the cube blue"},
      default_chain(["tok_rgb"]))
  assert {"rgb", "rgb (source tokens)"} <= set(generation.samples()[0])


@pytest.mark.slow
def test_an_edit_model_tunes_from_a_pretrained_run_with_the_source_starting_fresh(edits,
                                                                                   tmp_path):
  pretrained = str(tmp_path / "pretrained")
  config = small_config(edits[:2], total_steps=1, eval_every=0)
  config.modalities, config.alphas.kind = ("rgb", "tok_rgb"), "all2all"
  loop.train(config, pretrained, log=lambda _: None)
  lines = []
  last = loop.train(edit_config(edits, init=pretrained, total_steps=2, eval_every=0),
                    str(tmp_path / "tuned"), log=lines.append)
  assert np.isfinite(last["loss"])
  copied = next(line for line in lines if line.startswith("initialized from"))
  assert "new here: encoder_embeddings/instruction, encoder_embeddings/src_tok_rgb" in copied
