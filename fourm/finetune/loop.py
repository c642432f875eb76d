"""`fourm finetune --config FILE --init CHECKPOINT --workdir DIR`: the fine-tuning loop,
and `fourm evaluate --workdir DIR`, top to bottom.

The pre-trained 4M model -> its rgb encoder with the task's head (and LoRA / prompts) ->
data through the pre-training pipeline with the task's targets -> resume from the newest
readable checkpoint in DIR -> a jitted step over the trainable parameters only -> every
`log_every` steps a progress line and TensorBoard scalars, every `eval_every` the task's
metrics on the eval split, every `checkpoint.every` an asynchronous checkpoint. As in
`fourm train`: one run per workdir (its lock), SIGTERM / Ctrl-C save and exit, a resume
is bitwise the uninterrupted run (batch k of the stream and the drop-path draws of step k
are functions of the seed and k), and a resume with another task, model or data stream
is refused.

The mesh is `config.mesh` (`--mesh` sets it) and the parameters are placed on it by the
logical-axis table as in pre-training: the default mesh (all devices on `data`) keeps
them replicated with the batch split over them (data parallel, as ViT fine-tuning is
usually run); `fsdp` / `tensor` axes shard the encoder's weights and their optimizer
state. The `init` checkpoint is read straight into those shards, so a pre-trained model
too big for one device never has to fit on one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.struct
import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from fourm import metrics as metrics_lib
from fourm import workdir as workdir_lib
from fourm.checkpoint import Checkpoints
from fourm.data.dataset_info import DatasetInfo
from fourm.data.pipeline import Pipeline, PipelineConfig
from fourm.errors import UsageError, refused_writes_as
from fourm.data.visualize import save_grid
from fourm.finetune import coco_metrics, evaluation, objectives, step as step_lib
from fourm.finetune.targets import TaskTargets, required_fields
from fourm.finetune.task_model import HeadOptions, TuningOptions, build_task_model, \
    describe_parameters
from fourm.generation.loading import load_model
from fourm.nn import sharding
from fourm.train import mesh as mesh_lib
from fourm.train.loop import TrainingStopped
from fourm.train.preemption import Preemption
from fourm.train.state import model_factory

# What a resumed run must share with its checkpoint: the model and the data stream.
_FIXED_ON_RESUME = ("task", "init", "from_scratch", "seed", "resolution", "drop_path", "head",
                    "tuning", "data", "batch_size", "total_steps", "optimizer", "loss",
                    "ema_decay")
_FREE_ON_RESUME = ("worker_count",)  # in config.data


@flax.struct.dataclass
class FineTuneState:
  step: jax.Array
  trainable: Any
  frozen: Any
  opt_state: Any
  # The exponential moving average of the trainable parameters when config.ema_decay > 0
  # (what evaluation then uses), else a placeholder scalar: orbax saves no empty trees.
  ema: Any

  @property
  def evaluated(self) -> Any:
    """The trainable parameters evaluation reads: their average, when one is kept."""
    return self.trainable if isinstance(self.ema, jax.Array) and self.ema.ndim == 0 \
        else self.ema


@jax.jit
def _update_ema(ema, trainable, decay):
  return jax.tree.map(lambda e, t: decay * e + (1.0 - decay) * t, ema, trainable)


@dataclasses.dataclass
class Setup:
  """Everything a fine-tune or an evaluation builds from its config."""
  config: ml_collections.ConfigDict
  pretrain_config: ml_collections.ConfigDict
  classes: tuple[str, ...]
  resolution: int
  pixel_normalization: str
  graphdef: nnx.GraphDef
  other: Any
  state: FineTuneState
  tx: Any
  description: str
  mesh: jax.sharding.Mesh
  rules: Any
  predict: Callable  # (trainable, frozen, other, images) -> outputs; jitted once per run


def dataset_classes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The head's class names: the config's, else the first data directory's metadata."""
  if config.head.classes:
    return tuple(config.head.classes)
  if config.task == "depth":
    return ()
  metadata = DatasetInfo.load(config.data.paths[0]).metadata
  keys = {"detection": ("det_classes",), "segmentation": ("semseg_classes", "classes"),
          "classification": ("label_classes", "det_classes")}[config.task]
  for key in keys:
    if metadata.get(key):
      return tuple(metadata[key])
  raise UsageError(f"{config.data.paths[0]}: its dataset_info.json metadata has no "
                   f"{' or '.join(keys)} list; give the class names as config.head.classes")


