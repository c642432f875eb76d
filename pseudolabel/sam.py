"""SAM (Segment Anything) automatic masks, and the two 4M-21 modalities made from them.

4M-21 labelled SAM instances with SAM ViT-H (apple/ml-4m, README_DATA.md) and made SAM
edges from them. `SamMaskGenerator` is SAM's automatic mask generation
(segment_anything's `SamAutomaticMaskGenerator` with its defaults: a 32 x 32 grid of
point prompts, three masks per point, kept when the predicted IoU > 0.88 and the
stability score > 0.95, then box NMS at IoU 0.7; no crop layers, no small-region
clean-up) on a transformers `SamModel`. The photo is resized to SAM's 1024 px longest
side and padded, as SAM does; masks are filtered at that input resolution (SAM filters
them upsampled to the photo's size) and kept as SAM's low-resolution logits, so they can
be resampled to any frame later. transformers' own mask-generation pipeline needs
torchvision, hence this small re-implementation.

Two labelers read a generator's masks (pass the same generator to both to run SAM once;
`from_masks` reuses masks already made; `fourm pseudolabel` runs their `shared`
generator once per batch and hands its masks to `from_shared`):

* `SamEdgeLabeler` -> sam_edge uint8 [H, W] at the photo's size: 1 on the boundary of
  any mask (a mask pixel with a 4-neighbour outside that mask; the image border is no
  boundary), else 0. The released reference code holds only SAM edges' tokens, not the
  operator that made them; this is the boundary of the instance masks.

* `SamInstanceLabeler` -> an *untokenized* sam_instance record, int32 [R, 22 + 64*64]
  (the raw modality "sam_instance_masks" of fourm/modalities.py: raw only, no model
  modality reads it).
  Columns 0:22 are the sam_instance layout of tokenizers_vq/sam_instance.py: query
  point (x, y) and the containing instance's box (xmin, ymin, xmax, ymax) in pixels of
  the 224 px frame (the photo's center square resized, as tokenization crops it), with
  the 16 instance-token columns 6:22 set to -1 (`UNTOKENIZED`). Columns 22: are that
  instance's mask inside its box at 64 x 64 (0/1, row-major; all 0 on a point's "none"
  row): exactly what the reference's SAM-instance VQ-VAE
  (EPFL-VILAB/4M_tokenizers_sam-instance_1k_64: 64 x 64 masks, 16 px patches -> 16 ids
  of a 1024 codebook) reads. SAM's run and that tokenizer's are separate steps:
  `tokenize_records(records, WORKDIR)` takes the tokenizer converted by `fourm convert
  --from reference` (raw modality sam_mask) and makes the sam_instance records
  (`with_tokens(record, ids)` for ids from elsewhere). The sam_instance codec refuses
  rows whose tokens are -1, so an untokenized record cannot be tokenized by mistake.

  As the reference's SAMInstanceTokTransform: 7 random query points (here distinct,
  drawn from a generator seeded by the photo's pixels, so a photo always gets the same
  points), every instance containing a point listed under it, instances whose box
  covers under 0.0005 of the frame dropped (its SAMInstanceTransform's threshold). The
  reference tests containment on the instance's polygon; here on its mask. It shuffles
  points and instances per sample; a record lists them in draw order and by SAM's
  predicted IoU.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Sequence

import numpy as np

from fourm.data.sam_instances import (INSTANCE_VOCAB, MASK_SIZE, ROW_WIDTH,  # noqa: F401
                                      TOKENS_PER_INSTANCE, UNTOKENIZED, has_instance,
                                      instance_masks, instance_rows, with_tokens)
from pseudolabel import DEFAULT_MODELS, tiny_4m21
from pseudolabel import torch_model
from pseudolabel.torch_model import TorchLabeler

DEFAULT_MODEL = DEFAULT_MODELS["sam"]     # SAM ViT-H, as 4M-21
MASK_THRESHOLD = 0.0                      # SAM's: a pixel is in a mask where its logit > 0

# The sam_instance layout (tokenizers_vq/sam_instance.py) and the reference tokenizer's input.
FRAME = 224
QUERY_POINTS = 7
MIN_BOX_AREA = 0.0005                     # of the frame, as the reference's bbox_area_threshold


@dataclasses.dataclass(frozen=True)
class SamMasks:
  """One photo's automatic masks, best first: SAM's low-resolution logits and scores."""
  logits: np.ndarray        # float32 [N, m, m]: SAM's mask logits over the padded input
  scores: np.ndarray        # float32 [N]: predicted IoU
  valid: tuple[int, int]    # (h, w) of the photo inside the padded input (px)
  input_size: int           # the padded input's side (px)

  def __len__(self) -> int:
    return len(self.logits)

  def chunks(self, size: int = 16):
    """The masks a few at a time (photo-size masks of many instances are large)."""
    for start in range(0, len(self), size):
      yield dataclasses.replace(self, logits=self.logits[start:start + size],
                                scores=self.scores[start:start + size])

  def masks(self, size: tuple[int, int], box=(0.0, 0.0, 1.0, 1.0), chunk: int = 16):
    """bool [N, height, width]: the masks over `box` (x0, y0, x1, y1 in [0, 1] of the photo),
    resampled from the logits at pixel centres (bilinear), thresholded as SAM does."""
    import torch
    height, width = size
    out = np.zeros((len(self), height, width), bool)
    if not len(self):
      return out
    x0, y0, x1, y1 = box
    # Pixel centres of the output in the valid input region's normalized coordinates.
    u = x0 + (np.arange(width) + 0.5) / width * (x1 - x0)
    v = y0 + (np.arange(height) + 0.5) / height * (y1 - y0)
    gy, gx = np.meshgrid(2 * v - 1, 2 * u - 1, indexing="ij")
    grid = torch.from_numpy(np.stack([gx, gy], -1).astype(np.float32))[None]
    for start in range(0, len(self), chunk):
      valid = _valid_logits(torch.from_numpy(self.logits[start:start + chunk]), self.valid,
                            self.input_size)
      sampled = torch.nn.functional.grid_sample(valid[:, None], grid.expand(len(valid), -1, -1, -1),
                                                mode="bilinear", align_corners=False)
      out[start:start + chunk] = (sampled[:, 0] > MASK_THRESHOLD).numpy()
    return out


def _valid_logits(low_res, valid: tuple[int, int], input_size: int):
  """[N, m, m] low-resolution logits -> [N, h, w] over the photo (padding cut off), as
  SAM's postprocess_masks: upsampled to the padded input, then cropped."""
  import torch
  up = torch.nn.functional.interpolate(low_res[:, None].float(), size=(input_size, input_size),
                                       mode="bilinear", align_corners=False)[:, 0]
  return up[:, :valid[0], :valid[1]]


