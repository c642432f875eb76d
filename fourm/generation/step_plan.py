"""The plan of a dense decoding loop, fixed before it runs: per step, how many tokens
each sample commits and how many encoder and decoder slots the step computes.

`schedules.tokens_per_step` spreads one sample's undecided tokens over the steps;
`step_counts` does it for a batch whose samples may have different numbers left (in-
and out-painting). `step_budgets` sizes each step for the sample that needs the most,
so no step computes more slots than it has tokens (a fixed size would pay for the
largest step every time). Encoder budgets are rounded up to `BUDGET_QUANTUM`, so that
conditions of slightly different lengths share one compiled loop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fourm.generation import schedules

# Encoder budgets are rounded up to this, so that conditions of slightly different
# lengths (captions) share one compiled function.
BUDGET_QUANTUM = 16


def round_up_budget(count: int) -> int:
  """`count` encoder slots rounded up to a multiple of `BUDGET_QUANTUM` (at least one quantum)."""
  return max(BUDGET_QUANTUM, math.ceil(count / BUDGET_QUANTUM) * BUDGET_QUANTUM)


def visible_tokens(stream: Mapping[str, dict]) -> int:
  """The most encoder tokens any sample of a stream (modality -> entry) has."""
  total = 0
  for entry in stream.values():
    total = total + np.asarray(entry["input_mask"]).reshape(
        np.shape(entry["input_mask"])[0], -1).sum(1)
  return int(np.max(total)) if np.size(total) else 0


def step_counts(undecided: np.ndarray, num_steps: int, schedule) -> np.ndarray:
  """int [B, S]: tokens each sample commits at each step, for `undecided` [B] tokens
  left per sample, along the token `schedule` ("cosine", "linear" or explicit counts,
  which set S themselves). Samples with fewer tokens left than steps take one per step
  and then none."""
  steps = len(schedule) if not isinstance(schedule, str) else num_steps
  # The reference's schedules may leave steps empty: they keep every step.
  keep_steps = isinstance(schedule, str) and schedule in schedules.REFERENCE_TOKEN_SCHEDULES
  counts = np.zeros((len(undecided), steps), np.int64)
  for row, left in enumerate(undecided):
    if left > 0:
      per_step = schedules.tokens_per_step(
          int(left), steps if keep_steps else min(steps, int(left)), schedule)
      counts[row, :len(per_step)] = per_step
  return counts


def step_budgets(given: np.ndarray, counts: np.ndarray, n: int, conditions: int,
                 feed_back: bool, asks_committed_only: bool = False
                 ) -> tuple[tuple[int, int], ...]:
  """(encoder slots, decoder slots) of each step: the conditions plus the tokens decided
  before it (rounded up, so nearby condition lengths share a compilation), and the
  tokens still undecided (with `asks_committed_only`, as ROAR: the tokens the step
  commits), for the sample that has the most.

  given: int [B], tokens of the target known before the first step; counts: int [B, S]
  from `step_counts`; n: the target's tokens; conditions: the encoder tokens of the
  conditions; feed_back: whether decided target tokens go back into the encoder.
  """
  decided_before = given[:, None] + np.cumsum(counts, axis=1) - counts  # [B, S]
  budgets = []
  for step in range(counts.shape[1]):
    fed = int(decided_before[:, step].max()) if feed_back else 0
    asked = (int(counts[:, step].max()) if asks_committed_only
             else n - int(decided_before[:, step].min()))
    budgets.append((round_up_budget(conditions + fed), max(1, asked)))
  return tuple(budgets)
