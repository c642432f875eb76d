"""Scene classification on the synthetic world: the class of each scene's largest object
(5 classes), from the demo's 4M model; top-1 / top-5 on the val split.

    fourm finetune --config configs/finetune/classification_synthetic.py \
        --init demo_out/train --workdir demo_out/finetune_classification

Variant `:smoke`: a few steps, for tests.
"""

from fourm.data.synthetic import OBJECT_CLASSES
from fourm.finetune.config import default_config

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  config = default_config()
  config.task = "classification"
  config.data.paths = ("demo_out/world",)
  config.head.classes = OBJECT_CLASSES
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
    config.batch_size = 4
    config.total_steps = 4
    config.log_every = 2
    config.eval_every = 4
    config.eval_batches = 1
    config.checkpoint.every = 2
  return config
