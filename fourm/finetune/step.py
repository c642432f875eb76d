"""The fine-tuning optimizer and the jitted train step, with frozen parameters kept out.

A fine-tuning model is split three ways (`split_for_tuning`): the parameters its tuning
mode trains, the frozen ones, and the rest (the drop-path random-number state). Only the
first part reaches the gradient and the optimizer, so a frozen parameter cannot change:
it is not an argument of anything that writes (and the optimizer holds no moments for it,
which is what makes LoRA and VPT cheap in memory).

Layer-wise learning-rate decay (BEiT, Bao et al. 2021; used by MAE and 4M fine-tuning):
block i of L gets the learning rate times decay^(L - i), the patch embedding decay^(L + 1),
the head and adapters sitting after the encoder 1; lower layers, which hold the most
general features, move least.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from flax import nnx

from fourm.finetune import peft
from fourm.finetune.task_model import TaskModel
from fourm.nn import sharding


def split_for_tuning(model: TaskModel, mode: str):
  """(graphdef, trainable params, frozen params, other state) of `model` for `mode`."""
  return nnx.split(model, peft.trainable_filter(mode), nnx.Param, ...)


def layer_of(path: tuple, depth: int) -> int:
  """The depth a parameter sits at: 0 for the patch embedding, i + 1 for encoder block i,
  depth + 1 for anything after the encoder (the final norm, head, prompts)."""
  keys = [getattr(k, "key", k) for k in path]
  if "encoder" in keys:
    after = keys[keys.index("encoder") + 1:]
    if after[:1] == ["patch_embedding"]:
      return 0
    if after[:1] == ["blocks"]:
      return int(after[1]) + 1
  return depth + 1


def layer_decay_scales(trainable: nnx.State, depth: int, decay: float) -> Any:
  """The learning-rate factor of every trainable parameter: decay^(depth + 1 - layer)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decay ** (depth + 1 - layer_of(path, depth)), trainable)


def scale_by_tree(scales) -> optax.GradientTransformation:
  """Multiplies each update by its own constant (the layer-decay factors)."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, scales), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(trainable: nnx.State, *, depth: int, peak_lr: float, total_steps: int,
                   warmup_steps: int, weight_decay: float = 0.05, layer_decay: float = 1.0,
                   clip_norm: float | None = 1.0
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with warm-up + cosine, global-norm clipping and layer-wise decay.

  Weight decay skips 1-D parameters (norm scales, biases) and prompt tokens, as ViT
  fine-tuning recipes do."""
  # A warm-up longer than the run (a smoke test's) is cut to leave one step of decay.
  warmup_steps = max(1, min(warmup_steps, total_steps - 1))
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, peak_lr, warmup_steps=warmup_steps, decay_steps=max(total_steps, warmup_steps + 1),
      end_value=peak_lr * 1e-3)
  decay_mask = jax.tree.map(lambda x: x.ndim >= 2, trainable)
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  parts.append(optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=weight_decay,
                           mask=decay_mask))
  if layer_decay != 1.0:
    parts.append(scale_by_tree(layer_decay_scales(trainable, depth, layer_decay)))
  return optax.chain(*parts), schedule


LossFn = Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    loss_fn: LossFn, mode: str, *, mesh: jax.sharding.Mesh | None = None,
                    rules: sharding.Rules = sharding.DEFAULT_RULES,
                    shardings: tuple[Any, Any] | None = None) -> Callable:
  """(trainable, frozen, other, opt_state, batch, key) -> (trainable, opt_state, metrics).

  `loss_fn(outputs, batch) -> (loss, metrics)` scores the model's outputs on
  `batch["image"]`. Drop path draws from `key` (the loop passes one per step, a function
  of the seed and the step, so a resumed run draws what the uninterrupted one did and
  no random state needs saving). The trainable parameters and the optimizer state are
  donated; the frozen parameters are read only.

  Given a `mesh`, the step runs under it and the logical-axis table `rules`, as a
  pre-training step does (the model's activation constraints split the batch), and
  `shardings` (of the trainable parameters, of the optimizer state) keep the updated
  ones where the donated ones were."""

  which = peft.trainable_filter(mode)

  def step(trainable, frozen, other, opt_state, batch, key):
    # Reseeded outside the gradient's trace: NNX lets a trace mutate only the variables
    # it created, and the model inside `loss_of` is created there from these arrays.
    seeded = nnx.merge(graphdef, trainable, frozen, other)
    nnx.reseed(seeded, dropout=key)
    other = nnx.split(seeded, which, nnx.Param, ...)[3]

    def loss_of(trainable):
      model = nnx.merge(graphdef, trainable, frozen, other)
      return loss_fn(model(batch["image"]), batch)

    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    return trainable, opt_state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}

  pinned = {} if shardings is None else {"out_shardings": (*shardings, None)}
  jitted = jax.jit(step, donate_argnums=(0, 3), **pinned)
  if mesh is None:
    return jitted

  def run(*args):
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      return jitted(*args)
  return run


def make_predict(graphdef: nnx.GraphDef) -> Callable:
  """(trainable, frozen, other, images) -> outputs, with drop path off."""
  def predict(trainable, frozen, other, images):
    model = nnx.merge(graphdef, trainable, frozen, other)
    model.eval()
    return model(images)
  return jax.jit(predict)
