"""Cross-entropy under per-modality output heads, paying only for the tokens each head owns.

A 4M decoder slot belongs to one target modality, and the number of slots per modality
changes from sample to sample (Dirichlet budgets). Applying every head to every slot
keeps shapes static but multiplies the largest matmuls of the step by the number of
modalities: for the reference workload (rgb 16k, depth 8k, text 30k vocabularies) the
heads cost 3.3x what they need to. The reference avoids it with boolean indexing,
which has no static shape.

Here the slots of the whole batch are sorted by modality, so each modality's slots
form one contiguous run of dynamic length. Each head walks its own run in fixed-size
chunks with a loop of dynamic trip count, so the work is sum_m n_m * V_m plus at most
one partial chunk per modality. The loop is not differentiable as written, so the
function carries its own backward pass (`jax.custom_vjp`), which recomputes each
chunk's logits instead of storing them: the [tokens, vocab] logits, the largest
activation of the step, never exist in memory at once, in the forward or the backward.

On a mesh the sort is per batch shard (`_per_batch_shard`): each device sorts and scores
its own rows, the tables gathered whole as FSDP gathers any weight, and the weighted
totals are summed over the shards. Sorting the global batch instead would make XLA gather
every slot's hidden state onto every device (3 GiB per device for 4M-B on 64 chips) and
score the whole batch there.

Training wants one number, the weighted sum of the slots' losses (`grouped_weighted_loss`:
the 4M reductions are per-slot weights that depend on the masks only). Its gradient is
linear in the weights, so the forward pass computes it in the same sweep as the losses,
from the same chunk of logits: three matmuls per chunk (logits, d_hidden, d_table)
instead of one forward and three backward (logits again), a quarter less of the heads'
work in a training step. The backward pass only scales what the forward kept, the
gradient itself ([rows, D] and each table's [V, D], the size of the parameter gradient
it becomes).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from fourm.nn import sharding

DEFAULT_CHUNK_SIZE = 128


def grouped_token_losses(hidden: jax.Array, group: jax.Array, labels: jax.Array,
                         tables: Sequence[jax.Array], *,
                         chunk_size: int = DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Per-slot cross-entropy, each slot scored by its group's tied head.

  Args:
    hidden: [B, T, D] decoder outputs (any float dtype; logits accumulate in float32).
    group: [B, T] int, the index into `tables` of each slot's head; negative = no loss.
    labels: [B, T] int, the token each slot must predict (in its group's vocabulary).
    tables: one [V_g, D] output table per group (logits = hidden @ table^T).
    chunk_size: slots per matmul; smaller wastes less on partial chunks, larger runs
      fewer, bigger matmuls.

  Returns:
    [B, T] float32 losses, 0 on slots with a negative group.
  """
  def losses_of(hidden, group, labels, tables):
    runs = _SortedRuns(hidden, group, labels, len(tables), chunk_size)
    sorted_losses = jnp.zeros(runs.hidden.shape[0], jnp.float32)
    for index, table in enumerate(tables):
      sorted_losses = sorted_losses + _run_cross_entropy(
          runs.hidden, runs.labels_in(table), table, runs.starts[index],
          runs.counts[index], chunk_size)
    return (runs.unsort(sorted_losses),)

  return _per_batch_shard(losses_of, (hidden, group, labels), tuple(tables), ("rows",))[0]


def grouped_weighted_loss(hidden: jax.Array, group: jax.Array, labels: jax.Array,
                          tables: Sequence[jax.Array], weights: jax.Array, *,
                          chunk_size: int = DEFAULT_CHUNK_SIZE
                          ) -> tuple[jax.Array, jax.Array]:
  """(sum of weights * per-slot losses, the per-slot losses [B, T]), differentiable in
  `hidden` and `tables` through the first only (the losses come back gradient-free, for
  metrics; the weights, float [B, T], are constants).

  The same losses as `grouped_token_losses`; a gradient costs a quarter less (module
  docstring).
  """
  def total_and_losses(hidden, group, labels, weights, tables):
    runs = _SortedRuns(hidden, group, labels, len(tables), chunk_size)
    sorted_weights = runs.sort(weights.astype(jnp.float32))
    total = jnp.zeros((), jnp.float32)
    sorted_losses = jnp.zeros(runs.hidden.shape[0], jnp.float32)
    for index, table in enumerate(tables):
      run_total, run_losses = _run_weighted_loss(
          runs.hidden, runs.labels_in(table), table, sorted_weights, runs.starts[index],
          runs.counts[index], chunk_size)
      total, sorted_losses = total + run_total, sorted_losses + run_losses
    return total, lax.stop_gradient(runs.unsort(sorted_losses))

  return _per_batch_shard(total_and_losses, (hidden, group, labels, weights), tuple(tables),
                          ("sum", "rows"))


