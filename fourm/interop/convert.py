"""`fourm convert`: the reference's 4M checkpoints into fourm workdirs, and back.

Import: SOURCE (a local .safetensors file whose header carries the config, as the
reference's `load_safetensors` reads it; a folder or a Hugging Face hub id holding
`config.json` + `model.safetensors`, as its `FM.from_pretrained` reads them) -> a fourm
workdir whose one checkpoint (step 0) `fourm generate --checkpoint` and `fourm finetune
--init` load like any other. Tensors are read, converted and placed one at a time: the
process holds the model once (in float32) plus one tensor.

Export: a fourm workdir -> one .safetensors file with the reference's tensor names,
shapes and float32 dtype, and its config in the header, which the reference's
`load_safetensors` + `FM(config)` + `load_state_dict(strict=True)` take.

`reference_format.py` says where every tensor goes and why.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from fourm import modalities
from fourm.errors import UsageError
from fourm.interop import reference_format as fmt
from fourm.interop.safetensors_file import ReferenceFileError, SafetensorsReader, write_safetensors

HUB_FILES = ("config.json", "model.safetensors")
DEFAULT_BUDGETS = 128   # the reference's pre-training token budgets (input and target)


@flax.struct.dataclass
class ConvertedState:
  """What a converted workdir's checkpoint holds: the parameters, at step 0 (no
  optimizer state: a fine-tune or a further pre-training builds its own)."""
  step: jax.Array
  params: nnx.State


# Finding the file and its config ------------------------------------------------------------

def resolve_source(source: str) -> tuple[str, dict[str, Any], str]:
  """(safetensors path, reference config, what it is) for a file, folder or hub id."""
  if os.path.isfile(source):
    with SafetensorsReader(source) as reader:
      metadata = reader.metadata
    if not metadata:
      raise ReferenceFileError(f"{source}: its safetensors header has no config metadata "
                               "(a hub download keeps it in config.json: give the folder)")
    return source, fmt.parse_metadata(metadata), "file"
  if os.path.isdir(source):
    return (*_folder(source), "folder")
  if os.path.exists(source) or source.endswith(".safetensors") or source.count("/") != 1:
    raise UsageError(f"{source}: no such file or folder (a hub id is ORG/NAME)")
  return (*_folder(_download(source)), "hub")


def _folder(folder: str) -> tuple[str, dict[str, Any]]:
  paths = [os.path.join(folder, f) for f in HUB_FILES]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise ReferenceFileError(f"{folder}: a reference model folder holds {' and '.join(HUB_FILES)};"
                             f" {', '.join(os.path.basename(p) for p in missing)} missing")
  try:
    with open(paths[0]) as f:
      config = json.load(f)
  except ValueError as error:
    raise ReferenceFileError(f"{paths[0]}: not JSON ({error})") from None
  return paths[1], config


def _download(hub_id: str) -> str:
  """The hub snapshot's local folder (downloaded once, then from the cache)."""
  try:
    import huggingface_hub
  except ImportError:
    raise UsageError(f"{hub_id}: downloading from the hub needs huggingface_hub "
                     "(pip install huggingface_hub), or download the files yourself and "
                     "give the folder") from None
  try:
    return huggingface_hub.snapshot_download(hub_id, allow_patterns=list(HUB_FILES))
  except Exception as error:  # offline, unknown repo, gated: all the user's to fix
    raise UsageError(f"{hub_id}: cannot download it from the Hugging Face hub "
                     f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); without "
                     "network, copy its config.json and model.safetensors into a folder and "
                     "give that") from None


# Import -------------------------------------------------------------------------------------

def _train_config(model: fmt.ReferenceModel, tied: bool):
  from fourm.train.config import default_config
  config = default_config()
  config.modalities = model.modality_names
  config.input_only = model.input_only
  config.layout = f"{model.layout.resolution}/{model.layout.patch_size}"
  config.input_budget = config.target_budget = DEFAULT_BUDGETS
  config.model.update(fmt.preset_overrides(model.architecture))
  config.model.tie_output_heads = tied
  config.model.share_modality_embeddings = model.architecture.share_modality_embeddings
  config.data.paths = ()  # no token datasets: give generation --tokenizers
  config.reference_faithful = True
  return config


