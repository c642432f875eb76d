"""Tokens back to what a person looks at: images for token grids, text and boxes for
sequences. Generation decodes its output through here.

`Detokenizer({"tok_rgb": tokenizer, ...})` holds one decoder per grid modality (a trained
`VQTokenizer`, or a ground-truth `PatchQuantizer`) and the text vocabulary; `decode`
returns the raw modality (rgb uint8, depth in metres, unit normals, class ids, feature
vectors), `to_image` the same as uint8 RGB for a grid of pictures (depth colour-mapped,
normals as colours, segmentation with the palette).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fourm import modalities
from fourm.data import colorize
from fourm.errors import UsageError
from tokenizers_vq import boxes as boxes_lib
from tokenizers_vq import text as text_lib


def to_image(raw_name: str, raw: np.ndarray, size: int | None = None) -> np.ndarray:
  """One decoded raw modality [H, W, ...] as uint8 RGB [H, W, 3]."""
  raw = np.asarray(raw)
  if raw_name == "rgb":
    return raw.astype(np.uint8)
  if raw_name == "depth":
    return colorize.depth_to_rgb(raw)
  if raw_name == "normal":
    return colorize.normal_to_rgb(raw)
  if raw_name == "semseg":
    return colorize.semseg_to_rgb(raw)
  if raw_name == "clip":
    return colorize.features_to_rgb(raw, size or raw.shape[0] * 8)
  raise UsageError(f"no picture for raw modality {raw_name!r}")


class Detokenizer:
  """Decoders for the token modalities a model generates."""

  def __init__(self, grid_decoders: Mapping[str, Any], text_vocab: str | None = None):
    for name in grid_decoders:
      spec = modalities.get(name)
      if spec.kind != modalities.Kind.IMAGE_TOKENS:
        raise UsageError(f"{name!r} is a {spec.kind.value} modality, not a token grid")
    self.grid_decoders = dict(grid_decoders)
    self.text_vocab = text_vocab

  def decode(self, name: str, tokens) -> Any:
    """Token ids of modality `name` (one sample) -> its raw value."""
    spec = modalities.get(name)
    if spec.kind == modalities.Kind.SEQUENCE:
      ids = np.asarray(tokens)
      if name == "det":
        return boxes_lib.decode_boxes(ids, self.text_vocab, strict=False)
      return text_lib.detokenize(ids, self.text_vocab)
    decoder = self.grid_decoders.get(name)
    if decoder is None:
      raise UsageError(f"no decoder for {name!r}; this detokenizer has "
                       f"{sorted(self.grid_decoders)}")
    tokens = np.asarray(tokens)
    if hasattr(decoder, "check_tokens"):  # a VQTokenizer decodes batches
      return decoder.decode(tokens[None])[0]
    grid = int(round(np.sqrt(tokens.size)))
    return decoder.decode(tokens.reshape(grid, grid))

  def to_image(self, name: str, tokens, size: int | None = None) -> np.ndarray:
    return to_image(modalities.get(name).source.name, self.decode(name, tokens), size)
