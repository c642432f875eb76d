"""The measures behind 4M-21's `metadata` modality: image statistics and counts.

A metadata record is float32 [21] in `modalities.METADATA_KEYS` order, NaN where a kind
is absent (`metadata_vector`). The reference (apple/ml-4m) ships only the binning of
these numbers (tokenizers_vq/metadata.py), not the code that measured them; the
definitions here follow the 4M-21 paper's descriptions, and their value ranges match
the reference's bins (e.g. brightness over 0..255, contrast over 0..127):

* brightness: mean luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), 0..255;
* contrast: RMS contrast, the standard deviation of luma, 0..127.5;
* saturation: mean HSV saturation (max - min) / max, scaled to 0..255;
* colorfulness: Hasler & Suesstrunk (2003), std + 0.3 mean of the opponent channels
  rg = R - G and yb = (R + G) / 2 - B, about 0..150 for photos;
* entropy: Shannon entropy in bits of the 256-bin luma histogram, 0..8;
* caption_n_chars / _words / _sentences: characters, whitespace-separated words, and
  sentences (runs of text ended by . ! or ?, a trailing unended run counts);
* walkability / objectness: the share of pixels whose semantic class is walkable
  (floor, road, grass, ...) / a countable object (COCO's "things");
* semantic_diversity: the number of distinct semantic classes in the image;
* geometric_complexity: the angular (spherical) variance of the surface normals,
  1 - |mean of the unit normals|, 0 (one plane) .. 1;
* occlusion_score: the share of pixels on an occlusion edge, a depth ratio of more than
  `OCCLUSION_RATIO` to a 4-neighbour (both sides of the jump count), 0..1.

Callers say where the counts come from (`fourm/data/synthetic.py` exactly, the metadata
pseudo-labeler from the record's other modalities). This module reads numpy arrays only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from fourm.modalities import METADATA_KEYS

LUMA = np.array([0.299, 0.587, 0.114])
# A depth jump of more than 10 % between neighbouring pixels: on the synthetic world's
# exact depth this marks its surfaces' occluding contours and (almost: 0.02 % of the
# pixels at 64 px, none at 128 px and up) nothing else, grazing floor included.
OCCLUSION_RATIO = 1.1
_SENTENCE = re.compile(r"[^.!?]*[^.!?\s][^.!?]*(?:[.!?]+|$)")


def metadata_vector(values: Mapping[str, float]) -> np.ndarray:
  """{kind: value} -> float32 [21] in METADATA_KEYS order, NaN where a kind is absent."""
  unknown = sorted(set(values) - set(METADATA_KEYS))
  if unknown:
    raise KeyError(f"unknown metadata kinds {unknown}; known: {list(METADATA_KEYS)}")
  return np.array([values.get(key, np.nan) for key in METADATA_KEYS], np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
  return np.asarray(rgb, np.float64)[..., :3] @ LUMA


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
  """Size, brightness, contrast, saturation, colorfulness and entropy of a uint8 image."""
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}")
  pixels = rgb.reshape(-1, 3).astype(np.float64)
  gray = luma(pixels)
  high, low = pixels.max(1), pixels.min(1)
  saturation = np.where(high > 0, (high - low) / np.where(high > 0, high, 1.0), 0.0)
  return {"original_width": float(rgb.shape[1]), "original_height": float(rgb.shape[0]),
          "brightness": float(gray.mean()), "contrast": float(gray.std()),
          "saturation": float(255.0 * saturation.mean()),
          "colorfulness": colorfulness(pixels), "entropy": entropy(gray)}


def colorfulness(pixels: np.ndarray) -> float:
  """Hasler & Suesstrunk's colorfulness of RGB values [..., 3] on a 0..255 scale."""
  pixels = np.asarray(pixels, np.float64).reshape(-1, 3)
  rg = pixels[:, 0] - pixels[:, 1]
  yb = 0.5 * (pixels[:, 0] + pixels[:, 1]) - pixels[:, 2]
  return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def entropy(gray: np.ndarray) -> float:
  """Shannon entropy (bits) of luma values 0..255 in 256 bins."""
  counts = np.bincount(np.clip(np.rint(np.ravel(gray)), 0, 255).astype(np.intp), minlength=256)
  p = counts[counts > 0] / counts.sum()
  return float(max(0.0, -(p * np.log2(p)).sum()))


def caption_counts(caption: str) -> dict[str, float]:
  text = caption.strip()
  return {"caption_n_chars": float(len(text)), "caption_n_words": float(len(text.split())),
          "caption_n_sentences": float(len(_SENTENCE.findall(text)))}


def class_share(semseg: np.ndarray, class_ids: Iterable[int]) -> float:
  """The share of pixels whose class is one of `class_ids`."""
  ids = np.fromiter(class_ids, np.int64)
  return float(np.isin(semseg, ids).mean()) if ids.size else 0.0


def semantic_diversity(semseg: np.ndarray) -> float:
  return float(np.unique(semseg).size)


def geometric_complexity(normal: np.ndarray) -> float:
  """Spherical variance of unit normals [H, W, 3]: 0 for one plane, up to 1."""
  vectors = np.asarray(normal, np.float64).reshape(-1, 3)
  length = np.linalg.norm(vectors, axis=1, keepdims=True)
  unit = vectors / np.where(length > 0, length, 1.0)
  return float(np.clip(1.0 - np.linalg.norm(unit.mean(0)), 0.0, 1.0))


def occlusion_edges(depth: np.ndarray, ratio: float = OCCLUSION_RATIO) -> np.ndarray:
  """bool [H, W]: pixels with a depth over `ratio` times (or under 1 / `ratio` of) a
  4-neighbour's, both sides of each jump."""
  depth = np.maximum(np.asarray(depth, np.float64), 1e-12)
  edges = np.zeros(depth.shape, bool)
  for axis in (0, 1):
    a = np.take(depth, range(depth.shape[axis] - 1), axis=axis)
    b = np.take(depth, range(1, depth.shape[axis]), axis=axis)
    jump = np.maximum(a, b) > ratio * np.minimum(a, b)
    before = [slice(None)] * 2
    after = [slice(None)] * 2
    before[axis], after[axis] = slice(0, -1), slice(1, None)
    edges[tuple(before)] |= jump
    edges[tuple(after)] |= jump
  return edges


def occlusion_score(depth: np.ndarray) -> float:
  return float(occlusion_edges(depth).mean())
