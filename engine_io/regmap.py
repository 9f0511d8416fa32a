"""The engine's AXI-Lite register map: defined here once.

The HLS templates render these offsets into ``firmware/regmap.h`` and into the
``#pragma HLS INTERFACE s_axilite ... offset=`` lines of the top function; the
host backends (PYNQ and the C-simulation bridge) read registers through the
same names. Pure Python: imports neither torch nor the rest of the flow, so it
runs on the board.

Layout (the Vitis HLS ``ap_ctrl_hs`` block at 0x00..0x0C, then the ports of
``vqhls_engine`` laid out as Vitis HLS lays out the top's arguments: a 32-bit
input takes a data word and a reserved word, a 64-bit pointer two data words
and a reserved word, an output scalar its data word(s) followed by a control
word whose bit 0 is ``ap_vld``; the offsets are also pinned with ``offset=``)::

    0x00 CTRL         bit0 ap_start (R/W, self-clearing)  bit1 ap_done (COR)
                      bit2 ap_idle  bit3 ap_ready  bit7 auto_restart
    0x04 GIE          global interrupt enable
    0x08 IER          interrupt enable (bit0 done, bit1 ready)
    0x0C ISR          interrupt status (toggle-on-write)
    0x10 N_IMAGES     images to stream through in this call (0: the load call); 0x14 reserved
    0x18 PARAMS_LO    DDR byte address of the parameter image (Program.to_bytes()), low word
    0x1C PARAMS_HI    ... high word; 0x20 reserved
    0x28 CONFIG_HASH  (RO) the engine's EngineConfig.hash() as uint32; 0x2C its ap_vld
    0x30 CYCLES_LO    (RO) MODELLED engine cycles of the last call (flow/boards/cycle_model.py:
    0x34 CYCLES_HI         loop iterations + stated fill depths + DDR latency); 0x38 ap_vld
    0x40 STATUS       (RO) 0 = ok, else ERR_* code in bits 7..0 and the failing
                      op index in bits 15..8 (0xFF: not op-specific); 0x44 ap_vld
    0x48 REAL_CYCLES_LO  (RO) MEASURED cycles of the last call: a free-running 64-bit
    0x4C REAL_CYCLES_HI       counter (hls_templates/rtl/cycle_counter.v.j2, an RTL blackbox)
                              read at the start of the call and again after its last stream
                              write; the difference. 0x50 ap_vld. REAL_CYCLES_NA (all ones)
                              where no counter exists: C-simulation (its C model)

REAL_CYCLES follows STATUS as the top's last argument, so Vitis's automatic layout
puts it where the pinned offset does: STATUS takes 0x40 (data) and 0x44 (ap_vld);
the next argument starts at the next 8-byte boundary, 0x48 (as CONFIG_HASH's
0x28..0x2C is followed by CYCLES at 0x30, and CYCLES's 0x30..0x38 by STATUS at
0x40); a 64-bit output takes two data words and a control word: 0x48, 0x4C,
0x50 (0x54 unused). The last word, 0x50, stays inside the 7-bit address space
(ADDRESS_RANGE 0x80) the block design already maps: no change there.

CYCLES and REAL_CYCLES are not the same thing. CYCLES is the cycle MODEL
(flow/boards/cycle_model.py) added up again by the engine's C++ as it runs: it says
what the model predicts for this call, whatever Vitis scheduled. REAL_CYCLES
counts clock edges of the synthesized engine: on the board (or in Vitis C/RTL
co-simulation) it is the measurement. The counter is read once at the start of
the call and once after the last output beat has been written; the few states
before the first read (ap_start handshake) and after the second (the output
registers, ap_done) are not counted, so REAL_CYCLES is the ap_start..ap_done
latency less a handful of cycles. It never reads REAL_CYCLES_NA on hardware
(the counter saturates one below it: 2^64 cycles are 5,800 years at 100 MHz).

Streams: the input AXI-Stream carries N_IMAGES x input_bytes bytes (NHWC, one
byte per beat) with TLAST on the final byte of the call and nowhere else: an
early TLAST stops the engine reading (nothing past it is consumed), a missing
one is reported too (ERR_TLAST); the output stream carries N_IMAGES x
output_bytes bytes with TLAST on the final byte of the call (zeros for images
whose bytes did not all arrive before an early TLAST: an image completed by the
early TLAST's byte is still computed), so one DMA receive transfer covers a batch.

Host sequence: validate the Program for this engine on the host
(flow.compile.validate), put the image in an allocated buffer and flush it;
write PARAMS, N_IMAGES=0, start, wait for ap_done: the load call checks the
header, the CRC32 and each descriptor's compile-time limits and copies the
parameters on chip; check STATUS and CONFIG_HASH. Then per batch: write
N_IMAGES, start the DMA receive, then send, then the engine, wait. Keep the
image where PARAMS points: layers whose weights do not fit on chip (and PQ
prototypes and LUTs) are read from it during the run. A run call before a
successful load call reports ERR_NOT_LOADED and consumes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

# --- control block (Vitis HLS ap_ctrl_hs) ---------------------------------
CTRL = 0x00
GIE = 0x04
IER = 0x08
ISR = 0x0C

CTRL_AP_START = 1 << 0
CTRL_AP_DONE = 1 << 1
CTRL_AP_IDLE = 1 << 2
CTRL_AP_READY = 1 << 3
CTRL_AUTO_RESTART = 1 << 7

# --- arguments ------------------------------------------------------------
N_IMAGES = 0x10
PARAMS_LO = 0x18
PARAMS_HI = 0x1C
CONFIG_HASH = 0x28
CONFIG_HASH_CTRL = 0x2C
CYCLES_LO = 0x30
CYCLES_HI = 0x34
CYCLES_CTRL = 0x38
STATUS = 0x40
STATUS_CTRL = 0x44
REAL_CYCLES_LO = 0x48
REAL_CYCLES_HI = 0x4C
REAL_CYCLES_CTRL = 0x50

ADDRESS_RANGE = 0x80   # the s_axilite segment the block design must map (rounded up)

# REAL_CYCLES when the engine has no real counter: C-simulation, where the counter's C model
# (hls_templates/engine/cycle_counter.h.j2) answers this instead of a number made up from the model
REAL_CYCLES_NA = (1 << 64) - 1

# --- STATUS codes (bits 7..0) ---------------------------------------------
OK = 0
ERR_MAGIC = 1          # parameter image does not start with 'VQHL'
ERR_VERSION = 2        # program format version differs from the engine's
ERR_HEADER = 3         # n_ops / descriptor words / image size out of the engine's limits
ERR_OPCODE = 4         # unknown opcode or weight format
ERR_BUFFER = 5         # buffer index out of range, or an op writes a buffer it reads (input or residual)
ERR_BUF_SIZE = 6       # an activation tensor is larger than act_buf_bytes
ERR_SHAPE = 7          # output shape inconsistent with input shape / kernel / stride / pad
ERR_LIMIT = 8          # channels, kernel, k, d, n:m beyond the engine's compile-time limits
ERR_OFFSET = 9         # a parameter array is missing or runs past the end of the image
ERR_PARAM = 10         # a parameter value is invalid (shift outside 1..31, codeword index >= k)
ERR_IO = 11            # header input/output bytes or signedness flags disagree with the first/last op
ERR_CRC = 12           # CRC32 over the header's scales/flags and the body differs from the header (corrupted)
ERR_NOT_LOADED = 13    # a run call before a successful load call
ERR_TLAST = 14         # input TLAST early (reading stopped there) or missing on the call's final byte

STATUS_NAMES = {
    OK: "ok",
    ERR_MAGIC: "bad magic (not a vqhls program image)",
    ERR_VERSION: "program format version not supported by this engine",
    ERR_HEADER: "program header out of the engine's limits (n_ops, descriptor size, image size)",
    ERR_OPCODE: "unknown opcode or weight format",
    ERR_BUFFER: "bad activation buffer (index out of range, output aliases an input, residual on a pool)",
    ERR_BUF_SIZE: "activation tensor larger than the engine's act_buf_bytes",
    ERR_SHAPE: "inconsistent op shape (output vs input, kernel, stride, pad)",
    ERR_LIMIT: "op beyond the engine's compile-time limits (channels, kernel, stride, k, d, on-chip memories)",
    ERR_OFFSET: "parameter array missing or outside the parameter image",
    ERR_PARAM: ("invalid parameter value or descriptor field (shift outside 1..31, codeword index >= k, "
                "a placed field that disagrees with this engine)"),
    ERR_IO: "header input/output bytes or signedness flags disagree with the first/last op",
    ERR_CRC: ("program image checksum mismatch: the CRC32 over the header's scales and flags and the body "
              "differs from the header's (corrupted in DDR or in transit; reload the bundle's program.bin)"),
    ERR_NOT_LOADED: "no program loaded: make the load call (N_IMAGES = 0) first",
    ERR_TLAST: "input stream TLAST early or missing (the DMA transfer length does not match N_IMAGES images)",
}
STATUS_OP_NONE = 0xFF


def decode_status(status: int) -> tuple[int, int | None]:
    """(error code, op index or None) from the STATUS register value."""
    code = status & 0xFF
    op = (status >> 8) & 0xFF
    return code, (None if code == OK or op == STATUS_OP_NONE else op)


def status_message(status: int) -> str:
    """Human-readable STATUS, e.g. 'op 3: inconsistent op shape (...)'."""
    code, op = decode_status(status)
    text = STATUS_NAMES.get(code, f"unknown error code {code}")
    if code == OK:
        return text
    return f"op {op}: {text}" if op is not None else text


def real_cycles(value: int) -> int | None:
    """The REAL_CYCLES register as a count of measured cycles, or None where the engine has no real
    counter (REAL_CYCLES_NA: C-simulation)."""
    return None if value == REAL_CYCLES_NA else int(value)


def config_hash_u32(engine_hash: str) -> int:
    """The CONFIG_HASH register value for an ``EngineConfig.hash()`` string (8 hex digits)."""
    return int(engine_hash, 16) & 0xFFFFFFFF


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: str          # "rw", "ro", "wo"
    width: int = 32      # bits of the data (64: two consecutive words, low first)
    port: str | None = None   # the C argument of vqhls_engine it belongs to
    doc: str = ""


REGISTERS: tuple[Register, ...] = (
    Register("CTRL", CTRL, "rw", doc="ap_start / ap_done / ap_idle / ap_ready / auto_restart"),
    Register("GIE", GIE, "rw", doc="global interrupt enable"),
    Register("IER", IER, "rw", doc="interrupt enable"),
    Register("ISR", ISR, "rw", doc="interrupt status"),
    Register("N_IMAGES", N_IMAGES, "wo", 32, "n_images", "images in this call (0: the load call)"),
    Register("PARAMS", PARAMS_LO, "wo", 64, "params", "DDR address of the parameter image"),
    Register("CONFIG_HASH", CONFIG_HASH, "ro", 32, "config_hash", "EngineConfig.hash() as uint32"),
    Register("CYCLES", CYCLES_LO, "ro", 64, "cycles", "modelled engine cycles of the last call"),
    Register("STATUS", STATUS, "ro", 32, "status", "0 ok, else code | op << 8"),
    Register("REAL_CYCLES", REAL_CYCLES_LO, "ro", 64, "real_cycles",
             "MEASURED engine cycles of the last call (free-running counter); REAL_CYCLES_NA in C-simulation"),
)

# C argument of vqhls_engine -> s_axilite offset (rendered into the INTERFACE pragmas)
PORT_OFFSETS: dict[str, int] = {r.port: r.offset for r in REGISTERS if r.port}


def _span(r: Register) -> int:
    """Bytes a port occupies as Vitis lays it out: data words, then ap_vld (outputs) or a reserved word (inputs)."""
    return r.width // 8 + (4 if r.port else 0)


def vitis_offsets(ports: "list[Register] | tuple[Register, ...]") -> dict[str, int]:
    """Where Vitis HLS's automatic s_axilite layout puts ``ports`` (in argument order): the first at
    0x10 (after the ap_ctrl_hs block), each next one at the first 8-byte boundary after the previous
    port's words (its data words, then its reserved / ap_vld word)."""
    out, at = {}, 0x10
    for r in ports:
        out[r.name] = at
        at = -(-(at + _span(r)) // 8) * 8
    return out


def _check() -> None:
    spans = sorted((r.offset, r.offset + _span(r), r.name) for r in REGISTERS)
    for (a0, a1, n0), (b0, _, n1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise AssertionError(f"register map: {n0} overlaps {n1}")
    assert spans[-1][1] <= ADDRESS_RANGE
    # the pinned offsets are the ones Vitis would choose itself (REGISTERS lists the ports in argument order)
    ports = [r for r in REGISTERS if r.port]
    auto = vitis_offsets(ports)
    for r in ports:
        if r.offset != auto[r.name]:
            raise AssertionError(f"register map: {r.name} at 0x{r.offset:02X}, "
                                 f"Vitis lays it out at 0x{auto[r.name]:02X}")


_check()
