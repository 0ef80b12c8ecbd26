# make demo   set up .venv if needed, then run the main job on the built-in synthetic data
# make test   set up .venv if needed, then run the test suite
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= outputs/demo
BIN := $(VENV)/bin

.PHONY: setup demo test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/python synthetic_data.py --out $(DEMO_DIR)/data --seed 0 --overwrite
	$(BIN)/python data_utils.py check --data_dir $(DEMO_DIR)/data
	$(BIN)/python eval_utils.py noise-ceiling --data_dir $(DEMO_DIR)/data --subject 1 \
		--out $(DEMO_DIR)/subject_NCs/UTS01.npy --overwrite
