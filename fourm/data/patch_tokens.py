"""Ground-truth patch tokens: fixed quantisers that turn exact labels into token grids.

The 4M model learns over VQ-VAE tokens (tokenizers_vq/). Those have to be trained
first; these need no training and are exact functions of the labels, so the model, the
train loop and the demo can run on the synthetic world before (or without) learned
tokenizers. Each quantiser summarises one patch of the layout's grid by one id:

  tok_rgb     mean colour, 16 levels per channel            ids [0, 4096)   of 16384
  tok_depth   median depth, log-spaced bins 0.1 m .. 100 m   ids [0, 1024)   of 8192
  tok_normal  mean normal, octahedral map on a 64 x 64 grid  ids [0, 4096)   of 8192
  tok_semseg  majority class of the patch                    ids [0, classes) of 4096

`decode` maps ids back to the patch value (bin centres), for looking at predictions.
They are deliberately coarse: a stand-in with the right shapes and vocabularies, not
a replacement for the tokenizers, and the README says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fourm import modalities
from fourm.data import derived
from fourm.errors import RecordError, UsageError

RGB_LEVELS = 16
DEPTH_BINS, DEPTH_RANGE = 1024, (0.1, 100.0)
NORMAL_GRID = 64


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
  z > 0 hemisphere fills the centre diamond, the other folds over the corners."""
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
# forward): flipping z puts them in the centre diamond, where the cells are finest.
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
  """One modality's fixed quantiser: raw [R, R, ...] <-> int32 ids [G, G]."""
  modality: str
  encode_fn: Callable[[np.ndarray, int], np.ndarray]
  decode_fn: Callable[[np.ndarray], np.ndarray]
  num_ids: int

  @property
  def raw_name(self) -> str:
    return modalities.get(self.modality).source.name

  def encode(self, raw: np.ndarray, grid: int) -> np.ndarray:
    ids = self.encode_fn(raw, grid).astype(np.int32)
    assert ids.max() < self.num_ids <= modalities.get(self.modality).vocab_size
    return ids

  def decode(self, ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= self.num_ids):
      bad = int(ids.max() if ids.max() >= self.num_ids else ids.min())
      raise UsageError(f"{self.modality}: token id {bad} is not one of the patch "
                       f"quantiser's ids [0, {self.num_ids})")
    return self.decode_fn(ids)


QUANTIZERS = {
    "tok_rgb": PatchQuantizer("tok_rgb", _encode_rgb, _decode_rgb, RGB_LEVELS ** 3),
    "tok_depth": PatchQuantizer("tok_depth", _encode_depth, _decode_depth, DEPTH_BINS),
    "tok_normal": PatchQuantizer("tok_normal", _encode_normal, _decode_normal,
                                 NORMAL_GRID ** 2),
    "tok_semseg": PatchQuantizer("tok_semseg", _encode_semseg, _decode_semseg, 256),
}


def _quantizers(names: Sequence[str]) -> list[PatchQuantizer]:
  unknown = [name for name in names if name not in QUANTIZERS]
  if unknown:
    raise UsageError(f"no ground-truth patch quantiser for {unknown}; there are "
                     f"{sorted(QUANTIZERS)}")
  return [QUANTIZERS[name] for name in names]


def tokenize_sample(sample: dict[str, Any], quantizers: Sequence[PatchQuantizer],
                    grid: int) -> dict[str, np.ndarray]:
  out = {}
  for quantizer in quantizers:
    raw = sample.get(quantizer.raw_name)
    if raw is None:
      raise RecordError(f"has no {quantizer.raw_name!r} to make {quantizer.modality} from",
                        field=quantizer.raw_name)
    try:
      out[quantizer.modality] = quantizer.encode(raw, grid)
    except ValueError as error:
      raise RecordError(str(error), field=quantizer.raw_name) from None
  return out


def write_patch_tokens(data: str, out: str, layout: modalities.Layout,
                       names: Sequence[str] = tuple(QUANTIZERS), *, progress: bool = True,
                       log: Callable[[str], None] = print):
  """Writes the patch tokens of every record of `data` into `out` (read them side by
  side: `RecordSource([data, out])`). Resumable: finished shards are kept."""
  quantizers = _quantizers(names)

  def derive(samples):
    return [tokenize_sample(sample, quantizers, layout.grid) for sample in samples]

  job = {"method": "ground-truth patches", "modalities": list(names),
         "grid": layout.grid}
  return derived.write_derived(
      data, out, derive, job=job, name="patch_tokens",
      modalities=sorted({q.raw_name for q in quantizers}), progress=progress, log=log,
      metadata={"tokenizer": "ground-truth patch quantisers (fourm/data/patch_tokens.py)"})
