"""Does an instruction-tuned model follow held-out instructions? A 4M model is trained on
the synthetic world, then fine-tuned (`config.init`) on the world's instruction tasks
(`fourm synth --instructions`: edits, segment / detect the <class>, questions; docs/
instructions.md); on held-out instructions it is scored by `instruction_checks.check`
beside the pre-trained model given the same image without the instruction (what a
non-instructed model makes of it), and beside the tokenizers' ceiling (the true answer
through the tokens).

    python benchmarks/instruction_tuning.py --out /tmp/instruction_bench   # ~30 min, 2 cores

Everything is written under --out and reused when the script runs again.
"""

from __future__ import annotations

import argparse
import collections
import json
import os

from runs import ROOT, fourm, train_once  # benchmarks/runs.py

TASK_TARGETS = {"edit": "tok_rgb", "segment": "tok_semseg", "detect": "det",
                "question": "caption"}
ANSWER_FIELDS = {"tok_rgb": "rgb", "tok_semseg": "semseg", "det": "det", "caption": "caption"}


def done(path: str) -> bool:
  return os.path.exists(os.path.join(path, "dataset_info.json"))


def prepare(out: str, num: int, tokenizer_steps: int, edit_source: bool) -> dict[str, str]:
  paths = {name: os.path.join(out, name)
           for name in ("world", "world_tokens", "world_rgb_tokens", "instr", "instr_tokens",
                        "edit_tokens", "source_tokens", "tok_rgb")}
  paths["vocab"] = os.path.join(out, "text_tokenizer.json")
  if not done(paths["world"]):
    fourm("synth", "--out", paths["world"], "--num", str(num), "--resolution", "64", "--quiet")
  # rgb through the demo's VQ-VAE: the patch quantizer's mean colour per 8 px patch
  # washes a small object's colour into the floor's, which no edit check survives.
  if not os.path.exists(os.path.join(paths["tok_rgb"], "train_done")):
    fourm("tokenizer", "train", "--config", "configs/tokenizers/vqvae.py:rgb_tiny",
          "--workdir", paths["tok_rgb"], "--config.data.paths=" + repr((paths["world"],)),
          f"--config.total_steps={tokenizer_steps}",
          f"--config.eval_every={tokenizer_steps}",
          f"--config.checkpoint.every={tokenizer_steps}")
    open(os.path.join(paths["tok_rgb"], "train_done"), "w").close()
  if not done(paths["world_rgb_tokens"]):
    fourm("tokenize", "--data", paths["world"], "--out", paths["world_rgb_tokens"],
          "--tokenizers", f"tok_rgb={paths['tok_rgb']}")
  if not done(paths["world_tokens"]):
    fourm("tokenize", "--data", paths["world"], "--out", paths["world_tokens"], "--method",
          "patches", "--modalities", "tok_semseg")
  if not done(paths["instr"]):
    # Other scenes than the world's (another seed): the pre-training saw none of them.
    fourm("synth", "--out", paths["instr"], "--num", str(num), "--resolution", "64",
          "--seed", "1", "--instructions", "--quiet")
  if not done(paths["instr_tokens"]):
    fourm("tokenize", "--data", paths["instr"], "--out", paths["instr_tokens"], "--method",
          "patches", "--modalities", "tok_semseg")
  if not done(paths["edit_tokens"]):
    fourm("tokenize", "--data", os.path.join(paths["instr"], "edited"), "--out",
          paths["edit_tokens"], "--tokenizers", f"tok_rgb={paths['tok_rgb']}")
  if edit_source and not done(paths["source_tokens"]):
    # Each instruction's source scene as tokens (src_tok_rgb), for a model that edits them.
    fourm("tokenize", "--data", paths["instr"], "--out", paths["source_tokens"],
          "--tokenizers", f"src_tok_rgb={paths['tok_rgb']}")
  if not os.path.exists(paths["vocab"]):
    fourm("tokenizer", "train-text", "--data", paths["world"], paths["instr"], "--out",
          paths["vocab"], "--vocab-size", "4500", "--quiet")
  return paths


