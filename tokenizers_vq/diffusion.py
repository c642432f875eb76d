"""DDPM training and DDIM sampling, as pure functions of a noise schedule.

    schedule = make_schedule(config)              # a DiffusionConfig (vqvae_config.py)
    loss, x0_hat = training_loss(denoise, schedule, "x0", x0, key, loss_fn)
    x0 = ddim_sample(denoise, schedule, "x0", shape, key, steps=25)

`denoise(x_t, t) -> model output` is the network with its conditioning bound; what its
output means is the `prediction`: "x0" (the clean sample, the reference DiVAE's
`prediction_type: sample`), "epsilon" (the noise) or "v" (sqrt(a) eps - sqrt(1 - a) x0).

The schedule (Ho et al. 2020) is T betas spaced linearly from beta_start to beta_end,
with a_t = prod_{s <= t} (1 - beta_s) ("alphas_cumprod"), so that
q(x_t | x0) = N(sqrt(a_t) x0, (1 - a_t) I) (`q_sample`). With `zero_terminal_snr` the
sqrt(a_t) are shifted and scaled so that a_{T-1} = 0 exactly (Lin et al. 2023, as the
reference does): the last step is pure noise, which is where sampling starts, so the
model is trained on what it will see.

DDIM (Song et al. 2021) walks `steps` timesteps spaced "trailing" from T - 1 down
(T=1000, 25 steps: 999, 959, ..., 39) and then to a_{-1} = 1, with
x_prev = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - s^2) eps_hat + s z,
s = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev). With eta = 0 the chain is
deterministic: the output is a function of the starting noise, i.e. of the key. One step
(`preview`) is the model's x0 prediction from pure noise: one network call, for
training-time pictures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
  from tokenizers_vq.vqvae_config import DiffusionConfig

Denoise = Callable[[jax.Array, jax.Array], jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


class Schedule(NamedTuple):
  alphas_cumprod: jax.Array  # [T] float32, a_t

  @property
  def num_steps(self) -> int:
    return self.alphas_cumprod.shape[0]


def linear_betas(num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
  return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Betas whose sqrt(a_t) are those of `betas` shifted to end at 0 and rescaled to
  start where they did (Lin et al. 2023, algorithm 1)."""
  root = np.sqrt(np.cumprod(1.0 - betas))
  first, last = root[0], root[-1]
  root = (root - last) * first / (first - last)
  cumprod = root ** 2
  alphas = np.concatenate([cumprod[:1], cumprod[1:] / cumprod[:-1]])
  return 1.0 - alphas


def make_schedule(config: DiffusionConfig) -> Schedule:
  if config.beta_schedule != "linear":
    raise ValueError(f"unknown beta schedule {config.beta_schedule!r}")
  betas = linear_betas(config.num_train_timesteps, config.beta_start, config.beta_end)
  if config.zero_terminal_snr:
    betas = rescale_zero_terminal_snr(betas)
  return Schedule(jnp.asarray(np.cumprod(1.0 - betas), jnp.float32))


def _at(values: jax.Array, t: jax.Array, like: jax.Array) -> jax.Array:
  """values[t] [B] broadcast against `like` [B, ...]."""
  return values[t].reshape((-1,) + (1,) * (like.ndim - 1))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise, t int [B]."""
  a = _at(schedule.alphas_cumprod, t, x0)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def target(prediction: str, schedule: Schedule, x0: jax.Array, t: jax.Array,
           noise: jax.Array) -> jax.Array:
  """What the network is trained to output at (x0, t, noise)."""
  if prediction == "x0":
    return x0
  if prediction == "epsilon":
    return noise
  if prediction == "v":
    a = _at(schedule.alphas_cumprod, t, x0)
    return jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0
  raise ValueError(f"unknown prediction {prediction!r}")


def split_output(prediction: str, schedule: Schedule, out: jax.Array, x_t: jax.Array,
                 t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The network output at x_t -> (x0 estimate, noise estimate)."""
  a = _at(schedule.alphas_cumprod, t, x_t)
  if prediction == "x0":
    return out, (x_t - jnp.sqrt(a) * out) / jnp.sqrt(1.0 - a)
  if prediction == "epsilon":
    return (x_t - jnp.sqrt(1.0 - a) * out) / jnp.sqrt(a), out
  if prediction == "v":
    return jnp.sqrt(a) * x_t - jnp.sqrt(1.0 - a) * out, jnp.sqrt(a) * out + jnp.sqrt(1.0 - a) * x_t
  raise ValueError(f"unknown prediction {prediction!r}")


