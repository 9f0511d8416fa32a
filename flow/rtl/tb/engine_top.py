"""cocotb testbench of the whole RTL engine ``vqhls_engine_top`` at its AXI ports, making the host's calls.

The case (``VQHLS_ENGINE_CASE``, an npz written by flow.rtl.engine_rtl.write_case) holds the Program image,
the input bytes of every image and the run plan; the testbench plays the PS side as the PYNQ host does
(host/pynq_backend.py): an ``AxiRamRead`` holds the image where PARAMS points, ``AxiLiteMaster`` writes
PARAMS, N_IMAGES = 0 and ap_start (the load call), polls CTRL for ap_done and reads STATUS, CONFIG_HASH and
REAL_CYCLES; then per batch N_IMAGES, the output sink, the input bytes with TLAST on the call's final byte
(``AxiStreamSource``; one DMA transfer), ap_start, ap_done, STATUS and REAL_CYCLES. Options: random gaps on
the input stream and random back-pressure on the output stream, a TLAST moved or dropped, a run call without
a load. Every op's start and end are timestamped from the core's op_start / op_done pulses with the engine's
own free-running counter (the one REAL_CYCLES reads).

It writes what it saw to ``VQHLS_ENGINE_RESULT`` (npz): the caller (flow.rtl.engine_rtl) compares the
outputs with the golden model and the statuses with the C-sim engine's. Nothing here decides correctness
except protocol facts (a call that never finishes, a stream that does not end where TLAST says).
"""
from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout
from cocotbext.axi import (AxiLiteBus, AxiLiteMaster, AxiRamRead, AxiReadBus, AxiStreamBus, AxiStreamFrame,
                           AxiStreamSink, AxiStreamSource)

from engine_io import regmap

PARAM_BASE = 0x0001_0000      # DDR byte address of the image in the AxiRam (PARAMS)
CLOCK_NS = 10


class _Clock:
    """Clock edges since reset: the engine top's free-running counter (``count``, the one REAL_CYCLES reads),
    sampled when something happens, so no coroutine wakes on every edge (that would dominate the run time)."""

    def __init__(self, dut):
        self.dut = dut

    @property
    def now(self) -> int:
        return int(self.dut.count.value)


async def _watch(dut, signal, event: int, clock: _Clock, log: list):
    """(event, op index, cycle) at every rising edge of a one-cycle pulse of the core."""
    while True:
        await RisingEdge(signal)
        log.append((event, int(dut.u_core.op_index.value), clock.now))


def _pause(rng: random.Random, p: float):
    while True:
        yield rng.random() < p


async def _wait_done(ctl: AxiLiteMaster, dut, max_cycles: int, what: str) -> int:
    """Poll CTRL until ap_done (clear-on-read: seen once); returns the cycles waited."""
    waited = 0
    while True:
        ctrl = await ctl.read_dword(regmap.CTRL)
        if ctrl & regmap.CTRL_AP_DONE:
            return waited
        await ClockCycles(dut.ap_clk, 64)
        waited += 64
        if waited > max_cycles:
            raise AssertionError(f"{what}: no ap_done after {waited} cycles (CTRL 0x{ctrl:02x})")


async def _read64(ctl: AxiLiteMaster, lo: int) -> int:
    return (await ctl.read_dword(lo)) | ((await ctl.read_dword(lo + 4)) << 32)


