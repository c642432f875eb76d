"""Object detection (5 shape classes) on the synthetic world from the demo's 4M model:
a DETR-style set-prediction head, Hungarian matching, COCO box AP through pycocotools.

    fourm finetune --config configs/finetune/detection_synthetic.py \
        --init demo_out/train --workdir demo_out/finetune_detection
    fourm evaluate --workdir demo_out/finetune_detection

DETR needs long schedules; this one is for minutes on a CPU and shows the machinery, not
a strong detector. Variant `:smoke`: a few steps, for tests.
"""

from fourm.data.synthetic import OBJECT_CLASSES
from fourm.finetune.config import default_config, synthetic_schedule

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  config = default_config()
  config.task = "detection"
  config.data.max_boxes = 16
  config.head.classes = OBJECT_CLASSES
  config.head.num_queries = 16
  config.head.decoder_depth = 3
  config.head.num_heads = 4
  synthetic_schedule(config, variant, steps=300, lr=5e-4)
  if variant == "smoke":
    config.head.num_queries = 8
    config.head.decoder_depth = 2
    config.head.num_heads = 2
  return config
