"""Color palettes (4M-21's `color_palette`): k-means of the photo's pixels.

4M-21 made its palettes with PyPalette (adamgrieger/pypalette): k-means++ seeding and
Lloyd iterations over the RGB values, Euclidean in RGB, for each size 1..7, one of which
a training sample draws at random. A fourm record holds one palette, so the labeler
draws its size K uniformly in 1..`COLOR_PALETTE_MAX` per image (`num_colors` fixes it),
from a generator seeded by the image's bytes: the same photo always gets the same
palette. The clustering is that same k-means in numpy (twenty lines, deterministic; no
scikit-learn for one clustering), run over the distinct colors of at most `MAX_PIXELS`
pixels weighted by their counts, which is exact for flat-colored images. A palette is
uint8 [K', 3], most pixels first, K' = min(K, number of distinct colors).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from fourm.modalities import COLOR_PALETTE_MAX

MAX_PIXELS = 1 << 14     # a random subset of larger images' pixels is clustered
MAX_ITERATIONS = 100


def kmeans_palette(image: np.ndarray, num_colors: int, rng: np.random.Generator
                   ) -> np.ndarray:
  """uint8 [K', 3]: the k-means centers of the image's colors, largest cluster first."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
  if not 1 <= num_colors <= COLOR_PALETTE_MAX:
    raise ValueError(f"a palette has 1..{COLOR_PALETTE_MAX} colors, asked for {num_colors}")
  pixels = image.reshape(-1, 3)
  if len(pixels) > MAX_PIXELS:
    pixels = pixels[rng.choice(len(pixels), MAX_PIXELS, replace=False)]
  codes, counts = np.unique(pixels.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], np.int32),
                            return_counts=True)  # one integer per color: a fast unique
  colors = np.stack([codes >> 16, (codes >> 8) & 255, codes & 255], -1).astype(np.float64)
  weights = counts.astype(np.float64)
  k = min(num_colors, len(colors))

  # k-means++: each next seed drawn with probability ~ weight x squared distance.
  centers = colors[[rng.choice(len(colors), p=weights / weights.sum())]]
  for _ in range(k - 1):
    mass = weights * _squared_distances(colors, centers).min(1)
    centers = np.vstack([centers, colors[rng.choice(len(colors), p=mass / mass.sum())]])

  for _ in range(MAX_ITERATIONS):
    assignment = _squared_distances(colors, centers).argmin(1)
    mass = np.bincount(assignment, weights, minlength=k)
    sums = np.stack([np.bincount(assignment, weights * colors[:, c], minlength=k)
                     for c in range(3)], -1)
    previous = np.rint(centers)
    # An emptied cluster keeps its center.
    centers = np.where(mass[:, None] > 0, sums / np.maximum(mass, 1e-12)[:, None], centers)
    if np.array_equal(np.rint(centers), previous):  # PyPalette's test: no color changed
      break
  assignment = _squared_distances(colors, centers).argmin(1)
  sizes = np.bincount(assignment, weights, minlength=k)
  order = [j for j in np.argsort(-sizes, kind="stable") if sizes[j] > 0]
  return np.clip(np.rint(centers[order]), 0, 255).astype(np.uint8)


def _squared_distances(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
  """[N, K]: |p|^2 - 2 p.c + |c|^2, clipped at 0 against round-off."""
  return np.maximum((points ** 2).sum(1)[:, None] - 2 * points @ centers.T +
                    (centers ** 2).sum(1)[None], 0.0)


def image_rng(image: np.ndarray, seed: int = 0) -> np.random.Generator:
  """A generator seeded by the image's bytes (and `seed`)."""
  return np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(image).tobytes())])


class PaletteLabeler:
  """images -> color_palette uint8 [K, 3] each (no network: `tiny()` is the same)."""

  def __init__(self, num_colors: int | None = None, seed: int = 0):
    if num_colors is not None and not 1 <= num_colors <= COLOR_PALETTE_MAX:
      raise ValueError(f"num_colors must be in 1..{COLOR_PALETTE_MAX}, got {num_colors}")
    self.num_colors, self.seed = num_colors, seed
    size = (f"{num_colors} colors" if num_colors else
            f"1..{COLOR_PALETTE_MAX} colors drawn per image")
    self.name = f"k-means++ palette in RGB, {size}, seed {seed}"

  @classmethod
  def tiny(cls, device: str = "cpu") -> PaletteLabeler:
    del device  # runs on the CPU
    return cls()

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for image in images:
      rng = image_rng(image, self.seed)
      k = self.num_colors or int(rng.integers(1, COLOR_PALETTE_MAX + 1))
      out.append(kmeans_palette(image, k, rng))
    return out
