# make demo   set up .venv if needed, then run the main job on the built-in synthetic data:
#             dataset (10 training stories of 80 TRs, clean single presentations), check, noise
#             ceilings, brain-tuning of a small random-weight wav2vec2 (make_tiny.py --size demo)
#             for 4 epochs, brain alignment of the pretrained model and of final/ (the epoch
#             of lowest validation loss, as the paper keeps; 4 s context instead of 16 s, for
#             speed; scored as the authors score, with permutation p-values, bootstrap
#             intervals and the data-efficiency curve) with the low-level reliance and semantic
#             preference, variance partitioning and the stories needed, a phoneme probe on a
#             synthetic TIMIT, and outputs/demo/report.md + summary.json (with the training
#             curves; the tuned model's card gets its alignment); then its second act: the
#             same models scored on a synthetic Narratives (another listener, other stories,
#             TR 1.5 s, the intersubject ceiling) in outputs/demo/narratives_report/; every
#             setting of the stages in configs/demo.json
# make test   set up .venv if needed, then run the whole test suite (TEST_FLAGS: in parallel
#             processes) and print its slowest tests
# make test-fast  the same without the tests marked slow (the whole demo)
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= outputs/demo
DEMO_EPOCHS ?= 4
BIN := $(VENV)/bin
# the built-in synthetic dataset and tiny model of the demo and the quick reproduction
SYNTHETIC_DATA = synthetic_data.py --seed 0 --overwrite --n_train_stories 10 --train_trs 80 \
	--cc_max_range 0.85 0.98
TINY_MODEL = make_tiny.py --family wav2vec2 --size demo --overwrite

# make reproduce DATA=/path/to/ds003020 MODEL=/path/to/wav2vec2-base SUBJECT=3
#             the paper's protocol on the real data (reproduce.py: check, noise ceiling,
#             brain-tuning, alignment with reliance, regions and maps, probes, report), every
#             stage set by CONFIG; ARGS adds reproduce.py flags, e.g.
#             ARGS="--timit /data/timit --speech_commands hf:google/speech_commands --asr frozen"
#             or any flag of any stage: ARGS="--stage_args 'evaluate=--n_bootstrap 200'"
# make reproduce QUICK=1
#             the same stages on the built-in synthetic data (and a synthetic TIMIT for the
#             probes and CTC recognition) with the demo's tiny model and settings
#             (configs/demo.json), in a few minutes; results in OUT (default outputs/quick)
SUBJECT ?= 1
MODEL ?=
DATA ?=
QUICK ?=
OUT ?= $(if $(QUICK),outputs/quick,outputs/reproduce)
CONFIG ?= $(if $(QUICK),configs/demo.json,configs/iclr2025_wav2vec2-base.json)
ARGS ?=

# the suite runs in parallel processes (pytest-xdist), a test file each, one thread per process:
# on small machines the processes fill the cores better than threads within one test
TEST_FLAGS ?= -n auto --maxprocesses 4 --dist loadfile

.PHONY: setup demo test test-fast reproduce

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

test: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(TEST_FLAGS) --durations=15

test-fast: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(TEST_FLAGS) -m "not slow"