def _task_targets(setup: Setup) -> TaskTargets:
  config = setup.config
  return TaskTargets(config.task, setup.resolution, setup.classes, setup.pixel_normalization,
                     ignore_index=config.data.ignore_index,
                     reduce_zero_label=config.data.reduce_zero_label,
                     max_boxes=config.data.max_boxes)


def make_pipeline(setup: Setup, *, split: str, train: bool, batch_size: int) -> Pipeline:
  config = setup.config
  fields = required_fields(config.task)
  pipeline_config = PipelineConfig(
      data=tuple(config.data.paths), split=split, batch_size=batch_size,
      modalities=None if len(fields) > 1 else ("rgb", *fields),
      resolution=setup.resolution, seed=config.seed if train else config.seed + 1,
      shuffle=train, num_epochs=None if train else 1, augment=train and config.data.augment,
      max_boxes=config.data.max_boxes, process_index=jax.process_index(),
      process_count=jax.process_count(),
      worker_count=config.data.worker_count if train else 0)
  return Pipeline(pipeline_config, transform=_task_targets(setup))


def build(config: ml_collections.ConfigDict,
          pretrain_config: ml_collections.ConfigDict | None = None) -> Setup:
  """The fine-tuning model, optimizer and a fresh state from `config`, with the encoder of
  its `init` checkpoint. Given the `pretrain_config` a checkpoint of this fine-tune saved,
  the init checkpoint is not read: the architecture is built from that config and the
  state restored over it (a resume or `fourm evaluate` does not need `init` any more)."""
  restoring = pretrain_config is not None
  if not restoring and not config.init:
    raise UsageError("give the pre-trained model: --init WORKDIR (a fourm train run)")
  # The mesh first: the pre-trained parameters are read straight into their shards on it.
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.axis_rules(config, mesh)
  mesh_lib.check_batch_divides(mesh, config.batch_size, rules)
  if not restoring:
    pretrained = load_model(config.init, mesh, rules)
    pretrain_config, model = pretrained.config, pretrained.model
  if config.from_scratch or restoring:
    # The baseline (this architecture, randomly initialized), or the structure that a
    # checkpoint's state is restored into.
    scratch = ml_collections.ConfigDict(pretrain_config.to_dict())
    scratch.seed = config.seed
    model = _built_on(mesh, rules, model_factory(scratch))
  classes = dataset_classes(config)
  resolution = config.resolution or model.layout.resolution
  head = HeadOptions(num_classes=len(classes), channels=config.head.channels,
                     num_queries=config.head.num_queries,
                     decoder_depth=config.head.decoder_depth, num_heads=config.head.num_heads)
  tuning = TuningOptions(mode=config.tuning.mode, lora_rank=config.tuning.lora_rank,
                         lora_alpha=config.tuning.lora_alpha,
                         num_prompts=config.tuning.num_prompts,
                         deep_prompts=config.tuning.deep_prompts)
  task_model = build_task_model(model, config.task, head=head, tuning=tuning,
                                resolution=resolution, drop_path=config.drop_path,
                                seed=config.seed)
  description = describe_parameters(task_model, config.tuning.mode)
  graphdef, trainable, frozen, other = step_lib.split_for_tuning(task_model, config.tuning.mode)
  replicated = NamedSharding(mesh, PartitionSpec())
  # The encoder's parameters are on their shards already (a no-op for them); the head's
  # and the adapters' (no logical axes: replicated) join them.
  placement = (_param_shardings(trainable, mesh, rules), _param_shardings(frozen, mesh, rules))
  trainable, frozen = jax.device_put((trainable, frozen), placement)
  optimizer = config.optimizer
  tx, _ = step_lib.make_optimizer(
      trainable, depth=len(task_model.encoder.blocks), peak_lr=optimizer.lr,
      total_steps=config.total_steps, warmup_steps=optimizer.warmup_steps,
      weight_decay=optimizer.weight_decay, layer_decay=optimizer.layer_decay,
      clip_norm=optimizer.grad_clip or None)
  opt_state = jax.jit(tx.init, out_shardings=_state_shardings(
      jax.eval_shape(tx.init, trainable), trainable, placement[0], replicated))(trainable)
  ema = (jax.tree.map(lambda x: x.copy(), trainable) if config.ema_decay
         else jax.device_put(np.float32(0), replicated))
  state = FineTuneState(step=jax.device_put(np.int32(0), replicated), trainable=trainable,
                        frozen=frozen, opt_state=opt_state, ema=ema)
  return Setup(config, pretrain_config, classes, resolution,
               pretrain_config.pixel_normalization, graphdef, other, state, tx, description,
               mesh, rules, step_lib.make_predict(graphdef))


