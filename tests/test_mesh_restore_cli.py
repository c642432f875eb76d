"""`--mesh` on `fourm generate` and `fourm finetune`: the checkpoint is read straight into
its shards on the mesh (no device holds the whole model), generation on the mesh makes
the single-device run's tokens, a fine-tune starts from the sharded parameters and
trains, and a bad mesh is one clear error.

The checkpoint is the tiny model of tests/test_loading.py with random parameters, saved
as the train loop saves: no training, so the module stays fast where it can.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from fourm import cli
from fourm.checkpoint import Checkpoints
from fourm.data import world
from fourm.finetune import loop as finetune_loop
from fourm.generation import loading
from fourm.train import optimizer
from fourm.train.state import TrainState, model_factory
from tests.test_loading import save, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESH = "data=2,fsdp=2,tensor=2"
SHAPE = {"data": 2, "fsdp": 2, "tensor": 2}


def quiet(_):
  pass


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  config = tiny_config()
  # No token datasets to find: the run has no tokenizers, so generated grids stay tokens
  # (tokens.npz) and nothing depends on what lies around the working directory.
  config.data.paths = (str(tmp_path_factory.mktemp("no_data") / "absent"),)
  return config


@pytest.fixture(scope="module")
def params(config):
  """Random parameters (not the initialization: a loader that built a fresh model
  instead of reading the checkpoint would then differ)."""
  abstract = nnx.state(nnx.eval_shape(model_factory(config)), nnx.Param)
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.1, x.shape), x.dtype), abstract)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, config, params):
  tx, _ = optimizer.make_optimizer(config.optimizer, config.batch_size, config.total_steps)
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=jnp.asarray(5, jnp.int32), params=params, opt_state=tx.init(params),
                     nonfinite_streak=zero, nonfinite_total=zero)
  workdir = tmp_path_factory.mktemp("pretrained")
  save(workdir, state, config)
  return str(workdir)


def spy_on(module, monkeypatch) -> list[dict]:
  """Records every `load_model` call of `module`: its mesh, and each loaded parameter's
  sharding and value (read at load time, before a train step donates the buffers)."""
  calls = []
  original = module.load_model

  def load_model(*args, **kwargs):
    trained = original(*args, **kwargs)
    leaves = jax.tree.leaves(nnx.state(trained.model, nnx.Param))
    mesh = args[1] if len(args) > 1 else kwargs.get("mesh")
    calls.append({"mesh": mesh, "shardings": [x.sharding for x in leaves],
                  "shapes": [x.shape for x in leaves],
                  "values": [np.asarray(x) for x in leaves]})
    return trained

  monkeypatch.setattr(module, "load_model", load_model)
  return calls


def assert_sharded_on_the_mesh(call) -> None:
  """Every parameter on the 2 x 2 x 2 mesh, and the weight matrices really split: some
  device holds only part of them."""
  assert call["mesh"] is not None and dict(call["mesh"].shape) == SHAPE
  for where in call["shardings"]:
    assert isinstance(where, NamedSharding) and dict(where.mesh.shape) == SHAPE
    assert len(where.device_set) == 8
  split = [shape for where, shape in zip(call["shardings"], call["shapes"], strict=True)
           if where.shard_shape(shape) != shape]
  assert len(split) >= 4, "no parameter is split over the mesh"
  assert any(len(shape) == 2 for shape in split)  # a kernel, not only vectors


def generate(workdir, out, *extra) -> int:
  return cli.main(["generate", "--checkpoint", workdir, "--condition",
                   "caption=a red [S_1] left of a blue [S_2].", "--targets",
                   "tok_rgb,caption", "--num-steps", "2", "--num-samples", "2",
                   "--temperature", "1.0", "--seed", "3", "--out", str(out), *extra])


@pytest.mark.slow
def test_generate_on_a_mesh_reads_shards_and_makes_the_single_device_tokens(
    workdir, params, tmp_path, monkeypatch, capsys):
  calls = spy_on(loading, monkeypatch)
  assert generate(workdir, tmp_path / "single") == 0
  assert "on one device" in capsys.readouterr().out
  assert generate(workdir, tmp_path / "mesh", "--mesh", MESH) == 0
  assert "on data=2 x fsdp=2 x tensor=2" in capsys.readouterr().out

  single, sharded = calls
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  assert single["mesh"] is None and all(s == device for s in single["shardings"])
  assert_sharded_on_the_mesh(sharded)
  saved = [np.asarray(x) for x in jax.tree.leaves(params)]
  for got, want in zip(sharded["values"], saved, strict=True):
    np.testing.assert_array_equal(got, want)

  made = np.load(tmp_path / "single" / "tokens.npz")
  on_mesh = np.load(tmp_path / "mesh" / "tokens.npz")
  assert sorted(made.files) == sorted(on_mesh.files)
  assert {"tok_rgb", "caption"} <= set(made.files)
  for name in made.files:
    np.testing.assert_array_equal(on_mesh[name], made[name], err_msg=name)
  texts = [json.loads((tmp_path / run / "text.json").read_text()) for run in ("single", "mesh")]
  assert texts[0]["caption"] == texts[1]["caption"]


# Fine-tuning -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> str:
  directory = str(tmp_path_factory.mktemp("finetune_world") / "world")
  world.write_world(directory, 16, resolution=64, seed=0, val_fraction=0.25, workers=1,
                    progress=False, log=quiet)
  return directory


def spy_on_saves(monkeypatch) -> list[dict]:
  """Records the step and the shardings of every fine-tune state saved."""
  saves = []
  original = Checkpoints.save

  def save(self, state, meta, **kwargs):
    saves.append({"step": int(state.step), "mesh": dict(meta["config"]["mesh"]),
                  "trainable": [x.sharding for x in jax.tree.leaves(state.trainable)],
                  "opt_state": [x.sharding for x in jax.tree.leaves(state.opt_state)],
                  "shapes": [x.shape for x in jax.tree.leaves(state.trainable)]})
    return original(self, state, meta, **kwargs)

  monkeypatch.setattr(Checkpoints, "save", save)
  return saves


@pytest.mark.slow
def test_finetune_on_a_mesh_starts_from_sharded_init_parameters_and_trains(
    workdir, params, scenes, tmp_path, monkeypatch, capsys):
  calls = spy_on(finetune_loop, monkeypatch)
  saves = spy_on_saves(monkeypatch)
  out = str(tmp_path / "finetune")
  status = cli.main(["finetune", "--config",
                     os.path.join(ROOT, "configs/finetune/segmentation_synthetic.py:smoke"),
                     "--init", workdir, "--workdir", out, "--mesh", MESH, "--stop-after", "2",
                     "--config.log_every=1", f"--config.data.paths=('{scenes}',)"])
  printed = capsys.readouterr().out
  assert status == 0, printed
  assert "mesh data=2 x fsdp=2 x tensor=2" in printed and "step 2/4" in printed

  (call,) = calls
  assert_sharded_on_the_mesh(call)
  saved = [np.asarray(x) for x in jax.tree.leaves(params)]
  for got, want in zip(call["values"], saved, strict=True):
    np.testing.assert_array_equal(got, want)
  losses = [float(line.split("loss ")[1].split()[0]) for line in printed.splitlines()
            if line.startswith("step ")]
  assert len(losses) == 2 and all(np.isfinite(losses))

  # After the steps the encoder and Adam's moments are still split over the devices
  # (not gathered onto each), and the run's config records the mesh.
  assert [entry["step"] for entry in saves] == [2]
  (entry,) = saves
  assert entry["mesh"] == SHAPE
  for shardings in (entry["trainable"], entry["opt_state"]):
    assert all(dict(where.mesh.shape) == SHAPE for where in shardings)
  assert any(where.shard_shape(shape) != shape and len(shape) == 2
             for where, shape in zip(entry["trainable"], entry["shapes"], strict=True))
  assert len(set(entry["opt_state"])) > 1  # not all replicated


# Bad meshes --------------------------------------------------------------------------------


BAD_MESHES = [
    ("batch=8", "'batch=8' is not AXIS=SIZE with AXIS one of data, fsdp, tensor"),
    ("data", "'data' is not AXIS=SIZE"),
    ("data=two", "data=two is not a whole number"),
    ("data=2,data=4", "data given twice"),
    ("data=2,fsdp=2", "2 x 2 x 1 = 4 devices, this run has 8"),
    ("data=4,fsdp=4", "= 16 devices, this run has 8"),
    ("data=3,fsdp=-1", "8 devices do not divide by 3"),
    ("data=0,fsdp=-1", "sizes must be positive"),
    (",", "expected AXIS=SIZE,... with AXIS one of data, fsdp, tensor"),
]


@pytest.mark.parametrize("mesh, message", BAD_MESHES)
def test_a_bad_generate_mesh_is_one_line_before_the_model_loads(tmp_path, capsys, mesh,
                                                                  message):
  # No checkpoint at all: the mesh is refused before anything is read.
  code = cli.main(["generate", "--checkpoint", str(tmp_path / "nowhere"), "--condition",
                   "caption=a cube", "--targets", "tok_rgb", "--out", str(tmp_path / "out"),
                   "--mesh", mesh])
  err = capsys.readouterr().err
  assert code == 2 and message in err and err.count("\n") == 1, err
  assert err.startswith("fourm generate: error: --mesh ")
  assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("mesh, message", BAD_MESHES[:5])
def test_a_bad_finetune_mesh_is_one_line_before_anything_runs(tmp_path, capsys, mesh, message):
  code = cli.main(["finetune", "--config",
                   os.path.join(ROOT, "configs/finetune/segmentation_synthetic.py:smoke"),
                   "--init", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "run"),
                   "--mesh", mesh])
  err = capsys.readouterr().err
  assert code == 2 and message in err and err.count("\n") == 1, err
  assert not os.path.exists(tmp_path / "run")


def test_the_finetune_mesh_is_given_once(tmp_path, capsys):
  code = cli.main(["finetune", "--config",
                   os.path.join(ROOT, "configs/finetune/segmentation_synthetic.py:smoke"),
                   "--init", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "run"),
                   "--mesh", MESH, "--config.mesh.data=2"])
  err = capsys.readouterr().err
  assert code == 2 and "--mesh or --config.mesh.*, not both" in err and err.count("\n") == 1


def test_the_flag_is_the_training_configs_mesh():
  from fourm.train import mesh as mesh_lib
  from fourm.train.config import default_config
  parsed = mesh_lib.flag_config("fsdp=2, tensor=-1")
  assert parsed.to_dict() == {"data": 1, "fsdp": 2, "tensor": -1}
  assert set(parsed) == set(default_config().mesh)  # the same description, field for field
  assert mesh_lib.mesh_shape(parsed, 8) == (1, 2, 4)
  mesh = mesh_lib.make_mesh(mesh_lib.flag_config(MESH))
  assert dict(mesh.shape) == SHAPE and mesh.axis_names == mesh_lib.AXES
