"""The semseg VQ-VAE tokenizer, base preset (tokenizers_vq/vqvae.py PRESETS["semseg_base"]).

    fourm tokenizer train --config configs/tokenizers/semseg_base.py --workdir runs/tok_semseg_base
"""

from tokenizers_vq.train import default_config


def get_config():
  return default_config("semseg_base")
