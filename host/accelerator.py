"""Run a deploy bundle on the engine: on the PYNQ-Z2 (``backend="pynq"``), in C-simulation (``"sim"``) or as
RTL under Verilator (``"rtl"``).

    from host.accelerator import Accelerator

    acc = Accelerator.open("deploy", backend="pynq")     # or backend="sim" (g++ + the ap_types headers)
    acc.load()                                           # the load call: program on chip, STATUS, CONFIG_HASH
    y = acc.infer(x_codes)                               # uint8/int8 [B, H, W, C] -> int8/uint8 [B, *out_shape]
    p = acc.infer(x_float, argmax=True)                  # float [B, C, H, W] in the model's input space
    for y in acc.stream(batches):                        # two batches in flight (double-buffered DMA)
        ...

The host side of the protocol in ``engine_io/regmap.py`` (the one register map), over a ``Backend``
(``host/backend.py``, with the errors; re-exported here):
the PYNQ backend (``host/pynq_backend.py``: the overlay's engine IP and AXI DMA), the sim backend
(``host/sim.py``: the bundle's own engine C++ compiled with g++, its registers, DMA and DDR
simulated in Python) or the rtl backend (``host/rtl_backend.py``: the bundle's own Verilog engine built
with Verilator, its PS side, AXI DMA and DDR a cycle-level test double; REAL_CYCLES measured in RTL).

Imports neither torch nor the flow (only ``engine_io``, stdlib + numpy): it runs on the board.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from engine_io import bundle as bundle_mod
from engine_io import program_image, regmap
from host.backend import (  # noqa: F401  (re-exported: the backend interface, host/backend.py)
    DMA_MAX_BYTES, AcceleratorError, AcceleratorTimeout, Backend, _load_bundle)
from host.sim import SimBackend, SimError

DEFAULT_BATCH = 256
DEFAULT_TIMEOUT = 10.0     # seconds for one engine call, plus PER_IMAGE_TIMEOUT per image
PER_IMAGE_TIMEOUT = 0.01

# Program image header: engine_io/program_image.py (its one definition)
PROGRAM_MAGIC = program_image.MAGIC

BOARD_INSTALL_HINT = ("pip install vqhls[board] (pynq needs numpy<2: use the .venv-board environment: "
                      "make board-env)")


# --------------------------------------------------------------------------- helpers

def check_program_image(blob: bytes, format_version: Optional[int] = None) -> tuple[int, int]:
    """The program image's header on the host, before the load call (engine_io.program_image.parse_header):
    magic, format version (the bundle manifest's), size, the CRC32 of everything after word 7, the
    scales and flags. Returns (input bytes, output bytes) per image; raises AcceleratorError. The full
    Program check ran at build time (flow.compile.validate) and the bundle's checksums protect it since."""
    try:
        hdr = program_image.parse_header(bytes(blob), format_version)
    except program_image.HeaderError as e:
        raise AcceleratorError(f"program image {e}: rebuild the bundle") from None
    return hdr.input_bytes, hdr.output_bytes


def _pynq_missing(e: ModuleNotFoundError) -> AcceleratorError:
    text = str(e)
    detail = text[text.index("[import pynq failed"):] if "[import pynq failed" in text else ""
    return AcceleratorError(f"pynq is not installed: {BOARD_INSTALL_HINT}" + (f" {detail}" if detail else ""))


def _make_backend(name: str, bundle, kw: dict) -> Backend:
    if name == "sim":
        try:
            return SimBackend(bundle, **kw)
        except SimError as e:
            raise AcceleratorError(str(e)) from None
    if name == "pynq":
        import importlib

        try:
            pynq_backend = importlib.import_module("host.pynq_backend")
        except ModuleNotFoundError as e:
            if e.name and (e.name == "pynq" or e.name.startswith("pynq.")):
                raise _pynq_missing(e) from None
            if e.name == "host.pynq_backend":
                raise AcceleratorError("this kit has no PYNQ backend (host/pynq_backend.py missing)") from None
            raise
        try:
            return pynq_backend.PynqBackend(bundle, **kw)
        except ModuleNotFoundError as e:
            if e.name and (e.name == "pynq" or e.name.startswith("pynq.")):
                raise _pynq_missing(e) from None
            raise
    if name == "rtl":
        import importlib   # deferred: host.rtl_backend loads the Verilator build path, only for backend="rtl"

        rtl_backend = importlib.import_module("host.rtl_backend")
        try:
            return rtl_backend.RtlBackend(bundle, **kw)
        except rtl_backend.RtlError as e:
            raise AcceleratorError(str(e)) from None
    raise AcceleratorError(f"unknown backend {name!r}: choose 'pynq' (the board), 'sim' (C-simulation) or 'rtl' "
                           "(the RTL engine under Verilator)")


class _Pair:
    """One input buffer and one output buffer for batches of up to ``images`` images."""

    __slots__ = ("inbuf", "outbuf", "images")

    def __init__(self, inbuf, outbuf, images: int):
        self.inbuf, self.outbuf, self.images = inbuf, outbuf, images


# --------------------------------------------------------------------------- the accelerator

class Accelerator:
    """One deploy bundle on one engine (see the module docstring).

    Inputs: integer codes uint8/int8 [B, H, W, C] (NHWC, the dtype of the bundle's input signedness),
    or floats [B, C, H, W] in the model's input space, quantized on the host with the bundle's input
    scale (round half to even: as flow.quant.quantize_input); floats outside the bundle's input range
    (:meth:`input_range`, give or take half a code) are refused unless ``clip=True``, non-finite ones
    always. Outputs: the engine's codes [B, *out_shape] (int8, or uint8 for an unsigned output), or
    floats (codes x out_scale), or argmax [B].
    """

    def __init__(self, bundle, backend: Backend, *, timeout: float = DEFAULT_TIMEOUT,
                 batch_size: Optional[int] = None):
        self.bundle = _load_bundle(bundle)
        self.backend = backend
        self.timeout = float(timeout)
        self.in_shape = tuple(int(s) for s in self.bundle.in_shape)     # (H, W, C)
        self.out_shape = tuple(int(s) for s in self.bundle.out_shape)
        self.in_bytes = bundle_mod.shape_size(self.in_shape)
        self.out_bytes = bundle_mod.shape_size(self.out_shape)
        self.in_dtype = np.dtype(np.uint8 if self.bundle.in_unsigned else np.int8)
        self.out_dtype = np.dtype(np.uint8 if self.bundle.out_unsigned else np.int8)
        self.in_scale = self.bundle.in_scale
        self.out_scale = self.bundle.out_scale
        self.config_hash = regmap.config_hash_u32(self.bundle.config_hash)
        self.max_batch = max(1, DMA_MAX_BYTES // max(self.in_bytes, self.out_bytes, 1))
        bs = DEFAULT_BATCH if batch_size is None else int(batch_size)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {bs}")
        self.batch_size = min(bs, self.max_batch)
        self.fclk_mhz = backend.fclk_mhz if getattr(backend, "fclk_mhz", None) else self._bundle_fclk()
        self.loaded = False
        self.load_cycles: Optional[int] = None          # CYCLES of the load call: MODELLED (None: the RTL engine)
        self.load_real_cycles: Optional[int] = None     # REAL_CYCLES of the load call: MEASURED (None: no counter)
        self._params_buf = None
        self._pairs: list[Optional[_Pair]] = [None, None]
        self._closed = False
        self._stats = {"latency_s": None, "images_per_s": None, "batches": 0, "images": 0, "busy_s": 0.0,
                       "modelled_cycles": None, "modelled_images_per_s": None,
                       "measured_cycles": None, "measured_images_per_s": None}

    # ---- construction
    @classmethod
    def open(cls, bundle_path, backend="pynq", *, timeout: float = DEFAULT_TIMEOUT,
             batch_size: Optional[int] = None, **kw) -> "Accelerator":
        """Load and verify the bundle (engine_io.bundle.load), make the backend: ``"pynq"`` (the board:
        ``host.pynq_backend.PynqBackend(bundle, **kw)``), ``"sim"`` (``host.sim.SimBackend(bundle,
        **kw)``: C-simulation), ``"rtl"`` (``host.rtl_backend.RtlBackend(bundle, **kw)``: the bundle's RTL
        under Verilator), or a ready ``Backend`` instance. Raises AcceleratorError."""
        bundle = _load_bundle(bundle_path)
        if isinstance(backend, Backend):
            if kw:
                raise TypeError(f"backend options {sorted(kw)} given with a ready backend instance")
            be = backend
        else:
            be = _make_backend(str(backend), bundle, kw)
        return cls(bundle, be, timeout=timeout, batch_size=batch_size)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pair in self._pairs:
            if pair is not None:
                _free(pair.inbuf)
                _free(pair.outbuf)
        self._pairs = [None, None]
        if self._params_buf is not None:
            _free(self._params_buf)
            self._params_buf = None
        self.backend.close()

    def __enter__(self) -> "Accelerator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Accelerator({self.bundle.model!r}, engine {self.bundle.config_hash}, backend {self.backend.name!r}, "
                f"in {list(self.in_shape)} {self.in_dtype.name}, out {list(self.out_shape)} {self.out_dtype.name})")

    # ---- shapes (like finn-examples' accel.ishape_normal / ishape_packed)
    def ishape_normal(self, batch: int = 1) -> tuple:
        """Integer input shape [batch, H, W, C] (NHWC codes)."""
        return (int(batch), *self.in_shape)

    def oshape_normal(self, batch: int = 1) -> tuple:
        """Integer output shape [batch, *out_shape]."""
        return (int(batch), *self.out_shape)

    def ishape_packed(self, batch: int = 1) -> tuple:
        """The input stream's bytes: [batch, in_bytes]."""
        return (int(batch), self.in_bytes)

    def oshape_packed(self, batch: int = 1) -> tuple:
        """The output stream's bytes: [batch, out_bytes]."""
        return (int(batch), self.out_bytes)

    def ishape_float(self, batch: int = 1) -> tuple:
        """Float input shape [batch, C, H, W] (the model's NCHW)."""
        h, w, c = self.in_shape
        return (int(batch), c, h, w)

    # ---- registers
    def _write64(self, name: str, value: int) -> None:
        self.backend.write_reg(f"{name}_LO", value & 0xFFFFFFFF)
        self.backend.write_reg(f"{name}_HI", (value >> 32) & 0xFFFFFFFF)

    def _read64(self, name: str) -> int:
        lo = self.backend.read_reg(f"{name}_LO")
        hi = self.backend.read_reg(f"{name}_HI")
        return (hi << 32) | lo

    def _check_open(self) -> None:
        if self._closed:
            raise AcceleratorError("the accelerator is closed")

    # ---- the load call
    def load(self) -> None:
        """The load call: the bundle's program image into a device buffer, PARAMS, N_IMAGES = 0, start,
        wait; then CONFIG_HASH must be the bundle's engine and STATUS ok. Raises AcceleratorError
        (AcceleratorTimeout when the engine does not finish). Nothing is streamed before it succeeds."""
        self._check_open()
        image = self.bundle.program_image()
        prog_in, prog_out = check_program_image(image, self.bundle.manifest["program"].get("format_version"))
        if (prog_in, prog_out) != (self.in_bytes, self.out_bytes):
            raise AcceleratorError(f"program image moves {prog_in} -> {prog_out} bytes per image, the bundle says "
                                   f"{self.in_bytes} -> {self.out_bytes}: rebuild the bundle")
        ctrl = self.backend.read_reg("CTRL")
        if (ctrl & regmap.CTRL_AP_START) and not (ctrl & regmap.CTRL_AP_IDLE):
            raise AcceleratorError(f"the engine is busy (CTRL 0x{ctrl:02x}: a previous call never finished): "
                                   "reload the bitstream (reopen the accelerator)")
        self.loaded = False
        buf = self.backend.alloc(len(image))
        np.asarray(buf).reshape(-1)[: len(image)] = np.frombuffer(image, dtype=np.uint8)
        buf.flush()
        self._write64("PARAMS", int(buf.physical_address))
        self.backend.write_reg("N_IMAGES", 0)
        self.backend.start()
        self.backend.wait_done(self.timeout, "load call (N_IMAGES = 0)")
        hw_hash = self.backend.read_reg("CONFIG_HASH")
        status = self.backend.read_reg("STATUS")
        self.load_cycles = modelled_cycles(self._read64("CYCLES"))
        self.load_real_cycles = regmap.real_cycles(self._read64("REAL_CYCLES"))
        if hw_hash != self.config_hash:
            _free(buf)
            raise AcceleratorError(
                f"bundle built for engine {self.bundle.config_hash}, the bitstream is engine {hw_hash:08x}: "
                "use the bitstream built with this bundle (or rebuild the bundle for this engine)", status)
        if status != regmap.OK:
            _free(buf)
            raise AcceleratorError(f"load call: engine STATUS 0x{status:04x}: {regmap.status_message(status)}", status)
        old, self._params_buf = self._params_buf, buf   # keep it: non-resident weights are read during runs
        if old is not None:
            _free(old)
        self.loaded = True

    # ---- inputs and outputs
    def input_range(self) -> tuple[float, float]:
        """The floats the bundle's input codes stand for: ``(0 * in_scale, 255 * in_scale)`` for an unsigned
        input, ``(-128 * in_scale, 127 * in_scale)`` for a signed one (the build's calibration set them)."""
        lo, hi = (0, 255) if self.bundle.in_unsigned else (-128, 127)
        return lo * self.in_scale, hi * self.in_scale

    def check_float_input(self, x: np.ndarray) -> None:
        """Refuse float images the bundle cannot take as they are (ValueError, one line naming the range and
        the fix): non-finite values (NaN, inf), and values outside :meth:`input_range` by more than half an
        input code (the rounding quantize does), e.g. pixels in 0..255 for a bundle whose inputs are 0..1,
        or negative values for an unsigned input."""
        finite = np.isfinite(x)
        if not finite.all():
            bad = int((~finite).sum())
            imgs = np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))
            raise ValueError(f"float input has {bad} non-finite value{'s' if bad != 1 else ''} (NaN/inf) in image"
                             f"{'s' if len(imgs) != 1 else ''} {', '.join(map(str, imgs[:5]))}"
                             f"{' ...' if len(imgs) > 5 else ''}: repair or drop those images")
        if x.size == 0:
            return
        lo, hi = self.input_range()
        tol = 0.5 * self.in_scale       # half a code: the rounding, not a saturation
        xmin, xmax = float(x.min()), float(x.max())
        if xmin >= lo - tol and xmax <= hi + tol:
            return
        sign = "unsigned" if self.bundle.in_unsigned else "signed"
        codes = "0..255" if self.bundle.in_unsigned else "-128..127"
        if self.bundle.in_unsigned and xmin < lo - tol:
            fix = ("the bundle's input is unsigned (the build calibrated on non-negative images): give images "
                   "as the build did (e.g. undo a mean/std normalisation)")
        elif hi <= 1.0 + tol and xmax <= 255.5 and xmin >= -tol:
            fix = "these look like 0..255 pixel values: divide them by 255"
        else:
            fix = "scale the images as the build's data were scaled"
        raise ValueError(f"float input spans [{xmin:.6g}, {xmax:.6g}], the bundle's input range is "
                         f"[{lo:.6g}, {hi:.6g}] ({sign} codes {codes} x scale {self.in_scale:.6g}): {fix}, "
                         "or pass clip=True to saturate as the build's golden model does")

    def quantize(self, x, *, clip: bool = False) -> np.ndarray:
        """Float images [B, C, H, W] -> integer codes [B, H, W, C]: round half to even of x / in_scale,
        saturated to the input's range (the flow's quantize_input).

        Accepted floats: finite, within :meth:`input_range` (codes 0..255 x ``in_scale`` for an unsigned
        input, -128..127 x ``in_scale`` for a signed one) give or take half a code; anything else is a
        ValueError naming the range and the fix (:meth:`check_float_input`). ``clip=True`` saturates
        finite values outside the range instead (what the build's golden model does with its test set)."""
        x = np.asarray(x, dtype=np.float64)
        exp = self.ishape_float(x.shape[0] if x.ndim == 4 else 0)
        if x.ndim != 4 or tuple(x.shape[1:]) != exp[1:]:
            raise ValueError(f"float input must be [B, {', '.join(map(str, exp[1:]))}] (NCHW), got {list(x.shape)}")
        if clip:
            if not np.isfinite(x).all():
                self.check_float_input(x)     # NaN / inf are refused even when clipping: they have no code
        else:
            self.check_float_input(x)
        lo, hi = (0, 255) if self.bundle.in_unsigned else (-128, 127)
        q = np.clip(np.rint(x / self.in_scale), lo, hi).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(q.astype(self.in_dtype))

    def dequantize(self, y) -> np.ndarray:
        """Output codes -> floats (codes x out_scale), float32."""
        return (np.asarray(y, dtype=np.float64) * self.out_scale).astype(np.float32)

    def _codes(self, x, clip: bool = False) -> np.ndarray:
        """Validate one batch; integer codes [B, H, W, C] of the input dtype."""
        x = np.asarray(x)
        if x.dtype.kind == "f":
            return self.quantize(x, clip=clip)
        want = f"{self.in_dtype.name} [B, {', '.join(map(str, self.in_shape))}] (NHWC codes)"
        if x.dtype != self.in_dtype:
            hint = ""
            if x.dtype in (np.uint8, np.int8):
                hint = f": the bundle's input is {'unsigned' if self.bundle.in_unsigned else 'signed'}"
            elif x.dtype.kind in "iu":
                hint = f": convert with .astype(np.{self.in_dtype.name}) if the values are codes"
            raise ValueError(f"input must be {want} or float [B, {', '.join(map(str, self.ishape_float()[1:]))}] "
                             f"(NCHW), got {x.dtype.name} {list(x.shape)}{hint}")
        if x.ndim != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"input must be {want}, got {x.dtype.name} {list(x.shape)}")
        return np.ascontiguousarray(x)

    def _post(self, raw: np.ndarray, n: int, dequantize: bool, argmax: bool) -> np.ndarray:
        y = raw.view(self.out_dtype).reshape(self.oshape_normal(n))
        if argmax:
            return y.reshape(n, -1).argmax(axis=1)
        if dequantize:
            return self.dequantize(y)
        return y

    # ---- buffers
    def _pair(self, slot: int, n: int) -> _Pair:
        pair = self._pairs[slot]
        if pair is None or pair.images < n:
            if pair is not None:
                _free(pair.inbuf)
                _free(pair.outbuf)
                self._pairs[slot] = None
            images = max(n, min(self.batch_size, self.max_batch))
            inbuf = self.backend.alloc(images * self.in_bytes)
            pair = _Pair(inbuf, self.backend.alloc(images * self.out_bytes), images)
            self._pairs[slot] = pair
        return pair

    def _call_timeout(self, n: int) -> float:
        return self.timeout + PER_IMAGE_TIMEOUT * n

    def _launch(self, pair: _Pair, codes: np.ndarray) -> dict:
        n = int(codes.shape[0])
        t_copy = time.perf_counter()
        np.asarray(pair.inbuf).reshape(-1)[: n * self.in_bytes] = codes.reshape(-1).view(np.uint8)
        pair.inbuf.flush()
        t0 = time.perf_counter()
        self.backend.write_reg("N_IMAGES", n)
        self.backend.dma_recv(pair.outbuf, n * self.out_bytes)
        self.backend.dma_send(pair.inbuf, n * self.in_bytes)
        self.backend.start()
        return {"pair": pair, "n": n, "t0": t0, "copy_in_s": t0 - t_copy}

    def _finish(self, job: dict) -> dict:
        n = job["n"]
        what = f"batch of {n} image{'s' if n != 1 else ''}"
        try:
            self.backend.wait_done(self._call_timeout(n), what)
        except AcceleratorTimeout:
            self.backend.recover()
            raise
        status = self.backend.read_reg("STATUS")
        cycles = modelled_cycles(self._read64("CYCLES"))
        real = regmap.real_cycles(self._read64("REAL_CYCLES"))
        try:
            self.backend.dma_wait(self._call_timeout(n))
        except AcceleratorTimeout as e:
            self.backend.recover()
            if status != regmap.OK:
                raise AcceleratorError(f"{what}: engine STATUS 0x{status:04x}: {regmap.status_message(status)}",
                                       status) from None
            raise AcceleratorTimeout(f"{what}: {e}") from None
        t1 = time.perf_counter()
        if status != regmap.OK:
            raise AcceleratorError(f"{what}: engine STATUS 0x{status:04x}: {regmap.status_message(status)}", status)
        latency = t1 - job["t0"]
        st = self._stats
        st["latency_s"] = latency
        st["images_per_s"] = n / latency if latency > 0 else float("inf")
        st["batches"] += 1
        st["images"] += n
        st["busy_s"] += latency
        st["modelled_cycles"] = cycles
        if self.fclk_mhz and cycles:
            st["modelled_images_per_s"] = n * self.fclk_mhz * 1e6 / cycles
        st["measured_cycles"] = real
        st["measured_images_per_s"] = images_per_s(n, real, self.fclk_mhz)
        job["cycles"] = cycles
        job["real_cycles"] = real
        job["latency_s"] = latency
        return job

    def _collect(self, job: dict) -> np.ndarray:
        pair, n = job["pair"], job["n"]
        pair.outbuf.invalidate()
        return np.array(np.asarray(pair.outbuf).reshape(-1)[: n * self.out_bytes], dtype=np.uint8, copy=True)

    def _ensure_loaded(self) -> None:
        self._check_open()
        if not self.loaded:
            self.load()

    # ---- inference
    def infer(self, x, *, dequantize: bool = False, argmax: bool = False,
              batch_size: Optional[int] = None, clip: bool = False) -> np.ndarray:
        """Run ``x`` (codes [B, H, W, C] or floats [B, C, H, W]) through the engine, in batches of
        ``batch_size`` (default ``self.batch_size``) images per engine call. Returns the output codes
        [B, *out_shape], or floats (``dequantize``), or the argmax [B] (``argmax``). Loads the program
        first if ``load()`` was not called. ValueError on a wrong shape or dtype (expected vs got), and on
        float images outside the bundle's input range or not finite (see :meth:`quantize`; ``clip=True``
        saturates out-of-range floats instead). Integer codes are taken as they are."""
        codes = self._codes(x, clip)
        n = codes.shape[0]
        bs = self.batch_size if batch_size is None else min(int(batch_size), self.max_batch)
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n == 0:
            return self._post(np.zeros(0, np.uint8), 0, dequantize, argmax)
        parts = list(self.stream((codes[i: i + bs] for i in range(0, n, bs)), dequantize=dequantize, argmax=argmax))
        return np.concatenate(parts, axis=0)

    def stream(self, batches: Iterable, *, dequantize: bool = False, argmax: bool = False,
               clip: bool = False) -> Iterator[np.ndarray]:
        """Yield the results of each batch of ``batches`` in order, keeping two batches in flight: batch
        i+1 is validated, quantized and copied into the other buffer pair while the engine runs batch i,
        and started as soon as batch i is done, before batch i's outputs are copied out and yielded.
        Float batches are checked as in :meth:`infer` (``clip`` as there)."""
        self._ensure_loaded()
        inflight: Optional[dict] = None
        slot = 0
        try:
            for xb in batches:
                codes = self._codes(xb, clip)
                n = int(codes.shape[0])
                if n > self.max_batch:
                    raise ValueError(f"a batch of {n} images exceeds the DMA's {DMA_MAX_BYTES}-byte transfer "
                                     f"limit ({self.max_batch} images): split it")
                if n == 0:
                    if inflight is not None:
                        job, inflight = inflight, None
                        job = self._finish(job)
                        yield self._post(self._collect(job), job["n"], dequantize, argmax)
                    yield self._post(np.zeros(0, np.uint8), 0, dequantize, argmax)
                    continue
                pair = self._pair(slot, n)      # the pair batch i-1 does not use
                done = None
                if inflight is not None:
                    done, inflight = inflight, None
                    done = self._finish(done)
                job = self._launch(pair, codes)
                inflight = job
                slot ^= 1
                if done is not None:
                    yield self._post(self._collect(done), done["n"], dequantize, argmax)
            if inflight is not None:
                job, inflight = inflight, None
                job = self._finish(job)
                yield self._post(self._collect(job), job["n"], dequantize, argmax)
        finally:
            if inflight is not None:   # abandoned (consumer stopped, or an error): leave the engine idle
                job, inflight = inflight, None
                try:
                    self._finish(job)
                except AcceleratorError:
                    pass

    # ---- measurements
    @property
    def stats(self) -> dict:
        """Last batch: ``latency_s`` (DMA + engine, wall clock), ``images_per_s``, ``modelled_cycles`` (the
        CYCLES register: MODELLED, flow/boards/cycle_model.py; None where it reads all ones: the RTL engine)
        and ``modelled_images_per_s`` at ``fclk_mhz``, ``measured_cycles`` (the REAL_CYCLES register:
        MEASURED by the engine's free-running counter, on the board or in RTL simulation; None where there is
        none, i.e. in C-simulation) and ``measured_images_per_s`` at ``fclk_mhz``;
        totals: ``batches``, ``images``, ``busy_s``."""
        return dict(self._stats)

    def throughput_test(self, batch: Optional[int] = None, *, seed: int = 0) -> dict:
        """Time one engine call on ``batch`` random input images (like FINN's driver throughput_test):
        runtime, images/s, DMA bandwidth in/out (MB/s), copy times, the clock, the modelled cycles (CYCLES)
        and the measured ones (REAL_CYCLES; None, and its rates None, where the engine has no real counter:
        C-simulation)."""
        self._ensure_loaded()
        n = min(int(batch or self.batch_size), self.max_batch)
        if n < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        rng = np.random.default_rng(seed)
        lo, hi = (0, 256) if self.bundle.in_unsigned else (-128, 128)
        codes = rng.integers(lo, hi, self.ishape_normal(n)).astype(self.in_dtype)
        pair = self._pair(0, n)
        job = self._finish(self._launch(pair, codes))
        t = time.perf_counter()
        self._collect(job)
        copy_out = time.perf_counter() - t
        runtime = job["latency_s"]
        cycles = job["cycles"]
        real = job["real_cycles"]
        res = {
            "runtime[ms]": runtime * 1e3,
            "throughput[images/s]": n / runtime if runtime > 0 else float("inf"),
            "DRAM_in_bandwidth[MB/s]": n * self.in_bytes / runtime / 1e6 if runtime > 0 else float("inf"),
            "DRAM_out_bandwidth[MB/s]": n * self.out_bytes / runtime / 1e6 if runtime > 0 else float("inf"),
            "fclk[mhz]": self.fclk_mhz,
            "batch_size": n,
            "copy_input_data_to_device[ms]": job["copy_in_s"] * 1e3,
            "copy_output_data_from_device[ms]": copy_out * 1e3,
            "modelled_cycles": cycles,
            "modelled_cycles_per_image": cycles / n if cycles is not None else None,
            "modelled_throughput[images/s]": (n * self.fclk_mhz * 1e6 / cycles) if (self.fclk_mhz and cycles) else None,
            "measured_cycles": real,
            "measured_cycles_per_image": real / n if real is not None else None,
            "measured_throughput[images/s]": images_per_s(n, real, self.fclk_mhz),
            "backend": self.backend.name,
        }
        return res

    def _bundle_fclk(self) -> Optional[float]:
        """The engine clock the HLS project was built for (hls/project.json clock_ns), in MHz."""
        try:
            project = json.loads((Path(self.bundle.path) / self.bundle.manifest["hls"]["project"]).read_text())
            ns = float(project.get("clock_ns") or 0)
            return 1e3 / ns if ns > 0 else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


def modelled_cycles(value: int) -> Optional[int]:
    """The CYCLES register as the engine's modelled count, or None where it reads all ones (the RTL engine
    computes no cycle model: its builds' model is flow.boards.cycle_model's, in the manifest's extra)."""
    return None if value == regmap.REAL_CYCLES_NA else int(value)


def images_per_s(n: int, cycles: Optional[int], fclk_mhz: Optional[float]) -> Optional[float]:
    """``n`` images in ``cycles`` engine cycles at ``fclk_mhz``: images per second (None without both)."""
    if not cycles or not fclk_mhz:
        return None
    return n * fclk_mhz * 1e6 / cycles


def _free(buf) -> None:
    free = getattr(buf, "freebuffer", None)
    if free is not None:
        try:
            free()
        except Exception:   # best effort on teardown
            pass
