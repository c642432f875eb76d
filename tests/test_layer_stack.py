"""Scanned blocks (`scan_layers`) and rematerialization policies by name."""

from __future__ import annotations

import dataclasses

import jax
import jax.extend
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from fourm.errors import UsageError
from fourm.models import fourm as fourm_model
from fourm.models import layer_stack
from fourm.models.loss import fourm_loss
from fourm.nn import sharding
from tests.test_model import SMALL, forward, make_model, random_batch

NAMES = ("rgb", "tok_rgb", "tok_depth", "caption")


def _config(**overrides) -> fourm_model.FourMConfig:
  return dataclasses.replace(SMALL, **overrides)


@nnx.jit
def loss_and_grads(model, batch):
  return nnx.value_and_grad(lambda m: fourm_loss(m, m(batch))[0])(model)


def _assert_same_training_signal(model, other, batch, rtol=2e-5):
  loss, grads = loss_and_grads(model, batch)
  other_loss, other_grads = loss_and_grads(other, batch)
  np.testing.assert_allclose(other_loss, loss, rtol=rtol)
  flat, other_flat = nnx.to_flat_state(grads), nnx.to_flat_state(other_grads)
  assert [path for path, _ in flat] == [path for path, _ in other_flat]
  for (path, g), (_, h) in zip(flat, other_flat, strict=True):
    np.testing.assert_allclose(h[...], g[...], rtol=1e-4, atol=1e-6, err_msg=str(path))


@pytest.mark.parametrize("remat", ["none", "full", "dots_no_batch"])
def test_scanned_blocks_give_the_unrolled_loss_and_gradients(remat):
  batch = random_batch(NAMES, seed=3)
  unrolled = make_model(_config(encoder_depth=3, decoder_depth=2), NAMES)
  scanned = make_model(_config(encoder_depth=3, decoder_depth=2, scan_layers=True,
                               remat=remat), NAMES)
  _assert_same_training_signal(unrolled, scanned, batch)
  np.testing.assert_allclose(forward(scanned, batch).hidden, forward(unrolled, batch).hidden,
                             rtol=1e-5, atol=1e-5)


def test_scanned_and_unrolled_models_have_the_same_parameters():
  """Same names, shapes and (same seed) values: checkpoints and converted reference
  weights load into either, and a run may switch on resume."""
  unrolled = nnx.state(make_model(_config(), NAMES), nnx.Param)
  scanned = nnx.state(make_model(_config(scan_layers=True), NAMES), nnx.Param)
  flat, scanned_flat = nnx.to_flat_state(unrolled), nnx.to_flat_state(scanned)
  assert [path for path, _ in flat] == [path for path, _ in scanned_flat]
  assert ("encoder", 1, "attn", "qkv", "kernel") in dict(flat)
  for (_, a), (_, b) in zip(flat, scanned_flat, strict=True):
    np.testing.assert_array_equal(a[...], b[...])


def _count(jaxpr, primitive: str) -> int:
  """Equations of `primitive` in a jaxpr and every jaxpr nested in it (scan bodies...)."""
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == primitive
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += _count(sub, primitive)
  return total


def _traced_matmuls(config) -> int:
  model = make_model(config, NAMES)
  graphdef, params = nnx.split(model)
  batch = random_batch(NAMES, seed=1)

  def loss(params):
    merged = nnx.merge(graphdef, params)
    return fourm_loss(merged, merged(batch))[0]

  return _count(jax.make_jaxpr(jax.grad(loss))(params).jaxpr, "dot_general")


def test_scanning_keeps_the_traced_program_from_growing_with_depth():
  """What XLA compiles: unrolled, the train step's matmuls grow with the number of
  blocks; scanned, the block is traced once whatever the depth."""
  shallow, deep = dict(encoder_depth=2, decoder_depth=2), dict(encoder_depth=6, decoder_depth=6)
  assert _traced_matmuls(_config(**deep)) > _traced_matmuls(_config(**shallow)) + 50
  assert (_traced_matmuls(_config(scan_layers=True, **deep))
          == _traced_matmuls(_config(scan_layers=True, **shallow)))


@pytest.mark.slow
def test_scanned_model_shards_as_the_unrolled_one():
  assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
  batch = random_batch(NAMES, seed=6, batch_size=4)
  single = forward(make_model(_config(), NAMES, seed=7), batch)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
    model = make_model(_config(scan_layers=True), NAMES, seed=7)
    # The layer axis is whole on every device; the weight's own axes split as before.
    stacked = jax.jit(lambda: layer_stack.stack_states(model.encoder))()
    assert stacked["mlp"]["fc1"]["kernel"][...].sharding.spec == P(None, "fsdp", "tensor")
    sharded = forward(model, batch)
  np.testing.assert_allclose(sharded.hidden, single.hidden, rtol=1e-4, atol=1e-4)


def test_remat_policies_by_name():
  assert _config(remat=True).remat == "full" and _config(remat=False).remat == "none"
  assert _config(remat="dots").remat == "dots"
  with pytest.raises(UsageError, match="remat 'everything' is not one of"):
    _config(remat="everything")


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_unrolled_remat_policies_keep_the_training_signal(remat):
  batch = random_batch(NAMES, seed=4)
  _assert_same_training_signal(make_model(_config(), NAMES),
                               make_model(_config(remat=remat), NAMES), batch)


def test_the_attention_kernel_is_chosen_by_name():
  from tests.helpers import small_config
  from fourm.train import state
  config = small_config(("/unused",))
  assert state.model_config(config).attention_impl is None
  config.model.attention = "cudnn"
  assert state.model_config(config).attention_impl == "cudnn"
  config.model.attention = "flash"
  with pytest.raises(UsageError, match="config.model.attention is 'flash'"):
    state.model_config(config)
