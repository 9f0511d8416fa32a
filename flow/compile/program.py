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
    word 6  output bytes                  word 7  CRC32 (zlib.crc32) of every byte after the header
    then n_ops descriptors of DESC_WORDS int32 each (field order: DESC_FIELDS)
    then parameter arrays at the offsets the descriptors name.

``from_bytes`` verifies the checksum (a flipped bit in a descriptor or a LUT
would otherwise run silently with wrong numbers), and so does the engine's load
call, in its one burst pass over the image body (STATUS ERR_CRC).
Version history: 1 = conv/pools; 2 = PQ op (fields v, K, lut_bits and arrays
proto, lut appended at the end of the descriptor) and the checksum; 3 = 64-word
descriptors carrying the fields ``flow.compile.layout.place`` derives for one
EngineConfig (activation word layouts, tile counts, on-chip parameter addresses).

Parameter arrays per op (absent ones have offset 0):
    weight   int8  [Cout][KH][KW][Cin]          dense layers (wfmt == DENSE)
    idx      uint16 [Cout][KH][KW][Cin/d]        codeword index per vector (wfmt == CODEBOOK)
    mask     uint16 [Cout][KH][KW][Cin/d]        bit e set = element e of the vector kept
    codebook int8  [k][d]
    bias     int32 [Cout]   added to the accumulator before requantization
    mult     int32 [Cout]   requantization multiplier M
    shift    int32 [Cout]   requantization shift S (1..31)
    res_mult int32 [Cout]   multiplier of the fused residual input
    proto    8-bit [Cs][K][v]  PQ prototypes in the input activation's integer grid: each byte is
                            read like an input activation byte (uint8 when in_unsigned, else int8)
    lut      int16 [Cs][K][Cout]  PQ lookup table (values within lut_bits bits, 8 or 16)
Activations are NHWC bytes in on-chip buffers; a byte is read as uint8 when
the op's ``*_unsigned`` flag says so, else as int8. Linear layers are 1x1
convolutions on a 1x1xC input.

