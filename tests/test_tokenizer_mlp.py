"""The MLP VQ-VAE tokenizers (4M-21's global features, human poses): reference parity,
config, conversion and input errors.

The fixtures (tests/fixtures/reference/tokenizers/mlp_*) are tiny reference VQVAEs saved
by the reference itself, with its ids and decodings of a few random vectors; see
tests/fixtures/reference/make_mlp_tokenizer_fixtures.py.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from fourm.errors import RecordError, UsageError
from fourm.interop import tokenizer_mlp
from fourm.interop.safetensors_file import ReferenceFileError, SafetensorsReader
from tokenizers_vq import mlp_vq
from tokenizers_vq.mlp_vq import MLPSpec, MLPTokenizer, MLPVQConfig, parse_mlp_id

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "tokenizers")
VARIANTS = ("mlp_global", "mlp_poses")


def folder(variant: str) -> str:
  return os.path.join(FIXTURES, variant)


def reference_config(variant: str) -> dict:
  with open(os.path.join(folder(variant), "config.json")) as f:
    return json.load(f)


def rngs(seed: int = 0) -> nnx.Rngs:
  # The "rbg" generator compiles several times faster on CPU than threefry: each
  # initializer of a freshly built model is its own small compiled program.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def reference_tensors(variant: str) -> dict[str, np.ndarray]:
  with SafetensorsReader(os.path.join(folder(variant), "model.safetensors")) as reader:
    return {name: reader.read(name) for name in reader.names()}


@pytest.fixture(scope="module", params=VARIANTS)
def converted(request):
  """(variant, converted model, its tokenizer, the reference's io.npz)."""
  model = tokenizer_mlp.load_reference(folder(request.param))
  io = dict(np.load(os.path.join(folder(request.param), "io.npz")))
  return request.param, model, MLPTokenizer(model), io


# Parity with the reference -------------------------------------------------------------------


def test_ids_are_the_references(converted):
  _, model, tokenizer, io = converted
  ids = tokenizer.tokenize(io["features"])
  assert ids.dtype == np.int32 and ids.shape == io["ids"].shape
  np.testing.assert_array_equal(ids, io["ids"])
  np.testing.assert_allclose(np.asarray(model.latents(io["features"])), io["latents"],
                             atol=1e-5)


def test_decoding_matches_the_reference(converted):
  _, model, tokenizer, io = converted
  for ids, expected in ((io["ids"], io["decoded"]), (io["random_ids"], io["decoded_random"])):
    decoded = tokenizer.detokenize(ids)
    assert decoded.dtype == np.float32 and decoded.shape == expected.shape
    np.testing.assert_allclose(decoded, expected, atol=1e-4)
  np.testing.assert_allclose(np.asarray(model.autoencode(io["features"])), io["autoencoded"],
                             atol=1e-4)


def test_config_is_read_from_the_hub_config():
  config = tokenizer_mlp.config_from_reference(reference_config("mlp_poses"), "x")
  assert config == MLPVQConfig(in_channels=21, codebook_size=32, num_codebooks=4,
                               latent_dim=32, encoder="BottleneckMLP/B_1-Wi_48-E_2",
                               decoder="BottleneckMLP/B_2-Wi_32")
  assert config.encoder_spec == MLPSpec(1, 48, 2) and config.tokens_per_vector == 4
  # The constructor's own `config=` argument is what the reference reads when present.
  nested = tokenizer_mlp.config_from_reference({"config": reference_config("mlp_global")}, "x")
  assert nested.num_codebooks == 8 and nested.in_channels == 24


def test_published_shapes_map_to_the_reference_names():
  """The mapping at the published size: six blocks, 16 heads of 64, 8192 codes."""
  config = mlp_vq.preset("dinov2_global")
  abstract = nnx.eval_shape(lambda: mlp_vq.MLPVQ(config, rngs=nnx.Rngs(0)))
  flat = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  shapes = {e.reference: tokenizer_mlp.reference_shape(e, flat[e.path].get_value().shape)
            for e in tokenizer_mlp.tensor_map(config)}
  assert len(shapes) == len(flat) == 2 * (4 + 6 * 6) + 4 + 3
  assert shapes["encoder.linear_in.weight"] == (1024, 768)
  assert shapes["encoder.blocks.5.block.0.weight"] == (4096, 1024)
  assert shapes["decoder.blocks.5.block.2.weight"] == (1024, 4096)
  assert shapes["decoder.linear_out.weight"] == (768, 1024)
  assert shapes["quant_proj.weight"] == (1024, 1024, 1, 1)
  assert shapes["quantize.codes"] == (16, 8192, 64)
  assert shapes["quantize.to_k.weight"] == (16, 64, 64)


# Config ---------------------------------------------------------------------------------------


def test_config_round_trips_through_a_dict_and_json():
  config = MLPVQConfig(in_channels=207, codebook_size=1024, num_codebooks=8,
                       encoder="BottleneckMLP/B_2-Wi_64-E_2", temperature=0.5)
  assert MLPVQConfig.from_dict(config.to_dict()) == config
  assert MLPVQConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("model_id, spec", [
    ("BottleneckMLP/B_6-Wi_1024", MLPSpec(6, 1024, 4)),
    ("BottleneckMLP/B_2-Wi_64-E_2", MLPSpec(2, 64, 2)),
])
def test_model_ids_parse(model_id, spec):
  assert parse_mlp_id(model_id) == spec


@pytest.mark.parametrize("model_id, says", [
    ("MLP/B_6-Wi_1024", "plain 'MLP/...'"),
    ("BottleneckMLP/B_6", "is not 'BottleneckMLP/B_<blocks>-Wi_<width>'"),
    ("BottleneckMLP/B_6-Wi_1024-E_2-X_3", "is not"),
    ("vit_b_enc", "is not"),
    ("BottleneckMLP/B_0-Wi_8", "at least 1"),
    (6, "must be a string"),
])
def test_bad_model_ids_say_why(model_id, says):
  with pytest.raises(UsageError) as error:
    parse_mlp_id(model_id)
  assert says in str(error.value)


@pytest.mark.parametrize("overrides, says", [
    (dict(latent_dim=30), "latent_dim 30 must split evenly into num_codebooks 4"),
    (dict(codebook_size=1), "codebook_size must be at least 2"),
    (dict(in_channels=0), "in_channels must be a positive integer"),
    (dict(num_codebooks=True), "num_codebooks must be a positive integer"),
    (dict(encoder="BottleneckMLP/Wi_8"), "MLP model id 'BottleneckMLP/Wi_8'"),
    (dict(temperature=0.0), "temperature must be > 0"),
])
def test_bad_configs_say_why(overrides, says):
  with pytest.raises(UsageError) as error:
    MLPVQConfig(**dict(dict(in_channels=8, codebook_size=16, num_codebooks=4, latent_dim=16),
                       **overrides))
  assert says in str(error.value)


def test_config_dicts_with_unknown_or_missing_keys_are_refused():
  data = MLPVQConfig(in_channels=8, codebook_size=16, num_codebooks=4).to_dict()
  with pytest.raises(UsageError, match=r"unknown keys \['heads'\]"):
    MLPVQConfig.from_dict(dict(data, heads=4))
  del data["codebook_size"]
  with pytest.raises(UsageError, match=r"missing keys \['codebook_size'\]"):
    MLPVQConfig.from_dict(data)


@pytest.mark.parametrize("change, says", [
    (dict(quant_type="lucid"), "quant_type is 'lucid'"),
    (dict(enc_type="vit_b_enc"), "enc_type"),
    (dict(dec_type="MLP/B_2-Wi_32"), "plain 'MLP/...'"),
    (dict(n_labels=133), "n_labels is 133"),
    (dict(undo_std=True), "undo_std"),
    (dict(codebook_size="8192"), "codebook_size is '8192'"),
    (dict(latent_dim=30), "latent_dim 30 must split evenly"),
    (dict(num_train_timesteps=1000), "['num_train_timesteps'] are not arguments"),
])
def test_reference_configs_fourm_cannot_build_are_refused(change, says):
  with pytest.raises(ReferenceFileError) as error:
    tokenizer_mlp.config_from_reference(dict(reference_config("mlp_global"), **change),
                                        "hub/config.json")
  assert str(error.value).startswith("hub/config.json: ") and says in str(error.value)


def test_a_config_without_an_encoder_type_gets_the_references_vit_default_and_is_refused():
  config = reference_config("mlp_poses")
  del config["enc_type"]
  with pytest.raises(ReferenceFileError, match="enc_type: MLP model id 'vit_b_enc'"):
    tokenizer_mlp.config_from_reference(config, "x")


# Tensors -------------------------------------------------------------------------------------


def _convert(tensors):
  config = tokenizer_mlp.config_from_reference(reference_config("mlp_poses"), "x")
  return tokenizer_mlp.params_from_reference(tensors, config, "model.safetensors")


def test_a_missing_or_unexpected_tensor_is_named():
  tensors = reference_tensors("mlp_poses")
  del tensors["decoder.blocks.1.block.2.bias"]
  tensors["quantize.scale"] = np.ones(1, np.float32)
  with pytest.raises(ReferenceFileError) as error:
    _convert(tensors)
  message = str(error.value)
  assert "1 tensors missing (decoder.blocks.1.block.2.bias)" in message
  assert "1 unexpected (quantize.scale)" in message


@pytest.mark.parametrize("name, value, says", [
    ("quant_proj.weight", np.zeros((32, 48), np.float32), "is [32, 48], the config's "
                                                          "tokenizer has [32, 48, 1, 1]"),
    ("encoder.linear_in.weight", np.zeros((21, 48), np.float32), "is [21, 48], the "
                                                                 "config's tokenizer has "
                                                                 "[48, 21]"),
    ("quantize.codes", np.zeros((4, 32, 8), np.int64), "is int64, not a floating-point"),
])
def test_a_misshapen_tensor_is_named(name, value, says):
  tensors = reference_tensors("mlp_poses")
  tensors[name] = value
  with pytest.raises(ReferenceFileError) as error:
    _convert(tensors)
  assert f"tensor {name!r} {says}" in str(error.value)


def test_half_precision_weights_convert_to_float32():
  tensors = {k: v.astype(np.float16) for k, v in reference_tensors("mlp_poses").items()}
  model = _convert(tensors)
  assert model.quantize.codes[...].dtype == np.float32
  np.testing.assert_array_equal(np.asarray(model.quantize.codes[...]),
                                tensors["quantize.codes"].astype(np.float32))


def test_load_reference_wants_the_folder():
  with pytest.raises(UsageError, match="give the folder"):
    tokenizer_mlp.load_reference(os.path.join(folder("mlp_poses"), "model.safetensors"))


# The tokenizer's input checks -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer():
  config = MLPVQConfig(in_channels=6, codebook_size=16, num_codebooks=2, latent_dim=8,
                       encoder="BottleneckMLP/B_1-Wi_8", decoder="BottleneckMLP/B_1-Wi_8")
  return MLPTokenizer(mlp_vq.MLPVQ(config, rngs=rngs()), name="dinov2_global")


@pytest.mark.parametrize("features, says", [
    (np.zeros((2, 5), np.float32), "expects a batch of vectors [B, 6] (B >= 1), got shape "
                                   "[2, 5]"),
    (np.zeros((6,), np.float32), "got shape [6]"),
    (np.zeros((0, 6), np.float32), "got shape [0, 6]"),
    (np.zeros((2, 6), np.int32), "expects float vectors [B, 6], got dtype int32"),
    (np.array([[0, 0, 0, 0, 0, 0], [0, 0, 0, np.nan, 0, 0]], np.float32),
     "vector 1 holds nan at channel 3"),
])
def test_bad_features_are_one_clear_error(tiny_tokenizer, features, says):
  with pytest.raises(RecordError) as error:
    tiny_tokenizer.tokenize(features)
  assert says in str(error.value) and "field 'dinov2_global'" in str(error.value)


@pytest.mark.parametrize("ids, says", [
    (np.array([[0, 16]]), "token id 16 at [0, 1] is outside the vocabulary [0, 16)"),
    (np.array([[-1, 0]]), "token id -1 at [0, 0]"),
    (np.zeros((1, 3), np.int32), "expects token ids [B, 2] (B >= 1), got shape [1, 3]"),
    (np.zeros((1, 2), np.float32), "token ids must be integers, got float32"),
])
def test_bad_ids_are_one_clear_error(tiny_tokenizer, ids, says):
  with pytest.raises(RecordError) as error:
    tiny_tokenizer.detokenize(ids)
  assert says in str(error.value)


def test_float64_features_tokenize_like_float32(tiny_tokenizer):
  features = np.random.default_rng(0).normal(size=(3, 6))
  np.testing.assert_array_equal(tiny_tokenizer.tokenize(features),
                                tiny_tokenizer.tokenize(features.astype(np.float32)))


# Training forward ------------------------------------------------------------------------------


def test_gumbel_training_forward_reaches_every_part():
  """With a key the quantizer samples, and straight-through gradients reach the encoder,
  the codes (through keys and values) and the decoder."""
  config = MLPVQConfig(in_channels=6, codebook_size=16, num_codebooks=2, latent_dim=8,
                       encoder="BottleneckMLP/B_1-Wi_8", decoder="BottleneckMLP/B_1-Wi_8")
  model = mlp_vq.MLPVQ(config, rngs=rngs())
  features = jax.random.normal(jax.random.key(1), (4, 6))

  def loss(model):
    out, ids = model(features, key=jax.random.key(2))
    return ((out - features) ** 2).mean(), ids

  grads, ids = nnx.jit(nnx.grad(loss, has_aux=True))(model)
  assert ids.shape == (4, 2) and ids.dtype == np.int32
  assert int(ids.min()) >= 0 and int(ids.max()) < 16
  for path in (("encoder", "linear_in", "kernel"), ("quantize", "to_k"),
               ("quantize", "to_v"), ("quantize", "codes"), ("decoder", "linear_out", "bias")):
    grad = dict(nnx.to_flat_state(grads))[path].get_value()
    assert float(np.abs(np.asarray(grad)).max()) > 0, path
