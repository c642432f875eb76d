"""NYUv2 depth from a 4M-B checkpoint with a DPT head (the 4M paper's depth transfer).

    fourm ingest --tfds nyu_depth_v2 --tfds-data-dir /data/tfds --out /data/nyu_records
    fourm finetune --config configs/finetune/depth_nyuv2.py --init CHECKPOINT \
        --workdir runs/nyu --config.data.paths="('/data/nyu_records',)"

Depth in metres, 0 = missing; delta1 / abs-rel / RMSE per image, then averaged.
"""

from fourm.finetune.config import default_config


def get_config():
  config = default_config()
  config.task = "depth"
  config.data.paths = ("/path/to/nyu_records",)
  config.resolution = 256
  config.head.channels = 256
  config.batch_size = 64
  config.total_steps = 20_000
  config.optimizer.lr = 1e-4
  config.optimizer.warmup_steps = 1000
  config.optimizer.layer_decay = 0.75
  config.drop_path = 0.1
  config.eval_every = 2000
  config.checkpoint.every = 2000
  return config
