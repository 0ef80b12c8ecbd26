# make demo   set up .venv if needed, then run the main job on the built-in synthetic data:
#             dataset (10 training stories of 80 TRs, clean single presentations), check, noise
#             ceilings, brain-tuning of a small random-weight wav2vec2 (make-tiny --size demo)
#             for 4 epochs, brain alignment of the pretrained model and of final/ (the epoch
#             of lowest validation loss, as the paper keeps; 4 s context instead of 16 s, for
#             speed; scored as the authors score, with permutation p-values, bootstrap
#             intervals and the data-efficiency curve) with the low-level reliance and semantic
#             preference, a phoneme probe on a synthetic TIMIT, and outputs/demo/report.md +
#             summary.json
# make test   set up .venv if needed, then run the test suite
# make test-fast  the same without the tests marked slow (the whole demo)
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= outputs/demo
DEMO_EPOCHS ?= 4
BIN := $(VENV)/bin

# make reproduce SUBJECT=3 MODEL=/path/to/wav2vec2-base DATA=/path/to/ds003020
#             the paper's protocol on the real data: check, noise ceiling, brain-tuning with the
#             paper's settings (resumed if interrupted), alignment of the pretrained and tuned
#             model with the low-level reliance (and the semantic preference with WORD_VECTORS=),
#             per region (the subject's pycortex ROIs, or HCP-MMP1 with its late-language and A1
#             groups given FSAVERAGE=/path/to/fsaverage holding label/?h.HCPMMP1.annot) with
#             cortical maps of the best layer,
#             downstream probes for the datasets given (TIMIT= SPEECH_COMMANDS= CREMA_D= SLURP=:
#             a folder in the distribution layout, or hf:NAME_OR_PATH for a HuggingFace dataset,
#             e.g. SPEECH_COMMANDS=hf:google/speech_commands; TIMIT_FLAGS= ... SLURP_FLAGS= add
#             flags to every run on that dataset, such as --hf_split_test, and FLAGS_phonemes=,
#             FLAGS_sentence_type=, FLAGS_words=, FLAGS_emotion=, FLAGS_intent=, FLAGS_asr= to
#             one run, such as --label_column), CTC speech recognition on TIMIT
#             (ASR=finetune, the paper's setting, by default; ASR=frozen for a head on the
#             frozen encoder, ASR=none for none), and $(OUT)/report.md + summary.json
SUBJECT ?= 1
MODEL ?=
DATA ?=
EPOCHS ?= 30
OUT ?= outputs/reproduce
RUN_NAME = $(notdir $(patsubst %/,%,$(MODEL)))_UTS0$(SUBJECT)
LOW_LEVEL ?= powspec phonemes articulation
REGIONS ?= overlays
FSAVERAGE ?=
# regions and maps need the subject's pycortex database (datalad get derivative/pycortex-db/UTS0N)
ANATOMY = $(wildcard $(DATA)/derivative/pycortex-db/UTS0$(SUBJECT)/transforms)
REGION_FLAGS = $(if $(ANATOMY),$(if $(FSAVERAGE),--regions annot --fsaverage $(FSAVERAGE),--regions $(REGIONS)) --flatmap_layers best,)
WORD_VECTORS ?=
TIMIT ?=
SPEECH_COMMANDS ?=
CREMA_D ?=
SLURP ?=
TIMIT_FLAGS ?=
SPEECH_COMMANDS_FLAGS ?=
CREMA_D_FLAGS ?=
SLURP_FLAGS ?=
ASR ?= finetune
PROBE_DATA_phonemes = $(TIMIT)
PROBE_DATA_sentence_type = $(TIMIT)
PROBE_DATA_words = $(SPEECH_COMMANDS)
PROBE_DATA_emotion = $(CREMA_D)
PROBE_DATA_intent = $(SLURP)
PROBE_FLAGS_phonemes = $(TIMIT_FLAGS) $(FLAGS_phonemes)
PROBE_FLAGS_sentence_type = $(TIMIT_FLAGS) $(FLAGS_sentence_type)
PROBE_FLAGS_words = $(SPEECH_COMMANDS_FLAGS) $(FLAGS_words)
PROBE_FLAGS_emotion = $(CREMA_D_FLAGS) $(FLAGS_emotion)
PROBE_FLAGS_intent = $(SLURP_FLAGS) $(FLAGS_intent)
PROBES = $(if $(TIMIT),phonemes sentence_type,) $(if $(SPEECH_COMMANDS),words,) \
	$(if $(CREMA_D),emotion,) $(if $(SLURP),intent,)
# hf:NAME_OR_PATH reads a HuggingFace dataset, anything else is a folder in the distribution layout
PROBE_SOURCE = $(if $(filter hf:%,$(1)),--hf_dataset $(patsubst hf:%,%,$(1)),--data_path $(1))
ASR_TASK = $(if $(filter finetune,$(ASR)),asr_finetune,asr)
ASR_RUN = $(if $(TIMIT),$(if $(filter none,$(ASR)),,$(ASR_TASK)),)
DOWNSTREAM = $(PROBES) $(ASR_RUN)

