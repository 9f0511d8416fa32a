"""flow.build.report's "Resources: modelled vs yosys" section: the yosys figures read (never synthesized) from the
synth_area cache or the bench results, beside the resource model.

Every lookup is pointed at tmp_path: VQHLS_AREA_CACHE (an empty cache, or one a stand-in yosys filled) and
VQHLS_RTL_AREA_RESULTS (a small bench-results JSON written here with the engine's hash and made-up yosys figures).
The expected modelled numbers come from flow.boards.resource_model.estimate directly (its Totals for the engine
with the block design; its units summed for a row), the expected yosys numbers from the JSON or the stand-in's
cell counts, never from the section's own code.
"""
from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flow.boards import get_board
from flow.boards import resource_model as rm
from flow.build.report import _md, sections
from flow.compile.engine import EngineConfig
from flow.rtl.engine_area import (PQ_ROW, RESOURCES, ROW_MODULES, UNIT_MAP, cached_area, model_rows, synth_engine,
                                  unit_map)

TITLE = "Resources: modelled vs yosys"
LABEL = {"bram36": "BRAM36", "dsp": "DSP", "lut": "LUT", "ff": "FF", "lutram": "LUTRAM"}
FLAT = "engine (flattened)"
WITH_BD = "engine + block design (yosys: flattened + modelled bd central)"


def _build(tmp_path: Path, engine: EngineConfig) -> SimpleNamespace:
    """The fields of flow.build.stages.Build that ``sections`` reads: an engine and its modelled usage."""
    return SimpleNamespace(
        out=tmp_path / "build", project=None, summary={"model": "m", "data": "d"},
        opts=SimpleNamespace(board="pynq-z2", method="mvq", engine="hls"), creport=None, program=None, vendor={},
        times={}, engine=engine, bundle_path=None, usage=rm.estimate(engine, "pynq-z2"))


def _section(b) -> object:
    secs = {s.title: s for s in sections(b, {})}
    assert TITLE in secs
    _md(list(secs.values()), "t")          # renders
    return secs[TITLE]


def _figures(rng: np.random.Generator) -> dict:
    return {r: float(rng.integers(1, 40_000)) for r in RESOURCES}


def _results_json(tmp_path: Path, engine_hash: str, seed: int = 0, units=UNIT_MAP) -> tuple[Path, dict]:
    """A bench-results file shaped like bench/results/rtl_engine_area.json, one build with ``engine_hash``."""
    rng = np.random.default_rng(seed)
    rec = {"build": "fake", "engine_hash": engine_hash, "yosys": "Yosys 0.23 (git sha1 7ce5011c24b)",
           "total": _figures(rng), "hier_total": _figures(rng), "units": {u: _figures(rng) for u in units}}
    path = tmp_path / "rtl_engine_area.json"
    path.write_text(json.dumps({"yosys": rec["yosys"], "machine": {"commit": "abc1234"}, "builds": [rec]}))
    return path, rec


@pytest.fixture
def lookup(tmp_path, monkeypatch):
    """An empty synth_area cache and no bench results unless a test writes them."""
    monkeypatch.setenv("VQHLS_AREA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VQHLS_RTL_AREA_RESULTS", str(tmp_path / "rtl_engine_area.json"))
    return tmp_path


def _rows(sec) -> dict[tuple[str, str], list]:
    head, rows = sec.table
    return {(r[0], r[1]): r for r in rows}


