"""Test vectors between numpy and the engine's byte streams.

Inputs and outputs are NHWC integer tensors ``[B, H, W, C]``; on the streams
they are bytes (int8 or uint8 codes, by the first op's ``in_unsigned`` and the
last op's ``out_unsigned`` flags).
"""
from __future__ import annotations

import numpy as np

from flow.compile.program import Program


def input_shape(program: Program) -> tuple[int, int, int]:
    op = program.ops[0]
    return (op.H, op.W, op.C)


def output_shape(program: Program) -> tuple[int, int, int]:
    op = program.ops[-1]
    return (op.OH, op.OW, op.OC)


def input_unsigned(program: Program) -> bool:
    return bool(program.ops[0].in_unsigned)


def output_unsigned(program: Program) -> bool:
    """Signedness of the output codes: the last op's ``out_unsigned`` flag."""
    return bool(program.ops[-1].out_unsigned)


def check_inputs(program: Program, inputs) -> np.ndarray:
    """Validate ``inputs`` [B, H, W, C] against the program; return them as uint8 stream bytes [B, H*W*C]."""
    if not program.ops:
        raise ValueError("program has no ops")
    if not isinstance(inputs, np.ndarray):
        raise TypeError(f"inputs must be a numpy array [B, H, W, C], got {type(inputs).__name__}")
    shape = input_shape(program)
    if inputs.ndim != 4 or tuple(inputs.shape[1:]) != shape:
        raise ValueError(
            f"inputs must have shape [B, {shape[0]}, {shape[1]}, {shape[2]}] (NHWC, the program's input), "
            f"got {list(inputs.shape)}"
        )
    if not np.issubdtype(inputs.dtype, np.integer):
        raise TypeError(
            f"inputs must be integer activation codes (int8/uint8), got dtype {inputs.dtype}: "
            "quantize them first (x_int = round(x / program.in_scale))"
        )
    lo, hi = (0, 255) if input_unsigned(program) else (-128, 127)
    if inputs.size and (int(inputs.min()) < lo or int(inputs.max()) > hi):
        kind = "uint8" if lo == 0 else "int8"
        raise ValueError(
            f"inputs out of the program's {kind} range [{lo}, {hi}]: min {int(inputs.min())}, max {int(inputs.max())}"
        )
    return np.ascontiguousarray((inputs.astype(np.int16) & 0xFF).astype(np.uint8).reshape(inputs.shape[0], int(np.prod(shape))))


def outputs_to_bytes(program: Program, outputs) -> np.ndarray:
    """Expected outputs [B, OH, OW, OC] (int8/uint8 codes) as stream bytes [B, OH*OW*OC]."""
    outputs = np.asarray(outputs)
    shape = output_shape(program)
    if outputs.ndim != 4 or tuple(outputs.shape[1:]) != shape:
        raise ValueError(f"expected outputs must have shape [B, {shape[0]}, {shape[1]}, {shape[2]}], got {list(outputs.shape)}")
    if not np.issubdtype(outputs.dtype, np.integer):
        raise TypeError(f"expected outputs must be integer codes, got dtype {outputs.dtype}")
    return np.ascontiguousarray((outputs.astype(np.int64) & 0xFF).astype(np.uint8).reshape(outputs.shape[0], int(np.prod(shape))))


def bytes_to_outputs(program: Program, raw: np.ndarray, n_images: int) -> np.ndarray:
    """Stream bytes -> outputs [B, OH, OW, OC] as int8 or uint8."""
    raw = np.asarray(raw, dtype=np.uint8).reshape(n_images, *output_shape(program))
    return raw.copy() if output_unsigned(program) else raw.view(np.int8).copy()
