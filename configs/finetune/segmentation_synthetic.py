"""Semantic segmentation of the synthetic world (7 classes) from the demo's 4M model.

    fourm finetune --config configs/finetune/segmentation_synthetic.py \
        --init demo_out/train --workdir demo_out/finetune_segmentation
    fourm evaluate --workdir demo_out/finetune_segmentation

The encoder with a ViTDet simple pyramid and a semantic-FPN head, full fine-tuning with
layer-wise lr decay, 64 px images as in pre-training. `--config.tuning.mode=lora` (or
vpt, linear) tunes a fraction of the parameters; `--config.from_scratch=True` trains the
same architecture from random weights, the baseline of benchmarks/transfer.py. Variant
`:demo`: the short run `make demo` ends with (about a minute on 2 cores); `:smoke`: a few
steps, for tests.
"""

from fourm.finetune.config import default_config, synthetic_schedule

VARIANTS = ("", "demo", "smoke")


def get_config(variant: str = ""):
  config = default_config()
  config.task = "segmentation"
  config.head.channels = 64
  synthetic_schedule(config, variant)
  if variant == "demo":
    config.head.channels = 32
    config.total_steps = 60
    config.optimizer.warmup_steps = 6
    config.log_every = 20
    config.eval_every = 0
    config.checkpoint.every = 60
  if variant == "smoke":
    config.head.channels = 16
  return config
