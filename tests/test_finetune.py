"""`fourm finetune` and `fourm evaluate` end to end on the synthetic world: every task
trains and is evaluated from a pre-trained 4M checkpoint, a stopped fine-tune resumes
bitwise, LoRA leaves the pre-trained encoder bitwise as it was, and bad input is one
clear error."""

from __future__ import annotations

import glob
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from fourm import cli
from fourm import config as config_lib
from fourm.checkpoint import Checkpoints
from fourm.errors import RecordError, UsageError
from fourm.finetune import loop as finetune_loop
from fourm.finetune.targets import TaskTargets
from fourm.generation.loading import load_model
from fourm.train import loop as train_loop
from tests.helpers import ROOT, small_config, write_train_data


def quiet(_):
  pass


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return write_train_data(tmp_path_factory.mktemp("finetune_data"))


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory) -> str:
  """A 4M checkpoint (4 steps of the tiny test model) to fine-tune from."""
  workdir = str(tmp_path_factory.mktemp("pretrained"))
  train_loop.train(small_config(data, eval_every=0, total_steps=4), workdir, log=quiet)
  return workdir


def finetune_config(task: str, data, **overrides):
  config = config_lib.load_config(os.path.join(ROOT, f"configs/finetune/{task}_synthetic.py:smoke"))
  config.data.paths = (data[0],)
  config.checkpoint.async_save = False
  config.mesh.data = 1
  for key, value in overrides.items():
    config_lib.apply_override(config, f"{key}={value!r}")
  return config


def restored_state(workdir: str):
  checkpoints = Checkpoints(workdir, every=1, keep=10, async_save=False, owner=False, log=quiet)
  meta = checkpoints.latest_meta()
  setup = finetune_loop.build(ml_collections.ConfigDict(meta["config"]),
                              ml_collections.ConfigDict(meta["pretrain_config"]))
  state, _ = checkpoints.restore_latest(setup.state)
  checkpoints.close()
  return setup, state


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segmentation", "depth", "detection", "classification"])
def test_each_task_fine_tunes_and_evaluates_through_the_cli(data, pretrained, tmp_path,
                                                            capsys, task):
  workdir = str(tmp_path / task)
  status = cli.main(["finetune", "--config",
                     os.path.join(ROOT, f"configs/finetune/{task}_synthetic.py:smoke"),
                     "--init", pretrained, "--workdir", workdir,
                     f"--config.data.paths=('{data[0]}',)", "--config.mesh.data=1"])
  out = capsys.readouterr().out
  assert status == 0, out
  assert "trainable of" in out and "step 4/4" in out and "eval at step 4" in out
  status = cli.main(["evaluate", "--workdir", workdir])
  out = capsys.readouterr().out
  assert status == 0
  written = json.load(open(os.path.join(workdir, "eval_val", "metrics.json")))
  expected = {"segmentation": "mIoU", "depth": "delta1", "detection": "AP",
              "classification": "top1"}[task]
  assert expected in written and np.isfinite(written[expected]) and expected in out
  assert os.path.getsize(os.path.join(workdir, "eval_val", "grid.png")) > 10_000
  if task == "detection":
    predictions = json.load(open(os.path.join(workdir, "eval_val", "predictions.json")))
    assert predictions and set(predictions[0]) == {"image_id", "category_id", "bbox", "score"}


@pytest.mark.slow
def test_a_stopped_fine_tune_resumes_bitwise_and_a_changed_one_is_refused(data, pretrained,
                                                                           tmp_path):
  common = dict(init=pretrained, drop_path=0.3, total_steps=6)  # drop path draws per step
  whole = str(tmp_path / "whole")
  finetune_loop.finetune(finetune_config("segmentation", data, **common), whole, log=quiet)
  stopped = str(tmp_path / "stopped")
  finetune_loop.finetune(finetune_config("segmentation", data, **common), stopped, log=quiet,
                         stop_after=3)
  lines = []
  finetune_loop.finetune(finetune_config("segmentation", data, **common), stopped,
                         log=lines.append)
  assert any("resumed from the checkpoint at step 3" in line for line in lines)
  _, a = restored_state(whole)
  _, b = restored_state(stopped)
  assert int(a.step) == int(b.step) == 6
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.trainable),
               jax.device_get(b.trainable))
  with pytest.raises(UsageError, match=r"holds a fine-tune with batch_size = 4, this config "
                                       r"says 8"):
    finetune_loop.finetune(finetune_config("segmentation", data, batch_size=8, **common),
                           stopped, log=quiet)


