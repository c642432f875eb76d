"""A DiVAE tokenizer (4M's diffusion-decoder tokenizer for rgb, depth and normals): the
ViT encoder and quantizer of configs/tokenizers/vqvae.py's preset of the same name with a
conditional-UNet diffusion decoder (tokenizers_vq/divae.py). The variant names its preset
(tokenizers_vq/vqvae_config.py DIVAE_PRESETS): MODALITY_SIZE with MODALITY one of rgb,
depth, normal and SIZE tiny (64 px records, a width-32 UNet for a CPU) or base (224 px,
the reference's ViT-B encoder and unet_patched decoder: a GPU-node run).

    fourm tokenizer train --config configs/tokenizers/divae.py:rgb_tiny --workdir runs/divae_rgb
    fourm tokenizer train --config configs/tokenizers/divae.py:normal_base \
        --workdir runs/divae_normal --config.data.paths=/data/records_224
    # decoding settings are fields too: --config.diffusion.sample_steps=50

Held-out metrics and reconstructions.png are DDIM decodes (the tokenizer's sample_steps)
of the held-out codes, so an evaluation costs sample_steps decoder passes per image:
the tiny configs evaluate 2 batches.
"""

from fourm.errors import UsageError
from tokenizers_vq.train import default_config
from tokenizers_vq.vqvae import DIVAE_PRESETS

VARIANTS = tuple(DIVAE_PRESETS)


def get_config(variant: str = "rgb_tiny"):
  if variant not in DIVAE_PRESETS:
    raise UsageError(f"configs/tokenizers/divae.py: unknown variant {variant!r}; "
                     f"one of {sorted(DIVAE_PRESETS)}")
  config = default_config(variant, decoder="diffusion")
  if variant.endswith("_tiny"):
    config.data.paths = ("demo_out/world",)
    config.eval_batches = 2
  else:
    # The reference: AdamW at 1e-4 x batch / 256 (5e-5 for rgb), 1 warm-up epoch.
    config.learning_rate = 5e-5 if variant.startswith("rgb") else 1e-4
  return config
