"""The engine without a board: a deploy bundle's own C++ (``hls/firmware``, with the C ABI in
``hls/tb/bridge.cpp``) compiled with g++ into a shared library by ``engine_io.gxx_build`` (the build
flow.hls.csim uses too), driven through a simulated AXI-Lite register file, AXI-Stream FIFOs, AXI DMA
and DDR (the register-level entry ``vqhls_call`` of the bridge: one ap_start .. ap_done).

    dev = SimDevice(bundle)                     # compiles (cached) and loads the bundle's engine
    buf = dev.alloc(len(image)); buf[:] = np.frombuffer(image, np.uint8); buf.flush()
    dev.write(regmap.PARAMS_LO, buf.physical_address); dev.write(regmap.N_IMAGES, 0)
    dev.write(regmap.CTRL, regmap.CTRL_AP_START)          # runs the load call synchronously
    assert dev.read(regmap.CTRL) & regmap.CTRL_AP_DONE and dev.read(regmap.STATUS) == 0

Model:

* **DDR**: ``alloc`` returns ``SimBuffer`` (a uint8-backed numpy array with ``physical_address``,
  ``flush``, ``invalidate``, ``freebuffer``, like ``pynq.allocate``). Not coherent by default: the
  engine and the DMA see a buffer's DDR copy, which ``flush()`` updates from the CPU view and
  ``invalidate()`` copies back, so a missing flush or invalidate shows here as on the board
  (``coherent=True``: one copy). ``mem_read`` / ``mem_write`` access DDR by physical address.
* **AXI-Lite** (``read`` / ``write``, offsets from ``engine_io.regmap``): CTRL (ap_start, ap_done
  clear-on-read, ap_idle, ap_ready clear-on-read, auto_restart stored but not honoured), GIE/IER/ISR,
  N_IMAGES, PARAMS, and the outputs CONFIG_HASH, CYCLES (MODELLED), STATUS, REAL_CYCLES with their
  ap_vld words (clear-on-read). REAL_CYCLES reads ``regmap.REAL_CYCLES_NA``: the engine's real counter
  is Verilog, and C-simulation runs its C model, which has no clock to count (never a number made up
  from the cycle model). Writing ap_start latches N_IMAGES and PARAMS and runs the engine call at once when
  its input is there (see below); the engine reads the DDR from PARAMS on (its m_axi port).
* **AXI-Stream**: ``push_input`` queues bytes for the input stream (TLAST on the last byte of each
  push, as one AXI DMA MM2S transfer does); the engine's output bytes queue up with their TLAST flags
  for ``pop_output`` (an unbounded FIFO: the engine never stalls on a missing receive here).
  A started call that would read more input than is queued (and meets no TLAST) waits, as the
  hardware blocks, and runs when ``push_input`` brings the rest; an early TLAST stops it (ERR_TLAST).
* **AXI DMA** (a convenience for the sim backend): ``dma_send`` pushes a buffer's DDR bytes,
  ``dma_recv`` posts one receive (simple mode: one at a time) completed at TLAST or when full,
  ``dma_wait`` reports it (SimTimeout when it cannot complete: nothing runs asynchronously here).

Each SimDevice loads a private copy of the library (the engine keeps its on-chip memories in
statics: two devices are two engines); calls into it are serialized with a lock.

Imports neither torch nor the flow (only ``engine_io``): runs wherever g++ and the ap_types
headers (shipped by the hls4ml package, or ``VQHLS_AP_TYPES``) are. The library is cached with the
flow's builds (``engine_io.cache.cache_root()``, or ``cache_dir``).
"""
from __future__ import annotations

import bisect
import ctypes
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from engine_io import gxx_build, regmap
from engine_io.cache import CacheError
from host.backend import AcceleratorError, AcceleratorTimeout, Backend, DMA_MAX_BYTES, _load_bundle


class SimError(RuntimeError):
    """The simulated device cannot be built or was driven outside its protocol; one line with the fix."""


class SimTimeout(SimError, TimeoutError):
    """A transfer or call that cannot complete (the simulation has nothing running in the background)."""


# --------------------------------------------------------------------------- the engine library

def _as_bundle(bundle):
    return _load_bundle(bundle, SimError)


