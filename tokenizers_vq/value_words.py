"""What the 4M-21 sequence codecs share: values written as words of the text vocabulary.

4M-21 serializes its structured modalities (color palettes, metadata, human poses, SAM
instances) as plain text in the shared 30k WordPiece vocabulary: numbers are the words
`v0=<n>` ... `v3=<n>` (n in 0..999, the box coordinate tokens) and the structure is a few
ordinary words (`human`, `pose`, `point`, `polygon`, `none`, ...), each one token. A
codec here writes a value as such words and tokenizes their join, exactly as the
reference tokenizes its strings; decoding reads the ids back as words.

`WordCodec` is the base of those codecs: a family implements `words(value)` and
`parse(reader)`; the base turns words into ids and ids into a `WordReader` that knows
where each word came from, so a malformed sequence is reported by position and token.
Decoding is strict by default; `detokenize` (generated ids) skips what does not parse.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fourm.errors import UsageError
from tokenizers_vq import text

_VALUE = re.compile(r"v([0-3])=(0|[1-9][0-9]*)")
MAX_VALUE = text.COORD_BINS - 1


def value_word(axis: int, value: int) -> str:
  """`v{axis}={value}`; the value must be one the vocabulary has a word for."""
  value = int(value)
  if not 0 <= value <= MAX_VALUE:
    raise ValueError(f"v{axis}={value}: values are 0..{MAX_VALUE}")
  return text.coord_token(axis, value)


def split_value(word: str) -> tuple[int, int] | None:
  """(axis, value) of a `vK=N` word, None for any other word."""
  match = _VALUE.fullmatch(word)
  return (int(match[1]), int(match[2])) if match else None


def token_value(token: int) -> str:
  """A token id of a 1024-entry tokenizer as one word: v0=t below 512, v1=t-512 above
  (how 4M-21 writes pose and SAM-instance token ids)."""
  token = int(token)
  if not 0 <= token < 1024:
    raise ValueError(f"token id {token}: expected 0..1023")
  return value_word(0, token) if token < 512 else value_word(1, token - 512)


class Malformed(Exception):
  """A piece of a sequence that does not parse: where, and what was wrong."""

  def __init__(self, position: int, message: str):
    super().__init__(message)
    self.position, self.message = position, message


class WordReader:
  """The words of a token sequence, read front to back, with their positions."""

  def __init__(self, words: Sequence[str], ids: np.ndarray):
    self.words, self.ids, self.position = list(words), ids, 0

  def done(self) -> bool:
    return self.position >= len(self.words)

  def peek(self) -> str | None:
    return None if self.done() else self.words[self.position]

  def describe(self, position: int | None = None) -> str:
    position = self.position if position is None else position
    if position >= len(self.words):
      return "the end of the sequence"
    return f"{self.words[position]!r} (id {int(self.ids[position])})"

  def word(self, expected: str) -> None:
    """Consumes the word `expected`, or raises `Malformed`."""
    if self.peek() != expected:
      raise Malformed(self.position, f"expected {expected!r}, got {self.describe()}")
    self.position += 1

  def value(self, axes: Iterable[int], what: str, limit: int = MAX_VALUE) -> tuple[int, int]:
    """Consumes a `vK=N` word with K in `axes` and N <= limit: (K, N)."""
    axes = tuple(axes)
    parsed = None if self.done() else split_value(self.words[self.position])
    if parsed is None or parsed[0] not in axes or parsed[1] > limit:
      names = " or ".join(f"v{axis}=" for axis in axes)
      raise Malformed(self.position, f"expected {names}<0..{limit}> ({what}), got "
                                     f"{self.describe()}")
    self.position += 1
    return parsed

  def skip_to(self, *words: str) -> None:
    """Moves past the current word to the next of `words` (or the end)."""
    self.position += 1
    while not self.done() and self.words[self.position] not in words:
      self.position += 1


class WordCodec:
  """Raw value <-> token ids through words of a text vocabulary (see the module doc).

  Picklable (it holds the vocabulary path, not the tokenizer), so grain worker
  processes can carry it. Subclasses set `name` (the modality) and implement `words`
  and `parse`.
  """

  name = "sequence"

  def __init__(self, path: str | None = None):
    self.path = path or text.default_vocab_path()
    special = text.special_tokens(self.path)
    if special.coord_bins != text.COORD_BINS:
      raise UsageError(f"{self.path}: the {self.name} codec needs the value words v0=0 .. "
                       f"v3={MAX_VALUE}, which this vocabulary lacks")
    self.vocab_size = special.vocab_size

  def words(self, value: Any) -> list[str]:
    raise NotImplementedError

  def parse(self, reader: WordReader, strict: bool) -> tuple[Any, int]:
    """(the value, the number of malformed pieces skipped; 0 when strict)."""
    raise NotImplementedError

  def __call__(self, value: Any) -> np.ndarray:
    ids = text.load_text_tokenizer(self.path).encode(
        " ".join(self.words(value)), add_special_tokens=False).ids
    return np.asarray(ids, np.int32)

  def reader(self, ids: Iterable[int], strict: bool) -> WordReader:
    """The words up to the first [EOS] or [PAD]; with `strict`, only padding after it."""
    special = text.special_tokens(self.path)
    array = text.check_ids(ids, special.vocab_size, f"{self.name} tokens")
    stops = np.flatnonzero((array == special.eos) | (array == special.pad))
    end = int(stops[0]) if stops.size else len(array)
    if strict and np.any(array[end + 1:] != special.pad):
      position = end + 1 + int(np.flatnonzero(array[end + 1:] != special.pad)[0])
      raise UsageError(f"{self.name} tokens: position {position}: id {int(array[position])} "
                       f"after the end of the sequence (position {end})")
    tokenizer = text.load_text_tokenizer(self.path)
    return WordReader([tokenizer.id_to_token(int(i)) for i in array[:end]], array[:end])

  def parse_ids(self, ids: Iterable[int], *, strict: bool = True) -> tuple[Any, int]:
    """Token ids -> (value, pieces skipped); strict: a malformed sequence raises a
    `UsageError` naming the position and the token."""
    try:
      return self.parse(self.reader(ids, strict), strict)
    except Malformed as error:
      raise UsageError(f"{self.name} tokens: position {error.position}: "
                       f"{error.message}") from None

  def decode(self, ids: Iterable[int], *, strict: bool = True) -> Any:
    return self.parse_ids(ids, strict=strict)[0]

  def detokenize(self, ids: Iterable[int]) -> Any:
    """Generated ids -> the value as far as it parses (malformed pieces dropped)."""
    return self.decode(ids, strict=False)


def parse_pieces(reader: WordReader, strict: bool, parse_one, starts: tuple[str, ...]):
  """Parses repeated pieces (`parse_one(reader)` each) to the end of the words.

  Strict: the first malformed piece raises `Malformed`. Otherwise it is skipped up to
  the next word in `starts` and counted. Returns (pieces, skipped).
  """
  pieces, skipped = [], 0
  while not reader.done():
    start = reader.position
    try:
      pieces.append(parse_one(reader))
    except Malformed:
      if strict:
        raise
      skipped += 1
      reader.position = start
      reader.skip_to(*starts)
  return pieces, skipped
