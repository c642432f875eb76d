"""Detection math for fine-tuning: box formats, IoU and GIoU (hand-computed, degenerate
boxes), Hungarian matching against brute force and under jit / vmap / shard_map, DETR's set
loss (zero at the targets, drivable to near zero by adam) and COCO postprocessing."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from fourm.finetune import boxes as box_ops
from fourm.finetune.matching import (MatchCosts, hungarian_match, matching_cost,
                                     min_cost_assignment, min_cost_assignment_host)
from fourm.finetune.set_loss import (ScoredBoxes, SetLossWeights, coco_detections,
                                     postprocess, set_loss)

# Eager, every small op compiles on its own; jitted, the tests run in a fraction of the time.
jit_set_loss = jax.jit(set_loss, static_argnames=("weights", "costs"))
_pairwise_iou, _pairwise_giou = jax.jit(box_ops.pairwise_iou), jax.jit(box_ops.pairwise_giou)
_paired_giou = jax.jit(box_ops.paired_giou)


def _random_xyxy(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  corner = rng.uniform(0.0, 0.6, shape + (2,))
  size = rng.uniform(0.05, 0.4, shape + (2,))
  return np.concatenate([corner, corner + size], -1).astype(np.float32)


def _cxcywh(xyxy: np.ndarray) -> np.ndarray:
  return np.concatenate([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], -1)


def _random_targets(rng: np.random.Generator, batch: int, slots: int, num_classes: int,
                    counts: tuple[int, ...]):
  """Padded ground truth whose valid slots are scattered, not packed at the front."""
  valid = np.zeros((batch, slots), bool)
  for image, count in enumerate(counts):
    valid[image, rng.choice(slots, count, replace=False)] = True
  classes = rng.integers(0, num_classes, (batch, slots)).astype(np.int32)
  return classes, _random_xyxy(rng, (batch, slots)), valid


# ---------------------------------------------------------------------------- boxes


def test_formats_round_trip():
  xyxy = _random_xyxy(np.random.default_rng(0), (3, 5))
  cxcywh = box_ops.xyxy_to_cxcywh(xyxy)
  np.testing.assert_allclose(cxcywh[..., 2:], xyxy[..., 2:] - xyxy[..., :2], rtol=1e-6)
  np.testing.assert_allclose(box_ops.cxcywh_to_xyxy(cxcywh), xyxy, atol=1e-6)


@pytest.mark.parametrize("a, b, iou, giou", [
    ([0, 0, 1, 1], [0, 0, 1, 1], 1.0, 1.0),  # identical
    ([0, 0, 1, 1], [2, 0, 3, 1], 0.0, -1 / 3),  # disjoint: enclosure 3, union 2
    ([0, 0, 2, 1], [0, 3, 2, 4], 0.0, -0.5),  # disjoint: enclosure 8, union 4
    ([0, 0, 4, 4], [1, 1, 2, 2], 1 / 16, 1 / 16),  # nested: the enclosure is the union
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9),  # overlap 1, union 7, enclosure 9
    ([0, 0, 2, 2], [2, 0, 4, 2], 0.0, 0.0),  # touching: the enclosure is the union
])
def test_iou_and_giou_by_hand(a, b, iou, giou):
  a, b = jnp.asarray([a], jnp.float32), jnp.asarray([b], jnp.float32)
  for x, y in ((a, b), (b, a)):
    np.testing.assert_allclose(_pairwise_iou(x, y), [[iou]], atol=1e-6)
    np.testing.assert_allclose(_pairwise_giou(x, y), [[giou]], atol=1e-6)
    np.testing.assert_allclose(_paired_giou(x[0], y[0]), giou, atol=1e-6)


def _giou_by_formula(a, b) -> tuple[float, float]:
  """IoU and GIoU of two valid xyxy boxes, written out in plain Python."""
  inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = inter_w * inter_h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
  return inter / union, inter / union - (hull - union) / hull


def test_pairwise_is_every_pair_and_batches():
  rng = np.random.default_rng(1)
  a, b = _random_xyxy(rng, (2, 3)), _random_xyxy(rng, (2, 5))
  iou, giou = _pairwise_iou(a, b), _pairwise_giou(a, b)
  assert iou.shape == giou.shape == (2, 3, 5)
  for image, i, j in itertools.product(range(2), range(3), range(5)):
    expected = _giou_by_formula(a[image, i].astype(float), b[image, j].astype(float))
    np.testing.assert_allclose((iou[image, i, j], giou[image, i, j]), expected, atol=1e-6)
  assert np.all(giou <= iou + 1e-6) and np.all(giou >= -1 - 1e-6) and np.all(iou <= 1 + 1e-6)


def test_degenerate_boxes_give_no_nan_in_values_or_gradients():
  boxes = jnp.asarray([[0.5, 0.5, 0.5, 0.5],  # a point
                       [0.5, 0.5, 0.5, 0.5],  # the same point
                       [0.2, 0.2, 0.2, 0.8],  # a vertical line
                       [0.0, 0.0, 0.0, 0.0],  # padding
                       [0.1, 0.1, 0.6, 0.6]], jnp.float32)
  # Zero-size predictions in cxcywh, as a sigmoid head can nearly give, through a loss.
  cxcywh = jnp.asarray([[0.3, 0.3, 0.0, 0.0], [0.7, 0.2, 0.0, 0.5]], jnp.float32)

  def measures(b, c):
    giou_loss = (1 - box_ops.pairwise_giou(box_ops.cxcywh_to_xyxy(c), b)).sum()
    return box_ops.pairwise_iou(b, b).sum() + box_ops.pairwise_giou(b, b).sum() + giou_loss

  values, gradients = jax.jit(jax.value_and_grad(measures, argnums=(0, 1)))(boxes, cxcywh)
  assert np.isfinite(values) and all(np.isfinite(g).all() for g in gradients)
  iou, giou = _pairwise_iou(boxes, boxes), _pairwise_giou(boxes, boxes)
  assert np.isfinite(iou).all() and np.isfinite(giou).all()
  assert iou[0, 1] == 0.0 and giou[0, 1] == 0.0  # one point twice: no union, no enclosure
  np.testing.assert_allclose(giou[0, 3], -1.0)  # two points apart: all enclosure
  np.testing.assert_allclose(giou[4, 4], 1.0)


# ---------------------------------------------------------------------------- matching


def _brute_force_min_cost(cost: np.ndarray, valid: np.ndarray) -> float:
  """The cheapest one-to-one matching of the valid slots, over every possibility."""
  slots = np.flatnonzero(valid)
  num_queries = cost.shape[0]
  if len(slots) <= num_queries:
    return min(cost[list(queries), slots].sum()
               for queries in itertools.permutations(range(num_queries), len(slots)))
  return min(cost[np.arange(num_queries), list(chosen)].sum()
             for chosen in itertools.permutations(slots, num_queries))


def _assignment_cost(cost: np.ndarray, query_for_target: np.ndarray) -> float:
  slots = np.flatnonzero(query_for_target >= 0)
  return cost[query_for_target[slots], slots].sum()


@pytest.mark.parametrize("num_queries, num_slots, padded", [
    (3, 3, False), (5, 5, False), (5, 3, False), (6, 2, False), (6, 4, True), (7, 5, True),
    (3, 5, False),  # more boxes than queries: DETR never does this, but it must not break
])
def test_assignment_equals_brute_force(num_queries, num_slots, padded):
  rng = np.random.default_rng(num_queries * 10 + num_slots)
  batch = 6
  cost = rng.normal(size=(batch, num_queries, num_slots)).astype(np.float32)
  valid = rng.random((batch, num_slots)) < 0.6 if padded else np.ones((batch, num_slots), bool)
  valid[0] = False  # an image without boxes
  query_for_target, target_for_query = min_cost_assignment_host(cost, valid)
  assert query_for_target.shape == (batch, num_slots) and target_for_query.shape == (
      batch, num_queries)
  assert query_for_target.dtype == target_for_query.dtype == np.int32
  for image in range(batch):
    matched = query_for_target[image] >= 0
    assert not (matched & ~valid[image]).any()  # padding is never matched
    assert matched.sum() == min(valid[image].sum(), num_queries)
    queries = query_for_target[image][matched]
    assert len(set(queries)) == len(queries)
    # The two views are one matching.
    for slot in np.flatnonzero(matched):
      assert target_for_query[image, query_for_target[image, slot]] == slot
    assert (target_for_query[image] >= 0).sum() == matched.sum()
    np.testing.assert_allclose(_assignment_cost(cost[image], query_for_target[image]),
                               _brute_force_min_cost(cost[image], valid[image]), rtol=1e-5,
                               atol=1e-5)


def _random_problem(seed: int, batch: int = 3, queries: int = 10, slots: int = 6,
                    num_classes: int = 4):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(batch, queries, num_classes + 1)).astype(np.float32)
  boxes = _cxcywh(_random_xyxy(rng, (batch, queries)))
  counts = tuple(rng.integers(0, slots + 1, batch))
  return (logits, boxes) + _random_targets(rng, batch, slots, num_classes, counts)


def test_jitted_match_equals_host():
  logits, boxes, classes, target_boxes, valid = _random_problem(2)
  match = jax.jit(hungarian_match)(logits, boxes, classes, target_boxes, valid)
  cost = np.asarray(matching_cost(logits, boxes, classes, target_boxes))
  host = min_cost_assignment_host(cost, valid)
  np.testing.assert_array_equal(match.query_for_target, host[0])
  np.testing.assert_array_equal(match.target_for_query, host[1])
  # vmap (as over decoder layers) goes through the callback's batched path.
  costs = np.stack([cost, -cost])
  vmapped = jax.jit(jax.vmap(min_cost_assignment, in_axes=(0, None)))(costs, valid)
  host = min_cost_assignment_host(costs, np.broadcast_to(valid, costs.shape[:2] + valid.shape[-1:]))
  np.testing.assert_array_equal(vmapped.query_for_target, host[0])
  np.testing.assert_array_equal(vmapped.target_for_query, host[1])


def test_match_under_shard_map_equals_host():
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  rng = np.random.default_rng(3)
  cost = rng.normal(size=(jax.device_count() * 2, 5, 3)).astype(np.float32)
  valid = rng.random(cost.shape[::2]) < 0.7
  per_shard = jax.shard_map(min_cost_assignment, mesh=mesh,
                            in_specs=(PartitionSpec("data"), PartitionSpec("data")),
                            out_specs=PartitionSpec("data"))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  match = jax.jit(per_shard)(jax.device_put(cost, sharding), jax.device_put(valid, sharding))
  np.testing.assert_array_equal(match.query_for_target, min_cost_assignment_host(cost, valid)[0])


def test_match_finds_the_permutation_of_exact_predictions():
  rng = np.random.default_rng(4)
  classes, target_boxes, valid = _random_targets(rng, 2, 4, 3, (4, 4))
  order = np.stack([rng.permutation(4) for _ in range(2)])  # query q predicts slot order[q]
  boxes = np.take_along_axis(_cxcywh(target_boxes),
                             order[..., None], axis=1)
  logits = 10.0 * np.eye(4, dtype=np.float32)[np.take_along_axis(classes, order, axis=1)]
  match = jax.jit(hungarian_match)(logits, boxes, classes, target_boxes, valid)
  np.testing.assert_array_equal(match.target_for_query, order)


def test_unusable_costs_still_give_a_matching():
  cost = np.asarray([[[np.nan, 1.0], [0.0, np.inf], [2.0, 3.0]]], np.float32)
  match = jax.jit(min_cost_assignment)(cost, np.ones((1, 2), bool))
  np.testing.assert_array_equal(match.query_for_target, [[1, 0]])


def test_matching_cost_is_the_weighted_sum_of_its_terms():
  logits, boxes, classes, target_boxes, _ = _random_problem(14)
  costs = MatchCosts(class_weight=2.0, l1_weight=3.0, giou_weight=4.0)
  cost = jax.jit(matching_cost, static_argnames="costs")(logits, boxes, classes, target_boxes,
                                                         costs=costs)
  probs = np.asarray(jax.nn.softmax(logits))
  for image, query, slot in ((0, 0, 0), (1, 7, 3), (2, 9, 5)):
    cx, cy, w, h = boxes[image, query].astype(float)
    target = target_boxes[image, slot].astype(float)
    giou = _giou_by_formula((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), target)[1]
    l1 = np.abs(boxes[image, query] - _cxcywh(target_boxes[image, slot])).sum()
    expected = -2.0 * probs[image, query, classes[image, slot]] + 3.0 * l1 - 4.0 * giou
    np.testing.assert_allclose(cost[image, query, slot], expected, rtol=1e-5)


def test_matching_cost_carries_no_gradient():
  logits, boxes, classes, target_boxes, _ = _random_problem(5)
  gradients = jax.jit(jax.grad(lambda l, b: matching_cost(l, b, classes, target_boxes).sum(),
                               argnums=(0, 1)))(logits, boxes)
  for gradient in gradients:
    assert not np.asarray(gradient).any()


# ---------------------------------------------------------------------------- set loss


def _exact_predictions(seed: int, confidence: float = 30.0):
  """Predictions that are the targets, matched queries at random positions, the other
  queries confidently "no object"."""
  rng = np.random.default_rng(seed)
  batch, queries, slots, num_classes = 2, 7, 4, 3
  classes, target_boxes, valid = _random_targets(rng, batch, slots, num_classes, (3, 1))
  logits = np.zeros((batch, queries, num_classes + 1), np.float32)
  logits[..., num_classes] = confidence
  boxes = rng.uniform(0.2, 0.4, (batch, queries, 4)).astype(np.float32)
  for image in range(batch):
    slots_here = np.flatnonzero(valid[image])
    for query, slot in zip(rng.choice(queries, len(slots_here), replace=False), slots_here):
      logits[image, query] = 0.0
      logits[image, query, classes[image, slot]] = confidence
      boxes[image, query] = _cxcywh(target_boxes[image, slot])
  return logits, boxes, classes, target_boxes, valid


def test_loss_is_zero_at_the_targets():
  terms = jit_set_loss(*_exact_predictions(6))
  assert terms["class"] < 1e-6
  assert terms["l1"] < 1e-6 and terms["giou"] < 1e-6 and terms["total"] < 1e-5


def test_class_loss_is_the_no_object_weighted_mean():
  # Predictions exactly at the targets fix the matching; only the logits are random.
  logits, boxes, classes, target_boxes, valid = _exact_predictions(7, confidence=0.0)
  logits = logits + np.random.default_rng(7).normal(size=logits.shape).astype(np.float32)
  weights = SetLossWeights(no_object_weight=0.25)
  # With zero confidence the class cost is near-flat; the box costs decide the matching.
  match = jax.jit(hungarian_match)(logits, boxes, classes, target_boxes, valid)
  no_object = logits.shape[-1] - 1
  target = np.where(match.target_for_query >= 0,
                    np.take_along_axis(classes, np.maximum(match.target_for_query, 0), 1),
                    no_object)
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  cross_entropy = -np.take_along_axis(log_probs, target[..., None], -1)[..., 0]
  weight = np.where(target == no_object, 0.25, 1.0)
  expected = (weight * cross_entropy).sum() / weight.sum()
  terms = jit_set_loss(logits, boxes, classes, target_boxes, valid, weights=weights)
  np.testing.assert_allclose(terms["class"], expected, rtol=1e-5)
  assert terms["l1"] < 1e-6


def test_box_terms_are_summed_over_matches_and_divided_by_the_boxes():
  logits, boxes, classes, target_boxes, valid = _exact_predictions(7)  # 3 boxes, then 1
  shift = np.asarray([0.01, 0.03], np.float32)
  boxes = boxes.copy()
  boxes[..., 0] += shift[:, None]  # every cx; the confident classes keep the matching
  match = jax.jit(hungarian_match)(logits, boxes, classes, target_boxes, valid)
  giou_terms = []
  for image, slot in zip(*np.nonzero(valid)):
    cx, cy, w, h = boxes[image, match.query_for_target[image, slot]].astype(float)
    predicted = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    giou_terms.append(1 - _giou_by_formula(predicted, target_boxes[image, slot].astype(float))[1])
  terms = jit_set_loss(logits, boxes, classes, target_boxes, valid)
  # Per box, not per image: (3 * 0.01 + 1 * 0.03) / 4, where a mean of the images' means
  # would be 0.02.
  np.testing.assert_allclose(terms["l1"], 0.015, rtol=1e-4)
  np.testing.assert_allclose(terms["giou"], sum(giou_terms) / 4, rtol=1e-4)


def test_padding_changes_nothing():
  logits, boxes, classes, target_boxes, valid = _random_problem(8)
  extra = 3  # more padded slots, holding garbage
  rng = np.random.default_rng(8)
  padded = (np.concatenate([classes, rng.integers(0, 4, (3, extra)).astype(np.int32)], 1),
            np.concatenate([target_boxes, _random_xyxy(rng, (3, extra))], 1),
            np.concatenate([valid, np.zeros((3, extra), bool)], 1))
  before = jit_set_loss(logits, boxes, classes, target_boxes, valid)
  after = jit_set_loss(logits, boxes, *padded)
  for name in before:
    np.testing.assert_allclose(after[name], before[name], rtol=1e-6)


def test_aux_losses_are_matched_per_layer_and_summed():
  logits, boxes, classes, target_boxes, valid = _random_problem(9)
  layers = [_random_problem(seed)[:2] for seed in (10, 11)]
  weights = SetLossWeights()

  def total(terms):
    return (weights.class_weight * terms["class"] + weights.l1_weight * terms["l1"]
            + weights.giou_weight * terms["giou"])

  alone = [jit_set_loss(*layer, classes, target_boxes, valid) for layer in layers]
  final = jit_set_loss(logits, boxes, classes, target_boxes, valid)
  both = jit_set_loss(logits, boxes, classes, target_boxes, valid, aux_outputs=layers)
  for name in ("class", "l1", "giou"):
    np.testing.assert_allclose(both[name], final[name], rtol=1e-6)
    np.testing.assert_allclose(both[f"aux_{name}"], sum(t[name] for t in alone), rtol=1e-5)
  np.testing.assert_allclose(both["total"], final["total"] + sum(total(t) for t in alone),
                             rtol=1e-5)


def test_degenerate_and_empty_batches_give_finite_gradients():
  logits, boxes, classes, target_boxes, valid = _random_problem(12)
  boxes = boxes.copy()
  boxes[..., 2:] = 0.0  # every prediction zero-sized
  target_boxes = target_boxes.copy()
  target_boxes[:, 0] = [0.5, 0.5, 0.5, 0.5]  # a point-sized label
  for targets_valid in (valid, np.zeros_like(valid)):  # the second: no box in the batch
    loss, gradients = jax.jit(jax.value_and_grad(
        lambda l, b, v: set_loss(l, b, classes, target_boxes, v)["total"],
        argnums=(0, 1)))(logits, boxes, targets_valid)
    assert np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in gradients)


def test_adam_drives_the_loss_down():
  rng = np.random.default_rng(13)
  batch, queries, slots, num_classes = 2, 8, 4, 5
  classes, target_boxes, valid = _random_targets(rng, batch, slots, num_classes, (3, 2))
  params = {"logits": jnp.asarray(rng.normal(size=(batch, queries, num_classes + 1)),
                                  jnp.float32),
            "boxes": jnp.asarray(rng.normal(size=(batch, queries, 4)), jnp.float32)}

  def loss(p):
    return set_loss(p["logits"], jax.nn.sigmoid(p["boxes"]), classes, target_boxes,
                    valid)["total"]

  optimizer = optax.adam(0.05)

  @jax.jit
  def step(p, state):
    gradients = jax.grad(loss)(p)
    updates, state = optimizer.update(gradients, state, p)
    return optax.apply_updates(p, updates), state

  first, state = jax.jit(loss)(params), optimizer.init(params)
  for _ in range(300):
    params, state = step(params, state)
  last = jax.jit(loss)(params)
  # Measured: 8.9 -> 0.095, a factor of ~90; adam's noise near the optimum sets the floor.
  assert first / last > 20, (first, last)


# ---------------------------------------------------------------------------- postprocess


def test_postprocess_gives_pixel_boxes_and_coco_json():
  no_object = 3
  logits = np.full((2, 2, no_object + 1), -10.0, np.float32)
  logits[0, 0, 2] = 5.0  # class 2, confident
  logits[0, 1, no_object] = 5.0  # "no object" wins, but its score is the best real class
  logits[0, 1, 1] = 1.0
  logits[1, :, 0] = 5.0
  # The last box reaches past the right edge and is clipped.
  boxes = np.asarray([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.5, 0.5]],
                      [[0.5, 0.5, 1.0, 1.0], [0.95, 0.5, 0.2, 0.2]]], np.float32)
  image_sizes = np.asarray([[200, 400], [100, 300]])  # (height, width)
  detections = jax.jit(postprocess)(logits, boxes, image_sizes)
  assert isinstance(detections, ScoredBoxes)
  probs = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(detections.scores, probs[..., :-1].max(-1), rtol=1e-6)
  np.testing.assert_array_equal(detections.labels, [[2, 1], [0, 0]])
  np.testing.assert_allclose(detections.boxes, [[[160, 60, 240, 140], [0, 0, 200, 100]],
                                                [[0, 0, 300, 100], [255, 40, 300, 60]]],
                             atol=1e-4)
  results = coco_detections(detections, image_ids=[42, 7], category_ids=[1, 3, 5])
  assert [r["image_id"] for r in results] == [42, 42, 7, 7]
  assert [r["category_id"] for r in results] == [5, 3, 1, 1]
  np.testing.assert_allclose([r["bbox"] for r in results],
                             [[160, 60, 80, 80], [0, 0, 200, 100], [0, 0, 300, 100],
                              [255, 40, 45, 20]], atol=1e-4)
  assert all(isinstance(r["score"], float) for r in results)
  kept = coco_detections(detections, image_ids=[42, 7], min_score=0.5)
  assert [r["category_id"] for r in kept] == [2, 0, 0]
