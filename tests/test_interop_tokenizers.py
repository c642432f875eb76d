"""The reference's VQ tokenizers in fourm: converted weights tokenize and decode as the
reference does.

Fixtures (tests/fixtures/reference/tokenizers/, made by make_tokenizer_fixtures.py running
apple/ml-4m's own VQVAE and DiVAE classes at a tiny width) hold, per architecture, a hub
folder (config.json + model.safetensors) and what the reference made of fixed inputs:
semantic segmentation (class embedding, ViT decoder), a feature map (no patch
projection), an rgb ViT tokenizer without the tanh post-MLP, an rgb DiVAE (patched
UNet) and the SAM-instance mask tokenizer (0 / 1 masks, ConvNeXt blocks after the ViT
decoder). ViT tokenizers are also run at twice their build size, where the reference
resizes its sin-cos positions bicubically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm import cli
from fourm.errors import RecordError, UsageError
from fourm.interop import tokenizers as tk
from fourm.interop.safetensors_file import ReferenceFileError, SafetensorsReader
from tokenizers_vq.sam_instance import tokenize_records
from tokenizers_vq.train import load_tokenizer

ROOT = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "tokenizers")
MODALITY = {"semseg": "semseg", "clip": "clip", "rgb_vit": "rgb", "rgb_divae": "rgb",
            "sam_mask": "sam_mask"}
VIT_TOKENIZERS = ("semseg", "clip", "rgb_vit")


def fixture_architectures() -> dict:
  """The fixture-only registry names of the reference, at their tiny sizes."""
  with open(os.path.join(ROOT, "architectures.json")) as f:
    sizes = json.load(f)
  out = {}
  for name, size in sizes.items():
    if "channel_mult" in size:
      out[name] = tk.UNetSize(**dict(size, channel_mult=tuple(size["channel_mult"]),
                                     attention_resolutions=tuple(size["attention_resolutions"])))
    else:
      out[name] = tk.ViTSize(**size)
  return out


def load(name: str):
  folder = os.path.join(ROOT, name)
  with open(os.path.join(folder, "config.json")) as f:
    reference = json.load(f)
  return folder, reference, dict(np.load(os.path.join(folder, "io.npz")))


def converted_model(name: str, resolution: int | None = None, **config_changes):
  folder, reference, _ = load(name)
  config = tk.read_config(reference, folder, modality=MODALITY[name], resolution=resolution,
                          architectures=fixture_architectures())
  if config_changes:
    config = dataclasses.replace(config, **config_changes)
  with SafetensorsReader(os.path.join(folder, "model.safetensors")) as reader:
    graphdef, params, codebook = tk.convert_parameters(reader, config, folder)
  return nnx.merge(graphdef, params, codebook)


def channels_last(x: np.ndarray) -> np.ndarray:
  return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


@pytest.mark.parametrize("size", [32, 64], ids=["built_size", "twice_built_size"])
@pytest.mark.parametrize("name", VIT_TOKENIZERS)
def test_vit_tokenizers_give_the_references_tokens_and_decodings(name, size):
  _, _, io = load(name)
  model = converted_model(name, resolution=size)
  assert model.config.pos_grid == (None if size == 32 else 4)
  codes = np.asarray(model.encode(jnp.asarray(channels_last(io[f"input_{size}"]))).codes)
  np.testing.assert_array_equal(codes, io[f"tokens_{size}"])
  decoded = np.asarray(model.decode_tokens(jnp.asarray(io[f"tokens_{size}"])))
  np.testing.assert_allclose(decoded, channels_last(io[f"decoded_{size}"]), atol=1e-4)


def test_divae_gives_the_references_tokens_denoiser_output_and_ddim_decoding():
  _, _, io = load("rgb_divae")
  model = converted_model("rgb_divae")
  config = model.config.diffusion
  assert (config.prediction, config.attention_levels, config.norm_groups) == ("x0", 2, 32)
  codes = np.asarray(model.encode(jnp.asarray(channels_last(io["input_32"]))).codes)
  np.testing.assert_array_equal(codes, io["tokens_32"])
  quantized = model.quantizer.lookup(jnp.asarray(io["tokens_32"]))
  denoised = model.decoder.denoise(jnp.asarray(channels_last(io["noisy"])),
                                   jnp.asarray(io["timesteps"]), quantized)
  np.testing.assert_allclose(np.asarray(denoised), channels_last(io["denoised"]), atol=1e-4)
  # The reference's DDIMScheduler (trailing, zero terminal SNR, eta 0, no clipping) from
  # the same starting noise: 3 steps of 1,000 visit 999, 666, 333 and 0 there.
  unclipped = converted_model("rgb_divae", diffusion=dataclasses.replace(config, clip_x0=False))
  decoded = unclipped.decoder.sample(quantized, jax.random.key(0), int(io["ddim_steps"]),
                                     x_T=jnp.asarray(channels_last(io["x_T"])))
  np.testing.assert_allclose(np.asarray(decoded), channels_last(io["ddim"]), atol=1e-4)


def test_a_converted_workdir_loads_as_a_tokenizer(tmp_path, monkeypatch):
  """`fourm convert` writes a workdir that `load_tokenizer` (so `fourm tokenize` and
  `fourm generate --tokenizers`) reads: parameters only, the reference config kept."""
  for name, size in fixture_architectures().items():
    table = tk.REFERENCE_UNETS if isinstance(size, tk.UNetSize) else tk.REFERENCE_VITS
    monkeypatch.setitem(table, name, size)
  folder, _, io = load("semseg")
  workdir = str(tmp_path / "tok_semseg")
  assert cli.main(["convert", "--from", "reference", folder, "--modality", "semseg",
                   "--out", workdir]) == 0
  tokenizer = load_tokenizer(workdir)
  assert tokenizer.config.num_classes == 7 and tokenizer.config.class_embed_dim == 16
  # The reference's semseg tokenizers read class id + 1 (255, unlabeled, as 0): fourm
  # hands them the records' ids and shifts them itself.
  assert tokenizer.config.input_norm == "ids_plus_one"
  raw = ((io["input_32"] - 1) % 256).astype(np.uint8)
  assert (raw == 255).any()
  np.testing.assert_array_equal(tokenizer.encode(raw), io["tokens_32"])
  decoded = tokenizer.decode(io["tokens_32"])
  assert decoded.shape == (2, 32, 32) and decoded.dtype == np.uint8
  expected = (io["decoded_32"].argmax(axis=1) - 1) % 256
  np.testing.assert_array_equal(decoded, expected)
  with pytest.raises(UsageError, match="holds checkpoints already"):
    cli_main_raising(["convert", "--from", "reference", folder, "--modality", "semseg",
                      "--out", workdir])


def cli_main_raising(argv):
  """cli.main turns errors into exit codes; the tests want the error itself."""
  parser = cli.build_parser()
  args = parser.parse_args(argv)
  return args.run(args)


def test_published_tokenizers_are_known_by_hub_id():
  assert tk.modality_for("EPFL-VILAB/4M_tokenizers_rgb_16k_224-448", None) == "rgb"
  assert tk.modality_for("/downloads/4M_tokenizers_semseg_4k_224-448/", None) == "semseg"
  assert tk.modality_for("/downloads/my_tokenizer", None) is None
  assert tk.modality_for("/downloads/my_tokenizer", "depth") == "depth"


def test_the_reference_unet_sizes_map_to_fourms_attention_levels():
  assert tk.attention_levels(tk.REFERENCE_UNETS["unet_patched"], "x") == 2
  odd = dataclasses.replace(tk.REFERENCE_UNETS["unet_patched"], attention_resolutions=(2, 8))
  with pytest.raises(UsageError, match="smallest levels only"):
    tk.attention_levels(odd, "x")


@pytest.mark.parametrize("change, message", [
    (dict(enc_type="vit_h_enc"), "enc_type 'vit_h_enc' is not one fourm knows"),
    (dict(norm_codes=False), "norm_codes=False"),
    (dict(num_codebooks=2), "num_codebooks 2"),
    (dict(quant_type="memcodes"), "tokenizer_mlp"),
    (dict(patch_proj=False), "patch_proj=False does not fit 'rgb'"),
    (dict(some_new_option=1), "keys fourm does not know how to read: \\['some_new_option'\\]"),
])
def test_configs_fourm_cannot_represent_are_refused_by_name(change, message):
  folder, reference, _ = load("rgb_vit")
  with pytest.raises(UsageError, match=message):
    tk.read_config(dict(reference, **change), folder, modality="rgb",
                   architectures=fixture_architectures())


def test_a_tokenizer_without_a_modality_is_refused():
  folder, reference, _ = load("rgb_vit")
  with pytest.raises(UsageError, match="Give --modality"):
    tk.read_config(reference, folder, modality=None, architectures=fixture_architectures())


def copy_with(tmp_path, name: str, edit) -> str:
  """A copy of fixture NAME's folder whose tensors `edit` changed (dict -> dict)."""
  from safetensors.numpy import load_file, save_file
  folder = os.path.join(ROOT, name)
  out = tmp_path / name
  shutil.copytree(folder, out)
  tensors = load_file(os.path.join(folder, "model.safetensors"))
  save_file(edit(dict(tensors)), str(out / "model.safetensors"))
  return str(out)


