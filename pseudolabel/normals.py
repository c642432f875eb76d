"""Surface normals from depth and the camera intrinsics.

No surface-normal network ships in a form transformers loads (4M's normals came from
Omnidata's DPT-Hybrid, published as a raw state dict for Omnidata's own code), so the
normals labeler derives them from the depth labeler's map: back-project every pixel
to a 3D point, take the tangent vectors along the image axes, and cross them.

At a depth discontinuity the central difference would straddle two surfaces, so each
tangent is the one-sided difference (left or right, up or down) with the smaller depth
change: pixels next to an occluding edge take the slope of their own surface.

Normals are unit vectors in the camera frame (x right, y down, z forward) pointing
toward the camera (n . p < 0 for the surface point p), as the synthetic world stores
them. Relative depth (unknown scale and shift) gives normals that are right where the
shift is small; scale alone does not change them.

Photos carry no intrinsics; `DEFAULT_FOV_DEG` (horizontal field of view of a typical
phone or web photo) stands in, with the principal point at the image center.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_FOV_DEG = 60.0


def intrinsics_from_fov(height: int, width: int, fov_deg: float = DEFAULT_FOV_DEG
                        ) -> tuple[float, float, float, float]:
  """(fx, fy, cx, cy) in pixels for a horizontal field of view; square pixels, centered."""
  focal = width / 2 / np.tan(np.radians(fov_deg) / 2)
  return float(focal), float(focal), width / 2, height / 2


def back_project(depth: np.ndarray, intrinsics: tuple[float, float, float, float]) -> np.ndarray:
  """z-depth [H, W] -> camera-frame points [H, W, 3]; pixel (col, row) centered at +0.5."""
  fx, fy, cx, cy = intrinsics
  height, width = depth.shape
  x = (np.arange(width) + 0.5 - cx) / fx
  y = (np.arange(height) + 0.5 - cy) / fy
  z = depth.astype(np.float64)
  return np.stack([z * x[None, :], z * y[:, None], z], axis=-1)


def _tangent(points: np.ndarray, axis: int) -> np.ndarray:
  """Per-pixel difference along `axis`, one-sided toward the smaller depth change."""
  step = np.diff(points, axis=axis)
  pad_first = [(0, 0)] * 3
  pad_first[axis] = (1, 0)
  pad_last = [(0, 0)] * 3
  pad_last[axis] = (0, 1)
  backward = np.pad(step, pad_first, mode="edge")   # p[i] - p[i-1]
  forward = np.pad(step, pad_last, mode="edge")     # p[i+1] - p[i]
  use_forward = np.abs(forward[..., 2]) < np.abs(backward[..., 2])
  return np.where(use_forward[..., None], forward, backward)


def normals_from_depth(depth: np.ndarray, intrinsics: tuple[float, float, float, float]
                       ) -> np.ndarray:
  """Unit normals float32 [H, W, 3] (camera frame, facing the camera) of a z-depth map."""
  if depth.ndim != 2 or min(depth.shape) < 2:
    raise ValueError(f"normals need a depth map of at least 2 x 2 pixels, got {depth.shape}")
  points = back_project(depth, intrinsics)
  normal = np.cross(_tangent(points, 1), _tangent(points, 0))
  facing_away = (normal * points).sum(-1) > 0
  normal[facing_away] *= -1
  length = np.linalg.norm(normal, axis=-1, keepdims=True)
  # A flat patch of zero area has no normal; face the camera there.
  normal = np.where(length > 0, normal / np.where(length > 0, length, 1), [0.0, 0.0, -1.0])
  return normal.astype(np.float32)


class NormalsFromDepth:
  """images -> normals float32 [H, W, 3], from a depth labeler and a field of view."""

  def __init__(self, depth_labeler, fov_deg: float = DEFAULT_FOV_DEG):
    self.depth, self.fov_deg = depth_labeler, fov_deg
    self.name = f"from depth ({depth_labeler.name}), fov {fov_deg:g} deg"

  def from_depth(self, depths: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [normals_from_depth(d, intrinsics_from_fov(*d.shape, self.fov_deg)) for d in depths]

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    return self.from_depth(self.depth(images))
