"""What a user gives to condition on, turned into the sampler's entries.

`ConditionEncoder(...).encode(name, values)` takes one value per sample:

  caption        a str; sentinels ([S_1], [S_2], ...) mark gaps a caption target fills in
  det            boxes {"boxes": [N, 4] xyxy in [0, 1], "classes": [str]}, or a .json
                 file holding them
  rgb            a uint8 image [H, W, 3] or an image file; the model reads pixels when it
                 takes rgb pixels, else tok_rgb through its tokenizer
  depth, normal, semseg, clip (raw names) or tok_<name>
                 a raw array (or a .npy / .png file), tokenized by the model's tokenizer;
                 or, under tok_<name>, token ids [G, G] directly

Images are centre-cropped and resized to the model's resolution as the data pipeline
does for evaluation. `mask_region` hides the tokens of a grid inside a box, so that
generating that target again in-paints the box (or, inverted, out-paints around it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from fourm import modalities
from fourm.data import augment as augment_lib
from fourm.data import records
from fourm.data.masking import FIRST_SPAN
from tokenizers_vq.text import TextSpecialIds
from fourm.errors import UsageError
from fourm.generation.sampler import sequence_entry

Kind = modalities.Kind


def read_value(name: str, value: Any) -> Any:
  """A file path -> its content (images, .npy arrays, .json boxes); others unchanged."""
  if not isinstance(value, (str, os.PathLike)) or name in ("caption",):
    return value
  path = os.fspath(value)
  if not os.path.isfile(path):
    if name == "det":
      raise UsageError(f"--condition det={path}: no such file (give boxes as a .json file)")
    raise UsageError(f"--condition {name}={path}: no such file")
  extension = os.path.splitext(path)[1].lower()
  try:
    if extension == ".npy":
      return np.load(path)
    if extension == ".json":
      with open(path) as f:
        return json.load(f)
    if modalities.get_raw(_raw_name(name)).resample == modalities.Resample.NEAREST:
      with Image.open(path) as image:  # label maps: ids as they are stored
        return np.asarray(image.convert("L"))
    with open(path, "rb") as f:
      return records.decode_image(f.read())
  except (OSError, ValueError) as error:
    raise UsageError(f"--condition {name}={path}: cannot read it ({error})") from None


def _raw_name(name: str) -> str:
  if name in modalities.MODALITIES:
    return modalities.get(name).source.name
  return name


class ConditionEncoder:
  """Raw conditions -> sampler entries for one model (its modalities and layout)."""

  def __init__(self, model_names: Sequence[str], input_names: Sequence[str],
               layout: modalities.Layout, tokenizers: Mapping[str, Any],
               text_vocab: str | None = None, pixel_normalization: str = "imagenet",
               text_ids: TextSpecialIds = TextSpecialIds()):
    self.model_names, self.input_names = tuple(model_names), tuple(input_names)
    self.layout, self.tokenizers = layout, dict(tokenizers)
    self.text_vocab, self.text_ids = text_vocab, text_ids
    mean, std = (np.asarray(v, np.float32) for v in modalities.PIXEL_STATS[pixel_normalization])
    self._pixel_scale, self._pixel_shift = 1.0 / (255.0 * std), -mean / std

  def modality_for(self, name: str) -> str:
    """The model modality a condition named `name` feeds (rgb -> rgb pixels or tok_rgb)."""
    if name in self.model_names:
      return name
    if name in modalities.RAW_MODALITIES:
      for candidate in (name, f"tok_{name}"):
        if candidate in self.model_names:
          return candidate
    known = sorted(set(self.model_names) | {modalities.get(n).source.name
                                            for n in self.model_names})
    raise UsageError(f"the model was not trained on {name!r}: it knows {known}")

  def encode(self, name: str, values: Sequence[Any]) -> tuple[str, dict[str, np.ndarray]]:
    """(model modality, entry) for one value per sample."""
    target = self.modality_for(name)
    if target not in self.input_names:
      raise UsageError(f"{target!r} is not an input of this model (its inputs: "
                       f"{list(self.input_names)})")
    spec = modalities.get(target)
    values = [read_value(name, value) for value in values]
    if spec.kind == Kind.SEQUENCE:
      return target, self._sequence(spec, values)
    if spec.kind == Kind.PIXELS:
      return target, self._pixels(spec, values)
    if spec.kind == Kind.FEATURE_MAP:
      return target, self._features(spec, values)
    return target, self._grid(spec, name, values)

  # By kind -------------------------------------------------------------------------------

  def _sequence(self, spec, values) -> dict[str, np.ndarray]:
    from tokenizers_vq.boxes import BoxEncoder
    from tokenizers_vq.text import TextEncoder
    encoder = BoxEncoder(self.text_vocab) if spec.name == "det" else TextEncoder(self.text_vocab)
    texts = []
    for value in values:
      if spec.name == "det" and isinstance(value, Mapping):
        value = {"boxes": np.asarray(value["boxes"], np.float32).reshape(-1, 4),
                 "classes": list(value["classes"])}
      ids = np.asarray(encoder(value), np.int32)
      texts.append(self._renumber_sentinels(ids))
    entry = sequence_entry(texts, spec.max_length, self.text_ids)
    # A text with gaps keeps no [EOS] of its own when its last span reaches the end: the
    # span holds it, as in training.
    for row, text in enumerate(texts):
      if self._has_gaps(text) and self.text_ids.is_sentinel(text[-1:]).any():
        entry["input_tokens"][row, len(text):] = self.text_ids.pad
        entry["input_mask"][row, len(text):] = False
    return entry

  def _has_gaps(self, ids: np.ndarray) -> bool:
    return bool(self.text_ids.is_sentinel(ids).any())

  def _renumber_sentinels(self, ids: np.ndarray) -> np.ndarray:
    """Gaps are numbered from [S_1] in order, as training numbers spans, whatever the
    user wrote."""
    ids = ids.copy()
    gaps = np.flatnonzero(self.text_ids.is_sentinel(ids))
    ids[gaps] = self.text_ids.first_sentinel + FIRST_SPAN + np.arange(len(gaps))
    return ids

  def _centre_crop(self, raw_name: str, value: np.ndarray) -> np.ndarray:
    crop = augment_lib.AugmentConfig(resolution=self.layout.resolution, train=False)
    return augment_lib.augment({raw_name: value}, crop)[raw_name]

  def _pixels(self, spec, values) -> dict[str, np.ndarray]:
    images = []
    for value in values:
      image = np.asarray(value)
      if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise UsageError(f"{spec.name}: expected a uint8 image [H, W, 3], got "
                         f"{image.dtype} {list(image.shape)}")
      image = self._centre_crop(spec.source.name, image)
      images.append(image * self._pixel_scale + self._pixel_shift)
    n = spec.num_tokens(self.layout)
    return {"tokens": np.stack(images).astype(np.float32),
            "input_mask": np.ones((len(images), n), bool)}

  def _features(self, spec, values) -> dict[str, np.ndarray]:
    grid, channels = self.layout.grid, spec.source.channels
    maps = []
    for value in values:
      value = np.asarray(value, np.float32)
      if value.shape != (grid, grid, channels):
        raise UsageError(f"{spec.name}: expected a feature map [{grid}, {grid}, {channels}], "
                         f"got {list(value.shape)}")
      maps.append(value.reshape(grid * grid, channels))
    return {"tokens": np.stack(maps), "input_mask": np.ones((len(maps), grid * grid), bool)}

  def _grid(self, spec, given_name: str, values) -> dict[str, np.ndarray]:
    n, grid = spec.num_tokens(self.layout), self.layout.grid
    tokens = []
    raws = []
    for value in values:
      array = np.asarray(value)
      if given_name == spec.name and array.dtype.kind in "iu" and array.size == n:
        tokens.append(array.reshape(n).astype(np.int32))  # token ids as they are
      else:
        raws.append(array)
    if raws and tokens:
      raise UsageError(f"{spec.name}: give either token ids for every sample or raw values "
                       "for every sample")
    if raws:
      tokens = list(self._tokenize(spec, raws))
    ids = np.stack(tokens)
    if ids.min() < 0 or ids.max() >= spec.vocab_size:
      raise UsageError(f"{spec.name}: token ids must lie in [0, {spec.vocab_size})")
    return {"tokens": ids.reshape(len(ids), grid * grid),
            "input_mask": np.ones((len(ids), n), bool)}

  def _tokenize(self, spec, raws: list[np.ndarray]) -> np.ndarray:
    tokenizer = self.tokenizers.get(spec.name)
    if tokenizer is None:
      raise UsageError(f"no tokenizer for {spec.name}: the model's token datasets record "
                       f"none; pass --tokenizers {spec.name}=WORKDIR")
    raw_name = spec.source.name
    if hasattr(tokenizer, "check_tokens"):  # a VQ-VAE: it crops to its own resolution
      from tokenizers_vq.tokenize import encode_batch
      return encode_batch(tokenizer, [{raw_name: raw} for raw in raws], len(raws))
    return np.stack([tokenizer.encode(self._centre_crop(raw_name, raw), self.layout.grid)
                     for raw in raws])


def mask_region(entry: Mapping[str, np.ndarray], box: Sequence[float],
                layout: modalities.Layout, outside: bool = False) -> dict[str, np.ndarray]:
  """A grid entry with the tokens whose patch centre lies in `box` (xmin, ymin, xmax,
  ymax in [0, 1]) hidden: generating that modality then fills the box in (with
  `outside`, everything around it)."""
  xmin, ymin, xmax, ymax = (float(v) for v in box)
  if not (0 <= xmin < xmax <= 1 and 0 <= ymin < ymax <= 1):
    raise UsageError(f"region {list(box)}: expected xmin < xmax and ymin < ymax in [0, 1]")
  centres = (np.arange(layout.grid) + 0.5) / layout.grid
  inside = (((centres >= ymin) & (centres <= ymax))[:, None]
            & ((centres >= xmin) & (centres <= xmax))[None, :]).reshape(-1)
  hide = ~inside if outside else inside
  mask = np.asarray(entry["input_mask"], bool) & ~hide[None, :]
  return {**entry, "input_mask": mask}
