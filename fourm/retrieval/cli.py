"""The `fourm index` commands: `build` a memory bank over a dataset, `search` it."""

from __future__ import annotations

import argparse
import os

import numpy as np

from fourm.errors import UsageError
from fourm.retrieval import build, documents, encoders, index, recall

RECALL_KS = (1, 5, 10)


def run_build(args: argparse.Namespace) -> None:
  encoder_name = encoders.TINY if args.tiny else args.encoder
  if args.tiny:
    print("--tiny: a tiny random-init CLIP; its vectors are MEANINGLESS (tests and demos)")
  options = build.BuildOptions(
      encoder=encoder_name, split=args.split, parts=_parts(args.parts),
      neighbours=args.neighbours, dropout_rate=args.dropout_rate,
      dropout_variants=args.dropout_variants, dropout_seed=args.seed,
      faiss=args.faiss or None)
  encoder = (encoders.ClipDocumentEncoder.from_pretrained(encoder_name, device=args.device)
             if args.recall else None)
  bank = build.build_index(args.data, args.out, options, batch_size=args.batch_size,
                           chunk_size=args.chunk_size, device=args.device,
                           progress=not args.quiet, encoder=encoder)
  print(summary(bank, args.out))
  if args.recall:
    source = bank.records()
    records = [source[i] for i in range(min(args.recall, len(source)))]
    print(recall_line(bank, encoder, records))


def _query_part(records) -> str | None:
  """The part recall queries with: the caption, or the image where no record has one."""
  for part in (documents.TEXT, documents.IMAGE):
    if any(documents.present_parts(r, (part,)).any() for r in records):
      return part
  return None


def summary(bank: index.MemoryBank, out: str) -> str:
  manifest = bank.manifest
  combos: dict[str, int] = {}
  for row in bank.present:
    name = "+".join(index.parts_names(row))
    combos[name] = combos.get(name, 0) + 1
  lines = [f"indexed {manifest.count} documents of {', '.join(manifest.data)} "
           f"[{manifest.split}] with {manifest.encoder} (dimension {manifest.dimension}, "
           f"faiss {manifest.faiss} inner product)",
           "  parts: " + ", ".join(f"{name} {n}" for name, n in sorted(combos.items()))]
  if bank.neighbours is not None:
    lines.append(f"  neighbour table: top {manifest.neighbours} per record for the whole "
                 f"query and {manifest.dropout_variants} query-dropout draws "
                 f"({manifest.dropout_rate:.0%} of words / patches dropped)")
  lines.append(f"index in {out}: {index.MANIFEST}, {index.FAISS_FILE}, {index.VECTORS}, "
               f"{index.DOCUMENTS}" + (f", {index.NEIGHBOURS}, {index.NEIGHBOUR_SCORES}"
                                       if bank.neighbours is not None else ""))
  return "\n".join(lines)


def recall_line(bank: index.MemoryBank, encoder, records) -> str:
  part = _query_part(records)
  if part is None:
    return "  recall: no record has a caption or an image to query with"
  found = recall.recall_at_k(bank, encoder, records, RECALL_KS, query_part=part)
  scores = "  ".join(f"@{k} {value:.3f}" for k, value in found.items())
  what = "caption" if part == documents.TEXT else "image"
  return (f"  recall of the record's own document for its {what} alone, over "
          f"{len(records)} records: {scores}")


def run_search(args: argparse.Namespace) -> None:
  if not args.text and not args.image:
    raise UsageError("give a query: --text TEXT and/or --image FILE")
  if args.k < 1:
    raise UsageError(f"-k {args.k}: ask for at least one document")
  bank = index.MemoryBank.load(args.index)
  encoder = encoders.ClipDocumentEncoder.from_pretrained(args.encoder or bank.manifest.encoder,
                                                         device=args.device)
  query = {}
  if args.text:
    query[documents.TEXT] = args.text
  if args.image:
    query[documents.IMAGE] = _read_image(args.image)
  vectors, _ = encoder.encode_documents([query])
  scores, rows = bank.search(vectors, args.k)
  source = bank.records() if args.captions else None
  print(f"{' + '.join(sorted(query))} query; index {args.index} ({len(bank)} documents, "
        f"{bank.manifest.encoder})")
  for rank, (row, score) in enumerate(zip(rows[0], scores[0]), 1):
    if row < 0:
      break
    line = (f"{rank:>3}  {bank.keys[row]}  {score:.4f}  "
            f"{'+'.join(index.parts_names(bank.present[row]))}")
    if source is not None:
      caption = source[int(row)].get(documents.TEXT)
      line += f"  {caption!r}" if caption else "  (no caption)"
    print(line)


def _parts(text: str) -> tuple[str, ...]:
  return documents.check_parts([p.strip() for p in text.split(",") if p.strip()])


def _read_image(path: str) -> np.ndarray:
  from fourm.data import records
  if not os.path.isfile(path):
    raise UsageError(f"--image {path}: no such file")
  try:
    with open(path, "rb") as f:
      return records.decode_image(f.read())
  except Exception as error:  # noqa: BLE001 - PIL raises many kinds for a bad file
    raise UsageError(f"--image {path}: not a readable image ({error})") from None
