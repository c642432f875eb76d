"""Sequence codecs: how a sequence modality's raw value becomes token ids and back.

A `ModalitySpec` of kind SEQUENCE names its codec family in `tokenizer`; this table
turns the family into a codec for a text vocabulary. Training (the masking's
`sequence_encoders`), generation's conditions and the detokenizer all build codecs
here, so a new serialization (a color palette, a pose as keypoint words, ...) is one
`register_codec` call beside its registry entry:

    register_codec("palette", PaletteCodec)    # PaletteCodec(text_vocab_path)

A codec's ids are plain tokens of the shared text vocabulary, without [EOS], [PAD] or
sentinels: the masking adds those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from fourm import modalities
from fourm.errors import UsageError
from tokenizers_vq.boxes import BoxEncoder
from tokenizers_vq.human_poses import HumanPoseCodec
from tokenizers_vq.metadata import MetadataCodec
from tokenizers_vq.palette import PaletteCodec
from tokenizers_vq.sam_instance import SamInstanceCodec
from tokenizers_vq.text import TextEncoder


class SequenceCodec(Protocol):
  """Raw value <-> token ids. Picklable, so grain worker processes can carry it."""

  def __call__(self, value: Any) -> np.ndarray:
    """The value's int32 token ids (raises RecordError / UsageError on a bad value)."""

  def detokenize(self, ids: Iterable[int]) -> Any:
    """Token ids (e.g. generated ones) -> the raw value, as well as they allow."""


CodecFactory = Callable[[str | None], SequenceCodec]
# The 4M-21 families write their values as words of the text vocabulary (value_words).
CODECS: dict[str, CodecFactory] = {
    "text": TextEncoder, "boxes": BoxEncoder, "color_palette": PaletteCodec,
    "metadata": MetadataCodec, "human_poses": HumanPoseCodec, "sam_instance": SamInstanceCodec}


def register_codec(family: str, factory: CodecFactory) -> None:
  """Adds a codec family; `factory(text_vocab_path)` makes the codec."""
  known = CODECS.get(family)
  if known is not None and known is not factory:
    raise ValueError(f"sequence codec {family!r} is already registered as {known}")
  CODECS[family] = factory


def codec_for(name: str, text_vocab: str | None = None) -> SequenceCodec:
  """The codec of sequence modality `name` for a text vocabulary (None: the reference's)."""
  spec = modalities.get(name)
  if spec.kind != modalities.Kind.SEQUENCE:
    raise UsageError(f"{name!r} is a {spec.kind.value} modality, not a sequence")
  factory = CODECS.get(spec.tokenizer)
  if factory is None:
    raise UsageError(f"{name!r}: no sequence codec {spec.tokenizer!r} is registered "
                     f"(known: {sorted(CODECS)}); register_codec it")
  return factory(text_vocab)


def codecs_for(names: Iterable[str], text_vocab: str | None = None) -> dict[str, SequenceCodec]:
  """{name: codec} for the sequence modalities among `names`."""
  return {name: codec_for(name, text_vocab) for name in names
          if modalities.get(name).kind == modalities.Kind.SEQUENCE}
