"""AdamW as 4M trains: lr scaled with the batch, warmup then cosine, clipping, decay on
weight matrices only."""

from __future__ import annotations

import jax
import ml_collections
import optax


def peak_learning_rate(config: ml_collections.ConfigDict, batch_size: int) -> float:
  """The reference's linear scaling rule: lr = base_lr * batch / 256."""
  return config.base_lr * batch_size / config.lr_batch_base


def learning_rate_schedule(config: ml_collections.ConfigDict, batch_size: int,
                           total_steps: int) -> optax.Schedule:
  peak = peak_learning_rate(config, batch_size)
  warmup = min(config.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=peak * config.min_lr_ratio)


def weight_decay_mask(params):
  """True for the kernels of linear layers; norms, biases, embeddings, the mask token
  and the modality embeddings are not decayed (the reference's no-decay groups)."""
  def decays(path, _):
    return any(getattr(key, "key", None) == "kernel" for key in path)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict, batch_size: int,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = learning_rate_schedule(config, batch_size, total_steps)
  parts = []
  if config.grad_clip:
    parts.append(optax.clip_by_global_norm(config.grad_clip))
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=weight_decay_mask))
  return optax.chain(*parts), schedule
