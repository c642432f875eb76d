"""The rgb VQ-VAE tokenizer, tiny preset (tokenizers_vq/vqvae.py PRESETS["rgb_tiny"]).

    fourm tokenizer train --config configs/tokenizers/rgb_tiny.py --workdir runs/tok_rgb_tiny
"""

from tokenizers_vq.train import default_config


def get_config():
  return default_config("rgb_tiny")
