"""Does retrieval-augmented training help? Two runs of the same model, data, steps and
seed on the synthetic world, caption -> rgb: one reads the caption alone, the other also
the document an index retrieves for it (ret1_tok_rgb, ret1_caption: CM3leon's idea, in
4M's encoder). Both are scored on held-out captions by the colour check of
`fourm/generation/evaluate.py` (are the colours the caption names in the generated
image, against colours it does not name), beside the index's recall@k on held-out pairs.

    python benchmarks/retrieval_training.py --out /tmp/retrieval_bench   # ~25 min on 2 cores

Everything is written under --out and reused when the script runs again (a finished run
is not retrained). The encoder is the tiny random CLIP unless --encoder names a real one
(a hub id or a local path): with random towers, retrieval matches captions by their
words (a document's vector is the mean of its image's and its caption's), which is what
this world's captions need; its images all look alike to a random image tower.
"""

from __future__ import annotations

import argparse
import json
import os

from runs import ROOT, fourm, train_once  # benchmarks/runs.py


def prepare(out: str, num: int, encoder: str) -> dict[str, str]:
  """The world, its tokens, a world text vocabulary and the index (each made once)."""
  paths = {name: os.path.join(out, name) for name in ("world", "tokens", "index")}
  paths["vocab"] = os.path.join(out, "text_tokenizer.json")
  if not os.path.exists(os.path.join(paths["world"], "dataset_info.json")):
    fourm("synth", "--out", paths["world"], "--num", str(num), "--resolution", "64",
          "--seed", "0", "--quiet")
  if not os.path.exists(os.path.join(paths["tokens"], "dataset_info.json")):
    fourm("tokenize", "--data", paths["world"], "--out", paths["tokens"], "--method",
          "patches", "--modalities", "tok_rgb")
  if not os.path.exists(paths["vocab"]):
    fourm("tokenizer", "train-text", "--data", paths["world"], "--out", paths["vocab"],
          "--vocab-size", "4500", "--quiet")
  if not os.path.exists(os.path.join(paths["index"], "manifest.json")):
    fourm("index", "build", "--data", paths["world"], "--out", paths["index"],
          *(["--tiny"] if encoder == "tiny" else ["--encoder", encoder]))
  return paths


def config_for(paths: dict[str, str], retrieval: bool, steps: int):
  from fourm import config as config_lib
  from fourm.data import patch_tokens
  config = config_lib.load_config(os.path.join(ROOT, "configs/tiny_synthetic.py"), [])
  documents = ("ret1_tok_rgb", "ret1_caption") if retrieval else ()
  config.modalities = ("tok_rgb", "caption") + documents
  config.data.paths = (paths["world"], paths["tokens"])
  config.text_tokenizer = paths["vocab"]
  config.model.vocab_sizes = dict(tok_rgb=patch_tokens.quantizer_for("tok_rgb").num_ids,
                                  caption=4500)
  # Caption -> rgb three times in four (the documents, if any, beside the caption: they
  # accompany a source), all -> all the fourth; room for a caption and a document.
  config.alphas.kind, config.alphas.alpha = "sources2all_and_all2all", 0.5
  config.alphas.sources = ("caption",)
  config.alphas.weights = (3, 1)
  config.input_budget = 96
  config.total_steps = steps
  config.eval_every = steps
  config.checkpoint.every = steps
  if retrieval:
    config.retrieval.index = paths["index"]
    # Only copies count as near-duplicates: the tiny encoder's documents are all alike.
    config.retrieval.duplicate_threshold = config.retrieval.diversity_threshold = 0.999
  return config


def score(workdir: str, data: str, count: int, retrieval: bool,
          cfg_scale: float) -> dict[str, float]:
  from fourm.generation import evaluate
  from fourm.generation.generator import Generator
  from fourm.generation.guidance import Guidance
  from fourm.generation.sampler import Decoding
  generator = Generator.from_checkpoint(workdir)
  held_out = evaluate.held_out_records((data,), "val", count)
  captions = [record["caption"] for record in held_out]
  # As benchmarks/generation_quality.py decodes caption -> rgb: MaskGIT, 8 steps,
  # classifier-free guidance 3 (whose unconditional stream drops the documents too).
  chain = [Decoding("tok_rgb", num_steps=8, guidance=Guidance(scale=cfg_scale))]
  images, retrieved_images = [], []
  for start in range(0, len(captions), 16):
    batch = captions[start:start + 16]
    conditions = {"caption": batch}
    if retrieval:
      documents, _ = generator.retrieve(conditions, len(batch), 1)
      conditions.update(documents)
    result = generator.generate(conditions, chain, num_samples=len(batch), seed=start)
    images += [result.decode("tok_rgb", i) for i in range(len(batch))]
    if retrieval:
      retrieved_images += [result.decode("ret1_tok_rgb", i) for i in range(len(batch))]
  generated = evaluate.color_rates(images, captions)
  row = {"named": generated["named"], "unnamed": generated["unnamed"],
         "p_value": generated["p_value"]}
  if retrieval:
    documents = evaluate.color_rates(retrieved_images, captions)
    row.update(retrieved_named=documents["named"], retrieved_unnamed=documents["unnamed"])
  return row


