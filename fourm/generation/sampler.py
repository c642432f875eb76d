"""The sampler: one target modality generated from the modalities known so far.

What is known is a dict of model entries, batched (B samples), in the encoder's format
(fourm/models/CONTRACT.md, input side only):

  token grids, global   {"tokens": int32 [B, N], "input_mask": bool [B, N]}
  pixels (rgb)          {"tokens": float32 [B, R, R, 3] normalized, "input_mask": [B, N]}
  feature maps          {"tokens": float32 [B, N, C], "input_mask": bool [B, N]}
  sequences             {"input_tokens": int32 [B, L], "input_mask": bool [B, L]}

`Sampler.generate(known, Decoding(target=...), key)` returns `known` with the target
filled in, ready to condition the next target (`chain.py` strings them together). A
target already in `known` is a partial input: its visible tokens are kept and only the
rest is generated (in-painting, out-painting; for sequences, span in-filling at the
sentinels of the given text).

This module prepares each call on the host (conditions, guidance streams, the step plan
of `step_plan.py`, temperatures) and runs the loops of `decode_loops.py`, each whole
loop one jit-compiled function with static shapes: one compilation per target, batch
shape, set of guidance streams, number of steps and set of step slot shapes (at most
`step_plan.MAX_SHAPES`, whatever the number of steps), none between steps. Token counts,
temperatures and guidance weights are traced values, so changing them does not
recompile. For sequences, `max_new_tokens` sizes the key/value cache.

`Decoding`, `fill_spans` and `sequence_entry` are re-exported from their modules
(`decoding.py`, `text_spans.py`), where callers have long imported them from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm import modalities
from fourm.data.masking import FIRST_SPAN
from fourm.data.masking import cm3
from tokenizers_vq.text import TextSpecialIds
from fourm.errors import UsageError
from fourm.generation import guidance as guidance_lib
from fourm.generation import schedules
from fourm.generation.decode_loops import DenseSteps, LoopSettings, dense_loop, sequence_loop
from fourm.generation.decoding import Decoding
from fourm.generation.step_plan import (bucketed_budgets, round_up_budget, step_budgets,
                                        step_counts, step_shapes, visible_tokens)
from fourm.generation.text_spans import fill_spans, sequence_entry
from fourm.nn.init import CPU_FAST_COMPILE_OPTIONS

__all__ = ["CPU_FAST_COMPILE_OPTIONS", "Decoding", "Sampler", "fill_spans", "sequence_entry"]

# XLA's CPU backend at LLVM -O0 (`Sampler(cpu_fast_compile=True)`, or the environment
# variable set to "1"): compiles faster, runs slower.
CPU_FAST_COMPILE_ENV = "FOURM_CPU_FAST_COMPILE"


def check_fillable(target: str, given: Mapping[str, np.ndarray], ids: TextSpecialIds) -> None:
  """A sequence target given as text must mark gaps to fill in: a text without
  sentinels is complete (raise before any generation, so no work is wasted)."""
  given_tokens = np.where(given["input_mask"], given["input_tokens"], ids.pad)
  spans = ids.is_sentinel(given_tokens).sum(1)
  given_has_text = np.asarray(given["input_mask"]).any(1)
  if (given_has_text & (spans == 0)).any():
    raise UsageError(f"{target}: the given text has no sentinel ([S_1], ...) to "
                     "fill in; give it as a condition instead, or mark the gaps")


class Sampler:
  """Generates targets with a trained `FourM` (any input/target budgets: the sampler
  sets its own per call)."""

  def __init__(self, model, text_ids: TextSpecialIds = TextSpecialIds(),
               vocab_limits: Mapping[str, int] | None = None,
               sentinel_prompt: bool = False, cpu_fast_compile: bool | None = None):
    """`vocab_limits` {modality: n}: only ids below n are sampled, for tokenizers with
    fewer codes than the model's vocabulary (ids beyond them could not be decoded).

    `cpu_fast_compile`: on a CPU, compile the loops with LLVM's optimizations off
    (`CPU_FAST_COMPILE_OPTIONS`); None: as the environment variable `FOURM_CPU_FAST_COMPILE`
    says (off unless "1"). A trade, measured in docs/generation.md: a third less compile
    time, the same tokens, and slower runs (10 % for the demo's model, 40 % for 4M tiny at
    224 px), so it pays for one-off runs (`make demo`) and not for repeated ones. Other
    backends compile as usual.

    `sentinel_prompt`: a sequence generated from nothing shows the encoder one [S_1]
    (the text "[S_1]": one gap, to fill), as the reference's GenerationSampler does
    (`empty_seq_modality`); on for converted reference checkpoints. Off, the encoder sees
    nothing of it, as training shows a fully masked sequence. Both occur in training;
    with the published weights the choice changes the logits (docs/interop.md)."""
    self.sentinel_prompt = sentinel_prompt
    self.graphdef, self.params = nnx.split(model, nnx.Param)
    self.vocab_limits = dict(vocab_limits or {})
    self.model_names = tuple(model.modality_names)
    self.input_names, self.target_names = model.input_names, model.target_names
    self.layout = model.layout
    self.text_ids = text_ids
    self._compiled: dict[LoopSettings, callable] = {}
    if cpu_fast_compile is None:
      cpu_fast_compile = os.environ.get(CPU_FAST_COMPILE_ENV, "").strip() == "1"
    self.compiler_options = (CPU_FAST_COMPILE_OPTIONS if cpu_fast_compile
                             and jax.default_backend() == "cpu" else None)
    # Programs traced so far: each is one compilation, so a caller (or a test) can check
    # that changing traced settings such as temperatures reuses the program.
    self.num_traces = 0

  # Public API ----------------------------------------------------------------------------

  def generate(self, known: Mapping[str, dict], decoding: Decoding, key: jax.Array,
               negatives: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """`known` with `decoding.target` generated (see the module docstring)."""
    target = decoding.target
    if target not in self.target_names:
      raise UsageError(f"this model cannot generate {target!r}; it predicts "
                       f"{list(self.target_names)}")
    conditions = self._conditions(known, decoding)
    method = decoding.resolved_method()
    if method == "autoregressive":
      entry = self._generate_sequence(known.get(target), conditions, decoding, method, key,
                                      negatives)
    else:
      entry = self._generate_dense(known.get(target), conditions, decoding, method, key,
                                   negatives)
    return {**known, target: entry}

  # Dense targets -------------------------------------------------------------------------

  def _generate_dense(self, given, conditions, decoding, method, key, negatives):
    spec, batch_size = modalities.get(decoding.target), _batch_size(conditions, None)
    n = spec.num_tokens(self.layout)
    if given is None:
      if batch_size is None:
        raise UsageError(f"{decoding.target}: nothing to condition on and no partial input: "
                         "give at least one condition")
      tokens, decided = np.zeros((batch_size, n), np.int32), np.zeros((batch_size, n), bool)
    else:
      tokens = np.asarray(given["tokens"], np.int32).reshape(-1, n)
      decided = np.asarray(given["input_mask"], bool).reshape(-1, n)
    batch_size = tokens.shape[0]
    counts = step_counts(n - decided.sum(1), decoding.num_steps, decoding.token_schedule)
    # The reference's temperature schedules follow the counts of the sample with most left.
    temps = schedules.temperatures(counts.shape[1], decoding.temperature,
                                   decoding.temperature_end, decoding.temperature_schedule,
                                   counts=counts[np.argmax(counts.sum(1))])
    feed_back = decoding.target in self.input_names
    stream_sets, weights = guidance_lib.streams(conditions, decoding.guidance, negatives)
    budgets = step_budgets(decided.sum(1), counts, n,
                           max(visible_tokens(s) for s in stream_sets), feed_back,
                           asks_committed_only=method == "roar")
    shapes = step_shapes(bucketed_budgets(budgets))  # a few shapes, whatever the steps
    settings = self._settings(decoding, method, len(stream_sets), shapes.shapes,
                              feed_back=feed_back)
    fn = self._compiled_fn(settings, dense_loop)
    out = fn(self.params, _stack(stream_sets, batch_size), jnp.asarray(tokens),
             jnp.asarray(decided), DenseSteps.of_schedule(counts, temps, shapes.of_step),
             jnp.asarray(weights or [1.0], jnp.float32), key)
    return {"tokens": np.asarray(out), "input_mask": np.ones((batch_size, n), bool)}

  # Sequences -----------------------------------------------------------------------------

  def _generate_sequence(self, given, conditions, decoding, method, key, negatives):
    spec = modalities.get(decoding.target)
    ids = self.text_ids
    batch_size = _batch_size(conditions, given)
    if batch_size is None:
      raise UsageError(f"{decoding.target}: nothing to condition on: give a condition")
    if decoding.infill == "cm3":
      return self._infill_cm3(given, conditions, decoding, method, key, negatives)
    length = spec.max_length
    if given is None:
      given = {"input_tokens": np.full((batch_size, length), ids.pad, np.int32),
               "input_mask": np.zeros((batch_size, length), bool)}
      if self.sentinel_prompt:
        given["input_tokens"][:, 0], given["input_mask"][:, 0] = ids.sentinel(FIRST_SPAN), True
    given_tokens = np.where(given["input_mask"], given["input_tokens"], ids.pad)
    spans = ids.is_sentinel(given_tokens).sum(1)
    check_fillable(decoding.target, given, ids)
    # The decoder writes [S_1] span_1 [S_2] ... and closes with [S_(spans + 1)]; from
    # scratch the whole text is one span, closed by [EOS] first.
    closing = ids.first_sentinel + FIRST_SPAN + np.maximum(spans, 1)
    steps = min(length, 1 + (decoding.max_new_tokens or length))
    own = {decoding.target: {"input_tokens": np.asarray(given["input_tokens"], np.int32),
                             "input_mask": np.asarray(given["input_mask"], bool)}}
    start = np.full((batch_size, 1), ids.sentinel(FIRST_SPAN), np.int32)
    out = self._run_sequence_loop(decoding, method, conditions, own, negatives, start,
                                  np.ones(batch_size, np.int32), closing, steps, key)
    texts = [fill_spans(given_tokens[b], out[b], ids) for b in range(batch_size)]
    return sequence_entry(texts, length, ids)

  def _infill_cm3(self, given, conditions, decoding, method, key, negatives):
    """CM3 in-filling (`fourm/data/masking/cm3.py`): the decoder reads "[SOS] text with
    gaps [EOS]", then writes each gap's span after its sentinel until [EOS]; one loop run
    per gap, each prompt carrying the spans written so far. The encoder sees the
    conditions only, as in training, where a CM3 target gives the encoder none of it."""
    ids, spec = self.text_ids, modalities.get(decoding.target)
    length = spec.max_length
    if given is None:
      raise UsageError(f"{decoding.target}: CM3 in-filling needs the text with its gaps "
                       "([S_1], ...) as a condition")
    check_fillable(decoding.target, given, ids)
    given_tokens = np.where(given["input_mask"], given["input_tokens"], ids.pad)
    prompts, gaps = zip(*(cm3.infill_prompt(row, ids) for row in given_tokens))
    # The given texts as the prompts hold them (gaps renumbered from [S_1], [EOS] last),
    # and what the decoder wrote in 4M's span form, "[S_1] span_1 [S_2] span_2 ...",
    # which `fill_spans` puts back into them.
    texts = [prompt[1:-1] for prompt in prompts]
    prompts = [list(prompt) for prompt in prompts]
    written_spans: list[list[int]] = [[] for _ in prompts]
    for gap in range(max(gaps)):
      too_long = [b for b, prompt in enumerate(prompts) if len(prompt) >= length]
      if too_long:
        raise UsageError(f"{decoding.target}: sample {too_long[0]}'s text and the spans "
                         f"written so far take {len(prompts[too_long[0]])} of the "
                         f"{length} decoder positions; nothing is left to write gap "
                         f"{gap + 1} in")
      prefix = np.full((len(prompts), length), ids.pad, np.int32)
      for b, prompt in enumerate(prompts):
        prefix[b, :len(prompt)] = prompt
      prefix_length = np.array([len(p) for p in prompts], np.int32)
      steps = length if decoding.max_new_tokens is None else \
          min(length, int(prefix_length.max()) + decoding.max_new_tokens)
      out = self._run_sequence_loop(
          decoding, method, conditions, {}, negatives, prefix, prefix_length,
          np.full(len(prompts), ids.eos, np.int32), steps, jax.random.fold_in(key, gap))
      for b, prompt in enumerate(prompts):
        if gap >= gaps[b]:
          continue
        written = out[b, len(prompt):]
        ends = np.flatnonzero((written == ids.eos) | (written == ids.pad)
                              | ids.is_sentinel(written))
        span = written[:ends[0] if ends.size else len(written)].tolist()
        written_spans[b] += [ids.sentinel(FIRST_SPAN + gap)] + span
        prompt.extend(span + [ids.eos])
        if gap + 1 < gaps[b]:
          prompt.append(ids.sentinel(FIRST_SPAN + gap + 1))
    return sequence_entry([fill_spans(text, np.asarray(spans, np.int32), ids)
                           for text, spans in zip(texts, written_spans)], length, ids)

  def _run_sequence_loop(self, decoding, method, conditions, own, negatives, prefix,
                         prefix_length, closing, steps, key) -> np.ndarray:
    """The sequence loop's tokens [B, steps] for these condition streams plus `own` (the
    target's encoder entry, {} for none)."""
    batch_size = prefix.shape[0]
    temps = schedules.temperatures(steps, decoding.temperature, decoding.temperature_end,
                                   decoding.temperature_schedule)
    stream_sets, weights = guidance_lib.streams(conditions, decoding.guidance, negatives)
    stream_sets = [{**s, **own} for s in stream_sets]
    if not any(stream_sets[0]):
      raise UsageError(f"{decoding.target}: nothing to condition on: give a condition")
    budget = round_up_budget(max(visible_tokens(s) for s in stream_sets))
    settings = self._settings(decoding, method, len(stream_sets), budget)
    fn = self._compiled_fn(settings, sequence_loop)
    full = np.full((batch_size, steps), self.text_ids.pad, np.int32)
    full[:, :prefix.shape[1]] = prefix[:, :steps]
    return np.asarray(fn(self.params, _stack(stream_sets, batch_size), jnp.asarray(full),
                         jnp.asarray(prefix_length, jnp.int32),
                         jnp.asarray(closing, jnp.int32), jnp.asarray(temps, jnp.float32),
                         jnp.asarray(weights or [1.0], jnp.float32), key))

  # Plumbing ------------------------------------------------------------------------------

  def _conditions(self, known: Mapping[str, dict], decoding: Decoding) -> dict[str, dict]:
    wanted = decoding.conditions
    if wanted is not None:
      missing = [name for name in wanted if name not in known]
      if missing:
        raise UsageError(f"{decoding.target}: conditions {missing} are not known yet "
                         f"(known: {sorted(known)})")
    conditions = {}
    for name, entry in known.items():
      if name == decoding.target or (wanted is not None and name not in wanted):
        continue
      if name not in self.input_names:
        if wanted is not None:
          raise UsageError(f"{decoding.target}: this model takes no {name!r} input "
                           f"(its inputs: {list(self.input_names)})")
        continue
      conditions[name] = entry
    return conditions

  def _settings(self, decoding: Decoding, method: str, num_streams: int, budgets,
                feed_back: bool = True) -> LoopSettings:
    return LoopSettings(target=decoding.target, method=method, top_k=int(decoding.top_k),
                        top_p=float(decoding.top_p),
                        contrastive_top_k=int(decoding.guidance.contrastive_top_k),
                        num_streams=num_streams, budgets=budgets, feed_back=feed_back,
                        pad=self.text_ids.pad, eos=self.text_ids.eos,
                        vocab_limit=self.vocab_limits.get(decoding.target))

  def _compiled_fn(self, settings: LoopSettings, loop):
    if settings not in self._compiled:
      graphdef = self.graphdef

      def run(params, *args):
        self.num_traces += 1  # runs only while jax traces
        return loop(nnx.merge(graphdef, params), settings, *args)
      self._compiled[settings] = jax.jit(run, compiler_options=self.compiler_options)
    return self._compiled[settings]


# Host-side helpers ---------------------------------------------------------------------------


def _batch_size(conditions: Mapping[str, dict], given) -> int | None:
  sizes = {np.shape(entry["input_mask"])[0] for entry in conditions.values()}
  if given is not None:
    sizes.add(np.shape(given["input_mask"])[0])
  if len(sizes) > 1:
    raise UsageError(f"the known modalities disagree on the batch size: {sorted(sizes)}")
  return sizes.pop() if sizes else None


def _stack(stream_sets: list[dict[str, dict]], batch_size: int) -> dict[str, dict]:
  """Streams of [B, ...] entries -> one batch [S * B, ...], stream after stream."""
  stacked = {}
  for name in stream_sets[0]:
    stacked[name] = {
        key: jnp.asarray(np.concatenate([np.asarray(s[name][key]) for s in stream_sets]))
        for key in stream_sets[0][name]}
    assert stacked[name]["input_mask"].shape[0] == len(stream_sets) * batch_size
  return stacked
