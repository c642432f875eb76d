"""DiVAE tokenizers: the conditional UNet, DDPM / DDIM, training, and the tokenizer jobs."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm import cli, modalities
from fourm import config as config_lib
from fourm.data import synthetic, world
from fourm.data.records import RecordSource
from fourm.errors import UsageError
from fourm.generation.loading import check_tokenizer
from tokenizers_vq import detokenize, diffusion, divae, unet, vqvae
from tokenizers_vq import train as train_lib
from tokenizers_vq import train_step as ts
from tokenizers_vq.grid import GridTokenizer
from fourm.nn.init import initialize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small enough to compile in seconds: a 2-level UNet of width 8, a 1-block ViT encoder.
TINY_UNET = dict(width=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=1,
                 norm_groups=4, sample_steps=4)
SMALL_ENCODER = dict(enc_width=32, enc_depth=1, enc_heads=2, vocab_size=64, post_mlp=False)


def tiny_divae(modality: str = "rgb", **diffusion_overrides) -> vqvae.VQVAEConfig:
  return vqvae.divae_preset(f"{modality}_tiny", diffusion=dict(TINY_UNET, **diffusion_overrides),
                            **SMALL_ENCODER)


def rbg_key(seed: int = 0) -> jax.Array:
  return jax.random.key(seed, impl="rbg")


def rngs(seed: int = 0) -> nnx.Rngs:
  return nnx.Rngs(rbg_key(seed))


def with_random_outputs(model: nnx.Module, seed: int = 1) -> nnx.Module:
  """The model with every parameter redrawn N(0, 0.1^2): the zero-initialized output
  layers of a fresh UNet would predict 0 whatever the noise."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  rng = np.random.default_rng(seed)  # numpy: one jax draw per shape would compile each
  params = jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype),
                        params)
  return nnx.merge(graphdef, params, rest)


# The UNet ------------------------------------------------------------------------------------


@pytest.mark.slow  # over ~10 s on 2 cores: `make test` runs it, `make test-fast` not
def test_the_unet_maps_patched_inputs_to_the_output_channels():
  make = lambda: unet.UNet(in_channels=5, out_channels=3, width=8, channel_mult=(1, 2, 2),
                           num_res_blocks=2, attention_levels=2, num_heads=2, norm_groups=4,
                           rngs=rngs(0))
  net = with_random_outputs(nnx.eval_shape(make))  # no initializer to compile
  # Attention at the two smallest of three levels and in the middle: 2 + 2 blocks down,
  # 3 + 3 up, 1 middle.
  attentions = [m for _, m in nnx.iter_graph(net) if isinstance(m, unet.SelfAttention)]
  assert len(attentions) == 2 + 2 + 3 + 3 + 1
  forward = nnx.jit(lambda net, x, t: net(x, t))  # eager, each op would compile alone
  out = forward(net, jnp.ones((2, 8, 8, 5)), jnp.array([0, 999]))
  assert out.shape == (2, 8, 8, 3)
  assert not np.allclose(out[0], out[1])  # the timestep matters
  # A fresh UNet predicts 0: its output conv starts at zero.
  fresh = unet.UNet(in_channels=5, out_channels=3, width=4, channel_mult=(1,), num_res_blocks=1,
                    attention_levels=1, num_heads=1, norm_groups=2, rngs=rngs(0))
  np.testing.assert_array_equal(forward(fresh, jnp.ones((2, 8, 8, 5)), jnp.array([0, 9])), 0.0)


def test_patches_fold_in_c_ph_pw_order_and_unfold_back():
  x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  folded = unet.fold_patches(x, 4)
  assert folded.shape == (2, 2, 2, 48)
  # channel c * 16 + ph * 4 + pw of patch (i, j) is pixel (4i + ph, 4j + pw), channel c
  np.testing.assert_array_equal(folded[1, 1, 0, 2 * 16 + 3 * 4 + 1], x[1, 4 + 3, 1, 2])
  np.testing.assert_array_equal(unet.unfold_patches(folded, 4), x)
  up = unet.upsample_nearest(jnp.arange(4.0).reshape(1, 2, 2, 1), 4)
  np.testing.assert_array_equal(up[0, :, :, 0], [[0, 0, 1, 1], [0, 0, 1, 1],
                                                 [2, 2, 3, 3], [2, 2, 3, 3]])


