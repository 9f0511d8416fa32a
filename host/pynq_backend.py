"""The PYNQ backend of ``host.accelerator``: the engine IP and the AXI DMA of a vqhls overlay.

    from host.accelerator import Accelerator

    acc = Accelerator.open("deploy", backend="pynq")                  # pynq.Overlay("deploy/vqhls.bit")
    acc = Accelerator.open("deploy", backend="pynq", overlay=ol)      # an Overlay you loaded yourself

The block design (``hls_templates/tcl/vivado.tcl.j2``): the engine ``vqhls:vqhls:vqhls_engine:1.0``
with ``s_axi_control`` on the PS's GP0 and ``m_axi_gmem`` on HP0, an AXI DMA in simple mode with
8-bit streams (MM2S -> ``in_stream``, ``out_stream`` -> S2MM), its masters on HP0 too. HP0 is not
cache coherent: a buffer is flushed before the engine or the DMA reads it and invalidated after they
write it (``pynq.allocate`` buffers; the Accelerator flushes the parameter image and the inputs,
pynq's DMA channel flushes what it sends and invalidates what it receives).

* ``VqhlsEngineDriver``: the ``DefaultIP`` driver PYNQ binds to the engine (``bindto``): registers by
  their ``engine_io.regmap`` names (``read_reg("STATUS")``, ``write_reg("PARAMS", addr)`` for the 64-bit
  ones), ``start()``, ``done``/``idle``, and a check of the .hwh's register layout against
  ``engine_io.regmap``.
* ``PynqBackend``: the ``Backend`` the Accelerator drives. Every wait has a deadline (pynq's own
  ``DMAChannel.wait()`` and ``start()`` spin forever); a timeout raises ``AcceleratorTimeout`` naming
  the engine call or the DMA channel that hung.

Imports pynq at the top (``host.accelerator`` imports this module only for ``backend="pynq"``); where
pynq is missing, the import fails with one line saying how to get it.

pynq versions. The PYNQ-Z2's images are v2.7 (Python 3.8), v3.0 and v3.1 (Python 3.10), all numpy 1.x;
pynq 3.1.x is its last release (pynq 4 drops the Zynq-7000 boards: its wheel no longer ships their
``pynq.lib`` parts). What this module uses is the same from 2.7 to 4.0: ``Overlay(bit, download=,
device=)``, ``ip_dict`` entries with ``type``, ``phys_addr``, ``addr_range``, ``parameters`` and
``registers`` (``address_offset``) and the PS's ``PCW_*`` parameters (2.7 parses the .hwh itself,
pynq.pl_server.hwh_parser; 3.x and 4.x through pynqmetadata), ``DefaultIP(description)`` with ``mmio``
and ``_registers``, ``allocate(shape, dtype, target=)``, and ``pynq.lib.dma.DMA`` in simple mode
(``_SDMAChannel``: ``transfer(buf, nbytes=)``, ``wait()``, ``idle``, ``error``, ``transferred``,
``_mmio``, ``_offset``, ``_max_size``, ``_first_transfer``, ``_active_buffer``; 3.x also clears
``_active_buffer`` in ``wait()``, 4.0 changes only the scatter-gather channel). ``PynqBackend`` refuses,
with one line, a pynq older than 2.7 (never tested) and pynq 4 or newer on a Zynq-7000 CPU (armv7l).
``.venv-board`` (``make board-env``) tests pynq 3.1.2; pynq needs numpy<2, hence its own environment.
"""
from __future__ import annotations

import platform
import re
import time
from typing import Optional

import numpy as np

PYNQ_MISSING = ("pynq not installed: on the board use the image's pynq (2.7 to 3.1.x); elsewhere "
                "pip install vqhls[board] in an environment with numpy<2 (make board-env)")

try:
    import pynq
    from pynq import DefaultIP
    from pynq.lib.dma import DMA
except ModuleNotFoundError as _e:
    if _e.name and (_e.name == "pynq" or _e.name.startswith("pynq")):
        raise ModuleNotFoundError(PYNQ_MISSING, name="pynq") from None
    raise
