"""Open synthesis of the whole RTL engine (flow.rtl.engine_area): the tiling rule, the depth count on known
logic, the model mapping, and on the synthesized engine (slow, cached: .cache/yosys-area/) the facts that
could fail -- every memory in block RAM, and the DSP48E1 count equal to what the multiplies the RTL writes
need (the PE products, the requantization lanes, the control multipliers), read from the source."""
from __future__ import annotations

import re
import shutil

import pytest

from flow.rtl.area import synth_area
from flow.rtl.engine_area import (UNIT_MAP, build_config, dsp48e1_tiles, memory_of, model_rows, netlist_facts,
                                  parse_mul_dump, unit_of)

YOSYS = shutil.which("yosys")
needs_yosys = pytest.mark.skipif(YOSYS is None, reason="yosys not installed: apt-get install yosys")


def test_dsp_tiling_rule():
    # mul2dsp.v for xc7: 25x18 signed slices of 17 bits plus the sign; slices above the result dropped
    assert dsp48e1_tiles(8, 9, 17, True, True) == 1
    assert dsp48e1_tiles(25, 18, 43, True, True) == 1
    assert dsp48e1_tiles(26, 18, 44, True, True) == 2
    assert dsp48e1_tiles(32, 32, 64, True, True) == 4
    assert dsp48e1_tiles(32, 32, 32, True, True) == 3
    assert dsp48e1_tiles(9, 32, 41, True, True) == 2
    assert dsp48e1_tiles(24, 17, 41, False, False) == 1        # unsigned: +1 bit each, 25 x 18 still fits
    assert dsp48e1_tiles(25, 18, 43, False, False) == 4        # 26 x 19 does not: A and B both split (yosys: 4)
    assert dsp48e1_tiles(8, 8, 8, True, True) == 0             # under DSP_Y_MINWIDTH: LUTs


def test_names_to_units():
    assert unit_of("$flatten\\u_core.\\u_conv.$auto$ff.cc:266:slice$1") == "conv_unit"
    assert unit_of("u_core.u_pool.u_rq.pa1[3]") == "requant"
    assert unit_of("u_loader.state") == "loader"
    assert unit_of("count[3]") == "engine_top"
    assert memory_of("u_core.act_mem_1_2.0.3") == "u_core.act_mem_1_2"
    assert memory_of("$flatten\\u_core.\\ch_shift_0.1.0") == "u_core.ch_shift_0"


def test_parse_mul_dump():
    text = """
attribute \\src "vqhls_conv_unit.v:713.37-713.48"
cell $mul $mul$vqhls_conv_unit.v:713$1
  parameter \\A_SIGNED 1
  parameter \\A_WIDTH 8
  parameter \\B_SIGNED 1
  parameter \\B_WIDTH 9
  parameter \\Y_WIDTH 17
  connect \\A \\w_r
end
"""
    (m,) = parse_mul_dump(text)
    assert (m["a_width"], m["b_width"], m["y_width"], m["a_signed"], m["b_signed"]) == (8, 9, 17, True, True)
    assert m["src"].startswith("vqhls_conv_unit.v:713")


def test_stat_json_with_the_hierarchy_tree():
    """yosys 0.23 writes the instance tree into stat -json of a design two levels deep; it still parses."""
    from flow.rtl.area import load_stat_json, parse_modules
    text = r"""{
   "modules": {
      "\\top": {"num_cells_by_type": {"FDRE": 2, "mid": 1}},
      "\\mid": {"num_cells_by_type": {"LUT2": 1, "leaf": 2}},
      "\\leaf": {"num_cells_by_type": {"DSP48E1": 1}}
   },
       mid                 1
         leaf              2
      "design": {"num_cells_by_type": {"FDRE": 2, "LUT2": 1, "DSP48E1": 2}}
}"""
    stat = load_stat_json(text)
    own, incl = parse_modules(stat)
    assert incl["top"]["dsp"] == 2 and incl["top"]["ff"] == 2 and incl["mid"]["lut"] == 1
    assert own["top"]["dsp"] == 0 and own["top"]["cells"]["mid"] == 1


@pytest.mark.parametrize("build", ["default", "dense", "pq"])
def test_model_rows_cover_the_model(build):
    """Every resource-model unit lands in exactly one row (or the block design): the rows and the block
    design add up to the model's own totals. "pq": the default geometry with the lookup unit, whose
    prototype, LUT and accumulator memories and requantization lane are the pq_unit row's."""
    import dataclasses

    from flow.boards import resource_model as rm
    e = dataclasses.replace(build_config("default"), pq=True) if build == "pq" else build_config(build)
    rows, bd, eng = model_rows(e)
    u = rm.estimate(e, "pynq-z2")
    for res in ("bram36", "dsp", "lut", "ff", "lutram"):
        rsum = sum(r[res][1] for r in rows.values())
        assert rsum == pytest.approx(eng[res][1]), res
        assert rsum + bd[res][1] == pytest.approx(u.range(res)[1], abs=1), res
    assert set(rows) == set(UNIT_MAP) | ({"pq_unit"} if e.pq else set())
    if e.pq:
        assert rows["pq_unit"]["lut"][1] > 0 and rows["pq_unit"]["bram36"][1] > 0


PIPE = """
module pipe (input clk, input [35:0] a, output reg y, output reg [35:0] r);
  always @(posedge clk) begin r <= a; y <= ^r; end
endmodule
"""