# Parameter counts of apple/ml-4m's PatchedUNetCondCat (fourm/vq/models/unet/unet.py),
# counted with torch from the reference's code: unet_patched (width 256) for 3 and 1
# channels with 32-d codes, and the same shape at width 32.
REFERENCE_PARAMS = {("rgb", 256): 196_350_256, ("depth", 256): 196_202_768,
                    ("rgb", 32): 3_118_672}


def abstract_decoder(config: vqvae.VQVAEConfig) -> divae.DiffusionDecoder:
  return nnx.eval_shape(lambda: divae.DiffusionDecoder(
      channels=config.channels, code_dim=config.code_dim, resolution=config.resolution,
      config=config.diffusion, rngs=rngs(0)))


@pytest.mark.parametrize("modality,width", [("depth", 256), ("rgb", 32)])
def test_the_decoder_has_the_reference_unets_parameter_count(modality, width):
  decoder = abstract_decoder(vqvae.divae_preset(f"{modality}_base",
                                                diffusion=dict(width=width)))
  assert vqvae.num_params(decoder) == REFERENCE_PARAMS[(modality, width)]


def test_the_base_rgb_decoder_is_the_references_and_decodes_224_px_from_14x14_codes():
  config = vqvae.divae_preset("rgb_base")
  assert (config.resolution, config.grid, config.diffusion.patch_size) == (224, 14, 4)
  decoder = abstract_decoder(config)
  assert vqvae.num_params(decoder) == REFERENCE_PARAMS[("rgb", 256)]
  graphdef, state = nnx.split(decoder)
  out = jax.eval_shape(
      lambda state, codes: nnx.merge(graphdef, state).sample(codes, jax.random.key(0)),
      state, jax.ShapeDtypeStruct((2, 14, 14, config.code_dim), jnp.float32))
  assert out.shape == (2, 224, 224, 3)


# The diffusion process -----------------------------------------------------------------------


def test_the_linear_schedule_is_the_cumulative_product_of_its_betas():
  config = vqvae.DiffusionConfig(zero_terminal_snr=False)
  alphas = np.asarray(diffusion.make_schedule(config).alphas_cumprod, np.float64)
  np.testing.assert_allclose(alphas, np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)), rtol=1e-6)
  # Zero terminal SNR: the last step is pure noise, the first keeps its signal, and
  # sqrt(a_t) is an affine function of the original one.
  rescaled = np.asarray(diffusion.make_schedule(vqvae.DiffusionConfig()).alphas_cumprod)
  assert rescaled[-1] == 0.0 and np.all(np.diff(rescaled) < 0)
  np.testing.assert_allclose(rescaled[0], alphas[0], rtol=1e-6)
  fit = np.polyfit(np.sqrt(alphas), np.sqrt(rescaled), 1)
  np.testing.assert_allclose(np.polyval(fit, np.sqrt(alphas)), np.sqrt(rescaled), atol=1e-6)


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_q_sample_matches_the_step_by_step_forward_process(zero_terminal_snr):
  """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t, iterated from x0, has the
  distribution q_sample draws from in one step: N(sqrt(a_t) x0, 1 - a_t)."""
  config = vqvae.DiffusionConfig(zero_terminal_snr=zero_terminal_snr)
  schedule = diffusion.make_schedule(config)
  betas = diffusion.linear_betas(1000, 1e-4, 0.02)
  if zero_terminal_snr:
    betas = diffusion.rescale_zero_terminal_snr(betas)
  rng = np.random.default_rng(0)
  n, x0 = 20_000, 0.7
  x = np.full(n, x0)
  checkpoints = {0, 10, 300, 999}
  for t, beta in enumerate(betas):
    x = np.sqrt(1 - beta) * x + np.sqrt(beta) * rng.standard_normal(n)
    if t in checkpoints:
      noise = jax.random.normal(jax.random.key(t), (n,))
      closed = np.asarray(diffusion.q_sample(schedule, jnp.full((n,), x0),
                                             jnp.full((n,), t, jnp.int32), noise))
      for stat in (np.mean, np.std):  # both sample sets agree to a few standard errors
        assert abs(stat(x) - stat(closed)) < 6 * np.std(x) / np.sqrt(n), (t, stat)
  # ...and the mean and variance are exactly those of the recursion.
  t = jnp.array([0, 500, 999])
  mean = np.asarray(diffusion.q_sample(schedule, jnp.ones(3), t, jnp.zeros(3)))
  np.testing.assert_allclose(mean, np.sqrt(np.cumprod(1 - betas)[[0, 500, 999]]), atol=1e-6)


