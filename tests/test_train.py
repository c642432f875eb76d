"""The train loop: loss falls, meshes agree, exact resume, preemption, damaged checkpoints,
non-finite losses, multi-process runs, configs and launchers."""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fourm import config as config_lib
from fourm import metrics
from fourm.checkpoint import Checkpoints
from fourm.errors import RecordError, UsageError
from fourm.train import loop
from fourm.train.config import default_config
from tests.helpers import small_config, write_train_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOURM = os.path.join(os.path.dirname(sys.executable), "fourm")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return write_train_data(tmp_path_factory.mktemp("train"))


def quiet(_):
  pass


@pytest.fixture(scope="module")
def whole_run(data, tmp_path_factory) -> str:
  """The workdir of one uninterrupted single-device run of small_config(eval_every=0),
  which several tests compare against (read it; copy it before changing it)."""
  workdir = str(tmp_path_factory.mktemp("whole"))
  loop.train(small_config(data, eval_every=0), workdir, log=quiet)
  return workdir


def final_params(workdir: str) -> dict:
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",),
                                  item_handlers={"state": ocp.StandardCheckpointHandler()})
  step = manager.latest_step()
  # Onto one device of this process, whatever mesh or process count saved it.
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step)["state"])
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target)))
  return step, jax.tree.map(np.asarray, restored["state"]["params"])


def assert_trees_equal(a, b, **tolerance):
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for x, y in zip(flat_a, flat_b):
    if tolerance:
      np.testing.assert_allclose(x, y, **tolerance)
    else:
      np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_held_out_loss_falls_for_every_modality_and_logs_reach_tensorboard(data, tmp_path):
  config = small_config(data, total_steps=30, eval_every=30, log_every=10,
                        **{"optimizer.base_lr": 0.08, "optimizer.warmup_steps": 5})
  lines = []
  last = loop.train(config, str(tmp_path), log=lines.append)
  assert any(line.startswith("step 10/30  loss") and "tok/s" in line for line in lines)
  assert any(line.startswith("eval at step 0: loss/caption=") for line in lines)
  scalars = metrics.read_scalars(str(tmp_path / "tensorboard"))
  assert [step for step, _ in scalars["loss"]] == [10, 20, 30]
  assert "learning_rate" in scalars and "grad_norm" in scalars
  for name in ("tok_rgb", "tok_semseg", "caption"):
    (first_step, first), *_, (last_step, final) = scalars[f"eval/loss/{name}"]
    assert (first_step, last_step) == (0, 30)
    assert final == pytest.approx(last[f"eval/loss/{name}"])
    assert final < first - 0.5, (name, first, final)


@pytest.mark.slow
def test_one_device_and_a_2x2x2_mesh_give_the_same_losses(data, whole_run, tmp_path):
  single = metrics.read_scalars(os.path.join(whole_run, "tensorboard"))
  sharded = loop.train(small_config(data, eval_every=0, **{"mesh.data": 2, "mesh.fsdp": 2,
                                                            "mesh.tensor": 2}),
                       str(tmp_path / "eight"), log=quiet)
  for key in ("loss", "loss/tok_rgb", "loss/caption", "grad_norm"):
    (last_step, last), = single[key][-1:]
    assert last_step == 6
    np.testing.assert_allclose(sharded[key], last, rtol=2e-5, err_msg=key)
  assert_trees_equal(final_params(whole_run)[1], final_params(str(tmp_path / "eight"))[1],
                     rtol=2e-4, atol=2e-6)


