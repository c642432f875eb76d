"""Splitting a token budget over modalities: Dirichlet proportions, capacities,
redistribution of what a cap leaves over."""

from __future__ import annotations

import numpy as np


def draw_proportions(alphas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Proportions ~ Dirichlet over the positive alphas; exactly 0 where alpha is 0."""
  alphas = np.asarray(alphas, np.float64)
  proportions = np.zeros(len(alphas))
  positive = alphas > 0
  if positive.any():
    proportions[positive] = rng.dirichlet(alphas[positive])
  return proportions


def allocate(budget: int, proportions: np.ndarray, alphas: np.ndarray,
             capacities: np.ndarray, rng: np.random.Generator, *,
             spill: bool = True) -> np.ndarray:
  """Token counts for one drawn set of proportions (see `split_budget`). With
  `spill=False` a cap clamps and what it cuts is lost, as in the reference."""
  alphas = np.asarray(alphas, np.float64)
  capacities = np.asarray(capacities, np.int64)
  positive = alphas > 0
  counts = np.zeros(len(alphas), np.int64)
  if budget <= 0 or not positive.any():
    return counts
  counts[:] = np.floor(budget * proportions)
  rest = budget - int(counts.sum())
  if rest > 0:
    # Like the reference: the tokens the floors leave go one by one to the argmax of
    # fresh Dirichlet draws, which only ever picks a positive alpha. This favours large
    # alphas a little (about half a token per sample: ~1 pp of a 64-token budget with
    # alphas like 0.5, 1, 3); kept for fidelity to the reference's distribution.
    winners = rng.dirichlet(alphas[positive], size=rest).argmax(axis=1)
    counts[np.flatnonzero(positive)] += np.bincount(winners, minlength=int(positive.sum()))
  counts = np.minimum(counts, capacities)
  if not spill:
    return counts
  return redistribute(counts, budget - int(counts.sum()), proportions, capacities,
                      positive, rng)


def redistribute(counts: np.ndarray, leftover: int, weights: np.ndarray,
                 capacities: np.ndarray, eligible: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
  """Adds `leftover` tokens to the eligible modalities with room, in proportion to
  `weights` (evenly among them where the weights of all of them are 0)."""
  counts = counts.copy()
  while leftover > 0:
    room = capacities - counts
    open_ = eligible & (room > 0)
    if not open_.any():
      break
    share = np.where(open_, weights, 0.0)
    if share.sum() <= 0:  # the draw gave every open modality nothing (tiny alphas)
      share = open_.astype(np.float64)
    # Each token lands on an open modality, so every pass either places them all or
    # fills at least one modality: at most one pass per modality.
    extra = np.minimum(rng.multinomial(leftover, share / share.sum()), room)
    counts += extra
    leftover -= int(extra.sum())
  return counts


def split_budget(budget: int, alphas: np.ndarray, capacities: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
  """Splits `budget` tokens over modalities: proportions ~ Dirichlet(alphas), capped.

  Modalities with alpha 0 get exactly 0. The total is min(budget, sum of the
  capacities of the positive-alpha modalities). Deterministic given `rng`.
  """
  proportions = draw_proportions(alphas, rng)
  return allocate(budget, proportions, alphas, capacities, rng)
