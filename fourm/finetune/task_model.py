"""A fine-tuning model: the 4M rgb encoder, optional adapters, and one task's head.

`build_task_model` takes a FourM (from a checkpoint, `fourm.generation.loading.load_model`,
or freshly initialized for a from-scratch baseline), keeps its encoder, drops its decoder,
and puts the task's head on top. Its attribute names are what `peft.trainable_filter`
reads: the head's parameters live under `head`.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from fourm.errors import UsageError
from fourm.finetune import peft
from fourm.finetune.dense_heads import ClassificationHead, DepthHead, SegmentationHead
from fourm.finetune.detection_head import DetectionHead
from fourm.finetune.encoder import RGBEncoder
from fourm.models.fourm import FourM

TASKS = ("classification", "segmentation", "depth", "detection")


@dataclasses.dataclass(frozen=True)
class HeadOptions:
  """The few numbers a head needs (configs carry them under `config.head`)."""
  num_classes: int = 0           # classification, segmentation, detection
  channels: int = 128            # the dense heads' feature width
  num_queries: int = 100         # detection
  decoder_depth: int = 6         # detection
  num_heads: int = 8             # detection


@dataclasses.dataclass(frozen=True)
class TuningOptions:
  mode: str = "full"             # peft.TUNING_MODES
  lora_rank: int = 8
  lora_alpha: float = 16.0
  num_prompts: int = 8           # vpt
  deep_prompts: bool = False     # vpt: fresh prompts before every block


class TaskModel(nnx.Module):
  def __init__(self, encoder: RGBEncoder, head: nnx.Module, task: str,
               prompts: peft.VisualPrompts | None = None):
    self.encoder, self.head, self.task, self.prompts = encoder, head, task, prompts

  def __call__(self, pixels: jax.Array):
    return self.head(self.encoder(pixels, prompts=self.prompts))


def make_head(task: str, dim: int, options: HeadOptions, *, rngs: nnx.Rngs) -> nnx.Module:
  if task not in TASKS:
    raise UsageError(f"task {task!r}; choose one of {', '.join(TASKS)}")
  if task != "depth" and options.num_classes < 1:
    raise UsageError(f"the {task} head needs head.num_classes >= 1")
  if task == "classification":
    return ClassificationHead(dim, options.num_classes, rngs=rngs)
  if task == "segmentation":
    return SegmentationHead(dim, options.num_classes, channels=options.channels, rngs=rngs)
  if task == "depth":
    return DepthHead(dim, channels=options.channels, rngs=rngs)
  return DetectionHead(dim, options.num_classes, num_queries=options.num_queries,
                       depth=options.decoder_depth, num_heads=options.num_heads, rngs=rngs)


def build_task_model(model: FourM, task: str, *, head: HeadOptions = HeadOptions(),
                     tuning: TuningOptions = TuningOptions(), resolution: int | None = None,
                     drop_path: float = 0.0, seed: int = 0) -> TaskModel:
  """`model`'s encoder (moved out of it; do not use `model` afterwards) with `task`'s head
  and the adapters `tuning.mode` asks for."""
  peft.trainable_filter(tuning.mode)  # an unknown mode fails before anything is built
  rngs = nnx.Rngs(params=seed, dropout=seed + 1)
  encoder = RGBEncoder(model, resolution=resolution, drop_path=drop_path, rngs=rngs)
  prompts = None
  if tuning.mode == "lora":
    peft.add_lora(encoder.blocks, rank=tuning.lora_rank, alpha=tuning.lora_alpha, rngs=rngs)
  elif tuning.mode == "vpt":
    prompts = peft.VisualPrompts(encoder.dim, tuning.num_prompts, len(encoder.blocks),
                                 deep=tuning.deep_prompts, rngs=rngs)
  return TaskModel(encoder, make_head(task, encoder.dim, head, rngs=rngs), task, prompts)


def describe_parameters(model: TaskModel, mode: str) -> str:
  """'N trainable of M parameters (p%)': printed when a fine-tune starts."""
  trainable = peft.count_params(model, peft.trainable_filter(mode))
  total = peft.count_params(model)
  return f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
