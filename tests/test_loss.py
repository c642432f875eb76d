"""The 4M loss: grouped heads agree with dense heads; the two reductions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fourm import modalities
from fourm.models import fourm as fourm_model
from fourm.models import grouped_heads
from fourm.models.loss import fourm_loss, token_losses
from fourm.nn import sharding
from fourm.nn.init import initialize
from tests.test_model import random_batch

SMALL = fourm_model.FourMConfig(dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)
NAMES = ("rgb", "tok_rgb", "tok_depth", "caption")


def _dense_losses(hidden, group, labels, tables):
  losses = jnp.zeros(group.shape, jnp.float32)
  for index, table in enumerate(tables):
    logits = jnp.einsum("btd,vd->btv", hidden, table).astype(jnp.float32)
    token = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.clip(labels, 0, table.shape[0] - 1))
    losses += jnp.where(group == index, token, 0.0)
  return losses


def _ragged_problem(seed: int = 0):
  """Slots of four groups in random order (the last group unused) plus slots without one."""
  rng = np.random.default_rng(seed)
  batch, length, dim = 3, 37, 16
  vocabs = (11, 50, 7, 23)
  tables = [jnp.asarray(rng.normal(size=(v, dim)), jnp.float32) for v in vocabs]
  group = rng.integers(-1, 3, size=(batch, length))
  labels = np.where(group >= 0, rng.integers(0, 1 << 30, size=group.shape)
                    % np.take(vocabs, np.maximum(group, 0)), 0)
  hidden = jnp.asarray(rng.normal(size=(batch, length, dim)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(batch, length)), jnp.float32)
  return hidden, jnp.asarray(group), jnp.asarray(labels), tables, weights


@pytest.mark.slow
@pytest.mark.parametrize("chunk_size", [1, 5, 128])
def test_grouped_losses_and_gradients_equal_dense_heads(chunk_size):
  hidden, group, labels, tables, weights = _ragged_problem()

  def grouped(hidden, tables):
    return grouped_heads.grouped_token_losses(hidden, group, labels, tables,
                                              chunk_size=chunk_size)

  def dense(hidden, tables):
    return _dense_losses(hidden, group, labels, tables)

  got, want = jax.jit(grouped)(hidden, tables), dense(hidden, tables)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(got)[np.asarray(group) < 0] == 0)

  def weighted(fn):
    return jax.jit(jax.grad(lambda h, t: jnp.sum(weights * fn(h, t)), argnums=(0, 1)))

  got_grads, want_grads = weighted(grouped)(hidden, tables), weighted(dense)(hidden, tables)
  for got_leaf, want_leaf in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads),
                                 strict=True):
    np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-4, atol=1e-5)
  assert not np.any(got_grads[1][3])  # the unused group's table gets no gradient


@pytest.mark.parametrize("chunk_size", [1, 5, 128])
def test_the_fused_weighted_loss_and_its_gradient_equal_dense_heads(chunk_size):
  """The training path: the weighted sum and its gradient from one sweep (no logits
  recomputed in the backward), the per-slot losses beside it gradient-free."""
  hidden, group, labels, tables, weights = _ragged_problem(seed=2)

  def fused(hidden, tables):
    return grouped_heads.grouped_weighted_loss(hidden, group, labels, tables, weights,
                                               chunk_size=chunk_size)

  def dense(hidden, tables):
    return jnp.sum(weights * _dense_losses(hidden, group, labels, tables))

  (total, losses), grads = jax.jit(jax.value_and_grad(fused, argnums=(0, 1), has_aux=True))(
      hidden, tables)
  want_total, want_grads = jax.value_and_grad(dense, argnums=(0, 1))(hidden, tables)
  np.testing.assert_allclose(total, want_total, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(losses, _dense_losses(hidden, group, labels, tables),
                             rtol=1e-5, atol=1e-5)
  for got_leaf, want_leaf in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads),
                                 strict=True):
    np.testing.assert_allclose(got_leaf, want_leaf, rtol=1e-4, atol=1e-5)
  # Differentiated through the per-slot losses, nothing flows: they are for metrics.
  through_losses = jax.grad(lambda h: jnp.sum(fused(h, tables)[1]))(hidden)
  assert not np.any(through_losses)


def test_grouped_losses_in_bfloat16_stay_close():
  hidden, group, labels, tables, _ = _ragged_problem(seed=1)
  got = grouped_heads.grouped_token_losses(hidden.astype(jnp.bfloat16), group, labels, tables)
  want = _dense_losses(hidden, group, labels, tables)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=0.05, atol=0.1)


@pytest.fixture(scope="module")
def model_and_output():
  model = initialize(lambda rngs: fourm_model.FourM(SMALL, NAMES, modalities.SMALL_LAYOUT,
                                                    input_budget=40, target_budget=40,
                                                    rngs=rngs))
  batch = random_batch(NAMES, batch_size=4, shortfall=(0, 7))
  return model, batch


@pytest.mark.slow
def test_model_loss_is_the_same_through_grouped_and_dense_heads(model_and_output):
  model, batch = model_and_output

  def loss_and_grads(heads):
    return nnx.jit(nnx.value_and_grad(
        lambda m: fourm_loss(m, m(batch), heads=heads)[0]))(model)

  (grouped_loss, grouped_grads), (dense_loss, dense_grads) = (
      loss_and_grads("grouped"), loss_and_grads("dense"))
  np.testing.assert_allclose(grouped_loss, dense_loss, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grouped_grads), jax.tree.leaves(dense_grads),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_mod_and_token_reductions(model_and_output):
  model, batch = model_and_output
  output = model(batch)
  losses = np.asarray(token_losses(model, output))
  index = np.asarray(output.modality_index)
  per_modality = {name: losses[index == i].mean()
                  for i, name in enumerate(NAMES) if np.any(index == i)}
  assert set(per_modality) == {"tok_rgb", "tok_depth", "caption"}

  loss, metrics = fourm_loss(model, output, loss_type="mod")
  np.testing.assert_allclose(loss, np.mean(list(per_modality.values())), rtol=1e-5)
  for name, value in per_modality.items():
    np.testing.assert_allclose(metrics[f"loss/{name}"], value, rtol=1e-5)
    assert metrics[f"tokens/{name}"] == np.sum(index == NAMES.index(name))
  loss, _ = fourm_loss(model, output, loss_type="token")
  np.testing.assert_allclose(loss, losses[index >= 0].mean(), rtol=1e-5)


@pytest.mark.slow
def test_a_modality_without_targets_is_left_out_of_the_mod_mean(model_and_output):
  model, batch = model_and_output
  batch = jax.tree.map(np.array, batch)
  batch["caption"]["target_mask"][:] = False
  output = model(batch)
  loss, metrics = fourm_loss(model, output)
  assert metrics["tokens/caption"] == 0 and metrics["loss/caption"] == 0
  np.testing.assert_allclose(
      loss, (metrics["loss/tok_rgb"] + metrics["loss/tok_depth"]) / 2, rtol=1e-5)


@pytest.mark.slow
def test_unknown_options_are_refused(model_and_output):
  model, batch = model_and_output
  with pytest.raises(ValueError, match="loss_type"):
    fourm_loss(model, model(batch), loss_type="mean")
  with pytest.raises(ValueError, match="heads"):
    fourm_loss(model, model(batch), heads="sparse")


def _mesh(shape, names, count=None):
  devices = jax.devices()[:count or int(np.prod(shape))]
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=devices)


@pytest.mark.slow
def test_grouped_loss_on_a_mesh_gives_the_single_device_loss_and_gradients():
  """Each batch shard sorts and scores its own rows; the weighted totals add up and the
  tied tables' gradients gather from every shard."""
  batch = random_batch(NAMES, batch_size=8, seed=3)

  def loss_and_grads():
    model = initialize(lambda rngs: fourm_model.FourM(SMALL, NAMES, modalities.SMALL_LAYOUT,
                                                      input_budget=40, target_budget=40,
                                                      rngs=rngs), 1)
    metrics = nnx.jit(lambda m: fourm_loss(m, m(batch))[1])(model)
    per_slot = nnx.jit(lambda m: token_losses(m, m(batch)))(model)
    return nnx.jit(nnx.value_and_grad(lambda m: fourm_loss(m, m(batch))[0]))(model), \
        metrics, per_slot

  (loss, grads), metrics, per_slot = loss_and_grads()
  with jax.set_mesh(_mesh((2, 2, 2), ("data", "fsdp", "tensor"))), \
      nnx.logical_axis_rules(sharding.DEFAULT_RULES):
    (sharded_loss, sharded_grads), sharded_metrics, sharded_per_slot = loss_and_grads()
  np.testing.assert_allclose(sharded_loss, loss, rtol=1e-5)
  np.testing.assert_allclose(sharded_per_slot, per_slot, rtol=1e-5, atol=1e-5)
  for name, value in metrics.items():
    np.testing.assert_allclose(sharded_metrics[name], value, rtol=1e-5, err_msg=name)
  for (path, got), (_, want) in zip(nnx.to_flat_state(sharded_grads),
                                    nnx.to_flat_state(grads), strict=True):
    np.testing.assert_allclose(got[...], want[...], rtol=2e-4, atol=1e-6, err_msg=str(path))


