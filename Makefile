# The commands a user types. Each installs what it needs first (`make install`, once).
# DATA: `shapes` (the embedded world) or your own image-caption data (a local imagefolder with
# metadata.jsonl, parquet, json/jsonl with image paths, or a hub name), with its column names and the
# resolution to train at (default: 48 for Shapes, else the data's own size, at most 256). Each data set gets its own RUN.
DATA ?= shapes
# RECIPE: `default`, the 15-minute job on a 2-core CPU, or `long`, the same scripts for at most 2 hours
# there (9x the steps, and twice the image tokenizer's, into runs/long on Shapes; a checkpoint every
# 500 steps, so that a stopped run continues with `make pretrain RECIPE=long ARGS=--resume`).
RECIPE ?= default
ifeq ($(filter default long,$(RECIPE)),)
$(error RECIPE must be default or long, not $(RECIPE))
endif
RECIPE_ARGS := $(if $(filter long,$(RECIPE)),--steps 14000)
RECIPE_VQ_ARGS := $(if $(filter long,$(RECIPE)),--steps 6000)
IMAGE_COLUMN ?= image
TEXT_COLUMN ?= text
# A column with each image's layout as text, which pretraining with --plan writes before the image.
LAYOUT_COLUMN ?=
IMAGE_SIZE ?=
# A pretrained image tokenizer's directory (a save_pretrained JanusVQVAE, Emu3VQVAE or diffusers
# VQModel; README, "Bring a pretrained image tokenizer"): pretraining encodes with it and trains no
# tokenizer of its own, in a run directory named after it.
IMAGE_TOKENIZER ?=
RUN ?= $(if $(filter shapes,$(DATA)),runs/$(RECIPE),runs/$(notdir $(abspath $(DATA))))$(if $(IMAGE_TOKENIZER),-$(notdir $(abspath $(IMAGE_TOKENIZER))))
DATA_ARGS := --data $(DATA) --image-column $(IMAGE_COLUMN) --text-column $(TEXT_COLUMN) $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) \
	$(if $(LAYOUT_COLUMN),--layout-column $(LAYOUT_COLUMN))
MODEL ?= $(RUN)/model
PRESET ?= tiny
SEED ?= 0
# A Hugging Face causal-LM directory to start pretraining from (its weights and tokenizer) instead of
# PRESET; then no SentencePiece model is trained.
INIT_FROM ?=
WANDB ?= offline
# Safety net for the 15-minute budget of `make pretrain` on a 2-core CPU: counted from when make
# starts (the tokenizers' time included), pretraining stops cleanly (checkpoint + model) if a slow
# machine has not finished its steps by then, leaving a minute for the final validation and save.
# `make rl` gets the same budget. 0 turns it off.
MAX_MINUTES ?= $(if $(filter long,$(RECIPE)),119,14)
STARTED := $(shell date +%s)
PYTHON := .venv/bin/python
PIP := .venv/bin/pip
export HF_HUB_OFFLINE ?= 1

# `make ablation`: vanilla vs progressive vocabulary (random and frequency order), from scratch and
# from a pretrained text LM, SEEDS each, on PRESET (eval/ablation.py).
SEEDS ?= 0 1 2
JOBS ?= 2
ABLATION ?= runs/ablation-$(PRESET)

.PHONY: install pretrain vq text-tokenizer eval ablation rl digits bench serve chromium test test-floor gpu-check clean

# torch first, pinned: the CPU wheel is on the machine, and any looser requirement resolved on its own
# pulls the CUDA build. Everything after is constrained to that torch. flash-attn is only in .[gpu].
.venv/installed: setup.cfg pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	touch $@

# diffusers' VQModel adapter needs the `diffusers` extra (pure Python): what `make test` and a
# pretraining run with IMAGE_TOKENIZER install.
.venv/diffusers-installed: .venv/installed
	$(PIP) install --quiet -c constraints.txt -e ".[diffusers]"
	touch $@

install: .venv/installed

$(RUN)/vq/vq.safetensors: | .venv/installed
	$(PYTHON) tokenizers/train_vq.py --out $(RUN)/vq --seed $(SEED) --wandb $(WANDB) $(DATA_ARGS) $(RECIPE_VQ_ARGS) $(VQ_ARGS)

$(RUN)/text/text.model: | .venv/installed
	$(PYTHON) tokenizers/train_text.py --out $(RUN)/text --seed $(SEED) $(DATA_ARGS)

vq: $(RUN)/vq/vq.safetensors
text-tokenizer: $(RUN)/text/text.model

