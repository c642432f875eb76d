"""Training one VQ-VAE tokenizer, and using it: a jitted step, jitted encode / decode.

The model is split once into its graph (static), its `nnx.Param`s (what AdamW trains)
and its `CodebookState` (what the EMA updates), and the step is a pure function of
those arrays:

    graphdef, state = init_state(model, optimizer)
    step = make_train_step(graphdef, model.config, optimizer, seed=0)
    state, metrics = step(state, raw_batch)      # raw arrays as records store them

Inside the step the raw batch is normalized (modality_io), the reconstruction plus
commitment loss is differentiated with respect to the parameters only, AdamW updates
them, and then the quantizer's EMA update and dead-code replacement run on the
encoder vectors of the same batch, outside the gradient. The dead-code draw is keyed by
(seed, step), so a resumed run replaces the same codes with the same vectors. A DiVAE
(config.decoder "diffusion") is the same step with the DDPM loss as its reconstruction
loss; its noise levels and noise are keyed by (seed, step) as well, and its held-out
metrics score the DDIM decode of the codes from a fixed key.

`VQTokenizer` is the inference side, for the data pipeline and for generation:
`encode(raw) -> int32 [B, G, G]`, `decode(tokens) -> raw arrays` (inverse
normalization applied, class ids for semseg; a DiVAE runs DDIM from `seed`, 0 unless
given, so the same tokens decode to the same pixels). Both check their input on the host
before the jitted call, so a batch of the wrong modality or a token id outside the
vocabulary is a one-line error naming the tokenizer, the modality and the bad value, never
an out-of-bounds gather inside XLA (which would silently clamp).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fourm import modalities
from fourm.data import augment as augment_lib
from fourm.errors import RecordError, UsageError
from tokenizers_vq import modality_io
from tokenizers_vq import quantizer as quantizer_lib
from tokenizers_vq.vqvae import VQVAE, VQVAEConfig

Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimizer settings (the reference trains its tokenizers with AdamW, betas 0.9/0.99,
  gradient clipping at 1.0)."""
  learning_rate: float = 1e-3
  warmup_steps: int = 0
  total_steps: int | None = None  # None: constant after warm-up; else cosine decay to 0
  weight_decay: float = 0.05
  b1: float = 0.9
  b2: float = 0.99
  grad_clip: float | None = 1.0


def make_optimizer(config: TrainConfig = TrainConfig()) -> optax.GradientTransformation:
  """AdamW with warm-up (and cosine decay); no weight decay on biases, norms, embeddings' 1D."""
  if config.total_steps:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps,
        max(config.total_steps, config.warmup_steps + 1))
  elif config.warmup_steps:
    schedule = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
  else:
    schedule = config.learning_rate
  adamw = optax.adamw(schedule, b1=config.b1, b2=config.b2,
                      weight_decay=config.weight_decay,
                      mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))
  if config.grad_clip:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
  return adamw


class TrainState(NamedTuple):
  params: nnx.State        # nnx.Param: trained by the optimizer
  codebook: nnx.State      # CodebookState: updated by EMA and dead-code replacement
  opt_state: optax.OptState
  step: jax.Array          # int32 scalar


def init_state(model: VQVAE, optimizer: optax.GradientTransformation
               ) -> tuple[nnx.GraphDef, TrainState]:
  """Splits `model` into its static graph and the arrays a step updates."""
  # Two exhaustive filters: any other variable type in the model is an error here.
  graphdef, params, codebook = nnx.split(model, nnx.Param, quantizer_lib.CodebookState)
  return graphdef, TrainState(params, codebook, optimizer.init(params), jnp.int32(0))


def forward_loss(graphdef, io: modality_io.ModalityIO, params, codebook, raw,
                 key: jax.Array | None = None):
  """The VQ-VAE objective on one raw batch: (reconstruction + commitment loss,
  (reconstruction loss, decoder output, quantizer output, normalization stats)).
  A DiVAE's reconstruction loss is the DDPM loss, its noise drawn from `key`."""
  model = nnx.merge(graphdef, params, codebook)
  x, stats = io.normalize(raw)
  recon, out, quantized = model.reconstruction_loss(x, io.loss, key)
  return recon + quantized.commitment_loss, (recon, out, quantized, stats)


def _noise_key(base_key: jax.Array, step: jax.Array) -> jax.Array:
  """The DiVAE's noise draw of a step (the dead-code draw uses fold_in(base, step))."""
  return jax.random.fold_in(jax.random.fold_in(base_key, step), 1)


def _batch_metrics(io, config: VQVAEConfig, loss, recon, out, quantized, raw, stats
                   ) -> Metrics:
  usage, perplexity = quantizer_lib.usage_and_perplexity(quantized.codes, config.vocab_size)
  metrics = {"loss": loss, "recon_loss": recon,
             "commitment_loss": quantized.commitment_loss,
             "usage_pct": 100.0 * usage, "perplexity": perplexity}
  metrics.update(io.metrics(out, raw, stats))
  return metrics


