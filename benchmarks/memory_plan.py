"""Memory and sharding plan of the 4M recipes, computed by compiling the real train step.

    python benchmarks/memory_plan.py                        # B / L / XL on 8, 64, 256 devices
    python benchmarks/memory_plan.py --sizes b --devices 8 --meshes fsdp,data --remat none,full
    python benchmarks/memory_plan.py --compile-times        # scan_layers vs unrolled, B and XL

Each row is one configuration of `configs/4m_mod7.py` (the reference recipe: 128 input
+ 128 target tokens, bf16 compute, fp32 master weights, AdamW) at its per-chip batch (4M-B
128, 4M-L and XL 64, as the reference trains them), on a mesh of forced CPU devices that
stands in for the chips. Nothing is allocated: the train state is abstract
(`fourm.train.state.abstract_train_state`: shapes and the shardings it is born with), and
the step `fourm train` runs is compiled ahead of time for it; XLA's buffer assignment then
says what one device holds.

Columns, per device:
  params, opt state  the shards of the fp32 parameters and AdamW's two moments, exact;
  activations        the residuals the backward pass keeps under the remat policy
                     (`saved_residuals` of the loss, split over the batch shards; with
                     tensor > 1 part of them are split further, so an upper bound);
  XLA temp           every buffer that is neither an argument nor an output: activations,
                     gradients, and the transients of the step;
  peak               arguments + XLA temp + outputs not aliased with the (donated) inputs;
  compile s          the ahead-of-time compile of the step on this host.
A plan fits a chip when its peak is below 90 % of the chip's memory (the rest for the
runtime, fragmentation and the input pipeline's device buffers).

The compiler here is XLA's CPU backend: its fusion and buffer reuse differ from the GPU
and TPU backends (it also keeps some bf16 arithmetic in f32), so read the temp column as
an estimate; the parameter and optimizer columns are exact for any backend.
"""

from __future__ import annotations

import os

