"""cocotb testbench of the engine's AXI4-Lite control block ``vqhls_control`` (hls_templates/rtl/control.v.j2).

The host side is cocotbext-axi's AxiLiteMaster on ``s_axi_control``; the engine side is ``Engine`` below, an
ap_ctrl_hs top: idle until it samples ap_start, then busy for a few cycles, then ap_ready and ap_done
together for one cycle (a non-pipelined top), its scalar outputs each with an ap_vld pulse just before, and
ap_idle again the cycle after. Offsets and CTRL bits come from engine_io.regmap. What is checked is the
reading of the Vitis HLS ap_ctrl_hs register block stated in control.v.j2: ap_start self-clearing at ap_ready
(kept by auto_restart), ap_done / ap_ready clear-on-read of CTRL, ap_idle, ap_vld set by the pulse and
cleared by reading its control word only, data kept, ISR toggle-on-write, the interrupt line.
"""
from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from engine_io import regmap as R

OUTPUTS = {   # port: (data offsets, control offset, bits)
    "config_hash": ((R.CONFIG_HASH,), R.CONFIG_HASH_CTRL, 32),
    "cycles": ((R.CYCLES_LO, R.CYCLES_HI), R.CYCLES_CTRL, 64),
    "status": ((R.STATUS,), R.STATUS_CTRL, 32),
    "real_cycles": ((R.REAL_CYCLES_LO, R.REAL_CYCLES_HI), R.REAL_CYCLES_CTRL, 64),
}


class Engine:
    """An ap_ctrl_hs engine: ``busy`` cycles per call; the outputs of call i are ``values(i)``."""

    def __init__(self, dut, busy: int = 6):
        self.dut = dut
        self.busy = busy
        self.calls = 0
        self.done_cycles: list[int] = []
        self.cycle = 0
        self.n_images_seen: list[int] = []
        dut.ap_done.value = 0
        dut.ap_ready.value = 0
        dut.ap_idle.value = 1
        for port in OUTPUTS:
            getattr(dut, port).value = 0
            getattr(dut, f"{port}_ap_vld").value = 0

    @staticmethod
    def values(i: int) -> dict[str, int]:
        return {"config_hash": 0xC0FFEE00 + i, "cycles": 0x1_2345_6789 * (i + 1),
                "status": 0x0100 * i + (i % 15), "real_cycles": 0xABCD_0000_0000 + 77 * i}

    async def run(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            self.cycle += 1
            if int(dut.ap_start.value) != 1:
                continue
            # the edge that samples ap_start starts the call
            self.n_images_seen.append(int(dut.n_images.value))
            await FallingEdge(dut.clk)
            dut.ap_idle.value = 0
            for _ in range(self.busy - 2):
                await FallingEdge(dut.clk)
            vals = self.values(self.calls)
            for port, v in vals.items():
                getattr(dut, port).value = v
                getattr(dut, f"{port}_ap_vld").value = 1
            await FallingEdge(dut.clk)
            for port in OUTPUTS:
                getattr(dut, f"{port}_ap_vld").value = 0
            dut.ap_done.value = 1
            dut.ap_ready.value = 1
            await FallingEdge(dut.clk)
            dut.ap_done.value = 0
            dut.ap_ready.value = 0
            self.calls += 1
            self.done_cycles.append(self.cycle)
            if int(dut.ap_start.value) != 1:    # auto_restart keeps it high: the next call starts at once
                dut.ap_idle.value = 1


async def setup(dut, busy: int = 6):
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    eng = Engine(dut, busy)
    axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.clk, dut.rst)
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)
    cocotb.start_soon(eng.run())
    await ClockCycles(dut.clk, 2)
    return eng, axil


async def wait_calls(dut, eng: Engine, n: int, limit: int = 500):
    for _ in range(limit):
        if eng.calls >= n:
            return
        await RisingEdge(dut.clk)
    raise AssertionError(f"engine finished {eng.calls} calls, {n} expected")


