"""4M on the 4M-7 modalities, the reference recipe, at one of its sizes: b | l | xl.

    python launch/slurm.py --nodes 8 --gpus-per-node 8 -- fourm train \
        --config configs/4m_mod7.py:b --workdir /shared/runs/4m_b_mod7 \
        --config.data.paths="('/data/cc12m', '/data/cc12m_tokens')"

The numbers are the reference's (apple/ml-4m cfgs/default/4m/models/main/
4m-{b,l,xl}_mod7_500b.yaml): 500B tokens, 10B of them warm-up, batch 8192 of 128 input
+ 128 target tokens, AdamW (0.9, 0.95), weight decay 0.05, and per size (`RECIPES`) the
lr per 256 samples, the gradient clipping and whether blocks are recomputed (XL's
activation checkpointing). The reference trains B on 64 GPUs (128 samples each) and L and
XL on 128 (64 each); `benchmarks/memory_plan.py` says which meshes fit which chips.
"""

from fourm.errors import UsageError
from fourm.train.config import default_config

SIZES = {"b": "base", "l": "large", "xl": "xlarge"}
MODALITIES = ("rgb", "tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_clip",
              "caption", "det")
VARIANTS = tuple(SIZES)
BATCH = 8192
# Per size: base lr (per 256 samples), gradient-norm clip (0 = none; L's 10,000 only logs
# the norm, as the reference says), remat policy.
RECIPES = {"b": dict(base_lr=1e-4, grad_clip=0.0, remat="none"),
           "l": dict(base_lr=1e-4, grad_clip=10_000.0, remat="none"),
           "xl": dict(base_lr=2e-5, grad_clip=3.0, remat="full")}
TOKENS_PER_STEP = BATCH * (128 + 128)


def get_config(variant: str = "b"):
  if variant not in SIZES:
    raise UsageError(f"configs/4m_mod7.py: unknown variant {variant!r}; "
                     f"one of {list(VARIANTS)}")
  c = default_config()
  c.modalities = MODALITIES
  c.layout = "reference"
  c.input_budget = c.target_budget = 128
  c.alphas.kind, c.alphas.alpha = "rgb2all_and_all2all", 0.5  # mix_mod7_all2all_rgb2all_a0.5
  c.masking_budgets = "reference"  # the reference's budget split, to reproduce its runs
  c.model.size = SIZES[variant]
  c.model.dtype = "bfloat16"
  c.batch_size = BATCH
  c.total_steps = round(500e9 / TOKENS_PER_STEP)
  recipe = RECIPES[variant]
  c.model.remat = recipe["remat"]
  c.model.scan_layers = True  # compile time independent of depth; same parameters
  c.optimizer.base_lr = recipe["base_lr"]  # B: lr = 1e-4 * 8192 / 256 = 3.2e-3
  c.optimizer.grad_clip = recipe["grad_clip"]
  c.optimizer.warmup_steps = round(10e9 / TOKENS_PER_STEP)
  c.optimizer.weight_decay = 0.05
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.95
  c.data.paths = ("/path/to/cc12m", "/path/to/cc12m_tokens")  # change me
  c.data.augment = False       # tokens are computed once, on fixed crops
  c.data.worker_count = 8
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1  # FSDP over every device
  c.log_every = 50
  c.eval_every = 5000
  c.eval_batches = 10
  c.checkpoint.every = 2000
  return c