@pytest.mark.slow
def test_a_stopped_run_resumes_bitwise_and_onto_another_mesh(data, whole_run, tmp_path):
  config = small_config(data, eval_every=0)
  _, whole = final_params(whole_run)

  lines = []
  loop.train(config, str(tmp_path / "parts"), log=lines.append, stop_after=3)
  assert any("stopping after 3 steps at step 3" in line for line in lines)
  loop.train(config, str(tmp_path / "parts"), log=lines.append)
  assert any("resumed from the checkpoint at step 3" in line for line in lines)
  step, parts = final_params(str(tmp_path / "parts"))
  assert step == 6
  assert_trees_equal(parts, whole)

  loop.train(config, str(tmp_path / "remesh"), log=quiet, stop_after=3)
  loop.train(small_config(data, eval_every=0, **{"mesh.data": 4, "mesh.tensor": 2}),
             str(tmp_path / "remesh"), log=quiet)
  assert_trees_equal(final_params(str(tmp_path / "remesh"))[1], whole, rtol=2e-4, atol=2e-6)


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_is_skipped(data, whole_run, tmp_path):
  config = small_config(data, eval_every=0)
  shutil.copytree(os.path.join(whole_run, "checkpoints"), str(tmp_path / "checkpoints"))
  files = [f for f in glob.glob(str(tmp_path / "checkpoints/6/state/**"), recursive=True)
           if os.path.isfile(f) and os.path.getsize(f) > 64]
  for path in files:  # truncate everything the newest checkpoint's state holds
    with open(path, "r+b") as f:
      f.truncate(16)
  lines = []
  from fourm.train import mesh as mesh_lib, optimizer, state
  tx, _ = optimizer.make_optimizer(config.optimizer, config.batch_size, config.total_steps)
  _, fresh = state.create_train_state(state.model_factory(config), tx,
                                      mesh_lib.make_mesh(config.mesh))
  restored, meta = Checkpoints(str(tmp_path), every=3, keep=3, log=lines.append
                               ).restore_latest(fresh)
  assert int(restored.step) == 3 and meta["data"]["batches_consumed"] == 3
  assert any("checkpoint at step 6" in line and "cannot be read" in line for line in lines)
  # The run that owns the workdir sets it aside, so that its next save of step 6 is made
  # (not skipped as already saved) and a later resume does not stumble on it again.
  assert os.path.isdir(tmp_path / "checkpoints_unreadable" / "6")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
  assert any("moved the unreadable checkpoint of step 6" in line for line in lines)
  for path in glob.glob(str(tmp_path / "checkpoints/3/state/**"), recursive=True):
    if os.path.isfile(path) and os.path.getsize(path) > 64:
      with open(path, "r+b") as f:
        f.truncate(16)
  with pytest.raises(UsageError, match=r"none of the checkpoints \[3\] .* can be read"):
    Checkpoints(str(tmp_path), every=3, keep=3, log=quiet).restore_latest(fresh)


def test_a_run_whose_checkpoints_metadata_is_unreadable_is_not_started_afresh(data, whole_run,
                                                                                 tmp_path):
  """Checkpoints whose metadata no longer reads (so no config to check against) are
  still this run's: training over them afresh would hide the damage."""
  workdir = str(tmp_path / "run")
  shutil.copytree(whole_run, workdir)
  for path in glob.glob(os.path.join(workdir, "checkpoints", "*", "meta", "*")):
    with open(path, "w") as f:
      f.write("{not json")
  with pytest.raises(UsageError, match=r"none of the checkpoints \[.*\] .* can be read"):
    loop.train(small_config(data, eval_every=0), workdir, log=quiet)


