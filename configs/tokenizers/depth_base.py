"""The depth VQ-VAE tokenizer, base preset (tokenizers_vq/vqvae.py PRESETS["depth_base"]).

    fourm tokenizer train --config configs/tokenizers/depth_base.py --workdir runs/tok_depth_base
"""

from tokenizers_vq.train import default_config


def get_config():
  return default_config("depth_base")