demo: setup
	$(BIN)/python $(SYNTHETIC_DATA) --out $(DEMO_DIR)/data
	$(BIN)/python data_utils.py check --data_dir $(DEMO_DIR)/data
	$(BIN)/python noise_ceilings.py --data_dir $(DEMO_DIR)/data --subject 1 \
		--out $(DEMO_DIR)/subject_NCs/UTS01.npy --overwrite
	$(BIN)/python $(TINY_MODEL) --out $(DEMO_DIR)/tiny-wav2vec2
	$(BIN)/python brain_trainer_story.py --config configs/demo.json \
		--model_name $(DEMO_DIR)/tiny-wav2vec2 --subject 1 --data_dir $(DEMO_DIR)/data \
		--nc_path $(DEMO_DIR)/subject_NCs/UTS01.npy --num_epochs $(DEMO_EPOCHS) \
		--save_dir $(DEMO_DIR)/runs --exp_name tiny-wav2vec2_UTS01 --overwrite
	$(BIN)/python brain_evaluate.py --config configs/demo.json \
		--model_name $(DEMO_DIR)/tiny-wav2vec2 --subject 1 --data_dir $(DEMO_DIR)/data \
		--nc_path $(DEMO_DIR)/subject_NCs/UTS01.npy --logs_dir $(DEMO_DIR)/runs/tiny-wav2vec2_UTS01 \
		--save_dir $(DEMO_DIR)/alignment --exp_name tiny-wav2vec2_UTS01 --overwrite
	$(BIN)/python synthetic_downstream.py --layout timit --out $(DEMO_DIR)/timit --overwrite
	$(BIN)/python eval_phonemes.py --config configs/demo.json --data_path $(DEMO_DIR)/timit \
		--model_name $(DEMO_DIR)/tiny-wav2vec2 \
		--model_path $(DEMO_DIR)/runs/tiny-wav2vec2_UTS01/final \
		--save_dir $(DEMO_DIR)/downstream --exp_name tiny-wav2vec2_phonemes --overwrite
	$(BIN)/python report.py --out $(DEMO_DIR) --title "brain-tuning demo (synthetic data)" \
		--alignment $(DEMO_DIR)/alignment/tiny-wav2vec2_UTS01 \
		--downstream $(DEMO_DIR)/downstream/tiny-wav2vec2_phonemes --data_dir $(DEMO_DIR)/data \
		--model_card --overwrite
	$(BIN)/python synthetic_narratives.py --out $(DEMO_DIR)/narratives --story_seconds 80 \
		--n_subjects 6 --overwrite
	$(BIN)/python data_utils.py check --dataset narratives --data_dir $(DEMO_DIR)/narratives
	$(BIN)/python brain_evaluate.py --config configs/demo.json --dataset narratives \
		--data_dir $(DEMO_DIR)/narratives --subject 1 --test_story lucy --test_target data \
		--normalise_by intersubject --nc_path $(DEMO_DIR)/subject_NCs/narratives_lucy.npy \
		--regions annot --annot $(DEMO_DIR)/narratives/synthetic_annot/lh.HCPMMP1.annot \
		$(DEMO_DIR)/narratives/synthetic_annot/rh.HCPMMP1.annot --layers 2 \
		--train_story_counts 3 5 --train_fraction 1 \
		--model_name $(DEMO_DIR)/tiny-wav2vec2 --logs_dir $(DEMO_DIR)/runs/tiny-wav2vec2_UTS01 \
		--save_dir $(DEMO_DIR)/alignment --exp_name tiny-wav2vec2_narratives_sub-001 --overwrite
	$(BIN)/python report.py --out $(DEMO_DIR)/narratives_report --overwrite \
		--title "brain-tuning demo, act 2: tuned on synthetic ds003020, scored on synthetic Narratives" \
		--alignment $(DEMO_DIR)/alignment/tiny-wav2vec2_narratives_sub-001

reproduce: setup
ifeq ($(QUICK),)
	$(BIN)/python reproduce.py --config $(CONFIG) --data_dir "$(DATA)" --model_name "$(MODEL)" \
		--subject $(SUBJECT) --out $(OUT) $(ARGS)
else
	$(BIN)/python $(SYNTHETIC_DATA) --out $(OUT)/data
	$(BIN)/python $(TINY_MODEL) --out $(OUT)/tiny-wav2vec2
	$(BIN)/python synthetic_downstream.py --layout timit --out $(OUT)/timit --overwrite
	$(BIN)/python reproduce.py --config $(CONFIG) --data_dir $(OUT)/data \
		--model_name $(OUT)/tiny-wav2vec2 --subject 1 --nc_path $(OUT)/subject_NCs/UTS01.npy \
		--timit $(OUT)/timit --out $(OUT) $(ARGS)
endif