@pytest.mark.slow
def test_lora_leaves_the_pretrained_encoder_bitwise_as_it_was(data, pretrained, tmp_path):
  workdir = str(tmp_path / "lora")
  lines = []
  finetune_loop.finetune(finetune_config("segmentation", data, init=pretrained,
                                         **{"tuning.mode": "lora"}), workdir,
                         log=lines.append)
  assert any("trainable of" in line and "tuning lora" in line for line in lines)
  setup, state = restored_state(workdir)
  model = nnx.merge(setup.graphdef, state.trainable, state.frozen, setup.other)
  original = load_model(pretrained).model
  blocks = model.encoder.blocks[0]
  np.testing.assert_array_equal(np.asarray(blocks.attn.qkv.base.kernel[...]),
                                np.asarray(original.encoder[0].attn.qkv.kernel[...]))
  np.testing.assert_array_equal(np.asarray(model.encoder.patch_embedding.proj.kernel[...]),
                                np.asarray(original.encoder_embeddings["rgb"].proj.kernel[...]))
  assert float(np.abs(np.asarray(blocks.attn.qkv.up[...])).max()) > 0  # the adapter moved


@pytest.mark.slow
def test_bad_input_is_one_clear_error(data, pretrained, tmp_path):
  with pytest.raises(UsageError, match="--init WORKDIR"):
    finetune_loop.build(finetune_config("segmentation", data))
  with pytest.raises(RecordError, match=r"field 'semseg': class id \d is beyond the head's 2 "
                                        r"classes"):
    finetune_loop.finetune(finetune_config("segmentation", data, init=pretrained,
                                           **{"head.classes": ("a", "b")}),
                           str(tmp_path / "few"), log=quiet)
  with pytest.raises(RecordError, match="depth"):  # the tokens dataset has no depth
    finetune_loop.finetune(finetune_config("depth", (data[1],), init=pretrained),
                           str(tmp_path / "nodepth"), log=quiet)
  targets = TaskTargets("detection", 64, ("sphere", "cube"))
  rgb = np.zeros((64, 64, 3), np.uint8)
  with pytest.raises(RecordError, match="field 'det': a box lies outside the image"):
    targets({"rgb": rgb, "det": {"boxes": np.array([[0.5, 0.5, 1.2, 0.9]], np.float32),
                                 "classes": ["cube"]}}, None)
  with pytest.raises(RecordError, match="field 'det': class 'cone' is not among the head's 2"):
    targets({"rgb": rgb, "det": {"boxes": np.array([[0.1, 0.1, 0.2, 0.2]], np.float32),
                                 "classes": ["cone"]}}, None)


@pytest.mark.slow
def test_a_checkpoint_without_rgb_is_refused(data, tmp_path):
  no_rgb = str(tmp_path / "no_rgb")
  train_loop.train(small_config(data, eval_every=0, total_steps=1,
                                modalities=("tok_rgb", "tok_semseg", "caption"),
                                **{"alphas.sources": ("caption",)}), no_rgb, log=quiet)
  with pytest.raises(UsageError, match="no rgb pixel input"):
    finetune_loop.build(finetune_config("segmentation", data, init=no_rgb))


def test_every_finetune_config_loads():
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "finetune", "*.py"))):
    module = config_lib.import_config_file(path)
    for variant in getattr(module, "VARIANTS", ("",)):
      config = config_lib.load_config(f"{path}:{variant}" if variant else path)
      assert config.task in path


def test_the_moving_average_follows_its_recurrence():
  ema = {"w": np.float32([1.0, 2.0])}
  updated = finetune_loop._update_ema(ema, {"w": np.float32([3.0, 0.0])}, 0.75)
  np.testing.assert_allclose(updated["w"], [1.5, 1.5])


@pytest.mark.slow
def test_an_ema_fine_tune_keeps_and_evaluates_the_average(data, pretrained, tmp_path):
  workdir = str(tmp_path / "ema")
  finetune_loop.finetune(finetune_config("segmentation", data, init=pretrained, ema_decay=0.5),
                         workdir, log=quiet)
  _, state = restored_state(workdir)
  differs = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                         jax.device_get(state.ema), jax.device_get(state.trainable))
  assert any(jax.tree.leaves(differs))
  assert state.evaluated is state.ema
