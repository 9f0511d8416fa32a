"""cocotb testbench of vqhls_conv_unit through its test wrapper (hls_templates/rtl/tb/conv_unit_wrap.v.j2).

The case comes from $VQHLS_CASE (json written by flow.rtl.conv_unit_cases.build_case_file): the op's 64
descriptor words, the parameter writes (pw_mem, addr, col, data) that give the on-chip state of the HLS
load call, the activation words (buf, bank, addr, word) of the op's input (and residual), the output
buffer and the (bank, addr) words to read back. The bench writes all of it through the wrapper's ports
(one write per cycle), pulses start for one cycle, counts the cycles until done (start to done: the
measured count, RTL simulation), checks done is a single pulse and busy falls with it, then reads the
output words back through the backdoor port. It writes $VQHLS_RESULT (json): cycles, words. The
comparison with the golden model is the caller's (flow.rtl.conv_unit_cases.run_case).
"""
from __future__ import annotations

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


@cocotb.test()
async def conv_unit_case(dut):
    case = json.loads(open(os.environ["VQHLS_CASE"]).read())
    for sig in ("start", "pw_en", "tb_we"):
        getattr(dut, sig).value = 0
    for sig in ("pw_mem", "pw_addr", "pw_col", "pw_data", "tb_wbuf", "tb_wbank", "tb_waddr", "tb_wdata",
                "tb_rbuf", "tb_rbank", "tb_raddr"):
        getattr(dut, sig).value = 0
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    # ---- preload: descriptor, parameters, activations (one write per cycle)
    writes = [(0, f, 0, w) for f, w in enumerate(case["op_words"])] + [tuple(w) for w in case["writes"]]
    for mem, addr, col, data in writes:
        dut.pw_en.value = 1
        dut.pw_mem.value, dut.pw_addr.value, dut.pw_col.value, dut.pw_data.value = mem, addr, col, data
        await RisingEdge(dut.clk)
    dut.pw_en.value = 0
    for buf, bank, addr, word in case["act"]:
        dut.tb_we.value = 1
        dut.tb_wbuf.value, dut.tb_wbank.value, dut.tb_waddr.value, dut.tb_wdata.value = buf, bank, addr, word
        await RisingEdge(dut.clk)
    dut.tb_we.value = 0
    await RisingEdge(dut.clk)
    # ---- run: start pulse at cycle 0, done seen at cycle `cycles`
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    cycles, max_cycles = 1, int(case["max_cycles"])
    while True:
        await ReadOnly()
        assert int(dut.busy.value) == 1 or int(dut.done.value) == 1 or cycles == 1, "busy fell before done"
        if int(dut.done.value):
            break
        await RisingEdge(dut.clk)
        cycles += 1
        assert cycles < max_cycles, f"no done after {cycles} cycles"
    await RisingEdge(dut.clk)
    await ReadOnly()
    assert int(dut.done.value) == 0, "done is longer than one cycle"
    assert int(dut.busy.value) == 0, "busy after done"
    # ---- read the output buffer back: address driven before an edge, data after it (latency 1)
    await FallingEdge(dut.clk)
    words = []
    for bank, addr in (tuple(r) for r in case["read"]):
        dut.tb_rbuf.value, dut.tb_rbank.value, dut.tb_raddr.value = int(case["out_buf"]), bank, addr
        await RisingEdge(dut.clk)
        await ReadOnly()
        words.append(int(dut.tb_rdata.value.to_unsigned()))
        await FallingEdge(dut.clk)
    with open(os.environ["VQHLS_RESULT"], "w") as f:
        json.dump({"cycles": cycles, "words": words}, f)
