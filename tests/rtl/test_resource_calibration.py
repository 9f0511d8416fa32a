"""The resource model (flow/boards/resource_model.py) against the committed yosys 0.23 measurement of the RTL engine
(bench/results/rtl_engine_area.json, written by bench/rtl_engine_area.py): every RTL unit's yosys figure lies in the
model's [low, high] at the default and the dense PYNQ-Z2 builds (issue 20 item 4). No synthesis runs here: the
JSON is the independent reference; a JSON whose engine digest or rendered-Verilog digest is not the current
build's fails (stale: rerun bench/rtl_engine_area.py), it is not skipped."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flow.rtl.engine_area import RESOURCES, UNIT_MAP, build_config, model_rows, rtl_digest

JSON = Path(__file__).resolve().parents[2] / "bench" / "results" / "rtl_engine_area.json"


def _records() -> dict[str, dict]:
    data = json.loads(JSON.read_text())
    return {rec["build"]: rec for rec in data["builds"]}


@pytest.mark.parametrize("build", ["default", "dense"])
def test_json_is_of_the_current_build(build):
    rec = _records().get(build)
    assert rec is not None, f"{JSON} has no {build} build: rerun python bench/rtl_engine_area.py"
    assert rec["engine_hash"] == build_config(build).hash(), (
        f"{JSON} is stale: its {build} build is engine {rec['engine_hash']}, the current one "
        f"{build_config(build).hash()}; rerun python bench/rtl_engine_area.py")
    # the same configuration with other Verilog is another circuit: the figures describe the RTL they were taken of
    assert rec.get("rtl_sha256") == rtl_digest(build_config(build)), (
        f"{JSON} is stale: its {build} build was synthesized from other Verilog (rtl_sha256 {rec.get('rtl_sha256')}, "
        f"the current {rtl_digest(build_config(build))}); rerun python bench/rtl_engine_area.py")


@pytest.mark.parametrize("build", ["default", "dense"])
def test_every_unit_yosys_figure_inside_the_modelled_range(build):
    rec = _records()[build]
    rows, _bd, eng = model_rows(build_config(build))
    yosys = {r["unit"]: r["yosys"] for r in rec["rows"] if r.get("yosys") is not None}
    outside = []
    for unit in UNIT_MAP:
        for res in RESOURCES:
            lo, _ce, hi = rows[unit][res]
            y = yosys[unit][res]
            if not lo - 1e-6 <= y <= hi + 1e-6:
                outside.append(f"{unit} {res}: yosys {y:g} not in [{lo:g}, {hi:g}]")
    # the engine's totals: the flattened run and the sum of the units (hierarchy kept)
    for row in ("engine (flattened)", "engine (sum of units, hierarchy kept)"):
        for res in RESOURCES:
            lo, _ce, hi = eng[res]
            y = yosys[row][res]
            if not lo - 1e-6 <= y <= hi + 1e-6:
                outside.append(f"{row} {res}: yosys {y:g} not in [{lo:g}, {hi:g}]")
    assert not outside, f"{build} build:\n" + "\n".join(outside)


def test_the_check_could_fail():
    """The reference is not the model: a unit's yosys LUT is far from its central figure somewhere (the check
    above compares two independent numbers)."""
    rec = _records()["default"]
    rows, _bd, _eng = model_rows(build_config("default"))
    y = {r["unit"]: r["yosys"] for r in rec["rows"] if r.get("yosys") is not None}
    assert any(abs(y[u]["lut"] - rows[u]["lut"][1]) > 0.05 * y[u]["lut"] for u in UNIT_MAP if y[u]["lut"])
