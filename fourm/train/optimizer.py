"""AdamW as 4M trains: lr scaled with the batch, warmup then cosine, clipping, decay on
weight matrices only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fourm.errors import UsageError


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


MU_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def mu_dtype(config: ml_collections.ConfigDict):
  """Adam's first-moment dtype (None: the parameters'). Older configs lack the field."""
  name = config.get("mu_dtype", "float32")
  if name not in MU_DTYPES:
    raise UsageError(f"config.optimizer.mu_dtype is {name!r}, expected one of "
                     f"{sorted(MU_DTYPES)}")
  return MU_DTYPES[name]


def make_optimizer(config: ml_collections.ConfigDict, batch_size: int,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = learning_rate_schedule(config, batch_size, total_steps)
  parts = []
  if config.grad_clip:
    parts.append(optax.clip_by_global_norm(config.grad_clip))
  parts.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                           weight_decay=config.weight_decay, mask=weight_decay_mask,
                           mu_dtype=mu_dtype(config)))
  return optax.chain(*parts), schedule
