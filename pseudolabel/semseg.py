"""Semantic segmentation: Mask2Former trained on COCO panoptic, folded to semantic classes.

A panoptic Mask2Former predicts a set of (class, mask) queries. Folding to semantic
segmentation drops the instance identities and keeps the category: each pixel takes
the class with the highest sum over queries of p(class | query) x p(pixel in mask),
Mask2Former's own semantic inference. COCO panoptic has 133 classes (80 things, 53
stuff), so ids fit uint8; their names, from the checkpoint's `id2label`, go into the
dataset's metadata (`classes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pseudolabel import DEFAULT_MODELS
from pseudolabel import tiny as tiny_configs
from pseudolabel import torch_model
from pseudolabel.torch_model import TorchLabeler

DEFAULT_MODEL = DEFAULT_MODELS["semseg"]


class SemsegLabeler(TorchLabeler):
  """images -> class ids uint8 [H, W] each; `class_names[id]` names them."""

  def __init__(self, model, **kwargs):
    super().__init__(model, **kwargs)
    config = model.config
    self.class_names = [str(config.id2label[i]) for i in range(config.num_labels)]
    if len(self.class_names) > 256:
      raise ValueError(f"{len(self.class_names)} classes do not fit the uint8 semseg modality")

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                      input_size: int | None = None) -> SemsegLabeler:
    _, transformers = torch_model.import_torch()
    model = torch_model.load_model("semseg", transformers.Mask2FormerForUniversalSegmentation,
                                   name_or_path)
    preprocessing = torch_model.preprocessing_config(name_or_path)
    mean, std = cls.normalization(preprocessing, torch_model.IMAGENET_MEAN,
                                  torch_model.IMAGENET_STD)
    return cls(model, name=name_or_path, device=device, mean=mean, std=std,
               input_size=input_size or torch_model.input_size_of(preprocessing, 384))

  @classmethod
  def tiny(cls, device: str = "cpu", size: str = "tiny") -> SemsegLabeler:
    _, transformers = torch_model.import_torch()
    config = tiny_configs.semseg_config(size)
    return cls(transformers.Mask2FormerForUniversalSegmentation(config), name=torch_model.TINY,
               device=device, input_size=config.backbone_config.image_size,
               mean=torch_model.IMAGENET_MEAN, std=torch_model.IMAGENET_STD)

  def class_scores(self, images: Sequence[np.ndarray]):
    """Semantic scores [B, classes, S, S] at the network's input size (torch)."""
    torch = self.torch
    with torch.inference_mode():
      out = self.model(pixel_values=self.pixels(images))
      # The last class is Mask2Former's "no object": it names no category.
      classes = out.class_queries_logits.softmax(-1)[..., :-1]
      masks = torch.nn.functional.interpolate(
          out.masks_queries_logits, size=(self.input_size, self.input_size), mode="bilinear",
          align_corners=False).sigmoid()
      return torch.einsum("bqc,bqhw->bchw", classes, masks)

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    ids = self.class_scores(images).argmax(1)
    # Labels resample by nearest neighbour: no class between two classes.
    return [self.resample(label[None], image.shape[:2], "nearest")[0].cpu().numpy()
            .astype(np.uint8) for image, label in zip(images, ids)]
