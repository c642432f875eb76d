"""What a user gives to condition on, turned into the sampler's entries.

`ConditionEncoder(...).encode(name, values)` takes one value per sample:

  a sequence     its raw value, made into ids by the modality's codec
  (caption, det) (`tokenizers_vq/sequences.py`): a caption str, where sentinels ([S_1],
                 [S_2], ...) mark gaps a caption target fills in; boxes {"boxes": [N, 4]
                 xyxy in [0, 1], "classes": [str]}, or a .json file holding them
  a raw image    (rgb, depth, ...: a raw modality's name) a raw array, or an image /
                 .npy file; the model reads pixels when it takes that raw as pixels,
                 else the token grid made from it, through its tokenizer
  a token grid   (tok_rgb, ...) a raw value as above, or token ids [G, G] directly
  global tokens  (tok_dinov2_global, ...) its raw vector (dinov2_global: float [768], or a
                 .npy file), made into ids by its MLP tokenizer, or token ids [K] directly

Values become model inputs as training samples do (`fourm/data/masking/entries.py`).
Images are center-cropped and resized to the model's resolution as the data pipeline
does for evaluation. `mask_region` hides the tokens of a grid inside a box, so that
generating that target again in-paints the box (or, inverted, out-paints around it).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from fourm import modalities
from fourm.data import augment as augment_lib
from fourm.data import records
from fourm.data.masking import FIRST_SPAN, ValueReader
from fourm.errors import RecordError, UsageError
from fourm.generation.sampler import sequence_entry
from tokenizers_vq import sequences
from tokenizers_vq.grid import GridTokenizer
from tokenizers_vq.text import TextSpecialIds

Kind = modalities.Kind


def read_value(name: str, value: Any) -> Any:
  """A file path -> its content (images, .npy arrays, .json boxes); others unchanged."""
  raw = _raw_of(name)
  if not isinstance(value, (str, os.PathLike)) or (raw and raw.form == modalities.Form.TEXT):
    return value
  path = os.fspath(value)
  if not os.path.isfile(path):
    hint = " (give boxes as a .json file)" if raw and raw.form == modalities.Form.BOXES else ""
    raise UsageError(f"--condition {name}={path}: no such file{hint}")
  extension = os.path.splitext(path)[1].lower()
  try:
    if extension == ".npy":
      return np.load(path)
    if extension == ".json":
      with open(path) as f:
        return json.load(f)
    if raw is not None and raw.resample == modalities.Resample.NEAREST:
      with Image.open(path) as image:  # label maps: ids as they are stored
        return np.asarray(image.convert("L"))
    with open(path, "rb") as f:
      return records.decode_image(f.read())
  except (OSError, ValueError) as error:
    raise UsageError(f"--condition {name}={path}: cannot read it ({error})") from None


def _raw_of(name: str) -> modalities.RawSpec | None:
  if modalities.is_known(name):
    return modalities.get(name).source
  return modalities.RAW_MODALITIES.get(name)


def _as_raw(raw: modalities.RawSpec, value: np.ndarray) -> np.ndarray:
  """A raw condition checked as a record field is (dtype, shape, finite values) before any
  model code runs; numbers of the right kind in another width are converted first (a
  float64 .npy depth map, int64 class ids that fit)."""
  want = np.dtype(raw.dtype)
  if value.dtype != want and value.dtype.kind == want.kind == "f":
    value = value.astype(want)
  elif (value.dtype != want and value.dtype.kind in "iu" and want.kind in "iu" and value.size
        and np.iinfo(want).min <= value.min() and value.max() <= np.iinfo(want).max):
    value = value.astype(want)
  records.validate_field(raw.name, value)
  return value


class ConditionEncoder:
  """Raw conditions -> sampler entries for one model (its modalities and layout)."""

  def __init__(self, model_names: Sequence[str], input_names: Sequence[str],
               layout: modalities.Layout, tokenizers: Mapping[str, GridTokenizer],
               text_vocab: str | None = None, pixel_normalization: str = "imagenet",
               text_ids: TextSpecialIds = TextSpecialIds(), condition_eos: bool = True,
               vocab_sizes: Mapping[str, int] | None = None):
    """`condition_eos`: a complete text given as a condition ends with [EOS], as
    training shows whole texts to the encoder. The reference's generation prompts
    (`custom_text`) have none: off for converted reference checkpoints. `vocab_sizes`:
    the model's (`FourMConfig.vocab_sizes`); given token ids are checked against them,
    since the model's table lookup would clamp an id beyond its rows, not refuse it."""
    self.condition_eos = condition_eos
    self.vocab_sizes = dict(vocab_sizes or {})
    self.model_names, self.input_names = tuple(model_names), tuple(input_names)
    self.layout, self.tokenizers = layout, dict(tokenizers)
    self.text_vocab, self.text_ids = text_vocab, text_ids
    self.reader = ValueReader(layout, pixel_normalization)
    self._codecs: dict[str, sequences.SequenceCodec] = {}

  def modality_for(self, name: str) -> str:
    """The model modality a condition named `name` feeds: itself, or for a raw name the
    model modality made from it that the model reads (rgb -> rgb pixels, else tok_rgb)."""
    if name in self.model_names:
      return name
    if name in modalities.RAW_MODALITIES:
      made_from = [n for n in self.model_names if modalities.get(n).source.name == name]
      readable = [n for n in made_from if n in self.input_names]
      if readable or made_from:
        return (readable or made_from)[0]
    known = sorted(set(self.model_names) | {modalities.get(n).source.name
                                            for n in self.model_names})
    raise UsageError(f"the model was not trained on {name!r}: it knows {known}")

  def encode(self, name: str, values: Sequence[Any]) -> tuple[str, dict[str, np.ndarray]]:
    """(model modality, entry) for one value per sample."""
    target = self.modality_for(name)
    if target not in self.input_names:
      raise UsageError(f"{target!r} is not an input of this model (its inputs: "
                       f"{list(self.input_names)})")
    spec = modalities.get(target, self.vocab_sizes)
    values = [read_value(name, value) for value in values]
    try:
      if spec.kind == Kind.SEQUENCE:
        return target, self._sequence(spec, values)
      if spec.kind == Kind.PIXELS:
        return target, self._pixels(spec, values)
      if spec.kind == Kind.FEATURE_MAP:
        return target, self._features(spec, values)
      if spec.kind == Kind.SEQUENCE_EMBEDDINGS:
        return target, self._embedding_sequence(spec, values)
      return target, self._grid(spec, name, values)
    except RecordError as error:
      raise UsageError(f"--condition {name}: {error}") from None

  # By kind -------------------------------------------------------------------------------

  def _sequence(self, spec, values) -> dict[str, np.ndarray]:
    if spec.name not in self._codecs:
      self._codecs[spec.name] = sequences.codec_for(spec.name, self.text_vocab)
    codec = self._codecs[spec.name]
    texts = [self._renumber_sentinels(np.asarray(codec(value), np.int32)) for value in values]
    for text in texts:
      # A text vocabulary larger than the model's (config.model.vocab_sizes) would give
      # ids its table lookup clamps to the last row.
      if text.size and text.max() >= spec.vocab_size:
        vocabulary = self.text_vocab or "the reference's WordPiece vocabulary"
        raise UsageError(
            f"--condition {spec.name}: {vocabulary} gives token id {int(text.max())}, "
            f"outside the model's {spec.name} vocabulary of {spec.vocab_size}: the model "
            "was trained with another text tokenizer (its config.text_tokenizer)")
    self._report_lossy(spec, texts)
    entry = sequence_entry(texts, spec.max_length, self.text_ids,
                           append_eos=self.condition_eos)
    # A text with gaps keeps no [EOS] of its own when its last span reaches the end: the
    # span holds it, as in training.
    for row, text in enumerate(texts):
      if self._has_gaps(text) and self.text_ids.is_sentinel(text[-1:]).any():
        entry["input_tokens"][row, len(text):] = self.text_ids.pad
        entry["input_mask"][row, len(text):] = False
    return entry

  def _report_lossy(self, spec, texts: list[np.ndarray]) -> None:
    """Says (once per call) when a condition will not reach the model whole: cut to the
    sequence length, or with words the vocabulary does not know ([UNK])."""
    limit = spec.max_length - 1  # room for [EOS]
    long = [i for i, text in enumerate(texts) if len(text) > limit]
    if long:
      warnings.warn(f"--condition {spec.name}: {len(long)} of {len(texts)} values have more "
                    f"than {limit} tokens (the longest {max(len(texts[i]) for i in long)}); "
                    f"the model reads the first {limit}", stacklevel=4)
    unknown = sum(int((text == self.text_ids.unk).sum()) for text in texts)
    if unknown:
      total = sum(len(text) for text in texts)
      warnings.warn(f"--condition {spec.name}: {unknown} of {total} tokens are unknown to the "
                    "text vocabulary ([UNK]; e.g. emoji or scripts it was not trained on)",
                    stacklevel=4)

  def _has_gaps(self, ids: np.ndarray) -> bool:
    return bool(self.text_ids.is_sentinel(ids).any())

  def _renumber_sentinels(self, ids: np.ndarray) -> np.ndarray:
    """Gaps are numbered from [S_1] in order, as training numbers spans, whatever the
    user wrote."""
    ids = ids.copy()
    gaps = np.flatnonzero(self.text_ids.is_sentinel(ids))
    ids[gaps] = self.text_ids.first_sentinel + FIRST_SPAN + np.arange(len(gaps))
    return ids

  def _pixels(self, spec, values) -> dict[str, np.ndarray]:
    images = []
    for value in values:
      image = np.asarray(value)
      if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise UsageError(f"{spec.name}: expected a uint8 image [H, W, 3], got "
                         f"{image.dtype} {list(image.shape)}")
      size = spec.image_size(self.layout)
      image = augment_lib.center_crop(spec.source.name, image, size)
      images.append(self.reader.pixels(spec.source.name, image, size))
    n = spec.num_tokens(self.layout)
    return {"tokens": np.stack(images).astype(np.float32),
            "input_mask": np.ones((len(images), n), bool)}

  def _features(self, spec, values) -> dict[str, np.ndarray]:
    maps = [self.reader.features(spec, spec.source.name, np.asarray(value))
            for value in values]
    n = spec.num_tokens(self.layout)
    return {"tokens": np.stack(maps), "input_mask": np.ones((len(maps), n), bool)}

  def _embedding_sequence(self, spec, values) -> dict[str, np.ndarray]:
    """Vectors [L, F] per sample (t5_caption: the caption's T5-XXL encoder states, which
    fourm does not compute), all of them visible."""
    length = spec.max_length
    tokens = np.zeros((len(values), length, spec.source.channels), np.float32)
    mask = np.zeros((len(values), length), bool)
    for row, value in enumerate(values):
      vectors = self.reader.embedding_sequence(spec, np.asarray(value))
      tokens[row, :len(vectors)], mask[row, :len(vectors)] = vectors, True
    return {"tokens": tokens, "input_mask": mask}

  def _grid(self, spec, given_name: str, values) -> dict[str, np.ndarray]:
    n = spec.num_tokens(self.layout)
    tokens = []
    raws = []
    for value in values:
      array = np.asarray(value)
      if given_name == spec.name and array.dtype.kind in "iu" and array.size == n:
        tokens.append(self.reader.token_grid(spec, array.reshape(n)))  # ids as they are
      else:
        raws.append(array)
    if raws and tokens:
      raise UsageError(f"{spec.name}: give either token ids for every sample or raw values "
                       "for every sample")
    if raws:
      raws = [_as_raw(spec.source, raw) for raw in raws]
      tokens = [self.reader.token_grid(spec, ids.reshape(n)) for ids in self._tokenize(spec, raws)]
    return {"tokens": np.stack(tokens), "input_mask": np.ones((len(tokens), n), bool)}

  def _tokenize(self, spec, raws: list[np.ndarray]) -> np.ndarray:
    tokenizer = self.tokenizers.get(spec.name)
    if tokenizer is None:
      raise UsageError(f"no tokenizer for {spec.name}: the model's token datasets record "
                       f"none; pass --tokenizers {spec.name}=WORKDIR")
    return tokenizer.tokenize(raws, self.layout)


def mask_region(entry: Mapping[str, np.ndarray], box: Sequence[float], grid: int,
                outside: bool = False) -> dict[str, np.ndarray]:
  """A grid entry (`grid` x `grid` tokens) with the tokens whose patch center lies in
  `box` (xmin, ymin, xmax, ymax in [0, 1]) hidden: generating that modality then fills
  the box in (with `outside`, everything around it)."""
  xmin, ymin, xmax, ymax = (float(v) for v in box)
  if not (0 <= xmin < xmax <= 1 and 0 <= ymin < ymax <= 1):
    raise UsageError(f"region {list(box)}: expected xmin < xmax and ymin < ymax in [0, 1]")
  centers = (np.arange(grid) + 0.5) / grid
  inside = (((centers >= ymin) & (centers <= ymax))[:, None]
            & ((centers >= xmin) & (centers <= xmax))[None, :]).reshape(-1)
  hide = ~inside if outside else inside
  mask = np.asarray(entry["input_mask"], bool) & ~hide[None, :]
  return {**entry, "input_mask": mask}
