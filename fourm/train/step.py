"""The jitted train and eval steps.

A train step whose loss or gradient is not finite leaves the parameters and optimizer
state as they were, and counts itself (`nonfinite_streak`, `nonfinite_total`); the loop
stops the run after too many in a row. The step counter advances either way, because
the batch was consumed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from fourm.nn import sharding
from fourm.models.loss import fourm_loss, per_modality_losses
from fourm.train.state import TrainState


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: jax.sharding.Mesh, state_shardings,
                    loss_type: str = "mod", heads: str = "grouped",
                    rules: sharding.Rules = sharding.DEFAULT_RULES) -> Callable:
  """(state, batch) -> (state, metrics), compiled once; the state's buffers are donated.

  `rules` is the logical-axis table the activations are constrained by (the one the
  state was created with)."""

  def train_step(state: TrainState, batch: Mapping) -> tuple[TrainState, dict]:
    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      return fourm_loss(model, model(batch), loss_type=loss_type, heads=heads)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply_update():
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      return optax.apply_updates(state.params, updates), opt_state

    # A branch, not a select over every parameter: a skipped step costs nothing, and a
    # taken one updates the donated buffers in place.
    params, opt_state = jax.lax.cond(finite, apply_update,
                                     lambda: (state.params, state.opt_state))
    new_state = TrainState(
        step=state.step + 1, params=params, opt_state=opt_state,
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
    metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
               "finite": finite}
    return new_state, metrics

  jitted = jax.jit(train_step, donate_argnums=0, out_shardings=(state_shardings, None))

  def run(state, batch):
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      return jitted(state, batch)

  def lower(state, batch):
    """The step lowered for these (possibly abstract) arguments: `.compile()` it ahead of
    time to read its memory and cost without running it."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      return jitted.lower(state, batch)

  run.lower = lower
  return run


def make_eval_step(graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh,
                   heads: str = "grouped",
                   rules: sharding.Rules = sharding.DEFAULT_RULES) -> Callable:
  """(params, batch) -> {modality: (loss sum, token count)} for averaging over batches."""

  @jax.jit
  def eval_step(params, batch):
    model = nnx.merge(graphdef, params)
    return per_modality_losses(model, model(batch), heads=heads)

  def run(params, batch):
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
      return eval_step(params, batch)
  return run
