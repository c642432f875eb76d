"""Tokens back to raw values: images for token grids, text and boxes for sequences.
Generation decodes its output through here; `fourm.data.visualize` draws the result.

`Detokenizer({"tok_rgb": tokenizer, ...})` holds one grid tokenizer per token-grid
modality (anything with the `tokenizers_vq.grid.GridTokenizer` members: a trained
`VQTokenizer`, a ground-truth `PatchQuantizer`) and the text vocabulary; `decode`
returns the raw modality (rgb uint8, depth in metres, unit normals, class ids, feature
vectors, a caption str, boxes), sequences through their registered codec.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fourm import modalities
from fourm.errors import UsageError
from tokenizers_vq import sequences
from tokenizers_vq.grid import GridTokenizer


class Detokenizer:
  """Decoders for the token modalities a model generates."""

  def __init__(self, grid_tokenizers: Mapping[str, GridTokenizer],
               text_vocab: str | None = None):
    for name in grid_tokenizers:
      spec = modalities.get(name)
      if spec.kind != modalities.Kind.IMAGE_TOKENS:
        raise UsageError(f"{name!r} is a {spec.kind.value} modality, not a token grid")
    self.grid_tokenizers = dict(grid_tokenizers)
    self.text_vocab = text_vocab
    self._codecs: dict[str, sequences.SequenceCodec] = {}

  def decode(self, name: str, tokens):
    """Token ids of modality `name` (one sample) -> its raw value."""
    spec = modalities.get(name)
    if spec.kind == modalities.Kind.SEQUENCE:
      if name not in self._codecs:
        self._codecs[name] = sequences.codec_for(name, self.text_vocab)
      return self._codecs[name].detokenize(np.asarray(tokens))
    tokenizer = self.grid_tokenizers.get(name)
    if tokenizer is None:
      raise UsageError(f"no decoder for {name!r}; this detokenizer has "
                       f"{sorted(self.grid_tokenizers)}")
    tokens = np.asarray(tokens)
    grid = int(round(np.sqrt(tokens.size)))
    return tokenizer.detokenize(tokens.reshape(1, grid, grid))[0]
