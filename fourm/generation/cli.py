"""`fourm generate`: the command-line face of `Generator` (arguments -> chain -> files)."""

from __future__ import annotations

import argparse
import dataclasses
import time

from fourm import modalities
from fourm.errors import UsageError


def _pairs(entries: list[str], flag: str) -> dict[str, str]:
  pairs = {}
  for entry in entries:
    name, sep, value = entry.partition("=")
    if not sep or not name:
      raise UsageError(f"{flag} {entry!r}: expected NAME=VALUE")
    if name in pairs:
      raise UsageError(f"{flag} {name} given twice")
    pairs[name.strip()] = value
  return pairs


def _regions(entries: list[str]) -> dict[str, tuple[float, ...]]:
  regions = {}
  for name, text in _pairs(entries, "--region").items():
    try:
      box = tuple(float(v) for v in text.split(","))
    except ValueError:
      box = ()
    if len(box) != 4:
      raise UsageError(f"--region {name}={text}: expected four numbers X0,Y0,X1,Y1 in [0, 1]")
    regions[name] = box
  return regions


def chain_from_args(args: argparse.Namespace, reference: bool = False):
  from fourm.generation.chain import default_chain, load_chain
  if bool(args.targets) == bool(args.schedule):
    raise UsageError("give --targets a,b,... or --schedule FILE (one of them)")
  if args.schedule:
    return _with_infill(load_chain(args.schedule), getattr(args, "infill", None))
  chain = default_chain([t.strip() for t in args.targets.split(",") if t.strip()],
                        reference=reference)
  chain = _with_infill(chain, getattr(args, "infill", None))
  overrides = {}
  if args.num_steps is not None:
    overrides["num_steps"] = args.num_steps
  if args.temperature is not None:
    overrides["temperature"] = args.temperature
  if args.cfg_scale is not None:
    from fourm.generation.guidance import Guidance
    overrides["guidance"] = Guidance(scale=args.cfg_scale)
  return tuple(dataclasses.replace(d, **overrides) for d in chain)


def _with_infill(chain, infill: str | None):
  """--infill applies to the chain's sequence targets."""
  if infill is None:
    return chain
  return tuple(dataclasses.replace(d, infill=infill)
               if modalities.get(d.target).kind == modalities.Kind.SEQUENCE else d
               for d in chain)


def conditions_from_args(args: argparse.Namespace) -> tuple[dict, int]:
  """(conditions, number of samples): --condition values are repeated for every sample;
  --data records give one sample each."""
  conditions: dict = _pairs(args.condition, "--condition")
  if getattr(args, "instruction", None) is not None:
    if "instruction" in conditions:
      raise UsageError("the instruction is given by both --instruction and --condition")
    conditions["instruction"] = args.instruction
  if not args.data:
    if args.use:
      raise UsageError("--use takes the modalities of --data records: give --data DIR")
    if args.num_samples < 1:
      raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    return conditions, args.num_samples
  from fourm.data import records
  names = [name.strip() for name in args.use.split(",") if name.strip()]
  if not names:
    raise UsageError("--data needs --use NAME[,NAME]: which record modalities to condition on")
  try:
    indices = [int(i) for i in args.indices.split(",")]
  except ValueError:
    raise UsageError(f"--indices {args.indices}: expected comma-separated record numbers") from None
  source = records.RecordSource(args.data, args.split, names)
  bad = [i for i in indices if not 0 <= i < len(source)]
  if bad:
    raise UsageError(f"--indices {bad}: the {args.split} split has {len(source)} records")
  samples = [source[i] for i in indices]
  for name in names:
    if name in conditions:
      raise UsageError(f"{name} given by both --condition and --use")
    conditions[name] = [sample[name] for sample in samples]
  return conditions, len(indices)


def _check_out(out: str) -> None:
  """--out must be a folder that can be made (or exists), checked before any work."""
  import os
  if os.path.exists(out) and not os.path.isdir(out):
    raise UsageError(f"--out {out}: exists and is not a folder")
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as error:
    raise UsageError(f"--out {out}: cannot create it ({os.strerror(error.errno)})") from None


def mesh_from_args(args: argparse.Namespace):
  """--mesh data=D,fsdp=F,tensor=T, as a training config's `mesh` describes it: the
  devices to shard the model over (None: one device, as without the flag)."""
  if not args.mesh:
    return None
  from fourm.train import mesh as mesh_lib
  return mesh_lib.make_mesh(mesh_lib.flag_config(args.mesh))


def run(args: argparse.Namespace) -> None:
  from fourm.generation.generator import Generator
  chain = chain_from_args(args)
  conditions, num_samples = conditions_from_args(args)
  mesh = mesh_from_args(args)
  _check_out(args.out)  # before the model loads and the chain runs, not after
  generator = Generator.from_checkpoint(args.checkpoint, args.tokenizers, mesh=mesh)
  if generator.reference_faithful:
    chain = chain_from_args(args, reference=True)
  placed = ("one device" if mesh is None else
            " x ".join(f"{axis}={size}" for axis, size in mesh.shape.items()))
  print(f"model: {args.checkpoint} ({', '.join(generator.model.modality_names)}) on "
        f"{placed}; conditions: {', '.join(conditions) or 'none'}")
  if getattr(args, "retrieve", 0):
    documents, keys = generator.retrieve(conditions, num_samples, args.retrieve,
                                         args.index or None)
    conditions = {**conditions, **documents}
    for index, sample_keys in enumerate(keys):
      print(f"  retrieved for sample {index}: {', '.join(sample_keys)}")
  elif getattr(args, "index", ""):
    raise UsageError("--index is read with --retrieve K")
  started = time.perf_counter()

  def progress(index, decoding):
    print(f"[{index + 1}/{len(chain)}] {decoding.target}: {decoding.resolved_method()}"
          + (f", {decoding.num_steps} steps" if decoding.resolved_method() != "autoregressive"
             else "") + f"  ({time.perf_counter() - started:.1f} s)", flush=True)

  result = generator.generate(conditions, chain, seed=args.seed, num_samples=num_samples,
                              negatives=_pairs(args.negative, "--negative"),
                              regions=_regions(args.region), outpaint=args.outpaint,
                              progress=progress)
  paths = result.save(args.out)
  for name in result.generated:
    if modalities.get(name).kind == modalities.Kind.SEQUENCE:
      for index in range(result.num_samples):
        print(f"  {name} {index}: {result.decode(name, index)}")
  print(f"done in {time.perf_counter() - started:.1f} s: {paths['grid']}, {paths['tokens']}, "
        f"{paths['text']}")
