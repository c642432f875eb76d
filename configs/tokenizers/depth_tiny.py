"""The depth VQ-VAE tokenizer, tiny preset (tokenizers_vq/vqvae.py PRESETS["depth_tiny"]).

    fourm tokenizer train --config configs/tokenizers/depth_tiny.py --workdir runs/tok_depth_tiny
"""

from tokenizers_vq.train import default_config


def get_config():
  return default_config("depth_tiny")
