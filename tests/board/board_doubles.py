"""TEST DOUBLES for running the real PYNQ code (pynq 3.1.2, also 4.0: Overlay, DefaultIP binding, MMIO, allocate,
PynqBuffer, lib.dma.DMA) on an x86 machine with no board.

* ``SimPynqDevice``: a ``pynq.Device`` (pynq's device abstraction, the one seam pynq offers for other
  hardware: its Zynq ``EmbeddedDevice`` goes through /dev/mem and XRT). It offers the capabilities
  Overlay, MMIO and allocate use -- ``REGISTER_RW`` (``read_registers`` / ``write_registers``), the
  metadata of a bitstream (``get_bitfile_metadata``: pynq's own ``RuntimeMetadataParser`` over the
  .hwh next to the .bit, as ``EmbeddedDevice`` does), ``allocate`` / ``flush`` / ``invalidate``,
  ``download`` -- and maps the address windows the .hwh assigns:
    - the engine's s_axi_control window onto ``host.sim.SimDevice.read`` / ``write`` (the bundle's own
      engine C++, compiled with g++);
    - the AXI DMA's register window onto ``AxiDmaModel``, a register-level model of the AXI DMA in
      direct-register (simple) mode (PG021), which moves bytes with ``SimDevice.mem_read`` /
      ``push_input`` (MM2S) and ``pop_output`` / ``mem_write`` (S2MM);
    - DDR: ``allocate`` places buffers in the SimDevice's simulated DDR (``SimDevice.alloc``), and the
      returned ``pynq.buffer.PynqBuffer`` is the CPU's view of it: the SimDevice is NOT coherent, so
      ``flush`` / ``invalidate`` copy between the CPU view and DDR, and a missing one shows, as HP0 on
      the board does.
  Everything else is an error (an access outside every window raises), so the double cannot hide a
  wrong address.
* Variants for the error paths: ``StuckDmaDevice`` (one DMA channel never reports idle),
  ``PatchedHashDevice`` (the CONFIG_HASH register reads another engine's hash), ``DdrBitFlipDevice``
  (a bit of the parameter image flips in DDR before the load call reads it); and
  ``CountingEngineDevice``: the board's REAL_CYCLES counter, which C-simulation lacks, as a planted count.
* ``with_bitstream(bundle_dir, out_dir)``: a copy of a deploy bundle with a derived ``vqhls.hwh``
  (tests/board/fixtures/derive_hwh.py) and a dummy ``vqhls.bit`` added to its manifest, because no
  Vivado ran here. The bitstream is never loaded anywhere: the double's ``download`` only parses its
  header as PYNQ does before handing a .bit to the FPGA manager.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pynq
from pynq.buffer import PynqBuffer
from pynqmetadata.frontends import Metadata
from pynqmetadata.views.runtime import RuntimeMetadataParser

from engine_io import regmap
from host.pynq_backend import ENGINE_VLNV_PREFIX
from host.sim import SimDevice, SimError

_HERE = Path(__file__).resolve().parent
REPO = _HERE.parents[1]


def _load_derive_hwh():
    spec = importlib.util.spec_from_file_location("vqhls_board_derive_hwh", _HERE / "fixtures" / "derive_hwh.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


derive_hwh = _load_derive_hwh()

# --------------------------------------------------------------------------- AXI DMA (PG021), simple mode
MM2S, S2MM = 0x00, 0x30                    # channel register blocks (pynq.lib.dma: _offset 0 / 0x30)
DMACR, DMASR, ADDR_LO, ADDR_HI, LENGTH = 0x00, 0x04, 0x18, 0x1C, 0x28
# DMACR bits
RS, RESET = 0x1, 0x4
# DMASR bits
HALTED, IDLE, SGINCLD, DMAINTERR, DMASLVERR, DMADECERR, IOC_IRQ, DLY_IRQ, ERR_IRQ = (
    0x1, 0x2, 0x8, 0x10, 0x20, 0x40, 0x1000, 0x2000, 0x4000)
# the register names of the same offsets in the AXI DMA's .hwh (checked against the parsed .hwh by a test)
DMA_REGISTER_NAMES = {
    "MM2S_DMACR": MM2S + DMACR, "MM2S_DMASR": MM2S + DMASR, "MM2S_SA": MM2S + ADDR_LO,
    "MM2S_SA_MSB": MM2S + ADDR_HI, "MM2S_LENGTH": MM2S + LENGTH,
    "S2MM_DMACR": S2MM + DMACR, "S2MM_DMASR": S2MM + DMASR, "S2MM_DA": S2MM + ADDR_LO,
    "S2MM_DA_MSB": S2MM + ADDR_HI, "S2MM_LENGTH": S2MM + LENGTH,
}
LENGTH_BITS = 26                           # c_sg_length_width of the block design


@dataclass
class _Channel:
    name: str
    cr: int = 0
    halted: bool = True
    idle: bool = False           # simple mode: 0 after reset until a transfer completes
    errors: int = 0
    irq: int = 0
    addr: int = 0
    length: int = 0              # the LENGTH register (S2MM: bytes received once complete)
    busy: bool = False
    got: int = 0
    pending_bytes: int = 0       # MM2S: bytes of the transfer the engine has not read yet
    queued_before: int = 0

    def status(self) -> int:
        sr = (HALTED if self.halted else 0) | (IDLE if (self.idle and not self.halted) else 0)
        return sr | self.errors | self.irq


class AxiDmaModel:
    """The AXI DMA's registers in direct-register mode, moving bytes through a SimDevice.

    MM2S: writing LENGTH reads that many bytes of DDR at SA and pushes them into the engine's input
    stream as one packet (TLAST on the last byte); the channel turns idle when the engine has read the
    whole packet (the stream back-pressures: a packet the engine does not read keeps MM2S busy).
    S2MM: writing LENGTH posts a receive at DA; whenever DMASR is read, the engine's output bytes are
    moved into DDR up to TLAST (then idle, LENGTH = bytes received) or until LENGTH bytes arrived
    without TLAST (DMAIntErr, halted, as PG021 describes). Errors (DMADecErr on an address outside
    DDR, DMAIntErr on a zero length) halt the channel; reset (DMACR bit 2) resets both channels."""

    def __init__(self, sim: SimDevice):
        self.sim = sim
        self.ch = {MM2S: _Channel("MM2S"), S2MM: _Channel("S2MM")}
        self.resets = 0
        self.transfers = {MM2S: 0, S2MM: 0}

    # ---- register access
    def read(self, offset: int) -> int:
        base, reg = (S2MM, offset - S2MM) if offset >= S2MM else (MM2S, offset)
        c = self.ch[base]
        if reg == DMASR:
            self._service(base)
            return c.status()
        if reg == DMACR:
            return c.cr
        if reg == ADDR_LO:
            return c.addr & 0xFFFFFFFF
        if reg == ADDR_HI:
            return (c.addr >> 32) & 0xFFFFFFFF
        if reg == LENGTH:
            return c.length
        return 0

    def write(self, offset: int, value: int) -> None:
        base, reg = (S2MM, offset - S2MM) if offset >= S2MM else (MM2S, offset)
        c = self.ch[base]
        if reg == DMACR:
            if value & RESET:
                self.reset()
                return
            c.cr = value & ~RESET
            c.halted = not (value & RS)
            if c.halted:
                c.busy = False
        elif reg == DMASR:
            c.irq &= ~(value & (IOC_IRQ | DLY_IRQ | ERR_IRQ))     # write 1 to clear
        elif reg == ADDR_LO:
            c.addr = (c.addr & ~0xFFFFFFFF) | value
        elif reg == ADDR_HI:
            c.addr = (c.addr & 0xFFFFFFFF) | (value << 32)
        elif reg == LENGTH:
            self._start(base, value & ((1 << LENGTH_BITS) - 1))

    def reset(self) -> None:
        """Soft reset: both channels halted, errors cleared, the stream FIFOs flushed."""
        self.resets += 1
        for base in (MM2S, S2MM):
            self.ch[base] = _Channel(self.ch[base].name)
        self.sim.clear_streams()

    # ---- transfers
    def _error(self, c: _Channel, bit: int) -> None:
        c.errors |= bit
        c.irq |= ERR_IRQ
        c.halted = True
        c.busy = False

    def _start(self, base: int, nbytes: int) -> None:
        c = self.ch[base]
        if c.halted or c.busy:
            return                       # ignored by the hardware (a transfer needs RS=1 and idle)
        c.length = nbytes
        if nbytes == 0:
            self._error(c, DMAINTERR)
            return
        c.idle = False
        c.busy = True
        self.transfers[base] += 1
        if base == MM2S:
            try:
                data = self.sim.mem_read(c.addr, nbytes)
            except SimError:
                self._error(c, DMADECERR)
                return
            c.queued_before = self.sim.input_queued()
            c.pending_bytes = nbytes
            self.sim.push_input(data)            # may run an engine call that waited for its input
        else:
            c.got = 0
        self._service(base)

    def _service(self, base: int) -> None:
        c = self.ch[base]
        if not c.busy:
            return
        if base == MM2S:
            # the packet sits at the tail of the input FIFO: read whole when nothing of it is queued
            if self.sim.input_queued() == 0:
                self._complete(c)
            return
        while c.got < c.length and self.sim.output_available():
            chunk, last = self.sim.pop_output(c.length - c.got, with_last=True)
            try:
                self.sim.mem_write(c.addr + c.got, chunk)
            except SimError:
                self._error(c, DMADECERR)
                return
            c.got += len(chunk)
            if last:
                c.length = c.got
                self._complete(c)
                return
        if c.got == c.length and c.length:
            self._error(c, DMAINTERR)            # buffer full before TLAST

    def _complete(self, c: _Channel) -> None:
        c.busy = False
        c.idle = True
        c.irq |= IOC_IRQ


# --------------------------------------------------------------------------- the pynq Device double
class SimPynqDevice(pynq.Device):
    """TEST DOUBLE: a ``pynq.Device`` whose engine, AXI DMA and DDR are a ``host.sim.SimDevice``
    (module docstring). No ``_probe_``: pynq never enumerates it; pass it as ``device=`` (or make it
    the active device)."""

    def __init__(self, sim: SimDevice, tag: str = "sim_pynq0"):
        super().__init__(tag)
        self.sim = sim
        self.name = "SimPynqDevice"
        self.capabilities = {"REGISTER_RW": True, "MEMORY_MAPPED": False, "CALLABLE": False}
        self.windows: list[tuple[int, int, str, object]] = []   # (base, size, ip name, model)
        self.dma: Optional[AxiDmaModel] = None
        self.downloads: list[str] = []
        self.flushes = 0
        self.invalidates = 0
        self.bitfile_name = None
        self.timestamp = None

    # ---- metadata: pynq's own parser over the .hwh next to the .bit (EmbeddedDevice's path, less XRT)
    def get_bitfile_metadata(self, bitfile_name: str, partial: bool = False):
        hwh = Path(bitfile_name).with_suffix(".hwh")
        if not hwh.is_file():
            raise RuntimeError(f"Unable to find metadata for bitstream (no {hwh})")
        parser = RuntimeMetadataParser(Metadata(input=hwh))
        if not partial:
            parser.refresh_hierarchy_dict()
        self._map(parser.ip_dict)
        return parser

    def _map(self, ip_dict) -> None:
        self.windows = []
        for name, d in ip_dict.items():
            if "phys_addr" not in d:
                continue
            if str(d["type"]).startswith(ENGINE_VLNV_PREFIX):
                model = self._engine_window()
            elif str(d["type"]).startswith("xilinx.com:ip:axi_dma:"):
                self.dma = self._dma_model()
                model = self.dma
            else:
                continue
            self.windows.append((int(d["phys_addr"]), int(d["addr_range"]), name, model))

    def _engine_window(self):
        return _EngineWindow(self)

    def _dma_model(self) -> AxiDmaModel:
        return AxiDmaModel(self.sim)

    def _window(self, address: int, length: int):
        for base, size, name, model in self.windows:
            if base <= address and address + length <= base + size:
                return name, model, address - base
        raise RuntimeError(f"SimPynqDevice: no IP at 0x{address:08x} (+{length}): the .hwh maps "
                           + ", ".join(f"{n} 0x{b:08x}+0x{s:x}" for b, s, n, _ in self.windows))

    # ---- REGISTER_RW (pynq.MMIO through its access hook)
    def read_registers(self, address: int, length: int) -> bytes:
        if length != 4 or address % 4:
            raise RuntimeError(f"SimPynqDevice: {length}-byte read at 0x{address:08x} (AXI-Lite: aligned 32-bit)")
        _, model, off = self._window(address, length)
        return struct.pack("<I", model.read(off) & 0xFFFFFFFF)

    def write_registers(self, address: int, data: bytes) -> None:
        if len(data) % 4 or address % 4:
            raise RuntimeError(f"SimPynqDevice: {len(data)}-byte write at 0x{address:08x} (aligned 32-bit words)")
        for i in range(0, len(data), 4):
            _, model, off = self._window(address + i, 4)
            model.write(off, struct.unpack_from("<I", data, i)[0])

    # ---- memory: PynqBuffers over the SimDevice's non-coherent DDR
    def allocate(self, shape, dtype, **kwargs) -> PynqBuffer:
        dt = np.dtype(dtype)
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        bo = self.sim.alloc(max(nbytes, 1))                     # a SimBuffer: its CPU view + its DDR copy
        return PynqBuffer(shape, dt, buffer=bo, device=self, bo=bo,
                          device_address=bo.physical_address, coherent=False)

    def flush(self, bo, offset, ptr, size) -> None:
        self.flushes += 1
        bo.flush()

    def invalidate(self, bo, offset, ptr, size) -> None:
        self.invalidates += 1
        bo.invalidate()

    # ---- bitstream download (Overlay(download=True)): parse the .bit as PYNQ does, then PYNQ's bookkeeping
    def download(self, bitstream, parser=None) -> None:
        from pynq.pl_server.embedded_device import bit2bin

        bit2bin(Path(bitstream.bitfile_name).read_bytes())      # the .bit -> .bin PYNQ hands the FPGA manager
        self.downloads.append(bitstream.bitfile_name)
        self.post_download(bitstream, parser, self.name)


class _EngineWindow:
    """The engine's s_axi_control window: SimDevice registers (offsets below regmap.ADDRESS_RANGE)."""

    def __init__(self, dev: SimPynqDevice):
        self.dev = dev

    def read(self, off: int) -> int:
        if off >= regmap.ADDRESS_RANGE:
            raise RuntimeError(f"SimPynqDevice: engine register 0x{off:x} beyond its "
                               f"{regmap.ADDRESS_RANGE:#x}-byte map")
        return self.dev.sim.read(off)

    def write(self, off: int, value: int) -> None:
        if off >= regmap.ADDRESS_RANGE:
            raise RuntimeError(f"SimPynqDevice: engine register 0x{off:x} beyond its "
                               f"{regmap.ADDRESS_RANGE:#x}-byte map")
        self.dev.sim.write(off, value)


