"""Monocular depth: a DPT-family network (DPT-Hybrid as 4M used, DPT-Large, Depth Anything).

Most published depth networks (MiDaS' DPT-Hybrid, Depth Anything's relative models)
predict *relative inverse depth*: a disparity known only up to scale and shift. The
`depth` modality wants distances, so such a prediction d is stored as

    depth = 1 / max(d / median(d > 0), 0.01)

a relative depth, unitless: 1 at the median of the positive disparities, at most 100
(where the network sees the far background or predicts no disparity). Checkpoints that
declare metric output (`depth_estimation_type = "metric"`, Depth Anything metric) are
stored in metres as predicted. Either way the map is float32 [H, W] at the photo's own size, finite and > 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pseudolabel import DEFAULT_MODELS
from pseudolabel import tiny as tiny_configs
from pseudolabel import torch_model
from pseudolabel.torch_model import TorchLabeler

DEFAULT_MODEL = DEFAULT_MODELS["depth"]
MIN_RELATIVE_DISPARITY = 0.01   # caps relative depth at 100 x the median
MIN_METRIC_DEPTH = 1e-3         # metres


def disparity_to_depth(disparity: np.ndarray) -> np.ndarray:
  """Relative inverse depth -> relative depth, median 1 (see the module docstring)."""
  disparity = np.maximum(disparity, 0.0)
  positive = disparity[disparity > 0]
  scale = float(np.median(positive)) if positive.size else 1.0
  return (1.0 / np.maximum(disparity / scale, MIN_RELATIVE_DISPARITY)).astype(np.float32)


class DepthLabeler(TorchLabeler):
  """images -> depth float32 [H, W] each (relative or metric, per the checkpoint)."""

  def __init__(self, model, *, metric: bool, **kwargs):
    super().__init__(model, **kwargs)
    self.metric = metric

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                      input_size: int | None = None) -> DepthLabeler:
    _, transformers = torch_model.import_torch()
    model = torch_model.load_model("depth", transformers.AutoModelForDepthEstimation,
                                   name_or_path)
    preprocessing = torch_model.preprocessing_config(name_or_path)
    mean, std = cls.normalization(preprocessing, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    return cls(model, name=name_or_path, device=device, mean=mean, std=std,
               input_size=input_size or _input_size(model.config, preprocessing),
               metric=getattr(model.config, "depth_estimation_type", None) == "metric")

  @classmethod
  def tiny(cls, device: str = "cpu", size: str = "tiny") -> DepthLabeler:
    _, transformers = torch_model.import_torch()
    config = tiny_configs.depth_config(size)
    return cls(transformers.DPTForDepthEstimation(config), name=torch_model.TINY,
               device=device, input_size=config.image_size, mean=(0.5,) * 3, std=(0.5,) * 3,
               metric=False)

  def predict(self, images: Sequence[np.ndarray]):
    """The network's raw maps [B, h, w] (torch, on the device)."""
    with self.torch.inference_mode():
      return self.model(pixel_values=self.pixels(images)).predicted_depth

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    raw = self.predict(images)
    out = []
    for image, prediction in zip(images, raw):
      resized = self.resample(prediction[None], image.shape[:2])[0].cpu().numpy()
      out.append(np.maximum(resized, MIN_METRIC_DEPTH).astype(np.float32) if self.metric
                 else disparity_to_depth(resized))
    return out


def _input_size(config, preprocessing) -> int:
  if getattr(config, "is_hybrid", False):  # DPT-Hybrid's position table fixes the size
    return config.image_size
  patch = getattr(config, "patch_size", None) or \
      getattr(getattr(config, "backbone_config", None), "patch_size", None) or 16
  size = torch_model.input_size_of(preprocessing, 384)
  return max(patch, size // patch * patch)
