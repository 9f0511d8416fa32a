"""tests/board: the PYNQ backend on the real pynq package, without a board.

They need pynq (3.1.2, the PYNQ-Z2's last release: the `board` extra), which pins numpy<2 and so lives in its
own environment (``make board-env`` makes ``.venv-board``); run them with ``.venv-board/bin/python -m pytest tests/board``. Where pynq does not
import (the main ``.venv``: numpy 2, torch), every module here is reported as one skip with the reason.

Session fixtures:
* ``board_bundle_dir``: a real deploy bundle, built by the MAIN environment's python (it has torch):
  ``python -m flow.build --board pynq-z2 --finetune-epochs 1 --limit 40 --vectors 6`` (~5 s);
  ``$VQHLS_MAIN_PYTHON`` overrides the interpreter (default ``<repo>/.venv/bin/python``).
* ``board_bundle``: a copy of it with the derived ``vqhls.hwh`` and a dummy ``vqhls.bit``
  (board_doubles.with_bitstream), loaded with engine_io.bundle.
* ``other_engine_bundle``: the same model for another EngineConfig (VQ on the dense 4:4 build).
* the sim backend's compiled engines go to a session cache directory; the ap_types headers come from
  ``$VQHLS_AP_TYPES``, else from the main environment's hls4ml (not installed here).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

try:
    import pynq  # noqa: F401
    PYNQ_ERROR = None
except Exception as e:   # missing, or broken by numpy 2
    PYNQ_ERROR = f"{type(e).__name__}: {e}"

if PYNQ_ERROR is not None:
    class _SkippedModule(pytest.Module):
        def collect(self):
            pytest.skip(f"tests/board need pynq ({PYNQ_ERROR}); run them in the board environment: "
                        ".venv-board/bin/python -m pytest tests/board (make board-env)")

    def pytest_pycollect_makemodule(module_path, parent):
        return _SkippedModule.from_parent(parent, path=module_path)


def main_python() -> Path:
    return Path(os.environ.get("VQHLS_MAIN_PYTHON") or REPO / ".venv" / "bin" / "python")


def _main_env_python() -> Path:
    py = main_python()
    if not py.is_file():
        pytest.skip(f"the bundle is built by the main environment's python ({py} missing): make venv "
                    "(or set VQHLS_MAIN_PYTHON)")
    return py


def _build(out: Path, *extra: str) -> Path:
    py = _main_env_python()
    cmd = [str(py), "-m", "flow.build", "--board", "pynq-z2", "--finetune-epochs", "1", "--limit", "40",
           "--vectors", "6", "--stage", "bundle", "--out", str(out), *extra]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    deploy = out / "deploy"
    assert (deploy / "manifest.json").is_file()
    return deploy


@pytest.fixture(scope="session", autouse=True)
def _ap_types():
    """The sim backend compiles the bundle's engine against the ap_types headers, which ship with hls4ml:
    not in this environment, so take the main environment's copy (unless VQHLS_AP_TYPES is set)."""
    if os.environ.get("VQHLS_AP_TYPES") or PYNQ_ERROR is not None:
        yield
        return
    import importlib.util

    if importlib.util.find_spec("hls4ml") is None:
        py = _main_env_python()
        proc = subprocess.run([str(py), "-c", "from engine_io.gxx_build import ap_types_dir; print(ap_types_dir())"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            pytest.fail(f"cannot locate the ap_types headers through {py}:\n{proc.stderr[-2000:]}")
        os.environ["VQHLS_AP_TYPES"] = proc.stdout.strip()
        try:
            yield
        finally:
            os.environ.pop("VQHLS_AP_TYPES", None)
    else:
        yield


@pytest.fixture(scope="session")
def board_bundle_dir(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("build") / "lenet")


@pytest.fixture(scope="session")
def board_bundle(board_bundle_dir, tmp_path_factory):
    from board_doubles import with_bitstream
    from engine_io.bundle import load

    return load(with_bitstream(board_bundle_dir, tmp_path_factory.mktemp("bundle") / "deploy"))


@pytest.fixture(scope="session")
def other_engine_bundle(tmp_path_factory):
    """The same model on another engine: VQ on the dense PYNQ-Z2 build (n = m = 4), another EngineConfig."""
    from engine_io.bundle import load

    return load(_build(tmp_path_factory.mktemp("build-dense") / "lenet", "--method", "vq", "--n", "4", "--m", "4"))


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sim-cache")


@pytest.fixture
def make_sim(board_bundle, sim_cache):
    """SimDevice factory (the bundle's engine by default); every device is closed at teardown."""
    from host.sim import SimDevice

    made = []

    def make(bundle=None, **kw):
        dev = SimDevice(bundle if bundle is not None else board_bundle, cache_dir=sim_cache, **kw)
        made.append(dev)
        return dev

    yield make
    for dev in made:
        dev.close()


@pytest.fixture
def sim_device(make_sim):
    return make_sim()


@pytest.fixture
def overlay_for(board_bundle):
    """``overlay_for(device)``: the real pynq.Overlay of the bundle's vqhls.bit (its .hwh parsed by
    pynq) on a device double, without a download (Overlay(..., download=False)); VqhlsEngineDriver is bound
    to the bundle's engine VLNV first, as host.pynq_backend.engine_driver tells a user with an own Overlay."""
    from host.pynq_backend import engine_driver

    engine_driver(board_bundle.config_hash)

    def make(device):
        return pynq.Overlay(str(board_bundle.bit_path), download=False, device=device)

    return make


@pytest.fixture
def pynq_device(sim_device):
    from board_doubles import SimPynqDevice

    return SimPynqDevice(sim_device)


@pytest.fixture
def overlay(overlay_for, pynq_device):
    return overlay_for(pynq_device)
