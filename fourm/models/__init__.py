"""The 4M model in Flax NNX: config, embeddings, blocks, and the encoder-decoder."""

from fourm.models.config import (PRESETS, FourMConfig, fourm_base, fourm_large, fourm_tiny,
                                 fourm_xlarge)
from fourm.models.fourm import DecoderOutput, FourM
from fourm.nn.sharding import DEFAULT_RULES

__all__ = ["DEFAULT_RULES", "DecoderOutput", "FourM", "FourMConfig", "PRESETS", "fourm_base",
           "fourm_large", "fourm_tiny", "fourm_xlarge"]
