"""Instruction tuning of the demo's model on the synthetic world's instruction tasks
(docs/instructions.md): the source image and the instruction in, the answer out.

    make demo                                                    # demo_out/train: the start
    fourm synth --out demo_out/instr --num 1000 --resolution 64 --seed 1 --instructions
    fourm tokenize --data demo_out/instr --out demo_out/instr_tokens --method patches \
        --modalities tok_semseg
    fourm tokenize --data demo_out/instr/edited --out demo_out/instr_edit_tokens \
        --tokenizers tok_rgb=demo_out/tok_rgb
    fourm train --config configs/instructions_synthetic.py --workdir demo_out/instructions
    fourm generate --checkpoint demo_out/instructions --data demo_out/instr --use rgb \
        --instruction "make the cube blue" --targets tok_rgb --out out/

The model is the demo's (`configs/tiny_synthetic.py`) plus the `instruction` text modality,
started from the demo's parameters (`config.init`; the instruction's embeddings start
fresh). Every sample's inputs are its image and its instruction, which accompanies the
rgb source; the targets are whatever answer the record holds (the edited scene's
tok_rgb, the filtered tok_semseg, the class's boxes, a question's caption). Never
all -> all: there tok_rgb, an edit's answer, could be an input. The text vocabulary must
know the instructions' words: train it on the world and the instructions together
(`fourm tokenizer train-text --data demo_out/world demo_out/instr ...`) before the demo's
run, or keep the demo's and accept [UNK] for words no caption has.

An edit model can also read the source scene as tokens (`src_tok_rgb`: tokenize
demo_out/instr with `--tokenizers src_tok_rgb=demo_out/tok_rgb`, add the dataset and the
modality, `input_budget = 64 + 64 + 32`; docs/instructions.md). It is not the default:
at this budget it did not make edits better (benchmarks/README.md, "Instruction tuning").
"""

import os

from fourm.config import import_config_file
from fourm.errors import UsageError

# The demo's config, beside this file (configs/ is not a package).
tiny_synthetic = import_config_file(os.path.join(os.path.dirname(__file__), "tiny_synthetic.py"))

VARIANTS = ("",)
STEPS = 600


def get_config(variant: str = ""):
  if variant:
    raise UsageError(f"configs/instructions_synthetic.py: unknown variant {variant!r}")
  config = tiny_synthetic.get_config()
  config.modalities = ("rgb", "instruction") + tuple(config.modalities[1:])
  config.data.paths = ("demo_out/instr", "demo_out/instr_tokens",
                       "demo_out/instr_edit_tokens")
  config.init = "demo_out/train"
  config.alphas.kind = "sources2all_and_all2all"
  config.alphas.sources = ("rgb",)
  config.alphas.weights = (1, 0)   # rgb (+ instruction) -> answer only
  config.total_steps = STEPS
  config.optimizer.warmup_steps = 20
  return config