def test_the_section_shows_the_json_figures_beside_the_model(lookup):
    engine = EngineConfig()
    board = get_board("pynq-z2")
    _, rec = _results_json(lookup, engine.hash())
    sec = _section(_build(lookup, engine))
    assert "an upper reference, Vivado maps tighter" in sec.text and "Modelled:" in sec.text
    assert "rtl_engine_area.json (build fake, written at commit abc1234" in sec.text
    head, _ = sec.table
    assert head[2:6] == ["modelled low", "modelled central", "modelled high", "yosys (synthesized)"]
    rows = _rows(sec)
    usage = rm.estimate(engine, "pynq-z2")
    # every unit row: the model's units summed (resource_model), the JSON's yosys figure
    n = 0
    for unit, parts in UNIT_MAP.items():
        for r in RESOURCES:
            want = [sum(f * getattr(usage.units[name].get(r), end) for name, f in parts.items() if name in usage.units)
                    for end in ("low", "central", "high")]
            row = rows[(unit, LABEL[r])]
            assert row[2:5] == pytest.approx(want) and row[5] == rec["units"][unit][r]
            lo, hi = want[0], want[2]
            verdict = row[6]
            assert (verdict == "in range") == (lo <= row[5] <= hi)
            assert verdict.startswith("+") == (row[5] > hi)
            n += 1
    assert n == len(UNIT_MAP) * len(RESOURCES)           # made-up figures are never all zero
    bd_central = {r: sum(u.get(r).central for name, u in usage.units.items() if name.startswith("bd."))
                  for r in RESOURCES}
    for r in RESOURCES:
        flat = rows[(FLAT, LABEL[r])]
        assert flat[5] == rec["total"][r]
        assert rows[("engine (sum of units, hierarchy kept)", LABEL[r])][5] == rec["hier_total"][r]
        # the engine with the block design: the model's Totals (units + bd.*), yosys flattened + bd central
        tot = rows[(WITH_BD, LABEL[r])]
        want = [getattr(getattr(usage, end), r) for end in ("low", "central", "high")]
        assert tot[2:5] == pytest.approx(want, abs=1.0)     # Totals round (high: ceil)
        assert tot[5] == pytest.approx(rec["total"][r] + bd_central[r])
        avail = {"bram36": board.bram36, "dsp": board.dsp, "lut": board.lut, "ff": board.ff, "lutram": board.lutram}[r]
        m_pct, y_pct = tot[7].split(" / ")
        assert float(y_pct) == pytest.approx(100 * (rec["total"][r] + bd_central[r]) / avail, abs=0.05)
        assert float(m_pct) == pytest.approx(100 * getattr(usage.central, r) / avail, abs=0.06)


def test_a_verdict_over_and_under_the_range(lookup):
    engine = EngineConfig()
    path, rec = _results_json(lookup, engine.hash())
    usage = rm.estimate(engine, "pynq-z2")
    hi = sum(f * usage.units[n].lut.high for n, f in UNIT_MAP["loader"].items() if n in usage.units)
    lo = sum(f * usage.units[n].ff.low for n, f in UNIT_MAP["loader"].items() if n in usage.units)
    rec["units"]["loader"]["lut"] = hi + 100
    rec["units"]["loader"]["ff"] = lo - 7
    path.write_text(json.dumps({"yosys": rec["yosys"], "builds": [rec]}))
    rows = _rows(_section(_build(lookup, engine)))
    assert rows[("loader", "LUT")][6] == "+100 over high"
    assert rows[("loader", "FF")][6] == "-7 under low"


def test_another_engine_gets_the_not_available_line(lookup):
    _results_json(lookup, EngineConfig().hash())          # the JSON holds the default build only
    other = EngineConfig(rows=4)
    sec = _section(_build(lookup, other))
    assert sec.table is None
    assert f"not available for this engine ({other.hash()})" in sec.text
    assert f"holds engines {EngineConfig().hash()} (fake)" in sec.text
    assert "engine_area(EngineConfig(**json.load(open(" in sec.text and "program.json" in sec.text
    # the default build, not in the JSON: the bench command
    _results_json(lookup, "00000000")
    sec = _section(_build(lookup, EngineConfig()))
    assert sec.table is None and "`python bench/rtl_engine_area.py --builds default`" in sec.text


def test_no_results_file_is_the_not_available_line(lookup):
    sec = _section(_build(lookup, EngineConfig()))
    assert sec.table is None and "not available" in sec.text and "is not readable" in sec.text


def test_a_pq_engine_has_a_pq_unit_row(lookup):
    """A build with the lookup unit: its row (flow.rtl.engine_area.PQ_ROW: the encoder, the PQ memories and
    lane) beside the others, modelled against the figures' pq_unit; figures from before the row existed
    show the other rows and the totals."""
    engine = EngineConfig(pq=True)
    _, rec = _results_json(lookup, engine.hash(), units=unit_map(engine))
    sec = _section(_build(lookup, engine))
    rows = _rows(sec)
    assert "Per-unit rows are not shown" not in sec.text
    assert {k[0] for k in rows} == set(unit_map(engine)) | {"engine (sum of units, hierarchy kept)", FLAT,
                                                            "block design (modelled only)", WITH_BD}
    usage = rm.estimate(engine, "pynq-z2")
    mrows, _, _ = model_rows(engine, "pynq-z2", usage=usage)
    for r in RESOURCES:
        assert rows[("pq_unit", LABEL[r])][5] == rec["units"]["pq_unit"][r]
        assert rows[("pq_unit", LABEL[r])][3] == pytest.approx(mrows["pq_unit"][r][1])
    assert mrows["pq_unit"]["lut"][1] == pytest.approx(sum(usage.units[n].lut.central * f
                                                           for n, f in PQ_ROW["pq_unit"].items()))
    assert usage.units["pq"].lut.central > 0                 # the PQ unit is in the model, and in the total
    for r in RESOURCES:
        assert rows[(FLAT, LABEL[r])][5] == rec["total"][r]
        eng_central = sum(u.get(r).central for name, u in usage.units.items() if not name.startswith("bd."))
        assert rows[(FLAT, LABEL[r])][3] == pytest.approx(eng_central)


