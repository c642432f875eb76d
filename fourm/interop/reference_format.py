"""The reference 4M's checkpoint format, as data: its modality names, its config, and
where each of its tensors lives in fourm's parameters.

The reference (apple/ml-4m, `fourm.models.fm.FM`) saves a PyTorch state dict. Tensor
by tensor, against fourm's `FourM` parameters:

* every `nn.Linear` weight [out, in] is a fourm `Dense` kernel [*in_axes, *out_axes]:
  `kernel = weight.T.reshape(kernel.shape)` (q, k, v and heads are the same row-major
  blocks on both sides); `decoder_proj_context.bias` is copied;
* LayerNorm `weight` is fourm's `scale`. Its `bias` is a zero buffer in the bias-free
  (`norm_bias=False`) models every published checkpoint is: checked to be zero and
  recomputed, never stored;
* `*.pos_emb` are fixed sin-cos buffers: fourm recomputes them; the file's are checked
  against the recomputation (to 1e-5) so that learned or interpolated positions are
  refused rather than silently replaced. The global tokens (tok_dinov2_global,
  tok_imagebind_global) learn theirs: [1, N, D] parameters, fourm's [N, D] `pos_emb`;
* t5_caption's `emb_proj` is a biased Linear (4096 -> D), like `decoder_proj_context`;
* `mod_emb` [1, 1, D] and `mask_token` [1, 1, D] are fourm's [D] vectors. The decoder's
  `mod_emb` of a modality that is also an input is the encoder's when the model shares
  them (`share_modality_embeddings`, the reference default): checked equal, stored once;
* a decoder modality's `token_emb.weight` (teacher-forcing inputs of sequences) and its
  `to_logits.weight` (the output head): the hub class `FM` builds them untied
  (`share_embedding=False`), training runs tie them. Equal in the file -> a tied fourm
  model (`tie_output_heads=True`); different -> untied, both kept.
Nothing else may be in the file: an unknown tensor is an error, as is a missing one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from fourm import modalities
from fourm.interop.safetensors_file import ReferenceFileError
from fourm.models.config import PRESETS, FourMConfig

Kind = modalities.Kind

# Architecture fields of the reference config that fourm's model fixes: the value every
# published checkpoint has, which a file must have to be converted.
FIXED_ARCHITECTURE = {
    "act_layer": "SiLU", "gated_mlp": True, "qkv_bias": False, "proj_bias": False,
    "mlp_bias": False, "norm_bias": False, "qk_norm": False, "decoder_causal_mask": False,
    "decoder_sep_mask": True, "num_register_tokens": 0,
}
# Fields with no effect on the weights or the forward pass.
IGNORED_FIELDS = ("use_act_checkpoint", "drop_path_rate_encoder", "drop_path_rate_decoder",
                  "shared_drop_path")
MODEL_FIELDS = ("dim", "encoder_depth", "decoder_depth", "num_heads", "mlp_ratio",
                "image_size", "patch_size", "domains_in", "domains_out",
                "share_modality_embeddings")
POSITION_TOLERANCE = 1e-5
REFERENCE_SEQUENCE_POSITIONS = 512   # its max_sincos_pos_emb


# Modality names ---------------------------------------------------------------------------

def fourm_modality(domain: str, image_size: int | None = None) -> tuple[str, int | None]:
  """A reference domain name -> (fourm modality, the resolution it names or None):
  'tok_rgb@224' -> ('tok_rgb', 224), 'caption' -> ('caption', None). In a model whose
  image_size is given, a grid at another size is fourm's resolution variant:
  'tok_rgb@448' with image_size 224 -> ('tok_rgb@448', 448)."""
  name, _, resolution = domain.partition("@")
  if name not in modalities.MODALITIES:
    raise KeyError(domain)
  if not resolution:
    return name, None
  if not resolution.isdigit():
    raise KeyError(domain)
  if image_size is not None and int(resolution) != image_size:
    try:
      name = modalities.at_resolution(name, int(resolution)).name
    except ValueError:
      raise KeyError(domain) from None
  return name, int(resolution)


def reference_domain(name: str, layout: modalities.Layout) -> str:
  """fourm modality -> the reference's domain name at `layout` (inverse of the above)."""
  spec = modalities.get(name)
  return (f"{spec.base_name}@{spec.image_size(layout)}" if spec.positions == "2d"
          else name)


