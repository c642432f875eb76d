"""The DiVAE decoder: code-space vectors -> pixels by conditional diffusion.

A DiVAE ("diffusion VQ-VAE", 4M's tokenizer for rgb, depth and normals, after
arXiv 2206.00386) is a `VQVAE` (tokenizers_vq/vqvae.py) whose config says
`decoder="diffusion"`: the same ViT encoder and quantizer, trained end to end with this
decoder in place of the ViT one. The decoder is a `UNet` (tokenizers_vq/unet.py) over
P x P patches of the noisy image, conditioned on the quantized code map itself (the
L2-normalized `code_dim` vectors, no projection, as the reference's
`cond_channels=latent_dim`), upsampled nearest to the patch grid and concatenated to the
patch channels, and on the timestep. It predicts x0 by default (the reference's
`prediction_type: sample`).

    training: x0, codes -> t, noise -> x_t -> UNet([x_t | codes], t) vs target  (`loss`)
    decoding: codes, key -> DDIM from N(0, I) in `steps` UNet calls            (`sample`)

Calling it (`decoder(quantized)`) samples with the config's steps and seed 0, so it
meets the one-line `vqvae.Decoder` contract; the tokenizer passes its own seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from tokenizers_vq import diffusion
from tokenizers_vq.unet import UNet, fold_patches, unfold_patches, upsample_nearest
from tokenizers_vq.vqvae_config import DiffusionConfig


class DiffusionDecoder(nnx.Module):
  """Code-space vectors [B, G, G, code_dim] -> pixels [B, R, R, channels], by DDIM."""

  def __init__(self, *, channels: int, code_dim: int, resolution: int,
               config: DiffusionConfig, rngs: nnx.Rngs):
    self.config, self.channels, self.resolution = config, channels, resolution
    p = config.patch_size
    self.unet = UNet(in_channels=channels * p * p + code_dim, out_channels=channels * p * p,
                     width=config.width, channel_mult=config.channel_mult,
                     num_res_blocks=config.num_res_blocks,
                     attention_levels=config.attention_levels, num_heads=config.num_heads,
                     norm_groups=config.norm_groups, rngs=rngs)

  def denoise(self, x_t: jax.Array, t: jax.Array, quantized: jax.Array) -> jax.Array:
    """The UNet's output (a `config.prediction`) for x_t [B, R, R, C] at timesteps t [B]."""
    p = self.config.patch_size
    patches = fold_patches(x_t, p)
    cond = upsample_nearest(quantized.astype(patches.dtype), patches.shape[1])
    out = self.unet(jnp.concatenate([patches, cond], axis=-1), t)
    return unfold_patches(out, p)

  def _shape(self, quantized: jax.Array) -> tuple[int, ...]:
    return (quantized.shape[0], self.resolution, self.resolution, self.channels)

  def loss(self, x0: jax.Array, quantized: jax.Array, key: jax.Array,
           loss_fn: diffusion.LossFn) -> tuple[jax.Array, jax.Array]:
    """The DDPM loss of clean (normalized) images x0 given their codes; also the x0
    estimate at the drawn noise levels (for training metrics)."""
    schedule = diffusion.make_schedule(self.config)
    return diffusion.training_loss(lambda x, t: self.denoise(x, t, quantized), schedule,
                                   self.config.prediction, x0, key, loss_fn)

  def sample(self, quantized: jax.Array, key: jax.Array, steps: int | None = None, *,
             x_T: jax.Array | None = None) -> jax.Array:
    """DDIM with `steps` (default: the config's) network calls from noise drawn from `key`
    (or from the given starting noise x_T [B, R, R, C])."""
    c = self.config
    return diffusion.ddim_sample(lambda x, t: self.denoise(x, t, quantized),
                                 diffusion.make_schedule(c), c.prediction,
                                 self._shape(quantized), key, steps or c.sample_steps,
                                 eta=c.eta, clip=bool(c.clip_x0), x_T=x_T)

  def preview(self, quantized: jax.Array, key: jax.Array) -> jax.Array:
    """One network call: the x0 estimate from pure noise (training-time pictures)."""
    return self.sample(quantized, key, steps=1)

  def __call__(self, quantized: jax.Array) -> jax.Array:
    return self.sample(quantized, jax.random.key(0))