def _heads_are_tied(reader: SafetensorsReader, model: fmt.ReferenceModel,
                    target_names) -> bool:
  """Whether every decoder modality's token table equals its output head, bit for bit."""
  for name in target_names:
    prefix = f"decoder_embeddings.{model.domains[name]}"
    names = (f"{prefix}.token_emb.weight", f"{prefix}.to_logits.weight")
    if any(n not in reader.header for n in names):
      return True  # the missing one is reported with the others below
    if not np.array_equal(reader.read(names[0]), reader.read(names[1])):
      return False
  return True


def import_reference(source: str, workdir: str, log: Callable[[str], None] = print
                     ) -> dict[str, Any]:
  """Converts a reference checkpoint into a fourm workdir; returns a summary."""
  from fourm.train.state import model_factory
  from fourm.workdir import make_workdir
  path, reference_config, kind = resolve_source(source)
  model = fmt.read_config(reference_config, path)
  reader = SafetensorsReader(path)
  try:
    targets = [n for n in model.modality_names
               if modalities.get(n).can_target and n not in model.input_only]
    tied = _heads_are_tied(reader, model, targets)
    config = _train_config(model, tied)
    abstract = nnx.eval_shape(model_factory(config))
    entries = list(fmt.tensor_map(abstract.modality_names, abstract.input_names,
                                  abstract.target_names, model.domains, model.layout,
                                  model.architecture, tied))
    _check_names(reader, entries, path)
    flat = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
    dtypes = sorted(reader.dtypes())
    values, derived = {}, []
    for entry in entries:
      if isinstance(entry, fmt.Derived):
        derived.append(entry)
        continue
      target = flat[entry.path]
      array = _checked_read(reader, entry.reference, path)
      expected = fmt.reference_shape(entry, target.get_value().shape)
      if array.shape != expected:
        raise ReferenceFileError(f"{path}: tensor {entry.reference!r} is {list(array.shape)}, "
                                 f"this architecture has {list(expected)} there")
      converted = fmt.to_fourm(entry, array.astype(np.float32), target.get_value().shape)
      values[entry.path] = jnp.asarray(converted)  # the numpy copies go at once
      del array, converted
    for entry in derived:
      _check_derived(reader, entry, path)
  finally:
    reader.close()

  params = nnx.state(abstract, nnx.Param)
  for key, variable in nnx.to_flat_state(params):
    variable.set_value(values.pop(key))
  meta = {"step": 0, "config": json.loads(config.to_json()),
          "converted_from": {"source": source, "kind": kind, "file": os.path.abspath(path),
                             "dtypes": dtypes, "reference_config": reference_config}}
  make_workdir(workdir)
  save_converted(workdir, ConvertedState(step=jnp.zeros((), jnp.int32), params=params), meta)
  summary = dict(workdir=os.path.abspath(workdir), file=path, dtypes=dtypes,
                 tensors=len(entries), stored=len(entries) - len(derived),
                 derived=len(derived), tied_heads=tied, modalities=model.modality_names,
                 input_only=model.input_only,
                 layout=config.layout, parameters=sum(
                     v.get_value().size for _, v in nnx.to_flat_state(params)))
  return summary


def save_converted(workdir: str, state: Any, meta: dict[str, Any]) -> None:
  """Step 0 of WORKDIR/checkpoints, laid out as `fourm.checkpoint.Checkpoints` writes it.

  Written with orbax's PyTree handler, uncompressed and at most 1 GB in flight: the
  standard handler's defaults stage every array at once, which would hold the model a
  second time (measured: 2.5x the file size at peak instead of about 1.2x)."""
  import orbax.checkpoint as ocp
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory)):
    raise UsageError(f"--out {workdir}: holds checkpoints already; convert into a new folder")
  handler = ocp.PyTreeCheckpointHandler(use_compression=False, save_concurrent_gb=1,
                                        save_device_host_concurrent_gb=1)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=True),
      item_handlers={"state": handler, "meta": ocp.JsonCheckpointHandler()})
  try:
    manager.save(0, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                            meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()
  finally:
    manager.close()


def _check_names(reader: SafetensorsReader, entries, path: str) -> None:
  expected = {e.reference for e in entries}
  present = set(reader.names())
  missing, unexpected = sorted(expected - present), sorted(present - expected)
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"{len(missing)} tensors missing ({', '.join(missing[:4])}"
                   f"{', ...' if len(missing) > 4 else ''})")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])}"
                   f"{', ...' if len(unexpected) > 4 else ''})")
    raise ReferenceFileError(f"{path}: not the state dict of the model its config describes: "
                             f"{'; '.join(parts)}")