def convert_folder(folder: str, name: str):
  with open(os.path.join(folder, "config.json")) as f:
    reference = json.load(f)
  config = tk.read_config(reference, folder, modality=MODALITY[name],
                          architectures=fixture_architectures())
  with SafetensorsReader(os.path.join(folder, "model.safetensors")) as reader:
    return tk.convert_parameters(reader, config, folder)


def test_a_missing_extra_or_misshapen_tensor_is_named(tmp_path):
  def drop(t):
    del t["encoder.blocks.1.mlp.fc1.weight"]
    return t
  with pytest.raises(ReferenceFileError, match="encoder.blocks.1.mlp.fc1.weight"):
    convert_folder(copy_with(tmp_path / "a", "rgb_vit", drop), "rgb_vit")

  def extra(t):
    t["decoder.out_conv.0.dwconv.weight"] = np.zeros((3, 1, 7, 7), np.float32)
    return t
  with pytest.raises(ReferenceFileError, match="no place for.*out_conv"):
    convert_folder(copy_with(tmp_path / "b", "rgb_vit", extra), "rgb_vit")

  def reshape(t):
    t["quant_proj.weight"] = np.zeros((8, 16, 1, 1), np.float32)
    return t
  with pytest.raises(ReferenceFileError, match="quant_proj"):
    convert_folder(copy_with(tmp_path / "c", "rgb_vit", reshape), "rgb_vit")

  def learned_positions(t):
    t["encoder.pos_emb"] = t["encoder.pos_emb"] + 0.1
    return t
  with pytest.raises(ReferenceFileError, match="learned positions are not supported"):
    convert_folder(copy_with(tmp_path / "d", "rgb_vit", learned_positions), "rgb_vit")


