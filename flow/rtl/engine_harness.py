"""The whole RTL engine under Verilator through the host's C++ harness (engine_io/verilator_harness.cpp), not
cocotb: the same Verilog, the same register and stream protocol as flow.rtl.engine_rtl.run_engine, an order of
magnitude faster per simulated cycle (no Python per clock edge), so `make test` can afford whole models.

    run = run_engine_harness(image, engine, inputs, batches=[8, 8])
    run.outputs, run.statuses, run.real_cycles            # as run_engine's EngineRun

What it does not give: per-op timestamps (the harness sees the engine's ports, not the core's op_start /
op_done), so ``op_cycles`` has no columns; the per-op cycle checks run on run_engine (cocotb, Icarus or
Verilator). Everything it measures is MEASURED in RTL simulation: REAL_CYCLES is the engine's own counter.

The library is engine_io.verilator_build's, keyed by the Verilog's digest: an engine rendered here and the same
engine shipped in a bundle (host.rtl_backend) are one build. The PS side (DDR, DMA, AXI-Lite master) is the
harness's test double; this module plays the host's calls on it: the load call (PARAMS, N_IMAGES = 0,
ap_start), then per batch a DMA receive, a DMA send, N_IMAGES, ap_start, and the registers read back.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from engine_io import regmap
from engine_io import verilator_build as vb
from flow.compile.engine import EngineConfig
from flow.rtl.engine_rtl import TOP, EngineRtlError, EngineRun, build_dir_for, prepare_run

BASE = 0x1000_0000        # physical address of the first buffer in the double's DDR
GUARD = 4096              # an unmapped page between buffers: a read past one answers DECERR
POLL = 16                 # cycles between two CTRL reads while waiting for ap_done
AXIL = 1000               # cycles one register access may take


def library(engine: EngineConfig, bugs: dict | None = None) -> Path:
    """The harness library of ``engine``'s Verilog (built once per digest, shared with bundles of it)."""
    _, paths = build_dir_for(engine, "harness", bugs)
    return vb.build_library(vb.RtlSources(tuple(paths), TOP, engine.hash()))


