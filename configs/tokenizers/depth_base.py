"""The depth VQ-VAE tokenizer, base preset (tokenizers_vq/vqvae.py PRESETS["depth_base"]).

    fourm tokenizer train --config configs/tokenizers/depth_base.py --workdir runs/tok_depth_base
"""

from tokenizers_vq.train import default_config


def get_config():
  config = default_config()
  config.preset = "depth_base"
  config.data.paths = ("/path/to/dataset",)  # change me: records at 224 px
  config.batch_size = 256
  config.total_steps = 100_000
  config.learning_rate = 1e-4
  config.warmup_steps = 5000
  config.eval_every = 5000
  config.checkpoint.every = 5000
  config.data.worker_count = 8
  return config
