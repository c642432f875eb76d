"""The clip VQ-VAE tokenizer, tiny preset (tokenizers_vq/vqvae.py PRESETS["clip_tiny"]).

    fourm tokenizer train --config configs/tokenizers/clip_tiny.py --workdir runs/tok_clip_tiny
"""

from tokenizers_vq.train import default_config


def get_config():
  return default_config("clip_tiny")