def stability_scores(logits, offset: float = 1.0):
  """SAM's stability score: IoU of the masks thresholded at +offset and -offset."""
  inside = (logits > MASK_THRESHOLD + offset).flatten(1).sum(-1)
  outside = (logits > MASK_THRESHOLD - offset).flatten(1).sum(-1)
  return inside.float() / outside.clamp(min=1).float()


def mask_boxes(masks):
  """bool [N, h, w] -> float [N, 4] (xmin, ymin, xmax, ymax): inclusive pixel indices, as
  SAM's batched_mask_to_box (empty masks give zeros)."""
  import torch
  rows, cols = masks.any(2), masks.any(1)

  def extent(hit):
    index = torch.arange(hit.shape[1], device=hit.device)
    low = torch.where(hit, index, hit.shape[1]).min(1).values
    high = torch.where(hit, index, -1).max(1).values
    empty = ~hit.any(1)
    return low.masked_fill(empty, 0), high.masked_fill(empty, 0)

  (x0, x1), (y0, y1) = extent(cols), extent(rows)
  return torch.stack([x0, y0, x1, y1], -1).float()


def box_nms(boxes, scores, threshold: float):
  """Indices kept by greedy NMS, best score first (torchvision's `nms` semantics)."""
  import torch
  order = torch.argsort(scores, descending=True, stable=True)
  boxes = boxes[order]
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  low = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
  high = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
  inter = (high - low).clamp(min=0).prod(-1)
  iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-12)
  suppressed = torch.zeros(len(boxes), dtype=torch.bool)
  keep = []
  for i in range(len(boxes)):
    if suppressed[i]:
      continue
    keep.append(i)
    suppressed |= iou[i] > threshold
  return order[keep]