def recall(paths: dict[str, str], encoder_name: str, out: str
           ) -> tuple[dict[str, dict[int, float]], int]:
  """recall@k on held-out pairs: val captions against a bank of the val images only (the
  pair is a hit when the caption finds its own image), and against val documents."""
  from fourm.data.records import RecordSource
  from fourm.retrieval import build, recall as recall_lib
  from fourm.retrieval.encoders import TINY, ClipDocumentEncoder
  encoder = ClipDocumentEncoder.from_pretrained(TINY if encoder_name == "tiny" else encoder_name)
  records = list(RecordSource((paths["world"],), "val", ("rgb", "caption", "key")))
  found = {}
  for parts, label in ((("rgb",), "caption -> own image"),
                       (("rgb", "caption"), "caption -> own document")):
    directory = os.path.join(out, "val_index_" + "_".join(parts))
    options = build.BuildOptions(encoder=encoder.name, split="val", parts=parts, neighbours=0,
                                 dropout_variants=0)
    bank = build.build_index(paths["world"], directory, options, encoder=encoder,
                             progress=False, log=lambda _: None)
    found[label] = recall_lib.recall_at_k(bank, encoder, records, (1, 5, 10))
  found["chance"] = {k: min(1.0, k / len(records)) for k in (1, 5, 10)}
  return found, len(records)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="/tmp/retrieval_bench")
  parser.add_argument("--num", type=int, default=1000, help="scenes (a tenth held out)")
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--count", type=int, default=96, help="held-out captions scored")
  parser.add_argument("--encoder", default="tiny", help="'tiny' or a CLIP hub id / path")
  parser.add_argument("--cfg-scale", type=float, default=3.0, help="caption -> tok_rgb")
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  paths = prepare(args.out, args.num, args.encoder)
  rows = []
  for name, retrieval in (("caption_only", False), ("with_retrieval", True)):
    seconds = train_once(args.out, name, config_for(paths, retrieval, args.steps))
    rows.append({"run": name, "train_s": seconds,
                 **score(os.path.join(args.out, name), paths["world"], args.count,
                         retrieval, args.cfg_scale)})
  found, pairs = recall(paths, args.encoder, args.out)
  print(f"\ncaption -> rgb on {args.count} held-out captions, {args.steps} steps each "
        f"(same model, data, seed), colour check of fourm/generation/evaluate.py:\n")
  print("| run | train s | named colour present | unnamed present | gap | p (shuffled) |"
        " retrieved image: named / unnamed |")
  print("|---|---|---|---|---|---|---|")
  for row in rows:
    documents = (f"{row['retrieved_named']:.3f} / {row['retrieved_unnamed']:.3f}"
                 if "retrieved_named" in row else "-")
    print(f"| {row['run']} | {row['train_s']:.0f} | {row['named']:.3f} | "
          f"{row['unnamed']:.3f} | {row['named'] - row['unnamed']:.3f} | "
          f"{row['p_value']:.3f} | {documents} |")
  print(f"\nindex recall@k on the {pairs} held-out pairs "
        f"(encoder: {args.encoder}):\n")
  print("| queries | R@1 | R@5 | R@10 |")
  print("|---|---|---|---|")
  for label, values in found.items():
    print(f"| {label} | " + " | ".join(f"{values[k]:.3f}" for k in (1, 5, 10)) + " |")
  with open(os.path.join(args.out, "result.json"), "w") as f:
    json.dump({"rows": rows, "recall": {k: {str(n): v for n, v in d.items()}
                                        for k, d in found.items()}}, f, indent=1)


if __name__ == "__main__":
  main()
