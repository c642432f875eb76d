"""The reference's MLP VQ-VAE tokenizers (4M-21's global features, human poses) into fourm.

A published tokenizer (EPFL-VILAB/4M_tokenizers_DINOv2-B14-global_8k_16_224,
..._ImageBind-H14-global_8k_16_224, ..._human-poses_1k_8) is a hub folder of
`config.json`, the reference VQVAE's constructor arguments as huggingface_hub's
PyTorchModelHubMixin writes them, and `model.safetensors`, its state dict. Here they become
an `MLPVQConfig` and an `MLPVQ` (tokenizers_vq/mlp_vq.py, whose docstring gives the
tensor-by-tensor correspondence): torch Linear weights [out, in] and Conv2d 1x1 weights
[out, in, 1, 1] are transposed to kernels [in, out]; the quantizer's tensors, LayerNorm
weights and biases are taken as they are.

Every config field of the reference's VQ / VQVAE constructors is either read, or known to
change nothing for this model (image sizes and patches of ViT encoders, the other
quantizer's options, training and checkpoint-loading switches) and skipped; any other
field, and any value fourm cannot build (a ViT or plain-MLP encoder, the 'lucid'
quantizer, semantic-segmentation labels, input de-standardization), is one error naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm.errors import UsageError
from fourm.interop.safetensors_file import ReferenceFileError, SafetensorsReader
from tokenizers_vq.mlp_vq import MLPVQ, MLPVQConfig, parse_mlp_id

# The reference's defaults (fourm/vq/vqvae.py, VQ and VQVAE) of the fields read here: a
# config.json that leaves one out gets what the reference's constructor would use.
_DEFAULTS = {"n_channels": 3, "n_labels": None, "enc_type": "vit_b_enc",
             "dec_type": "vit_b_dec", "quant_type": "lucid", "codebook_size": 16384,
             "num_codebooks": 1, "latent_dim": 32, "undo_std": False}
# Fields that do not touch an MLP encoder / decoder with a memcodes quantizer at inference.
_NO_EFFECT = {
    "image_size": "ViT encoders' resolution", "image_size_enc": "ViT encoders' resolution",
    "image_size_dec": "ViT decoders' resolution", "patch_size": "ViT patches",
    "patch_size_dec": "ViT patches", "patch_proj": "ViT patch projection",
    "post_mlp": "ViT post-MLP", "out_conv": "ViT decoders' output convolutions",
    "norm_codes": "the lucid quantizer", "norm_latents": "the lucid quantizer",
    "sync_codebook": "the lucid quantizer", "ema_decay": "the lucid quantizer",
    "threshold_ema_dead_code": "the lucid quantizer",
    "code_replacement_policy": "the lucid quantizer",
    "commitment_weight": "the lucid quantizer", "kmeans_init": "the lucid quantizer",
    "ckpt_path": "checkpoint loading (the safetensors are the weights)",
    "ignore_keys": "checkpoint loading", "freeze_enc": "training",
}


def _integer(config: Mapping[str, Any], field: str, source: str) -> int:
  value = config.get(field, _DEFAULTS[field])
  if isinstance(value, bool) or not isinstance(value, int):
    raise ReferenceFileError(f"{source}: config field {field} is {value!r}; a memcodes MLP "
                             "tokenizer needs a whole number there")
  return value


def config_from_reference(hub_config: Mapping[str, Any], source: str) -> MLPVQConfig:
  """The reference VQVAE's constructor arguments (a hub config.json) -> MLPVQConfig."""
  if not isinstance(hub_config, Mapping):
    raise ReferenceFileError(f"{source}: the config is {type(hub_config).__name__}, not a "
                             "JSON object")
  nested = hub_config.get("config")
  if isinstance(nested, Mapping):  # the reference's constructor then reads only that
    hub_config = nested
  unknown = sorted(set(hub_config) - set(_DEFAULTS) - set(_NO_EFFECT) - {"config"})
  if unknown:
    raise ReferenceFileError(f"{source}: config fields {unknown} are not arguments of the "
                             "reference's VQVAE (a DiVAE's or another model's config?)")
  enc_type = hub_config.get("enc_type", _DEFAULTS["enc_type"])
  dec_type = hub_config.get("dec_type", _DEFAULTS["dec_type"])
  for field, model_id in (("enc_type", enc_type), ("dec_type", dec_type)):
    try:
      parse_mlp_id(model_id)
    except UsageError as error:
      raise ReferenceFileError(f"{source}: config field {field}: {error} (this converter "
                               "reads the MLP tokenizers; ViT ones are not MLPs)") from None
  quant_type = hub_config.get("quant_type", _DEFAULTS["quant_type"])
  if quant_type != "memcodes":
    raise ReferenceFileError(f"{source}: config field quant_type is {quant_type!r}; this "
                             "converter reads memcodes tokenizers only")
  if hub_config.get("n_labels") is not None:
    raise ReferenceFileError(f"{source}: config field n_labels is {hub_config['n_labels']!r}; "
                             "class-id inputs (semantic segmentation) are not feature vectors")
  if hub_config.get("undo_std"):
    raise ReferenceFileError(f"{source}: config field undo_std is true: the reference would "
                             "de-standardize its input as an ImageNet image, which a feature "
                             "vector is not")
  fields = dict(in_channels=_integer(hub_config, "n_channels", source),
                codebook_size=_integer(hub_config, "codebook_size", source),
                num_codebooks=_integer(hub_config, "num_codebooks", source),
                latent_dim=_integer(hub_config, "latent_dim", source),
                encoder=enc_type, decoder=dec_type)
  try:
    return MLPVQConfig(**fields)
  except UsageError as error:
    raise ReferenceFileError(f"{source}: {error}") from None


