"""The resource model (flow.boards.resource_model) and board sizing (flow.boards.sizing).

Expected numbers are worked out by hand in the comments (BRAM tilings, LUTRAM
packing), counted by enumerating the hardware units independently of the model
(DSPs), read from the project's own yosys measurement (bench/results/area.json),
or taken from the second engine review's ranges (engine-hls-review-2.md §3.3).
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import pytest

from flow.boards import BOARDS, UnknownBoardError, get_board
from flow.boards import sizing
from flow.boards.resource_model import (
    FABRIC_MULT_LUT,
    RESOURCES,
    Range,
    ResourceError,
    Usage,
    bram18_tiles,
    check_fit,
    estimate,
    is_lutram,
    lutram_luts,
    lutram_range,
    memories,
    memory,
    table,
    usage_json,
)
from flow.boards.sizing import config_for_board
from flow.compile.engine import EngineConfig


# ---- BRAM tiling, by hand ----------------------------------------------------------
@pytest.mark.parametrize("depth, width, ports, bram18, bram36", [
    (512, 64, "s2p", 2, 1),       # 512x36 SDP x 2 slices
    (512, 72, "s2p", 2, 1),       # exactly one RAMB36 in 512x72
    (512, 72, "t2p", 4, 2),       # TDP is at most 18 bits per RAMB18: 1Kx18 x 4 slices
    (4096, 9, "t2p", 2, 1),       # 2Kx9 x 2 deep (= one RAMB36 4Kx9)
    (36864, 8, "t2p", 18, 9),     # 2Kx9 x 18 deep (or 4Kx4 x 9 deep x 2 slices)
    (1024, 36, "s2p", 2, 1),      # 512x36 x 2 deep
    (1024, 36, "t2p", 2, 1),      # 1Kx18 x 2 slices
    (2048, 18, "t2p", 2, 1),      # 1Kx18 x 2 deep, or 2Kx9 x 2 slices
    (100, 101, "t2p", 6, 3),      # 1Kx18 x ceil(101/18) = 6 slices
    (100, 101, "2r", 6, 3),       # two read ports: true dual port aspects
    (100, 101, "s2p", 3, 2),      # 512x36 x 3 slices; 3 RAMB18 round up to 2 tiles
    (16384, 1, "t2p", 1, 1),      # one RAMB18: a whole tile (no packing across memories)
    (32768, 1, "t2p", 2, 1),      # 32Kx1 RAMB36
    (5120, 64, "t2p", 20, 10),    # 1Kx18: 5 deep x 4 slices
    (576, 8, "s2p", 1, 1),        # 2Kx9: one RAMB18
    (2048, 16, "s2p", 2, 1),      # 2Kx9 x 2 slices, or 1Kx18 x 2 deep
])
def test_bram_tiling_hand_cases(depth, width, ports, bram18, bram36):
    mem = memory("m", 1, depth, width, ports)
    assert mem.impl == "bram"
    assert bram18_tiles(depth, width, ports) == bram18 == mem.bram18_each
    assert mem.bram36_each == bram36


@pytest.mark.parametrize("depth", [65, 100, 511, 513, 1000, 4097, 20000, 36864])
@pytest.mark.parametrize("width", [1, 8, 9, 17, 32, 64, 101])
@pytest.mark.parametrize("ports", ["s2p", "t2p"])
def test_bram_tiling_holds_the_bits_and_is_no_worse_than_one_aspect(depth, width, ports):
    n = bram18_tiles(depth, width, ports)
    assert n * 18 * 1024 >= depth * width                         # a RAMB18 holds 18 Kbit (with parity)
    assert n <= math.ceil(depth / 1024) * math.ceil(width / 18)   # the 1Kx18 tiling is always allowed
    if ports == "s2p":
        assert n <= bram18_tiles(depth, width, "t2p")             # SDP adds an aspect, never removes one


# ---- storage rule ------------------------------------------------------------------
@pytest.mark.parametrize("depth, width, lutram", [
    (32, 32, True),      # 1024 bits
    (128, 8, True),      # 1024 bits
    (33, 32, True),      # 1056 bits but only 33 deep
    (64, 101, True),     # shallow and wide
    (65, 16, False),     # 1040 bits, 65 deep
    (256, 101, False),
])
def test_storage_rule(depth, width, lutram):
    assert is_lutram(depth, width) is lutram
    mem = memory("m", 3, depth, width, "s2p")
    assert mem.impl == ("lutram" if lutram else "bram")
    assert (mem.bram18_each == 0) is lutram and (mem.lut_each == 0) is (not lutram)


def test_lutram_luts():
    assert lutram_luts(64, 101, "s2p") == 101
    assert lutram_luts(64, 101, "2r") == 202        # a second read port doubles the LUTs
    assert lutram_luts(128, 8, "s2p") == 16
    assert lutram_luts(32, 32, "t2p") == 64


EIGHT = EngineConfig(rows=8, dsp_rows=4, pq=True)     # the 8x8 build the review's figures describe


def test_lutram_packing_by_hand():
    # RAM32M: 4 LUTs hold 32 x 6 bits SDP -> 32x32 is ceil(32/6) = 6 of them = 24 LUTs (review §3.3)
    assert lutram_range(32, 32, "s2p") == (24.0, 24.0, 32.0)
    # RAM64M: 4 LUTs hold 64 x 3 bits -> 64x32 is 11 x 4 = 44; the 1-LUT-per-bit rule says 32
    assert lutram_range(64, 32, "s2p") == (32.0, 44.0, 44.0)


def test_default_memories_by_hand():
    e = EIGHT
    mems = {m.name: m for m in memories(e)}
    assert list(mems)[:11] == ["act", "acc", "vidx", "vmask", "cbmem", "dmem", "chmem", "ops", "proto", "lut", "pq_acc"]
    # act: 3 buffers x 16 banks (pow2 >= 8 rows x stride 2) of 65536 / (16 x 8) = 512 words x 64 bits
    assert (mems["act"].count, mems["act"].depth, mems["act"].width, mems["act"].impl) == (48, 512, 64, "bram")
    assert mems["act"].bram36 == 48
    # acc: 2 x 8 x 8 memories of 32 x 32 bits = 1024 bits: LUTRAM, 32 LUTs each
    assert (mems["acc"].count, mems["acc"].impl, mems["acc"].lut_each) == (128, "lutram", 32)
    assert mems["vidx"].width == 8 and mems["vidx"].bram36 == 9
    # chmem: 8 memories of 256 x 101 bits, one read port: 3 BRAM18 (101 = 36+36+29 wide, 512 deep) -> 2 BRAM36
    assert mems["chmem"].width == 101 and mems["chmem"].bram36 == 8 * 2
    assert mems["ops"].depth == 32 * 64 and mems["ops"].bram36 == 2
    # proto: one word per (subspace, element) holding all 16 prototypes' element (9 bits each)
    assert (mems["proto"].count, mems["proto"].depth, mems["proto"].width) == (1, 64 * 9, 16 * 9)
    assert (mems["lut"].count, mems["lut"].depth, mems["lut"].width) == (8, 2048, 16)
    assert (mems["pq_acc"].depth, mems["pq_acc"].impl) == (64, "lutram")
    assert memories(e) == memories(EIGHT)                      # deterministic: templates bind storage from it
    assert {m.name for m in memories(dataclasses.replace(e, pq=False))} >= set(mems) - {"proto", "lut", "pq_acc"}
    assert not {"proto", "lut", "pq_acc"} & {m.name for m in memories(dataclasses.replace(e, pq=False))}


# ---- DSPs, by enumerating the units --------------------------------------------------
def _chunks(bits: int, port: int) -> int:
    """Slices of a signed operand for a signed port: unsigned low slices of port-1 bits, a signed top."""
    return 1 if bits <= port else 1 + _chunks(bits - (port - 1), port)


def _mult_dsps(a_bits: int, b_bits: int, a_port: int, b_port: int = 18) -> int:
    """DSPs of one a x b multiply tiled over (A, B) ports, best orientation."""
    return min(_chunks(a_bits, a_port) * _chunks(b_bits, b_port), _chunks(b_bits, a_port) * _chunks(a_bits, b_port))


def _enumerate_dsps(e: EngineConfig, family: str) -> int:
    a_port = 25 if family == "7series" else 27
    dsps = set()
    for r in range(e.dsp_rows):
        for c in range(e.cols):
            for s in range(e.slots):
                dsps.add(("array", r, c, s))      # one product per DSP on both families
    lanes = [("conv", c) for c in range(e.cols)] + [("avgpool", 0)] + ([("pq", 0)] if e.pq else [])
    for lane in lanes:
        for t in range(_mult_dsps(32, 32, a_port)):          # acc x M
            dsps.add(("requant", lane, "m", t))
        if lane[0] == "avgpool":                              # no residual (yosys 0.23 prunes it: 4 DSP)
            continue
        for t in range(_mult_dsps(32, 9, a_port)):           # Mr x residual
            dsps.add(("requant", lane, "r", t))
    return len(dsps)


@pytest.mark.parametrize("cfg", [
    EIGHT,
    EngineConfig(rows=4, dsp_rows=3, pq=False),
    EngineConfig(rows=6, dsp_rows=4),
    EngineConfig(rows=8, dsp_rows=5, n=4, m=4),
    EngineConfig(rows=8, cols=16, lanes=16, dsp_rows=7),
])
@pytest.mark.parametrize("board", ["pynq-z2", "zcu104"])
def test_dsp_count_by_enumeration(cfg, board):
    # counts={}: firmware with no run-time multiply outside the declared units -> the exact units only
    u = estimate(cfg, board, counts={})
    # low / central: the enumeration (the average pool's lane without its residual product); high: + 2, that
    # product kept (REQUANT_POOL_DSP: a lane synthesized apart, yosys 0.23's hierarchy-kept run)
    n = _enumerate_dsps(cfg, get_board(board).family)
    assert u.range("dsp") == (n, n, n + 2)


def test_requant_is_six_dsps_per_lane():
    assert _mult_dsps(32, 32, 25) == 4 and _mult_dsps(32, 9, 25) == 2
    assert _mult_dsps(32, 32, 27) == 4 and _mult_dsps(32, 9, 27) == 2
    e = EngineConfig(dsp_rows=0)
    assert estimate(e, counts={}).dsp == 6 * (e.cols + 1 + e.pq)


def test_runtime_multiplies_are_charged_from_the_counts():
    base = estimate(EIGHT, counts={}).range("dsp")
    counts = {"vqhls::check_op(const op_t&, unsigned int, unsigned int)": 3, "conv_layer": 2,
              "vqhls::requantize(long)": 2, "pe_mul_dsp": 1, "pe_mul_lut": 1, "stream_in": 0}
    u = estimate(EIGHT, counts=counts)
    # 5 undeclared multiplies x 1 / 3 / 4 DSP48E1 (narrow / Vitis default / 2x2 tiles of a 32x32)
    assert u.range("dsp") == (base[0] + 5, base[1] + 15, base[2] + 20)
    assert "check_op 3" in u.units["mult.runtime"].source and "requantize" not in u.units["mult.runtime"].source
    assert u.counts == counts
    # without counts: the stated allowance (3 multiplies: the RTL engine's own, yosys 0.23)
    assert estimate(EIGHT).range("dsp") == (base[0] + 3, base[1] + 9, base[2] + 12)


# ---- ranges ---------------------------------------------------------------------------
CONFIGS = [EIGHT, EngineConfig(), EngineConfig(rows=6, dsp_rows=4), EngineConfig(rows=4, dsp_rows=2, pq=False),
           EngineConfig(rows=8, dsp_rows=5, n=4, m=4), EngineConfig(rows=8, cols=16, lanes=16, dsp_rows=8)]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_every_unit_is_ordered_and_sourced(cfg):
    u = estimate(cfg)
    for unit in u.units.values():
        assert unit.source.strip(), unit.name
        for r in RESOURCES:
            lo, ce, hi = unit.get(r).as_tuple()
            assert 0 <= lo <= ce <= hi, (unit.name, r)
    for r in RESOURCES:
        lo, ce, hi = u.range(r)
        assert lo <= ce <= hi
        assert hi == pytest.approx(sum(x.get(r).high for x in u.units.values()), abs=1)
        assert lo == pytest.approx(sum(x.get(r).low for x in u.units.values()), abs=1)
    assert (u.bram36, u.dsp, u.lut, u.ff, u.lutram) == tuple(getattr(u.high, r) for r in RESOURCES)


def test_range_refuses_disorder():
    with pytest.raises(ValueError):
        Range(2, 1, 3)


def test_fabric_multiplier_high_end_is_the_yosys_measurement():
    """bench/results/area.json: the 2:4 array of 4x8x8 synthesized by yosys with and without DSPs; the
    LUTs the -nodsp run adds per product are the high end of the fabric multiplier."""
    area = json.loads((Path(__file__).resolve().parents[3] / "bench/results/area.json").read_text())
    runs = {(a["build"], a["nodsp"]): a for a in area["arrays"] if a["part"] == "array"}
    dsp, nodsp = runs[("2:4", False)], runs[("2:4", True)]
    per_product = (nodsp["lut"] - dsp["lut"]) / dsp["multipliers"]
    assert FABRIC_MULT_LUT.high == pytest.approx(per_product, abs=0.5)
    assert FABRIC_MULT_LUT.low == 8 * 9                         # one LUT per partial-product bit: the floor
    assert FABRIC_MULT_LUT.low <= 75 and 100 <= FABRIC_MULT_LUT.high   # the review's Vivado 75-100 inside


# the review's "my range (as written)" per unit at the 8x8 build (engine-hls-review-2.md §3.3); the model's
# central figure must lie in it (the crossbar is left out: the review's range is for the flat 48:1; "requant" is
# now the cols = 8 conv lanes only, so the review's 5,000-7,000 for 10 lanes is scaled to 8; the pool is left out:
# its central moved to yosys 0.23's figure, issue 20 item 4, see test_pool_central_toward_yosys)
REVIEW_8X8 = {
    "array.mux": (2_600, 3_000), "array.adders": (4_500, 6_500), "mem.acc": (3_100, 4_100),
    "acc.read_mux": (1_300, 3_300), "decoder": (2_000, 4_000), "requant": (4_000, 5_600),
    "pq": (3_000, 4_500), "glue.port_mux": (2_000, 4_000),
}


@pytest.mark.parametrize("unit, lo_hi", sorted(REVIEW_8X8.items()))
def test_unit_central_inside_the_review_range(unit, lo_hi):
    r = estimate(EIGHT).units[unit].lut
    lo, hi = lo_hi
    assert r.low <= hi and r.high >= lo                    # the ranges overlap
    assert lo - 1 <= r.central <= hi + 1 or (unit == "mem.acc" and r.central == 3_072)   # 128 x 24 (RAM32M)


def test_pool_central_toward_yosys():
    """The pool's central LUT moved from x1.35 to x4 of its datapath formula (yosys 0.23: 3,015 LUT for the RTL
    pool unit with its lane); the review's 700-1,200 stays inside the range."""
    r = estimate(EIGHT).units["pool"].lut
    assert r.low <= 1_200 and r.central > 1_200