def oracle(prediction, schedule, x0):
  """A denoiser that knows x0 and answers in the given parameterization."""
  def denoise(x_t, t):
    a = schedule.alphas_cumprod[t].reshape(-1, *(1,) * (x_t.ndim - 1))
    eps = (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
    return {"x0": x0, "epsilon": eps, "v": jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0}[prediction]
  return denoise


@pytest.mark.parametrize("prediction,steps", [("x0", 1000), ("x0", 25), ("v", 1000),
                                              ("epsilon", 1000)])
def test_ddim_with_an_oracle_returns_x0(prediction, steps):
  config = vqvae.DiffusionConfig(prediction=prediction,
                                 zero_terminal_snr=prediction != "epsilon")
  schedule = diffusion.make_schedule(config)
  x0 = jax.random.uniform(jax.random.key(3), (2, 8, 8, 3), minval=-1.0, maxval=1.0)
  out = diffusion.ddim_sample(oracle(prediction, schedule, x0), schedule, prediction,
                              x0.shape, jax.random.key(0), steps)
  np.testing.assert_allclose(out, x0, atol=2e-4)


def test_ddim_of_the_exact_gaussian_denoiser_samples_the_gaussian():
  """For data N(mu, s^2) the best x0 estimate is known in closed form; deterministic DDIM
  with it carries N(0, 1) noise to N(mu, s^2) (the probability-flow ODE)."""
  mu, s = 0.3, 0.5
  schedule = diffusion.make_schedule(vqvae.DiffusionConfig())

  def posterior_mean(x_t, t):
    a = schedule.alphas_cumprod[t][:, None]
    return mu + jnp.sqrt(a) * s ** 2 / (a * s ** 2 + 1 - a) * (x_t - jnp.sqrt(a) * mu)

  samples = np.asarray(diffusion.ddim_sample(posterior_mean, schedule, "x0", (4096, 1),
                                             jax.random.key(0), 200))
  assert abs(samples.mean() - mu) < 0.03 and abs(samples.std() - s) < 0.03
  # A single step gives the posterior mean from pure noise: mu, no spread.
  one = np.asarray(diffusion.preview(posterior_mean, schedule, "x0", (16, 1),
                                     jax.random.key(0)))
  np.testing.assert_allclose(one, mu, atol=1e-6)


def test_ddim_timesteps_trail_from_the_last_step():
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 25)[:3], [999, 959, 919])
  assert diffusion.ddim_timesteps(1000, 25)[-1] == 39
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 1000), np.arange(999, -1, -1))
  # A stride (1000 // 30 = 33) that does not divide T visits one timestep more, as the
  # reference's trailing spacing does (its timesteps, then, are np.arange(T, 0, -stride) - 1).
  assert len(diffusion.ddim_timesteps(1000, 30)) == 31
  np.testing.assert_array_equal(diffusion.ddim_timesteps(1000, 3), [999, 666, 333, 0])


def test_the_training_loss_targets_the_prediction():
  schedule = diffusion.make_schedule(vqvae.DiffusionConfig(zero_terminal_snr=False))
  x0 = jax.random.uniform(jax.random.key(3), (4, 8, 8, 3), minval=-1.0, maxval=1.0)
  mse = lambda out, target: jnp.mean(jnp.square(out - target))
  for prediction in ("x0", "epsilon", "v"):
    loss, x0_hat = diffusion.training_loss(oracle(prediction, schedule, x0), schedule,
                                           prediction, x0, jax.random.key(1), mse)
    assert float(loss) < 1e-8, prediction
    np.testing.assert_allclose(x0_hat, x0, atol=1e-3)
    loss, _ = diffusion.training_loss(lambda x, t: jnp.zeros_like(x), schedule, prediction,
                                      x0, jax.random.key(1), mse)
    assert float(loss) > 0.05, prediction


# The DiVAE tokenizer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes():
  return np.stack([synthetic.make_sample(0, "train", i, 64)["rgb"] for i in range(8)])


@pytest.fixture(scope="module")
def random_tokenizer():
  model = with_random_outputs(
      initialize(lambda r: vqvae.VQVAE(tiny_divae("rgb"), rngs=r), rbg_key()))
  return ts.VQTokenizer.from_model(model)


