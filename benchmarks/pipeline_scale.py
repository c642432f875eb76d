"""The input pipeline at pod scale: the 4M-7 recipe's samples/s per host against a step's
consumption, and what a 256-host run reads per step (issue 21, item 5).

    python benchmarks/pipeline_scale.py                     # 2,048 records, workers 0 1 2
    python benchmarks/pipeline_scale.py --workers 0 2 --records 4096 --batches 6
    python benchmarks/pipeline_scale.py --data /tmp/mod7 --mfu 0.3 --step-seconds b=0.25

The data (built under --data, or a temporary directory) is laid out as the recipe reads
it (`configs/4m_mod7.py`: data.paths = photos, tokens side by side): `source/` holds
what `fourm ingest` keeps of a photo (rgb as JPEG bytes, caption, det boxes, key), from
--scenes synthetic-world scenes rendered at --photo-size and cycled over --records
records; `tokens/` holds tok_rgb, tok_depth, tok_normal, tok_semseg and tok_clip as
int32 14 x 14 grids (224 px, 16 px patches), uniformly random ids of each vocabulary,
written by `fourm.data.derived.write_derived`, the writer `fourm tokenize` uses.

Both are read through `fourm.train.loop.make_pipeline`, the pipeline `fourm train`
builds: the recipe's modalities, 128 + 128 token budgets, the rgb2all + all2all
Dirichlet mixture (alpha 0.5), the reference budget rule, augment off, with
--workers grain worker processes. The caption and det sequences are WordPiece-encoded
per sample inside the masking, as in training.

Consumption is not measured (no accelerator here): a step's model FLOPs per sample
(`fourm/models/flops.py`, train = 3 forwards, the decoder's target split measured on
the masked batches) over an assumed per-host rate, --chips-per-host x --chip-tflops x
--mfu (default 8 H100 at 40 % of 989 bf16 dense TFLOP/s), or --step-seconds SIZE=S.

Prints one table, a row per quantity and a column per 4M size:
  per-host batch         8 GPUs x 128 samples (B) or x 64 (L, XL), the reference's runs
  train GFLOP per sample model FLOPs of one sample's step (fwd + bwd = 3 forwards)
  step seconds per host  per-host batch x GFLOP per sample / the assumed per-host rate
  consumption            samples/s per host that the step eats
  headroom: ...          a pipeline rate ("rate" column) / the consumption; the goal is 10x.
                         Measured here: the pipeline with each --workers count (timed
                         after each worker's first batch, so start-up is excluded).
                         Projected: the per-core rate (samples/s per worker of the
                         worker row whose workers were fastest) times the recipe's 8, or
                         times --host-cores (every core of a host, none left to the
                         trainer); and token-record decoding alone (read, decode,
                         validate; no photo, masking or batching) on 8 workers.
  read ...               bytes per sample on disk (the shard files of both directories over
                         the record count) times the per-host batch, times 256 hosts, and
                         per second at the consumption rate
Below it: the per-core rate, milliseconds per sample of each stage in one process, the
bytes of each record and the decoder's mean target split.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import tempfile
import time
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from fourm import modalities
from fourm.config import load_config
from fourm.data import derived, records, synthetic
from fourm.data.pipeline import collate
from fourm.models import flops
from fourm.models import fourm as fourm_model
from fourm.train.loop import make_pipeline

CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                           "4m_mod7.py")
TOKEN_GRIDS = ("tok_rgb", "tok_depth", "tok_normal", "tok_semseg", "tok_clip")
# The reference's runs: 4M-B at 128 samples per GPU, 4M-L and 4M-XL at 64, 8 GPUs a host.
SIZES = {"b": ("base", 1024), "l": ("large", 512), "xl": ("xlarge", 512)}
RECIPE_WORKERS = 8        # configs/4m_mod7.py: data.worker_count
POD_HOSTS = 256
HEADROOM_GOAL = 10.0
RECORDS_PER_SHARD = 1000  # as `fourm synth` writes them


# Building the data -------------------------------------------------------------------------

def render_photos(count: int, size: int, quality: int) -> list[dict]:
  """`count` synthetic-world scenes as `fourm ingest` would keep photos of them: JPEG rgb,
  caption, det boxes."""
  photos = []
  for index in range(count):
    scene = synthetic.make_sample(0, "train", index, size)
    buffer = io.BytesIO()
    Image.fromarray(scene["rgb"]).save(buffer, format="JPEG", quality=quality)
    photos.append({"rgb": records.EncodedImage(buffer.getvalue(), "jpeg"),
                   "caption": scene["caption"], "det": scene["det"]})
  return photos


def write_source(out: str, num_records: int, photos: Sequence[dict]) -> None:
  """The photo dataset: record i is photo i mod len(photos), keyed by its index."""
  os.makedirs(out, exist_ok=True)
  ranges = records.split_into_shards(num_records, RECORDS_PER_SHARD)
  shards, stats = [], []
  for k, indices in enumerate(ranges):
    name = records.shard_name("train", k, len(ranges))
    samples = ({**photos[i % len(photos)], "key": f"train/{i:06d}"} for i in indices)
    count, shard_stats = records.write_shard(os.path.join(out, name), samples,
                                             first_record=indices.start)
    shards.append((name, count))
    stats.append(shard_stats)
  records.write_info(out, "pipeline_scale_photos", {"train": shards}, stats)


def random_token_grids(layout: modalities.Layout, seed: int):
  """A `derived.DeriveFn` in place of the VQ-VAEs: uniform ids of each vocabulary, int32
  grids as `fourm tokenize` stores them. Uniform ids carry the most entropy a grid can,
  so their compressed size (zstd still drops the int32s' zero high bytes) is about an
  upper bound for real tokens."""
  rng = np.random.default_rng(seed)

  def derive(samples: list[dict]) -> list[dict]:
    return [{name: rng.integers(0, modalities.get(name).vocab_size,
                                modalities.get(name).grid_shape(layout)).astype(np.int32)
             for name in TOKEN_GRIDS} for _ in samples]
  return derive


def build_dataset(root: str, num_records: int, num_scenes: int, photo_size: int,
                  quality: int) -> tuple[str, str]:
  """(photos, tokens) under `root`, built unless a finished pair is already there."""
  source, tokens = os.path.join(root, "source"), os.path.join(root, "tokens")
  if not os.path.exists(os.path.join(source, records.INFO_FILE)):
    write_source(source, num_records, render_photos(num_scenes, photo_size, quality))
  derived.write_derived(source, tokens, random_token_grids(modalities.REFERENCE_LAYOUT, 0),
                        job={"method": "random tokens", "grids": list(TOKEN_GRIDS)},
                        name="vqvae_tokens", modalities=["key"], progress=False,
                        log=lambda _: None)
  return source, tokens


def bytes_per_record(directory: str) -> float:
  """On-disk bytes of the train split's shard files per record."""
  split = records.DatasetInfo.load(directory).splits["train"]
  size = sum(os.path.getsize(os.path.join(directory, shard)) for shard in split.shards)
  return size / split.num_records


# Measuring the pipeline --------------------------------------------------------------------

def recipe_config(data: Sequence[str], workers: int, batch_size: int):
  """configs/4m_mod7.py as `fourm train` loads it, on this data, batch and worker count."""
  config = load_config(f"{CONFIG_FILE}:b")
  config.data.paths, config.data.worker_count = tuple(data), workers
  config.batch_size = batch_size
  return config


def measure_pipeline(config, batches: int) -> tuple[float, dict[str, float]]:
  """(samples/s in the steady state, mean target tokens per sample of each modality).

  The first batch of each worker is not timed: it carries the start-up (spawning, first
  reads), and the workers made theirs side by side while the first was awaited."""
  pipeline = make_pipeline(config, split="train", train=True, batch_size=config.batch_size)
  iterator = pipeline.iterator()
  try:
    seen = [target_tokens(next(iterator)) for _ in range(max(config.data.worker_count, 1))]
    start = time.perf_counter()
    for _ in range(batches):
      seen.append(target_tokens(next(iterator)))
    seconds = time.perf_counter() - start
  finally:
    iterator.close()  # its workers would go on filling their buffers during the next run
  return batches * config.batch_size / seconds, {
      name: float(np.mean([counts[name] for counts in seen])) for name in seen[0]}


def stage_seconds(config, data: Sequence[str], count: int) -> dict[str, float]:
  """Seconds per sample of each stage, in this process: reading and decoding a token
  record, a photo record (the JPEG decode included), a whole sample as the pipeline makes
  it (both reads, the center crop, the masking) and stacking samples into a batch."""
  pipeline = make_pipeline(config, split="train", train=True, batch_size=config.batch_size)
  stages = {}
  for what, directory in (("token record", data[1]), ("photo record", data[0])):
    source = records.RecordSource([directory], "train")
    stages[what] = per_item_seconds(lambda i, source=source: source[i], count)
  samples = []
  stages["whole sample"] = per_item_seconds(lambda i: samples.append(pipeline.samples[i]),
                                            count)
  start = time.perf_counter()
  collate(samples, pipeline.config.max_boxes)
  stages["batching"] = (time.perf_counter() - start) / len(samples)
  return stages


def per_item_seconds(load, count: int) -> float:
  load(count)  # first-call costs (opening shards, caches) are not per sample
  start = time.perf_counter()
  for index in range(count):
    load(index)
  return (time.perf_counter() - start) / count


def target_tokens(batch: Mapping) -> dict[str, float]:
  """Mean decoder predictions per sample of each modality in a masked batch."""
  return {name: float(np.asarray(entry["target_mask"]).sum(axis=1).mean())
          for name, entry in batch.items() if name != "meta"}


# The consumption side ----------------------------------------------------------------------

def train_flops_per_sample(size: str, target_split: Mapping[str, float]) -> float:
  """Model FLOPs of one sample's training step (3 forwards) at 128 + 128 tokens."""
  config = fourm_model.PRESETS[size]()
  split = {name: count for name, count in target_split.items() if count > 0}
  return 3 * flops.forward_flops(config, 128, 128, split)


def parse_step_seconds(entries: Sequence[str]) -> dict[str, float]:
  """['b=0.25', ...] -> {'b': 0.25, ...}."""
  parsed = {}
  for entry in entries:
    size, _, seconds = entry.partition("=")
    if size not in SIZES or not seconds:
      raise SystemExit(f"--step-seconds {entry!r}: expected SIZE=SECONDS, SIZE one of "
                       f"{list(SIZES)}")
    parsed[size] = float(seconds)
  return parsed


# Printing ----------------------------------------------------------------------------------

def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
  widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
  aligned = [f"{{:<{widths[0]}}}"] + [f"{{:>{w}}}" for w in widths[1:]]
  for line in (header, ["-" * w for w in widths], *rows):
    print("| " + " | ".join(a.format(cell) for a, cell in zip(aligned, line)) + " |")


def human_bytes(count: float) -> str:
  for unit in ("B", "KB", "MB", "GB"):
    if count < 1000:
      return f"{count:,.1f} {unit}"
    count /= 1000
  return f"{count:,.1f} TB"


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", help="build (or reuse) the dataset here; default: a temp dir")
  parser.add_argument("--records", type=int, default=2048)
  parser.add_argument("--scenes", type=int, default=64, help="distinct photos, cycled")
  parser.add_argument("--photo-size", type=int, default=224)
  parser.add_argument("--jpeg-quality", type=int, default=90)
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--batches", type=int, default=24, help="timed batches per setting")
  parser.add_argument("--stage-samples", type=int, default=256,
                      help="samples timed per stage in the breakdown")
  parser.add_argument("--chips-per-host", type=int, default=8)
  parser.add_argument("--chip-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
  parser.add_argument("--mfu", type=float, default=0.4)
  parser.add_argument("--host-cores", type=int, default=112,
                      help="CPU cores of a host (a DGX H100: two 56-core Xeon 8480C)")
  parser.add_argument("--step-seconds", nargs="*", default=[], metavar="SIZE=S",
                      help="measured step times per host, instead of the FLOPs estimate")
  return parser.parse_args()


@dataclasses.dataclass
class Measured:
  """What this machine measured, on the data it built."""
  num_records: int
  build_seconds: float
  photo_bytes: float                     # per record, on disk
  token_bytes: float
  rates: list[tuple[int, float]]         # (workers, samples/s)
  stages: dict[str, float]               # stage -> seconds per sample, one process
  target_split: dict[str, float]         # modality -> mean decoder predictions per sample

  @property
  def per_core(self) -> tuple[int, float]:
    """(workers, samples/s per worker) of the run with worker processes whose workers were
    fastest, as the recipe's 8 workers on a host with cores to spare would run: it pays
    the hand-over between processes. Without such a run, the in-process rate."""
    with_workers = [(w, rate / w) for w, rate in self.rates if w > 0]
    return max(with_workers or [(0, rate) for w, rate in self.rates],
               key=lambda entry: entry[1])


def measure(args: argparse.Namespace) -> Measured:
  """Builds (or reuses) the data, then times the pipeline and its stages on it."""
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    data = build_dataset(args.data or tmp, args.records, args.scenes, args.photo_size,
                         args.jpeg_quality)
    build_seconds = time.perf_counter() - start
    rates, split = [], {}
    for workers in args.workers:
      rate, split = measure_pipeline(recipe_config(data, workers, args.batch_size),
                                     args.batches)
      rates.append((workers, rate))
    return Measured(
        num_records=records.DatasetInfo.load(data[0]).splits["train"].num_records,
        build_seconds=build_seconds, photo_bytes=bytes_per_record(data[0]),
        token_bytes=bytes_per_record(data[1]), rates=rates,
        stages=stage_seconds(recipe_config(data, 0, args.batch_size), data,
                             args.stage_samples),
        target_split=split)


def consumption(args: argparse.Namespace, split: Mapping[str, float]
                ) -> dict[str, tuple[int, float, float]]:
  """size -> (per-host batch, train FLOPs per sample, step seconds per host)."""
  given = parse_step_seconds(args.step_seconds)
  host_flops = args.chips_per_host * args.chip_tflops * 1e12 * args.mfu
  sizes = {}
  for size, (preset, batch) in SIZES.items():
    train_flops = train_flops_per_sample(preset, split)
    sizes[size] = (batch, train_flops, given.get(size, batch * train_flops / host_flops))
  return sizes


def table_rows(args: argparse.Namespace, measured: Measured,
               sizes: Mapping[str, tuple[int, float, float]]) -> list[list[str]]:
  need = {size: batch / step_s for size, (batch, _, step_s) in sizes.items()}
  sample_bytes = measured.photo_bytes + measured.token_bytes
  _, per_core = measured.per_core
  host_rate = per_core * args.host_cores

  def by_size(what: str, note: str, cell) -> list[str]:
    return [what, note] + [cell(size, *entry) for size, entry in sizes.items()]

  def headroom(what: str, rate: float) -> list[str]:
    return [what, f"{rate:,.0f}/s"] + [f"{rate / need[size]:.2f}x" for size in sizes]

  given = "given for " + ",".join(sorted(parse_step_seconds(args.step_seconds)))
  return [
      by_size("per-host batch (8 GPUs)", "", lambda z, b, f, s: f"{b:,}"),
      by_size("train GFLOP per sample", "", lambda z, b, f, s: f"{f / 1e9:,.0f}"),
      by_size("step seconds per host", given if args.step_seconds else "assumed",
              lambda z, b, f, s: f"{s:.3f}"),
      by_size("consumption, samples/s per host", "", lambda z, b, f, s: f"{need[z]:,.0f}"),
      *[headroom(f"headroom: pipeline, {w} worker(s), measured here", rate)
        for w, rate in measured.rates],
      headroom(f"headroom: {RECIPE_WORKERS} workers (recipe) x per-core rate",
               per_core * RECIPE_WORKERS),
      headroom(f"headroom: {args.host_cores} cores x per-core rate", host_rate),
      headroom(f"headroom: token-record decoding alone, {RECIPE_WORKERS} workers",
               RECIPE_WORKERS / measured.stages["token record"]),
      by_size(f"{HEADROOM_GOAL:g}x met ({args.host_cores} cores)", "",
              lambda z, b, f, s: "yes" if host_rate >= HEADROOM_GOAL * need[z] else "no"),
      by_size("read per host per step", f"{human_bytes(sample_bytes)}/sample",
              lambda z, b, f, s: human_bytes(b * sample_bytes)),
      by_size(f"read by {POD_HOSTS} hosts per step", "",
              lambda z, b, f, s: human_bytes(POD_HOSTS * b * sample_bytes)),
      by_size(f"read by {POD_HOSTS} hosts per second", "",
              lambda z, b, f, s: human_bytes(POD_HOSTS * need[z] * sample_bytes) + "/s"),
  ]


def main() -> None:
  args = parse_args()
  parse_step_seconds(args.step_seconds)  # a typo fails now, not after the measurements
  measured = measure(args)
  sizes = consumption(args, measured.target_split)
  print(f"data: {measured.num_records:,} records ({args.scenes} distinct {args.photo_size} "
        f"px photos cycled), built in {measured.build_seconds:.0f} s; batch "
        f"{args.batch_size}, {args.batches} timed batches per setting; {os.cpu_count()} CPU "
        "cores here")
  print(f"consumption: {args.chips_per_host} chips x {args.chip_tflops:g} TFLOP/s x MFU "
        f"{args.mfu:g} per host, unless step seconds are given")
  print_table(["what", "rate", *(f"4M-{size.upper()}" for size in SIZES)],
              table_rows(args, measured, sizes))
  workers, per_core = measured.per_core
  print(f"per-core rate: {per_core:,.0f} samples/s (the {workers}-worker row)")
  print("ms per sample, one process: " + ", ".join(
      f"{what} {seconds * 1e3:.2f}" for what, seconds in measured.stages.items()))
  print(f"bytes per sample on disk: photo record {human_bytes(measured.photo_bytes)} + token "
        f"record {human_bytes(measured.token_bytes)}")
  print("decoder targets per sample: " + ", ".join(
      f"{name} {count:.1f}" for name, count in measured.target_split.items()))


if __name__ == "__main__":
  main()