# The config -------------------------------------------------------------------------------

def parse_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
  """The config in a safetensors header, read the way the reference's `load_safetensors`
  reads it: every value is YAML ('None' meaning null)."""
  parsed = {}
  for key, value in metadata.items():
    if not isinstance(value, str):
      parsed[key] = value
      continue
    try:
      parsed[key] = yaml.safe_load(value.replace("None", "null"))
    except yaml.YAMLError:
      parsed[key] = value
  return parsed


@dataclasses.dataclass(frozen=True)
class ReferenceModel:
  """What a reference config says about the model, in fourm's terms."""
  modality_names: tuple[str, ...]
  layout: modalities.Layout
  architecture: FourMConfig
  domains: Mapping[str, str]          # fourm modality -> the reference's domain name
  config: Mapping[str, Any]           # the reference config itself, for the export
  input_only: tuple[str, ...] = ()    # inputs only here, though fourm's specs allow targets


def read_config(config: Mapping[str, Any], source: str) -> ReferenceModel:
  """Checks a reference config against what fourm can build; one error naming the field."""
  missing = [f for f in MODEL_FIELDS if f not in config and f != "share_modality_embeddings"]
  if missing:
    raise ReferenceFileError(f"{source}: the config has no {', '.join(missing)}: not a 4M "
                             "model's (a tokenizer's?)")
  for field, value in FIXED_ARCHITECTURE.items():
    if field in config and config[field] != value:
      raise ReferenceFileError(
          f"{source}: config field {field} is {config[field]!r}; fourm's model is the "
          f"reference's fm_*_swiglu_nobias architecture ({field}={value!r}), as every "
          "published checkpoint is")
  unknown = sorted(set(config) - set(MODEL_FIELDS) - set(FIXED_ARCHITECTURE)
                   - set(IGNORED_FIELDS))
  if unknown:
    raise ReferenceFileError(f"{source}: config fields {unknown} are not ones the "
                             "converter knows")
  if float(config["mlp_ratio"]) != 4.0:
    raise ReferenceFileError(f"{source}: config field mlp_ratio is {config['mlp_ratio']}; "
                             "fourm's presets use 4")
  domains_in, domains_out = list(config["domains_in"]), list(config["domains_out"])
  image_size, patch_size = int(config["image_size"]), int(config["patch_size"])
  names, domains, input_only = [], {}, []
  for domain in domains_in + [d for d in domains_out if d not in domains_in]:
    try:
      # A grid at another size than image_size (the super-resolution model's @448
      # beside its @224) is a resolution variant: 'tok_rgb@448'.
      name, _ = fourm_modality(domain, image_size)
    except KeyError:
      raise ReferenceFileError(f"{source}: modality {domain!r} is not in fourm's registry "
                               f"(known: {sorted(modalities.MODALITIES)}, a grid at any "
                               "NAME@RESOLUTION)") from None
    spec = modalities.get(name)
    roles = {modalities.Role.INPUT} if domain in domains_in else set()
    roles |= {modalities.Role.TARGET} if domain in domains_out else set()
    # A model may read a modality it does not predict (the super-resolution model reads
    # caption); it may not predict one fourm's spec cannot, or only predict an input.
    predicted_not_read = roles == {modalities.Role.TARGET} and spec.can_input
    if not roles <= set(spec.roles) or predicted_not_read:
      raise ReferenceFileError(
          f"{source}: modality {domain!r} is {'an input' if domain in domains_in else ''}"
          f"{' and ' if len(roles) == 2 else ''}{'a target' if domain in domains_out else ''}"
          f" there; fourm's {name!r} is {'+'.join(sorted(r.value for r in spec.roles))}")
    if roles == {modalities.Role.INPUT} and spec.can_target:
      input_only.append(name)
    names.append(name)
    domains[name] = domain
  try:
    layout = modalities.Layout(image_size, patch_size)
    architecture = FourMConfig(
        dim=int(config["dim"]), encoder_depth=int(config["encoder_depth"]),
        decoder_depth=int(config["decoder_depth"]), num_heads=int(config["num_heads"]),
        share_modality_embeddings=bool(config.get("share_modality_embeddings", True)))
  except ValueError as error:
    raise ReferenceFileError(f"{source}: {error}") from None
  return ReferenceModel(tuple(names), layout, architecture, domains, dict(config),
                        tuple(input_only))


