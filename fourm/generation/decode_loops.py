"""The decoding loops that run inside one jit-compiled function per target.

Dense targets decode MaskGIT-style: each step runs the encoder on the conditions plus
the target tokens decided so far (fed back as inputs, as the reference does) and the
decoder on the undecided positions, samples every one of them, and commits the most
confident (MaskGIT) or a random subset (ROAR) of the size the step plan says
(`step_plan.py`). The dense loop is a `fori_loop` over the steps whose body switches
between a few step bodies, one per slot shape: the step plan rounds the steps' encoder
and decoder slots up to at most `step_plan.MAX_SHAPES` shapes (padding slots are masked,
so the logits of the real ones stay the same), so the program, and its compile time,
stay the same size for a schedule of any length. Sequences decode left to right with a
key/value cache (`fourm/models/incremental.py`) until [EOS] or the closing sentinel.

Everything a loop's program depends on beyond array shapes is in `LoopSettings`, which
the sampler uses as the key of its compiled functions: for dense targets, the slot
shapes, not the steps. Per-step token counts, temperatures and shapes (`DenseSteps`),
and guidance weights, are traced arguments, so changing them does not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
  # Sequences: the encoder's slots. Dense targets: the distinct (encoder slots, decoder
  # slots) shapes of the steps (`step_plan.step_shapes`), each one step body of the
  # program; which step runs which is traced (`DenseSteps.shape_index`), so schedules of
  # as many steps whose slots round to the same shapes share the program.
  budgets: int | tuple[tuple[int, int], ...]
  feed_back: bool = True          # dense: decided tokens go back in as inputs
  pad: int = 0
  eos: int = 3
  vocab_limit: int | None = None  # sample ids below this only


def _tile(x: jax.Array, times: int) -> jax.Array:
  return jnp.concatenate([x] * times, axis=0) if times > 1 else x


class DenseSteps(NamedTuple):
  """A dense loop's per-step data: traced, so that changing it does not recompile."""
  counts: jax.Array       # int [B, S]: tokens each sample commits at each step
  temps: jax.Array        # float [S]: each step's sampling temperature
  shape_index: jax.Array  # int [S]: each step's slot shape in `LoopSettings.budgets`

  @classmethod
  def of_schedule(cls, counts: np.ndarray, temps: np.ndarray,
                  shape_index: np.ndarray) -> DenseSteps:
    return cls(jnp.asarray(counts, jnp.int32), jnp.asarray(temps, jnp.float32),
               jnp.asarray(shape_index, jnp.int32))


def dense_loop(model, settings: LoopSettings, batch, tokens, decided, steps: DenseSteps,
               weights, key):
  """The target's tokens int [B, N] after the steps of `steps`, each with the slot shape
  of `settings.budgets` its `shape_index` says.

  batch: the condition streams stacked [S * B, ...]; tokens, decided: [B, N], the target
  so far (a sample whose counts add up to fewer than its undecided tokens keeps the rest
  as they were); weights: the guidance weights of `guidance.streams` ([1.0] when
  unguided).
  """
  # One traced body per slot shape, whatever the number of steps, and the loop picks each
  # step's by its traced index: which steps run which shape is not part of the program,
  # only the shapes are.
  bodies = [functools.partial(_dense_step, model, settings, batch, weights, budgets)
            for budgets in settings.budgets]

  def run_step(index, carry):
    tokens, decided, key = carry
    # The same keys, split in the same order, as the loop unrolled step by step had.
    key, sample_key, order_key = jax.random.split(key, 3)
    count = jax.lax.dynamic_index_in_dim(steps.counts, index, axis=1)  # [B, 1]
    tokens, decided = jax.lax.switch(steps.shape_index[index], bodies, tokens, decided, count,
                                     steps.temps[index], sample_key, order_key)
    return tokens, decided, key

  return jax.lax.fori_loop(0, steps.temps.shape[0], run_step, (tokens, decided, key))[0]


def _dense_step(model, settings: LoopSettings, batch, weights, budgets: tuple[int, int],
                tokens, decided, count, temperature, sample_key, order_key):
  """(tokens, decided) [B, N] after one step that commits `count` [B, 1] tokens per
  sample, run with `budgets` = (encoder slots, decoder slots), at least what it needs:
  the slots beyond its tokens are padding, masked out of attention and never committed."""
  name, streams = settings.target, settings.num_streams
  input_budget, target_budget = budgets
  batch_size = tokens.shape[0]
  rows = jnp.arange(batch_size)[:, None]
  undecided = ~decided
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
  ids, confidence = sampling.sample(sample_key, logits, temperature, settings.top_k,
                                    settings.top_p)
  # Decoder slots hold the asked positions in order (the rest of the budget holds other
  # positions, marked unused, which nothing commits): put them back. A decoder budget
  # never exceeds N, so no two slots name one position.
  order, used = slots.select(asked, target_budget)
  ids = jnp.zeros_like(tokens).at[rows, order].set(ids)
  if settings.method == "roar":
    commit = asked  # its positions were chosen before the step
  else:
    confidence = jnp.full(tokens.shape, -jnp.inf).at[rows, order].set(
        jnp.where(used, confidence, -jnp.inf))
    commit = sampling.commit_most_confident(confidence, undecided, count)
  return jnp.where(commit, ids, tokens), decided | commit


def sequence_loop(model, settings: LoopSettings, batch, prefix, prefix_length, closing, temps,
                  weights, key):
  """The decoder's tokens int [B, L] (L = len(temps)): each row's first `prefix_length`
  [B] tokens are `prefix` [B, L]'s (the start token, or a whole CM3 infilling prompt),
  read in turn; the rest is sampled, and padded after the row wrote [EOS] or its
  `closing` [B] sentinel."""
  name, streams = settings.target, settings.num_streams
  length = temps.shape[0]  # positions: the prefix and what follows it
  batch_size = prefix.shape[0]
  context, valid = model.encode(batch, settings.budgets)
  cache = incremental.init_cache(model, context, valid, length)
  tokens = jnp.where(jnp.arange(length) < prefix_length[:, None], prefix, settings.pad)

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
    # The prompt's tokens are read, not sampled; only what follows it can end the row.
    forced = position + 1 < prefix_length
    next_given = jax.lax.dynamic_index_in_dim(tokens, position + 1, axis=1, keepdims=False)
    ids = jnp.where(forced, next_given, jnp.where(done, settings.pad, ids))
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, ids, position + 1, axis=1)
    done = done | (~forced & ((ids == settings.eos) | (ids == closing)))
    return position + 1, tokens, done, cache, key

  carry = (jnp.int32(0), tokens, jnp.zeros(batch_size, bool), cache, key)
  return jax.lax.while_loop(running, step, carry)[1]