class _Engine:
    """One reset engine model and its mapped buffers (kept alive while mapped)."""

    def __init__(self, lib_path, mem_latency: int):
        self.lib = vb.open_library(lib_path)
        self.h = self.lib.vqhls_rtl_new(16, int(mem_latency))
        self.next = BASE
        self.keep: list[np.ndarray] = []

    def close(self) -> None:
        self.lib.vqhls_rtl_free(self.h)

    def buffer(self, data: np.ndarray) -> tuple[int, np.ndarray]:
        """Map a copy of ``data`` (uint8) as DDR: (its physical address, the mapped array)."""
        buf = np.ascontiguousarray(data, np.uint8).reshape(-1).copy()
        if buf.size == 0:
            buf = np.zeros(1, np.uint8)
        addr = self.next
        self.next += -(-buf.size // GUARD) * GUARD + GUARD
        if self.lib.vqhls_rtl_map(self.h, addr, buf.ctypes.data, buf.size) != 0:
            raise EngineRtlError(f"internal: buffer 0x{addr:x} overlaps a mapped one")
        self.keep.append(buf)
        return addr, buf

    def write(self, reg: int, value: int) -> None:
        if self.lib.vqhls_rtl_axil_write(self.h, reg, int(value) & 0xFFFFFFFF, 0xF, AXIL) != 0:
            raise EngineRtlError(f"AXI-Lite write of 0x{reg:02x} failed or hung")

    def read(self, reg: int) -> int:
        v = ctypes.c_uint()
        if self.lib.vqhls_rtl_axil_read(self.h, reg, ctypes.byref(v), AXIL) != 0:
            raise EngineRtlError(f"AXI-Lite read of 0x{reg:02x} failed or hung")
        return int(v.value)

    def call(self, n_images: int, max_cycles: int, what: str) -> tuple[int, int]:
        """ap_start, wait for ap_done; (STATUS, REAL_CYCLES)."""
        self.write(regmap.N_IMAGES, n_images)
        self.write(regmap.CTRL, regmap.CTRL_AP_START)
        v = ctypes.c_uint()
        rc = self.lib.vqhls_rtl_run_until(self.h, regmap.CTRL, regmap.CTRL_AP_DONE, POLL, 200_000, max_cycles,
                                          ctypes.byref(v))
        if rc != 1:
            why = {0: f"no ap_done within {max_cycles:,} cycles", 2: "a stream stalled on an idle DMA channel",
                   -1: "a register read hung"}[rc]
            raise EngineRtlError(f"RTL engine ({what}): {why}")
        real = (self.read(regmap.REAL_CYCLES_HI) << 32) | self.read(regmap.REAL_CYCLES_LO)
        return self.read(regmap.STATUS), int(real)


def run_engine_harness(image: bytes, engine: EngineConfig, inputs: np.ndarray, *, batches: list[int] | None = None,
                       in_gaps: float = 0.0, out_stalls: float = 0.0, seed: int = 1, bugs: dict | None = None,
                       mem_latency: int = 0, max_cycles: int = 200_000_000, raw: bool = False,
                       run_anyway: bool = False, run_before_load: bool = False,
                       tlast_at: int | None = None) -> EngineRun:
    """Load ``image`` and run ``inputs`` ([n, in_bytes] uint8) in run calls of ``batches`` images (default one
    call), as run_engine does. ``in_gaps`` / ``out_stalls``: the fraction of cycles the DMA offers no input
    byte / takes no output byte (back-pressure on both streams). ``raw``: the image unchecked (a corrupted
    image: the engine's own checks are under test). After a failed load the run calls are skipped, unless
    ``run_anyway`` (the engine must refuse them; ``info["in_bytes_taken"]``: what each took from its stream).
    ``run_before_load``: first a one-image run call with no stream (``info["unloaded_status"]``).
    ``tlast_at``: the first call's DMA send ends, TLAST set, at that byte (an early TLAST)."""
    out_bytes, inputs, batches = prepare_run(image, inputs, batches, raw)
    eng = _Engine(library(engine, bugs), mem_latency)
    try:
        if in_gaps or out_stalls:
            eng.lib.vqhls_rtl_throttle(eng.h, round(256 * in_gaps), round(256 * out_stalls), seed)
        info: dict = {"driver": "verilator harness", "in_bytes_taken": []}
        if run_before_load:
            info["unloaded_status"] = eng.call(1, max_cycles, "run call before the load")[0]
        params, _ = eng.buffer(np.frombuffer(image, np.uint8))
        eng.write(regmap.PARAMS_LO, params & 0xFFFFFFFF)
        eng.write(regmap.PARAMS_HI, params >> 32)
        load_status, load_real = eng.call(0, max_cycles, "load call")
        config_hash = eng.read(regmap.CONFIG_HASH)
        outputs = np.zeros((len(inputs), out_bytes), np.uint8)
        statuses, reals, calls, first = [], [], [], 0
        for n in batches if load_status == regmap.OK or run_anyway else []:
            out_addr, out = eng.buffer(np.zeros(n * out_bytes, np.uint8))
            in_addr, _ = eng.buffer(inputs[first:first + n])
            if eng.lib.vqhls_rtl_dma_recv(eng.h, out_addr, out.size) != 0:
                raise EngineRtlError("internal: DMA receive refused")
            send = n * inputs.shape[1] if tlast_at is None or first else tlast_at + 1
            if eng.lib.vqhls_rtl_dma_send(eng.h, in_addr, send) != 0:
                raise EngineRtlError("internal: DMA send refused")
            status, real = eng.call(n, max_cycles, f"run call of {n} images")
            state = (ctypes.c_ulonglong * 16)()
            eng.lib.vqhls_rtl_state(eng.h, state)
            info["in_bytes_taken"].append(int(state[1]))
            if status != regmap.OK and regmap.decode_status(status)[0] == regmap.ERR_NOT_LOADED:
                eng.lib.vqhls_rtl_dma_reset(eng.h)     # a refused call moves no data: drop the transfers
            elif not eng.lib.vqhls_rtl_dma_wait(eng.h, 200_000, max_cycles):
                raise EngineRtlError(f"RTL engine: the DMA did not finish the run call of {n} images")
            outputs[first:first + n] = out[: n * out_bytes].reshape(n, -1)
            statuses.append(status)
            reals.append(real)
            calls.append((first, n))
            first += n
    finally:
        eng.close()
    return EngineRun(outputs=outputs, load_status=load_status, statuses=statuses, real_cycles=reals, calls=calls,
                     load_real_cycles=load_real, config_hash=config_hash,
                     op_cycles=np.zeros((first, 0), np.int64), info=info,
                     simulator="verilator-harness")


__all__ = ["library", "run_engine_harness"]
