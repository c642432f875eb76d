"""Guidance: steering a target's logits with several forward passes that see different
conditions.

Every guided decoding step runs the model on a stack of *streams* (one batch each): the
streams with a weight, then the unconditional stream, which sees none of the conditions
(only the target's own tokens decoded so far). With logits l_k and unconditional u:

  guided = u + sum_k w_k (l_k - u)

* classifier-free guidance at scale s: one stream with every condition, w = s; s = 1 is
  the conditional model, and s - 1 is the guidance weight;
* multi-condition guidance: one stream per conditioning modality (it alone visible),
  each with its own weight; a negative weight pushes away from that condition;
* negative prompts: a stream with every condition but some replaced by negative values,
  weighted -negative_scale.

The sum is evaluated as l_0 + (w_0 - 1)(l_0 - u) + sum_{k>0} w_k (l_k - u): the same
number, but at guidance weight 0 (w_0 = 1, nothing else) it is l_0 exactly, bit for
bit, whatever the unconditional stream says.

Contrastive decoding top-K (CD-K, CM3leon): only the K most likely tokens of the first
stream (the conditional "expert") stay eligible; among them the guided score, which
grows with how much more likely the conditions make a token than the unconditional
"amateur" does, decides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fourm.errors import UsageError
from fourm.generation.sampling import NEG_INF


@dataclasses.dataclass(frozen=True)
class Guidance:
  """How a target is guided. The default guides nothing (one conditional pass)."""
  scale: float | None = None                  # classifier-free guidance scale s
  condition_weights: tuple[tuple[str, float], ...] = ()  # multi-condition, per modality
  negative_scale: float = 1.0                 # weight of the negative-conditions stream
  contrastive_top_k: int = 0                  # CD-K; needs guidance

  def __post_init__(self):
    if isinstance(self.condition_weights, Mapping):
      object.__setattr__(self, "condition_weights",
                         tuple(sorted((str(k), float(v))
                                      for k, v in self.condition_weights.items())))
    if self.scale is not None and self.condition_weights:
      raise UsageError("give either a guidance scale or per-condition weights, not both")
    if self.contrastive_top_k < 0:
      raise UsageError(f"contrastive_top_k must be >= 0, got {self.contrastive_top_k}")

  @property
  def guided(self) -> bool:
    return self.scale is not None or bool(self.condition_weights)


def streams(conditions: Mapping[str, dict], guidance: Guidance,
            negatives: Mapping[str, dict] | None = None
            ) -> tuple[list[dict[str, dict]], list[float]]:
  """The condition sets of the weighted streams and the unconditional one (last), and
  the weights of the former. Hidden conditions keep their place with an empty input
  mask, so every stream has the same shapes and they stack into one batch."""
  negatives = {k: v for k, v in (negatives or {}).items() if k in conditions}
  if not guidance.guided:
    if negatives:
      raise UsageError(f"negative conditions {sorted(negatives)} need guidance: set a "
                       "guidance scale or per-condition weights")
    if guidance.contrastive_top_k:
      raise UsageError("contrastive decoding compares against the unconditional model: "
                       "set a guidance scale or per-condition weights")
    return [dict(conditions)], []

  def visible(names) -> dict[str, dict]:
    return {name: entry if name in names else hidden(entry)
            for name, entry in conditions.items()}

  if guidance.condition_weights:
    unknown = [name for name, _ in guidance.condition_weights if name not in conditions]
    if unknown:
      raise UsageError(f"guidance weights for {unknown}, which are not conditions of this "
                       f"target (its conditions: {sorted(conditions)})")
    weighted = [(visible({name}), weight) for name, weight in guidance.condition_weights]
  else:
    weighted = [(dict(conditions), guidance.scale)]
  if negatives:
    weighted.append(({**conditions, **negatives}, -guidance.negative_scale))
  sets = [stream for stream, _ in weighted] + [visible(set())]
  return sets, [float(weight) for _, weight in weighted]


def hidden(entry: dict) -> dict:
  """A condition's entry with nothing of it visible to the encoder."""
  return {**entry, "input_mask": np.zeros_like(entry["input_mask"])}


def combine(logits: jax.Array, weights: jax.Array, contrastive_top_k: int = 0) -> jax.Array:
  """logits [S, ..., V] of S streams (the unconditional one last when guided) and the
  weights [S - 1] -> the guided logits [..., V]."""
  if logits.shape[0] == 1:
    return logits[0]
  logits = logits.astype(jnp.float32)
  unconditional, first = logits[-1], logits[0]
  guided = first + (weights[0] - 1.0) * (first - unconditional)
  for k in range(1, logits.shape[0] - 1):
    guided = guided + weights[k] * (logits[k] - unconditional)
  if contrastive_top_k and contrastive_top_k < logits.shape[-1]:
    kth = jax.lax.top_k(first, contrastive_top_k)[0][..., -1:]
    guided = jnp.where(first >= kth, guided, NEG_INF)
  return guided
