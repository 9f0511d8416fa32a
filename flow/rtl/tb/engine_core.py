"""cocotb testbench of the engine core ``vqhls_engine_core`` (hls_templates/rtl/engine_core.v.j2).

The case (``VQHLS_CORE_CASE``, a JSON file written by flow.rtl.engine_core_cases.run_core) holds the
parameter-port writes that preload the on-chip memories (flow.rtl.onchip: what the HLS load call leaves on
chip), the op table words to read back through the loader's port, and the run calls: per call N_IMAGES, the
input bytes offered on the stream and the byte carrying TLAST (-1: none). The testbench plays the loader
(pw_* writes with ``loading`` high, then the op table read back through opw_raddr / opw_rdata) and the top
(run_start, the program's ops / input / output bytes, run_done, run_status), drives the input AXI-Stream with
random gaps and takes the output with random back-pressure.

Every signal is driven and sampled at falling clock edges (the core's stream handshakes depend on registers
and on the testbench's own inputs only, so a falling-edge view decides exactly which beats the next rising
edge transfers). It writes what it saw to ``VQHLS_CORE_RESULT`` (JSON): output bytes and TLAST flags of each
call, the status, the input bytes consumed, the op_start / op_done cycles (cycles counted by the testbench
from reset: MEASURED in RTL simulation) and the op table read back. Nothing here decides correctness except
protocol facts (a call that never finishes, output past the expected bytes); the caller compares with the
golden model and the C-sim engine.
"""
from __future__ import annotations

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge


class _State:
    def __init__(self):
        self.cycle = 0          # falling edges since reset was released
        self.ops: list[list[int]] = []   # [event (0 start, 1 done), op index, cycle]
        self.running = True


async def _count(dut, st: _State):
    while st.running:
        await FallingEdge(dut.clk)
        st.cycle += 1
        if int(dut.op_start.value):
            st.ops.append([0, int(dut.op_index.value), st.cycle])
        if int(dut.op_done.value):
            st.ops.append([1, int(dut.op_index.value), st.cycle])


async def _drive_in(dut, data: list[int], tlast_at: int, gaps: float, rng: random.Random, ctl: dict):
    """Offer ``data`` one byte per beat (TLAST on byte ``tlast_at``), with random gaps; ctl['consumed']
    counts the beats taken."""
    idx, pending = 0, False
    while True:
        await FallingEdge(dut.clk)
        if pending:
            idx += 1
        ctl["consumed"] = idx
        if ctl.get("stop"):
            dut.s_axis_tvalid.value = 0
            return
        valid = idx < len(data) and not (gaps and rng.random() < gaps)
        dut.s_axis_tvalid.value = int(valid)
        dut.s_axis_tdata.value = data[idx] if idx < len(data) else 0
        dut.s_axis_tlast.value = int(valid and idx == tlast_at)
        pending = valid and bool(int(dut.s_axis_tready.value))


async def _sink(dut, stalls: float, rng: random.Random, got: list, last: list, ctl: dict):
    """Take output beats, holding m_tready low at random (back-pressure)."""
    while True:
        await FallingEdge(dut.clk)
        if ctl.get("stop"):
            dut.m_axis_tready.value = 0
            return
        ready = not (stalls and rng.random() < stalls)
        dut.m_axis_tready.value = int(ready)
        if ready and int(dut.m_axis_tvalid.value):
            data = dut.m_axis_tdata.value
            if not data.is_resolvable:   # an X / Z byte: recorded as 0 and counted (the caller fails on it)
                ctl["x_beats"] = ctl.get("x_beats", 0) + 1
            got.append(int(data) if data.is_resolvable else 0)
            last.append(int(dut.m_axis_tlast.value))
            if int(dut.m_axis_tkeep.value) != 1 or int(dut.m_axis_tstrb.value) != 1:
                raise AssertionError("TKEEP / TSTRB not all ones")


@cocotb.test()
async def engine_core_case(dut):
    with open(os.environ["VQHLS_CORE_CASE"]) as fh:
        case = json.load(fh)
    rng = random.Random(int(case.get("seed", 1)))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    for name in ("loading", "pw_en", "pw_mem", "pw_addr", "pw_col", "pw_data", "opw_raddr", "run_start",
                 "n_images", "prog_ops", "prog_in_bytes", "prog_out_bytes", "s_axis_tdata", "s_axis_tvalid",
                 "s_axis_tlast", "m_axis_tready"):
        getattr(dut, name).value = 0
    for _ in range(4):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    st = _State()
    cocotb.start_soon(_count(dut, st))

    # ---- the loader's part: parameter writes, then the op table read back ----
    dut.loading.value = 1
    for mem, addr, col, data in case["writes"]:
        await FallingEdge(dut.clk)
        dut.pw_en.value = 1
        dut.pw_mem.value = mem
        dut.pw_addr.value = addr
        dut.pw_col.value = col
        dut.pw_data.value = data
    await FallingEdge(dut.clk)
    dut.pw_en.value = 0
    readback = []
    for a in case["readback"]:
        dut.opw_raddr.value = a
        await FallingEdge(dut.clk)
        readback.append(int(dut.opw_rdata.value))
    await FallingEdge(dut.clk)
    dut.loading.value = 0
    dut.opw_raddr.value = 0
    await FallingEdge(dut.clk)

    # ---- run calls ----
    calls = []
    max_cycles = int(case.get("max_cycles", 2_000_000))
    for call in case["calls"]:
        got: list[int] = []
        last: list[int] = []
        ctl: dict = {"consumed": 0}
        dut.n_images.value = call["n_images"]
        dut.prog_ops.value = case["prog_ops"]
        dut.prog_in_bytes.value = case["in_bytes"]
        dut.prog_out_bytes.value = case["out_bytes"]
        await FallingEdge(dut.clk)
        dut.run_start.value = 1
        t0 = st.cycle
        await FallingEdge(dut.clk)
        dut.run_start.value = 0
        cocotb.start_soon(_drive_in(dut, call["stream"], call["tlast_at"], float(case.get("in_gaps", 0)), rng, ctl))
        cocotb.start_soon(_sink(dut, float(case.get("out_stalls", 0)), rng, got, last, ctl))
        waited = 0
        while not int(dut.run_done.value):
            await FallingEdge(dut.clk)
            waited += 1
            if waited > max_cycles:
                raise AssertionError(f"run call of {call['n_images']} images: no run_done after {waited} cycles "
                                     f"({len(got)} output bytes, {ctl['consumed']} input bytes taken)")
        status = int(dut.run_status.value)
        t1 = st.cycle
        ctl["stop"] = True
        for _ in range(4):   # nothing may come after run_done
            await FallingEdge(dut.clk)
        calls.append({"status": status, "out": got, "last": last, "consumed": ctl["consumed"], "cycles": t1 - t0,
                      "x_beats": ctl.get("x_beats", 0)})
    st.running = False
    with open(os.environ["VQHLS_CORE_RESULT"], "w") as fh:
        json.dump({"calls": calls, "ops": st.ops, "readback": readback}, fh)