except Exception as _e:   # pynq present but broken here (numpy 2: pynq pins numpy<2; pycparser>=2.23)
    raise ModuleNotFoundError(f"{PYNQ_MISSING} [import pynq failed with numpy {np.__version__}: "
                              f"{type(_e).__name__}: {_e}]", name="pynq") from _e

from engine_io import hwh as _hwh
from engine_io import regmap
from host.backend import AcceleratorError, AcceleratorTimeout, Backend, _load_bundle

# The engine IP as Vitis HLS exports it: engine_io.hwh.engine_vlnv(config hash), vqhls:vqhls:vqhls_engine_<hash>:1.0,
# one VLNV per EngineConfig (so VqhlsEngineDriver is bound per hash: engine_driver()). The block design's
# cells: flow/hls/vendor.py's ENGINE_CELL, DMA_CELL (not imported: the flow does not run on the board).
ENGINE_VLNV_PREFIX = f"{_hwh.IP_VENDOR}:{_hwh.IP_LIBRARY}:{_hwh.IP_NAME_PREFIX}"
ENGINE_CELL = "vqhls_engine_0"
DMA_CELL = "axi_dma_0"
DMA_VLNV_PREFIX = "xilinx.com:ip:axi_dma:"
STREAM_BITS = 8                 # vivado.tcl: c_m_axis_mm2s_tdata_width / c_s_axis_s2mm_tdata_width
DEFAULT_TIMEOUT = 5.0

# AXI DMA (PG021) direct-register mode: per channel at +0x00 (MM2S) / +0x30 (S2MM), as pynq.lib.dma
DMACR, DMASR, LENGTH = 0x00, 0x04, 0x28
DMACR_RS, DMACR_RESET = 0x1, 0x4
DMASR_HALTED, DMASR_IDLE = 0x1, 0x2
DMASR_ERRORS = 0x70             # DMAIntErr | DMASlvErr | DMADecErr

# pynq releases this host drives (module docstring): 2.7 (the oldest PYNQ-Z2 image tested) up to 3.1.x,
# the board's last; 4.x only off Zynq-7000 (the board doubles of tests/board on x86)
PYNQ_OLDEST = (2, 7)
ZYNQ_7000_ARCH = "armv7l"       # platform.machine() on a Zynq-7000's Cortex-A9 (pynq.ps.ZYNQ_ARCH)
PYNQ_Z2_PIN = "pynq==3.1.2"     # the `board` extra of pyproject.toml

_REGS = {r.name: r for r in regmap.REGISTERS}
_DMASR_ERROR_TEXT = (
    (0x10, "DMA internal error (DMAIntErr: a zero length, or a receive buffer that filled before the "
           "stream's TLAST)"),
    (0x20, "DMA slave error (DMASlvErr: the memory-mapped side refused the access)"),
    (0x40, "DMA decode error (DMADecErr: an address outside the DDR the DMA can reach)"),
)


def _dma_errors(sr: int) -> str:
    return "; ".join(text for bit, text in _DMASR_ERROR_TEXT if sr & bit) or f"DMA error bits 0x{sr & DMASR_ERRORS:02x}"


def _hwh_names(r: regmap.Register) -> list[tuple[str, int]]:
    """How Vitis HLS names the register words of an argument in the .hwh: ``n_images``; a 64-bit one
    as ``params_1`` / ``params_2``; an output scalar's control word ``status_ctrl``."""
    words = r.width // 32
    names = [(r.port if words == 1 else f"{r.port}_{i + 1}", r.offset + 4 * i) for i in range(words)]
    if r.access == "ro":
        names.append((f"{r.port}_ctrl", r.offset + 4 * words))
    return names


