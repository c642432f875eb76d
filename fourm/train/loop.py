"""`fourm train --config FILE --workdir DIR`: the training loop, top to bottom.

mesh -> data (masked, sharded by process) -> model and optimizer state, born sharded ->
resume from the newest readable checkpoint in WORKDIR -> donated jitted step -> every
`log_every` steps a progress line and TensorBoard scalars, every `eval_every` the held-out
loss per modality, every `checkpoint.every` an asynchronous checkpoint. SIGTERM (a
preemption) and SIGINT (Ctrl-C) save and exit cleanly; too many non-finite steps in a row
stop the run with the last good checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fourm import modalities
from fourm.data.masking import AlphasMixture, Cm3Objective, MaskSample
from fourm.data.pipeline import Pipeline, PipelineConfig
from fourm.errors import FourmError, UsageError
from fourm.train import mesh as mesh_lib
from fourm import metrics as metrics_lib
from fourm import workdir as workdir_lib
from fourm.checkpoint import Checkpoints
from fourm.train.init_from import initialize_from
from fourm.train.optimizer import make_optimizer
from fourm.train.preemption import Preemption
from fourm.train.state import (abstract_train_state, create_train_state, layout,
                               model_factory, num_params, vocab_sizes)
from fourm.train.step import make_eval_step, make_train_step

# Config fields a resumed run must share with the checkpoint it resumes.
# What a resumed run must keep: the model, and everything that fixes the stream of
# batches it resumes in the middle of (a checkpoint at step s resumes the stream at batch
# s, so another batch size, seed, dataset or masking would skip or repeat data).
_FIXED_ON_RESUME = ("modalities", "layout", "input_budget", "target_budget", "model",
                    "batch_size", "seed", "data", "alphas", "pixel_normalization",
                    "text_tokenizer", "masking_budgets", "cm3", "retrieval")
# In config.data: the same stream on any worker count. In config.model: how the blocks
# run (scanned or not, what they recompute, which attention kernel) changes neither the
# parameters nor the math.
_FREE_ON_RESUME = ("worker_count", "remat", "scan_layers", "attention")
# Fields added to config.model after runs were saved without them: a saved run that
# lacks one had its default.
_MODEL_FIELDS_ADDED = {"tie_output_heads": True, "share_modality_embeddings": True}
# Top-level fields added the same way.
_FIELDS_ADDED = {"masking_budgets": "fourm",
                 "cm3": {"modalities": [], "rate": 0.5, "max_spans": 16},
                 "retrieval": {"index": "", "duplicate_threshold": 0.95,
                               "diversity_threshold": 0.95}}


class TrainingStopped(FourmError):
  """The run cannot go on (e.g. the loss stopped being finite); the message says why."""


def _alphas(config: ml_collections.ConfigDict) -> AlphasMixture:
  names = tuple(config.modalities)
  alphas = config.alphas
  # A sample's retrieved documents, its instruction and an edit's source scene accompany
  # whichever source gives its inputs: they are read with the query, never in its place.
  companions = tuple(n for n in names if modalities.input_variant_base(n) is not None
                     or n == modalities.INSTRUCTION.name)
  if alphas.kind == "all2all":
    return AlphasMixture.uniform(names, alphas.alpha, alphas.alpha)
  if alphas.kind == "rgb2all_and_all2all":
    return AlphasMixture.rgb_to_all_plus_all_to_all(names, alphas.alpha,
                                                    companions=companions)
  if alphas.kind == "sources2all_and_all2all":
    return AlphasMixture.sources_to_all_plus_all_to_all(names, tuple(alphas.sources),
                                                        alphas.alpha,
                                                        weights=tuple(alphas.weights),
                                                        companions=companions)
  if alphas.kind == "reference_yaml":
    import yaml  # the reference's alphas files are YAML
    with open(alphas.path) as f:
      return AlphasMixture.from_reference_config(yaml.safe_load(f), names=names)
  raise UsageError(f"config.alphas.kind is {alphas.kind!r}, expected all2all, "
                   "rgb2all_and_all2all, sources2all_and_all2all or reference_yaml")


def _sequence_encoders(config: ml_collections.ConfigDict) -> dict[str, Callable]:
  """The codec of every sequence modality of the run (`tokenizers_vq/sequences.py`)."""
  from tokenizers_vq.sequences import codecs_for
  return codecs_for(config.modalities, config.text_tokenizer or None)


def make_pipeline(config: ml_collections.ConfigDict, *, split: str, train: bool,
                  batch_size: int) -> Pipeline:
  grid_layout = layout(config)
  masker = MaskSample(tuple(config.modalities), grid_layout, config.input_budget,
                      config.target_budget, _alphas(config),
                      sequence_encoders=_sequence_encoders(config),
                      pixel_normalization=config.pixel_normalization,
                      budget_rule=config.get("masking_budgets", "fourm"),
                      input_only=tuple(config.get("input_only", ())),
                      vocab_sizes=vocab_sizes(config),
                      cm3=Cm3Objective.of_config(config))
  pipeline_config = PipelineConfig(
      data=tuple(config.data.paths), split=split, batch_size=batch_size,
      resolution=grid_layout.resolution,
      # Training and eval masks come from different streams; eval's are the same each time.
      seed=config.seed if train else config.seed + 1,
      shuffle=train, num_epochs=None if train else 1, augment=train and config.data.augment,
      process_index=jax.process_index(), process_count=jax.process_count(),
      worker_count=config.data.worker_count if train else 0)
  return Pipeline(pipeline_config,
                  transform=_with_retrieval(config, masker, train=train))


def _with_retrieval(config: ml_collections.ConfigDict, masker: MaskSample, *, train: bool):
  """The masking, after the retrieved documents are added when the run reads any
  (fourm/retrieval/conditions.py). Evaluation samples retrieve from the same index (of
  the training split): not in it, they are encoded and searched."""
  index = config.get("retrieval", {}).get("index", "")
  if not index:
    documents = [n for n in config.modalities if modalities.retrieved_base(n)]
    if documents:
      raise UsageError(f"the modalities name retrieved documents ({documents}); set "
                       "config.retrieval.index to a fourm index build directory")
    return masker
  # Here, not at the top: a run without retrieval never loads faiss.
  from fourm.retrieval.conditions import RetrievalConfig, RetrievedDocuments, Then, parts_for
  from fourm.retrieval.index import read_manifest
  # Documents come from the index's split, whichever split the samples are of.
  retrieval = RetrievalConfig(index=index, data=tuple(config.data.paths),
                              split=read_manifest(index).split,
                              duplicate_threshold=config.retrieval.duplicate_threshold,
                              diversity_threshold=config.retrieval.diversity_threshold,
                              required_parts=parts_for(config.modalities))
  return Then(RetrievedDocuments(config.modalities, retrieval, train=train), masker)


def model_inputs(local: Mapping[str, Any]) -> dict[str, Any]:
  """A pipeline batch -> what the model reads: padding rows (meta.valid False) get no
  targets, so they add nothing to any loss."""
  valid = np.asarray(local["meta"]["valid"])
  batch = {}
  for name, entry in local.items():
    if name == "meta":
      continue
    entry = dict(entry)
    entry["target_mask"] = entry["target_mask"] & valid[:, None]
    batch[name] = entry
  return batch


def evaluate(config, eval_step, params, mesh, rules) -> dict[str, float]:
  """Held-out loss per modality (token-weighted over the eval batches) and their mean."""
  pipeline = make_pipeline(config, split=config.data.eval_split, train=False,
                           batch_size=config.eval_batch_size or config.batch_size)
  totals: dict[str, list[float]] = {}
  for index, local in enumerate(pipeline.iterator()):
    if config.eval_batches and index >= config.eval_batches:
      break
    batch = mesh_lib.global_batch(model_inputs(local), mesh, rules)
    sums = jax.device_get(eval_step(params, batch))
    for name, (total, count) in sums.items():
      entry = totals.setdefault(name, [0.0, 0.0])
      entry[0] += float(total)
      entry[1] += float(count)
  losses = {f"eval/loss/{name}": total / count for name, (total, count) in totals.items()
            if count}
  if losses:
    losses["eval/loss"] = float(np.mean(list(losses.values())))
  return losses


def _check_resumable(saved: Mapping[str, Any], config: ml_collections.ConfigDict,
                     workdir: str) -> None:
  current = json.loads(config.to_json())

  def fixed(values: Mapping[str, Any], key: str):
    value = values.get(key, _FIELDS_ADDED.get(key))
    if isinstance(value, dict):
      value = {k: v for k, v in value.items() if k not in _FREE_ON_RESUME}
      if key == "model":
        value = {**_MODEL_FIELDS_ADDED, **value}
    return value

  for key in _FIXED_ON_RESUME:
    if fixed(saved, key) != fixed(current, key):
      raise UsageError(f"{workdir} holds a run with {key} = {fixed(saved, key)}, this "
                       f"config says {fixed(current, key)}; use a new --workdir or the same "
                       "config")


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {name: float(value) for name, value in jax.device_get(dict(metrics)).items()}


@jax.jit
def _longest_streak(longest: tuple[jax.Array, jax.Array], streak: jax.Array,
                    step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(the longest non-finite streak so far, the step at which it had that length),
  updated on the device with the streak after `step`."""
  length, at = longest
  longer = streak > length
  return jnp.where(longer, streak, length), jnp.where(longer, step, at)