@cocotb.test()
async def registers(dut):
    """Reset values, input registers (with byte strobes) reaching the engine side, unmapped offsets, read-only
    offsets ignoring writes."""
    eng, axil = await setup(dut)
    ctrl = await axil.read_dword(R.CTRL)
    assert ctrl == R.CTRL_AP_IDLE, f"CTRL after reset 0x{ctrl:x}: only ap_idle expected"
    for off in (R.GIE, R.IER, R.ISR, R.N_IMAGES, R.PARAMS_LO, R.PARAMS_HI, R.STATUS, R.STATUS_CTRL):
        assert await axil.read_dword(off) == 0, f"0x{off:02x} not 0 after reset"
    await axil.write_dword(R.N_IMAGES, 5)
    await axil.write_dword(R.PARAMS_LO, 0x9ABCDEF0)
    await axil.write_dword(R.PARAMS_HI, 0x12345678)
    assert await axil.read_dword(R.N_IMAGES) == 5
    assert await axil.read_dword(R.PARAMS_LO) == 0x9ABCDEF0
    assert await axil.read_dword(R.PARAMS_HI) == 0x12345678
    assert int(dut.n_images.value) == 5 and int(dut.params.value) == 0x123456789ABCDEF0
    await axil.write(R.N_IMAGES + 1, b"\xcc")          # WSTRB 0b0010: byte 1 only
    assert await axil.read_dword(R.N_IMAGES) == 0xCC05
    for off in (0x14, 0x20, 0x24, 0x3C, 0x54, 0x7C):   # reserved / unmapped
        assert await axil.read_dword(off) == 0, f"0x{off:02x} reads non-zero"
    await axil.write_dword(R.STATUS, 0xDEAD)
    await axil.write_dword(R.STATUS_CTRL, 1)
    assert await axil.read_dword(R.STATUS) == 0 and await axil.read_dword(R.STATUS_CTRL) == 0
    assert eng.calls == 0 and int(dut.ap_start.value) == 0


@cocotb.test()
async def call_handshake(dut):
    """ap_start self-clears at ap_ready; ap_done and ap_ready read 1 once (clear-on-read), ap_idle follows the
    engine; every output's ap_vld reads 1 once after the call (cleared by reading its control word only), its
    data keeps the value."""
    eng, axil = await setup(dut)
    await axil.write_dword(R.N_IMAGES, 3)
    await axil.write_dword(R.CTRL, R.CTRL_AP_START)
    assert int(dut.ap_start.value) == 1
    ctrl = await axil.read_dword(R.CTRL)
    assert ctrl & R.CTRL_AP_START and not ctrl & R.CTRL_AP_IDLE, f"CTRL while running 0x{ctrl:x}"
    await wait_calls(dut, eng, 1)
    await ClockCycles(dut.clk, 2)
    assert int(dut.ap_start.value) == 0, "ap_start not cleared at ap_ready"
    assert eng.n_images_seen == [3]
    ctrl = await axil.read_dword(R.CTRL)
    want = R.CTRL_AP_DONE | R.CTRL_AP_READY | R.CTRL_AP_IDLE
    assert ctrl == want, f"CTRL after the call 0x{ctrl:x}, expected 0x{want:x}"
    ctrl = await axil.read_dword(R.CTRL)
    assert ctrl == R.CTRL_AP_IDLE, f"CTRL read again 0x{ctrl:x}: ap_done / ap_ready not cleared on read"
    vals = Engine.values(0)
    for port, (data, ctl, bits) in OUTPUTS.items():
        v = 0
        for i, off in enumerate(data):                # the data first: reading it does not clear ap_vld
            v |= await axil.read_dword(off) << (32 * i)
        assert v == vals[port], f"{port} reads 0x{v:x}, engine wrote 0x{vals[port]:x}"
        assert await axil.read_dword(ctl) == 1, f"{port} ap_vld not set (or cleared by reading the data)"
        assert await axil.read_dword(ctl) == 0, f"{port} ap_vld not cleared on read"
        v = 0
        for i, off in enumerate(data):
            v |= await axil.read_dword(off) << (32 * i)
        assert v == vals[port], f"{port} data lost after ap_vld was read"
    # a second call: the new values, ap_vld set again
    await axil.write_dword(R.CTRL, R.CTRL_AP_START)
    await wait_calls(dut, eng, 2)
    await ClockCycles(dut.clk, 2)
    assert await axil.read_dword(R.STATUS_CTRL) == 1
    assert await axil.read_dword(R.STATUS) == Engine.values(1)["status"]
    assert (await axil.read_dword(R.CTRL)) & R.CTRL_AP_DONE
    assert eng.calls == 2