_MAX_DEVICES = 256
# Forced host devices must be set before jax is imported; a caller's own flag wins.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_MAX_DEVICES}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax._src.ad_checkpoint import saved_residuals  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from fourm import modalities  # noqa: E402
from fourm.config import load_config  # noqa: E402
from fourm.models import fourm as fourm_model  # noqa: E402
from fourm.models.loss import fourm_loss  # noqa: E402
from fourm.train import mesh as mesh_lib  # noqa: E402
from fourm.train.optimizer import make_optimizer  # noqa: E402
from fourm.train.state import abstract_train_state, layout, model_factory  # noqa: E402
from fourm.train.step import make_train_step  # noqa: E402

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                      "4m_mod7.py")
PER_CHIP_BATCH = {"b": 128, "l": 64, "xl": 64}  # the reference's yaml files
CHIPS_GB = {"TPU v5e": 16, "TPU v4": 32, "H100": 80}
FIT_SHARE = 0.9
GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Plan:
  size: str            # b | l | xl
  devices: int
  mesh: str            # fsdp | data | data+fsdp8 | fsdp+tensor4
  remat: str
  scan: bool = True

  def mesh_sizes(self) -> dict[str, int]:
    n = self.devices
    return {"fsdp": dict(data=1, fsdp=n, tensor=1),
            "data": dict(data=n, fsdp=1, tensor=1),
            "data+fsdp8": dict(data=n // 8, fsdp=8, tensor=1),
            "fsdp+tensor4": dict(data=1, fsdp=n // 4, tensor=4)}[self.mesh]


@dataclasses.dataclass
class Row:
  plan: Plan
  params: int
  opt_state: int
  activations: int
  temp: int
  peak: int
  compile_s: float


def recipe(plan: Plan):
  """configs/4m_mod7.py at the plan's size, batch, mesh and remat."""
  sizes = plan.mesh_sizes()
  overrides = [f"batch_size={PER_CHIP_BATCH[plan.size] * plan.devices}",
               f"model.remat={plan.remat}", f"model.scan_layers={plan.scan}"]
  overrides += [f"mesh.{axis}={size}" for axis, size in sizes.items()]
  return load_config(f"{RECIPE}:{plan.size}", overrides)


def abstract_batch(config, mesh, rules) -> dict:
  """The masked batch of fourm/models/CONTRACT.md as shapes, split as the loop splits it."""
  grid_layout = layout(config)
  batch_size = config.batch_size
  axes = mesh_lib.batch_axes(mesh, rules)

  def array(shape, dtype):
    spec = PartitionSpec(axes or None, *([None] * (len(shape) - 1)))
    return jax.ShapeDtypeStruct((batch_size, *shape), dtype,
                                sharding=NamedSharding(mesh, spec))

  batch = {}
  for name in config.modalities:
    spec = modalities.get(name)
    n = spec.num_tokens(grid_layout)
    entry = {"input_mask": array((n,), jnp.bool_), "target_mask": array((n,), jnp.bool_)}
    if spec.kind == modalities.Kind.SEQUENCE:
      for key in ("input_tokens", "target_tokens", "target_labels"):
        entry[key] = array((n,), jnp.int32)
    elif spec.kind == modalities.Kind.PIXELS:
      entry["tokens"] = array((grid_layout.resolution, grid_layout.resolution, 3), jnp.float32)
    elif spec.kind == modalities.Kind.FEATURE_MAP:
      entry["tokens"] = array((n, spec.source.channels), jnp.float32)
    else:
      entry["tokens"] = array((n,), jnp.int32)
    batch[name] = entry
  return batch


def shard_bytes(tree) -> int:
  """Bytes one device holds of an abstract, sharded tree (the largest shard of each)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def activation_bytes(graphdef, params, batch, batch_shards: int, loss_type: str) -> int:
  """What the backward pass keeps of the forward one (parameters excluded), per device."""
  def loss(params, batch):
    model = nnx.merge(graphdef, params)
    return fourm_loss(model, model(batch), loss_type=loss_type)[0]

  unsharded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (params, batch))
  total = 0
  for residual, source in saved_residuals(loss, *unsharded):
    if "from the argument" in source:
      continue  # parameters and the batch: counted as such
    total += math.prod(residual.shape) * jnp.dtype(residual.dtype).itemsize
  return total // batch_shards


def measure(plan: Plan) -> Row:
  config = recipe(plan)
  mesh = mesh_lib.make_mesh(config.mesh)  # the plan's sizes: its first devices
  rules = mesh_lib.axis_rules(config, mesh)
  mesh_lib.check_batch_divides(mesh, config.batch_size, rules)
  tx, schedule = make_optimizer(config.optimizer, config.batch_size, config.total_steps)
  graphdef, state = abstract_train_state(model_factory(config), tx, mesh, rules)
  batch = abstract_batch(config, mesh, rules)
  step = make_train_step(graphdef, tx, schedule, mesh,
                         jax.tree.map(lambda x: x.sharding, state), loss_type=config.loss_type,
                         rules=rules)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  batch_shards = math.prod(mesh.shape[a] for a in mesh_lib.batch_axes(mesh, rules))
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    activations = activation_bytes(graphdef, state.params, batch, batch_shards,
                                   config.loss_type)
  peak = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
          + memory.output_size_in_bytes - memory.alias_size_in_bytes)
  return Row(plan, params=shard_bytes(state.params), opt_state=shard_bytes(state.opt_state),
             activations=activations, temp=memory.temp_size_in_bytes, peak=peak,
             compile_s=compile_s)


def _gib(count: int) -> str:
  return f"{count / GiB:.2f}"


def print_table(rows: list[Row]) -> None:
  print("| size | devices | mesh | remat | params GiB | opt state GiB | activations GiB "
        "| XLA temp GiB | peak GiB | compile s | fits |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for row in rows:
    p = row.plan
    fits = ", ".join(chip for chip, gb in CHIPS_GB.items()
                     if row.peak < FIT_SHARE * gb * 1e9) or "none"
    sizes = "x".join(f"{a}{s}" for a, s in p.mesh_sizes().items() if s > 1)
    print(f"| {p.size} | {p.devices} | {sizes} | {p.remat} | {_gib(row.params)} | "
          f"{_gib(row.opt_state)} | {_gib(row.activations)} | {_gib(row.temp)} | "
          f"{_gib(row.peak)} | {row.compile_s:.0f} | {fits} |")


def recommend(rows: list[Row]) -> None:
  """Per size and chip: the least recomputation that fits, and the meshes it fits on."""
  order = ("none", "dots", "dots_no_batch", "full")
  print("\nRecommended (least recomputation that fits; then where it fits):")
  for size in dict.fromkeys(row.plan.size for row in rows):
    for chip, gb in CHIPS_GB.items():
      fitting = [row for row in rows if row.plan.size == size
                 and row.peak < FIT_SHARE * gb * 1e9]
      if not fitting:
        print(f"  4M-{size.upper()} on {chip} ({gb} GB): no plan measured fits")
        continue
      remat = min((row.plan.remat for row in fitting), key=order.index)
      chosen = [row for row in fitting if row.plan.remat == remat]
      where = [f"fsdp over {min(r.plan.devices for r in chosen if r.plan.mesh == 'fsdp')}+ "
               "chips"] if any(r.plan.mesh == "fsdp" for r in chosen) else []
      where += [f"data x fsdp8 on {r.plan.devices}" for r in chosen
                if r.plan.mesh == "data+fsdp8"]
      peak = max(row.peak for row in chosen)
      print(f"  4M-{size.upper()} on {chip} ({gb} GB): remat {remat}; "
            f"{', '.join(where)} (peak up to {_gib(peak)} GiB)")


def compile_times(sizes: list[str], devices: int) -> None:
  """scan_layers against unrolled blocks: the ahead-of-time compile of the train step."""
  print("| size | devices | blocks | unrolled compile s | scanned compile s |")
  print("|---|---|---|---|---|")
  for size in sizes:
    seconds = {}
    for scan in (False, True):
      row = measure(Plan(size, devices, "fsdp", "full", scan=scan))
      seconds[scan] = row.compile_s
    model = recipe(Plan(size, devices, "fsdp", "full")).model
    preset = fourm_model.PRESETS[model.size]()
    blocks = preset.encoder_depth + preset.decoder_depth
    print(f"| {size} | {devices} | {blocks} | {seconds[False]:.1f} | {seconds[True]:.1f} |",
          flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="b,l,xl")
  parser.add_argument("--devices", default="8,64,256")
  parser.add_argument("--meshes", default="fsdp,data+fsdp8",
                      help="of fsdp, data, data+fsdp8, fsdp+tensor4")
  parser.add_argument("--remat", default="none,dots_no_batch,full")
  parser.add_argument("--unrolled", action="store_true", help="blocks unrolled, not scanned")
  parser.add_argument("--compile-times", action="store_true",
                      help="only the scan vs unrolled compile times (B and XL by default)")
  args = parser.parse_args()
  split = lambda text: [part for part in text.split(",") if part]  # noqa: E731
  if args.compile_times:
    sizes = split(args.sizes) if args.sizes != parser.get_default("sizes") else ["b", "xl"]
    compile_times(sizes, int(split(args.devices)[0]))
    return

  print(f"jax {jax.__version__}, {jax.device_count()} forced CPU devices; recipe "
        "configs/4m_mod7.py", flush=True)
  rows = []
  for size in split(args.sizes):
    for devices in map(int, split(args.devices)):
      for mesh in split(args.meshes):
        if mesh == "data+fsdp8" and devices <= 8:
          continue  # the same as fsdp
        if mesh != "fsdp" and devices < max(map(int, split(args.devices))):
          continue  # other splits at the largest count only: memory per chip barely moves
        for remat in split(args.remat):
          plan = Plan(size, devices, mesh, remat, scan=not args.unrolled)
          rows.append(measure(plan))
          print(f"  measured {plan}: peak {_gib(rows[-1].peak)} GiB, compiled in "
                f"{rows[-1].compile_s:.0f} s", flush=True)
  print("\nAll rows:")
  print_table(rows)
  recommend(rows)


if __name__ == "__main__":
  main()