def test_groups_inside_the_review_ranges():
    u = estimate(EIGHT)
    control = [x for n, x in u.units.items() if n.startswith("control.") and n != "control.pipe"]
    # review: 5,000-9,000 as written; the loader's units (check_op, loaders, CRC) have central x2 since the yosys
    # recalibration (LOADER_LUT_SCALE), so the group's central is above the review's and its low inside it
    assert 5_000 <= sum(x.lut.central for x in control) <= 11_000
    assert sum(x.lut.low for x in control) <= 9_000
    axi = [x for n, x in u.units.items() if n.startswith("axi.")]
    assert 1_800 <= sum(x.lut.central for x in axi) <= 2_800                 # review: 1,800-2,500 (m_axi x2)
    bd = [x for n, x in u.units.items() if n in ("bd.axi_dma", "bd.smartconnect", "bd.interconnect")]
    assert sum(x.lut.low for x in bd) >= 4_000 - 1 and sum(x.lut.high for x in bd) <= 7_000 + 1   # +4,000-7,000
    # BRAM: the review's 112-121 BRAM36 for the 8x8 build; the central packs two RAMB18 of different memories
    # in one tile since the yosys recalibration (chmem: 8 x 3 RAMB18 = 12 tiles, not 16), the high end does not
    assert 112 - 0.5 * 8 <= u.central.bram36 and 112 <= u.high.bram36 <= 121
    # the whole engine + block design: the review's 49-72k LUT (as written); ours covers the same span
    assert u.low.lut <= 49_000 + 1_000 and u.high.lut >= 72_000


