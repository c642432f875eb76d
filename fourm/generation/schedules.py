"""How many tokens each decoding step commits, and at what temperature.

MaskGIT-style decoding of a dense target (N tokens in S steps) commits n_1 + ... + n_S =
N tokens, the most confident first (ROAR: in a random order). The schedule says how the
N are spread over the steps:

  cosine   the masked fraction after step s is cos(pi/2 * s/S): few tokens first, when
           the model knows least, many at the end (MaskGIT's choice, and 4M's default)
  linear   the same number each step
  [n_1, ..., n_S]  an explicit list, which must add up to N

Temperatures follow their own schedule over the steps: constant, linear or cosine decay
from t_start to t_end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fourm.errors import UsageError

TOKEN_SCHEDULES = ("cosine", "linear")
TEMPERATURE_SCHEDULES = ("constant", "linear", "cosine")


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
  if not 1 <= num_steps <= num_tokens:
    raise UsageError(f"{num_steps} steps for {num_tokens} tokens: need 1 <= steps <= tokens")
  if schedule not in TOKEN_SCHEDULES:
    raise UsageError(f"token schedule {schedule!r}: expected one of {TOKEN_SCHEDULES} or a "
                     "list of counts")
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


def temperatures(num_steps: int, t_start: float, t_end: float | None = None,
                 schedule: str = "constant") -> np.ndarray:
  """float [S]: the temperature of each step (t_end defaults to t_start)."""
  t_end = t_start if t_end is None else t_end
  if t_start < 0 or t_end < 0:
    raise UsageError(f"temperatures must be >= 0, got {t_start} -> {t_end}")
  if schedule not in TEMPERATURE_SCHEDULES:
    raise UsageError(f"temperature schedule {schedule!r}: expected one of "
                     f"{TEMPERATURE_SCHEDULES}")
  progress = np.arange(num_steps) / max(num_steps - 1, 1)
  if schedule == "constant":
    return np.full(num_steps, float(t_start))
  if schedule == "linear":
    return t_start + (t_end - t_start) * progress
  return t_end + (t_start - t_end) * (1 + np.cos(math.pi * progress)) / 2
