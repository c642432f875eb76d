"""Metric depth on the synthetic world from the demo's 4M model (a DPT head).

    fourm finetune --config configs/finetune/depth_synthetic.py \
        --init demo_out/train --workdir demo_out/finetune_depth
    fourm evaluate --workdir demo_out/finetune_depth

Scale-invariant log loss (lambda 0.85), depth in metres as the world renders it; delta1,
abs-rel and RMSE on the val split. Variant `:smoke`: a few steps, for tests.
"""

from fourm.finetune.config import default_config, synthetic_schedule

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  config = default_config()
  config.task = "depth"
  config.head.channels = 64
  synthetic_schedule(config, variant)
  if variant == "smoke":
    config.head.channels = 16
  return config
