"""The 4M any-to-any masked model: encoder over visible tokens, decoder over targets.

One forward pass (batches follow fourm/models/CONTRACT.md):
  1. `input_budget` encoder slots per sample are chosen from the `input_mask` positions
     of all modalities concatenated, and the tokens there (only they) are embedded;
  2. the encoder (pre-norm blocks, unrolled or scanned + final norm) runs over its
     slots, padding slots masked out as keys;
  3. the context the decoder reads is `decoder_proj_context(encoder output)` plus the
     encoder slots' position + modality embeddings, added again;
  4. `target_budget` decoder slots are gathered from the `target_mask` positions.
     Dense targets are queried with the learned mask token, sequences with their
     teacher-forcing tokens; each slot adds its position + modality embedding;
  5. decoder blocks: self-attention within a modality only (causal for sequences),
     cross-attention to valid encoder slots; final norm.
The forward returns the decoder hidden states per slot; output heads are applied by the
caller (`FourM.logits`), who knows which slots need which head.

Parameter names mirror the reference (encoder.{i}.attn.qkv, decoder.{i}.cross_attn.kv,
decoder_proj_context, mask_token, encoder_embeddings.{m}.token_emb, ...).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm import modalities
from fourm.models import layer_stack, slots
from fourm.models.blocks import DecoderBlock, EncoderBlock
# The presets are re-exported: `fourm_model.fourm_base(dtype=...)` reads naturally.
from fourm.models.config import (PRESETS, FourMConfig, fourm_base,  # noqa: F401
                                 fourm_large, fourm_tiny, fourm_xlarge)
from fourm.models.embeddings import INIT_STD, DecoderEmbedding, encoder_embedding
from fourm.models.layers import LayerNorm
from fourm.nn import sharding
from fourm.nn.dense import Dense, normal_init

_RESIDUAL_AXES = ("act_batch", "act_len", "act_embed")


@flax.struct.dataclass
class DecoderOutput:
  """Per decoder slot: hidden state, modality, label, whether the slot is used, and
  whether it is scored (a used slot whose label is negative, CM3's sentinels, is read by
  the decoder but predicts nothing)."""
  hidden: jax.Array          # [B, T, D] after the final decoder norm
  modality_index: jax.Array  # [B, T] int32 index into FourM.modality_names; -1 = padding
  labels: jax.Array          # [B, T] int32 token to predict (0 on slots not scored)
  valid: jax.Array           # [B, T] bool
  scored: jax.Array          # [B, T] bool: valid and carrying a loss


class FourM(nnx.Module):
  """4M encoder-decoder over the named modalities at a layout, with static token budgets."""

  def __init__(self, config: FourMConfig, modality_names: Sequence[str],
               layout: modalities.Layout, input_budget: int, target_budget: int, *,
               input_only: Sequence[str] = (), rngs: nnx.Rngs):
    self.config = config
    self.modality_names = tuple(modality_names)
    self.layout = layout
    self.input_budget, self.target_budget = input_budget, target_budget
    unknown = set(dict(config.vocab_sizes)) - set(self.modality_names)
    if unknown:
      raise ValueError(f"vocab_sizes name {sorted(unknown)}, not among {self.modality_names}")
    specs = [self.spec(name) for name in self.modality_names]
    if len(set(self.modality_names)) != len(specs):
      raise ValueError(f"modality names repeat: {self.modality_names}")
    # `input_only`: modalities this model reads but does not predict, though their
    # specs allow both (the reference's super-resolution model reads caption).
    unknown = set(input_only) - set(self.modality_names)
    if unknown:
      raise ValueError(f"input_only names {sorted(unknown)}, not among {self.modality_names}")
    self.input_names = tuple(spec.name for spec in specs if spec.can_input)
    self.target_names = tuple(spec.name for spec in specs
                              if spec.can_target and spec.name not in input_only)
    if not self.input_names or not self.target_names:
      raise ValueError("4M needs at least one input and one target modality, got "
                       f"{self.modality_names}")

    dim, dtype, param_dtype = config.dim, config.dtype, config.param_dtype
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    block_args = dict(eps=config.norm_eps, attention_impl=config.attention_impl, **common)

    self.encoder_embeddings = nnx.Dict({
        spec.name: encoder_embedding(spec, layout, dim, patch_bias=config.patch_embed_bias,
                                     **common)
        for spec in specs if spec.can_input})
    self.decoder_embeddings = nnx.Dict({
        spec.name: DecoderEmbedding(
            spec, layout, dim,
            own_modality_embedding=not (config.share_modality_embeddings and spec.can_input),
            tie_head=config.tie_output_heads, **common)
        for spec in specs if spec.name in self.target_names})

    self.encoder = nnx.List([
        EncoderBlock(dim, config.num_heads, config.mlp_ratio, **block_args)
        for _ in range(config.encoder_depth)])
    self.encoder_norm = LayerNorm(dim, eps=config.norm_eps, **common)
    # The one biased layer: maps encoder outputs into the decoder's context.
    self.decoder_proj_context = Dense((dim,), (dim,), logical_axes=("embed", None),
                                      use_bias=True, **common)
    self.decoder = nnx.List([
        DecoderBlock(dim, config.num_heads, config.mlp_ratio, **block_args)
        for _ in range(config.decoder_depth)])
    self.decoder_norm = LayerNorm(dim, eps=config.norm_eps, **common)
    self.mask_token = sharding.param(normal_init(INIT_STD), rngs.params(), (dim,),
                                     param_dtype, ("embed",))

  # Public API ------------------------------------------------------------------------------

  def __call__(self, batch: Mapping[str, Mapping[str, jax.Array]]) -> DecoderOutput:
    context, context_valid = self.encode(batch)
    return self.decode(batch, context, context_valid)

  def spec(self, name: str) -> modalities.ModalitySpec:
    """The registry's spec of `name` with this model's vocabulary (config.vocab_sizes)."""
    return modalities.get(name, dict(self.config.vocab_sizes))

  def can_predict(self, name: str) -> bool:
    return name in self.target_names

  def logits(self, name: str, hidden: jax.Array) -> jax.Array:
    """Modality `name`'s tied output head on hidden states [..., D] -> [..., vocab]."""
    if not self.can_predict(name):
      raise ValueError(f"{name!r} is not a target modality of this model "
                       f"({self.target_names})")
    logits = self.decoder_embeddings[name].logits(hidden)
    if logits.ndim == 3:
      logits = sharding.constrain(logits, ("act_batch", "act_len", "act_vocab"))
    return logits

  def head_table(self, name: str) -> jax.Array:
    """Modality `name`'s output head [vocab, D]: its decoder token table when tied."""
    if not self.can_predict(name):
      raise ValueError(f"{name!r} is not a target modality of this model "
                       f"({self.target_names})")
    return self.decoder_embeddings[name].head.embedding[...]

  # Encoder ---------------------------------------------------------------------------------

  def encode(self, batch, input_budget: int | None = None) -> tuple[jax.Array, jax.Array]:
    """The decoder's context [B, input_budget, D] and which of its slots are valid.

    `input_budget` overrides the model's for this call: parameter shapes do not depend
    on it, so a sampler can give a trained model as many slots as its conditions need.
    """
    names = [name for name in self.input_names if name in batch]
    if not names:
      raise ValueError(f"the batch has none of the input modalities {self.input_names}")
    embeddings = [self.encoder_embeddings[name] for name in names]
    position_and_modality = jnp.concatenate(
        [emb.position_and_modality() for emb in embeddings], axis=0)
    input_mask = jnp.concatenate([jnp.asarray(batch[name]["input_mask"]) for name in names],
                                 axis=1)

    indices, valid = slots.select(input_mask, input_budget or self.input_budget)
    keep = valid[..., None]
    sizes = [self.spec(name).num_tokens(self.layout) for name in names]
    content = slots.fill(indices, sizes, [
        functools.partial(emb.at, batch[name]) for name, emb in zip(names, embeddings,
                                                                      strict=True)],
        jnp.zeros(indices.shape + (self.config.dim,), self.config.dtype))
    # Padding slots carry zeros, as in the reference: they are masked as keys, and
    # zeroing keeps whatever token happened to be gathered there from mattering at all.
    x = jnp.where(keep, content, 0)
    emb = jnp.where(keep, position_and_modality[indices], 0)
    x = sharding.constrain(x + emb, _RESIDUAL_AXES)

    x = self._run_blocks(self.encoder, x, slots.key_mask(valid))
    x = self.encoder_norm(x)

    context = self.decoder_proj_context(x) + emb
    return sharding.constrain(context, _RESIDUAL_AXES), valid

  # Decoder ---------------------------------------------------------------------------------

  def decode(self, batch, context: jax.Array, context_valid: jax.Array,
             target_budget: int | None = None) -> DecoderOutput:
    names = [name for name in self.target_names if name in batch]
    if not names:
      raise ValueError(f"the batch has none of the target modalities {self.target_names}")
    mask_token = sharding.constrain(self.mask_token[...].astype(self.config.dtype),
                                    ("act_embed",))

    queries, sizes, position_and_modality, labels, target_masks = [], [], [], [], []
    modality_ids, positions, causal = [], [], []  # per token, known before tracing
    for name in names:
      embedding, entry = self.decoder_embeddings[name], batch[name]
      num_tokens = modalities.get(name).num_tokens(self.layout)
      sizes.append(num_tokens)
      # Sequences are queried with their teacher-forcing tokens; dense targets with the
      # mask token (the slots' starting value), their own tokens staying hidden.
      queries.append(functools.partial(embedding.at, entry) if embedding.is_sequence
                     else None)
      position_and_modality.append(self.decoder_position_and_modality(name))
      labels.append(jnp.asarray(embedding.labels(entry), jnp.int32))
      target_masks.append(jnp.asarray(entry["target_mask"]))
      modality_ids.append(np.full(num_tokens, self.modality_names.index(name), np.int32))
      positions.append(np.arange(num_tokens, dtype=np.int32))
      causal.append(np.full(num_tokens, embedding.is_sequence))

    indices, valid = slots.select(jnp.concatenate(target_masks, axis=1),
                                  target_budget or self.target_budget)
    keep = valid[..., None]
    query = slots.fill(indices, sizes, queries,
                       jnp.broadcast_to(mask_token, indices.shape + mask_token.shape))
    emb = jnp.concatenate(position_and_modality, axis=0)[indices]
    y = sharding.constrain(jnp.where(keep, query + emb, 0), _RESIDUAL_AXES)

    modality = jnp.asarray(np.concatenate(modality_ids))[indices]
    self_mask = slots.decoder_self_mask(
        modality, jnp.asarray(np.concatenate(positions))[indices],
        jnp.asarray(np.concatenate(causal))[indices], valid)
    cross_mask = slots.key_mask(context_valid)
    y = self._run_blocks(self.decoder, y, context, self_mask, cross_mask)
    y = self.decoder_norm(y)

    labels = slots.gather(jnp.concatenate(labels, axis=1), indices)
    scored = valid & (labels >= 0)
    return DecoderOutput(hidden=y, modality_index=jnp.where(valid, modality, -1),
                         labels=jnp.where(scored, labels, 0), valid=valid, scored=scored)

  def decoder_position_and_modality(self, name: str) -> jax.Array:
    """[N, D]: what the decoder adds to each of target `name`'s N query positions."""
    embedding = self.decoder_embeddings[name]
    # The modality embedding is the encoder's unless the decoder has its own.
    shared = (self.encoder_embeddings[name].mod_emb[...]
              if embedding.mod_emb is None else None)
    return embedding.position_and_modality(shared)

  def _run_blocks(self, blocks, x, *args):
    return layer_stack.run(blocks, x, *args, scan=self.config.scan_layers,
                           remat=self.config.remat)
