"""The Program: what the accelerator executes, and its binary image.

A Program is a list of layer ops plus their integer parameters. ``to_bytes``
packs it into the one blob the engine reads over its m_axi port (and the deploy
bundle stores); ``from_bytes`` is the exact inverse. This module imports
neither torch nor the rest of the flow, so the host can use it on the board.

Binary layout (little-endian, every array 4-byte aligned, offsets in bytes
from the start of the blob). The header's one definition is ``engine_io.program_image``
(the board's bundle loader checks images with it, without the flow):

    word 0  magic 0x4C485156 ('VQHL')     word 1  FORMAT_VERSION
    word 2  n_ops                         word 3  DESC_WORDS
    word 4  total blob bytes              word 5  input bytes (H*W*C)
    word 6  output bytes                  word 7  CRC32 (zlib.crc32) of every byte after word 7
    words 8-9  in_scale (float64)         words 10-11  out_scale (float64)
    word 12 io_flags (bit 0: input uint8, bit 1: output uint8; they equal ops[0].in_unsigned and
            ops[-1].out_unsigned)         words 13-15 reserved (0)
    then n_ops descriptors of DESC_WORDS int32 each (field order: DESC_FIELDS)
    then parameter arrays at the offsets the descriptors name.

``from_bytes`` verifies the checksum (a flipped bit in a descriptor, a LUT or a
scale would otherwise run silently with wrong numbers), and so does the engine's
load call, in its one burst pass over the image (STATUS ERR_CRC).
Version history: 1 = conv/pools; 2 = PQ op (fields v, K, lut_bits and arrays
proto, lut appended at the end of the descriptor) and the checksum; 3 = 64-word
descriptors carrying the fields ``flow.compile.layout.place`` derives for one
EngineConfig (activation word layouts, tile counts, on-chip parameter addresses);
4 = 16-word header carrying the input / output scales and signedness (a program.bin
stands alone: the host quantizes inputs from it), checksummed with the body.

Parameter arrays per op (absent ones have offset 0):
    weight   int8  [Cout][KH][KW][Cin]          dense layers (wfmt == DENSE)
    idx      uint16 [Cout][KH][KW][Cin/d]        codeword index per vector (wfmt == CODEBOOK, CODEBOOK_SHARED)
    mask     uint16 [Cout][KH][KW][Cin/d]        bit e set = element e of the vector kept; wfmt ==
                                                 CODEBOOK_SHARED: [ceil(Cout/mg)][KH][KW][Cin/d], channel oc
                                                 uses row oc // mg
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

from engine_io import program_image as _image
from engine_io import regmap
from engine_io.program_image import (  # noqa: F401  (re-exported: the format's one definition)
    DESC_FIELDS, DESC_WORDS, FORMAT_VERSION, HEADER_WORDS, MAGIC, HeaderError, image_crc, seal,
)

# opcodes
CONV, MAXPOOL, AVGPOOL, PQ = 1, 2, 3, 4
OPCODES = {"conv": CONV, "maxpool": MAXPOOL, "avgpool": AVGPOOL, "pq": PQ}
# weight formats; CODEBOOK_SHARED: a codebook layer whose N:M mask is shared by every aligned group of
# ``mg`` output channels (mask array [ceil(OC/mg)][KH][KW][C/d]; the row-mux array runs it, docs/engine.md)
DENSE, CODEBOOK, CODEBOOK_SHARED = 0, 1, 2

# DESC_WORDS and the descriptor's field order, DESC_FIELDS, are engine_io.program_image's (the board reads
# the first and last op's shapes from them)
DERIVED_FIELDS = ("CW", "WB", "OCW", "OWB", "GR", "NG", "NPT", "NOT", "NSTEP", "passes", "dec", "vpc", "cpv",
                  "resident", "v_base", "cb_base", "w_base", "ch_base", "nsub", "lut_resident", "NVEC",
                  "rowmux")
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
    mg: int = 0                # wfmt CODEBOOK_SHARED: output channels sharing one mask (the engine needs cols)
    rowmux: int = 0            # conv: 1 when placed for a row-mux engine (EngineConfig.row_mux; passes differ)
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

    in_scale / out_scale: real value = scale * integer code; the image header carries them (format 4),
    with the codes' signedness (``in_unsigned`` / ``out_unsigned``: the first op's input and the last
    op's output flags).
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

    @property
    def in_unsigned(self) -> bool:
        """The input codes are uint8 (else int8): the first op reads its input so."""
        return bool(self.ops[0].in_unsigned)

    @property
    def out_unsigned(self) -> bool:
        """The output codes are uint8 (else int8): the last op writes them so."""
        return bool(self.ops[-1].out_unsigned)

    def to_bytes(self) -> bytes:
        """Pack into the engine's parameter image (see module docstring). Raises ValueError for an
        empty program or a scale that is not positive and finite."""
        if not self.ops:
            raise ValueError("an empty Program has no image: give it at least one op")
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
        header = _image.pack_header(len(self.ops), DESC_WORDS, pos, self.input_bytes, self.output_bytes,
                                    self.in_scale, self.out_scale, self.in_unsigned, self.out_unsigned)
        return seal(header + descs.astype("<i4").tobytes() + b"".join(chunks))

    @classmethod
    def from_bytes(cls, blob: bytes, **meta) -> "Program":
        """Inverse of ``to_bytes``; raises ProgramFormatError (one line) on a corrupted image.

        Keyword arguments are Program fields: ``meta``; ``in_scale`` / ``out_scale`` / ``in_shape``, when
        given, must agree with what the image says (they are read from it)."""
        unknown = sorted(set(meta) - {"in_scale", "out_scale", "in_shape", "meta"})
        if unknown:
            raise TypeError(f"Program.from_bytes() got unexpected keyword arguments {unknown}")
        blob = bytes(blob)
        try:
            hdr = _image.parse_header(blob)
        except HeaderError as e:
            fix = ("re-export it with this kit (flow.compile.lower, Program.to_bytes())" if e.code == regmap.ERR_VERSION
                   else "copy it again from its source, or rebuild it (Program.to_bytes())")
            raise ProgramFormatError(f"program image {e}: {fix}") from None
        n_ops, dw = hdr.n_ops, hdr.desc_words
        if dw != DESC_WORDS:
            raise ProgramFormatError(f"program image has {dw}-word descriptors, format {FORMAT_VERSION} has "
                                     f"{DESC_WORDS}: corrupted image")
        head = (HEADER_WORDS + n_ops * dw) * 4
        if n_ops < 1 or head > len(blob):
            raise ProgramFormatError(f"program image: {n_ops} ops do not fit a {len(blob)}-byte image")
        ops = decode_ops(blob, n_ops)
        first, last = ops[0], ops[-1]
        for what, word, want in (("input", hdr.input_bytes, first.in_bytes), ("output", hdr.output_bytes,
                                                                               last.out_bytes)):
            if word != want:
                raise ProgramFormatError(f"program image header says {word} {what} bytes, the "
                                         f"{'first' if what == 'input' else 'last'} op {want}: corrupted image")
        for what, flag, want in (("input", hdr.in_unsigned, first.in_unsigned),
                                 ("output", hdr.out_unsigned, last.out_unsigned)):
            if flag != bool(want):
                raise ProgramFormatError(f"program image header says the {what} is "
                                         f"{'unsigned' if flag else 'signed'}, the {'first' if what == 'input' else 'last'} "
                                         f"op {'unsigned' if want else 'signed'}: corrupted image")
        read = {"in_scale": hdr.in_scale, "out_scale": hdr.out_scale, "in_shape": (first.H, first.W, first.C)}
        for key, value in read.items():
            if key in meta:
                given = meta.pop(key)
                given = tuple(int(s) for s in given) if key == "in_shape" else float(given)
                if given != value:
                    raise ProgramFormatError(f"program image {key} is {value}, the caller says {given}: pass the "
                                             f"image's own (Program.from_bytes reads it)")
        return cls(ops=ops, **read, meta=dict(meta.get("meta") or {}))

    def config_hash(self) -> int:
        """CRC32 of the packed image: identifies a loaded program."""
        return zlib.crc32(self.to_bytes())


def decode_ops(blob: bytes, n_ops: int) -> list[Op]:
    """The ``n_ops`` ops of an image whose header was checked: descriptors and the arrays they name.
    Raises ProgramFormatError for a negative count or an array outside the parameter area."""
    head = (HEADER_WORDS + n_ops * DESC_WORDS) * 4
    descs = np.frombuffer(blob, dtype="<i4", count=n_ops * DESC_WORDS, offset=HEADER_WORDS * 4)
    ops = []
    for row in descs.reshape(n_ops, DESC_WORDS):
        vals = dict(zip(DESC_FIELDS, (int(v) for v in row)))
        dims = ("H", "W", "C", "OH", "OW", "OC", "KH", "KW", "d", "k", "v", "K", "lut_bits")
        if any(vals[f] < 0 for f in dims):  # a corrupted descriptor: negative counts would read garbage
            raise ProgramFormatError(f"program image op {len(ops)}: negative dimension in descriptor")
        op = Op(**{f: v for f, v in vals.items() if not f.startswith("off_")})
        for key, shape in _array_shapes(op).items():
            off = vals["off_" + key]
            if off == 0:
                continue
            count = math.prod(shape)  # Python ints: a corrupted huge shape cannot wrap around
            dt = np.dtype(_ARRAYS[key]).newbyteorder("<")
            if off < head or off % 4 or off + count * dt.itemsize > len(blob):
                raise ProgramFormatError(f"program image op {len(ops)}: {key} at offset {off} lies outside "
                                         "the parameter area")
            op.arrays[key] = np.frombuffer(blob, dtype=dt, count=count, offset=off).reshape(shape).astype(_ARRAYS[key])
        ops.append(op)
    return ops


def _array_shapes(op: Op) -> dict[str, tuple[int, ...]]:
    """Shapes of the parameter arrays an op can carry."""
    nvec = op.C // op.d if op.d else 0
    subspaces = op.KH * op.KW * op.C // op.v if op.v else 0
    return {
        "weight": (op.OC, op.KH, op.KW, op.C),
        "idx": (op.OC, op.KH, op.KW, nvec),
        "mask": (cdiv_(op.OC, op.mg) if op.wfmt == CODEBOOK_SHARED and op.mg > 0 else op.OC, op.KH, op.KW, nvec),
        "codebook": (op.k, op.d),
        "bias": (op.OC,),
        "mult": (op.OC,),
        "shift": (op.OC,),
        "res_mult": (op.OC,),
        "proto": (subspaces, op.K, op.v),
        "lut": (subspaces, op.K, op.OC),
    }


def cdiv_(a: int, b: int) -> int:
    """ceil(a / b) for integers (b > 0)."""
    return -(-a // b)


def reads_flattened(op: Op, held: tuple[int, int, int]) -> bool:
    """True when ``op`` is a Linear (a 1x1 conv on 1x1xC) reading a buffer that holds a ``held`` = (H, W, C')
    tensor as its flat NHWC vector (H*W*C' == C): the one reinterpretation of a buffer the engine runs
    (flow.compile.layout places it as an HxW-kernel conv on that tensor)."""
    return (op.opcode == CONV and op.H == op.W == op.KH == op.KW == 1 and op.pad == 0
            and held[0] * held[1] * held[2] == op.C)


def proto_values(op: Op, proto: np.ndarray | None = None) -> np.ndarray:
    """The prototype bytes of a PQ op as integers (int64), read per ``in_unsigned`` like activations."""
    b = np.asarray(op.arrays["proto"] if proto is None else proto).astype(np.uint8)
    return (b if op.in_unsigned else b.view(np.int8)).astype(np.int64)


def replace(op: Op, **kw) -> Op:
    """A copy of ``op`` with fields changed."""
    return dataclasses.replace(op, **kw)
