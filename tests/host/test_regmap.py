"""engine_io/regmap.py's REAL_CYCLES register against the Vitis HLS s_axilite layout, worked out here by hand.

The rule (the regmap docstring, and the layout the review checked for the first five ports): arguments
in order from 0x10; an input takes its data word(s) and a reserved word, an output its data word(s) and a
control word (bit 0 ap_vld); the next argument starts at the next 8-byte boundary.
"""
from __future__ import annotations

import dataclasses

import pytest

from engine_io import regmap


def test_real_cycles_follows_status_as_vitis_lays_it_out():
    # STATUS: data 0x40, ap_vld 0x44 -> next boundary 0x48; a 64-bit output: 0x48, 0x4C data, 0x50 ap_vld
    assert (regmap.STATUS, regmap.STATUS_CTRL) == (0x40, 0x44)
    assert (regmap.REAL_CYCLES_LO, regmap.REAL_CYCLES_HI, regmap.REAL_CYCLES_CTRL) == (0x48, 0x4C, 0x50)
    assert regmap.REAL_CYCLES_CTRL + 4 <= regmap.ADDRESS_RANGE == 0x80     # inside the 7-bit map
    (r,) = [r for r in regmap.REGISTERS if r.name == "REAL_CYCLES"]
    assert (r.port, r.width, r.access) == ("real_cycles", 64, "ro")
    assert regmap.PORT_OFFSETS["real_cycles"] == 0x48
    # the argument after STATUS, the last: REGISTERS lists the ports in the top's argument order
    assert [x.port for x in regmap.REGISTERS if x.port][-2:] == ["status", "real_cycles"]
    # CYCLES (modelled) and REAL_CYCLES (measured) are distinct registers
    assert {regmap.CYCLES_LO, regmap.CYCLES_HI}.isdisjoint({regmap.REAL_CYCLES_LO, regmap.REAL_CYCLES_HI})


def test_every_port_where_the_vitis_rule_puts_it():
    want = {"N_IMAGES": 0x10, "PARAMS": 0x18, "CONFIG_HASH": 0x28, "CYCLES": 0x30, "STATUS": 0x40,
            "REAL_CYCLES": 0x48}
    assert {r.name: r.offset for r in regmap.REGISTERS if r.port} == want
    assert regmap.vitis_offsets([r for r in regmap.REGISTERS if r.port]) == want


@pytest.mark.parametrize("offset, why", [(0x44, "overlaps"), (0x4C, "Vitis lays it out at 0x48"),
                                         (0x50, "Vitis lays it out at 0x48")])
def test_the_self_check_refuses_a_misplaced_real_cycles(monkeypatch, offset, why):
    """regmap's import-time check fails on REAL_CYCLES on STATUS's ap_vld word, or off the Vitis position."""
    regs = tuple(dataclasses.replace(r, offset=offset) if r.name == "REAL_CYCLES" else r for r in regmap.REGISTERS)
    monkeypatch.setattr(regmap, "REGISTERS", regs)
    with pytest.raises(AssertionError, match=why):
        regmap._check()


def test_real_cycles_value():
    assert regmap.REAL_CYCLES_NA == 0xFFFF_FFFF_FFFF_FFFF
    assert regmap.real_cycles(regmap.REAL_CYCLES_NA) is None
    assert regmap.real_cycles(0) == 0 and regmap.real_cycles((1 << 64) - 2) == (1 << 64) - 2