def test_ddim_decoding_is_deterministic_given_the_seed(scenes, random_tokenizer):
  tokens = random_tokenizer.encode(scenes[:2])
  first = random_tokenizer.decode(tokens, seed=5)
  assert first.shape == (2, 64, 64, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(random_tokenizer.decode(tokens, seed=5), first)
  assert not np.array_equal(random_tokenizer.decode(tokens, seed=6), first)
  np.testing.assert_array_equal(random_tokenizer.detokenize(tokens),
                                random_tokenizer.decode(tokens, seed=0))


def test_stochastic_ddim_draws_its_step_noise_from_the_key_too():
  schedule = diffusion.make_schedule(vqvae.DiffusionConfig())
  shrink = lambda x_t, t: 0.5 * x_t  # any x0 estimate that depends on x_t
  draw = lambda key, eta: np.asarray(diffusion.ddim_sample(
      shrink, schedule, "x0", (4, 3), jax.random.key(key), 10, eta=eta))
  np.testing.assert_array_equal(draw(0, 1.0), draw(0, 1.0))
  assert not np.allclose(draw(0, 1.0), draw(0, 0.0))  # eta > 0 adds noise each step
  assert not np.allclose(draw(0, 0.0), draw(1, 0.0))


@pytest.mark.slow
def test_one_step_decoding_is_the_preview(scenes, random_tokenizer):
  tokens = random_tokenizer.encode(scenes[:2])
  model = nnx.merge(random_tokenizer._graphdef, random_tokenizer._params,
                    random_tokenizer._codebook)
  preview = nnx.jit(lambda model, codes, key: model.decoder.preview(
      model.quantizer.lookup(codes), key))
  x0 = preview(model, jnp.asarray(tokens), jax.random.key(5))
  io = random_tokenizer.io
  expected = np.asarray(io.to_raw(io.denormalize(x0, io.default_stats(2))), np.int32)
  decoded = random_tokenizer.decode(tokens, seed=5, steps=1).astype(np.int32)
  assert np.abs(decoded - expected).max() <= 1  # jitted and eager may round apart
  assert not np.array_equal(decoded, random_tokenizer.decode(tokens, seed=5))
  with pytest.raises(UsageError, match=r"DDIM steps must be in \[1, 1000\]"):
    random_tokenizer.decode(tokens, steps=0)


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["depth", "normal"])
def test_depth_and_normal_divaes_decode_raw_arrays(modality):
  sample = synthetic.make_sample(0, "train", 0, 64)
  tokenizer = ts.VQTokenizer.from_model(
      with_random_outputs(
          initialize(lambda r: vqvae.VQVAE(tiny_divae(modality), rngs=r), rbg_key())))
  decoded = tokenizer.reconstruct(sample[modality][None])
  assert decoded.shape == sample[modality][None].shape and decoded.dtype == np.float32
  assert np.isfinite(decoded).all()
  if modality == "normal":
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=-1), 1.0, rtol=1e-4)


def test_divae_configs_serialize_and_validate():
  config = tiny_divae("rgb")
  data = config.to_dict()
  assert data["decoder"] == "diffusion" and data["diffusion"]["channel_mult"] == [1, 2]
  assert vqvae.VQVAEConfig.from_dict(data) == config
  assert config.diffusion.clip_x0 is True and tiny_divae("depth").diffusion.clip_x0 is False
  # A ViT config's dict is what it was before decoders could be chosen.
  assert "decoder" not in vqvae.preset("rgb_tiny").to_dict()
  problems = {
      "makes pixel values": dict(modality="semseg", num_classes=7, decoder="diffusion"),
      "zero terminal SNR": dict(modality="rgb", decoder="diffusion",
                                diffusion=vqvae.DiffusionConfig(prediction="epsilon")),
      "must divide by 8": dict(modality="rgb", resolution=48, patch_size=8,
                               decoder="diffusion"),
      "needs decoder='diffusion'": dict(modality="rgb", diffusion=vqvae.DiffusionConfig()),
      "norm_groups": dict(modality="rgb", decoder="diffusion",
                          diffusion=vqvae.DiffusionConfig(width=20)),
  }
  for message, fields in problems.items():
    with pytest.raises(UsageError, match=message):
      vqvae.VQVAEConfig(**fields)
  with pytest.raises(UsageError, match="unknown DiVAE preset"):
    vqvae.divae_preset("semseg_tiny")