# Baselines of the paper (SPEC section 2), with BASELINES=bigslm,lm (either or both): the model
# tuned like the brain-tuned one towards a big speech model's layer features
# (BIGSLM_MODEL=/path/to/whisper-medium, BIGSLM_LAYER=, default its last layer) or a causal text
# LM's word states (LM_MODEL=/path/to/gpt2, LM_LAYER=, LM_CONTEXT_WORDS=100), made once by
# target_features.py into $(OUT)/targets/ (TARGET_STORIES= limits them to these stories; default
# every story with responses), and evaluated beside it.
BASELINES ?=
BIGSLM_MODEL ?=
BIGSLM_LAYER ?=
LM_MODEL ?=
LM_LAYER ?=
LM_CONTEXT_WORDS ?= 100
TARGET_STORIES ?=
comma := ,
BASELINE_LIST = $(subst $(comma), ,$(BASELINES))
TARGET_KIND_bigslm = speech
TARGET_KIND_lm = text
TARGET_MODEL_bigslm = $(BIGSLM_MODEL)
TARGET_MODEL_lm = $(LM_MODEL)
TARGET_MODEL_VAR_bigslm = BIGSLM_MODEL
TARGET_MODEL_VAR_lm = LM_MODEL
TARGET_FLAGS_bigslm = $(if $(BIGSLM_LAYER),--layer $(BIGSLM_LAYER),)
TARGET_FLAGS_lm = $(if $(LM_LAYER),--layer $(LM_LAYER),) --context_words $(LM_CONTEXT_WORDS)
TARGET_FILE = $(OUT)/targets/$(1)_$(notdir $(patsubst %/,%,$(TARGET_MODEL_$(1)))).hf5
BASELINE_RUNS = $(foreach b,$(BASELINE_LIST),--model_path $(OUT)/runs/$(RUN_NAME)_$(b))

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
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/python synthetic_data.py --out $(DEMO_DIR)/data --seed 0 --overwrite \
		--n_train_stories 10 --train_trs 80 --cc_max_range 0.85 0.98
	$(BIN)/python data_utils.py check --data_dir $(DEMO_DIR)/data
	$(BIN)/python noise_ceilings.py --data_dir $(DEMO_DIR)/data --subject 1 \
		--out $(DEMO_DIR)/subject_NCs/UTS01.npy --overwrite
	$(BIN)/python speech_models.py make-tiny --family wav2vec2 --size demo --out $(DEMO_DIR)/tiny-wav2vec2 --overwrite
	$(BIN)/python brain_trainer_story.py --model_name $(DEMO_DIR)/tiny-wav2vec2 --subject 1 \
		--data_dir $(DEMO_DIR)/data --nc_path $(DEMO_DIR)/subject_NCs/UTS01.npy \
		--save_dir $(DEMO_DIR)/runs --exp_name tiny-wav2vec2_UTS01 --overwrite \
		--num_epochs $(DEMO_EPOCHS) --batch_size 16 --base_lr 1e-3 --linear_layer_lr 1e-2 \
		--warmup_epochs 0 --patience $(DEMO_EPOCHS)
	$(BIN)/python brain_evaluate.py --model_name $(DEMO_DIR)/tiny-wav2vec2 --subject 1 \
		--data_dir $(DEMO_DIR)/data --nc_path $(DEMO_DIR)/subject_NCs/UTS01.npy \
		--logs_dir $(DEMO_DIR)/runs/tiny-wav2vec2_UTS01 --epochs final \
		--save_dir $(DEMO_DIR)/alignment --exp_name tiny-wav2vec2_UTS01 --overwrite \
		--context_s 4 --chunk_s 0.1 --train_fraction 0.25 0.5 \
		--layers 0 1 2 --low_level powspec phonemes --semantic_preference --word_vectors synthetic
	$(BIN)/python synthetic_downstream.py --layout timit --out $(DEMO_DIR)/timit --overwrite
	$(BIN)/python eval_phonemes.py --data_path $(DEMO_DIR)/timit \
		--model_name $(DEMO_DIR)/tiny-wav2vec2 \
		--model_path $(DEMO_DIR)/runs/tiny-wav2vec2_UTS01/final \
		--num_epochs 300 --save_dir $(DEMO_DIR)/downstream --exp_name tiny-wav2vec2_phonemes \
		--overwrite
	$(BIN)/python report.py --out $(DEMO_DIR) --title "brain-tuning demo (synthetic data)" \
		--alignment $(DEMO_DIR)/alignment/tiny-wav2vec2_UTS01 \
		--downstream $(DEMO_DIR)/downstream/tiny-wav2vec2_phonemes --data_dir $(DEMO_DIR)/data \
		--overwrite

