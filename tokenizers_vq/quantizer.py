"""The vector quantizer of the VQ-VAE tokenizers: cosine lookup, EMA codebook, dead codes.

What it does, and why:

* **Low-dimensional, L2-normalized codes** (ViT-VQGAN, 4M's `norm_codes=True`): encoder
  vectors are projected to a small code space (32-d by default) and both they and the
  codebook entries live on the unit sphere, so the nearest code is the one of highest
  cosine similarity. Small, normalized codes are what keeps a 16k codebook in use.
* **EMA codebook** (van den Oord et al. 2017, appendix): codes are not trained by the
  optimizer. After each step every code moves to the running mean of the encoder vectors
  assigned to it: an exponential moving average of the cluster sizes (`cluster_size`,
  Laplace-smoothed when dividing so an empty cluster never divides by zero) and of the
  summed assigned vectors (`embed_avg`); the code is their ratio, renormalized.
* **Commitment loss** `beta * mean((z - sg(q))^2)` pulls the encoder towards its codes;
  **straight-through** gradients `z + sg(q - z)` let the reconstruction loss reach the
  encoder through the non-differentiable lookup.
* **Dead-code replacement** (4M's `threshold_ema_dead_code`, "batch_random" policy):
  after the EMA update, a code whose EMA usage is below
  `T = num_vectors / (c_replace * vocab_size)` (num_vectors = batch size x tokens per
  image, so T is 1/c of a uniform share; c = 32) is replaced by a random encoder vector of
  the current batch; its EMA count restarts at T and its EMA sum at T times the new
  vector, so the code is where the data is and must earn its keep from then on. It can
  be switched off, to compare codebook usage with and without it.

The codebook and its EMA statistics are `CodebookState` variables, not `nnx.Param`s: an
optax optimizer over `nnx.Param` never sees them, and the training step updates them
with the pure functions below (`ema_update`, `replace_dead_codes`).

Reference names (apple/ml-4m `VectorQuantizerLucid`, cosine codebook) -> here:
  quantize._codebook.embed         [K, D]  -> quantizer.codebook     [K, D]
  quantize._codebook.cluster_size  [K]     -> quantizer.cluster_size [K]
  (the reference's cosine codebook keeps no EMA sum; `quantizer.embed_avg` starts as
  `codebook * cluster_size` when converting.)
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_CODE_DIM = 32
DEFAULT_DECAY = 0.99
DEFAULT_COMMITMENT_WEIGHT = 0.25
DEFAULT_REPLACE_C = 32.0
_NORM_EPS = 1e-6


class CodebookState(nnx.Variable):
  """Codebook entries and their EMA statistics: updated by EMA, never by the optimizer."""


class Codebook(NamedTuple):
  """The arrays of a codebook, for the pure update functions."""
  codebook: jax.Array      # [K, D] unit vectors
  cluster_size: jax.Array  # [K] EMA of how many vectors each code was assigned
  embed_avg: jax.Array     # [K, D] EMA of the sum of the vectors assigned to each code


class QuantizerOutput(NamedTuple):
  quantized: jax.Array        # [..., D] code vectors, straight-through to `latents`
  codes: jax.Array            # [...] int32 code ids
  latents: jax.Array          # [..., D] the L2-normalized encoder vectors
  commitment_loss: jax.Array  # scalar, already weighted by beta


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  x32 = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=axis, keepdims=True))
  return x32 / jnp.maximum(norm, _NORM_EPS)


def nearest_codes(latents: jax.Array, codebook: jax.Array) -> jax.Array:
  """int32 ids of the codes of highest cosine similarity to unit vectors `latents` [..., D]."""
  similarity = jnp.einsum("...d,kd->...k", latents, codebook)
  return jnp.argmax(similarity, axis=-1).astype(jnp.int32)


def dead_code_threshold(num_vectors: int, vocab_size: int, replace_c: float) -> float:
  """EMA usage below which a code counts as dead: 1/c of a uniform share of the batch."""
  return num_vectors / (replace_c * vocab_size)


def ema_update(state: Codebook, latents: jax.Array, codes: jax.Array, *, decay: float,
               eps: float = 1e-5) -> Codebook:
  """One EMA step: every code moves towards the mean of the unit vectors assigned to it.

  `latents` [N, D] and `codes` [N] are flat. Counts and sums are segment sums, not a
  one-hot matrix: N x K would be gigabytes at 224 px with a 16k vocabulary.
  """
  vocab_size = state.codebook.shape[0]
  counts = jnp.zeros((vocab_size,), jnp.float32).at[codes].add(1.0)
  sums = jax.ops.segment_sum(latents.astype(jnp.float32), codes, num_segments=vocab_size)
  cluster_size = decay * state.cluster_size + (1.0 - decay) * counts
  embed_avg = decay * state.embed_avg + (1.0 - decay) * sums
  total = jnp.sum(cluster_size)
  smoothed = (cluster_size + eps) / (total + vocab_size * eps) * total
  means = embed_avg / jnp.maximum(smoothed, 1e-12)[:, None]
  # A code that was never assigned anything has no mean yet: it keeps its direction.
  has_mean = jnp.linalg.norm(embed_avg, axis=-1, keepdims=True) > _NORM_EPS
  codebook = jnp.where(has_mean, l2_normalize(means), state.codebook)
  return Codebook(codebook, cluster_size, embed_avg)


def replace_dead_codes(state: Codebook, latents: jax.Array, key: jax.Array,
                       threshold: float) -> tuple[Codebook, jax.Array]:
  """Codes with EMA usage below `threshold` become random rows of `latents` [N, D].

  Returns the new state and the number of codes replaced. Dead codes receive distinct
  vectors when the batch has at least as many vectors as the codebook has codes.
  Everything else is left bit-for-bit unchanged.
  """
  vocab_size = state.codebook.shape[0]
  num_vectors = latents.shape[0]
  if num_vectors >= vocab_size:
    candidates = jax.random.permutation(key, num_vectors)[:vocab_size]
  else:
    candidates = jax.random.randint(key, (vocab_size,), 0, num_vectors)
  fresh = l2_normalize(latents[candidates])
  dead = state.cluster_size < threshold
  codebook = jnp.where(dead[:, None], fresh, state.codebook)
  cluster_size = jnp.where(dead, jnp.float32(threshold), state.cluster_size)
  embed_avg = jnp.where(dead[:, None], fresh * threshold, state.embed_avg)
  return Codebook(codebook, cluster_size, embed_avg), jnp.sum(dead).astype(jnp.int32)


def usage_and_perplexity(codes: jax.Array, vocab_size: int) -> tuple[jax.Array, jax.Array]:
  """Share of the codebook used by `codes` (in [0, 1]) and exp(entropy) of their histogram."""
  counts = jnp.zeros((vocab_size,), jnp.float32).at[codes.reshape(-1)].add(1.0)
  probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)),
                               0.0))
  return jnp.mean(counts > 0), jnp.exp(entropy)


class VectorQuantizer(nnx.Module):
  """Cosine-similarity vector quantizer with an EMA codebook and dead-code replacement.

  `__call__` only reads the codebook (it is the same in training and inference);
  `update` is the training-time EMA step plus replacement, called after the gradient step
  on the quantizer output of the same batch.
  """

  def __init__(self, vocab_size: int, code_dim: int = DEFAULT_CODE_DIM, *,
               commitment_weight: float = DEFAULT_COMMITMENT_WEIGHT,
               decay: float = DEFAULT_DECAY, eps: float = 1e-5,
               replace_c: float | None = DEFAULT_REPLACE_C, rngs: nnx.Rngs):
    if vocab_size < 2 or code_dim < 1:
      raise ValueError(f"vector quantizer needs vocab_size >= 2 and code_dim >= 1, got "
                       f"{vocab_size} and {code_dim}")
    if not 0.0 < decay < 1.0:
      raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
    self.vocab_size, self.code_dim = vocab_size, code_dim
    self.commitment_weight, self.decay, self.eps = commitment_weight, decay, eps
    self.replace_c = replace_c  # None: dead-code replacement off
    codebook = l2_normalize(jax.random.normal(rngs.params(), (vocab_size, code_dim)))
    self.codebook = CodebookState(codebook)
    # Empty statistics: the first batch assigned to a code defines it.
    self.cluster_size = CodebookState(jnp.zeros((vocab_size,), jnp.float32))
    self.embed_avg = CodebookState(jnp.zeros((vocab_size, code_dim), jnp.float32))

  @property
  def state(self) -> Codebook:
    return Codebook(self.codebook[...], self.cluster_size[...], self.embed_avg[...])

  def __call__(self, z: jax.Array) -> QuantizerOutput:
    """Quantizes encoder vectors z [..., code_dim]."""
    if z.shape[-1] != self.code_dim:
      raise ValueError(f"quantizer expects vectors of size {self.code_dim}, got {z.shape}")
    latents = l2_normalize(z)
    codebook = self.codebook[...]
    codes = nearest_codes(latents, codebook)
    vectors = codebook[codes]
    commitment = jnp.mean(jnp.square(latents - jax.lax.stop_gradient(vectors)))
    quantized = latents + jax.lax.stop_gradient(vectors - latents)
    return QuantizerOutput(quantized, codes, latents, self.commitment_weight * commitment)

  def lookup(self, codes: jax.Array) -> jax.Array:
    """Code vectors [..., code_dim] of int ids; ids must be in range (checked by callers)."""
    return self.codebook[...][codes]

  def dead_code_threshold(self, num_vectors: int) -> float | None:
    if self.replace_c is None:
      return None
    return dead_code_threshold(num_vectors, self.vocab_size, self.replace_c)

  def update(self, output: QuantizerOutput, key: jax.Array) -> jax.Array:
    """EMA step on one batch's assignments, then dead-code replacement; returns #replaced."""
    latents = jax.lax.stop_gradient(output.latents).reshape(-1, self.code_dim)
    codes = output.codes.reshape(-1)
    state = ema_update(self.state, latents, codes, decay=self.decay, eps=self.eps)
    threshold = self.dead_code_threshold(latents.shape[0])
    if threshold is None:
      replaced = jnp.int32(0)
    else:
      state, replaced = replace_dead_codes(state, latents, key, threshold)
    self.codebook[...] = state.codebook
    self.cluster_size[...] = state.cluster_size
    self.embed_avg[...] = state.embed_avg
    return replaced
