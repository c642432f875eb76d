"""The normal VQ-VAE tokenizer, tiny preset (tokenizers_vq/vqvae.py PRESETS["normal_tiny"]).

    fourm tokenizer train --config configs/tokenizers/normal_tiny.py --workdir runs/tok_normal_tiny
"""

from tokenizers_vq.train import default_config


def get_config():
  return default_config("normal_tiny")
