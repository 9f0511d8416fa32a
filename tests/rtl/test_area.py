"""yosys area (flow.rtl.area): synth_xilinx on known modules, the stat -json parser, the rendered array."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flow.rtl import area
from flow.rtl.area import AreaError, parse_stat, synth_area

YOSYS = shutil.which("yosys")
needs_yosys = pytest.mark.skipif(YOSYS is None, reason="yosys not installed: apt-get install yosys")
TEMPLATES = Path(__file__).resolve().parents[2] / "hls_templates" / "rtl"

MUL8 = """
module mul8 (input clk, input signed [7:0] a, input signed [8:0] b, output reg signed [16:0] p);
  always @(posedge clk) p <= a * b;
endmodule
"""
REGS = """
module regbank (input clk, input rst, input [36:0] d, output reg [36:0] q);
  always @(posedge clk) if (rst) q <= 37'd0; else q <= d;
endmodule
"""
BROKEN = """
module broken (input a, output y);
  assign y = a & undeclared_wire_;
  this is not verilog
endmodule
"""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test synthesizes for real (its own empty cache)."""
    monkeypatch.setenv("VQHLS_AREA_CACHE", str(tmp_path / "cache"))


def test_parse_stat_folds_cell_types():
    stat = {"modules": {"\\top": {"num_cells_by_type": {
        "LUT1": 1, "LUT2": 2, "LUT6": 10, "FDRE": 5, "FDSE": 1, "FDCE": 2, "FDPE": 1, "CARRY4": 3,
        "DSP48E1": 4, "RAMB18E1": 2, "RAMB36E1": 1, "MUXF7": 6, "MUXF8": 2, "RAM64M": 3, "SRLC32E": 1}}}}
    r = parse_stat(stat, "top")
    assert (r["lut"], r["ff"], r["carry4"], r["dsp"], r["bram18"], r["bram36"]) == (13, 9, 3, 4, 2, 1)
    assert (r["muxf7"], r["muxf8"], r["lutram"], r["lutram_luts"], r["srl"]) == (6, 2, 3, 12, 1)
    assert r["cells"]["LUT6"] == 10
    # the "design" totals win over one module's counts (hierarchy kept)
    stat["design"] = {"num_cells_by_type": {"LUT6": 99}}
    assert parse_stat(stat, "top")["lut"] == 99


@needs_yosys
@pytest.mark.cosim
def test_multiplier_dsp_and_nodsp():
    with_dsp = synth_area(MUL8, "mul8")
    assert with_dsp["dsp"] == 1, with_dsp["cells"]
    assert with_dsp["lut"] == 0 and with_dsp["ff"] == 0, with_dsp["cells"]   # product register inside the DSP
    no_dsp = synth_area(MUL8, "mul8", nodsp=True)
    assert no_dsp["dsp"] == 0, no_dsp["cells"]
    assert no_dsp["lut"] >= 40, no_dsp["cells"]     # an 8 x 9 product in LUTs (yosys: ~180)
    assert no_dsp["ff"] == 17                       # the registered 17-bit product
    assert not no_dsp["cached"] and no_dsp["runtime_s"] > 0
    again = synth_area(MUL8, "mul8", nodsp=True)
    assert again["cached"] and again["lut"] == no_dsp["lut"]


@needs_yosys
@pytest.mark.cosim
def test_register_bank_ff_count(tmp_path):
    src = tmp_path / "regbank.v"
    src.write_text(REGS)
    r = synth_area(src, "regbank")              # a path this time
    assert r["ff"] == 37 and r["dsp"] == 0 and r["bram18"] == r["bram36"] == 0, r["cells"]
    assert set(r["cells"]) <= {"FDRE", "FDSE", "LUT1", "LUT2"}, r["cells"]


@needs_yosys
@pytest.mark.cosim
def test_yosys_failure_is_an_area_error():
    with pytest.raises(AreaError, match="yosys failed"):
        synth_area(BROKEN, "broken")


def test_missing_yosys_says_how_to_install(monkeypatch):
    monkeypatch.setattr(area.shutil, "which", lambda name: None)
    with pytest.raises(AreaError, match="apt-get install yosys"):
        synth_area(MUL8, "mul8")


def _small_engine():
    from flow.compile.engine import EngineConfig
    return EngineConfig(rows=1, cols=4, lanes=4, n=2, m=4, d_max=4, dsp_rows=0, acc_groups=4)


@needs_yosys
@pytest.mark.cosim
@pytest.mark.slow
def test_default_pe_array_synthesizes(tmp_path):
    if not (TEMPLATES / "pe_array.v.j2").exists():
        pytest.skip("hls_templates/rtl/pe_array.v.j2 does not exist yet")
    render = pytest.importorskip("flow.rtl.render")
    path = render.write_rtl("pe_array", _small_engine(), tmp_path)
    r = synth_area(path, "vqhls_pe_array")
    assert r["lut"] > 0 and r["ff"] > 0, r["cells"]
    assert r["dsp"] >= 0 and json.dumps(r)          # serialisable
    nodsp = synth_area(path, "vqhls_pe_array", nodsp=True)
    assert nodsp["dsp"] == 0 and nodsp["lut"] >= r["lut"], (r["cells"], nodsp["cells"])
