"""`fourm convert --from reference` for the reference's VQ tokenizers (apple/ml-4m fourm/vq).

A published tokenizer is a hub folder like a model's: config.json holds the keyword
arguments of the reference's `VQVAE` or `DiVAE` (huggingface_hub's mixin writes them),
model.safetensors its state dict. This module reads both into a `VQVAEConfig` and the
parameters of fourm's `VQVAE` (tokenizers_vq/vqvae.py, whose names already follow the
reference's), and writes a tokenizer workdir that `fourm tokenize --tokenizers` and
`fourm generate --tokenizers` load like a trained one.

    reference                               fourm
    enc_type vit_b_enc / dec_type vit_b_dec ViT encoder / decoder (REFERENCE_VITS: sizes)
    dec_type unet_patched (DiVAE)           diffusion decoder (REFERENCE_UNETS: sizes)
    quant_type lucid, norm_codes            VectorQuantizer (cosine lookup)
    n_labels (semseg)                       num_classes, n_channels -> class_embed_dim
    patch_proj False (feature maps)         the modality's feature-map form (1x1 patches)
    out_conv (SAM instance masks)           out_conv: two ConvNeXt blocks after the decoder
    encoder.pos_emb (a buffer)              recomputed; checked, and its grid -> pos_grid

Tensor layouts: torch Linear weights are [out, in], fourm kernels [in, out] (reshaped to
the Dense layer's in / out shapes); Conv2d [out, in, kh, kw] -> [kh, kw, in, out] (a
depthwise one's in is 1 in both); the UNet's attention qkv is a Conv1d whose output
channels run [head][q|k|v][channel] (`QKVAttentionLegacy`), fourm's [q|k|v][head][channel].

Which modality a tokenizer is for is not in its config: the published hub ids are known
(`PUBLISHED`), anything else needs `--modality`. The global-feature and human-pose
tokenizers (BottleneckMLP + memcodes) are `fourm.interop.tokenizer_mlp`'s.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm import modalities
from fourm.errors import UsageError
from fourm.interop.safetensors_file import ReferenceFileError, SafetensorsReader
from fourm.nn.positions import sincos_2d


@dataclasses.dataclass(frozen=True)
class ViTSize:
  width: int
  depth: int
  heads: int
  mlp_ratio: float = 4.0


@dataclasses.dataclass(frozen=True)
class UNetSize:
  """The reference's `PatchedUNetCondCat` arguments that fix its shape."""
  patch_size: int
  width: int                         # model_channels
  channel_mult: tuple[int, ...]
  num_res_blocks: int
  attention_resolutions: tuple[int, ...]  # downsampling rates (1, 2, 4, ...) that attend
  num_heads: int = 1


