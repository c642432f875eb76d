"""Global tokens through the MLP tokenizers: `fourm tokenize --tokenizers
tok_dinov2_global=WORKDIR` writes them beside the data, and generation decodes generated
ids back to the feature vector.

The registry's tok_dinov2_global is made from dinov2_global, float32 [768], 16 ids of
8192: the reference-made fixture tokenizer (24 channels, 8 ids of 64) cannot make it, so
the tests build a tiny random MLP VQ-VAE of the registry's shape (768 -> 16 ids of 64)
and save it through the converter's own save path (`tokenizer_mlp.save_mlp_tokenizer`);
the fixture is what a tokenizer of the wrong shape looks like.
"""

from __future__ import annotations

import glob
import os
from types import SimpleNamespace

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from fourm import cli, modalities
from fourm.data import records
from fourm.data.records import RecordSource
from fourm.errors import RecordError, UsageError
from fourm.interop import tokenizer_mlp
from tests.helpers import write_dataset
from tokenizers_vq import global_tokens, tokenize
from tokenizers_vq.detokenize import Detokenizer
from tokenizers_vq.mlp_vq import MLPTokenizer, MLPVQ, MLPVQConfig

NAME, RAW = "tok_dinov2_global", "dinov2_global"
CHANNELS = modalities.get_raw(RAW).channels                 # 768
TOKENS = modalities.get(NAME).max_length                    # 16
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "tokenizers",
                       "mlp_global")


def tiny_config(**overrides) -> MLPVQConfig:
  fields = dict(in_channels=CHANNELS, codebook_size=64, num_codebooks=TOKENS, latent_dim=32,
                encoder="BottleneckMLP/B_1-Wi_16", decoder="BottleneckMLP/B_1-Wi_16")
  return MLPVQConfig(**dict(fields, **overrides))


def tiny_model(seed: int = 0, **overrides) -> MLPVQ:
  # "rbg" keys: each initializer compiles several times faster on CPU than threefry's.
  return MLPVQ(tiny_config(**overrides), rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))


def vectors(count: int, seed: int) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.normal(size=CHANNELS).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  """(workdir, the in-memory model's MLPTokenizer): a workdir that does not record its
  modality, as a folder not named like a published tokenizer converts."""
  model = tiny_model()
  workdir = str(tmp_path_factory.mktemp("global") / "tok")
  tokenizer_mlp.save_mlp_tokenizer(model, workdir)
  return workdir, MLPTokenizer(model, name=RAW)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """12 train and 4 val records of a dinov2_global vector each, in shards of 4."""
  directory = str(tmp_path_factory.mktemp("global") / "data")
  samples = {split: [{"key": f"{split}/{i:06d}", RAW: vector}
                     for i, vector in enumerate(vectors(count, seed))]
             for split, count, seed in (("train", 12, 0), ("val", 4, 1))}
  write_dataset(directory, samples, records_per_shard=4)
  return directory


def test_fourm_tokenize_writes_the_ids_of_each_vector_and_resumes_identically(
    tokenizer, data, tmp_path):
  workdir, reference = tokenizer
  out = str(tmp_path / "tokens")
  assert cli.main(["tokenize", "--data", data, "--out", out, "--tokenizers",
                   f"{NAME}={workdir}", "--batch-size", "8", "--quiet"]) == 0
  for split in ("train", "val"):
    joined = RecordSource([data, out], split)
    samples = [joined[i] for i in range(len(joined))]
    ids = np.stack([s[NAME] for s in samples])
    assert ids.dtype == np.int32 and ids.shape == (len(samples), TOKENS)
    np.testing.assert_array_equal(ids, reference.tokenize(np.stack([s[RAW] for s in samples])))
  assert len(np.unique(ids)) > 1  # not one id everywhere: a real encoding
  info = records.DatasetInfo.load(out)
  assert info.modalities[NAME]["shape"] == [TOKENS]
  entry = info.metadata["job"]["tokenizers"][NAME]
  assert entry["workdir"] == os.path.abspath(workdir) and entry["kind"] == "mlp"

  shards = sorted(glob.glob(os.path.join(out, "*.array_record")))
  before = [open(path, "rb").read() for path in shards]
  os.remove(shards[0])  # killed while writing the first shard
  os.remove(os.path.join(out, records.INFO_FILE))
  lines = []
  tokenize.tokenize_dataset(data, out, [f"{NAME}={workdir}"], batch_size=8, progress=False,
                            log=lines.append)
  assert any(line.startswith(f"resuming: {len(shards) - 1} of {len(shards)}")
             for line in lines)
  assert [open(path, "rb").read() for path in shards] == before


