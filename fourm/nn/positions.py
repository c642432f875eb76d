"""Fixed sin-cos position embeddings, 1D for sequences and 2D for square grids.

Shared by the 4M transformer and the VQ-VAE tokenizers.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
  """[length, dim]: [sin(p w_k), cos(p w_k)] with w_k = temperature^(-k / (dim/2))."""
  if dim % 2:
    raise ValueError(f"1D sin-cos positions need an even dim, got {dim}")
  omega = 1.0 / temperature ** (np.arange(dim // 2, dtype=np.float32) / (dim // 2))
  angles = np.arange(length, dtype=np.float32)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


@functools.cache
def sincos_2d(grid: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
  """[grid*grid, dim] for a square grid flattened row-major.

  The first half of each vector encodes the row and the second the column, each as
  [sin, cos] with w_k = temperature^(-k / (dim/4)): the reference's (MoCo-v3) layout,
  whose meshgrid names the row axis "w"; on a square grid the two agree exactly.
  """
  if dim % 4:
    raise ValueError(f"2D sin-cos positions need dim divisible by 4, got {dim}")
  omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float32) / (dim // 4))
  rows, cols = np.meshgrid(np.arange(grid, dtype=np.float32),
                           np.arange(grid, dtype=np.float32), indexing="ij")
  row_angles = rows.reshape(-1, 1) * omega[None, :]
  col_angles = cols.reshape(-1, 1) * omega[None, :]
  return np.concatenate([np.sin(row_angles), np.cos(row_angles),
                         np.sin(col_angles), np.cos(col_angles)], axis=1).astype(np.float32)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys' cubic convolution weights [N, 4] for taps at -1, 0, 1, 2 around each fraction
  t [N] (a = -0.75, torch's bicubic)."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def _bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[size_out, size_in]: torch's 1D bicubic resize (align_corners=False, edge taps
  clamped), as a matrix, in float64."""
  scale = size_in / size_out
  source = (np.arange(size_out) + 0.5) * scale - 0.5
  start = np.floor(source)
  weights = _cubic_weights(source - start)
  matrix = np.zeros((size_out, size_in))
  for tap in range(4):
    index = np.clip(start.astype(int) - 1 + tap, 0, size_in - 1)
    np.add.at(matrix, (np.arange(size_out), index), weights[:, tap])
  return matrix


@functools.cache
def sincos_2d_resized(built_grid: int, grid: int, dim: int) -> np.ndarray:
  """[grid*grid, dim]: the sin-cos positions of a `built_grid` model resized to `grid` the
  way the reference's VQ-VAE tokenizers do it (`F.interpolate(..., mode="bicubic")` of
  the buffer built at the training resolution): a tokenizer used away from its build size
  sees these, not `sincos_2d(grid)`. Equal grids give `sincos_2d` itself."""
  table = sincos_2d(built_grid, dim)
  if built_grid == grid:
    return table
  m = _bicubic_matrix(built_grid, grid)
  table = table.reshape(built_grid, built_grid, dim).astype(np.float64)
  return np.einsum("ri,ijd,cj->rcd", m, table, m).reshape(grid * grid, dim).astype(np.float32)
