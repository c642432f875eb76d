"""Canny edges of the photo (4M-21's `canny_edge`), with scikit-image.

The reference (apple/ml-4m) ships the tokenizer of this modality but not the step that
made its labels, so the parameters are the common ones of Canny edges as a conditioning
modality, ControlNet's OpenCV `Canny(image, 100, 200)`: its unsmoothed 3 x 3 Sobel
(gain 4) seeds an edge at a step of 50 grey levels and continues it down to 25. Here
the image is the 0..255 luma, smoothed first (Gaussian, sigma 1, after which the Sobel
magnitude of a step is about 2.5 x its height), so the hysteresis thresholds that find
those same steps are 2.5 x 25 and 2.5 x 50. Image borders are extended by their nearest
pixels, so a photo's frame is no edge. The map is uint8 [H, W] at the photo's size: 1
on an edge, 0 elsewhere (`Values.CLASSES`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fourm.data import measures
from fourm.errors import UsageError

SIGMA = 1.0
LOW_STEP, HIGH_STEP = 25.0, 50.0   # grey levels: a step that continues / seeds an edge
SOBEL_GAIN = 2.5                    # Sobel magnitude of a unit step after the smoothing
LOW_THRESHOLD = SOBEL_GAIN * LOW_STEP
HIGH_THRESHOLD = SOBEL_GAIN * HIGH_STEP


def canny_edges(image: np.ndarray, sigma: float = SIGMA, low: float = LOW_THRESHOLD,
                high: float = HIGH_THRESHOLD) -> np.ndarray:
  """uint8 [H, W] image edges (0 / 1) of a uint8 [H, W, 3] image."""
  try:
    from skimage import feature
  except ImportError as error:
    raise UsageError("canny edges need scikit-image; install it with: "
                     "pip install 'fourm[pseudolabel]'") from error
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
  edges = feature.canny(measures.luma(image), sigma=sigma, low_threshold=low,
                        high_threshold=high, mode="nearest")
  return edges.astype(np.uint8)


class CannyLabeler:
  """images -> canny_edge uint8 [H, W] each (no network: `tiny()` is the same labeler)."""

  def __init__(self, sigma: float = SIGMA, low: float = LOW_THRESHOLD,
               high: float = HIGH_THRESHOLD):
    self.sigma, self.low, self.high = sigma, low, high
    self.name = (f"scikit-image canny on 0..255 luma, sigma {sigma:g}, "
                 f"thresholds {low:g} / {high:g}")

  @classmethod
  def tiny(cls, device: str = "cpu") -> CannyLabeler:
    del device  # runs on the CPU
    return cls()

  def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [canny_edges(image, self.sigma, self.low, self.high) for image in images]
