"""RTL simulation (cocotb + Icarus) of the engine's real cycle counter, the Verilog the HLS project carries
for Vitis (firmware/vqhls_cycle_counter.v, rendered from hls_templates/rtl/cycle_counter.v.j2).

MEASURED in RTL simulation: each read equals the testbench's own count of clock edges since reset, and
the difference of two reads (what the engine latches into REAL_CYCLES) the edges between the two calls
(flow/rtl/tb/cycle_counter.py). Mutants of the rendered text show the checks bite.
"""
from __future__ import annotations

import shutil

import pytest

from flow.compile.engine import EngineConfig
from flow.hls import cycle_counter
from flow.hls.project import render
from flow.rtl.cosim import run_cocotb

pytestmark = [pytest.mark.cosim,
              pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")]

NA = (1 << 64) - 1
SOURCE = f"firmware/{cycle_counter.MODULE}.v"


def _verilog() -> str:
    return render(EngineConfig())[SOURCE]


def _run(tmp_path, text: str, reset_value: int, testcase: str | None = None, seed: int = 1):
    src = tmp_path / f"{cycle_counter.MODULE}.v"
    src.write_text(text)
    return run_cocotb([src], cycle_counter.MODULE, "flow.rtl.tb.cycle_counter", build_dir=tmp_path / "sim",
                      parameters={"RESET_VALUE": f"64'h{reset_value:016X}"},
                      extra_env={"VQHLS_CC_RESET": str(reset_value), "VQHLS_CC_SEED": str(seed)},
                      testcase=testcase)


@pytest.mark.parametrize("reset_value", [0, (1 << 32) - 200, NA - 7],
                         ids=["from-zero", "across-2^32", "near-the-top"])
def test_counter_measures_clock_edges(tmp_path, reset_value):
    """From reset at 0, just below 2^32 (the difference crosses into the high word) and near the top
    (saturation below REAL_CYCLES_NA): every testbench check passes."""
    r = _run(tmp_path, _verilog(), reset_value)
    assert r.failed == 0 and r.passed == 3, r.summary()


# Mutants of the rendered Verilog: each must fail the testbench test that exercises what it removes.
MUTANTS = {
    # a counter that only runs while the caller enables the module is not free-running
    "gated_by_ap_ce": ("else if (count != LAST)", "else if (ap_ce && count != LAST)",
                       0, "counts_clock_edges_between_calls"),
    # a counter that wraps reaches all ones, the value that means "not available"
    "no_saturation": ("else if (count != LAST)", "else", NA - 7, "saturates_below_not_available"),
    # a read one cycle late
    "late_sample": ("if (take)\n                now <= count;", "if (done)\n                now <= count;",
                    0, "back_to_back_calls"),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught(tmp_path, name):
    old, new, reset_value, testcase = MUTANTS[name]
    text = _verilog()
    assert old in text, f"mutant {name}: pattern not in the rendered counter"
    r = _run(tmp_path, text.replace(old, new, 1), reset_value, testcase=testcase)
    assert r.failed == 1, f"mutant {name} passed {testcase}: {r.summary()}"
