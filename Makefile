# Two commands matter: `make quick` (the main job on the CPU quick preset) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install blender quick test test-all bench clean
install:
	bash scripts/bootstrap.sh

blender:  # a Python with bpy for data.renderer = "blender" (.venv-blender)
	bash scripts/bootstrap_blender.sh

quick: install
	$(VENV)/bin/locodiff study --preset quick

test: install
	bash scripts/test.sh

test-all: install
	bash scripts/test.sh -m "slow or not slow"

bench: install
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done