def test_an_mlp_tokenizer_converts_from_the_command_line(tmp_path):
  """The global-feature / pose tokenizers (BottleneckMLP + memcodes, converted by
  fourm.interop.tokenizer_mlp) take the same `fourm convert` route."""
  from fourm.interop.tokenizer_mlp import load_mlp_tokenizer
  folder = os.path.join(ROOT, "mlp_global")
  io = dict(np.load(os.path.join(folder, "io.npz")))
  assert cli.main(["convert", "--from", "reference", folder, "--out",
                   str(tmp_path / "wd")]) == 0
  tokenizer = load_mlp_tokenizer(str(tmp_path / "wd"))
  np.testing.assert_array_equal(tokenizer.tokenize(io["features"]), io["ids"])
  np.testing.assert_allclose(tokenizer.detokenize(io["ids"]), io["decoded"], atol=1e-4)
  with pytest.raises(UsageError, match="no converted MLP tokenizer"):
    load_mlp_tokenizer(str(tmp_path))


@pytest.mark.parametrize("name, modality", [("rgb_16k_divae", "rgb"), ("semseg_4k", "semseg"),
                                            ("dinov2_8k", "dinov2"),
                                            ("sam_instance_1k", "sam_mask")])
def test_the_published_architectures_map_tensor_for_tensor(name, modality):
  """At full size (ViT-B, the 196M-parameter patched UNet), from the reference's own
  state-dict names and shapes: fourm's size tables and name map cover every tensor."""
  from tokenizers_vq.vqvae import VQVAE
  with open(os.path.join(ROOT, "published_shapes.json")) as f:
    published = json.load(f)[name]
  config = tk.read_config(published["config"], name, modality=modality)
  model = nnx.eval_shape(lambda: VQVAE(config, rngs=nnx.Rngs(0)))
  shapes = {".".join(map(str, k)): v.get_value().shape
            for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  entries = tk.tensor_map(model)
  assert len(entries) == len(shapes)
  reference = published["tensors"]
  for entry in entries:
    heads = config.diffusion.num_heads if config.is_diffusion else 1
    converted = tk.to_fourm(entry, np.zeros(reference[entry.reference], np.float32),
                            shapes[entry.path], heads)
    assert converted.shape == shapes[entry.path], entry
  buffers = {n for n in reference if n.endswith("pos_emb") or "_codebook" in n}
  assert set(reference) - buffers == {e.reference for e in entries}


def test_multi_head_unet_attention_reorders_qkv_channels():
  """QKVAttentionLegacy reads its qkv channels as [head][q|k|v][channel]; fourm's as
  [q|k|v][head][channel]: each head's q, k and v must land where fourm looks for them."""
  heads, per_head = 2, 3
  c = heads * per_head
  rng = np.random.default_rng(0)
  weight, bias, x = rng.normal(size=(3 * c, c, 1)), rng.normal(size=3 * c), rng.normal(size=c)
  kernel = tk.to_fourm(tk.Entry("qkv.kernel", "qkv.weight", "qkv_legacy"), weight, (c, 3 * c),
                       heads)
  moved = tk.to_fourm(tk.Entry("qkv.bias", "qkv.bias", "qkv_legacy"), bias, (3 * c,), heads)
  reference = (weight[:, :, 0] @ x + bias).reshape(heads, 3, per_head).transpose(1, 0, 2)
  np.testing.assert_allclose((x @ kernel + moved).reshape(3, heads, per_head), reference,
                             rtol=1e-12)


# The SAM-instance tokenizer (EPFL-VILAB/4M_tokenizers_sam-instance_1k_64) --------------

SAM_HUB_NAME = "4M_tokenizers_sam-instance_1k_64"


def test_the_sam_instance_tokenizer_gives_the_references_tokens_and_decodings():
  """0 / 1 masks at 64 px, 16 px patches: 16 ids each; the decoder's logits after its two
  ConvNeXt blocks as the reference's."""
  _, _, io = load("sam_mask")
  model = converted_model("sam_mask")
  config = model.config
  assert (config.input_norm, config.out_conv, config.grid, config.channels) == (
      "binary_sigmoid", True, 4, 1)
  assert set(np.unique(io["input_64"])) == {0.0, 1.0}  # the masks as they are, not [-1, 1]
  codes = np.asarray(model.encode(jnp.asarray(channels_last(io["input_64"]))).codes)
  np.testing.assert_array_equal(codes, io["tokens_64"])
  decoded = np.asarray(model.decode_tokens(jnp.asarray(io["tokens_64"])))
  np.testing.assert_allclose(decoded, channels_last(io["decoded_64"]), atol=1e-4)


def test_convnext_blocks_map_to_the_references():
  """Over a mask's one channel the block's LayerNorm hides its depthwise conv (it returns
  its bias whatever the input): one block over three channels checks that too."""
  from tokenizers_vq.vqvae import ConvNeXtBlock
  _, _, io = load("sam_mask")
  block = nnx.eval_shape(lambda: ConvNeXtBlock(3, rngs=nnx.Rngs(0)))
  flat = dict(nnx.to_flat_state(nnx.state(block, nnx.Param)))
  entries = list(tk.convnext_entries("block", "convnext"))
  assert len(entries) == len(flat) == 9
  for entry in entries:
    key = tuple(entry.path.split(".")[1:])
    shape = flat[key].get_value().shape
    flat[key].set_value(jnp.asarray(tk.to_fourm(entry, io[entry.reference], shape)))
  out = block(jnp.asarray(channels_last(io["convnext_input"])))
  np.testing.assert_allclose(np.asarray(out), channels_last(io["convnext_output"]), atol=1e-5)


@pytest.fixture(scope="module")
def sam_workdir(tmp_path_factory):
  """The fixture converted by `fourm convert` from a folder named like the hub's (so no
  --modality), as a user's download."""
  root = tmp_path_factory.mktemp("sam")
  folder = str(root / SAM_HUB_NAME)
  shutil.copytree(os.path.join(ROOT, "sam_mask"), folder)
  workdir = str(root / "tok_sam")
  with pytest.MonkeyPatch.context() as patch:
    for name, size in fixture_architectures().items():
      if isinstance(size, tk.ViTSize):
        patch.setitem(tk.REFERENCE_VITS, name, size)
    assert cli.main(["convert", "--from", "reference", folder, "--out", workdir]) == 0
  return workdir


def test_a_converted_sam_instance_tokenizer_reads_uint8_masks(sam_workdir):
  """`load_tokenizer` of the workdir: records' uint8 0 / 1 masks in, the reference's ids;
  ids in, the masks where the reference's sigmoid is >= 0.5."""
  _, _, io = load("sam_mask")
  tokenizer = load_tokenizer(sam_workdir)
  assert tokenizer.config.modality == "sam_mask" and tokenizer.config.out_conv
  masks = io["input_64"][:, 0].astype(np.uint8)
  np.testing.assert_array_equal(tokenizer.encode(masks), io["tokens_64"])
  logits = io["decoded_64"][:, 0]
  decoded = tokenizer.decode(io["tokens_64"])
  assert decoded.dtype == np.uint8 and decoded.shape == (2, 64, 64)
  clear = np.abs(logits) > 1e-4  # pixels off the fence (within the tolerance of 0)
  assert clear.mean() > 0.99
  np.testing.assert_array_equal(decoded[clear], (logits[clear] > 0).astype(np.uint8))
  with pytest.raises(RecordError, match="only 0 and 1"):
    tokenizer.encode(masks * 255)


def test_a_converted_sam_instance_tokenizer_fills_the_pseudolabelers_records(sam_workdir):
  """The sam_instance labeler's untokenized records (16 ids -1 per instance, its 64 x 64
  mask beside) become sam_instance records that the codec writes."""
  from pseudolabel import sam
  from tokenizers_vq import sequences
  _, _, io = load("sam_mask")
  frame = np.zeros((2, 224, 224), bool)
  frame[0, 40:104, 60:124] = io["input_64"][0, 0] > 0   # two instances, each filling
  frame[1, 10:74, 100:164] = io["input_64"][1, 0] > 0   # its box at 64 x 64
  points = np.array([[92, 72], [130, 40], [5, 200]])    # in the first, the second, none
  records = [sam.instance_record(frame, points), sam.instance_record(frame[:1], points[:1])]
  np.testing.assert_array_equal(sam.instance_masks(records[0])[:2], io["input_64"][:, 0])
  made = tokenize_records(records, sam_workdir, batch_size=2)
  assert [m.shape for m in made] == [(3, 22), (1, 22)]
  np.testing.assert_array_equal(made[0][:, 6:], np.stack(
      [io["tokens_64"][0].ravel(), io["tokens_64"][1].ravel(), np.full(16, -1)]))
  np.testing.assert_array_equal(made[1][0, 6:], io["tokens_64"][0].ravel())
  np.testing.assert_array_equal(made[0][:, :6], records[0][:, :6])
  codec = sequences.codecs_for(["sam_instance"])["sam_instance"]
  np.testing.assert_array_equal(codec.decode(codec(made[0])), made[0])
  with pytest.raises(UsageError, match="no SAM-instance tokenizer"):
    tokenize_records(records, an_edge_tokenizer())


def an_edge_tokenizer():
  """What tokenize_records checks of a tokenizer: its config (an edge tokenizer's here)."""
  from types import SimpleNamespace

  from tokenizers_vq.vqvae_config import VQVAEConfig
  return SimpleNamespace(config=VQVAEConfig(modality="canny_edge", input_norm="binary",
                                            resolution=64, patch_size=16))


def test_out_conv_without_its_tensors_is_named():
  """A ViT config that says out_conv needs the blocks' tensors."""
  folder, reference, _ = load("rgb_vit")
  config = tk.read_config(dict(reference, out_conv=True), folder, modality="rgb",
                          architectures=fixture_architectures())
  assert config.out_conv
  with SafetensorsReader(os.path.join(folder, "model.safetensors")) as reader:
    with pytest.raises(ReferenceFileError, match="missing: \\['decoder.out_conv.0.dwconv"):
      tk.convert_parameters(reader, config, folder)