def test_the_token_records_feed_the_4m_pipeline(tokenizer, data, tmp_path):
  from fourm.data.masking import AlphasMixture, MaskSample
  from fourm.data.pipeline import Pipeline, PipelineConfig
  out = str(tmp_path / "tokens")
  tokenize.tokenize_dataset(data, out, [f"{NAME}={tokenizer[0]}"], batch_size=4,
                            progress=False, log=lambda _: None)
  names = (NAME,)
  masker = MaskSample(names, modalities.SMALL_LAYOUT, 8, 8, AlphasMixture.uniform(names))
  batch = next(Pipeline(PipelineConfig(data=(data, out), batch_size=4, augment=False),
                        transform=masker).iterator())
  assert batch[NAME]["tokens"].shape == (4, TOKENS)


def test_a_workdir_that_records_its_modality_needs_no_name(tmp_path):
  workdir = str(tmp_path / "tok")
  tokenizer_mlp.save_mlp_tokenizer(tiny_model(), workdir, modality=RAW)
  loaded = tokenize.load_tokenizers([workdir])
  assert list(loaded) == [NAME] and loaded[NAME][1].raw_name == RAW
  with pytest.raises(UsageError, match=f"--tokenizers tok_imagebind_global={workdir}: that "
                     "checkpoint is a tokenizer for 'dinov2_global', not for 'imagebind_global'"):
    tokenize.load_tokenizers([f"tok_imagebind_global={workdir}"])
  with pytest.raises(UsageError, match=f"{tmp_path / 'x'}: the tokenizer reads 768-channel "
                     "vectors; imagebind_global has 1280"):
    tokenizer_mlp.save_mlp_tokenizer(tiny_model(), str(tmp_path / "x"),
                                     modality="imagebind_global")


def test_a_workdir_that_does_not_must_be_named(tokenizer):
  workdir = tokenizer[0]
  with pytest.raises(UsageError, match=f"{workdir}: an MLP tokenizer .* does not say which "
                     f"modality it makes; name it: --tokenizers {NAME}={workdir}"):
    tokenize.load_tokenizers([workdir])
  with pytest.raises(UsageError, match=f"{workdir}: an MLP tokenizer of 768-channel vectors "
                     r"into 16 ids of 64, which make global tokens \(tok_dinov2_global, "
                     r"tok_imagebind_global\), not tok_rgb"):
    tokenize.load_tokenizers([f"tok_rgb={workdir}"])
  with pytest.raises(UsageError, match=f"two tokenizers make {NAME}"):
    tokenize.load_tokenizers([f"{NAME}={workdir}", f"{NAME}={workdir}"])


def test_a_tokenizer_of_the_wrong_shape_is_one_error_naming_its_workdir(tmp_path, capsys):
  """The reference-made fixture (24 channels, 8 ids of 64), converted as a user would."""
  workdir = str(tmp_path / "tok24")
  assert cli.main(["convert", "--from", "reference", FIXTURE, "--out", workdir]) == 0
  said = capsys.readouterr().out
  assert f"fourm tokenize --tokenizers {NAME}={workdir} or " in said
  assert cli.main(["tokenize", "--data", str(tmp_path), "--out", str(tmp_path / "out"),
                   "--tokenizers", f"{NAME}={workdir}"]) == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and (
      f"error: {workdir}: an MLP tokenizer of 24-channel vectors into 8 ids of 64; "
      "tok_dinov2_global is made from dinov2_global, whose vectors have 768 channels") in error
  assert not os.path.exists(tmp_path / "out")  # refused before anything is written
  assert cli.main(["convert", "--from", "reference", FIXTURE, "--out",
                   str(tmp_path / "named"), "--modality", RAW]) == 2
  assert (f"error: {FIXTURE}: the tokenizer reads 24-channel vectors; dinov2_global has 768 "
          "channels") in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "named")