def base_config(paths, steps):
  from fourm import config as config_lib
  from fourm.data import patch_tokens
  from tokenizers_vq.vqvae_config import preset
  config = config_lib.load_config(os.path.join(ROOT, "configs/tiny_synthetic.py"), [])
  config.modalities = ("rgb", "tok_rgb", "tok_semseg", "caption", "det")
  config.data.paths = (paths["world"], paths["world_rgb_tokens"], paths["world_tokens"])
  config.text_tokenizer = paths["vocab"]
  config.model.vocab_sizes = dict(caption=4500, det=4500,
                                  tok_rgb=preset("rgb_tiny").vocab_size,
                                  tok_semseg=patch_tokens.quantizer_for("tok_semseg").num_ids)
  config.total_steps = config.eval_every = config.checkpoint.every = steps
  return config


def instruction_config(paths, steps, init, edit_source: bool):
  config = base_config(paths, steps)
  config.modalities = ("rgb", "instruction") + tuple(config.modalities[1:])
  config.data.paths = (paths["instr"], paths["instr_tokens"], paths["edit_tokens"])
  if edit_source:  # the source scene's tokens beside its pixels, all of both and the text
    config.modalities += ("src_tok_rgb",)
    config.data.paths += (paths["source_tokens"],)
    config.input_budget = 2 * 64 + 32
  config.init = init
  # The inputs are the source image and the instruction (which accompanies every source),
  # the targets the answer: never all -> all, where tok_rgb (an edit's answer) or the
  # caption (a question's) could be an input.
  config.alphas.sources = ("rgb",)
  config.alphas.weights = (1, 0)
  return config


