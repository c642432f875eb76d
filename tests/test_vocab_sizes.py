"""A run's own vocabularies (config.model.vocab_sizes): the model keeps rows and logits
for the tokenizer's codes only, and every id is checked against them, not the registry's."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from fourm import config as config_lib
from fourm import modalities
from fourm.data.masking import AlphasMixture, MaskSample
from fourm.errors import RecordError, UsageError
from fourm.generation import loading
from fourm.models import fourm as fourm_model
from fourm.models.flops import forward_flops
from fourm.train import state as state_lib
from tests.test_model import forward, random_batch

LAYOUT = modalities.SMALL_LAYOUT
NAMES = ("rgb", "tok_depth", "caption")
VOCABS = (("caption", 500), ("tok_depth", 128))


def _config(**overrides) -> fourm_model.FourMConfig:
  return fourm_model.FourMConfig(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2,
                                 **overrides)


def test_model_tables_and_logits_follow_the_run_vocabularies():
  model = fourm_model.FourM(_config(vocab_sizes=VOCABS), NAMES, LAYOUT, 40, 40,
                            rngs=nnx.Rngs(0))
  assert model.head_table("tok_depth").shape == (128, 32)
  assert model.head_table("caption").shape == (500, 32)
  assert model.encoder_embeddings["tok_depth"].token_emb.embedding.shape == (128, 32)
  assert model.spec("tok_depth").vocab_size == 128 and model.spec("rgb").vocab_size is None
  batch = random_batch(NAMES, input_budget=40, target_budget=40)
  for name, size in VOCABS:  # the helper draws ids from the registry's vocabularies
    for key in ("tokens", "input_tokens", "target_tokens", "target_labels"):
      if key in batch[name]:
        batch[name][key] = batch[name][key] % size
  out = forward(model, batch)
  assert model.logits("tok_depth", out.hidden).shape[-1] == 128
  # The heads' arithmetic shrinks with the vocabularies.
  full, small = (forward_flops(config, 40, 40, {"tok_depth": 20, "caption": 20})
                 for config in (_config(), _config(vocab_sizes=VOCABS)))
  assert full - small == pytest.approx(2 * 32 * (20 * (8192 - 128) + 20 * (30_000 - 500)))


def test_bad_vocabularies_are_refused():
  with pytest.raises(ValueError, match="not among"):
    fourm_model.FourM(_config(vocab_sizes=(("tok_normal", 64),)), NAMES, LAYOUT, 40, 40,
                      rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="continuous"):
    modalities.with_vocab_size(modalities.get("rgb"), {"rgb": 10})
  with pytest.raises(ValueError, match="expected an int >= 1"):
    modalities.with_vocab_size(modalities.get("tok_depth"), {"tok_depth": 0})


def test_train_config_vocab_sizes_reach_the_model():
  config = config_lib.load_config("configs/tiny_synthetic.py",
                                  ["modalities=rgb,tok_depth,tok_semseg"])
  # Entries of modalities the run leaves out (tok_rgb, caption, ...) are dropped.
  assert state_lib.model_config(config).vocab_sizes == (("tok_depth", 128),
                                                       ("tok_semseg", 256))
  config.model.vocab_sizes = {"tok_dpeth": 128}
  with pytest.raises(UsageError, match="'tok_dpeth', not a known modality"):
    state_lib.model_config(config)
  config.model.vocab_sizes = {"tok_depth": -1}
  with pytest.raises(UsageError, match="vocabulary size -1"):
    state_lib.model_config(config)


def test_masking_checks_ids_against_the_run_vocabulary():
  names = ("rgb", "tok_depth")
  masker = MaskSample(names, LAYOUT, 16, 16, AlphasMixture.uniform(names),
                      vocab_sizes={"tok_depth": 128})
  grid = LAYOUT.grid
  sample = {"rgb": np.zeros((LAYOUT.resolution, LAYOUT.resolution, 3), np.uint8),
            "tok_depth": np.full((grid, grid), 127, np.int32)}
  masker(sample, np.random.default_rng(0))
  sample["tok_depth"] = np.full((grid, grid), 128, np.int32)  # fine for the registry's 8192
  with pytest.raises(RecordError, match=r"tok_depth.*token id 128 outside the vocabulary "
                                        r"\[0, 128\)"):
    masker(sample, np.random.default_rng(0))


def test_a_tokenizer_with_more_codes_than_the_model_is_refused():
  from fourm.data import patch_tokens
  depth = patch_tokens.quantizer_for("tok_depth")  # 128 codes
  loading.check_tokenizer("tok_depth", depth, LAYOUT, {"tok_depth": 128})
  with pytest.raises(UsageError, match="128 codes, more than the model's vocabulary of 64"):
    loading.check_tokenizer("tok_depth", depth, LAYOUT, {"tok_depth": 64})


def test_generation_checks_given_token_ids_against_the_model_vocabulary():
  from fourm.generation.conditions import ConditionEncoder
  from fourm.generation.generator import Generator
  model = fourm_model.FourM(_config(vocab_sizes=VOCABS), NAMES, LAYOUT, 40, 40,
                            rngs=nnx.Rngs(0))
  generator = Generator(model, {})
  grid = LAYOUT.grid
  _, entry = generator.encoder.encode("tok_depth", [np.full((grid, grid), 127, np.int32)])
  assert entry["tokens"].max() == 127
  with pytest.raises(UsageError, match=r"--condition tok_depth: .*token id 128 outside the "
                                       r"vocabulary \[0, 128\)"):
    generator.encoder.encode("tok_depth", [np.full((grid, grid), 128, np.int32)])
  # Without the model's sizes the registry's 8,192 would let it through.
  registry = ConditionEncoder(NAMES, NAMES, LAYOUT, {})
  registry.encode("tok_depth", [np.full((grid, grid), 128, np.int32)])


def test_generation_refuses_text_ids_beyond_the_model_caption_vocabulary():
  from fourm.generation.generator import Generator
  model = fourm_model.FourM(_config(vocab_sizes=(("caption", 5000),)), NAMES, LAYOUT, 40, 40,
                            rngs=nnx.Rngs(0))
  generator = Generator(model, {})  # the reference's 30k WordPiece vocabulary
  # In that vocabulary "a" is id 4321 and "cube" 12798.
  _, entry = generator.encoder.encode("caption", ["a"])
  assert entry["input_tokens"][0, 0] == 4321
  with pytest.raises(UsageError, match=r"--condition caption: .* gives token id 12798, "
                                       r"outside the model's caption vocabulary of 5000"):
    generator.encoder.encode("caption", ["a red cube"])
