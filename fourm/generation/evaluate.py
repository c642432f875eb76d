"""How good generation is, against trivial baselines, on held-out synthetic-world scenes.

* rgb -> depth: abs-rel of the decoded depth against the exact depth, beside two
  baselines that never look at the image: the training set's mean depth (one number)
  and its mean depth per pixel (the average scene layout, a much harder baseline).
* rgb -> semantic segmentation: pixel accuracy (and mIoU), beside the training set's
  majority class and its per-pixel majority class.
* rgb -> caption: are the colors a generated caption names those of the scene?
* caption -> rgb: does the generated image contain the colors the caption names?
  A hue detector (calibrated on the real images: it is reported how often it finds the
  named colors there) is run on the generated images; the rate for colors the caption
  names is compared with the rate for the chromatic colors it does not name (chance),
  with a permutation p-value (images judged against shuffled captions).

`benchmarks/generation_quality.py` prints these for a checkpoint; a test asserts the
first two on a small model it trains.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence

import numpy as np

from fourm import modalities
from fourm.data import color_detector, records, synthetic, world
from fourm.errors import UsageError
from fourm.generation.sampler import Decoding

# The synthetic world's modalities these checks read, by their registry entries.
RGB, DEPTH, SEMSEG, CAPTION, DET = (raw.name for raw in (
    modalities.RGB, modalities.DEPTH, modalities.SEMSEG, modalities.CAPTION, modalities.DET))
TOK_RGB, TOK_DEPTH, TOK_SEMSEG = map(modalities.grid_modality_of, (RGB, DEPTH, SEMSEG))

# The chromatic colors of the synthetic world (white and gray look like the floor).
CHROMATIC = color_detector.CHROMATIC
MIN_SATURATION, MIN_VALUE = color_detector.MIN_SATURATION, color_detector.MIN_VALUE
# A color is "in" an image when at least this share of its pixels have its hue.
MIN_SHARE = 0.01


def held_out_records(data: Sequence[str], split: str, count: int) -> list[dict]:
  source = records.RecordSource(list(data), split)
  return [source[i] for i in range(min(count, len(source)))]


def _batches(items: list, size: int):
  for start in range(0, len(items), size):
    yield items[start:start + size]


def layout_baselines(train: list[dict]) -> dict[str, np.ndarray | float]:
  depth = np.stack([r[DEPTH] for r in train]).astype(np.float64)
  semseg = np.stack([r[SEMSEG] for r in train]).astype(np.int64)
  classes = int(semseg.max()) + 1
  per_pixel_counts = np.stack([(semseg == c).sum(0) for c in range(classes)])
  return {"mean_depth": float(depth.mean()), "mean_depth_map": depth.mean(0),
          "majority_class": int(np.bincount(semseg.ravel()).argmax()),
          "majority_map": per_pixel_counts.argmax(0)}


def at_resolution(maps: np.ndarray, size: int) -> np.ndarray:
  """Maps [N, g, g] decoded at patch resolution (the ground-truth patch quantizers) ->
  [N, size, size], each value repeated over its patch; full-size maps pass through."""
  factor = size // maps.shape[1]
  if factor * maps.shape[1] != size:
    raise ValueError(f"maps of {maps.shape[1]} px do not tile {size} px")
  return maps.repeat(factor, axis=1).repeat(factor, axis=2)


def abs_rel(prediction: np.ndarray, truth: np.ndarray) -> float:
  return float(np.mean(np.abs(prediction - truth) / truth))


def miou(prediction: np.ndarray, truth: np.ndarray, classes: Sequence[int] | None = None
         ) -> float:
  """Mean IoU over `classes` (default: those in `truth`); a class in neither map is skipped."""
  scores = []
  for c in np.unique(truth) if classes is None else classes:
    union = np.sum((prediction == c) | (truth == c))
    if union:
      scores.append(np.sum((prediction == c) & (truth == c)) / union)
  return float(np.mean(scores)) if scores else float("nan")


# Issue 20's segmentation measure: the objects, not the floor and wall that fill most pixels.
OBJECT_CLASS_IDS = tuple(synthetic.CLASSES.index(name) for name in synthetic.OBJECT_CLASSES)


def rgb_to_maps(generator, data: Sequence[str], *, count: int = 64, batch_size: int = 16,
                num_steps: int = 4, train_count: int = 500, split: str = "val"
                ) -> dict[str, float]:
  """rgb -> tok_depth and rgb -> tok_semseg (greedy MaskGIT), scored against the exact
  maps and the baselines."""
  baselines = layout_baselines(held_out_records(data, "train", train_count))
  held_out = held_out_records(data, split, count)
  depth_pred, semseg_pred = [], []
  chain = [Decoding(TOK_DEPTH, num_steps=num_steps, temperature=0.0, conditions=(RGB,)),
           Decoding(TOK_SEMSEG, num_steps=num_steps, temperature=0.0, conditions=(RGB,))]
  for batch in _batches(held_out, batch_size):
    result = generator.generate({RGB: [r[RGB] for r in batch]}, chain,
                                num_samples=len(batch))
    depth_pred += [result.decode(TOK_DEPTH, i) for i in range(len(batch))]
    semseg_pred += [result.decode(TOK_SEMSEG, i) for i in range(len(batch))]
  depth = np.stack([r[DEPTH] for r in held_out]).astype(np.float64)
  semseg = np.stack([r[SEMSEG] for r in held_out]).astype(np.int64)
  size = depth.shape[1]
  depth_pred = at_resolution(np.stack(depth_pred), size)
  semseg_pred = at_resolution(np.stack(semseg_pred), size).astype(np.int64)
  return {
      **_tokenizer_ceilings(generator, held_out, depth, semseg),
      "depth_abs_rel": abs_rel(depth_pred, depth),
      "depth_abs_rel_mean_baseline": abs_rel(np.full_like(depth, baselines["mean_depth"]),
                                             depth),
      "depth_abs_rel_mean_map_baseline": abs_rel(
          np.broadcast_to(baselines["mean_depth_map"], depth.shape), depth),
      "semseg_pixel_acc": float(np.mean(semseg_pred == semseg)),
      "semseg_pixel_acc_majority_baseline": float(
          np.mean(semseg == baselines["majority_class"])),
      "semseg_pixel_acc_majority_map_baseline": float(
          np.mean(semseg == baselines["majority_map"][None])),
      "semseg_miou": miou(semseg_pred, semseg),
      "semseg_object_miou": miou(semseg_pred, semseg, OBJECT_CLASS_IDS),
      "semseg_object_miou_majority_map_baseline": miou(
          np.broadcast_to(baselines["majority_map"], semseg.shape), semseg, OBJECT_CLASS_IDS),
      "semseg_miou_majority_map_baseline": miou(
          np.broadcast_to(baselines["majority_map"], semseg.shape), semseg),
      "num_images": len(held_out),
  }


def image_use(generator, data: Sequence[str], target: str = TOK_SEMSEG, *,
              count: int = 64, split: str = "val") -> dict[str, float]:
  """Does the model read the image? The cross-entropy (nats per token) of `target`'s true
  tokens predicted from held-out images in one pass (every position masked), beside the
  same with each image swapped for the next scene's. A model that ignores its rgb input
  scores both alike, whatever its loss; `gain` is what the right image is worth."""
  import jax.numpy as jnp  # only here: the other checks work on decoded numpy values
  import optax

  held_out = held_out_records(data, split, count)
  truth = np.stack([np.asarray(r[target]) for r in held_out]).reshape(len(held_out), -1)
  size, length = truth.shape
  query = {"tokens": np.zeros((size, length), np.int32),
           "input_mask": np.zeros((size, length), bool),
           "target_mask": np.ones((size, length), bool)}
  model = generator.model

  def cross_entropy(images: list) -> float:
    _, rgb = generator.encoder.encode(RGB, images)
    context, valid = model.encode({RGB: rgb, target: query}, rgb["input_mask"].shape[1])
    hidden = model.decode({target: query}, context, valid, length).hidden
    logits = model.logits(target, hidden)
    return float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.asarray(truth, jnp.int32))))

  images = [r[RGB] for r in held_out]
  right, swapped = cross_entropy(images), cross_entropy(images[1:] + images[:1])
  return {"cross_entropy": right, "cross_entropy_other_image": swapped,
          "gain": swapped - right, "num_images": size}


def _tokenizer_ceilings(generator, held_out: list[dict], depth: np.ndarray,
                        semseg: np.ndarray) -> dict[str, float]:
  """The best any model can score through these tokenizers: the records' own tokens,
  decoded (nan where the records do not hold them)."""
  if not all(TOK_DEPTH in r and TOK_SEMSEG in r for r in held_out):
    return dict.fromkeys(("depth_abs_rel_tokenizer_ceiling",
                          "semseg_object_miou_tokenizer_ceiling",
                          "semseg_pixel_acc_tokenizer_ceiling"), float("nan"))
  decode, size = generator.detokenizer.decode, depth.shape[1]
  depth_best = at_resolution(np.stack([decode(TOK_DEPTH, r[TOK_DEPTH]) for r in held_out]),
                             size)
  semseg_best = at_resolution(np.stack([decode(TOK_SEMSEG, r[TOK_SEMSEG])
                                        for r in held_out]), size).astype(np.int64)
  return {"depth_abs_rel_tokenizer_ceiling": abs_rel(depth_best, depth),
          "semseg_object_miou_tokenizer_ceiling": miou(semseg_best, semseg, OBJECT_CLASS_IDS),
          "semseg_pixel_acc_tokenizer_ceiling": float(np.mean(semseg_best == semseg))}


# Colors -------------------------------------------------------------------------------------


def colors_present(image: np.ndarray) -> set[str]:
  """The chromatic colors that cover at least MIN_SHARE of a uint8 image: each vivid
  pixel counts for the palette hue nearest its own (no tolerance: a generated image's
  off-palette hue still counts for the nearest color)."""
  hue, saturation, value = color_detector.hue_saturation_value(image.reshape(-1, 3))
  vivid = (saturation >= MIN_SATURATION) & (value >= MIN_VALUE)
  if not vivid.any():
    return set()
  distance = np.abs(hue[vivid][:, None] - color_detector.palette_hues()[None, :])
  distance = np.minimum(distance, 1.0 - distance)  # hue is circular
  counts = np.bincount(distance.argmin(1), minlength=len(CHROMATIC))
  return {name for name, count in zip(CHROMATIC, counts) if count >= MIN_SHARE * len(hue)}


def named_colors(caption: str) -> set[str]:
  words = set(re.findall(r"[a-z]+", caption.lower()))
  return {name for name in CHROMATIC if name in words}


def color_rates(images: Sequence[np.ndarray], captions: Sequence[str], *,
                 permutations: int = 999, seed: int = 0) -> dict[str, float]:
  """`color_agreement` of the colors in images with the colors their captions name."""
  if len(images) != len(captions):
    raise ValueError(f"{len(images)} images but {len(captions)} captions")
  return color_agreement([colors_present(image) for image in images],
                          [named_colors(caption) for caption in captions],
                          permutations=permutations, seed=seed)


def color_agreement(present: Sequence[set[str]], named: Sequence[set[str]], *,
                     permutations: int = 999, seed: int = 0) -> dict[str, float]:
  """How often a named color is present, how often an unnamed one is (chance), and a
  permutation p-value of the difference: the share of shufflings (each sample's colors
  judged against another sample's names) that do at least as well. Colors in one image
  are not independent draws, so a z-test would overstate the evidence."""
  rates = _rates(present, named)
  rng = np.random.default_rng(seed)
  observed = rates["named"] - rates["unnamed"]
  as_good = 0
  for _ in range(permutations):
    shuffled = _rates(present, [named[i] for i in rng.permutation(len(named))])
    as_good += shuffled["named"] - shuffled["unnamed"] >= observed
  return {**rates, "p_value": (1 + as_good) / (1 + permutations)}


def _rates(present: Sequence[set[str]], named: Sequence[set[str]]) -> dict[str, float]:
  named_hits = named_total = other_hits = other_total = 0
  for colors, names in zip(present, named):
    named_hits += len(names & colors)
    named_total += len(names)
    others = set(CHROMATIC) - names
    other_hits += len(others & colors)
    other_total += len(others)
  return {"named": named_hits / max(named_total, 1), "unnamed": other_hits / max(other_total, 1),
          "named_count": named_total}


def caption_to_rgb(generator, data: Sequence[str], chain: Sequence[Decoding], *,
                   count: int = 32, batch_size: int = 8, split: str = "val",
                   seed: int = 0) -> dict[str, float]:
  """Generated images against held-out captions: color rates, and the same detector on
  the real images of those captions (its calibration)."""
  held_out = held_out_records(data, split, count)
  captions = [r[CAPTION] for r in held_out]
  images = []
  for index, batch in enumerate(_batches(captions, batch_size)):
    result = generator.generate({CAPTION: batch}, chain, num_samples=len(batch),
                                seed=seed + index)
    images += [result.decode(TOK_RGB, i) for i in range(len(batch))]
  generated = color_rates(images, captions)
  real = color_rates([r[RGB] for r in held_out], captions)
  through = color_rates(reconstructions(generator, held_out), captions)
  return {"named_color_rate": generated["named"], "unnamed_color_rate": generated["unnamed"],
          "color_p_value": generated["p_value"], "named_color_count": generated["named_count"],
          "real_named_color_rate": real["named"], "real_unnamed_color_rate": real["unnamed"],
          "tokenizer_named_color_rate": through["named"],
          "tokenizer_unnamed_color_rate": through["unnamed"],
          "num_images": len(held_out)}


def reconstructions(generator, held_out: list[dict]) -> list[np.ndarray]:
  """The held-out images tokenized the way an rgb condition is (`generator.encoder`) and
  decoded the way a generated tok_rgb is: the best any generated image can look, so the
  color rates on them are the ceiling of caption -> rgb. A tokenizer that washes colors
  out caps the check whatever the transformer learns (the demo's VQ-VAE after 300 steps
  did)."""
  _, entry = generator.encoder.encode(TOK_RGB, [r[RGB] for r in held_out])
  return [generator.detokenizer.decode(TOK_RGB, ids) for ids in entry["tokens"]]


def rgb_to_caption(generator, data: Sequence[str], *, count: int = 32, batch_size: int = 16,
                   temperature: float = 0.0, split: str = "val",
                   permutations: int = 999) -> dict:
  """Captions generated from held-out images: do the colors they name belong to the
  scene (the colors its true caption names) more often than colors they do not name?
  The same statistic and permutation test as caption -> rgb, with the true caption's
  colors as what is "present"; and a few of the captions, to read."""
  held_out = held_out_records(data, split, count)
  chain = [Decoding(CAPTION, temperature=temperature, conditions=(RGB,))]
  generated = []
  for batch in _batches(held_out, batch_size):
    result = generator.generate({RGB: [r[RGB] for r in batch]}, chain,
                                num_samples=len(batch))
    generated += [result.decode(CAPTION, i) for i in range(len(batch))]
  agreement = color_agreement([named_colors(r[CAPTION]) for r in held_out],
                               [named_colors(text) for text in generated],
                               permutations=permutations)
  largest = [largest_object(data, r) for r in held_out]
  judged = [(obj, text) for obj, text in zip(largest, generated) if obj is not None]
  return {"named_color_rate": agreement["named"], "unnamed_color_rate": agreement["unnamed"],
          "named_color_count": agreement["named_count"],
          "color_p_value": agreement["p_value"],
          # Issue 20's caption measure: the biggest object's color and shape, named together.
          "largest_object_rate": (float(np.mean([names_object(text, *obj)
                                                 for obj, text in judged]))
                                  if judged else float("nan")),
          "largest_object_count": len(judged),
          "examples": list(zip([r[CAPTION] for r in held_out[:3]], generated[:3])),
          "captions": generated, "num_images": len(held_out)}


# Objects and boxes -----------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _world_args(data: tuple[str, ...]) -> dict:
  """The `fourm synth` arguments of the synthetic world among `data` (its seed and size)."""
  for path in data:
    job = os.path.join(path, world.JOB_FILE)
    if os.path.exists(job):
      with open(job) as f:
        return json.load(f)
  raise UsageError(f"none of {list(data)} is a synthetic world (no {world.JOB_FILE}): the "
                   "object checks re-draw its scenes")


def largest_object(data: Sequence[str], record: dict) -> tuple[str, str] | None:
  """(color, category) of the object covering most of the record's pixels, or None for a
  scene with no object in view. Colors are not in the records, so the scene is drawn again
  from the world's seed and the record's key (`fourm synth` is deterministic per key)."""
  counts = np.bincount(np.asarray(record["instance"]).ravel())
  if len(counts) < 2 or not counts[1:].any():
    return None
  args = _world_args(tuple(data))  # read once per data set, not once per record
  split, index = record["key"].split("/")
  scene = synthetic.sample_scene(synthetic.scene_rng(args["seed"], split, int(index)))
  maps = synthetic.render(scene, args["resolution"])
  _, _, visible = synthetic.instances_and_boxes(maps["object_index"], scene)
  biggest = scene.objects[visible[int(np.argmax(counts[1:]))]]
  return biggest.color, biggest.category


def names_object(text: str, color: str, category: str) -> bool:
  """Does the text name this object by its color and class ("... red cube ...")?"""
  return re.search(rf"\b{color} {category}\b", text.lower()) is not None


def rgb_to_boxes(generator, data: Sequence[str], metric, *, count: int = 64,
                 batch_size: int = 16, split: str = "val") -> dict:
  """Boxes generated (greedily) from held-out images, scored by COCO AP against the
  exact boxes with `metric`, a fresh `fourm.finetune.coco_metrics.CocoDetectionMetric`
  over `synthetic.OBJECT_CLASSES` (the caller's: generation sits below finetune in the
  import layers). Generated boxes carry no scores: earlier ones rank higher, as the
  sampler emits them. A box whose class is not an object class is counted and left out."""
  held_out = held_out_records(data, split, count)
  classes = list(synthetic.OBJECT_CLASSES)
  if metric.num_classes != len(classes) or len(metric):
    raise UsageError(f"rgb_to_boxes needs an empty metric over the {len(classes)} object "
                     f"classes, got {metric.num_classes} classes and {len(metric)} images")
  chain = [Decoding(DET, temperature=0.0, conditions=(RGB,))]
  unknown = generated = 0
  for batch in _batches(held_out, batch_size):
    result = generator.generate({RGB: [r[RGB] for r in batch]}, chain,
                                num_samples=len(batch))
    for i, record in enumerate(batch):
      boxes = result.decode(DET, i)
      known = [k for k, name in enumerate(boxes["classes"]) if name in classes]
      generated += len(boxes["classes"])
      unknown += len(boxes["classes"]) - len(known)
      size = np.asarray(record[RGB]).shape[:2]
      scale = np.array([size[1], size[0], size[1], size[0]], np.float64)
      truth = record[DET]
      metric.add_image(np.asarray(truth["boxes"], np.float64).reshape(-1, 4) * scale,
                       [classes.index(name) for name in truth["classes"]], size,
                       np.asarray(boxes["boxes"], np.float64).reshape(-1, 4)[known] * scale,
                       1.0 - np.arange(len(known)) / (len(known) + 1),
                       [classes.index(boxes["classes"][k]) for k in known])
  scores = metric.result()
  return {"box_ap": scores["AP"], "box_ap50": scores["AP50"], "boxes_generated": generated,
          "boxes_unknown_class": unknown, "num_images": len(held_out)}
