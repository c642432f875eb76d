"""Logical axis names for parameters and activations, and how they meet a mesh.

Every parameter carries logical axis names ("embed", "mlp", "heads", ...) as its
`out_sharding` metadata, and the main activations are constrained with names
("act_batch", "act_len", ...). A rules table maps those names to mesh axes; the
default one below gives FSDP over "fsdp", tensor parallelism over "tensor" and data
parallelism over "data" (+ "fsdp" for activations).

Rules are read from flax's context (`nnx.logical_axis_rules(rules)`), the mesh from
jax's (`jax.set_mesh(mesh)`). With no mesh or no rules everything here is a no-op, so a
single-device run needs neither. A run's table is `DEFAULT_RULES` with the overrides of
its config (`config.sharding.rules`, see `with_overrides`).

Resolution is forgiving on purpose, so one table serves every mesh and model size:
a mesh axis the current mesh lacks is dropped, a mesh axis already used by an earlier
dimension of the same array is dropped, and a dimension that the mesh axes do not
divide evenly stays replicated (e.g. 6 heads over a tensor axis of 4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import PartitionSpec

from fourm.errors import UsageError

LogicalAxes = tuple[str | None, ...]
Target = str | tuple[str, ...] | None
Rules = tuple[tuple[str, Target], ...]

# Logical name -> mesh axis (or axes, or None for replicated).
DEFAULT_RULES: Rules = (
    # Parameters.
    ("embed", "fsdp"),       # the model dimension of every weight matrix: FSDP shards it
    ("mlp", "tensor"),       # SwiGLU hidden units
    ("heads", "tensor"),     # attention heads
    ("kv", None),            # per-head feature dimension
    ("vocab", "tensor"),     # token embedding / tied output head rows
    ("norm", None),          # LayerNorm scales: tiny, replicated
    ("patch", None),         # input features of a patch (pixels or feature-map channels)
    # Activations.
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)


def _axes(target: Target) -> tuple[str, ...]:
  return () if target is None else (target,) if isinstance(target, str) else tuple(target)


def _as_target(value, field: str) -> Target:
  """A rule's value as the table holds it: None, one axis name or a tuple of them.

  "a,b" is read as ("a", "b") and "" or () as None, so a command line can write any of
  them (the config loader may also have split "a,b" into a tuple already)."""
  if value is None:
    return None
  if isinstance(value, str):
    value = value.split(",")
  if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
    raise UsageError(f"{field} is {value!r}; expected None, a mesh axis name or a tuple "
                     "of them")
  axes = tuple(axis.strip() for axis in value if axis.strip())
  return None if not axes else axes[0] if len(axes) == 1 else axes


def with_overrides(overrides: Mapping[str, object] | None = None,
                   mesh_axes: Sequence[str] | None = None, base: Rules = DEFAULT_RULES,
                   field: str = "config.sharding.rules") -> Rules:
  """`base` with some logical names mapped anew: {name: None | axis | (axes...)}.

  Every overridden name must be one `base` knows (a typo would otherwise be a silent
  no-op), and, when `mesh_axes` is given, every axis one of them. `field` is the config
  group the overrides come from, for the error messages.
  """
  table = dict(base)
  for name, value in (overrides or {}).items():
    where = f"{field}.{name}"
    if name not in table:
      raise UsageError(f"{where}: no logical axis {name!r}; known: {sorted(table)}")
    target = _as_target(value, where)
    unknown = [axis for axis in _axes(target) if axis not in (mesh_axes or ())]
    if mesh_axes is not None and unknown:
      raise UsageError(f"{where} = {value!r}: no mesh axis {unknown[0]!r}; the mesh has "
                       f"{tuple(mesh_axes)}")
    table[name] = target
  return tuple(table.items())


def mesh_axes_of(name: str, mesh, rules: Rules) -> tuple[str, ...]:
  """The axes of `mesh` that `rules` give logical `name`, in order (() = replicated).

  Unlike `logical_to_mesh` this ignores any array's size, so a caller can check that a
  size divides (the global batch over "act_batch", say) instead of losing the split."""
  kept: list[str] = []
  for axis in _axes(dict(rules).get(name)):
    if axis in mesh.axis_names and axis not in kept:
      kept.append(axis)
  return tuple(kept)


def batch_split(batch_size: int) -> tuple[str, ...]:
  """The mesh axes a batch of `batch_size` rows is split over under the current mesh and
  rules (its "act_batch" rule, as far as the size divides); () without either."""
  mesh = current_mesh()
  if mesh is None or not current_rules():
    return ()
  spec = logical_to_mesh(("act_batch",), (batch_size,), mesh)[0]
  return () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)


def current_mesh() -> jax.sharding.AbstractMesh | None:
  """The mesh set by `jax.set_mesh`, or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def current_rules():
  return flax_spmd.get_logical_axis_rules()


