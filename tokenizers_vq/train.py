"""`fourm tokenizer train --config configs/tokenizers/vqvae.py:<modality>_<size> --workdir DIR`
(or configs/tokenizers/divae.py:<modality>_<size>, a diffusion-decoder DiVAE).

The same conventions as `fourm train`: an ml_collections config with `--config.x=y`
overrides, the grain pipeline (augmented crops of the raw modality), orbax checkpoints
in WORKDIR/checkpoints that a rerun resumes from (the VQ-VAE config is saved with them,
so encode and decode can never disagree), TensorBoard scalars in WORKDIR/tensorboard and
a progress line on the console. Every `eval_every` steps the held-out split is scored:
the modality's reconstruction metrics, codebook usage over all held-out tokens pooled
(% of the vocabulary used) and perplexity, and a PNG grid of a few held-out originals
above their reconstructions is written to WORKDIR/reconstructions.png.

A DiVAE trains the same way (the config's `decoder` is "diffusion" and `diffusion` holds
its UNet and schedule); its held-out metrics and reconstructions are DDIM decodes of the
held-out codes with the tokenizer's `sample_steps`.

`load_tokenizer(WORKDIR)` turns the newest checkpoint into a `VQTokenizer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from fourm.data import visualize
from fourm.data.pipeline import Pipeline, PipelineConfig
from fourm.errors import UsageError
from fourm import metrics as metrics_lib
from fourm import workdir as workdir_lib
from fourm.checkpoint import Checkpoints, on_one_device
from fourm.nn.init import initialize
from tokenizers_vq import quantizer as quantizer_lib
from tokenizers_vq import train_step as step_lib
from tokenizers_vq.vqvae import (DIVAE_PRESETS, VQVAE, DiffusionConfig, VQVAEConfig,
                                 divae_preset, preset)


def default_config(preset_name: str = "rgb_tiny", decoder: str = "vit"
                   ) -> ml_collections.ConfigDict:
  """Every field of a tokenizer training config, with defaults for the preset's size:
  minutes on a CPU for the tiny presets, a GPU-node run for the base ones. With
  `decoder="diffusion"` a DiVAE (tokenizers_vq.vqvae.DIVAE_PRESETS) and its `diffusion`
  fields, each overridable (--config.diffusion.sample_steps=50)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.preset = preset_name         # tokenizers_vq.vqvae.PRESETS (DIVAE_PRESETS for a DiVAE)
  c.decoder = decoder            # "vit" or "diffusion"
  if decoder == "diffusion":
    if preset_name not in DIVAE_PRESETS:
      raise UsageError(f"no DiVAE preset {preset_name!r}; one of {sorted(DIVAE_PRESETS)}")
    c.diffusion = ml_collections.ConfigDict(
        dataclasses.asdict(DIVAE_PRESETS[preset_name]["diffusion"]))
  c.vocab_size = 0               # 0: the preset's
  c.dead_code_replacement = True
  c.data = ml_collections.ConfigDict(dict(
      paths=("/path/to/records",), train_split="train", eval_split="val", augment=True,
      worker_count=0))
  c.batch_size = 32
  c.total_steps = 600
  c.learning_rate = 1e-3
  c.warmup_steps = 20
  c.weight_decay = 0.05
  c.grad_clip = 1.0
  c.log_every = 25
  c.eval_every = 200
  c.eval_batches = 4             # 0: the whole held-out split
  c.num_reconstructions = 4
  c.checkpoint = ml_collections.ConfigDict(dict(every=200, keep=2, async_save=True))
  if preset_name.endswith("_base"):
    c.data.paths = ("/path/to/records",)  # change me: records at 224 px
    c.data.worker_count = 8
    c.batch_size = 256
    c.total_steps = 100_000
    c.learning_rate = 1e-4
    c.warmup_steps = 5000
    c.eval_every = c.checkpoint.every = 5000
  return c


def vqvae_config(config: ml_collections.ConfigDict) -> VQVAEConfig:
  overrides: dict[str, Any] = {"dead_code_replacement": config.dead_code_replacement}
  if config.vocab_size:
    overrides["vocab_size"] = config.vocab_size
  if config.get("decoder", "vit") == "diffusion":
    diffusion = DiffusionConfig.from_dict(dict(config.diffusion.to_dict()))
    return divae_preset(config.preset, diffusion=diffusion, **overrides)
  return preset(config.preset, **overrides)


def make_optimizer(config: ml_collections.ConfigDict):
  return step_lib.make_optimizer(step_lib.TrainConfig(
      learning_rate=config.learning_rate, warmup_steps=config.warmup_steps,
      total_steps=config.total_steps, weight_decay=config.weight_decay,
      grad_clip=config.grad_clip or None))


def _pipeline(config, vq: VQVAEConfig, *, train: bool) -> Pipeline:
  return Pipeline(PipelineConfig(
      data=tuple(config.data.paths), split=config.data.train_split if train else
      config.data.eval_split, batch_size=config.batch_size, modalities=(vq.modality,),
      resolution=vq.resolution, seed=config.seed, shuffle=train,
      num_epochs=None if train else 1, augment=train and config.data.augment,
      worker_count=config.data.worker_count if train else 0))


