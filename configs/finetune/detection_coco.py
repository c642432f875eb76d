"""COCO detection (80 classes) from a 4M-B checkpoint with fourm's DETR head.

    fourm ingest --coco /data/coco --out /data/coco_records
    fourm finetune --config configs/finetune/detection_coco.py --init CHECKPOINT \
        --workdir runs/coco --config.data.paths="('/data/coco_records',)"

The class list is read from the records' metadata (`det_classes`, COCO category-id
order). The 4M paper fine-tunes with ViTDet's Cascade Mask R-CNN at 1024 px; a DETR head
needs long schedules (DETR: 500 epochs) and gives lower AP at equal compute. COCO AP here
is computed on the evaluation crop, not the original images (docs/finetune.md).
"""

from fourm.finetune.config import default_config


def get_config():
  config = default_config()
  config.task = "detection"
  config.data.paths = ("/path/to/coco_records",)
  config.data.max_boxes = 100
  config.resolution = 512
  config.head.num_queries = 100
  config.head.decoder_depth = 6
  config.head.num_heads = 8
  config.batch_size = 64
  config.total_steps = 150_000
  config.optimizer.lr = 1e-4
  config.optimizer.warmup_steps = 2000
  config.optimizer.layer_decay = 0.8
  config.drop_path = 0.1
  config.eval_every = 10_000
  config.checkpoint.every = 5000
  return config
