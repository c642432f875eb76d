"""The 4M objective: cross-entropy of every decoder slot under its modality's tied head.

Two reductions, as the reference offers:
* "mod": mean over each modality's target tokens, then mean over the modalities that
  have targets in the batch (every modality weighs the same, however many tokens it has);
* "token": mean over all target tokens of the batch.
Per-modality losses and token counts are always reported.

What the decoder slots predict is already in `DecoderOutput.labels`: for sequences the
next token of the sentinel-delimited spans (ending in [EOS]), for dense modalities the
hidden token itself; padding slots are invalid and carry no loss, and so do the slots
that are not `scored` (CM3's sentinels: the decoder reads them, nothing predicts them).

Heads are applied in one of two ways:
* "grouped" (default): each head scores only its own modality's slots
  (`grouped_heads.py`), the cheapest by the ratio of all vocabularies to one;
* "dense": every head scores every slot and the others' losses are masked out. Simple
  and friendly to a vocabulary sharded over a tensor axis; kept as the reference
  point the grouped path is tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fourm.models import grouped_heads

LOSS_TYPES = ("mod", "token")
HEAD_IMPLS = ("grouped", "dense")


def _head_groups(model, output) -> tuple[list[jax.Array], jax.Array]:
  """(the predicted modalities' head tables, each slot's index among them [B, T]; -1 for
  invalid slots and modalities without a head)."""
  predicted = [i for i, name in enumerate(model.modality_names) if model.can_predict(name)]
  tables = [model.head_table(model.modality_names[i]) for i in predicted]
  to_group = np.full(len(model.modality_names), -1, np.int32)
  to_group[predicted] = np.arange(len(predicted))
  group = jnp.where(output.scored, jnp.asarray(to_group)[output.modality_index], -1)
  return tables, group


def token_losses(model, output, heads: str = "grouped",
                 chunk_size: int = grouped_heads.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """[B, T] float32 cross-entropy of each decoder slot, 0 on invalid slots."""
  if heads not in HEAD_IMPLS:
    raise ValueError(f"heads must be one of {HEAD_IMPLS}, got {heads!r}")
  if heads == "grouped":
    tables, group = _head_groups(model, output)
    return grouped_heads.grouped_token_losses(output.hidden, group, output.labels, tables,
                                              chunk_size=chunk_size)
  predicted = [i for i, name in enumerate(model.modality_names) if model.can_predict(name)]
  tables = [model.head_table(model.modality_names[i]) for i in predicted]
  losses = jnp.zeros(output.labels.shape, jnp.float32)
  for index, table in zip(predicted, tables, strict=True):
    logits = jnp.einsum("btd,vd->btv", output.hidden, table.astype(output.hidden.dtype),
                        preferred_element_type=jnp.float32)
    # Labels of other modalities' slots may exceed this vocabulary: clip, they are masked.
    labels = jnp.clip(output.labels, 0, table.shape[0] - 1)
    mine = output.scored & (output.modality_index == index)
    losses += jnp.where(mine, optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                        0.0)
  return losses


def per_modality_losses(model, output, heads: str = "grouped"
                        ) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{modality: (sum of its token losses, its number of target tokens)} over the batch."""
  losses = token_losses(model, output, heads)
  sums = {}
  for index, name in enumerate(model.modality_names):
    if model.can_predict(name):
      mine = output.scored & (output.modality_index == index)
      sums[name] = (jnp.sum(jnp.where(mine, losses, 0.0)), jnp.sum(mine))
  return sums


def slot_weights(model, output, loss_type: str = "mod") -> jax.Array:
  """[B, T] float32: each decoder slot's weight in the scalar loss, from the masks only.
  "mod": 1 / (its modality's target count x the number of modalities with targets);
  "token": 1 / the number of target tokens; 0 on invalid slots."""
  mine = [(output.scored & (output.modality_index == index))
          for index, name in enumerate(model.modality_names) if model.can_predict(name)]
  counts = jnp.stack([jnp.sum(m) for m in mine]).astype(jnp.float32)
  if loss_type == "token":
    per_modality = jnp.full(counts.shape, 1.0) / jnp.maximum(jnp.sum(counts), 1.0)
  else:
    present = jnp.sum(counts > 0)
    per_modality = 1.0 / (jnp.maximum(counts, 1.0) * jnp.maximum(present, 1))
  weights = jnp.zeros(output.labels.shape, jnp.float32)
  for m, weight in zip(mine, per_modality):
    weights = jnp.where(m, weight, weights)
  return weights


def fourm_loss(model, output, loss_type: str = "mod", heads: str = "grouped"
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Scalar loss and metrics {"loss", "loss/<modality>", "tokens/<modality>"}.

  With grouped heads the loss is the slots' losses weighted by `slot_weights` in one fused
  sweep whose gradient costs a quarter less (`grouped_heads.grouped_weighted_loss`); the
  value equals the per-modality means' mean up to float reassociation."""
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
  if heads == "grouped":
    tables, group = _head_groups(model, output)
    loss, losses = grouped_heads.grouped_weighted_loss(
        output.hidden, group, output.labels, tables, slot_weights(model, output, loss_type))
    metrics = {}
    for index, name in enumerate(model.modality_names):
      if model.can_predict(name):
        mine = output.scored & (output.modality_index == index)
        count = jnp.sum(mine)
        metrics[f"loss/{name}"] = jnp.sum(jnp.where(mine, losses, 0.0)) / jnp.maximum(count, 1)
        metrics[f"tokens/{name}"] = count
    metrics["loss"] = loss
    return loss, metrics
  sums = per_modality_losses(model, output, heads)
  metrics = {}
  for name, (total, count) in sums.items():
    metrics[f"loss/{name}"] = total / jnp.maximum(count, 1)
    metrics[f"tokens/{name}"] = count
  totals = jnp.stack([total for total, _ in sums.values()])
  counts = jnp.stack([count for _, count in sums.values()])
  if loss_type == "mod":
    present = counts > 0
    means = totals / jnp.maximum(counts, 1)
    loss = jnp.sum(jnp.where(present, means, 0.0)) / jnp.maximum(jnp.sum(present), 1)
  else:
    loss = jnp.sum(totals) / jnp.maximum(jnp.sum(counts), 1)
  metrics["loss"] = loss
  return loss, metrics
