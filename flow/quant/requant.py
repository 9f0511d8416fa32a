"""Requantization: the only rounding step of the integer program.

Every requantizing op in the golden model (conv, linear, residual add, average
pooling) goes through :func:`requantize`; the HLS C++ and the RTL implement the
same expression:

    y = clamp((acc * M + res * Mr + (1 << (S - 1))) >> S, lo, hi)

evaluated in int64 with an arithmetic (floor) right shift. ``M``, ``Mr`` are
signed int32 per output channel, ``S`` is in 1..31 per output channel; the
``res * Mr`` term exists only for ops with a fused residual input.

Why this is safe in int64: |acc| < 2^31 (checked at lowering), |M| < 2^31, so
|acc*M| < 2^62; |res| <= 255 and |Mr| < 2^31 add < 2^39; the rounding constant
< 2^31. The sum stays below 2^63.
"""
from __future__ import annotations

import numpy as np

INT32_MAX = (1 << 31) - 1
S_MIN, S_MAX = 1, 31

# lo/hi of the two activation formats
UINT8_RANGE = (0, 255)
INT8_RANGE = (-128, 127)


def act_range(unsigned: bool) -> tuple[int, int]:
    """(lo, hi) of a uint8 (after ReLU) or int8 activation."""
    return UINT8_RANGE if unsigned else INT8_RANGE


def requantize(
    acc: np.ndarray,
    mult: np.ndarray | int,
    shift: np.ndarray | int,
    lo: int,
    hi: int,
    res: np.ndarray | None = None,
    res_mult: np.ndarray | int | None = None,
) -> np.ndarray:
    """Requantize int32 accumulators to the output activation format.

    acc: int array [..., C] (channel last); mult, shift, res_mult: int [C] or scalars
    (broadcast along the last axis); res: int [..., C] like acc, or None.
    Returns int64 [..., C] in [lo, hi].
    """
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(mult, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if s.size and (s.min() < S_MIN or s.max() > S_MAX):
        raise ValueError(f"requantize: shift must be in {S_MIN}..{S_MAX}, got {s.min()}..{s.max()}")
    if m.size and np.abs(m).max() > INT32_MAX + 1:
        raise ValueError("requantize: multiplier does not fit int32")
    y = acc * m
    if res is not None:
        if res_mult is None:
            raise ValueError("requantize: res given without res_mult")
        y = y + np.asarray(res, dtype=np.int64) * np.asarray(res_mult, dtype=np.int64)
    # numpy's >> on signed ints is an arithmetic shift (floor), as in C++ on int64
    y = (y + (np.int64(1) << (s - 1))) >> s
    return np.clip(y, lo, hi)


def quantize_multiplier(
    real_m: np.ndarray | float, real_mr: np.ndarray | float | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per-channel fixed-point multipliers: M / 2^S ~= real_m (and Mr / 2^S ~= real_mr).

    real_m, real_mr: float [C] (or scalars, broadcast). S is chosen per channel as
    large as possible (most precision) with |M| <= 2^31-1, |Mr| <= 2^31-1, S <= 31.
    Returns (M int64 [C], Mr int64 [C] or None, S int64 [C]).
    Raises ValueError when a multiplier is too large to represent even with S = 1
    (|real| >= 2^30), which only happens for degenerate scales.
    """
    rm = np.atleast_1d(np.asarray(real_m, dtype=np.float64))
    rr = None if real_mr is None else np.broadcast_to(np.asarray(real_mr, dtype=np.float64), rm.shape)
    if not np.all(np.isfinite(rm)) or (rr is not None and not np.all(np.isfinite(rr))):
        raise ValueError("quantize_multiplier: non-finite multiplier")
    big = np.abs(rm) if rr is None else np.maximum(np.abs(rm), np.abs(rr))
    # largest S with big * 2^S <= 2^31 - 1 (before rounding); log2 of 0 -> S_MAX
    with np.errstate(divide="ignore"):
        s = np.where(big > 0, np.floor(np.log2(INT32_MAX / np.where(big > 0, big, 1.0))), S_MAX)
    s = np.clip(s, S_MIN, S_MAX).astype(np.int64)
    for _ in range(3):  # rounding or log2 error can push |M| to 2^31: back off one bit
        m = np.rint(rm * np.exp2(s)).astype(np.int64)
        mr = None if rr is None else np.rint(rr * np.exp2(s)).astype(np.int64)
        over = np.abs(m) > INT32_MAX
        if mr is not None:
            over |= np.abs(mr) > INT32_MAX
        if not over.any():
            break
        if (s[over] <= S_MIN).any():
            raise ValueError(f"quantize_multiplier: multiplier {big[over].max():.3g} too large for int32 with S >= 1")
        s = np.where(over, s - 1, s)
    else:  # pragma: no cover - three back-offs never needed
        raise AssertionError("quantize_multiplier did not converge")
    return m, mr, s