reproduce: setup
	@test -n "$(MODEL)" -a -n "$(DATA)" || { echo "usage: make reproduce SUBJECT=3 MODEL=/path/to/wav2vec2-base DATA=/path/to/ds003020 [EPOCHS=30] [OUT=outputs/reproduce] [TIMIT=... SPEECH_COMMANDS=... CREMA_D=... SLURP=... (folders, or hf:NAME_OR_PATH)] [ASR=finetune|frozen|none] [WORD_VECTORS=glove.txt] [LOW_LEVEL='powspec phonemes'] [BASELINES=bigslm,lm BIGSLM_MODEL=... LM_MODEL=...]"; exit 2; }
	@test -z "$(filter-out finetune frozen none,$(ASR))" || { echo "ASR takes finetune, frozen or none, got $(ASR)"; exit 2; }
	@test -z "$(filter-out bigslm lm,$(BASELINE_LIST))" || { echo "BASELINES takes bigslm and/or lm (comma-separated), got $(BASELINES)"; exit 2; }
	@$(foreach b,$(BASELINE_LIST),test -n "$(TARGET_MODEL_$(b))" || { echo "BASELINES=$(b) needs $(TARGET_MODEL_VAR_$(b))=/path/to/model"; exit 2; } &&) true
	$(BIN)/python data_utils.py check --data_dir $(DATA) --subjects $(SUBJECT)
	$(if $(wildcard subject_NCs/UTS0$(SUBJECT).npy),,$(BIN)/python noise_ceilings.py --data_dir $(DATA) --subject $(SUBJECT))
	$(BIN)/python brain_trainer_story.py --model_name $(MODEL) --subject $(SUBJECT) \
		--data_dir $(DATA) --num_epochs $(EPOCHS) --save_dir $(OUT)/runs --exp_name $(RUN_NAME) \
		$(if $(wildcard $(OUT)/runs/$(RUN_NAME)/last),--resume,)
	$(foreach b,$(BASELINE_LIST),$(if $(wildcard $(call TARGET_FILE,$(b))),,$(BIN)/python \
		target_features.py $(TARGET_KIND_$(b)) --model_name $(TARGET_MODEL_$(b)) --data_dir $(DATA) \
		--out $(call TARGET_FILE,$(b)) $(TARGET_FLAGS_$(b)) \
		$(if $(TARGET_STORIES),--stories $(TARGET_STORIES),) &&) \
		$(BIN)/python brain_trainer_story.py --model_name $(MODEL) --subject $(SUBJECT) \
		--data_dir $(DATA) --num_epochs $(EPOCHS) --save_dir $(OUT)/runs \
		--exp_name $(RUN_NAME)_$(b) --target_features $(call TARGET_FILE,$(b)) \
		$(if $(wildcard $(OUT)/runs/$(RUN_NAME)_$(b)/last),--resume,) &&) true
	$(BIN)/python brain_evaluate.py --model_name $(MODEL) --subject $(SUBJECT) --data_dir $(DATA) \
		--logs_dir $(OUT)/runs/$(RUN_NAME) --epochs final --save_dir $(OUT)/alignment \
		--exp_name $(RUN_NAME) --overwrite $(if $(LOW_LEVEL),--low_level $(LOW_LEVEL),) \
		$(BASELINE_RUNS) \
		$(REGION_FLAGS) \
		$(if $(WORD_VECTORS),--semantic_preference --word_vectors $(WORD_VECTORS),)
	$(foreach task,$(PROBES),$(BIN)/python eval_$(task).py \
		$(call PROBE_SOURCE,$(PROBE_DATA_$(task))) $(PROBE_FLAGS_$(task)) \
		--model_name $(MODEL) --model_path $(OUT)/runs/$(RUN_NAME) --save_dir $(OUT)/downstream \
		--exp_name $(RUN_NAME)_$(task) --overwrite &&) true
	$(if $(ASR_RUN),$(BIN)/python eval_asr.py $(call PROBE_SOURCE,$(TIMIT)) $(TIMIT_FLAGS) $(FLAGS_asr) \
		$(if $(filter finetune,$(ASR)),--finetune,) --model_name $(MODEL) \
		--model_path $(OUT)/runs/$(RUN_NAME) --save_dir $(OUT)/downstream \
		--exp_name $(RUN_NAME)_$(ASR_RUN) --overwrite,)
	$(BIN)/python report.py --out $(OUT) --title "brain-tuning of $(RUN_NAME)" \
		--alignment $(OUT)/alignment/$(RUN_NAME) --overwrite \
		$(if $(DOWNSTREAM),--downstream $(foreach task,$(DOWNSTREAM),$(OUT)/downstream/$(RUN_NAME)_$(task)),)