@pytest.mark.slow
def test_non_finite_steps_are_skipped_then_stop_the_run(data, tmp_path, monkeypatch):
  real = loop.make_train_step

  def poisoned(*args, **kwargs):
    step = real(*args, **kwargs)

    def run(state, batch):
      if int(state.step) >= 3:  # from the fourth step on, the pixels are NaN
        batch = {**batch, "rgb": {**batch["rgb"], "tokens": batch["rgb"]["tokens"] * np.nan}}
      return step(state, batch)
    return run

  monkeypatch.setattr(loop, "make_train_step", poisoned)
  config = small_config(data, eval_every=0, total_steps=20, max_consecutive_nonfinite=3)
  with pytest.raises(loop.TrainingStopped, match=r"not finite for 3 steps in a row \(up to "
                                                 r"step 6\).*last good checkpoint is step 3"):
    loop.train(config, str(tmp_path), log=quiet)
  step, params = final_params(str(tmp_path))
  # The run stopped before saving the state of the NaN steps.
  assert step == 3 and all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_problems_are_reported_before_training_starts(data, whole_run, tmp_path):
  with pytest.raises(UsageError, match="batch_size 6 does not split over the mesh's data x "
                                       "fsdp = 4 batch shards"):
    loop.train(small_config(data, batch_size=6, **{"mesh.data": 4}), str(tmp_path / "a"),
               log=quiet)
  with pytest.raises(RecordError, match=r"field 'tok_rgb': expected token ids of shape "
                                        r"\(196,\) or \(14, 14\)"):
    loop.train(small_config(data, layout="reference"), str(tmp_path / "b"), log=quiet)
  with pytest.raises(UsageError, match="mesh .* needs 16 devices, this run has 8"):
    loop.train(small_config(data, **{"mesh.data": 16}), str(tmp_path / "c"), log=quiet)
  shutil.copytree(whole_run, str(tmp_path / "d"))
  with pytest.raises(UsageError, match="holds a run with input_budget = 32"):
    loop.train(small_config(data, input_budget=16), str(tmp_path / "d"), log=quiet)
  with pytest.raises(UsageError, match="holds a run with model = "):  # other shapes too
    loop.train(small_config(data, **{"model.dim": 64}), str(tmp_path / "d"), log=quiet)
  # What would skip or repeat part of the data stream on resume is refused as well.
  with pytest.raises(UsageError, match="holds a run with batch_size = 8, this config says 16"):
    loop.train(small_config(data, batch_size=16), str(tmp_path / "d"), log=quiet)
  with pytest.raises(UsageError, match="holds a run with seed = "):
    loop.train(small_config(data, seed=7), str(tmp_path / "d"), log=quiet)


def _train_command(data, workdir, *extra):
  return [FOURM, "train", "--config", os.path.join(ROOT, "configs/tiny_synthetic.py:smoke"),
          "--workdir", workdir, f"--config.data.paths={tuple(data)!r}",
          "--config.modalities=('rgb','tok_rgb','tok_semseg','caption')",
          "--config.model.dim=32", "--config.model.num_heads=2",
          "--config.model.encoder_depth=1", "--config.model.decoder_depth=1",
          "--config.input_budget=32", "--config.target_budget=32", "--config.eval_every=0",
          *extra]


def _wait_for(predicate, proc, timeout=120, poll_s=0.02):
  deadline = time.time() + timeout
  while not predicate():
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline, "timed out"
    time.sleep(poll_s)


def _saves_in_flight(directory: str, from_step: int) -> list[str]:
  """The temporary directories of checkpoints being written, of steps >= from_step."""
  return [name for name in glob.glob(os.path.join(directory, "*.orbax-checkpoint-tmp"))
          if int(os.path.basename(name).split(".")[0]) >= from_step]


