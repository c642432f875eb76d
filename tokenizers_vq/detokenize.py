"""Tokens back to raw values: images for token grids, feature vectors for global tokens,
text and boxes for sequences. Generation decodes its output through here;
`fourm.data.visualize` draws the result.

`Detokenizer({"tok_rgb": tokenizer, ...})` holds one tokenizer per token-grid modality
(anything with the `tokenizers_vq.grid.GridTokenizer` members: a trained `VQTokenizer`,
a ground-truth `PatchQuantizer`) and per global-token modality (a
`tokenizers_vq.global_tokens.GlobalTokenizer`: 4M-21's MLP tokenizers), and the text
vocabulary; `decode` returns the raw modality (rgb uint8, depth in metres, unit normals,
class ids, feature maps, a global feature vector float32 [C], a caption str, boxes),
sequences through their registered codec.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fourm import modalities
from fourm.errors import UsageError
from tokenizers_vq import sequences
from tokenizers_vq.global_tokens import GlobalTokenizer
from tokenizers_vq.grid import GridTokenizer

Kind = modalities.Kind


class Detokenizer:
  """Decoders for the token modalities a model generates."""

  def __init__(self, grid_tokenizers: Mapping[str, GridTokenizer | GlobalTokenizer],
               text_vocab: str | None = None):
    for name, tokenizer in grid_tokenizers.items():
      spec = modalities.get(name)
      if spec.kind == Kind.GLOBAL:
        if not isinstance(tokenizer, GlobalTokenizer):
          raise UsageError(f"{name!r} is a global-token modality; its decoder must be a "
                           f"GlobalTokenizer, not {type(tokenizer).__name__}")
      elif spec.kind != Kind.IMAGE_TOKENS:
        raise UsageError(f"{name!r} is a {spec.kind.value} modality, not a token grid or "
                         "global tokens")
    self.grid_tokenizers = dict(grid_tokenizers)
    self.text_vocab = text_vocab
    self._codecs: dict[str, sequences.SequenceCodec] = {}

  def decode(self, name: str, tokens):
    """Token ids of modality `name` (one sample) -> its raw value."""
    spec = modalities.get(name)
    if spec.kind == Kind.SEQUENCE:
      if name not in self._codecs:
        self._codecs[name] = sequences.codec_for(name, self.text_vocab)
      return self._codecs[name].detokenize(np.asarray(tokens))
    tokenizer = self.grid_tokenizers.get(name)
    if tokenizer is None:
      raise UsageError(f"no decoder for {name!r}; this detokenizer has "
                       f"{sorted(self.grid_tokenizers)}")
    tokens = np.asarray(tokens)
    if spec.kind == Kind.GLOBAL:
      return tokenizer.detokenize(tokens.reshape(1, -1))[0]
    grid = int(round(np.sqrt(tokens.size)))
    return tokenizer.detokenize(tokens.reshape(1, grid, grid))[0]
