"""Static-shape token selection and the attention masks over the selected slots.

4M gives the encoder a fixed number of tokens (`input_budget`) and the decoder a fixed
number (`target_budget`) per sample, drawn from all modalities concatenated. Selection
is a stable sort of the masks, so the chosen tokens keep their concatenation order
(modality by modality, then position), and unused slots are marked invalid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def select(mask: jax.Array, budget: int) -> tuple[jax.Array, jax.Array]:
  """Indices [B, budget] of the True entries of mask [B, N], in order, and their validity.

  A sample with fewer than `budget` True entries fills the rest with invalid slots; one
  with more keeps the first `budget` (as the reference does).
  """
  order = jnp.argsort(jnp.logical_not(mask).astype(jnp.int32), axis=1, stable=True)
  order = order.astype(jnp.int32)
  if budget > order.shape[1]:
    order = jnp.pad(order, ((0, 0), (0, budget - order.shape[1])))
  indices = order[:, :budget]
  valid = jnp.take_along_axis(mask, indices, axis=1)
  if budget > mask.shape[1]:
    valid = valid & (jnp.arange(budget) < mask.shape[1])[None, :]
  return indices, valid


def gather(values: jax.Array, indices: jax.Array) -> jax.Array:
  """values [B, N, ...] at indices [B, T] -> [B, T, ...]."""
  expanded = indices.reshape(indices.shape + (1,) * (values.ndim - 2))
  return jnp.take_along_axis(values, expanded, axis=1)


def fill(indices: jax.Array, sizes: Sequence[int],
         embed_at: Sequence[Callable[[jax.Array], jax.Array] | None],
         initial: jax.Array) -> jax.Array:
  """[B, T, D] vectors of the slots at `indices` [B, T] into modalities concatenated.

  Modality m holds concatenated positions [offset_m, offset_m + sizes[m]); its
  `embed_at[m]` maps its own positions [B, T] to vectors [B, T, D], and slots that fall
  in its range take them (None: they keep `initial`). Only the selected slots are ever
  embedded: embedding every position of every modality first and gathering after would
  compute and keep (with its scatter-add in the backward pass) a [B, all positions, D]
  array, over 1 GiB per device for 4M-B at its recipe batch (benchmarks/memory_plan.py)."""
  out, offset = initial, 0
  for size, embed in zip(sizes, embed_at, strict=True):
    local = indices - offset
    offset += size
    if embed is None:
      continue
    inside = (local >= 0) & (local < size)
    vectors = embed(jnp.clip(local, 0, size - 1))
    out = jnp.where(inside[..., None], vectors.astype(out.dtype), out)
  return out


def key_mask(valid: jax.Array) -> jax.Array:
  """[B, 1, 1, S]: every query may attend every valid key.

  A sample with no valid key at all keeps its first slot attendable: a fully masked
  softmax row is undefined in some attention kernels (NaNs that would reach the
  gradient even through masked-out losses).
  """
  none_valid = ~jnp.any(valid, axis=1, keepdims=True)
  first = jnp.arange(valid.shape[1])[None, :] == 0
  return (valid | (none_valid & first))[:, None, None, :]


def decoder_self_mask(modality: jax.Array, position: jax.Array, causal: jax.Array,
                      valid: jax.Array) -> jax.Array:
  """[B, 1, T, T]: slot i attends slot j iff both are valid targets of the same modality
  and, when i's modality is a sequence, j does not come after i.

  Every slot also attends itself, so padding rows are never fully masked.
  """
  same = modality[:, :, None] == modality[:, None, :]
  both_valid = valid[:, :, None] & valid[:, None, :]
  not_after = position[:, None, :] <= position[:, :, None]
  allowed = both_valid & same & (not_after | ~causal[:, :, None])
  itself = jnp.eye(modality.shape[1], dtype=bool)[None]
  return (allowed | itself)[:, None]