@needs_yosys
@pytest.mark.cosim
def test_depth_of_a_known_cone(tmp_path, monkeypatch):
    """A registered 36-input XOR between two registers: two LUT levels (36 -> 6 -> 1), FF to FF; yosys' ABC
    builds the wide first level from LUT6 + MUXF7 + MUXF8 (a LUT8), which the level count adds."""
    monkeypatch.setenv("VQHLS_AREA_CACHE", str(tmp_path / "cache"))
    r = synth_area(PIPE, "pipe", netlist=True)
    d = netlist_facts(r["netlist"], top="pipe")["depth"]
    assert d["lut_levels"]["lut_levels"] == 2, d["lut_levels"]
    cells = [c["type"] for c in d["levels"]["cells"]]
    assert d["levels"]["levels"] == len(cells) >= 2
    assert d["levels"]["levels"] == 2 + cells.count("MUXF7") + cells.count("MUXF8"), cells
    assert d["levels"]["start"]["kind"] == "ff" and d["levels"]["end"]["kind"] == "ff"
    assert d["loops"] == 0 and not d["unknown_cells"]


# ---- the synthesized engine (slow the first time: yosys runs for minutes; cached after) -------------
def _line(src: str, line: int) -> str:
    return src.splitlines()[line - 1]


@needs_yosys
@pytest.mark.cosim
@pytest.mark.slow
@pytest.mark.synth
@pytest.mark.parametrize("build", ["default", "dense"])
def test_engine_memories_and_dsps(build):
    from flow.boards import resource_model as rm
    from flow.rtl.engine_area import engine_area, multiplies
    from flow.rtl.engine_rtl import engine_sources
    from flow.rtl.render import context

    e = build_config(build)
    d = context(e)["d"]
    rec = engine_area(build)
    mems = rec["memories"]

    # every activation bank (num_bufs x banks), the op table, vidx / vmask, the codebook and the dense words
    # became block RAM, nothing of them LUTs or flip-flops
    want = [f"u_core.act_mem_{b}_{k}" for b in range(e.num_bufs) for k in range(d["banks"])]
    want += ["u_core.opw_mem", "u_core.vidx_mem", "u_core.vmask_mem", "u_core.cb_mem", "u_core.dmem"]
    for name in want:
        cells = mems.get(name, {})
        assert cells and all(t.startswith("RAMB") for t in cells), (name, cells)
    # a bank of bank_words x 8*lanes bits needs at least that many RAMB bits (36 Kb / 18 Kb each)
    bank_bits = d["bank_words"] * 8 * e.lanes
    for b in range(e.num_bufs):
        for k in range(d["banks"]):
            c = mems[f"u_core.act_mem_{b}_{k}"]
            assert 36 * 1024 * c.get("RAMB36E1", 0) + 18 * 1024 * c.get("RAMB18E1", 0) >= bank_bits

    # the multiplies as the RTL writes them, found by their source line
    src = engine_sources(e)
    muls = multiplies(e)
    kinds = {"pe": [], "requant": [], "control": []}
    for m in muls:
        code = _line(src[f"vqhls_{m['unit']}.v"], m["line"])
        if re.search(r"\bw_r\s*\*\s*a_r\b", code):
            kinds["pe"].append(m)
        elif re.search(r"\b(la\s*\*\s*lm|lres\s*\*\s*lrm|a0\s*\*\s*m0|r0\s*\*\s*rm0)\b", code):
            kinds["requant"].append(m)
        else:
            kinds["control"].append(m)
    # one 8 x 9 product per PE slot: rows x cols x slots, all of them DSP rows in these builds
    assert e.dsp_rows == e.rows
    assert len(kinds["pe"]) == e.rows * e.cols * d["slots"]
    assert all(m["dsp"] == 1 for m in kinds["pe"])
    # requantization: per lane acc x M (32 x 32 -> 64: 4 DSPs); the residual product Mr x res (9 x 32 -> 41:
    # 2 DSPs) on the cols conv lanes, and on the pool's lane unless its instance ties has_res to 0 (then yosys
    # removes the product: the average pool has no residual)
    lanes = rm.requant_lanes(e)
    acc_m = [m for m in kinds["requant"] if m["a_width"] == m["b_width"] == 32]
    res_m = [m for m in kinds["requant"] if m not in acc_m]
    pool_res = 0 if re.search(r"\.has_res\(1'b0\)", src["vqhls_pool_unit.v"]) else 1
    assert len(acc_m) == lanes and all(m["dsp"] == 4 for m in acc_m)
    assert len(res_m) == e.cols + pool_res and all(m["dsp"] == 2 for m in res_m)
    expected = (e.rows * e.cols * d["slots"] + 4 * lanes + 2 * (e.cols + pool_res)
                + sum(m["dsp"] for m in kinds["control"]))
    assert rec["total"]["dsp"] == expected, (rec["total"]["dsp"], expected, kinds["control"])
    # the hierarchy-kept run maps at least those (it keeps the pool lane's residual product: has_res is a
    # constant only across the instance boundary)
    assert rec["hier_total"]["dsp"] >= rec["total"]["dsp"]
    # the depth analysis saw a sane netlist
    dep = rec["depth"]
    assert dep["loops"] == 0 and not dep["unknown_cells"], dep
    assert dep["levels"]["levels"] >= dep["lut_levels"]["lut_levels"] > 0
