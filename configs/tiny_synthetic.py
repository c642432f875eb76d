"""4M tiny-architecture run on the synthetic world, small enough for a 2-core CPU.

    fourm synth --out demo_out/world --num 1000 --resolution 64
    fourm tokenizer train --config configs/tokenizers/vqvae.py:rgb_tiny --workdir demo_out/tok_rgb
    fourm tokenize --data demo_out/world --out demo_out/tokens_vq --tokenizers demo_out/tok_rgb
    fourm tokenize --data demo_out/world --out demo_out/tokens --method patches \
        --modalities tok_depth,tok_normal,tok_semseg
    fourm tokenizer train-text --data demo_out/world --out demo_out/text_tokenizer.json \
        --vocab-size 4500
    fourm train --config configs/tiny_synthetic.py --workdir demo_out/train

(`make demo` runs exactly these.)

A 3+3-block, 128-wide model for 800 steps (STEPS) of batch 16: about seven minutes on 2
cores. Chosen by measurement (benchmarks/README.md, "What the demo learns"): in a few CPU
minutes the number of updates is what teaches a model to read its image, so the model is
small enough for many of them, rgb is the whole input of half the samples, and the heads
score the tokenizers' own code counts. `--config.model.dim=384
--config.model.encoder_depth=6 ...` gives the reference tiny size. Variant
`configs/tiny_synthetic.py:smoke`: a few steps of a 2-block model, for tests. rgb tokens come from the VQ-VAE, the other grids from the
ground-truth patch quantizers (fourm/data/patch_tokens.py) until their VQ-VAEs are
trained too (`fourm tokenize --tokenizers` takes several).
"""

from fourm.data import patch_tokens
from fourm.errors import UsageError
from fourm.train.config import default_config
from tokenizers_vq.vqvae_config import preset

# `fourm tokenizer train-text --vocab-size 4500` on the world's captions (make demo): 4,211
# special, coordinate and class tokens and the world's ~140 word pieces.
TEXT_VOCAB = 4500
STEPS = 800

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
  config.model.dim = 128
  config.model.encoder_depth = 3
  config.model.decoder_depth = 3
  config.model.num_heads = 4
  # The tokenizers' own code counts, not the registry's (8,192-30,000) vocabularies: the
  # heads then score 128-4,500 ids a token instead of up to 30,000, which was most of a
  # step's arithmetic in a model this narrow.
  config.text_tokenizer = "demo_out/text_tokenizer.json"
  config.model.vocab_sizes = dict(
      tok_rgb=preset("rgb_tiny").vocab_size, caption=TEXT_VOCAB, det=TEXT_VOCAB,
      **{name: patch_tokens.quantizer_for(name).num_ids
         for name in ("tok_depth", "tok_normal", "tok_semseg")})
  # Half the samples rgb -> all, a quarter caption -> all, a quarter all -> all (4M-21's
  # mixture, weighted to rgb): with all -> all a third of the time the demo's model hardly
  # read its image in its minutes; the all -> all samples teach the chained generation.
  config.alphas.kind, config.alphas.alpha = "sources2all_and_all2all", 0.5
  config.alphas.sources = ("rgb", "caption")
  config.alphas.weights = (2, 1, 1)
  config.batch_size = 16
  config.total_steps = STEPS
  config.optimizer.base_lr = 2e-3 * 256 / 16  # 2e-3 at batch 16 (3e-3 learnt less)
  config.optimizer.warmup_steps = 50
  config.log_every = 50
  config.eval_every = 200
  config.eval_batches = 3
  config.checkpoint.every = 200
  if variant == "smoke":
    # Tests train it on data of their own (any tokens, the reference's text vocabulary).
    config.text_tokenizer = ""
    config.model.vocab_sizes = {}
    config.alphas.weights = ()  # what the tests were tuned on: each component a third
    config.optimizer.base_lr = 8e-4 * 256 / 16
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
