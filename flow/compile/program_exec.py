"""Execute a :class:`flow.compile.program.Program` exactly as the engine does.

This is the reference C-simulation and RTL co-simulation are compared with
(``np.array_equal``). It refuses a Program by the rules of
``flow.compile.validate.check_program`` (the engine's host check applies the same
ones, plus the engine's limits), so it never runs a Program an engine would refuse
for its form. It works only from what the engine sees: the op
descriptors and their integer arrays (a Program from ``from_bytes`` runs the
same as the one ``lower`` built). Activation buffers are modelled as raw bytes
so that a signedness mismatch between a producer and a consumer shows up here
as it would on hardware: every op reads its input bytes as uint8 or int8
according to its own ``in_unsigned`` / ``res_unsigned`` flag, and writes
``y & 0xFF``.
"""
from __future__ import annotations

import numpy as np

from flow.compile.program import AVGPOOL, CODEBOOK, CODEBOOK_SHARED, CONV, DENSE, MAXPOOL, PQ, Op, Program, _array_shapes, proto_values
from flow.compile.validate import ProgramError, check_program   # the one definition of the rules
from flow.quant import ops as K
from flow.quant.requant import requantize


class ProgramExecError(ValueError):
    """The Program is inconsistent (shapes, buffers, missing arrays): the engine's behaviour would be undefined.

    ``code`` / ``op``: the engine_io.regmap ERR_* code and op index of the rule (flow.compile.validate's
    ProgramError), None for a bad input."""

    def __init__(self, message: str, code: int | None = None, op: int | None = None):
        super().__init__(message)
        self.code = code
        self.op = op

    def __reduce__(self):
        return (ProgramExecError, (str(self), self.code, self.op))


def _read(buf: np.ndarray, shape: tuple[int, int, int], unsigned: int, what: str) -> np.ndarray:
    """Bytes [B, nbytes] -> int64 [B, H, W, C] read as uint8 or int8."""
    n = shape[0] * shape[1] * shape[2]
    if buf.shape[1] < n:
        raise ProgramExecError(f"{what}: reads {n} bytes, the buffer holds {buf.shape[1]}")
    b = buf[:, :n]
    v = b if unsigned else b.view(np.int8)
    return v.reshape(buf.shape[0], *shape).astype(np.int64)


def _arr(op: Op, key: str, i: int) -> np.ndarray:
    """An op's parameter array reshaped to its canonical shape; raises if missing."""
    a = op.arrays.get(key)
    if a is None or a.size == 0:
        raise ProgramExecError(f"op {i} ({op.name or 'unnamed'}): missing parameter array {key!r}")
    shape = _array_shapes(op)[key]
    if a.size != int(np.prod(shape)):
        raise ProgramExecError(f"op {i} ({op.name or 'unnamed'}): {key} has {a.size} elements, expected {shape}")
    return a.reshape(shape)


