"""The sampler: one target modality generated from the modalities known so far.

What is known is a dict of model entries, batched (B samples), in the encoder's format
(fourm/models/CONTRACT.md, input side only):

  token grids, global   {"tokens": int32 [B, N], "input_mask": bool [B, N]}
  pixels (rgb)          {"tokens": float32 [B, R, R, 3] normalised, "input_mask": [B, N]}
  feature maps          {"tokens": float32 [B, N, C], "input_mask": bool [B, N]}
  sequences             {"input_tokens": int32 [B, L], "input_mask": bool [B, L]}

`Sampler.generate(known, Decoding(target=...), key)` returns `known` with the target
filled in, ready to condition the next target (`chain.py` strings them together). A
target already in `known` is a partial input: its visible tokens are kept and only the
rest is generated (in-painting, out-painting; for sequences, span in-filling at the
sentinels of the given text).

Dense targets decode MaskGIT-style: each step runs the encoder on the conditions plus
the target tokens decided so far (fed back as inputs, as the reference does) and the
decoder on the undecided positions, samples every one of them, and commits the most
confident (MaskGIT) or a random subset (ROAR) of the size the token schedule says.
Sequences decode left to right with a key/value cache (`fourm/models/incremental.py`)
until [EOS] or the closing sentinel. Each whole loop is one jit-compiled function with
static shapes: one compilation per target, batch shape, set of guidance streams and
token schedule, none between steps. A dense loop is unrolled, each step with as many
encoder and decoder slots as it has tokens (the reference's cost, where a fixed-size loop
would pay for the largest step every time); temperatures and guidance weights are traced
values, so changing them does not recompile. For sequences, `max_new_tokens` sizes the
key/value cache.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm import modalities
from fourm.data.masking import FIRST_SPAN
from tokenizers_vq.text import TextSpecialIds
from fourm.errors import UsageError
from fourm.generation import guidance as guidance_lib
from fourm.generation import sampling, schedules
from fourm.models import incremental, slots

Kind = modalities.Kind
METHODS = ("maskgit", "roar", "autoregressive")
# Encoder budgets are rounded up to this, so that conditions of slightly different
# lengths (captions) share one compiled function.
BUDGET_QUANTUM = 16


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How one target is generated: one link of a chain.

  method: "maskgit" (most confident first) or "roar" (random order) for token grids,
    "autoregressive" for sequences; None picks by kind.
  num_steps, token_schedule: dense decoding steps; "cosine", "linear" or an explicit
    list of tokens per step (adding up to the tokens to generate).
  temperature -> temperature_end over the steps (or over the tokens of a sequence),
    along temperature_schedule ("constant", "linear", "cosine"); 0 is greedy.
  top_k, top_p: filtering before sampling (0 = off).
  guidance: classifier-free / multi-condition guidance, contrastive top-K.
  conditions: the known modalities the target may see (None: all of them).
  max_new_tokens: sequences stop after this many tokens at the latest.
  """
  target: str
  method: str | None = None
  num_steps: int = 8
  token_schedule: str | tuple[int, ...] = "cosine"
  temperature: float = 1.0
  temperature_end: float | None = None
  temperature_schedule: str = "constant"
  top_k: int = 0
  top_p: float = 0.0
  guidance: guidance_lib.Guidance = guidance_lib.Guidance()
  conditions: tuple[str, ...] | None = None
  max_new_tokens: int | None = None

  def __post_init__(self):
    if not isinstance(self.token_schedule, str):
      object.__setattr__(self, "token_schedule", tuple(int(n) for n in self.token_schedule))
    if self.conditions is not None:
      object.__setattr__(self, "conditions", tuple(self.conditions))
    if isinstance(self.guidance, Mapping):
      object.__setattr__(self, "guidance", guidance_lib.Guidance(**self.guidance))

  def resolved_method(self) -> str:
    spec = modalities.get(self.target)
    default = "autoregressive" if spec.kind == Kind.SEQUENCE else "maskgit"
    method = self.method or default
    if method not in METHODS:
      raise UsageError(f"{self.target}: decoding method {method!r}, expected one of {METHODS}")
    if (method == "autoregressive") != (spec.kind == Kind.SEQUENCE):
      raise UsageError(f"{self.target} is a {spec.kind.value} modality: decode it with "
                       f"{default!r}, not {method!r}")
    return method