def pynq_version_problem(version: str, machine: str) -> Optional[str]:
    """None when this host can drive pynq ``version`` on a CPU ``machine`` (``platform.machine()``), else
    one line saying why not and what to install."""
    m = re.match(r"(\d+)\.(\d+)", str(version))
    if m is None:
        return (f"pynq version {version!r} is not a release number: install a PYNQ-Z2 release "
                f"({PYNQ_Z2_PIN}, or the board image's own pynq 2.7 to 3.1.x)")
    release = (int(m.group(1)), int(m.group(2)))
    if release < PYNQ_OLDEST:
        return (f"pynq {version} is older than {PYNQ_OLDEST[0]}.{PYNQ_OLDEST[1]}, the oldest release this host "
                f"supports: use a PYNQ-Z2 image v2.7 or newer (v3.1 recommended), or pip install '{PYNQ_Z2_PIN}'")
    if release[0] >= 4 and machine == ZYNQ_7000_ARCH:
        return (f"pynq {version} does not support Zynq-7000 boards such as the PYNQ-Z2 (pynq 4 dropped them): "
                f"use the board image's pynq 3.1.x, or pip install '{PYNQ_Z2_PIN}' 'numpy<2'")
    return None


def _word_offset(name: str) -> int:
    """Byte offset of a 32-bit register word by its engine_io.regmap name ("STATUS", "PARAMS_LO", ...)."""
    value = getattr(regmap, name, None)
    if (not isinstance(value, int) or name.startswith(("CTRL_", "ERR_"))
            or name in ("OK", "STATUS_OP_NONE", "ADDRESS_RANGE") or not 0 <= value < regmap.ADDRESS_RANGE):
        raise KeyError(f"{name!r} is not a register of engine_io.regmap")
    return value


class VqhlsEngineDriver(DefaultIP):
    """PYNQ driver of the vqhls engine IP: registers by ``engine_io.regmap`` name.

    ``read_reg(name)`` / ``write_reg(name, value)`` take a register of ``regmap.REGISTERS`` ("CTRL",
    "N_IMAGES", "PARAMS", "CONFIG_HASH", "CYCLES", "STATUS", "REAL_CYCLES", ...; a 64-bit one is read /
    written as its two words, low first) or one 32-bit word ("PARAMS_LO", "CYCLES_HI", "STATUS_CTRL",
    ...). Reading CTRL clears ap_done (clear-on-read, as Vitis HLS builds it). CYCLES is the engine's
    cycle MODEL; REAL_CYCLES its free-running counter: on the board, the MEASURED cycles of a call."""

    # no bindto: the IP's VLNV carries the EngineConfig hash; engine_driver(hash) binds a subclass to it

    def __init__(self, description):
        super().__init__(description=description)
        self.name = description.get("fullpath", ENGINE_CELL)
        self.phys_addr = int(description.get("phys_addr", 0))
        self.addr_range = int(description.get("addr_range", 0))

    # ---- registers by name
    @staticmethod
    def offset(name: str) -> int:
        r = _REGS.get(name)
        return r.offset if r is not None else _word_offset(name)

    def read_reg(self, name: str) -> int:
        r = _REGS.get(name)
        if r is not None and r.access == "wo":
            raise AcceleratorError(f"{self.name}: register {name} is write-only")
        if r is not None and r.width == 64:
            lo = int(self.mmio.read(r.offset))
            hi = int(self.mmio.read(r.offset + 4))
            return (hi << 32) | lo
        return int(self.mmio.read(self.offset(name))) & 0xFFFFFFFF

    def write_reg(self, name: str, value: int) -> None:
        r = _REGS.get(name)
        if r is not None and r.access == "ro":
            raise AcceleratorError(f"{self.name}: register {name} is read-only")
        value = int(value)
        if r is not None and r.width == 64:
            if not 0 <= value < (1 << 64):
                raise ValueError(f"{name}: {value:#x} does not fit 64 bits")
            self.mmio.write(r.offset, value & 0xFFFFFFFF)
            self.mmio.write(r.offset + 4, (value >> 32) & 0xFFFFFFFF)
            return
        if not 0 <= value < (1 << 32):
            raise ValueError(f"{name}: {value:#x} does not fit 32 bits")
        self.mmio.write(self.offset(name), value)

    # ---- control
    def start(self) -> None:
        """ap_start (one engine call; N_IMAGES and PARAMS are latched)."""
        self.mmio.write(regmap.CTRL, regmap.CTRL_AP_START)

    @property
    def ctrl(self) -> int:
        """CTRL (clears ap_done)."""
        return int(self.mmio.read(regmap.CTRL))

    @property
    def done(self) -> bool:
        return bool(self.ctrl & regmap.CTRL_AP_DONE)

    @property
    def idle(self) -> bool:
        return bool(self.ctrl & regmap.CTRL_AP_IDLE)

    def status_message(self) -> str:
        return regmap.status_message(self.read_reg("STATUS"))

    # ---- the .hwh against engine_io.regmap
    def regmap_mismatches(self) -> list[str]:
        """Where the .hwh's register block (Vitis names) disagrees with engine_io/regmap.py; [] when it agrees
        or when the .hwh carries no register list."""
        hwh = self._registers or {}
        if not hwh:
            return []
        out = []
        for r in regmap.REGISTERS:
            if r.port is None:
                continue
            for name, off in _hwh_names(r):
                got = hwh.get(name)
                if got is None:
                    out.append(f"{name} missing (engine_io.regmap: 0x{off:02x})")
                elif int(got.get("address_offset", -1)) != off:
                    out.append(f"{name} at 0x{int(got['address_offset']):02x}, engine_io.regmap says 0x{off:02x}")
        return out