def reference_config(model_names: Sequence[str], input_names: Sequence[str],
                     target_names: Sequence[str], layout: modalities.Layout,
                     architecture: FourMConfig) -> dict[str, Any]:
  """The config the reference's `FM(config)` builds this model from."""
  del model_names
  return dict(
      domains_in=[reference_domain(n, layout) for n in input_names],
      domains_out=[reference_domain(n, layout) for n in target_names],
      dim=architecture.dim, encoder_depth=architecture.encoder_depth,
      decoder_depth=architecture.decoder_depth, num_heads=architecture.num_heads,
      mlp_ratio=float(architecture.mlp_ratio), image_size=layout.resolution,
      patch_size=layout.patch_size,
      share_modality_embeddings=architecture.share_modality_embeddings,
      **FIXED_ARCHITECTURE, use_act_checkpoint=False)


def metadata_of(config: Mapping[str, Any]) -> dict[str, str]:
  """The config as safetensors metadata (str -> str), which `parse_metadata` reads back."""
  return {key: str(value) for key, value in config.items()}


def preset_overrides(architecture: FourMConfig) -> dict[str, Any]:
  """config.model fields for this architecture: the matching preset, else base + sizes."""
  sizes = ("dim", "encoder_depth", "decoder_depth", "num_heads")
  for name, preset in PRESETS.items():
    if all(getattr(preset(), f) == getattr(architecture, f) for f in sizes):
      return dict(size=name)
  return dict(size="base", **{f: getattr(architecture, f) for f in sizes})


# The tensors ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Stored:
  """A reference tensor that is a fourm parameter (`path`), reshaped / transposed."""
  reference: str
  path: tuple
  linear_inputs: int = 0     # > 0: an nn.Linear weight; the kernel's leading input axes
  vector: bool = False       # [1, 1, D] on the reference side, [D] in fourm
  batched: bool = False      # [1, N, D] on the reference side, [N, D] in fourm


@dataclasses.dataclass(frozen=True)
class Derived:
  """A reference tensor fourm does not store: recomputed (export) and checked (import).
  `same_as` names the stored tensor it must equal; otherwise `value()` computes it."""
  reference: str
  why: str
  same_as: str | None = None
  value: Any = None          # () -> np.ndarray