# The reference's registries (fourm/vq/models/vit_models.py, unet/unet.py).
REFERENCE_VITS = {
    "vit_s_enc": ViTSize(512, 8, 8), "vit_s_dec": ViTSize(512, 8, 8),
    "vit_b_enc": ViTSize(768, 12, 12), "vit_b_dec": ViTSize(768, 12, 12),
    "vit_l_enc": ViTSize(1024, 24, 16), "vit_l_dec": ViTSize(1024, 24, 16),
}
REFERENCE_UNETS = {
    "unet_patched": UNetSize(patch_size=4, width=256, channel_mult=(1, 2, 2, 2),
                             num_res_blocks=3, attention_resolutions=(4, 8)),
}
# The published tokenizers (ml-4m README) and the raw modality each one tokenizes.
PUBLISHED = {
    "EPFL-VILAB/4M_tokenizers_rgb_16k_224-448": "rgb",
    "EPFL-VILAB/4M_tokenizers_depth_8k_224-448": "depth",
    "EPFL-VILAB/4M_tokenizers_normal_8k_224-448": "normal",
    "EPFL-VILAB/4M_tokenizers_edge_8k_224-512": "canny_edge",
    "EPFL-VILAB/4M_tokenizers_semseg_4k_224-448": "semseg",
    "EPFL-VILAB/4M_tokenizers_CLIP-B16_8k_224-448": "clip",
    "EPFL-VILAB/4M_tokenizers_DINOv2-B14_8k_224-448": "dinov2",
    "EPFL-VILAB/4M_tokenizers_ImageBind-H14_8k_224-448": "imagebind",
    "EPFL-VILAB/4M_tokenizers_DINOv2-B14-global_8k_16_224": "dinov2_global",
    "EPFL-VILAB/4M_tokenizers_ImageBind-H14-global_8k_16_224": "imagebind_global",
    "EPFL-VILAB/4M_tokenizers_sam-instance_1k_64": "sam_mask",
    "EPFL-VILAB/4M_tokenizers_human-poses_1k_8": "human_poses",
}
PREDICTIONS = {"sample": "x0", "epsilon": "epsilon", "v_prediction": "v"}
# Reference constructor arguments that only matter for training (or that fourm's
# defaults already equal): read past. Anything else unknown is refused by name.
_TRAINING_ONLY = {
    "ckpt_path", "ignore_keys", "freeze_enc", "sync_codebook", "ema_decay",
    "threshold_ema_dead_code", "code_replacement_policy", "commitment_weight", "kmeans_init",
    "norm_latents", "cls_free_guidance_dropout", "masked_cfg", "masked_cfg_low",
    "masked_cfg_high", "scheduler", "dec_transformer_dropout", "conditioning", "clip_sample",
    "thresholding", "undo_std", "image_size_enc", "image_size_dec", "patch_size_dec",
}
_READ = {"image_size", "n_channels", "n_labels", "enc_type", "dec_type", "patch_proj",
         "post_mlp", "patch_size", "quant_type", "codebook_size", "num_codebooks",
         "latent_dim", "norm_codes", "out_conv", "num_train_timesteps", "beta_schedule",
         "prediction_type", "zero_terminal_snr"}


def is_tokenizer_config(config: Mapping[str, Any]) -> bool:
  """A reference tokenizer's config (not a 4M model's): it names an encoder type."""
  return "enc_type" in config


def _architecture(table: Mapping[str, Any], name: str, what: str, source: str):
  if name not in table:
    raise UsageError(f"{source}: {what} {name!r} is not one fourm knows "
                     f"({sorted(table)}); a fork's own sizes go in `architectures=`")
  return table[name]


def attention_levels(size: UNetSize, source: str) -> int:
  """The reference lists attending downsampling rates; fourm attends at the N smallest
  levels. Other patterns cannot be represented."""
  levels = len(size.channel_mult)
  rates = sorted(set(size.attention_resolutions))
  count = len(rates)
  if rates != [2 ** level for level in range(levels - count, levels)]:
    raise UsageError(f"{source}: the UNet attends at downsampling rates {rates}; fourm's "
                     f"attends at the smallest levels only (rates "
                     f"{[2 ** level for level in range(levels)]})")
  return count


# What the reference's tokenizers were trained to read, by fourm raw modality (its
# MODALITY_TRANSFORMS_DIVAE and feature extractors): see modality_io.INPUT_NORMS.
REFERENCE_INPUTS = {
    "depth": dict(input_norm="truncated_standard"),
    "semseg": dict(input_norm="ids_plus_one"),     # SemsegTransform(shift_idx_by_one=True)
    "canny_edge": dict(input_norm="binary"),       # edges read as a [-1, 1] image
    "sam_edge": dict(input_norm="binary"),
    "sam_mask": dict(input_norm="binary_sigmoid"), # SAMInstanceTransform: 0 / 1, logits out
    "clip": dict(norm_scale=1.0),                  # features as the extractor gives them
    "dinov2": dict(norm_scale=1.0),
    "imagebind": dict(norm_scale=1.0),
}


