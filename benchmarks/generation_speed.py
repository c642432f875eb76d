"""Seconds per generated image: caption -> tok_rgb with MaskGIT, the reference's workload.

    python benchmarks/generation_speed.py                 # 4M tiny, fp32, CPU
    python benchmarks/generation_speed.py --size base --batches 1 8 64   # e.g. on a GPU
    python benchmarks/generation_speed.py --steps 64 --batches 1 --scales 1   # long schedules

The workload (issue 7): the 4M tiny model of the model benchmark (tok_rgb 196 tokens /
vocab 16384, tok_depth, caption at the 224 px layout), a caption of 16 tokens as the
condition, tok_rgb generated with 8 MaskGIT steps on the cosine schedule at temperature
1, unguided (cfg 1) and with classifier-free guidance 2 (two streams per step), at batch
1 and 8. The PyTorch reference takes about 1.0 s per image at batch 1 and 0.85 s at
batch 8 (cfg 1) on a 2-core CPU, and 1.85 s and 1.34 s on the slower 2-core AMD EPYC
where benchmarks/README.md's table of both was measured.

Weights are random (speed does not depend on them). Each setting is compiled and run
once ("first s": what a user waits for the first batch, compilation included), then
timed over --repeats runs (median; "compile s" is the first call less that). --steps sets
the MaskGIT steps: the dense loop compiles at most `step_plan.MAX_SHAPES` step bodies
whatever their number, so the compile time stays that of 8 steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from fourm import modalities
from fourm.generation.guidance import Guidance
from fourm.generation.sampler import Decoding, Sampler, sequence_entry
from fourm.models import fourm as fourm_model

NAMES = ("tok_rgb", "tok_depth", "caption")
CAPTION_TOKENS = 16


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="tiny", choices=sorted(fourm_model.PRESETS))
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0],
                      help="guidance scales; 1 runs the unguided path")
  parser.add_argument("--steps", type=int, default=8, help="MaskGIT steps (cosine schedule)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--cpu-fast-compile", action="store_true",
                      help="on a CPU, compile at LLVM -O0 (Sampler(cpu_fast_compile=True)): "
                           "faster to compile, slower to run")
  args = parser.parse_args()

  layout = modalities.REFERENCE_LAYOUT
  model = fourm_model.FourM(fourm_model.PRESETS[args.size](), NAMES, layout, 128, 128,
                            rngs=nnx.Rngs(0))
  sampler = Sampler(model, cpu_fast_compile=args.cpu_fast_compile)
  tokens = modalities.get("tok_rgb").num_tokens(layout)
  rng = np.random.default_rng(0)
  print(f"4M {args.size}, float32, caption ({CAPTION_TOKENS} tokens) -> tok_rgb ({tokens} "
        f"tokens), MaskGIT {args.steps} steps (cosine), on {jax.devices()[0].platform}, "
        f"compiler options {sampler.compiler_options or 'default'}")
  print(f"{'cfg':>4} {'batch':>6} {'s/batch':>9} {'s/image':>9} {'first s':>9} "
        f"{'compile s':>10}")
  for scale in args.scales:
    guidance = Guidance() if scale == 1.0 else Guidance(scale=scale)
    decoding = Decoding("tok_rgb", num_steps=args.steps, guidance=guidance)
    for batch in args.batches:
      caption = rng.integers(4300, 29_000, (batch, CAPTION_TOKENS)).astype(np.int32)
      known = {"caption": sequence_entry(list(caption), 256)}

      def run(seed: int) -> None:
        out = sampler.generate(known, decoding, jax.random.key(seed))
        np.asarray(out["tok_rgb"]["tokens"])  # block until done

      started = time.perf_counter()
      run(0)
      compile_s = time.perf_counter() - started
      times = []
      for repeat in range(args.repeats):
        started = time.perf_counter()
        run(repeat + 1)
        times.append(time.perf_counter() - started)
      seconds = statistics.median(times)
      print(f"{scale:>4g} {batch:>6} {seconds:>9.3f} {seconds / batch:>9.3f} "
            f"{compile_s:>9.1f} {compile_s - seconds:>10.1f}")


if __name__ == "__main__":
  main()
