"""The Program image header: its one definition, shared by the flow and the board.

``flow.compile.program`` packs and reads Program images with it, ``flow.compile.validate`` checks
them for an engine, ``flow.bundle`` and ``host.accelerator`` check a bundle's image before the
load call, and ``flow.hls.project`` renders the engine's header constants from it. Standard
library only (Python 3.8): it runs on the board.

Layout: HEADER_WORDS little-endian 32-bit words (HEADER_FIELDS), then the op descriptors, then
the parameter arrays (flow/compile/program.py)::

    word 0  magic 0x4C485156 ('VQHL')     word 1  FORMAT_VERSION
    word 2  n_ops                         word 3  descriptor words (DESC_WORDS)
    word 4  total image bytes             word 5  input bytes per image (H*W*C of the first op)
    word 6  output bytes per image        word 7  CRC32 (zlib.crc32) of every byte after word 7
    words 8, 9    in_scale  (IEEE-754 float64, low word first): real input = in_scale * code
    words 10, 11  out_scale (float64): real output = out_scale * code
    word 12 io_flags: bit 0 the input codes are uint8 (else int8), bit 1 the output codes are uint8
    words 13..15  reserved, 0

The checksum covers the scales and flags too: a flipped bit anywhere after word 7 is ERR_CRC.
Version history (flow/compile/program.py has the descriptor side): 1 conv/pools; 2 PQ and the
checksum; 3 placed 64-word descriptors; 4 the 16-word header with scales and signedness.
"""
from __future__ import annotations

import math
import struct
import zlib
from typing import NamedTuple, Optional

from engine_io import regmap

MAGIC = 0x4C485156
FORMAT_VERSION = 4
HEADER_WORDS = 16
HEADER_FIELDS = ("magic", "version", "n_ops", "desc_words", "total_bytes", "input_bytes", "output_bytes", "crc",
                 "in_scale_lo", "in_scale_hi", "out_scale_lo", "out_scale_hi", "io_flags",
                 "reserved13", "reserved14", "reserved15")
assert len(HEADER_FIELDS) == HEADER_WORDS
WORD = {name: i for i, name in enumerate(HEADER_FIELDS)}
CRC_WORD = WORD["crc"]
CRC_START = 4 * (CRC_WORD + 1)          # byte offset where the checksummed bytes start
# the op descriptors after the header: DESC_WORDS int32 each, fields in this order (the rest 0);
# flow/compile/program.py documents them
DESC_WORDS = 64
DESC_FIELDS = (
    "opcode", "in_buf", "out_buf", "res_buf",          # res_buf -1: no residual
    "H", "W", "C", "OH", "OW", "OC",
    "KH", "KW", "stride", "pad",
    "in_unsigned", "res_unsigned", "out_unsigned", "lo", "hi",
    "wfmt", "n", "m", "d", "k",
    "off_weight", "off_idx", "off_mask", "off_codebook",
    "off_bias", "off_mult", "off_shift", "off_res_mult",
    # format version 2 (PQ), appended so the fields above keep their words
    "v", "K", "lut_bits", "off_proto", "off_lut",
    # format version 3: fields the placement (flow.compile.layout.place) derives for one EngineConfig,
    # so the engine needs no run-time divide: word layouts, tiling counts, on-chip addresses
    "CW", "WB", "OCW", "OWB", "GR", "NG", "NPT", "NOT", "NSTEP", "passes", "dec", "vpc", "cpv",
    "resident", "v_base", "cb_base", "w_base", "ch_base", "nsub", "lut_resident", "NVEC",
    # appended in format 4 (0 in older images, which keep their meaning): the shared-mask weight format's
    # mask group (wfmt 2: output channels per mask) and the placement's row-mux flag (docs/engine.md)
    "mg", "rowmux",
)
assert len(DESC_FIELDS) <= DESC_WORDS
IO_IN_UNSIGNED = 1
IO_OUT_UNSIGNED = 2
HEADER_BYTES = 4 * HEADER_WORDS
_WORDS = struct.Struct(f"<{HEADER_WORDS}I")
_SCALE = struct.Struct("<d")


