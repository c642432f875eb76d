"""The 4M objective: cross-entropy of every decoder slot under its modality's head.

Two reductions, as the reference offers:
* "mod": mean over each modality's target tokens, then mean over the modalities that
  have targets in the batch (every modality weighs the same, however many tokens it has);
* "token": mean over all target tokens of the batch.
Per-modality losses are always reported.

The decoder slots of a sample belong to different modalities with different
vocabularies, in numbers that change per sample (Dirichlet budgets). With static
shapes, each modality's tied head runs over all slots and the slots of other
modalities are masked out of its loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

LOSS_TYPES = ("mod", "token")


def per_modality_losses(model, output, names: Sequence[str]) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{modality: (sum of token losses, number of target tokens)} over the batch."""
  sums = {}
  for index, name in enumerate(names):
    mask = (output.modality_index == index) & output.valid
    if not model.can_predict(name):
      continue
    logits = model.logits(name, output.hidden).astype(jnp.float32)
    # Labels of other modalities' slots may exceed this vocabulary: clip, they are masked.
    labels = jnp.clip(output.labels, 0, logits.shape[-1] - 1)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    sums[name] = (jnp.sum(token_loss * mask), jnp.sum(mask))
  return sums


def fourm_loss(model, output, names: Sequence[str], loss_type: str = "mod"
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Scalar loss and metrics {"loss", "loss/<modality>", "tokens/<modality>"}."""
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
  sums = per_modality_losses(model, output, names)
  metrics = {}
  means, present = [], []
  for name, (total, count) in sums.items():
    mean = total / jnp.maximum(count, 1)
    metrics[f"loss/{name}"] = mean
    metrics[f"tokens/{name}"] = count
    means.append(mean)
    present.append(count > 0)
  means, present = jnp.stack(means), jnp.stack(present)
  if loss_type == "mod":
    loss = jnp.sum(jnp.where(present, means, 0.0)) / jnp.maximum(jnp.sum(present), 1)
  else:
    loss = sum(total for total, _ in sums.values()) / jnp.maximum(
        sum(count for _, count in sums.values()), 1)
  metrics["loss"] = loss
  return loss, metrics
