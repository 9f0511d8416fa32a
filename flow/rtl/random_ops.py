"""Random Program conv ops (flow.compile.program.Op) for the RTL co-simulation cases.

    op = conv_op(np.random.default_rng(11), H=6, W=6, C=16, OC=16, wfmt=CODEBOOK, n=2, m=4)

Random integer arrays within their dtype ranges: dense int8 weights, or an MVQ codebook with indices
and n:m mask words; bias, and mult / shift chosen so that outputs do not always saturate. The draws
from ``rng`` come in a fixed order (weights or codebook / indices / masks, bias, requantization), so a
seed names one op. ``SMALL_CFG`` is the small engine geometry the cases also run on.
"""
from __future__ import annotations

import numpy as np

from flow.compile.engine import EngineConfig
from flow.compile.program import AVGPOOL, CODEBOOK, CONV, DENSE, MAXPOOL, Op, Program
from flow.quant.ops import out_size

INT32_MAX = (1 << 31) - 1

# small limits: 4x4 array of 4-lane 1:4 PEs (multi-pass for denser masks), codewords longer than a
# word (d_max 8 > lanes 4), several pixel tiles per layer (acc_groups 4)
SMALL_CFG = EngineConfig(pq=True, rows=4, cols=4, lanes=4, n=1, m=4, k_max=64, d_max=8, act_buf_bytes=2048, num_bufs=3,
                         acc_groups=4, vmem_entries=4096, cb_rows=256, dmem_words=1024, ch_rows=64, dsp_rows=2,
                         max_channels=64, max_kernel=5, max_ops=8, param_bytes=1 << 20,
                         pq_v_max=16, pq_k_max=64, pq_subspaces_max=64, lut_bytes=8192)


def act_range(unsigned) -> tuple[int, int]:
    """(lo, hi) of an 8-bit activation of the given signedness."""
    return (0, 255) if unsigned else (-128, 127)


