"""Bucketed step shapes of the dense (MaskGIT / ROAR) loop: few shapes for any schedule,
the tokens of exact per-step shapes, programs that do not grow with the steps.

`step_plan.step_budgets` gives each step exactly the slots it needs, which is what the
loop used to be compiled for, one unrolled step at a time; here it is the reference
that `step_plan.bucketed_budgets` (what the sampler runs) must match.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm import modalities
from fourm.generation import step_plan
from fourm.generation.decode_loops import DenseSteps, LoopSettings, dense_loop
from fourm.generation.sampler import CPU_FAST_COMPILE_OPTIONS, Decoding, Sampler, sequence_entry
from fourm.models import fourm as fourm_model

LAYOUT = modalities.SMALL_LAYOUT
NAMES = ("rgb", "tok_rgb", "tok_depth", "caption", "det")
N = 64  # tok_rgb's tokens at the small layout
CAPTION = np.array([4321, 5135, 12798, 4296], np.int32)  # "a red cube."


@pytest.fixture(scope="module")
def model():
  config = fourm_model.FourMConfig(dim=64, encoder_depth=2, decoder_depth=2, num_heads=4)
  return fourm_model.FourM(config, NAMES, LAYOUT, 64, 64, rngs=nnx.Rngs(0))


def caption_condition(batch: int) -> dict:
  known = {"caption": sequence_entry([CAPTION] * batch, 256)}
  return {name: {key: jnp.asarray(value) for key, value in entry.items()}
          for name, entry in known.items()}


def plan(given, counts, n, conditions, method, bucketed=True):
  budgets = step_plan.step_budgets(given, counts, n, conditions, feed_back=True,
                                   asks_committed_only=method == "roar")
  return step_plan.bucketed_budgets(budgets) if bucketed else budgets


def slots(budgets) -> int:
  return sum(encoder + decoder for encoder, decoder in budgets)


# The plan ----------------------------------------------------------------------------------


def test_bucketed_budgets_are_the_cheapest_runs_of_steps():
  """At most `max_shapes` runs of consecutive steps, each with its steps' largest
  budgets, the split computing the fewest slots (worked out by hand here)."""
  exact = ((16, 64), (16, 61), (32, 51), (48, 31))
  assert step_plan.bucketed_budgets(exact) == exact  # fewer steps than shapes: as they are
  # Two runs: 2 x (16, 64) + 2 x (48, 51) = 358 slots; 1 + 3 steps: 407; 3 + 1: 367.
  assert step_plan.bucketed_budgets(exact, 2) == ((16, 64), (16, 64), (48, 51), (48, 51))
  # Three: 2 + 1 + 1 steps, 322 slots (1 + 1 + 2: 355; 1 + 2 + 1: 345).
  assert step_plan.bucketed_budgets(exact, 3) == ((16, 64), (16, 64), (32, 51), (48, 31))
  assert step_plan.bucketed_budgets(exact, 1) == ((48, 64),) * 4
  # Steps alike share a run even with shapes to spare.
  assert step_plan.bucketed_budgets(((16, 8), (16, 8), (32, 4))) == ((16, 8), (16, 8), (32, 4))
  shapes = step_plan.step_shapes(step_plan.bucketed_budgets(exact, 3))
  assert shapes.shapes == ((16, 64), (32, 51), (48, 31))
  assert shapes.of_step.tolist() == [0, 0, 1, 2]


def test_few_shapes_for_any_schedule_length_and_token_count():
  """Whatever the schedule (1 to 200 steps, up to 256 tokens, partly given or not, MaskGIT
  or ROAR), a plan has at most MAX_SHAPES shapes, each at least the step's exact size
  and no decoder budget beyond the target's tokens (two slots would name one position)."""
  lengths = sorted({*range(1, 33), *range(33, 201, 11), 200})
  for n in (16, 64, 196, 256):
    for given in (np.zeros(2, int), np.array([0, n // 3])):
      for steps in lengths:
        for schedule in ("cosine", "linear", "reference_cosine"):
          counts = step_plan.step_counts(n - given, steps, schedule)
          for method in ("maskgit", "roar"):
            exact = plan(given, counts, n, 17, method, bucketed=False)
            bucketed = step_plan.bucketed_budgets(exact)
            assert len(set(bucketed)) <= step_plan.MAX_SHAPES
            assert all(b[0] >= e[0] and n >= b[1] >= e[1]
                       for b, e in zip(bucketed, exact, strict=True))


def test_the_default_schedule_computes_few_slots_more_than_exact_steps():
  """The price of 5 shapes for 8 cosine steps of 196 tokens (step_plan.MAX_SHAPES)."""
  counts = step_plan.step_counts(np.full(1, 196), 8, "cosine")
  for method in ("maskgit", "roar"):
    exact = plan(np.zeros(1, int), counts, 196, 17, method, bucketed=False)
    assert slots(step_plan.bucketed_budgets(exact)) < 1.06 * slots(exact)


# The model: padding slots ------------------------------------------------------------------


@pytest.mark.slow
def test_padding_slots_leave_the_real_slots_logits_unchanged(model):
  """More encoder and decoder slots than tokens: the real slots' logits stay the same
  (padding is masked out of attention), so a bucketed step predicts what an exact one
  would."""
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 1000, (2, N)), jnp.int32)
  decided = jnp.asarray(rng.random((2, N)) < np.array([[0.3], [0.6]]))
  target = {"tokens": tokens, "input_mask": decided, "target_mask": ~decided}
  inputs = {**caption_condition(2), "tok_rgb": target}
  fed, asked = int(decided.sum(1).max()), int((~decided).sum(1).max())
  conditions = step_plan.visible_tokens({"caption": inputs["caption"]})
  exact_inputs = step_plan.round_up_budget(conditions + fed)

  def logits(input_budget, target_budget):
    context, valid = model.encode(inputs, input_budget)
    out = model.decode({"tok_rgb": target}, context, valid, target_budget)
    return np.asarray(model.logits("tok_rgb", out.hidden)), np.asarray(out.valid)

  exact, valid = logits(exact_inputs, asked)
  padded, padded_valid = logits(exact_inputs + 48, N)
  np.testing.assert_array_equal(padded_valid[:, :asked], valid)
  assert not padded_valid[:, asked:].any()
  np.testing.assert_allclose(padded[:, :asked][valid], exact[valid], rtol=1e-5, atol=1e-5)


# The loop --------------------------------------------------------------------------------


def loop_fn(model, method, shapes):
  """(dense_loop jitted for `shapes` as the sampler jits it, fast to compile on a CPU;
  the model's parameters, its first argument)."""
  settings = LoopSettings(target="tok_rgb", method=method, top_k=0, top_p=0.0,
                          contrastive_top_k=0, num_streams=1, budgets=shapes)
  graphdef, params = nnx.split(model, nnx.Param)
  options = CPU_FAST_COMPILE_OPTIONS if jax.default_backend() == "cpu" else None
  fn = jax.jit(lambda p, *args: dense_loop(nnx.merge(graphdef, p), settings, *args),
               compiler_options=options)
  return fn, params


def decode(model, method, budgets, tokens, decided, counts, temps, seed=0):
  shapes = step_plan.step_shapes(budgets)
  fn, params = loop_fn(model, method, shapes.shapes)
  steps = DenseSteps.of_schedule(counts, temps, shapes.of_step)
  return np.asarray(fn(params, caption_condition(len(tokens)), jnp.asarray(tokens),
                       jnp.asarray(decided), steps, jnp.ones(1), jax.random.key(seed)))


@pytest.mark.slow
@pytest.mark.parametrize("method, temperature, batch, partial", [
    # With `partial` only the first sample in-paints: a batch of 2 has both kinds of row.
    ("maskgit", 0.0, 2, True), ("roar", 0.0, 2, True),
    # At batch 1 the real slots come first in the random numbers of a bucketed step
    # (jax's threefry draws each by its flat index), so sampling draws the same ids.
    ("maskgit", 1.0, 1, False), ("roar", 1.0, 1, True)])
def test_bucketed_loop_gives_the_tokens_of_exact_step_shapes(model, method, temperature,
                                                             batch, partial):
  """The sampler's bucketed shapes against exact per-step ones (the unrolled loop's),
  same seed: the same tokens, greedy at any batch and sampled at batch 1 (larger
  batches draw from the same distribution, with other random numbers)."""
  tokens, decided = np.zeros((batch, N), np.int32), np.zeros((batch, N), bool)
  if partial:  # in-painting: the first sample knows a quarter of its tokens
    tokens[0, ::4], decided[0, ::4] = 7, True
  counts = step_plan.step_counts(N - decided.sum(1), 8, "cosine")
  temps = np.full(8, temperature, np.float32)
  given = decided.sum(1)
  exact = plan(given, counts, N, 5, method, bucketed=False)
  bucketed = plan(given, counts, N, 5, method)
  assert bucketed != exact and len(set(bucketed)) < len(set(exact))
  np.testing.assert_array_equal(
      decode(model, method, bucketed, tokens, decided, counts, temps),
      decode(model, method, exact, tokens, decided, counts, temps))


def lowered_size(model, num_steps: int) -> tuple[int, int]:
  """(characters of the lowered program, shapes) of the sampler's loop for MaskGIT on
  the cosine schedule in `num_steps` steps."""
  counts = step_plan.step_counts(np.full(2, N), num_steps, "cosine")
  shapes = step_plan.step_shapes(plan(np.zeros(2, int), counts, N, 5, "maskgit"))
  fn, params = loop_fn(model, "maskgit", shapes.shapes)
  steps = DenseSteps.of_schedule(counts, np.ones(num_steps), shapes.of_step)
  text = fn.lower(params, caption_condition(2), jnp.zeros((2, N), jnp.int32),
                  jnp.zeros((2, N), bool), steps, jnp.ones(1), jax.random.key(0)).as_text()
  return len(text), len(shapes.shapes)


def test_the_program_grows_with_the_shapes_not_the_steps(model):
  """What XLA compiles: one step body per shape, so 32 and 200 steps lower to a program
  of the 8-step one's size, where the unrolled loop's grew with the steps (4 and 25
  times the 8-step program)."""
  size_8, shapes_8 = lowered_size(model, 8)
  size_32, shapes_32 = lowered_size(model, 32)
  size_200, shapes_200 = lowered_size(model, 200)
  assert shapes_8 == shapes_32 == shapes_200 == step_plan.MAX_SHAPES
  assert size_32 < 1.05 * size_8 and size_200 < 1.05 * size_8
  print(f"lowered: {size_8} (8 steps), {size_32} (32), {size_200} (200) characters")


# The sampler ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_compiled_loop_depends_on_the_shapes_not_the_exact_budgets(model):
  """Two explicit schedules whose steps need other exact budgets but round to the same
  shapes run one program (the unrolled loop compiled one for each); a third with other
  shapes compiles its own."""
  schedules = {"a": (4, 4, 2, 8, 16, 30), "b": (4, 4, 3, 7, 16, 30),
               "other": (2, 2, 4, 8, 16, 32)}
  exact, shapes = {}, {}
  for name, schedule in schedules.items():
    counts = step_plan.step_counts(np.full(2, N), 0, schedule)
    exact[name] = plan(np.zeros(2, int), counts, N, 5, "maskgit", bucketed=False)
    shapes[name] = step_plan.step_shapes(step_plan.bucketed_budgets(exact[name])).shapes
  assert exact["a"] != exact["b"] and shapes["a"] == shapes["b"] != shapes["other"]
  sampler = Sampler(model)
  known = {"caption": sequence_entry([CAPTION] * 2, 256)}
  for name in ("a", "b", "other"):
    traced = sampler.num_traces
    sampler.generate(known, Decoding("tok_rgb", token_schedule=schedules[name]),
                     jax.random.key(0))
    assert sampler.num_traces == traced + (name != "b")
