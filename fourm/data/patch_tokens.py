"""Ground-truth patch tokens: fixed quantizers that turn exact labels into token grids.

The 4M model learns over VQ-VAE tokens (tokenizers_vq/). Those have to be trained
first; these need no training and are exact functions of the labels, so the model, the
train loop and the demo can run on the synthetic world before (or without) learned
tokenizers. Each quantizer summarizes one patch of the layout's grid by one id, and
which one a token-grid modality gets follows from what its raw values mean (the
registry's `RawSpec.values`), so a new modality of a known meaning has one for free:

  color      mean color, 16 levels per channel            ids [0, 4096)    (tok_rgb)
  distance   median depth, log-spaced bins 0.1 m .. 100 m  ids [0, 128)     (tok_depth)
  direction  mean normal, octahedral map on a 16 x 16 grid ids [0, 256)     (tok_normal)
  classes    majority class of the patch                   ids [0, classes) (tok_semseg)

`decode` maps ids back to the patch value (bin centers), for looking at predictions.
They are deliberately coarse: a stand-in with the right shapes and vocabularies, not
a replacement for the tokenizers, and the README says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fourm import modalities
from fourm.data import augment, derived, records
from fourm.errors import RecordError, UsageError

RGB_LEVELS = 16
DEPTH_BINS, DEPTH_RANGE = 128, (0.1, 100.0)
NORMAL_GRID = 16


def patches(image: np.ndarray, grid: int) -> np.ndarray:
  """[R, R, ...] -> [G, G, P*P, ...]: the pixels of each patch of a G x G grid."""
  size = image.shape[0]
  if image.shape[1] != size or size % grid:
    raise ValueError(f"a {list(image.shape[:2])} image does not split into {grid} x {grid} "
                     "square patches")
  p = size // grid
  blocks = image.reshape(grid, p, grid, p, *image.shape[2:]).swapaxes(1, 2)
  return blocks.reshape(grid, grid, p * p, *image.shape[2:])


def _encode_rgb(rgb: np.ndarray, grid: int) -> np.ndarray:
  mean = patches(rgb.astype(np.float32), grid).mean(axis=2)
  levels = np.clip((mean * RGB_LEVELS / 256.0).astype(np.int32), 0, RGB_LEVELS - 1)
  return (levels[..., 0] * RGB_LEVELS + levels[..., 1]) * RGB_LEVELS + levels[..., 2]


def _decode_rgb(ids: np.ndarray) -> np.ndarray:
  levels = np.stack([ids // RGB_LEVELS ** 2, ids // RGB_LEVELS % RGB_LEVELS,
                     ids % RGB_LEVELS], -1)
  return ((levels + 0.5) * 256.0 / RGB_LEVELS).astype(np.uint8)


def _depth_edges() -> np.ndarray:
  low, high = np.log(DEPTH_RANGE[0]), np.log(DEPTH_RANGE[1])
  return np.linspace(low, high, DEPTH_BINS + 1)


def _encode_depth(depth: np.ndarray, grid: int) -> np.ndarray:
  median = np.median(patches(depth, grid), axis=2)
  low, high = np.log(DEPTH_RANGE[0]), np.log(DEPTH_RANGE[1])
  position = (np.log(np.clip(median, *DEPTH_RANGE)) - low) / (high - low)
  return np.clip((position * DEPTH_BINS).astype(np.int32), 0, DEPTH_BINS - 1)


def _decode_depth(ids: np.ndarray) -> np.ndarray:
  edges = _depth_edges()
  return np.exp((edges[ids] + edges[ids + 1]) / 2).astype(np.float32)


def _sign(v: np.ndarray) -> np.ndarray:
  return np.where(v >= 0, 1.0, -1.0)


def _octahedral(n: np.ndarray) -> np.ndarray:
  """Unit vectors [..., 3] -> the square [-1, 1]^2 (octahedral map, one-to-one); the
  z > 0 hemisphere fills the center diamond, the other folds over the corners."""
  n = n / np.maximum(np.abs(n).sum(-1, keepdims=True), 1e-12)
  x, y, z = n[..., 0], n[..., 1], n[..., 2]
  fx = np.where(z < 0, (1 - np.abs(y)) * _sign(x), x)
  fy = np.where(z < 0, (1 - np.abs(x)) * _sign(y), y)
  return np.stack([fx, fy], -1)


def _from_octahedral(point: np.ndarray) -> np.ndarray:
  x, y = point[..., 0], point[..., 1]
  z = 1 - np.abs(x) - np.abs(y)
  fold = np.maximum(-z, 0)
  n = np.stack([x - fold * _sign(x), y - fold * _sign(y), z], -1)
  return n / np.linalg.norm(n, axis=-1, keepdims=True)


# Camera-frame normals of visible surfaces point back at the camera (z < 0, z being
# forward): flipping z puts them in the center diamond, where the cells are finest.
_TOWARD_CAMERA = np.array([1, 1, -1], np.float32)


def _encode_normal(normal: np.ndarray, grid: int) -> np.ndarray:
  mean = patches(normal, grid).mean(axis=2)
  mean = mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)
  point = _octahedral(mean * _TOWARD_CAMERA)
  cells = np.clip(((point + 1) / 2 * NORMAL_GRID).astype(np.int32), 0, NORMAL_GRID - 1)
  return cells[..., 0] * NORMAL_GRID + cells[..., 1]


def _decode_normal(ids: np.ndarray) -> np.ndarray:
  cells = np.stack([ids // NORMAL_GRID, ids % NORMAL_GRID], -1)
  point = (cells + 0.5) / NORMAL_GRID * 2 - 1
  return (_from_octahedral(point) * _TOWARD_CAMERA).astype(np.float32)


def _encode_semseg(semseg: np.ndarray, grid: int) -> np.ndarray:
  classes = patches(semseg, grid).astype(np.int64)
  counts = np.zeros(classes.shape[:2] + (int(classes.max()) + 1,), np.int64)
  rows, cols = np.indices(classes.shape[:2])
  for k in range(classes.shape[2]):
    np.add.at(counts, (rows, cols, classes[..., k]), 1)
  return counts.argmax(-1).astype(np.int32)  # ties go to the lower class id


def _decode_semseg(ids: np.ndarray) -> np.ndarray:
  return ids.astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class PatchQuantizer:
  """One modality's fixed quantizer: raw [R, R, ...] <-> int32 ids [G, G].

  It is a grid tokenizer (`tokenizers_vq.grid.GridTokenizer`) for any layout: the
  grid is the model's."""
  modality: str
  encode_fn: Callable[[np.ndarray, int], np.ndarray]
  decode_fn: Callable[[np.ndarray], np.ndarray]
  num_ids: int

  @property
  def raw_name(self) -> str:
    return modalities.get(self.modality).source.name

  @property
  def num_codes(self) -> int:
    return self.num_ids

  def grid_at(self, layout: modalities.Layout) -> int:
    return layout.grid

  def encode(self, raw: np.ndarray, grid: int) -> np.ndarray:
    ids = self.encode_fn(raw, grid).astype(np.int32)
    assert ids.max() < self.num_ids <= modalities.get(self.modality).vocab_size
    return ids

  def decode(self, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= self.num_ids):
      bad = int(ids.max() if ids.max() >= self.num_ids else ids.min())
      raise UsageError(f"{self.modality}: token id {bad} is not one of the patch "
                       f"quantizer's ids [0, {self.num_ids})")
    return self.decode_fn(ids)

  def tokenize(self, raws: Sequence[np.ndarray], layout: modalities.Layout) -> np.ndarray:
    """Full-size raw values -> ids [N, G, G], each center-cropped to the layout first."""
    return np.stack([self.encode(augment.center_crop(self.raw_name, raw, layout.resolution),
                                 layout.grid) for raw in raws])

  def detokenize(self, ids: np.ndarray) -> np.ndarray:
    """ids [N, G, G] -> raw values at patch resolution [N, G, G, ...]."""
    return np.stack([self.decode(grid) for grid in np.asarray(ids)])