PQ op (opcode PQ; a product-quantized conv / linear, the lookup engine), with
D = KH*KW*C and Cs = D / v subspaces of K prototypes each. For every output
pixel (oh, ow):
    a[D]    the im2col patch in (kh, kw, c) order, zero padded: a[(kh*KW + kw)*C + c] =
            x[oh*stride - pad + kh, ow*stride - pad + kw, c] (0 outside the input), integers
            read per in_unsigned;
    for each subspace s:  dist[k] = sum_{e<v} (a[s*v + e] - proto[s][k][e])^2    (exact, < 2^31)
                          idx_s   = the LOWEST k with the minimal dist (strict-less scan)
    acc[oc] = bias[oc] + sum_s lut[s][idx_s][oc]                                   (int32)
    out     = requant(acc, mult, shift, lo, hi, residual)      (the conv's requantization)
The one executable definition is flow.quant.ops.pq_conv; a subvector may straddle
kernel taps (v = 9, C = 16).
"""
from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

MAGIC = 0x4C485156
FORMAT_VERSION = 3
HEADER_WORDS = 8
DESC_WORDS = 64

# opcodes
CONV, MAXPOOL, AVGPOOL, PQ = 1, 2, 3, 4
OPCODES = {"conv": CONV, "maxpool": MAXPOOL, "avgpool": AVGPOOL, "pq": PQ}
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
    # format version 2 (PQ), appended so the fields above keep their words
    "v", "K", "lut_bits", "off_proto", "off_lut",
    # format version 3: fields the placement (flow.compile.layout.place) derives for one EngineConfig,
    # so the engine needs no run-time divide: word layouts, tiling counts, on-chip addresses
    "CW", "WB", "OCW", "OWB", "GR", "NG", "NPT", "NOT", "NSTEP", "passes", "dec", "vpc", "cpv",
    "resident", "v_base", "cb_base", "w_base", "ch_base", "nsub", "lut_resident", "NVEC",
)
DERIVED_FIELDS = ("CW", "WB", "OCW", "OWB", "GR", "NG", "NPT", "NOT", "NSTEP", "passes", "dec", "vpc", "cpv",
                  "resident", "v_base", "cb_base", "w_base", "ch_base", "nsub", "lut_resident", "NVEC")
PQ_FIELDS = ("v", "K", "lut_bits")   # descriptor fields only PQ ops use (0 elsewhere)
assert len(DESC_FIELDS) <= DESC_WORDS

_ARRAYS = {  # name -> dtype as stored
    "weight": np.int8, "idx": np.uint16, "mask": np.uint16, "codebook": np.int8,
    "bias": np.int32, "mult": np.int32, "shift": np.int32, "res_mult": np.int32,
    "proto": np.uint8, "lut": np.int16,   # proto: raw bytes, read per in_unsigned (see module docstring)
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
    pq:       conv-shaped; acc = bias + sum of LUT rows picked by the nearest prototype of each of the
              KH*KW*C/v subvectors of the patch (module docstring), then the conv's requantization.
              ``proto`` may be given as int8 / uint8 values (checked against in_unsigned) and is
              stored as bytes.
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
    v: int = 0                 # PQ: subvector length
    K: int = 0                 # PQ: prototypes per subspace
    lut_bits: int = 0          # PQ: 8 or 16 (LUT values fit this many bits; stored int16)
    # derived by flow.compile.layout.place for one EngineConfig (0 until placed)
    CW: int = 0                # input words per pixel: ceil(C / lanes)
    WB: int = 0                # input words per bank and row: ceil(W / act_banks)
    OCW: int = 0               # output words per pixel: ceil(OC / lanes)
    OWB: int = 0               # output words per bank and row: ceil(OW / act_banks)
    GR: int = 0                # conv/pq: pixel groups per output row, ceil(OW / rows)
    NG: int = 0                # conv: pixel groups, OH * GR
    NPT: int = 0               # conv: pixel tiles, ceil(NG / acc_groups)
    NOT: int = 0               # conv/pq: output-channel tiles, ceil(OC / cols)
    NSTEP: int = 0             # conv: reduction steps per tile, KH * KW * CW
    passes: int = 0            # conv: array passes per step (kept weights of an m-group / n, rounded up)
    dec: int = 0               # conv: decode cycles per step
    vpc: int = 0               # codebook conv: d-vectors per column and step (lanes / d, or 1 when d > lanes)
    cpv: int = 0               # codebook conv: steps per d-vector (d / lanes, or 1)
    resident: int = 0          # 1: parameters copied on chip by the load call; 0: copied before each run of the op
    v_base: int = 0            # first vmem entry (codebook conv)
    cb_base: int = 0           # first codebook row (codebook conv)
    w_base: int = 0            # first dense weight word (dense conv)
    ch_base: int = 0           # first channel-parameter row (conv, pq, avgpool)
    nsub: int = 0              # pq: subspaces KH*KW*C / v
    lut_resident: int = 0      # pq: 1 when the LUT fits the on-chip LUT memory (else rows stream from DDR)
    NVEC: int = 0              # codebook conv: d-vectors per tap, C / d
    name: str = ""
    # integer parameters, see module docstring for dtypes and shapes
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, arr in list(self.arrays.items()):
            if key not in _ARRAYS:
                raise ValueError(f"op {self.name!r}: unknown parameter array {key!r}")
            a = np.asarray(arr)
            if key == "proto" and a.dtype != np.uint8:
                # values in the input's integer grid -> the bytes the engine holds
                lo, hi = (0, 255) if self.in_unsigned else (-128, 127)
                if a.size and (a.min() < lo or a.max() > hi):
                    raise ValueError(f"op {self.name!r}: proto values outside the input format [{lo}, {hi}]")
                a = np.asarray(a, np.int64) & 0xFF
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
        body = descs.astype("<i4").tobytes() + b"".join(chunks)
        header = np.array(
            [MAGIC, FORMAT_VERSION, len(self.ops), DESC_WORDS, pos, self.input_bytes, self.output_bytes, 0],
            dtype="<i4",
        )
        header[7] = np.uint32(zlib.crc32(body)).view(np.int32)
        return header.tobytes() + body

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
        head = (HEADER_WORDS + max(n_ops, 0) * dw) * 4
        if n_ops < 1 or head > len(blob):
            raise ProgramFormatError(f"program image: {n_ops} ops do not fit a {len(blob)}-byte image")
        crc = zlib.crc32(blob[HEADER_WORDS * 4:])
        if int(hdr[7]) & 0xFFFFFFFF != crc:
            raise ProgramFormatError(f"program image checksum mismatch: corrupted image "
                                     f"(header says 0x{int(hdr[7]) & 0xFFFFFFFF:08x}, bytes give 0x{crc:08x})")
        descs = np.frombuffer(blob, dtype="<i4", count=n_ops * dw, offset=HEADER_WORDS * 4).reshape(n_ops, dw)
        ops = []
        for row in descs:
            vals = dict(zip(DESC_FIELDS, (int(v) for v in row)))
            dims = ("H", "W", "C", "OH", "OW", "OC", "KH", "KW", "d", "k", "v", "K", "lut_bits")
            if any(vals[f] < 0 for f in dims):  # a corrupted descriptor: negative counts would read garbage
                raise ProgramFormatError(f"op {len(ops)}: negative dimension in descriptor")
            op = Op(**{f: v for f, v in vals.items() if not f.startswith("off_")})
            shapes = _array_shapes(op)
            for key, shape in shapes.items():
                off = vals["off_" + key]
                if off == 0:
                    continue
                count = math.prod(shape)  # Python ints: a corrupted huge shape cannot wrap around
                dt = np.dtype(_ARRAYS[key]).newbyteorder("<")
                if off < head or off % 4 or off + count * dt.itemsize > len(blob):
                    raise ProgramFormatError(f"op {len(ops)}: {key} at offset {off} lies outside the parameter area")
                op.arrays[key] = np.frombuffer(blob, dtype=dt, count=count, offset=off).reshape(shape).astype(_ARRAYS[key])
            ops.append(op)
        return cls(ops=ops, **meta)

    def config_hash(self) -> int:
        """CRC32 of the packed image: identifies a loaded program."""
        return zlib.crc32(self.to_bytes())


def _array_shapes(op: Op) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameter arrays an op can carry."""
    nvec = op.C // op.d if op.d else 0
    subspaces = op.KH * op.KW * op.C // op.v if op.v else 0
    return {
        "weight": (op.OC, op.KH, op.KW, op.C),
        "idx": (op.OC, op.KH, op.KW, nvec),
        "mask": (op.OC, op.KH, op.KW, nvec),
        "codebook": (op.k, op.d),
        "bias": (op.OC,),
        "mult": (op.OC,),
        "shift": (op.OC,),
        "res_mult": (op.OC,),
        "proto": (subspaces, op.K, op.v),
        "lut": (subspaces, op.K, op.OC),
    }


def proto_values(op: Op, proto: np.ndarray | None = None) -> np.ndarray:
    """The prototype bytes of a PQ op as integers (int64), read per ``in_unsigned`` like activations."""
    b = np.asarray(op.arrays["proto"] if proto is None else proto).astype(np.uint8)
    return (b if op.in_unsigned else b.view(np.int8)).astype(np.int64)


def replace(op: Op, **kw) -> Op:
    """A copy of ``op`` with fields changed."""
    return dataclasses.replace(op, **kw)