def test_a_pq_engine_without_figures_names_the_synthesis_runs(lookup):
    sec = _section(_build(lookup, EngineConfig(pq=True)))
    assert sec.table is None and "synth_engine(e, flatten=True); synth_engine(e, flatten=False)" in sec.text


def test_no_engine_no_section(lookup):
    b = _build(lookup, EngineConfig())
    b.engine = None
    assert TITLE not in {s.title for s in sections(b, {})}


# ---- the cache: what synth_engine stores is what the report reads --------------------------------------------------
# A STAND-IN for yosys (a script on PATH, not yosys: no synthesis runs) answers `yosys -V` and writes a fixed
# `stat -json`, so synth_engine stores its result under synth_area's own cache key; the report must find it there
# and prefer it to the bench results. Leaf cells per module (no sub-instances): each row's count is its module's.
MODULE_LUTS = {"vqhls_engine_top": 80, "vqhls_control": 70, "vqhls_loader": 400, "vqhls_engine_core": 300,
               "vqhls_conv_unit": 1000, "vqhls_pool_unit": 200, "vqhls_stream_in": 50, "vqhls_stream_out": 60}
FLAT_CELLS = {"LUT6": 1234, "INV": 2, "FDRE": 567, "DSP48E1": 9, "RAMB36E1": 7, "RAMB18E1": 3, "RAM64M": 1,
              "SRL16E": 5}

FAKE_YOSYS = """#!{python}
import json, sys
if "-V" in sys.argv:
    print("Yosys stand-in 0.0 (test double, no synthesis)")
    raise SystemExit(0)
script = open(sys.argv[sys.argv.index("-s") + 1]).read()
if "-flatten" in script:
    stat = {{"modules": {{"\\\\vqhls_engine_top": {{"num_cells_by_type": {flat}}}}}}}
else:
    mods = {mods}
    stat = {{"design": {{"num_cells_by_type": {{"LUT6": sum(mods.values())}}}},
            "modules": {{"\\\\" + m: {{"num_cells_by_type": {{"LUT6": n}}}} for m, n in mods.items()}}}}
open("stat.json", "w").write(json.dumps(stat))
if "write_json netlist.json" in script:
    open("netlist.json", "w").write("{{}}")
"""


def test_the_report_reads_what_synth_engine_cached(lookup, monkeypatch):
    bindir = lookup / "bin"
    bindir.mkdir()
    exe = bindir / "yosys"
    exe.write_text(FAKE_YOSYS.format(python=sys.executable, flat=json.dumps(FLAT_CELLS), mods=repr(MODULE_LUTS)))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{__import__('os').environ['PATH']}")
    engine = EngineConfig(rows=4)
    assert cached_area(engine) is None
    assert not synth_engine(engine, flatten=True)["cached"]
    assert not synth_engine(engine, flatten=False)["cached"]
    _results_json(lookup, engine.hash())                  # also in the bench results: the cache comes first
    sec = _section(_build(lookup, engine))
    assert "synth_area cache" in sec.text and "Yosys stand-in 0.0" in sec.text
    rows = _rows(sec)
    flat_lut = 1234 + 2 + 4 + 5                            # logic LUTs + INV + RAM64M's 4 sites + SRL
    assert rows[(FLAT, "LUT")][5] == flat_lut and rows[(FLAT, "FF")][5] == 567
    assert rows[(FLAT, "BRAM36")][5] == 7 + 3 / 2 and rows[(FLAT, "DSP")][5] == 9
    assert rows[(FLAT, "LUTRAM")][5] == 4 + 5
    for unit, (mods, _kind) in ROW_MODULES.items():
        mods = (mods,) if isinstance(mods, str) else mods
        assert rows[(unit, "LUT")][5] == sum(MODULE_LUTS[m] for m in mods)