def logical_to_mesh(logical_axes: Sequence[str | None], shape: Sequence[int],
                    mesh=None, rules=None) -> PartitionSpec:
  """The PartitionSpec that `rules` give `logical_axes` on `mesh` for an array of `shape`."""
  mesh = current_mesh() if mesh is None else mesh
  rules = dict(current_rules() if rules is None else rules)
  if len(logical_axes) != len(shape):
    raise ValueError(f"{len(logical_axes)} logical axes {tuple(logical_axes)} for an array "
                     f"of rank {len(shape)}")
  used: set[str] = set()
  spec = []
  for name, size in zip(logical_axes, shape, strict=True):
    targets = _axes(rules.get(name)) if name is not None else ()
    kept, product = [], 1
    for axis in targets:
      if axis not in mesh.axis_names or axis in used:
        continue
      axis_size = mesh.shape[axis]
      if size % (product * axis_size):
        continue  # uneven split: keep this dimension (more) replicated instead
      kept.append(axis)
      product *= axis_size
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op without mesh/rules."""
  mesh = current_mesh()
  if mesh is None or not current_rules():
    return x
  spec = logical_to_mesh(logical_axes, x.shape, mesh)
  if mesh.are_all_axes_explicit:
    return jax.sharding.reshard(x, spec)
  return jax.lax.with_sharding_constraint(x, spec)


Initializer = Callable[[jax.Array, tuple[int, ...], jax.typing.DTypeLike], jax.Array]


def param(init: Initializer, key: jax.Array, shape: Sequence[int], dtype,
          logical_axes: Sequence[str | None]) -> nnx.Param:
  """A parameter annotated with logical axes, sharded at creation when a mesh is set.

  flax's own eager sharding refuses annotated variables outside a mesh, so the
  annotation is kept as metadata only (`nnx.get_partition_spec` reads it) and the
  value is placed here with the forgiving resolution above.
  """
  shape, logical_axes = tuple(shape), tuple(logical_axes)
  value = init(key, shape, dtype)
  if current_mesh() is not None and current_rules():
    value = constrain(value, logical_axes)
  return nnx.Param(value, out_sharding=logical_axes, eager_sharding=False)


def constrain_variables(tree):
  """Every annotated variable in `tree` constrained to its logical axes; a no-op without
  mesh or rules. For trees built from the parameters' (an optimizer's moments keep their
  variables and annotations), whose values XLA would otherwise be free to replicate:
  zeros carry no sharding of their own to propagate."""
  def place(node):
    axes = node.get_metadata().get("out_sharding") if isinstance(node, nnx.Variable) else None
    return node.replace(constrain(node.get_value(), axes)) if axes else node

  return jax.tree.map(place, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def partition_specs(state, mesh=None, rules=None):
  """PartitionSpecs for an `nnx.State` of annotated parameters (e.g. for jit shardings)."""
  mesh = current_mesh() if mesh is None else mesh

  def spec(variable):
    axes = variable.get_metadata().get("out_sharding")
    if not axes or mesh is None:
      return PartitionSpec()
    return logical_to_mesh(axes, variable.get_value().shape, mesh, rules)

  return jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