def to_fourm(entry: Stored, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if entry.linear_inputs:
    return array.T.reshape(shape)
  return array.reshape(shape)


def reference_shape(entry: Stored, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The reference tensor's shape for a fourm parameter of `shape`."""
  if entry.linear_inputs:
    n_in = math.prod(shape[:entry.linear_inputs])
    return (math.prod(shape) // n_in, n_in)
  if entry.batched:
    return (1, *shape)
  return (1, 1, shape[-1]) if entry.vector else tuple(shape)


def to_reference(entry: Stored, array: np.ndarray) -> np.ndarray:
  if entry.linear_inputs:
    n_in = math.prod(array.shape[:entry.linear_inputs])
    return array.reshape(n_in, -1).T
  if entry.batched:
    return array[None]
  return array.reshape((1, 1, -1)) if entry.vector else array


def tensor_map(model_names: Sequence[str], input_names: Sequence[str],
               target_names: Sequence[str], domains: Mapping[str, str],
               layout: modalities.Layout, architecture: FourMConfig,
               tied_heads: bool) -> Iterator[Stored | Derived]:
  """Every tensor of the reference state dict of this model, in the reference's names."""
  from fourm.models.embeddings import positions_for  # the models layer, below interop
  from fourm.nn.positions import sincos_1d
  dim = architecture.dim
  yield Stored("mask_token", ("mask_token",), vector=True)

  def norm(prefix: str, path: tuple):
    yield Stored(f"{prefix}.weight", path + ("scale",))
    yield Derived(f"{prefix}.bias", "zero buffer of a bias-free LayerNorm",
                  value=lambda: np.zeros(dim, np.float32))

  def attention(prefix: str, path: tuple, fused: str):
    yield Stored(f"{prefix}.{fused}.weight", path + (fused, "kernel"), linear_inputs=1)
    yield Stored(f"{prefix}.proj.weight", path + ("proj", "kernel"), linear_inputs=2)

  def mlp(prefix: str, path: tuple):
    for fc in ("fc1", "fc2", "fc3"):
      yield Stored(f"{prefix}.{fc}.weight", path + (fc, "kernel"), linear_inputs=1)

  for i in range(architecture.encoder_depth):
    p, path = f"encoder.{i}", ("encoder", i)
    yield from norm(f"{p}.norm1", path + ("norm1",))
    yield from attention(f"{p}.attn", path + ("attn",), "qkv")
    yield from norm(f"{p}.norm2", path + ("norm2",))
    yield from mlp(f"{p}.mlp", path + ("mlp",))
  for i in range(architecture.decoder_depth):
    p, path = f"decoder.{i}", ("decoder", i)
    for n in ("norm1", "query_norm", "context_norm", "norm2"):
      yield from norm(f"{p}.{n}", path + (n,))
    yield from attention(f"{p}.self_attn", path + ("self_attn",), "qkv")
    yield Stored(f"{p}.cross_attn.q.weight", path + ("cross_attn", "q", "kernel"),
                 linear_inputs=1)
    yield from attention(f"{p}.cross_attn", path + ("cross_attn",), "kv")
    yield from mlp(f"{p}.mlp", path + ("mlp",))
  yield from norm("encoder_norm", ("encoder_norm",))
  yield from norm("decoder_norm", ("decoder_norm",))
  yield Stored("decoder_proj_context.weight", ("decoder_proj_context", "kernel"),
               linear_inputs=1)
  yield Stored("decoder_proj_context.bias", ("decoder_proj_context", "bias"))

  def positions(name: str, prefix: str, path: tuple):
    spec = modalities.get(name)
    if spec.positions == "learned":
      return Stored(f"{prefix}.pos_emb", path + ("pos_emb",), batched=True)
    why = "fixed sin-cos positions"
    if spec.positions == "2d":
      return Derived(f"{prefix}.pos_emb", why, value=lambda: positions_for(
          spec, layout, dim).astype(np.float32)[None])
    # The reference builds a 512-long 1D table and means to cut it to the sequence's
    # length, but cuts the batch axis ([1, 512, D][:256]): its buffer keeps all 512.
    length = max(REFERENCE_SEQUENCE_POSITIONS, spec.num_tokens(layout))
    return Derived(f"{prefix}.pos_emb", why,
                   value=lambda: sincos_1d(length, dim).astype(np.float32)[None])

  for name in input_names:
    spec, p = modalities.get(name), f"encoder_embeddings.{domains[name]}"
    path = ("encoder_embeddings", name)
    yield Stored(f"{p}.mod_emb", path + ("mod_emb",), vector=True)
    yield positions(name, p, path)
    if spec.kind == Kind.PIXELS:
      yield Stored(f"{p}.proj.weight", path + ("proj", "kernel"), linear_inputs=1)
    elif spec.kind in (Kind.IMAGE_TOKENS, Kind.GLOBAL, Kind.SEQUENCE):
      yield Stored(f"{p}.token_emb.weight", path + ("token_emb", "embedding"))
    elif spec.kind == Kind.SEQUENCE_EMBEDDINGS:
      yield Stored(f"{p}.emb_proj.weight", path + ("proj", "kernel"), linear_inputs=1)
      yield Stored(f"{p}.emb_proj.bias", path + ("proj", "bias"))
    else:
      raise ReferenceFileError(f"modality {name!r} ({spec.kind}): no reference layout for "
                               "this kind yet")
  for name in target_names:
    p, path = f"decoder_embeddings.{domains[name]}", ("decoder_embeddings", name)
    if architecture.share_modality_embeddings and name in input_names:
      yield Derived(f"{p}.mod_emb", "the encoder's modality embedding, shared",
                    same_as=f"encoder_embeddings.{domains[name]}.mod_emb")
    else:
      yield Stored(f"{p}.mod_emb", path + ("mod_emb",), vector=True)
    yield positions(name, p, path)
    yield Stored(f"{p}.token_emb.weight", path + ("token_emb", "embedding"))
    if tied_heads:
      yield Derived(f"{p}.to_logits.weight", "the output head, tied to the token table",
                    same_as=f"{p}.token_emb.weight")
    else:
      yield Stored(f"{p}.to_logits.weight", path + ("to_logits", "embedding"))