@dataclasses.dataclass(frozen=True)
class _Static:
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


class Sampler:
  """Generates targets with a trained `FourM` (any input/target budgets: the sampler
  sets its own per call)."""

  def __init__(self, model, text_ids: TextSpecialIds = TextSpecialIds(),
               vocab_limits: Mapping[str, int] | None = None):
    """`vocab_limits` {modality: n}: only ids below n are sampled, for tokenizers with
    fewer codes than the model's vocabulary (ids beyond them could not be decoded)."""
    self.graphdef, self.params = nnx.split(model, nnx.Param)
    self.vocab_limits = dict(vocab_limits or {})
    self.model_names = tuple(model.modality_names)
    self.input_names, self.target_names = model.input_names, model.target_names
    self.layout = model.layout
    self.text_ids = text_ids
    self._compiled: dict[_Static, callable] = {}
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
    counts = _step_counts(n - decided.sum(1), decoding.num_steps, decoding.token_schedule)
    temps = schedules.temperatures(counts.shape[1], decoding.temperature,
                                   decoding.temperature_end, decoding.temperature_schedule)
    feed_back = decoding.target in self.input_names
    stream_sets, weights = guidance_lib.streams(conditions, decoding.guidance, negatives)
    budgets = _step_budgets(decided.sum(1), counts, n,
                            max(_visible(s) for s in stream_sets), feed_back)
    static = self._static(decoding, method, len(stream_sets), budgets, feed_back=feed_back)
    fn = self._compiled_fn(static, _dense_loop)
    out = fn(self.params, _stack(stream_sets, batch_size), jnp.asarray(tokens),
             jnp.asarray(decided), jnp.asarray(counts, jnp.int32),
             jnp.asarray(temps, jnp.float32), jnp.asarray(weights or [1.0], jnp.float32), key)
    return {"tokens": np.asarray(out), "input_mask": np.ones((batch_size, n), bool)}

  # Sequences -----------------------------------------------------------------------------

  def _generate_sequence(self, given, conditions, decoding, method, key, negatives):
    spec = modalities.get(decoding.target)
    ids = self.text_ids
    batch_size = _batch_size(conditions, given)
    if batch_size is None:
      raise UsageError(f"{decoding.target}: nothing to condition on: give a condition")
    length = spec.max_length
    if given is None:
      given = {"input_tokens": np.full((batch_size, length), ids.pad, np.int32),
               "input_mask": np.zeros((batch_size, length), bool)}
    given_tokens = np.where(given["input_mask"], given["input_tokens"], ids.pad)
    spans = ids.is_sentinel(given_tokens).sum(1)
    # A text given without sentinels is complete: nothing to fill in.
    given_has_text = np.asarray(given["input_mask"]).any(1)
    if (given_has_text & (spans == 0)).any():
      raise UsageError(f"{decoding.target}: the given text has no sentinel ([S_1], ...) to "
                       "fill in; give it as a condition instead, or mark the gaps")
    # The decoder writes [S_1] span_1 [S_2] ... and closes with [S_(spans + 1)]; from
    # scratch the whole text is one span, closed by [EOS] first.
    closing = ids.first_sentinel + FIRST_SPAN + np.maximum(spans, 1)
    steps = min(length, 1 + (decoding.max_new_tokens or length))
    temps = schedules.temperatures(steps, decoding.temperature, decoding.temperature_end,
                                   decoding.temperature_schedule)
    own = {decoding.target: {"input_tokens": np.asarray(given["input_tokens"], np.int32),
                             "input_mask": np.asarray(given["input_mask"], bool)}}
    stream_sets, weights = guidance_lib.streams(conditions, decoding.guidance, negatives)
    stream_sets = [{**s, **own} for s in stream_sets]
    budget = _round_up(max(_visible(s) for s in stream_sets))
    static = self._static(decoding, method, len(stream_sets), budget)
    fn = self._compiled_fn(static, _sequence_loop)
    start = np.full(batch_size, ids.sentinel(FIRST_SPAN), np.int32)
    out = np.asarray(fn(self.params, _stack(stream_sets, batch_size), jnp.asarray(start),
                        jnp.asarray(closing, jnp.int32), jnp.asarray(temps, jnp.float32),
                        jnp.asarray(weights or [1.0], jnp.float32), key))
    texts = [fill_spans(given_tokens[b], out[b], ids) for b in range(batch_size)]
    return sequence_entry(texts, length, ids)

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

  def _static(self, decoding: Decoding, method: str, num_streams: int, budgets,
              feed_back: bool = True) -> _Static:
    return _Static(target=decoding.target, method=method, top_k=int(decoding.top_k),
                   top_p=float(decoding.top_p),
                   contrastive_top_k=int(decoding.guidance.contrastive_top_k),
                   num_streams=num_streams, budgets=budgets, feed_back=feed_back,
                   pad=self.text_ids.pad, eos=self.text_ids.eos,
                   vocab_limit=self.vocab_limits.get(decoding.target))

  def _compiled_fn(self, static: _Static, loop):
    if static not in self._compiled:
      graphdef = self.graphdef

      def run(params, *args):
        self.num_traces += 1  # runs only while jax traces
        return loop(nnx.merge(graphdef, params), static, *args)
      self._compiled[static] = jax.jit(run)
    return self._compiled[static]