def _raw(batch: dict, vq: VQVAEConfig, valid_only: bool = False) -> np.ndarray:
  raw = batch[vq.modality]
  return raw[batch["meta"]["valid"]] if valid_only else raw


def evaluate(config, vq: VQVAEConfig, eval_step, state) -> tuple[dict[str, float], np.ndarray]:
  """Held-out metrics (means over images) and the first batch's raw images."""
  sums: dict[str, float] = {}
  counts = np.zeros(vq.vocab_size, np.int64)
  images, first = 0, None
  for index, batch in enumerate(_pipeline(config, vq, train=False).iterator()):
    if config.eval_batches and index >= config.eval_batches:
      break
    valid = np.asarray(batch["meta"]["valid"])
    metrics = jax.device_get(eval_step(state, _raw(batch, vq)))
    codes = np.asarray(metrics.pop("codes"))[valid]
    counts += np.bincount(codes.reshape(-1), minlength=vq.vocab_size)
    n = int(valid.sum())  # padded rows of the last batch weigh a little: fine for means
    for name, value in metrics.items():
      if name not in ("usage_pct", "perplexity"):
        sums[name] = sums.get(name, 0.0) + float(value) * n
    images += n
    if first is None:
      first = _raw(batch, vq, valid_only=True)
  if not images:
    raise UsageError(f"split {config.data.eval_split!r} of {list(config.data.paths)} has no "
                     "records to evaluate on")
  scores = {f"eval/{name}": total / images for name, total in sums.items()}
  probabilities = counts / counts.sum()
  nonzero = probabilities[probabilities > 0]
  scores["eval/usage_pct"] = 100.0 * np.count_nonzero(counts) / vq.vocab_size
  scores["eval/perplexity"] = float(np.exp(-(nonzero * np.log(nonzero)).sum()))
  return scores, first


def write_reconstructions(tokenizer: step_lib.VQTokenizer, images: np.ndarray, path: str,
                          count: int) -> str:
  """A grid: each held-out original on one row, its reconstruction on the next."""
  images = images[:count]
  reconstructed = tokenizer.reconstruct(images)
  name = tokenizer.config.modality
  rows = []
  for index, (original, recon) in enumerate(zip(images, reconstructed)):
    rows.append({name: original, "__name__": f"held-out {index}: original"})
    rows.append({name: recon.astype(original.dtype), "__name__": f"held-out {index}: tokens"})
  return visualize.save_grid(rows, path, title=f"{tokenizer.config.name}: reconstructions")


def _progress(step: int, total: int, scalars: dict[str, float], images_per_s: float) -> str:
  shown = "  ".join(f"{k}={v:.4g}" for k, v in scalars.items()
                    if k not in ("learning_rate", "grad_norm"))
  return f"step {step}/{total}  {shown}  {images_per_s:,.0f} img/s"


def train(config: ml_collections.ConfigDict, workdir: str, *,
          log: Callable[[str], None] = print) -> dict[str, float]:
  """Trains (or resumes) the tokenizer in `workdir`; returns the last scalars."""
  vq = vqvae_config(config)
  # As in `fourm train`: whatever ends the run closes the checkpoint manager and writer.
  with workdir_lib.exclusive(workdir, "fourm tokenizer train", log=log), \
       contextlib.ExitStack() as cleanup:
    return _train(config, vq, workdir, log=log, cleanup=cleanup)


def _trained_dict(saved: dict[str, Any] | None) -> dict[str, Any] | None:
  try:
    return VQVAEConfig.from_dict(saved).trained_dict() if saved else None
  except (UsageError, TypeError):
    return saved  # not a config this version reads: it differs