@cocotb.test()
async def interrupts(dut):
    """ISR set by an enabled ap_done / ap_ready, toggled by a write of 1 (toggle-on-write); the interrupt line
    is GIE & |ISR."""
    eng, axil = await setup(dut)
    await axil.write_dword(R.GIE, 1)
    await axil.write_dword(R.IER, 1)
    await axil.write_dword(R.CTRL, R.CTRL_AP_START)
    await wait_calls(dut, eng, 1)
    await ClockCycles(dut.clk, 3)
    assert await axil.read_dword(R.ISR) == 1
    assert int(dut.interrupt.value) == 1
    assert (await axil.read_dword(R.CTRL)) & (1 << 9), "CTRL bit 9 (interrupt) not set"
    await axil.write_dword(R.ISR, 1)                  # toggle: clears
    await ClockCycles(dut.clk, 2)
    assert await axil.read_dword(R.ISR) == 0 and int(dut.interrupt.value) == 0
    await axil.write_dword(R.ISR, 1)                  # toggle again: sets (TOW, not write-1-to-clear)
    await ClockCycles(dut.clk, 2)
    assert await axil.read_dword(R.ISR) == 1 and int(dut.interrupt.value) == 1
    await axil.write_dword(R.GIE, 0)
    await ClockCycles(dut.clk, 2)
    assert int(dut.interrupt.value) == 0, "interrupt with GIE 0"
    await axil.write_dword(R.ISR, 1)
    await axil.write_dword(R.IER, 2)                  # ap_ready only
    await axil.write_dword(R.CTRL, R.CTRL_AP_START)
    await wait_calls(dut, eng, 2)
    await ClockCycles(dut.clk, 2)
    assert await axil.read_dword(R.ISR) == 2


@cocotb.test()
async def auto_restart(dut):
    """auto_restart keeps ap_start high across ap_ready (the engine runs again); clearing it lets the running
    call end with ap_start low, and CTRL reports ap_done when the engine goes idle."""
    eng, axil = await setup(dut, busy=12)
    await axil.write_dword(R.CTRL, R.CTRL_AP_START | R.CTRL_AUTO_RESTART)
    await wait_calls(dut, eng, 3, limit=2000)
    assert int(dut.ap_start.value) == 1, "ap_start cleared although auto_restart is set"
    ctrl = await axil.read_dword(R.CTRL)
    assert ctrl & R.CTRL_AUTO_RESTART and ctrl & R.CTRL_AP_START
    await axil.write_dword(R.CTRL, 0)                 # auto_restart off: the call running now is the last
    for _ in range(2000):
        await RisingEdge(dut.clk)
        if int(dut.ap_idle.value) == 1:
            break
    assert int(dut.ap_idle.value) == 1, "the engine did not stop after auto_restart was cleared"
    n = eng.calls
    await ClockCycles(dut.clk, 3)
    assert int(dut.ap_start.value) == 0
    ctrl = await axil.read_dword(R.CTRL)
    assert ctrl & R.CTRL_AP_DONE and ctrl & R.CTRL_AP_IDLE and not ctrl & R.CTRL_AP_START, f"CTRL 0x{ctrl:x}"
    await ClockCycles(dut.clk, 30)
    assert eng.calls == n, "the engine ran again after auto_restart was cleared"
