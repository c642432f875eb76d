"""T5-style span masking of sequences with sentinels, and which tokens the encoder
keeps."""

from __future__ import annotations

import numpy as np

from fourm.errors import UsageError
from tokenizers_vq.text import TextSpecialIds

# How a sequence decides which of its tokens the encoder sees (the reference's `keep`).
KEEP_SCHEMES = ("random", "all", "binary")
# Each failed try at fitting a sequence's input into its budget lowers keep_prob by this.
KEEP_PROB_DECAY = 0.9
# The reference numbers spans from [S_1]; [S_0] is never used in training.
FIRST_SPAN = 1


def input_length(keep: np.ndarray) -> np.ndarray:
  """Length of the encoder sequence for keep masks [..., n]: kept tokens + one sentinel
  per run of masked tokens."""
  masked = ~keep
  span_starts = masked[..., 0].astype(np.int64)
  span_starts = span_starts + (masked[..., 1:] & keep[..., :-1]).sum(-1)
  return keep.sum(-1) + span_starts


def choose_keep_mask(length: int, input_budget: int, scheme: str,
                     rng: np.random.Generator, chunk_of: np.ndarray | None = None
                     ) -> np.ndarray:
  """Which tokens of a sequence the encoder sees, as the reference picks them: each kept
  with keep_prob; while the input is over budget, keep_prob *= 0.9 and redraw.

  `chunk_of` [length] (ascending chunk numbers from 0): the draws are per chunk and a
  chunk's tokens are kept or masked together, the reference's chunk span masking of
  metadata (a "v1=<kind> v0=<bin>" entry is never cut in half)."""
  if input_budget <= 0:  # the reference: no input at all, the whole text is the target
    return np.zeros(length, bool)
  draws = length
  if chunk_of is not None:
    chunk_of = np.asarray(chunk_of)
    draws = int(chunk_of[-1]) + 1 if length else 0
  if scheme == "random":
    keep_prob = rng.random()
  elif scheme == "all":
    keep_prob = 1.0
  elif scheme == "binary":
    keep_prob = float(rng.integers(2))
  else:
    raise UsageError(f"keep is {scheme!r}, expected one of {list(KEEP_SCHEMES)}")
  rows = 1  # usually the first draw fits; the rest are tried 16 at a time
  while keep_prob > 1e-30:
    # Drawing the next tries in one go is the same as drawing them one after another:
    # every try uses fresh uniforms, and the first that fits wins.
    keep_probs = keep_prob * KEEP_PROB_DECAY ** np.arange(rows)
    keep = rng.random((rows, draws)) < keep_probs[:, None]
    if chunk_of is not None:
      keep = keep[:, chunk_of]
    fits = np.flatnonzero(input_length(keep) <= input_budget)
    if fits.size:
      return keep[fits[0]]
    keep_prob *= KEEP_PROB_DECAY ** rows
    rows = 16
  return np.zeros(length, bool)  # everything in one span: one sentinel, fits any budget >= 1


def span_mask(ids: np.ndarray, keep: np.ndarray,
              text_ids: TextSpecialIds = TextSpecialIds()) -> tuple[np.ndarray, np.ndarray]:
  """T5-style span masking: (encoder sequence, decoder sequence).

  Masked runs become spans numbered from [S_1]. The encoder sequence is the kept tokens
  with each span's sentinel in its place; the decoder sequence is every span after its
  sentinel, closed by the next sentinel: [S_1] span_1 ... [S_k] span_k [S_k+1].
  """
  ids = np.asarray(ids, np.int32)
  masked = ~keep
  starts = masked.copy()
  starts[1:] &= keep[:-1]
  span_number = np.cumsum(starts)
  sentinels = (text_ids.first_sentinel + FIRST_SPAN - 1 + span_number).astype(np.int32)
  inputs = np.where(keep, ids, sentinels)[keep | starts]

  num_spans = int(span_number[-1]) if len(ids) else 0
  # Every masked token writes itself, a span's first token its sentinel before it.
  ends = np.cumsum(masked.astype(np.int64) + starts)
  target = np.empty(int(masked.sum()) + num_spans + 1, np.int32)
  target[ends[masked] - 1] = ids[masked]
  target[ends[starts] - 2] = sentinels[starts]
  target[-1] = text_ids.sentinel(FIRST_SPAN + num_spans)
  return inputs, target


def truncate_target(target: np.ndarray, num_predictions: int, rng: np.random.Generator,
                    text_ids: TextSpecialIds = TextSpecialIds()) -> np.ndarray:
  """Cuts a decoder sequence to at most `num_predictions` predictions (its length - 1)
  as the reference does: a window from a random sentinel (not the closing one), or, when
  that window would run off the end, the longest suffix from a sentinel that fits."""
  if num_predictions <= 0:
    return target[:0]
  if len(target) - 1 <= num_predictions:
    return target
  window = num_predictions + 1
  starts = np.flatnonzero(text_ids.is_sentinel(target))
  start = starts[rng.integers(max(1, len(starts) - 1))]
  if len(target) - start >= window:
    return target[start:start + window]
  return target[starts[len(target) - starts <= window][0]:]
