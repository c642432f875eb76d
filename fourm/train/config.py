"""The training config's fields and defaults, which experiment files in `configs/` start
from. Loading a config file and applying command-line overrides is `fourm.config`'s job.
"""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
  """Every field a training config has, with defaults; experiment files start here.

  Fields
    init: a `fourm train` workdir whose parameters a fresh run starts from, wherever the
      two models share them (new modalities keep their fresh initialization); "" = none
    modalities, layout ("small": 64 px / 8 px patches, "reference": 224 / 16, or
      "RESOLUTION/PATCH" such as "448/16"); a grid at another size than the layout's
      is "NAME@RES" (e.g. "tok_rgb@448")
    input_only: modalities that this model only reads, though the registry lets them be
      targets (the reference's super-resolution model reads caption and the 224 px
      grids, and predicts only the 448 px ones)
    input_budget, target_budget: tokens per sample for the encoder / the decoder
    alphas: kind "all2all" | "rgb2all_and_all2all" (alpha) | "sources2all_and_all2all"
      (alpha, sources: e.g. ("rgb", "caption"), weights: how often each source's
      component and then all2all's is drawn, () = equally) | "reference_yaml" (path)
    cm3: modalities (sequence modalities, e.g. ("caption",)) that in a share `rate` of
      the samples are targets in CM3's causal-masked form instead of 4M's span masking
      (spans moved to the end, predicted left to right; max_spans; () = off;
      fourm/data/masking/cm3.py)
    retrieval: index (a `fourm index build` directory over the run's training split; ""
      = off) feeding the modalities named "ret<k>_<name>" (the k-th retrieved document's
      <name>, e.g. ret1_tok_rgb, ret1_caption), duplicate_threshold and
      diversity_threshold (the selection rules, fourm/retrieval/selection.py)
    model: size (tiny/base/large/xlarge) and optional dim/depth/heads overrides,
      dtype (compute), param_dtype, remat (a policy name: "none", "full", "dots",
      "dots_no_batch"; fourm/models/layer_stack.py), scan_layers (one lax.scan over the
      blocks: compile time independent of depth), attention ("" = XLA's default,
      "cudnn": cuDNN's fused kernel on NVIDIA GPUs, "xla"), tie_output_heads (False:
      each output head its own table, as converted reference models may have),
      share_modality_embeddings,
      vocab_sizes (modality -> size: the tokenizer's number of codes where it is smaller
      than the registry's vocabulary, so the model keeps no rows or logits for the rest)
    data: paths (directories read side by side), splits, augment, worker_count
    optimizer: AdamW, lr = base_lr * batch_size / lr_batch_base, warmup then cosine;
      mu_dtype "bfloat16" keeps Adam's first moment in bf16 (a quarter less optimizer
      memory; the second moment stays float32, as optax offers)
    mesh: data / fsdp / tensor sizes, one may be -1 (the devices left)
    sharding.rules: overrides of the logical-axis table (fourm/nn/sharding.py
      DEFAULT_RULES), logical name -> None (replicated) | mesh axis | tuple of axes;
      empty = the default table
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init = ""                      # a fourm train workdir to start from (fourm/train/init_from.py)
  c.modalities = ("rgb", "tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "caption")
  c.layout = "small"
  c.input_only = ()
  c.input_budget = 64
  c.target_budget = 64
  c.pixel_normalization = "imagenet"
  c.text_tokenizer = ""            # "" = the reference 4M WordPiece vocabulary
  c.loss_type = "mod"
  # Converted reference checkpoints set this: `fourm generate --targets` then decodes token
  # grids with the reference's schedules (`reference_cosine`), as its published models
  # were made to be sampled (docs/interop.md).
  c.reference_faithful = False
  # How masking splits the budgets: "fourm" gives what caps and short texts leave over
  # to the modalities with room; "reference" as apple/ml-4m (lost), which the reference
  # recipes (configs/4m_mod7.py) use (fourm/data/masking/transform.py, docs/interop.md).
  c.masking_budgets = "fourm"
  c.cm3 = ml_collections.ConfigDict(dict(modalities=(), rate=0.5, max_spans=16))
  c.retrieval = ml_collections.ConfigDict(dict(index="", duplicate_threshold=0.95,
                                               diversity_threshold=0.95))
  c.alphas = ml_collections.ConfigDict(dict(kind="all2all", alpha=1.0, path="",
                                                  sources=("rgb",), weights=()))
  c.model = ml_collections.ConfigDict(dict(
      size="tiny", dim=0, encoder_depth=0, decoder_depth=0, num_heads=0,
      dtype="float32", param_dtype="float32", remat="none", scan_layers=False,
      attention="", tie_output_heads=True,
      share_modality_embeddings=True, vocab_sizes=ml_collections.ConfigDict()))
  c.data = ml_collections.ConfigDict(dict(
      paths=("/path/to/records", "/path/to/tokens"), train_split="train", eval_split="val",
      augment=False, worker_count=0))
  c.batch_size = 32
  c.eval_batch_size = 0            # 0 = batch_size
  c.eval_batches = 4               # 0 = the whole eval split
  c.total_steps = 1000
  c.optimizer = ml_collections.ConfigDict(dict(
      base_lr=1e-4, lr_batch_base=256, warmup_steps=100, min_lr_ratio=0.0, b1=0.9, b2=0.95,
      eps=1e-8, weight_decay=0.05, grad_clip=1.0, mu_dtype="float32"))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Not type-safe, so that any logical name may be added and take None, an axis or a
  # tuple in turn. On the command line: --config.sharding.rules.embed=None (replicated),
  # --config.sharding.rules.mlp=fsdp, --config.sharding.rules.act_batch=data,fsdp (or
  # "('data','fsdp')"). An unknown name or mesh axis is refused when the run starts.
  c.sharding = ml_collections.ConfigDict(dict(rules=ml_collections.ConfigDict(type_safe=False)))
  c.log_every = 10
  c.eval_every = 100
  c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3, async_save=True))
  c.max_consecutive_nonfinite = 5
  c.profile_steps = ()             # (first, last): a jax profiler trace in WORKDIR/profile
  return c