def _checked_read(reader: SafetensorsReader, name: str, path: str) -> np.ndarray:
  array = reader.read(name)
  if not np.issubdtype(array.dtype, np.floating) and array.dtype.name != "bfloat16":
    raise ReferenceFileError(f"{path}: tensor {name!r} is {reader.dtype(name)}, not a "
                             "floating-point parameter")
  return array


def _check_derived(reader: SafetensorsReader, entry: fmt.Derived, path: str) -> None:
  stored = _checked_read(reader, entry.reference, path)
  # A half-precision file holds the positions rounded: allow for its rounding.
  tolerance = max(fmt.POSITION_TOLERANCE, float(ml_dtypes.finfo(stored.dtype).eps))
  array = stored.astype(np.float32)
  if entry.same_as is not None:
    other = reader.read(entry.same_as).astype(np.float32)
    if not np.array_equal(array, other):
      raise ReferenceFileError(
          f"{path}: tensor {entry.reference!r} differs from {entry.same_as!r}; fourm stores "
          f"it as {entry.why} (a model with its own would need that option)")
    return
  expected = entry.value()
  if array.shape != expected.shape:
    raise ReferenceFileError(f"{path}: tensor {entry.reference!r} is {list(array.shape)}, "
                             f"expected {list(expected.shape)} ({entry.why})")
  worst = float(np.max(np.abs(array - expected))) if array.size else 0.0
  if worst > tolerance:
    raise ReferenceFileError(
        f"{path}: tensor {entry.reference!r} is not the {entry.why} fourm recomputes (off "
        f"by up to {worst:.3g}); learned or interpolated values are not supported")


# Export -------------------------------------------------------------------------------------

def export_reference(workdir: str, out: str) -> dict[str, Any]:
  """Writes a fourm workdir's newest model as a reference .safetensors file."""
  from fourm.generation.loading import load_model
  from fourm.train.state import layout as train_layout
  if not out.endswith(".safetensors"):
    raise UsageError(f"--out {out}: the export is one .safetensors file")
  trained = load_model(workdir)
  model, config = trained.model, trained.config
  layout = train_layout(config)
  architecture = model.config
  reference_config = fmt.reference_config(model.modality_names, model.input_names,
                                          model.target_names, layout, architecture)
  domains = {n: fmt.reference_domain(n, layout) for n in model.modality_names}
  entries = list(fmt.tensor_map(model.modality_names, model.input_names, model.target_names,
                                domains, layout, architecture,
                                architecture.tie_output_heads))
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  stored = {e.reference: e for e in entries if isinstance(e, fmt.Stored)}

  def produce(name: str) -> np.ndarray:
    entry = by_name[name]
    if isinstance(entry, fmt.Derived):
      if entry.same_as is not None:
        return produce(entry.same_as)
      return entry.value()
    return fmt.to_reference(entry, np.asarray(flat[entry.path].get_value(), np.float32))

  by_name = {e.reference: e for e in entries}
  shapes = []
  for entry in entries:
    source = stored.get(entry.same_as, entry) if isinstance(entry, fmt.Derived) else entry
    if isinstance(source, fmt.Derived):
      shape = source.value().shape
    else:
      shape = fmt.reference_shape(source, flat[source.path].get_value().shape)
    shapes.append((entry.reference, tuple(shape), np.dtype(np.float32)))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  size = write_safetensors(out, shapes, produce, fmt.metadata_of(reference_config))
  return dict(file=os.path.abspath(out), bytes=size, tensors=len(entries),
              step=trained.step, config=reference_config)
