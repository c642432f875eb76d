"""Encode and decode throughput (images/s) of every VQ-VAE tokenizer preset.

    python benchmarks/tokenizer_throughput.py               # the tiny presets, 64 px, CPU
    python benchmarks/tokenizer_throughput.py --size base   # ViT-B presets at 224 px (a GPU)

Speed does not depend on the weights, so the tokenizers are freshly initialized; the
inputs are synthetic-world scenes at the preset's resolution (clip: its feature maps).
"""

from __future__ import annotations

import argparse

import numpy as np
from flax import nnx

from fourm.data import synthetic
from tokenizer_usage import throughput
from tokenizers_vq import modality_io, vqvae
from tokenizers_vq.train_step import VQTokenizer


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=("tiny", "base"), default="tiny")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"{'tokenizer':<14} {'params':>11} {'tokens':>7} {'encode img/s':>13} "
        f"{'decode img/s':>13}")
  for modality in modality_io.tokenizable():
    config = vqvae.preset(f"{modality}_{args.size}")
    model = vqvae.VQVAE(config, rngs=nnx.Rngs(0))
    tokenizer = VQTokenizer.from_model(model)
    samples = [synthetic.make_sample(0, "train", i, config.resolution,
                                     feature_dim=config.channels or 64)
               for i in range(min(args.batch, 8))]
    raw = np.stack([samples[i % len(samples)][modality] for i in range(args.batch)])
    tokens = tokenizer.encode(raw)
    encode = throughput(tokenizer.encode, raw, args.repeats)
    decode = throughput(tokenizer.decode, tokens, args.repeats)
    print(f"{config.name:<14} {vqvae.num_params(model):>11,} {config.grid ** 2:>7} "
          f"{encode:>13,.0f} {decode:>13,.0f}")


if __name__ == "__main__":
  main()
