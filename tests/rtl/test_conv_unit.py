"""RTL co-simulation of vqhls_conv_unit (hls_templates/rtl/conv_unit.v.j2; cocotb + Icarus) against the golden model.

Every case (flow.rtl.conv_unit_cases.CASES): a Program of random conv ops placed for the engine by flow.compile,
its on-chip state as the HLS load call leaves it (flow.rtl.onchip) and the op's input (and residual) preloaded
through the test wrapper's ports, the unit started, its output buffer compared with
flow.compile.program_exec.run_program by np.array_equal. Cycles (measured in RTL simulation, start cycle to
done cycle) must equal the unit's own schedule (the HLS loop iteration counts + the unit's plan and flush
cycles: conv_unit_cases.rtl_schedule_cycles) and are printed next to the HLS engine's cycle model
(flow.boards.cycle_model.conv_cycles), the difference reported, not asserted. A planted crossbar bug
(bug="xbar") must be caught.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from flow.rtl import conv_unit_cases as cuc

pytestmark = [pytest.mark.cosim,
              pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")]


@pytest.mark.parametrize("name", list(cuc.CASES))
def test_conv_unit_bit_exact(name, tmp_path):
    c = cuc.case(name)
    r = cuc.run_case(c, tmp_path)
    op = c.program.ops[c.op_index]
    print(f"{name}: measured {r.cycles} cycles (RTL simulation, start to done), unit schedule {r.schedule_cycles}, "
          f"HLS cycle model {r.hls_model_cycles} (modelled; difference {r.vs_hls:+d}, "
          f"{100.0 * r.vs_hls / r.hls_model_cycles:+.1f} %); passes {op.passes}, dec {op.dec}, "
          f"tiles {op.NPT}x{op.NOT}, steps {op.NSTEP}")
    assert r.exact, f"{name}: {r.detail}"
    assert r.cycles == r.schedule_cycles, f"{name}: measured {r.cycles}, schedule {r.schedule_cycles}"


def test_planted_crossbar_bug_is_caught(tmp_path):
    """Test of the test: rows past 0 taking the bank of column iw0 + r (the stride ignored) in the crossbar
    must make the stride-2 case differ from the golden model (the same case without the bug is exact above)."""
    name, bug = cuc.BUG_CASE
    r = cuc.run_case(cuc.case(name, bug=bug), tmp_path)
    assert r.cycles > 0, r.detail            # it ran to done
    assert not r.exact, "the planted crossbar bug was not caught"
    print(f"planted bug {bug!r} on {name}: {r.detail}")


def test_conv_unit_verilog_tools(tmp_path):
    """The unit as rendered for the small 2:4 build, the dense build and EngineConfig() is Verilog-2005 that
    Icarus (-g2005) and yosys (read_verilog, hierarchy -check, proc) accept."""
    for engine in (cuc.SMALL_24, cuc.SMALL_DENSE, cuc.CASES["default-cb-d8"][0]):
        srcs = cuc.render_sources(engine, tmp_path / engine.hash())
        unit = str(srcs[0])
        subprocess.run(["iverilog", "-g2005", "-o", str(tmp_path / "a.out"), unit], check=True)
        if shutil.which("yosys"):
            script = f"read_verilog {unit}; hierarchy -check -top vqhls_conv_unit; proc"
            out = subprocess.run(["yosys", "-q", "-p", script], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr[-2000:]


