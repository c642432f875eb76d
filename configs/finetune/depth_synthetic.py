"""Metric depth on the synthetic world from the demo's 4M model (a DPT head).

    fourm finetune --config configs/finetune/depth_synthetic.py \
        --init demo_out/train --workdir demo_out/finetune_depth
    fourm evaluate --workdir demo_out/finetune_depth

Scale-invariant log loss (lambda 0.85), depth in metres as the world renders it; delta1,
abs-rel and RMSE on the val split. Variant `:smoke`: a few steps, for tests.
"""

from fourm.finetune.config import default_config

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  config = default_config()
  config.task = "depth"
  config.data.paths = ("demo_out/world",)
  config.head.channels = 64
  config.batch_size = 16
  config.total_steps = 150
  config.optimizer.lr = 1e-3
  config.optimizer.warmup_steps = 15
  config.drop_path = 0.0
  config.log_every = 25
  config.eval_every = 150
  config.eval_batches = 4
  config.checkpoint.every = 150
  if variant == "smoke":
    config.head.channels = 16
    config.batch_size = 4
    config.total_steps = 4
    config.log_every = 2
    config.eval_every = 4
    config.eval_batches = 1
    config.checkpoint.every = 2
  return config
