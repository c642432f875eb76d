"""Sequence targets on the host: the decoder's spans put back into the given text, and
complete texts turned into the encoder entry that conditions the next target."""

from __future__ import annotations

import numpy as np

from fourm.data.masking import FIRST_SPAN
from tokenizers_vq.text import TextSpecialIds


def fill_spans(given: np.ndarray, generated: np.ndarray, ids: TextSpecialIds) -> np.ndarray:
  """The complete text (ids, ending in [EOS] when the model ended it) from the given
  encoder text (with sentinels; empty = generate from scratch) and the decoder's output
  "[S_1] span_1 [S_2] span_2 ...".
  """
  given = given[given != ids.pad]
  spans: dict[int, list[int]] = {}
  current = None
  for token in generated.tolist():
    if ids.is_sentinel(np.asarray(token)):
      current = token
      spans.setdefault(current, [])
    elif token == ids.pad:
      break
    elif current is not None:
      spans[current].append(token)
      if token == ids.eos:
        break
  if not given.size:
    return np.asarray(spans.get(ids.sentinel(FIRST_SPAN), []), np.int32)
  text: list[int] = []
  for token in given.tolist():
    text.extend(spans.get(token, []) if ids.is_sentinel(np.asarray(token)) else [token])
    if text and text[-1] == ids.eos:
      break
  return np.asarray(text, np.int32)


def sequence_entry(texts: list[np.ndarray], length: int,
                   ids: TextSpecialIds = TextSpecialIds(), *,
                   append_eos: bool = True) -> dict[str, np.ndarray]:
  """Complete texts (token ids) as a sequence condition, the way training shows a whole
  caption to the encoder: the text and its [EOS], no sentinels. `append_eos=False`
  leaves the texts as they are, as the reference's generation prompts them."""
  tokens = np.full((len(texts), length), ids.pad, np.int32)
  mask = np.zeros((len(texts), length), bool)
  for row, text in enumerate(texts):
    text = np.asarray(text, np.int32)
    if append_eos and (not text.size or text[-1] != ids.eos):
      text = np.append(text, np.int32(ids.eos))
    text = text[:length]
    tokens[row, :len(text)] = text
    mask[row, :len(text)] = True
  return {"input_tokens": tokens, "input_mask": mask}
