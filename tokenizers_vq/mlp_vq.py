"""4M-21's MLP VQ-VAE tokenizers: one feature vector in, a few token ids out.

The global-feature tokenizers (a DINOv2-B14 or ImageBind-H14 class token -> 16 ids of
8192) and the human-pose tokenizer (HMR2.0's 23 joint rotations, 207 numbers -> 8 ids of
1024) are VQ-VAEs whose encoder and decoder are bottleneck MLPs and whose quantizer is
"memcodes" (apple/ml-4m `fourm/vq/vqvae.py` with `enc_type` / `dec_type`
'BottleneckMLP/...' and `quant_type='memcodes'`):

    features [B, C] --encoder--> [B, W] --quant_proj--> z [B, D]
    z as K heads of D/K --memcodes--> ids [B, K]  --lookup--> [B, D]
    [B, D] --post_quant_proj--> [B, W'] --decoder--> features [B, C]

The reference feeds a vector as a 1 x 1 image [B, C, 1, 1], so that its Conv2d 1x1
projections and per-pixel MLPs apply, and its ids come out as [B, K, 1, 1]; one pixel is
one vector, so here vectors are [B, C], ids [B, K], and the 1x1 convolutions are Dense
layers. The values are the same.

**BottleneckMLP** ("Scaling MLPs: A Tale of Inductive Bias", Bachmann et al. 2023):
`linear_in` to the width W, then per block `x + fc2(gelu(fc1(layernorm(x))))` with fc1
widening W -> E*W, then `linear_out`; no norm before `linear_out`. LayerNorm eps is
torch's 1e-5, GELU the exact (erf) one. An encoder's output and a decoder's input are
the width W: the projections around the quantizer adapt it to D.

**Memcodes** (NWT, Mama et al. 2021): each of the K heads is one attention query against
its own N learned codes, keys `codes @ to_k` and values `codes @ to_v` (per-head square
matrices, no bias), logits `(q / sqrt(D/K)) . k`. The id of a head is the argmax of its
logits, its output the value of that code. Training samples a hard Gumbel-softmax
(temperature 1) instead, with straight-through gradients; there is no commitment or
codebook loss: codes learn through the values the decoder reads.

Parameter names mirror the reference, so its weights convert by transposing only
(fourm/interop/tokenizer_mlp.py; torch Linear weights are [out, in]):

  reference                                  here
  encoder.linear_in.weight [W, C] (+bias)    encoder.linear_in.kernel [C, W] (+bias)
  encoder.blocks.i.block.0.weight [EW, W]    encoder.blocks.i.fc1.kernel [W, EW] (+bias)
  encoder.blocks.i.block.2.weight [W, EW]    encoder.blocks.i.fc2.kernel [EW, W] (+bias)
  encoder.layernorms.i.weight / bias [W]     encoder.layernorms.i.scale / bias [W]
  encoder.linear_out.weight [W, W]           encoder.linear_out.kernel [W, W] (+bias)
  quant_proj.weight [D, W, 1, 1] (+bias)     quant_proj.kernel [W, D] (+bias)
  quantize.codes [K, N, D/K]                 quantize.codes [K, N, D/K]
  quantize.to_k.weight / to_v.weight         quantize.to_k / to_v [K, D/K, D/K]
  post_quant_proj.weight [W', D, 1, 1]       post_quant_proj.kernel [D, W'] (+bias)
  decoder.*                                  decoder.*, as the encoder (linear_out to C)
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm.errors import RecordError, UsageError
from fourm.nn.dense import Dense

MLP_KIND = "BottleneckMLP"
DEFAULT_MLP = "BottleneckMLP/B_6-Wi_1024"
DEFAULT_EXPANSION = 4          # the reference's, when the id has no third part
LAYERNORM_EPS = 1e-5           # torch's nn.LayerNorm default, which the reference keeps
_HIGHEST = jax.lax.Precision.HIGHEST


# The model id -------------------------------------------------------------------------------


class MLPSpec(NamedTuple):
  """What a model id says: `num_blocks` bottleneck blocks of `width`, widened by `expansion`."""
  num_blocks: int
  width: int
  expansion: int


_ID = re.compile(r"B_(\d+)-Wi_(\d+)(?:-[A-Za-z]+_(\d+))?")


def parse_mlp_id(model_id: str) -> MLPSpec:
  """'BottleneckMLP/B_<blocks>-Wi_<width>[-<name>_<expansion>]' -> MLPSpec.

  The grammar of the reference's `build_mlp`: blocks and width, and an optional third
  part whose number is the expansion of each block's hidden layer (4 without it; the
  reference reads only the number, whatever its name). Its plain 'MLP/...' models have
  no published tokenizer and are not built here.
  """
  if not isinstance(model_id, str):
    raise UsageError(f"MLP model id must be a string like {DEFAULT_MLP!r}, got {model_id!r}")
  kind, slash, architecture = model_id.partition("/")
  if kind == "MLP" and slash:
    raise UsageError(f"MLP model id {model_id!r}: plain 'MLP/...' models are not supported "
                     f"(only {MLP_KIND}, which every published MLP tokenizer uses)")
  match = _ID.fullmatch(architecture)
  if kind != MLP_KIND or not slash or match is None:
    raise UsageError(f"MLP model id {model_id!r} is not '{MLP_KIND}/B_<blocks>-Wi_<width>' "
                     f"with an optional '-E_<expansion>' (e.g. {DEFAULT_MLP!r})")
  blocks, width, expansion = match.groups()
  spec = MLPSpec(int(blocks), int(width),
                 DEFAULT_EXPANSION if expansion is None else int(expansion))
  if min(spec) < 1:
    raise UsageError(f"MLP model id {model_id!r}: blocks, width and expansion must be at "
                     f"least 1, got {spec.num_blocks}, {spec.width}, {spec.expansion}")
  return spec


# The config ---------------------------------------------------------------------------------


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class MLPVQConfig:
  """Everything that makes encode and decode agree; a checkpoint stores `to_dict()`.

  Published (hub ids; 4M-21's registry gives 16 tokens per global vector):
  DINOv2-B14-global C=768, ImageBind-H14-global C=1280 (both N=8192, K=16), human poses
  C=207 (N=1024, K=8); all with 'BottleneckMLP/B_6-Wi_1024' both ways and, by the
  reference's training configs, D=1024. A converted config.json is what decides.
  """
  in_channels: int                      # C: the vector's length
  codebook_size: int                    # N: codes per head (the vocabulary)
  num_codebooks: int                    # K: heads, i.e. ids per vector
  latent_dim: int = 1024                # D: split into K heads of D/K
  encoder: str = DEFAULT_MLP
  decoder: str = DEFAULT_MLP
  temperature: float = 1.0              # of the Gumbel-softmax, in training only

  def __post_init__(self):
    for name in ("in_channels", "codebook_size", "num_codebooks", "latent_dim"):
      value = getattr(self, name)
      if not _is_int(value) or value < 1:
        raise UsageError(f"MLP VQ config: {name} must be a positive integer, got {value!r}")
      object.__setattr__(self, name, int(value))
    if self.codebook_size < 2:
      raise UsageError(f"MLP VQ config: codebook_size must be at least 2, got "
                       f"{self.codebook_size}")
    if self.latent_dim % self.num_codebooks:
      raise UsageError(f"MLP VQ config: latent_dim {self.latent_dim} must split evenly into "
                       f"num_codebooks {self.num_codebooks} heads")
    parse_mlp_id(self.encoder)
    parse_mlp_id(self.decoder)
    if (isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float))
        or not self.temperature > 0):
      raise UsageError(f"MLP VQ config: temperature must be > 0, got {self.temperature!r}")
    object.__setattr__(self, "temperature", float(self.temperature))

  @property
  def encoder_spec(self) -> MLPSpec:
    return parse_mlp_id(self.encoder)

  @property
  def decoder_spec(self) -> MLPSpec:
    return parse_mlp_id(self.decoder)

  @property
  def head_dim(self) -> int:
    return self.latent_dim // self.num_codebooks

  @property
  def tokens_per_vector(self) -> int:
    return self.num_codebooks

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: dict[str, Any]) -> MLPVQConfig:
    if not isinstance(data, dict):
      raise UsageError(f"MLP VQ config: expected a mapping, got {type(data).__name__}")
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
      raise UsageError(f"MLP VQ config: unknown keys {unknown}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in data and f.default is dataclasses.MISSING)
    if missing:
      raise UsageError(f"MLP VQ config: missing keys {missing}")
    return cls(**data)


PRESETS = {  # the published shapes (see MLPVQConfig), for training one afresh
    "dinov2_global": dict(in_channels=768, codebook_size=8192, num_codebooks=16),
    "imagebind_global": dict(in_channels=1280, codebook_size=8192, num_codebooks=16),
    "human_poses": dict(in_channels=207, codebook_size=1024, num_codebooks=8),
}


def preset(name: str, **overrides) -> MLPVQConfig:
  if name not in PRESETS:
    raise UsageError(f"unknown MLP VQ preset {name!r}; known: {sorted(PRESETS)}")
  return MLPVQConfig(**dict(PRESETS[name], **overrides))


# Layers -------------------------------------------------------------------------------------


class BottleneckBlock(nnx.Module):
  """fc2(gelu(fc1(x))): width -> expansion * width -> width (the residual is outside)."""

  def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs):
    self.fc1 = Dense((width,), (hidden,), logical_axes=("embed", "mlp"), use_bias=True,
                     rngs=rngs)
    self.fc2 = Dense((hidden,), (width,), logical_axes=("mlp", "embed"), use_bias=True,
                     rngs=rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class BottleneckMLP(nnx.Module):
  """[..., dim_in] -> [..., dim_out]: linear_in, pre-norm residual blocks, linear_out."""

  def __init__(self, spec: MLPSpec, dim_in: int, dim_out: int, *, rngs: nnx.Rngs):
    self.spec, self.dim_in, self.dim_out = spec, dim_in, dim_out
    width = spec.width
    self.linear_in = Dense((dim_in,), (width,), logical_axes=(None, "embed"), use_bias=True,
                           rngs=rngs)
    self.blocks = nnx.List([BottleneckBlock(width, spec.expansion * width, rngs=rngs)
                            for _ in range(spec.num_blocks)])
    # Exact variance (not E[x^2] - E[x]^2): parity with torch's LayerNorm.
    self.layernorms = nnx.List([nnx.LayerNorm(width, epsilon=LAYERNORM_EPS,
                                              use_fast_variance=False, rngs=rngs)
                                for _ in range(spec.num_blocks)])
    self.linear_out = Dense((width,), (dim_out,), logical_axes=("embed", None),
                            use_bias=True, rngs=rngs)

  def __call__(self, x):
    x = self.linear_in(x)
    for block, norm in zip(self.blocks, self.layernorms):
      x = x + block(norm(x))
    return self.linear_out(x)


class Memcodes(nnx.Module):
  """K heads, each picking one of its N codes by attention; see the module docstring."""

  def __init__(self, latent_dim: int, codebook_size: int, num_codebooks: int, *,
               temperature: float = 1.0, rngs: nnx.Rngs):
    if latent_dim % num_codebooks:
      raise ValueError(f"latent_dim {latent_dim} does not split into {num_codebooks} heads")
    self.heads, self.codebook_size = num_codebooks, codebook_size
    self.head_dim = latent_dim // num_codebooks
    self.temperature = temperature
    d = self.head_dim
    # The reference's inits: codes ~ N(0, 1); EinMix weights ~ U(+-1/sqrt(fan_in)).
    self.codes = nnx.Param(jax.random.normal(rngs.params(), (num_codebooks, codebook_size, d)))
    bound = d ** -0.5
    self.to_k = nnx.Param(jax.random.uniform(rngs.params(), (num_codebooks, d, d),
                                             minval=-bound, maxval=bound))
    self.to_v = nnx.Param(jax.random.uniform(rngs.params(), (num_codebooks, d, d),
                                             minval=-bound, maxval=bound))

  def _project(self, weight: nnx.Param) -> jax.Array:
    return jnp.einsum("hnd,hdc->hnc", self.codes[...], weight[...], precision=_HIGHEST)

  def values(self) -> jax.Array:
    """[K, N, D/K]: what each code contributes to the latent."""
    return self._project(self.to_v)

  def logits(self, z: jax.Array) -> jax.Array:
    """[B, K, N] attention logits of latents z [B, D] against every head's codes."""
    # Scale the query before the dot product, as the reference does: ids are argmaxes, and
    # the order of roundings is what keeps near-ties on the reference's side.
    q = z.reshape(z.shape[0], self.heads, self.head_dim) * (self.head_dim ** -0.5)
    return jnp.einsum("bhd,hnd->bhn", q, self._project(self.to_k), precision=_HIGHEST)

  def __call__(self, z: jax.Array, *, key: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """(quantized latents [B, D], int32 ids [B, K]) of latents z [B, D].

    Without a key, the argmax code (inference); with one, a hard Gumbel-softmax sample
    whose one-hot weights carry straight-through gradients to the logits (training).
    """
    logits = self.logits(z)
    if key is None:
      ids = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      return self.lookup(ids), ids
    noisy = (logits + jax.random.gumbel(key, logits.shape, logits.dtype)) / self.temperature
    soft = jax.nn.softmax(noisy, axis=-1)
    ids = jnp.argmax(soft, axis=-1).astype(jnp.int32)
    hard = jax.nn.one_hot(ids, self.codebook_size, dtype=soft.dtype)
    weights = hard + soft - jax.lax.stop_gradient(soft)
    out = jnp.einsum("bhn,hnd->bhd", weights, self.values(), precision=_HIGHEST)
    return out.reshape(z.shape[0], -1), ids

  def lookup(self, ids: jax.Array) -> jax.Array:
    """Quantized latents [B, D] of ids [B, K] (in range: callers check)."""
    values = self.values()[jnp.arange(self.heads)[None, :], ids]  # [B, K, D/K]
    return values.reshape(ids.shape[0], -1)


# The model ----------------------------------------------------------------------------------


class MLPVQ(nnx.Module):
  """encoder -> quant_proj -> memcodes -> post_quant_proj -> decoder, on [B, C] vectors.

  Its ids are the reference's when its matmuls run in full float32: on a GPU, under
  `jax.default_matmul_precision("highest")`, as `MLPTokenizer` runs it (XLA may use
  TF32 there by default, whose rounding can flip an argmax that the reference does not).
  """

  def __init__(self, config: MLPVQConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    enc, dec = c.encoder_spec, c.decoder_spec
    self.encoder = BottleneckMLP(enc, c.in_channels, enc.width, rngs=rngs)
    self.quant_proj = Dense((enc.width,), (c.latent_dim,), logical_axes=("embed", None),
                            use_bias=True, rngs=rngs)
    self.quantize = Memcodes(c.latent_dim, c.codebook_size, c.num_codebooks,
                             temperature=c.temperature, rngs=rngs)
    self.post_quant_proj = Dense((c.latent_dim,), (dec.width,), logical_axes=(None, "embed"),
                                 use_bias=True, rngs=rngs)
    self.decoder = BottleneckMLP(dec, dec.width, c.in_channels, rngs=rngs)

  def latents(self, features: jax.Array) -> jax.Array:
    """Features [B, C] -> the quantizer's input z [B, D]."""
    return self.quant_proj(self.encoder(features))

  def encode(self, features: jax.Array) -> jax.Array:
    """Features float32 [B, C] -> int32 ids [B, K]."""
    return self.quantize(self.latents(features))[1]

  def decode_quant(self, quantized: jax.Array) -> jax.Array:
    """Quantized latents [B, D] -> features [B, C]."""
    return self.decoder(self.post_quant_proj(quantized))

  def decode(self, ids: jax.Array) -> jax.Array:
    """Ids [B, K] (in range: callers check) -> features [B, C]."""
    return self.decode_quant(self.quantize.lookup(ids))

  def autoencode(self, features: jax.Array) -> jax.Array:
    """decode(encode(features)), in one pass (the reference's eval-mode `autoencode`)."""
    return self.decode_quant(self.quantize(self.latents(features))[0])

  def __call__(self, features: jax.Array, *, key: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """(reconstruction [B, C], ids [B, K]); with a key, the Gumbel training forward."""
    quantized, ids = self.quantize(self.latents(features), key=key)
    return self.decode_quant(quantized), ids


def num_params(model: nnx.Module) -> int:
  return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


# The tokenizer ------------------------------------------------------------------------------


class MLPTokenizer:
  """An MLPVQ as a tokenizer: float vectors [B, C] <-> int32 ids [B, K], both jitted.

  Inputs are checked on the host first, so a wrong batch is one clear error rather than a
  shape error from inside the compiled program. Matmuls run at full float32 precision
  (never TF32 on GPUs): ids are argmaxes, and the reference computes them in float32. Each
  batch size compiles once.
  """

  def __init__(self, model: MLPVQ, *, name: str = "features"):
    self.config: MLPVQConfig = model.config
    self.name = name
    graphdef, state = nnx.split(model)
    self._state = state

    @jax.jit
    def encode(state, features):
      return nnx.merge(graphdef, state).encode(features)

    @jax.jit
    def decode(state, ids):
      return nnx.merge(graphdef, state).decode(ids)

    self._encode, self._decode = encode, decode

  def _label(self) -> str:
    c = self.config
    return f"MLP tokenizer ({c.in_channels} -> {c.num_codebooks} ids of {c.codebook_size})"

  def check_features(self, features) -> np.ndarray:
    """float [B, C] -> float32 [B, C], or a RecordError saying what is wrong."""
    array = np.asarray(features)
    c = self.config.in_channels
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
      raise RecordError(f"{self._label()}: expects float vectors [B, {c}], got dtype "
                        f"{array.dtype}", field=self.name)
    if array.ndim != 2 or array.shape[1] != c or array.shape[0] == 0:
      raise RecordError(f"{self._label()}: expects a batch of vectors [B, {c}] (B >= 1), got "
                        f"shape {list(array.shape)}", field=self.name)
    array = array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():
      row, column = (int(i) for i in np.argwhere(~finite)[0])
      raise RecordError(f"{self._label()}: vector {row} holds {array[row, column]} at "
                        f"channel {column} (NaN or Inf)", field=self.name)
    return array

  def check_ids(self, ids) -> np.ndarray:
    """int [B, K] in [0, N) -> int32 [B, K], or a RecordError saying what is wrong."""
    array = np.asarray(ids)
    k, n = self.config.num_codebooks, self.config.codebook_size
    if not np.issubdtype(array.dtype, np.integer):
      raise RecordError(f"{self._label()}: token ids must be integers, got {array.dtype}",
                        field=self.name)
    if array.ndim != 2 or array.shape[1] != k or array.shape[0] == 0:
      raise RecordError(f"{self._label()}: expects token ids [B, {k}] (B >= 1), got shape "
                        f"{list(array.shape)}", field=self.name)
    bad = (array < 0) | (array >= n)
    if bad.any():
      row, column = (int(i) for i in np.argwhere(bad)[0])
      raise RecordError(f"{self._label()}: token id {int(array[row, column])} at [{row}, "
                        f"{column}] is outside the vocabulary [0, {n})", field=self.name)
    return array.astype(np.int32)

  def tokenize(self, features) -> np.ndarray:
    """Float vectors [B, C] -> int32 ids [B, K]."""
    features = self.check_features(features)
    with jax.default_matmul_precision("highest"):
      return np.asarray(self._encode(self._state, jnp.asarray(features)))

  def detokenize(self, ids) -> np.ndarray:
    """Int ids [B, K] -> float32 vectors [B, C]."""
    ids = self.check_ids(ids)
    with jax.default_matmul_precision("highest"):
      return np.asarray(self._decode(self._state, jnp.asarray(ids)))
