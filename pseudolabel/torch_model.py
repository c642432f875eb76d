"""What every network labeler shares: torch on a device, loading weights, pixels in and out.

Every labeler feeds its network a square `input_size` x `input_size` image (the whole
photo resized, not cropped, so every pixel of the photo is labelled) and resamples the
prediction back to the photo's own size, with the same half-pixel convention both ways,
so labels stay aligned with the stored rgb. Non-square photos are stretched for the
network and un-stretched on the way back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fourm.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY = "tiny-random"  # model name of the tiny random-init configurations (meaningless labels)


def import_torch():
  """(torch, transformers), or one clear error saying which extra to install."""
  try:
    import torch
    import transformers
  except ImportError as error:
    raise UsageError(f"pseudo-labelers need torch and transformers ({error}); install them "
                     "with: pip install 'fourm[pseudolabel]'") from error
  return torch, transformers


def load_model(task: str, model_class, name_or_path: str, *, what: str = "model",
               flag: str | None = None):
  """`model_class.from_pretrained` (a model, a tokenizer), with a failure to fetch turned
  into one clear error: "TASK: cannot load WHAT 'NAME' (reason)", and the command-line
  `flag` that takes a local directory instead (default --TASK-model)."""
  try:
    return model_class.from_pretrained(name_or_path)
  except (OSError, ValueError) as error:
    local = os.path.isdir(name_or_path)
    flag = flag or f"--{task.replace('_', '-')}-model"
    hint = ("" if local else " If this machine has no network, download the model "
            f"elsewhere and pass its local directory ({flag} DIR).")
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UsageError(f"{task}: cannot load {what} {name_or_path!r} ({reason}).{hint}") from error


def preprocessing_config(name_or_path: str) -> dict[str, Any]:
  """The checkpoint's preprocessor_config.json (normalization, input size), or {}.

  Read as plain JSON: the image processor classes would pull in torchvision, and we only
  need their numbers."""
  if os.path.isdir(name_or_path):
    path = os.path.join(name_or_path, "preprocessor_config.json")
  else:
    try:
      from huggingface_hub import hf_hub_download
      path = hf_hub_download(name_or_path, "preprocessor_config.json")
    except Exception:  # no network or no such file: the labeler's defaults apply
      return {}
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def input_size_of(preprocessing: dict[str, Any], default: int) -> int:
  """The square side the checkpoint was trained at, read from its preprocessing."""
  size = preprocessing.get("size") or preprocessing.get("crop_size") or {}
  if isinstance(size, int):
    return size
  return int(size.get("height") or size.get("shortest_edge") or default)


class TorchLabeler:
  """A torch network in eval mode on one device, with square resized inputs."""

  def __init__(self, model, *, name: str, input_size: int, mean: Sequence[float],
               std: Sequence[float], device: str = "cpu"):
    torch, _ = import_torch()
    self.torch = torch
    self.device = torch.device(device)
    self.model = model.to(self.device).eval()
    self.name, self.input_size = name, int(input_size)
    self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
    self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

  @staticmethod
  def normalization(preprocessing: dict[str, Any], mean, std) -> tuple[Sequence, Sequence]:
    if preprocessing.get("do_normalize") is False:
      return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return preprocessing.get("image_mean", mean), preprocessing.get("image_std", std)

  def pixels(self, images: Sequence[np.ndarray]):
    """uint8 [H, W, 3] images of any sizes -> normalized float [B, 3, S, S] on the device."""
    torch = self.torch
    resized = []
    for image in images:
      image = np.asarray(image)
      if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
      x = torch.from_numpy(image.copy()).to(self.device)  # records are read-only buffers
      x = x.permute(2, 0, 1)[None].float() / 255.0
      resized.append(torch.nn.functional.interpolate(
          x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
          antialias=True))
    return (torch.cat(resized) - self.mean) / self.std

  def resample(self, maps, size: tuple[int, int], mode: str = "bilinear"):
    """[C, h, w] -> [C, H, W] on the half-pixel grid the input resize used."""
    torch = self.torch
    if mode == "nearest":
      # float: interpolate has no integer kernels; ids < 2**24 survive exactly.
      return torch.nn.functional.interpolate(maps[None].float(), size=size,
                                             mode="nearest-exact")[0].long()
    shrinking = size[0] < maps.shape[-2] or size[1] < maps.shape[-1]
    return torch.nn.functional.interpolate(maps[None].float(), size=size, mode="bilinear",
                                           align_corners=False, antialias=shrinking)[0]
