"""The resource model (flow.boards.resources) and board sizing (flow.boards.sizing).

Expected numbers are worked out by hand in the comments (BRAM tilings), or
counted by enumerating the hardware units independently of the model (DSPs).
"""
from __future__ import annotations

import dataclasses
import math
import warnings

import pytest

from flow.boards import BOARDS, UnknownBoardError, get_board
from flow.boards import sizing
from flow.boards.resources import (
    ResourceError,
    Usage,
    bram18_tiles,
    check_fit,
    estimate,
    is_lutram,
    lutram_luts,
    memories,
    memory,
    table,
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


def test_default_memories_by_hand():
    e = EngineConfig()
    mems = {m.name: m for m in memories(e)}
    assert list(mems) == ["act", "acc", "vidx", "vmask", "cbmem", "dmem", "chmem", "ops", "proto", "lut", "pq_acc"]
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
    assert memories(e) == memories(EngineConfig())            # deterministic: templates bind storage from it
    assert {m.name for m in memories(EngineConfig(pq=False))} == set(mems) - {"proto", "lut", "pq_acc"}


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
                # one product per DSP on both families: the templates do not pack two rows into a
                # DSP48E2 (WP487 would allow it), and the model counts what the code builds
                dsps.add(("array", r, c, s))
    lanes = [("conv", c) for c in range(e.cols)] + [("avgpool", 0)] + ([("pq", 0)] if e.pq else [])
    for lane in lanes:
        for t in range(_mult_dsps(32, 32, a_port)):          # acc x M
            dsps.add(("requant", lane, "m", t))
        for t in range(_mult_dsps(32, 9, a_port)):           # Mr x residual
            dsps.add(("requant", lane, "r", t))
    return len(dsps)


@pytest.mark.parametrize("cfg", [
    EngineConfig(),
    EngineConfig(rows=4, dsp_rows=3, pq=False),
    EngineConfig(rows=8, dsp_rows=5, n=4, m=4),
    EngineConfig(rows=8, cols=16, lanes=16, dsp_rows=7),
])
@pytest.mark.parametrize("board", ["pynq-z2", "zcu104"])
def test_dsp_count_by_enumeration(cfg, board):
    assert estimate(cfg, board).dsp == _enumerate_dsps(cfg, get_board(board).family)


def test_requant_is_six_dsps_per_lane():
    assert _mult_dsps(32, 32, 25) == 4 and _mult_dsps(32, 9, 25) == 2
    assert _mult_dsps(32, 32, 27) == 4 and _mult_dsps(32, 9, 27) == 2
    e = EngineConfig(dsp_rows=0)
    assert estimate(e).dsp == 6 * (e.cols + 2)


# ---- totals, table ------------------------------------------------------------------
def test_totals_are_the_sum_of_the_units():
    u = estimate(EngineConfig())
    assert isinstance(u, Usage)
    for key in ("bram36", "dsp", "lut", "ff", "lutram"):
        assert round(sum(unit[key] for unit in u.per_unit.values())) == round(getattr(u, key))
    assert u.per_unit["mem.act"]["bram36"] == 48
    assert u.lutram == sum(m.luts for m in memories(EngineConfig()))


def test_table_lists_resources_against_the_part():
    text = table(estimate(EngineConfig()), "pynq-z2")
    lines = text.splitlines()
    assert lines.pop(0).startswith("pynq-z2 (xc7z020clg400-1), modelled")
    assert lines[0].split() == ["resource", "used", "available", "percent", "budget"]
    assert [ln.split()[0] for ln in lines[1:]] == ["BRAM36", "DSP", "LUT", "FF", "LUTRAM"]
    assert " 140 " in lines[1] and "112 (80%)" in lines[1]
    assert "198 (90%)" in lines[2] and "37240 (70%)" in lines[3]
    big = table(estimate(EngineConfig(rows=32, dsp_rows=32)), "pynq-z2")
    assert "OVER" in big.splitlines()[3]           # DSP


# ---- check_fit ----------------------------------------------------------------------
def test_check_fit_names_every_over_used_resource():
    cfg = EngineConfig(rows=32, dsp_rows=16, pq_subspaces_max=4096)
    u = estimate(cfg, "pynq-z2")
    assert u.bram36 > 112 and u.dsp > 198 and u.lut > 37240 and u.ff <= 74480
    with pytest.raises(ResourceError) as exc:
        check_fit(cfg, "pynq-z2")
    msg = str(exc.value)
    assert f"BRAM36 {int(u.bram36)} / 112 (80% of 140)" in msg
    assert f"DSP {u.dsp} / 198 (90% of 220)" in msg
    assert f"LUT {u.lut} / 37240 (70% of 53200)" in msg
    assert "FF " not in msg                          # not over: not named
    assert "EngineConfig.for_board('pynq-z2')" in msg


def test_check_fit_respects_the_fractions():
    cfg = EngineConfig(pq=False)
    u = check_fit(cfg, "pynq-z2")
    with pytest.raises(ResourceError, match=r"BRAM36 \d+ / 70 \(50% of 140\)"):
        check_fit(cfg, "pynq-z2", bram_frac=0.5)
    assert check_fit(cfg, "pynq-z2", bram_frac=1.0).bram36 == u.bram36


# ---- the default build ---------------------------------------------------------------
def test_default_config_fits_pynq_z2():
    u = check_fit(EngineConfig(), "pynq-z2")
    assert u.bram36 <= 0.8 * 140 and u.dsp <= 0.9 * 220 and u.lut <= 0.7 * 53_200


def test_default_config_is_the_pynq_z2_build():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_for_board("pynq-z2") == EngineConfig()


def test_pynq_z2_build_fits_and_keeps_the_reference_geometry():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = config_for_board("pynq-z2")
    check_fit(e, "pynq-z2")
    ref = EngineConfig()
    assert (e.rows, e.cols, e.lanes, e.n, e.m, e.dsp_rows) == (ref.rows, ref.cols, ref.lanes, ref.n, ref.m, ref.dsp_rows)
    # only the searched parameter memories may differ from the reference
    diff = {k for k, v in e.to_dict().items() if getattr(ref, k) != v}
    assert diff <= {"vmem_entries", "cb_rows", "dmem_words", "max_ops"}


def test_pinned_build_returned_when_it_fits_else_warns(monkeypatch):
    small = EngineConfig(rows=4, dsp_rows=2, pq=False)
    monkeypatch.setitem(sizing.PINNED, "pynq-z2", small)
    assert config_for_board("pynq-z2") is small
    monkeypatch.setitem(sizing.PINNED, "pynq-z2", EngineConfig(rows=32, dsp_rows=32))
    with pytest.warns(UserWarning, match="BRAM36"):
        e = config_for_board("pynq-z2")
    check_fit(e, "pynq-z2")


# ---- other builds ------------------------------------------------------------------------
def test_dense_pynq_z2_build_fits():
    e = config_for_board("pynq-z2", n=4, m=4)
    assert e.dense and e.n == e.m == 4
    check_fit(e, "pynq-z2")
    assert estimate(e).per_unit["array.mux"]["lut"] == 0
    assert EngineConfig.for_board("pynq-z2", n=4, m=4) == e
    # the dense build cannot keep 8 rows: the fabric products would not fit the LUT budget
    with pytest.raises(ResourceError, match="LUT"):
        check_fit(dataclasses.replace(e, rows=8, dsp_rows=2), "pynq-z2")


def test_zcu104_build_fits_and_is_larger():
    assert "zcu104" in BOARDS and get_board("zcu104").family == "ultrascale+"
    e = config_for_board("zcu104")
    check_fit(e, "zcu104")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = config_for_board("pynq-z2")
    assert e.multipliers >= 4 * small.multipliers
    assert config_for_board("zcu104", n=4, m=4).dense
    check_fit(config_for_board("zcu104", n=4, m=4), "zcu104")


def test_sizing_prefers_the_most_multipliers():
    e = config_for_board("zcu104")
    more = dataclasses.replace(e, rows=2 * e.rows, dsp_rows=2 * e.rows)
    for dsp_rows in range(more.rows + 1):             # no larger array fits at any DSP split
        with pytest.raises(ResourceError):
            check_fit(dataclasses.replace(more, dsp_rows=dsp_rows), "zcu104")


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
    for rows in (1, 2, 4, 8, 16, 32):
        u = estimate(EngineConfig(rows=rows, dsp_rows=min(rows, 4), n=n, m=m), board)
        if prev is not None:
            assert u.dsp >= prev.dsp and u.lut >= prev.lut and u.ff >= prev.ff and u.bram36 >= prev.bram36
        prev = u


@pytest.mark.parametrize("board", ["pynq-z2", "zcu104"])
def test_more_dsp_rows_trade_lut_for_dsp(board):
    prev = None
    for dsp_rows in range(9):
        u = estimate(EngineConfig(dsp_rows=dsp_rows), board)
        if prev is not None:
            assert u.dsp >= prev.dsp and u.lut < prev.lut
        prev = u
