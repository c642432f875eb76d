"""Reconstruction quality and decode speed of trained tokenizers, side by side: a ViT
VQ-VAE against a DiVAE (diffusion decoder) of the same grid and codebook, or any others.

    python benchmarks/tokenizer_quality.py --data /tmp/divae_world \
        --tokenizers vit=/tmp/tq/vit divae=/tmp/tq/divae --ddim-steps 1 25 50 \
        --picture /tmp/tokenizer_quality.png

Each LABEL=WORKDIR is a `fourm tokenizer train` workdir (configs/tokenizers/vqvae.py or
divae.py). Every held-out record of `--split` (the synthetic world's 100 "val" scenes) is
encoded and decoded with its own normalization stats (`VQTokenizer.reconstruct`); a
DiVAE is decoded once per `--ddim-steps` count, from seed 0. Printed per row: the
training steps of the checkpoint, the metric of the modality (rgb: PSNR in dB over
0-255, mean of per-image values; depth: abs-rel; normals: mean angular error in
degrees), and decode throughput in images/s for batches of `--batch` tokens (compile
excluded; best of `--repeats`). The picture shows a few held-out originals with each
tokenizer's reconstruction beside them (the DiVAE at the first of --ddim-steps that is
>= 25, else the last).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from flax import nnx
from PIL import Image, ImageDraw

from fourm.checkpoint import Checkpoints
from fourm.data import draw, tiles
from fourm.data.records import RecordSource
from tokenizers_vq.train import load_tokenizer
from tokenizers_vq.vqvae import num_params

METRICS = {"rgb": "psnr_db", "depth": "abs_rel", "normal": "angle_deg"}


def score(modality: str, pred: np.ndarray, target: np.ndarray) -> float:
  """The modality's reconstruction metric, computed here from raw arrays."""
  if modality == "rgb":
    mse = np.mean(np.square(pred.astype(np.float64) - target.astype(np.float64)),
                  axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))
  if modality == "depth":
    return float(np.mean(np.abs(pred - target) / target))
  if modality == "normal":
    unit = lambda v: v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
    cos = np.clip(np.sum(unit(pred) * unit(target), axis=-1), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)).mean())
  raise ValueError(f"no metric for {modality!r}")


def trained_steps(workdir: str) -> int:
  checkpoints = Checkpoints(workdir, every=1, keep=1, async_save=False, owner=False)
  meta = checkpoints.latest_meta() or {}
  checkpoints.close()
  return int(meta.get("step", -1))


def in_batches(fn, data: np.ndarray, batch: int) -> np.ndarray:
  """fn over fixed-size batches (the last padded by repeating), so each compiles once."""
  out = []
  for start in range(0, len(data), batch):
    chunk = data[start:start + batch]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
    out.append(fn(padded)[:len(chunk)])
  return np.concatenate(out)


def images_per_s(fn, tokens: np.ndarray, repeats: int) -> float:
  fn(tokens)  # compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn(tokens)
    best = min(best, time.perf_counter() - start)
  return len(tokens) / best


def picture(modality: str, columns: list[tuple[str, np.ndarray]], path: str, count: int,
            tile: int = 192) -> str:
  """Rows of held-out images: the original, then each tokenizer's reconstruction."""
  text_font = draw.font(draw.TEXT_SIZE)
  line = draw.line_height(text_font)
  pad, gap = 10, 6
  width = 2 * pad + len(columns) * tile + (len(columns) - 1) * gap
  height = 2 * pad + line + gap + count * tile + (count - 1) * gap
  canvas = Image.new("RGB", (width, height), (255, 255, 255))
  pen = ImageDraw.Draw(canvas)
  for c, (label, images) in enumerate(columns):
    x = pad + c * (tile + gap)
    draw.draw_centered(pen, x + tile / 2, pad, label, text_font, (30, 30, 30))
    for r in range(count):
      shown = dict(tiles.sample_tiles({modality: images[r]}, tile))[modality]
      canvas.paste(Image.fromarray(shown), (x, pad + line + gap + r * (tile + gap)))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  canvas.save(path, format="PNG")
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="records with the raw modality")
  parser.add_argument("--split", default="val")
  parser.add_argument("--tokenizers", nargs="+", required=True, metavar="LABEL=WORKDIR")
  parser.add_argument("--ddim-steps", type=int, nargs="+", default=[25])
  parser.add_argument("--batch", type=int, default=50)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--picture", default="/tmp/tokenizer_quality.png")
  parser.add_argument("--rows", type=int, default=6)
  args = parser.parse_args()

  loaded = []
  for entry in args.tokenizers:
    label, _, workdir = entry.partition("=")
    loaded.append((label, workdir, load_tokenizer(workdir)))
  modality = loaded[0][2].raw_name
  if any(t.raw_name != modality for _, _, t in loaded):
    raise SystemExit("the tokenizers must all read the same modality")
  source = RecordSource([args.data], args.split)
  originals = np.stack([source[i][modality] for i in range(len(source))])
  metric = METRICS[modality]
  print(f"{len(originals)} {args.split} images of {modality}, {originals.shape[1]} px; "
        f"decode batches of {args.batch}")
  print(f"{'tokenizer':<10} {'decoder':<9} {'params':>10} {'grid':>5} {'codes':>6} "
        f"{'steps':>6} {'DDIM':>5} {metric:>9} {'decode img/s':>13}")

  columns = [("original", originals)]
  for label, workdir, tokenizer in loaded:
    config = tokenizer.config
    params = num_params(nnx.merge(tokenizer._graphdef, tokenizer._params, tokenizer._codebook))
    tokens, stats = tokenizer.encode(originals[:args.batch], return_stats=True)
    step_counts = args.ddim_steps if config.is_diffusion else [None]
    pictured = next((s for s in step_counts if s is None or s >= 25), step_counts[-1])
    for steps in step_counts:
      recon = in_batches(lambda raw, steps=steps: tokenizer.reconstruct(raw, steps=steps),
                         originals, args.batch)
      speed = images_per_s(lambda t, steps=steps: tokenizer.decode(t, stats, steps=steps),
                           tokens, args.repeats)
      decoder = "diffusion" if config.is_diffusion else "ViT"
      print(f"{label:<10} {decoder:<9} {params:>10,} {config.grid:>3}x{config.grid:<1} "
            f"{config.vocab_size:>6} {trained_steps(workdir):>6} {steps or '-':>5} "
            f"{score(modality, recon, originals):>9.3f} {speed:>13,.1f}")
      if steps == pictured:
        columns.append((f"{label} ({steps} DDIM steps)" if steps else label, recon))
  print(f"picture: {picture(modality, columns, args.picture, args.rows)}")


if __name__ == "__main__":
  main()