# What the values mean -> (encode, decode, ids used): the quantizer every grid modality
# of that meaning gets. Class ids are stored as uint8, so 256 ids cover them.
_BY_VALUES = {
    modalities.Values.COLOR: (_encode_rgb, _decode_rgb, RGB_LEVELS ** 3),
    modalities.Values.DISTANCE: (_encode_depth, _decode_depth, DEPTH_BINS),
    modalities.Values.DIRECTION: (_encode_normal, _decode_normal, NORMAL_GRID ** 2),
    modalities.Values.CLASSES: (_encode_semseg, _decode_semseg, 256),
}


def quantizable() -> tuple[str, ...]:
  """The registered token-grid modalities that have a patch quantizer, in registry order."""
  return tuple(spec.name for spec in modalities.MODALITIES.values()
               if spec.kind == modalities.Kind.IMAGE_TOKENS and not spec.derived
               and spec.source.values in _BY_VALUES)


def quantizer_for(name: str) -> PatchQuantizer:
  """The ground-truth patch quantizer of token-grid modality `name` (a variant's,
  src_tok_rgb, derived on first use like `modalities.get`)."""
  spec = modalities.get(name) if modalities.is_known(name) else None
  if (spec is None or spec.kind != modalities.Kind.IMAGE_TOKENS
      or spec.source.values not in _BY_VALUES):
    why = ("not a registered modality" if spec is None else
           f"a {spec.kind.value} modality of {str(spec.source.values)!r} values")
    raise UsageError(f"no ground-truth patch quantizer for {name!r} ({why}); there are "
                     f"quantizers for {list(quantizable())}")
  encode_fn, decode_fn, num_ids = _BY_VALUES[spec.source.values]
  num_ids = min(num_ids, spec.vocab_size)
  return PatchQuantizer(name, encode_fn, decode_fn, num_ids)


