"""4M tiny-architecture run on the synthetic world, small enough for a 2-core CPU.

    fourm synth --out demo_out/world --num 1000 --resolution 64
    fourm tokenizer train --config configs/tokenizers/vqvae.py:rgb_tiny --workdir demo_out/tok_rgb
    fourm tokenize --data demo_out/world --out demo_out/tokens_vq --tokenizers demo_out/tok_rgb
    fourm tokenize --data demo_out/world --out demo_out/tokens --method patches \
        --modalities tok_depth,tok_normal,tok_semseg
    fourm train --config configs/tiny_synthetic.py --workdir demo_out/train

(`make demo` runs exactly these.)

A 4+4-block, 256-wide model (the tiny layout, narrower) for 200 steps of batch 16: about
six minutes on 2 cores. `--config.model.dim=384 --config.model.encoder_depth=6 ...` gives
the reference tiny size. Variant `configs/tiny_synthetic.py:smoke`: a few steps of a
2-block model, for tests. rgb tokens come from the VQ-VAE, the other grids from the
ground-truth patch quantizers (fourm/data/patch_tokens.py) until their VQ-VAEs are
trained too (`fourm tokenize --tokenizers` takes several).
"""

from fourm.errors import UsageError
from fourm.train.config import default_config

VARIANTS = ("", "smoke")


def get_config(variant: str = ""):
  config = default_config()
  config.modalities = ("rgb", "tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "caption",
                      "det")
  config.layout = "small"
  config.input_budget = 64
  config.target_budget = 64
  config.data.paths = ("demo_out/world", "demo_out/tokens_vq", "demo_out/tokens")
  config.model.size = "tiny"
  config.model.dim = 256
  config.model.encoder_depth = 4
  config.model.decoder_depth = 4
  config.model.num_heads = 4
  # A third of the samples rgb -> all, a third caption -> all, a third all -> all (4M-21's
  # mixture): a short run learns to read images and captions sooner than from all -> all.
  config.alphas.kind, config.alphas.alpha = "sources2all_and_all2all", 0.5
  config.alphas.sources = ("rgb", "caption")
  config.batch_size = 16
  config.total_steps = 200
  config.optimizer.base_lr = 8e-4 * 256 / 16  # 8e-4 at batch 16: a short run needs a high lr
  config.optimizer.warmup_steps = 24
  config.log_every = 20
  config.eval_every = 100
  config.eval_batches = 3
  config.checkpoint.every = 100
  if variant == "smoke":
    config.model.dim = 64
    config.model.encoder_depth = 2
    config.model.decoder_depth = 2
    config.batch_size = 8
    config.total_steps = 6
    config.optimizer.warmup_steps = 2
    config.log_every = 2
    config.eval_every = 3
    config.eval_batches = 1
    config.checkpoint.every = 3
  elif variant:
    raise UsageError(f"configs/tiny_synthetic.py: unknown variant {variant!r}; one of "
                     f"{list(VARIANTS)}")
  return config
