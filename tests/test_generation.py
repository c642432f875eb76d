"""The sampler on a small random model: decoding mechanics, guidance, determinism.

Quality on a trained model is tested in test_generation_trained.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm import modalities
from fourm.data import synthetic
from tokenizers_vq.text import TextSpecialIds
from fourm.errors import UsageError
from fourm.generation import evaluate, loading
from fourm.generation import guidance as guidance_lib
from fourm.generation.chain import decoding_from_dict, default_chain, run_chain
from fourm.generation.conditions import mask_region
from fourm.generation.guidance import Guidance
from fourm.generation import schedules, step_plan
from fourm.generation.decode_loops import DenseSteps, LoopSettings, dense_loop
from fourm.generation.sampler import Decoding, Sampler, fill_spans, sequence_entry
from fourm.models import fourm as fourm_model
from fourm.models import incremental
from fourm.nn.init import initialize

LAYOUT = modalities.SMALL_LAYOUT
NAMES = ("rgb", "tok_rgb", "tok_depth", "caption", "det")
IDS = TextSpecialIds()
B = 2
CAPTION = np.array([4321, 5135, 12798, 4296], np.int32)  # "a red cube."


@pytest.fixture(scope="module")
def model():
  config = fourm_model.FourMConfig(dim=64, encoder_depth=2, decoder_depth=2, num_heads=4)
  return initialize(lambda rngs: fourm_model.FourM(config, NAMES, LAYOUT, 64, 64, rngs=rngs))


@pytest.fixture(scope="module")
def sampler(model):
  return Sampler(model)


def caption_known(batch=B):
  return {"caption": sequence_entry([CAPTION] * batch, 256)}


def rgb_known(batch=B, seed=0):
  rng = np.random.default_rng(seed)
  return {"rgb": {"tokens": rng.uniform(-1, 1, (batch, 64, 64, 3)).astype(np.float32),
                  "input_mask": np.ones((batch, 64), bool)}}


def generate(sampler, known, seed=0, **settings):
  return sampler.generate(known, Decoding(**settings), jax.random.key(seed))


# The key/value cache ----------------------------------------------------------------------


@pytest.mark.slow
def test_cached_decoding_matches_the_full_decoder(model):
  rng = np.random.default_rng(0)
  steps = 12
  ids = rng.integers(4, 30_000, (B, 256)).astype(np.int32)
  condition = {"tok_rgb": {"tokens": rng.integers(0, 100, (B, 64)).astype(np.int32),
                           "input_mask": rng.random((B, 64)) < 0.5}}
  context, valid = model.encode(condition)
  caption = {"input_tokens": np.zeros((B, 256), np.int32),
             "input_mask": np.zeros((B, 256), bool), "target_tokens": ids,
             "target_labels": ids, "target_mask": np.arange(256)[None].repeat(B, 0) < steps}
  full = model.decode({"caption": caption}, context, valid).hidden[:, :steps]
  cache = incremental.init_cache(model, context, valid, 32)
  hidden = []
  for position in range(steps):
    h, cache = incremental.decode_step(model, "caption", cache, jnp.asarray(ids[:, position]),
                                       jnp.int32(position))
    hidden.append(h)
  np.testing.assert_allclose(np.stack(hidden, 1), full, atol=2e-5)


# Dense targets ------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_position_is_decided_and_valid(sampler):
  known = caption_known()
  out = generate(sampler, known, target="tok_rgb", num_steps=2)
  tokens = out["tok_rgb"]["tokens"]
  assert tokens.shape == (B, 64) and out["tok_rgb"]["input_mask"].all()
  assert tokens.min() >= 0 and tokens.max() < modalities.get("tok_rgb").vocab_size
  assert out["caption"] is known["caption"]  # conditions pass through untouched


@pytest.mark.slow
def test_same_seed_same_output_other_seed_other_output(sampler):
  settings = dict(target="tok_rgb", method="roar", num_steps=2)
  first = generate(sampler, caption_known(), seed=3, **settings)
  again = generate(sampler, caption_known(), seed=3, **settings)
  other = generate(sampler, caption_known(), seed=4, **settings)
  np.testing.assert_array_equal(first["tok_rgb"]["tokens"], again["tok_rgb"]["tokens"])
  assert (first["tok_rgb"]["tokens"] != other["tok_rgb"]["tokens"]).mean() > 0.5


@pytest.mark.slow
def test_one_greedy_step_is_the_argmax_of_one_forward_pass(model, sampler):
  known = rgb_known()
  out = generate(sampler, known, target="tok_depth", num_steps=1, temperature=0.0)
  n = 64
  target = {"tokens": np.zeros((B, n), np.int32), "input_mask": np.zeros((B, n), bool),
            "target_mask": np.ones((B, n), bool)}
  context, valid = model.encode({**known, "tok_depth": target}, 64)
  hidden = model.decode({"tok_depth": target}, context, valid, n).hidden
  expected = np.asarray(jnp.argmax(model.logits("tok_depth", hidden), -1))
  np.testing.assert_array_equal(out["tok_depth"]["tokens"], expected)


@pytest.mark.slow
def test_in_painting_keeps_the_given_tokens(sampler):
  rng = np.random.default_rng(1)
  given = {"tokens": rng.integers(0, 500, (B, 64)).astype(np.int32),
           "input_mask": np.ones((B, 64), bool)}
  partial = mask_region(given, (0.25, 0.25, 0.75, 0.75), LAYOUT.grid)
  hidden = ~partial["input_mask"]
  assert hidden.sum(1).tolist() == [16, 16]  # the 4 x 4 patches in the middle
  out = generate(sampler, {**rgb_known(), "tok_rgb": partial}, target="tok_rgb", num_steps=4)
  tokens = out["tok_rgb"]["tokens"]
  np.testing.assert_array_equal(tokens[~hidden], given["tokens"][~hidden])
  assert (tokens[hidden] != given["tokens"][hidden]).mean() > 0.9
  outside = mask_region(given, (0.25, 0.25, 0.75, 0.75), LAYOUT.grid, outside=True)
  assert ((~outside["input_mask"]) == partial["input_mask"]).all()


def test_step_counts_spread_each_samples_tokens_over_the_schedule():
  schedule = (3, 10, 20, 31)
  explicit = step_plan.step_counts(np.array([64, 64]), 8, schedule)  # the list sets S
  assert explicit.tolist() == [list(schedule)] * 2
  cosine = step_plan.step_counts(np.array([64, 2, 0]), 4, "cosine")
  assert cosine[0].tolist() == schedules.tokens_per_step(64, 4, "cosine").tolist()
  assert cosine[0].sum() == 64 and cosine[0][0] < cosine[0][-1]  # few first, many last
  # Fewer tokens left than steps: one per step, then none; nothing left: no step commits.
  assert cosine[1:].tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]
  with pytest.raises(UsageError, match="adding up"):
    step_plan.step_counts(np.array([64, 60]), 8, schedule)


@pytest.mark.slow
def test_each_step_commits_exactly_its_count(model):
  """The dense loop commits counts[:, s] tokens at step s: a loop stopped after the
  first one or two steps of a schedule has decided exactly their sum."""
  schedule = (3, 10, 20, 31)
  condition = {name: {key: jnp.asarray(value) for key, value in entry.items()}
               for name, entry in caption_known().items()}
  visible = step_plan.visible_tokens(caption_known())
  for steps in (1, 2):
    counts = np.tile(schedule[:steps], (B, 1))
    budgets = step_plan.step_budgets(np.zeros(B, int), counts, 64, visible, feed_back=True)
    shapes = step_plan.step_shapes(step_plan.bucketed_budgets(budgets))
    settings = LoopSettings(target="tok_rgb", method="roar", top_k=0, top_p=0.0,
                            contrastive_top_k=0, num_streams=1, budgets=shapes.shapes)
    # -1 marks undecided positions: a committed position holds a real id afterwards.
    tokens = dense_loop(model, settings, condition, jnp.full((B, 64), -1, jnp.int32),
                        jnp.zeros((B, 64), bool),
                        DenseSteps.of_schedule(counts, np.ones(steps), shapes.of_step),
                        jnp.ones(1), jax.random.key(0))
    decided = (np.asarray(tokens) >= 0).sum(1)
    assert decided.tolist() == [sum(schedule[:steps])] * B


@pytest.mark.slow
def test_explicit_schedule_must_add_up(sampler):
  with pytest.raises(UsageError, match="adding up"):
    generate(sampler, caption_known(), target="tok_rgb", token_schedule=(10, 10))


# Guidance ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_guidance_weight_zero_is_the_unguided_path(sampler):
  for target, known in (("tok_rgb", caption_known()), ("caption", rgb_known())):
    plain = generate(sampler, known, seed=5, target=target, max_new_tokens=12, num_steps=2)
    weight_zero = generate(sampler, known, seed=5, target=target, max_new_tokens=12,
                           num_steps=2, guidance=Guidance(scale=1.0))
    key = "tokens" if target == "tok_rgb" else "input_tokens"
    np.testing.assert_array_equal(plain[target][key], weight_zero[target][key])
    guided = generate(sampler, known, seed=5, target=target, max_new_tokens=12,
                      num_steps=2, guidance=Guidance(scale=4.0))
    assert (guided[target][key] != plain[target][key]).any()


def test_combine_is_the_weighted_sum_over_the_unconditional():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 2, 5)).astype(np.float32))  # 3 streams + uncond
  weights = jnp.asarray([2.0, -0.5, 1.5])
  expected = logits[3] + sum(w * (logits[k] - logits[3]) for k, w in enumerate(weights))
  np.testing.assert_allclose(guidance_lib.combine(logits, weights), expected, rtol=1e-5,
                             atol=1e-5)
  cd = guidance_lib.combine(logits, weights, contrastive_top_k=2)
  top2 = np.argsort(-np.asarray(logits[0]), -1)[..., :2]
  kept = np.isfinite(np.asarray(cd)) & (np.asarray(cd) > -1e29)
  assert kept.sum(-1).tolist() == [2, 2]
  assert all(set(np.flatnonzero(kept[i])) == set(top2[i]) for i in range(2))


@pytest.mark.slow
def test_contrastive_top_1_is_the_conditional_argmax(sampler):
  known = {**caption_known(), **rgb_known()}
  greedy = generate(sampler, known, target="tok_depth", num_steps=1, temperature=0.0)
  cdk = generate(sampler, known, target="tok_depth", num_steps=1, temperature=1.0,
                 guidance=Guidance(scale=3.0, contrastive_top_k=1))
  np.testing.assert_array_equal(greedy["tok_depth"]["tokens"], cdk["tok_depth"]["tokens"])


@pytest.mark.slow
def test_one_condition_weight_of_one_is_that_condition_alone(sampler):
  known = {**caption_known(), **rgb_known()}
  alone = generate(sampler, known, seed=2, target="tok_depth", conditions=("rgb",),
                   num_steps=2)
  weighted = generate(sampler, known, seed=2, target="tok_depth", num_steps=2,
                      guidance=Guidance(condition_weights={"rgb": 1.0}))
  np.testing.assert_array_equal(alone["tok_depth"]["tokens"], weighted["tok_depth"]["tokens"])


def test_streams_for_multi_condition_and_negative_guidance():
  conditions = {**caption_known(), **rgb_known()}
  negative = {"caption": sequence_entry([CAPTION[:2]] * B, 256)}
  sets, weights = guidance_lib.streams(
      conditions, Guidance(condition_weights={"caption": 3.0, "rgb": 1.0},
                           negative_scale=2.0), negative)
  assert weights == [3.0, 1.0, -2.0] and len(sets) == 4
  visible = [{name: bool(e["input_mask"].any()) for name, e in s.items()} for s in sets]
  assert visible == [{"caption": True, "rgb": False}, {"caption": False, "rgb": True},
                     {"caption": True, "rgb": True}, {"caption": False, "rgb": False}]
  assert sets[2]["caption"] is negative["caption"]
  with pytest.raises(UsageError, match="need guidance"):
    guidance_lib.streams(conditions, Guidance(), negative)
  with pytest.raises(UsageError, match="not conditions"):
    guidance_lib.streams(conditions, Guidance(condition_weights={"det": 1.0}))


@pytest.mark.slow
def test_negative_prompt_changes_the_output(sampler):
  known = caption_known()
  negative = {"caption": sequence_entry([np.array([4321, 5135], np.int32)] * B, 256)}
  guided = sampler.generate(known, Decoding("tok_rgb", num_steps=2,
                                            guidance=Guidance(scale=2.0)), jax.random.key(0))
  pushed = sampler.generate(known, Decoding("tok_rgb", num_steps=2,
                                            guidance=Guidance(scale=2.0, negative_scale=3.0)),
                            jax.random.key(0), negatives=negative)
  assert (guided["tok_rgb"]["tokens"] != pushed["tok_rgb"]["tokens"]).any()


@pytest.mark.slow
def test_changing_temperatures_and_guidance_weights_does_not_recompile(sampler):
  known = caption_known()
  settings = [dict(temperature=1.0, guidance=Guidance(scale=2.0)),
              dict(temperature=0.5, temperature_end=0.1, temperature_schedule="cosine",
                   guidance=Guidance(scale=3.0))]
  generate(sampler, known, target="tok_rgb", num_steps=3, **settings[0])
  traced = sampler.num_traces
  generate(sampler, known, target="tok_rgb", num_steps=3, **settings[1])
  assert sampler.num_traces == traced
  # A different number of steps is another program (another schedule of as many steps
  # may share it: tests/test_step_buckets.py).
  generate(sampler, known, target="tok_rgb", num_steps=4, **settings[1])
  assert sampler.num_traces == traced + 1


def test_each_step_computes_only_the_slots_it_needs():
  counts = np.array([[3, 10, 20, 31], [3, 10, 20, 31]])
  budgets = step_plan.step_budgets(np.zeros(2, int), counts, 64, 5, feed_back=True)
  # Encoder: 5 condition tokens + those decided so far, rounded up to 16; decoder: the rest.
  assert budgets == ((16, 64), (16, 61), (32, 51), (48, 31))
  partial = step_plan.step_budgets(np.array([10, 0]), np.array([[54], [64]]), 64, 5, True)
  assert partial == ((16, 64),)


# Sequences -----------------------------------------------------------------------------------


def test_caption_generation_stops_and_feeds_the_next_step(sampler):
  out = generate(sampler, rgb_known(), target="caption", max_new_tokens=10)
  entry = out["caption"]
  lengths = entry["input_mask"].sum(1)
  assert (lengths <= 11).all() and (lengths >= 1).all()
  for row, length in enumerate(lengths):
    assert entry["input_tokens"][row, length - 1] == IDS.eos  # a complete text ends in EOS
    assert (entry["input_tokens"][row, length:] == IDS.pad).all()
    assert not IDS.is_sentinel(entry["input_tokens"][row, :length]).any()


def test_span_in_filling_keeps_the_given_words(sampler):
  # "a red [S_1] left of a [S_2]": the model writes the gaps, the rest stays.
  given = np.array([4321, 5135, 5, 6207, 4925, 4321, 6], np.int32)
  entry = {"input_tokens": np.zeros((B, 256), np.int32), "input_mask": np.zeros((B, 256), bool)}
  entry["input_tokens"][:, :7], entry["input_mask"][:, :7] = given, True
  out = generate(sampler, {**rgb_known(), "caption": entry}, target="caption",
                 max_new_tokens=8)["caption"]
  for row in range(B):
    text = out["input_tokens"][row][out["input_mask"][row]]
    assert text[:2].tolist() == [4321, 5135]
    assert not IDS.is_sentinel(text).any()
    position = len(text) - 1 - text[::-1].tolist().index(4925)  # "of" survives
    assert text[position - 1] == 6207 and text[position + 1] == 4321


def test_fill_spans():
  given = np.array([4321, 5, 12798, 6, 0, 0])          # a [S_1] cube [S_2]
  generated = np.array([5, 5135, 6, 4296, IDS.eos, 7, 0])  # [S_1] red [S_2] . [EOS] [S_3]
  assert fill_spans(given, generated, IDS).tolist() == [4321, 5135, 12798, 4296, IDS.eos]
  scratch = np.array([5, 4321, 5135, IDS.eos, 6, 0])
  assert fill_spans(np.zeros(4, np.int32), scratch, IDS).tolist() == [4321, 5135, IDS.eos]


def test_a_complete_caption_cannot_be_filled_in(sampler):
  with pytest.raises(UsageError, match="no sentinel"):
    generate(sampler, {**rgb_known(), **caption_known()}, target="caption")


# Chains and errors ---------------------------------------------------------------------------


@pytest.mark.slow
def test_chain_conditions_each_target_on_the_ones_before(sampler, monkeypatch):
  chain = default_chain(["tok_depth", "caption"])
  chain = (dataclasses.replace(chain[0], num_steps=2),
           dataclasses.replace(chain[1], max_new_tokens=6))
  seen = []
  generate_one = sampler.generate

  def spy(known, decoding, key, negatives=None):
    seen.append((decoding.target, dict(known)))
    return generate_one(known, decoding, key, negatives)

  monkeypatch.setattr(sampler, "generate", spy)
  out = run_chain(sampler, rgb_known(), chain, jax.random.key(0))
  assert set(out) == {"rgb", "tok_depth", "caption"}
  assert out["caption"]["input_mask"].any(1).all()
  assert [(target, sorted(known)) for target, known in seen] == [
      ("tok_depth", ["rgb"]), ("caption", ["rgb", "tok_depth"])]
  assert seen[1][1]["tok_depth"] is out["tok_depth"]  # what step 1 made, step 2 saw


@pytest.mark.parametrize("step, message", [
    ({"target": "tok_clip"}, "cannot generate 'tok_clip'"),
    ({"target": "tok_rgb", "conditions": ["tok_depth"]}, "not known yet"),
    ({"target": "tok_rgb", "method": "autoregressive"}, "decode it with 'maskgit'"),
    ({"target": "caption", "method": "roar"}, "decode it with 'autoregressive'"),
    ({"target": "tok_rgb", "guidance": {"contrastive_top_k": 4}}, "unconditional"),
])
def test_bad_steps_are_refused(sampler, step, message):
  with pytest.raises(UsageError, match=message):
    sampler.generate(caption_known(), decoding_from_dict(step), jax.random.key(0))


def test_unknown_schedule_fields_are_named():
  with pytest.raises(UsageError, match="unknown field"):
    decoding_from_dict({"target": "tok_rgb", "steps": 3})
  with pytest.raises(UsageError, match="unknown modality"):
    decoding_from_dict({"target": "tok_nothing"})


@pytest.mark.slow
def test_vocab_limits_keep_ids_decodable(model):
  limited = Sampler(model, vocab_limits={"tok_depth": 37, "caption": 4400})
  out = limited.generate(rgb_known(), Decoding("tok_depth", num_steps=2), jax.random.key(0))
  assert out["tok_depth"]["tokens"].max() < 37


def test_the_color_detector_finds_named_colors_in_real_scenes_and_not_others():
  scenes = [synthetic.make_sample(0, "val", i) for i in range(24)]
  images, captions = [s["rgb"] for s in scenes], [s["caption"] for s in scenes]
  real = evaluate.color_rates(images, captions)
  assert real["named_count"] >= 24 and real["named"] > 0.8 and real["unnamed"] < 0.1
  assert real["p_value"] < 0.01
  # Captions of other scenes: named colors are no likelier to be there than others.
  shuffled = evaluate.color_rates(images, captions[1:] + captions[:1])
  assert shuffled["p_value"] > 0.05
  gray = np.full((64, 64, 3), 128, np.uint8)
  assert evaluate.colors_present(gray) == set()
  assert evaluate.named_colors("a small red cube left of the blue cone.") == {"red", "blue"}


def test_color_agreement_p_value_on_hand_built_cases():
  present = [{"red"}, {"blue"}, {"green"}, {"yellow"}]
  # Every scene shows exactly what its caption names, and no shuffling that moves a name
  # does as well: only the identity permutations (1 in 24) tie.
  exact = evaluate.color_agreement(present, present, permutations=999, seed=0)
  assert exact["named"] == 1.0 and exact["unnamed"] == 0.0 and exact["named_count"] == 4
  assert exact["p_value"] < 0.1
  # The same names on every scene: every shuffling is as good, so p is exactly 1.
  same = [{"red"}] * 4
  tied = evaluate.color_agreement(present, same, permutations=99)
  assert tied["named"] == 0.25 and tied["p_value"] == 1.0


def test_reconstructions_through_a_vq_tokenizer_match_encode_then_decode():
  import types
  from fourm.generation.conditions import ConditionEncoder
  from tokenizers_vq import train_step, vqvae
  from tokenizers_vq.detokenize import Detokenizer
  config = vqvae.preset("rgb_tiny", enc_width=32, enc_depth=1, dec_width=32, dec_depth=1,
                        vocab_size=64)
  tokenizer = train_step.VQTokenizer.from_model(
      vqvae.VQVAE(config, rngs=nnx.Rngs(jax.random.key(0, impl="rbg"))))
  generator = types.SimpleNamespace(
      encoder=ConditionEncoder(("tok_rgb",), ("tok_rgb",), modalities.SMALL_LAYOUT,
                               {"tok_rgb": tokenizer}, None, "imagenet"),
      detokenizer=Detokenizer({"tok_rgb": tokenizer}))
  scenes = [synthetic.make_sample(0, "val", i) for i in range(3)]
  images = evaluate.reconstructions(generator, scenes)
  assert len(images) == 3 and all(i.shape == (64, 64, 3) and i.dtype == np.uint8
                                  for i in images)
  expected = np.asarray(tokenizer.decode(tokenizer.encode(np.stack([s["rgb"] for s in scenes]))))
  np.testing.assert_allclose(np.stack(images).astype(int), expected.astype(int), atol=1)


def test_a_tokenizer_for_another_grid_is_refused():
  class Tokenizer:  # what a VQ-VAE for 224 px, 16 px patches would say
    raw_name, num_codes, grid = "rgb", 1024, 14

    def grid_at(self, layout):
      return self.grid

    def tokenize(self, raws, layout):
      raise AssertionError("not called")

    def detokenize(self, ids):
      raise AssertionError("not called")

  with pytest.raises(UsageError, match="14x14 grid; the model reads 8x8"):
    loading.check_tokenizer("tok_rgb", Tokenizer(), modalities.SMALL_LAYOUT)
  Tokenizer.grid, Tokenizer.num_codes = 8, 100_000
  with pytest.raises(UsageError, match="more than the model's vocabulary"):
    loading.check_tokenizer("tok_rgb", Tokenizer(), modalities.SMALL_LAYOUT)
  with pytest.raises(UsageError, match="not a grid tokenizer"):
    loading.check_tokenizer("tok_rgb", object(), modalities.SMALL_LAYOUT)


def test_cpu_fast_compilation_gives_the_same_tokens(model, monkeypatch):
  # The test session turns it on (conftest.py); a user's default is off.
  monkeypatch.delenv("FOURM_CPU_FAST_COMPILE", raising=False)
  sampler = Sampler(model)
  assert sampler.compiler_options is None
  monkeypatch.setenv("FOURM_CPU_FAST_COMPILE", "1")
  fast_sampler = Sampler(model)
  assert fast_sampler.compiler_options == {"xla_backend_optimization_level": 0}  # CPU tests
  assert Sampler(model, cpu_fast_compile=False).compiler_options is None
  for target, steps in (("tok_depth", 2), ("caption", 1)):
    fast = generate(fast_sampler, rgb_known(), target=target, num_steps=steps,
                    max_new_tokens=6)
    slow = generate(sampler, rgb_known(), target=target, num_steps=steps, max_new_tokens=6)
    key = "tokens" if target == "tok_depth" else "input_tokens"
    np.testing.assert_array_equal(fast[target][key], slow[target][key])
