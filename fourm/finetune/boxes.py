"""Box math for detection in jax.numpy: the two box formats, and the overlap measures that
DETR-style matching and losses use (IoU, and generalized IoU, Rezatofighi et al. 2019).

fourm stores boxes as (xmin, ymin, xmax, ymax) normalized to [0, 1] (see
`fourm.data.record_validation`); a DETR head predicts (cx, cy, w, h), in which an L1
distance weighs position and size evenly. Pairwise functions take [..., N, 4] and
[..., M, 4] and return [..., N, M], so a batch of images needs no vmap; the `paired_`
functions score boxes that are already matched one to one (shapes broadcast).

Zero-area boxes (a predicted width of 0, a point-sized label, padding) must not turn a loss
into NaN. Where a ratio's denominator is 0 it is defined instead: IoU is 0 when the union
is empty, and GIoU's enclosure penalty is 0 when the enclosing box is empty. The
denominator is replaced inside the division too (not only in the result), because
`where(d > 0, n / d, 0)` alone still sends NaN through the gradient of the branch it
discards.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cxcywh_to_xyxy(boxes: jax.Array) -> jax.Array:
  """(cx, cy, w, h) -> (xmin, ymin, xmax, ymax), over the last axis."""
  cx, cy, w, h = (boxes[..., i] for i in range(4))
  return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def xyxy_to_cxcywh(boxes: jax.Array) -> jax.Array:
  """(xmin, ymin, xmax, ymax) -> (cx, cy, w, h), over the last axis."""
  x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
  return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def box_area(boxes: jax.Array) -> jax.Array:
  """Area of xyxy boxes [..., 4] -> [...]; an inverted box (max < min) has area 0."""
  width = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
  height = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
  return width * height


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """numerator / denominator, 0 where the denominator is not positive; finite gradients."""
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def _intersection_union(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  top_left = jnp.maximum(a[..., :2], b[..., :2])
  bottom_right = jnp.minimum(a[..., 2:], b[..., 2:])
  intersection = box_area(jnp.concatenate([top_left, bottom_right], axis=-1))
  return intersection, box_area(a) + box_area(b) - intersection


def paired_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of xyxy boxes a[..., 4] and b[..., 4] (broadcast) -> [...]; 0 if the union is empty."""
  intersection, union = _intersection_union(a, b)
  return _safe_divide(intersection, union)


def paired_giou(a: jax.Array, b: jax.Array) -> jax.Array:
  """Generalized IoU of xyxy boxes a[..., 4] and b[..., 4] (broadcast) -> [...], in [-1, 1]:
  IoU - (enclosing area - union) / enclosing area, the enclosing box being the smallest
  that holds both. Unlike IoU it still says how far apart two disjoint boxes are."""
  intersection, union = _intersection_union(a, b)
  enclosing = box_area(jnp.concatenate(
      [jnp.minimum(a[..., :2], b[..., :2]), jnp.maximum(a[..., 2:], b[..., 2:])], axis=-1))
  return _safe_divide(intersection, union) - _safe_divide(enclosing - union, enclosing)


def pairwise_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of every xyxy box of a[..., N, 4] with every one of b[..., M, 4] -> [..., N, M]."""
  return paired_iou(a[..., :, None, :], b[..., None, :, :])


def pairwise_giou(a: jax.Array, b: jax.Array) -> jax.Array:
  """GIoU of every xyxy box of a[..., N, 4] with every one of b[..., M, 4] -> [..., N, M]."""
  return paired_giou(a[..., :, None, :], b[..., None, :, :])
