"""CLIP ViT-B/16 patch features from the last transformer layer, as 4M uses them.

The vision tower's last hidden state without the class token is a [G, G, D] map at
patch resolution (G = input size / 16: 14 x 14 x 768 at CLIP's 224 px), aligned with the
whole resized photo. A full CLIP checkpoint loads too; only its vision tower is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pseudolabel import DEFAULT_MODELS
from pseudolabel import tiny as tiny_configs
from pseudolabel import torch_model
from pseudolabel.torch_model import TorchLabeler

DEFAULT_MODEL = DEFAULT_MODELS["clip"]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipLabeler(TorchLabeler):
  """images -> float32 [G, G, D] each, G = input_size // patch_size."""

  def __init__(self, model, **kwargs):
    super().__init__(model, **kwargs)
    self.grid = self.input_size // model.config.patch_size

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                      input_size: int | None = None) -> ClipLabeler:
    _, transformers = torch_model.import_torch()
    model = torch_model.load_model("clip", transformers.CLIPVisionModel, name_or_path)
    preprocessing = torch_model.preprocessing_config(name_or_path)
    mean, std = cls.normalization(preprocessing, CLIP_MEAN, CLIP_STD)
    # The position table fixes the input size to what CLIP was trained at.
    return cls(model, name=name_or_path, device=device, mean=mean, std=std,
               input_size=input_size or model.config.image_size)

  @classmethod
  def tiny(cls, device: str = "cpu", size: str = "tiny") -> ClipLabeler:
    _, transformers = torch_model.import_torch()
    config = tiny_configs.clip_config(size)
    return cls(transformers.CLIPVisionModel(config), name=torch_model.TINY, device=device,
               input_size=config.image_size, mean=CLIP_MEAN, std=CLIP_STD)

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    with self.torch.inference_mode():
      hidden = self.model(pixel_values=self.pixels(images)).last_hidden_state
    patches = hidden[:, 1:].float().cpu().numpy()   # drop the class token
    return [p.reshape(self.grid, self.grid, -1).astype(np.float32) for p in patches]
