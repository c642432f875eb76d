"""Forward and training-step speed of the 4M model on the workload the reference was timed on.

    python benchmarks/model_step.py                      # tiny, fp32, CPU: the reference's bar
    python benchmarks/model_step.py --size base --dtype bfloat16 --batch 64   # e.g. on a GPU

The workload (issue 5): modalities tok_rgb (196 tokens, vocab 16384), tok_depth (196,
vocab 8192) and caption (max length 256, vocab 30000) at the 224 px layout; batch 8;
128 input and 128 target tokens split rgb 48 / depth 48 / caption 32 for both; fp32.
The PyTorch reference takes about 0.62 s per forward pass and 2.0 s per training step
(forward + backward + AdamW) for it on a 2-core CPU.

Prints one table: seconds per call (median of --repeats after a compile and a warm-up
call), tokens/s (encoder + decoder slots) and achieved GFLOP/s of model FLOPs
(`fourm/models/flops.py`: the useful work, a train step counted as 3 forwards), for
the grouped output heads (the default) and the dense ones. "fourm.train step" is the
step `fourm train` runs: sharded over a mesh of every device, AdamW with clipping and
masked weight decay, the non-finite guard, donated state.

Two bars printed below the table, both measured in the same run on the same machine:
the machine's fp32 matmul ceiling (the best GFLOP/s of jitted matmuls of the model's
shapes; the step's GFLOP/s as a share of it), and, with `--reference ML4M_CHECKOUT
--reference-python VENV/bin/python`, the reference implementation on this workload
(benchmarks/reference_model_step.py, run in that venv between fourm's measurements).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fourm import modalities
from fourm.models import flops
from fourm.models import fourm as fourm_model
from fourm.models.loss import fourm_loss

NAMES = ("tok_rgb", "tok_depth", "caption")
SPLIT = {"tok_rgb": 48, "tok_depth": 48, "caption": 32}


def fixed_split_batch(batch_size: int, layout: modalities.Layout, seed: int = 0) -> dict:
  """A batch following the masked-batch contract with the benchmark's fixed split."""
  rng = np.random.default_rng(seed)
  batch = {}
  for name in NAMES:
    spec = modalities.get(name)
    n = spec.num_tokens(layout)
    if spec.kind == modalities.Kind.SEQUENCE:
      length = SPLIT[name]
      input_mask = np.zeros((batch_size, n), bool)
      target_mask = np.zeros((batch_size, n), bool)
      input_mask[:, :length] = True
      target_mask[:, :length] = True
      batch[name] = {
          "input_tokens": rng.integers(4, spec.vocab_size, (batch_size, n)).astype(np.int32),
          "input_mask": input_mask,
          "target_tokens": rng.integers(4, spec.vocab_size, (batch_size, n)).astype(np.int32),
          "target_labels": rng.integers(4, spec.vocab_size, (batch_size, n)).astype(np.int32),
          "target_mask": target_mask,
      }
    else:
      order = np.argsort(rng.uniform(size=(batch_size, n)), axis=1)
      ranks = np.argsort(order, axis=1)
      batch[name] = {
          "tokens": rng.integers(0, spec.vocab_size, (batch_size, n)).astype(np.int32),
          "input_mask": ranks < SPLIT[name],
          "target_mask": (ranks >= SPLIT[name]) & (ranks < 2 * SPLIT[name]),
      }
  return jax.tree.map(jnp.asarray, batch)


def seconds_per_call(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def build(config, heads: str):
  """Jitted forward (+ loss) and train step (+ AdamW) over split NNX state."""
  model = fourm_model.FourM(config, NAMES, modalities.REFERENCE_LAYOUT, input_budget=128,
                            target_budget=128, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.05),
                            wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))

  def loss_fn(model, batch):
    return fourm_loss(model, model(batch), heads=heads)[0]

  @jax.jit
  def forward(state, batch):
    model, _ = nnx.merge(graphdef, state)
    return loss_fn(model, batch)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, batch):
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  return state, forward, train_step


def build_real(config, heads: str):
  """The project's own train step (fourm/train): the logical-axis sharding on a mesh over
  every device (data parallel), AdamW with the 4M recipe (clipping, masked weight decay,
  warmup-cosine schedule), the non-finite guard, donated state."""
  from fourm.train import config as config_lib
  from fourm.train import mesh as mesh_lib
  from fourm.train import optimizer as optimizer_lib
  from fourm.train import state as state_lib
  from fourm.train import step as step_lib
  run = config_lib.default_config()
  mesh = mesh_lib.make_mesh(run.mesh)
  tx, schedule = optimizer_lib.make_optimizer(run.optimizer, 256, 1000)

  def build_model():
    return fourm_model.FourM(config, NAMES, modalities.REFERENCE_LAYOUT, input_budget=128,
                             target_budget=128, rngs=nnx.Rngs(0))

  graphdef, state = state_lib.create_train_state(build_model, tx, mesh)
  step = step_lib.make_train_step(graphdef, tx, schedule, mesh,
                                  jax.tree.map(lambda x: x.sharding, state), heads=heads)
  return state, step, mesh


