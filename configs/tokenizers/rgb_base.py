"""The rgb VQ-VAE tokenizer, base preset (tokenizers_vq/vqvae.py PRESETS["rgb_base"]).

    fourm tokenizer train --config configs/tokenizers/rgb_base.py --workdir runs/tok_rgb_base
"""

from tokenizers_vq.train import default_config


def get_config():
  return default_config("rgb_base")
