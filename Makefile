# Two entry points a fresh machine needs: `make demo` and `make test`. Both create
# .venv and install the project into it on first use (and again when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := demo_out
PYTEST_WORKERS ?= 2

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded default dataset: render the synthetic world, draw its
# samples, tokenize it, and train the tiny 4M model on it (resumed if already started).
demo: $(STAMP)
	$(BIN)/fourm synth --out $(DEMO)/world --num 1000 --resolution 64 --seed 0
	$(BIN)/fourm show $(DEMO)/world --num 4 --out $(DEMO)/world_grid.png
	$(BIN)/fourm show $(DEMO)/world --num 4 --augmented --out $(DEMO)/augmented_grid.png
	$(BIN)/fourm tokenize --data $(DEMO)/world --out $(DEMO)/tokens --method patches
	$(BIN)/fourm train --config configs/tiny_synthetic.py --workdir $(DEMO)/train
	@echo "demo outputs are in $(DEMO)/: world/ (records), world_grid.png, augmented_grid.png,"
	@echo "  tokens/ (patch tokens), train/ (checkpoints/, tensorboard/: tensorboard --logdir $(DEMO)/train)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS)

bench: $(STAMP)
	$(BIN)/python benchmarks/data_throughput.py

clean:
	rm -rf $(DEMO)