def _per_batch_shard(fn, per_slot: tuple, tables: tuple, outputs: tuple[str, ...]):
  """`fn(*per_slot, tables)` on each batch shard of the current mesh, or once without one.

  per_slot: arrays [B, T, ...], split over the batch axes; tables: gathered whole on every
  device. fn returns a tuple described by `outputs`: "sum" for a scalar added up over the
  shards, "rows" for a per-slot array [B, T] that stays split as the inputs are."""
  axes = sharding.batch_split(per_slot[0].shape[0])
  if not axes:
    return fn(*per_slot, tables)
  rows = PartitionSpec(axes)

  def on_shard(*args):
    return tuple(lax.psum(value, axes) if kind == "sum" else value
                 for kind, value in zip(outputs, fn(*args), strict=True))

  # check_vma=False: the chunk loops start from zeros that the type check would call
  # invariant and then see varying. Gradients agree with the unsharded loss on a
  # data x fsdp x tensor mesh (tests/test_loss.py checks them).
  return jax.shard_map(on_shard, mesh=sharding.current_mesh(),
                       in_specs=(rows,) * len(per_slot) + (PartitionSpec(),),
                       out_specs=tuple(PartitionSpec() if kind == "sum" else rows
                                       for kind in outputs),
                       check_vma=False)(*per_slot, tables)


class _SortedRuns:
  """The slots of a batch sorted by group, so each group's slots are one contiguous run
  of rows [starts[g], starts[g] + counts[g]); slots without a head sort last. One chunk
  of zero padding at the end, so no chunk's window is ever clamped back over rows that
  the previous chunk already scored."""

  def __init__(self, hidden, group, labels, num_groups: int, chunk_size: int):
    self.shape = group.shape
    flat_group = group.reshape(-1)
    sort_key = jnp.where(flat_group < 0, num_groups, flat_group).astype(jnp.int32)
    self.order = jnp.argsort(sort_key, stable=True)
    self.counts = jnp.zeros(num_groups + 1, jnp.int32).at[sort_key].add(1)[:num_groups]
    self.starts = jnp.cumsum(self.counts) - self.counts
    self.chunk_size = chunk_size
    self.hidden = self.sort(hidden)
    self.labels = self.sort(labels)

  def sort(self, values: jax.Array) -> jax.Array:
    """Per-slot values [B, T, ...] as rows in run order [B * T + chunk, ...]."""
    values = values.reshape((self.order.shape[0],) + values.shape[len(self.shape):])
    pad = ((0, self.chunk_size),) + ((0, 0),) * (values.ndim - 1)
    return jnp.pad(values[self.order], pad)

  def labels_in(self, table: jax.Array) -> jax.Array:
    # Labels of other groups' slots may fall outside this vocabulary; those rows are
    # never scored, the clip only keeps the gather in bounds.
    return jnp.clip(self.labels, 0, table.shape[0] - 1)

  def unsort(self, sorted_values: jax.Array) -> jax.Array:
    num_slots = self.order.shape[0]
    out = jnp.zeros(num_slots, sorted_values.dtype).at[self.order].set(
        sorted_values[:num_slots])
    return out.reshape(self.shape)



# The chunked kernel and its backward pass ---------------------------------------------


def _chunk_logits(hidden_chunk: jax.Array, table: jax.Array) -> jax.Array:
  return jnp.einsum("cd,vd->cv", hidden_chunk, table.astype(hidden_chunk.dtype),
                    preferred_element_type=jnp.float32)


def _chunk(values: jax.Array, first_row: jax.Array, chunk_size: int) -> jax.Array:
  return lax.dynamic_slice_in_dim(values, first_row, chunk_size, axis=0)


def _rows_in_run(first_row, start, count, chunk_size: int) -> jax.Array:
  return first_row + jnp.arange(chunk_size) < start + count


def _num_chunks(count, chunk_size: int):
  return (count + chunk_size - 1) // chunk_size


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _run_cross_entropy(hidden, labels, table, start, count, chunk_size):
  """Cross-entropy of rows [start, start + count) of hidden [R, D] under `table`;
  0 on every other row. R must exceed start + count by at least a chunk's worth."""
  def score_chunk(k, losses):
    first_row = start + k * chunk_size
    logits = _chunk_logits(_chunk(hidden, first_row, chunk_size), table)
    targets = _chunk(labels, first_row, chunk_size)
    correct = jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
    chunk_losses = jax.nn.logsumexp(logits, axis=1) - correct
    # Rows past the run belong to the next group: leave them as they are (zero here).
    keep = _rows_in_run(first_row, start, count, chunk_size)
    previous = _chunk(losses, first_row, chunk_size)
    return lax.dynamic_update_slice_in_dim(
        losses, jnp.where(keep, chunk_losses, previous), first_row, axis=0)

  initial = jnp.zeros(hidden.shape[0], jnp.float32)
  return lax.fori_loop(0, _num_chunks(count, chunk_size), score_chunk, initial)


def _run_cross_entropy_forward(hidden, labels, table, start, count, chunk_size):
  losses = _run_cross_entropy(hidden, labels, table, start, count, chunk_size)
  return losses, (hidden, labels, table, start, count)