# The main job: Shapes, the tiny preset (or INIT_FROM), the progressive schedule; writes $(RUN)/model.
# VQ_ARGS go to the image tokenizer's training (e.g. "--downsample 16 --steps 3000"), ARGS to pretraining.
pretrain: $(if $(IMAGE_TOKENIZER),.venv/diffusers-installed,$(RUN)/vq/vq.safetensors) $(if $(INIT_FROM),,$(RUN)/text/text.model)
	$(PYTHON) train/pretrain.py --run-dir $(RUN) --preset $(PRESET) $(if $(INIT_FROM),--init-from $(INIT_FROM)) \
		$(if $(IMAGE_TOKENIZER),--image-tokenizer $(IMAGE_TOKENIZER)) \
		--seed $(SEED) --wandb $(WANDB) $(DATA_ARGS) \
		$(if $(filter-out 0,$(MAX_MINUTES)),--max-minutes $(MAX_MINUTES) --started-at $(STARTED)) $(RECIPE_ARGS) $(ARGS)

# Unified-GRPO from MODEL into $(RUN)/model-rl (checkpoints, metrics, samples in $(RUN)/rl).
rl: | .venv/installed
	$(PYTHON) train/rl.py --model $(MODEL) --out $(RUN)/model-rl --seed $(SEED) --wandb $(WANDB) \
		$(if $(filter-out 0,$(MAX_MINUTES)),--max-minutes $(MAX_MINUTES)) $(ARGS)

eval: | .venv/installed
	$(PYTHON) eval/evaluate.py --model $(MODEL) --seed $(SEED) $(ARGS)

# A text LM, then 2 starts x 3 arms x SEEDS trainings and evaluations (JOBS=2: two runs at once,
# one thread each, is ~1.4x faster on a 2-core CPU than one at a time). A killed ablation resumes.
ablation: | .venv/installed
	$(PYTHON) eval/ablation.py --root $(ABLATION) --preset $(PRESET) --seeds $(SEEDS) --jobs $(JOBS) $(ARGS)

# A real data set ugen has never seen, end to end: scikit-learn's handwritten digits as an imagefolder,
# `make pretrain` on it, then captions and drawings scored by an independent classifier.
digits: | .venv/installed
	$(PIP) install --quiet -c constraints.txt -e ".[bench]"
	$(PYTHON) benchmarks/digits.py build --out runs/data/digits
	$(MAKE) pretrain DATA=runs/data/digits IMAGE_SIZE=32 VQ_ARGS="--downsample 4"
	$(PYTHON) benchmarks/digits.py judge --model runs/digits/model

# Speed and memory on this machine, each figure appended to benchmarks/results.jsonl with the device
# named: training throughput per preset (packed rows against padded rows and against a bare step;
# on a GPU tiny, small and base, with MFU), decoding with and without the KV cache, and sampling
# against transformers' generate (the default model's shape, random weights; on a GPU also base
# drawing 8 images of 24x24 codes). Needs the default run's tokenizers (built here if missing).
bench: $(RUN)/vq/vq.safetensors $(RUN)/text/text.model
	$(PYTHON) benchmarks/speed.py --run $(RUN) $(ARGS)
	$(PYTHON) benchmarks/sampler.py --preset tiny --device auto
	if $(PYTHON) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PYTHON) benchmarks/sampler.py --preset base --grid 24 --codes 16384 --prompts 8 --device cuda; fi

# `ugen serve` on the model: the JSON API and the web page at http://127.0.0.1:$(PORT)/
PORT ?= 8000
serve: | .venv/installed
	.venv/bin/ugen serve --model $(MODEL) --port $(PORT) $(ARGS)

# Debian's Chromium and its driver, for the web page's test in a real browser (tests/test_serve_browser.py,
# skipped where they are absent).
chromium:
	apt-get install -y -qq chromium chromium-driver || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)

# Two workers at one thread each: most tests are short runs that keep one core busy, so on 2 cores
# this took 6 min 57 s against 9 min 41 s for one worker with two threads. The 15 slowest are listed
# at the end, to keep the whole under 10 minutes.
test: .venv/installed .venv/diffusers-installed
	WANDB_MODE=disabled OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -rs -n 2 --durations=15 $(ARGS)

# Every item of the CUDA path on one GPU in about five minutes (benchmarks/gpu_check.py), into
# benchmarks/gpu-check.json with the device named; on a machine without CUDA, a dry run that says
# what it would check. Run it first whenever a GPU is at hand.
gpu-check: .venv/installed
	$(PYTHON) benchmarks/gpu_check.py $(ARGS)

# The oldest transformers ugen supports (setup.cfg's floor), with the tokenizers, huggingface_hub and
# kernels of its day, installed beside the .venv's (first on the path) and tested on what touches its
# API: the model and its attention, the sampling engine and its caches, starting from a pretrained LM,
# the model directory. `.ci/run` runs it after `make test`.
FLOOR := transformers==5.0.0 "tokenizers>=0.22,<0.23" "huggingface_hub>=1.3,<2" kernels==0.11.7
test-floor: .venv/installed .venv/diffusers-installed
	$(PIP) install --quiet --no-deps --upgrade --target .venv/transformers-floor $(FLOOR)
	PYTHONPATH=.venv/transformers-floor WANDB_MODE=disabled OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -rs -n 2 \
		-m "not slow" tests/test_sampling.py tests/test_init_from.py tests/test_model_dir.py tests/test_image_tokenizers.py $(ARGS)

clean:
	rm -rf runs .pytest_cache
