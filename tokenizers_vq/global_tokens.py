"""Global tokens: K ids per sample made from one raw feature vector, and back.

4M-21's tok_dinov2_global and tok_imagebind_global (`modalities.Kind.GLOBAL`) are 16 ids
of 8192 per image, made by an MLP VQ-VAE (`tokenizers_vq.mlp_vq`) from the image's
global feature vector, the raw modality they are made from (dinov2_global: DINOv2's
normalized class token, float32 [768], as `fourm pseudolabel` writes it).

`GlobalTokenizer` is such a tokenizer bound to the token modality it makes: what
`fourm tokenize` writes with (int32 [K] per record), what generation tokenizes a raw
vector condition with and decodes generated ids back to the feature vector with
(`tokenizers_vq/detokenize.py`). It has the members of the grid protocol that code
holding "a tokenizer" calls (`raw_name`, `num_codes`, `tokenize`, `detokenize`) but no
grid, so it is never taken for a grid tokenizer. `check` compares an MLP tokenizer's
config with the registry's entry for the modality it is to make; `load_mlp_tokenizer`
reads the workdir `fourm convert --from reference` writes (its checkpoint's metadata
holds the config under "mlp_tokenizer", and the raw modality under "modality" when the
converter knew it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from flax import nnx

from fourm import modalities
from fourm.checkpoint import Checkpoints, on_one_device
from fourm.errors import RecordError, UsageError
from tokenizers_vq.mlp_vq import MLPVQ, MLPTokenizer, MLPVQConfig


def global_modalities() -> list[str]:
  """The registry's global-token modalities, in registration order."""
  return [spec.name for spec in modalities.MODALITIES.values()
          if spec.kind == modalities.Kind.GLOBAL and not spec.derived]


def global_modality_of(raw_name: str) -> str:
  """The global-token modality made from raw modality `raw_name` (dinov2_global ->
  tok_dinov2_global); a KeyError when the registry has not exactly one."""
  found = [name for name in global_modalities()
           if modalities.get(name).source.name == raw_name]
  if len(found) != 1:
    raise KeyError(f"raw modality {raw_name!r} has {len(found)} global-token modalities "
                   f"{found}; expected one")
  return found[0]


def check(name: str, config: MLPVQConfig, where: str) -> None:
  """An MLP tokenizer with `config` must make global-token modality `name` as the registry
  has it: read vectors of its raw modality's channels, give as many ids per vector as the
  modality has tokens, and stay inside its vocabulary. `where` (the workdir) starts the
  UsageError that says otherwise."""
  label = (f"an MLP tokenizer of {config.in_channels}-channel vectors into "
           f"{config.num_codebooks} ids of {config.codebook_size}")
  if not modalities.is_known(name) or modalities.get(name).kind != modalities.Kind.GLOBAL:
    raise UsageError(f"{where}: {label}, which make global tokens "
                     f"({', '.join(global_modalities())}), not {name}")
  spec = modalities.get(name)
  raw = spec.source
  if raw.form != modalities.Form.VECTOR:
    raise UsageError(f"{where}: {name} is made from {raw.name}, which is not stored as a "
                     "vector; an MLP tokenizer reads vectors")
  if raw.channels is not None and config.in_channels != raw.channels:
    raise UsageError(f"{where}: {label}; {name} is made from {raw.name}, whose vectors have "
                     f"{raw.channels} channels in the modality registry")
  if config.num_codebooks != spec.max_length:
    raise UsageError(f"{where}: {label}; {name} has {spec.max_length} tokens per sample in "
                     "the modality registry")
  if config.codebook_size > spec.vocab_size:
    raise UsageError(f"{where}: {label}; its vocabulary of {config.codebook_size} does not "
                     f"fit {name}'s {spec.vocab_size} in the modality registry")


