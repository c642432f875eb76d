"""The untokenized SAM-instance record (`sam_instance_masks`) and its layout.

The SAM labeler (pseudolabel/sam.py) writes, per (query point, instance) row, the
sam_instance columns with the 16 token ids left -1, followed by the instance's mask cropped
to its box at 64 x 64: int32 [R, 22 + 64 * 64]. The SAM-instance tokenizer
(tokenizers_vq/sam_instance.py `tokenize_records`) turns the masks into the ids and
drops them, leaving the sam_instance record int32 [R, 22] the codec writes as words. The
layout lives here, where both sides may read it (the labelers know no tokens, the
tokenizers no labelers).
"""

from __future__ import annotations

import numpy as np

TOKENS_PER_INSTANCE = 16
ROW_WIDTH = 6 + TOKENS_PER_INSTANCE
MASK_SIZE = 64
UNTOKENIZED = -1
INSTANCE_VOCAB = 1024                     # ids the sam_instance codec writes (v0 / v1 x 512)


def instance_rows(record: np.ndarray) -> np.ndarray:
  """The record's sam_instance columns int32 [R, 22] (token columns as written)."""
  return np.asarray(record)[:, :ROW_WIDTH]


def instance_masks(record: np.ndarray) -> np.ndarray:
  """uint8 [R, 64, 64]: each row's instance mask in its box (the tokenizer's input)."""
  return np.asarray(record)[:, ROW_WIDTH:].astype(np.uint8).reshape(-1, MASK_SIZE, MASK_SIZE)


def has_instance(record: np.ndarray) -> np.ndarray:
  """bool [R]: rows that hold an instance (False: a point's "none" row)."""
  return (np.asarray(record)[:, 2:6] != UNTOKENIZED).any(1)


def with_tokens(record: np.ndarray, tokens: np.ndarray) -> np.ndarray:
  """The sam_instance record int32 [R, 22]: `tokens` int [K, 16] are the SAM-instance
  tokenizer's ids of `instance_masks(record)[has_instance(record)]`, in that order."""
  rows = instance_rows(record).copy()
  hit = has_instance(record)
  tokens = np.asarray(tokens)
  if tokens.shape != (int(hit.sum()), TOKENS_PER_INSTANCE):
    raise ValueError(f"expected tokens [{int(hit.sum())}, {TOKENS_PER_INSTANCE}] for the rows "
                     f"with an instance, got {list(tokens.shape)}")
  rows[hit, 6:] = tokens
  return rows