# Tensors ------------------------------------------------------------------------------------


class Entry(NamedTuple):
  reference: str                # the state dict's name
  path: tuple[str | int, ...]   # the fourm parameter's path in MLPVQ
  layout: str                   # "linear" [out, in], "conv1x1" [out, in, 1, 1], or "same"


def tensor_map(config: MLPVQConfig) -> list[Entry]:
  """Every tensor of the reference's state dict and where it goes."""
  entries = []

  def dense(reference: str, path: tuple, layout: str = "linear") -> None:
    entries.append(Entry(f"{reference}.weight", (*path, "kernel"), layout))
    entries.append(Entry(f"{reference}.bias", (*path, "bias"), "same"))

  for part, spec in (("encoder", config.encoder_spec), ("decoder", config.decoder_spec)):
    dense(f"{part}.linear_in", (part, "linear_in"))
    for i in range(spec.num_blocks):
      dense(f"{part}.blocks.{i}.block.0", (part, "blocks", i, "fc1"))
      dense(f"{part}.blocks.{i}.block.2", (part, "blocks", i, "fc2"))
      entries.append(Entry(f"{part}.layernorms.{i}.weight", (part, "layernorms", i, "scale"),
                           "same"))
      entries.append(Entry(f"{part}.layernorms.{i}.bias", (part, "layernorms", i, "bias"),
                           "same"))
    dense(f"{part}.linear_out", (part, "linear_out"))
  dense("quant_proj", ("quant_proj",), "conv1x1")
  dense("post_quant_proj", ("post_quant_proj",), "conv1x1")
  entries.append(Entry("quantize.codes", ("quantize", "codes"), "same"))
  entries.append(Entry("quantize.to_k.weight", ("quantize", "to_k"), "same"))
  entries.append(Entry("quantize.to_v.weight", ("quantize", "to_v"), "same"))
  return entries


def reference_shape(entry: Entry, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The reference's shape of the tensor that is `shape` here."""
  if entry.layout == "linear":
    return shape[::-1]
  if entry.layout == "conv1x1":
    return (*shape[::-1], 1, 1)
  return shape


def to_fourm(entry: Entry, array: np.ndarray) -> np.ndarray:
  if entry.layout == "linear":
    return array.T
  if entry.layout == "conv1x1":
    return array[:, :, 0, 0].T
  return array


def _listing(names: list[str]) -> str:
  return f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}"