def nm_masks(rng: np.random.Generator, count: int, d: int, n: int, m: int) -> np.ndarray:
    """uint16 mask words: in each d-vector, exactly n of every m consecutive elements kept."""
    assert d % m == 0
    keep = np.zeros((count, d), dtype=bool)
    for g in range(d // m):
        # n random positions of each group of m
        order = np.argsort(rng.random((count, m)), axis=1)[:, :n]
        rows = np.repeat(np.arange(count), n)
        keep[rows, g * m + order.ravel()] = True
    bits = (keep.astype(np.int64) << np.arange(d)).sum(1)
    return bits.astype(np.uint16)


def requant_params(rng: np.random.Generator, acc_scale: np.ndarray, res_scale: float | None = None,
                   shift_range=(1, 31)):
    """mult/shift (and res_mult) per channel so that typical outputs land around +-60 (not always saturated)."""
    oc = acc_scale.shape[0]
    shift = rng.integers(shift_range[0], shift_range[1] + 1, size=oc)
    target = rng.uniform(20, 100, size=oc)
    sign = np.where(rng.random(oc) < 0.15, -1, 1)
    mult = np.round(sign * target * (2.0 ** shift) / np.maximum(acc_scale, 1.0))
    mult = np.where(mult == 0, sign, mult)
    mult = np.clip(mult, -INT32_MAX, INT32_MAX).astype(np.int64)
    res_mult = None
    if res_scale is not None:
        rt = rng.uniform(0.2, 1.0, size=oc)
        res_mult = np.clip(np.round(rt * (2.0 ** shift)), -INT32_MAX, INT32_MAX).astype(np.int64)
        res_mult = np.where(rng.random(oc) < 0.2, -res_mult, res_mult)
    return mult, shift, res_mult


def add_post_arrays(arrays: dict, rng: np.random.Generator, acc_scale: np.ndarray, residual: bool,
                    bias_scale: float, shift_range) -> dict:
    """``arrays`` with the per-channel epilogue of a conv / PQ op: bias, mult, shift (and res_mult)."""
    arrays["bias"] = rng.integers(-int(bias_scale), int(bias_scale) + 1, size=acc_scale.shape[0])
    mult, shift, res_mult = requant_params(rng, acc_scale, 1.0 if residual else None, shift_range)
    arrays["mult"], arrays["shift"] = mult, shift
    if res_mult is not None:
        arrays["res_mult"] = res_mult
    return arrays


def conv_op(rng: np.random.Generator, *, H: int, W: int, C: int, OC: int, K: int = 3, stride: int = 1,
            pad: int = 1, wfmt: int = DENSE, n: int = 2, m: int = 4, d: int = 8, k: int = 16,
            in_unsigned: int = 0, out_unsigned: int = 0,
            in_buf: int = 0, out_buf: int = 1, res_buf: int = -1, res_unsigned: int = 0,
            bias_scale: float = 2000.0, shift_range=(1, 31), name: str = "conv") -> Op:
    """A random conv op: DENSE int8 weights, or CODEBOOK (k codewords of d, n:m masks; C a multiple of d)."""
    OH, OW = out_size(H, K, stride, pad), out_size(W, K, stride, pad)
    arrays: dict[str, np.ndarray] = {}
    if wfmt == DENSE:
        w = rng.integers(-128, 128, size=(OC, K, K, C))
        arrays["weight"] = w
        dense_w = w
        kw = dict(wfmt=DENSE)
    else:
        nvec = C // d
        codebook = rng.integers(-128, 128, size=(k, d))
        idx = rng.integers(0, k, size=(OC, K, K, nvec))
        masks = nm_masks(rng, OC * K * K * nvec, d, n, m).reshape(OC, K, K, nvec)
        arrays.update(idx=idx, mask=masks, codebook=codebook)
        keep = ((masks[..., None].astype(np.int64) >> np.arange(d)) & 1).astype(bool)
        dense_w = (codebook[idx] * keep).reshape(OC, K, K, C)
        kw = dict(wfmt=CODEBOOK, n=n, m=m, d=d, k=k)
    # accumulator scale of a typical input (rms of int8 / uint8 activations) so mult lands outputs mid-range
    x_rms = 147.0 if in_unsigned else 74.0
    acc_scale = np.sqrt((dense_w.astype(np.float64) ** 2).reshape(OC, -1).sum(1)) * x_rms * 0.7 + 1
    add_post_arrays(arrays, rng, acc_scale, res_buf >= 0, bias_scale, shift_range)
    lo, hi = act_range(out_unsigned)
    return Op(CONV, in_buf, out_buf, H=H, W=W, C=C, OH=OH, OW=OW, OC=OC, KH=K, KW=K, stride=stride, pad=pad,
              res_buf=res_buf, in_unsigned=in_unsigned, res_unsigned=res_unsigned, out_unsigned=out_unsigned,
              lo=lo, hi=hi, name=name, arrays=arrays, **kw)


def avgpool_op(H: int, W: int, C: int, K: int, in_buf: int, out_buf: int) -> Op:
    lo, hi = act_range(1)
    return Op(AVGPOOL, in_buf, out_buf, H=H, W=W, C=C, OH=out_size(H, K, K, 0), OW=out_size(W, K, K, 0), OC=C,
              KH=K, KW=K, stride=K, in_unsigned=1, out_unsigned=1, lo=lo, hi=hi, name="avgpool",
              arrays=dict(mult=np.full(C, (1 << 20) // (K * K)), shift=np.full(C, 20)))


def maxpool_op(H: int, W: int, C: int, K: int, in_buf: int, out_buf: int) -> Op:
    lo, hi = act_range(1)
    return Op(MAXPOOL, in_buf, out_buf, H=H, W=W, C=C, OH=out_size(H, K, K, 0), OW=out_size(W, K, K, 0), OC=C,
              KH=K, KW=K, stride=K, in_unsigned=1, out_unsigned=1, lo=lo, hi=hi, name="maxpool")


def random_program(wfmt: int, seed: int = 5) -> Program:
    """8x8x8 -> dense conv (residual source, buffer 2) | conv 3x3 8->16 with that residual -> avg pool 2 ->
    max pool 2 -> conv 2x2 16->10 (a linear): ``wfmt`` CODEBOOK is VQ (n = m = 4, k 16, d 8), else dense."""
    rng = np.random.default_rng(seed)
    cb = dict(wfmt=wfmt, n=4, m=4, d=8, k=16) if wfmt == CODEBOOK else dict(wfmt=DENSE)
    ops = [conv_op(rng, H=8, W=8, C=8, OC=16, K=3, pad=1, in_unsigned=1, out_unsigned=0, shift_range=(8, 24),
                   in_buf=0, out_buf=2, name="res_src"),
           conv_op(rng, H=8, W=8, C=8, OC=16, K=3, pad=1, in_unsigned=1, out_unsigned=1, shift_range=(8, 24),
                   in_buf=0, out_buf=1, res_buf=2, res_unsigned=0, name="conv", **cb),
           avgpool_op(8, 8, 16, 2, 1, 0),
           maxpool_op(4, 4, 16, 2, 0, 1),
           conv_op(rng, H=2, W=2, C=16, OC=10, K=2, pad=0, in_unsigned=1, out_unsigned=0, shift_range=(8, 24),
                   in_buf=1, out_buf=0, name="fc", **cb)]
    return Program(ops=ops, in_shape=(8, 8, 8))