# ---- totals, table ------------------------------------------------------------------
def test_totals_are_the_sum_of_the_units():
    u = estimate(EIGHT)
    assert isinstance(u, Usage)
    assert u.units["mem.act"].bram36 == Range.exact(48)
    assert u.per_unit["mem.act"]["bram36"] == {"low": 48, "central": 48, "high": 48}
    j = usage_json(u, "pynq-z2")
    assert j["modelled"]["lut"] == u.lut and j["range"]["lut"]["central"] == u.central.lut
    json.dumps(j)                                            # JSON-ready


def test_table_lists_the_range_against_the_part():
    text = table(estimate(EngineConfig()), "pynq-z2")
    lines = text.splitlines()
    assert lines.pop(0).startswith("pynq-z2 (xc7z020clg400-1), modelled usage (low / central / high")
    assert lines[0].split() == ["resource", "low", "central", "high", "available", "high", "%", "budget"]
    assert [ln.split()[0] for ln in lines[1:]] == ["BRAM36", "DSP", "LUT", "FF", "LUTRAM"]
    assert " 140 " in lines[1] and "112 (80%)" in lines[1]
    assert "198 (90%)" in lines[2] and "37240 (70%)" in lines[3]
    big = table(estimate(EngineConfig(rows=32, dsp_rows=32)), "pynq-z2")
    assert "OVER" in big.splitlines()[3]           # DSP


