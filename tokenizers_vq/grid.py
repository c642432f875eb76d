"""The grid-tokenizer protocol: what generation, the detokenizer and model loading ask of
whatever makes a token-grid modality.

Two families implement it: a trained VQ-VAE (`tokenizers_vq.train_step.VQTokenizer`) and
the ground-truth patch quantizers (`fourm.data.patch_tokens.PatchQuantizer`). Code that
holds a grid tokenizer calls these members and never asks which family it has, so a new
family (a diffusion decoder, a published tokenizer) plugs in by providing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from fourm import modalities


@runtime_checkable
class GridTokenizer(Protocol):
  """Raw images of one modality <-> int32 token grids."""

  @property
  def raw_name(self) -> str:
    """The raw modality it reads (a registry name: rgb, depth, ...)."""

  @property
  def num_codes(self) -> int:
    """How many token ids it uses: [0, num_codes)."""

  def grid_at(self, layout: modalities.Layout) -> int:
    """Tokens per side it makes for a model of `layout` (a VQ-VAE: its own)."""

  def tokenize(self, raws: Sequence[np.ndarray], layout: modalities.Layout) -> np.ndarray:
    """Full-size raw values (any size: each is center-cropped to what the tokenizer
    reads) -> token ids [N, G, G]."""

  def detokenize(self, ids: np.ndarray) -> np.ndarray:
    """Token ids [N, G, G] -> raw values [N, ...] in the dtype records store."""