@pytest.mark.slow
def test_sigkill_after_and_during_a_checkpoint_then_restart_matches_an_uninterrupted_run(
    data, tmp_path):
  common = ["--config.total_steps=40", "--config.checkpoint.every=4", "--config.log_every=1",
            "--config.mesh.data=1", "--config.checkpoint.async_save=True"]
  whole = str(tmp_path / "whole")  # uninterrupted, in this process (the same config)
  loop.train(small_config(data, eval_every=0, total_steps=40, **{"checkpoint.every": 4}),
             whole, log=quiet)
  killed = str(tmp_path / "killed")
  checkpoints = os.path.join(killed, "checkpoints")

  def kill_when(predicate) -> None:
    proc = subprocess.Popen(_train_command(data, killed, *common), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for(predicate, proc, poll_s=0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

  kill_when(lambda: os.path.isdir(os.path.join(checkpoints, "4")))  # after a checkpoint
  kill_when(lambda: _saves_in_flight(checkpoints, 8))  # in the middle of writing one
  written = sorted(os.listdir(checkpoints))
  assert _saves_in_flight(checkpoints, 8), written  # the kill did cut a save short
  restarted = subprocess.run(_train_command(data, killed, *common), check=True,
                             capture_output=True, text=True)
  assert "took over the lock of fourm train" in restarted.stdout  # the killed run's
  assert re.search(r"resumed from the checkpoint at step \d+", restarted.stdout)
  assert "step 40/40" in restarted.stdout
  assert not _saves_in_flight(checkpoints, 0), os.listdir(checkpoints)  # its litter is gone
  assert_trees_equal(final_params(killed)[1], final_params(whole)[1])


@pytest.mark.slow
@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_a_checkpoint_and_exit_cleanly(data, tmp_path, sent):
  workdir = str(tmp_path)
  proc = subprocess.Popen(_train_command(data, workdir, "--config.total_steps=100000",
                                         "--config.log_every=1", "--config.mesh.data=1"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  line = ""
  while not line.startswith("step "):
    line = proc.stdout.readline()
    assert line or proc.poll() is None
  if sent == signal.SIGTERM:  # meanwhile, a second run on the workdir is refused at once
    second = subprocess.run(_train_command(data, workdir, "--config.total_steps=100000"),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr
    assert "is in use by fourm train (host" in second.stderr
    assert f"pid {proc.pid}" in second.stderr
  proc.send_signal(sent)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert f"{sent.name}: saved the checkpoint at step" in out
  step, params = final_params(workdir)
  assert 1 <= step < 100000 and jax.tree.leaves(params)


def _multiprocess(command):
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch/multiprocess.py"), "--num-processes", "2",
       "--devices-per-process", "4", "--", *command], capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


@pytest.mark.slow
def test_two_processes_of_four_devices_match_one_process_of_eight(data, tmp_path):
  common = ["--config.total_steps=4", "--config.log_every=4", "--config.mesh.data=8"]
  # The one-process runs happen here (this process has eight devices): the same config as
  # the command line's, and one compilation for both.
  config = small_config(data, eval_every=0, total_steps=4, log_every=4, **{"mesh.data": 8})
  single = str(tmp_path / "single")
  loop.train(config, single, log=quiet)
  multi = str(tmp_path / "multi")
  out = _multiprocess(_train_command(data, multi, *common))
  assert "[0] model: tiny" in out and "2 process(es)" in out
  assert_trees_equal(final_params(multi)[1], final_params(single)[1], rtol=2e-4, atol=2e-6)

  # Started on one process, resumed on two: the data stream continues where it stopped.
  moved = str(tmp_path / "moved")
  loop.train(config, moved, log=quiet, stop_after=2)
  out = _multiprocess(_train_command(data, moved, *common))
  assert "[0] resumed from the checkpoint at step 2" in out
  assert_trees_equal(final_params(moved)[1], final_params(single)[1], rtol=2e-4, atol=2e-6)


def test_optimizer_moments_are_split_as_their_parameters(data):
  """FSDP saves memory mostly on Adam's two moments: they must not come out replicated
  (zeros carry no sharding for XLA to propagate; the state creation places them)."""
  from flax import nnx
  from fourm.train import mesh as mesh_lib
  from fourm.train import state as state_lib
  from fourm.train.optimizer import make_optimizer
  config = small_config(data, **{"mesh.data": 1, "mesh.fsdp": 8})
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.axis_rules(config, mesh)
  tx, _ = make_optimizer(config.optimizer, config.batch_size, 10)
  _, state = state_lib.create_train_state(state_lib.model_factory(config), tx, mesh, rules)
  _, abstract = state_lib.abstract_train_state(state_lib.model_factory(config), tx, mesh,
                                               rules)
  params = nnx.to_flat_state(state.params)
  split = [path for path, p in params if p[...].sharding.spec != jax.sharding.PartitionSpec()]
  assert len(split) > len(params) // 2
  adam = state.opt_state[-1][0]  # chain(clip, adamw) -> adamw's (ScaleByAdamState, ...)
  for moments in (adam.mu, adam.nu):
    for (path, param), (_, moment) in zip(params, nnx.to_flat_state(moments), strict=True):
      assert moment[...].sharding == param[...].sharding, path
  assert jax.tree.map(lambda x: x.sharding, abstract) == jax.tree.map(lambda x: x.sharding,
                                                                        state)


def test_adam_first_moment_in_bfloat16_on_request(data):
  from fourm.train.optimizer import make_optimizer
  params = {"w": {"kernel": np.ones((4, 4), np.float32)}}
  config = small_config(data, **{"optimizer.mu_dtype": "bfloat16"})
  adam = make_optimizer(config.optimizer, 8, 10)[0].init(params)[-1][0]
  assert adam.mu["w"]["kernel"].dtype == np.dtype("bfloat16")
  assert adam.nu["w"]["kernel"].dtype == np.float32
  config.optimizer.mu_dtype = "float16"
  with pytest.raises(UsageError, match="config.optimizer.mu_dtype is 'float16'"):
    make_optimizer(config.optimizer, 8, 10)


def _config_variants():
  """FILE or FILE:VARIANT for every training config and each variant it declares."""
  specs = []
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    variants = getattr(config_lib.import_config_file(path), "VARIANTS", ("",))
    specs += [f"{path}:{v}" if v else path for v in variants]
  return specs


@pytest.mark.parametrize("spec", _config_variants(), ids=lambda s: os.path.basename(s))
def test_every_config_loads_and_initializes_abstractly(spec):
  from flax import nnx
  from fourm.train import state
  config = config_lib.load_config(spec)
  model = nnx.eval_shape(state.model_factory(config))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) > 0
  assert config.batch_size % 8 == 0 or config.mesh.data == -1


def test_an_unknown_config_variant_is_named():
  with pytest.raises(UsageError, match="unknown variant 'smok'"):
    config_lib.load_config(os.path.join(ROOT, "configs/tiny_synthetic.py:smok"))
  with pytest.raises(UsageError, match="unknown variant 'xxl'"):
    config_lib.load_config(os.path.join(ROOT, "configs/4m_mod7.py:xxl"))


def test_overrides_parse_and_refuse_unknown_fields():
  config = default_config()
  config_lib.apply_override(config, "optimizer.base_lr=3e-4")
  config_lib.apply_override(config, "--config.modalities=rgb,tok_rgb")
  config_lib.apply_override(config, "model.size=base")
  assert config.optimizer.base_lr == 3e-4 and config.modalities == ("rgb", "tok_rgb")
  with pytest.raises(UsageError, match="no field 'optimizer.lr'"):
    config_lib.apply_override(config, "optimizer.lr=1")
  with pytest.raises(UsageError, match="batch_size=big"):
    config_lib.apply_override(config, "batch_size=big")


@pytest.mark.parametrize("script, args, expected", [
    ("local.py", [], "fourm train --config c.py --workdir w"),
    ("multiprocess.py", ["--num-processes", "2", "--devices-per-process", "4", "--port", "9"],
     "FOURM_COORDINATOR=127.0.0.1:9 FOURM_NUM_PROCESSES=2 FOURM_PROCESS_ID=1"),
    ("slurm.py", ["--nodes", "4"], "srun --kill-on-bad-exit=1 fourm train --config c.py"),
    ("tpu.py", ["run", "--name", "n", "--zone", "z"], "--worker=all"),
])
def test_launchers_dry_run_prints_what_they_would_run(script, args, expected):
  result = subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args,
                           "--dry-run", "--", "fourm", "train", "--config", "c.py",
                           "--workdir", "w"], capture_output=True, text=True, check=True)
  assert expected in result.stdout


def test_a_fresh_run_starts_from_another_runs_parameters(data, whole_run, tmp_path):
  config = small_config(data, total_steps=1, eval_every=0)
  config.modalities = tuple(config.modalities) + ("instruction",)  # a new input modality
  config.init = whole_run
  lines = []
  loop.train(config, str(tmp_path / "tuned"), log=lines.append)
  line = next(line for line in lines if line.startswith("initialized from"))
  assert "new here: encoder_embeddings/instruction" in line, line
  # Shared parameters started where the pre-trained run ended (one step moves them
  # little; a fresh initialization would be as far as the weights are large).
  _, pretrained = final_params(whole_run)
  _, tuned = final_params(str(tmp_path / "tuned"))
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x)  # noqa: E731
                       for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  before, after = flat(pretrained), flat(tuned)
  shared = set(before) & set(after)
  assert len(shared) > 10 and set(after) - set(before)
  for path in shared:
    scale = np.abs(before[path]).max() + 1e-3
    assert np.abs(after[path] - before[path]).max() < 0.2 * scale, path
  # Another width: refused, naming a parameter.
  wider = small_config(data, total_steps=1, eval_every=0)
  wider.model.dim = 64
  wider.init = whole_run
  with pytest.raises(UsageError, match="another shape"):
    loop.train(wider, str(tmp_path / "wider"), log=lambda _: None)
