# Two entry points a fresh machine needs: `make demo` and `make test`. Both create
# .venv and install the project into it on first use (and again when pyproject.toml changes):
# the demo needs the project alone, the tests its extras too (torch, notebooks, linters).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORE_STAMP := $(VENV)/.installed-core
STAMP := $(VENV)/.installed
DEMO := demo_out
PYTEST_WORKERS ?= 2

.PHONY: install demo quality test test-fast bench clean

install: $(STAMP)

$(CORE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(CORE_STAMP)

# torch is installed before the extras, pinned: on this machine that version is a CPU
# build (a plain `torch` would pull the multi-GB CUDA one); the [pseudolabel] extra then
# finds it.
$(STAMP): $(CORE_STAMP)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,pseudolabel]'
	touch $(STAMP)

# The main job on the embedded default dataset: render the synthetic world and draw its
# samples, train an rgb VQ-VAE tokenizer on it, tokenize the world (rgb with the VQ-VAE,
# depth / normals / segmentation with ground-truth patch quantizers, captions with a
# WordPiece vocabulary of the world's own words), train the tiny 4M
# model on it, and generate with it: rgb -> everything, caption -> everything (chained);
# then fine-tune its encoder for semantic segmentation and evaluate that.
# Every step but the last two resumes or finds its work done when run again. The last
# jobs generate once each, so their sampler compiles fast rather than runs fast
# (FOURM_CPU_FAST_COMPILE, docs/generation.md).
demo: $(CORE_STAMP)
	$(BIN)/fourm synth --out $(DEMO)/world --num 1000 --resolution 64 --seed 0
	$(BIN)/fourm show $(DEMO)/world --num 4 --out $(DEMO)/world_grid.png
	$(BIN)/fourm show $(DEMO)/world --num 4 --augmented --out $(DEMO)/augmented_grid.png
	$(BIN)/fourm tokenizer train --config configs/tokenizers/vqvae.py:rgb_tiny --workdir $(DEMO)/tok_rgb \
	    --config.total_steps=500 --config.eval_every=250 --config.checkpoint.every=250
	$(BIN)/fourm tokenize --data $(DEMO)/world --out $(DEMO)/tokens_vq --tokenizers tok_rgb=$(DEMO)/tok_rgb
	$(BIN)/fourm tokenize --data $(DEMO)/world --out $(DEMO)/tokens --method patches \
	    --modalities tok_depth,tok_normal,tok_semseg
	$(BIN)/fourm tokenizer train-text --data $(DEMO)/world --out $(DEMO)/text_tokenizer.json \
	    --vocab-size 4500 --quiet
	$(BIN)/fourm train --config configs/tiny_synthetic.py --workdir $(DEMO)/train
	@echo "generation, fine-tuning and the quality table (16 held-out scenes; make quality: 100)"
	@echo "run side by side; each one's output follows when it ends:"
	FOURM_CPU_FAST_COMPILE=1 $(BIN)/python launch/side_by_side.py --logs $(DEMO)/logs \
	    "generate=$(BIN)/fourm generate --checkpoint $(DEMO)/train --schedule configs/generation/rgb_to_all.py \
	        --data $(DEMO)/world --use rgb --indices 0,1,2,3 --out $(DEMO)/generate_rgb && \
	      $(BIN)/fourm generate --checkpoint $(DEMO)/train --schedule configs/generation/caption_to_all.py \
	        --condition caption='a large red cube to the left of a small blue sphere.' \
	        --num-samples 4 --out $(DEMO)/generate_caption" \
	    "finetune=$(BIN)/fourm finetune --config configs/finetune/segmentation_synthetic.py:demo \
	        --init $(DEMO)/train --workdir $(DEMO)/finetune_segmentation && \
	      $(BIN)/fourm evaluate --workdir $(DEMO)/finetune_segmentation" \
	    "quality=$(BIN)/python benchmarks/generation_quality.py --checkpoint $(DEMO)/train --count 16"
	@echo "demo outputs are in $(DEMO)/: world/ (records), world_grid.png, augmented_grid.png,"
	@echo "  tok_rgb/ (VQ-VAE: checkpoints/, reconstructions.png), tokens_vq/ + tokens/ (token records),"
	@echo "  train/ (checkpoints/, tensorboard/: tensorboard --logdir $(DEMO)),"
	@echo "  generate_rgb/ + generate_caption/ (grid.png, tokens.npz, text.json),"
	@echo "  finetune_segmentation/ (checkpoints/, eval_val/: metrics.json, grid.png),"
	@echo "  logs/ (generate.log, finetune.log, quality.log)"

# --dist loadscope: each test module runs whole on one worker, so a module's fixtures (a
# trained model, a written dataset) are built once, not once per worker or per return
# to the module. tests/conftest.py: the session's own compilation cache.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope

# The inner loop: everything but the tests marked slow (multi-process, kill / resume,
# the notebook, those that train or compile for more than ~7 s). Under 3 minutes on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope -m "not slow"

quality: $(CORE_STAMP)
	$(BIN)/python benchmarks/generation_quality.py --checkpoint $(DEMO)/train --count 100

bench: $(STAMP)
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/model_step.py
	$(BIN)/python benchmarks/tokenizer_throughput.py
	$(BIN)/python benchmarks/generation_speed.py
	$(BIN)/python benchmarks/pseudolabel_throughput.py

clean:
	rm -rf $(DEMO)