@cocotb.test()
async def engine_case(dut):
    case = np.load(os.environ["VQHLS_ENGINE_CASE"])
    plan = json.loads(str(case["plan"]))
    rng = random.Random(int(plan.get("seed", 1)))
    image = case["image"].tobytes()
    inputs = case["inputs"]                      # [n, in_bytes] uint8
    out_bytes = int(plan["out_bytes"])
    cocotb.start_soon(Clock(dut.ap_clk, CLOCK_NS, unit="ns").start())
    clock = _Clock(dut)
    dut.ap_rst_n.value = 0
    ram = AxiRamRead(AxiReadBus.from_prefix(dut, "m_axi_gmem"), dut.ap_clk, dut.ap_rst_n, reset_active_level=False,
                     size=PARAM_BASE + len(image) + 4096)
    ctl = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk, dut.ap_rst_n,
                        reset_active_level=False)
    src = AxiStreamSource(AxiStreamBus.from_prefix(dut, "s_axis_in"), dut.ap_clk, dut.ap_rst_n,
                          reset_active_level=False)
    sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "m_axis_out"), dut.ap_clk, dut.ap_rst_n,
                         reset_active_level=False)
    if plan.get("in_gaps"):
        src.set_pause_generator(_pause(rng, float(plan["in_gaps"])))
    if plan.get("out_stalls"):
        sink.set_pause_generator(_pause(rng, float(plan["out_stalls"])))
    await ClockCycles(dut.ap_clk, 8)
    dut.ap_rst_n.value = 1
    ops: list = []
    cocotb.start_soon(_watch(dut, dut.u_core.op_start, 0, clock, ops))
    cocotb.start_soon(_watch(dut, dut.u_core.op_done, 1, clock, ops))
    ram.write(PARAM_BASE, image)
    await ClockCycles(dut.ap_clk, 4)
    res: dict = {"idle_after_reset": int(bool((await ctl.read_dword(regmap.CTRL)) & regmap.CTRL_AP_IDLE))}
    limit = int(plan.get("max_cycles", 50_000_000))

    async def call(n_images: int, stream: bytes | None, tlast_at: int | None):
        await ctl.write_dword(regmap.PARAMS_LO, PARAM_BASE)
        await ctl.write_dword(regmap.PARAMS_HI, 0)
        await ctl.write_dword(regmap.N_IMAGES, n_images)
        t0 = clock.now
        await ctl.write_dword(regmap.CTRL, regmap.CTRL_AP_START)
        if stream:
            frame = AxiStreamFrame(stream)
            if tlast_at is not None and tlast_at != len(stream) - 1:
                # the DMA's TLAST on another byte: send the bytes up to it as one frame, the rest (if any) as
                # another, so TLAST sits on byte tlast_at (a missing TLAST: tlast_at = -1, one frame with
                # the TLAST pushed past the call onto a byte the engine must not read)
                if tlast_at < 0:
                    frame = AxiStreamFrame(stream + b"\0")
                else:
                    await src.send(AxiStreamFrame(stream[:tlast_at + 1]))
                    frame = AxiStreamFrame(stream[tlast_at + 1:]) if tlast_at + 1 < len(stream) else None
            if frame is not None:
                await src.send(frame)
        await with_timeout(_wait_done(ctl, dut, limit, f"call of {n_images} images"), limit * CLOCK_NS * 4, "ns")
        t1 = clock.now
        status = await ctl.read_dword(regmap.STATUS)
        real = await _read64(ctl, regmap.REAL_CYCLES_LO)
        got = b""
        # a refused run call (ERR_NOT_LOADED) consumes and produces nothing, as the HLS engine's top
        if n_images and (status & 0xFF) != regmap.ERR_NOT_LOADED:
            want = n_images * out_bytes
            while len(got) < want:
                frame = await with_timeout(sink.recv(), limit * CLOCK_NS, "ns")
                got += bytes(frame.tdata)
                if len(got) < want:
                    raise AssertionError(f"output TLAST after {len(got)} of {want} bytes")
        return status, real, t1 - t0, got

    if plan.get("run_before_load"):
        st, real, _, _ = await call(1, None, None)
        res["unloaded_status"] = st
    status, real, span, _ = await call(0, None, None)
    res["load_status"] = status
    res["load_real_cycles"] = real
    res["load_span"] = span
    res["config_hash"] = await ctl.read_dword(regmap.CONFIG_HASH)
    outputs, statuses, reals, spans, calls = [], [], [], [], []
    if status == 0 or plan.get("run_anyway"):
        done = 0
        for batch in plan["batches"]:
            x = inputs[done:done + batch]
            stream = x.astype(np.uint8).tobytes()
            tlast_at = plan.get("tlast_at")
            st, real, span, got = await call(batch, stream, tlast_at)
            statuses.append(st)
            reals.append(real)
            spans.append(span)
            calls.append((done, batch))
            outputs.append(np.frombuffer(got, np.uint8).reshape(batch, out_bytes) if got else
                           np.zeros((batch, out_bytes), np.uint8))
            done += batch
    res["idle_at_end"] = int(bool((await ctl.read_dword(regmap.CTRL)) & regmap.CTRL_AP_IDLE))
    np.savez(os.environ["VQHLS_ENGINE_RESULT"],
             outputs=np.concatenate(outputs) if outputs else np.zeros((0, out_bytes), np.uint8),
             statuses=np.array(statuses, np.int64), real_cycles=np.array(reals, np.uint64),
             spans=np.array(spans, np.int64), calls=np.array(calls, np.int64).reshape(-1, 2),
             ops=np.array(ops, np.int64).reshape(-1, 3), info=json.dumps(res))
