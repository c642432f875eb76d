"""Per-modality embeddings: what turns a modality's batch entry into vectors, and back.

Encoder side, one module per input modality, by kind:
  IMAGE_TOKENS / GLOBAL / SEQUENCE -> `TokenEncoderEmbedding` (a vocab x dim table)
  PIXELS                           -> `PatchEncoderEmbedding` (linear patch projection)
  FEATURE_MAP                      -> `FeatureEncoderEmbedding` (linear projection)
  SEQUENCE_EMBEDDINGS              -> `FeatureEncoderEmbedding` (biased projection)
Decoder side, one `DecoderEmbedding` per target modality: a token table that embeds the
teacher-forcing inputs of sequences and, tied, is the modality's output head (untied,
the head is a second table, `to_logits`, as in the reference's hub models).

Every module returns its content vectors [B, N, D] apart from the "position +
modality" vectors [N, D]: the latter do not depend on the sample, and 4M adds them
again to the encoder output before the decoder reads it.

Initialization follows the reference's `init_weights` as it actually runs: encoder
token tables N(0, 0.02); decoder token tables xavier-uniform (the tied `to_logits`
Linear is initialized after the table and overwrites it); projections xavier-uniform;
modality embeddings and learned positions N(0, 0.02).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm import modalities
from fourm.nn import sharding
from fourm.nn.dense import Dense, normal_init, uniform_init, xavier_bound
from fourm.nn.positions import sincos_1d, sincos_2d

Kind = modalities.Kind
INIT_STD = 0.02


def positions_for(spec: modalities.ModalitySpec, layout: modalities.Layout,
                  dim: int) -> np.ndarray:
  """The fixed positions of a modality's N tokens: [N, dim]."""
  if spec.positions == "learned":
    raise ValueError(f"modality {spec.name!r} learns its positions; it has no fixed ones")
  if spec.positions == "2d":
    return sincos_2d(spec.grid(layout), dim)
  return sincos_1d(spec.num_tokens(layout), dim)


# Small pieces shared by both sides -------------------------------------------------------


def modality_embedding(dim: int, param_dtype, rngs: nnx.Rngs) -> nnx.Param:
  return sharding.param(normal_init(INIT_STD), rngs.params(), (dim,), param_dtype,
                        ("embed",))


