"""cocotb testbench of the engine's real cycle counter ``vqhls_cycle_counter`` (hls_templates/rtl/cycle_counter.v.j2).

The testbench keeps its own count of the clock: ``EdgeCount`` counts the rising edges of ap_clk at which
ap_rst is low. The counter's answer to a call is checked against that count alone: the value ``now`` of a
call whose ap_start is sampled at a rising edge is RESET_VALUE + (edges counted before that edge), and the
difference of two calls (what the engine latches into REAL_CYCLES) is the number of clock edges between
their two sampling edges, whatever happened in between (ap_ce low, ap_continue held off, idle cycles).

The module's RESET_VALUE parameter is given to the simulator; ``VQHLS_CC_RESET`` tells the testbench the
same number (the caller sets both: run_cocotb's parameters and extra_env). Inputs are driven at falling
edges, so the next rising edge samples them.
"""
from __future__ import annotations

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge, Timer

NA = (1 << 64) - 1          # engine_io/regmap.py REAL_CYCLES_NA: never produced by the counter
TOP = NA - 1                # where the counter saturates


class EdgeCount:
    """The testbench's own clock: rising edges of ap_clk sampled with ap_rst low."""

    def __init__(self, dut):
        self.dut = dut
        self.edges = 0

    async def run(self):
        while True:
            await RisingEdge(self.dut.ap_clk)
            if int(self.dut.ap_rst.value) == 0:
                self.edges += 1


def expected(reset_value: int, edges: int) -> int:
    return min(reset_value + edges, TOP)


async def start(dut, reset_value: int):
    cocotb.start_soon(Clock(dut.ap_clk, 10, unit="ns").start())
    clock = EdgeCount(dut)
    cocotb.start_soon(clock.run())
    dut.ap_rst.value = 1
    dut.ap_ce.value = 1
    dut.ap_start.value = 0
    dut.ap_continue.value = 1
    dut.after.value = 0
    for _ in range(3):
        await FallingEdge(dut.ap_clk)
    dut.ap_rst.value = 0
    assert clock.edges == 0
    return clock


async def call(dut, clock: EdgeCount, rng: random.Random, hold_continue: int = 0) -> tuple[int, int]:
    """One call as the HLS caller makes it: ap_start for one cycle (with ap_ce), wait for ap_done, read
    `now`, then ap_continue (held off ``hold_continue`` cycles). Returns (now, the testbench's edge count
    before the sampling edge). Starts and ends at a falling edge."""
    dut.ap_ce.value = 1
    dut.ap_start.value = 1
    dut.after.value = rng.getrandbits(32)
    dut.ap_continue.value = 0
    before = clock.edges                    # the next rising edge samples ap_start
    await Timer(1, unit="ns")               # (the half period is 5 ns: still before that edge)
    assert int(dut.ap_ready.value) == 1, "ap_ready must answer ap_start in the same cycle"
    await FallingEdge(dut.ap_clk)
    assert clock.edges == before + 1
    dut.ap_start.value = 0
    for _ in range(hold_continue):          # done and now stay until ap_continue
        assert int(dut.ap_done.value) == 1 and int(dut.now_ap_vld.value) == 1
        assert int(dut.ap_idle.value) == 0
        await FallingEdge(dut.ap_clk)
    assert int(dut.ap_done.value) == 1 and int(dut.now_ap_vld.value) == 1, "ap_done not one cycle after ap_start"
    now = int(dut.now.value)
    dut.ap_continue.value = 1
    await FallingEdge(dut.ap_clk)
    assert int(dut.ap_done.value) == 0 and int(dut.now_ap_vld.value) == 0, "ap_done after ap_continue"
    assert int(dut.ap_idle.value) == 1
    return now, before


async def idle(dut, rng: random.Random, cycles: int, p_ce: float) -> None:
    """``cycles`` cycles without a call, ap_ce low with probability 1 - p_ce each (the counter ignores it)."""
    for _ in range(cycles):
        dut.ap_ce.value = int(rng.random() < p_ce)
        dut.ap_continue.value = int(rng.random() < 0.5)
        await FallingEdge(dut.ap_clk)
    dut.ap_ce.value = 1
    dut.ap_continue.value = 1


@cocotb.test()
async def counts_clock_edges_between_calls(dut):
    """Random gaps (ap_ce toggling, ap_continue held off): every read is the testbench's edge count and
    every difference the edges between the two calls."""
    reset_value = int(os.environ["VQHLS_CC_RESET"])
    rng = random.Random(int(os.environ.get("VQHLS_CC_SEED", "1")))
    clock = await start(dut, reset_value)
    await idle(dut, rng, rng.randrange(0, 7), p_ce=0.5)
    prev = None
    for i in range(40):
        gap = rng.choice([0, 1, 2, rng.randrange(3, 50), rng.randrange(50, 400)])
        await idle(dut, rng, gap, p_ce=rng.choice([0.0, 0.5, 1.0]))
        now, before = await call(dut, clock, rng, hold_continue=rng.choice([0, 0, 1, 3]))
        assert now == expected(reset_value, before), \
            f"call {i}: counter {now:#x}, the testbench counted {before} edges after reset (from {reset_value:#x})"
        if prev is not None:
            p_now, p_before = prev
            # before - p_before, unless the counter saturated in between
            want = expected(reset_value, before) - expected(reset_value, p_before)
            assert now - p_now == want, \
                f"call {i}: {now - p_now} cycles between the reads, the testbench counted {before - p_before}"
        prev = (now, before)
    dut._log.info(f"40 calls, {clock.edges} edges counted by the testbench, last read {prev[0]:#x}")


@cocotb.test()
async def back_to_back_calls(dut):
    """Two calls with no cycle between them (the end-of-call read right after the start read): the
    second reads one edge per cycle of the first call later."""
    reset_value = int(os.environ["VQHLS_CC_RESET"])
    rng = random.Random(2)
    clock = await start(dut, reset_value)
    a, ea = await call(dut, clock, rng)
    b, eb = await call(dut, clock, rng)
    assert (a, b) == (expected(reset_value, ea), expected(reset_value, eb))
    assert b - a == eb - ea == 2          # one cycle in the call, one for ap_continue


@cocotb.test()
async def saturates_below_not_available(dut):
    """Started near the top (RESET_VALUE within a few edges of 2^64 - 2), the count stops at 2^64 - 2:
    it never reads 2^64 - 1, the value that means "not available" (C-simulation's answer)."""
    reset_value = int(os.environ["VQHLS_CC_RESET"])
    if reset_value < NA - 64:
        return                            # only meaningful for a run started near the top
    rng = random.Random(3)
    clock = await start(dut, reset_value)
    seen = []
    for _ in range(12):
        now, before = await call(dut, clock, rng)
        assert now == expected(reset_value, before) and now != NA, f"{now:#x} after {before} edges"
        seen.append(now)
        await idle(dut, rng, rng.randrange(0, 4), p_ce=0.5)
    assert seen[-1] == TOP and seen[0] < TOP, [hex(s) for s in seen]