def _run_cross_entropy_backward(chunk_size, residuals, loss_cotangent):
  hidden, labels, table, start, count = residuals
  vocab = table.shape[0]

  def backprop_chunk(k, carry):
    d_hidden, d_table = carry
    first_row = start + k * chunk_size
    hidden_chunk = _chunk(hidden, first_row, chunk_size)
    weight = jnp.where(_rows_in_run(first_row, start, count, chunk_size),
                       _chunk(loss_cotangent, first_row, chunk_size), 0.0)
    probabilities = jax.nn.softmax(_chunk_logits(hidden_chunk, table), axis=1)
    targets = _chunk(labels, first_row, chunk_size)
    one_hot = targets[:, None] == jnp.arange(vocab)[None, :]
    d_logits = ((probabilities - one_hot) * weight[:, None]).astype(hidden.dtype)
    d_hidden_chunk = jnp.einsum("cv,vd->cd", d_logits, table.astype(hidden.dtype))
    d_table = d_table + jnp.einsum("cv,cd->vd", d_logits, hidden_chunk,
                                   preferred_element_type=jnp.float32)
    d_hidden = lax.dynamic_update_slice_in_dim(
        d_hidden, _chunk(d_hidden, first_row, chunk_size) + d_hidden_chunk, first_row, axis=0)
    return d_hidden, d_table

  initial = (jnp.zeros_like(hidden), jnp.zeros(table.shape, jnp.float32))
  d_hidden, d_table = lax.fori_loop(0, _num_chunks(count, chunk_size), backprop_chunk,
                                    initial)
  return d_hidden, None, d_table.astype(table.dtype), None, None


_run_cross_entropy.defvjp(_run_cross_entropy_forward, _run_cross_entropy_backward)


# The fused kernel: losses and their weighted gradient in one sweep ---------------------------


def _chunk_loss_and_logit_grad(hidden_chunk, targets, table):
  """(per-row losses [C], d loss / d logits [C, V] = softmax - one-hot) of one chunk."""
  logits = _chunk_logits(hidden_chunk, table)
  log_normalizer = jax.nn.logsumexp(logits, axis=1)
  correct = jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
  probabilities = jnp.exp(logits - log_normalizer[:, None])
  one_hot = targets[:, None] == jnp.arange(table.shape[0])[None, :]
  return log_normalizer - correct, probabilities - one_hot


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _run_weighted_loss(hidden, labels, table, weights, start, count, chunk_size):
  """(sum over rows [start, start + count) of weight * cross-entropy, the per-row losses
  (0 off the run)). Without a gradient, the plain forward sweep."""
  losses = _run_cross_entropy(hidden, labels, table, start, count, chunk_size)
  return jnp.sum(weights * losses), losses


def _run_weighted_loss_forward(hidden, labels, table, weights, start, count, chunk_size):
  def sweep_chunk(k, carry):
    losses, d_hidden, d_table = carry
    first_row = start + k * chunk_size
    hidden_chunk = _chunk(hidden, first_row, chunk_size)
    keep = _rows_in_run(first_row, start, count, chunk_size)
    chunk_losses, d_logits = _chunk_loss_and_logit_grad(
        hidden_chunk, _chunk(labels, first_row, chunk_size), table)
    weight = jnp.where(keep, _chunk(weights, first_row, chunk_size), 0.0)
    d_logits = (d_logits * weight[:, None]).astype(hidden.dtype)
    d_hidden = lax.dynamic_update_slice_in_dim(
        d_hidden, _chunk(d_hidden, first_row, chunk_size)
        + jnp.einsum("cv,vd->cd", d_logits, table.astype(hidden.dtype)), first_row, axis=0)
    d_table = d_table + jnp.einsum("cv,cd->vd", d_logits, hidden_chunk,
                                   preferred_element_type=jnp.float32)
    losses = lax.dynamic_update_slice_in_dim(
        losses, jnp.where(keep, chunk_losses, _chunk(losses, first_row, chunk_size)),
        first_row, axis=0)
    return losses, d_hidden, d_table

  initial = (jnp.zeros(hidden.shape[0], jnp.float32), jnp.zeros_like(hidden),
             jnp.zeros(table.shape, jnp.float32))
  losses, d_hidden, d_table = lax.fori_loop(0, _num_chunks(count, chunk_size), sweep_chunk,
                                            initial)
  return (jnp.sum(weights * losses), losses), (d_hidden, d_table.astype(table.dtype))


def _run_weighted_loss_backward(chunk_size, residuals, cotangents):
  del chunk_size
  d_hidden, d_table = residuals
  total_cotangent, _ = cotangents  # the per-row losses leave through a stop_gradient
  return (d_hidden * total_cotangent.astype(d_hidden.dtype), None,
          d_table * total_cotangent.astype(d_table.dtype), None, None, None)


_run_weighted_loss.defvjp(_run_weighted_loss_forward, _run_weighted_loss_backward)