def op_weights(op: Op, i: int = 0) -> np.ndarray:
    """The int weights [OC,KH,KW,C] a conv op multiplies with, decoded from its packed arrays."""
    if op.wfmt == DENSE:
        return _arr(op, "weight", i).astype(np.int64)
    if op.wfmt == CODEBOOK:
        if op.d < 1 or op.C % op.d:
            raise ProgramExecError(f"op {i} ({op.name}): C={op.C} is not a multiple of d={op.d}")
        idx = _arr(op, "idx", i)
        keep = K.mask_bits_to_keep(_arr(op, "mask", i), op.d)
        return K.decode_codebook(idx, keep, _arr(op, "codebook", i))
    if op.wfmt == CODEBOOK_SHARED:   # one mask row per aligned group of mg output channels: channel oc uses row oc // mg
        if op.d < 1 or op.C % op.d or op.mg < 1:
            raise ProgramExecError(f"op {i} ({op.name}): shared-mask codebook needs d | C and mg >= 1 "
                                   f"(C={op.C}, d={op.d}, mg={op.mg})")
        idx = _arr(op, "idx", i)
        mask = _arr(op, "mask", i)[np.arange(op.OC) // op.mg]            # [OC, KH, KW, C/d]
        keep = K.mask_bits_to_keep(mask, op.d)
        return K.decode_codebook(idx, keep, _arr(op, "codebook", i))
    raise ProgramExecError(f"op {i} ({op.name}): unknown weight format {op.wfmt}")


def _check_shape(op: Op, i: int) -> None:
    oh = K.out_size(op.H, op.KH, op.stride, op.pad)
    ow = K.out_size(op.W, op.KW, op.stride, op.pad)
    if (oh, ow) != (op.OH, op.OW) or op.stride < 1:
        raise ProgramExecError(
            f"op {i} ({op.name}): {op.H}x{op.W} with kernel {op.KH}x{op.KW}, stride {op.stride}, pad {op.pad} "
            f"gives {oh}x{ow}, descriptor says {op.OH}x{op.OW}"
        )


def exec_op(op: Op, x: np.ndarray, res: np.ndarray | None, i: int = 0) -> np.ndarray:
    """One op on already-read activations. x: int64 [B,H,W,C]; res: int64 [B,OH,OW,OC] or None.

    Returns int64 [B,OH,OW,OC] (values in [lo, hi] for conv/avgpool).
    """
    _check_shape(op, i)
    if op.opcode == CONV:
        w = op_weights(op, i)
        bias = op.arrays.get("bias")
        acc = K.conv2d(x, w, None if bias is None or bias.size == 0 else bias.reshape(-1), op.stride, op.pad)
        rm = None
        if res is not None:
            rm = _arr(op, "res_mult", i)
        return requantize(acc, _arr(op, "mult", i), _arr(op, "shift", i), op.lo, op.hi, res, rm)
    if op.opcode == PQ:
        if op.v < 1 or op.K < 1 or (op.KH * op.KW * op.C) % op.v:
            raise ProgramExecError(f"op {i} ({op.name}): PQ v={op.v}, K={op.K} do not split a "
                                   f"{op.KH}x{op.KW}x{op.C} patch")
        if op.lut_bits not in (8, 16):
            raise ProgramExecError(f"op {i} ({op.name}): lut_bits={op.lut_bits}, expected 8 or 16")
        bias = op.arrays.get("bias")
        acc = K.pq_conv(x, proto_values(op, _arr(op, "proto", i)), _arr(op, "lut", i).astype(np.int64),
                        None if bias is None or bias.size == 0 else bias.reshape(-1), op.KH, op.KW, op.stride, op.pad)
        rm = _arr(op, "res_mult", i) if res is not None else None
        return requantize(acc, _arr(op, "mult", i), _arr(op, "shift", i), op.lo, op.hi, res, rm)
    if op.pad != 0:
        raise ProgramExecError(f"op {i} ({op.name}): pooling ops have no padding (pad={op.pad})")
    if op.OC != op.C:
        raise ProgramExecError(f"op {i} ({op.name}): pooling keeps channels, C={op.C} OC={op.OC}")
    if op.opcode == MAXPOOL:
        return K.maxpool(x, op.KH, op.KW, op.stride)
    if op.opcode == AVGPOOL:
        acc = K.window_sum(x, op.KH, op.KW, op.stride)
        return requantize(acc, _arr(op, "mult", i), _arr(op, "shift", i), op.lo, op.hi)
    raise ProgramExecError(f"op {i} ({op.name}): unknown opcode {op.opcode}")


def run_program(program: Program, x_int: np.ndarray, return_all: bool = False):
    """Run ``program`` on quantized inputs with the engine's exact integer semantics.

    x_int: int [B,H,W,C] (uint8 / int8 values, as from ``quantize_input``), its bytes are
    written into buffer ``ops[0].in_buf``.
    Returns int64 [B,OH,OW,OC], the last op's output read with its ``out_unsigned`` flag;
    with ``return_all=True`` a list with every op's output (same convention), for
    locating the first mismatching op when comparing against C-simulation.
    """
    try:
        check_program(program)
    except ProgramError as e:
        raise ProgramExecError(str(e), e.code, e.op) from None
    x_int = np.asarray(x_int)
    if x_int.ndim != 4:
        raise ProgramExecError(f"input must be [B,H,W,C], got shape {x_int.shape}")
    first = program.ops[0]
    if x_int.shape[1:] != (first.H, first.W, first.C):
        raise ProgramExecError(f"input is {x_int.shape[1:]}, the program expects {(first.H, first.W, first.C)} (HWC)")
    if x_int.min(initial=0) < -128 or x_int.max(initial=0) > 255:
        raise ProgramExecError("input values do not fit a byte")
    B = x_int.shape[0]
    # bytes as the hardware holds them; the first op reads them with its own flag
    bufs: dict[int, np.ndarray] = {first.in_buf: (x_int.astype(np.int64) & 0xFF).astype(np.uint8).reshape(B, -1)}
    outs = []
    y = None
    for i, op in enumerate(program.ops):
        if op.in_buf not in bufs:
            raise ProgramExecError(f"op {i} ({op.name}): reads buffer {op.in_buf}, which nothing wrote")
        if op.out_buf in (op.in_buf, op.res_buf):
            raise ProgramExecError(f"op {i} ({op.name}): writes buffer {op.out_buf}, which it also reads")
        x = _read(bufs[op.in_buf], (op.H, op.W, op.C), op.in_unsigned, f"op {i} ({op.name}) input")
        res = None
        if op.res_buf >= 0:
            if op.opcode not in (CONV, PQ):
                raise ProgramExecError(f"op {i} ({op.name}): only conv and PQ ops take a residual input")
            if op.res_buf not in bufs:
                raise ProgramExecError(f"op {i} ({op.name}): residual buffer {op.res_buf} was never written")
            res = _read(bufs[op.res_buf], (op.OH, op.OW, op.OC), op.res_unsigned, f"op {i} ({op.name}) residual")
        y = exec_op(op, x, res, i)
        bufs[op.out_buf] = (y & 0xFF).astype(np.uint8).reshape(B, -1)
        if return_all:
            outs.append(_read(bufs[op.out_buf], (op.OH, op.OW, op.OC), op.out_unsigned, ""))
    last = program.ops[-1]
    out = _read(bufs[last.out_buf], (last.OH, last.OW, last.OC), last.out_unsigned, "output")
    return outs if return_all else out
