"""Recall@1/5/10 of the retrieval memory bank on the synthetic world.

    python benchmarks/retrieval_recall.py                        # tiny random CLIP, CPU
    python benchmarks/retrieval_recall.py --encoder DIR_OR_HUB_ID --device cuda

Renders a synthetic world, builds `fourm index build`'s index over its train split and
two single-part banks over its held-out val split, and asks each record's caption or
image to find its own record:

- text -> document, image -> document: the query is one part of an indexed record, the
  hit that record's document (image + caption). Part of the query is in the document, so
  even a random encoder scores well on text -> document: it checks the plumbing.
- text -> image, image -> text (held-out pairs): a val record's caption searches a bank
  of the val images alone (and the reverse); only a trained CLIP does better than the
  chance column here. With `--tiny` the vectors are random and these rows are chance.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from fourm.data import records, world
from fourm.retrieval import build, documents, encoders, recall

KS = (1, 5, 10)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num", type=int, default=400, help="scenes (train + val)")
  parser.add_argument("--val-fraction", type=float, default=0.25)
  parser.add_argument("--resolution", type=int, default=64)
  parser.add_argument("--encoder", default=encoders.TINY,
                      help="hub id or local CLIP directory (default: the tiny random one)")
  parser.add_argument("--device", default="cpu")
  parser.add_argument("--workdir", default=None,
                      help="keep the world and indexes here (default: a temporary directory)")
  args = parser.parse_args()
  if args.workdir:
    run(args, args.workdir)
  else:
    with tempfile.TemporaryDirectory(prefix="retrieval-recall-") as workdir:
      run(args, workdir)


def run(args: argparse.Namespace, workdir: str) -> None:
  data = os.path.join(workdir, "world")
  start = time.perf_counter()
  world.write_world(data, args.num, args.resolution, val_fraction=args.val_fraction,
                    progress=False, log=lambda _: None)
  encoder = encoders.ClipDocumentEncoder.from_pretrained(args.encoder, device=args.device)

  def bank(split: str, parts: tuple[str, ...]):
    name = f"index_{split}_{'_'.join(parts)}"
    options = build.BuildOptions(encoder=args.encoder, split=split, parts=parts)
    return build.build_index(data, os.path.join(workdir, name), options, encoder=encoder,
                             device=args.device, progress=False, log=lambda _: None)

  train_bank = bank("train", documents.PARTS)
  val_images = bank("val", (documents.IMAGE,))
  val_texts = bank("val", (documents.TEXT,))
  train = list(records.RecordSource(data, "train"))
  val = list(records.RecordSource(data, "val"))
  rows = [("text -> document", "train image+caption", train_bank, train, documents.TEXT),
          ("image -> document", "train image+caption", train_bank, train, documents.IMAGE),
          ("text -> image (held out)", "val images", val_images, val, documents.TEXT),
          ("image -> text (held out)", "val captions", val_texts, val, documents.IMAGE)]

  print(f"encoder {args.encoder} on {args.device}; synthetic world of {args.num} scenes at "
        f"{args.resolution} px ({len(train)} train, {len(val)} val)\n")
  print("| queries | bank | bank size | " + " | ".join(f"R@{k}" for k in KS) + " | "
        + " | ".join(f"chance@{k}" for k in KS) + " |")
  print("| --- | --- | ---: | " + " | ".join("---:" for _ in KS * 2) + " |")
  for name, bank_name, memory, queries, part in rows:
    found = recall.recall_at_k(memory, encoder, queries, KS, query_part=part)
    print(f"| {name} | {bank_name} | {len(memory)} | "
          + " | ".join(f"{found[k]:.3f}" for k in KS) + " | "
          + " | ".join(f"{min(k, len(memory)) / len(memory):.3f}" for k in KS) + " |")
  print(f"\n{time.perf_counter() - start:.1f} s in all (world, encoder, three indexes)")


if __name__ == "__main__":
  main()
