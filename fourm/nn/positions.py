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
