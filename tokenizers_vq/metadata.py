"""4M-21's image metadata as text tokens.

Metadata is a set of named scalars about an image (its size, the caption's length,
counts of people and objects, colorfulness, ...). Each becomes two tokens, a `v1=` word
naming the kind and a `v0=` word holding its binned value, as the reference's
MetadataTransform writes them:

    v1=0 v0=20 v1=9 v0=17 ...        (2 tokens per entry, 21 kinds)

`METADATA_KEYS` fixes each kind's `v1=` id (its index). The bins, per kind:

* image size (original_width / original_height): pixels // 32;
* counts (caption_n_chars, n_humans, ...): the integer itself;
* manual bins (watermark_score, aesthetic_score): the index of the bin among the
  boundaries (below 0.5 -> 0; aesthetic: below 4.5 -> 0, below 5.5 -> 1, else 2);
* the rest: `int((clip(x, lo, hi) - lo) / (hi - lo) * (bins - 1))` over the kind's
  (lo, hi, bins), e.g. brightness over (0, 255, 50).

Every value is clipped to 0..999 (the value words there are). A record is float32 [21]
in `METADATA_KEYS` order, NaN where a kind is absent; a {kind: value} dict is accepted
too. Entries are written in key order; the reference shuffles them (and may drop a
random tail) as augmentation, which fourm's masking does not (yet). Decoding returns
{kind: value} with a bin read as a value that falls in it: size bin * 32, a count as
itself, a manual bin as its lower boundary (the first bin as half a unit below the
first boundary: watermark 0.0, aesthetic 4.0), a range bin as its center,
lo + (bin + 0.5) / (bins - 1) * (hi - lo), the top bin as hi (the reference's plotting
code reads lo + bin / bins * (hi - lo), which can fall in the bin below).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fourm.errors import RecordError
from fourm.modalities import METADATA_KEYS
from tokenizers_vq import text
from tokenizers_vq.value_words import MAX_VALUE, WordCodec, WordReader, parse_pieces, value_word

IMAGE_SIZE_KEYS = ("original_width", "original_height")
IMAGE_SIZE_BIN = 32
COUNT_KEYS = ("caption_n_chars", "caption_n_words", "caption_n_sentences", "n_humans",
              "n_sam_instances", "n_coco_instances", "coco_instance_diversity",
              "semantic_diversity")
MANUAL_BINS = {"watermark_score": (0.5,), "aesthetic_score": (4.5, 5.5)}
RANGE_BINS = {  # (lo, hi, bins)
    "colorfulness": (0, 150, 50), "brightness": (0, 255, 50), "contrast": (0, 127, 50),
    "saturation": (0, 255, 50), "entropy": (0, 10, 50), "walkability": (0, 1, 50),
    "objectness": (0, 1, 50), "geometric_complexity": (0, 0.75, 50),
    "occlusion_score": (0, 0.25, 50)}


def as_array(metadata: Any) -> np.ndarray:
  """A {kind: value} dict or a [21] array -> float32 [21], NaN where absent."""
  if isinstance(metadata, Mapping):
    unknown = sorted(set(metadata) - set(METADATA_KEYS))
    if unknown:
      raise RecordError(f"unknown metadata kinds {unknown} (known: {list(METADATA_KEYS)})",
                        field="metadata")
    return np.asarray([metadata.get(key, np.nan) for key in METADATA_KEYS], np.float32)
  array = np.asarray(metadata)
  if array.shape != (len(METADATA_KEYS),) or array.dtype.kind != "f":
    raise RecordError(f"expected float [{len(METADATA_KEYS)}] in METADATA_KEYS order (NaN "
                      f"where absent) or a dict, got {array.dtype} {list(array.shape)}",
                      field="metadata")
  return array


def value_bin(key: str, value: float) -> int:
  """The bin a kind's value is written as (see the module doc)."""
  if key in IMAGE_SIZE_KEYS:
    binned = int(value) // IMAGE_SIZE_BIN
  elif key in COUNT_KEYS:
    binned = int(value)
  elif key in MANUAL_BINS:
    binned = sum(value >= boundary for boundary in MANUAL_BINS[key])
  else:
    lo, hi, bins = RANGE_BINS[key]
    binned = int((min(max(value, lo), hi) - lo) / (hi - lo) * (bins - 1))
  return min(max(binned, 0), MAX_VALUE)


def bin_value(key: str, binned: int) -> float:
  """A bin read back as a value in it (see the module doc)."""
  if key in IMAGE_SIZE_KEYS:
    return float(binned * IMAGE_SIZE_BIN)
  if key in COUNT_KEYS:
    return float(binned)
  if key in MANUAL_BINS:
    boundaries = MANUAL_BINS[key]
    return boundaries[min(binned, len(boundaries)) - 1] if binned else boundaries[0] - 0.5
  lo, hi, bins = RANGE_BINS[key]
  return lo + min((binned + 0.5) / (bins - 1), 1.0) * (hi - lo)


class MetadataCodec(WordCodec):
  name = "metadata"

  def entries(self, metadata) -> list[list[str]]:
    """The words of each present entry: ["v1=<kind>", "v0=<bin>"]."""
    array = as_array(metadata)
    entries = []
    for index, (key, value) in enumerate(zip(METADATA_KEYS, array.tolist())):
      if np.isnan(value):
        continue
      if not np.isfinite(value):
        raise RecordError(f"metadata {key!r} is {value}", field=self.name)
      entries.append([value_word(1, index), value_word(0, value_bin(key, value))])
    return entries

  def words(self, metadata) -> list[str]:
    return [word for entry in self.entries(metadata) for word in entry]

  def chunks(self, metadata) -> list[np.ndarray]:
    """Each entry's token ids: the masking keeps or masks an entry whole, as the
    reference's chunk span masking of metadata does. Concatenated, they are `self(...)`'s
    ids (the words are whitespace-separated either way)."""
    tokenizer = text.load_text_tokenizer(self.path)
    encoded = tokenizer.encode_batch([" ".join(e) for e in self.entries(metadata)],
                                     add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encoded]

  def parse(self, reader: WordReader, strict: bool) -> tuple[dict[str, float], int]:
    """{kind: value} in `METADATA_KEYS` order (a kind given twice: the last wins)."""
    def entry(reader: WordReader) -> tuple[str, int]:
      _, index = reader.value([1], "a metadata kind", len(METADATA_KEYS) - 1)
      return METADATA_KEYS[index], reader.value([0], f"the value of {METADATA_KEYS[index]}")[1]

    entries, skipped = parse_pieces(reader, strict, entry, starts=_KIND_WORDS)
    found = {key: bin_value(key, binned) for key, binned in entries}
    return {key: found[key] for key in METADATA_KEYS if key in found}, skipped


_KIND_WORDS = tuple(value_word(1, i) for i in range(len(METADATA_KEYS)))