_DRIVERS: dict = {}


def engine_driver(config_hash: str) -> type:
    """The VqhlsEngineDriver subclass bound (pynq ``bindto``) to the engine IP of EngineConfig hash
    ``config_hash``, made once. pynq picks an IP's driver by its VLNV when the Overlay is made: call this
    before ``pynq.Overlay(...)`` to get ``ol.vqhls_engine_0`` as this driver (PynqBackend does; for an
    Overlay made earlier it binds the driver to the IP's description itself)."""
    vlnv = _hwh.engine_vlnv(config_hash)
    cls = _DRIVERS.get(vlnv)
    if cls is None:
        cls = type(f"VqhlsEngineDriver_{config_hash}", (VqhlsEngineDriver,), {"bindto": [vlnv]})
        _DRIVERS[vlnv] = cls
    return cls


def _find_ip(overlay, prefix: str, preferred: str) -> Optional[str]:
    names = [n for n, d in overlay.ip_dict.items() if str(d.get("type", "")).startswith(prefix)]
    if not names:
        return None
    return preferred if preferred in names else sorted(names)[0]


class PynqBackend(Backend):
    """The Accelerator's backend on a PYNQ overlay (see the module docstring).

    ``overlay``: a loaded ``pynq.Overlay`` of the vqhls block design; None loads the bundle's bitstream
    (``pynq.Overlay(bundle.bit_path)``, the .hwh next to it). ``timeout``: seconds for the backend's
    own register polls (a DMA channel starting or resetting); the engine call and DMA transfer
    deadlines come from the Accelerator."""

    name = "pynq"

    def __init__(self, bundle, *, overlay=None, timeout: float = DEFAULT_TIMEOUT):
        problem = pynq_version_problem(getattr(pynq, "__version__", "unknown"), platform.machine())
        if problem is not None:
            raise AcceleratorError(problem)
        self.bundle = _load_bundle(bundle)
        self.timeout = float(timeout)
        self._closed = False
        self._pending: dict = {}
        driver = engine_driver(self.bundle.config_hash)      # before an Overlay binds its drivers
        if overlay is None:
            if not self.bundle.has_bitstream:
                raise AcceleratorError(
                    f"bundle {self.bundle.path} has no bitstream (vqhls.bit + vqhls.hwh): run the Vivado stage "
                    "(python -m flow.build where vivado is installed), pass overlay=, or use backend='sim'")
            overlay = pynq.Overlay(str(self.bundle.bit_path))
        self.overlay = overlay
        self.device = overlay.device

        want = _hwh.engine_vlnv(self.bundle.config_hash)
        eng = _find_ip(overlay, ENGINE_VLNV_PREFIX, ENGINE_CELL)
        if eng is None:
            types = sorted({str(d.get("type")) for d in overlay.ip_dict.values()})
            raise AcceleratorError(f"overlay {overlay.bitfile_name} has no vqhls engine IP ({want}; it has: "
                                   f"{', '.join(types)}): load the vqhls bitstream built with this bundle")
        got = str(overlay.ip_dict[eng].get("type"))
        if got != want:
            raise AcceleratorError(
                f"overlay {overlay.bitfile_name}: IP {eng} is {got} (engine {_hwh.hash_of_vlnv(got) or 'unknown'}), "
                f"the bundle's engine is {self.bundle.config_hash} ({want}): load the bitstream built for this "
                "bundle's EngineConfig (python -m flow.bundle add-bitstream checks the pair)")
        self.engine_vlnv = got
        self.engine = getattr(overlay, eng)
        if not isinstance(self.engine, VqhlsEngineDriver):
            # an Overlay made before engine_driver() registered the VLNV: pynq bound DefaultIP; bind ours
            self.engine = driver(dict(overlay.ip_dict[eng], device=overlay.device))
        bad = self.engine.regmap_mismatches()
        if bad:
            raise AcceleratorError(f"{eng}: the bitstream's register map differs from engine_io/regmap.py ("
                                   + "; ".join(bad) + "): use the bitstream built with this kit")

        dma = _find_ip(overlay, DMA_VLNV_PREFIX, DMA_CELL)
        if dma is None:
            raise AcceleratorError(f"overlay {overlay.bitfile_name} has no AXI DMA ({DMA_VLNV_PREFIX}*): "
                                   "not the vqhls block design")
        self.dma = getattr(overlay, dma)
        if not isinstance(self.dma, DMA):
            raise AcceleratorError(f"overlay IP {dma} ({overlay.ip_dict[dma]['type']}) is bound to "
                                   f"{type(self.dma).__name__}, not pynq.lib.dma.DMA")
        params = overlay.ip_dict[dma].get("parameters", {})
        problems = []
        if getattr(self.dma, "_sg", False):
            problems.append("scatter-gather mode (the engine expects simple mode: c_include_sg 0)")
        if self.dma.sendchannel is None or self.dma.recvchannel is None:
            problems.append("MM2S and S2MM both needed")
        for key in ("c_m_axis_mm2s_tdata_width", "c_s_axis_s2mm_tdata_width"):
            if key in params and int(params[key]) != STREAM_BITS:
                problems.append(f"{key} = {params[key]} (the engine's streams are {STREAM_BITS}-bit)")
        if problems:
            raise AcceleratorError(f"{dma}: " + "; ".join(problems))
        self.engine_name, self.dma_name = eng, dma
        self.fclk_mhz = self._fclk(overlay)

    # ---- helpers
    @staticmethod
    def _fclk(overlay) -> Optional[float]:
        """FCLK0 (the one clock of the block design) in MHz, from the PS's parameters in the .hwh."""
        for d in overlay.ip_dict.values():
            p = d.get("parameters") or {}
            for key in ("PCW_ACT_FPGA0_PERIPHERAL_FREQMHZ", "PCW_FPGA0_PERIPHERAL_FREQMHZ",
                        "PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ", "PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ"):
                if key in p:
                    try:
                        mhz = float(p[key])
                    except (TypeError, ValueError):
                        continue
                    if mhz > 0:
                        return mhz
        return None

    def _check_open(self) -> None:
        if self._closed:
            raise AcceleratorError("the PYNQ backend is closed")

    def _channel(self, which: str):
        return self.dma.sendchannel if which == "send" else self.dma.recvchannel

    def _chan_name(self, which: str) -> str:
        return (f"{self.dma_name}.sendchannel (MM2S, DDR -> engine in_stream)" if which == "send"
                else f"{self.dma_name}.recvchannel (S2MM, engine out_stream -> DDR)")

    def _dmasr(self, which: str) -> int:
        ch = self._channel(which)
        return int(ch._mmio.read(ch._offset + DMASR))

    def _dma_state(self) -> str:
        parts = []
        for which, short in (("send", "MM2S"), ("recv", "S2MM")):
            try:
                sr = self._dmasr(which)
                parts.append(f"{short} DMASR 0x{sr:04x}" + (" idle" if sr & DMASR_IDLE else "")
                             + (" halted" if sr & DMASR_HALTED else ""))
            except Exception as e:     # diagnostics only
                parts.append(f"{short} unreadable ({e})")
        return ", ".join(parts)

    # ---- Backend: buffers and registers
    def alloc(self, nbytes: int):
        """A uint8 buffer in DDR the engine and the DMA can reach (``pynq.allocate`` on the overlay's
        device; physically contiguous, cacheable: flush / invalidate around every hardware access)."""
        self._check_open()
        nbytes = int(nbytes)
        if nbytes < 1:
            raise ValueError(f"buffer size must be >= 1 byte, got {nbytes}")
        return pynq.allocate((nbytes,), dtype=np.uint8, target=self.device)

    def write_reg(self, name: str, value: int) -> None:
        self._check_open()
        self.engine.write_reg(name, value)

    def read_reg(self, name: str) -> int:
        self._check_open()
        return self.engine.read_reg(name)

    def start(self) -> None:
        self._check_open()
        self.engine.start()

    def wait_done(self, timeout: float, what: str) -> None:
        """Poll CTRL for ap_done (clear-on-read: seen once) until ``timeout`` seconds have passed."""
        self._check_open()
        deadline = time.monotonic() + float(timeout)
        spins = 0
        while True:
            ctrl = self.engine.ctrl
            if ctrl & regmap.CTRL_AP_DONE:
                return
            if time.monotonic() > deadline:
                status = self.engine.read_reg("STATUS")
                raise AcceleratorTimeout(
                    f"{what}: {self.engine_name} ({self.engine_vlnv}) did not assert ap_done within {float(timeout):g} s "
                    f"(CTRL 0x{ctrl:02x}{', ap_idle' if ctrl & regmap.CTRL_AP_IDLE else ', busy'}; STATUS "
                    f"0x{status:04x}; {self._dma_state()}): the engine hung, most likely waiting on its "
                    "input stream (a DMA send that did not run or was shorter than N_IMAGES images)")
            spins += 1
            if spins > 1000:
                time.sleep(0.0001)   # long calls: stop spinning on the bus

    # ---- Backend: DMA
    def dma_send(self, buf, nbytes: int) -> None:
        """MM2S of ``buf[:nbytes]`` (pynq's transfer flushes it first); one packet, TLAST on its last byte."""
        self._start_transfer("send", buf, nbytes)

    def dma_recv(self, buf, nbytes: int) -> None:
        """S2MM of up to ``nbytes`` into ``buf`` (completes at the engine's TLAST; invalidated on wait)."""
        self._start_transfer("recv", buf, nbytes)

    def _start_transfer(self, which: str, buf, nbytes: int) -> None:
        self._check_open()
        nbytes = int(nbytes)
        ch = self._channel(which)
        if not 0 < nbytes <= ch._max_size:
            raise AcceleratorError(f"{self._chan_name(which)}: transfer of {nbytes} bytes outside 1..{ch._max_size} "
                                   "(the DMA's length register)")
        if nbytes > getattr(buf, "nbytes", nbytes):
            raise AcceleratorError(f"{self._chan_name(which)}: transfer of {nbytes} bytes from a "
                                   f"{buf.nbytes}-byte buffer")
        if which in self._pending:
            raise AcceleratorError(f"{self._chan_name(which)}: a transfer is already in flight (dma_wait first)")
        try:
            ch.transfer(buf, nbytes=nbytes)
        except (RuntimeError, ValueError) as e:
            raise AcceleratorError(f"{self._chan_name(which)}: {e}") from None
        self._pending[which] = nbytes

    def dma_wait(self, timeout: float) -> None:
        """Wait for the transfers in flight, send first, with one deadline; then pynq's own ``wait()``
        (which returns at once: invalidates the received buffer, reads the transferred length)."""
        self._check_open()
        deadline = time.monotonic() + float(timeout)
        for which in ("send", "recv"):
            if which not in self._pending:
                continue
            ch = self._channel(which)
            spins = 0
            while True:
                if ch.idle or ch.error:          # DMASR Idle / error bits (pynq's wait() would spin forever)
                    break
                if time.monotonic() > deadline:
                    sr = self._dmasr(which)
                    raise AcceleratorTimeout(
                        f"{self._chan_name(which)}: transfer of {self._pending[which]} bytes not finished "
                        f"within {float(timeout):g} s (DMASR 0x{sr:04x}; {self.engine_name} CTRL "
                        f"0x{self.engine.ctrl:02x}): " + ("the engine did not read its whole input stream"
                                                            if which == "send" else
                                                            "the engine's output stream never reached TLAST"))
                spins += 1
                if spins > 1000:
                    time.sleep(0.0001)
            sr = self._dmasr(which)
            if sr & DMASR_ERRORS:            # the channel halted (pynq's wait() would say "not started")
                self._reset_after_error()
                raise AcceleratorError(f"{self._chan_name(which)}: {_dma_errors(sr)} (DMASR 0x{sr:04x}; the DMA "
                                       "was reset)")
            try:
                ch.wait()
            except RuntimeError as e:     # DMASR error bits: the channel halted; reset it for the next call
                sr = self._dmasr(which)
                self._reset_after_error()
                raise AcceleratorError(f"{self._chan_name(which)}: {e} (DMASR 0x{sr:04x}; the DMA was reset)") from None
            want = self._pending.pop(which)
            if which == "recv" and ch.transferred != want:
                raise AcceleratorError(f"{self._chan_name(which)}: received {ch.transferred} of {want} bytes "
                                       "(the engine's output packet ended early)")

    def _reset_after_error(self) -> None:
        try:
            self.recover()
        except AcceleratorError:
            self._pending.clear()

    def recover(self) -> None:
        """Soft-reset the AXI DMA (both channels) and start them again; transfers in flight are dropped.
        The engine itself has no reset register: a hung engine call needs the bitstream reloaded."""
        self._check_open()
        self._pending.clear()
        ch0 = self.dma.sendchannel
        ch0._mmio.write(DMACR, DMACR_RESET)
        deadline = time.monotonic() + self.timeout
        while ch0._mmio.read(DMACR) & DMACR_RESET:
            if time.monotonic() > deadline:
                raise AcceleratorTimeout(f"{self.dma_name}: soft reset did not finish within {self.timeout:g} s: "
                                         "reload the bitstream")
        for which in ("send", "recv"):
            ch = self._channel(which)
            ch._mmio.write(ch._offset + DMACR, DMACR_RS)
            while self._dmasr(which) & DMASR_HALTED:
                if time.monotonic() > deadline:
                    raise AcceleratorTimeout(f"{self._chan_name(which)}: did not start after the reset within "
                                             f"{self.timeout:g} s: reload the bitstream")
            # pynq's channel bookkeeping (_SDMAChannel, the same in pynq 2.7 to 4.0): the next transfer is a
            # first one again (transfer() refuses a channel that is not idle unless _first_transfer)
            ch._first_transfer = True
            ch._active_buffer = None

    def close(self) -> None:
        """Forget the overlay (the bitstream stays loaded; buffers stay valid until freed)."""
        self._closed = True
        self._pending.clear()

    def describe(self) -> str:
        eng = self.overlay.ip_dict[self.engine_name]
        dma = self.overlay.ip_dict[self.dma_name]
        clk = f", FCLK0 {self.fclk_mhz:g} MHz" if self.fclk_mhz else ""
        return (f"pynq {self.overlay.bitfile_name}: {self.engine_name} at 0x{int(eng['phys_addr']):08x}, "
                f"{self.dma_name} at 0x{int(dma['phys_addr']):08x}{clk}")
