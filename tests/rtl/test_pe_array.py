"""RTL co-simulation of vqhls_pe_array and vqhls_requant (cocotb + Icarus) against the golden model.

Every case: render the core from its EngineConfig, drive it in the engine's order (flow.rtl.cosim_cases),
compare the accumulators with flow.quant.ops.conv2d bit for bit (np.array_equal), and the cycles with
flow.rtl.cycle_formulas (exact without back-pressure; with it the overhead is reported and never negative).
The random cases are built when their test runs, the default model's layer from the session's build
(conftest.default_model_build): collecting these tests builds nothing.
"""
from __future__ import annotations

import shutil

import pytest

from flow.compile.engine import EngineConfig
from flow.rtl import cosim_cases as cc
from flow.rtl import cycle_formulas
from flow.rtl.random_ops import SMALL_CFG
from flow.rtl.render import UNITS, render_rtl

pytestmark = [pytest.mark.cosim,
              pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")]


def check_bit_exact_and_cycles(case: cc.ConvCase, tmp_path) -> None:
    """Run ``case``: bit-exact, no weight error; cycles equal to the model without back-pressure (and the
    step periods to the engine's cycle model), at most the overhead of the stalls and gaps with it."""
    name = case.name
    r = cc.run_conv_case(case, tmp_path)
    assert r.exact, f"{name}: {r.detail}"
    assert r.w_err == 0
    print(f"{name}: {r.cycles} cycles, model {r.model_cycles}, error {r.cycle_error:+d} "
          f"(stalls {r.stall_cycles}, gaps {r.gap_cycles})")
    if case.p_gap == 0 and case.p_stall == 0:
        assert r.cycles == r.model_cycles, f"cycle model off by {r.cycle_error:+d}"
        # the engine's cycle model (flow.boards.cycle_model) charges each step max(passes * max(ng, 2), dec): the
        # RTL's measured step periods must agree wherever the tile has >= 2 groups (the HLS accumulate
        # distance; the RTL accumulates back to back) and one pass
        x = r.extra
        assert len(x["measured_periods"]) == x["steps"] - 1
        for ng, meas, eng in zip(cc.schedule(case)["steps"], x["measured_periods"], x["engine_periods"]):
            if ng >= 2 and x["passes"] == 1:
                assert meas == eng, f"step of {ng} groups: RTL {meas} cycles, engine model {eng}"
            else:
                assert meas <= eng
    else:
        assert r.stall_cycles > 0 and r.gap_cycles > 0        # the back-pressure really happened
        assert r.cycles >= r.model_cycles
        assert r.cycle_error <= r.stall_cycles + r.gap_cycles


@pytest.mark.parametrize("name", list(cc.RANDOM_CASES))
def test_pe_array_bit_exact_and_cycles(name, tmp_path):
    check_bit_exact_and_cycles(cc.random_case(name), tmp_path)


def test_default_model_layer_bit_exact_and_cycles(default_model_build, tmp_path):
    """The first codebook conv of the default model's MVQ program (the `features.4` layer)."""
    case = cc.default_model_case(default_model_build)
    assert case is not None, f"no codebook conv in {default_model_build}"
    check_bit_exact_and_cycles(case, tmp_path)


@pytest.mark.sim_matrix
def test_pe_array_under_verilator(tmp_path, monkeypatch):
    """The optional Verilator path (`make cosim SIM=verilator`): the 2:4 array on the default PYNQ-Z2
    geometry builds (the wheel's PCH flag is supplied, flow.rtl.cosim) and is bit-exact, with the cycles
    of the model."""
    from flow.rtl.cosim import CosimError, find_simulator

    try:
        find_simulator("verilator")
    except CosimError as e:
        pytest.skip(str(e))
    monkeypatch.setenv("VQHLS_SIM", "verilator")
    case = cc.random_conv_case("verilator 2:4", EngineConfig(), 31, H=4, W=4, C=8, OC=8)
    r = cc.run_conv_case(case, tmp_path)
    assert r.exact, r.detail
    assert r.cycles == r.model_cycles


def test_default_model_layer_is_among_the_cases(default_model_build):
    """`make cosim` runs the default model's codebook layer, between the random cases and back-pressure."""
    names = [c.name for c in cc.standard_cases(default_model_build)]
    assert names[-1] == cc.BACK_PRESSURE_CASE
    assert names[-2].startswith("lenet-digits-mvq op ") and names[-2].endswith(" 2:4"), names[-2]
    assert len(names) == len(cc.RANDOM_CASES) + 1


def test_planted_bug_is_caught(tmp_path):
    """Test of the test: one product bit of PE (0, 0) flipped in the rendered RTL must fail the comparison."""
    assert "PLANTED BUG" in render_rtl("pe_array", SMALL_CFG, bug="product_bit")
    assert "PLANTED BUG" not in render_rtl("pe_array", SMALL_CFG)
    case = cc.random_conv_case("planted bug", SMALL_CFG, 21, H=4, W=4, C=4, OC=4, d=4, bug="product_bit")
    r = cc.run_conv_case(case, tmp_path)
    assert r.cycles > 0, r.detail            # it ran
    assert not r.exact, "a corrupted core passed the comparison"


def test_too_many_kept_weights_flag(tmp_path):
    """Dense weights on a 2:4 array: more than n kept in an m-group sets w_err (the engine runs passes)."""
    case = cc.random_conv_case("dense on 2:4", EngineConfig(), 22, H=3, W=3, C=8, OC=8, wfmt="dense")
    r = cc.run_conv_case(case, tmp_path)
    assert r.w_err == 1


def test_requant_bit_exact(tmp_path):
    r = cc.run_requant_case(tmp_path)
    assert r.exact, r.detail
    assert r.cycles == cycle_formulas.requant_cycles(400) == r.model_cycles


def test_requant_back_pressure(tmp_path):
    r = cc.run_requant_case(tmp_path, n=200, p_gap=0.3, p_stall=0.3, seed=4)
    assert r.exact, r.detail
    assert r.stall_cycles > 0 and r.cycles >= r.model_cycles


def test_requant_vectors_cover_extremes():
    v = cc.requant_vectors()
    assert v["acc"].min() == -(1 << 31) and v["acc"].max() == (1 << 31) - 1
    assert v["mult"].min() == -(1 << 31) and v["mult"].max() == (1 << 31) - 1
    assert {1, 31} <= set(v["shift"].tolist()) and (v["mult"] < 0).any() and v["has_res"].any()


def test_render_units_and_dense_has_no_mux():
    assert {"pe_array", "requant", "pq_engine"} <= set(UNITS)   # the cores, beside the whole engine's units
    dense = render_rtl("pe_array", EngineConfig(n=4, m=4))
    sparse = render_rtl("pe_array", EngineConfig())
    assert "M:1 mux" in sparse and "act_sel[(c*SLOTS+s)" in sparse
    assert "act_sel[(c*SLOTS+s)" not in dense and "slot == lane" in dense
    assert "parameter N      = 2" in sparse and "module vqhls_pe_array" in sparse
    with pytest.raises(KeyError):
        render_rtl("nope", EngineConfig())


def test_cycle_model_formula():
    e = EngineConfig(rows=8, dsp_rows=4)   # the 8x8 array the RTL twin was written for
    sch = cycle_formulas.conv_schedule(e, OH=4, OW=4, C=16, OC=32, KH=3, KW=3)
    assert sch.tiles == (4,) and sch.n_oc_tiles == 4 and sch.nstep == 18
    # the last step's 4 groups, then the 5-stage pipeline's latency - 1 (inclusive count)
    assert cycle_formulas.pe_array_cycles(8, sch.steps) == 8 + 71 * 8 + 4 + 4
    assert cycle_formulas.pe_array_cycles(8, [20, 20]) == 8 + 20 + 20 + 4


@pytest.mark.parametrize("vpc, dec", [(0, 4), (1, 4), (2, 8), (4, 16)])
def test_weight_feeder_pace_is_the_engine_decoder(vpc, dec):
    """The RTL weight feeder loads a step in the engine's dec cycles (flow.compile.layout: two codebook
    entries, or two dense words, per cycle over COLS = 8 columns of vpc codewords)."""
    assert cycle_formulas.weight_load_cycles(8, vpc) == dec
