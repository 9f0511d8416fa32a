"""The backend interface the Accelerator drives (``Backend``), its errors and the DMA's transfer limit: what
``host.accelerator`` and the backends (``host.sim``, ``host.pynq_backend``, ``host.rtl_backend``) share, in a module below them
all (the backends subclass ``Backend``; the Accelerator opens them). ``host.accelerator`` re-exports every
name here.

Imports neither torch nor the flow (only ``engine_io``, stdlib + numpy): it runs on the board.
"""
from __future__ import annotations

import abc
import time
from typing import Optional

from engine_io import bundle as bundle_mod
from engine_io import regmap

# The AXI DMA of the block design (hls_templates/tcl/vivado.tcl.j2): simple mode, c_sg_length_width 26.
DMA_MAX_BYTES = (1 << 26) - 1


class AcceleratorError(RuntimeError):
    """The engine or the host refused a call: a STATUS error, a bad bundle, a config mismatch."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status
        self.code, self.op = regmap.decode_status(status) if status is not None else (None, None)


class AcceleratorTimeout(AcceleratorError, TimeoutError):
    """An engine call or a DMA transfer did not finish in time; the message names what hung."""


# --------------------------------------------------------------------------- the backend interface

class Backend(abc.ABC):
    """What the Accelerator needs from a device: registers by name, DMA buffers, two DMA channels.

    Register names are the attribute names of ``engine_io.regmap`` ("CTRL", "N_IMAGES", "PARAMS_LO",
    "PARAMS_HI", "CONFIG_HASH", "CYCLES_LO", "CYCLES_HI", "STATUS", "REAL_CYCLES_LO", ...); the
    Accelerator splits the 64-bit PARAMS / CYCLES / REAL_CYCLES into their _LO / _HI words itself.
    ``offset(name)`` maps a name to its byte offset in the engine's s_axilite segment.

    Sequence the Accelerator drives (engine_io/regmap.py):
      load call:  buf = alloc(n); buf[:] = image; buf.flush(); write_reg PARAMS_LO/HI, N_IMAGES=0;
                  start(); wait_done(); read_reg CONFIG_HASH, STATUS, CYCLES_LO/HI, REAL_CYCLES_LO/HI
      per batch:  write_reg N_IMAGES=B; dma_recv(out, B*out_bytes); dma_send(in, B*in_bytes);
                  start(); wait_done(); read_reg STATUS, CYCLES_LO/HI, REAL_CYCLES_LO/HI; dma_wait();
                  out.invalidate()
    Timeouts raise ``AcceleratorTimeout`` naming what hung (``what`` for wait_done).
    """

    name = "backend"

    #: the engine's clock in MHz when the backend knows it (the PYNQ backend: the PL clock), else None
    fclk_mhz: Optional[float] = None

    @staticmethod
    def offset(name: str) -> int:
        """Byte offset of register ``name`` (a engine_io.regmap attribute); KeyError for an unknown name."""
        value = getattr(regmap, name, None)
        if not isinstance(value, int) or name.startswith(("CTRL_", "ERR_")) or name in (
                "OK", "STATUS_OP_NONE", "ADDRESS_RANGE") or not 0 <= value < regmap.ADDRESS_RANGE:
            raise KeyError(f"{name!r} is not a register of engine_io.regmap")
        return value

    @abc.abstractmethod
    def alloc(self, nbytes: int):
        """A DMA-able buffer of ``nbytes`` bytes: a uint8 numpy array (or an object with ``__array__``
        writable through numpy indexing) with ``.physical_address``, ``.flush()`` (CPU -> DDR),
        ``.invalidate()`` (DDR -> CPU) and ``.freebuffer()``, like ``pynq.allocate((n,), np.uint8)``."""

    @abc.abstractmethod
    def write_reg(self, name: str, value: int) -> None:
        """Write the 32-bit register ``name`` of the engine's s_axilite interface."""

    @abc.abstractmethod
    def read_reg(self, name: str) -> int:
        """Read the 32-bit register ``name`` (reading CTRL clears ap_done, as the hardware does)."""

    def start(self) -> None:
        """Start one engine call (ap_start); the engine latches N_IMAGES and PARAMS."""
        self.write_reg("CTRL", regmap.CTRL_AP_START)

    def wait_done(self, timeout: float, what: str) -> None:
        """Wait until the engine call finishes (ap_done); AcceleratorTimeout naming ``what`` when it does
        not within ``timeout`` seconds. The default polls CTRL."""
        deadline = time.monotonic() + timeout
        while True:
            if self.read_reg("CTRL") & regmap.CTRL_AP_DONE:
                return
            if time.monotonic() > deadline:
                raise AcceleratorTimeout(f"{what}: the engine did not finish within {timeout:g} s "
                                         f"(CTRL 0x{self.read_reg('CTRL'):02x})")
            time.sleep(0)

    @abc.abstractmethod
    def dma_send(self, buf, nbytes: int) -> None:
        """Start the MM2S transfer of the first ``nbytes`` bytes of ``buf`` (already flushed) into the
        engine's input stream; TLAST on the final byte. Does not wait."""

    @abc.abstractmethod
    def dma_recv(self, buf, nbytes: int) -> None:
        """Start the S2MM transfer of up to ``nbytes`` bytes of the engine's output stream into ``buf``
        (completes at TLAST). Does not wait; posted before dma_send and start."""

    @abc.abstractmethod
    def dma_wait(self, timeout: float) -> None:
        """Wait for the started send and receive transfers; AcceleratorTimeout when they do not finish."""

    def recover(self) -> None:
        """Bring the DMA channels back to idle after a failed call (a receive the engine never fed).
        The default does nothing; the PYNQ backend resets the AXI DMA."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device (buffers stay valid until freed; calls after close are errors)."""

    def describe(self) -> str:
        """One line naming the device, for the CLI."""
        return self.name


# --------------------------------------------------------------------------- helpers

def _load_bundle(bundle, error: type[Exception] = AcceleratorError):
    """A loaded, verified engine_io.bundle.Bundle from a path (or the Bundle itself); a BundleError becomes
    ``error``."""
    if isinstance(bundle, bundle_mod.Bundle):
        return bundle
    try:
        return bundle_mod.load(bundle)
    except bundle_mod.BundleError as e:
        raise error(str(e)) from None
