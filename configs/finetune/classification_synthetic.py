"""Scene classification on the synthetic world: the class of each scene's largest object
(5 classes), from the demo's 4M model; top-1 / top-5 on the val split.

    fourm finetune --config configs/finetune/classification_synthetic.py \
        --init demo_out/train --workdir demo_out/finetune_classification

Variant `:smoke`: a few steps, for tests.
"""

from fourm.data.synthetic import OBJECT_CLASSES
from fourm.finetune.config import default_config, synthetic_schedule

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  config = default_config()
  config.task = "classification"
  config.head.classes = OBJECT_CLASSES
  return synthetic_schedule(config, variant)
