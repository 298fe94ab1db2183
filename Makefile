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
# the first of these on PATH; the training side needs 3.11+ (checked before the venv is made)
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
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

.PHONY: setup one-opencv check-python distill label train eval export test test-edge layers test-all chromium bench bench-label bench-runtime bench-serve \
        serve lint clean distclean help compat wheels-check test-arm64 test-arm64-backends docs

help:
	@awk '!/^#/{exit} {sub(/^# ?/, ""); print}' Makefile
	@echo "targets: setup distill (label train eval) export test (test-edge) test-all bench (bench-label bench-runtime)" \
	      "bench-serve serve lint docs clean distclean compat wheels-check test-arm64 test-arm64-backends"

setup: $(STAMP)

# torch/torchvision are pinned in constraints.txt to the pair that works on CPU-only machines.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(MAKE) --no-print-directory check-python
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[$(EXTRAS)]"
	@$(MAKE) --no-print-directory one-opencv
	@touch $@

# One OpenCV wheel: the base install needs opencv-python-headless, Ultralytics (the distill extra) opencv-python, and
# both write the same cv2/ files, so whichever pip installed last wins and an upgrade of one breaks the other
# (`dkit doctor` warns). The venv keeps Ultralytics' opencv-python (it has the GUI `dkit run --show` needs):
# uninstalling the headless wheel deletes the shared files, so opencv-python is reinstalled over them, same version.
CV_VERSION = $(BIN)/python -c 'import importlib.metadata as m; print(m.version("$(1)"))' 2>/dev/null
one-opencv:
	@if [ -n "$$($(call CV_VERSION,opencv-python))" ] && [ -n "$$($(call CV_VERSION,opencv-python-headless))" ]; then \
	  v=$$($(call CV_VERSION,opencv-python)); \
	  echo "make: keeping opencv-python $$v (Ultralytics', with a GUI) instead of both it and opencv-python-headless"; \
	  $(BIN)/python -m pip uninstall --quiet --disable-pip-version-check -y opencv-python-headless && \
	  $(BIN)/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "opencv-python==$$v"; \
	fi

# Is there a Python 3.11+ to make the venv from? Says what to do when not (make PYTHON=/path/to/python3.11).
check-python:
	@if [ -z "$(PYTHON)" ]; then \
	  echo "make: no Python found on PATH (looked for python3.11, python3.12, python3.13, python3): install" \
	       "Python 3.11 or newer, or name one: make PYTHON=/path/to/python3.11 TARGET" >&2; exit 1; fi
	@if ! command -v "$(PYTHON)" >/dev/null 2>&1; then \
	  echo "make: PYTHON=$(PYTHON) is not an executable; name a Python 3.11+: make PYTHON=/path/to/python3.11" >&2; \
	  exit 1; fi
	@"$(PYTHON)" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "make: $(PYTHON) is Python $$("$(PYTHON)" -c 'import platform; print(platform.python_version())'); the" \
	       "training side needs 3.11 or newer: make PYTHON=/path/to/python3.11 TARGET" >&2; \
	  exit 1; }
	@"$(PYTHON)" -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "make: $(PYTHON) has no venv/ensurepip module (Debian/Ubuntu: apt install python3-venv)" >&2; exit 1; }
	@echo "make: making $(VENV) with $(PYTHON) (Python $$("$(PYTHON)" -c 'import platform; print(platform.python_version())'))"

distill: label train eval

label: setup
	$(BIN)/dkit label $(KIT_ARGS)

train: setup
	$(BIN)/dkit train $(KIT_ARGS)

eval: setup
	$(BIN)/dkit eval $(KIT_ARGS) $(if $(GT),--ground-truth $(GT))

export: setup
	$(BIN)/dkit export $(KIT_ARGS)

# The tests in two venvs: the dev venv runs all but the `base` tests (tests/conftest.py marks so every tests/edge and
# tests/devtools test not marked `devenv`), which then run in the base-only venv of test-edge.
test: setup chromium layers compat
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not slow and not base" -q
	@$(MAKE) --no-print-directory test-edge

# The device runtime's and device tools' tests (tests/edge, tests/devtools) in a base-only venv, $(EDGE_VENV): what
# `pip install distill-kit` puts on a device (no torch, ultralytics, open_clip or onnx), plus the test tools pytest,
# pillow (the tests draw images with it) and httpx2 (Starlette's TestClient). The real bundles they run on are built
# once by the dev venv and cached in build/test-fixtures/ (tests/fixture_cache.py; tests/test_fixture_cache.py builds
# them, instantly when cached); the tests needing a dev-only package (marked `devenv`) skip here, naming it, and run
# in the dev venv's pass of `test`.
EDGE_VENV := build/venv-edge
$(EDGE_VENV)/.installed: pyproject.toml constraints.txt Makefile
	@test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e . pytest pillow httpx2
	@touch $@