# --------------------------------------------------------------------------- error-path variants
class _StuckDma(AxiDmaModel):
    def __init__(self, sim, stuck: str):
        super().__init__(sim)
        self.stuck = stuck            # "MM2S" / "S2MM" / None

    def read(self, offset: int) -> int:
        v = super().read(offset)
        base = S2MM if offset >= S2MM else MM2S
        if self.stuck == self.ch[base].name and offset - base == DMASR and self.transfers[base]:
            v &= ~IDLE                 # the transfer never reports done
        return v


class StuckDmaDevice(SimPynqDevice):
    """TEST DOUBLE: like SimPynqDevice, but DMA channel ``stuck`` ("MM2S" or "S2MM") never goes idle once
    it has started a transfer (``dev.dma.stuck = None`` heals it)."""

    def __init__(self, sim: SimDevice, stuck: str, **kw):
        self._stuck = stuck
        super().__init__(sim, **kw)

    def _dma_model(self) -> AxiDmaModel:
        return _StuckDma(self.sim, self._stuck)


class _PatchedHashWindow(_EngineWindow):
    def __init__(self, dev, value: int):
        super().__init__(dev)
        self.value = value

    def read(self, off: int) -> int:
        v = super().read(off)
        return self.value if off == regmap.CONFIG_HASH else v


