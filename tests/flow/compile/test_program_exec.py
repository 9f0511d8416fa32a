"""run_program against a naive per-element Python reference, on hand-built Programs."""
from __future__ import annotations

import numpy as np
import pytest

from flow.compile.program import AVGPOOL, CODEBOOK, CONV, MAXPOOL, Op, Program
from flow.compile.program_exec import run_program
from flow.compile.program_exec import ProgramExecError


def naive_conv(x, w, bias, stride, pad):
    """x [H,W,C], w [OC,KH,KW,C] -> acc [OH,OW,OC] with Python ints."""
    H, W, C = x.shape
    OC, KH, KW, _ = w.shape
    OH, OW = (H + 2 * pad - KH) // stride + 1, (W + 2 * pad - KW) // stride + 1
    out = np.zeros((OH, OW, OC), object)
    for oh in range(OH):
        for ow in range(OW):
            for oc in range(OC):
                s = int(bias[oc])
                for kh in range(KH):
                    for kw in range(KW):
                        ih, iw = oh * stride + kh - pad, ow * stride + kw - pad
                        if 0 <= ih < H and 0 <= iw < W:
                            for c in range(C):
                                s += int(w[oc, kh, kw, c]) * int(x[ih, iw, c])
                out[oh, ow, oc] = s
    return out


def naive_rq(acc, m, s, lo, hi, res=None, mr=None):
    out = np.zeros(acc.shape, np.int64)
    for i in np.ndindex(acc.shape):
        c = i[-1]
        v = int(acc[i]) * int(m[c]) + (int(res[i]) * int(mr[c]) if res is not None else 0)
        out[i] = max(lo, min(hi, (v + (1 << (int(s[c]) - 1))) >> int(s[c])))
    return out


def make_program(rng):
    """conv(dense, relu) -> conv(codebook, residual = first output) -> maxpool -> avgpool(global) -> linear."""
    H = W = 6
    C0, C1, d, k = 3, 8, 4, 5
    w0 = rng.integers(-127, 128, (C1, 3, 3, C0))
    idx = rng.integers(0, k, (C1, 3, 3, C1 // d))
    mask = rng.integers(0, 1 << d, (C1, 3, 3, C1 // d))
    cb = rng.integers(-128, 128, (k, d))
    def rq(oc, lo=18, hi=24):
        return dict(bias=rng.integers(-3000, 3000, oc), mult=rng.integers(-(1 << 20), 1 << 20, oc),
                    shift=rng.integers(lo, hi, oc))
    ops = [
        Op(CONV, 0, 1, H, W, C0, H, W, C1, KH=3, KW=3, pad=1, in_unsigned=1, out_unsigned=1, lo=0, hi=255,
           name="c0", arrays=dict(weight=w0, **rq(C1))),
        Op(CONV, 1, 2, H, W, C1, H, W, C1, KH=3, KW=3, pad=1, res_buf=1, in_unsigned=1, res_unsigned=1,
           wfmt=CODEBOOK, n=2, m=4, d=d, k=k, name="c1",
           arrays=dict(idx=idx, mask=mask, codebook=cb, res_mult=rng.integers(-(1 << 16), 1 << 16, C1), **rq(C1))),
        Op(MAXPOOL, 2, 0, H, W, C1, 3, 3, C1, KH=2, KW=2, stride=2, name="mp"),
        Op(AVGPOOL, 0, 1, 3, 3, C1, 1, 1, C1, KH=3, KW=3, stride=3, name="ap",
           arrays=dict(mult=rng.integers(1 << 10, 1 << 14, C1), shift=rng.integers(12, 16, C1))),
        Op(CONV, 1, 2, 1, 1, C1, 1, 1, 4, name="fc",
           arrays=dict(weight=rng.integers(-127, 128, (4, 1, 1, C1)), **rq(4, 10, 14))),
    ]
    return Program(ops, in_scale=1 / 255, out_scale=0.1, in_shape=(H, W, C0)), (w0, idx, mask, cb)


def naive_run(prog, dec, x):
    w0, idx, mask, cb = dec
    o0, o1, o2, o3, o4 = [op for op in prog.ops]
    a = o0.arrays
    y0 = naive_rq(naive_conv(x, w0, a["bias"], 1, 1), a["mult"], a["shift"], 0, 255)
    # decode: element e of vector v kept when bit e of mask is set
    OC, KH, KW, V = idx.shape
    w1 = np.zeros((OC, KH, KW, V * cb.shape[1]), np.int64)
    for i in np.ndindex(idx.shape):
        for e in range(cb.shape[1]):
            if (int(mask[i]) >> e) & 1:
                w1[i[0], i[1], i[2], i[3] * cb.shape[1] + e] = cb[idx[i], e]
    a = o1.arrays
    y1 = naive_rq(naive_conv(y0, w1, a["bias"], 1, 1), a["mult"], a["shift"], -128, 127, y0, a["res_mult"])
    y2 = np.array([[[max(y1[2 * i + di, 2 * j + dj, c] for di in (0, 1) for dj in (0, 1))
                     for c in range(8)] for j in range(3)] for i in range(3)])
    a = o3.arrays
    y3 = naive_rq(y2.sum((0, 1), keepdims=True), a["mult"], a["shift"], -128, 127)
    a = o4.arrays
    return naive_rq(naive_conv(y3, a["weight"], a["bias"], 1, 0), a["mult"], a["shift"], -128, 127)


def test_run_program_matches_naive_reference():
    rng = np.random.default_rng(0)
    prog, dec = make_program(rng)
    x = rng.integers(0, 256, (3, 6, 6, 3))
    got = run_program(prog, x)
    assert got.shape == (3, 1, 1, 4)
    for b in range(3):
        assert np.array_equal(got[b], naive_run(prog, dec, x[b]))
    # and identically after the binary round trip
    again = Program.from_bytes(prog.to_bytes())
    assert np.array_equal(run_program(again, x), got)
    trace = run_program(again, x, return_all=True)
    assert len(trace) == 5 and np.array_equal(trace[-1], got)


def test_run_program_reports_inconsistent_programs():
    rng = np.random.default_rng(1)
    prog, _ = make_program(rng)
    x = rng.integers(0, 256, (1, 6, 6, 3))
    bad = Program([prog.ops[0], Op(MAXPOOL, 3, 0, 6, 6, 8, 3, 3, 8, KH=2, KW=2, stride=2)])
    with pytest.raises(ProgramExecError, match="nothing wrote"):
        run_program(bad, x)
    bad = Program([prog.ops[0], Op(MAXPOOL, 1, 0, 6, 6, 8, 2, 2, 8, KH=2, KW=2, stride=2)])
    with pytest.raises(ProgramExecError, match="gives 3x3"):
        run_program(bad, x)
    with pytest.raises(ProgramExecError, match="expects"):
        run_program(prog, x[:, :5])
    op = prog.ops[0]
    del op.arrays["mult"]
    with pytest.raises(ProgramExecError, match="mult"):
        run_program(prog, x)
