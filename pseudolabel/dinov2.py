"""DINOv2 ViT-B/14 features, as 4M-21 uses them: a patch map and a global vector.

4M-21 labelled DINOv2-B/14 features (apple/ml-4m README_DATA.md) and tokenizes them at
224 px with 14 px patches (tok_dinov2@224: 16 x 16 tokens) and as one 768-d global vector
(tok_dinov2_global). From one forward pass of the whole photo resized to a square
(`input_size`, 224 by default, a multiple of 14; the position table is interpolated):

* dinov2: the last layer's patch tokens after the final LayerNorm (DINOv2's
  `x_norm_patchtokens`), float32 [G, G, 768], G = input_size / 14, row-major over the
  image like the CLIP map;
* dinov2_global: the class token after the final LayerNorm (DINOv2's `x_norm_clstoken`,
  what its forward returns; transformers' `pooler_output`), float32 [768].

The reference code holds only the tokenizers of these features (their configs read
"DINOv2-B14" maps and "DINOv2-B14-global" vectors of 768 channels), not the extraction;
the class token is DINOv2's own image embedding. `Dinov2Labeler` writes the map and
`Dinov2GlobalLabeler` the vector; give both the same `Dinov2Labeler` (or call
`features` once) to run the network once for both: `fourm pseudolabel` runs their
`shared` step (`features`) once per batch and hands its outputs to `from_shared`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pseudolabel import DEFAULT_MODELS, tiny_4m21
from pseudolabel import torch_model
from pseudolabel.torch_model import TorchLabeler

DEFAULT_MODEL = DEFAULT_MODELS["dinov2"]   # DINOv2 ViT-B/14, as 4M-21
INPUT_SIZE = 224                          # 16 x 16 patches, as tok_dinov2@224


class Dinov2Labeler(TorchLabeler):
  """images -> dinov2 float32 [G, G, 768] each, G = input_size // 14."""

  def __init__(self, model, **kwargs):
    super().__init__(model, **kwargs)
    patch = model.config.patch_size
    if self.input_size % patch:
      raise ValueError(f"dinov2: input size {self.input_size} is not a multiple of the "
                       f"{patch} px patches")
    self.grid = self.input_size // patch
    # Register tokens (DINOv2 "with registers") sit between the class and patch tokens.
    self.skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                      input_size: int | None = None) -> Dinov2Labeler:
    _, transformers = torch_model.import_torch()
    model = torch_model.load_model("dinov2", transformers.AutoModel, name_or_path)
    preprocessing = torch_model.preprocessing_config(name_or_path)
    mean, std = cls.normalization(preprocessing, torch_model.IMAGENET_MEAN,
                                  torch_model.IMAGENET_STD)
    return cls(model, name=name_or_path, device=device, mean=mean, std=std,
               input_size=input_size or INPUT_SIZE)

  @classmethod
  def tiny(cls, device: str = "cpu", size: str = "tiny") -> Dinov2Labeler:
    _, transformers = torch_model.import_torch()
    model = transformers.Dinov2Model(tiny_4m21.dinov2_config(size))
    return cls(model, name=torch_model.TINY, device=device,
               input_size=56 if size == "tiny" else INPUT_SIZE,
               mean=torch_model.IMAGENET_MEAN, std=torch_model.IMAGENET_STD)

  def features(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(patch map float32 [G, G, D], global vector float32 [D]) per image."""
    with self.torch.inference_mode():
      out = self.model(pixel_values=self.pixels(images))
    hidden = out.last_hidden_state.float().cpu().numpy()
    pooled = out.pooler_output.float().cpu().numpy()
    return [(h[self.skip:].reshape(self.grid, self.grid, -1).astype(np.float32),
             p.astype(np.float32)) for h, p in zip(hidden, pooled)]

  @property
  def shared(self):
    """The step `fourm pseudolabel` runs once per batch for dinov2 and dinov2_global."""
    return self.features

  def from_shared(self, features, images=None) -> list[np.ndarray]:
    del images
    return [patches for patches, _ in features]

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    return self.from_shared(self.features(images))


class Dinov2GlobalLabeler:
  """images -> dinov2_global float32 [768] each (the normalized class token)."""

  def __init__(self, dinov2: Dinov2Labeler):
    self.dinov2, self.name = dinov2, dinov2.name

  @classmethod
  def from_pretrained(cls, name_or_path: str = DEFAULT_MODEL, device: str = "cpu",
                      input_size: int | None = None) -> Dinov2GlobalLabeler:
    return cls(Dinov2Labeler.from_pretrained(name_or_path, device, input_size))

  @classmethod
  def tiny(cls, device: str = "cpu", size: str = "tiny") -> Dinov2GlobalLabeler:
    return cls(Dinov2Labeler.tiny(device, size))

  @property
  def shared(self):
    return self.dinov2.features

  def from_shared(self, features, images=None) -> list[np.ndarray]:
    del images
    return [vector for _, vector in features]

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    return self.from_shared(self.dinov2.features(images))