def tokenize_sample(sample: dict[str, Any], quantizers: Sequence[PatchQuantizer],
                    grid: int, *, optional: bool = False) -> dict[str, np.ndarray]:
  """The tokens of each quantizer's raw field. A sample lacking a field is an error, or
  with `optional` gets no tokens of it (absent, never zero-filled)."""
  out = {}
  for quantizer in quantizers:
    raw = sample.get(quantizer.raw_name)
    if raw is None and optional:
      continue
    if raw is None:
      raise RecordError(f"has no {quantizer.raw_name!r} to make {quantizer.modality} from",
                        field=quantizer.raw_name)
    try:
      out[quantizer.modality] = quantizer.encode(raw, grid)
    except ValueError as error:
      raise RecordError(str(error), field=quantizer.raw_name) from None
  return out


def write_patch_tokens(data: str, out: str, layout: modalities.Layout,
                       names: Sequence[str] | None = None, *, progress: bool = True,
                       log: Callable[[str], None] = print):
  """Writes the patch tokens of every record of `data` into `out` (read them side by
  side: `RecordSource([data, out])`). Resumable: finished shards are kept. By default,
  every quantizable token grid whose raw source the dataset stores.

  A record that lacks a raw field (an instruction dataset holds only its task's answer)
  gets a token record without its tokens, and the job logs how many records did
  (`derived.write_derived`'s `optional`); a dataset in which no record has it is an error."""
  if names is None:
    stored = records.DatasetInfo.load(data).modalities
    names = tuple(n for n in quantizable() if modalities.get(n).source.name in stored)
  quantizers = [quantizer_for(name) for name in names]

  def derive(samples):
    return [tokenize_sample(sample, quantizers, layout.grid, optional=True)
            for sample in samples]

  # The code counts name the quantizers' version: tokens of coarser or finer bins in an
  # existing output are another job's, not work to resume.
  job = {"method": "ground-truth patches", "modalities": list(names),
         "grid": layout.grid, "codes": {q.modality: q.num_ids for q in quantizers}}
  return derived.write_derived(
      data, out, derive, job=job, name="patch_tokens",
      modalities=sorted({q.raw_name for q in quantizers}), progress=progress, log=log,
      optional={q.modality: q.raw_name for q in quantizers},
      metadata={"tokenizer": "ground-truth patch quantizers (fourm/data/patch_tokens.py)"})
