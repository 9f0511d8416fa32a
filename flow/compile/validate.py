"""The full Program check, on the host, before a Program reaches any engine.

``validate(program, engine)`` refuses, with a :class:`ProgramError`, every
Program the engine built for ``engine`` cannot run exactly as the golden
executor (flow.compile.program_exec) does. The engine itself keeps only cheap
checks (magic, version, checksum, compile-time limits); everything below used
to be ``validate_op`` in hls_templates/engine/top.cpp.j2 plus the values the
hardware checked while running, and is now done here once, in Python.

``ProgramError.code`` is the engine_io.regmap ERR_* code the engine reports (or
reported) for that class of error, ``ProgramError.op`` the failing op index
(None when not op-specific). ``str(e)`` is one line::

    op 3 'conv2': <what is wrong> (<field>=<value>, limit <x>): <the fix>

Rules, in the order they are checked (the first failure is raised):

program (op None)
    ERR_HEADER  1 <= len(ops) <= engine.max_ops; packed image <= engine.param_bytes
per op, in program order (each op's rules, then what it reads, before the next op)
    ERR_OPCODE  opcode is conv / maxpool / avgpool / pq; pq needs engine.pq
    ERR_BUFFER  0 <= in_buf, out_buf < num_bufs; out_buf != in_buf; res_buf is -1, or (conv / pq only)
                in 0..num_bufs-1 and != out_buf
    ERR_SHAPE   H W C OH OW OC KH KW stride in 1..act_buf_bytes, pad in 0..act_buf_bytes
    ERR_BUF_SIZE  H*W*C and OH*OW*OC <= act_buf_bytes; each tensor fits the banked buffer:
                H * ceil(W / act_banks) * ceil(C / lanes) <= bank_words (flow.compile.layout)
    ERR_LIMIT   C, OC <= max_channels
    ERR_SHAPE   H + 2 pad >= KH, W + 2 pad >= KW, OH = (H + 2 pad - KH) // stride + 1 (same for OW)
    ERR_PARAM   (all but maxpool) lo <= hi, both within the output format (uint8 / int8)
    pools:  ERR_SHAPE pad == 0, OC == C;  avgpool: ERR_OFFSET mult, shift of C int32; ERR_PARAM shift 1..31
    conv / pq:
    ERR_LIMIT   KH, KW <= max_kernel; conv: stride <= max_stride (the banked buffers' conflict-free reach)
    pq:     ERR_LIMIT 1 <= v <= pq_v_max, 1 <= K <= pq_k_max, v divides KH*KW*C,
                      KH*KW*C/v <= pq_subspaces_max
            ERR_PARAM lut_bits is 8 or 16
            ERR_OFFSET proto [nsub][K][v] bytes, lut [nsub][K][OC] int16
            ERR_PARAM every LUT value fits lut_bits (two's complement)
    dense:  ERR_OFFSET weight [OC][KH][KW][C]
    codebook: ERR_LIMIT 1 <= d <= d_max, 1 <= k <= k_max, d divides C, d divides lanes or lanes divides d
              ERR_PARAM 0 <= n <= m (the declared n:m pattern; any mask density runs, in ``passes``)
              ERR_OFFSET idx, mask [OC][KH][KW][C/d] uint16, codebook [k][d] int8
              ERR_PARAM every codeword index < k; every mask uses only its low d bits
    codebook, shared mask (wfmt 2): as codebook, but mask [ceil(OC/mg)][KH][KW][C/d]; ERR_PARAM mg >= 1
              (mg == engine.cols); ERR_OPCODE without engine.row_mux
    other wfmt: ERR_OPCODE
    ERR_OFFSET  mult, shift [OC] int32; bias [OC] when present; res_mult [OC] with a residual
    ERR_PARAM   every shift in 1..31
    ERR_PARAM   the int32 accumulator cannot overflow for any input (acc_range: bias + the weights times
                the input extremes; bias + the extreme LUT entries; an avgpool's window times them)
    any array:  ERR_OFFSET when present with another element count than the descriptor gives;
                ERR_PARAM when its values do not fit the stored dtype (they would wrap in to_bytes)
    ERR_BUFFER  dataflow: in_buf holds the program's input or an earlier op's output, as an [H, W, C]
                tensor (a Linear may read an [h, w, c] one with h*w*c == C as its flat vector:
                program.reads_flattened); res_buf holds an earlier op's [OH, OW, OC] output
placement (after every op passed)
    ERR_LIMIT   channel parameters of all ops fit engine.ch_rows (op None); one op's weights fit
                vmem_entries / cb_rows / dmem_words; anything else flow.compile.layout.place refuses
    ERR_PARAM   every derived descriptor field (program.DERIVED_FIELDS) equals what
                ``flow.compile.layout.place(program, engine)`` computes
image (validate_image; the header is engine_io.program_image's)
    ERR_MAGIC, ERR_VERSION, ERR_HEADER (descriptor words, n_ops, image size vs the header, the engine's
    param_bytes, alignment, truncation), the checksum (regmap.ERR_CRC), ERR_HEADER for a scale that is
    not positive and finite or a reserved header word that is not 0; then op by op the descriptor's own
    rules above (before its arrays are read, as validate_op ran), ERR_SHAPE / ERR_LIMIT / ERR_PARAM for
    a negative count the format cannot hold, ERR_OFFSET for an array outside the parameter area; then
    ``validate``; then ERR_IO (header input / output bytes and io_flags vs the first / last op).

Order: the first failing op in program order is reported, with all of its rules (descriptor, arrays,
values) checked before the next op; the engine used to report every op's descriptor errors before any
value error it found while running.

Not checked: the signedness an op reads a buffer with (the golden executor and the engine both read
the bytes with the reader's own flag).

One definition of the rules: ``check_program(program)`` applies the rules above that hold for any
engine (all but the engine-only ones listed next) and ``flow.compile.program_exec.run_program`` calls it
first, so the golden executor refuses exactly what it would be unable to run, with the same message;
``validate`` applies the same functions with the engine's limits. Engine-only rules: ERR_OPCODE for PQ
without a lookup unit; buffer indices below num_bufs and res_buf != in_buf; dimensions up to
act_buf_bytes and the banked buffer fit; max_channels, max_kernel, max_stride, pq_v_max, pq_k_max,
pq_subspaces_max, d_max, k_max, d and lanes; the layout rule; the header's max_ops / param_bytes; placement.
"""
from __future__ import annotations

