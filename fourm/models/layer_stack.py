"""Running a stack of identical blocks: one after another, or as one scanned loop body.

Unrolled, XLA compiles every block separately, so the compile time of a train step grows
with depth (4M-XL's 48 blocks take minutes to compile). Scanned (`FourMConfig.scan_layers`),
the block is traced once and `jax.lax.scan` runs it over the blocks' parameters stacked on
a new leading axis, so compile time stops depending on depth.

The parameters stay stored per block (`encoder.3.attn.qkv.kernel`) either way, and are
stacked inside the step. So checkpoints, the reference conversion (`fourm/interop`),
fine-tuning and the key/value-cached decoder see the same names and shapes whether a run
scans or not, and a run may switch on resume. The price is one stacked copy of the
blocks' weights (and of their gradients) alive during the step, each sharded as the
weights are; `benchmarks/memory_plan.py` measures it.

Rematerialization policies are chosen by name (`REMAT_POLICIES`): what each block keeps
for the backward pass and what it recomputes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fourm.nn import sharding

# Name -> the jax.checkpoint policy of a block (None: no rematerialization).
REMAT_POLICIES = {
    "none": None,
    # Keep nothing: recompute the whole block in the backward pass (least memory).
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep every matmul's output, recompute the elementwise work (norms, SwiGLU gate).
    "dots": jax.checkpoint_policies.dots_saveable,
    # Keep the weight matmuls' outputs, recompute attention's batched matmuls (its
    # [B, H, T, S] scores are the largest activations at long sequences).
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy_name(value) -> str:
  """A config's `remat` as a policy name: True is "full", False "none" (older configs)."""
  if isinstance(value, bool):
    return "full" if value else "none"
  if value not in REMAT_POLICIES:
    raise ValueError(f"remat {value!r} is not one of {sorted(REMAT_POLICIES)} (or a bool)")
  return value


def _call(block, *args):
  return block(*args)


def run_unrolled(blocks: Sequence[nnx.Module], x: jax.Array, *args, remat: str = "none"):
  """x through every block in turn; `args` (masks, context) go to each block."""
  policy = REMAT_POLICIES[remat]
  call = _call if remat == "none" else nnx.remat(_call, policy=policy)
  for block in blocks:
    x = call(block, x, *args)
  return x


def _is_variable(node) -> bool:
  return isinstance(node, nnx.Variable)


def stack_states(blocks: Sequence[nnx.Module]) -> nnx.State:
  """The blocks' variables stacked on a new leading axis, each constrained to its own
  sharding with the layer axis unsplit (no device holds one layer's whole weight where
  the weights were split over devices)."""
  def stack(*variables):
    value = jnp.stack([variable.get_value() for variable in variables])
    axes = variables[0].get_metadata().get("out_sharding")
    if axes:
      value = sharding.constrain(value, (None, *axes))
    return variables[0].replace(value)

  states = [nnx.state(block) for block in blocks]
  return jax.tree.map(stack, *states, is_leaf=_is_variable)


def run_scanned(blocks: Sequence[nnx.Module], x: jax.Array, *args, remat: str = "none"):
  """Same result as `run_unrolled`, as one `lax.scan` over the stacked parameters."""
  graphdef = nnx.graphdef(blocks[0])
  if any(nnx.graphdef(block) != graphdef for block in blocks[1:]):
    raise ValueError("scan_layers needs blocks of one structure")

  def body(carry, layer_state):
    return nnx.merge(graphdef, layer_state)(carry, *args), None

  if remat != "none":
    # prevent_cse=False: scan already keeps XLA from merging the recomputation with the
    # forward pass, and CSE barriers would only slow the loop body (jax.checkpoint docs).
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=False)
  x, _ = jax.lax.scan(body, x, stack_states(blocks))
  return x


def run(blocks: Sequence[nnx.Module], x: jax.Array, *args, scan: bool = False,
        remat: str = "none"):
  """x through the blocks, scanned or unrolled (same numbers up to float rounding)."""
  if scan and len(blocks) > 1:
    return run_scanned(blocks, x, *args, remat=remat)
  return run_unrolled(blocks, x, *args, remat=remat)