def params_from_reference(tensors: Mapping[str, np.ndarray], config: MLPVQConfig,
                          source: str) -> MLPVQ:
  """The reference's state dict (name -> array) -> an MLPVQ holding its weights in float32.

  Every tensor must be there, with the shape `config` implies, and no other; the error
  names the tensors that are not.
  """
  abstract = nnx.eval_shape(lambda: MLPVQ(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  entries = tensor_map(config)
  if {e.path for e in entries} != set(flat):  # a bug here, not the user's file
    raise AssertionError(f"tensor_map and MLPVQ disagree: "
                         f"{sorted(map(str, {e.path for e in entries} ^ set(flat)))}")
  expected, present = {e.reference for e in entries}, set(tensors)
  missing, unexpected = sorted(expected - present), sorted(present - expected)
  if missing or unexpected:
    parts = ([f"{len(missing)} tensors missing ({_listing(missing)})"] if missing else []) + \
        ([f"{len(unexpected)} unexpected ({_listing(unexpected)})"] if unexpected else [])
    raise ReferenceFileError(f"{source}: not the state dict of the tokenizer its config "
                             f"describes: {'; '.join(parts)}")
  for entry in entries:
    array = np.asarray(tensors[entry.reference])
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
      raise ReferenceFileError(f"{source}: tensor {entry.reference!r} is {array.dtype}, not a "
                               "floating-point parameter")
    target = flat[entry.path]
    shape = reference_shape(entry, tuple(target.get_value().shape))
    if array.shape != shape:
      raise ReferenceFileError(f"{source}: tensor {entry.reference!r} is {list(array.shape)}, "
                               f"the config's tokenizer has {list(shape)} there")
    target.set_value(jnp.asarray(to_fourm(entry, array.astype(np.float32))))
  return nnx.merge(graphdef, state)


def load_reference(source: str) -> MLPVQ:
  """A reference tokenizer folder (config.json + model.safetensors) or hub id -> MLPVQ."""
  from fourm.interop.convert import resolve_source
  if os.path.isfile(source):
    raise UsageError(f"{source}: give the folder holding config.json and model.safetensors "
                     "(a tokenizer's safetensors file does not carry its config)")
  path, hub_config, _ = resolve_source(source)
  config = config_from_reference(hub_config, os.path.join(os.path.dirname(path),
                                                           "config.json"))
  with SafetensorsReader(path) as reader:
    tensors = {name: reader.read(name) for name in reader.names()}
  return params_from_reference(tensors, config, path)


def is_mlp_config(hub_config: Mapping[str, Any]) -> bool:
  """A reference tokenizer config this module converts (MLP encoder, memcodes)."""
  return ("MLP" in str(hub_config.get("enc_type", ""))
          or hub_config.get("quant_type") == "memcodes")


def check_modality(modality: str, config: MLPVQConfig, where: str) -> None:
  """The raw modality an MLP tokenizer is said to read must be a registered vector of
  its input size."""
  from fourm import modalities
  raw = modalities.RAW_MODALITIES.get(modality)
  if raw is None or raw.form != modalities.Form.VECTOR:
    vectors = sorted(name for name, spec in modalities.RAW_MODALITIES.items()
                     if spec.form == modalities.Form.VECTOR)
    raise UsageError(f"{where}: modality {modality!r} is not a raw vector modality of the "
                     f"registry (an MLP tokenizer reads one of {vectors})")
  if raw.channels is not None and raw.channels != config.in_channels:
    raise UsageError(f"{where}: the tokenizer reads {config.in_channels}-channel vectors; "
                     f"{modality} has {raw.channels} channels")


def save_mlp_tokenizer(model: MLPVQ, workdir: str, *, modality: str | None = None,
                       converted_from: Mapping[str, Any] | None = None) -> None:
  """Writes `model` as a workdir `load_mlp_tokenizer` (and `fourm tokenize`) reads: its
  parameters at step 0, its config under "mlp_tokenizer" in the checkpoint's metadata,
  and, when known, the raw modality it reads under "modality"."""
  from fourm.interop.convert import save_converted
  from fourm.workdir import make_workdir
  config = model.config
  if modality is not None:
    check_modality(modality, config, workdir)
  meta: dict[str, Any] = {"step": 0, "mlp_tokenizer": config.to_dict()}
  if modality is not None:
    meta["modality"] = modality
  if converted_from is not None:
    meta["converted_from"] = dict(converted_from)
  make_workdir(workdir)
  save_converted(workdir, {"params": nnx.state(model, nnx.Param)}, meta)


def import_reference_mlp(source: str, workdir: str, *, modality: str | None = None,
                         resolved=None) -> dict[str, Any]:
  """Converts a reference MLP tokenizer into a fourm workdir (parameters only, step 0)
  that `load_mlp_tokenizer` reads; returns a summary. `modality`: the raw modality it
  reads (dinov2_global, ...), recorded for `fourm tokenize`; the published hub ids (and
  folders named like them) say it themselves."""
  from fourm.interop.convert import resolve_source
  from fourm.interop.tokenizers import modality_for
  path, hub_config, kind = resolved or resolve_source(source)
  config = config_from_reference(hub_config, os.path.join(os.path.dirname(path),
                                                           "config.json"))
  modality = modality_for(source, modality)
  if modality is not None:
    check_modality(modality, config, source)
  with SafetensorsReader(path) as reader:
    dtypes = sorted(reader.dtypes())
    tensors = {name: reader.read(name) for name in reader.names()}
  model = params_from_reference(tensors, config, path)
  params = nnx.state(model, nnx.Param)
  save_mlp_tokenizer(model, workdir, modality=modality, converted_from={
      "source": source, "kind": kind, "file": os.path.abspath(path), "dtypes": dtypes,
      "reference_config": dict(hub_config)})
  return dict(workdir=os.path.abspath(workdir), file=path, dtypes=dtypes, config=config,
              modality=modality,
              parameters=sum(v.get_value().size for _, v in nnx.to_flat_state(params)))


def load_mlp_tokenizer(workdir: str, *, name: str = "features"):
  """The `MLPTokenizer` of a workdir `import_reference_mlp` (or `save_mlp_tokenizer`)
  wrote; `name` is the field its input errors name (the raw modality it reads).
  `tokenizers_vq.global_tokens.load_mlp_tokenizer`, which `fourm tokenize` uses."""
  from tokenizers_vq.global_tokens import load_mlp_tokenizer as load
  return load(workdir, name=name)
