# Distill Kit. The main job:   make distill && make export
#              The tests:      make test
# Every target installs what it needs first (`setup`: .venv in the repo root), so a fresh clone needs
# no manual step. Variables:
#   KIT=datasets/coco128/kit.yaml   the kit YAML (default: the CLIP-teacher Imagenette kit)
#   DATA=DIR                        folder of images (overrides data.images)
#   OUT=RUN_DIR                     run folder (default: runs/<kit name>/)
#   SET="teacher.imgsz=1280 ..."    kit overrides, each passed as --set KEY.PATH=VALUE
#   GT=PATH                         ground truth for `eval` (YOLO label folder, or a CSV for classifiers)
#   BUNDLE=DIR                      bundle for `serve` (default: RUN_DIR/bundle)
#   PYTHON=python3.11               interpreter the venv is made from

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= distill,export,dev
KIT ?= datasets/imagenette/kit.yaml
DATA ?=
OUT ?=
SET ?=
GT ?=
KIT_NAME = $(shell sed -n 's/^name:[[:space:]]*\([^[:space:]#]*\).*/\1/p' $(KIT))
RUN_DIR = $(if $(OUT),$(OUT),runs/$(KIT_NAME))
BUNDLE ?= $(RUN_DIR)/bundle
KIT_ARGS = $(KIT) $(if $(DATA),--data $(DATA)) $(if $(OUT),--out $(OUT)) $(foreach s,$(SET),--set $(s))
STAMP := $(VENV)/.installed

.PHONY: setup distill label train eval export test test-all bench serve lint clean distclean help

help:
	@awk '!/^#/{exit} {sub(/^# ?/, ""); print}' Makefile
	@echo "targets: setup distill (label train eval) export test test-all bench serve lint clean distclean"

setup: $(STAMP)

# torch/torchvision are pinned in constraints.txt to the pair that works on CPU-only machines.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

distill: label train eval

label: setup
	$(BIN)/dkit label $(KIT_ARGS)

train: setup
	$(BIN)/dkit train $(KIT_ARGS)

eval: setup
	$(BIN)/dkit eval $(KIT_ARGS) $(if $(GT),--ground-truth $(GT))

export: setup
	$(BIN)/dkit export $(KIT_ARGS)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow" -q

test-all: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/dkit bench label $(KIT_ARGS)

serve: setup
	$(BIN)/dkit serve $(BUNDLE)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf runs build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