def matmul_ceiling(repeats: int) -> tuple[float, str]:
  """(best GFLOP/s, its shape) of jitted fp32 matmuls the size of the model's largest:
  tokens x dim @ dim x 4 dim, and a slot chunk against a vocabulary."""
  best = (0.0, "")
  for m, k, n in ((2048, 384, 1536), (2048, 1536, 384), (1024, 384, 16384), (2048, 2048, 2048)):
    a = jnp.ones((m, k), jnp.float32)
    b = jnp.ones((k, n), jnp.float32)
    seconds = seconds_per_call(jax.jit(jnp.matmul), a, b, repeats=repeats)
    best = max(best, (2 * m * k * n / seconds / 1e9, f"{m}x{k} @ {k}x{n}"))
  return best


def reference_times(ml4m: str, python: str, batch: int, repeats: int) -> dict:
  """The reference's seconds per forward and train step (reference_model_step.py)."""
  import json
  import os
  import subprocess
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_model_step.py")
  done = subprocess.run([python, script, "--ml4m", ml4m, "--batch", str(batch),
                         "--repeats", str(repeats)], capture_output=True, text=True,
                        check=False)
  lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
  if done.returncode or not lines:
    raise SystemExit(f"the reference run failed:\n{done.stderr[-2000:]}")
  return json.loads(lines[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(fourm_model.PRESETS), default="tiny")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--heads", choices=("grouped", "dense", "both"), default="both")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--reference", metavar="ML4M_CHECKOUT",
                      help="also time the reference implementation (apple/ml-4m at cda590f)")
  parser.add_argument("--reference-python", metavar="PYTHON", default="python",
                      help="a python that can import the reference (its own venv)")
  args = parser.parse_args()
  if args.reference and args.size != "tiny":
    parser.error("--reference times the reference's 4M tiny only")

  config = fourm_model.PRESETS[args.size](dtype=jnp.dtype(args.dtype))
  batch = fixed_split_batch(args.batch, modalities.REFERENCE_LAYOUT)
  step_tokens = args.batch * 256
  forward = args.batch * flops.forward_flops(config, 128, 128, SPLIT)
  rows = []
  for heads in (("grouped", "dense") if args.heads == "both" else (args.heads,)):
    state, forward_fn, train_step = build(config, heads)
    forward_s = seconds_per_call(forward_fn, state, batch, repeats=args.repeats)

    def run_step(batch):
      nonlocal state
      state, loss = train_step(state, batch)
      return loss

    step_s = seconds_per_call(run_step, batch, repeats=args.repeats)
    for what, seconds, work in (("forward + loss", forward_s, forward),
                                ("train step (fwd + bwd + AdamW)", step_s, 3 * forward)):
      rows.append((f"{what}, {heads} heads", seconds, step_tokens / seconds,
                   work / seconds / 1e9))
    del state

    real_state, real_step, mesh = build_real(config, heads)
    from fourm.nn.sharding import DEFAULT_RULES
    from fourm.train.mesh import global_batch
    sharded_batch = global_batch(jax.device_get(batch), mesh, DEFAULT_RULES)

    def run_real_step(batch):
      nonlocal real_state
      real_state, metrics = real_step(real_state, batch)
      return metrics["loss"]

    real_s = seconds_per_call(run_real_step, sharded_batch, repeats=args.repeats)
    rows.append((f"fourm.train step, {heads} heads", real_s, step_tokens / real_s,
                 3 * forward / real_s / 1e9))
    del real_state

    if args.reference and heads == "grouped":  # between fourm's runs, same machine state
      ref = reference_times(args.reference, args.reference_python, args.batch, args.repeats)
      rows.append(("reference forward + loss", ref["forward_s"],
                   step_tokens / ref["forward_s"], forward / ref["forward_s"] / 1e9))
      rows.append(("reference train step (fwd + bwd + AdamW)", ref["train_step_s"],
                   step_tokens / ref["train_step_s"], 3 * forward / ref["train_step_s"] / 1e9))
  ceiling, shape = (matmul_ceiling(args.repeats) if jax.devices()[0].platform == "cpu"
                    else (None, ""))

  print(f"4M {args.size}, {args.dtype}, batch {args.batch}, 128 input + 128 target tokens, "
        f"on {jax.devices()[0].device_kind} x{jax.device_count()}")
  print(f"model GFLOP per forward: {forward / 1e9:.1f}")
  print(f"{'what':<46} {'s/call':>8} {'tokens/s':>10} {'GFLOP/s':>9}")
  for what, seconds, tokens, gflops in rows:
    print(f"{what:<46} {seconds:>8.3f} {tokens:>10,.0f} {gflops:>9,.0f}")
  named = {what: (seconds, gflops) for what, seconds, _, gflops in rows}
  real = named.get("fourm.train step, grouped heads")
  if ceiling:
    print(f"fp32 matmul ceiling: {ceiling:,.0f} GFLOP/s ({shape})"
          + (f"; the fourm.train step reaches {real[1] / ceiling:.0%} of it" if real else ""))
  reference = named.get("reference train step (fwd + bwd + AdamW)")
  if reference and real:
    print(f"fourm.train step against the reference's: {reference[0] / real[0]:.2f}x faster")


if __name__ == "__main__":
  main()
