"""CM3's causal-masked objective: the span statistics, the masked sample, the loss that
skips sentinels, and in-filling at generation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm import modalities
from fourm.data.masking import NO_LOSS, AlphasMixture, Cm3Objective, MaskSample
from fourm.data.masking import cm3
from fourm.errors import UsageError
from fourm.generation.sampler import Decoding, Sampler, sequence_entry
from fourm.models import fourm as fourm_model
from fourm.models import loss as loss_lib
from tokenizers_vq.text import TextSpecialIds

IDS = TextSpecialIds()
LAYOUT = modalities.SMALL_LAYOUT
WORDS = np.arange(1000, 1060, dtype=np.int32)  # ids well clear of the special ones


def text(length: int) -> np.ndarray:
  return np.append(WORDS[:length], np.int32(IDS.eos))


# The span statistics ---------------------------------------------------------------------


def test_span_counts_positions_and_overlaps_over_10000_draws():
  rng = np.random.default_rng(0)
  length = 60  # room for 30 spans: the clamp to 16 is the only one that binds
  counts = np.zeros(17, int)
  for _ in range(10_000):
    n = cm3.num_spans(length, rng)
    spans = cm3.draw_spans(length, n, rng)
    counts[n] += 1
    assert spans.shape == (n, 2)
    assert (spans[:, 0] < spans[:, 1]).all(), "a span is empty"
    assert (spans[:, 0] >= 0).all() and (spans[:, 1] <= length).all()
    assert (spans[1:, 0] > spans[:-1, 1]).all(), "spans overlap or touch"
  # Poisson(1) clamped to 1..16: P(1) = P(0) + P(1) = 2/e, P(k) = e^-1 / k! after.
  expected = np.array([0.0] + [2 / math.e] + [math.exp(-1) / math.factorial(k)
                                             for k in range(2, 17)])
  expected[16] += 1 - expected.sum()
  se = np.sqrt(expected * (1 - expected) / 10_000)
  np.testing.assert_array_less(np.abs(counts / 10_000 - expected), 4 * se + 1e-3)
  assert counts[0] == 0


def test_span_positions_are_uniform():
  # One span in 5 tokens: its (start, end) is one of the C(6, 2) = 15 boundary pairs.
  rng = np.random.default_rng(1)
  pairs = [tuple(cm3.draw_spans(5, 1, rng)[0]) for _ in range(15_000)]
  values, counts = np.unique(np.array(pairs), axis=0, return_counts=True)
  assert len(values) == 15
  chi2 = ((counts - 1000) ** 2 / 1000).sum()
  assert chi2 < 36.1, f"chi-square {chi2:.1f} over 14 degrees of freedom (p < 0.001)"


def test_short_texts_get_as_many_spans_as_fit():
  rng = np.random.default_rng(2)
  for length in range(1, 6):
    for _ in range(200):
      n = cm3.num_spans(length, rng, max_spans=16)
      assert 1 <= n <= (length + 1) // 2
      cm3.draw_spans(length, n, rng)  # fits


def test_the_causal_masked_sequence_moves_spans_to_the_end_and_scores_no_sentinel():
  ids = text(7)  # w0 .. w6 [EOS]
  sequence, scored = cm3.causal_masked(ids, np.array([[1, 2], [3, 5]]), IDS)
  w = WORDS
  s1, s2 = IDS.sentinel(1), IDS.sentinel(2)
  assert sequence.tolist() == [IDS.sos, w[0], s1, w[2], s2, w[5], w[6], IDS.eos,
                               s1, w[1], IDS.eos, s2, w[3], w[4], IDS.eos]
  tokens, labels = cm3.teacher_forced(sequence, scored)
  assert tokens.tolist() == sequence[:-1].tolist()
  np.testing.assert_array_equal(labels == NO_LOSS, IDS.is_sentinel(sequence[1:]))
  np.testing.assert_array_equal(labels[labels != NO_LOSS],
                                sequence[1:][~IDS.is_sentinel(sequence[1:])])
  with pytest.raises(ValueError, match="non-touching"):
    cm3.causal_masked(ids, np.array([[1, 3], [3, 5]]), IDS)


# The masked sample ------------------------------------------------------------------------


def masker(rate=1.0, input_budget=32, target_budget=64, names=("tok_depth", "caption")):
  mixture = AlphasMixture.uniform(names, 1.0, 1.0)
  return MaskSample(names, LAYOUT, input_budget, target_budget, mixture,
                    cm3=Cm3Objective(("caption",), rate))


def sample(length=20, seed=0):
  rng = np.random.default_rng(seed)
  return {"tok_depth": rng.integers(0, 8192, (8, 8)).astype(np.int32),
          "caption": WORDS[:length].copy()}


def undo(tokens: np.ndarray) -> np.ndarray:
  """The text back from a whole CM3 decoder sequence (its spans put back in place)."""
  tokens = tokens.tolist()
  assert tokens[0] == IDS.sos
  end = tokens.index(IDS.eos)
  body, tail = tokens[1:end + 1], tokens[end + 1:]
  spans, current = {}, None
  for token in tail:
    if IDS.is_sentinel(np.asarray(token)):
      current = token
      spans[current] = []
    elif token != IDS.eos:
      spans[current].append(token)
  out = []
  for token in body:
    out.extend(spans[token] if IDS.is_sentinel(np.asarray(token)) else [token])
  return np.asarray(out)


def test_a_cm3_sample_decodes_the_whole_text_and_skips_the_sentinels():
  transform = masker(target_budget=200)
  for seed in range(50):
    out = transform(sample(seed=seed), np.random.default_rng(seed))
    caption = out["caption"]
    assert not caption["input_mask"].any(), "a CM3 text gives the encoder none of itself"
    n = int(caption["target_mask"].sum())
    tokens, labels = caption["target_tokens"][:n], caption["target_labels"][:n]
    assert tokens[0] == IDS.sos
    # The labels are the sequence shifted by one, sentinels not scored.
    following = np.append(tokens[1:], labels[-1])
    np.testing.assert_array_equal(labels == NO_LOSS, IDS.is_sentinel(following))
    # Enough budget: the whole sequence, and it gives the text back.
    whole = np.append(tokens, labels[-1])
    assert whole[-1] == IDS.eos
    np.testing.assert_array_equal(undo(whole), text(20))
    # The budgets are spent as without CM3.
    assert out["tok_depth"]["input_mask"].sum() == 32
    assert out["tok_depth"]["target_mask"].sum() + n == min(200, 64 - 32 + n)


def test_a_small_target_budget_keeps_a_prefix():
  transform = masker(target_budget=10, names=("caption",), input_budget=0)
  out = transform(sample(), np.random.default_rng(0))
  caption = out["caption"]
  assert caption["target_mask"].sum() == 10
  full = masker(target_budget=200, names=("caption",), input_budget=0)(
      sample(), np.random.default_rng(0))["caption"]
  np.testing.assert_array_equal(caption["target_tokens"][:10], full["target_tokens"][:10])


def test_the_rate_decides_how_often_a_text_is_cm3():
  transform = masker(rate=0.3)
  starts = [transform(sample(seed=s), np.random.default_rng(s))["caption"]["target_tokens"][0]
            for s in range(1000)]
  share = np.mean(np.asarray(starts) == IDS.sos)
  assert abs(share - 0.3) < 0.05
  # The rest are 4M's span targets, starting with a sentinel (a window may start at any).
  others = np.asarray(starts)[np.asarray(starts) != IDS.sos]
  assert (IDS.is_sentinel(others) | (others == IDS.pad)).all()


def test_bad_cm3_settings_are_refused():
  mixture = AlphasMixture.uniform(("tok_depth", "caption"), 1.0, 1.0)
  with pytest.raises(UsageError, match="sequence modalities"):
    MaskSample(("tok_depth", "caption"), LAYOUT, 8, 8, mixture,
               cm3=Cm3Objective(("tok_depth",)))
  with pytest.raises(UsageError, match="not among"):
    MaskSample(("tok_depth", "caption"), LAYOUT, 8, 8, mixture, cm3=Cm3Objective(("det",)))
  with pytest.raises(UsageError, match="rate"):
    Cm3Objective(("caption",), rate=1.5)


# The loss skips sentinels, the decoder still reads them ------------------------------------


@pytest.fixture(scope="module")
def model():
  config = fourm_model.FourMConfig(dim=64, encoder_depth=2, decoder_depth=2, num_heads=4)
  return fourm_model.FourM(config, ("tok_depth", "caption"), LAYOUT, 64, 64,
                           rngs=nnx.Rngs(0))


def cm3_batch(seed=0):
  out = masker(target_budget=48)(sample(seed=seed), np.random.default_rng(seed))
  return {name: {k: v[None] for k, v in entry.items()} for name, entry in out.items()}


def test_no_loss_slots_carry_no_loss_but_are_read(model):
  batch = cm3_batch()
  labels = batch["caption"]["target_labels"][0]
  n = int(batch["caption"]["target_mask"].sum())
  assert (labels[:n] == NO_LOSS).any()
  output = model(batch)
  assert int(output.valid.sum()) == int(output.scored.sum()) + int((labels[:n] < 0).sum())
  losses = loss_lib.token_losses(model, output)
  assert float(jnp.abs(jnp.where(output.valid & ~output.scored, losses, 0)).sum()) == 0.0
  loss, metrics = loss_lib.fourm_loss(model, output)
  assert int(metrics["tokens/caption"]) == int((labels[:n] >= 0).sum())
  # The dense path agrees with the grouped heads.
  dense_loss, _ = loss_lib.fourm_loss(model, output, heads="dense")
  np.testing.assert_allclose(float(loss), float(dense_loss), rtol=1e-5)
  # A sentinel position is read: change its token and the positions after it change.
  sentinel = int(np.flatnonzero(IDS.is_sentinel(batch["caption"]["target_tokens"][0][:n]))[0])
  changed = {**batch, "caption": {**batch["caption"]}}
  tokens = batch["caption"]["target_tokens"].copy()
  tokens[0, sentinel] = IDS.sentinel(150)
  changed["caption"]["target_tokens"] = tokens
  _, changed_metrics = loss_lib.fourm_loss(model, model(changed))
  assert float(changed_metrics["loss/caption"]) != float(metrics["loss/caption"])


# In-filling at generation -----------------------------------------------------------------


def test_cm3_infilling_writes_what_the_decoder_predicts_after_the_prompt(model):
  given = np.array([WORDS[0], IDS.sentinel(3), WORDS[2], WORDS[3], IDS.sentinel(9), WORDS[5]])
  rng = np.random.default_rng(0)
  known = {"tok_depth": {"tokens": rng.integers(0, 8192, (1, 64)).astype(np.int32),
                         "input_mask": np.ones((1, 64), bool)},
           "caption": sequence_entry([given], 256, append_eos=False)}
  decoding = Decoding(target="caption", temperature=0.0, infill="cm3", max_new_tokens=4)
  out = Sampler(model).generate(known, decoding, jax.random.key(0))
  filled = out["caption"]["input_tokens"][0][out["caption"]["input_mask"][0]]
  # The given words stay, in order, around the spans.
  words = [t for t in filled.tolist() if t in given.tolist()]
  assert words == [WORDS[0], WORDS[2], WORDS[3], WORDS[5]]
  assert filled[-1] == IDS.eos and not IDS.is_sentinel(filled).any()
  # Greedy: each span is the decoder's argmax after the prompt, read as training reads
  # a CM3 target (teacher forcing, [SOS] first).
  first = filled.tolist().index(WORDS[2])
  second = filled.tolist().index(WORDS[5])
  span1, span2 = filled[1:first], filled[first + 2:second]
  prompt, gaps = cm3.infill_prompt(given, IDS)
  assert gaps == 2
  sequence = np.concatenate([prompt, span1, [IDS.eos, IDS.sentinel(2)], span2])
  entry = {"input_tokens": np.zeros((1, 256), np.int32),
           "input_mask": np.zeros((1, 256), bool),
           "target_tokens": np.zeros((1, 256), np.int32),
           "target_labels": np.zeros((1, 256), np.int32),
           "target_mask": np.zeros((1, 256), bool)}
  entry["target_tokens"][0, :len(sequence)] = sequence
  entry["target_mask"][0, :len(sequence)] = True
  context, valid = model.encode({"tok_depth": known["tok_depth"]})
  hidden = model.decode({"caption": entry}, context, valid).hidden[0, :len(sequence)]
  predicted = np.asarray(jnp.argmax(model.logits("caption", hidden), -1))
  for start, span in ((len(prompt) - 1, span1),
                      (len(prompt) + len(span1) + 1, span2)):
    np.testing.assert_array_equal(predicted[start:start + len(span)], span)


def test_cm3_infilling_needs_gaps_and_conditions(model):
  decoding = Decoding(target="caption", infill="cm3", max_new_tokens=2)
  complete = {"caption": sequence_entry([WORDS[:3]], 256)}
  with pytest.raises(UsageError, match="no sentinel"):
    Sampler(model).generate(complete, decoding, jax.random.key(0))
  gap_only = {"caption": sequence_entry([np.array([WORDS[0], IDS.sentinel(1)])], 256,
                                        append_eos=False)}
  with pytest.raises(UsageError, match="condition"):
    Sampler(model).generate(gap_only, decoding, jax.random.key(0))
  with pytest.raises(UsageError, match="infill"):
    Decoding(target="caption", infill="bert")


# Training with it -------------------------------------------------------------------------


def test_fourm_train_takes_the_cm3_option_and_refuses_to_resume_without_it(tmp_path):
  from fourm import config as config_lib
  from fourm.train import loop
  from tests.helpers import small_config, write_train_data
  data = write_train_data(tmp_path / "data")
  config = small_config(data, total_steps=2, eval_every=0)
  config_lib.apply_override(config, "cm3.modalities=caption")
  config_lib.apply_override(config, "cm3.rate=1.0")
  pipeline = loop.make_pipeline(config, split="train", train=True, batch_size=4)
  batch = next(iter(pipeline))
  starts = batch["caption"]["target_tokens"][:, 0]
  has_target = batch["caption"]["target_mask"].any(1)
  assert (starts[has_target] == IDS.sos).all() and has_target.any()
  assert (batch["caption"]["target_labels"] == NO_LOSS).any()
  last = loop.train(config, str(tmp_path / "run"), log=lambda _: None)
  assert np.isfinite(last["loss"])
  plain = small_config(data, total_steps=4, eval_every=0)
  with pytest.raises(UsageError, match="cm3"):
    loop.train(plain, str(tmp_path / "run"), log=lambda _: None)
