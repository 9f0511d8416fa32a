"""A real deploy bundle for the host tests: python -m flow.build (lenet-digits, MVQ, one fine-tuning epoch,
60 test images, 8 vectors) into a temporary directory, once per session (~10 s); and a session cache
directory for the sim backend's compiled engine (compiled once, ~3 s)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "lenet"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    cmd = [sys.executable, "-m", "flow.build", "--board", "pynq-z2", "--finetune-epochs", "1", "--limit", "60",
           "--vectors", "8", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"flow.build failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    deploy = out / "deploy"
    assert (deploy / "manifest.json").is_file()
    return deploy


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sim-cache")


@pytest.fixture(scope="session")
def bundle(bundle_path):
    from engine_io.bundle import load

    return load(bundle_path)


@pytest.fixture(scope="session")
def sim_library(bundle, sim_cache) -> Path:
    from host.sim import build_library

    return build_library(bundle, cache_dir=sim_cache)


@pytest.fixture
def device(bundle, sim_cache, sim_library):
    from host.sim import SimDevice

    dev = SimDevice(bundle, cache_dir=sim_cache)
    yield dev
    dev.close()


@pytest.fixture
def acc(bundle, sim_cache, sim_library):
    from host.accelerator import Accelerator

    a = Accelerator.open(bundle, backend="sim", cache_dir=sim_cache)
    yield a
    a.close()
