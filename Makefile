# make demo   set up .venv if needed, then run the main job on the built-in synthetic data:
#             dataset, check, noise ceilings, brain-tuning of a tiny model, brain alignment of
#             the pretrained and tuned model (0.5 s window steps instead of 0.1 s, for speed)
# make test   set up .venv if needed, then run the test suite
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= outputs/demo
BIN := $(VENV)/bin

# make reproduce SUBJECT=3 MODEL=/path/to/wav2vec2-base DATA=/path/to/ds003020
#             the paper's protocol on the real data: check, brain-tuning with the paper's
#             settings (resumed if interrupted), alignment of the pretrained and tuned model
SUBJECT ?= 1
MODEL ?=
DATA ?=
EPOCHS ?= 30
OUT ?= outputs/reproduce
RUN_NAME = $(notdir $(patsubst %/,%,$(MODEL)))_UTS0$(SUBJECT)

.PHONY: setup demo test reproduce

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
	$(BIN)/python speech_models.py make-tiny --family wav2vec2 --out $(DEMO_DIR)/tiny-wav2vec2
	$(BIN)/python brain_trainer_story.py --model_name $(DEMO_DIR)/tiny-wav2vec2 --subject 1 \
		--data_dir $(DEMO_DIR)/data --nc_path $(DEMO_DIR)/subject_NCs/UTS01.npy \
		--save_dir $(DEMO_DIR)/runs --exp_name tiny-wav2vec2_UTS01 --overwrite \
		--num_epochs 3 --batch_size 16 --base_lr 5e-4 --linear_layer_lr 5e-3 --warmup_epochs 1
	$(BIN)/python brain_evaluate.py --model_name $(DEMO_DIR)/tiny-wav2vec2 --subject 1 \
		--data_dir $(DEMO_DIR)/data --nc_path $(DEMO_DIR)/subject_NCs/UTS01.npy \
		--logs_dir $(DEMO_DIR)/runs/tiny-wav2vec2_UTS01 --epochs final \
		--save_dir $(DEMO_DIR)/alignment --exp_name tiny-wav2vec2_UTS01 --overwrite --chunk_s 0.5 \
		--layers 0 1 2

reproduce: setup
	@test -n "$(MODEL)" -a -n "$(DATA)" || { echo "usage: make reproduce SUBJECT=3 MODEL=/path/to/wav2vec2-base DATA=/path/to/ds003020 [EPOCHS=30] [OUT=outputs/reproduce]"; exit 2; }
	$(BIN)/python data_utils.py check --data_dir $(DATA) --subjects $(SUBJECT)
	$(BIN)/python brain_trainer_story.py --model_name $(MODEL) --subject $(SUBJECT) \
		--data_dir $(DATA) --num_epochs $(EPOCHS) --save_dir $(OUT)/runs --exp_name $(RUN_NAME) \
		$(if $(wildcard $(OUT)/runs/$(RUN_NAME)/last),--resume,)
	$(BIN)/python brain_evaluate.py --model_name $(MODEL) --subject $(SUBJECT) --data_dir $(DATA) \
		--logs_dir $(OUT)/runs/$(RUN_NAME) --epochs final --save_dir $(OUT)/alignment \
		--exp_name $(RUN_NAME) --overwrite
