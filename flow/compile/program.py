"""The Program: what the accelerator executes, and its binary image.

A Program is a list of layer ops plus their integer parameters. ``to_bytes``
packs it into the one blob the engine reads over its m_axi port (and the deploy
bundle stores); ``from_bytes`` is the exact inverse. This module imports
neither torch nor the rest of the flow, so the host can use it on the board.

Binary layout (little-endian, every array 4-byte aligned, offsets in bytes
from the start of the blob):

    word 0  magic 0x4C485156 ('VQHL')     word 1  FORMAT_VERSION
    word 2  n_ops                         word 3  DESC_WORDS
    word 4  total blob bytes              word 5  input bytes (H*W*C)
    word 6  output bytes                  word 7  reserved (0)
    then n_ops descriptors of DESC_WORDS int32 each (field order: DESC_FIELDS)
    then parameter arrays at the offsets the descriptors name.

Parameter arrays per op (absent ones have offset 0):
    weight   int8  [Cout][KH][KW][Cin]          dense layers (wfmt == DENSE)
    idx      uint16 [Cout][KH][KW][Cin/d]        codeword index per vector (wfmt == CODEBOOK)
    mask     uint16 [Cout][KH][KW][Cin/d]        bit e set = element e of the vector kept
    codebook int8  [k][d]
    bias     int32 [Cout]   added to the accumulator before requantization
    mult     int32 [Cout]   requantization multiplier M
    shift    int32 [Cout]   requantization shift S (1..31)
    res_mult int32 [Cout]   multiplier of the fused residual input
Activations are NHWC bytes in on-chip buffers; a byte is read as uint8 when
the op's ``*_unsigned`` flag says so, else as int8. Linear layers are 1x1
convolutions on a 1x1xC input.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field

import numpy as np

MAGIC = 0x4C485156
FORMAT_VERSION = 1
HEADER_WORDS = 8
DESC_WORDS = 40

# opcodes
CONV, MAXPOOL, AVGPOOL = 1, 2, 3
OPCODES = {"conv": CONV, "maxpool": MAXPOOL, "avgpool": AVGPOOL}
# weight formats
DENSE, CODEBOOK = 0, 1

DESC_FIELDS = (
    "opcode", "in_buf", "out_buf", "res_buf",          # res_buf -1: no residual
    "H", "W", "C", "OH", "OW", "OC",
    "KH", "KW", "stride", "pad",
    "in_unsigned", "res_unsigned", "out_unsigned", "lo", "hi",
    "wfmt", "n", "m", "d", "k",
    "off_weight", "off_idx", "off_mask", "off_codebook",
    "off_bias", "off_mult", "off_shift", "off_res_mult",
)
assert len(DESC_FIELDS) <= DESC_WORDS

_ARRAYS = {  # name -> dtype as stored
    "weight": np.int8, "idx": np.uint16, "mask": np.uint16, "codebook": np.int8,
    "bias": np.int32, "mult": np.int32, "shift": np.int32, "res_mult": np.int32,
}


class ProgramFormatError(ValueError):
    """The blob is not a valid Program image (wrong magic, version, size or checksum)."""


@dataclass
class Op:
    """One layer operation. Shapes are NHWC without the batch dimension.

    conv:     out[oh,ow,oc] = requant(sum w*x + bias[oc], mult[oc], shift[oc]) (+ res_mult[oc]*res inside
              the requantization when res_buf >= 0), clamped to [lo, hi].
    maxpool:  max over KHxKW windows (stride, pad must be 0); no requantization.
    avgpool:  sum over KHxKW windows, then requant with mult[c], shift[c] (global pool: KH=H, KW=W).
    """

    opcode: int
    in_buf: int
    out_buf: int
    H: int
    W: int
    C: int
    OH: int
    OW: int
    OC: int
    KH: int = 1
    KW: int = 1
    stride: int = 1
    pad: int = 0
    res_buf: int = -1
    in_unsigned: int = 0
    res_unsigned: int = 0
    out_unsigned: int = 0
    lo: int = -128
    hi: int = 127
    wfmt: int = DENSE
    n: int = 0
    m: int = 0
    d: int = 0
    k: int = 0
    name: str = ""
    # integer parameters, see module docstring for dtypes and shapes
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, arr in list(self.arrays.items()):
            if key not in _ARRAYS:
                raise ValueError(f"op {self.name!r}: unknown parameter array {key!r}")
            a = np.asarray(arr)
            info = np.iinfo(_ARRAYS[key])
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise ValueError(f"op {self.name!r}: {key} does not fit {np.dtype(_ARRAYS[key]).name}")
            self.arrays[key] = a.astype(_ARRAYS[key])

    @property
    def in_bytes(self) -> int:
        return self.H * self.W * self.C

    @property
    def out_bytes(self) -> int:
        return self.OH * self.OW * self.OC


@dataclass
class Program:
    """Ops in execution order; input arrives in buffer ``ops[0].in_buf``, output leaves from ``ops[-1].out_buf``.

    in_scale / out_scale: real value = scale * integer (metadata for the host; not in the blob header).
    """

    ops: list[Op]
    in_scale: float = 1.0
    out_scale: float = 1.0
    in_shape: tuple[int, int, int] = (0, 0, 0)   # H, W, C of the input image (NHWC)
    meta: dict = field(default_factory=dict)

    @property
    def input_bytes(self) -> int:
        return self.ops[0].in_bytes

    @property
    def output_bytes(self) -> int:
        return self.ops[-1].out_bytes

    def to_bytes(self) -> bytes:
        """Pack into the engine's parameter image (see module docstring)."""
        head = HEADER_WORDS + len(self.ops) * DESC_WORDS
        descs = np.zeros((len(self.ops), DESC_WORDS), dtype=np.int32)
        chunks: list[bytes] = []
        pos = head * 4
        for i, op in enumerate(self.ops):
            vals = {f: getattr(op, f) for f in DESC_FIELDS if not f.startswith("off_")}
            for key in _ARRAYS:
                arr = op.arrays.get(key)
                if arr is None or arr.size == 0:
                    vals["off_" + key] = 0
                    continue
                raw = np.ascontiguousarray(arr.astype(np.dtype(_ARRAYS[key]).newbyteorder("<"))).tobytes()
                raw += b"\0" * (-len(raw) % 4)
                vals["off_" + key] = pos
                chunks.append(raw)
                pos += len(raw)
            descs[i, : len(DESC_FIELDS)] = [int(vals[f]) for f in DESC_FIELDS]
        header = np.array(
            [MAGIC, FORMAT_VERSION, len(self.ops), DESC_WORDS, pos, self.input_bytes, self.output_bytes, 0],
            dtype="<i4",
        )
        return header.tobytes() + descs.astype("<i4").tobytes() + b"".join(chunks)

    @classmethod
    def from_bytes(cls, blob: bytes, **meta) -> "Program":
        """Inverse of ``to_bytes``; raises ProgramFormatError on a corrupted image."""
        if len(blob) < HEADER_WORDS * 4:
            raise ProgramFormatError("program image shorter than its header")
        hdr = np.frombuffer(blob, dtype="<i4", count=HEADER_WORDS)
        if int(hdr[0]) != MAGIC:
            raise ProgramFormatError("bad magic: not a vqhls program image")
        if int(hdr[1]) != FORMAT_VERSION:
            raise ProgramFormatError(f"program format version {int(hdr[1])}, this kit reads {FORMAT_VERSION}")
        n_ops, dw, total = int(hdr[2]), int(hdr[3]), int(hdr[4])
        if dw != DESC_WORDS or total != len(blob):
            raise ProgramFormatError(f"program image size {len(blob)} != header's {total} (truncated?)")
        descs = np.frombuffer(blob, dtype="<i4", count=n_ops * dw, offset=HEADER_WORDS * 4).reshape(n_ops, dw)
        ops = []
        for row in descs:
            vals = dict(zip(DESC_FIELDS, (int(v) for v in row)))
            op = Op(**{f: v for f, v in vals.items() if not f.startswith("off_")})
            shapes = _array_shapes(op)
            for key, shape in shapes.items():
                off = vals["off_" + key]
                if off == 0:
                    continue
                count = int(np.prod(shape))
                dt = np.dtype(_ARRAYS[key]).newbyteorder("<")
                if off + count * dt.itemsize > len(blob):
                    raise ProgramFormatError(f"op {len(ops)}: {key} runs past the end of the image")
                op.arrays[key] = np.frombuffer(blob, dtype=dt, count=count, offset=off).reshape(shape).astype(_ARRAYS[key])
            ops.append(op)
        return cls(ops=ops, **meta)

    def config_hash(self) -> int:
        """CRC32 of the packed image: identifies a loaded program."""
        return zlib.crc32(self.to_bytes())


def _array_shapes(op: Op) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameter arrays an op can carry."""
    nvec = op.C // op.d if op.d else 0
    return {
        "weight": (op.OC, op.KH, op.KW, op.C),
        "idx": (op.OC, op.KH, op.KW, nvec),
        "mask": (op.OC, op.KH, op.KW, nvec),
        "codebook": (op.k, op.d),
        "bias": (op.OC,),
        "mult": (op.OC,),
        "shift": (op.OC,),
        "res_mult": (op.OC,),
    }


def replace(op: Op, **kw) -> Op:
    """A copy of ``op`` with fields changed."""
    return dataclasses.replace(op, **kw)
