"""The WordPiece text tokenizer of 4M: captions (and, later, boxes as text) to token ids.

The default vocabulary is the reference 4M one (30,000 entries, lowercasing BERT
normaliser), shipped with the package so that token ids mean the same thing as in the
reference checkpoints. Its special tokens: [PAD]=0 [UNK]=1 [SOS]=2 [EOS]=3, sentinels
[S_0]..[S_199] = 4..203, box coordinates v0=0..v3=999 = 204..4203.
"""

from __future__ import annotations

import functools
import importlib.resources
import os

import numpy as np
import tokenizers

from fourm.errors import UsageError

DEFAULT_VOCAB_FILE = "text_tokenizer_4m_wordpiece_30k.json"


def default_vocab_path() -> str:
  return str(importlib.resources.files("tokenizers_vq") / "data" / DEFAULT_VOCAB_FILE)


@functools.cache
def load_text_tokenizer(path: str | None = None) -> tokenizers.Tokenizer:
  """A `tokenizers.Tokenizer` from a JSON file; the reference 4M vocabulary by default."""
  path = path or default_vocab_path()
  if not os.path.isfile(path):
    raise UsageError(f"{path}: no such text tokenizer file")
  try:
    return tokenizers.Tokenizer.from_file(path)
  except Exception as error:  # the library raises a bare Exception on malformed JSON
    raise UsageError(f"{path}: not a text tokenizer file ({error})") from None


class TextEncoder:
  """Text -> int32 token ids without special tokens (the masking adds those).

  Picklable (it holds the path, not the tokenizer), so grain worker processes can
  carry it.
  """

  def __init__(self, path: str | None = None):
    self.path = path or default_vocab_path()
    self.vocab_size = load_text_tokenizer(self.path).get_vocab_size()

  def __call__(self, text: str) -> np.ndarray:
    ids = load_text_tokenizer(self.path).encode(text, add_special_tokens=False).ids
    return np.asarray(ids, np.int32)

  def decode(self, ids) -> str:
    return load_text_tokenizer(self.path).decode([int(i) for i in ids],
                                                 skip_special_tokens=False)