def _built_on(mesh: jax.sharding.Mesh, rules: sharding.Rules,
              build: Callable[[], Any]) -> Any:
  """`build()`'s model with every parameter born on its shard, as `fourm train` creates
  its state, instead of whole on one device first."""
  graphdef = nnx.graphdef(nnx.eval_shape(build))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    state = jax.jit(lambda: nnx.state(build()))()
  return nnx.merge(graphdef, state)


def _param_shardings(params: nnx.State, mesh: jax.sharding.Mesh, rules: sharding.Rules):
  """Each parameter's `NamedSharding` under the logical-axis table (replicated where it
  carries no logical axes, or the mesh has no fsdp / tensor split)."""
  specs = sharding.partition_specs(params, mesh, rules)
  return jax.tree.map(lambda _, spec: NamedSharding(mesh, spec), params, specs,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))


def _state_shardings(opt_state, params, param_shardings, replicated: NamedSharding):
  """The optimizer state's shardings: every copy of the parameter tree inside it (Adam's
  moments) sharded as `params` are, anything else (step counts) replicated."""
  structure = jax.tree.structure(params)

  def is_params(node) -> bool:
    return jax.tree.structure(node) == structure

  return jax.tree.map(lambda node: param_shardings if is_params(node) else replicated,
                      opt_state, is_leaf=is_params)


def _check_resumable(saved: Mapping[str, Any], config: ml_collections.ConfigDict,
                     workdir: str) -> None:
  current = json.loads(config.to_json())
  for key in _FIXED_ON_RESUME:
    old, new = saved.get(key), current.get(key)
    if isinstance(old, dict) and isinstance(new, dict):
      old = {k: v for k, v in old.items() if k not in _FREE_ON_RESUME}
      new = {k: v for k, v in new.items() if k not in _FREE_ON_RESUME}
    if old != new:
      raise UsageError(f"{workdir} holds a fine-tune with {key} = {old}, this config says "
                       f"{new}; use a new --workdir or the same config")


def _batches(iterator: Iterator, mesh, rules) -> Iterator:
  for local in iterator:
    yield mesh_lib.global_batch({k: v for k, v in local.items() if k != "meta"}, mesh, rules)


def finetune(config: ml_collections.ConfigDict, workdir: str, *,
             log: Callable[[str], None] | None = None, stop_after: int | None = None
             ) -> dict[str, float]:
  """Fine-tunes (or resumes) the run in `workdir`; returns the last logged and eval scalars."""
  is_chief = jax.process_index() == 0
  log = log or (print if is_chief else (lambda _: None))
  with workdir_lib.exclusive(workdir, "fourm finetune", enabled=is_chief, log=log), \
       contextlib.ExitStack() as cleanup:
    return _finetune(config, workdir, log=log, stop_after=stop_after, is_chief=is_chief,
                     cleanup=cleanup)


