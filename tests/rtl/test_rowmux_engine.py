"""The row-mux array in the RTL engine (issue 22 item 3; EngineConfig.row_mux, the shared-mask weight format
wfmt CODEBOOK_SHARED of docs/engine.md): vqhls_conv_unit built with row_mux runs shared-mask convs, per-channel
-mask convs (the union rule: more passes) and dense convs bit-exact against the golden model
(flow.compile.program_exec.run_program, np.array_equal), in the cycles of its own schedule, and in the same
cycles as the per-PE-mux build on the same shared-mask op. A planted bug (every oc tile reads the first tile's
shared masks) is caught.
"""
from __future__ import annotations

import dataclasses
import shutil

import pytest

from flow.compile.program import CODEBOOK, CODEBOOK_SHARED, DENSE
from flow.rtl import conv_unit_cases as cu

pytestmark = [pytest.mark.cosim,
              pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")]

RM = cu.SMALL_24_RM
# name -> (conv_op keywords, share): 2 oc tiles (cols 4), a partial tile, d 4 / 8 / 2, stride 2, 1x1, unsigned
CASES = {
    "shared-d4-3x3-s1": (dict(H=5, W=5, C=8, OC=8, K=3, stride=1, pad=1, wfmt=CODEBOOK, d=4, n=2, m=4, k=16), True),
    "shared-d8-3x3-s2-oc7": (dict(H=7, W=6, C=16, OC=7, K=3, stride=2, pad=1, wfmt=CODEBOOK, d=8, n=2, m=4, k=32,
                                  in_unsigned=1, out_unsigned=1), True),
    "shared-d4-1x1-oc12": (dict(H=4, W=5, C=12, OC=12, K=1, stride=1, pad=0, wfmt=CODEBOOK, d=4, n=2, m=4, k=16),
                           True),
    "per-channel-masks-d4": (dict(H=4, W=5, C=8, OC=6, K=3, stride=1, pad=1, wfmt=CODEBOOK, d=4, n=2, m=4, k=16),
                             False),
    "dense-3x3": (dict(H=4, W=5, C=6, OC=5, K=3, stride=1, pad=1, wfmt=DENSE), False),
}


def _case(name: str, engine=RM, bug: str = "") -> cu.ConvUnitCase:
    kw, share = CASES[name]
    return cu.make_case(name, engine, seed=3, share=share, bug=bug, **kw)


@pytest.mark.parametrize("name", list(CASES))
def test_rowmux_conv_unit_bit_exact(name, tmp_path):
    c = _case(name)
    op = c.program.ops[c.op_index]
    _, share = CASES[name]
    if share:
        assert op.wfmt == CODEBOOK_SHARED and op.mg == RM.cols and op.passes == 1
    r = cu.run_case(c, tmp_path)
    print(f"{name}: wfmt {op.wfmt} passes {op.passes}: {r.cycles} cycles (RTL simulation), schedule "
          f"{r.schedule_cycles}")
    assert r.exact, r.detail
    assert r.cycles == r.schedule_cycles


def test_rowmux_cycles_equal_the_per_pe_build(tmp_path):
    """The same shared masks on the per-PE-mux build (wfmt CODEBOOK there: per channel rows, equal within
    groups): the same outputs in the same cycles."""
    rm = _case("shared-d4-3x3-s1")
    pe = _case("shared-d4-3x3-s1", engine=cu.SMALL_24)
    assert pe.program.ops[pe.op_index].wfmt == CODEBOOK
    a, b = cu.run_case(rm, tmp_path / "rm"), cu.run_case(pe, tmp_path / "pe")
    assert a.exact and b.exact, (a.detail, b.detail)
    print(f"row-mux {a.cycles} cycles, per-PE-mux {b.cycles} cycles (RTL simulation)")
    assert a.cycles == b.cycles


def test_planted_bug_first_tiles_mask_is_caught(tmp_path):
    """Test of the test: every oc tile compacting with the first tile's shared masks must fail."""
    c = _case("shared-d4-3x3-s1", bug="tile_mask")
    assert "PLANTED BUG" in cu.render_sources(RM, tmp_path / "src0", "tile_mask")[0].read_text()
    r = cu.run_case(c, tmp_path)
    assert r.cycles > 0, r.detail
    assert not r.exact, "a conv unit reading the first tile's masks for every tile passed"


def test_rowmux_verilog_tools(tmp_path):
    """The row-mux conv unit (small build and the PYNQ-Z2 geometry with row_mux) and the row-mux array core are
    Verilog-2005 that Icarus (-g2005) and yosys (read_verilog, hierarchy -check, proc) accept."""
    import subprocess

    from flow.compile.engine import EngineConfig
    from flow.rtl.render import write_rtl

    srcs = [(cu.render_sources(e, tmp_path / e.hash())[0], "vqhls_conv_unit")
            for e in (RM, EngineConfig(row_mux=True))]
    srcs.append((write_rtl("pe_array_rowmux", EngineConfig(), tmp_path / "core"), "vqhls_pe_array_rowmux"))
    for path, top in srcs:
        subprocess.run(["iverilog", "-g2005", "-o", str(tmp_path / "a.out"), str(path)], check=True)
        if shutil.which("yosys"):
            script = f"read_verilog {path}; hierarchy -check -top {top}; proc"
            out = subprocess.run(["yosys", "-q", "-p", script], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr[-2000:]
