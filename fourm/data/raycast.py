"""A small vectorized numpy ray caster: analytic ray-primitive hits, normals, hard shadows.

Rays are stored component-major, shape [3, P] (or [3, 1] when all rays share an origin
or a direction), so x, y, z are contiguous rows and a shared origin broadcasts for free.
Camera ray directions are deliberately *not* normalized: their camera-frame z is 1, so
the hit parameter t of a camera ray is its z-depth, with no conversion.

Every primitive reports only front-facing entry hits at t > EPS. For convex solids seen
from outside that is the first surface a ray meets, and it makes back faces, bottom caps
(which lie on the floor) and self-shadowing a non-issue. Misses are +inf, so the nearest
hit over many primitives is a plain `argmin`.

The world is y-up; all primitives rest upright, and only boxes and pyramids are turned
about the vertical axis (spheres, cylinders and cones are symmetric about it, so they
need no rotation at all).
"""

from __future__ import annotations

import functools
import math

import numpy as np

EPS = 1e-4            # smallest accepted hit distance, against re-hitting the start surface
SHADOW_OFFSET = 1e-3  # shadow rays start this far off the surface along its normal
_UP = np.array([0.0, 1.0, 0.0])


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-ray dot product of component-major vectors ([3, P] or [3, 1])."""
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _min_valid(t: np.ndarray, valid: np.ndarray) -> np.ndarray:
  return np.where(valid & (t > EPS), t, np.inf)


class Plane:
  """The one-sided plane normal . p = offset, visible from the side its normal points to."""

  def __init__(self, normal, offset: float):
    self.normal = np.asarray(normal, np.float64)
    self.offset = float(offset)

  def distance(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    facing = self.normal @ dirs
    t = (self.offset - self.normal @ origins) / facing
    return _min_valid(t, facing < 0)

  def normal_at(self, points: np.ndarray) -> np.ndarray:
    return np.broadcast_to(self.normal[:, None], points.shape)


class Sphere:

  def __init__(self, center, radius: float):
    self.center = np.asarray(center, np.float64)[:, None]
    self.radius = float(radius)

  def distance(self, origins, dirs):
    oc = origins - self.center
    a, b = _dot(dirs, dirs), _dot(oc, dirs)
    disc = b * b - a * (_dot(oc, oc) - self.radius ** 2)
    t = (-b - np.sqrt(disc)) / a  # the nearer root is the entry; NaN (no root) never passes
    return _min_valid(t, disc >= 0)

  def normal_at(self, points):
    return (points - self.center) / self.radius


class Cylinder:
  """Upright capped cylinder standing on `base` (the center of its bottom disc)."""

  def __init__(self, base, radius: float, height: float):
    self.base = np.asarray(base, np.float64)[:, None]
    self.radius, self.height = float(radius), float(height)

  def distance(self, origins, dirs):
    q = origins - self.base
    a = dirs[0] ** 2 + dirs[2] ** 2
    b = q[0] * dirs[0] + q[2] * dirs[2]
    disc = b * b - a * (q[0] ** 2 + q[2] ** 2 - self.radius ** 2)
    t_side = (-b - np.sqrt(disc)) / a
    y = q[1] + t_side * dirs[1]
    side = _min_valid(t_side, (disc >= 0) & (y >= 0) & (y <= self.height))
    # The top cap, entered from above only; the bottom cap sits on the floor, unseen.
    t_cap = (self.height - q[1]) / dirs[1]
    rho2 = (q[0] + t_cap * dirs[0]) ** 2 + (q[2] + t_cap * dirs[2]) ** 2
    cap = _min_valid(t_cap, (dirs[1] < 0) & (rho2 <= self.radius ** 2))
    return np.minimum(side, cap)

  def normal_at(self, points):
    q = points - self.base
    rho = np.sqrt(q[0] ** 2 + q[2] ** 2)
    # Whichever surface the point lies closer to: the cap or the side.
    on_cap = np.abs(q[1] - self.height) < np.abs(rho - self.radius)
    rho = np.maximum(rho, 1e-9)
    side = np.stack([q[0] / rho, np.zeros_like(rho), q[2] / rho])
    return np.where(on_cap, _UP[:, None], side)


class Cone:
  """Upright cone on `base` (center of its bottom disc), apex `height` above it."""

  def __init__(self, base, radius: float, height: float):
    self.base = np.asarray(base, np.float64)[:, None]
    self.radius, self.height = float(radius), float(height)

  def distance(self, origins, dirs):
    # x^2 + z^2 = k^2 (h - y)^2 in the base frame; w is the origin's depth below the apex.
    q = origins - self.base
    k2 = (self.radius / self.height) ** 2
    w = self.height - q[1]
    a = dirs[0] ** 2 + dirs[2] ** 2 - k2 * dirs[1] ** 2
    b = q[0] * dirs[0] + q[2] * dirs[2] + k2 * w * dirs[1]
    disc = b * b - a * (q[0] ** 2 + q[2] ** 2 - k2 * w * w)
    root = np.sqrt(disc)
    nearest = np.full(np.broadcast_shapes(a.shape, q[0].shape), np.inf)
    # Either root may be the entry (a changes sign with the ray's slope), and the
    # mirrored upper nappe must be cut away: keep the nearer root on the real cone.
    for t in ((-b - root) / a, (-b + root) / a):
      y = q[1] + t * dirs[1]
      nearest = np.minimum(nearest, _min_valid(t, (disc >= 0) & (y >= 0) & (y <= self.height)))
    return nearest

  def normal_at(self, points):
    q = points - self.base
    rho = np.maximum(np.sqrt(q[0] ** 2 + q[2] ** 2), 1e-9)  # the apex itself is a point
    n = np.stack([self.height * q[0] / rho, np.full_like(rho, self.radius),
                  self.height * q[2] / rho])
    return n / np.sqrt(self.height ** 2 + self.radius ** 2)


class ConvexPolyhedron:
  """The intersection of half-spaces normals[i] . p <= offsets[i] (outward unit normals).

  Hit by the slab test generalized to any planes: the ray is inside between the last
  plane it enters and the first it leaves. (A ray exactly parallel to a face is
  measure-zero here and not special-cased.)
  """

  def __init__(self, normals, offsets):
    self.normals = np.asarray(normals, np.float64)
    self.offsets = np.asarray(offsets, np.float64)[:, None]

  def distance(self, origins, dirs):
    facing = self.normals @ dirs
    t = (self.offsets - self.normals @ origins) / facing
    t_enter = np.where(facing < 0, t, -np.inf).max(0)
    t_leave = np.where(facing > 0, t, np.inf).min(0)
    return _min_valid(t_enter, t_enter <= t_leave)

  def normal_at(self, points):
    # The face a surface point lies on is the one whose plane it is closest to (~0,
    # all others negative).
    face = np.argmax(self.normals @ points - self.offsets, axis=0)
    return self.normals[face].T


def _yaw_matrix(yaw: float) -> np.ndarray:
  c, s = math.cos(yaw), math.sin(yaw)
  return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def box(center, yaw: float, half_size) -> ConvexPolyhedron:
  """An oriented box turned by `yaw` about the vertical axis."""
  axes = _yaw_matrix(yaw).T  # rows: the box's x, y, z axes in the world
  normals = np.concatenate([axes, -axes])
  half = np.asarray(half_size, np.float64)
  return ConvexPolyhedron(normals, normals @ np.asarray(center, np.float64) + np.tile(half, 2))


def pyramid(base, yaw: float, half_width: float, height: float) -> ConvexPolyhedron:
  """A square pyramid on `base` (center of its bottom square), turned by `yaw`."""
  sides = [(height, half_width, 0.0), (-height, half_width, 0.0),
           (0.0, half_width, height), (0.0, half_width, -height)]
  local = np.array(sides + [(0.0, -1.0, 0.0)])
  local /= np.linalg.norm(local, axis=1, keepdims=True)
  # Each side plane passes through the apex; the bottom plane through the base center.
  local_offsets = np.concatenate([local[:4] @ np.array([0.0, height, 0.0]), [0.0]])
  normals = local @ _yaw_matrix(yaw).T
  return ConvexPolyhedron(normals, local_offsets + normals @ np.asarray(base, np.float64))


@functools.lru_cache(maxsize=16)
def pinhole_rays(resolution: int, fov_deg: float) -> np.ndarray:
  """Camera-frame ray directions [3, R*R] through pixel centers, z = 1 (OpenCV axes)."""
  focal = resolution / 2 / math.tan(math.radians(fov_deg) / 2)
  coords = (np.arange(resolution) + 0.5 - resolution / 2) / focal
  ys, xs = np.meshgrid(coords, coords, indexing="ij")
  rays = np.stack([xs.ravel(), ys.ravel(), np.ones(resolution * resolution)])
  rays.setflags(write=False)  # shared by every render at this size
  return rays


def nearest_hits(surfaces, origins, dirs) -> tuple[np.ndarray, np.ndarray]:
  """(t, index) of the nearest surface along each ray; t is inf where all miss."""
  distances = np.stack([s.distance(origins, dirs) for s in surfaces])
  index = np.argmin(distances, axis=0)
  return np.take_along_axis(distances, index[None], 0)[0], index


def occluded(occluders, origins, direction) -> np.ndarray:
  """Whether each ray hits any occluder at all (the shadow test needs no nearest hit)."""
  blocked = np.zeros(origins.shape[1], bool)
  for occluder in occluders:
    blocked |= occluder.distance(origins, direction) < np.inf
  return blocked


def cast(surfaces, occluders, cam_position, cam_rotation, fov_deg: float, resolution: int,
         light_dir) -> dict:
  """Casts one camera ray per pixel, then shadow rays from lit hits.

  `cam_rotation` maps camera-frame vectors (x right, y down, z forward) to the world.
  Only `occluders` cast shadows (the backdrop and floor would shadow everything if
  they could). Returns flat per-pixel arrays: `depth` (z-depth), `index` (which
  surface), `points` [3, P] and `normals` [3, P] in the world, `camera_normals` [3, P],
  and `direct` = n . l where the light reaches the point, else 0.
  """
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    rays = pinhole_rays(resolution, fov_deg)
    dirs = cam_rotation @ rays
    origin = np.asarray(cam_position, np.float64)[:, None]
    depth, index = nearest_hits(surfaces, origin, dirs)
    points = origin + dirs * depth
    normals = np.empty_like(points)
    for i, surface in enumerate(surfaces):
      mask = index == i
      if mask.any():
        normals[:, mask] = surface.normal_at(points[:, mask])
    # Round-off at grazing hits may tip a normal just past 90 degrees from the viewer.
    normals *= np.where(_dot(normals, dirs) > 0, -1.0, 1.0)

    light = np.asarray(light_dir, np.float64)
    cosine = light @ normals
    lit = np.flatnonzero(cosine > 0)
    starts = points[:, lit] + SHADOW_OFFSET * normals[:, lit]
    direct = np.zeros_like(cosine)
    direct[lit] = np.where(occluded(occluders, starts, light[:, None]), 0.0, cosine[lit])
  return {"depth": depth, "index": index, "points": points, "normals": normals,
          "camera_normals": cam_rotation.T @ normals, "direct": direct}
