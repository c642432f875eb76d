"""DETR's bipartite matching: each ground-truth box of an image is given the one prediction
(query) that costs least overall, every query serving at most one box (Carion et al. 2020).

The cost between query q and target t is
  class_weight * -p_q(class_t) + l1_weight * |box_q - box_t|_1 + giou_weight * -GIoU(q, t),
with p_q the softmax over all classes including "no object", and the L1 distance between
(cx, cy, w, h) boxes. The defaults are DETR's (1, 5, 2), which are also its loss weights:
the set loss here is DETR's softmax cross-entropy, and the class weight of 2 in Deformable
DETR and DINO goes with their sigmoid focal class cost and loss, which this is not.

The assignment is solved exactly by `scipy.optimize.linear_sum_assignment` on the host, not
by a matcher in JAX. For DETR's sizes (~100 queries x ~50 boxes) the O(n^3) solver takes
well under a millisecond per image on a CPU, next to a forward pass that takes tens. The
JAX alternatives are worse trades: an auction algorithm is exact only as its epsilon goes
to 0, and it, like a Hungarian method in `lax.while_loop`, runs a data-dependent number of
small sequential steps that keep an accelerator idle; Sinkhorn gives a soft, approximate
plan. Inside `jax.jit` the solver is reached through `jax.pure_callback`, with fixed-shape
int32 results, so the step compiles once. The cost is computed under `stop_gradient`: a
matching is a discrete choice and carries no gradient.

Ground truth comes padded per batch: classes [B, T] int32, boxes [B, T, 4] xyxy in [0, 1]
(as fourm stores them), valid [B, T] bool. Predictions are logits [B, Q, C + 1] (the last
class is "no object") and boxes [B, Q, 4] as (cx, cy, w, h).

Under a mesh, `pure_callback` gathers its inputs to one device; a loop that shards the
batch over many hosts should call `hungarian_match` inside `shard_map` over the batch axis,
so that each host matches its own images.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from fourm.finetune import boxes as box_ops

# What the solver sees in place of a NaN or infinite cost: it refuses those, and an
# exception raised inside a pure_callback leaves the jitted program undefined.
_UNUSABLE_COST = 1e9


@dataclasses.dataclass(frozen=True)
class MatchCosts:
  """Weights of the three matching costs (DETR's defaults); hashable, so jit can close
  over it."""
  class_weight: float = 1.0
  l1_weight: float = 5.0
  giou_weight: float = 2.0


class Match(NamedTuple):
  """One matching per image, in fixed shapes; -1 where there is no partner."""
  query_for_target: jax.Array  # [B, T] int32: the query matched to each target slot
  target_for_query: jax.Array  # [B, Q] int32: the target slot matched to each query


def matching_cost(logits: jax.Array, boxes: jax.Array, target_classes: jax.Array,
                  target_boxes: jax.Array, costs: MatchCosts = MatchCosts()) -> jax.Array:
  """The cost [B, Q, T] of matching each query to each target slot (padding included;
  `min_cost_assignment` ignores padded slots). No gradient flows through it."""
  logits, boxes, target_boxes = jax.lax.stop_gradient(
      (logits.astype(jnp.float32), boxes.astype(jnp.float32), target_boxes.astype(jnp.float32)))
  probs = jax.nn.softmax(logits, axis=-1)
  class_prob = jnp.take_along_axis(probs, target_classes[:, None, :], axis=-1)  # [B, Q, T]
  target_cxcywh = box_ops.xyxy_to_cxcywh(target_boxes)
  l1 = jnp.abs(boxes[:, :, None, :] - target_cxcywh[:, None, :, :]).sum(-1)
  giou = box_ops.pairwise_giou(box_ops.cxcywh_to_xyxy(boxes), target_boxes)
  return costs.class_weight * -class_prob + costs.l1_weight * l1 + costs.giou_weight * -giou


def _assign_one(cost: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  num_queries, num_slots = cost.shape
  query_for_target = np.full(num_slots, -1, np.int32)
  target_for_query = np.full(num_queries, -1, np.int32)
  slots = np.flatnonzero(valid)
  if slots.size and num_queries:
    usable = np.nan_to_num(cost[:, slots].astype(np.float64), nan=_UNUSABLE_COST,
                           posinf=_UNUSABLE_COST, neginf=-_UNUSABLE_COST)
    queries, columns = scipy.optimize.linear_sum_assignment(usable)
    query_for_target[slots[columns]] = queries
    target_for_query[queries] = slots[columns]
  return query_for_target, target_for_query


def min_cost_assignment_host(cost: np.ndarray, valid: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
  """The exact minimum-cost matching of cost [..., Q, T] over the valid slots [..., T],
  in numpy: (query_for_target [..., T], target_for_query [..., Q]), int32, -1 unmatched.

  With more valid slots than queries, the costliest slots go unmatched (DETR assumes
  Q >= T)."""
  cost, valid = np.asarray(cost), np.asarray(valid, bool)
  leading, (num_queries, num_slots) = cost.shape[:-2], cost.shape[-2:]
  flat_cost = cost.reshape(-1, num_queries, num_slots)
  flat_valid = np.broadcast_to(valid, leading + (num_slots,)).reshape(-1, num_slots)
  pairs = [_assign_one(c, v) for c, v in zip(flat_cost, flat_valid)]
  query_for_target = np.stack([p[0] for p in pairs]) if pairs else \
      np.zeros((0, num_slots), np.int32)
  target_for_query = np.stack([p[1] for p in pairs]) if pairs else \
      np.zeros((0, num_queries), np.int32)
  return (query_for_target.reshape(leading + (num_slots,)),
          target_for_query.reshape(leading + (num_queries,)))


def min_cost_assignment(cost: jax.Array, valid: jax.Array) -> Match:
  """`min_cost_assignment_host` for use inside jit (and vmap): cost [B, Q, T], valid
  [B, T] -> Match. The whole batch goes to the host in one call."""
  cost = jax.lax.stop_gradient(cost)
  *leading, num_queries, num_slots = cost.shape
  shapes = (jax.ShapeDtypeStruct((*leading, num_slots), jnp.int32),
            jax.ShapeDtypeStruct((*leading, num_queries), jnp.int32))
  # broadcast_all: under vmap the host function sees one more leading axis on every input,
  # which it handles like any other batch axis.
  query_for_target, target_for_query = jax.pure_callback(
      min_cost_assignment_host, shapes, cost, valid.astype(bool), vmap_method="broadcast_all")
  return Match(query_for_target, target_for_query)


def hungarian_match(logits: jax.Array, boxes: jax.Array, target_classes: jax.Array,
                    target_boxes: jax.Array, target_valid: jax.Array,
                    costs: MatchCosts = MatchCosts()) -> Match:
  """DETR's matching of predictions (logits [B, Q, C+1], cxcywh boxes [B, Q, 4]) to the
  padded ground truth (classes [B, T], xyxy boxes [B, T, 4], valid [B, T]); jit-able."""
  cost = matching_cost(logits, boxes, target_classes, target_boxes, costs)
  return min_cost_assignment(cost, target_valid)
