"""The VQ-VAE tokenizers: every modality end to end, training, config, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm import modalities
from fourm.data import synthetic
from fourm.errors import RecordError, UsageError
from tokenizers_vq import modality_io, vqvae
from tokenizers_vq import train_step as ts

# The tokenizable modalities the synthetic world renders (4M-21's edges and DINOv2 /
# ImageBind features are registered, but not rendered there).
_RENDERED = set(synthetic.make_sample(0, "train", 0, 16))
MODALITIES = tuple(m for m in modality_io.tokenizable() if m in _RENDERED)
# Small enough to compile in about a second; the presets are exercised by the benchmark.
SMALL = dict(enc_width=32, enc_depth=1, enc_heads=2, dec_width=32, dec_depth=1, dec_heads=2,
             vocab_size=64, post_mlp=False)


def small_config(modality: str, **overrides) -> vqvae.VQVAEConfig:
  return vqvae.preset(f"{modality}_tiny", **dict(SMALL, **overrides))


def rngs(seed: int = 0) -> nnx.Rngs:
  # The "rbg" generator compiles several times faster on CPU than threefry: tests start
  # many small models, each of whose initializers is its own compiled program.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


@pytest.fixture(scope="module")
def scenes():
  """Rendered scenes of the synthetic world at 64 px: every raw modality, exactly aligned."""
  train = [synthetic.make_sample(0, "train", i, 64) for i in range(128)]
  val = [synthetic.make_sample(0, "val", i, 64) for i in range(32)]
  stack = lambda samples, name: np.stack([s[name] for s in samples])
  return ({name: stack(train, name) for name in MODALITIES},
          {name: stack(val, name) for name in MODALITIES})


# Every modality: shapes, dtypes, metrics -----------------------------------------------------


EXPECTED_RAW = {  # what decode must give back for a batch of 4 at 64 px
    "rgb": ((4, 64, 64, 3), np.uint8), "depth": ((4, 64, 64), np.float32),
    "normal": ((4, 64, 64, 3), np.float32), "semseg": ((4, 64, 64), np.uint8),
    "clip": ((4, 8, 8, 64), np.float32)}
METRICS = {"rgb": {"psnr"}, "depth": {"abs_rel", "rmse"}, "normal": {"angle_deg"},
           "semseg": {"pixel_acc", "miou"}, "clip": {"cosine"}}


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_modality_encodes_to_an_8x8_grid_and_decodes_to_raw_arrays(scenes, modality):
  raw = scenes[0][modality][:4]
  config = small_config(modality)
  model = vqvae.VQVAE(config, rngs=rngs(0))
  tokenizer = ts.VQTokenizer.from_model(model)
  tokens = tokenizer.encode(raw)
  assert tokens.shape == (4, 8, 8) and tokens.dtype == np.int32
  assert tokens.min() >= 0 and tokens.max() < config.vocab_size
  decoded = tokenizer.decode(tokens)
  shape, dtype = EXPECTED_RAW[modality]
  assert decoded.shape == shape and decoded.dtype == dtype
  # A batch dict keyed by modality, and the model's flat [B, N] token layout, work too.
  np.testing.assert_array_equal(tokenizer.encode({modality: raw, "caption": ["x"] * 4}),
                                tokens)
  np.testing.assert_array_equal(tokenizer.decode(tokens.reshape(4, 64)), decoded)
  if modality == "normal":
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=-1), 1.0, rtol=1e-4)
  if modality == "semseg":
    assert decoded.max() < config.num_classes

  graphdef, state = ts.init_state(model, ts.make_optimizer())
  metrics = ts.make_eval_step(graphdef, config)(state, raw)
  np.testing.assert_array_equal(np.asarray(metrics.pop("codes")), tokens)
  assert set(metrics) == {"loss", "recon_loss", "commitment_loss", "usage_pct",
                          "perplexity"} | METRICS[modality]
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_tokenizers_read_the_dtypes_that_the_registry_stores():
  for modality in MODALITIES:
    raw = modalities.get_raw(modality)
    config = small_config(modality)
    io = modality_io.for_config(config)
    assert io.expected_dtype == raw.dtype, modality
    assert len(io.sample_shape()) == (2 if raw.channels is None and modality != "clip" else 3)
  assert small_config("rgb").layout == modalities.SMALL_LAYOUT
  assert vqvae.preset("depth_base").layout == modalities.REFERENCE_LAYOUT


def test_the_base_presets_give_14x14_tokens_at_224_px():
  for modality in MODALITIES:
    config = vqvae.preset(f"{modality}_base")
    assert config.grid == 14 and config.tokens_per_image == 196
    assert config.vocab_size == modalities.get(modalities.grid_modality_of(modality)).vocab_size
    assert (config.enc_width, config.enc_depth, config.dec_depth) == (768, 12, 12)
  model = nnx.eval_shape(lambda: vqvae.VQVAE(vqvae.preset("rgb_base"), rngs=rngs(0)))
  # ViT-B encoder + decoder with the reference's post-MLPs: about 2 x 90M parameters.
  assert 160e6 < vqvae.num_params(model) < 200e6
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda state, x: nnx.merge(graphdef, state)(x), state,
                       jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  assert out[0].shape == (2, 224, 224, 3) and out[1].codes.shape == (2, 14, 14)


def test_parameter_names_follow_the_reference():
  model = vqvae.VQVAE(small_config("semseg", enc_depth=2, post_mlp=True), rngs=rngs(0))
  names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model))}
  for name in ("cls_emb/embedding", "encoder/proj/kernel", "encoder/blocks/1/attn/qkv/kernel",
               "encoder/blocks/0/mlp/fc2/bias", "encoder/norm_mlp/scale",
               "encoder/post_mlp/fc1/kernel", "encoder/quant_proj/kernel",
               "quantizer/codebook", "decoder/post_quant_proj/kernel",
               "decoder/blocks/0/norm1/bias", "decoder/out_proj/kernel"):
    assert name in names, name
  assert model.encoder.proj.kernel.shape == (32, 8, 8, 32)  # [C, P, P, D]
  assert model.decoder.out_proj.kernel.shape == (32, 7, 8, 8)  # [D, C, P, P]


def test_out_conv_adds_two_convnext_blocks_and_old_configs_read_unchanged():
  """The reference's SAM-instance tokenizer smooths its decoder's patches with two
  ConvNeXt blocks; configs without them store no `out_conv` key."""
  assert "out_conv" not in small_config("rgb").to_dict()
  config = small_config("rgb", out_conv=True)
  data = json.loads(json.dumps(config.to_dict()))
  assert data["out_conv"] is True and vqvae.VQVAEConfig.from_dict(data) == config
  model = vqvae.VQVAE(config, rngs=rngs(0))
  names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model))}
  for name in ("decoder/out_conv/0/dwconv/kernel", "decoder/out_conv/1/norm/scale",
               "decoder/out_conv/1/pwconv1/kernel", "decoder/out_conv/0/pwconv2/bias",
               "decoder/out_conv/1/gamma"):
    assert name in names, name
  assert model.decoder.out_conv[0].dwconv.kernel.shape == (7, 7, 1, 3)  # depthwise
  out, _ = model(jnp.zeros((1, 64, 64, 3)))
  assert out.shape == (1, 64, 64, 3)
  # Layer scale 1e-6: an untrained block is (nearly) the identity.
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
  np.testing.assert_allclose(np.asarray(model.decoder.out_conv[0](x)), np.asarray(x), atol=1e-4)


def test_the_decoder_is_swappable():
  class MeanDecoder(nnx.Module):
    """Repeats each code vector over its patch: the simplest thing with the contract."""

    def __init__(self, key):
      self.proj = nnx.Linear(32, 3, rngs=key)

    def __call__(self, quantized):
      return jnp.repeat(jnp.repeat(self.proj(quantized), 8, axis=1), 8, axis=2)

  config = small_config("rgb")
  model = vqvae.VQVAE(config, rngs=rngs(0), decoder=MeanDecoder(rngs(1)))
  out, decoded = nnx.jit(lambda m, x: (m(x)[0], m.decode_tokens(m(x)[1].codes)))(
      model, jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32))
  assert out.shape == (2, 64, 64, 3)
  np.testing.assert_allclose(out[:, :8, :8], jnp.broadcast_to(out[:, :1, :1], (2, 8, 8, 3)))
  assert float(jnp.std(out)) > 0
  np.testing.assert_allclose(decoded, out, atol=1e-6)


# Normalization and metrics ----------------------------------------------------------------


def test_depth_is_normalized_per_image_robustly_and_inverts_exactly(scenes):
  io = modality_io.for_config(small_config("depth"))
  depth = scenes[0]["depth"][:2]
  x, stats = io.normalize(jnp.asarray(depth))
  assert x.shape == (2, 64, 64, 1)
  # Median at 0, and the 5th to 95th percentile two units apart.
  np.testing.assert_allclose(np.median(np.asarray(x), axis=(1, 2, 3)), 0.0, atol=1e-3)
  low, high = np.quantile(np.asarray(x), [0.05, 0.95], axis=(1, 2, 3))
  np.testing.assert_allclose(high - low, 2.0, atol=0.02)
  # The same scene three times as far (and a metre back) normalizes to the same x.
  x_far, stats_far = io.normalize(jnp.asarray(3 * depth + 1))
  np.testing.assert_allclose(np.asarray(x_far), np.asarray(x), atol=1e-4)
  np.testing.assert_allclose(np.asarray(stats_far), np.asarray(stats) * [3, 3] + [1, 0],
                             rtol=1e-5)
  np.testing.assert_allclose(np.asarray(io.denormalize(x, stats)), depth, rtol=1e-5)
  # A few wild pixels do not move the normalization.
  spiky = depth.copy()
  spiky[:, :2, :2] = 1000.0
  _, stats_spiky = io.normalize(jnp.asarray(spiky))
  np.testing.assert_allclose(np.asarray(stats_spiky), np.asarray(stats), rtol=0.02)


def test_rgb_and_clip_normalization_constants():
  rgb = modality_io.for_config(small_config("rgb"))
  x, _ = rgb.normalize(jnp.array([[[[0, 255, 127]]]], jnp.uint8).repeat(64, 1).repeat(64, 2))
  np.testing.assert_allclose(np.asarray(x[0, 0, 0]), [-1.0, 1.0, -0.5 / 127.5], atol=1e-6)
  clip = small_config("clip")
  assert clip.norm_scale == pytest.approx(1 / 8)  # unit vectors of 64 components


def test_metrics_on_known_answers():
  rgb = modality_io.for_config(small_config("rgb"))
  raw = np.full((1, 64, 64, 3), 100, np.uint8)
  out = rgb.normalize(jnp.asarray(raw + 10))[0]  # off by 10 grey levels everywhere
  psnr = float(rgb.metrics(out, raw, rgb.default_stats(1))["psnr"])
  assert psnr == pytest.approx(10 * np.log10(255 ** 2 / 100), rel=1e-4)

  depth = modality_io.for_config(small_config("depth"))
  truth = np.linspace(1, 9, 64 * 64, dtype=np.float32).reshape(1, 64, 64)
  x, stats = depth.normalize(jnp.asarray(truth))
  metrics = depth.metrics(x, truth * 1.25, stats)  # prediction = truth, target 25% farther
  assert float(metrics["abs_rel"]) == pytest.approx(0.2, rel=1e-4)
  assert float(metrics["rmse"]) == pytest.approx(np.sqrt(np.mean((0.25 * truth) ** 2)),
                                                 rel=1e-4)

  normal = modality_io.for_config(small_config("normal"))
  up = np.zeros((1, 64, 64, 3), np.float32)
  up[..., 1] = 1
  right = np.roll(up, 1, axis=-1)
  assert float(normal.metrics(jnp.asarray(right * 5), up, normal.default_stats(1))[
      "angle_deg"]) == pytest.approx(90.0, abs=1e-3)
  assert float(normal.metrics(jnp.asarray(up * 5), up, normal.default_stats(1))[
      "angle_deg"]) == pytest.approx(0.0, abs=0.1)

  semseg = modality_io.for_config(small_config("semseg"))
  target = np.zeros((1, 64, 64), np.uint8)
  target[:, :, 32:] = 1  # half class 0, half class 1
  pred = target.copy()
  pred[:, :16, 32:] = 0  # a quarter of class 1's pixels predicted as 0
  logits = jax.nn.one_hot(jnp.asarray(pred), 7) * 10
  metrics = semseg.metrics(logits, target, semseg.default_stats(1))
  assert float(metrics["pixel_acc"]) == pytest.approx(7 / 8)
  # class 0: inter 2048, union 2560; class 1: inter 1536, union 2048.
  assert float(metrics["miou"]) == pytest.approx((2048 / 2560 + 1536 / 2048) / 2)

  clip = modality_io.for_config(small_config("clip"))
  features = np.random.default_rng(0).normal(size=(1, 8, 8, 64)).astype(np.float32)
  x, stats = clip.normalize(jnp.asarray(features))
  assert float(clip.metrics(x, features, stats)["cosine"]) == pytest.approx(1.0, abs=1e-5)
  assert float(clip.metrics(-x, features, stats)["cosine"]) == pytest.approx(-1.0, abs=1e-5)


# Training ----------------------------------------------------------------------------------


def test_straight_through_gradients_reach_the_encoder(scenes):
  config = small_config("rgb", commitment_weight=0.0)  # only the reconstruction loss
  model = vqvae.VQVAE(config, rngs=rngs(0))
  graphdef, params, codebook = nnx.split(model, nnx.Param, ...)
  io = modality_io.for_config(config)
  raw = jnp.asarray(scenes[0]["rgb"][:2])

  @jax.jit
  def grads(params):
    return jax.grad(lambda p: ts.forward_loss(graphdef, io, p, codebook, raw)[0])(params)

  g = grads(params)
  for name in ("proj", "quant_proj"):
    assert float(jnp.abs(g["encoder"][name]["kernel"][...]).max()) > 1e-6, name
  assert "quantizer" not in g  # the codebook is no parameter: EMA moves it, not gradients


def _train(config, train, val, steps: int, batch_size: int = 8, seed: int = 0):
  model = vqvae.VQVAE(config, rngs=rngs(seed))
  optimizer = ts.make_optimizer(ts.TrainConfig(learning_rate=1e-3, warmup_steps=10))
  graphdef, state = ts.init_state(model, optimizer)
  step = ts.make_train_step(graphdef, config, optimizer, seed=seed)
  rng = np.random.default_rng(seed)
  history = []
  for _ in range(steps):
    state, metrics = step(state, train[rng.integers(0, len(train), batch_size)])
    history.append({k: float(v) for k, v in metrics.items()})
  held_out = ts.make_eval_step(graphdef, config)(state, val)
  pooled_usage = len(np.unique(np.asarray(held_out["codes"]))) / config.vocab_size
  return history, pooled_usage, state


@pytest.mark.slow
def test_training_lowers_the_loss_and_dead_code_replacement_keeps_codes_in_use(scenes):
  train, val = scenes[0]["rgb"], scenes[1]["rgb"]
  usage = {}
  for replace in (True, False):
    config = small_config("rgb", vocab_size=128, dead_code_replacement=replace)
    history, usage[replace], state = _train(config, train, val, steps=80)
    first = np.mean([h["recon_loss"] for h in history[:3]])
    last = np.mean([h["recon_loss"] for h in history[-5:]])
    assert last < 0.3 * first, (replace, first, last)
    assert history[-1]["psnr"] > history[0]["psnr"] + 6
    replaced = [h["codes_replaced"] for h in history]
    if replace:
      assert replaced[0] > 100 and sum(replaced[1:]) > 0  # empty stats: most codes re-seeded
    else:
      assert sum(replaced) == 0
    assert int(state.step) == 80
  # Without replacement the encoder settles on a handful of codes.
  assert usage[True] > 0.15 and usage[True] > 3 * usage[False], usage


# Config and errors ----------------------------------------------------------------------------


def test_every_preset_round_trips_through_json():
  for name in vqvae.PRESETS:
    config = vqvae.preset(name)
    data = json.loads(json.dumps(config.to_dict()))
    assert vqvae.VQVAEConfig.from_dict(data) == config
    # Stored configs are explicit: no modality default is left to be filled in later.
    assert data["loss"] and data["norm_scale"] and data["norm_shift"] is not None
  depth = vqvae.preset("depth_tiny", depth_quantiles=(0.1, 0.9), loss="mse")
  assert vqvae.VQVAEConfig.from_dict(json.loads(json.dumps(depth.to_dict()))) == depth
  assert vqvae.preset("rgb_tiny").to_dict()["channels"] == 3


@pytest.mark.parametrize("overrides, message", [
    (dict(modality="lidar"), "no VQ-VAE handling for modality .lidar."),
    (dict(modality="rgb", patch_size=7), "multiple of patch_size"),
    (dict(modality="rgb", loss="cross_entropy"), "does not fit rgb"),
    (dict(modality="semseg"), "num_classes"),
    (dict(modality="depth", channels=3), "depth has 1 channel"),
    (dict(modality="rgb", enc_width=30), "enc_width 30"),
    (dict(modality="rgb", decoder="diffusion", out_conv=True), "out_conv follows a ViT"),
])
def test_configs_that_do_not_add_up_are_refused(overrides, message):
  with pytest.raises(UsageError, match=message):
    vqvae.VQVAEConfig(**overrides)


def test_from_dict_refuses_unknown_keys_and_presets_unknown_names():
  with pytest.raises(UsageError, match="unknown keys"):
    vqvae.VQVAEConfig.from_dict({"modality": "rgb", "vocab": 5})
  with pytest.raises(UsageError, match="unknown VQ-VAE preset"):
    vqvae.preset("rgb_huge")


@pytest.fixture(scope="module")
def rgb_tokenizer():
  return ts.VQTokenizer.from_model(vqvae.VQVAE(small_config("rgb"), rngs=rngs(0)))


def test_decode_refuses_bad_token_ids_naming_modality_and_id(rgb_tokenizer):
  tokens = np.zeros((2, 8, 8), np.int32)
  tokens[1, 3, 4] = 64  # vocab is 64
  with pytest.raises(RecordError, match=r"\(rgb\).*token id 64 at \[1, 3, 4\].*\[0, 64\)"):
    rgb_tokenizer.decode(tokens)
  tokens[1, 3, 4] = -1
  with pytest.raises(RecordError, match="token id -1"):
    rgb_tokenizer.decode(tokens)
  with pytest.raises(RecordError, match=r"expects token batches \[B, 8, 8\]"):
    rgb_tokenizer.decode(np.zeros((2, 14, 14), np.int32))
  with pytest.raises(RecordError, match="must be integers"):
    rgb_tokenizer.decode(np.zeros((2, 8, 8), np.float32))


def test_a_tokenizer_refuses_another_modality_or_layout(scenes, rgb_tokenizer):
  train = scenes[0]
  with pytest.raises(RecordError, match=r"'rgb_tiny' \(rgb\) expects batches \[B, 64, 64, 3\] "
                                        r"uint8, got float32 \[4, 64, 64\]"):
    rgb_tokenizer.encode(train["depth"][:4])
  with pytest.raises(RecordError, match="got float32"):  # rgb as floats in [0, 1]
    rgb_tokenizer.encode(train["rgb"][:4].astype(np.float32) / 255)
  with pytest.raises(RecordError, match=r"got uint8 \[2, 32, 32, 3\]"):
    rgb_tokenizer.encode(np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(RecordError, match="the batch has no 'rgb'"):
    rgb_tokenizer.encode({"depth": train["depth"][:4]})
  semseg = modality_io.for_config(small_config("semseg"))
  labels = train["semseg"][:2].copy()
  labels[0, 0, 0] = 9
  with pytest.raises(RecordError, match=r"class id 9 is outside \[0, 7\)"):
    semseg.check(labels)
  depth = modality_io.for_config(small_config("depth"))
  with pytest.raises(RecordError, match="depth must be positive"):
    depth.check(np.zeros((1, 64, 64), np.float32))


def test_depth_decodes_at_the_true_distance_with_its_stats(scenes):
  config = small_config("depth")
  tokenizer = ts.VQTokenizer.from_model(vqvae.VQVAE(config, rngs=rngs(0)))
  depth = scenes[0]["depth"][:2]
  tokens, stats = tokenizer.encode(depth, return_stats=True)
  assert stats.shape == (2, 2)
  np.testing.assert_allclose(stats[:, 0], np.median(depth, axis=(1, 2)), rtol=1e-4)
  typical = tokenizer.decode(tokens)  # no stats: the config's typical distance
  placed = tokenizer.decode(tokens, stats)
  shift, scale = config.norm_shift, config.norm_scale
  # Same relative map, put at each image's own median and spread.
  np.testing.assert_allclose((placed - stats[:, 0, None, None]) / stats[:, 1, None, None],
                             (typical - shift) / scale, atol=1e-4)
  with pytest.raises(RecordError, match=r"stats must be \[B, 2\]"):
    tokenizer.decode(tokens, stats[:1])
