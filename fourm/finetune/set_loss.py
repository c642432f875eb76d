"""DETR's set criterion (Carion et al. 2020), and the step from its outputs to COCO-format
detections.

After `hungarian_match` pairs queries with ground-truth boxes, every query is classified
(its matched box's class, or "no object", the last logit) and every matched query's box is
regressed to its target by L1 on (cx, cy, w, h) and by 1 - GIoU. Unmatched queries far
outnumber boxes, so "no object" is down-weighted (`no_object_weight`, DETR's eos_coef 0.1)
in a weighted mean over queries, as DETR's weighted cross-entropy does. The box terms are
summed over matched pairs and divided by the number of ground-truth boxes in the batch (at
least 1), so an image's padding changes nothing and a batch with many boxes does not get
a larger step per box.

With auxiliary outputs (one (logits, boxes) per earlier decoder layer, DETR's aux loss),
each layer is matched on its own and scored the same way; the total sums every layer's
weighted terms.

Shapes: logits [B, Q, C + 1], boxes [B, Q, 4] as (cx, cy, w, h) in [0, 1] (e.g. after a
sigmoid); target classes [B, T] int32 in [0, C), target boxes [B, T, 4] as (xmin, ymin,
xmax, ymax) in [0, 1], the format fourm stores, and target_valid [B, T] bool marks the
slots that hold a box.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fourm.finetune import boxes as box_ops
from fourm.finetune import coco_metrics
from fourm.finetune.matching import MatchCosts, hungarian_match


@dataclasses.dataclass(frozen=True)
class SetLossWeights:
  """Weights of the loss terms (DETR's defaults)."""
  class_weight: float = 1.0
  l1_weight: float = 5.0
  giou_weight: float = 2.0
  no_object_weight: float = 0.1  # DETR's eos_coef: the class weight of "no object"


class ScoredBoxes(NamedTuple):
  """`postprocess`'s per-image predictions, one per query."""
  scores: jax.Array  # [B, Q]: the highest probability of a real class
  labels: jax.Array  # [B, Q] int32: that class, in [0, C)
  boxes: jax.Array  # [B, Q, 4]: (xmin, ymin, xmax, ymax) in pixels, clipped to the image


def _matched_targets(target_for_query: jax.Array, target_classes: jax.Array,
                     target_boxes: jax.Array, no_object: int
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per query: its class target [B, Q], its box target [B, Q, 4], whether it is matched."""
  matched = target_for_query >= 0
  slot = jnp.maximum(target_for_query, 0)  # any in-range slot; masked out where unmatched
  classes = jnp.take_along_axis(target_classes, slot, axis=1)
  classes = jnp.where(matched, classes, no_object)
  boxes = jnp.take_along_axis(target_boxes, slot[..., None], axis=1)
  return classes, boxes, matched


def _layer_terms(logits: jax.Array, boxes: jax.Array, target_classes: jax.Array,
                 target_boxes: jax.Array, target_valid: jax.Array, num_boxes: jax.Array,
                 weights: SetLossWeights, costs: MatchCosts) -> dict[str, jax.Array]:
  logits, boxes = logits.astype(jnp.float32), boxes.astype(jnp.float32)
  target_boxes = target_boxes.astype(jnp.float32)
  no_object = logits.shape[-1] - 1
  match = hungarian_match(logits, boxes, target_classes, target_boxes, target_valid, costs)
  class_target, box_target, matched = _matched_targets(
      match.target_for_query, target_classes, target_boxes, no_object)

  log_probs = jax.nn.log_softmax(logits, axis=-1)
  cross_entropy = -jnp.take_along_axis(log_probs, class_target[..., None], axis=-1)[..., 0]
  class_weight = jnp.where(class_target == no_object, weights.no_object_weight, 1.0)
  class_loss = (class_weight * cross_entropy).sum() / class_weight.sum()

  l1 = jnp.abs(boxes - box_ops.xyxy_to_cxcywh(box_target)).sum(-1)
  giou = box_ops.paired_giou(box_ops.cxcywh_to_xyxy(boxes), box_target)
  return {"class": class_loss,
          "l1": jnp.where(matched, l1, 0.0).sum() / num_boxes,
          "giou": jnp.where(matched, 1.0 - giou, 0.0).sum() / num_boxes}


def _weighted(terms: dict[str, jax.Array], weights: SetLossWeights) -> jax.Array:
  return (weights.class_weight * terms["class"] + weights.l1_weight * terms["l1"]
          + weights.giou_weight * terms["giou"])


def set_loss(logits: jax.Array, boxes: jax.Array, target_classes: jax.Array,
             target_boxes: jax.Array, target_valid: jax.Array, *,
             aux_outputs: Sequence[tuple[jax.Array, jax.Array]] = (),
             weights: SetLossWeights = SetLossWeights(),
             costs: MatchCosts = MatchCosts()) -> dict[str, jax.Array]:
  """DETR's loss; jit-able. Returns the final layer's unweighted terms "class", "l1" and
  "giou"; with `aux_outputs` (the earlier decoder layers' (logits, boxes)) also "aux_class",
  "aux_l1" and "aux_giou", each summed over those layers; and "total", the weighted sum of
  every layer's terms, which is what to differentiate."""
  # The loss of an image with padding is that of the image without it; sum(valid) over the
  # global batch is also what DETR all-reduces across workers.
  num_boxes = jnp.maximum(target_valid.sum().astype(jnp.float32), 1.0)
  targets = (target_classes, target_boxes, target_valid, num_boxes, weights, costs)
  result = _layer_terms(logits, boxes, *targets)
  total = _weighted(result, weights)
  if aux_outputs:
    aux_terms = [_layer_terms(aux_logits, aux_boxes, *targets)
                 for aux_logits, aux_boxes in aux_outputs]
    for name in ("class", "l1", "giou"):
      result[f"aux_{name}"] = sum(terms[name] for terms in aux_terms)
    total = total + sum(_weighted(terms, weights) for terms in aux_terms)
  result["total"] = total
  return result


def postprocess(logits: jax.Array, boxes: jax.Array, image_sizes: jax.Array) -> ScoredBoxes:
  """Model outputs -> per-image scored boxes in pixels; jit-able.

  image_sizes [B, 2] is each image's (height, width) in pixels, the size the normalized
  boxes refer to (that of the original image for COCO evaluation). Boxes are clipped to
  the image: a sigmoid (cx, cy, w, h) can reach past its edges.
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., :-1]
  height, width = image_sizes[:, 0].astype(jnp.float32), image_sizes[:, 1].astype(jnp.float32)
  scale = jnp.stack([width, height, width, height], axis=-1)[:, None, :]
  pixel_boxes = jnp.clip(box_ops.cxcywh_to_xyxy(boxes.astype(jnp.float32)), 0.0, 1.0) * scale
  return ScoredBoxes(scores=probs.max(-1), labels=probs.argmax(-1).astype(jnp.int32),
                     boxes=pixel_boxes)


def coco_detections(detections: ScoredBoxes, image_ids: Sequence[int],
                    category_ids: Sequence[int] | None = None,
                    min_score: float = 0.0) -> list[dict[str, Any]]:
  """`postprocess`'s output -> COCO results json (a list of {"image_id", "category_id",
  "bbox": [x, y, w, h] in pixels, "score"}), on the host, through
  `coco_metrics.coco_results` so that there is one writer of that format.
  `category_ids[label]` is the dataset's id of each label (COCO's are not contiguous);
  without it the label is the id. Detections scoring below `min_score` are left out."""
  scores, labels, boxes = (np.asarray(a) for a in detections)
  kept = scores >= min_score
  return coco_metrics.coco_results(
      image_ids, [box[keep] for box, keep in zip(boxes, kept)],
      [score[keep] for score, keep in zip(scores, kept)],
      [label[keep] for label, keep in zip(labels, kept)], category_ids=category_ids)