def test_grouped_loss_per_device_memory_follows_the_local_rows_not_the_global_batch():
  """Sorting the global batch's slots would gather all of them onto every device
  (XLA's only way to sort a split array): 5x this temp memory at 8 devices."""
  def temp_bytes(devices: int, batch: int) -> int:
    mesh = _mesh((devices,), ("fsdp",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    slots, dim, vocab = 64, 32, 512
    args = (jax.ShapeDtypeStruct((batch, slots, dim), jnp.float32, sharding=rows),
            jax.ShapeDtypeStruct((batch, slots), jnp.int32, sharding=rows),
            jax.ShapeDtypeStruct((batch, slots), jnp.int32, sharding=rows),
            jax.ShapeDtypeStruct((batch, slots), jnp.float32, sharding=rows),
            [jax.ShapeDtypeStruct((vocab, dim), jnp.float32, sharding=whole)] * 2)

    def loss(hidden, group, labels, weights, tables):
      return grouped_heads.grouped_weighted_loss(hidden, group, labels, tables, weights)[0]

    with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
      step = jax.jit(jax.grad(loss, argnums=(0, 4))).lower(*args).compile()
    return step.memory_analysis().temp_size_in_bytes

  assert temp_bytes(8, 128) <= 1.2 * temp_bytes(1, 16)
