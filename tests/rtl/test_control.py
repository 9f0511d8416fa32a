"""RTL simulation (cocotb + Icarus, cocotbext-axi AxiLiteMaster) of the engine's AXI4-Lite control block
vqhls_control (hls_templates/rtl/control.v.j2): the Vitis HLS ap_ctrl_hs register map of engine_io/regmap.py
as control.v.j2 states its reading of the generated slave (flow/rtl/tb/control.py). Mutants of the rendered
Verilog show the checks bite. Measured in RTL simulation; nothing here is a vendor tool's output.
"""
from __future__ import annotations

import shutil

import pytest

from flow.compile.engine import EngineConfig
from flow.rtl.cosim import run_cocotb
from flow.rtl.render import render_rtl

pytestmark = [pytest.mark.cosim,
              pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")]

TESTS = ("registers", "call_handshake", "interrupts", "auto_restart")


def _run(tmp_path, text: str, testcase: str | None = None):
    src = tmp_path / "vqhls_control.v"
    src.write_text(text)
    return run_cocotb([src], "vqhls_control", "flow.rtl.tb.control", build_dir=tmp_path / "sim", testcase=testcase)


def test_control_register_map(tmp_path):
    r = _run(tmp_path, render_rtl("control", EngineConfig()))
    assert r.failed == 0 and r.passed == len(TESTS), r.summary()


# each mutant breaks one documented behaviour; the named cocotb test must fail on it
MUTANTS = {
    "ap_vld cleared by reading the data": (
        "else if (ar_hs && raddr == ADDR_STATUS_CTRL) int_status_ap_vld <= 1'b0;",
        "else if (ar_hs && raddr == ADDR_STATUS) int_status_ap_vld <= 1'b0;", "call_handshake"),
    "ap_done not clear-on-read": (
        "else if (rd_ctrl) int_task_ap_done <= 1'b0;", "", "call_handshake"),
    "ap_start not self-clearing": (
        "else if (ap_ready) int_ap_start <= int_auto_restart;", "", "call_handshake"),
    "ISR write-1-to-clear": (
        "int_isr[0] <= int_isr[0] ^ s_axi_control_wdata[0];",
        "int_isr[0] <= int_isr[0] & ~s_axi_control_wdata[0];", "interrupts"),
    "auto_restart ignored": (
        "else if (ap_ready) int_ap_start <= int_auto_restart;", "else if (ap_ready) int_ap_start <= 1'b0;",
        "auto_restart"),
    "no byte strobes": (
        "int_n_images <= (s_axi_control_wdata & wmask) | (int_n_images & ~wmask);",
        "int_n_images <= s_axi_control_wdata;", "registers"),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught(tmp_path, name):
    old, new, testcase = MUTANTS[name]
    text = render_rtl("control", EngineConfig())
    assert old in text, f"mutant {name}: pattern not in the rendered control block"
    r = _run(tmp_path, text.replace(old, new, 1), testcase=testcase)
    assert r.failed == 1, f"mutant {name} passed {testcase}: {r.summary()}"
