"""A VQ-VAE tokenizer; the variant names its preset (tokenizers_vq/vqvae.py PRESETS):
MODALITY_SIZE with MODALITY one of rgb, depth, normal, semseg, clip and SIZE tiny (minutes
on a CPU, 64 px records) or base (a GPU-node run, 224 px records). The tiny ones read
the demo's synthetic world (`make demo` renders it); give the base ones your records:

    fourm tokenizer train --config configs/tokenizers/vqvae.py:rgb_tiny --workdir runs/tok_rgb
    fourm tokenizer train --config configs/tokenizers/vqvae.py:depth_base --workdir runs/tok_depth \
        --config.data.paths=/data/records_224
"""

from fourm.errors import UsageError
from tokenizers_vq.train import default_config
from tokenizers_vq.vqvae import PRESETS

VARIANTS = tuple(PRESETS)


def get_config(variant: str = "rgb_tiny"):
  if variant not in PRESETS:
    raise UsageError(f"configs/tokenizers/vqvae.py: unknown variant {variant!r}; "
                     f"one of {sorted(PRESETS)}")
  config = default_config(variant)
  if variant.endswith("_tiny"):
    config.data.paths = ("demo_out/world",)
  return config
