"""RTL co-simulation of vqhls_pe_array_rowmux (hls_templates/rtl/pe_array_rowmux.v.j2, issue 22 item 3): the
row-mux array, where the COLS columns of a step share one N:M mask, the activation lanes are compacted once per
row and broadcast to the columns (no M:1 mux in the PEs).

Each case is a random MVQ conv (flow.rtl.random_ops.conv_op) whose n:m masks are made shared within every aligned
group of COLS output channels (the group's first channel's mask copied to the group), driven through the core by
the pe_array testbench (flow/rtl/tb/pe_array.py: the ports are the same) in the engine's order
(flow.rtl.cosim_cases.schedule). The accumulators are compared with flow.quant.ops.conv2d on the decoded weights
(np.array_equal, the independent reference: schedule's ``expect``), the cycles with
flow.rtl.cycle_formulas.pe_array_cycles and with the per-PE-mux array (vqhls_pe_array) measured on the same case.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flow.compile.engine import EngineConfig
from flow.compile.program import CODEBOOK
from flow.rtl import cosim_cases as cc
from flow.rtl.cosim import run_cocotb
from flow.rtl.random_ops import SMALL_CFG, conv_op
from flow.rtl.render import render_rtl, write_rtl

pytestmark = [pytest.mark.cosim,
              pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")]

UNIT, TOP = "pe_array_rowmux", "vqhls_pe_array_rowmux"


def share_masks(op, cols: int) -> None:
    """Make ``op``'s n:m masks (arrays["mask"], [OC, KH, KW, NVEC]) shared within every aligned group of ``cols``
    output channels: the group's first channel's masks copied to the rest (in place)."""
    mask = op.arrays["mask"]
    for g in range(0, mask.shape[0], cols):
        mask[g:g + cols] = mask[g]


def shared_case(name: str, engine: EngineConfig, seed: int, *, shared: bool = True, H: int, W: int, C: int,
                OC: int, K: int = 3, stride: int = 1, pad: int = 1, d: int = 8, k: int = 16, in_unsigned: int = 0,
                **kw) -> cc.ConvCase:
    """A random MVQ conv case on ``engine`` (its masks shared per column tile unless ``shared`` is False)."""
    rng = np.random.default_rng(seed)
    op = conv_op(rng, H=H, W=W, C=C, OC=OC, K=K, stride=stride, pad=pad, wfmt=CODEBOOK, n=engine.n, m=engine.m,
                 d=d, k=k, in_unsigned=in_unsigned)
    if shared:
        share_masks(op, engine.cols)
    return cc.conv_case_from_op(name, engine, op, rng, seed=seed, **kw)


def run_rowmux_case(case: cc.ConvCase, work: Path, unit: str = UNIT) -> cc.CaseResult:
    """cosim_cases.run_conv_case for ``unit`` (the row-mux core by default): the same schedule, testbench and
    comparison. The padded columns of a partial last column tile (OC not a multiple of COLS: zero weights) carry
    the tile's shared mask, as the row-mux format stores one mask per tile."""
    work.mkdir(parents=True, exist_ok=True)
    sch = cc.schedule(case)
    e = case.engine
    wk = sch["w_keep"].copy()                      # [beats, 2, LANES]
    OC, KH, KW, C = case.w.shape
    nstep, n_ot = KH * KW * -(-C // e.lanes), -(-OC // e.cols)
    if unit == UNIT and OC % e.cols:
        step, first = -1, 0
        for bi, (c0, nc, _) in enumerate(sch["w_meta"]):
            if c0 == 0:                            # a step's first beat: column 0 of the tile
                step, first = step + 1, bi
            ot = (step // nstep) % n_ot
            for i in range(nc):
                if ot * e.cols + c0 + i >= OC:     # a padded column: the tile's mask (its column 0's)
                    wk[bi, i] = wk[first, 0]
    case_path, result_path = work / "case.npz", work / "result.json"
    np.savez(case_path, w_data=sch["w_data"], w_keep=wk, w_meta=sch["w_meta"],
             w_interval=np.int64(sch["w_interval"]), a_data=sch["a_data"], a_flags=sch["a_flags"],
             unsigned=np.int64(case.in_unsigned), rows=np.int64(e.rows), cols=np.int64(e.cols),
             lanes=np.int64(e.lanes), n_out=np.int64(len(sch["expect"])), p_gap=np.float64(case.p_gap),
             p_stall=np.float64(case.p_stall), seed=np.int64(case.seed),
             max_cycles=np.int64(4 * sch["model_cycles"] + 1000))
    src = write_rtl(unit, e, work, bug=case.bug)
    res = run_cocotb([src], f"vqhls_{unit}", cc.TB_MODULE, build_dir=work / "sim", testcase="pe_array_case",
                     extra_env={"VQHLS_CASE": str(case_path), "VQHLS_RESULT": str(result_path)})
    if res.failed or not result_path.is_file():
        return cc.CaseResult(case.name, False, -1, sch["model_cycles"], detail=res.summary())
    out = json.loads(result_path.read_text())
    got = np.array(out["acc"], np.int64).reshape(sch["expect"].shape) if out["acc"] else np.zeros(0)
    exact = got.shape == sch["expect"].shape and np.array_equal(got, sch["expect"])
    detail = "" if exact else (f"{int((got != sch['expect']).sum())} accumulators differ"
                               if got.shape == sch["expect"].shape else f"shape {got.shape}")
    return cc.CaseResult(case.name, bool(exact), out["cycles"], sch["model_cycles"], out["stall_cycles"],
                         out["gap_cycles"], out["w_err"], detail)


_SPARSE24 = EngineConfig()              # 8x8, 8 lanes, 2:4 (the PYNQ-Z2 build)
CASES = {
    "2:4 8x8x8 6x6x16->16 3x3 uint8": (_SPARSE24, 41, dict(H=6, W=6, C=16, OC=16, in_unsigned=1)),
    "1:4 4x4x4 11x11x8->8 s2, 3 pixel tiles": (SMALL_CFG, 42, dict(H=11, W=11, C=8, OC=8, stride=2)),
    "2:4 8x8x8 d4 4x12x16->12 (a partial column tile)": (_SPARSE24, 43, dict(H=4, W=12, C=16, OC=12, d=4)),
    "1:2 8x8x8 d2 3x3x8->16 1x1": (EngineConfig(n=1, m=2), 44, dict(H=3, W=3, C=8, OC=16, K=1, pad=0, d=2)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rowmux_bit_exact_and_cycles(name, tmp_path):
    engine, seed, kw = CASES[name]
    case = shared_case(name, engine, seed, **kw)
    r = run_rowmux_case(case, tmp_path)
    assert r.exact, f"{name}: {r.detail}"
    assert r.w_err == 0
    print(f"{name}: {r.cycles} cycles, model {r.model_cycles}")
    assert r.cycles == r.model_cycles, f"cycle model off by {r.cycle_error:+d}"


def test_rowmux_cycles_equal_the_per_pe_array(tmp_path):
    """The same shared-mask case on both arrays: the same accumulators (both bit-exact) in the same cycles."""
    case = shared_case("2:4 both arrays", _SPARSE24, 45, H=5, W=6, C=16, OC=16)
    rm = run_rowmux_case(case, tmp_path / "rowmux")
    pe = run_rowmux_case(case, tmp_path / "per_pe", unit="pe_array")
    assert rm.exact and pe.exact, (rm.detail, pe.detail)
    print(f"row-mux {rm.cycles} cycles, per-PE-mux {pe.cycles} cycles (measured in RTL simulation)")
    assert rm.cycles == pe.cycles == rm.model_cycles


def test_rowmux_back_pressure(tmp_path):
    case = shared_case("2:4 back-pressure", _SPARSE24, 46, H=6, W=6, C=16, OC=16, p_gap=0.3, p_stall=0.3)
    r = run_rowmux_case(case, tmp_path)
    assert r.exact, r.detail
    assert r.stall_cycles > 0 and r.gap_cycles > 0 and r.cycles >= r.model_cycles


def test_planted_bug_wrong_steps_mask_is_caught(tmp_path):
    """Test of the test: the rows compacted with the mask of the step being loaded (the shadow bank's) instead of
    the active step's must fail the comparison."""
    assert "PLANTED BUG" in render_rtl(UNIT, SMALL_CFG, bug="shadow_mask")
    assert "PLANTED BUG" not in render_rtl(UNIT, SMALL_CFG)
    case = replace(shared_case("planted bug", SMALL_CFG, 47, H=4, W=4, C=8, OC=8), bug="shadow_mask")
    r = run_rowmux_case(case, tmp_path)
    assert r.cycles > 0, r.detail            # it ran
    assert not r.exact, "a core compacting with the wrong step's mask passed the comparison"


def test_mask_not_shared_sets_w_err(tmp_path):
    """Per-channel masks (today's MVQ) on the row-mux array: the columns' keep bits differ, w_err is set."""
    case = shared_case("per-channel masks", SMALL_CFG, 48, shared=False, H=3, W=3, C=8, OC=4)
    r = run_rowmux_case(case, tmp_path)
    assert r.cycles > 0, r.detail
    assert r.w_err == 1


def test_rowmux_has_no_mux_in_the_pes():
    """Structure: the compaction mux sits in the row loop (ROWS x SLOTS), one select set; the PE loop reads the
    compacted row."""
    v = render_rtl(UNIT, _SPARSE24)
    assert "module vqhls_pe_array_rowmux" in v
    pe_loop = v[v.index("begin : g_row"):v.index("S2: adder tree")]
    assert "sel" not in pe_loop and "xc[(r*SLOTS+s)*9" in pe_loop
    assert "reg  [SLOTS*SELW-1:0] ms;" in v and "reg [SLOTS*SELW-1:0]   sh_sel, act_sel;" in v
