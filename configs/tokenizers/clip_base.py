"""The clip VQ-VAE tokenizer, base preset (tokenizers_vq/vqvae.py PRESETS["clip_base"]).

    fourm tokenizer train --config configs/tokenizers/clip_base.py --workdir runs/tok_clip_base
"""

from tokenizers_vq.train import default_config


def get_config():
  return default_config("clip_base")