def _finetune(config, workdir, *, log, stop_after, is_chief, cleanup) -> dict[str, float]:
  checkpoints = Checkpoints(workdir, every=config.checkpoint.every, keep=config.checkpoint.keep,
                            async_save=config.checkpoint.async_save, log=log)
  cleanup.callback(workdir_lib.closing_quietly(checkpoints.close))
  saved = checkpoints.latest_meta()
  if saved is not None:
    _check_resumable(saved["config"], config, workdir)
  setup = build(config, ml_collections.ConfigDict(saved["pretrain_config"]) if saved else None)
  log(f"fine-tune: {config.task} ({len(setup.classes)} classes) at {setup.resolution} px, "
      f"tuning {config.tuning.mode}: {setup.description}; init {config.init}"
      f"{' (architecture only: from scratch)' if config.from_scratch else ''}; mesh "
      f"{' x '.join(f'{axis}={size}' for axis, size in setup.mesh.shape.items())}")
  state = setup.state
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    state, _ = restored
    log(f"resumed from the checkpoint at step {int(state.step)} in {checkpoints.directory}")
  start, total_steps = int(state.step), int(config.total_steps)
  mesh, graphdef, other = setup.mesh, setup.graphdef, setup.other

  def meta() -> dict[str, Any]:
    return {"step": int(state.step), "config": json.loads(config.to_json()),
            "pretrain_config": json.loads(setup.pretrain_config.to_json()),
            "classes": list(setup.classes), "resolution": setup.resolution,
            "data": {"batches_consumed": int(state.step)}}

  pipeline = make_pipeline(setup, split=config.data.train_split, train=True,
                           batch_size=config.batch_size)
  batches = _batches(pipeline.iterator(start_batch=start), mesh, setup.rules)
  loss_fn = objectives.task_loss(config.task, config.loss,
                                 ignore_index=config.data.ignore_index)
  placed = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
  train_step = step_lib.make_train_step(
      graphdef, setup.tx, loss_fn, config.tuning.mode, mesh=mesh, rules=setup.rules,
      shardings=(placed(state.trainable), placed(state.opt_state)))
  writer = (metrics_lib.TensorBoardWriter(os.path.join(workdir, "tensorboard"))
            if is_chief else metrics_lib.NullWriter())
  cleanup.callback(workdir_lib.closing_quietly(writer.close))
  base_key = jax.random.key(config.seed)
  last: dict[str, float] = {}

  def run_eval(done: int) -> dict[str, float]:
    result = evaluate_split(setup, state, split=config.data.eval_split,
                            max_batches=config.eval_batches)
    scores = {f"eval/{name}": value for name, value in result.metrics.items()}
    writer.write_scalars(done, scores)
    log(f"eval at step {done}: " + "  ".join(
        f"{k.removeprefix('eval/')}={v:.4f}" for k, v in scores.items() if np.isfinite(v)))
    return scores

  with Preemption() as preemption:
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start, total_steps):
      trainable, opt_state, metrics = train_step(
          state.trainable, state.frozen, other, state.opt_state, next(batches),
          jax.random.fold_in(base_key, step))
      state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
      if config.ema_decay:
        state = state.replace(ema=_update_ema(state.ema, trainable, config.ema_decay))
      window_steps += 1
      done = step + 1
      stopping = stop_after is not None and done - start >= stop_after
      if done % config.log_every == 0 or done == total_steps:
        last = {name: float(value) for name, value in jax.device_get(metrics).items()}
        if not np.isfinite(last["loss"]):
          good = checkpoints.manager.latest_step()
          raise TrainingStopped(f"the loss is not finite at step {done} ({last['loss']}); "
                                f"the last good checkpoint is step {good}. Lower "
                                "config.optimizer.lr or check the labels, then resume")
        elapsed = time.perf_counter() - window_start
        images_per_s = config.batch_size * window_steps / max(elapsed, 1e-9)
        writer.write_scalars(done, {**last, "images_per_s": images_per_s})
        eta = (total_steps - done) * elapsed / window_steps
        log(f"step {done}/{total_steps}  loss {last['loss']:.4f}  "
            f"{images_per_s:,.1f} img/s  ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        window_start, window_steps = time.perf_counter(), 0
      if config.eval_every and (done % config.eval_every == 0 or done == total_steps):
        last.update(run_eval(done))
      writer.flush()
      if done % checkpoints.every == 0 or done == total_steps or stopping or \
          preemption.requested:
        checkpoints.save(state, meta(), force=True)
      if stopping:
        log(f"stopping after {stop_after} steps at step {done}, as asked; run again to resume")
        break
      if preemption.requested:
        checkpoints.wait()
        log(f"{preemption.requested}: saved the checkpoint at step {done} in "
            f"{checkpoints.directory}; run the same command to resume")
        break
  checkpoints.close()
  writer.close()
  if is_chief:
    log(f"checkpoints: {checkpoints.directory}\ntensorboard: "
        f"{os.path.join(os.path.abspath(workdir), 'tensorboard')}")
  return last


def evaluate_split(setup: Setup, state: FineTuneState, *, split: str, max_batches: int = 0,
                   num_examples: int = 8) -> evaluation.Evaluation:
  config = setup.config
  pipeline = make_pipeline(setup, split=split, train=False,
                           batch_size=config.eval_batch_size or config.batch_size)

  def batches():
    for index, local in enumerate(pipeline.iterator()):
      if max_batches and index >= max_batches:
        return
      yield local

  def run(images):
    return setup.predict(state.evaluated, state.frozen, setup.other, images)

  return evaluation.evaluate(config.task, run, batches(), classes=setup.classes,
                             ignore_index=config.data.ignore_index,
                             pixel_normalization=setup.pixel_normalization,
                             resolution=setup.resolution, num_examples=num_examples)


def evaluate_workdir(workdir: str, *, split: str | None = None, out: str | None = None,
                     num_examples: int = 8, log: Callable[[str], None] = print
                     ) -> evaluation.Evaluation:
  """`fourm evaluate`: the newest checkpoint of a fine-tune on a whole split; writes
  OUT/metrics.json, OUT/grid.png (predictions beside the ground truth) and, for detection,
  OUT/predictions.json (COCO results format). OUT defaults to WORKDIR/eval_SPLIT."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise UsageError(f"--workdir {workdir}: no checkpoints there (fine-tune with "
                     "fourm finetune first)")
  checkpoints = Checkpoints(workdir, every=1, keep=1_000_000, async_save=False,
                            owner=False, log=log)
  try:
    meta = checkpoints.latest_meta()
    if meta is None or "pretrain_config" not in meta:
      raise UsageError(f"--workdir {workdir}: holds no readable fourm finetune checkpoint")
    config = ml_collections.ConfigDict(meta["config"])
    setup = build(config, ml_collections.ConfigDict(meta["pretrain_config"]))
    restored = checkpoints.restore_latest(setup.state)
  finally:
    checkpoints.close()
  state, _ = restored
  split = split or config.data.eval_split
  result = evaluate_split(setup, state, split=split, num_examples=num_examples)
  out = out or os.path.join(workdir, f"eval_{split}")
  with refused_writes_as(f"cannot write the evaluation to {out}"):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.json"), "w") as f:
      json.dump({"step": int(state.step), "split": split, "task": config.task,
                 **result.metrics}, f, indent=2)
    if config.task == "detection":
      coco_metrics.write_coco_results(os.path.join(out, "predictions.json"),
                                      result.coco_results)
    title = f"{config.task} on {split}, step {int(state.step)}: predicted beside the truth"
    save_grid(result.examples, os.path.join(out, "grid.png"), title=title,
              class_names=list(setup.classes) if config.task == "segmentation" else None)
  log(format_table(config.task, split, int(state.step), result.metrics))
  log(f"wrote {out}/metrics.json, {out}/grid.png"
      f"{f', {out}/predictions.json' if config.task == 'detection' else ''}")
  return result


def format_table(task: str, split: str, step: int, scores: Mapping[str, float]) -> str:
  lines = [f"{task} on {split} at step {step}", f"  {'metric':<20}{'value':>10}"]
  lines += [f"  {name:<20}{value:>10.4f}" for name, value in scores.items()]
  return "\n".join(lines)