def training_loss(denoise: Denoise, schedule: Schedule, prediction: str, x0: jax.Array,
                  key: jax.Array, loss_fn: LossFn) -> tuple[jax.Array, jax.Array]:
  """The DDPM objective on one batch: t ~ U{0..T-1} and noise ~ N(0, I) per sample,
  loss_fn(denoise(x_t, t), target). Returns (loss, the x0 estimate)."""
  t_key, noise_key = jax.random.split(key)
  t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.num_steps)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  x_t = q_sample(schedule, x0, t, noise)
  out = denoise(x_t, t)
  x0_hat, _ = split_output(prediction, schedule, out, x_t, t)
  return loss_fn(out, target(prediction, schedule, x0, t, noise)), x0_hat


def ddim_timesteps(num_train_steps: int, steps: int) -> np.ndarray:
  """The timesteps DDIM visits for `steps`, "trailing": from T - 1 down in strides of
  T // steps, as the reference's scheduler spaces them, so converted DiVAEs visit the
  timesteps they visit there. When the stride does not divide T that is one timestep
  more than `steps` (3 of 1,000: 999, 666, 333, 0)."""
  if not 1 <= steps <= num_train_steps:
    raise ValueError(f"DDIM steps must be in [1, {num_train_steps}], got {steps}")
  return (np.arange(num_train_steps, 0, -(num_train_steps // steps)) - 1).astype(np.int32)


def ddim_sample(denoise: Denoise, schedule: Schedule, prediction: str,
                shape: tuple[int, ...], key: jax.Array, steps: int, *, eta: float = 0.0,
                clip: bool = False, x_T: jax.Array | None = None) -> jax.Array:
  """x0 drawn by DDIM from x_T = N(0, I) (drawn from `key`, or the given `x_T`), in `steps`
  network calls. `clip` clips each x0 estimate to [-1, 1] (and takes the noise estimate
  consistent with it). eta = 0: deterministic given `key` (or `x_T`).
  """
  timesteps = ddim_timesteps(schedule.num_steps, steps)
  # Each step lands one stride below (a_{-1} = 1 past the end), as in the reference: with a
  # stride that does not divide T the last step ends at t = 0, not at the clean sample.
  previous = (timesteps - schedule.num_steps // steps).astype(np.int32)
  calls = len(timesteps)
  start_key, step_key = jax.random.split(key)
  alphas = schedule.alphas_cumprod
  batch = shape[0]

  def step(x, inputs):
    t, t_prev, index = inputs
    a_t = alphas[t]
    a_prev = jnp.where(t_prev >= 0, alphas[jnp.maximum(t_prev, 0)], 1.0)
    t_batch = jnp.full((batch,), t, jnp.int32)
    x0, eps = split_output(prediction, schedule, denoise(x, t_batch), x, t_batch)
    if clip:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (x - jnp.sqrt(a_t) * x0) / jnp.sqrt(1.0 - a_t)
    sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
    x = jnp.sqrt(a_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma ** 2, 0.0)) * eps
    if eta > 0:
      x = x + sigma * jax.random.normal(jax.random.fold_in(step_key, index), shape, x.dtype)
    return x, None

  if x_T is None:
    x_T = jax.random.normal(start_key, shape, jnp.float32)
  elif x_T.shape != tuple(shape):
    raise ValueError(f"x_T is {x_T.shape}, the samples are {shape}")
  x0, _ = jax.lax.scan(step, x_T, (jnp.asarray(timesteps), jnp.asarray(previous),
                                   jnp.arange(calls)))
  return x0


def preview(denoise: Denoise, schedule: Schedule, prediction: str, shape: tuple[int, ...],
            key: jax.Array, *, clip: bool = False) -> jax.Array:
  """The one-step decode: the x0 estimate from pure noise at t = T - 1 (one network call)."""
  return ddim_sample(denoise, schedule, prediction, shape, key, 1, clip=clip)