import math

import numpy as np

from flow.compile import layout
from flow.compile.engine import EngineConfig
from flow.quant import ops as K
from flow.compile.program import (
    _ARRAYS, AVGPOOL, CODEBOOK, CODEBOOK_SHARED, CONV, DENSE, DERIVED_FIELDS, DESC_FIELDS, DESC_WORDS, FORMAT_VERSION,
    HEADER_WORDS, MAGIC, MAXPOOL, PQ, Op, Program, ProgramFormatError, _array_shapes, decode_ops,
    reads_flattened,
)
from engine_io import program_image as _image
from engine_io import regmap
from engine_io.program_image import CRC_WORD, HeaderError, image_crc

__all__ = ["ProgramError", "validate", "validate_image", "check_program", "image_bytes", "prepare"]

LOWER = "lower it for this engine with flow.compile.lower(qgraph, engine)"
REBUILD = f"the Program is inconsistent (hand-edited or corrupted); {LOWER}"
PLACE = "re-run flow.compile.layout.place(program, engine)"
# the checksum has its own STATUS code
ERR_CRC = regmap.ERR_CRC

_OPNAMES = {CONV: "conv", MAXPOOL: "maxpool", AVGPOOL: "avgpool", PQ: "pq"}


class ProgramError(ValueError):
    """A Program the engine cannot run. ``code``: engine_io.regmap ERR_* code; ``op``: failing op index or None;
    ``field``: the descriptor field or parameter array at fault (None when not one field)."""

    def __init__(self, code: int, op: int | None, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.op = op
        self.field = field

    @property
    def status(self) -> int:
        """The STATUS register word the engine reports for this error (code | op << 8)."""
        return self.code | ((regmap.STATUS_OP_NONE if self.op is None else self.op) << 8)

    def __reduce__(self):
        return (ProgramError, (self.code, self.op, str(self), self.field))


def _err(code: int, where: str, op: int | None, what: str, field: str | None, value=None, limit=None,
         fix: str = "", label: str = "limit") -> ProgramError:
    detail = ""
    if field is not None:
        detail = f" ({field}={value}" + (f", {label} {limit})" if limit is not None else ")")
    msg = f"{where}: {what}{detail}" + (f": {fix}" if fix else "")
    return ProgramError(code, op, " ".join(msg.split("\n")), field)


class _Where:
    """Error factory for one op: names it as 'op i 'name''."""

    def __init__(self, i: int, op: Op):
        self.i = i
        self.where = f"op {i} '{op.name}'" if op.name else f"op {i}"

    def __call__(self, code: int, what: str, field: str | None = None, value=None, limit=None,
                 fix: str = "", label: str = "limit") -> ProgramError:
        return _err(code, self.where, self.i, what, field, value, limit, fix, label)


def _raise_limit(name: str, engine: EngineConfig) -> str:
    return f"raise EngineConfig.{name} (now {getattr(engine, name)}) or shrink the layer, then {LOWER}"


def image_bytes(program: Program) -> int:
    """Size of ``program.to_bytes()``, without packing it."""
    size = (HEADER_WORDS + len(program.ops) * DESC_WORDS) * 4
    for op in program.ops:
        for key, dt in _ARRAYS.items():
            a = op.arrays.get(key)
            if a is not None and a.size:
                n = a.size * np.dtype(dt).itemsize
                size += n + (-n % 4)
    return size


# ---------------------------------------------------------------------------
# per-op rules
# ---------------------------------------------------------------------------
def _array(E: _Where, op: Op, key: str, count: int, shape: str, required: bool = True) -> np.ndarray | None:
    """The op's array ``key`` flattened, checked for presence, element count and dtype range."""
    a = op.arrays.get(key)
    dt = np.dtype(_ARRAYS[key])
    if a is None or np.asarray(a).size == 0:
        if not required:
            return None
        raise E(regmap.ERR_OFFSET, f"parameter array '{key}' is missing", f"off_{key}", 0,
                f"{count} {dt.name} values {shape}", REBUILD)
    a = np.asarray(a).reshape(-1)
    if a.size != count:
        raise E(regmap.ERR_OFFSET, f"parameter array '{key}' has {a.size} values, the descriptor gives {count} "
                f"{shape}", f"len({key})", a.size, count, REBUILD, "expected")
    if a.dtype != dt:
        lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
        if key == "proto":   # values in the input's grid, stored as bytes
            lo, hi = (0, 255) if op.in_unsigned else (-128, 127)
        if not np.issubdtype(a.dtype, np.integer):
            raise E(regmap.ERR_PARAM, f"parameter array '{key}' holds {a.dtype} values, not integers",
                    f"{key}.dtype", a.dtype, dt.name, REBUILD)
        bad = np.flatnonzero((a < lo) | (a > hi))
        if bad.size:
            j = int(bad[0])
            raise E(regmap.ERR_PARAM, f"{key}[{j}] does not fit the stored {dt.name} (it would wrap in the image)",
                    f"{key}[{j}]", int(a[j]), f"{lo}..{hi}", REBUILD)
    return a


def _check_shift(E: _Where, shift: np.ndarray) -> None:
    bad = np.flatnonzero((shift < 1) | (shift > 31))
    if bad.size:
        c = int(bad[0])
        raise E(regmap.ERR_PARAM, f"requantization shift of channel {c} is outside 1..31", f"shift[{c}]",
                int(shift[c]), "1..31", f"requantize the layer (flow.quant.convert picks shifts in 1..31), then "
                f"{LOWER}")


ACC_MIN, ACC_MAX = -(1 << 31), (1 << 31) - 1   # the accumulators are int32 (EngineConfig.acc_bits is 32)


def acc_range(op: Op, bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) accumulator value per output channel over every possible input (int64 [OC]):
    bias + the weights times the input extremes (0..255 or -128..127; padding zeros lie inside), for a PQ
    op bias + the smallest / largest LUT entry of every subspace, for an average pool the window times
    the extremes. Exact for conv and pools, a bound for PQ (not every prototype need be reachable)."""
    xlo, xhi = (0, 255) if op.in_unsigned else (-128, 127)
    if bias is None:
        bias = op.arrays.get("bias")
    b = np.zeros(max(op.OC, 1), np.int64) if bias is None or np.asarray(bias).size == 0 else \
        np.asarray(bias, np.int64).reshape(-1)
    if op.opcode == PQ:
        nsub = op.KH * op.KW * op.C // op.v
        lut = np.asarray(op.arrays["lut"], np.int64).reshape(nsub, op.K, op.OC)
        return b + lut.min(axis=1).sum(axis=0), b + lut.max(axis=1).sum(axis=0)
    if op.opcode == CONV:
        if op.wfmt == DENSE:
            w = np.asarray(op.arrays["weight"], np.int64).reshape(op.OC, -1)
        else:
            nvec = op.C // op.d
            idx = np.asarray(op.arrays["idx"]).reshape(op.OC, op.KH, op.KW, nvec)
            mask = np.asarray(op.arrays["mask"])
            if op.wfmt == CODEBOOK_SHARED:   # row oc // mg of a [ceil(OC/mg)][KH][KW][C/d] mask
                mask = mask.reshape(-1, op.KH, op.KW, nvec)[np.arange(op.OC) // op.mg]
            keep = K.mask_bits_to_keep(mask.reshape(op.OC, op.KH, op.KW, nvec), op.d)
            w = K.decode_codebook(idx, keep, np.asarray(op.arrays["codebook"]).reshape(op.k, op.d)).reshape(op.OC, -1)
        pos = w > 0
        return (b + np.where(pos, w * xlo, w * xhi).sum(axis=1), b + np.where(pos, w * xhi, w * xlo).sum(axis=1))
    n = min(op.KH * op.KW, 1 << 40)
    return np.full(1, n * xlo, np.int64), np.full(1, n * xhi, np.int64)


def _check_accumulator(E: _Where, op: Op, bias: np.ndarray | None) -> None:
    """ERR_PARAM unless the int32 accumulator cannot overflow for any input (``acc_range``): the golden
    model sums in int64, the engine in int32, so beyond it the two would differ. flow.compile.lower keeps
    the stricter |acc| <= sum|w| * max|x| + |bias| (flow.quant.ops.acc_bound), which implies this."""
    lo, hi = acc_range(op, bias)
    for c, v in ((int(hi.argmax()), int(hi.max(initial=0))), (int(lo.argmin()), int(lo.min(initial=0)))):
        if not ACC_MIN <= v <= ACC_MAX:
            raise E(regmap.ERR_PARAM, f"the int32 accumulator of channel {c} can reach {v} for some input (bias "
                    "plus the weights times the input extremes)", "accumulator", v, f"{ACC_MIN}..{ACC_MAX}",
                    f"requantize the layer with smaller weights / bias, then {LOWER}")


def _check_tensors(E: _Where, op: Op, engine: EngineConfig) -> None:
    """ERR_BUF_SIZE: each tensor fits one activation buffer, as bytes and in the banked word layout."""
    BUF = engine.act_buf_bytes
    fix = f"raise EngineConfig.act_buf_bytes (now {BUF}) or shrink the tensor, then {LOWER}"
    B, L, words = engine.act_banks, engine.lanes, engine.bank_words
    for what, (H, W, C) in (("input", (op.H, op.W, op.C)), ("output", (op.OH, op.OW, op.OC))):
        if H * W * C > BUF:
            raise E(regmap.ERR_BUF_SIZE, f"{what} {H}x{W}x{C} is larger than one activation buffer",
                    f"{what} bytes", H * W * C, f"act_buf_bytes={BUF}", fix)
        need = H * layout.cdiv(W, B) * layout.cdiv(C, L)
        if need > words:
            raise E(regmap.ERR_BUF_SIZE, f"{what} {H}x{W}x{C} does not fit the banked activation buffer "
                    f"(H*ceil(W/{B})*ceil(C/{L}) words per bank)", "words per bank", need,
                    f"bank_words={words}", fix)


def _check_opcode(E: _Where, op: Op, engine: EngineConfig | None) -> None:
    """ERR_OPCODE: a known opcode; PQ only on an engine with a lookup unit."""
    if op.opcode not in _OPNAMES:
        raise E(regmap.ERR_OPCODE, "unknown opcode", "opcode", op.opcode,
                "one of " + ", ".join(f"{v}={k}" for k, v in _OPNAMES.items()), REBUILD)
    if op.opcode == PQ and engine is not None and not engine.pq:
        raise E(regmap.ERR_OPCODE, "a PQ op, but this engine has no lookup unit", "opcode", op.opcode,
                "EngineConfig.pq=False", "build the engine with EngineConfig(pq=True), or compress the layer "
                f"without PQ and {LOWER}")


def _check_buffers(E: _Where, op: Op, engine: EngineConfig | None) -> None:
    """ERR_BUFFER: buffer indices in range (below num_bufs with an engine), distinct where they must be,
    a residual only on conv-shaped ops."""
    NB = engine.num_bufs if engine is not None else None
    buf_fix = LOWER if NB is None else f"{LOWER} (it allocates buffers within EngineConfig.num_bufs = {NB})"
    for f in ("in_buf", "out_buf"):
        if not 0 <= getattr(op, f) < (NB or 1 << 31):
            raise E(regmap.ERR_BUFFER, "activation buffer index out of range", f, getattr(op, f),
                    ">= 0" if NB is None else f"0..{NB - 1} (num_bufs={NB})", buf_fix)
    if op.out_buf == op.in_buf:
        raise E(regmap.ERR_BUFFER, "the op writes the buffer it reads", "out_buf", op.out_buf,
                f"!= in_buf={op.in_buf}", buf_fix)
    if op.res_buf == -1:
        return
    if op.opcode not in (CONV, PQ):
        raise E(regmap.ERR_BUFFER, f"a residual input on a pooling op ({_OPNAMES[op.opcode]}: only conv "
                "and pq add one)", "res_buf", op.res_buf, "-1", REBUILD)
    if not 0 <= op.res_buf < (NB or 1 << 31):
        raise E(regmap.ERR_BUFFER, "residual buffer index out of range", "res_buf", op.res_buf,
                "-1 or >= 0" if NB is None else f"-1 or 0..{NB - 1} (num_bufs={NB})", buf_fix)
    if op.res_buf == op.out_buf:
        raise E(regmap.ERR_BUFFER, "the op writes the buffer its residual comes from", "res_buf",
                op.res_buf, f"!= out_buf={op.out_buf}", buf_fix)
    if op.res_buf == op.in_buf and engine is not None:   # the drain's and the array's reads share no port
        raise E(regmap.ERR_BUFFER, "the residual comes from the buffer the op reads", "res_buf",
                op.res_buf, f"!= in_buf={op.in_buf}",
                f"{LOWER} (it reads a residual that is the op's own input from a copy in a third buffer)")


def _check_shape(E: _Where, op: Op, engine: EngineConfig | None) -> None:
    """ERR_SHAPE / ERR_BUF_SIZE / ERR_LIMIT: dimensions in range, tensors that fit the activation buffers,
    channels within max_channels, a kernel inside the padded input and the output size it gives."""
    BUF = engine.act_buf_bytes if engine is not None else None
    for f in ("H", "W", "C", "OH", "OW", "OC", "KH", "KW", "stride", "pad"):
        lo = 0 if f == "pad" else 1
        if not lo <= getattr(op, f) <= (BUF or 1 << 31):
            raise E(regmap.ERR_SHAPE, "descriptor dimension out of range", f, getattr(op, f),
                    f">= {lo}" if BUF is None else f"{lo}..{BUF} (act_buf_bytes)", REBUILD)
    if engine is not None:
        _check_tensors(E, op, engine)
    for f in ("C", "OC"):
        if engine is not None and getattr(op, f) > engine.max_channels:
            raise E(regmap.ERR_LIMIT, f"{'input' if f == 'C' else 'output'} channels beyond the engine's limit",
                    f, getattr(op, f), f"max_channels={engine.max_channels}", _raise_limit("max_channels", engine))
    eh, ew = op.H + 2 * op.pad, op.W + 2 * op.pad
    if eh < op.KH or ew < op.KW:
        raise E(regmap.ERR_SHAPE, f"kernel {op.KH}x{op.KW} larger than the padded input {eh}x{ew}",
                "KH" if eh < op.KH else "KW", op.KH if eh < op.KH else op.KW, f"{eh}x{ew}", REBUILD)
    oh, ow = (eh - op.KH) // op.stride + 1, (ew - op.KW) // op.stride + 1
    for f, want in (("OH", oh), ("OW", ow)):
        if getattr(op, f) != want:
            raise E(regmap.ERR_SHAPE, f"output size disagrees with {op.H}x{op.W}, kernel {op.KH}x{op.KW}, "
                    f"stride {op.stride}, pad {op.pad} (gives {oh}x{ow})", f, getattr(op, f), want, REBUILD, "expected")


def _check_clamp(E: _Where, op: Op) -> None:
    """ERR_PARAM: a requantizing op clamps to a non-empty [lo, hi] inside its output format."""
    tlo, thi = (0, 255) if op.out_unsigned else (-128, 127)
    fmt = f"{tlo}..{thi} ({'uint8' if op.out_unsigned else 'int8'} output)"
    for f in ("lo", "hi"):
        if not tlo <= getattr(op, f) <= thi:
            raise E(regmap.ERR_PARAM, "clamp bound outside the output format", f, getattr(op, f), fmt, REBUILD)
    if op.lo > op.hi:
        raise E(regmap.ERR_PARAM, "empty clamp range", "lo", op.lo, f"<= hi={op.hi}", REBUILD)


def _check_pool(E: _Where, op: Op) -> None:
    """Pooling: no padding, channels pass through; an average pool's mult / shift and accumulator."""
    if op.pad != 0:
        raise E(regmap.ERR_SHAPE, "pooling ops have no padding", "pad", op.pad, 0, REBUILD)
    if op.OC != op.C:
        raise E(regmap.ERR_SHAPE, "pooling keeps the channel count", "OC", op.OC, f"C={op.C}", REBUILD)
    if op.opcode == AVGPOOL:
        _array(E, op, "mult", op.C, "[C] int32")
        _check_shift(E, _array(E, op, "shift", op.C, "[C] int32"))
        _check_accumulator(E, op, None)


def _check_kernel_limits(E: _Where, op: Op, engine: EngineConfig | None) -> None:
    """ERR_LIMIT (with an engine): a conv-shaped op's kernel within max_kernel, a conv's stride within max_stride."""
    for f in ("KH", "KW"):
        if engine is not None and getattr(op, f) > engine.max_kernel:
            raise E(regmap.ERR_LIMIT, "kernel beyond the engine's limit", f, getattr(op, f),
                    f"max_kernel={engine.max_kernel}", _raise_limit("max_kernel", engine))
    if op.opcode == CONV and engine is not None and op.stride > engine.max_stride:
        raise E(regmap.ERR_LIMIT, "stride beyond what the banked activation buffers serve at II=1", "stride",
                op.stride, f"max_stride={engine.max_stride}", _raise_limit("max_stride", engine))


def _check_pq_params(E: _Where, op: Op, engine: EngineConfig | None) -> None:
    """A PQ op: v, K and the subspace count within the limits, lut_bits, the proto / lut arrays and LUT values."""
    D = op.KH * op.KW * op.C
    for f, lim in (("v", "pq_v_max"), ("K", "pq_k_max")):
        top = getattr(engine, lim) if engine is not None else 1 << 31
        if not 1 <= getattr(op, f) <= top:
            raise E(regmap.ERR_LIMIT, f"PQ {'subvector length' if f == 'v' else 'prototypes per subspace'} "
                    "beyond the engine's limit", f, getattr(op, f), ">= 1" if engine is None else
                    f"1..{top} ({lim})", REBUILD if engine is None else _raise_limit(lim, engine))
    if D % op.v:
        raise E(regmap.ERR_LIMIT, f"PQ subvector length does not divide the patch KH*KW*C = {D}", "v", op.v,
                f"a divisor of {D}", REBUILD)
    nsub = D // op.v
    if engine is not None and nsub > engine.pq_subspaces_max:
        raise E(regmap.ERR_LIMIT, "PQ subspaces KH*KW*C/v beyond the engine's limit", "KH*KW*C/v", nsub,
                f"pq_subspaces_max={engine.pq_subspaces_max}", _raise_limit("pq_subspaces_max", engine))
    if op.lut_bits not in (8, 16):
        raise E(regmap.ERR_PARAM, "PQ LUT width must be 8 or 16 bits", "lut_bits", op.lut_bits, "8 or 16",
                REBUILD)
    _array(E, op, "proto", nsub * op.K * op.v, "[KH*KW*C/v][K][v] bytes")
    lut = _array(E, op, "lut", nsub * op.K * op.OC, "[KH*KW*C/v][K][OC] int16")
    q = 1 << (op.lut_bits - 1)
    bad = np.flatnonzero((lut < -q) | (lut >= q))
    if bad.size:
        j = int(bad[0])
        raise E(regmap.ERR_PARAM, f"LUT value {j} does not fit lut_bits = {op.lut_bits}", f"lut[{j}]",
                int(lut[j]), f"{-q}..{q - 1}", f"set lut_bits = 16 or requantize the LUT, then {LOWER}")


def _check_codebook_params(E: _Where, op: Op, engine: EngineConfig | None) -> None:
    """A codebook op: d and k within the limits, d against C and lanes, the n:m pattern, the idx / mask /
    codebook arrays, every index below k and every mask within its low d bits."""
    for f, lim, what in (("d", "d_max", "codeword length"), ("k", "k_max", "codebook size")):
        top = getattr(engine, lim) if engine is not None else 1 << 31
        if not 1 <= getattr(op, f) <= top:
            raise E(regmap.ERR_LIMIT, f"{what} beyond the engine's limit", f, getattr(op, f),
                    ">= 1" if engine is None else f"1..{top} ({lim})",
                    REBUILD if engine is None else _raise_limit(lim, engine))
    if op.C % op.d:
        raise E(regmap.ERR_LIMIT, f"codeword length does not divide the input channels C = {op.C}", "d", op.d,
                f"a divisor of {op.C}", REBUILD)
    if engine is not None and op.d % engine.lanes and engine.lanes % op.d:
        raise E(regmap.ERR_LIMIT, f"codeword length and engine.lanes = {engine.lanes}: one must divide the "
                "other", "d", op.d, f"a divisor or multiple of lanes={engine.lanes}",
                f"compress the layer with such a d, then {LOWER}")
    if not 0 <= op.n <= op.m:
        raise E(regmap.ERR_PARAM, f"n:m pattern {op.n}:{op.m} is not 0 <= n <= m", "n", op.n, f"0..m={op.m}",
                REBUILD)
    nvec = op.OC * op.KH * op.KW * (op.C // op.d)
    idx = _array(E, op, "idx", nvec, "[OC][KH][KW][C/d] uint16")
    if op.wfmt == CODEBOOK_SHARED:
        # one mask per aligned group of mg output channels; the engine's group is its column tile
        want = engine.cols if engine is not None else None
        if op.mg < 1 or (want is not None and op.mg != want):
            raise E(regmap.ERR_PARAM, "shared-mask group is not the engine's column tile", "mg", op.mg,
                    ">= 1" if want is None else f"cols={want}", f"lower the layer for this engine, {LOWER}")
        if engine is not None and not engine.row_mux:
            raise E(regmap.ERR_OPCODE, "shared-mask weight format on an engine without the row-mux array",
                    "wfmt", op.wfmt, f"{DENSE} or {CODEBOOK}", f"build with EngineConfig.row_mux, or {LOWER}")
        mask = _array(E, op, "mask", -(-op.OC // op.mg) * op.KH * op.KW * (op.C // op.d),
                      "[ceil(OC/mg)][KH][KW][C/d] uint16")
    else:
        mask = _array(E, op, "mask", nvec, "[OC][KH][KW][C/d] uint16")
    _array(E, op, "codebook", op.k * op.d, "[k][d] int8")
    bad = np.flatnonzero(idx >= op.k)
    if bad.size:
        j = int(bad[0])
        raise E(regmap.ERR_PARAM, f"codeword index of vector {j} past the codebook", f"idx[{j}]", int(idx[j]),
                f"k-1={op.k - 1}", REBUILD)
    bad = np.flatnonzero(mask.astype(np.int64) >> op.d)
    if bad.size:
        j = int(bad[0])
        raise E(regmap.ERR_PARAM, f"mask of vector {j} sets bits above the codeword length d = {op.d}",
                f"mask[{j}]", f"0x{int(mask[j]):04x}", f"0x{(1 << op.d) - 1:04x}", REBUILD)


def _check_weights(E: _Where, op: Op, engine: EngineConfig | None) -> None:
    """A conv-shaped op's weights in its format: PQ prototypes and LUT, dense int8, or a codebook."""
    if op.opcode == PQ:
        _check_pq_params(E, op, engine)
    elif op.wfmt == DENSE:
        _array(E, op, "weight", op.OC * op.KH * op.KW * op.C, "[OC][KH][KW][C] int8")
    elif op.wfmt in (CODEBOOK, CODEBOOK_SHARED):
        _check_codebook_params(E, op, engine)
    else:
        raise E(regmap.ERR_OPCODE, "unknown weight format", "wfmt", op.wfmt, f"{DENSE} (dense), {CODEBOOK} "
                f"(codebook) or {CODEBOOK_SHARED} (codebook, shared mask)", REBUILD)


def _check_channel_params(E: _Where, op: Op) -> None:
    """A conv-shaped op's per-channel arrays (bias, mult, shift, res_mult with a residual) and its accumulator."""
    bias = _array(E, op, "bias", op.OC, "[OC] int32", required=False)
    _array(E, op, "mult", op.OC, "[OC] int32")
    _check_shift(E, _array(E, op, "shift", op.OC, "[OC] int32"))
    if op.res_buf >= 0:
        _array(E, op, "res_mult", op.OC, "[OC] int32")
    _check_accumulator(E, op, bias)


def _check_op(i: int, op: Op, engine: EngineConfig | None) -> None:
    """One op's rules, in the order the module docstring lists them. ``engine`` None: only the rules of
    the format and of the golden executor (``check_program``), none of an engine's limits."""
    E = _Where(i, op)
    _check_opcode(E, op, engine)
    _check_buffers(E, op, engine)
    _check_shape(E, op, engine)
    if op.opcode != MAXPOOL:   # requantizing ops clamp to [lo, hi] of the output format
        _check_clamp(E, op)
    if op.opcode not in (CONV, PQ):
        _check_pool(E, op)
        return
    _check_kernel_limits(E, op, engine)
    _check_weights(E, op, engine)
    _check_channel_params(E, op)
    if engine is None:
        return
    try:   # anything else the placement's per-op layout rule refuses
        layout.check_layout(op, engine, E.where)
    except layout.PlacementError as e:
        raise ProgramError(regmap.ERR_LIMIT, i, f"{e}: {LOWER}") from None


def _check_reads(i: int, op: Op, held: dict[int, tuple[int, int, int]]) -> None:
    """ERR_BUFFER: the op reads what an earlier op wrote (or the program's input), as the tensor that is
    there: input [H, W, C] (or, for a Linear, its flat vector), residual [OH, OW, OC]. ``held``: buffer ->
    the (H, W, C) it holds so far; updated with the op's output."""
    E = _Where(i, op)
    src = held.get(op.in_buf)
    if src is None:
        raise E(regmap.ERR_BUFFER, f"reads buffer {op.in_buf}, which nothing wrote before it (the program's "
                f"input is in buffer {next(iter(held))})", "in_buf", op.in_buf,
                "a buffer an earlier op wrote", REBUILD, "expected")
    if src != (op.H, op.W, op.C) and not reads_flattened(op, src):
        raise E(regmap.ERR_BUFFER, f"reads buffer {op.in_buf} as {op.H}x{op.W}x{op.C}, which holds a "
                f"{src[0]}x{src[1]}x{src[2]} tensor (only a Linear may flatten one)", "in_buf", op.in_buf,
                f"a buffer holding {op.H}x{op.W}x{op.C}", REBUILD, "expected")
    if op.res_buf >= 0:
        r = held.get(op.res_buf)
        if r is None:
            raise E(regmap.ERR_BUFFER, f"reads its residual from buffer {op.res_buf}, which nothing wrote before "
                    "it", "res_buf", op.res_buf, "a buffer an earlier op wrote", REBUILD, "expected")
        if r != (op.OH, op.OW, op.OC):
            raise E(regmap.ERR_BUFFER, f"reads its residual from buffer {op.res_buf}, which holds a "
                    f"{r[0]}x{r[1]}x{r[2]} tensor, not the {op.OH}x{op.OW}x{op.OC} output", "res_buf", op.res_buf,
                    f"a buffer holding {op.OH}x{op.OW}x{op.OC}", REBUILD, "expected")
    held[op.out_buf] = (op.OH, op.OW, op.OC)


def _check_ops(program: Program, engine: EngineConfig | None) -> None:
    """Every op's own rules and what it reads, op by op in program order."""
    first = program.ops[0]
    held = {first.in_buf: (first.H, first.W, first.C)}
    for i, op in enumerate(program.ops):
        _check_op(i, op, engine)
        _check_reads(i, op, held)


def check_program(program: Program) -> None:
    """Raise :class:`ProgramError` unless ``program`` is well formed for any engine: the rules above
    without an engine's limits (its buffer count, sizes, kernel, k, d, ...) and without placement.
    The golden executor (flow.compile.program_exec.run_program) runs exactly the programs this accepts;
    ``validate`` applies the same rules (and the engine's) in the same order."""
    if not program.ops:
        raise _err(regmap.ERR_HEADER, "program", None, "a program without ops", "n_ops", 0, ">= 1",
                   "give the program at least one op")
    _check_ops(program, None)


# ---------------------------------------------------------------------------
# placement
# ---------------------------------------------------------------------------
def _check_placement(program: Program, engine: EngineConfig) -> None:
    needs = [layout.op_need(op, engine) for op in program.ops]
    for i, op in enumerate(program.ops):
        # an op whose weights do not fit streams them one output-channel tile at a time: the tile must fit
        n = layout.tile_need(op, engine)
        E = _Where(i, op)
        for what, value, lim in (("codeword index / mask entries", n.v, "vmem_entries"),
                                 ("codebook rows", n.cb, "cb_rows"), ("dense weight words", n.w, "dmem_words")):
            if value > getattr(engine, lim):
                raise E(regmap.ERR_LIMIT, f"one output-channel tile's {what} do not fit the on-chip memory", what, value,
                        f"{lim}={getattr(engine, lim)}", _raise_limit(lim, engine))
    ch = sum(n.ch for n in needs)
    if ch > engine.ch_rows:
        raise _err(regmap.ERR_LIMIT, "program", None, f"channel parameters of all ops need {ch} rows of "
                   f"{engine.cols} channels", "channel rows", ch, f"ch_rows={engine.ch_rows}",
                   f"raise EngineConfig.ch_rows (now {engine.ch_rows}) or use fewer / narrower layers")
    try:
        ref = layout.place(program, engine)
    except layout.PlacementError as e:
        raise ProgramError(regmap.ERR_LIMIT, None, f"program: {e}: {LOWER}") from None
    placed_for = (program.meta.get("placement") or {}).get("engine_hash")
    other = (f" (it was placed for engine {placed_for}, this engine is {engine.hash()})"
             if placed_for and placed_for != engine.hash() else "")
    for i, (op, want) in enumerate(zip(program.ops, ref.ops)):
        for f in DERIVED_FIELDS:
            a, b = getattr(op, f), getattr(want, f)
            if a != b:
                E = _Where(i, op)
                if not any(getattr(op, g) for g in DERIVED_FIELDS):
                    raise E(regmap.ERR_PARAM, f"not placed for this engine{other}: descriptor field {f} = {a}, "
                            f"the placement gives {b}", f, a, b, "run flow.compile.layout.place(program, engine)",
                            "expected")
                raise E(regmap.ERR_PARAM, f"descriptor field {f} = {a}, the placement for this engine gives "
                        f"{b}{other}", f, a, b, PLACE, "expected")


# ---------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------
def validate(program: Program, engine: EngineConfig) -> None:
    """Raise :class:`ProgramError` unless ``program`` runs on the engine built for ``engine``."""
    n = len(program.ops)
    if not 1 <= n <= engine.max_ops:
        raise _err(regmap.ERR_HEADER, "program", None, "op count outside the engine's range", "n_ops", n,
                   f"1..{engine.max_ops} (max_ops)", "give the program at least one op" if n < 1
                   else f"raise EngineConfig.max_ops (now {engine.max_ops}) or use a model with fewer layers")
    size = image_bytes(program)
    if size > engine.param_bytes:
        raise _err(regmap.ERR_HEADER, "program", None, "parameter image larger than the engine's DDR region",
                   "image bytes", size, f"param_bytes={engine.param_bytes}",
                   f"raise EngineConfig.param_bytes (now {engine.param_bytes}) or compress the model further")
    _check_ops(program, engine)
    _check_placement(program, engine)


# descriptor counts from_bytes refuses when negative, with the code the engine gives such a value
_COUNT_CODES = {**{f: regmap.ERR_SHAPE for f in ("H", "W", "C", "OH", "OW", "OC", "KH", "KW")},
                **{f: regmap.ERR_LIMIT for f in ("d", "k", "v", "K")}, "lut_bits": regmap.ERR_PARAM}


def validate_image(image: bytes, engine: EngineConfig) -> Program:
    """Check a packed Program image (``Program.to_bytes()``) for ``engine``; return the Program it holds
    (scales and signedness from its header). The header rules are engine_io.program_image's, checked in the
    engine's order."""
    blob = bytes(image)
    hdr = _check_image_header(blob, engine)
    try:
        in_scale, out_scale, _, _ = _image.check_io_words(hdr, flags=False)
    except HeaderError as e:
        raise _header_error(e.code, str(e)) from None
    _check_image_descriptors(blob, hdr, engine)
    try:
        ops = decode_ops(blob, hdr[_image.WORD["n_ops"]])
    except ProgramFormatError as e:   # pragma: no cover - the checks above cover decode_ops's
        raise _header_error(regmap.ERR_HEADER, str(e)) from None
    first = ops[0]
    program = Program(ops=ops, in_scale=in_scale, out_scale=out_scale, in_shape=(first.H, first.W, first.C))
    validate(program, engine)
    _check_image_io(hdr, program)
    return program


def _header_error(code: int, what: str, field: str | None = None, value=None, limit=None, fix: str = REBUILD,
                  label: str = "limit") -> ProgramError:
    return _err(code, "program image", None, what, field, value, limit, fix, label)


def _check_image_header(blob: bytes, engine: EngineConfig) -> np.ndarray:
    """Magic, format version, sizes and CRC32 of the image, in the engine's order; the header words."""
    size, W, hdr_err = len(blob), _image.WORD, _header_error
    if size >= 4 and int.from_bytes(blob[:4], "little") != MAGIC:
        raise hdr_err(regmap.ERR_MAGIC, "bad magic: not a vqhls program image", "word 0",
                      f"0x{int.from_bytes(blob[:4], 'little'):08x}", f"0x{MAGIC:08x}",
                      "pass the bytes of Program.to_bytes() (or a .bin the deploy bundle stores)", "expected")
    if size >= 8 and int.from_bytes(blob[4:8], "little") != FORMAT_VERSION:
        version = int.from_bytes(blob[4:8], "little")
        raise hdr_err(regmap.ERR_VERSION, "program format version not supported", "version", version,
                      FORMAT_VERSION, f"re-export it with this kit (format {FORMAT_VERSION}) via "
                      "flow.compile.lower(qgraph, engine)", "expected")
    if size < HEADER_WORDS * 4:
        raise hdr_err(regmap.ERR_HEADER, "shorter than its header", "image bytes", size, f">= {HEADER_WORDS * 4}",
                      "copy the whole image (Program.to_bytes())")
    hdr = _image.header_words(blob)     # unsigned, as the engine reads them
    n_ops, dw, total = hdr[W["n_ops"]], hdr[W["desc_words"]], hdr[W["total_bytes"]]
    head = (HEADER_WORDS + n_ops * DESC_WORDS) * 4
    if dw != DESC_WORDS:
        raise hdr_err(regmap.ERR_HEADER, "descriptor size differs from the format's", "desc_words", dw, DESC_WORDS,
                      REBUILD, "expected")
    if not 1 <= n_ops <= engine.max_ops:
        raise hdr_err(regmap.ERR_HEADER, "op count outside the engine's range", "n_ops", n_ops,
                      f"1..{engine.max_ops} (max_ops)",
                      f"raise EngineConfig.max_ops (now {engine.max_ops}) or use a model with fewer layers")
    if total > engine.param_bytes:
        raise hdr_err(regmap.ERR_HEADER, "image larger than the engine's DDR region", "total bytes", total,
                      f"param_bytes={engine.param_bytes}",
                      f"raise EngineConfig.param_bytes (now {engine.param_bytes}) or compress the model further")
    if total % 4 or total < head:
        raise hdr_err(regmap.ERR_HEADER, f"image size not word aligned or smaller than its {n_ops} descriptors",
                      "total bytes", total, f"a multiple of 4, >= {head}")
    if total != size:
        raise hdr_err(regmap.ERR_HEADER, f"image is {size} bytes, its header says {total} "
                      f"({'truncated' if size < total else 'trailing bytes'})", "total bytes", total, size,
                      "copy the whole image (Program.to_bytes())", "image has")
    crc = image_crc(blob)
    if hdr[CRC_WORD] != crc:
        raise hdr_err(ERR_CRC, "checksum mismatch: the image is corrupted", f"word {CRC_WORD}",
                      f"0x{hdr[CRC_WORD]:08x}", f"0x{crc:08x} (crc32 of the bytes after word {CRC_WORD})",
                      "copy the image again from its source", "expected")
    return hdr


def _check_image_descriptors(blob: bytes, hdr, engine: EngineConfig) -> None:
    """Each descriptor's own rules (in the engine's order, before its arrays are read), its counts, and its
    parameter arrays inside the parameter area."""
    W = _image.WORD
    n_ops, total = hdr[W["n_ops"]], hdr[W["total_bytes"]]
    head = (HEADER_WORDS + n_ops * DESC_WORDS) * 4
    descs = np.frombuffer(blob, dtype="<i4", count=n_ops * DESC_WORDS, offset=HEADER_WORDS * 4)
    for i, row in enumerate(descs.reshape(n_ops, DESC_WORDS)):
        vals = dict(zip(DESC_FIELDS, (int(v) for v in row)))
        op = Op(**{f: v for f, v in vals.items() if not f.startswith("off_")})
        E = _Where(i, op)
        try:
            _check_op(i, op, engine)
        except ProgramError as e:
            if e.code != regmap.ERR_OFFSET:
                raise
        for f, code in _COUNT_CODES.items():
            if vals[f] < 0:
                raise E(code, "negative count in the descriptor", f, vals[f], ">= 0", REBUILD)
        for key, shape in _array_shapes(op).items():
            off = vals["off_" + key]
            nbytes = math.prod(shape) * np.dtype(_ARRAYS[key]).itemsize
            if off != 0 and (off < head or off % 4 or off + nbytes > total):
                raise E(regmap.ERR_OFFSET, f"parameter array '{key}' ({nbytes} bytes) lies outside the parameter "
                        f"area {head}..{total}", f"off_{key}", off, f"4-aligned, {head}..{total - nbytes}", REBUILD)


def _check_image_io(hdr, program: Program) -> None:
    """The header's input / output sizes and signedness agree with the first and last ops."""
    W = _image.WORD
    first, last = program.ops[0], program.ops[-1]
    for word, field, want in ((W["input_bytes"], "input bytes", program.input_bytes),
                              (W["output_bytes"], "output bytes", program.output_bytes)):
        if hdr[word] != want:
            raise _header_error(regmap.ERR_IO, f"header {field} disagree with the "
                                f"{'first' if field[0] == 'i' else 'last'} op", f"word {word}", hdr[word], want,
                                REBUILD, "expected")
    flags = (_image.IO_IN_UNSIGNED if first.in_unsigned else 0) | (_image.IO_OUT_UNSIGNED if last.out_unsigned else 0)
    if hdr[W["io_flags"]] != flags:
        raise _header_error(regmap.ERR_IO, "header io_flags (input / output signedness) disagree with the first "
                            "op's in_unsigned and the last op's out_unsigned", f"word {W['io_flags']}",
                            f"0x{hdr[W['io_flags']]:x}", f"0x{flags:x}", REBUILD, "expected")


def prepare(program: Program, engine: EngineConfig) -> Program:
    """``program`` placed for ``engine`` (flow.compile.layout.place) and checked (``validate``): the one
    path by which a Program reaches an engine. Raises PlacementError / ProgramError."""
    try:
        placed = layout.place(program, engine)
    except (layout.PlacementError, ValueError, ArithmeticError) as e:
        # the program's own rules first: they name the op, the field and the STATUS code
        validate(program, engine)
        raise ProgramError(regmap.ERR_LIMIT, None, f"program: {e}: {LOWER}") from None
    validate(placed, engine)
    return placed
