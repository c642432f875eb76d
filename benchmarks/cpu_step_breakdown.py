"""Where model_step.py's CPU training step spends its time, in the pieces that were suspects.

    python benchmarks/cpu_step_breakdown.py
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \\
        MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 python benchmarks/cpu_step_breakdown.py

Prints one table for model_step.py's workload (4M tiny, batch 8, fp32):
- the train step (forward + backward + AdamW) and what the process paid the kernel for it:
  minor page faults and user / system CPU seconds per step (`getrusage`), beside the size
  of XLA's scratch buffer for the step (`memory_analysis().temp_size_in_bytes`), which the
  CPU runtime allocates afresh on every call;
- one encoder block, its MLP and its attention at the step's shapes ([8, 128, 384], 6
  heads), forward and forward + backward, and the ratio (3.0 when the backward costs twice
  the forward);
- one 1024 x 384 x 1024 matmul in the three orientations a layer and its gradients use.

Run the allocator variants one after the other on an idle machine: the 2-core machines
here vary by 20 % between runs minutes apart (benchmarks/README.md, "Model step").
"""

from __future__ import annotations

import argparse
import resource

import jax
import jax.numpy as jnp
from flax import nnx

from fourm import modalities
from fourm.models import fourm as fourm_model
from fourm.models.blocks import EncoderBlock
from fourm.models.layers import Attention, GatedMlp

import model_step  # benchmarks/model_step.py: the workload and its timing

TOKENS, DIM, HEADS = 128, 384, 6


def step_row(batch_size: int, repeats: int) -> list[tuple[str, str]]:
  config = fourm_model.PRESETS["tiny"](dtype=jnp.float32)
  batch = model_step.fixed_split_batch(batch_size, modalities.REFERENCE_LAYOUT)
  state, _, train_step = model_step.build(config, "grouped")
  # One compilation serves both: the program's scratch size and the timed calls.
  compiled = train_step.lower(state, batch).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes

  def run_step(batch):
    nonlocal state
    state, loss = compiled(state, batch)
    return loss

  seconds = model_step.seconds_per_call(run_step, batch, repeats=repeats)
  before = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(repeats):
    jax.block_until_ready(run_step(batch))
  after = resource.getrusage(resource.RUSAGE_SELF)
  per_step = lambda field: (getattr(after, field) - getattr(before, field)) / repeats  # noqa: E731
  return [("train step", f"{seconds:.3f} s"),
          ("XLA scratch per step", f"{temp / 2**20:,.0f} MiB"),
          ("minor page faults per step", f"{per_step('ru_minflt'):,.0f}"),
          ("user CPU per step", f"{per_step('ru_utime'):.2f} s"),
          ("system CPU per step", f"{per_step('ru_stime'):.2f} s")]


def forward_backward_row(name: str, module: nnx.Module, call, x, repeats: int):
  graphdef, params = nnx.split(module)
  forward = jax.jit(lambda p, x: jnp.sum(call(nnx.merge(graphdef, p), x)))
  both = jax.jit(jax.value_and_grad(
      lambda p, x: jnp.sum(call(nnx.merge(graphdef, p), x) ** 2), argnums=(0, 1)))
  f = model_step.seconds_per_call(forward, params, x, repeats=repeats)
  fb = model_step.seconds_per_call(both, params, x, repeats=repeats)
  return (f"{name}: forward / forward + backward",
          f"{f * 1e3:.1f} / {fb * 1e3:.1f} ms (x{fb / f:.2f})")


def block_rows(batch_size: int, repeats: int) -> list[tuple[str, str]]:
  x = jax.random.normal(jax.random.key(0), (batch_size, TOKENS, DIM))
  mask = jnp.ones((batch_size, 1, TOKENS, TOKENS), bool)
  rngs = nnx.Rngs(0)
  return [
      forward_backward_row("encoder block", EncoderBlock(DIM, HEADS, 4.0, rngs=rngs),
                           lambda m, x: m(x, mask), x, repeats),
      forward_backward_row("its MLP", GatedMlp(DIM, 4.0, rngs=rngs), lambda m, x: m(x), x,
                           repeats),
      forward_backward_row("its attention", Attention(DIM, HEADS, rngs=rngs),
                           lambda m, x: m(x, mask), x, repeats)]


def matmul_rows(repeats: int) -> list[tuple[str, str]]:
  m, k, n = 1024, 384, 1024
  x, w, dy = jnp.ones((m, k)), jnp.ones((k, n)), jnp.ones((m, n))
  rows = []
  for name, fn, args in (("x @ w (forward)", lambda x, w: x @ w, (x, w)),
                         ("dy @ w.T (input gradient)", lambda dy, w: dy @ w.T, (dy, w)),
                         ("x.T @ dy (weight gradient)", lambda x, dy: x.T @ dy, (x, dy))):
    seconds = model_step.seconds_per_call(jax.jit(fn), *args, repeats=repeats)
    rows.append((f"matmul {m}x{k}x{n}, {name}", f"{2 * m * k * n / seconds / 1e9:.0f} GFLOP/s"))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  rows = (step_row(args.batch, args.repeats) + block_rows(args.batch, 2 * args.repeats)
          + matmul_rows(2 * args.repeats))
  print(f"4M tiny step pieces, float32, batch {args.batch}, on "
        f"{jax.devices()[0].device_kind} x{jax.device_count()}")
  width = max(len(what) for what, _ in rows)
  for what, value in rows:
    print(f"{what:<{width}}  {value}")


if __name__ == "__main__":
  main()
