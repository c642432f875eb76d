"""How many tokens each decoding step commits, and at what temperature.

MaskGIT-style decoding of a dense target (N tokens in S steps) commits n_1 + ... + n_S =
N tokens, the most confident first (ROAR: in a random order). The schedule says how the
N are spread over the steps:

  cosine   the masked fraction after step s is cos(pi/2 * s/S): few tokens first, when
           the model knows least, many at the end (MaskGIT's choice, and 4M's default)
  linear   the same number each step
  [n_1, ..., n_S]  an explicit list, which must add up to N
  reference_cosine, reference_linear
           the reference implementation's (apple/ml-4m) schedules, for its published
           models: its cosine is symmetric (196 tokens in 8 steps: 7, 21, 32, 38, 38, 32,
           21, 7) and may give a step no token; its linear truncates the step edges and
           sorts the counts, largest first

Temperatures follow their own schedule over the steps: constant, linear or cosine decay
from t_start to t_end; or the reference's, which depend on the token counts:
reference_linear (t_start times the fraction of tokens still undecided before the step),
reference_decreasing (t_start -> t_end by the fraction decided after it) and
reference_onex (a 1/sqrt(x) curve scaled by that fraction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fourm.errors import UsageError

REFERENCE_TOKEN_SCHEDULES = ("reference_cosine", "reference_linear")
TOKEN_SCHEDULES = ("cosine", "linear", *REFERENCE_TOKEN_SCHEDULES)
REFERENCE_TEMPERATURE_SCHEDULES = ("reference_linear", "reference_decreasing",
                                   "reference_onex")
TEMPERATURE_SCHEDULES = ("constant", "linear", "cosine", *REFERENCE_TEMPERATURE_SCHEDULES)


def tokens_per_step(num_tokens: int, num_steps: int,
                    schedule: str | Sequence[int] = "cosine") -> np.ndarray:
  """int [S]: tokens committed at each step, every step at least one, summing to N."""
  if num_tokens <= 0:
    raise UsageError(f"nothing to decode: {num_tokens} tokens")
  if not isinstance(schedule, str):
    counts = np.asarray(list(schedule), np.int64)
    if counts.ndim != 1 or (counts <= 0).any() or counts.sum() != num_tokens:
      raise UsageError(f"the explicit schedule {list(counts)} must be positive counts adding "
                       f"up to the {num_tokens} tokens to decode")
    return counts
  if schedule not in TOKEN_SCHEDULES:
    raise UsageError(f"token schedule {schedule!r}: expected one of {TOKEN_SCHEDULES} or a "
                     "list of counts")
  if schedule in REFERENCE_TOKEN_SCHEDULES:
    if num_steps < 1:
      raise UsageError(f"{num_steps} steps: need at least one")
    return _reference_tokens_per_step(num_tokens, num_steps, schedule)
  if not 1 <= num_steps <= num_tokens:
    raise UsageError(f"{num_steps} steps for {num_tokens} tokens: need 1 <= steps <= tokens")
  steps = np.arange(num_steps + 1) / num_steps
  if schedule == "cosine":
    masked = np.cos(math.pi / 2 * steps)
  else:
    masked = 1 - steps
  decoded = np.round((1 - masked) * num_tokens).astype(np.int64)
  counts = np.diff(decoded)
  # Rounding can leave a step empty: take a token from the largest step for it.
  for i in np.flatnonzero(counts == 0):
    counts[np.argmax(counts)] -= 1
    counts[i] += 1
  assert counts.sum() == num_tokens and (counts > 0).all()
  return counts


def _reference_tokens_per_step(num_tokens: int, num_steps: int, schedule: str) -> np.ndarray:
  """The reference's counts (zeros allowed). Its cosine can ask one token too many early
  and balance it with a last step of -1 (16 tokens in 8 steps: 1, 2, 3, 3, 3, 3, 2, -1),
  which no decoder can do: that token is taken back from the last steps that have one."""
  if schedule == "reference_cosine":
    remaining = (1 + np.cos(math.pi * np.arange(num_steps) / num_steps)) / 2
    counts = np.round(num_tokens * (remaining[:-1] - remaining[1:])).astype(np.int64)
    counts = np.append(counts, num_tokens - counts.sum())
    for i in range(num_steps - 1, -1, -1):  # repay a negative step from the steps before it
      while counts[i] < 0:
        donor = max(j for j in range(num_steps) if counts[j] > 0)
        counts[donor] -= 1
        counts[i] += 1
    return counts
  edges = np.linspace(0, num_tokens, num_steps + 1).astype(np.int64)  # truncated
  counts = np.sort(np.diff(edges))[::-1]
  return np.trim_zeros(counts, "b")


def temperatures(num_steps: int, t_start: float, t_end: float | None = None,
                 schedule: str = "constant", counts: np.ndarray | None = None) -> np.ndarray:
  """float [S]: the temperature of each step (t_end defaults to t_start). The reference's
  schedules need the tokens each step commits, `counts` [S] (one per step for text)."""
  t_end = t_start if t_end is None else t_end
  if t_start < 0 or t_end < 0:
    raise UsageError(f"temperatures must be >= 0, got {t_start} -> {t_end}")
  if schedule not in TEMPERATURE_SCHEDULES:
    raise UsageError(f"temperature schedule {schedule!r}: expected one of "
                     f"{TEMPERATURE_SCHEDULES}")
  if schedule in REFERENCE_TEMPERATURE_SCHEDULES:
    counts = np.ones(num_steps, np.int64) if counts is None else np.asarray(counts, np.int64)
    return _reference_temperatures(t_start, t_end, schedule, counts)
  progress = np.arange(num_steps) / max(num_steps - 1, 1)
  if schedule == "constant":
    return np.full(num_steps, float(t_start))
  if schedule == "linear":
    return t_start + (t_end - t_start) * progress
  return t_end + (t_start - t_end) * (1 + np.cos(math.pi * progress)) / 2


def _reference_temperatures(t_max: float, t_min: float, schedule: str,
                            counts: np.ndarray) -> np.ndarray:
  total = counts.sum()
  decided_after = np.cumsum(counts) / total
  if schedule == "reference_linear":
    undecided_before = np.concatenate([[1.0], 1.0 - decided_after[:-1]])
    return np.clip(t_max * undecided_before, 1e-9, None)
  if schedule == "reference_decreasing":
    return t_min + (t_max - t_min) * (1.0 - decided_after)
  # onex: 1/sqrt(x) on [1, 100] sampled at one point per token, rescaled to [0, 1]; the
  # reference pairs its first S points with the S steps (zip stops at the shorter).
  curve = 1.0 / np.sqrt(np.linspace(1, 100, num=int(total)))
  curve = curve - curve.min()
  curve = curve / curve.max()
  scaled = curve[:len(counts)] * (1.0 - decided_after)
  return np.clip(t_min + (t_max - t_min) * scaled, 1e-9, None)
