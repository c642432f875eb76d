"""Heads for image-level and dense tasks on the 4M encoder's feature grid.

  ClassificationHead   mean-pooled tokens -> LayerNorm -> linear (ViT / MAE fine-tuning)
  SimpleFeaturePyramid strides patch/4 ... 2*patch from the last grid alone, by
                       deconvolution and pooling (ViTDet, Li et al. 2022): a plain ViT
                       needs no hierarchical backbone for dense tasks
  SegmentationHead     the pyramid, fused top-down and summed at the finest level (semantic
                       FPN, Kirillov et al. 2019; lighter than UperNet's PPM and as good
                       on a plain ViT in ViTDet's experiments), per-pixel logits at full
                       resolution
  DepthHead            DPT (Ranftl et al. 2021): four blocks' outputs reassembled at four
                       strides, fused coarse to fine with residual conv units, upsampled to
                       full resolution; positive depth through a softplus

Feature maps are NHWC, as flax's convolutions take them. Heads are small and replicated
(no logical axes): under the mesh only the encoder's weights are sharded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fourm.finetune.encoder import EncoderOutput


def resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of NHWC maps to `size` (H, W)."""
  if x.shape[1:3] == tuple(size):
    return x
  return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method="bilinear")


class ClassificationHead(nnx.Module):
  def __init__(self, dim: int, num_classes: int, *, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    # Zero-initialized, as MAE / BEiT fine-tuning does: the first steps follow the
    # pre-trained features instead of a random projection of them.
    self.linear = nnx.Linear(dim, num_classes, kernel_init=nnx.initializers.zeros, rngs=rngs)

  def __call__(self, features: EncoderOutput) -> jax.Array:
    """-> logits [B, num_classes]."""
    pooled = features.tokens.mean(axis=(1, 2))
    return self.linear(self.norm(pooled))


class _ConvNorm(nnx.Module):
  """Conv -> LayerNorm over channels (ViTDet's pyramid convolutions)."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_channels, out_channels, (kernel, kernel), padding="SAME",
                         use_bias=False, rngs=rngs)
    self.norm = nnx.LayerNorm(out_channels, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


class SimpleFeaturePyramid(nnx.Module):
  """The last grid [B, G, G, D] -> maps at 4x, 2x, 1x and 0.5x its size, `channels` each."""

  SCALES = (4.0, 2.0, 1.0, 0.5)

  def __init__(self, dim: int, channels: int, *, rngs: nnx.Rngs):
    def up(in_c, out_c):
      return nnx.ConvTranspose(in_c, out_c, (2, 2), strides=(2, 2), rngs=rngs)
    self.up4 = nnx.List([up(dim, dim // 2), nnx.LayerNorm(dim // 2, rngs=rngs),
                         up(dim // 2, dim // 4)])
    self.up2 = up(dim, dim // 2)
    in_channels = (dim // 4, dim // 2, dim, dim)
    self.lateral = nnx.List([_ConvNorm(c, channels, 1, rngs=rngs) for c in in_channels])
    self.output = nnx.List([_ConvNorm(channels, channels, 3, rngs=rngs) for _ in in_channels])

  def __call__(self, grid: jax.Array) -> list[jax.Array]:
    first, norm, second = self.up4
    scaled = [second(jax.nn.gelu(norm(first(grid)))), self.up2(grid), grid,
              nnx.max_pool(grid, (2, 2), strides=(2, 2))]
    return [out(lat(x)) for x, lat, out in zip(scaled, self.lateral, self.output, strict=True)]


class SegmentationHead(nnx.Module):
  """-> per-pixel class logits [B, R, R, num_classes] at the input resolution."""

  def __init__(self, dim: int, num_classes: int, *, channels: int = 128, rngs: nnx.Rngs):
    self.pyramid = SimpleFeaturePyramid(dim, channels, rngs=rngs)
    self.smooth = nnx.List([_ConvNorm(channels, channels, 3, rngs=rngs) for _ in range(4)])
    self.fuse = _ConvNorm(channels, channels, 3, rngs=rngs)
    self.classifier = nnx.Conv(channels, num_classes, (1, 1), rngs=rngs)

  def __call__(self, features: EncoderOutput) -> jax.Array:
    levels = self.pyramid(features.tokens)
    # Top-down: each level adds the upsampled coarser one (FPN), then all are brought to
    # the finest stride and summed.
    path, fused = None, []
    for level, smooth in zip(reversed(levels), reversed(self.smooth), strict=True):
      path = level if path is None else level + resize(path, level.shape[1:3])
      fused.append(smooth(path))
    finest = levels[0].shape[1:3]
    x = jax.nn.gelu(self.fuse(sum(resize(f, finest) for f in fused)))
    return resize(self.classifier(x), (features.resolution,) * 2)


class _ResidualConvUnit(nnx.Module):
  """x + conv(relu(conv(relu(x)))): DPT's refinement unit."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, channels, (3, 3), padding="SAME", rngs=rngs)
    self.conv2 = nnx.Conv(channels, channels, (3, 3), padding="SAME", rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.conv2(jax.nn.relu(self.conv1(jax.nn.relu(x))))


class DepthHead(nnx.Module):
  """DPT over four encoder layers -> depth [B, R, R] (positive)."""

  def __init__(self, dim: int, *, channels: int = 128, num_layers: int = 4,
               rngs: nnx.Rngs):
    if num_layers != 4:
      raise ValueError(f"DPT reassembles four layers at four strides, got {num_layers}")
    self.project = nnx.List([nnx.Conv(dim, channels, (1, 1), rngs=rngs) for _ in range(4)])
    # Strides patch/4, patch/2, patch, 2*patch, as in DPT's reassemble stage.
    self.resample = nnx.List([
        nnx.ConvTranspose(channels, channels, (4, 4), strides=(4, 4), rngs=rngs),
        nnx.ConvTranspose(channels, channels, (2, 2), strides=(2, 2), rngs=rngs),
        None,
        nnx.Conv(channels, channels, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)])
    self.skip_units = nnx.List([_ResidualConvUnit(channels, rngs=rngs) for _ in range(4)])
    self.path_units = nnx.List([_ResidualConvUnit(channels, rngs=rngs) for _ in range(4)])
    self.head = nnx.List([
        nnx.Conv(channels, channels // 2, (3, 3), padding="SAME", rngs=rngs),
        nnx.Conv(channels // 2, 32, (3, 3), padding="SAME", rngs=rngs),
        nnx.Conv(32, 1, (1, 1), rngs=rngs)])

  def __call__(self, features: EncoderOutput) -> jax.Array:
    layers = features.layers
    if len(layers) != 4:
      raise ValueError(f"the depth head reads 4 encoder layers, the encoder gave "
                       f"{len(layers)} (its layer_indices)")
    maps = []
    for x, project, resample in zip(layers, self.project, self.resample, strict=True):
      x = project(x)
      maps.append(x if resample is None else resample(x))
    path = None
    for x, skip, unit in zip(reversed(maps), reversed(self.skip_units),
                             reversed(self.path_units), strict=True):
      x = skip(x)
      path = unit(x if path is None else x + resize(path, x.shape[1:3]))
    first, second, last = self.head
    x = resize(first(path), (features.resolution,) * 2)
    depth = last(jax.nn.relu(second(x)))[..., 0]
    return jax.nn.softplus(depth) + 1e-3  # strictly positive, for the log in the loss


def scale_invariant_log_loss(predicted: jax.Array, target: jax.Array, valid: jax.Array,
                             *, variance_focus: float = 0.85) -> jax.Array:
  """sqrt(mean(d^2) - lambda * mean(d)^2), d = log predicted - log target over valid pixels
  (Eigen et al. 2014, in the square-root form of BTS / AdaBins with lambda = 0.85):
  lambda = 1 ignores the global scale entirely, 0 is a plain log-RMSE; 0.85 keeps a little
  of it, so metric depth is learned while errors of scale weigh less than of shape."""
  valid = valid & (target > 0)
  count = jnp.maximum(valid.sum(), 1)
  d = jnp.where(valid, jnp.log(predicted) - jnp.log(jnp.where(valid, target, 1.0)), 0.0)
  mean, mean_sq = d.sum() / count, jnp.square(d).sum() / count
  return jnp.sqrt(jnp.maximum(mean_sq - variance_focus * jnp.square(mean), 1e-12))


def segmentation_loss(logits: jax.Array, labels: jax.Array, *,
                      ignore_index: int = 255) -> jax.Array:
  """Per-pixel cross-entropy at full resolution, averaged over pixels not `ignore_index`."""
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  losses = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), -1),
                                safe[..., None], axis=-1)[..., 0]
  return jnp.where(valid, losses, 0.0).sum() / jnp.maximum(valid.sum(), 1)


def classification_loss(logits: jax.Array, labels: jax.Array,
                        label_smoothing: float = 0.0) -> jax.Array:
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = targets * (1 - label_smoothing) + label_smoothing / logits.shape[-1]
  return -(targets * jax.nn.log_softmax(logits.astype(jnp.float32), -1)).sum(-1).mean()
