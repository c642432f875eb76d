"""Loading a trained model for generation: the parameters alone, onto one device or a mesh."""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from fourm import config as config_lib
from fourm.checkpoint import Checkpoints, abstract
from fourm.errors import UsageError
from fourm.generation import loading
from fourm.nn import sharding
from fourm.train import mesh as mesh_lib
from fourm.train import optimizer
from fourm.train.state import TrainState, model_factory
from tests.test_model import random_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET = 32


def tiny_config():
  config = config_lib.load_config(os.path.join(ROOT, "configs/tiny_synthetic.py:smoke"))
  config.modalities = ("rgb", "tok_rgb", "tok_semseg", "caption")
  config.model.dim, config.model.num_heads = 32, 2
  config.model.encoder_depth = config.model.decoder_depth = 1
  config.input_budget = config.target_budget = BUDGET
  config.mesh.data = 1
  return config


def quiet(_):
  pass


@pytest.fixture(scope="module")
def config():
  return tiny_config()


@pytest.fixture(scope="module")
def state(config):
  """A train state of the loop's kind (the run's model, its AdamW state) at step 5.

  The parameters are random, not the model's initialization: building the model takes
  longer than everything else here, and a loader that built a fresh model instead of
  reading the checkpoint would then differ."""
  abstract = nnx.state(nnx.eval_shape(model_factory(config)), nnx.Param)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.1, x.shape), x.dtype), abstract)
  tx, _ = optimizer.make_optimizer(config.optimizer, config.batch_size, config.total_steps)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=jnp.asarray(5, jnp.int32), params=params, opt_state=tx.init(params),
                    nonfinite_streak=zero, nonfinite_total=zero)


def save(workdir, state, config) -> None:
  """Saves `state` as the train loop does: the state, and the config beside it."""
  checkpoints = Checkpoints(str(workdir), every=1, keep=10, async_save=False, log=quiet)
  meta = {"step": int(state.step), "data": {"batches_consumed": int(state.step)},
          "config": json.loads(config.to_json())}
  checkpoints.save(state, meta, force=True)
  checkpoints.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, state, config):
  workdir = tmp_path_factory.mktemp("run")
  save(workdir, state, config)
  return str(workdir)


@pytest.fixture(scope="module")
def single(workdir):
  return loading.load_model(workdir)


def params_of(model) -> nnx.State:
  return nnx.state(model, nnx.Param)


