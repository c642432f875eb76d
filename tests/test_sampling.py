"""Decoding schedules and the sampling primitives of generation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fourm.errors import UsageError
from fourm.generation import sampling, schedules


@pytest.mark.parametrize("tokens, steps", [(64, 8), (196, 25), (7, 7), (10, 1), (256, 3)])
def test_token_schedules_commit_every_token_at_least_one_per_step(tokens, steps):
  # fourm's own; the reference's may leave a step empty (tests/test_reference_schedules.py)
  for kind in set(schedules.TOKEN_SCHEDULES) - set(schedules.REFERENCE_TOKEN_SCHEDULES):
    counts = schedules.tokens_per_step(tokens, steps, kind)
    assert len(counts) == steps and counts.sum() == tokens and (counts >= 1).all()


def test_cosine_commits_few_tokens_first_and_linear_spreads_them_evenly():
  cosine = schedules.tokens_per_step(196, 10, "cosine")
  assert cosine[0] < cosine[-1] and (np.diff(cosine) >= -1).all()
  linear = schedules.tokens_per_step(196, 10, "linear")
  assert linear.max() - linear.min() <= 1
  np.testing.assert_array_equal(schedules.tokens_per_step(6, 0, [1, 2, 3]), [1, 2, 3])


def test_bad_schedules_are_refused():
  with pytest.raises(UsageError, match="adding up to the 6 tokens"):
    schedules.tokens_per_step(6, 0, [1, 2])
  with pytest.raises(UsageError, match="need 1 <= steps <= tokens"):
    schedules.tokens_per_step(4, 5)
  with pytest.raises(UsageError, match="temperature schedule 'wavy'"):
    schedules.temperatures(4, 1.0, schedule="wavy")


def test_temperature_schedules_run_from_start_to_end():
  np.testing.assert_allclose(schedules.temperatures(3, 2.0), [2, 2, 2])
  np.testing.assert_allclose(schedules.temperatures(5, 3.0, 1.0, "linear"), [3, 2.5, 2, 1.5, 1])
  cosine = schedules.temperatures(5, 3.0, 0.5, "cosine")
  assert cosine[0] == pytest.approx(3.0) and cosine[-1] == pytest.approx(0.5)
  assert (np.diff(cosine) < 0).all()


def test_top_k_and_top_p_keep_exactly_their_sets():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = sampling.filter_logits(logits, top_k=2) > sampling.NEG_INF / 2
  np.testing.assert_array_equal(kept, [[1, 1, 0, 0, 0]])
  kept = sampling.filter_logits(logits, top_p=0.8) > sampling.NEG_INF / 2
  np.testing.assert_array_equal(kept, [[1, 1, 1, 0, 0]])  # 0.5 + 0.2 < 0.8 <= + 0.15
  kept = sampling.filter_logits(logits, top_p=0.3) > sampling.NEG_INF / 2
  np.testing.assert_array_equal(kept, [[1, 0, 0, 0, 0]])


@pytest.mark.slow
def test_sampling_follows_the_distribution_and_zero_temperature_is_greedy():
  logits = jnp.log(jnp.array([0.7, 0.2, 0.1]))
  keys = jax.random.split(jax.random.key(0), 4000)
  ids, _ = jax.vmap(lambda k: sampling.sample(k, logits, 1.0))(keys)
  np.testing.assert_allclose(np.bincount(np.asarray(ids), minlength=3) / 4000, [0.7, 0.2, 0.1],
                             atol=0.03)
  ids, confidence = sampling.sample(jax.random.key(1), jnp.stack([logits] * 5), 0.0)
  np.testing.assert_array_equal(ids, 0)
  np.testing.assert_allclose(confidence, 0.7, rtol=1e-5)
  ids, _ = jax.vmap(lambda k: sampling.sample(k, logits, 1.0, top_k=1))(keys[:100])
  assert (np.asarray(ids) == 0).all()


def test_commit_most_confident_picks_among_undecided_only():
  confidence = jnp.array([[0.9, 0.1, 0.8, 0.7, 0.3]])
  undecided = jnp.array([[False, True, True, True, True]])
  chosen = jax.jit(sampling.commit_most_confident)(confidence, undecided, jnp.int32(2))
  np.testing.assert_array_equal(chosen, [[0, 0, 1, 1, 0]])
  everything = sampling.commit_most_confident(confidence, undecided, jnp.int32(9))
  np.testing.assert_array_equal(everything, undecided)
  scores = sampling.random_order_scores(jax.random.key(0), (1, 5))
  assert int(sampling.commit_most_confident(scores, undecided, jnp.int32(3)).sum()) == 3


@pytest.mark.slow
def test_blockwise_categorical_matches_the_distribution():
  """Two-stage sampling over a vocabulary of several blocks (the last one partial)."""
  vocab = 1000
  probabilities = np.full(vocab, 0.2 / (vocab - 4))
  probabilities[[3, 130, 700, 999]] = [0.35, 0.25, 0.15, 0.05]  # spread over blocks
  logits = jnp.log(jnp.asarray(probabilities / probabilities.sum(), jnp.float32)) + 4.0
  draws = 40_000
  ids, normalizer = sampling.categorical(jax.random.key(0),
                                         jnp.broadcast_to(logits, (draws, vocab)))
  np.testing.assert_allclose(normalizer, jax.nn.logsumexp(logits), rtol=1e-5)
  counts = np.bincount(np.asarray(ids), minlength=vocab) / draws
  np.testing.assert_allclose(counts[[3, 130, 700, 999]], [0.35, 0.25, 0.15, 0.05], atol=0.01)
  tail = np.delete(counts, [3, 130, 700, 999])
  assert abs(tail.sum() - 0.2) < 0.01
  # The tail is spread evenly over its blocks, not lumped into some.
  per_block = np.add.reduceat(tail, np.arange(0, len(tail), 128))
  expected = np.diff(np.append(np.arange(0, len(tail), 128), len(tail))) * 0.2 / len(tail)
  np.testing.assert_allclose(per_block, expected, atol=0.006)
