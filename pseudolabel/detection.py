"""Boxes: a detection transformer (DETR family) on COCO; detections scored >= 0.6 are kept.

Each query of a DETR-style model predicts one box (center x, center y, width, height,
normalized to the input image) and class scores. Because the whole photo is resized
(not cropped or padded) to the input, normalized boxes carry over to the photo as they
are. The original DETR scores with a softmax that includes a "no object" class; its
descendants (Conditional / Deformable DETR, RT-DETR) use per-class sigmoids. Class names
come from the checkpoint's label map (`id2label`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pseudolabel import DEFAULT_MODELS
from pseudolabel import tiny as tiny_configs
from pseudolabel import torch_model
from pseudolabel.torch_model import TorchLabeler

DEFAULT_MODEL = DEFAULT_MODELS["det"]
SCORE_THRESHOLD = 0.6      # 4M kept detections at or above this score
_SOFTMAX_FAMILIES = ("detr", "table-transformer")  # scored with a "no object" class


def select_detections(scores: np.ndarray, labels: np.ndarray, boxes_cxcywh: np.ndarray,
                      class_names: Sequence[str], threshold: float = SCORE_THRESHOLD
                      ) -> dict[str, Any]:
  """Per-query (score, label, box) -> the det modality: boxes xyxy in [0, 1], best first."""
  keep = np.flatnonzero(scores >= threshold)
  keep = keep[np.argsort(-scores[keep], kind="stable")]
  cx, cy, w, h = np.asarray(boxes_cxcywh, np.float64)[keep].T.reshape(4, -1)
  boxes = np.clip(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1), 0.0, 1.0)
  return {"boxes": boxes.astype(np.float32).reshape(-1, 4),
          "classes": [str(class_names[int(label)]) for label in labels[keep]],
          "scores": scores[keep].astype(np.float32)}


class DetectionLabeler(TorchLabeler):
  """images -> {"boxes": float32 [N, 4], "classes": [str], "scores": float32 [N]} each."""

  def __init__(self, model, *, threshold: float = SCORE_THRESHOLD, **kwargs):
    super().__init__(model, **kwargs)
    config = model.config
    self.threshold = threshold
    self.class_names = [str(config.id2label.get(i, f"class_{i}"))
                        for i in range(config.num_labels)]
    self.softmax = config.model_type in _SOFTMAX_FAMILIES

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                      input_size: int | None = None) -> DetectionLabeler:
    _, transformers = torch_model.import_torch()
    model = torch_model.load_model("det", transformers.AutoModelForObjectDetection, name_or_path)
    preprocessing = torch_model.preprocessing_config(name_or_path)
    mean, std = cls.normalization(preprocessing, torch_model.IMAGENET_MEAN,
                                  torch_model.IMAGENET_STD)
    # DETR trains on an 800 px shortest side; a square 640 keeps most of that on CPUs too.
    return cls(model, name=name_or_path, device=device, mean=mean, std=std,
               input_size=input_size or min(torch_model.input_size_of(preprocessing, 640), 800))

  @classmethod
  def tiny(cls, device: str = "cpu", size: str = "tiny") -> DetectionLabeler:
    _, transformers = torch_model.import_torch()
    return cls(transformers.DetrForObjectDetection(tiny_configs.det_config(size)),
               name=torch_model.TINY, device=device, input_size=64 if size == "tiny" else 640,
               mean=torch_model.IMAGENET_MEAN, std=torch_model.IMAGENET_STD)

  def query_scores(self, images: Sequence[np.ndarray]):
    """(scores [B, Q], labels [B, Q], boxes cxcywh [B, Q, 4]) as numpy."""
    with self.torch.inference_mode():
      out = self.model(pixel_values=self.pixels(images))
      probs = out.logits.softmax(-1)[..., :-1] if self.softmax else out.logits.sigmoid()
      scores, labels = probs.max(-1)
      return scores.cpu().numpy(), labels.cpu().numpy(), out.pred_boxes.float().cpu().numpy()

  def __call__(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    scores, labels, boxes = self.query_scores(images)
    return [select_detections(s, l, b, self.class_names, self.threshold)
            for s, l, b in zip(scores, labels, boxes)]
