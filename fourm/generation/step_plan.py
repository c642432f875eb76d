"""The plan of a dense decoding loop, fixed before it runs: per step, how many tokens
each sample commits and with how many encoder and decoder slots.

`schedules.tokens_per_step` spreads one sample's undecided tokens over the steps;
`step_counts` does it for a batch whose samples may have different numbers left (in-
and out-painting). `step_budgets` sizes each step exactly, for the sample that needs the
most (a fixed size would pay for the largest step every time). Encoder budgets are
rounded up to `BUDGET_QUANTUM`, so that conditions of slightly different lengths share
one compiled loop.

Every distinct size is one more step body in the compiled loop, so exact sizes would
make the program, and its compile time, grow with the number of steps.
`bucketed_budgets` gives the steps at most `MAX_SHAPES` sizes whatever their number, the
fewest slots that allows, and `step_shapes` turns them into what the loop is compiled
for (the distinct shapes) and what it is given each time (which shape each step runs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from fourm.generation import schedules

# Encoder budgets are rounded up to this, so that conditions of slightly different
# lengths (captions) share one compiled function.
BUDGET_QUANTUM = 16

# The most (encoder slots, decoder slots) shapes a dense loop's steps run with, each one
# step body in its program. Five: an 8-step schedule (the default) compiles 5 bodies
# instead of 8, and a 64-step one 5 instead of 64, for 3% more slots than exact sizes
# over 8 cosine steps of 196 tokens and 9 to 13% over 16 to 64 (four shapes: 7%, and 14
# to 16%). Sizes fixed for all schedules (quarters of the target) would let more of them
# share programs, but computed ~20% more slots (steps 16% slower, measured) in as many.
MAX_SHAPES = 5


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
  """(encoder slots, decoder slots) of each step, exactly: the conditions plus the tokens
  decided before it (rounded up, so nearby condition lengths share a compilation), and
  the tokens still undecided (with `asks_committed_only`, as ROAR: the tokens the step
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


def bucketed_budgets(budgets: tuple[tuple[int, int], ...], max_shapes: int = MAX_SHAPES
                     ) -> tuple[tuple[int, int], ...]:
  """Per-step `budgets` (from `step_budgets`) rounded up to at most `max_shapes` distinct
  ones: the steps split into runs of consecutive steps, each run given the largest
  encoder and the largest decoder budget of its steps, in the split into at most
  `max_shapes` runs that computes the fewest slots (then the one with fewest runs).

  Runs, because consecutive steps are alike: MaskGIT's encoder budgets grow and decoder
  budgets shrink step by step. Slots the step does not need are padding, which the model
  masks; a decoder budget stays at most the target's tokens.
  """
  encoder, decoder = (np.array([budget[axis] for budget in budgets]) for axis in (0, 1))
  steps = len(budgets)
  # fewest[r, j]: the fewest slots the first j steps compute in r runs, the last of
  # which starts at step first[r, j] (dynamic programming over the run ends j).
  fewest = np.full((max_shapes + 1, steps + 1), np.inf)
  fewest[0, 0] = 0
  first = np.zeros((max_shapes + 1, steps + 1), np.int64)
  for end in range(1, steps + 1):
    starts = np.arange(end)
    run_slots = (end - starts) * (_max_from(encoder[:end]) + _max_from(decoder[:end]))
    totals = fewest[:-1, :end] + run_slots  # [runs - 1, start of the last run]
    first[1:, end], fewest[1:, end] = totals.argmin(1), totals.min(1)
  bucketed, end = [None] * steps, steps
  for runs in range(int(fewest[1:, steps].argmin()) + 1, 0, -1):  # the last run first
    start = int(first[runs, end])
    shape = (int(encoder[start:end].max()), int(decoder[start:end].max()))
    bucketed[start:end] = [shape] * (end - start)
    end = start
  return tuple(bucketed)


def _max_from(values: np.ndarray) -> np.ndarray:
  """[i]: the largest of values[i:]."""
  return np.maximum.accumulate(values[::-1])[::-1]


@dataclasses.dataclass(frozen=True)
class StepShapes:
  """The slot shapes of a dense loop: the distinct (encoder slots, decoder slots) its
  steps run with, each one step body in the compiled loop, and which one each step runs."""
  shapes: tuple[tuple[int, int], ...]
  of_step: np.ndarray  # int32 [S]: an index into `shapes`


def step_shapes(budgets: tuple[tuple[int, int], ...]) -> StepShapes:
  """Per-step budgets (from `bucketed_budgets`; `step_budgets` for a shape a step) as
  their distinct shapes, in order, and each step's index among them."""
  shapes = tuple(sorted(set(budgets)))
  index = {shape: i for i, shape in enumerate(shapes)}
  return StepShapes(shapes, np.array([index[budget] for budget in budgets], np.int32))