class GlobalTokenizer:
  """An `MLPTokenizer` making global-token modality `name`: raw vectors [C] of its raw
  modality <-> int32 ids [K]. Build it through `check` (as `fourm tokenize` and
  generation load it: tokenizers_vq.tokenize.load_tokenizers)."""

  def __init__(self, name: str, mlp: MLPTokenizer):
    self.name = name
    self.mlp = mlp
    self.config: MLPVQConfig = mlp.config

  @property
  def raw_name(self) -> str:
    return modalities.get(self.name).source.name

  @property
  def num_codes(self) -> int:
    """Ids it uses: [0, num_codes)."""
    return self.config.codebook_size

  @property
  def num_tokens(self) -> int:
    """Ids per vector (K)."""
    return self.config.num_codebooks

  @property
  def channels(self) -> int:
    """The length of the vectors it reads (C)."""
    return self.config.in_channels

  def _vector(self, raw) -> np.ndarray:
    array = np.asarray(raw)
    if array.ndim == 2 and array.shape[0] == 1:
      array = array[0]
    if array.ndim != 1 or array.shape[0] != self.channels:
      raise RecordError(f"the {self.name} tokenizer reads one vector [{self.channels}] per "
                        f"sample, got shape {list(array.shape)}", field=self.raw_name)
    return array

  def tokenize(self, raws: Sequence[np.ndarray], layout: modalities.Layout | None = None, *,
               batch_size: int | None = None) -> np.ndarray:
    """One raw vector [C] per sample -> int32 ids [N, K]. Batches are padded to
    `batch_size` (repeating the last vector), so the encoder compiles once for that size.
    `layout` is the grid protocol's and changes nothing: a vector has no image size."""
    del layout
    if not len(raws):
      return np.zeros((0, self.num_tokens), np.int32)
    vectors = [self._vector(raw) for raw in raws]
    other = [v.dtype for v in vectors if v.dtype.kind != "f" and v.dtype.name != "bfloat16"]
    if other:
      raise RecordError(f"the {self.name} tokenizer reads float vectors, got {other[0]}",
                        field=self.raw_name)
    batch = np.stack([v.astype(np.float32) for v in vectors])
    count = len(batch)
    size = batch_size or count
    ids = []
    for start in range(0, count, size):
      chunk = batch[start:start + size]
      if len(chunk) < size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
      ids.append(self.mlp.tokenize(chunk))
    return np.concatenate(ids)[:count]

  def detokenize(self, ids) -> np.ndarray:
    """Ids [N, K] (or [N, ...] holding K each) -> the raw vectors, float32 [N, C]."""
    ids = np.asarray(ids)
    if ids.ndim >= 1 and ids.size == ids.shape[0] * self.num_tokens:
      ids = ids.reshape(ids.shape[0], self.num_tokens)
    return self.mlp.detokenize(ids)


# Workdirs -------------------------------------------------------------------------------------


def checkpoint_meta(workdir: str) -> dict | None:
  """The newest readable checkpoint metadata of `workdir`; None without checkpoints."""
  if not os.path.isdir(os.path.join(os.path.abspath(workdir), "checkpoints")):
    return None
  checkpoints = Checkpoints(workdir, every=1, keep=1, async_save=False, owner=False)
  try:
    return checkpoints.latest_meta()
  finally:
    checkpoints.close()


def load_mlp_tokenizer(workdir: str, *, name: str = "features") -> MLPTokenizer:
  """The `MLPTokenizer` of an MLP tokenizer workdir (`fourm convert --from reference`,
  `fourm.interop.tokenizer_mlp.save_mlp_tokenizer`); `name` is the field its input
  errors name (the raw modality it reads)."""
  checkpoints = Checkpoints(workdir, every=1, keep=1, async_save=False, owner=False)
  try:
    meta = checkpoints.latest_meta()
    if meta is None or "mlp_tokenizer" not in meta:
      raise UsageError(f"{workdir}: holds no converted MLP tokenizer (fourm convert --from "
                       "reference writes one)")
    try:
      config = MLPVQConfig.from_dict(meta["mlp_tokenizer"])
    except UsageError as error:
      raise UsageError(f"{workdir}: {error}") from None
    abstract = nnx.eval_shape(lambda: MLPVQ(config, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)
    found = checkpoints.restore_latest_items(on_one_device({"params": params}))
  finally:
    checkpoints.close()
  if found is None:
    raise UsageError(f"{workdir}: no checkpoint could be read")
  return MLPTokenizer(nnx.merge(graphdef, found[0]["params"]), name=name)
