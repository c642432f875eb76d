"""Model FLOPs of a 4M forward pass, counted from the architecture.

The useful work only: matmuls of the blocks, attention scores and mixing, the context
projection and the output heads over the tokens they score. Embedding lookups,
norms, softmaxes and the patch projection are left out (each is under 1% here). A
training step is counted as three forward passes (backward = 2x forward), the usual
convention for model-FLOPs utilization; recomputation (remat, the grouped heads'
backward) is overhead, not useful work, and is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping

from fourm import modalities
from fourm.models.config import FourMConfig
from fourm.models.layers import swiglu_hidden_dim


def forward_flops(config: FourMConfig, input_tokens: int, target_tokens: int,
                  target_tokens_by_modality: Mapping[str, int]) -> float:
  """FLOPs of one sample's forward pass with the given encoder and decoder lengths.

  `target_tokens_by_modality` says how many decoder slots each head scores (the
  vocabularies are the registry's unless `config.vocab_sizes` says otherwise).
  """
  dim, hidden = config.dim, swiglu_hidden_dim(config.dim, config.mlp_ratio)
  enc, dec = input_tokens, target_tokens
  mlp = 3 * dim * hidden  # gate, up and down projections, multiply-adds per token
  encoder_block = 2 * (enc * (4 * dim * dim + mlp) + 2 * enc * enc * dim)
  decoder_block = 2 * (dec * (4 * dim * dim + 2 * dim * dim + mlp)  # self qkvo, cross q,o
                       + enc * 2 * dim * dim                        # cross k, v
                       + 2 * dec * dec * dim + 2 * dec * enc * dim)  # self and cross scores
  context = 2 * enc * dim * dim
  vocab_sizes = dict(config.vocab_sizes)
  heads = sum(2 * count * dim * modalities.get(name, vocab_sizes).vocab_size
              for name, count in target_tokens_by_modality.items())
  return float(config.encoder_depth * encoder_block + config.decoder_depth * decoder_block
               + context + heads)
