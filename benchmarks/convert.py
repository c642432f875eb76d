"""Converting a reference 4M checkpoint: wall time and peak memory against the file size.

    .venv/bin/python benchmarks/convert.py                # 4M-B, the 4M-7 modality set
    .venv/bin/python benchmarks/convert.py --size tiny    # a quick look

Writes a random-initialised reference file of the published layout (the tensor names,
shapes and config metadata of the reference's `FM` at that size; values from a seeded
generator, written tensor by tensor), then runs `fourm convert --from reference` on it
in a fresh process and reads that process's peak resident memory (ru_maxrss). The goal
(issue 17): peak below 1.5x the file's size. Then the export back, measured the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from flax import nnx

from fourm import modalities
from fourm.interop import reference_format as fmt
from fourm.interop.safetensors_file import write_safetensors
from fourm.models.config import PRESETS
from fourm.models.fourm import FourM

MODALITIES_4M7 = modalities.MODALITY_SET_4M7  # rgb pixels in, the 4M-7 tokens in and out


def reference_file(path: str, size: str) -> int:
  """A random reference checkpoint of the 4M-7 layout at `size`; returns its bytes."""
  architecture = PRESETS[size]()
  inputs = [n for n in MODALITIES_4M7 if modalities.get(n).can_input]
  targets = [n for n in MODALITIES_4M7 if modalities.get(n).can_target]
  config = fmt.reference_config(MODALITIES_4M7, inputs, targets, modalities.REFERENCE_LAYOUT,
                                architecture)
  model = fmt.read_config(config, path)
  # Shapes only: an abstract fourm model of the same architecture allocates nothing.
  untied = dataclasses.replace(model.architecture, tie_output_heads=False)  # as FM builds
  abstract = nnx.eval_shape(lambda: FourM(untied, model.modality_names,
                                          model.layout, 1, 1, rngs=nnx.Rngs(0)))
  flat = dict(nnx.to_flat_state(nnx.state(abstract, nnx.Param)))
  entries = list(fmt.tensor_map(abstract.modality_names, abstract.input_names,
                                abstract.target_names, model.domains, model.layout,
                                architecture, tied_heads=False))
  by_name = {e.reference: e for e in entries}
  rng = np.random.default_rng(0)

  def shape_of(entry) -> tuple[int, ...]:
    if isinstance(entry, fmt.Derived):
      return shape_of(by_name[entry.same_as]) if entry.same_as else entry.value().shape
    return fmt.reference_shape(entry, flat[entry.path].get_value().shape)

  def produce(name: str) -> np.ndarray:
    entry = by_name[name]
    if isinstance(entry, fmt.Derived):
      if entry.same_as is not None:  # the shared modality embedding: same values
        return np.asarray(shared.setdefault(entry.same_as, produce(entry.same_as)))
      return entry.value()
    if entry.reference in shared:
      return shared[entry.reference]
    values = (0.02 * rng.standard_normal(shape_of(entry), np.float32))
    if entry.vector:
      shared[entry.reference] = values  # small; a decoder twin may ask for it again
    return values

  shared: dict[str, np.ndarray] = {}
  shapes = [(e.reference, tuple(shape_of(e)), np.dtype(np.float32)) for e in entries]
  return write_safetensors(path, shapes, produce, fmt.metadata_of(config))


_MEASURED = ("import resource, sys\n"
             "from fourm import cli\n"
             "code = cli.main(sys.argv[1:])\n"
             "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
             "sys.exit(code)\n")


def run_measured(argv: list[str]) -> tuple[float, int]:
  """(seconds, peak RSS bytes) of `fourm ...argv` in a fresh process of its own."""
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-c", _MEASURED, *argv], check=True,
                        capture_output=True, text=True)
  seconds = time.perf_counter() - start
  peak = [line for line in done.stdout.splitlines() if line.startswith("peak_rss_kib")]
  return seconds, int(peak[-1].split()[1]) * 1024


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="base", choices=sorted(PRESETS))
  parser.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
  args = parser.parse_args()
  scratch = args.dir or tempfile.mkdtemp(prefix="fourm_convert_bench_")
  source = os.path.join(scratch, "reference.safetensors")
  start = time.perf_counter()
  size = reference_file(source, args.size)
  print(f"wrote a random 4M-7 {args.size} reference file: {size / 2**20:,.0f} MiB in "
        f"{time.perf_counter() - start:.0f} s ({source})")
  rows = []
  seconds, peak = run_measured(["convert", "--from", "reference", source, "--out",
                                os.path.join(scratch, "workdir")])
  rows.append(("import (reference -> workdir)", seconds, peak))
  seconds, peak = run_measured(["convert", "--to", "reference", os.path.join(scratch, "workdir"),
                                "--out", os.path.join(scratch, "export.safetensors")])
  rows.append(("export (workdir -> reference)", seconds, peak))
  print("\n| step | wall time | peak RSS | peak / file size |\n| --- | ---: | ---: | ---: |")
  for name, seconds, peak in rows:
    print(f"| {name} | {seconds:.1f} s | {peak / 2**20:,.0f} MiB | {peak / size:.2f}x |")


if __name__ == "__main__":
  main()
