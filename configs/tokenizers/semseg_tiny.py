"""The semseg VQ-VAE tokenizer, tiny preset (tokenizers_vq/vqvae.py PRESETS["semseg_tiny"]).

    fourm tokenizer train --config configs/tokenizers/semseg_tiny.py --workdir runs/tok_semseg_tiny
"""

from tokenizers_vq.train import default_config


def get_config():
  return default_config("semseg_tiny")
