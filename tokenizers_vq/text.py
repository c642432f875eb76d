"""The WordPiece text tokenizer of 4M: captions to token ids and back.

The default vocabulary is the reference 4M one (30,000 entries), shipped with the
package so that token ids mean the same thing as in the reference checkpoints. It is a
HuggingFace `tokenizers` JSON (lowercasing BERT normalizer, BERT pre-tokenizer,
WordPiece with "##" continuations), loaded as the reference loads it
(`Tokenizer.from_file`). Its added tokens, in id order:

  [PAD]=0 [UNK]=1 [SOS]=2 [EOS]=3
  [S_0]..[S_199]                  = 4..203      sentinels of the span masking
  v0=0..v0=999, v1=.., v2=.., v3=.. = 204..4203  box coordinates (xmin, ymin, xmax, ymax)
  80 COCO class names             = 4204..4283  ("wine glass" is one token)

`special_tokens(path)` reads these ids from the file itself rather than assuming
them, so a vocabulary trained with `text_train.py` (same layout, other class names)
works the same way. Boxes as tokens live in `boxes.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import re
from collections.abc import Iterable

import numpy as np
import tokenizers

from fourm.errors import UsageError

DEFAULT_VOCAB_FILE = "text_tokenizer_4m_wordpiece_30k.json"


@dataclasses.dataclass(frozen=True)
class TextSpecialIds:
  """The special ids that masking and generation need (defaults: the reference 4M
  WordPiece vocabulary). `SpecialTokens.masking_ids()` reads them from a vocabulary."""
  pad: int = 0
  unk: int = 1
  sos: int = 2
  eos: int = 3
  first_sentinel: int = 4
  num_sentinels: int = 200

  def sentinel(self, i: int) -> int:
    """The id of [S_i]."""
    if not 0 <= i < self.num_sentinels:
      raise ValueError(f"sentinel [S_{i}] out of range: the vocabulary has "
                       f"[S_0]..[S_{self.num_sentinels - 1}]")
    return self.first_sentinel + i

  def is_sentinel(self, ids: np.ndarray) -> np.ndarray:
    return (ids >= self.first_sentinel) & (ids < self.first_sentinel + self.num_sentinels)


# The reference layout of the added tokens (what `text_train.py` reproduces).
PAD, UNK, SOS, EOS = "[PAD]", "[UNK]", "[SOS]", "[EOS]"
NUM_SENTINELS = 200
COORD_BINS = 1000
NUM_COORDS = 4  # v0..v3 = xmin, ymin, xmax, ymax

_NUMBER = r"(0|[1-9][0-9]*)"  # no leading zeros: "v0=07" is not bin 7
_SENTINEL = re.compile(rf"\[S_{_NUMBER}\]")
_COORDS = tuple(re.compile(rf"v{axis}={_NUMBER}") for axis in range(NUM_COORDS))


def sentinel_token(i: int) -> str:
  return f"[S_{i}]"


def coord_token(axis: int, value: int) -> str:
  """'v{axis}={value}': axis 0..3 is xmin, ymin, xmax, ymax; value a bin in [0, bins)."""
  return f"v{axis}={value}"


def default_vocab_path() -> str:
  return str(importlib.resources.files("tokenizers_vq") / "data" / DEFAULT_VOCAB_FILE)


@functools.cache
def load_text_tokenizer(path: str | None = None) -> tokenizers.Tokenizer:
  """A `tokenizers.Tokenizer` from a JSON file; the reference 4M vocabulary by default.

  Cached by path: a file rewritten in place is not re-read by this process.
  """
  path = path or default_vocab_path()
  if not os.path.isfile(path):
    raise UsageError(f"{path}: no such text tokenizer file")
  try:
    return tokenizers.Tokenizer.from_file(path)
  except Exception as error:  # the library raises a bare Exception on malformed JSON
    raise UsageError(f"{path}: not a text tokenizer file ({error})") from None


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """The ids of a vocabulary's special tokens, as its file assigns them.

  Sentinels and each coordinate axis must be contiguous runs of ids (checked when
  read): the masking tells sentinels apart by range, and boxes map bins to ids by
  offset.
  """
  path: str
  vocab_size: int
  pad: int
  unk: int
  sos: int
  eos: int
  first_sentinel: int
  num_sentinels: int
  first_coord: tuple[int, ...]  # the id of v{k}=0 for k = 0..3; () without coordinates
  coord_bins: int               # 0 without coordinate tokens

  def masking_ids(self) -> TextSpecialIds:
    """What `fourm.data.masking.MaskSample(text_ids=...)` needs."""
    return TextSpecialIds(pad=self.pad, unk=self.unk, sos=self.sos, eos=self.eos,
                          first_sentinel=self.first_sentinel,
                          num_sentinels=self.num_sentinels)

  def coord_id(self, axis: int, value: int) -> int:
    if not self.coord_bins:
      raise UsageError(f"{self.path}: the vocabulary has no box coordinate tokens (v0=0 ...)")
    if not (0 <= axis < NUM_COORDS and 0 <= value < self.coord_bins):
      raise ValueError(f"no coordinate token v{axis}={value} (bins 0..{self.coord_bins - 1})")
    return self.first_coord[axis] + int(value)

  def coord_axis(self, ids: np.ndarray) -> np.ndarray:
    """Per id, its coordinate axis 0..3, or -1 where it is not a coordinate token."""
    ids = np.asarray(ids)
    axis = np.full(ids.shape, -1, np.int64)
    for k, first in enumerate(self.first_coord):
      axis[(ids >= first) & (ids < first + self.coord_bins)] = k
    return axis

  def is_sentinel(self, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return (ids >= self.first_sentinel) & (ids < self.first_sentinel + self.num_sentinels)

  def is_control(self, ids: np.ndarray) -> np.ndarray:
    """[PAD], [SOS], [EOS] and sentinels: tokens that structure a sequence, not text."""
    ids = np.asarray(ids)
    return np.isin(ids, (self.pad, self.sos, self.eos)) | self.is_sentinel(ids)


def _contiguous_run(vocab: dict[str, int], pattern: re.Pattern, what: str,
                    path: str) -> tuple[int, int]:
  """(first id, count) of the tokens `pattern` matches, numbered 0..count-1 by its group.

  Raises unless token i has id first + i for every i.
  """
  numbered = {}
  for token, token_id in vocab.items():
    match = pattern.fullmatch(token)
    if match:
      numbered[int(match.group(1))] = token_id
  if not numbered:
    return -1, 0
  count, first = len(numbered), numbered.get(0, -1)
  if sorted(numbered) != list(range(count)) or \
      any(numbered[i] != first + i for i in range(count)):
    raise UsageError(f"{path}: the {what} tokens are not numbered 0..{count - 1} with "
                     f"consecutive ids (the masking and the box coder need that)")
  return first, count


@functools.cache
def special_tokens(path: str | None = None) -> SpecialTokens:
  """The special ids of the vocabulary at `path` (the reference one by default)."""
  path = path or default_vocab_path()
  tokenizer = load_text_tokenizer(path)
  vocab = tokenizer.get_vocab(with_added_tokens=True)
  missing = [t for t in (PAD, UNK, SOS, EOS) if t not in vocab]
  if missing:
    raise UsageError(f"{path}: the vocabulary lacks the special tokens {missing}")
  first_sentinel, num_sentinels = _contiguous_run(vocab, _SENTINEL, "sentinel [S_i]", path)
  if not num_sentinels:
    raise UsageError(f"{path}: the vocabulary has no sentinel tokens [S_0], [S_1], ...")
  first_coord, bins = [], set()
  for axis in range(NUM_COORDS):
    first, count = _contiguous_run(vocab, _COORDS[axis], f"v{axis}=", path)
    first_coord.append(first)
    bins.add(count)
  if len(bins) != 1:
    raise UsageError(f"{path}: the four coordinate axes v0..v3 have different numbers of "
                     f"bins {sorted(bins)}")
  coord_bins = bins.pop()
  if coord_bins == 1:
    raise UsageError(f"{path}: one coordinate bin per axis cannot represent a box")
  return SpecialTokens(path=path, vocab_size=tokenizer.get_vocab_size(), pad=vocab[PAD],
                       unk=vocab[UNK], sos=vocab[SOS], eos=vocab[EOS],
                       first_sentinel=first_sentinel, num_sentinels=num_sentinels,
                       first_coord=tuple(first_coord) if coord_bins else (),
                       coord_bins=coord_bins)


def check_ids(ids: Iterable[int], vocab_size: int, what: str) -> np.ndarray:
  """`ids` as a 1-D int64 array; a UsageError names the first id outside [0, vocab)."""
  array = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
  if array.size == 0:
    return array.astype(np.int64).reshape(0)
  if array.ndim != 1 or array.dtype.kind not in "iu":
    raise UsageError(f"{what}: expected a 1-D sequence of integer token ids, got "
                     f"{array.dtype} {list(array.shape)}")
  bad = np.flatnonzero((array < 0) | (array >= vocab_size))
  if bad.size:
    raise UsageError(f"{what}: position {bad[0]}: id {int(array[bad[0]])} is outside the "
                     f"vocabulary [0, {vocab_size})")
  return array.astype(np.int64)


def detokenize(ids: Iterable[int], path: str | None = None) -> str:
  """Token ids -> caption text, for generation output.

  Reads up to the first [EOS]; drops [PAD], [SOS] and sentinels (a generated
  sequence may still hold them); keeps [UNK] visible. Class-name tokens are "special"
  in the reference vocabulary, so the library's skip_special_tokens would drop words
  like "dog": the filtering here is by id instead.
  """
  special = special_tokens(path)
  array = check_ids(ids, special.vocab_size, "text tokens")
  ends = np.flatnonzero(array == special.eos)
  if ends.size:
    array = array[:ends[0]]
  kept = array[~special.is_control(array)]
  return load_text_tokenizer(path).decode(kept.tolist(), skip_special_tokens=False)


class TextEncoder:
  """Text -> int32 token ids without special tokens (the masking adds those).

  Picklable (it holds the path, not the tokenizer), so grain worker processes can
  carry it.
  """

  def __init__(self, path: str | None = None):
    self.path = path or default_vocab_path()
    self.vocab_size = load_text_tokenizer(self.path).get_vocab_size()

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return load_text_tokenizer(self.path)

  @property
  def special(self) -> SpecialTokens:
    return special_tokens(self.path)

  def __call__(self, text: str) -> np.ndarray:
    if not isinstance(text, str):
      raise UsageError(f"TextEncoder encodes str, got {type(text).__name__} (boxes go "
                       "through tokenizers_vq.boxes.BoxEncoder)")
    ids = self.tokenizer.encode(text, add_special_tokens=False).ids
    return np.asarray(ids, np.int32)

  def decode(self, ids) -> str:
    """Every token as text, special ones included (see `detokenize` for captions)."""
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

  def detokenize(self, ids) -> str:
    return detokenize(ids, self.path)