# ---- check_fit ----------------------------------------------------------------------
def test_check_fit_holds_the_central_to_the_budget_and_the_high_end_to_the_part():
    """The rule since the yosys recalibration: a LUT budget just under the central figure fails; one just above
    it passes though the high end is over it; the high end over HIGH_FRAC of the part fails."""
    cfg = EngineConfig(rows=4, dsp_rows=4)
    u = estimate(cfg)
    assert u.central.lut < u.high.lut
    with pytest.raises(ResourceError) as exc:
        check_fit(cfg, "pynq-z2", bram_frac=1.0, dsp_frac=1.0, lut_frac=(u.central.lut - 1) / 53_200)
    msg = str(exc.value)
    assert f"LUT high {u.high.lut} (low {u.low.lut}, central {u.central.lut})" in msg
    assert "high end" in msg
    assert check_fit(cfg, "pynq-z2", bram_frac=1.0, dsp_frac=1.0, lut_frac=(u.central.lut + 1) / 53_200).lut == u.lut
    from flow.boards.resource_model import over_budget
    assert over_budget(u, "pynq-z2", high_frac=(u.high.lut - 1) / 53_200)[0].startswith("LUT high")
    assert check_fit(cfg, "pynq-z2", level="central", lut_frac=(u.central.lut + 1) / 53_200).lut == u.lut


