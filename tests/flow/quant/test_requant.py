"""requantize / quantize_multiplier against arbitrary-precision Python integers."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flow.quant.requant import INT32_MAX, quantize_multiplier, requantize

I32 = st.integers(-(1 << 31) + 1, (1 << 31) - 1)


def ref(acc: int, m: int, s: int, lo: int, hi: int, res: int = 0, mr: int = 0) -> int:
    """The contract in Python ints: floor division by 2^S is the arithmetic shift."""
    v = (acc * m + res * mr + (1 << (s - 1))) // (1 << s)
    return max(lo, min(hi, v))


@settings(max_examples=400, deadline=None)
@given(acc=I32, m=I32, s=st.integers(1, 31), relu=st.booleans(),
       res=st.one_of(st.none(), st.integers(-128, 255)), mr=I32)
def test_requantize_matches_python_ints(acc, m, s, relu, res, mr):
    lo, hi = (0, 255) if relu else (-128, 127)
    got = requantize(np.array([acc]), np.array([m]), np.array([s]), lo, hi,
                     None if res is None else np.array([res]), None if res is None else np.array([mr]))
    assert int(got[0]) == ref(acc, m, s, lo, hi, res or 0, mr if res is not None else 0)


@pytest.mark.parametrize("acc,m,s,want", [
    (1, 1, 1, 1),      # 0.5 rounds up (half towards +inf)
    (-1, 1, 1, 0),     # -0.5 rounds up to 0 too: floor(x + 0.5)
    (3, 1, 1, 2),      # 1.5 -> 2
    (-3, 1, 1, -1),    # -1.5 -> -1
    (5, -1, 1, -2),    # negative multiplier: -2.5 -> -2
    (2, 1, 2, 1),      # 0.5 at S=2
    (-2, 1, 2, 0),
])
def test_rounding_ties(acc, m, s, want):
    assert int(requantize(np.array([acc]), m, s, -1000, 1000)[0]) == want


def test_extremes_do_not_overflow_int64():
    acc = np.array([INT32_MAX, -INT32_MAX - 1, INT32_MAX, -INT32_MAX - 1])
    m = np.array([INT32_MAX, INT32_MAX, -INT32_MAX, -INT32_MAX])
    res = np.array([255, -128, -128, 255])
    mr = np.array([INT32_MAX, INT32_MAX, INT32_MAX, -INT32_MAX])
    for s in (1, 31):
        got = requantize(acc, m, s, -(1 << 40), 1 << 40, res, mr)
        want = [max(-(1 << 40), min(1 << 40, ref(int(a), int(b), s, -(1 << 62), 1 << 62, int(r), int(q))))
                for a, b, r, q in zip(acc, m, res, mr)]
        assert got.tolist() == want


def test_per_channel_broadcast_and_clamp():
    acc = np.arange(-600, 600, 7).reshape(-1, 1) * np.ones((1, 3), np.int64)
    m, s = np.array([1 << 20, -(1 << 20), 3 << 19]), np.array([22, 22, 21])
    got = requantize(acc, m, s, 0, 255)
    want = [[ref(int(a), int(m[c]), int(s[c]), 0, 255) for c in range(3)] for a in acc[:, 0]]
    assert got.tolist() == want


def test_requantize_rejects_bad_shift():
    with pytest.raises(ValueError, match="shift"):
        requantize(np.array([1]), 1, 0, -128, 127)
    with pytest.raises(ValueError, match="shift"):
        requantize(np.array([1]), 1, 32, -128, 127)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(1e-9, 1e8, allow_nan=False) | st.floats(-1e8, -1e-9), min_size=1, max_size=8),
       st.floats(1e-6, 1e3))
def test_quantize_multiplier_accuracy(vals, rr):
    real = np.array(vals)
    m, mr, s = quantize_multiplier(real, np.full_like(real, rr))
    assert np.all((s >= 1) & (s <= 31))
    assert np.all(np.abs(m) <= INT32_MAX) and np.all(np.abs(mr) <= INT32_MAX)
    approx = m / np.exp2(s)
    # relative error limited by the rounding of M: 0.5 / |M|, and S is maximal:
    # either S == 31 or doubling M would overflow
    big = np.maximum(np.abs(m), np.abs(mr))
    assert np.all((s == 31) | (2 * big + 1 > INT32_MAX))
    ok = np.abs(approx - real) <= 0.5 / np.exp2(s) + 1e-12 * np.abs(real)
    assert ok.all()


def test_quantize_multiplier_zero_and_tiny():
    m, mr, s = quantize_multiplier(np.array([0.0, 1e-12, 0.75]))
    assert mr is None and s.tolist()[:2] == [31, 31] and m.tolist()[:2] == [0, 0]
    assert m[2] / 2.0 ** s[2] == 0.75 and abs(m[2]) > (1 << 29)


def test_quantize_multiplier_too_large():
    with pytest.raises(ValueError, match="too large"):
        quantize_multiplier(np.array([2.0 ** 31]))