def held_out(paths, count: int) -> list[dict]:
  """Up to `count` held-out instruction records, as many of each task as there are."""
  from fourm.data import instructions
  from fourm.data.records import RecordSource
  source = RecordSource((paths["instr"],), "val", ("key", "rgb", "instruction"))
  by_task = collections.defaultdict(list)
  for index in range(len(source)):
    record = source[index]
    sample = instructions.regenerate(paths["instr"], record["key"])
    by_task[sample.task].append({"rgb": record["rgb"], "sample": sample})
  per_task = max(1, count // len(by_task))
  return [item for task in sorted(by_task) for item in by_task[task][:per_task]]


def follow_rates(generator, items, *, instructed: bool, batch_size: int = 16) -> dict:
  """{task: share of the items whose generated answer follows the instruction}."""
  from fourm.data import instruction_checks
  from fourm.generation.chain import default_chain
  follows = collections.defaultdict(list)
  for task, target in TASK_TARGETS.items():
    mine = [item for item in items if item["sample"].task == task]
    for start in range(0, len(mine), batch_size):
      batch = mine[start:start + batch_size]
      conditions = {"rgb": [item["rgb"] for item in batch]}
      if instructed:
        conditions["instruction"] = [item["sample"].text for item in batch]
      result = generator.generate(conditions, default_chain([target]),
                                  num_samples=len(batch), seed=start)
      for i, item in enumerate(batch):
        answer = {ANSWER_FIELDS[target]: result.decode(target, i)}
        verdict = instruction_checks.check(item["sample"].text, answer, item["sample"].source)
        follows[task].append(verdict.follows)
        if verdict.changed is not None:
          follows["edit: named attribute changed"].append(verdict.changed)
      if task == "edit":
        _edit_tokens(generator, batch, result.tokens(target), follows)
  return {task: sum(v) / len(v) for task, v in follows.items() if v}


def _edit_tokens(generator, batch, made, follows) -> None:
  """Token by token against the source scene's and the true edit's tok_rgb: where the
  edit keeps a token, how often the model wrote it too ("kept"); where it changes one,
  how often the model wrote the edit's ("edited")."""
  import numpy as np
  tokenizer = generator.tokenizers["tok_rgb"]
  tokenize = lambda images: np.asarray(tokenizer.tokenize(images, generator.layout)  # noqa: E731
                                       ).reshape(len(batch), -1)
  source = tokenize([item["rgb"] for item in batch])
  true = tokenize([item["sample"].answer["rgb"] for item in batch])
  made = np.asarray(made).reshape(len(batch), -1)
  changed = true != source
  follows["edit tokens: kept"] += list((made == source)[~changed])
  follows["edit tokens: edited"] += list((made == true)[changed])


def ceilings(generator, items) -> dict:
  """The true answers through the tokenizers: what the tokens allow at best."""
  from fourm.data import instruction_checks
  follows = collections.defaultdict(list)
  for item in items:
    sample = item["sample"]
    target = TASK_TARGETS[sample.task]
    field = ANSWER_FIELDS[target]
    answer = dict(sample.answer)
    if target in generator.tokenizers:  # grids go through their tokenizer and back
      tokenizer = generator.tokenizers[target]
      ids = tokenizer.tokenize([answer[field]], generator.layout)
      answer = {field: generator.detokenizer.decode(target, ids[0])}
    verdict = instruction_checks.check(sample.text, answer, sample.source)
    follows[sample.task].append(verdict.follows)
    if verdict.changed is not None:
      follows["edit: named attribute changed"].append(verdict.changed)
  return {task: sum(v) / len(v) for task, v in follows.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="/tmp/instruction_bench")
  parser.add_argument("--num", type=int, default=1000, help="scenes and instructions each")
  parser.add_argument("--steps", type=int, default=600, help="pre-training steps")
  parser.add_argument("--tune-steps", type=int, default=600)
  parser.add_argument("--count", type=int, default=160, help="held-out instructions")
  parser.add_argument("--tokenizer-steps", type=int, default=500, help="the rgb VQ-VAE's")
  parser.add_argument("--edit-source", action="store_true",
                      help="the tuned model also reads the source scene's tokens "
                           "(src_tok_rgb), not only its pixels")
  args = parser.parse_args()
  from fourm.generation.generator import Generator
  os.makedirs(args.out, exist_ok=True)
  paths = prepare(args.out, args.num, args.tokenizer_steps, args.edit_source)
  tuned_name = "instruction_tuned" + ("_src" if args.edit_source else "")
  base_dir, tuned_dir = (os.path.join(args.out, n) for n in ("pretrained", tuned_name))
  base_s = train_once(args.out, "pretrained", base_config(paths, args.steps))
  tuned_s = train_once(args.out, tuned_name,
                       instruction_config(paths, args.tune_steps, base_dir, args.edit_source))
  items = held_out(paths, args.count)
  tuned = Generator.from_checkpoint(tuned_dir)
  inputs = "rgb + src_tok_rgb + instruction" if args.edit_source else "rgb + instruction"
  rows = {f"instruction-tuned ({inputs})": follow_rates(tuned, items, instructed=True),
          "pre-trained, no instruction (rgb)": follow_rates(Generator.from_checkpoint(base_dir),
                                                            items, instructed=False),
          "ceiling: true answer through the tokens": ceilings(tuned, items)}
  counts = collections.Counter(item["sample"].task for item in items)
  print(f"\nheld-out instructions followed (instruction_checks.check); pre-training "
        f"{args.steps} steps ({base_s:.0f} s), instruction tuning {args.tune_steps} steps "
        f"({tuned_s:.0f} s):\n")
  tasks = list(TASK_TARGETS) + ["edit: named attribute changed", "edit tokens: kept",
                                 "edit tokens: edited"]
  counts["edit: named attribute changed"] = counts["edit"]
  counts["edit tokens: kept"] = counts["edit tokens: edited"] = counts["edit"]
  print("| model | " + " | ".join(f"{t} (n={counts[t]})" for t in tasks) + " |")
  print("|---|" + "---|" * len(tasks))
  for name, rates in rows.items():
    print(f"| {name} | " + " | ".join(f"{rates[t]:.3f}" if t in rates else "-" for t in tasks)
          + " |")
  with open(os.path.join(args.out, f"result_{tuned_name}.json"), "w") as f:
    json.dump({"rows": rows, "counts": counts, "steps": [args.steps, args.tune_steps],
               "edit_source": args.edit_source}, f,
              indent=1)


if __name__ == "__main__":
  main()
