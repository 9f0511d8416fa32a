"""Integer layer kernels shared by the golden model's two entry points.

All activations are NHWC int64 arrays holding int8 / uint8 values; all results
are exact integers. Convolutions use float64 matmuls (BLAS) and cast back:
this is exact because every partial sum is an integer bounded by
sum|w| * max|x| + |bias| < 2^53, which :func:`acc_bound` lets callers assert
(lowering additionally guarantees < 2^31).
"""
from __future__ import annotations

import numpy as np

EXACT_F64 = 1 << 53


def out_size(size: int, k: int, stride: int, pad: int) -> int:
    """Output length of a window op along one axis (floor mode)."""
    return (size + 2 * pad - k) // stride + 1


def acc_bound(w: np.ndarray, bias: np.ndarray | None, x_max: int) -> np.ndarray:
    """Worst-case |accumulator| per output channel: sum|w| * max|x| + |bias|.

    w: int [OC, KH, KW, C]; bias: int [OC] or None; x_max: 255 (uint8) or 128 (int8).
    Returns Python-int-exact int64 [OC] (fits: int8 weights, < 2^40 for any sane shape).
    """
    b = np.zeros(w.shape[0], np.int64) if bias is None else np.abs(np.asarray(bias, np.int64))
    return np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(1) * int(x_max) + b