class SamMaskGenerator(TorchLabeler):
  """images -> `SamMasks` each (SAM automatic mask generation, see the module docstring)."""

  def __init__(self, model, *, points_per_side: int = 32, points_per_batch: int = 64,
               pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
               stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, **kwargs):
    super().__init__(model, **kwargs)
    self.points_per_side, self.points_per_batch = points_per_side, points_per_batch
    self.pred_iou_thresh, self.stability_score_thresh = pred_iou_thresh, stability_score_thresh
    self.stability_score_offset, self.box_nms_thresh = stability_score_offset, box_nms_thresh

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                      **options) -> SamMaskGenerator:
    _, transformers = torch_model.import_torch()
    model = torch_model.load_model("sam", transformers.SamModel, name_or_path)
    preprocessing = torch_model.preprocessing_config(name_or_path)
    mean, std = cls.normalization(preprocessing, torch_model.IMAGENET_MEAN,
                                  torch_model.IMAGENET_STD)
    return cls(model, name=name_or_path, device=device, mean=mean, std=std,
               input_size=model.config.vision_config.image_size, **options)

  @classmethod
  def tiny(cls, device: str = "cpu", size: str = "tiny", **options) -> SamMaskGenerator:
    """Random weights predict meaningless IoUs and stabilities, and near-identical masks
    for every point: the tiny generator (8 x 8 points) filters by neither and suppresses
    only boxes overlapping over 0.95, so its labels have a few masks to test."""
    _, transformers = torch_model.import_torch()
    config = tiny_4m21.sam_config(size)
    defaults = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                    box_nms_thresh=0.95)
    return cls(transformers.SamModel(config), name=torch_model.TINY, device=device,
               input_size=config.vision_config.image_size, mean=torch_model.IMAGENET_MEAN,
               std=torch_model.IMAGENET_STD, **{**defaults, **options})

  def letterboxed(self, image: np.ndarray):
    """One photo -> (normalized [1, 3, S, S] with the photo resized to longest side S at
    the top left, zero padding elsewhere; the photo's (h, w) there), as SAM's input."""
    torch = self.torch
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    scale = self.input_size / max(height, width)
    h, w = int(height * scale + 0.5), int(width * scale + 0.5)   # SAM's rounding
    x = torch.from_numpy(image.copy()).to(self.device).permute(2, 0, 1)[None].float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                                        antialias=True)
    x = (x - self.mean) / self.std
    padded = x.new_zeros((1, 3, self.input_size, self.input_size))
    padded[..., :h, :w] = x
    return padded, (h, w)

  def point_grid(self, valid: tuple[int, int]):
    """SAM's build_point_grid over the photo, in input pixels: [P, 2] (x, y)."""
    n = self.points_per_side
    side = (np.arange(n) + 0.5) / n
    ys, xs = np.meshgrid(side * valid[0], side * valid[1], indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float32)

  def __call__(self, images: Sequence[np.ndarray]) -> list[SamMasks]:
    torch = self.torch
    inputs = [self.letterboxed(image) for image in images]
    with torch.inference_mode():
      embeddings = self.model.get_image_embeddings(torch.cat([x for x, _ in inputs]))
      return [self._generate(embedding[None], valid)
              for embedding, (_, valid) in zip(embeddings, inputs)]

  def _generate(self, embedding, valid: tuple[int, int]) -> SamMasks:
    torch = self.torch
    points = torch.from_numpy(self.point_grid(valid)).to(self.device)
    kept_logits, kept_scores, kept_boxes = [], [], []
    for start in range(0, len(points), self.points_per_batch):
      batch = points[start:start + self.points_per_batch]
      out = self.model(image_embeddings=embedding, input_points=batch[None, :, None],
                       input_labels=torch.ones_like(batch[None, :, :1], dtype=torch.long),
                       multimask_output=True)
      low_res = out.pred_masks[0].flatten(0, 1).float()        # [P * 3, m, m]
      scores = out.iou_scores[0].flatten().float()
      logits = _valid_logits(low_res, valid, self.input_size)
      keep = torch.ones_like(scores, dtype=torch.bool)
      if self.pred_iou_thresh > 0:          # as SAM: a threshold of 0 filters nothing
        keep &= scores > self.pred_iou_thresh
      if self.stability_score_thresh > 0:
        keep &= stability_scores(logits, self.stability_score_offset) > self.stability_score_thresh
      masks = logits > MASK_THRESHOLD
      keep &= masks.flatten(1).any(1)     # an empty mask is no instance
      kept_logits.append(low_res[keep])
      kept_scores.append(scores[keep])
      kept_boxes.append(mask_boxes(masks[keep]))
    logits, scores, boxes = (torch.cat(kept_logits), torch.cat(kept_scores),
                             torch.cat(kept_boxes))
    keep = box_nms(boxes.cpu(), scores.cpu(), self.box_nms_thresh).to(self.device)
    return SamMasks(logits=logits[keep].cpu().numpy().astype(np.float32),
                    scores=scores[keep].cpu().numpy().astype(np.float32),
                    valid=valid, input_size=self.input_size)


def mask_boundaries(masks: np.ndarray) -> np.ndarray:
  """bool [N, H, W] -> uint8 [H, W]: 1 where a pixel of some mask has a 4-neighbour
  outside that mask (neighbours past the image border count as inside)."""
  edges = np.zeros(masks.shape[1:], bool)
  for mask in masks:
    padded = np.pad(mask, 1, mode="edge")
    interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    edges |= mask & ~interior
  return edges.astype(np.uint8)