def read_config(reference: Mapping[str, Any], source: str, *, modality: str | None = None,
                resolution: int | None = None, input_norm: str | None = None,
                architectures: Mapping[str, Any] | None = None):
  """The `VQVAEConfig` of a reference VQVAE / DiVAE config (its constructor kwargs).

  `resolution` (default: the config's image_size) is the image size fourm will tokenize
  at; away from the size the model was built for, its positions are resized as the
  reference resizes them. The input format is the reference's for the modality
  (`REFERENCE_INPUTS`) unless `input_norm` says otherwise.
  """
  from tokenizers_vq.vqvae_config import DiffusionConfig, VQVAEConfig
  tables = {**REFERENCE_VITS, **REFERENCE_UNETS, **(architectures or {})}
  unknown = sorted(set(reference) - _READ - _TRAINING_ONLY)
  if unknown:
    raise UsageError(f"{source}: config.json has keys fourm does not know how to read: "
                     f"{unknown}")
  get = lambda key, default=None: reference.get(key, default)
  if modality is None:
    raise UsageError(f"{source}: which modality does this tokenizer serve? Give --modality "
                     "(rgb, depth, normal, semseg, clip, ...; the published tokenizers are "
                     "known by hub id, e.g. EPFL-VILAB/4M_tokenizers_rgb_16k_224-448)")
  if get("quant_type", "lucid") != "lucid" or "MLP" in str(get("enc_type")):
    raise UsageError(f"{source}: a {get('enc_type')} / {get('quant_type')} tokenizer is "
                     "converted by fourm.interop.tokenizer_mlp, not as a ViT VQ-VAE")
  if not get("norm_codes", True):
    raise UsageError(f"{source}: norm_codes=False (Euclidean codebook lookup); fourm's "
                     "quantizer is the cosine one of every published tokenizer")
  if get("num_codebooks", 1) != 1:
    raise UsageError(f"{source}: num_codebooks {get('num_codebooks')}: fourm's ViT "
                     "tokenizers have one codebook")
  build_size = int(get("image_size", 224))
  patch = int(get("patch_size", 16))
  resolution = build_size if resolution is None else int(resolution)
  enc = _architecture(tables, get("enc_type", "vit_b_enc"), "enc_type", source)
  values = dict(
      modality=modality, name=os.path.basename(source.rstrip("/")), resolution=resolution,
      patch_size=patch, vocab_size=int(get("codebook_size", 16384)),
      code_dim=int(get("latent_dim", 32)), enc_width=enc.width, enc_depth=enc.depth,
      enc_heads=enc.heads, mlp_ratio=enc.mlp_ratio, post_mlp=bool(get("post_mlp", False)),
      pos_grid=None if build_size == resolution else build_size // patch)
  values.update(REFERENCE_INPUTS.get(modality, {}))
  if input_norm is not None:
    values["input_norm"] = input_norm
  if get("n_labels") is not None:
    values.update(num_classes=int(get("n_labels")), class_embed_dim=int(get("n_channels")))
  else:
    values["channels"] = int(get("n_channels", 3))
  dec_type = get("dec_type", "vit_b_dec")
  dec = _architecture(tables, dec_type, "dec_type", source)
  if isinstance(dec, ViTSize):
    if dec.mlp_ratio != enc.mlp_ratio:
      raise UsageError(f"{source}: encoder and decoder MLP ratios differ")
    values.update(dec_width=dec.width, dec_depth=dec.depth, dec_heads=dec.heads,
                  out_conv=bool(get("out_conv", False)))
  else:
    prediction = get("prediction_type", "v_prediction")
    if prediction not in PREDICTIONS:
      raise UsageError(f"{source}: prediction_type {prediction!r} is not one of "
                       f"{sorted(PREDICTIONS)}")
    values.update(decoder="diffusion", dec_width=enc.width, dec_heads=enc.heads,
                  diffusion=DiffusionConfig(
                      patch_size=dec.patch_size, width=dec.width,
                      channel_mult=tuple(dec.channel_mult),
                      num_res_blocks=dec.num_res_blocks,
                      attention_levels=attention_levels(dec, source),
                      num_heads=dec.num_heads, norm_groups=32,  # GroupNorm32
                      num_train_timesteps=int(get("num_train_timesteps", 1000)),
                      beta_schedule=get("beta_schedule", "squaredcos_cap_v2"),
                      zero_terminal_snr=bool(get("zero_terminal_snr", True)),
                      prediction=PREDICTIONS[prediction]))
  if "channels" in values and get("patch_proj", True) == (
      modalities.get_raw(modality).form == modalities.Form.FEATURE_MAP):
    raise UsageError(f"{source}: patch_proj={get('patch_proj', True)} does not fit "
                     f"{modality!r} (feature maps are tokenized without patch projection, "
                     "images with it)")
  try:
    return VQVAEConfig(**values)
  except UsageError as error:
    raise UsageError(f"{source}: {error}") from None


# Tensor names ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Entry:
  """fourm path (dotted) <- reference tensor name, by how its layout changes."""
  path: str
  reference: str
  kind: str  # vector | bias | linear | conv | conv1x1 | conv1d | patch_conv | qkv_legacy


def _vit_entries(side: str, depth: int) -> Iterator[Entry]:
  for i in range(depth):
    block = f"{side}.blocks.{i}"
    for norm in ("norm1", "norm2"):
      yield Entry(f"{block}.{norm}.scale", f"{block}.{norm}.weight", "vector")
      yield Entry(f"{block}.{norm}.bias", f"{block}.{norm}.bias", "vector")
    for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
      yield Entry(f"{block}.{layer}.kernel", f"{block}.{layer}.weight", "linear")
      yield Entry(f"{block}.{layer}.bias", f"{block}.{layer}.bias", "bias")


def _post_mlp_entries(side: str) -> Iterator[Entry]:
  yield Entry(f"{side}.norm_mlp.scale", f"{side}.norm_mlp.weight", "vector")
  yield Entry(f"{side}.norm_mlp.bias", f"{side}.norm_mlp.bias", "vector")
  for fc in ("fc1", "fc2"):
    yield Entry(f"{side}.post_mlp.{fc}.kernel", f"{side}.post_mlp.{fc}.weight", "linear")
    yield Entry(f"{side}.post_mlp.{fc}.bias", f"{side}.post_mlp.{fc}.bias", "bias")


def _pair(path: str, reference: str, kind: str) -> Iterator[Entry]:
  """A layer's kernel and bias (the qkv's bias is reordered like its kernel)."""
  yield Entry(f"{path}.kernel", f"{reference}.weight", kind)
  yield Entry(f"{path}.bias", f"{reference}.bias", kind if kind == "qkv_legacy" else "bias")


def _norm(path: str, reference: str) -> Iterator[Entry]:
  yield Entry(f"{path}.scale", f"{reference}.weight", "vector")
  yield Entry(f"{path}.bias", f"{reference}.bias", "vector")


def _resblock(path: str, reference: str, has_skip: bool) -> Iterator[Entry]:
  yield from _norm(f"{path}.norm1", f"{reference}.in_layers.0")
  yield from _pair(f"{path}.conv1", f"{reference}.in_layers.2", "conv")
  yield from _pair(f"{path}.emb_proj", f"{reference}.emb_layers.1", "linear")
  yield from _norm(f"{path}.norm2", f"{reference}.out_layers.0")
  yield from _pair(f"{path}.conv2", f"{reference}.out_layers.3", "conv")
  if has_skip:
    yield from _pair(f"{path}.skip", f"{reference}.skip_connection", "conv")


def _attention(path: str, reference: str) -> Iterator[Entry]:
  yield from _norm(f"{path}.norm", f"{reference}.norm")
  yield from _pair(f"{path}.qkv", f"{reference}.qkv", "qkv_legacy")
  yield from _pair(f"{path}.proj", f"{reference}.proj_out", "conv1d")


def _unet_entries(unet) -> Iterator[Entry]:
  """Walks fourm's UNet in the order the reference numbers its `input_blocks`,
  `middle_block` and `output_blocks` (one TimestepEmbedSequential per block, attention
  and resampling inside it)."""
  root, ref = "decoder.unet", "decoder"
  yield from _pair(f"{root}.time_fc1", f"{ref}.time_embed.0", "linear")
  yield from _pair(f"{root}.time_fc2", f"{ref}.time_embed.2", "linear")
  yield from _pair(f"{root}.conv_in", f"{ref}.input_blocks.0.0", "conv")
  index = 1
  for level, stage in enumerate(unet.down):
    for i, block in enumerate(stage.blocks):
      yield from _resblock(f"{root}.down.{level}.blocks.{i}", f"{ref}.input_blocks.{index}.0",
                           block.skip is not None)
      if stage.attns is not None:
        yield from _attention(f"{root}.down.{level}.attns.{i}", f"{ref}.input_blocks.{index}.1")
      index += 1
    if stage.resample is not None:
      yield from _pair(f"{root}.down.{level}.resample", f"{ref}.input_blocks.{index}.0.op",
                       "conv")
      index += 1
  yield from _resblock(f"{root}.mid_block1", f"{ref}.middle_block.0", False)
  yield from _attention(f"{root}.mid_attn", f"{ref}.middle_block.1")
  yield from _resblock(f"{root}.mid_block2", f"{ref}.middle_block.2", False)
  index = 0
  for s, stage in enumerate(unet.up):
    for i, block in enumerate(stage.blocks):
      reference = f"{ref}.output_blocks.{index}"
      yield from _resblock(f"{root}.up.{s}.blocks.{i}", f"{reference}.0", block.skip is not None)
      inner = 1
      if stage.attns is not None:
        yield from _attention(f"{root}.up.{s}.attns.{i}", f"{reference}.1")
        inner = 2
      if stage.resample is not None and i == len(stage.blocks) - 1:
        yield from _pair(f"{root}.up.{s}.resample.conv", f"{reference}.{inner}.conv", "conv")
      index += 1
  yield from _norm(f"{root}.norm_out", f"{ref}.out.0")
  yield from _pair(f"{root}.conv_out", f"{ref}.out.2", "conv")


def convnext_entries(path: str, reference: str) -> Iterator[Entry]:
  """A ConvNeXt block's (tokenizers_vq.vqvae.ConvNeXtBlock, the reference's ConvNeXtBlock):
  depthwise conv, LayerNorm, two Linears and the layer scale."""
  yield from _pair(f"{path}.dwconv", f"{reference}.dwconv", "conv")
  yield from _norm(f"{path}.norm", f"{reference}.norm")
  yield from _pair(f"{path}.pwconv1", f"{reference}.pwconv1", "linear")
  yield from _pair(f"{path}.pwconv2", f"{reference}.pwconv2", "linear")
  yield Entry(f"{path}.gamma", f"{reference}.gamma", "vector")


def tensor_map(model) -> list[Entry]:
  """Every fourm parameter of `model` (a VQVAE) with the reference tensor it comes from."""
  c = model.config
  entries = []
  if c.is_class_map:
    entries.append(Entry("cls_emb.embedding", "cls_emb.weight", "vector"))
  entries += list(_pair("encoder.proj", "encoder.proj", "patch_conv"))
  entries += _vit_entries("encoder", c.enc_depth)
  if c.post_mlp:
    entries += _post_mlp_entries("encoder")
  entries += list(_pair("encoder.quant_proj", "quant_proj", "conv1x1"))
  if c.is_diffusion:
    entries += _unet_entries(model.decoder.unet)
  else:
    entries += list(_pair("decoder.post_quant_proj", "post_quant_proj", "conv1x1"))
    entries += _vit_entries("decoder", c.dec_depth)
    if c.post_mlp:
      entries += _post_mlp_entries("decoder")
    entries += list(_pair("decoder.out_proj", "decoder.out_proj", "linear"))
    if c.out_conv:
      for i in range(len(model.decoder.out_conv)):
        entries += convnext_entries(f"decoder.out_conv.{i}", f"decoder.out_conv.{i}")
  return entries


def _fits(kind: str, ref: tuple[int, ...], shape: tuple[int, ...]) -> bool:
  """Whether a reference tensor of shape `ref` is the fourm parameter of `shape`."""
  if kind == "vector":
    return ref == shape
  if kind == "bias":  # [out] vs a Dense bias of the out shape
    return ref == (int(np.prod(shape)),)
  if kind == "linear":  # [out, in] vs a kernel [in..., out...]: some split must fit
    return len(ref) == 2 and any(
        int(np.prod(shape[:k])) == ref[1] and int(np.prod(shape[k:])) == ref[0]
        for k in range(1, len(shape)))
  if kind == "conv":
    return ref == (shape[3], shape[2], shape[0], shape[1])
  if kind == "patch_conv":
    return ref == (shape[3], shape[0], shape[1], shape[2])
  if kind == "conv1x1":
    return ref == (shape[1], shape[0], 1, 1)
  if kind in ("conv1d", "qkv_legacy"):
    return ref == ((shape[1], shape[0], 1) if len(shape) == 2 else shape)
  raise AssertionError(kind)


def to_fourm(entry: Entry, array: np.ndarray, shape: tuple[int, ...], heads: int = 1
             ) -> np.ndarray:
  """One reference tensor in the layout of the fourm parameter of `shape` (`heads`: the
  UNet attention's, for its qkv)."""
  kind = entry.kind
  if not _fits(kind, array.shape, tuple(shape)):
    raise ReferenceFileError(f"tensor {entry.reference!r} is {list(array.shape)}; fourm's "
                             f"{entry.path} {list(shape)} cannot come from it")
  if kind == "qkv_legacy":                     # [3C(, C, 1)]: [head][qkv][ch] -> [qkv][head][ch]
    per_head = array.shape[0] // (3 * heads)
    array = array.reshape((heads, 3, per_head) + array.shape[1:]).swapaxes(0, 1)
    array = array.reshape((3 * heads * per_head,) + array.shape[3:])
    kind = "conv1d" if array.ndim == 3 else "vector"
  if kind in ("vector", "bias"):
    out = array
  elif kind == "linear":                       # [out, in] -> [in..., out...]
    out = array.T
  elif kind == "conv":                         # [out, in, kh, kw] -> [kh, kw, in, out]
    out = array.transpose(2, 3, 1, 0)
  elif kind == "patch_conv":                   # [D, C, P, P] -> [C, P, P, D]
    out = array.transpose(1, 2, 3, 0)
  elif kind in ("conv1x1", "conv1d"):          # [out, in, 1(, 1)] -> [in, out]
    out = array.reshape(array.shape[:2]).T
  else:
    raise AssertionError(kind)
  if out.size != int(np.prod(shape)):
    raise AssertionError(f"{entry.reference}: {out.shape} into {shape}")
  return np.ascontiguousarray(out.reshape(shape))


# Import -----------------------------------------------------------------------------------

def modality_for(source: str, given: str | None) -> str | None:
  """--modality, or the published tokenizer's (by hub id or a folder named like one)."""
  if given is not None:
    return given
  name = source.rstrip("/")
  for hub_id, modality in PUBLISHED.items():
    if name == hub_id or os.path.basename(name) == hub_id.split("/")[1]:
      return modality
  return None


def _check_positions(reader: SafetensorsReader, config, width: int, side: str, path: str
                     ) -> None:
  """The stored sin-cos buffer must be the one fourm recomputes (at the build grid)."""
  name = f"{side}.pos_emb"
  if name not in reader.names():
    raise ReferenceFileError(f"{path}: no tensor {name!r} (the {side}'s positions)")
  stored = reader.read(name).astype(np.float32)
  grid = config.position_grid
  if stored.shape != (1, width, grid, grid):
    raise ReferenceFileError(f"{path}: {name} is {list(stored.shape)}; a {grid}x{grid} "
                             f"grid of width {width} needs [1, {width}, {grid}, {grid}]")
  expected = sincos_2d(grid, width).reshape(grid, grid, width).transpose(2, 0, 1)[None]
  worst = float(np.abs(stored - expected).max())
  if worst > 1e-4:
    raise ReferenceFileError(f"{path}: {name} is not the fixed sin-cos table fourm "
                             f"recomputes (differs by {worst:.2e}): learned positions are "
                             "not supported")


def convert_parameters(reader: SafetensorsReader, config, path: str):
  """(params, codebook) nnx states of fourm's VQVAE from the reference file."""
  from tokenizers_vq.quantizer import CodebookState, l2_normalize
  from tokenizers_vq.vqvae import VQVAE
  abstract = nnx.eval_shape(lambda: VQVAE(config, rngs=nnx.Rngs(0)))
  entries = tensor_map(abstract)
  expected = {e.reference for e in entries} | {
      "encoder.pos_emb", "quantize._codebook.embed", "quantize._codebook.cluster_size",
      "quantize._codebook.embed_avg", "quantize._codebook.initted"}
  if not config.is_diffusion:
    expected.add("decoder.pos_emb")
  names = set(reader.names())
  missing = sorted(e.reference for e in entries if e.reference not in names)
  if missing:
    raise ReferenceFileError(f"{path}: tensors this architecture needs are missing: "
                             f"{missing[:8]}{' ...' if len(missing) > 8 else ''}")
  unused = sorted(names - expected)
  if unused:
    raise ReferenceFileError(f"{path}: tensors fourm has no place for (a different "
                             f"architecture than config.json says?): {unused[:8]}"
                             f"{' ...' if len(unused) > 8 else ''}")
  _check_positions(reader, config, config.enc_width, "encoder", path)
  if not config.is_diffusion:
    _check_positions(reader, config, config.dec_width, "decoder", path)

  graphdef, params, codebook = nnx.split(abstract, nnx.Param, CodebookState)
  flat = dict(nnx.to_flat_state(params))
  heads = config.diffusion.num_heads if config.is_diffusion else 1
  for entry in entries:
    key = tuple(int(p) if p.isdigit() else p for p in entry.path.split("."))
    if key not in flat:
      raise AssertionError(f"fourm has no parameter {entry.path}")
    target = flat[key]
    shape = target.get_value().shape
    array = reader.read(entry.reference).astype(np.float32)
    try:
      target.set_value(jnp.asarray(to_fourm(entry, array, shape, heads)))
    except ReferenceFileError as error:
      raise ReferenceFileError(f"{path}: {error}") from None

  vocab, dim = config.vocab_size, config.code_dim
  embed = reader.read("quantize._codebook.embed").astype(np.float32)
  if embed.shape not in ((vocab, dim), (1, vocab, dim)):
    raise ReferenceFileError(f"{path}: quantize._codebook.embed is {list(embed.shape)}, "
                             f"config.json says {vocab} codes of {dim}")
  # The reference normalizes its cosine codebook on every lookup; fourm stores it so.
  codes = l2_normalize(jnp.asarray(embed.reshape(vocab, dim)))
  sizes = (reader.read("quantize._codebook.cluster_size").astype(np.float32).reshape(vocab)
           if "quantize._codebook.cluster_size" in names else np.ones(vocab, np.float32))
  codebook_flat = dict(nnx.to_flat_state(codebook))
  values = {"codebook": codes, "cluster_size": jnp.asarray(sizes),
            "embed_avg": codes * jnp.asarray(sizes)[:, None]}
  for key, variable in codebook_flat.items():
    variable.set_value(values[key[-1]])
  for key, variable in flat.items():
    if isinstance(variable.get_value(), jax.ShapeDtypeStruct):
      raise AssertionError(f"no reference tensor filled {'.'.join(map(str, key))}")
  return graphdef, params, codebook


def import_reference_tokenizer(source: str, workdir: str, *, modality: str | None = None,
                               resolution: int | None = None, input_norm: str | None = None,
                               architectures: Mapping[str, Any] | None = None,
                               resolved: tuple[str, dict[str, Any], str] | None = None
                               ) -> dict[str, Any]:
  """Converts a reference VQ-VAE / DiVAE (hub id or folder) into a fourm tokenizer
  workdir; returns a summary."""
  from fourm.interop.convert import resolve_source, save_converted
  from fourm.workdir import make_workdir
  path, reference_config, kind = resolved or resolve_source(source)
  config = read_config(reference_config, source, modality=modality_for(source, modality),
                       resolution=resolution, input_norm=input_norm,
                       architectures=architectures)
  with SafetensorsReader(path) as reader:
    dtypes = sorted(reader.dtypes())
    _, params, codebook = convert_parameters(reader, config, path)
  meta = {"step": 0, "tokenizer": config.to_dict(),
          "converted_from": {"source": source, "kind": kind, "file": os.path.abspath(path),
                             "dtypes": dtypes, "reference_config": dict(reference_config)}}
  make_workdir(workdir)
  save_converted(workdir, {"params": params, "codebook": codebook}, meta)
  count = sum(v.get_value().size for _, v in nnx.to_flat_state(params))
  return dict(workdir=os.path.abspath(workdir), file=path, dtypes=dtypes, config=config,
              parameters=count)
