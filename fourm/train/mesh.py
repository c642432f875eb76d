"""The device mesh of a run and global batches built from each process's shard.

A mesh config names the size of each axis, `data`, `fsdp` and `tensor`, one of which
may be -1 (all devices left). Parameters and the batch follow the logical-axis table of
`fourm/nn/sharding.py` with the config's overrides (`axis_rules`): by default the batch
is split over `data` x `fsdp` (its "act_batch" rule). Only the mesh changes between a
laptop, an 8-device test, a GPU node and a TPU pod slice. Commands take the same
description as a flag, `--mesh data=2,fsdp=2,tensor=2` (`flag_config`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from fourm.errors import UsageError
from fourm.nn import sharding

AXES = ("data", "fsdp", "tensor")


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  sizes = [int(config[axis]) for axis in AXES]
  free = [i for i, size in enumerate(sizes) if size == -1]
  if len(free) > 1 or any(size == 0 or size < -1 for size in sizes):
    raise UsageError(f"mesh {dict(zip(AXES, sizes))}: sizes must be positive, with at most "
                     "one -1 (= the devices left)")
  known = math.prod(size for size in sizes if size != -1)
  if free:
    if num_devices % known:
      raise UsageError(f"mesh {dict(zip(AXES, sizes))}: {num_devices} devices do not divide "
                       f"by {known}")
    sizes[free[0]] = num_devices // known
  if math.prod(sizes) > num_devices:
    raise UsageError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"this run has {num_devices}; change config.mesh")
  return tuple(sizes)


def make_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The run's mesh. Explicit sizes that need fewer devices than there are use the
  first ones (a single-device run on a multi-device host, say); -1 takes them all."""
  shape = mesh_shape(config, jax.device_count())
  count = math.prod(shape)
  if count < jax.device_count() and jax.process_count() > 1:
    raise UsageError(f"mesh {dict(zip(AXES, shape))} uses {count} of "
                     f"{jax.device_count()} devices; a multi-process run must use them all")
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                       devices=jax.devices()[:count])


def parse_flag(text: str, flag: str = "--mesh") -> ml_collections.ConfigDict:
  """`--mesh data=2,fsdp=2,tensor=2` -> a `config.mesh` group (the training config's own
  description, so a command's flag and a run's config mean the same mesh). Axes not
  named are 1; one size may be -1 (the devices left)."""
  sizes = {axis: 1 for axis in AXES}
  named = set()
  for entry in filter(None, (part.strip() for part in text.split(","))):
    axis, sep, size = (part.strip() for part in entry.partition("="))
    if not sep or axis not in AXES:
      raise UsageError(f"{flag} {text}: {entry!r} is not AXIS=SIZE with AXIS one of "
                       f"{', '.join(AXES)}")
    if axis in named:
      raise UsageError(f"{flag} {text}: {axis} given twice")
    try:
      sizes[axis] = int(size)
    except ValueError:
      raise UsageError(f"{flag} {text}: {axis}={size} is not a whole number") from None
    named.add(axis)
  if not named:
    raise UsageError(f"{flag} {text!r}: expected AXIS=SIZE,... with AXIS one of "
                     f"{', '.join(AXES)}, e.g. data=2,fsdp=2,tensor=2")
  return ml_collections.ConfigDict(sizes)


def flag_config(text: str, flag: str = "--mesh") -> ml_collections.ConfigDict:
  """`parse_flag`, checked to use every device: a command given a mesh means all of
  them (with none, generation keeps to one device and fine-tuning to its config's)."""
  config = parse_flag(text, flag)
  count = jax.device_count()
  sizes = [config[axis] for axis in AXES]
  if -1 not in sizes and min(sizes) > 0 and math.prod(sizes) != count:
    raise UsageError(f"{flag} {text}: {' x '.join(map(str, sizes))} = {math.prod(sizes)} "
                     f"devices, this run has {count}; the sizes must multiply to {count} "
                     "(or let one be -1, the devices left)")
  try:
    mesh_shape(config, count)  # sizes below 1, several -1, or a -1 that does not divide
  except UsageError as error:
    raise UsageError(f"{flag} {text}: {error}") from None
  return config


def axis_rules(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> sharding.Rules:
  """The run's logical-axis table: the default one with `config.sharding.rules` applied."""
  return sharding.with_overrides(config.sharding.rules.to_dict(), mesh.axis_names)


def batch_axes(mesh: jax.sharding.Mesh, rules: sharding.Rules) -> tuple[str, ...]:
  """The mesh axes the batch is split over: its "act_batch" rule, as the model's
  activations are, so the batch arrives where the model wants it."""
  return sharding.mesh_axes_of("act_batch", mesh, rules)


def check_batch_divides(mesh: jax.sharding.Mesh, global_batch: int,
                        rules: sharding.Rules) -> None:
  axes = batch_axes(mesh, rules)
  shards = math.prod(mesh.shape[axis] for axis in axes)
  if global_batch % shards:
    raise UsageError(f"batch_size {global_batch} does not split over the mesh's "
                     f"{' x '.join(axes)} = {shards} batch shards; make it a multiple of "
                     f"{shards}")
  if global_batch % jax.process_count():
    raise UsageError(f"batch_size {global_batch} does not split over "
                     f"{jax.process_count()} processes")
  if not axes and jax.process_count() > 1:
    # A replicated batch would need every process to hold all of it, not its share.
    raise UsageError("config.sharding.rules.act_batch replicates the batch; a "
                     "multi-process run must split it over a mesh axis")


def global_batch(local: Mapping, mesh: jax.sharding.Mesh, rules: sharding.Rules):
  """Each process's rows -> one global array per leaf, split over the batch axes.

  The rows of process i become global rows [i * B/P, (i + 1) * B/P) on its devices. The
  pipeline gives every process its share of the same global batch, so the batch holds
  the same samples on any process count (in another row order, which no loss sees).
  """
  axes = batch_axes(mesh, rules)

  def to_global(x):
    x = np.asarray(x)
    spec = PartitionSpec(axes or None, *([None] * (x.ndim - 1)))
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)

  return jax.tree.map(to_global, dict(local))