class TokenTable(nnx.Module):
  """A vocab x dim table; `lookup` embeds ids, `attend` scores vectors against every row."""

  def __init__(self, vocab_size: int, dim: int, *, init, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding = sharding.param(init, rngs.params(), (vocab_size, dim), param_dtype,
                                    ("vocab", "embed"))

  def lookup(self, ids: jax.Array) -> jax.Array:
    # Gather the FSDP shards of the table first (as for any weight): a lookup into a
    # table split along the model dimension would come out split the same way and
    # have to be resharded onto the batch, which XLA can only do by replicating it.
    table = sharding.constrain(self.embedding[...], ("vocab", None))
    vectors = jnp.take(table, ids, axis=0).astype(self.dtype)
    return sharding.constrain(vectors, ("act_batch", "act_len", "act_embed"))

  def attend(self, x: jax.Array) -> jax.Array:
    # Flat token axis for the same XLA:CPU reason as in layers.Dense.
    flat = x.reshape(-1, x.shape[-1]).astype(self.dtype)
    scores = jnp.einsum("td,vd->tv", flat, self.embedding[...].astype(self.dtype))
    return scores.reshape(x.shape[:-1] + scores.shape[-1:])


def learned_positions(spec: modalities.ModalitySpec, layout: modalities.Layout, dim: int,
                      param_dtype, rngs: nnx.Rngs) -> nnx.Param | None:
  """[N, D] position parameters for a modality that learns them, else None."""
  if spec.positions != "learned":
    return None
  return sharding.param(normal_init(INIT_STD), rngs.params(),
                        (spec.num_tokens(layout), dim), param_dtype, (None, "embed"))


def position_and_modality(spec: modalities.ModalitySpec, layout: modalities.Layout,
                          mod_emb: jax.Array, dtype,
                          pos_emb: nnx.Param | None = None) -> jax.Array:
  """The sample-independent half of an embedding: positions + modality, [N, D]."""
  positions = (pos_emb[...] if pos_emb is not None
               else jnp.asarray(positions_for(spec, layout, mod_emb.shape[-1])))
  # Replicated, like the activations it is added to (mod_emb itself is FSDP-sharded).
  return sharding.constrain((positions + mod_emb).astype(dtype), ("act_len", "act_embed"))


# Encoder side ------------------------------------------------------------------------------


class TokenEncoderEmbedding(nnx.Module):
  """Token ids (VQ grids, global tokens, text) -> table rows."""

  def __init__(self, spec: modalities.ModalitySpec, layout: modalities.Layout, dim: int, *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.spec, self.layout, self.dtype = spec, layout, dtype
    # Sequences keep their visible text under "input_tokens"; dense kinds under "tokens".
    self.tokens_key = "input_tokens" if spec.kind == Kind.SEQUENCE else "tokens"
    self.mod_emb = modality_embedding(dim, param_dtype, rngs)
    self.pos_emb = learned_positions(spec, layout, dim, param_dtype, rngs)
    self.token_emb = TokenTable(spec.vocab_size, dim, init=normal_init(INIT_STD), dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)

  def at(self, entry: dict, positions: jax.Array) -> jax.Array:
    """The embeddings of the tokens at positions [B, S] only: [B, S, D]."""
    return self.token_emb.lookup(jnp.take_along_axis(entry[self.tokens_key], positions, 1))

  def position_and_modality(self) -> jax.Array:
    return position_and_modality(self.spec, self.layout, self.mod_emb[...], self.dtype,
                                 self.pos_emb)


class PatchEncoderEmbedding(nnx.Module):
  """A normalized image [B, R, R, C] (the pixel stats of `PIXEL_STATS`: ImageNet mean /
  std by default, [-1, 1] with "inception") -> one linear projection per patch.

  Patches flatten in (row-in-patch, col-in-patch, channel) order, as the reference's
  rearrange 'b c (nh ph) (nw pw) -> b (nh nw) (ph pw c)'. The reference's projection
  has no bias ("the modality embedding is the bias"); `bias` is there for experiments.
  """

  def __init__(self, spec: modalities.ModalitySpec, layout: modalities.Layout, dim: int, *,
               channels: int = 3, bias: bool = False, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.spec, self.layout, self.dtype = spec, layout, dtype
    self.channels = channels
    patch = spec.image_size(layout) // spec.grid(layout)
    patch_features = patch * patch * channels
    self.mod_emb = modality_embedding(dim, param_dtype, rngs)
    self.proj = Dense((patch_features,), (dim,), logical_axes=("patch", "embed"),
                      use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, entry: dict) -> jax.Array:
    return self.proj(self.patches(entry))

  def at(self, entry: dict, positions: jax.Array) -> jax.Array:
    """The embeddings of the patches at positions [B, S] only: [B, S, D]."""
    return self.proj(jnp.take_along_axis(self.patches(entry), positions[..., None], 1))

  def patches(self, entry: dict) -> jax.Array:
    """[B, R, R, C] -> [B, G * G, patch * patch * C], patches row-major."""
    image = entry["tokens"]
    # From the layout at call time: fine-tuning patchifies at a grid of its own.
    grid = self.spec.grid(self.layout)
    batch, patch = image.shape[0], self.spec.image_size(self.layout) // grid
    patches = image.reshape(batch, grid, patch, grid, patch, self.channels)
    return patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid * grid, -1)

  def position_and_modality(self) -> jax.Array:
    return position_and_modality(self.spec, self.layout, self.mod_emb[...], self.dtype)


class FeatureEncoderEmbedding(nnx.Module):
  """Continuous vectors [B, N, F] -> a linear projection: bias-free for per-patch feature
  maps, biased for sequences of embeddings (the reference's `emb_proj` of t5_caption)."""

  def __init__(self, spec: modalities.ModalitySpec, layout: modalities.Layout, dim: int, *,
               feature_dim: int, bias: bool = False, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.spec, self.layout, self.dtype = spec, layout, dtype
    self.mod_emb = modality_embedding(dim, param_dtype, rngs)
    self.proj = Dense((feature_dim,), (dim,), logical_axes=("patch", "embed"),
                      use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def at(self, entry: dict, positions: jax.Array) -> jax.Array:
    """The embeddings of the vectors at positions [B, S] only: [B, S, D]."""
    return self.proj(jnp.take_along_axis(entry["tokens"], positions[..., None], 1))

  def position_and_modality(self) -> jax.Array:
    return position_and_modality(self.spec, self.layout, self.mod_emb[...], self.dtype)


def encoder_embedding(spec: modalities.ModalitySpec, layout: modalities.Layout, dim: int, *,
                      patch_bias: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
                      rngs: nnx.Rngs) -> nnx.Module:
  """The encoder embedding module for a modality's kind."""
  common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if spec.kind in (Kind.IMAGE_TOKENS, Kind.GLOBAL, Kind.SEQUENCE):
    return TokenEncoderEmbedding(spec, layout, dim, **common)
  if spec.kind == Kind.PIXELS:
    return PatchEncoderEmbedding(spec, layout, dim, channels=spec.source.channels or 3,
                                 bias=patch_bias, **common)
  if spec.kind in (Kind.FEATURE_MAP, Kind.SEQUENCE_EMBEDDINGS):
    if not spec.source.channels:
      raise ValueError(f"feature map {spec.name!r}: its raw source {spec.source.name!r} "
                       "must say how many channels a feature vector has")
    return FeatureEncoderEmbedding(spec, layout, dim, feature_dim=spec.source.channels,
                                   bias=spec.kind == Kind.SEQUENCE_EMBEDDINGS, **common)
  raise ValueError(f"no encoder embedding for kind {spec.kind}")


# Decoder side ------------------------------------------------------------------------------


class DecoderEmbedding(nnx.Module):
  """A target modality's token table (teacher-forcing inputs + tied head) and positions.

  With `own_modality_embedding=False` the modality embedding is the encoder's (the
  reference shares them between the two sides by default) and is passed in.
  """

  def __init__(self, spec: modalities.ModalitySpec, layout: modalities.Layout, dim: int, *,
               own_modality_embedding: bool = True, tie_head: bool = True,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if not spec.can_target or spec.vocab_size is None:
      raise ValueError(f"modality {spec.name!r} cannot be a decoder target")
    self.spec, self.layout, self.dtype = spec, layout, dtype
    self.mod_emb = modality_embedding(dim, param_dtype, rngs) if own_modality_embedding else None
    self.pos_emb = learned_positions(spec, layout, dim, param_dtype, rngs)
    head_init = uniform_init(xavier_bound(dim, spec.vocab_size))
    if tie_head:
      self.token_emb = TokenTable(spec.vocab_size, dim, init=head_init, dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs)
      self.to_logits = None
    else:
      # Untied, as the reference initializes them: the embedding N(0, 0.02), the head
      # (a Linear there) xavier-uniform.
      self.token_emb = TokenTable(spec.vocab_size, dim, init=normal_init(INIT_STD),
                                  dtype=dtype, param_dtype=param_dtype, rngs=rngs)
      self.to_logits = TokenTable(spec.vocab_size, dim, init=head_init, dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs)

  @property
  def head(self) -> TokenTable:
    """The output head's table: the token table itself when tied."""
    return self.token_emb if self.to_logits is None else self.to_logits

  @property
  def is_sequence(self) -> bool:
    return self.spec.kind == Kind.SEQUENCE

  def at(self, entry: dict, positions: jax.Array) -> jax.Array:
    """The teacher-forcing inputs at positions [B, S] only: [B, S, D]."""
    return self.token_emb.lookup(jnp.take_along_axis(entry["target_tokens"], positions, 1))

  def labels(self, entry: dict) -> jax.Array:
    """What each of the modality's N decoder positions predicts: [B, N]."""
    return entry["target_labels"] if self.is_sequence else entry["tokens"]

  def position_and_modality(self, shared_mod_emb: jax.Array | None = None) -> jax.Array:
    mod_emb = self.mod_emb[...] if self.mod_emb is not None else shared_mod_emb
    if mod_emb is None:
      raise ValueError(f"{self.spec.name!r}: no modality embedding of its own, none passed")
    return position_and_modality(self.spec, self.layout, mod_emb, self.dtype, self.pos_emb)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """The output head: hidden @ head_table^T, [..., vocab]."""
    return self.head.attend(hidden)
