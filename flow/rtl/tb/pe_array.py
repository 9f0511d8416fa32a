"""cocotb testbench of vqhls_pe_array (test ``pe_array_case``) and vqhls_requant (``requant_case``).

The case comes from $VQHLS_CASE (an npz written by flow.rtl.cosim_cases): the beats in the engine's
order. The driver is one cycle-by-cycle loop: after each rising edge it drives the next weight beat and
the next activation beat (withheld with probability p_gap: random valid gaps) and a random out_ready
(low with probability p_stall), samples the handshakes in the ReadOnly phase, and records the output
beats. The weight feeder keeps the HLS decoder's pace: a beat is offered after w_interval - 1 idle
cycles with w_ready high (the decode of that beat). It writes $VQHLS_RESULT (json): the accumulators in
arrival order, the inclusive cycle count from the first cycle inputs are offered to the last output
handshake, the cycle of every swap beat, the cycles the output was held (stalls) and the beats withheld
(gaps). The comparison with the golden model is the caller's (flow.rtl.cosim_cases).
"""
from __future__ import annotations

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge


def _pack(values: np.ndarray, bits: int) -> int:
    """Little-endian packing: element i at bits [bits*i + bits-1 : bits*i] (two's complement)."""
    mask = (1 << bits) - 1
    out = 0
    for i, v in enumerate(np.asarray(values).ravel().tolist()):
        out |= (int(v) & mask) << (bits * i)
    return out


def _unpack_signed(value: int, bits: int, count: int) -> list[int]:
    mask, half = (1 << bits) - 1, 1 << (bits - 1)
    out = []
    for i in range(count):
        v = (value >> (bits * i)) & mask
        out.append(v - (1 << bits) if v & half else v)
    return out


async def _reset(dut, clk_period_ns: int = 10) -> None:
    Clock(dut.clk, clk_period_ns, unit="ns").start()
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


def _write_result(obj: dict) -> None:
    with open(os.environ["VQHLS_RESULT"], "w") as f:
        json.dump(obj, f)


@cocotb.test()
async def pe_array_case(dut):
    case = np.load(os.environ["VQHLS_CASE"])
    rows, cols = int(case["rows"]), int(case["cols"])
    rng = np.random.default_rng(int(case["seed"]))
    p_gap, p_stall = float(case["p_gap"]), float(case["p_stall"])
    w_data, w_keep, w_meta = case["w_data"], case["w_keep"], case["w_meta"]   # [B, 2, LANES], [B, 3]
    w_interval = int(case["w_interval"])
    wq = [(_pack(w_data[b], 8), _pack(w_keep[b], 1), *map(int, w_meta[b])) for b in range(w_data.shape[0])]
    a_data, a_flags = case["a_data"], case["a_flags"]              # [B, ROWS, LANES], [B, 4]
    aq = [(_pack(a_data[b], 8), *map(int, a_flags[b])) for b in range(a_data.shape[0])]
    n_out, max_cycles = int(case["n_out"]), int(case["max_cycles"])
    for sig in ("w_valid", "in_valid", "w_last", "in_first", "in_last", "in_swap"):
        getattr(dut, sig).value = 0
    dut.in_unsigned.value = int(case["unsigned"])
    dut.out_ready.value = 0
    await _reset(dut)
    wi = ai = 0
    outs: list[list[int]] = []
    swaps: list[int] = []
    cycle, last_out, stalls, gaps = 0, None, 0, 0
    w_wait = w_interval - 1            # decode cycles left before the next weight beat is offered
    while len(outs) < n_out:
        # ---- drive this cycle
        if wi < len(wq) and w_wait == 0 and rng.random() >= p_gap:
            d, k, c, cnt, last = wq[wi]
            dut.w_valid.value = 1
            dut.w_data.value, dut.w_keep.value, dut.w_col.value, dut.w_cnt.value, dut.w_last.value = d, k, c, cnt, last
        else:
            gaps += wi < len(wq) and w_wait == 0
            dut.w_valid.value = 0
        if ai < len(aq) and rng.random() >= p_gap:
            d, g, first, last, swap = aq[ai]
            dut.in_valid.value = 1
            dut.in_data.value, dut.in_group.value = d, g
            dut.in_first.value, dut.in_last.value, dut.in_swap.value = first, last, swap
        else:
            gaps += ai < len(aq)
            dut.in_valid.value = 0
        ready = int(rng.random() >= p_stall)
        dut.out_ready.value = ready
        # ---- sample the handshakes
        await ReadOnly()
        w_fire = int(dut.w_valid.value) and int(dut.w_ready.value)
        a_fire = int(dut.in_valid.value) and int(dut.in_ready.value)
        o_valid = int(dut.out_valid.value)
        if a_fire and aq[ai][4]:
            swaps.append(cycle)
        if w_fire:
            w_wait = w_interval - 1
        elif w_wait and int(dut.w_ready.value):
            w_wait -= 1
        if o_valid and ready:
            outs.append(_unpack_signed(int(dut.out_data.value.to_unsigned()), 32, rows * cols))
            last_out = cycle
        elif o_valid:
            stalls += 1
        wi += bool(w_fire)
        ai += bool(a_fire)
        await RisingEdge(dut.clk)
        cycle += 1
        assert cycle < max_cycles, f"timeout: {len(outs)}/{n_out} outputs after {cycle} cycles (w {wi}/{len(wq)}, a {ai}/{len(aq)})"
    w_err = int(dut.w_err.value)
    _write_result({"acc": outs, "cycles": last_out + 1, "stall_cycles": stalls, "gap_cycles": gaps,
                   "w_err": w_err, "swaps": swaps})
    assert ai == len(aq) and wi == len(wq)


@cocotb.test()
async def requant_case(dut):
    case = np.load(os.environ["VQHLS_CASE"])
    rng = np.random.default_rng(int(case["seed"]))
    p_gap, p_stall = float(case["p_gap"]), float(case["p_stall"])
    n = len(case["acc"])
    cols = ("acc", "mult", "shift", "res", "res_mult", "has_res", "lo", "hi")
    vec = [{k: int(case[k][i]) for k in cols} for i in range(n)]
    widths = {"acc": 32, "mult": 32, "shift": 5, "res": 9, "res_mult": 32, "has_res": 1, "lo": 10, "hi": 10}
    dut.in_valid.value = 0
    dut.out_ready.value = 0
    await _reset(dut)
    i = 0
    outs: list[int] = []
    cycle, first_in, last_out, stalls, gaps = 0, None, None, 0, 0
    max_cycles = int(case["max_cycles"])
    while len(outs) < n:
        if i < n and rng.random() >= p_gap:
            dut.in_valid.value = 1
            for k in cols:
                getattr(dut, k).value = vec[i][k] & ((1 << widths[k]) - 1)
        else:
            gaps += i < n
            dut.in_valid.value = 0
        ready = int(rng.random() >= p_stall)
        dut.out_ready.value = ready
        await ReadOnly()
        fire = int(dut.in_valid.value) and int(dut.in_ready.value)
        if fire and first_in is None:
            first_in = cycle
        if int(dut.out_valid.value) and ready:
            outs.append(int(dut.out_byte.value.to_unsigned()))
            last_out = cycle
        elif int(dut.out_valid.value):
            stalls += 1
        i += bool(fire)
        await RisingEdge(dut.clk)
        cycle += 1
        assert cycle < max_cycles, f"timeout: {len(outs)}/{n} outputs after {cycle} cycles"
    _write_result({"bytes": outs, "cycles": last_out - first_in + 1, "stall_cycles": stalls, "gap_cycles": gaps})
