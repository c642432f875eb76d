"""The decoding loops that run inside one jit-compiled function per target.

Dense targets decode MaskGIT-style: each step runs the encoder on the conditions plus
the target tokens decided so far (fed back as inputs, as the reference does) and the
decoder on the undecided positions, samples every one of them, and commits the most
confident (MaskGIT) or a random subset (ROAR) of the size the step plan says
(`step_plan.py`). The dense loop is unrolled, each step with as many encoder and decoder
slots as it has tokens. Sequences decode left to right with a key/value cache
(`fourm/models/incremental.py`) until [EOS] or the closing sentinel.

Everything a loop's program depends on beyond array shapes is in `LoopSettings`, which
the sampler uses as the key of its compiled functions; temperatures and guidance weights
are traced arguments, so changing them does not recompile.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fourm.generation import guidance as guidance_lib
from fourm.generation import sampling
from fourm.models import incremental, slots


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """What a compiled loop depends on beyond array shapes."""
  target: str
  method: str
  top_k: int
  top_p: float
  contrastive_top_k: int
  num_streams: int
  # Sequences: the encoder's slots. Dense targets: (encoder slots, decoder slots) of each
  # step, known from the schedule, so no step computes more slots than it has tokens.
  budgets: int | tuple[tuple[int, int], ...]
  feed_back: bool = True          # dense: decided tokens go back in as inputs
  pad: int = 0
  eos: int = 3
  vocab_limit: int | None = None  # sample ids below this only


def _tile(x: jax.Array, times: int) -> jax.Array:
  return jnp.concatenate([x] * times, axis=0) if times > 1 else x


def dense_loop(model, settings: LoopSettings, batch, tokens, decided, counts, temps, weights,
               key):
  """The target's tokens int [B, N] after the steps of `settings.budgets`.

  batch: the condition streams stacked [S * B, ...]; tokens, decided: [B, N], the target
  so far; counts: int [B, steps], tokens each sample commits at each step (a sample whose
  counts add up to fewer than its undecided tokens keeps the rest as they were); temps:
  [steps]; weights: the guidance weights of `guidance.streams` ([1.0] when unguided).
  """
  name, streams = settings.target, settings.num_streams
  batch_size, n = tokens.shape
  rows = jnp.arange(batch_size)[:, None]
  # Unrolled: each step has its own static slot counts (a while loop would need the
  # largest for all). Still one compilation for the whole schedule.
  for index, (input_budget, target_budget) in enumerate(settings.budgets):
    key, sample_key, order_key = jax.random.split(key, 3)
    undecided = ~decided
    count = counts[:, index][:, None]
    if settings.method == "roar":
      # ROAR as the paper and the reference run it: the step's positions are drawn at
      # random first, and only they are asked for (the decoder sees just those queries).
      asked = sampling.commit_most_confident(
          sampling.random_order_scores(order_key, tokens.shape), undecided, count)
    else:
      asked = undecided  # MaskGIT: every undecided position, the most confident committed
    target = {"tokens": _tile(tokens, streams), "input_mask": _tile(decided, streams),
              "target_mask": _tile(asked, streams)}
    inputs = {**batch, name: target} if settings.feed_back else batch
    context, valid = model.encode(inputs, input_budget)
    hidden = model.decode({name: target}, context, valid, target_budget).hidden
    logits = model.logits(name, hidden)[..., :settings.vocab_limit]
    logits = logits.reshape(streams, batch_size, target_budget, -1)
    logits = guidance_lib.combine(logits, weights, settings.contrastive_top_k)
    ids, confidence = sampling.sample(sample_key, logits, temps[index], settings.top_k,
                                      settings.top_p)
    # Decoder slots hold the asked positions in order (a sample with fewer than the
    # budget fills the rest with others, which nothing commits): put them back.
    order, used = slots.select(asked, target_budget)
    ids = jnp.zeros_like(tokens).at[rows, order].set(ids)
    if settings.method == "roar":
      commit = asked  # its positions were chosen before the step
    else:
      confidence = jnp.full(tokens.shape, -jnp.inf).at[rows, order].set(
          jnp.where(used, confidence, -jnp.inf))
      commit = sampling.commit_most_confident(confidence, undecided, count)
    tokens, decided = jnp.where(commit, ids, tokens), decided | commit
  return tokens


def sequence_loop(model, settings: LoopSettings, batch, start, closing, temps, weights, key):
  """The decoder's tokens int [B, L] from `start` [B] on, L = len(temps), each row padded
  after it wrote [EOS] or its `closing` [B] sentinel."""
  name, streams = settings.target, settings.num_streams
  length = temps.shape[0]  # positions: the start token and what follows it
  batch_size = start.shape[0]
  context, valid = model.encode(batch, settings.budgets)
  cache = incremental.init_cache(model, context, valid, length)
  tokens = jnp.full((batch_size, length), settings.pad, jnp.int32).at[:, 0].set(start)

  def running(carry):
    position, _, done, _, _ = carry
    return (position < length - 1) & ~jnp.all(done)

  def step(carry):
    position, tokens, done, cache, key = carry
    key, sample_key = jax.random.split(key)
    current = _tile(jax.lax.dynamic_index_in_dim(tokens, position, axis=1, keepdims=False),
                    streams)
    hidden, cache = incremental.decode_step(model, name, cache, current, position)
    logits = model.logits(name, hidden)[..., :settings.vocab_limit]
    logits = logits.reshape(streams, batch_size, -1)
    logits = guidance_lib.combine(logits, weights, settings.contrastive_top_k)
    ids, _ = sampling.sample(sample_key, logits, temps[position], settings.top_k,
                             settings.top_p)
    ids = jnp.where(done, settings.pad, ids)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, ids, position + 1, axis=1)
    done = done | (ids == settings.eos) | (ids == closing)
    return position + 1, tokens, done, cache, key

  carry = (jnp.int32(0), tokens, jnp.zeros(batch_size, bool), cache, key)
  return jax.lax.while_loop(running, step, carry)[1]