@pytest.mark.parametrize("variant", sorted(vqvae.DIVAE_PRESETS))
def test_every_divae_config_makes_a_valid_divae(variant):
  config = config_lib.load_config(os.path.join(ROOT, f"configs/tokenizers/divae.py:{variant}"))
  vq = train_lib.vqvae_config(config)
  assert vq.is_diffusion and variant.startswith(vq.modality)
  assert vq.vocab_size <= modalities.get(f"tok_{vq.modality}").vocab_size
  assert vq.grid == vqvae.preset(variant).grid  # the ViT preset's grid and codebook
  overridden = config_lib.load_config(
      os.path.join(ROOT, f"configs/tokenizers/divae.py:{variant}"),
      ["diffusion.sample_steps=50"])
  assert train_lib.vqvae_config(overridden).diffusion.sample_steps == 50


@pytest.mark.slow
def test_a_tiny_divaes_loss_falls(scenes):
  config = tiny_divae("rgb")
  model = initialize(lambda r: vqvae.VQVAE(config, rngs=r), rbg_key())
  optimizer = ts.make_optimizer(ts.TrainConfig(learning_rate=3e-3))
  graphdef, state = ts.init_state(model, optimizer)
  step = ts.make_train_step(graphdef, config, optimizer, seed=0)
  evaluate = ts.make_eval_step(graphdef, config)
  before = float(evaluate(state, scenes)["loss"])  # same noise every evaluation
  for _ in range(40):
    state, metrics = step(state, scenes)
  after = float(evaluate(state, scenes)["loss"])
  assert np.isfinite(float(metrics["grad_norm"]))
  assert after < 0.4 * before, (before, after)  # measured: 0.115 -> 0.025


@pytest.mark.slow
def test_a_divae_trains_tokenizes_and_detokenizes(tmp_path):
  data = str(tmp_path / "world")
  world.write_world(data, 24, resolution=64, seed=0, val_fraction=0.25, records_per_shard=16,
                    workers=1, progress=False, log=lambda _: None)
  workdir = str(tmp_path / "divae")
  overrides = [f"data.paths=('{data}',)", "total_steps=3", "batch_size=8", "log_every=1",
               "eval_every=2", "eval_batches=1", "checkpoint.every=2",
               "checkpoint.async_save=False", "vocab_size=64"]
  overrides += [f"diffusion.{k}={v}" for k, v in TINY_UNET.items()]
  config = config_lib.load_config(os.path.join(ROOT, "configs/tokenizers/divae.py:rgb_tiny"),
                                  overrides)
  lines = []
  last = train_lib.train(config, workdir, log=lines.append)
  assert np.isfinite(last["eval/psnr"]) and "diffusion decoder" in lines[0]
  assert os.path.getsize(os.path.join(workdir, "reconstructions.png")) > 1000
  # It resumes, also with other decoding settings (not what the weights were trained for).
  # The run is made to resume by removing its last checkpoint rather than by asking for
  # more steps: the schedule's length is part of the step program, and an unchanged
  # program comes from the compilation cache.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "3"))
  config.eval_every, config.diffusion.sample_steps = 0, 2
  again = []
  train_lib.train(config, workdir, log=again.append)
  assert any("resumed from the checkpoint at step 2" in line for line in again)
  config.diffusion.width = 16
  with pytest.raises(UsageError, match="holds a tokenizer"):
    train_lib.train(config, workdir, log=lambda _: None)

  out = str(tmp_path / "tokens")
  assert cli.main(["tokenize", "--data", data, "--out", out, "--tokenizers",
                   f"tok_rgb={workdir}", "--batch-size", "8", "--quiet"]) == 0
  tokenizer = train_lib.load_tokenizer(workdir)
  assert tokenizer.config.is_diffusion and isinstance(tokenizer, GridTokenizer)
  check_tokenizer("tok_rgb", tokenizer, modalities.SMALL_LAYOUT)
  sample = RecordSource([data, out], "train")[2]
  np.testing.assert_array_equal(sample["tok_rgb"], tokenizer.encode(sample["rgb"][None])[0])
  detok = detokenize.Detokenizer({"tok_rgb": tokenizer})
  picture = detok.decode("tok_rgb", sample["tok_rgb"].reshape(-1))
  assert picture.shape == (64, 64, 3) and picture.dtype == np.uint8
  np.testing.assert_array_equal(picture, tokenizer.decode(sample["tok_rgb"][None], seed=0)[0])
  np.testing.assert_array_equal(detok.decode("tok_rgb", sample["tok_rgb"].reshape(-1)), picture)