def _check_raw(io: modality_io.ModalityIO, raw) -> Any:
  if isinstance(raw, Mapping):
    if io.name not in raw:
      raise RecordError(f"{io.tokenizer_label()}: the batch has no {io.name!r} (it holds "
                        f"{sorted(raw)})", field=io.name)
    raw = raw[io.name]
  io.check(raw)
  return raw


def make_train_step(graphdef: nnx.GraphDef, config: VQVAEConfig,
                    optimizer: optax.GradientTransformation, *, seed: int = 0
                    ) -> Callable[[TrainState, Any], tuple[TrainState, Metrics]]:
  """The jitted step `(state, raw batch or record batch) -> (new state, metrics)`.

  The state passed in is donated: use the returned one. Metrics are jax scalars: loss,
  recon_loss, commitment_loss, the modality's metrics, usage_pct and perplexity of the
  batch's codes, codes_replaced, and grad_norm (before clipping).
  """
  io = modality_io.for_config(config)
  base_key = jax.random.key(seed)

  def step(state: TrainState, raw: jax.Array) -> tuple[TrainState, Metrics]:
    key = _noise_key(base_key, state.step)
    grad_fn = jax.value_and_grad(
        lambda params: forward_loss(graphdef, io, params, state.codebook, raw, key),
        has_aux=True)
    (loss, (recon, out, quantized, stats)), grads = grad_fn(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # The EMA / replacement update sees this batch's assignments under the old codebook.
    model = nnx.merge(graphdef, params, state.codebook)
    replaced = model.quantizer.update(quantized, jax.random.fold_in(base_key, state.step))
    codebook = nnx.state(model, quantizer_lib.CodebookState)
    metrics = _batch_metrics(io, config, loss, recon, out, quantized, raw, stats)
    metrics["codes_replaced"] = replaced
    metrics["grad_norm"] = optax.tree.norm(grads)
    return TrainState(params, codebook, opt_state, state.step + 1), metrics

  jitted = jax.jit(step, donate_argnums=0)

  def checked_step(state: TrainState, raw) -> tuple[TrainState, Metrics]:
    return jitted(state, _check_raw(io, raw))

  return checked_step


def make_eval_step(graphdef: nnx.GraphDef, config: VQVAEConfig, *, seed: int = 0
                   ) -> Callable[[TrainState, Any], Metrics]:
  """Jitted `(state, raw batch) -> metrics` without any update (held-out evaluation).

  The metrics of the train step (but codes_replaced and grad_norm), plus "codes": the
  batch's token ids [B, G, G], for usage pooled over a whole held-out set. A DiVAE's loss
  uses noise from a fixed key (comparable from one evaluation to the next) and its
  modality metrics score the DDIM decode of the codes (the config's steps, key(seed)),
  i.e. what `VQTokenizer.reconstruct` returns.
  """
  io = modality_io.for_config(config)
  key = jax.random.key(seed)

  @jax.jit
  def evaluate(params, codebook, raw):
    loss, (recon, out, quantized, stats) = forward_loss(graphdef, io, params, codebook, raw,
                                                        _noise_key(key, 0))
    if config.is_diffusion:
      model = nnx.merge(graphdef, params, codebook)
      out = model.decode_quant(quantized.quantized, key=key)
    metrics = _batch_metrics(io, config, loss, recon, out, quantized, raw, stats)
    metrics["codes"] = quantized.codes
    return metrics

  def checked(state: TrainState, raw) -> Metrics:
    return evaluate(state.params, state.codebook, _check_raw(io, raw))

  return checked


class VQTokenizer:
  """A trained VQ-VAE as a tokenizer: raw arrays <-> int32 token grids, both jitted.

  Each batch size compiles once; feed fixed-size batches (the pipeline does).
  """

  def __init__(self, graphdef: nnx.GraphDef, params: nnx.State, codebook: nnx.State):
    model = nnx.merge(graphdef, params, codebook)
    self.config: VQVAEConfig = model.config
    self.io = modality_io.for_config(self.config)
    self._graphdef, self._params, self._codebook = graphdef, params, codebook
    io = self.io

    @jax.jit
    def encode(params, codebook, raw):
      model = nnx.merge(graphdef, params, codebook)
      x, stats = io.normalize(raw)
      return model.encode(x).codes, stats

    def decode(params, codebook, tokens, stats, seed, steps):
      model = nnx.merge(graphdef, params, codebook)
      sampling = dict(key=jax.random.key(seed), steps=steps) if self.config.is_diffusion else {}
      return io.to_raw(io.denormalize(model.decode_tokens(tokens, **sampling), stats))

    self._encode, self._decode = encode, jax.jit(decode, static_argnames="steps")

  @classmethod
  def from_model(cls, model: VQVAE) -> VQTokenizer:
    graphdef, params, codebook = nnx.split(model, nnx.Param, quantizer_lib.CodebookState)
    return cls(graphdef, params, codebook)

  @classmethod
  def from_state(cls, graphdef: nnx.GraphDef, state: TrainState) -> VQTokenizer:
    return cls(graphdef, state.params, state.codebook)

  @property
  def grid(self) -> int:
    return self.config.grid

  def encode(self, raw, *, return_stats: bool = False):
    """Raw batch (array, or a batch dict holding this modality) -> int32 tokens [B, G, G].

    With `return_stats`, also the per-image (shift, scale) [B, 2] that `decode` needs to
    put depth back at its true distance (constants for the other modalities).
    """
    raw = _check_raw(self.io, raw)
    tokens, stats = self._encode(self._params, self._codebook, jnp.asarray(raw))
    tokens = np.asarray(tokens)
    return (tokens, np.asarray(stats)) if return_stats else tokens

  def check_tokens(self, tokens) -> np.ndarray:
    """Host-side check of a token batch [B, G, G] or [B, G*G]; returns it as int32 [B, G, G]."""
    tokens = np.asarray(tokens)
    g, who = self.grid, self.io.tokenizer_label()
    if not np.issubdtype(tokens.dtype, np.integer):
      raise RecordError(f"{who}: token ids must be integers, got {tokens.dtype}",
                        field=self.io.name)
    if tokens.ndim == 2 and tokens.shape[1] == g * g:
      tokens = tokens.reshape(-1, g, g)
    if tokens.ndim != 3 or tokens.shape[1:] != (g, g):
      raise RecordError(f"{who}: expects token batches [B, {g}, {g}] (or [B, {g * g}]), got "
                        f"{list(tokens.shape)}", field=self.io.name)
    bad = (tokens < 0) | (tokens >= self.config.vocab_size)
    if bad.any():
      where = tuple(int(i) for i in np.argwhere(bad)[0])
      raise RecordError(f"{who}: token id {int(tokens[where])} at {list(where)} is outside "
                        f"the vocabulary [0, {self.config.vocab_size})", field=self.io.name)
    return tokens.astype(np.int32)

  def decode(self, tokens, stats=None, *, seed: int = 0, steps: int | None = None
             ) -> np.ndarray:
    """int tokens [B, G, G] (or [B, G*G]) -> raw arrays, in the dtype records store.

    rgb uint8 [B, R, R, 3]; depth float32 [B, R, R] metres (at the config's typical
    distance unless `stats` from `encode(..., return_stats=True)` are given); normal unit
    vectors float32 [B, R, R, 3]; semseg class ids [B, R, R]; clip float32 [B, G, G, C].
    A DiVAE samples by DDIM in `steps` (default: its config's `sample_steps`; 1 is the
    one-step preview) from noise drawn from `seed` (a batch's noise is one draw, so an
    image's pixels depend on its place in the batch too); a ViT decoder ignores both.
    """
    tokens = self.check_tokens(tokens)
    if stats is None:
      stats = self.io.default_stats(tokens.shape[0])
    stats = np.asarray(stats, np.float32)
    if stats.shape != (tokens.shape[0], 2):
      raise RecordError(f"{self.io.tokenizer_label()}: stats must be [B, 2] = "
                        f"[{tokens.shape[0]}, 2], got {list(stats.shape)}", field=self.io.name)
    if steps is not None and self.config.is_diffusion:
      limit = self.config.diffusion.num_train_timesteps
      if not 1 <= steps <= limit:
        raise UsageError(f"{self.io.tokenizer_label()}: DDIM steps must be in [1, {limit}], "
                         f"got {steps}")
    return np.asarray(self._decode(self._params, self._codebook, jnp.asarray(tokens),
                                   jnp.asarray(stats), jnp.int32(seed),
                                   steps if self.config.is_diffusion else None))

  # The grid-tokenizer protocol (tokenizers_vq/grid.py) ------------------------------

  @property
  def raw_name(self) -> str:
    return self.config.modality

  @property
  def num_codes(self) -> int:
    return self.config.vocab_size

  def grid_at(self, layout: modalities.Layout) -> int:
    del layout  # a VQ-VAE makes the grid it was trained for
    return self.grid

  def tokenize(self, raws: Sequence[np.ndarray], layout: modalities.Layout | None = None, *,
               batch_size: int | None = None) -> np.ndarray:
    """Full-size raw values -> tokens [N, G, G], each center-cropped to the tokenizer's
    resolution first (it reads what it was trained on, whatever the layout). Batches are
    padded to `batch_size`, so the encoder compiles once for that size."""
    del layout
    batch = np.stack([augment_lib.center_crop(self.raw_name, raw, self.config.resolution)
                      for raw in raws])
    count = len(batch)
    if batch_size is not None and count < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
    return self.encode(batch)[:count]

  def detokenize(self, ids: np.ndarray) -> np.ndarray:
    return self.decode(ids)

  def reconstruct(self, raw, **sampling) -> np.ndarray:
    """decode(encode(raw)) with each image's own stats (`seed`, `steps`: see decode)."""
    tokens, stats = self.encode(raw, return_stats=True)
    return self.decode(tokens, stats, **sampling)