def assert_same_values(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@nnx.jit
def forward(model, batch):
  return model(batch)


def test_the_saved_parameters_and_step_come_back_on_one_device(single, state):
  assert single.step == 5
  assert_same_values(params_of(single.model), state.params)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  assert all(x.sharding == device for x in jax.tree.leaves(params_of(single.model)))


def test_onto_a_mesh_every_parameter_is_sharded_by_the_table(workdir, single, config):
  mesh = jax.make_mesh((2, 2, 2), mesh_lib.AXES, axis_types=(AxisType.Auto,) * 3)
  sharded = loading.load_model(workdir, mesh=mesh)
  assert sharded.step == single.step
  params = params_of(sharded.model)
  specs = sharding.partition_specs(params, mesh, sharding.DEFAULT_RULES)
  shardings = jax.tree.leaves(jax.tree.map(lambda x: x.sharding, params))
  expected = [NamedSharding(mesh, spec) for spec in jax.tree.leaves(specs)]
  assert shardings == expected
  # The table does split this model: FSDP and tensor parallelism both take part.
  axes = {axis for spec in jax.tree.leaves(specs) for part in spec if part
          for axis in ((part,) if isinstance(part, str) else part)}
  assert {"fsdp", "tensor"} <= axes
  assert_same_values(params, params_of(single.model))

  batch = random_batch(config.modalities, batch_size=4, input_budget=BUDGET,
                       target_budget=BUDGET, seed=3)
  reference = forward(single.model, batch)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(sharding.DEFAULT_RULES):
    output = forward(sharded.model, batch)
  np.testing.assert_allclose(output.hidden, reference.hidden, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(output.labels, reference.labels)


def test_the_runs_own_table_overrides_place_the_parameters(tmp_path, state, config):
  overridden = config.copy_and_resolve_references()
  overridden.sharding.rules.vocab = None  # token tables replicated over "tensor"
  save(tmp_path, state, overridden)
  mesh = jax.make_mesh((2, 2, 2), mesh_lib.AXES, axis_types=(AxisType.Auto,) * 3)
  model = loading.load_model(str(tmp_path), mesh=mesh).model
  table = model.decoder_embeddings["caption"].token_emb.embedding[...]  # [vocab, embed]
  assert table.sharding.spec == P(None, "fsdp")


def test_the_optimizer_is_neither_rebuilt_nor_read(tmp_path, state, config, monkeypatch):
  # Momentum SGD's state has another structure than the AdamW chain the config names:
  # a loader restoring the whole train state onto a rebuilt optimizer would fail here.
  other = optax.sgd(0.1, momentum=0.9)
  save(tmp_path, state.replace(opt_state=other.init(state.params)), config)

  def refuse(*args, **kwargs):
    raise AssertionError("load_model built an optimizer")

  monkeypatch.setattr(optimizer, "make_optimizer", refuse)
  trained = loading.load_model(str(tmp_path))
  assert trained.step == 5
  assert_same_values(params_of(trained.model), state.params)


def test_the_parameters_restore_through_the_checkpoints_that_saved_the_state(
    tmp_path, state, config):
  # The run's orbax manager handles "state" whole; the partial restore must still work.
  checkpoints = Checkpoints(str(tmp_path), every=1, keep=10, async_save=True, log=quiet)
  checkpoints.save(state, {"step": 5, "config": json.loads(config.to_json())}, force=True)
  params, step, meta = checkpoints.restore_latest_params(abstract(state.params))
  checkpoints.close()
  assert step == 5 and meta["step"] == 5
  assert_same_values(params, state.params)


def damage_state(workdir, step: int, how: str = "truncate") -> None:
  """Damages the arrays of one checkpoint's state, as a crash mid-write (`truncate`) or a
  bad disk (`garble`: the first half of every data file overwritten) would."""
  rng = np.random.default_rng(step)
  for path in glob.glob(os.path.join(workdir, f"checkpoints/{step}/state/**"),
                        recursive=True):
    if os.path.isfile(path) and os.path.getsize(path) > 64:
      with open(path, "r+b") as f:
        if how == "truncate":
          f.truncate(16)
        elif "/d/" in path:
          f.write(rng.integers(0, 256, os.path.getsize(path) // 2, np.uint8).tobytes())


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_a_damaged_newest_checkpoint_falls_back_then_none_readable_is_refused(
    tmp_path, state, config, capfd, how):
  newer = state.replace(step=jnp.asarray(8, jnp.int32),
                        params=jax.tree.map(lambda x: x * 2, state.params))
  save(tmp_path, state, config)
  save(tmp_path, newer, config)
  damage_state(str(tmp_path), 8, how)
  trained = loading.load_model(str(tmp_path))
  assert trained.step == 5
  assert_same_values(params_of(trained.model), state.params)
  out, err = capfd.readouterr()
  assert "checkpoint at step 8" in out
  # The reads orbax abandoned in the damaged checkpoint leave no tracebacks behind.
  assert "Traceback" not in err and "Event loop" not in err, err[:2000]

  damage_state(str(tmp_path), 5, how)
  with pytest.raises(UsageError, match=r"none of the checkpoints \[8, 5\] .* can be read"):
    loading.load_model(str(tmp_path))


def test_missing_and_foreign_checkpoints_are_refused(tmp_path, state):
  with pytest.raises(UsageError, match="no checkpoints there"):
    loading.load_model(str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "empty" / "checkpoints")
  with pytest.raises(UsageError, match="holds no readable 4M checkpoint"):
    loading.load_model(str(tmp_path / "empty"))
  checkpoints = Checkpoints(str(tmp_path / "tokenizer"), every=1, keep=1, async_save=False,
                            log=quiet)
  checkpoints.save(state, {"step": 5, "config": {"vocab_size": 64}}, force=True)
  checkpoints.close()
  with pytest.raises(UsageError, match="is not a 4M model's"):
    loading.load_model(str(tmp_path / "tokenizer"))
