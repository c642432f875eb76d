"""The fine-tuning config's fields and defaults; `configs/finetune/<task>_<dataset>.py`
start from these (loading and overrides are `fourm.config`'s job, as for `fourm train`).
"""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """Every field a fine-tuning config has, with defaults.

  Fields
    task: classification | segmentation | depth | detection
    init: the `fourm train` workdir whose encoder is fine-tuned (`--init` sets it)
    from_scratch: the same architecture, randomly initialized (the baseline a pre-trained
      encoder must beat); the architecture is still read from `init`
    resolution: of the fine-tuning images (0: the checkpoint's layout)
    head: classes (names in head-id order; () = the dataset's metadata list), channels of
      the dense heads, DETR's num_queries / decoder_depth / num_heads
    tuning: mode full | lora | vpt | linear, LoRA rank / alpha, VPT prompt count / deep
    data: paths, splits (a part as tfds writes it: "train[:64]" fine-tunes on 64 scenes),
      augment, worker_count, ignore_index / reduce_zero_label
      (segmentation), max_boxes (detection)
    optimizer: AdamW peak lr, warm-up then cosine, weight decay, layer-wise lr decay
    loss: DETR's set-loss weights and auxiliary losses; depth's variance focus;
      classification's label smoothing
    ema_decay: 0 = off; else evaluation (and `fourm evaluate`) reads the moving average
    mesh: data / fsdp / tensor sizes, one may be -1 (the devices left); `--mesh` sets it
    sharding.rules: overrides of the logical-axis table, as in `fourm train`
  """
  c = ml_collections.ConfigDict()
  c.task = "segmentation"
  c.init = ""
  c.from_scratch = False
  c.seed = 0
  c.resolution = 0
  c.drop_path = 0.1
  c.ema_decay = 0.0                # > 0: evaluate an exponential moving average of the weights
  c.head = ml_collections.ConfigDict(dict(
      classes=(), channels=128, num_queries=100, decoder_depth=6, num_heads=8))
  c.tuning = ml_collections.ConfigDict(dict(
      mode="full", lora_rank=8, lora_alpha=16.0, num_prompts=8, deep_prompts=False))
  c.data = ml_collections.ConfigDict(dict(
      paths=("/path/to/records",), train_split="train", eval_split="val", augment=True,
      worker_count=0, ignore_index=255, reduce_zero_label=False, max_boxes=64))
  c.batch_size = 16
  c.eval_batch_size = 0            # 0 = batch_size
  c.eval_batches = 0               # 0 = the whole eval split
  c.total_steps = 1000
  c.optimizer = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=100, weight_decay=0.05, layer_decay=0.75, grad_clip=1.0))
  c.loss = ml_collections.ConfigDict(dict(
      class_weight=1.0, l1_weight=5.0, giou_weight=2.0, eos_coef=0.1, auxiliary=True,
      variance_focus=0.85, label_smoothing=0.0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # The mesh and the logical-axis table, as in `fourm train` (`--mesh` sets the mesh): the
  # default puts every device on `data`, which keeps the parameters replicated; `fsdp` /
  # `tensor` axes shard them, the `init` checkpoint read straight into its shards.
  c.sharding = ml_collections.ConfigDict(dict(rules=ml_collections.ConfigDict(type_safe=False)))
  c.log_every = 10
  c.eval_every = 200
  c.checkpoint = ml_collections.ConfigDict(dict(every=200, keep=2, async_save=True))
  return c


def synthetic_schedule(config: ml_collections.ConfigDict, variant: str, *, steps: int = 150,
                       lr: float = 1e-3) -> ml_collections.ConfigDict:
  """The schedule of the `configs/finetune/*_synthetic.py` runs on the demo's world:
  `steps` of batch 16 at peak `lr`, evaluated at the end; variant "smoke" is a 4-step
  run for tests. (Each config file sets its task and head; this is what they share.)"""
  config.data.paths = ("demo_out/world",)
  config.batch_size = 16
  config.total_steps = steps
  config.optimizer.lr = lr
  config.optimizer.warmup_steps = max(steps // 10, 1)
  config.drop_path = 0.0  # a 4-block encoder trained for minutes needs no regularizer
  config.log_every = 25
  config.eval_every = steps
  config.eval_batches = 4
  config.checkpoint.every = steps
  if variant == "smoke":
    config.batch_size = 4
    config.total_steps = 4
    config.log_every = 2
    config.eval_every = 4
    config.eval_batches = 1
    config.checkpoint.every = 2
  return config