def _batches(iterator: Iterator, mesh, rules) -> Iterator:
  for local in iterator:
    yield mesh_lib.global_batch(model_inputs(local), mesh, rules)


def train(config: ml_collections.ConfigDict, workdir: str, *,
          log: Callable[[str], None] | None = None, stop_after: int | None = None
          ) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the last logged and eval scalars.

  `stop_after` ends this invocation after that many steps, with a checkpoint, as a job
  with a time limit would (the schedule still spans `total_steps`; rerun to go on).
  """
  is_chief = jax.process_index() == 0
  log = log or (print if is_chief else (lambda _: None))
  # One run per workdir: a second one is refused before it can overwrite checkpoints.
  # Whatever ends the run, the checkpoint manager and the writers are closed (an in-flight
  # save finishes), so a clear error is not followed by tracebacks from their threads.
  with workdir_lib.exclusive(workdir, "fourm train", enabled=is_chief, log=log), \
       contextlib.ExitStack() as cleanup:
    return _train(config, workdir, log=log, stop_after=stop_after, is_chief=is_chief,
                  cleanup=cleanup)


def _train(config: ml_collections.ConfigDict, workdir: str, *, log: Callable[[str], None],
           stop_after: int | None, is_chief: bool,
           cleanup: contextlib.ExitStack) -> dict[str, float]:
  total_steps = int(config.total_steps)
  build = model_factory(config)  # checks the modalities and the model config first

  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.axis_rules(config, mesh)  # one table for the state, steps and batches
  mesh_lib.check_batch_divides(mesh, config.batch_size, rules)
  checkpoints = Checkpoints(workdir, every=config.checkpoint.every, keep=config.checkpoint.keep,
                            async_save=config.checkpoint.async_save, log=log)
  cleanup.callback(workdir_lib.closing_quietly(checkpoints.close))
  saved = checkpoints.latest_meta()
  if saved is not None:  # a run this config cannot resume is refused before any work
    _check_resumable(saved["config"], config, workdir)
  pipeline = make_pipeline(config, split=config.data.train_split, train=True,
                           batch_size=config.batch_size)
  tx, schedule = make_optimizer(config.optimizer, config.batch_size, total_steps)
  # A run with checkpoints (readable or not: restoring says which) reads one into the
  # state's shapes and shardings: no random state is made only to be overwritten (which
  # held two states in memory at once).
  resuming = bool(checkpoints.steps())
  graphdef, state = (abstract_train_state if resuming else create_train_state)(
      build, tx, mesh, rules)
  log(f"model: {config.model.size}, {num_params(state):,} parameters; mesh "
      f"{dict(mesh.shape)} over {jax.device_count()} devices, {jax.process_count()} process(es)")

  if resuming:  # the newest checkpoint that reads back; none reading back is an error
    state, _ = checkpoints.restore_latest(state)
    log(f"resumed from the checkpoint at step {int(state.step)} in {checkpoints.directory}")
  elif config.get("init"):
    state = initialize_from(state, config.init, log)
  start = int(state.step)

  def meta() -> dict[str, Any]:
    return {"step": int(state.step),
            "data": {"batches_consumed": int(state.step), "seed": config.seed,
                     "batch_size": config.batch_size},
            "config": json.loads(config.to_json())}

  # The first batch is read before anything compiles: bad records, token ids outside a
  # vocabulary or grids of the wrong shape fail now, naming the file and field.
  batches = _batches(pipeline.iterator(start_batch=start), mesh, rules)
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  train_step = make_train_step(graphdef, tx, schedule, mesh, state_shardings,
                               loss_type=config.loss_type, rules=rules)
  eval_step = make_eval_step(graphdef, mesh, rules=rules)
  writer = (metrics_lib.TensorBoardWriter(os.path.join(workdir, "tensorboard"))
            if is_chief else metrics_lib.NullWriter())
  cleanup.callback(workdir_lib.closing_quietly(writer.close))
  tokens_per_step = config.batch_size * (config.input_budget + config.target_budget)
  profile = tuple(config.profile_steps or ())
  last: dict[str, float] = {}

  def run_eval(done: int) -> dict[str, float]:
    scores = evaluate(config, eval_step, state.params, mesh, rules)
    writer.write_scalars(done, scores)
    log(f"eval at step {done}: " +
        "  ".join(f"{k.removeprefix('eval/')}={v:.4f}" for k, v in scores.items()))
    return scores

  if config.eval_every and start == 0:
    last.update(run_eval(0))  # the baseline every later eval is compared with

  # The step counts its non-finite steps (state.nonfinite_streak). Reading that on the
  # host every step, int(state.nonfinite_streak), would make the host wait for each
  # step to finish before dispatching the next, idling the accelerator while the next
  # batch is prepared. Instead `longest` tracks, on the device, the longest streak so
  # far and the step it reached that length, and the host reads it only where it waits
  # for the device anyway (log, eval and checkpoint steps, the last step, a preemption),
  # always before saving, so no checkpoint is taken past a streak that stops the run.
  # A streak that ends between two such steps still stops the run, at the next one.
  longest = (np.int32(0), np.int32(0))

  def stop_if_not_finite(tracked) -> None:
    streak, at = (int(x) for x in jax.device_get(tracked))
    if streak >= config.max_consecutive_nonfinite:
      checkpoints.wait()
      good = checkpoints.manager.latest_step()
      raise TrainingStopped(
          f"the loss or gradient was not finite for {streak} steps in a row (up to step "
          f"{at}); stopping. Updates of those steps were skipped; the last good "
          f"checkpoint is step {good} in {checkpoints.directory}. Lower the learning rate "
          "or check the data, then resume.")

  with Preemption() as preemption:
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start, total_steps):
      if profile and step == profile[0]:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      state, metrics = train_step(state, next(batches))
      window_steps += 1
      longest = _longest_streak(longest, state.nonfinite_streak, state.step)
      if profile and step + 1 == profile[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
      done = step + 1  # == state.step, known without asking the device
      logging = done % config.log_every == 0 or done == total_steps
      evaluating = bool(config.eval_every) and (done % config.eval_every == 0
                                                or done == total_steps)
      stopping = stop_after is not None and done - start >= stop_after
      force_save = done == total_steps or stopping
      # Checkpoints.save reads state.step, a wait for the device: call it only when a
      # save is due (it would return without saving on the other steps).
      saving = force_save or done % checkpoints.every == 0
      if logging or evaluating or saving:
        stop_if_not_finite(longest)
      if logging:
        last = _scalars(metrics)
        last["nonfinite_total"] = float(state.nonfinite_total)
        elapsed = time.perf_counter() - window_start
        tokens_per_s = tokens_per_step * window_steps / max(elapsed, 1e-9)
        last["tokens_per_s"] = tokens_per_s
        writer.write_scalars(done, last)
        log(metrics_lib.format_progress(done, total_steps, last, tokens_per_s,
                                        (total_steps - done) * elapsed / window_steps))
        window_start, window_steps = time.perf_counter(), 0
      if evaluating:
        last.update(run_eval(done))
      writer.flush()
      if saving:
        checkpoints.save(state, meta(), force=force_save)
      if stopping:
        log(f"stopping after {stop_after} steps at step {done}, as asked; run again to resume")
        break
      if preemption.requested:
        stop_if_not_finite(longest)
        checkpoints.save(state, meta(), force=True)
        checkpoints.wait()
        log(f"{preemption.requested}: saved the checkpoint at step {done} in "
            f"{checkpoints.directory}; "
            "run the same command to resume")
        break
  checkpoints.close()
  writer.close()
  if is_chief:
    log(f"checkpoints: {checkpoints.directory}\ntensorboard: "
        f"{os.path.join(os.path.abspath(workdir), 'tensorboard')}")
  return last