def test_check_fit_names_every_over_used_resource():
    cfg = EngineConfig(rows=32, dsp_rows=16, pq_subspaces_max=4096)
    u = estimate(cfg, "pynq-z2")
    assert u.bram36 > 112 and u.dsp > 198 and u.lut > 37240 and u.ff > 74480
    with pytest.raises(ResourceError) as exc:
        check_fit(cfg, "pynq-z2")
    msg = str(exc.value)
    assert f"BRAM36 high {int(u.bram36)} " in msg and "/ 112 (80% of 140)" in msg
    assert f"DSP high {u.dsp} " in msg and "/ 198 (90% of 220)" in msg
    assert f"LUT high {u.lut} " in msg and "/ 37240 (70% of 53200)" in msg
    assert "config_for_board('pynq-z2')" in msg


def test_check_fit_charges_the_firmware_multiplies():
    e = EngineConfig()
    u = check_fit(e, "pynq-z2", counts={})
    spare = int(0.9 * 220) - u.central.dsp        # DSPs left under the budget at the central figure
    with pytest.raises(ResourceError, match="DSP high"):
        check_fit(e, "pynq-z2", counts={"conv_layer": spare // 3 + 1})   # 3 DSP each at the central figure


# ---- the default build ---------------------------------------------------------------
def test_default_config_fits_pynq_z2_at_the_high_end():
    """Central under the budgets, high end within the part. The high LUT is over the 70 % line (yosys' loose
    mapping since the recalibration): said here, not hidden."""
    u = check_fit(EngineConfig(), "pynq-z2")
    assert u.central.bram36 <= 0.8 * 140 and u.central.dsp <= 0.9 * 220 and u.central.lut <= 0.7 * 53_200
    assert u.central.ff <= 0.7 * 106_400 and u.central.lutram <= 0.7 * 17_400
    assert u.high.bram36 <= 140 and u.high.dsp <= 220 and u.high.lut <= 53_200
    assert u.high.lut > 0.7 * 53_200


def test_default_config_is_the_pynq_z2_build():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_for_board("pynq-z2") == EngineConfig()


def test_pinned_build_returned_when_it_fits_else_warns(monkeypatch):
    small = EngineConfig(rows=1, dsp_rows=1, pq=False)
    monkeypatch.setitem(sizing.PINNED, "pynq-z2", small)
    assert config_for_board("pynq-z2") is small
    monkeypatch.setitem(sizing.PINNED, "pynq-z2", EngineConfig(rows=32, dsp_rows=32))
    monkeypatch.setitem(sizing.REFERENCE, "pynq-z2", EngineConfig(rows=32, dsp_rows=32, pq=False))
    with pytest.warns(UserWarning, match="BRAM36"):
        e = config_for_board("pynq-z2")
    check_fit(e, "pynq-z2")


# ---- other builds ------------------------------------------------------------------------
def test_dense_pynq_z2_build_fits_at_the_high_end():
    e = config_for_board("pynq-z2", n=4, m=4)
    assert e.dense and e.n == e.m == 4
    check_fit(e, "pynq-z2")
    assert estimate(e).units["array.mux"].lut == Range.exact(0)
    assert config_for_board("pynq-z2", n=4, m=4) == e


def test_zcu104_build_fits_and_is_larger():
    assert "zcu104" in BOARDS and get_board("zcu104").family == "ultrascale+"
    e = config_for_board("zcu104")
    check_fit(e, "zcu104")
    small = config_for_board("pynq-z2")
    assert e.multipliers >= 4 * small.multipliers
    assert config_for_board("zcu104", n=4, m=4).dense
    check_fit(config_for_board("zcu104", n=4, m=4), "zcu104")


def test_unknown_board():
    with pytest.raises(UnknownBoardError):
        get_board("de10-nano")
    with pytest.raises(UnknownBoardError):
        config_for_board("de10-nano")


# ---- monotonicity ------------------------------------------------------------------------
@pytest.mark.parametrize("board", ["pynq-z2", "zcu104"])
@pytest.mark.parametrize("nm", [(2, 4), (4, 4)])
def test_more_rows_never_use_fewer_dsp_or_lut(board, nm):
    n, m = nm
    prev = None
    for rows in (1, 2, 3, 4, 6, 8, 16, 32):
        u = estimate(EngineConfig(rows=rows, dsp_rows=min(rows, 4), n=n, m=m), board)
        if prev is not None:
            for end in ("low", "central", "high"):
                a, b = getattr(prev, end), getattr(u, end)
                assert b.dsp >= a.dsp and b.lut >= a.lut and b.ff >= a.ff and b.bram36 >= a.bram36
        prev = u


@pytest.mark.parametrize("board", ["pynq-z2", "zcu104"])
def test_more_dsp_rows_trade_lut_for_dsp(board):
    prev = None
    for dsp_rows in range(9):
        u = estimate(EngineConfig(rows=8, dsp_rows=dsp_rows), board)
        if prev is not None:
            assert u.dsp >= prev.dsp and u.lut < prev.lut and u.central.lut < prev.central.lut
        prev = u