def engine_sources(bundle) -> gxx_build.EngineSources:
    """The rendered engine a bundle ships (``hls/firmware``, ``hls/tb/tb.cpp``, ``hls/tb/bridge.cpp``), as
    ``engine_io.gxx_build`` builds it; SimError naming the fix when a piece is missing."""
    hls = Path(bundle.hls_dir)
    fw = Path(bundle.path) / bundle.manifest["hls"].get("firmware", "hls/firmware")
    if fw.resolve() != (hls / "firmware").resolve():
        raise SimError(f"bundle {bundle.path}: engine sources in {fw}, not {hls / 'firmware'}: rebuild the bundle")
    need = [fw / "top.cpp", fw / "top.h", hls / "tb" / "tb.cpp", hls / "tb" / "bridge.cpp"]
    missing = [str(p.relative_to(bundle.path)) for p in need if not p.is_file()]
    if missing:
        raise SimError(f"bundle {bundle.path}: no {', '.join(missing)} (bundles before the one C-sim library "
                       "path lack hls/tb/): rebuild the bundle")
    return gxx_build.EngineSources(hls, bundle.config_hash)


def _one_line(e: Exception) -> str:
    """A build error in one line: its first line, and the first g++ line naming an error."""
    lines = str(e).splitlines()
    first_error = next((ln.strip() for ln in lines[1:] if "error" in ln), "")
    return lines[0] + (f" ({first_error[:200]})" if first_error else "")


def build_library(bundle, *, cache_dir=None, force: bool = False) -> Path:
    """Compile (or fetch from the cache: ``cache_dir``, else engine_io.cache.cache_root()) the bundle's engine,
    testbench and bridge with g++ (``engine_io.gxx_build.build``); returns the library."""
    bundle = _as_bundle(bundle)
    try:
        return gxx_build.build_library(engine_sources(bundle), force=force, root=cache_dir)
    except (gxx_build.BuildError, CacheError) as e:
        raise SimError(_one_line(e)) from None


# --------------------------------------------------------------------------- simulated DDR

@dataclass(eq=False)
class _Region:
    addr: int
    size: int
    cpu: np.ndarray          # the CPU's view (the SimBuffer's memory)
    ddr: np.ndarray          # what the engine and the DMA see (cpu itself when coherent)
    device: "weakref.ref" = field(repr=False)
    freed: bool = False

    @property
    def ptr(self) -> int:
        return self.cpu.__array_interface__["data"][0]

    def holds(self, ptr: int, nbytes: int) -> bool:
        return self.ptr <= ptr and ptr + nbytes <= self.ptr + self.size


class SimBuffer(np.ndarray):
    """A buffer in the simulated DDR (``SimDevice.alloc``): a numpy array like ``pynq.allocate``'s, with
    ``physical_address`` (unique, 4 KiB aligned), ``flush`` (CPU -> DDR), ``invalidate`` (DDR -> CPU),
    ``freebuffer``. Views (slices) keep the address of their first byte; computed arrays are plain
    copies without one."""

    _region: Optional[_Region] = None

    def __array_finalize__(self, obj) -> None:
        reg = getattr(obj, "_region", None)
        ptr = self.__array_interface__["data"][0]
        self._region = reg if (reg is not None and reg.holds(ptr, 1 if self.size else 0)) else None

    def _reg(self) -> _Region:
        reg = self._region
        if reg is None:
            raise SimError("not a device buffer (a computed copy of one): allocate with SimDevice.alloc")
        if reg.freed:
            raise SimError(f"buffer at 0x{reg.addr:x} was freed")
        return reg

    @property
    def physical_address(self) -> int:
        reg = self._reg()
        return reg.addr + (self.__array_interface__["data"][0] - reg.ptr)

    device_address = physical_address

    @property
    def coherent(self) -> bool:
        reg = self._reg()
        return reg.ddr is reg.cpu

    def flush(self) -> None:
        """Write the CPU's view of the whole buffer back to DDR (before the engine or the DMA reads it)."""
        reg = self._reg()
        if reg.ddr is not reg.cpu:
            reg.ddr[:] = reg.cpu

    def invalidate(self) -> None:
        """Re-read the whole buffer from DDR (after the engine or the DMA wrote it)."""
        reg = self._reg()
        if reg.ddr is not reg.cpu:
            reg.cpu[:] = reg.ddr

    sync_to_device = flush
    sync_from_device = invalidate

    def freebuffer(self) -> None:
        reg = self._region
        if reg is None or reg.freed:
            return
        dev = reg.device()
        if dev is not None:
            dev._free(reg)
        reg.freed = True

    close = freebuffer