class PatchedHashDevice(SimPynqDevice):
    """TEST DOUBLE: the engine's CONFIG_HASH register reads ``value`` (a bitstream of another engine)."""

    def __init__(self, sim: SimDevice, value: int, **kw):
        self._value = value
        super().__init__(sim, **kw)

    def _engine_window(self):
        return _PatchedHashWindow(self, self._value)


class _BitFlipWindow(_EngineWindow):
    def __init__(self, dev, byte: int):
        super().__init__(dev)
        self.byte = byte
        self.flipped = False

    def write(self, off: int, value: int) -> None:
        sim = self.dev.sim
        if off == regmap.CTRL and value & regmap.CTRL_AP_START and sim.read(regmap.N_IMAGES) == 0:
            addr = (sim.read(regmap.PARAMS_HI) << 32 | sim.read(regmap.PARAMS_LO)) + self.byte
            b = sim.mem_read(addr, 1)[0]
            sim.mem_write(addr, bytes([b ^ 0x10]))               # one bit flips in DDR
            self.flipped = True
        super().write(off, value)


class DdrBitFlipDevice(SimPynqDevice):
    """TEST DOUBLE: before each load call, one bit of the parameter image flips in DDR (byte ``byte``)."""

    def __init__(self, sim: SimDevice, byte: int = 100, **kw):
        self._byte = byte
        super().__init__(sim, **kw)

    def _engine_window(self):
        return _BitFlipWindow(self, self._byte)