test-edge: setup $(EDGE_VENV)/.installed
	$(BIN)/python -m pytest -q tests/test_fixture_cache.py
	$(EDGE_VENV)/bin/python -m pytest -m "not slow" -q tests/edge tests/devtools

# The layer contracts (.importlinter) and the import-cycle check (tools/import_cycles.py: no two modules import each
# other, function-level imports included) over the installed shape of the package: edge/, distill/ and export/ install
# as dkit.edge, dkit.distill and dkit.export, so they are checked in a throwaway install of the package itself.
LAYERS := build/layers
layers: setup
	@rm -rf $(LAYERS) build/lib  # build/lib: stale modules of an earlier build would be copied in
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --no-compile \
	  --target $(LAYERS) . 2>&1 | grep -v "^WARNING: Location" || true
	cd $(LAYERS) && PYTHONPATH=. $(abspath $(BIN))/lint-imports $(abspath .importlinter) --no-cache
	cd $(LAYERS) && PYTHONPATH=. $(abspath $(BIN))/python $(abspath tools/import_cycles.py) dkit

# Python versions, statically (vermin): what a base install imports (the edge runtime, dkit.core, the CLI:
# dkit run/serve/doctor) must run on 3.10; the training side (distill/, export/) on 3.11 (e.g. datetime.UTC).
COMPAT_BASE := edge devtools dkit
COMPAT_TRAINING := distill export
VERMIN = $(BIN)/vermin --no-tips --violations --eval-annotations --no-parse-comments -q
compat: setup
	$(VERMIN) -t=3.10- $(COMPAT_BASE)
	$(VERMIN) -t=3.11- $(COMPAT_TRAINING)

# Every base dependency has a wheel for manylinux aarch64 and x86_64 on CPython 3.10-3.13 (asks the package
# registry; slow, not part of `make test`). Prints the table: Python x platform -> resolved versions or what is missing.
wheels-check: setup
	$(BIN)/dkit device-pack --check

# The kiosk's browser test drives Debian's Chromium (Playwright, executable_path); installed here when it
# can be (root with apt-get), otherwise that one test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing chromium (Debian) for the kiosk browser test"; \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	    else echo "note: no chromium and no root apt-get: the kiosk browser test will skip"; fi; }

test-all: setup
	$(BIN)/python -m pytest -q

# The bundles on a Debian bookworm arm64 root under qemu-user against x86, same images (slow, root, not part of
# `make test`): a cached debootstrap root and base-only venv under $(DKIT_ARM64_HOME) (default ~/.cache/dkit-arm64),
# the wheel built here; fails when a detector, classifier or judge result differs beyond its bound (tools/arm64/).
# DKIT_ARM64_PINS=verified|repo|none: the device's constraints; QEMU_CPU=cortex-a76: the emulated CPU.
test-arm64: setup
	X86_PY=$(abspath $(BIN))/python tools/arm64/run.sh

# The device backends in the same arm64 root (after test-arm64): a detector bundle with int8 and NCNN models run as
# onnxruntime fp32/int8, ncnn fp32/fp16/int8 and openvino on x86 and aarch64, compared (correctness only), and
# the on-device accuracy check of each reduced-precision model in the root (tools/arm64/device_checks.py).
# BUNDLE= the bundle (default: the coco128 recipe's, runs/coco128/bundle).
test-arm64-backends: setup
	X86_PY=$(abspath $(BIN))/python tools/arm64/backends.sh $(or $(BUNDLE),runs/coco128/bundle)

# make bench KIT=datasets/coco128/kit.yaml DATA=../shared/assets/data/coco128/images/train2017   (after export)
bench: bench-label bench-runtime

bench-label: setup
	$(BIN)/dkit bench label $(KIT_ARGS)

bench-runtime: setup
	$(BIN)/dkit bench runtime $(BUNDLE) --source $(if $(DATA),$(DATA),../shared/assets/data/coco128/images/train2017)

# a judge bundle: make bench-serve KIT=datasets/quickdraw/kit.yaml
bench-serve: setup
	$(BIN)/dkit bench serve $(BUNDLE)

serve: setup
	$(BIN)/dkit serve $(BUNDLE)

lint: setup layers
	$(BIN)/ruff check .

# The generated reference pages (docs/KIT.md, the settings table of docs/KIOSK.md), rewritten from the code's own
# definitions (dkit/core/kit.py, edge/bundle/kiosk_config.py); tests/test_docs.py fails when one is not current.
docs: setup
	$(BIN)/python tools/gendocs.py

clean:
	rm -rf runs build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
