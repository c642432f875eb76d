"""Data throughput: synthetic-world generation (scenes/s) and the grain pipeline (samples/s).

    python benchmarks/data_throughput.py                 # 10,000 scenes at 64 px, as the issue asks
    python benchmarks/data_throughput.py --num 2000 --resolution 224

Prints one table. The generation row runs `fourm synth` end to end (render, validate,
encode, write ArrayRecord shards) with the given number of worker processes; the
pipeline rows read that dataset back through shuffle, augmentation and batching.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from fourm.data import synthetic, world
from fourm.data.pipeline import Pipeline, PipelineConfig


def bench_render(resolution: int, count: int = 200) -> float:
  start = time.perf_counter()
  for index in range(count):
    synthetic.make_sample(0, "train", index, resolution)
  return count / (time.perf_counter() - start)


def bench_synth(out: str, num: int, resolution: int, workers: int) -> tuple[float, float]:
  start = time.perf_counter()
  world.write_world(out, num, resolution, seed=0, workers=workers, progress=False,
                    log=lambda _: None)
  seconds = time.perf_counter() - start
  return num / seconds, seconds


def bench_pipeline(data: str, batch_size: int, resolution: int, threads: int, workers: int,
                   batches: int) -> float:
  config = PipelineConfig(data=(data,), batch_size=batch_size, resolution=resolution,
                          read_threads=threads, worker_count=workers)
  it = Pipeline(config).iterator()
  next(it)  # start-up (worker spawn, first reads) is not throughput
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num", type=int, default=10_000)
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--batches", type=int, default=30)
  args = parser.parse_args()

  rows = []
  rows.append((f"render one scene, 1 process ({args.resolution} px)",
               f"{bench_render(args.resolution):,.0f} scenes/s", ""))
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "world")
    rate, seconds = bench_synth(out, args.num, args.resolution, args.workers)
    rows.append((f"fourm synth {args.num:,} scenes, {args.workers} processes",
                 f"{rate:,.0f} scenes/s", f"{seconds:.1f} s total"))
    for threads, workers in ((1, 0), (4, 0), (4, args.workers)):
      rate = bench_pipeline(out, args.batch_size, args.resolution, threads, workers, args.batches)
      rows.append((f"pipeline: {threads} thread(s), {workers} worker process(es)",
                   f"{rate:,.0f} samples/s", f"batch {args.batch_size}, augmented"))

  width = max(len(r[0]) for r in rows)
  print(f"{'what':<{width}}  {'rate':>16}  note")
  print("-" * (width + 36))
  for what, rate, note in rows:
    print(f"{what:<{width}}  {rate:>16}  {note}")


if __name__ == "__main__":
  main()