@pytest.mark.parametrize("overrides, says", [
    (dict(num_codebooks=8), "into 8 ids of 64; tok_dinov2_global has 16 tokens per sample"),
    (dict(codebook_size=16384), "its vocabulary of 16384 does not fit tok_dinov2_global's "
                                "8192"),
    (dict(in_channels=1280), "tok_dinov2_global is made from dinov2_global, whose vectors "
                             "have 768 channels"),
])
def test_ids_per_vector_vocabulary_and_channels_must_fit_the_registry(overrides, says):
  with pytest.raises(UsageError, match="^/some/workdir: .*" + says.replace("(", r"\(")):
    global_tokens.check(NAME, tiny_config(**overrides), "/some/workdir")
  global_tokens.check("tok_imagebind_global", tiny_config(in_channels=1280),
                      "/some/workdir")  # the other one fits


def test_records_lacking_the_vector_are_refused_by_the_encoder_counted_by_the_job(
    tokenizer, tmp_path, capsys):
  workdir, _ = tokenizer
  loaded = tokenize.load_tokenizers([f"{NAME}={workdir}"])[NAME][1]
  with pytest.raises(RecordError, match=f"has no 'dinov2_global' for the {NAME} tokenizer"
                     ) as error:
    tokenize.encode_batch(loaded, [{"key": "a"}], 4)
  assert error.value.field == RAW
  with pytest.raises(RecordError, match=r"reads one vector \[768\] per sample, got shape "
                     r"\[2, 768\]") as error:
    tokenize.encode_batch(loaded, [{RAW: np.zeros((2, CHANNELS), np.float32)}], 4)
  assert error.value.field == RAW
  holey = str(tmp_path / "holey")
  write_dataset(holey, {"train": [{"key": "train/0", RAW: vectors(1, 0)[0]},
                                  {"key": "train/1"}]})
  # A record without the vector gets a token record without the tokens, counted aloud; a
  # dataset where no record has it is refused before anything is written.
  assert cli.main(["tokenize", "--data", holey, "--out", str(tmp_path / "out"),
                   "--tokenizers", f"{NAME}={workdir}", "--quiet"]) == 0
  assert f"{NAME}: 1 of 2 records have no {RAW} (written without it)" in capsys.readouterr().out
  keys = str(tmp_path / "keys")
  write_dataset(keys, {"train": [{"key": "train/0"}]})
  assert cli.main(["tokenize", "--data", keys, "--out", str(tmp_path / "none"),
                   "--tokenizers", f"{NAME}={workdir}", "--quiet"]) == 2
  assert f"has '{RAW}', which {NAME} is made from" in capsys.readouterr().err


