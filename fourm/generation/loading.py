"""What generation needs from disk: a trained model from a `fourm train` workdir, and the
tokenizers that made its token modalities.

The checkpoint holds the whole train state and, beside it, the run's config; the model is
rebuilt from that config and only its parameters are restored (the optimizer's state is
neither read nor rebuilt): onto one device, or, given a mesh, sharded by the run's
logical-axis table straight onto the mesh's devices. Which tokenizer made which modality
is recorded by `fourm tokenize` in the token datasets the run read (`config.data.paths`):
a VQ-VAE workdir per modality (for global tokens, an MLP tokenizer's), or the
ground-truth patch quantizers. `--tokenizers tok_x=WORKDIR` overrides or completes that.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding

from fourm import modalities
from fourm.data import patch_tokens, records
from fourm.errors import UsageError
from tokenizers_vq import global_tokens
from tokenizers_vq.global_tokens import GlobalTokenizer
from tokenizers_vq.grid import GridTokenizer
from fourm.nn import sharding
from fourm.train.state import layout as train_layout
from fourm.train.init_from import read_run_parameters
from fourm.train.state import vocab_sizes as run_vocab_sizes


@dataclasses.dataclass
class TrainedModel:
  model: Any                     # fourm.models.fourm.FourM
  config: ml_collections.ConfigDict
  step: int
  workdir: str


def load_model(workdir: str, mesh: jax.sharding.Mesh | None = None,
               rules: sharding.Rules | None = None) -> TrainedModel:
  """The model of the newest readable checkpoint in a `fourm train` workdir.

  Without `mesh` every parameter lands on this process's first device. With one, each
  is read straight into its `NamedSharding` under the logical-axis table `rules` (by
  default the run's own, `axis_rules`), so a model too big for one device never has to
  fit on one."""
  abstract_model, params, config, step = read_run_parameters(
      workdir, lambda abstract, config: _placed(abstract, mesh, axis_rules(config)
                                                if rules is None else rules),
      "--checkpoint")
  model = nnx.merge(nnx.graphdef(abstract_model), params)
  return TrainedModel(model=model, config=config, step=step,
                      workdir=os.path.abspath(workdir))


def _placed(params: nnx.State, mesh: jax.sharding.Mesh | None,
            rules: sharding.Rules) -> nnx.State:
  """The abstract parameters, each carrying the sharding it is to be restored into."""
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda v: _with_sharding(v, device), params, is_leaf=_is_variable)
  specs = sharding.partition_specs(params, mesh, rules)
  return jax.tree.map(lambda v, spec: _with_sharding(v, NamedSharding(mesh, spec)),
                      params, specs, is_leaf=_is_variable)


def _with_sharding(variable: nnx.Variable, where: jax.sharding.Sharding) -> nnx.Variable:
  value = variable.get_value()
  return variable.copy(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=where))


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def axis_rules(config: ml_collections.ConfigDict) -> sharding.Rules:
  """The logical-axis table the run trained with: the default one with the overrides its
  config names (`config.sharding.rules`; configs from before them have none). The axes
  are not checked against the mesh: generation may run on another mesh than training,
  and an axis it lacks just leaves that dimension replicated."""
  overrides = (config.get("sharding") or {}).get("rules")
  if not overrides:
    return sharding.DEFAULT_RULES
  return sharding.with_overrides(dict(overrides))


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


def run_datasets(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, ...]:
  """The run's datasets (config.data.paths) where they are now (`_find_dataset`); one
  that cannot be found is an error naming it."""
  found = []
  for path in config.data.paths:
    location = _find_dataset(path, workdir)
    if location is None:
      raise UsageError(f"the run {workdir} read the dataset {path}, which is not here (nor "
                       "under the workdir's parents)")
    found.append(location)
  return tuple(found)


def recorded_tokenizers(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """{tok_x: VQ-VAE workdir (str) or patch quantizer} as the run's token datasets record."""
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
        found[name] = patch_tokens.quantizer_for(name)
  return found


def load_tokenizers(config: ml_collections.ConfigDict, workdir: str,
                    overrides: Sequence[str] = ()) -> dict[str, Any]:
  """{tok_x: tokenizer} for the model's token-grid modalities (a `VQTokenizer` or a
  `PatchQuantizer`) and global-token modalities (a `GlobalTokenizer`), checked against
  the model's layout and vocabularies."""
  from tokenizers_vq.tokenize import load_tokenizers as load_vq
  sources = recorded_tokenizers(config, workdir)
  for name, (path, tokenizer) in (load_vq(overrides).items() if overrides else ()):
    sources[name] = tokenizer
  layout = train_layout(config)
  loaded = {}
  for name, source in sources.items():
    if name not in config.modalities:
      continue
    tokenizer = load_vq([f"{name}={source}"])[name][1] if isinstance(source, str) else source
    check_tokenizer(name, tokenizer, layout, run_vocab_sizes(config))
    loaded[name] = tokenizer
  return loaded


def check_tokenizer(name: str, tokenizer: GridTokenizer | GlobalTokenizer,
                    layout: modalities.Layout, vocab_sizes: Mapping[str, int] | None = None
                    ) -> None:
  """A tokenizer must make the model's grid (or its global tokens) and fit its
  vocabulary (the registry's, or the model's `vocab_sizes`)."""
  spec = modalities.get(name, vocab_sizes)
  if spec.kind == modalities.Kind.GLOBAL:
    if not isinstance(tokenizer, GlobalTokenizer):
      raise UsageError(f"the {name} tokenizer {type(tokenizer).__name__} is not a "
                       "global-token tokenizer (tokenizers_vq/global_tokens.py)")
    global_tokens.check(name, tokenizer.config, f"the {name} tokenizer")
    return
  if not isinstance(tokenizer, GridTokenizer):
    raise UsageError(f"the {name} tokenizer {type(tokenizer).__name__} is not a grid "
                     "tokenizer (tokenizers_vq/grid.py)")
  # A resolution variant (tok_rgb@448) is read at its own image size.
  layout = modalities.Layout(spec.image_size(layout), layout.patch_size)
  grid = tokenizer.grid_at(layout)
  if grid != spec.grid(layout):
    raise UsageError(f"the {name} tokenizer makes a {grid}x{grid} grid; the model reads "
                     f"{spec.grid(layout)}x{spec.grid(layout)} ({layout.resolution} px, "
                     f"{spec.patch_size or layout.patch_size} px patches): it is not this "
                     "model's tokenizer")
  if tokenizer.num_codes > spec.vocab_size:
    raise UsageError(f"the {name} tokenizer has {tokenizer.num_codes} codes, more than the "
                     f"model's vocabulary of {spec.vocab_size}: it is not this model's "
                     "tokenizer")


def text_vocab_path(config: Mapping[str, Any]) -> str | None:
  return config.get("text_tokenizer") or None
