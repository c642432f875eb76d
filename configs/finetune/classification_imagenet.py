"""ImageNet-1K classification from a 4M-B checkpoint (the 4M paper's 84.5 top-1 recipe:
224 px, layer decay, drop path, label smoothing).

    fourm ingest --tfds imagenet2012 --tfds-data-dir /data/tfds --out /data/imagenet_records
    fourm finetune --config configs/finetune/classification_imagenet.py --init CHECKPOINT \
        --workdir runs/imagenet --config.data.paths="('/data/imagenet_records',)"

Class names (WordNet ids) come from the records' metadata (`label_classes`).
"""

from fourm.finetune.config import default_config


def get_config():
  config = default_config()
  config.task = "classification"
  config.data.paths = ("/path/to/imagenet_records",)
  config.resolution = 224
  config.batch_size = 1024
  config.total_steps = 125_000
  config.optimizer.lr = 1e-3  # 4e-3 at batch 4096, scaled linearly (MAE fine-tuning)
  config.optimizer.warmup_steps = 6250
  config.optimizer.weight_decay = 0.05
  config.optimizer.layer_decay = 0.65
  config.drop_path = 0.1
  config.loss.label_smoothing = 0.1
  config.ema_decay = 0.9999
  config.eval_every = 5000
  config.checkpoint.every = 5000
  return config
