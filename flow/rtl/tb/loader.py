"""cocotb testbench of the load call in RTL, ``vqhls_loader`` (hls_templates/rtl/loader.v.j2), inside its wrapper
``vqhls_loader_wrap`` (hls_templates/rtl/tb/loader_wrap.v.j2: the parameter memories written through pw_*).

The case (``$VQHLS_CASE``, a JSON file written by tests/rtl/test_loader.py) lists load calls, each a Program
image (a file) placed in an AXI RAM (cocotbext-axi ``AxiRamRead``) at ``base``, and what the reference says of
it: the STATUS word (the C-sim engine's own load call), prog_ops / in / out bytes, and optionally the on-chip
memories after it (an .npz of flow/rtl/onchip.py's names: op_words, vidx, vmask, cb, dmem, ch_*). Per load:
``clear`` (when asked) zeroes the wrapper's memories, the image is written into a zeroed RAM (the C-sim's
DDR is zero past the image too), ``start`` is pulsed, and at ``done`` the outputs are compared; the memories
are dumped with $writememh and compared entry for entry. Every AR beat is checked against the AXI rules the
loader promises (INCR, 4-byte beats, at most 64 beats, never across a 4 KiB boundary). With ``pause`` the RAM
stalls AR and R at random (back-pressure). Results (measured in RTL simulation: cycles from start to done,
bursts) go to ``$VQHLS_RESULT`` as JSON; every mismatch fails the test with all of them listed.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge
from cocotbext.axi import AxiRamRead, AxiReadBus

MEMS = ("op_words", "vidx", "vmask", "cb", "dmem", "ch_bias", "ch_mult", "ch_shift", "ch_res_mult")


def read_hex(path: Path) -> list[int]:
    """Values of a $writememh file (comments and address marks skipped; x / z read as 0)."""
    out: list[int] = []
    for line in path.read_text().splitlines():
        line = line.split("//")[0].strip()
        for tok in line.split():
            if tok.startswith("@"):
                continue
            out.append(int(tok.lower().replace("x", "0").replace("z", "0"), 16))
    return out


def rtl_memories(cfg: dict, where: Path) -> dict[str, np.ndarray]:
    """The wrapper's dumped memories in flow/rtl/onchip.py's shapes and dtypes."""
    cols, ch_rows, d_max, lanes = cfg["cols"], cfg["ch_rows"], cfg["d_max"], cfg["lanes"]
    got: dict[str, np.ndarray] = {}
    raw = {m: read_hex(where / f"loader_{m}.hex") for m in MEMS}
    got["op_words"] = np.array(raw["op_words"], np.uint32).reshape(cfg["max_ops"], 64)
    got["vidx"] = np.array(raw["vidx"], np.uint32)
    got["vmask"] = np.array(raw["vmask"], np.uint32)

    def rows(vals: list[int], width: int) -> np.ndarray:
        return np.frombuffer(b"".join(v.to_bytes(width, "little") for v in vals), np.int8).reshape(len(vals), width)

    got["cb"] = rows(raw["cb"], d_max)
    got["dmem"] = rows(raw["dmem"], lanes)
    for name in ("ch_bias", "ch_mult", "ch_res_mult"):
        got[name] = np.array(raw[name], np.uint32).view(np.int32).reshape(cols, ch_rows)
    got["ch_shift"] = np.array(raw["ch_shift"], np.uint8).reshape(cols, ch_rows)
    return got


class ArMonitor:
    """Checks every AR handshake: INCR, 4-byte beats, 1..64 beats, inside one 4 KiB page, word aligned."""

    def __init__(self, dut):
        self.dut = dut
        self.bursts = 0
        self.beats = 0
        self.errors: list[str] = []

    async def run(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            if int(dut.m_axi_arvalid.value) and int(dut.m_axi_arready.value):
                addr, n = int(dut.m_axi_araddr.value), int(dut.m_axi_arlen.value) + 1
                self.bursts += 1
                self.beats += n
                if int(dut.m_axi_arsize.value) != 2 or int(dut.m_axi_arburst.value) != 1:
                    self.errors.append(f"AR at 0x{addr:x}: arsize {int(dut.m_axi_arsize.value)} arburst "
                                       f"{int(dut.m_axi_arburst.value)}")
                if n > 64 or addr % 4 or (addr % 4096) + 4 * n > 4096:
                    self.errors.append(f"AR at 0x{addr:x} of {n} beats: longer than 64 or across 4 KiB")


def _pauses(rng: random.Random, p: float):
    while True:
        yield rng.random() < p


@cocotb.test()
async def load_calls(dut):
    case = json.loads(Path(os.environ["VQHLS_CASE"]).read_text())
    cfg = case["engine"]
    base = int(case["base"])
    rng = random.Random(int(case.get("seed", 1)))
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    ram = AxiRamRead(AxiReadBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=int(case["ram_size"]))
    if case.get("pause"):
        ram.ar_channel.set_pause_generator(_pauses(rng, 0.3))
        ram.r_channel.set_pause_generator(_pauses(rng, 0.3))
    mon = ArMonitor(dut)
    cocotb.start_soon(mon.run())

    dut.rst.value = 1
    dut.start.value = 0
    dut.clear.value = 0
    dut.dump.value = 0
    dut.params.value = base
    for _ in range(4):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    await FallingEdge(dut.clk)

    errors: list[str] = []
    results = []
    used = 0
    for load in case["loads"]:
        name = load["name"]
        if load.get("clear", True):
            dut.clear.value = 1
            await FallingEdge(dut.clk)
            dut.clear.value = 0
        image = Path(load["image"]).read_bytes()
        if used:
            ram.write(base, bytes(used))
        ram.write(base, image)
        used = max(len(image), int(load.get("span", len(image))))
        bursts0, beats0 = mon.bursts, mon.beats
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        cycles = 1
        limit = int(load.get("max_cycles", 2_000_000))
        while not int(dut.done.value):
            await FallingEdge(dut.clk)
            cycles += 1
            if cycles > limit:
                errors.append(f"{name}: no done within {limit} cycles")
                break
        got = dict(status=int(dut.status.value), loaded=int(dut.loaded.value), prog_ops=int(dut.prog_ops.value),
                   in_bytes=int(dut.prog_in_bytes.value), out_bytes=int(dut.prog_out_bytes.value))
        res = dict(name=name, cycles=cycles, bursts=mon.bursts - bursts0, beats=mon.beats - beats0,
                   writes=int(dut.n_writes.value), **got)
        for key in ("status", "loaded", "prog_ops", "in_bytes", "out_bytes"):
            if key in load and load[key] is not None and got[key] != int(load[key]):
                errors.append(f"{name}: {key} RTL 0x{got[key]:x}, reference 0x{int(load[key]):x}")
        if int(dut.bad_write.value):
            errors.append(f"{name}: a pw_* write to an unknown memory or past a memory's depth")
        if load.get("mem"):
            dut.dump.value = 1
            await FallingEdge(dut.clk)
            dut.dump.value = 0
            await FallingEdge(dut.clk)
            got_mem = rtl_memories(cfg, Path.cwd())
            with np.load(load["mem"]) as ref:
                for m in MEMS:
                    want = ref[m]
                    have = got_mem[m]
                    if want.shape != have.shape:
                        errors.append(f"{name}: {m} shape RTL {have.shape}, reference {want.shape}")
                        continue
                    bad = np.argwhere(want != have)
                    if bad.size:
                        at = tuple(int(i) for i in bad[0])
                        errors.append(f"{name}: {m} differs at {len(bad)} entries, first {at}: RTL {have[at]}, "
                                      f"reference {want[at]}")
                res["nonzero"] = {m: int(np.count_nonzero(ref[m])) for m in MEMS}
        results.append(res)
        dut._log.info("load %s: %s", name, res)
        for _ in range(3):
            await FallingEdge(dut.clk)
    errors += mon.errors
    if os.environ.get("VQHLS_RESULT"):
        Path(os.environ["VQHLS_RESULT"]).write_text(json.dumps(dict(loads=results, errors=errors), indent=1))
    assert not errors, "\n".join(errors[:40])