class HeaderError(ValueError):
    """A Program image header that does not verify. ``code``: the engine_io.regmap ERR_* code the engine
    gives it (ERR_MAGIC, ERR_VERSION, ERR_HEADER, ERR_CRC, ERR_IO); ``str(e)``: what is wrong, one
    line, without the caller's fix."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class Header(NamedTuple):
    version: int
    n_ops: int
    desc_words: int
    total_bytes: int
    input_bytes: int
    output_bytes: int
    crc: int
    in_scale: float
    out_scale: float
    in_unsigned: bool
    out_unsigned: bool
    in_shape: tuple        # (H, W, C) of the first op's input
    out_shape: tuple       # (OH, OW, OC) of the last op's output


def image_crc(image: bytes) -> int:
    """The checksum header word 7 holds: zlib.crc32 of every byte after it."""
    return zlib.crc32(memoryview(image)[CRC_START:]) & 0xFFFFFFFF


def seal(image) -> bytes:
    """``image`` with header word 7 set to its checksum (after the other words are final)."""
    b = bytearray(image)
    b[4 * CRC_WORD:CRC_START] = image_crc(b).to_bytes(4, "little")
    return bytes(b)


def _scale_words(value: float, name: str):
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"program {name} must be a positive finite number (the real value of one integer "
                         f"step), got {value!r}: quantize the model again (flow.quant.quantize_model)")
    lo, hi = struct.unpack("<2I", _SCALE.pack(v))
    return lo, hi


def pack_header(n_ops: int, desc_words: int, total_bytes: int, input_bytes: int, output_bytes: int,
                in_scale: float, out_scale: float, in_unsigned: bool, out_unsigned: bool) -> bytes:
    """The header words with the checksum word 0 (``seal`` the finished image). Raises ValueError for a
    scale that is not positive and finite."""
    words = [0] * HEADER_WORDS
    words[WORD["magic"]] = MAGIC
    words[WORD["version"]] = FORMAT_VERSION
    words[WORD["n_ops"]] = n_ops
    words[WORD["desc_words"]] = desc_words
    words[WORD["total_bytes"]] = total_bytes
    words[WORD["input_bytes"]] = input_bytes
    words[WORD["output_bytes"]] = output_bytes
    words[WORD["in_scale_lo"]:WORD["in_scale_hi"] + 1] = _scale_words(in_scale, "in_scale")
    words[WORD["out_scale_lo"]:WORD["out_scale_hi"] + 1] = _scale_words(out_scale, "out_scale")
    words[WORD["io_flags"]] = (IO_IN_UNSIGNED if in_unsigned else 0) | (IO_OUT_UNSIGNED if out_unsigned else 0)
    return _WORDS.pack(*(w & 0xFFFFFFFF for w in words))


def header_words(image: bytes) -> tuple:
    """The HEADER_WORDS header words as unsigned ints (the image must hold them)."""
    return _WORDS.unpack_from(image, 0)


def _scale(words, name: str) -> float:
    return _SCALE.unpack(struct.pack("<2I", words[WORD[name + "_lo"]], words[WORD[name + "_hi"]]))[0]


def check_io_words(words, flags: bool = True) -> tuple:
    """(in_scale, out_scale, in_unsigned, out_unsigned) from header words 8..15; HeaderError: ERR_HEADER
    for a scale that is not positive and finite or a reserved word that is not 0, ERR_IO for unknown
    io_flags bits (``flags=False`` leaves those to the caller's comparison with the ops)."""
    scales = []
    for name in ("in_scale", "out_scale"):
        v = _scale(words, name)
        if not (math.isfinite(v) and v > 0):
            raise HeaderError(regmap.ERR_HEADER, f"header {name} (words {WORD[name + '_lo']}, "
                              f"{WORD[name + '_hi']}) is {v!r}, not a positive finite number")
        scales.append(v)
    for name in HEADER_FIELDS[WORD["io_flags"] + 1:]:
        if words[WORD[name]]:
            raise HeaderError(regmap.ERR_HEADER, f"header word {WORD[name]} (reserved) is "
                              f"0x{words[WORD[name]]:08x}, not 0")
    io = words[WORD["io_flags"]]
    if flags and io & ~(IO_IN_UNSIGNED | IO_OUT_UNSIGNED):
        raise HeaderError(regmap.ERR_IO, f"header io_flags (word {WORD['io_flags']}) is 0x{io:08x}, "
                          f"only bits 0 and 1 are defined")
    return scales[0], scales[1], bool(io & IO_IN_UNSIGNED), bool(io & IO_OUT_UNSIGNED)


def parse_header(image: bytes, format_version: Optional[int] = None) -> Header:
    """Check a Program image's header on its own (magic, version, size, checksum, scales, flags) and
    return it; HeaderError otherwise. ``format_version``: the version a bundle manifest promises
    (None: this kit's FORMAT_VERSION). The descriptors are not read (flow.compile.program does)."""
    image = memoryview(image).cast("B") if not isinstance(image, (bytes, bytearray)) else image
    size = len(image)
    if size < 8:
        raise HeaderError(regmap.ERR_HEADER, f"is {size} bytes, shorter than the program header (truncated)")
    magic, version = struct.unpack_from("<2I", image, 0)
    if magic != MAGIC:
        raise HeaderError(regmap.ERR_MAGIC, f"has magic 0x{magic:08x}, not 'VQHL' (0x{MAGIC:08x}): "
                          "not a vqhls program image")
    if format_version is not None and version != int(format_version):
        raise HeaderError(regmap.ERR_VERSION, f"has program format version {version}, its bundle manifest "
                          f"says {format_version}")
    if version != FORMAT_VERSION:
        raise HeaderError(regmap.ERR_VERSION, f"has program format version {version}, this kit reads "
                          f"version {FORMAT_VERSION}")
    if size < HEADER_BYTES:
        raise HeaderError(regmap.ERR_HEADER, f"is {size} bytes, shorter than the {HEADER_BYTES}-byte program "
                          "header (truncated)")
    w = header_words(image)
    if w[WORD["total_bytes"]] != size:
        raise HeaderError(regmap.ERR_HEADER, f"is {size} bytes, its header says {w[WORD['total_bytes']]} "
                          f"({'truncated' if size < w[WORD['total_bytes']] else 'trailing bytes'})")
    crc = image_crc(image)
    if w[CRC_WORD] != crc:
        raise HeaderError(regmap.ERR_CRC, f"checksum mismatch: corrupted image (CRC32 mismatch: header word "
                          f"{CRC_WORD} says 0x{w[CRC_WORD]:08x}, the bytes after it give 0x{crc:08x})")
    in_scale, out_scale, in_uns, out_uns = check_io_words(w)
    n_ops, dw = w[WORD["n_ops"]], w[WORD["desc_words"]]
    if dw != DESC_WORDS or n_ops < 1 or HEADER_BYTES + 4 * n_ops * DESC_WORDS > size:
        raise HeaderError(regmap.ERR_HEADER, f"header says {n_ops} ops of {dw}-word descriptors, which a "
                          f"{size}-byte image of format {FORMAT_VERSION} ({DESC_WORDS}-word descriptors) cannot hold")

    def desc(op: int, names) -> tuple:
        base = HEADER_BYTES + 4 * (op * DESC_WORDS)
        return tuple(struct.unpack_from("<i", image, base + 4 * DESC_FIELDS.index(f))[0] for f in names)

    in_shape, out_shape = desc(0, ("H", "W", "C")), desc(n_ops - 1, ("OH", "OW", "OC"))
    for what, flag, field in (("input", in_uns, desc(0, ("in_unsigned",))[0]),
                              ("output", out_uns, desc(n_ops - 1, ("out_unsigned",))[0])):
        if flag != bool(field):
            raise HeaderError(regmap.ERR_IO, f"header io_flags say the {what} is {'un' if flag else ''}signed, "
                              f"the {'first' if what == 'input' else 'last'} op's descriptor "
                              f"{'un' if field else ''}signed")
    for what, shape, words in (("input", in_shape, w[WORD["input_bytes"]]),
                               ("output", out_shape, w[WORD["output_bytes"]])):
        if min(shape) < 1 or shape[0] * shape[1] * shape[2] != words:
            raise HeaderError(regmap.ERR_IO, f"header says {words} {what} bytes, the "
                              f"{'first' if what == 'input' else 'last'} op's descriptor {list(shape)}")
    return Header(version, n_ops, dw, w[WORD["total_bytes"]], w[WORD["input_bytes"]], w[WORD["output_bytes"]],
                  w[CRC_WORD], in_scale, out_scale, in_uns, out_uns, in_shape, out_shape)


__all__ = ["MAGIC", "FORMAT_VERSION", "HEADER_WORDS", "DESC_WORDS", "DESC_FIELDS", "HEADER_FIELDS", "HEADER_BYTES", "CRC_WORD", "CRC_START",
           "IO_IN_UNSIGNED", "IO_OUT_UNSIGNED", "HeaderError", "Header", "image_crc", "seal", "pack_header",
           "header_words", "check_io_words", "parse_header"]