class _FromSamMasks:
  """A task made from SAM's automatic masks: built around a `SamMaskGenerator` (its own,
  or the one the job shares between sam_edge and sam_instance), labelling from masks."""

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                      **options):
    return cls(SamMaskGenerator.from_pretrained(name_or_path, device, **options))

  @classmethod
  def tiny(cls, device: str = "cpu", **options):
    return cls(SamMaskGenerator.tiny(device, **options))

  @property
  def shared(self) -> SamMaskGenerator:
    return self.sam

  def from_shared(self, masks, images):
    return self.from_masks(masks, images)


class SamEdgeLabeler(_FromSamMasks):
  """images -> sam_edge uint8 [H, W] each: the boundaries of SAM's automatic masks."""

  def __init__(self, sam: SamMaskGenerator):
    self.sam = sam
    self.name = sam.name

  def from_masks(self, masks: Sequence[SamMasks], images: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for m, image in zip(masks, images):
      edges = np.zeros(image.shape[:2], np.uint8)
      for part in m.chunks():
        edges |= mask_boundaries(part.masks(image.shape[:2]))
      out.append(edges)
    return out

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    return self.from_masks(self.sam(images), images)


def query_points(image: np.ndarray, count: int = QUERY_POINTS, seed: int = 0,
                 frame: int = FRAME) -> np.ndarray:
  """`count` distinct pixels (x, y) of the frame, drawn from the photo's own pixels."""
  rng = np.random.default_rng([seed, zlib.crc32(np.ascontiguousarray(image).tobytes())])
  flat = rng.choice(frame * frame, size=count, replace=False)
  return np.stack([flat % frame, flat // frame], -1).astype(np.int64)


def center_square(height: int, width: int) -> tuple[float, float, float, float]:
  """The photo's largest centered square (x0, y0, x1, y1 in [0, 1]): the crop that
  tokenization takes (fourm.data.augment.center_crop_box)."""
  from fourm.data import augment
  return augment.center_crop_box(height, width)


def box_crop_mask(mask: np.ndarray, box, size: int = MASK_SIZE) -> np.ndarray:
  """The mask inside its inclusive pixel box, resized (nearest) to size x size."""
  xmin, ymin, xmax, ymax = (int(v) for v in box)
  crop = mask[ymin:ymax + 1, xmin:xmax + 1]
  rows = np.minimum(((np.arange(size) + 0.5) * crop.shape[0] / size).astype(int), crop.shape[0] - 1)
  cols = np.minimum(((np.arange(size) + 0.5) * crop.shape[1] / size).astype(int), crop.shape[1] - 1)
  return crop[rows][:, cols]


def instance_record(masks: np.ndarray, points: np.ndarray,
                    min_box_area: float = MIN_BOX_AREA) -> np.ndarray:
  """bool [N, F, F] instance masks (best first) and [P, 2] query points -> the untokenized
  record int32 [R, 22 + 64*64] (see the module docstring)."""
  frame = masks.shape[-1]
  boxes = np.zeros((len(masks), 4), np.int64)
  usable = np.zeros(len(masks), bool)
  for i, mask in enumerate(masks):
    ys, xs = np.nonzero(mask)
    if len(xs):
      boxes[i] = xs.min(), ys.min(), xs.max(), ys.max()
      area = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]) / frame ** 2
      usable[i] = area >= min_box_area
  rows = []
  for x, y in points.tolist():
    members = [i for i in np.flatnonzero(usable) if masks[i, y, x]]
    if not members:
      rows.append(np.r_[[x, y], [UNTOKENIZED] * (ROW_WIDTH - 2), np.zeros(MASK_SIZE ** 2)])
    for i in members:
      crop = box_crop_mask(masks[i], boxes[i]).ravel()
      rows.append(np.r_[[x, y], boxes[i], [UNTOKENIZED] * TOKENS_PER_INSTANCE, crop])
  return np.asarray(rows, np.int32).reshape(-1, ROW_WIDTH + MASK_SIZE ** 2)


class SamInstanceLabeler(_FromSamMasks):
  """images -> untokenized sam_instance records int32 [R, 22 + 64*64] each."""

  def __init__(self, sam: SamMaskGenerator, *, points: int = QUERY_POINTS, seed: int = 0,
               frame: int = FRAME, min_box_area: float = MIN_BOX_AREA):
    self.sam, self.name = sam, sam.name
    self.points, self.seed, self.frame, self.min_box_area = points, seed, frame, min_box_area


  def frame_masks(self, masks: SamMasks, image: np.ndarray) -> np.ndarray:
    """bool [N, F, F]: the masks over the photo's center square, resized to the frame."""
    return masks.masks((self.frame, self.frame), center_square(*image.shape[:2]))

  def from_masks(self, masks: Sequence[SamMasks], images: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [instance_record(self.frame_masks(m, image),
                            query_points(image, self.points, self.seed, self.frame),
                            self.min_box_area)
            for m, image in zip(masks, images)]

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    return self.from_masks(self.sam(images), images)
