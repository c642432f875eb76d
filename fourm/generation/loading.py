"""What generation needs from disk: a trained model from a `fourm train` workdir, and the
tokenizers that made its token modalities.

The checkpoint holds the whole train state and, beside it, the run's config; the model is
rebuilt from that config and its parameters restored onto one device. Which tokenizer
made which modality is recorded by `fourm tokenize` in the token datasets the run read
(`config.data.paths`): a VQ-VAE workdir per modality, or the ground-truth patch
quantisers. `--tokenizers tok_x=WORKDIR` overrides or completes that.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from fourm import modalities
from fourm.data import patch_tokens, records
from fourm.errors import UsageError
from fourm.checkpoint import Checkpoints
from fourm.train.optimizer import make_optimizer
from fourm.train.state import TrainState, model_factory


@dataclasses.dataclass
class TrainedModel:
  model: Any                     # fourm.models.fourm.FourM
  config: ml_collections.ConfigDict
  step: int
  workdir: str


def load_model(workdir: str) -> TrainedModel:
  """The model of the newest readable checkpoint in a `fourm train` workdir."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise UsageError(f"--checkpoint {workdir}: no checkpoints there (expected {directory}; "
                     "train a model with fourm train)")
  checkpoints = Checkpoints(workdir, every=1, keep=1_000_000, async_save=False)
  try:
    meta = checkpoints.latest_meta()
    if meta is None or "config" not in meta:
      raise UsageError(f"--checkpoint {workdir}: holds no readable 4M checkpoint")
    config = ml_collections.ConfigDict(meta["config"])
    if "modalities" not in config or "input_budget" not in config:
      raise UsageError(f"--checkpoint {workdir}: its checkpoint is not a 4M model's (a "
                       "tokenizer's? load those with --tokenizers)")
    build = model_factory(config)
    tx, _ = make_optimizer(config.optimizer, config.batch_size, config.total_steps)

    def init() -> TrainState:
      params = nnx.state(build(), nnx.Param)
      zero = jnp.zeros((), jnp.int32)
      return TrainState(step=zero, params=params, opt_state=tx.init(params),
                        nonfinite_streak=zero, nonfinite_total=zero)

    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        jax.eval_shape(init))
    restored = checkpoints.restore_latest(like)
  finally:
    checkpoints.close()
  if restored is None:
    raise UsageError(f"--checkpoint {workdir}: no checkpoint could be read")
  state, _ = restored
  model = nnx.merge(nnx.graphdef(nnx.eval_shape(build)), state.params)
  return TrainedModel(model=model, config=config, step=int(state.step),
                      workdir=os.path.abspath(workdir))


def _find_dataset(path: str, workdir: str) -> str | None:
  """A data path of the run's config: relative paths were relative to wherever training
  ran, so try here, then the workdir's ancestors."""
  if os.path.isabs(path):
    return path if os.path.isdir(path) else None
  bases = [os.getcwd()]
  parent = os.path.abspath(workdir)
  while os.path.dirname(parent) != parent:
    parent = os.path.dirname(parent)
    bases.append(parent)
  for base in bases:
    candidate = os.path.join(base, path)
    if os.path.isfile(os.path.join(candidate, records.INFO_FILE)):
      return candidate
  return None


def recorded_tokenizers(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """{tok_x: VQ-VAE workdir (str) or patch quantiser} as the run's token datasets record."""
  found: dict[str, Any] = {}
  for path in config.data.paths:
    location = _find_dataset(path, workdir)
    if location is None:
      continue
    job = records.DatasetInfo.load(location).metadata.get("job", {})
    if job.get("method") == "vqvae":
      for name, entry in job.get("tokenizers", {}).items():
        found[name] = entry["workdir"]
    elif job.get("method") == "ground-truth patches":
      for name in job.get("modalities", []):
        found[name] = patch_tokens.QUANTIZERS[name]
  return found


def load_tokenizers(config: ml_collections.ConfigDict, workdir: str,
                    overrides: Sequence[str] = ()) -> dict[str, Any]:
  """{tok_x: tokenizer} for the model's token-grid modalities: a `VQTokenizer` or a
  `PatchQuantizer`, checked against the model's layout and vocabularies."""
  from tokenizers_vq.tokenize import load_tokenizers as load_vq
  sources = recorded_tokenizers(config, workdir)
  for name, (path, tokenizer) in (load_vq(overrides).items() if overrides else ()):
    sources[name] = tokenizer
  layout = modalities.LAYOUTS[config.layout]
  loaded = {}
  for name, source in sources.items():
    if name not in config.modalities:
      continue
    tokenizer = load_vq([f"{name}={source}"])[name][1] if isinstance(source, str) else source
    check_tokenizer(name, tokenizer, layout)
    loaded[name] = tokenizer
  return loaded


def tokenizer_vocab_size(tokenizer) -> int:
  """How many codes a grid tokenizer (VQ-VAE or patch quantiser) has."""
  config = getattr(tokenizer, "config", None)
  return config.vocab_size if config is not None else tokenizer.num_ids


def check_tokenizer(name: str, tokenizer, layout: modalities.Layout) -> None:
  """A tokenizer must make the model's grid and fit its vocabulary."""
  spec = modalities.get(name)
  config = getattr(tokenizer, "config", None)
  grid = config.resolution // config.patch_size if config is not None else layout.grid
  vocab = tokenizer_vocab_size(tokenizer)
  if grid != layout.grid:
    raise UsageError(f"the {name} tokenizer makes a {grid}x{grid} grid; the model reads "
                     f"{layout.grid}x{layout.grid} ({layout.resolution} px, "
                     f"{layout.patch_size} px patches): it is not this model's tokenizer")
  if vocab > spec.vocab_size:
    raise UsageError(f"the {name} tokenizer has {vocab} codes, more than the model's "
                     f"vocabulary of {spec.vocab_size}: it is not this model's tokenizer")


def text_vocab_path(config: Mapping[str, Any]) -> str | None:
  return config.get("text_tokenizer") or None
