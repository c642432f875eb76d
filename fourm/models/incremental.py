"""The decoder one position at a time, with a key/value cache: autoregressive decoding.

`FourM.decode` runs every target slot at once, which is what training and MaskGIT need.
Generating a sequence token by token that way would recompute the whole prefix for every
new token. Here each decoder block keeps the self-attention keys and values of the
positions decoded so far, and the cross-attention keys and values of the encoder context
(which never change), so one step costs one query. The result is the same as
`FourM.decode` over the positions 0..t of one sequence target (a test checks it): a
sequence's decoder slots attend causally within the sequence and to the whole context.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from fourm.models import slots
from fourm.models.layers import attend


@flax.struct.dataclass
class DecoderCache:
  """Per decoder block: self-attention keys/values [B, L, H, Dh] of positions < L, and
  the context's cross-attention keys/values [B, S, H, Dh]; `context_mask` [B, 1, 1, S]."""
  self_keys: tuple[jax.Array, ...]
  self_values: tuple[jax.Array, ...]
  cross_keys: tuple[jax.Array, ...]
  cross_values: tuple[jax.Array, ...]
  context_mask: jax.Array


def init_cache(model, context: jax.Array, context_valid: jax.Array,
               length: int) -> DecoderCache:
  """An empty cache for `length` positions over the context from `model.encode`."""
  batch = context.shape[0]
  self_keys, cross_keys, cross_values = [], [], []
  for block in model.decoder:
    heads, head_dim = block.self_attn.qkv.out_shape[1:]
    self_keys.append(jnp.zeros((batch, length, heads, head_dim), model.config.dtype))
    kv = block.cross_attn.kv(block.context_norm(context))  # [B, S, 2, H, Dh]
    cross_keys.append(kv[:, :, 0])
    cross_values.append(kv[:, :, 1])
  return DecoderCache(self_keys=tuple(self_keys), self_values=tuple(self_keys),
                      cross_keys=tuple(cross_keys), cross_values=tuple(cross_values),
                      context_mask=slots.key_mask(context_valid))


def decode_step(model, name: str, cache: DecoderCache, tokens: jax.Array,
                position: jax.Array) -> tuple[jax.Array, DecoderCache]:
  """Decodes sequence target `name` at `position` (a traced int) from the tokens [B]
  there (the teacher-forcing inputs); returns the hidden states [B, D] after the final
  decoder norm, which `model.logits(name, ...)` turns into next-token scores."""
  embedding = model.decoder_embeddings[name]
  if not embedding.is_sequence:
    raise ValueError(f"{name!r} is not a sequence: decode it with FourM.decode")
  length = cache.self_keys[0].shape[1]
  query = embedding.token_emb.lookup(tokens[:, None])  # [B, 1, D]
  where = jax.lax.dynamic_slice_in_dim(model.decoder_position_and_modality(name), position,
                                       1, axis=0)
  y = query + where[None]
  # Causal: positions 0..position of this sequence, the one being decoded included.
  self_mask = (jnp.arange(length) <= position)[None, None, None, :]
  keys, values = [], []
  for index, block in enumerate(model.decoder):
    qkv = block.self_attn.qkv(block.norm1(y))  # [B, 1, 3, H, Dh]
    k = jax.lax.dynamic_update_slice_in_dim(cache.self_keys[index], qkv[:, :, 1], position,
                                            axis=1)
    v = jax.lax.dynamic_update_slice_in_dim(cache.self_values[index], qkv[:, :, 2], position,
                                            axis=1)
    keys.append(k)
    values.append(v)
    impl = block.self_attn.attention_impl
    y = y + block.self_attn.proj(attend(qkv[:, :, 0], k, v, self_mask, impl))
    q = block.cross_attn.q(block.query_norm(y))
    y = y + block.cross_attn.proj(attend(q, cache.cross_keys[index],
                                         cache.cross_values[index], cache.context_mask,
                                         block.cross_attn.attention_impl))
    y = y + block.mlp(block.norm2(y))
  hidden = model.decoder_norm(y)[:, 0]
  return hidden, cache.replace(self_keys=tuple(keys), self_values=tuple(values))
