"""cocotb testbench of the RTL PQ core ``vqhls_pq_engine`` (hls_templates/rtl/pq_engine.v.j2).

Reads the case named by ``VQHLS_PQ_CASE`` (an npz written by flow.rtl.pq_cases.write_case), loads the
prototypes, LUT and bias, streams every output pixel's im2col patch ((kh, kw, c) order, zeros for
the padding, as flow.quant.ops.im2col) one element per beat with random valid gaps, takes the
accumulator beats with random ready back-pressure, and writes the accumulators and the edge
counts to the case's result file (the caller, flow.rtl.pq_cases, compares them with the golden model).

Handshakes are decided at the falling edge: s_ready / m_valid / m_data depend on registers only, so
their values between two rising edges are the ones the next rising edge samples.
"""
from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge


def patch_stream(x: np.ndarray, KH: int, KW: int, stride: int, pad: int, v: int) -> list[tuple]:
    """(byte, sub_last, pix_first, pix_last) per element, pixel by pixel in raster order."""
    H, W, C = x.shape
    OH = (H + 2 * pad - KH) // stride + 1
    OW = (W + 2 * pad - KW) // stride + 1
    D = KH * KW * C
    out = []
    for oh in range(OH):
        for ow in range(OW):
            i = 0
            for kh in range(KH):
                for kw in range(KW):
                    ih, iw = oh * stride - pad + kh, ow * stride - pad + kw
                    inside = 0 <= ih < H and 0 <= iw < W
                    for c in range(C):
                        a = int(x[ih, iw, c]) if inside else 0
                        out.append((a & 0xFF, (i + 1) % v == 0, i == 0, i == D - 1))
                        i += 1
    return out


def pack(values, bits: int) -> int:
    word = 0
    for j, val in enumerate(values):
        word |= (int(val) & ((1 << bits) - 1)) << (bits * j)
    return word


def lanes_of(word: int, n: int) -> list[int]:
    out = []
    for j in range(n):
        u = (word >> (32 * j)) & 0xFFFFFFFF
        out.append(u - (1 << 32) if u >> 31 else u)
    return out


@cocotb.test()
async def pq_engine_case(dut):
    case = np.load(os.environ["VQHLS_PQ_CASE"])
    x, proto, lut, bias = case["x"], case["proto"], case["lut"], case["bias"]
    KH, KW, stride, pad = (int(case[k]) for k in ("KH", "KW", "stride", "pad"))
    L = int(case["oc_lanes"])
    Cs, K, v = proto.shape
    OC = lut.shape[2]
    NOT = -(-OC // L)
    rng = np.random.default_rng(int(case["seed"]) + 1000)
    p_in, p_out = float(case["p_in"]), float(case["p_out"])
    kmax = len(dut.pl_data.value) // 9

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    for sig in ("pl_valid", "ll_valid", "bl_valid", "s_valid", "m_ready", "s_sub_last", "s_pix_first",
                "s_pix_last"):
        getattr(dut, sig).value = 0
    dut.s_data.value = 0
    dut.cfg_k.value = K
    dut.cfg_not.value = NOT
    dut.cfg_unsigned.value = int(case["in_unsigned"])
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0

    # ---- loads: prototypes (element e of all K per word), LUT row tiles, bias tiles
    for s in range(Cs):
        for e in range(v):
            dut.pl_valid.value, dut.pl_addr.value = 1, s * v + e
            dut.pl_data.value = pack(list(proto[s, :, e]) + [0] * (kmax - K), 9)
            await FallingEdge(dut.clk)
    dut.pl_valid.value = 0
    lut_p = np.zeros((Cs, K, NOT * L), np.int64)
    lut_p[:, :, :OC] = lut
    for s in range(Cs):
        for k in range(K):
            for ot in range(NOT):
                dut.ll_valid.value, dut.ll_addr.value = 1, (s * K + k) * NOT + ot
                dut.ll_data.value = pack(lut_p[s, k, ot * L:(ot + 1) * L], 16)
                await FallingEdge(dut.clk)
    dut.ll_valid.value = 0
    bias_p = np.zeros(NOT * L, np.int64)
    bias_p[:OC] = bias
    for ot in range(NOT):
        dut.bl_valid.value, dut.bl_addr.value = 1, ot
        dut.bl_data.value = pack(bias_p[ot * L:(ot + 1) * L], 32)
        await FallingEdge(dut.clk)
    dut.bl_valid.value = 0
    await FallingEdge(dut.clk)
    assert dut.idle.value == 1, "core not idle after the loads"

    # ---- stream
    stream = patch_stream(x, KH, KW, stride, pad, v)
    npix = len(stream) // (Cs * v)
    want = npix * NOT
    beats: list[list[int]] = []
    lasts: list[int] = []
    edge = 0
    first_in = last_out = None
    pix0_last_in = pix0_first_out = None
    i = 0
    limit = 20 * (len(stream) + want * 4) + 1000
    while len(beats) < want:
        # inputs for the rising edge `edge`
        if i < len(stream) and rng.random() < p_in:
            a, sl, pf, pl = stream[i]
            dut.s_valid.value = 1
            dut.s_data.value = a
            dut.s_sub_last.value = int(sl)
            dut.s_pix_first.value = int(pf)
            dut.s_pix_last.value = int(pl)
            if dut.s_ready.value == 1:
                if first_in is None:
                    first_in = edge
                if pl and pix0_last_in is None:
                    pix0_last_in = edge
                i += 1
        else:
            dut.s_valid.value = 0
        ready = bool(rng.random() < p_out)
        dut.m_ready.value = int(ready)
        if ready and dut.m_valid.value == 1:
            beats.append(lanes_of(int(dut.m_data.value.to_unsigned()), L))
            lasts.append(int(dut.m_last.value))
            last_out = edge
            if pix0_first_out is None:
                pix0_first_out = edge
        await FallingEdge(dut.clk)
        edge += 1
        assert edge < limit, f"timeout: {i}/{len(stream)} elements in, {len(beats)}/{want} beats out"
    dut.s_valid.value = 0
    dut.m_ready.value = 0
    await ClockCycles(dut.clk, 4)
    await FallingEdge(dut.clk)
    idle_end = int(dut.idle.value)

    acc = np.array(beats, np.int64).reshape(npix, NOT * L)
    np.savez(str(case["result"]), acc=acc, cycles=last_out - first_in,
             first_latency=pix0_first_out - pix0_last_in, lasts=np.array(lasts))
    exp_last = [int((b + 1) % NOT == 0) for b in range(want)]
    assert lasts == exp_last, "m_last framing wrong"
    assert idle_end == 1, "core not idle after the last beat"
    dut._log.info(f"{npix} pixels, {want} beats, {last_out - first_in} edges")