def decode_codebook(idx: np.ndarray, keep: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Codebook weights: w[oc,kh,kw,v*d+e] = keep[oc,kh,kw,v,e] * codebook[idx[oc,kh,kw,v], e].

    idx: int [OC,KH,KW,V]; keep: bool/0-1 [OC,KH,KW,V,d]; codebook: int [k,d].
    Returns int64 [OC,KH,KW,V*d].
    """
    cb = np.asarray(codebook, np.int64)
    idx = np.asarray(idx, np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= cb.shape[0]):
        raise ValueError(f"codeword index out of range 0..{cb.shape[0] - 1}")
    w = cb[idx] * np.asarray(keep, np.int64)           # [OC,KH,KW,V,d]
    return w.reshape(*idx.shape[:3], -1)


def mask_bits_to_keep(bits: np.ndarray, d: int) -> np.ndarray:
    """uint16 bitmask [..., V] (bit e = element e of the d-vector) -> bool [..., V, d]."""
    b = np.asarray(bits, np.int64)[..., None]
    return ((b >> np.arange(d, dtype=np.int64)) & 1).astype(bool)


def keep_to_mask_bits(keep: np.ndarray) -> np.ndarray:
    """bool [..., V, d] -> uint16 bitmask [..., V] (bit e = element e); inverse of mask_bits_to_keep."""
    keep = np.asarray(keep, bool)
    d = keep.shape[-1]
    if d > 16:
        raise ValueError(f"d={d} does not fit a 16-bit mask word")
    weights = (1 << np.arange(d, dtype=np.int64))
    return (keep.astype(np.int64) * weights).sum(-1).astype(np.uint16)


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, stride: int, pad: int) -> np.ndarray:
    """Integer convolution, zero padding: acc[b,oh,ow,oc] = sum w*x + bias[oc].

    x: int [B,H,W,C]; w: int [OC,KH,KW,C]; bias: int [OC] or None.
    Returns int64 [B,OH,OW,OC].
    """
    B, H, W, C = x.shape
    OC, KH, KW, C2 = w.shape
    if C2 != C:
        raise ValueError(f"conv2d: weight has {C2} input channels, activation has {C}")
    x_max = int(np.abs(x).max()) if x.size else 0
    bound = acc_bound(w, bias, x_max)
    if bound.size and bound.max() >= EXACT_F64:  # never for int8 data; guards the float64 trick
        raise OverflowError("conv2d: accumulator bound exceeds 2^53, float64 matmul would be inexact")
    OH, OW = out_size(H, KH, stride, pad), out_size(W, KW, stride, pad)
    xf = x.astype(np.float64)
    if pad:
        xf = np.pad(xf, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    wf = w.astype(np.float64)
    acc = np.zeros((B, OH, OW, OC), np.float64)
    # one [B*OH*OW, C] x [C, OC] matmul per kernel tap: no im2col copy of the whole patch matrix
    for kh in range(KH):
        for kw in range(KW):
            xs = xf[:, kh: kh + stride * (OH - 1) + 1: stride, kw: kw + stride * (OW - 1) + 1: stride, :]
            acc += xs @ wf[:, kh, kw, :].T
    out = np.rint(acc).astype(np.int64)
    if bias is not None:
        out += np.asarray(bias, np.int64)
    return out


def _windows(x: np.ndarray, KH: int, KW: int, stride: int) -> np.ndarray:
    """[B,H,W,C] -> [B,OH,OW,C,KH,KW] view of the pooling windows (no padding, floor mode)."""
    v = np.lib.stride_tricks.sliding_window_view(x, (KH, KW), axis=(1, 2))
    return v[:, ::stride, ::stride]


def maxpool(x: np.ndarray, KH: int, KW: int, stride: int) -> np.ndarray:
    """Max over KHxKW windows. x: int [B,H,W,C] -> int64 [B,OH,OW,C]."""
    return _windows(np.asarray(x, np.int64), KH, KW, stride).max(axis=(-2, -1))


def window_sum(x: np.ndarray, KH: int, KW: int, stride: int) -> np.ndarray:
    """Integer sum over KHxKW windows (the average pool's accumulator). [B,H,W,C] -> int64 [B,OH,OW,C]."""
    return _windows(np.asarray(x, np.int64), KH, KW, stride).sum(axis=(-2, -1))


# --------------------------------------------------------------------------- product quantization
# Elements of the largest temporary the PQ kernels build at once (bounds memory for big batches).
_PQ_CHUNK = 1 << 22


def im2col(x: np.ndarray, KH: int, KW: int, stride: int, pad: int) -> np.ndarray:
    """Patches in (kh, kw, c) order, zero padded: x int [B,H,W,C] -> int64 [B,OH,OW,KH*KW*C].

    Element ``(kh*KW + kw)*C + c`` of the patch of output (oh, ow) is
    ``x[oh*stride - pad + kh, ow*stride - pad + kw, c]`` (0 in the padding).
    """
    B, H, W, C = x.shape
    OH, OW = out_size(H, KH, stride, pad), out_size(W, KW, stride, pad)
    xp = np.pad(np.asarray(x, np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0))) if pad else np.asarray(x, np.int64)
    taps = [xp[:, kh: kh + stride * (OH - 1) + 1: stride, kw: kw + stride * (OW - 1) + 1: stride, :]
            for kh in range(KH) for kw in range(KW)]
    return np.stack(taps, axis=3).reshape(B, OH, OW, KH * KW * C)


def pq_distances(a: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """Squared distances of subvectors to prototypes: a int [N,Cs,v], proto int [Cs,K,v] -> int64 [N,Cs,K].

    dist[n,s,k] = sum_e (a[n,s,e] - proto[s,k,e])^2, exact. Computed as
    ||a||^2 - 2 a.P + ||P||^2 with a float64 matmul: every term is an integer below
    2^53 (|a|, |P| <= 255, v <= 64), so the result is the exact integer.
    """
    a = np.asarray(a, np.int64)
    P = np.asarray(proto, np.int64)
    dots = np.matmul(a.transpose(1, 0, 2).astype(np.float64), P.transpose(0, 2, 1).astype(np.float64))  # [Cs,N,K]
    dots = np.rint(dots).astype(np.int64).transpose(1, 0, 2)
    return (a * a).sum(-1)[..., None] - 2 * dots + (P * P).sum(-1)[None]


def pq_encode(a: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """Nearest prototype per subvector, ties to the LOWEST index: a [N,Cs,v], proto [Cs,K,v] -> int64 [N,Cs].

    np.argmin returns the first minimum, i.e. the strict-less linear scan of PQA's
    golden model (and the engine's argmin tree).
    """
    return pq_distances(a, proto).argmin(-1)


def pq_lookup(idx: np.ndarray, lut: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """acc[n, oc] = bias[oc] + sum_s lut[s, idx[n, s], oc]: idx int [N,Cs], lut int [Cs,K,OC] -> int64 [N,OC].

    A one-hot float64 matmul: exact, the partial sums are integers < 2^53.
    """
    Cs, Kp, OC = lut.shape
    rows = (np.asarray(idx, np.int64) + np.arange(Cs, dtype=np.int64) * Kp).reshape(len(idx), Cs)
    onehot = np.zeros((len(idx), Cs * Kp), np.float64)
    np.put_along_axis(onehot, rows, 1.0, axis=1)
    acc = np.rint(onehot @ np.asarray(lut, np.float64).reshape(Cs * Kp, OC)).astype(np.int64)
    if bias is not None:
        acc += np.asarray(bias, np.int64)
    return acc


def pq_conv(x: np.ndarray, proto: np.ndarray, lut: np.ndarray, bias: np.ndarray | None,
            KH: int, KW: int, stride: int, pad: int) -> np.ndarray:
    """The PQ op's accumulator (see flow.compile.program's docstring, "PQ op").

    x: int [B,H,W,C] (int8 / uint8 values); proto: int [Cs,K,v] in x's grid; lut: int [Cs,K,OC];
    bias: int [OC] or None. Cs * v must equal KH*KW*C. Returns int64 [B,OH,OW,OC].
    """
    B, H, W, C = x.shape
    Cs, Kp, v = proto.shape
    if Cs * v != KH * KW * C or lut.shape[:2] != (Cs, Kp):
        raise ValueError(f"pq_conv: {Cs} subspaces x v={v} do not cover a {KH}x{KW}x{C} patch "
                         f"(or lut {lut.shape} does not match proto {proto.shape})")
    OH, OW = out_size(H, KH, stride, pad), out_size(W, KW, stride, pad)
    OC = lut.shape[2]
    out = np.empty((B, OH, OW, OC), np.int64)
    per_image = max(1, OH * OW * max(Cs * max(Kp, v), Cs * Kp + OC))
    step = max(1, _PQ_CHUNK // per_image)
    for b0 in range(0, B, step):
        a = im2col(x[b0: b0 + step], KH, KW, stride, pad).reshape(-1, Cs, v)
        acc = pq_lookup(pq_encode(a, proto), lut, bias)
        out[b0: b0 + step] = acc.reshape(-1, OH, OW, OC)
    return out


def pq_acc_bound(lut: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Worst-case |accumulator| per output channel of a PQ op: sum_s max_k |lut[s,k,oc]| + |bias[oc]|."""
    b = 0 if bias is None else np.abs(np.asarray(bias, np.int64))
    return np.abs(np.asarray(lut, np.int64)).max(axis=1).sum(axis=0) + b
