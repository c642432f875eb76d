"""The normal VQ-VAE tokenizer, base preset (tokenizers_vq/vqvae.py PRESETS["normal_base"]).

    fourm tokenizer train --config configs/tokenizers/normal_base.py --workdir runs/tok_normal_base
"""

from tokenizers_vq.train import default_config


def get_config():
  return default_config("normal_base")
