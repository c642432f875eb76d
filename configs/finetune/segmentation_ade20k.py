"""ADE20K semantic segmentation (150 classes) from a 4M-B checkpoint, at 512 px as in the
4M paper's transfer table (which uses a ConvNeXt-style head; this is fourm's
simple-pyramid + semantic-FPN head on the same encoder).

    fourm ingest --ade20k /data/ADEChallengeData2016 --out /data/ade20k_records
    fourm finetune --config configs/finetune/segmentation_ade20k.py --init CHECKPOINT \
        --workdir runs/ade20k --config.data.paths="('/data/ade20k_records',)"

Labels are stored as ADE20K ships them (0 = other, 1..150); `reduce_zero_label` maps them
to 0..149 with 0 ignored, as mmseg does.
"""

from fourm.data.ingest_ade20k import ADE20K_CLASSES
from fourm.finetune.config import default_config


def get_config():
  config = default_config()
  config.task = "segmentation"
  config.data.paths = ("/path/to/ade20k_records",)
  config.data.reduce_zero_label = True
  config.head.classes = ADE20K_CLASSES  # the 150; after reduce_zero_label "other" is ignored
  config.data.ignore_index = 255
  config.resolution = 512
  config.head.channels = 256
  config.batch_size = 16
  config.total_steps = 64_000
  config.optimizer.lr = 1e-4
  config.optimizer.warmup_steps = 1500
  config.optimizer.layer_decay = 0.75
  config.drop_path = 0.1
  config.eval_every = 4000
  config.checkpoint.every = 4000
  return config
