"""Sampling tokens from logits, and choosing which ones a decoding step commits.

Everything here is jit-friendly with static shapes: top-k and top-p mask logits instead
of slicing them, and the step's choice of positions is a rank comparison, so a decoding
loop compiles once whatever the number of tokens a step commits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 0.0) -> jax.Array:
  """Logits [..., V] with everything outside the top-k and the top-p nucleus set to -inf.

  top_k=0 and top_p=0 (or >= 1) keep everything. The nucleus is the smallest set of most
  probable tokens whose probabilities add up to at least top_p (always at least one).
  """
  logits = logits.astype(jnp.float32)
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if 0.0 < top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probabilities = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probabilities, axis=-1) - probabilities  # mass above each token
    keep = before < top_p
    threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


# Vocabularies are sampled in blocks of this many ids (see `categorical`).
BLOCK = 128


def categorical(key: jax.Array, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Draws ids [...] from softmax(logits [..., V]); also returns logsumexp(logits) [...].

  Exactly `jax.random.categorical` in distribution, but in two stages: a block of BLOCK
  ids by its total probability (logsumexp of its logits), then an id within the block.
  The Gumbel-max trick needs one random number per candidate: this draws V / BLOCK +
  BLOCK of them per position instead of V, which is most of the cost of sampling
  16k-code vocabularies at every position of a MaskGIT step on a CPU.
  """
  vocab = logits.shape[-1]
  if vocab <= 2 * BLOCK:
    return (jax.random.categorical(key, logits, axis=-1),
            jax.nn.logsumexp(logits, axis=-1))
  padded = jnp.pad(logits, [(0, 0)] * (logits.ndim - 1) + [(0, -vocab % BLOCK)],
                   constant_values=NEG_INF)
  blocks = padded.reshape(padded.shape[:-1] + (-1, BLOCK))
  block_totals = jax.nn.logsumexp(blocks, axis=-1)
  block_key, id_key = jax.random.split(key)
  block = jax.random.categorical(block_key, block_totals, axis=-1)
  within = jnp.take_along_axis(blocks, block[..., None, None], axis=-2)[..., 0, :]
  index = jax.random.categorical(id_key, within, axis=-1)
  return block * BLOCK + index, jax.nn.logsumexp(block_totals, axis=-1)


def sample(key: jax.Array, logits: jax.Array, temperature: float | jax.Array,
           top_k: int = 0, top_p: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """(ids [...], their probability under the filtered, tempered distribution [...]).

  Temperature 0 is greedy decoding: the most probable token, with its probability at
  temperature 1 (so MaskGIT still ranks positions by how sure the model is).
  """
  filtered = filter_logits(logits, top_k, top_p)
  temperature = jnp.asarray(temperature, jnp.float32)
  greedy = temperature <= 0
  scaled = filtered / jnp.where(greedy, 1.0, temperature)
  drawn, normalizer = categorical(key, scaled)
  ids = jnp.where(greedy, jnp.argmax(filtered, axis=-1), drawn)
  chosen = jnp.take_along_axis(scaled, ids[..., None], axis=-1)[..., 0]
  return ids.astype(jnp.int32), jnp.exp(chosen - normalizer)


def commit_most_confident(confidence: jax.Array, undecided: jax.Array,
                          count: jax.Array) -> jax.Array:
  """bool [B, N]: the `count` most confident positions among the undecided ones (MaskGIT).

  `count` may be traced (one compiled step serves a whole schedule); ties go to the
  earlier position. Rows with fewer undecided positions than `count` commit them all.
  """
  score = jnp.where(undecided, confidence.astype(jnp.float32), -jnp.inf)
  order = jnp.argsort(-score, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1)
  return undecided & (rank < count)


def random_order_scores(key: jax.Array, shape) -> jax.Array:
  """Confidence stand-ins for ROAR: uniform noise, so `commit_most_confident` commits
  the undecided positions in a random order."""
  return jax.random.uniform(key, shape)