class _CountingWindow(_EngineWindow):
    """The engine's registers with REAL_CYCLES as the hardware has it: the C-simulated engine has no
    counter (it answers all ones), so this window plays one, answering ``cycles`` per call at the words
    Vitis gives the top's last argument (0x48 low, 0x4C high, 0x50 ap_vld: written out here, not taken
    from engine_io.regmap, so a host reading another offset gets something else)."""

    LO, HI, VLD = 0x48, 0x4C, 0x50

    def __init__(self, dev, cycles: int):
        super().__init__(dev)
        self.cycles = cycles
        self.reads: list[int] = []

    def read(self, off: int) -> int:
        v = super().read(off)          # the sim's own register (range checks, clear-on-read)
        if off in (self.LO, self.HI):
            self.reads.append(off)
            return (self.cycles >> (32 if off == self.HI else 0)) & 0xFFFFFFFF
        return v


class CountingEngineDevice(SimPynqDevice):
    """TEST DOUBLE: like SimPynqDevice, with a real cycle counter that reports ``cycles`` for every call
    (a planted count: what the board's counter would latch)."""

    def __init__(self, sim: SimDevice, cycles: int, **kw):
        self._cycles = cycles
        super().__init__(sim, **kw)

    def _engine_window(self):
        self.counting = _CountingWindow(self, self._cycles)
        return self.counting