# The compiled loops ------------------------------------------------------------------------


def _tile(x: jax.Array, times: int) -> jax.Array:
  return jnp.concatenate([x] * times, axis=0) if times > 1 else x


def _dense_loop(model, static: _Static, batch, tokens, decided, counts, temps, weights, key):
  name, streams = static.target, static.num_streams
  batch_size, n = tokens.shape
  rows = jnp.arange(batch_size)[:, None]
  # Unrolled: each step has its own static slot counts (a while loop would need the
  # largest for all). Still one compilation for the whole schedule.
  for index, (input_budget, target_budget) in enumerate(static.budgets):
    key, sample_key, order_key = jax.random.split(key, 3)
    undecided = ~decided
    target = {"tokens": _tile(tokens, streams), "input_mask": _tile(decided, streams),
              "target_mask": _tile(undecided, streams)}
    inputs = {**batch, name: target} if static.feed_back else batch
    context, valid = model.encode(inputs, input_budget)
    hidden = model.decode({name: target}, context, valid, target_budget).hidden
    logits = model.logits(name, hidden)[..., :static.vocab_limit]
    logits = logits.reshape(streams, batch_size, target_budget, -1)
    logits = guidance_lib.combine(logits, weights, static.contrastive_top_k)
    ids, confidence = sampling.sample(sample_key, logits, temps[index], static.top_k,
                                      static.top_p)
    # Decoder slots hold undecided positions in order (a sample with fewer than the
    # budget fills the rest with decided ones, which nothing commits): put them back.
    order, used = slots.select(undecided, target_budget)
    ids = jnp.zeros_like(tokens).at[rows, order].set(ids)
    confidence = jnp.full(tokens.shape, -jnp.inf).at[rows, order].set(
        jnp.where(used, confidence, -jnp.inf))
    if static.method == "roar":
      confidence = sampling.random_order_scores(order_key, confidence.shape)
    commit = sampling.commit_most_confident(confidence, undecided, counts[:, index][:, None])
    tokens, decided = jnp.where(commit, ids, tokens), decided | commit
  return tokens


def _sequence_loop(model, static: _Static, batch, start, closing, temps, weights, key):
  name, streams = static.target, static.num_streams
  length = temps.shape[0]  # positions: the start token and what follows it
  batch_size = start.shape[0]
  context, valid = model.encode(batch, static.budgets)
  cache = incremental.init_cache(model, context, valid, length)
  tokens = jnp.full((batch_size, length), static.pad, jnp.int32).at[:, 0].set(start)

  def running(carry):
    position, _, done, _, _ = carry
    return (position < length - 1) & ~jnp.all(done)

  def step(carry):
    position, tokens, done, cache, key = carry
    key, sample_key = jax.random.split(key)
    current = _tile(jax.lax.dynamic_index_in_dim(tokens, position, axis=1, keepdims=False),
                    streams)
    hidden, cache = incremental.decode_step(model, name, cache, current, position)
    logits = model.logits(name, hidden)[..., :static.vocab_limit]
    logits = logits.reshape(streams, batch_size, -1)
    logits = guidance_lib.combine(logits, weights, static.contrastive_top_k)
    ids, _ = sampling.sample(sample_key, logits, temps[position], static.top_k, static.top_p)
    ids = jnp.where(done, static.pad, ids)
    tokens = jax.lax.dynamic_update_index_in_dim(tokens, ids, position + 1, axis=1)
    done = done | (ids == static.eos) | (ids == closing)
    return position + 1, tokens, done, cache, key

  carry = (jnp.int32(0), tokens, jnp.zeros(batch_size, bool), cache, key)
  return jax.lax.while_loop(running, step, carry)[1]