@dataclass
class _Recv:
    addr: int
    nbytes: int
    got: int = 0
    done: bool = False
    last: bool = False


# --------------------------------------------------------------------------- the device

class SimDevice:
    """One simulated engine with its AXI-Lite registers, streams, DMA and DDR (module docstring)."""

    BASE_ADDRESS = 0x1000_0000
    PAGE = 4096

    def __init__(self, bundle, *, cache_dir=None, coherent: bool = False):
        self.bundle = _as_bundle(bundle)
        self.library_path = build_library(self.bundle, cache_dir=cache_dir)
        try:
            lib = gxx_build.open_private(self.library_path)
        except gxx_build.BuildError as e:
            raise SimError(str(e)) from None
        self._lib = lib
        self._finalizer = weakref.finalize(self, gxx_build.close_private, lib._handle)
        self._finalizer.atexit = False      # at exit the process unmaps it anyway
        self.engine_config_hash = int(lib.vqhls_config_hash())
        self.param_bytes = int(lib.vqhls_param_bytes())
        self.coherent = bool(coherent)
        self._lock = threading.RLock()
        # DDR
        self._regions: list[_Region] = []
        self._starts: list[int] = []
        self._next_addr = self.BASE_ADDRESS
        # AXI-Lite
        self._in_regs = {regmap.N_IMAGES: 0, regmap.PARAMS_LO: 0, regmap.PARAMS_HI: 0}
        self._out_regs = {regmap.CONFIG_HASH: 0, regmap.CYCLES_LO: 0, regmap.CYCLES_HI: 0, regmap.STATUS: 0,
                          regmap.REAL_CYCLES_LO: 0, regmap.REAL_CYCLES_HI: 0}
        self._vld = {regmap.CONFIG_HASH_CTRL: False, regmap.CYCLES_CTRL: False, regmap.STATUS_CTRL: False,
                     regmap.REAL_CYCLES_CTRL: False}
        self._gie = self._ier = self._isr = 0
        self._running = False
        self._done = False
        self._ready = False
        self._auto_restart = False
        self._latched: tuple[int, int] = (0, 0)    # N_IMAGES, PARAMS of the running call
        # AXI-Stream FIFOs: bytes + positions (from the head) of the bytes carrying TLAST
        self._in = bytearray()
        self._in_last: list[int] = []
        self._out = bytearray()
        self._out_last: list[int] = []
        # DMA
        self._recv: Optional[_Recv] = None
        self.dma_received = 0
        # bookkeeping
        self.calls = 0
        self.last_call: dict = {}

    # ---- lifetime
    def close(self) -> None:
        """Unload the engine (further calls raise SimError); buffers stay readable as numpy arrays."""
        with self._lock:
            if self._lib is not None:
                self._lib = None
                self._finalizer()

    def __enter__(self) -> "SimDevice":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SimDevice(engine {self.engine_config_hash:08x}, library={str(self.library_path)!r})"

    def _need_lib(self):
        if self._lib is None:
            raise SimError("the simulated device is closed")
        return self._lib

    # ---- DDR
    def alloc(self, shape, dtype=np.uint8, **_ignored) -> SimBuffer:
        """A buffer of ``shape`` (an int: bytes) and ``dtype`` in the simulated DDR, zero-filled.
        Extra keywords (``cacheable``, ``target``) are accepted and ignored, as a stand-in for
        ``pynq.allocate``."""
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        dt = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize if shape else dt.itemsize
        if nbytes < 0:
            raise ValueError(f"negative buffer size {shape}")
        size = max(nbytes, 1)
        with self._lock:
            cpu = np.zeros(size, dtype=np.uint8)
            ddr = cpu if self.coherent else np.zeros(size, dtype=np.uint8)
            addr = self._next_addr
            self._next_addr += -(-size // self.PAGE) * self.PAGE + self.PAGE    # a guard page between buffers
            reg = _Region(addr, size, cpu, ddr, weakref.ref(self))
            i = bisect.bisect(self._starts, addr)
            self._starts.insert(i, addr)
            self._regions.insert(i, reg)
        buf = cpu[:nbytes].view(dt).reshape(shape).view(SimBuffer)
        buf._region = reg
        return buf

    def _free(self, reg: _Region) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, reg.addr)
            if i < len(self._regions) and self._regions[i] is reg:
                del self._starts[i]
                del self._regions[i]

    def _find(self, addr: int) -> Optional[_Region]:
        i = bisect.bisect(self._starts, addr) - 1
        if i >= 0:
            reg = self._regions[i]
            if addr < reg.addr + reg.size:
                return reg
        return None

    def _span(self, addr: int, nbytes: int, what: str) -> tuple[_Region, int]:
        reg = self._find(addr)
        if reg is None or nbytes < 0 or addr + nbytes > reg.addr + reg.size:
            raise SimError(f"{what} 0x{addr:x} + {nbytes} bytes is outside every allocated buffer")
        return reg, addr - reg.addr

    def mem_read(self, addr: int, nbytes: int) -> bytes:
        """``nbytes`` of DDR at physical address ``addr`` (within one allocated buffer)."""
        with self._lock:
            reg, off = self._span(int(addr), int(nbytes), "mem_read")
            return reg.ddr[off: off + nbytes].tobytes()

    def mem_write(self, addr: int, data) -> None:
        """Write ``data`` into DDR at physical address ``addr`` (within one allocated buffer)."""
        raw = _as_bytes(data)
        with self._lock:
            reg, off = self._span(int(addr), len(raw), "mem_write")
            reg.ddr[off: off + len(raw)] = np.frombuffer(raw, dtype=np.uint8)

    # ---- AXI-Lite
    @staticmethod
    def _check_offset(offset: int) -> int:
        offset = int(offset)
        if offset < 0 or offset >= regmap.ADDRESS_RANGE or offset % 4:
            raise SimError(f"register offset 0x{offset:x} outside the engine's s_axilite segment "
                           f"(0x00..0x{regmap.ADDRESS_RANGE - 4:02x}, word aligned)")
        return offset

    def read(self, offset: int) -> int:
        """Read the 32-bit register at ``offset`` (clear-on-read bits clear, as on the hardware)."""
        offset = self._check_offset(offset)
        with self._lock:
            if offset == regmap.CTRL:
                v = regmap.CTRL_AP_START if self._running else regmap.CTRL_AP_IDLE
                if self._done:
                    v |= regmap.CTRL_AP_DONE
                    self._done = False
                if self._ready:
                    v |= regmap.CTRL_AP_READY
                    self._ready = False
                if self._auto_restart:
                    v |= regmap.CTRL_AUTO_RESTART
                return v
            if offset == regmap.GIE:
                return self._gie
            if offset == regmap.IER:
                return self._ier
            if offset == regmap.ISR:
                return self._isr
            if offset in self._out_regs:
                return self._out_regs[offset]
            if offset in self._vld:
                v = int(self._vld[offset])
                self._vld[offset] = False
                return v
            return self._in_regs.get(offset, 0)

    def write(self, offset: int, value: int) -> None:
        """Write the 32-bit register at ``offset``; ap_start runs the engine call (when its input is
        queued; else when ``push_input`` completes it). Writes to read-only registers are ignored."""
        offset = self._check_offset(offset)
        value = int(value) & 0xFFFFFFFF
        with self._lock:
            if offset == regmap.CTRL:
                self._auto_restart = bool(value & regmap.CTRL_AUTO_RESTART)
                if value & regmap.CTRL_AP_START and not self._running:
                    n = self._in_regs[regmap.N_IMAGES]
                    params = (self._in_regs[regmap.PARAMS_HI] << 32) | self._in_regs[regmap.PARAMS_LO]
                    self._latched = (n, params)
                    self._running = True
                    self._try_run()
            elif offset == regmap.GIE:
                self._gie = value & 1
            elif offset == regmap.IER:
                self._ier = value & 3
            elif offset == regmap.ISR:
                self._isr ^= value & 3
            elif offset in self._in_regs:
                self._in_regs[offset] = value

    @property
    def busy(self) -> bool:
        """A started call has not finished (it waits for input)."""
        return self._running

    def waiting_for(self) -> Optional[tuple[int, int]]:
        """(queued, needed) input bytes of a started call that waits for input, else None."""
        with self._lock:
            if not self._running:
                return None
            need = self._need(self._latched[0])
            return (len(self._in), need)

    # ---- the engine call
    def loaded(self) -> tuple[bool, int, int]:
        """(a program is on chip, its input bytes, its output bytes per image)."""
        with self._lock:
            lib = self._need_lib()
            a, b = ctypes.c_ulonglong(), ctypes.c_ulonglong()
            ok = bool(lib.vqhls_loaded(ctypes.byref(a), ctypes.byref(b)))
            return ok, int(a.value), int(b.value)

    def _need(self, n: int) -> int:
        ok, in_b, _ = self.loaded()
        return n * in_b if (n > 0 and ok) else 0

    def _try_run(self) -> None:
        if not self._running:
            return
        lib = self._need_lib()
        n, params_addr = self._latched
        ok, in_b, out_b = self.loaded()
        need = n * in_b if (n > 0 and ok) else 0
        take, tpos = 0, -1
        if need:
            if self._in_last and self._in_last[0] < need:      # an early (or exact) TLAST ends the reading
                tpos = self._in_last[0]
                take = tpos + 1
            elif len(self._in) >= need:
                take = need
            else:
                return                                         # the engine blocks on its input stream
        out_cap = n * out_b if (n > 0 and ok) else 0
        inp = np.frombuffer(bytes(self._in[:take]), dtype=np.uint8) if take else np.zeros(1, np.uint8)
        params = self._params_view(params_addr)
        out = np.zeros(max(out_cap, 1), dtype=np.uint8)
        out_last = np.zeros(max(out_cap, 1), dtype=np.uint8)
        consumed, out_len, cycles = ctypes.c_ulonglong(), ctypes.c_ulonglong(), ctypes.c_ulonglong()
        chash = ctypes.c_uint()
        status = int(lib.vqhls_call(
            params.ctypes.data, params.size, n, inp.ctypes.data, take, tpos, ctypes.byref(consumed),
            out.ctypes.data, out_last.ctypes.data, out_cap, ctypes.byref(out_len), ctypes.byref(cycles),
            ctypes.byref(chash)))
        real = ctypes.c_ulonglong(lib.vqhls_real_cycles())
        used = int(consumed.value)
        produced = int(out_len.value)
        if produced > out_cap:
            raise SimError(f"internal: the engine wrote {produced} output bytes, {out_cap} expected")
        # the input FIFO loses what the engine read
        del self._in[:used]
        self._in_last = [p - used for p in self._in_last if p >= used]
        # the output FIFO gains what it wrote
        base = len(self._out)
        self._out += out[:produced].tobytes()
        self._out_last.extend(base + int(p) for p in np.flatnonzero(out_last[:produced]))
        # output registers, control
        self._out_regs[regmap.CONFIG_HASH] = int(chash.value)
        self._out_regs[regmap.CYCLES_LO] = int(cycles.value) & 0xFFFFFFFF
        self._out_regs[regmap.CYCLES_HI] = (int(cycles.value) >> 32) & 0xFFFFFFFF
        self._out_regs[regmap.STATUS] = status
        self._out_regs[regmap.REAL_CYCLES_LO] = int(real.value) & 0xFFFFFFFF
        self._out_regs[regmap.REAL_CYCLES_HI] = (int(real.value) >> 32) & 0xFFFFFFFF
        for k in self._vld:
            self._vld[k] = True
        self._running = False
        self._done = self._ready = True
        self._isr |= self._ier & 3
        self.calls += 1
        self.last_call = {"n_images": n, "params": params_addr, "status": status, "cycles": int(cycles.value),
                          "real_cycles": int(real.value),
                          "in_consumed": used, "out_bytes": produced}
        self._service_recv()

    def _params_view(self, addr: int) -> np.ndarray:
        """The DDR the engine's m_axi port reads: from PARAMS to the end of its buffer (at most param_bytes);
        an address outside every buffer reads as nothing (the bridge pads with zeros)."""
        reg = self._find(addr)
        if reg is None:
            return np.zeros(0, dtype=np.uint8)
        off = addr - reg.addr
        return reg.ddr[off: off + min(reg.size - off, self.param_bytes)]

    # ---- AXI-Stream FIFOs
    def push_input(self, data, *, last: bool = True) -> None:
        """Queue bytes for the engine's input stream, TLAST on the last one (``last=False``: none), as one
        AXI DMA MM2S transfer; a started call waiting for input runs when it has enough."""
        raw = _as_bytes(data)
        if not raw:
            raise SimError("push_input: an empty transfer (the AXI DMA cannot send 0 bytes)")
        with self._lock:
            self._need_lib()
            base = len(self._in)
            self._in += raw
            if last:
                self._in_last.append(base + len(raw) - 1)
            self._try_run()

    def input_queued(self) -> int:
        """Input bytes queued and not read by the engine yet."""
        return len(self._in)

    def output_available(self) -> int:
        """Output bytes the engine produced that nobody took yet."""
        return len(self._out)

    def output_last_positions(self) -> list[int]:
        """Positions (from the head of the output FIFO) of the queued bytes that carry TLAST."""
        return list(self._out_last)

    def pop_output(self, nbytes: int, *, stop_at_last: bool = True, with_last: bool = False):
        """Take up to ``nbytes`` output bytes (fewer when fewer are queued, and, with ``stop_at_last``,
        ending at the first byte carrying TLAST, as an S2MM transfer does). ``with_last``: return
        (bytes, whether the final byte taken carries TLAST)."""
        with self._lock:
            k = min(int(nbytes), len(self._out))
            if stop_at_last and self._out_last and self._out_last[0] < k:
                k = self._out_last[0] + 1
            data = bytes(self._out[:k])
            del self._out[:k]
            was_last = bool(self._out_last) and self._out_last[0] == k - 1 if k else False
            self._out_last = [p - k for p in self._out_last if p >= k]
            return (data, was_last) if with_last else data

    def clear_streams(self) -> None:
        """Drop the queued input and output bytes and any posted receive (a DMA reset)."""
        with self._lock:
            self._in.clear()
            self._in_last.clear()
            self._out.clear()
            self._out_last.clear()
            self._recv = None

    # ---- AXI DMA (simple mode), for the sim backend
    def dma_send(self, buf, nbytes: int) -> None:
        """MM2S: the first ``nbytes`` DDR bytes of ``buf`` (a SimBuffer or a physical address) into the input
        stream, TLAST on the final byte."""
        nbytes = int(nbytes)
        if not 0 < nbytes <= DMA_MAX_BYTES:
            raise SimError(f"dma_send: length {nbytes} outside 1..{DMA_MAX_BYTES} (the DMA's 26-bit length)")
        self.push_input(self.mem_read(_addr(buf), nbytes))

    def dma_recv(self, buf, nbytes: int) -> None:
        """S2MM: post one receive of up to ``nbytes`` bytes into ``buf``'s DDR; it completes at TLAST or
        when full (``dma_wait``)."""
        nbytes = int(nbytes)
        if not 0 < nbytes <= DMA_MAX_BYTES:
            raise SimError(f"dma_recv: length {nbytes} outside 1..{DMA_MAX_BYTES} (the DMA's 26-bit length)")
        addr = _addr(buf)
        with self._lock:
            self._span(addr, nbytes, "dma_recv")
            if self._recv is not None and not self._recv.done:
                raise SimError("dma_recv: a receive is already posted (simple mode: one transfer at a time)")
            self._recv = _Recv(addr, nbytes)
            self._service_recv()

    def _service_recv(self) -> None:
        r = self._recv
        if r is None or r.done:
            return
        while r.got < r.nbytes and self._out:
            chunk, last = self.pop_output(r.nbytes - r.got, with_last=True)
            reg, off = self._span(r.addr + r.got, len(chunk), "dma_recv")
            reg.ddr[off: off + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            r.got += len(chunk)
            if last:
                r.last = True
                break
        if r.last or r.got == r.nbytes:
            r.done = True

    def dma_wait(self, timeout: Optional[float] = None) -> int:
        """Wait for the posted receive (sends complete as they are pushed); returns the bytes received.
        SimTimeout when it cannot complete (``timeout`` is not waited: nothing runs in the background);
        SimError when the buffer filled before TLAST (DMAIntErr on the hardware)."""
        with self._lock:
            r = self._recv
            if r is None:
                return 0
            if not r.done:
                raise SimTimeout(f"the DMA receive got {r.got} of {r.nbytes} bytes: {self._why()}")
            self._recv = None
            self.dma_received = r.got
            if not r.last:
                raise SimError(f"the DMA receive buffer ({r.nbytes} bytes) filled before TLAST: the engine's "
                               "output packet is longer (DMAIntErr on the hardware)")
            return r.got

    def _why(self) -> str:
        if self._running:
            n = self._latched[0]
            return (f"the engine waits for input ({len(self._in)} of {self._need(n)} bytes for N_IMAGES={n} "
                    "queued, no TLAST)")
        if self.calls == 0:
            return "the engine was never started"
        st = self._out_regs[regmap.STATUS]
        n = self.last_call.get("n_images")
        return (f"the engine is idle and produced no more output (last call: N_IMAGES={n}, "
                f"STATUS 0x{st:04x}: {regmap.status_message(st)})")


def _as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    arr = np.ascontiguousarray(np.asarray(data))
    return arr.view(np.uint8).tobytes() if arr.size else b""


def _addr(buf) -> int:
    if isinstance(buf, (int, np.integer)):
        return int(buf)
    addr = getattr(buf, "physical_address", None)
    if addr is None:
        raise SimError(f"not a device buffer: {type(buf).__name__} has no physical_address")
    return int(addr)


# --------------------------------------------------------------------------- the sim backend

class SimBackend(Backend):
    """The Accelerator's backend on a SimDevice (``Accelerator.open(path, backend="sim")``).

    Options: ``device`` (a ready SimDevice, e.g. to share or inspect it; not closed by ``close``),
    ``cache_dir`` and ``coherent`` (passed to SimDevice)."""

    name = "sim"

    def __init__(self, bundle, *, device: Optional[SimDevice] = None, cache_dir=None, coherent: bool = False):
        self.bundle = _as_bundle(bundle)
        self._own = device is None
        self.device = device if device is not None else SimDevice(self.bundle, cache_dir=cache_dir, coherent=coherent)

    def describe(self) -> str:
        return f"sim (C-simulation of the bundle's engine, {self.device.library_path.name} via g++)"

    def alloc(self, nbytes: int) -> SimBuffer:
        return self.device.alloc(int(nbytes))

    def write_reg(self, name: str, value: int) -> None:
        self.device.write(self.offset(name), value)

    def read_reg(self, name: str) -> int:
        return self.device.read(self.offset(name))

    def wait_done(self, timeout: float, what: str) -> None:
        # the call ran at ap_start (or waits for input that nothing else will bring): no polling
        if self.device.read(regmap.CTRL) & regmap.CTRL_AP_DONE:
            return
        raise AcceleratorTimeout(f"{what}: the engine did not finish: {self.device._why()}")

    def dma_send(self, buf, nbytes: int) -> None:
        try:
            self.device.dma_send(buf, nbytes)
        except SimError as e:
            raise AcceleratorError(f"DMA send: {e}") from None

    def dma_recv(self, buf, nbytes: int) -> None:
        try:
            self.device.dma_recv(buf, nbytes)
        except SimError as e:
            raise AcceleratorError(f"DMA receive: {e}") from None

    def dma_wait(self, timeout: float) -> None:
        try:
            self.device.dma_wait(timeout)
        except SimTimeout as e:
            raise AcceleratorTimeout(f"DMA: {e}") from None
        except SimError as e:
            raise AcceleratorError(f"DMA: {e}") from None

    def recover(self) -> None:
        self.device.clear_streams()

    def close(self) -> None:
        if self._own:
            self.device.close()
