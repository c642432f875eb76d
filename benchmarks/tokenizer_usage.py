"""Codebook usage of a VQ-VAE tokenizer with and without dead-code replacement.

    python benchmarks/tokenizer_usage.py                 # rgb_tiny, 64 px, a few minutes on CPU
    python benchmarks/tokenizer_usage.py --steps 1000 --batch 64 --preset depth_tiny

Renders `--num` scenes of the synthetic world (90% train, 10% held out, as `fourm synth`
splits them), trains the tokenizer twice from the same initialization and the same batch
order, once with dead-code replacement and once without, and prints one table: held-out
reconstruction metric(s), codebook usage (the share of the vocabulary that the held-out
tokens use, pooled over the whole held-out set), perplexity of those tokens, the last
training batch's usage, and encode / decode throughput of the trained tokenizer.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from fourm.data import synthetic
from tokenizers_vq import quantizer, vqvae
from tokenizers_vq import train_step as ts


def render(num: int, resolution: int, modality: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
  num_val = max(1, num // 10)
  split = lambda name, count: np.stack(
      [synthetic.make_sample(seed, name, i, resolution)[modality] for i in range(count)])
  return split("train", num - num_val), split("val", num_val)


def batches(data: np.ndarray, batch_size: int):
  """Fixed-size batches in order, the last one padded by wrapping around."""
  for start in range(0, len(data), batch_size):
    index = np.arange(start, start + batch_size) % len(data)
    yield data[index], min(batch_size, len(data) - start)


def evaluate(graphdef, state, config, val: np.ndarray, batch_size: int) -> dict[str, float]:
  """Held-out metrics (per-image averages) and usage / perplexity of all held-out tokens."""
  evaluate_step = ts.make_eval_step(graphdef, config)
  sums: dict[str, float] = {}
  codes = []
  for batch, count in batches(val, batch_size):
    metrics = evaluate_step(state, batch)
    codes.append(np.asarray(metrics.pop("codes"))[:count])
    for name in metrics:
      sums[name] = sums.get(name, 0.0) + float(metrics[name]) * count
  result = {name: value / len(val) for name, value in sums.items()}
  usage, perplexity = quantizer.usage_and_perplexity(np.concatenate(codes), config.vocab_size)
  result["usage_pct"], result["perplexity"] = 100 * float(usage), float(perplexity)
  return result


def throughput(fn, batch, repeats: int) -> float:
  fn(batch)  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn(batch)
    times.append(time.perf_counter() - start)
  return len(batch) / statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="rgb_tiny")
  parser.add_argument("--num", type=int, default=1000, help="scenes to render")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  base = vqvae.preset(args.preset)
  start = time.perf_counter()
  train, val = render(args.num, base.resolution, base.modality, args.seed)
  print(f"rendered {len(train)} train + {len(val)} held-out scenes at {base.resolution} px "
        f"in {time.perf_counter() - start:.1f} s")
  print(f"{args.preset}: vocab {base.vocab_size}, {base.grid}x{base.grid} tokens, "
        f"enc/dec width {base.enc_width} depth {base.enc_depth}/{base.dec_depth}; "
        f"{args.steps} steps of batch {args.batch}, AdamW lr {args.lr}, "
        f"{jax.devices()[0].platform}")

  rows = []
  for replace in (True, False):
    config = vqvae.preset(args.preset, dead_code_replacement=replace)
    model = vqvae.VQVAE(config, rngs=nnx.Rngs(args.seed))
    optimizer = ts.make_optimizer(ts.TrainConfig(
        learning_rate=args.lr, warmup_steps=args.warmup, total_steps=args.steps))
    graphdef, state = ts.init_state(model, optimizer)
    step = ts.make_train_step(graphdef, config, optimizer, seed=args.seed)
    order = np.random.default_rng(args.seed)
    replaced = 0
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = step(state, train[order.integers(0, len(train), args.batch)])
      replaced += int(metrics["codes_replaced"])
    train_seconds = time.perf_counter() - start
    held_out = evaluate(graphdef, state, config, val, args.batch)
    tokenizer = ts.VQTokenizer.from_state(graphdef, state)
    sample = val[np.arange(args.batch) % len(val)]
    tokens = tokenizer.encode(sample)
    rows.append(dict(
        replacement="on" if replace else "off", held_out=held_out,
        batch_usage=float(metrics["usage_pct"]), replaced=replaced,
        train_s=train_seconds,
        encode=throughput(tokenizer.encode, sample, args.repeats),
        decode=throughput(tokenizer.decode, tokens, args.repeats)))

  metric_names = [name for name in rows[0]["held_out"]
                  if name not in ("loss", "recon_loss", "commitment_loss", "usage_pct",
                                  "perplexity")]
  header = (f"{'replacement':<12}" + "".join(f"{'val ' + name:>13}" for name in metric_names)
            + f"{'val usage %':>13}{'val ppl':>9}{'batch use %':>13}{'replaced':>10}"
            + f"{'train s':>9}{'enc img/s':>11}{'dec img/s':>11}")
  print(header)
  print("-" * len(header))
  for row in rows:
    held_out = row["held_out"]
    print(f"{row['replacement']:<12}"
          + "".join(f"{held_out[name]:>13.3f}" for name in metric_names)
          + f"{held_out['usage_pct']:>13.1f}{held_out['perplexity']:>9.1f}"
          + f"{row['batch_usage']:>13.1f}{row['replaced']:>10,}{row['train_s']:>9.1f}"
          + f"{row['encode']:>11,.0f}{row['decode']:>11,.0f}")


if __name__ == "__main__":
  main()