# Host-side helpers ---------------------------------------------------------------------------


def _round_up(count: int) -> int:
  return max(BUDGET_QUANTUM, math.ceil(count / BUDGET_QUANTUM) * BUDGET_QUANTUM)


def _visible(stream: Mapping[str, dict]) -> int:
  """The most encoder tokens any sample of a stream has."""
  total = 0
  for entry in stream.values():
    total = total + np.asarray(entry["input_mask"]).reshape(
        np.shape(entry["input_mask"])[0], -1).sum(1)
  return int(np.max(total)) if np.size(total) else 0


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


def _step_budgets(given: np.ndarray, counts: np.ndarray, n: int, conditions: int,
                  feed_back: bool) -> tuple[tuple[int, int], ...]:
  """(encoder slots, decoder slots) of each step: the conditions plus the tokens decided
  before it (rounded up, so nearby condition lengths share a compilation), and the
  tokens still undecided, for the sample that has the most."""
  decided_before = given[:, None] + np.cumsum(counts, axis=1) - counts  # [B, S]
  budgets = []
  for step in range(counts.shape[1]):
    fed = int(decided_before[:, step].max()) if feed_back else 0
    undecided = n - int(decided_before[:, step].min())
    budgets.append((_round_up(conditions + fed), max(1, undecided)))
  return tuple(budgets)


def _step_counts(undecided: np.ndarray, num_steps: int, schedule) -> np.ndarray:
  """int [B, S]: tokens each sample commits at each step. Samples with fewer tokens
  left than steps take one per step and then none."""
  steps = len(schedule) if not isinstance(schedule, str) else num_steps
  counts = np.zeros((len(undecided), steps), np.int64)
  for row, left in enumerate(undecided):
    if left > 0:
      per_step = schedules.tokens_per_step(int(left), min(steps, int(left)), schedule)
      counts[row, :len(per_step)] = per_step
  return counts


def fill_spans(given: np.ndarray, generated: np.ndarray, ids: TextSpecialIds) -> np.ndarray:
  """The complete text (ids, ending in [EOS] when the model ended it) from the given
  encoder text (with sentinels; empty = generate from scratch) and the decoder's output
  "[S_1] span_1 [S_2] span_2 ...".
  """
  given = given[given != ids.pad]
  spans: dict[int, list[int]] = {}
  current = None
  for token in generated.tolist():
    if ids.is_sentinel(np.asarray(token)):
      current = token
      spans.setdefault(current, [])
    elif token == ids.pad:
      break
    elif current is not None:
      spans[current].append(token)
      if token == ids.eos:
        break
  if not given.size:
    return np.asarray(spans.get(ids.sentinel(FIRST_SPAN), []), np.int32)
  text: list[int] = []
  for token in given.tolist():
    text.extend(spans.get(token, []) if ids.is_sentinel(np.asarray(token)) else [token])
    if text and text[-1] == ids.eos:
      break
  return np.asarray(text, np.int32)


def sequence_entry(texts: list[np.ndarray], length: int,
                   ids: TextSpecialIds = TextSpecialIds()) -> dict[str, np.ndarray]:
  """Complete texts (token ids) as a sequence condition, the way training shows a whole
  caption to the encoder: the text and its [EOS], no sentinels."""
  tokens = np.full((len(texts), length), ids.pad, np.int32)
  mask = np.zeros((len(texts), length), bool)
  for row, text in enumerate(texts):
    text = np.asarray(text, np.int32)
    if not text.size or text[-1] != ids.eos:
      text = np.append(text, np.int32(ids.eos))
    text = text[:length]
    tokens[row, :len(text)] = text
    mask[row, :len(text)] = True
  return {"input_tokens": tokens, "input_mask": mask}