# --------------------------------------------------------------------------- a bundle with a "bitstream"
def dummy_bitstream(design: str = "vqhls_bd_wrapper", part: str = "7z020clg400") -> bytes:
    """DUMMY .bit: a Xilinx bitstream header (the fields pynq's parse_bit_header reads) around a payload
    that is not a configuration (the text 'vqhls test data, not a bitstream', padded). Never loaded."""
    def field(key: bytes, text: str) -> bytes:
        raw = text.encode() + b"\0"
        return key + struct.pack(">H", len(raw)) + raw

    payload = b"vqhls test data, not a bitstream".ljust(64, b"\0")
    head = struct.pack(">H", 9) + bytes.fromhex("0ff00ff00ff00ff000") + struct.pack(">H", 1)
    head += field(b"a", f"{design};UserID=0XFFFFFFFF;Version=2023.2") + field(b"b", part)
    head += field(b"c", "2026/01/01") + field(b"d", "00:00:00")
    return head + b"e" + struct.pack(">I", len(payload)) + payload


def with_bitstream(bundle_dir: Path, out_dir: Path, hwh: Optional[bytes] = None) -> Path:
    """A copy of the deploy bundle at ``bundle_dir`` in ``out_dir`` with ``vqhls.hwh`` (derived from
    pynqmetadata's real resizer.hwh by fixtures/derive_hwh.py, or ``hwh``) and a dummy ``vqhls.bit``,
    listed in its manifest as flow.bundle would list the Vivado outputs ("bitstream" and "files"). The
    derived .hwh's engine IP carries the bundle's config hash, as Vitis HLS exports it."""
    from flow import bundle as bundle_mod

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(bundle_dir, out_dir)
    files = {
        bundle_mod.HWH: (derive_hwh.derive(config_hash=json.loads((out_dir / bundle_mod.MANIFEST).read_text())
                                           ["config_hash"]) if hwh is None else hwh),
        bundle_mod.BITSTREAM: dummy_bitstream(),
    }
    manifest = json.loads((out_dir / bundle_mod.MANIFEST).read_text())
    for rel, blob in files.items():
        (out_dir / rel).write_bytes(blob)
        manifest["files"][rel] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    manifest["files"] = dict(sorted(manifest["files"].items()))
    manifest["bitstream"] = {"bit": bundle_mod.BITSTREAM, "hwh": bundle_mod.HWH}
    (out_dir / bundle_mod.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    bundle_mod.load(out_dir)          # verifies, as the Accelerator will
    return out_dir
