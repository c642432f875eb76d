"""Model hyperparameters and the reference 4M sizes (SwiGLU, bias-free variants)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from fourm.errors import UsageError
from fourm.models import layer_stack


@dataclasses.dataclass(frozen=True)
class FourMConfig:
  """Sizes and numerics of a 4M encoder-decoder.

  The architecture is fixed to the reference's `fm_*_swiglu_nobias` models: pre-norm
  blocks, bias-free LayerNorm (eps 1e-6), bias-free attention and SwiGLU MLP.
  """
  dim: int = 768
  encoder_depth: int = 12
  decoder_depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  norm_eps: float = 1e-6
  # One modality embedding per modality, used by both encoder and decoder (reference
  # default). False gives the decoder its own.
  share_modality_embeddings: bool = True
  # Each target modality's output head is its decoder token table (tied). False gives
  # every head a table of its own, as the reference's hub models (`FM`, built with
  # share_embedding=False) have; converted checkpoints whose two tables differ need it.
  tie_output_heads: bool = True
  # The reference's rgb patch projection has no bias; kept switchable for experiments.
  patch_embed_bias: bool = False
  dtype: Any = jnp.float32          # compute dtype (e.g. jnp.bfloat16)
  param_dtype: Any = jnp.float32    # storage dtype of the parameters
  # What each block keeps for the backward pass: a policy name of
  # fourm.models.layer_stack.REMAT_POLICIES ("none", "full", "dots", "dots_no_batch");
  # True / False (older configs) mean "full" / "none".
  remat: bool | str = "none"
  # One lax.scan over the blocks' stacked parameters instead of unrolled blocks: compile
  # time stops growing with depth; names and checkpoints are the same (layer_stack.py).
  scan_layers: bool = False
  attention_impl: str | None = None  # passed to jax.nn.dot_product_attention ("cudnn", "xla")
  # (modality, size) pairs: vocabularies other than the registry's, for tokenizers with
  # fewer codes (see modalities.with_vocab_size). Pairs, not a dict, to stay hashable.
  vocab_sizes: tuple[tuple[str, int], ...] = ()

  def __post_init__(self):
    try:
      object.__setattr__(self, "remat", layer_stack.remat_policy_name(self.remat))
    except ValueError as error:
      raise UsageError(f"config.model: {error}") from None
    # UsageErrors (ValueErrors too): these come from config.model, a one-line error.
    if self.num_heads < 1 or self.dim % self.num_heads:
      raise UsageError(f"config.model: dim {self.dim} is not divisible by num_heads "
                       f"{self.num_heads}")
    if self.dim % 4:
      raise UsageError(f"config.model: dim {self.dim} must be divisible by 4 for 2D sin-cos "
                       "positions")


def fourm_tiny(**overrides) -> FourMConfig:
  """4M-T: 6 + 6 blocks, dim 384, 6 heads."""
  return FourMConfig(**{**dict(dim=384, encoder_depth=6, decoder_depth=6, num_heads=6),
                        **overrides})


def fourm_base(**overrides) -> FourMConfig:
  """4M-B: 12 + 12 blocks, dim 768, 12 heads."""
  return FourMConfig(**{**dict(dim=768, encoder_depth=12, decoder_depth=12, num_heads=12),
                        **overrides})


def fourm_large(**overrides) -> FourMConfig:
  """4M-L: 24 + 24 blocks, dim 1024, 16 heads."""
  return FourMConfig(**{**dict(dim=1024, encoder_depth=24, decoder_depth=24, num_heads=16),
                        **overrides})


def fourm_xlarge(**overrides) -> FourMConfig:
  """4M-XL: 24 + 24 blocks, dim 2048, 32 heads."""
  return FourMConfig(**{**dict(dim=2048, encoder_depth=24, decoder_depth=24, num_heads=32),
                        **overrides})


PRESETS = {"tiny": fourm_tiny, "base": fourm_base, "large": fourm_large,
           "xlarge": fourm_xlarge}
