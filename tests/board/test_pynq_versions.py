"""Which pynq the board tests run under, and what the backend does with other releases.

The PYNQ-Z2's last pynq release line is 3.1.x (pynq 4 drops Zynq-7000); .venv-board installs the
`board` extra of pyproject.toml, and these tests check that the pynq they run against is that pin.
The API surface host/pynq_backend.py relies on (its module docstring) is checked on the installed pynq,
so a different release that changed it fails here rather than on a board."""
from __future__ import annotations

import inspect
import platform
import re

import pynq
import pynq.lib.dma
import pytest

from board_doubles import REPO
from host.pynq_backend import PYNQ_Z2_PIN, PynqBackend, pynq_version_problem


def _board_extra() -> list[str]:
    import tomllib    # Python 3.11+: only this test environment's interpreter reads pyproject.toml

    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]["board"]


def test_the_board_tests_run_the_pinned_pynq():
    pins = [r for r in _board_extra() if r.startswith("pynq")]
    assert pins == [PYNQ_Z2_PIN], pins
    assert pynq.__version__ == PYNQ_Z2_PIN.split("==")[1], (
        f"tests/board run pynq {pynq.__version__}, the board extra pins {PYNQ_Z2_PIN}: make board-env")
    assert pynq_version_problem(pynq.__version__, platform.machine()) is None
    assert pynq_version_problem(pynq.__version__, "armv7l") is None          # the PYNQ-Z2's CPU


@pytest.mark.parametrize("version, machine, expect", [
    ("2.7.0", "armv7l", None),           # image v2.7 (Python 3.8)
    ("3.0.1", "armv7l", None),           # image v3.0 (Python 3.10)
    ("3.1.2", "armv7l", None),
    ("3.1", "armv7l", None),             # the v3.1 image's pynq reports "3.1"
    ("4.0.0", "aarch64", None),          # Zynq UltraScale+: pynq 4 still runs there
    ("4.0.0", "x86_64", None),           # the board doubles of these tests
    ("2.6.2", "armv7l", "pynq 2.6.2 is older than 2.7"),
    ("2.5", "armv7l", "pynq 2.5 is older than 2.7"),
    ("4.0.0", "armv7l", "pynq 4.0.0 does not support Zynq-7000 boards such as the PYNQ-Z2"),
    ("5.1.0", "armv7l", "pynq 5.1.0 does not support Zynq-7000"),
    ("unknown", "armv7l", "pynq version 'unknown' is not a release number"),
])
def test_version_gate(version, machine, expect):
    got = pynq_version_problem(version, machine)
    if expect is None:
        assert got is None
    else:
        assert got is not None and got.startswith(expect) and "\n" not in got
        assert PYNQ_Z2_PIN in got                        # says what to install


def test_pynq_4_on_a_zynq_7000_is_refused_in_one_line(board_bundle, overlay, monkeypatch, capsys):
    """The backend asks the installed pynq and the CPU: pynq 4.0.0 on armv7l is refused before any
    register access, as one line from host.run (exit 2); the same overlay works with the real version."""
    from host import run
    from host.accelerator import AcceleratorError

    monkeypatch.setattr(pynq, "__version__", "4.0.0")
    monkeypatch.setattr(platform, "machine", lambda: "armv7l")
    with pytest.raises(AcceleratorError, match=r"^pynq 4\.0\.0 does not support Zynq-7000"):
        PynqBackend(board_bundle, overlay=overlay)
    assert overlay.device.sim.calls == 0
    assert run.main([str(board_bundle.path), "--backend", "pynq"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pynq 4.0.0 does not support Zynq-7000") and err.count("\n") == 1, err
    monkeypatch.undo()
    PynqBackend(board_bundle, overlay=overlay).close()


def test_the_pynq_api_the_backend_uses():
    """host/pynq_backend.py's list of what it uses, on the installed pynq (the same in 2.7 to 4.0)."""
    params = inspect.signature(pynq.Overlay.__init__).parameters
    assert {"bitfile_name", "download", "device"} <= set(params)
    assert {"shape", "dtype", "target"} <= set(inspect.signature(pynq.allocate).parameters)
    assert "description" in inspect.signature(pynq.DefaultIP.__init__).parameters
    assert 'self._registers = description["registers"]' in re.sub(
        r"'", '"', inspect.getsource(pynq.DefaultIP.__init__))
    ch = pynq.lib.dma._SDMAChannel
    assert list(inspect.signature(ch.transfer).parameters) == ["self", "array", "start", "nbytes"]
    init = inspect.getsource(ch.__init__)
    for attr in ("_mmio", "_offset", "_max_size", "_first_transfer", "_active_buffer", "transferred"):
        assert f"self.{attr} =" in init, attr
    for prop in ("idle", "error", "running"):
        assert isinstance(inspect.getattr_static(ch, prop), property), prop
    assert "xilinx.com:ip:axi_dma:7.1" in pynq.lib.dma.DMA.bindto