def test_generation_loads_the_recorded_tokenizer_and_decodes_with_it(tokenizer, data,
                                                                     tmp_path):
  """The tokenizer a token dataset records is the one generation loads: it decodes ids
  to the feature vector and tokenizes a raw vector condition."""
  from fourm.generation import loading
  from fourm.generation.conditions import ConditionEncoder
  workdir, reference = tokenizer
  out = str(tmp_path / "tokens")
  tokenize.tokenize_dataset(data, out, [f"{NAME}={workdir}"], batch_size=4, progress=False,
                            log=lambda _: None)
  config = ml_collections.ConfigDict({"modalities": ("rgb", NAME), "layout": "small",
                                      "data": {"paths": (out,)}})
  tokenizers = loading.load_tokenizers(config, str(tmp_path))
  assert isinstance(tokenizers[NAME], global_tokens.GlobalTokenizer)
  assert loading.load_tokenizers(config, str(tmp_path), [f"{NAME}={workdir}"])[NAME].num_codes \
      == 64  # --tokenizers tok_dinov2_global=WORKDIR: the same, given by hand

  ids = reference.tokenize(np.stack(vectors(2, 5)))
  decoded = Detokenizer(tokenizers).decode(NAME, ids[0])
  assert decoded.shape == (CHANNELS,) and decoded.dtype == np.float32
  np.testing.assert_allclose(decoded, reference.detokenize(ids[:1])[0], rtol=1e-6)
  with pytest.raises(UsageError, match="its decoder must be a GlobalTokenizer"):
    Detokenizer({NAME: object()})
  with pytest.raises(UsageError, match="is not a global-token tokenizer"):
    loading.check_tokenizer(NAME, object(), modalities.SMALL_LAYOUT)
  # What `fourm generate` shows of generated ids: the vector; without a tokenizer, nothing.
  from fourm.generation.generator import Generation
  entries = {NAME: {"tokens": ids, "input_mask": np.ones_like(ids, bool)}}
  generation = Generation(SimpleNamespace(tokenizers=tokenizers,
                                          detokenizer=Detokenizer(tokenizers)),
                          entries, (), (NAME,))
  # A batch of two, not one: float32 sums in another order (on AVX-512 machines ~1e-7 apart).
  np.testing.assert_allclose(generation.decode(NAME, 1), reference.detokenize(ids)[1],
                             rtol=1e-5, atol=1e-6)
  assert generation.samples()[1][RAW].shape == (CHANNELS,)
  bare = Generation(SimpleNamespace(tokenizers={}, detokenizer=Detokenizer({})), entries,
                    (), (NAME,))
  assert RAW not in bare.samples()[0]

  encoder = ConditionEncoder(("rgb", NAME), ("rgb", NAME), modalities.SMALL_LAYOUT,
                             tokenizers)
  condition = vectors(1, 7)[0].astype(np.float64)  # a .npy of float64 reads as float32
  np.save(tmp_path / "vector.npy", condition)
  target, entry = encoder.encode(RAW, [str(tmp_path / "vector.npy")] * 2)
  assert target == NAME
  np.testing.assert_array_equal(entry["tokens"],
                                np.repeat(reference.tokenize(condition[None]), 2, axis=0))
  with pytest.raises(UsageError, match=r"--condition dinov2_global: .*reads one vector "
                     r"\[768\] per sample, got shape \[5\]"):
    encoder.encode(RAW, [np.zeros(5, np.float32)])


@pytest.mark.slow  # ~7 s on 2 cores, mostly compiling the model and its decoding step
def test_generated_global_tokens_decode_to_feature_vectors(tokenizer, tmp_path):
  """`Generator` end to end, one decoding step of a tiny random model: the generated ids
  come back as vectors (`decode`, the grid's samples, grid.png)."""
  from fourm.generation.generator import Generator
  from fourm.generation.sampler import Decoding
  from fourm.models import fourm as fourm_model
  workdir, reference = tokenizer
  tokenizers = {NAME: tokenize.load_tokenizers([f"{NAME}={workdir}"])[NAME][1]}
  model = fourm_model.FourM(fourm_model.FourMConfig(dim=32, encoder_depth=1, decoder_depth=1,
                                                    num_heads=2),
                            ("rgb", NAME), modalities.SMALL_LAYOUT, 64, 16,
                            rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
  generator = Generator(model, tokenizers)
  image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
  result = generator.generate({"rgb": image}, [Decoding(target=NAME, num_steps=1)],
                              num_samples=2)
  generated = result.tokens(NAME)
  assert generated.shape == (2, TOKENS) and generated.max() < reference.config.codebook_size
  for index in range(2):
    np.testing.assert_allclose(result.decode(NAME, index),
                               reference.detokenize(generated[index:index + 1])[0], rtol=1e-6)
  assert result.samples()[0][RAW].shape == (CHANNELS,)
  paths = result.save(str(tmp_path / "generated"))
  assert os.path.getsize(paths["grid"]) > 1000
  np.testing.assert_array_equal(np.load(paths["tokens"])[NAME], generated)