def _train(config: ml_collections.ConfigDict, vq, workdir: str, *,
           log: Callable[[str], None], cleanup: contextlib.ExitStack) -> dict[str, float]:
  if config.eval_every:  # a missing eval split fails now, not after eval_every steps
    _pipeline(config, vq, train=False)
  optimizer = make_optimizer(config)
  model = initialize(lambda rngs: VQVAE(vq, rngs=rngs), config.seed)
  graphdef, state = step_lib.init_state(model, optimizer)
  # Committed to the device a restored state lands on: a fresh run and a resumed one then
  # call the step with the same shardings, so the resumed run's step program is the
  # fresh run's (from the compilation cache), not a recompilation.
  state = jax.device_put(state, jax.devices()[0])
  checkpoints = Checkpoints(workdir, every=config.checkpoint.every,
                            keep=config.checkpoint.keep,
                            async_save=config.checkpoint.async_save, log=log)
  cleanup.callback(workdir_lib.closing_quietly(checkpoints.close))
  saved = checkpoints.latest_meta()
  if saved is not None and _trained_dict(saved.get("tokenizer")) != vq.trained_dict():
    raise UsageError(f"{workdir} holds a tokenizer {saved.get('tokenizer')}, this config "
                     f"makes {vq.to_dict()}; use a new --workdir")
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, _ = restored
    log(f"resumed from the checkpoint at step {int(state.step)} in {checkpoints.directory}")
  start = int(state.step)
  decoder = (f", diffusion decoder (predicts {vq.diffusion.prediction}, decodes in "
             f"{vq.diffusion.sample_steps} DDIM steps)" if vq.is_diffusion else "")
  log(f"tokenizer {vq.name}: {vq.modality}, {vq.grid}x{vq.grid} tokens, vocabulary "
      f"{vq.vocab_size}, dead-code replacement {'on' if vq.dead_code_replacement else 'off'}"
      f"{decoder}")

  def meta() -> dict[str, Any]:
    return {"step": int(state.step), "tokenizer": vq.to_dict(),
            "config": json.loads(config.to_json())}

  batches = _pipeline(config, vq, train=True).iterator(start_batch=start)
  train_step = step_lib.make_train_step(graphdef, vq, optimizer, seed=config.seed)
  eval_step = step_lib.make_eval_step(graphdef, vq, seed=config.seed)
  writer = metrics_lib.TensorBoardWriter(os.path.join(workdir, "tensorboard"))
  cleanup.callback(workdir_lib.closing_quietly(writer.close))
  last: dict[str, float] = {}
  window_start, window_steps = time.perf_counter(), 0
  for step in range(start, config.total_steps):
    state, metrics = train_step(state, _raw(next(batches), vq))
    window_steps += 1
    done = step + 1
    if done % config.log_every == 0 or done == config.total_steps:
      last = {k: float(v) for k, v in jax.device_get(metrics).items()}
      rate = config.batch_size * window_steps / (time.perf_counter() - window_start)
      writer.write_scalars(done, last)
      log(_progress(done, config.total_steps, last, rate))
      window_start, window_steps = time.perf_counter(), 0
    if config.eval_every and (done % config.eval_every == 0 or done == config.total_steps):
      scores, images = evaluate(config, vq, eval_step, state)
      writer.write_scalars(done, scores)
      last.update(scores)
      log(f"eval at step {done}: " + "  ".join(f"{k.removeprefix('eval/')}={v:.4g}"
                                                for k, v in scores.items()))
      path = write_reconstructions(step_lib.VQTokenizer.from_state(graphdef, state), images,
                                   os.path.join(workdir, "reconstructions.png"),
                                   config.num_reconstructions)
      log(f"wrote {path}")
    writer.flush()
    checkpoints.save(state, meta(), force=done == config.total_steps)
  checkpoints.close()
  writer.close()
  log(f"checkpoints: {checkpoints.directory}")
  return last


def load_tokenizer(workdir: str) -> step_lib.VQTokenizer:
  """The tokenizer of the newest readable checkpoint in `workdir` (`fourm tokenizer train`)."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise UsageError(f"{workdir}: no tokenizer checkpoints (expected {directory}; train one "
                     "with fourm tokenizer train)")
  checkpoints = Checkpoints(workdir, every=1, keep=1, async_save=False, owner=False)
  if not checkpoints.manager.all_steps():
    raise UsageError(f"{workdir}: the checkpoints directory holds no finished checkpoint")
  meta = checkpoints.latest_meta()
  if meta is None:
    raise UsageError(f"{workdir}: none of its checkpoints can be read")
  if "tokenizer" not in meta:
    raise UsageError(f"{workdir}: holds a checkpoint that is not a VQ-VAE tokenizer's")
  if "converted_from" in meta:  # `fourm convert --from reference`: no optimizer state
    try:
      return _load_converted(workdir, checkpoints, meta)
    finally:
      checkpoints.close()
  vq = VQVAEConfig.from_dict(meta["tokenizer"])
  # The saved state includes the optimizer's: its shapes as the run made them are the
  # target to restore into (shapes only: nothing is initialized only to be overwritten).
  optimizer = make_optimizer(ml_collections.ConfigDict(meta["config"]))
  def fresh_model():
    return VQVAE(vq, rngs=nnx.Rngs(0))
  graphdef = nnx.graphdef(nnx.eval_shape(fresh_model))
  like = on_one_device(jax.eval_shape(lambda: step_lib.init_state(fresh_model(), optimizer)[1]))
  restored = checkpoints.restore_latest(like)
  checkpoints.close()
  if restored is None:
    raise UsageError(f"{workdir}: no checkpoint could be read")
  return step_lib.VQTokenizer.from_state(graphdef, restored[0])


def _load_converted(workdir: str, checkpoints: Checkpoints, meta: dict[str, Any]
                    ) -> step_lib.VQTokenizer:
  """A converted tokenizer's checkpoint holds its parameters and codebook only."""
  config = VQVAEConfig.from_dict(meta["tokenizer"])
  abstract = nnx.eval_shape(lambda: VQVAE(config, rngs=nnx.Rngs(0)))
  graphdef, params, codebook = nnx.split(abstract, nnx.Param, quantizer_lib.CodebookState)
  found = checkpoints.restore_latest_items(on_one_device({"params": params,
                                                          "codebook": codebook}))
  if found is None:
    raise UsageError(f"{workdir}: no checkpoint could be read")
  return step_lib.VQTokenizer(graphdef, found[0]["params"], found[0]["codebook"])
