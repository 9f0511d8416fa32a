"""PQ: product quantization of activations (multiply-accumulate -> table lookup).

The scheme of LUT-NN (Tang et al., "LUT-NN: Empower Efficient Neural Network
Inference with Centroid Learning and Table Lookup", MobiCom 2023) and PQA
(AbouElhamayed et al., "PQA: Exploring the Potential of Product Quantization in
DNN Hardware Acceleration", TRETS 2024): a layer's input vector of length D is
cut into ``C = D / v`` subvectors of length ``v``; subspace ``c`` has ``K``
prototypes ``P[c]`` [K, v]. Because the layer is linear,

    y = sum_c W_c a_c + b  ~=  sum_c W_c P[c, idx_c] + b = sum_c LUT[c, idx_c] + b,
    LUT[c, k, o] = P[c, k] . W_c[o]          (W_c: weight block [Cout, v] of subspace c)

so inference is: encode each subvector to its nearest prototype (``idx_c``),
add up ``C`` LUT rows, requantize. No multiplications by weights remain.

Subvector order (what the lowering and the lookup engine must reproduce):
    * Linear: the input vector as is, ``a[..., c*v:(c+1)*v]``.
    * Conv2d: the im2col patch of one output pixel in **channels-last order
      (kh, kw, cin)**: element ``(i*kw + j)*Cin + ci`` is input channel ``ci`` at
      kernel offset ``(i, j)``, so the engine reads ``Cin`` contiguous bytes of an
      NHWC buffer per kernel offset. Subvectors may straddle kernel offsets
      (v=9, Cin=16: subvector 1 holds channels 9..15 of (0,0) and 0..1 of (0,1)).
      Zero padding is part of the patch: padded positions are zeros and are
      encoded like any other data. The weight blocks use the same order:
      ``weight.permute(0, 2, 3, 1).reshape(Cout, D)``.

Encoding is brute force: squared Euclidean distance to all ``K`` prototypes,
strict-less scan, so ties go to the lowest index (DESIGN.md; PQA's golden
model). Training follows LUT-NN: the forward pass uses the hard one-hot
assignment (what the hardware computes) and the backward pass the gradient of
the soft assignment ``softmax(-||a - P||^2 / T)``; ``T`` is an annealed buffer
(:meth:`set_temperature`, :func:`flow.compress.finetune.pq_finetune`), not learned, so a run is
reproducible and the schedule is explicit. :meth:`set_assignment` ``("soft")``
makes the training forward the soft assignment itself (``sum_c soft_c @ LUT_c``,
exactly the hard lookup once ``T`` is small enough that the softmax underflows to
one-hot); evaluation is always the hard lookup. The full recipe (k-means init,
joint soft training with a temperature relative to each layer's quantization
error, LUT quantization, BN/bias fine-tune) is
:func:`flow.compress.finetune.pq_finetune`.

Stored precision (``stored_bits``): prototypes ``proto_bits = 8`` (int8/uint8 in
the *input activation's* quantization grid, so the encoder compares integers
with integers and no extra scale is stored), the LUT at ``lut_bits`` (8 or 16)
with one float32 per-layer scale, bias int32. The float ``weight`` is kept for
training and LUT recomputation only; it is not deployed.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .errors import (
    ChannelDivisibilityError,
    CodebookSizeError,
    ShapeMismatchError,
    UnsupportedLayerError,
    VectorLengthError,
)
from . import _pq_native as _native
from .kmeans import masked_kmeans
from .vecq import BitWidthError, check_plain_conv, conv_padding

__all__ = [
    "PQConv2d",
    "PQLinear",
    "nearest_prototype",
    "kmeans_subspaces",
    "temperature_at",
    "pq_distance_scales",
    "pq_layers",
    "LUT_BITS",
]

LUT_BITS = (8, 16)
# Elements of one [C, K, m] distance block (2 MiB in float32): the distance, argmin and (in training)
# softmax and gradient passes over a block run in cache (one ResNet20 layer per stage trained on a
# loaded 2-core EPYC, 1 MiB L2: 2^19 and 2^20 alike, 2^18 ~10% and 2^21 ~75% slower); also bounds
# memory for big batches. A
# PQConv2d's training passes build its patches for about this many columns at a time.
_SCORE_CHUNK = 1 << 19
# The soft assignment's powers of 2: exponents below _EXP2_MIN (results under float32's smallest
# normal, exactly _EXP2_FLOOR at the bound) are flushed to 0 (see _soft_block).
_LOG2E = 1.0 / math.log(2.0)
_EXP2_MIN = -126.0
_EXP2_FLOOR = 2.0 ** -126
# Patch elements (Cin*kh*kw per output pixel) a PQConv2d builds at once outside training: a few
# images at a time, so each one's patches are encoded while they are still in cache.
_PATCH_CHUNK = 1 << 20
# Patch floats per range of the native training kernels (C*v per column; whole images of a conv): a range's
# patches, dL/dz and dL/da stay near the core (the 1 MiB L2 of the 2-core EPYC) while every kernel passes over
# them. ResNet20 (9, 16), batch 64, one core: 1,600 columns of its first stage (C*v = 144) gave the fastest step
# of 800 / 1,200 / 1,600 / 2,000 / 3,200 columns in every stage; the same floats per range (fewer columns where
# C*v is larger: 800 in the second stage, 400 in the third) are faster again (see docs/design-notes.md).
_NATIVE_FLOATS = 1600 * 144


def _native_cols(C: int, v: int) -> int:
    """Columns per range of the native kernels for subvectors [C, v]: :data:`_NATIVE_FLOATS` patch floats."""
    return max(1, _NATIVE_FLOATS // max(1, C * v))


def _check_pq(D: int, v: int, K: int, where: str) -> int:
    """Validate (D, v, K); return C = D // v."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise VectorLengthError(f"{where}: subvector length v={v!r} is invalid; use an integer v >= 1 (PQA: v=9)")
    if isinstance(K, bool) or not isinstance(K, int) or K < 2:
        raise CodebookSizeError(f"{where}: K={K!r} prototypes per subspace is invalid; use an integer K >= 2 (PQA: 16)")
    if D % v:
        divs = [d for d in range(1, min(D, 32) + 1) if D % d == 0]
        raise ChannelDivisibilityError(
            f"{where}: input length D={D} is not divisible by v={v}; pick v dividing D (e.g. one of {divs}) "
            f"or keep this layer dense"
        )
    return D // v


def _scan_nearest(a: Tensor, P: Tensor) -> Tensor:
    """Reference encoder: a [R, v], P [R, K, v] -> int64 [R]; direct distances, first minimum.

    ``(a_0 - P_k0)^2 + (a_1 - P_k1)^2 + ...`` for every k at once, summed in element order (each square and
    each sum rounded: a fixed order, which the native encoder's ``exact_nearest`` repeats bit for bit, where
    ``sum(-1)``'s order is torch's to choose), then the first index of the minimum (torch's argmin returns
    the first one): the strict-less scan's answer, ties to the lowest index.
    """
    if a.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=a.device)
    sq = (a[:, None, :] - P).square_()  # [R, K, v]
    d = sq[:, :, 0].clone()
    for j in range(1, sq.shape[2]):
        d += sq[:, :, j]
    return d.argmin(-1)


def _chunk_cols(C: int, K: int, M: int) -> int:
    """Columns (subvector positions) per distance block [C, K, m]."""
    return max(1, min(M, _SCORE_CHUNK // (C * K)))


class _Scratch:
    """Flat buffers reused from block to block: ``take(i, *shape)`` is a contiguous view of buffer i.

    The block loops below write every [C, K, m] intermediate into one of these (``out=``, in place)
    instead of allocating it: a fresh multi-megabyte tensor per op costs more than the op itself.
    """

    def __init__(self, like: Tensor, count: int, numel: int):
        self.bufs = [like.new_empty(numel) for _ in range(count)]

    def take(self, i: int, *shape: int) -> Tensor:
        return self.bufs[i][:math.prod(shape)].view(*shape)


def _scores(aT: Tensor, P: Tensor, pn: Tensor, out: Tensor | None = None) -> Tensor:
    """``e[c, k, m] = ||P[c, k]||^2 - 2 P[c, k] . a[c, :, m]``: the squared distance less ``||a||^2``.

    aT [C, v, m] (subspace-major, positions last), P [C, K, v], pn = ||P||^2 [C, K] -> [C, K, m]
    (into ``out`` when given). ``||a||^2`` is the same for every k, so it changes neither the argmin
    nor the softmax.
    """
    if out is None:
        return torch.baddbmm(pn[:, :, None], P, aT, alpha=-2)
    return torch.baddbmm(pn[:, :, None], P, aT, alpha=-2, out=out)


def _encode_block(aT: Tensor, P: Tensor, pn: Tensor, pn_max: Tensor, weights: Tensor,
                  scratch: _Scratch | None = None) -> Tensor:
    """Nearest prototype of the columns of aT [C, v, m]: int64 [C, m], ties to the lowest index.

    The expanded distance's rounding error is bounded by ``tol``; a column whose best and
    runner-up lie within ``2 tol`` (two or more hits below ``min + 2 tol``) is re-encoded with
    the direct formula, so the answer is always the direct strict-less scan's.
    ``weights`` [2, K] = (ones, arange(K)) in aT's dtype: one GEMM gives, per column, the
    number of hits and (when it is 1) the index of the only hit. ``scratch`` (two buffers of
    at least C*K*m elements) holds the [C, K, m] intermediates.
    """
    C, v, m = aT.shape
    K = P.shape[1]
    e = _scores(aT, P, pn, out=None if scratch is None else scratch.take(0, C, K, m))  # [C, K, m]
    emin = e.amin(1)  # [C, m]
    an = (aT * aT).sum(1)  # [C, m]
    # Error of either distance formula <= ~(4v + 8) eps (||a||^2 + ||P||^2); doubled for margin.
    rel = (8 * v + 16) * torch.finfo(aT.dtype).eps
    thr = an.add_(pn_max[:, None]).mul_(2 * rel).add_(emin)
    hits = torch.le(e, thr[:, None, :], out=torch.empty_like(e) if scratch is None else scratch.take(1, C, K, m))
    count_index = torch.matmul(weights, hits)  # [C, 2, m]: hits per column and the index of a single hit
    idx = count_index[:, 1].to(torch.int64)
    ambiguous = count_index[:, 0] > 1  # the order of best and runner-up is within error: redo exactly
    if ambiguous.any():
        ci, mi = ambiguous.nonzero(as_tuple=True)
        idx[ci, mi] = _scan_nearest(aT[ci, :, mi], P[ci])
    return idx


@torch.no_grad()
def _encode_T(aT: Tensor, prototypes: Tensor, scratch: _Scratch | None = None) -> Tensor:
    """Nearest prototype of every column of aT [C, v, M] (subspace-major): int64 [C, M].

    ``scratch``: at least two buffers of ``C*K*_chunk_cols(C, K, M)`` elements (a caller that encodes
    many ranges passes one, so they are allocated once)."""
    C, K, _ = prototypes.shape
    M = aT.shape[2]
    P = prototypes.to(aT.dtype)
    lib = _native.usable(aT, P, K=K) if M else None
    if lib is not None:  # the fused kernel: the same answer bit for bit (_encode_native)
        out = torch.empty(C, M, dtype=torch.int64)
        _encode_native(lib, _native.Tables(P.contiguous()), aT.contiguous(), out)
        return out
    pn = (P * P).sum(-1)  # [C, K]
    pn_max = pn.amax(-1)
    weights = torch.stack([torch.ones(K, dtype=aT.dtype, device=aT.device),
                           torch.arange(K, dtype=aT.dtype, device=aT.device)])
    out = torch.empty(C, M, dtype=torch.int64, device=aT.device)
    step = _chunk_cols(C, K, M)
    scratch = scratch or _Scratch(aT, 2, C * K * step)
    for i in range(0, M, step):
        out[:, i:i + step] = _encode_block(aT[:, :, i:i + step], P, pn, pn_max=pn_max, weights=weights,
                                           scratch=scratch)
    return out


def nearest_prototype(a: Tensor, prototypes: Tensor) -> Tensor:
    """Index of the nearest prototype of every subvector, ties to the lowest index.

    Args:
        a: subvectors [..., C, v] (float).
        prototypes: [C, K, v].

    Returns:
        int64 [..., C]: the first ``k`` minimising ``sum((a - P[c, k])^2)`` computed directly
        in ``a``'s dtype — the hardware encoder's strict-less argmin. For integer-valued
        data (the deployed int8 grid) those float distances are exact, so the result
        is bit-exact with the integer encoder.

    Speed: distances are first computed as ``||P||^2 - 2 a.P`` (+ ``||a||^2``, constant per
    subvector) by one batched matmul per L2-sized block of subvectors, laid out
    [C, K, positions] so the reductions over K are vectorized. Their cancellation error
    is bounded by ``tol``; every subvector whose runner-up lies within ``2 tol`` of its
    best is re-encoded with the direct formula, so the answer is always the direct one.
    """
    C, K, v = prototypes.shape
    if a.shape[-2:] != (C, v):
        raise ShapeMismatchError(f"subvectors have trailing shape {tuple(a.shape[-2:])}, prototypes need ({C}, {v})")
    lead = a.shape[:-2]
    aT = a.reshape(-1, C, v).permute(1, 2, 0).contiguous()  # [C, v, M]
    return _encode_T(aT, prototypes).T.reshape(*lead, C)


def _lut_sum(lut: Tensor, idx: Tensor) -> Tensor:
    """``out[m] = sum_c lut[c, idx[c, m]]``: lut [C, K, Cout], idx [C, M] -> [M, Cout] (differentiable in lut;
    the native kernel when no gradient is wanted)."""
    C, K, Cout = lut.shape
    if idx.shape[1] == 0:
        return lut.new_zeros(0, Cout)
    lib = _native.usable(lut, K=None) if idx.stride(1) == 1 else None
    if lib is not None and not (lut.requires_grad and torch.is_grad_enabled()):
        return _native.lut_sum(lib, lut, idx)  # the same additions in the same order, without the [M, C] row index
    rows = (idx + torch.arange(C, device=idx.device)[:, None] * K).T.contiguous()  # [M, C] rows of lut.flat
    return F.embedding_bag(rows, lut.reshape(C * K, Cout), mode="sum")


def _soft_block(ab: Tensor, P: Tensor, pn: Tensor, temperature: float, out: Tensor | None = None) -> Tensor:
    """Soft assignment of the columns of ab [C, v, m]: ``softmax_k(-||a - P_k||^2 / T)`` [C, K, m].

    Computed in place in one [C, K, m] tensor (``out`` when given) as ``2^((e_min - e) log2(e) / T)``
    normalised over k (the same softmax: a shift per column), so the best prototype's logit is
    exactly 0 and a tiny ``T`` gives an exact one-hot (the others underflow to 0) instead of
    overflowing. Exact ties share the weight. Weights below ``2^-126`` (float32's smallest normal)
    are flushed to 0 before the power is taken: torch's ``exp``/``exp2`` take a slow path, tens of
    ns per element, for results that underflow, and at the small temperatures of the end of an
    annealing schedule almost every weight does. ``exp2`` rather than ``exp``: 3x faster in torch.
    """
    e = _scores(ab, P, pn, out=out)
    z = torch.sub(e.amin(1, keepdim=True), e, out=e).mul_(_LOG2E / temperature)  # <= 0; e is not needed again
    z.clamp_(min=_EXP2_MIN).exp2_()
    F.threshold(z, _EXP2_FLOOR, 0.0, inplace=True)  # the clamped ones (exactly 2^-126) -> 0
    return z.mul_(z.sum(1, keepdim=True).reciprocal_())


def _soft_sum(aT: Tensor, P: Tensor, lut: Tensor, temperature: float) -> Tensor:
    """``out[m] = sum_c sum_k soft[c, k, m] lut[c, k]``: aT [C, v, M], P [C, K, v], lut [C, K, Cout] -> [M, Cout]."""
    C, K, Cout = lut.shape
    M = aT.shape[2]
    out = lut.new_empty(M, Cout)
    pn = (P * P).sum(-1)
    flat = lut.reshape(C * K, Cout)
    step = _chunk_cols(C, K, M)
    scratch = _Scratch(aT, 1, C * K * step)
    for i in range(0, M, step):
        m = min(step, M - i)
        soft = _soft_block(aT[:, :, i:i + m], P, pn, temperature=temperature, out=scratch.take(0, C, K, m))
        torch.mm(soft.view(C * K, m).T, flat, out=out[i:i + m])
    return out


def _hard_lut_grad(idx: Tensor, g: Tensor, K: int) -> Tensor:
    """``grad[c, k] = sum of g[m] over the m with idx[c, m] = k``: idx [C, M], g [M, Cout] -> [C, K, Cout]."""
    grad = g.new_zeros(idx.shape[0], K, g.shape[1])
    for c in range(idx.shape[0]):
        grad[c].index_add_(0, idx[c], g)
    return grad


def _soft_backward(aT: Tensor, P: Tensor, lut: Tensor, g: Tensor, temperature: float, need_a: bool,
                   need_p: bool, grad_lut: Tensor | None,
                   scratch: _Scratch | None = None) -> tuple[Tensor | None, Tensor | None]:
    """Gradients through the soft assignment, block by block: ``(dL/daT [C, v, M], dL/dP [C, K, v])``.

    aT [C, v, M], P [C, K, v], lut [C, K, Cout] (all detached), g = dL/dout [M, Cout] contiguous.
    With ``soft = softmax_k(z)``, ``z = -(||P||^2 - 2 P.a + ||a||^2) / T`` and ``gs = g @ lut^T``:
    ``gz = soft * (gs - <soft, gs>)``, ``dL/da = (2/T) sum_k gz P_k`` (the ``||a||^2`` term drops out:
    ``sum_k gz = 0``) and ``dL/dP_k = (2/T) (sum_m gz a_m - P_k sum_m gz)``. ``grad_lut`` [C, K, Cout]
    (the soft forward's lut gradient ``soft^T g``), when given, is accumulated in place.

    Per block of columns: one GEMM for the distances, the softmax in place, one GEMM for ``gs``,
    three in-place passes for ``gz``, then one batched GEMM each for dL/da and dL/dP; every
    [C, K, m] intermediate lives in one of three reused buffers.
    """
    C, K, v = P.shape
    M = aT.shape[2]
    scale = 2.0 / temperature
    pn = (P * P).sum(-1)
    flat = lut.reshape(C * K, -1)
    gT = g.T  # [Cout, M] (a view)
    Ps = (P * scale).transpose(1, 2).contiguous() if need_a else None  # [C, v, K]
    grad_a = torch.empty_like(aT) if need_a else None
    gpT = aT.new_zeros(C, v, K) if need_p else None  # sum_m a_m gz_m^T
    gz_sum = aT.new_zeros(C, K) if need_p else None
    step = _chunk_cols(C, K, M)
    scratch = scratch or _Scratch(aT, 3, C * K * step)
    for i in range(0, M, step):
        m = min(step, M - i)
        ab = aT[:, :, i:i + m]  # [C, v, m]
        soft = _soft_block(ab, P, pn, temperature=temperature, out=scratch.take(0, C, K, m))  # [C, K, m]
        if grad_lut is not None:
            grad_lut.view(C * K, -1).addmm_(soft.view(C * K, m), g[i:i + m])
        if not (need_a or need_p):
            continue
        gz = scratch.take(1, C, K, m)
        torch.mm(flat, gT[:, i:i + m], out=gz.view(C * K, m))  # gs = dL/dsoft
        dot = torch.mul(soft, gz, out=scratch.take(2, C, K, m)).sum(1, keepdim=True)  # <soft, gs> [C, 1, m]
        gz.sub_(dot).mul_(soft)  # dL/dz
        if need_a:
            torch.bmm(Ps, gz, out=grad_a[:, :, i:i + m])
        if need_p:
            gpT.baddbmm_(ab, gz.transpose(1, 2))
            gz_sum += gz.sum(2)
    grad_p = None
    if need_p:
        grad_p = (gpT.transpose(1, 2) - P * gz_sum[..., None]).mul_(scale)
    return grad_a, grad_p


class _ConvGeom(NamedTuple):
    """A PQConv2d's patch geometry: what :func:`_im2col_T` needs besides the input."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    C: int
    v: int

    def out_hw(self, x_shape) -> tuple[int, int]:
        """(OH, OW) of the output for an input of shape [N, Cin, H, W]."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (x_shape[2] + 2 * ph - kh) // sh + 1, (x_shape[3] + 2 * pw - kw) // sw + 1


def _column_blocks(src: Tensor, geom: _ConvGeom | None, K: int,
                   cols: int | None = None) -> list[tuple[int, int, int, int]]:
    """``(i0, i1, n0, n1)``: the column ranges the training passes walk, and (conv) their images.

    PQLinear (``geom`` None, src = aT [C, v, M]): one range, the functions chunk it themselves.
    PQConv2d (src = x [N, Cin, H, W]): whole images per range, about one distance block of columns
    each (``cols`` columns when given: the native kernels' :func:`_native_cols`), so a range's patches
    are built, used and dropped while they are in cache and the full [C, v, N*OH*OW] patch matrix
    never exists.
    """
    if geom is None:
        return [(0, src.shape[2], 0, 0)]
    N, (OH, OW) = src.shape[0], geom.out_hw(src.shape)
    L = OH * OW
    nb = max(1, (_chunk_cols(geom.C, K, N * L) if cols is None else cols) // max(L, 1))
    return [(n0 * L, min(N, n0 + nb) * L, n0, min(N, n0 + nb)) for n0 in range(0, N, nb)]


def _block_cols(src: Tensor, geom: _ConvGeom | None, blk: tuple[int, int, int, int],
                buf: Tensor | None, lib=None) -> Tensor:
    """The subvectors [C, v, i1 - i0] of one range of :func:`_column_blocks` (conv: built into ``buf``; by the
    native kernel when ``lib`` is given and src is a contiguous float32 CPU tensor)."""
    i0, i1, n0, n1 = blk
    if geom is None:
        return src[:, :, i0:i1]
    if lib is not None and buf is not None and src.is_contiguous():
        out = buf[:geom.C * geom.v * (i1 - i0)].view(geom.C * geom.v, i1 - i0)
        _native.im2col(lib, src, n0, n1, geom.kernel, geom.stride, geom.padding, out)
        return out.view(geom.C, geom.v, i1 - i0)
    return _im2col_T(src[n0:n1], geom.kernel, geom.stride, geom.padding, C=geom.C, v=geom.v,
                     out=None if buf is None else buf[:geom.C * geom.v * (i1 - i0)])


class _PQLookup(torch.autograd.Function):
    """Straight-through PQ product (LUT-NN): value of the hard assignment, gradient of the soft one.

    forward(src, P [C, K, v], lut [C, K, Cout], temperature (float), soft_forward, geom) -> [M, Cout], where
    src is the subvectors aT [C, v, M] (``geom`` None: PQLinear), or -> [N, Cout, OH, OW] (NCHW, as
    nn.Conv2d returns it) where src is the input x [N, Cin, H, W] of a PQConv2d with patch geometry ``geom``
    (M = N*OH*OW columns in (n, oh, ow) order). The value is
    ``sum_c lut[c, idx[c, m]]`` with idx the nearest prototypes (:func:`_encode_T`: the eval path's
    encoding, so the value is the hard lookup bit for bit). The backward is that of
    ``(hard + soft - soft.detach()) @ lut`` with ``soft = softmax(-||a - P||^2 / T)`` over k:

    * lut:  ``hard^T g`` (a scatter-add of g into the chosen rows);
    * src, P: through the soft assignment (:func:`_soft_backward`; conv: then :func:`_col2im_T`).

    With ``soft_forward`` the value is ``soft @ lut`` itself and the backward that of ``soft @ lut``:
    the same with ``soft`` in place of ``hard`` for the lut.

    Float32 CPU tensors with K <= 64 run the fused native kernel (:mod:`flow.compress._pq_native`,
    ``VQHLS_PQ``; :func:`_encode_native`, :func:`_native_backward`); other dtypes and devices, and
    ``VQHLS_PQ=torch``, the torch formulation below. Both give the same forward bit for bit and the same
    gradients within float rounding (tests/flow/compress/test_pq_train_fused.py).

    A conv's patches are built range by range (:func:`_column_blocks`) in both passes from the saved
    input, and the distances are recomputed block by block in the backward (a cheap GEMM), so neither
    the patch matrix nor any [C, K, M] tensor is kept between the passes and every block stays in cache.
    """

    @staticmethod
    def forward(ctx, src: Tensor, P: Tensor, lut: Tensor, temperature: float, soft_forward: bool = False,
                geom: _ConvGeom | None = None) -> Tensor:
        C, K, _ = P.shape
        Pd, lut_d = P.detach(), lut.detach()
        lib = None if soft_forward else _native.usable(src, Pd, K=K)
        blocks = _column_blocks(src, geom, K, cols=None if lib is None else _native_cols(C, P.shape[2]))
        M = blocks[-1][1]
        conv_native = lib is not None and geom is not None  # one native call: its own per-range buffer
        buf = None if geom is None or conv_native else \
            src.new_empty(C * P.shape[2] * max(b[1] - b[0] for b in blocks))
        if soft_forward:
            out = lut_d.new_empty(M, lut.shape[2])
            for blk in blocks:
                out[blk[0]:blk[1]] = _soft_sum(_block_cols(src, geom, blk, buf), Pd, lut_d, temperature=temperature)
            idx = None
        else:
            idx = torch.empty(C, M, dtype=torch.int64, device=src.device) if lib is None else \
                _spread_rows(C, M, src, torch.int64)
            if conv_native:  # patches and encoder range by range in one native call (answers as _encode_native)
                _native.conv_encode(lib, _native.Tables(Pd), src.detach().contiguous(), geom.kernel, geom.stride,
                                    geom.padding, blocks[0][3] - blocks[0][2], idx, _encode_rel2(P.shape[2]))
            elif lib is not None:  # the fused kernel: the same answer as _encode_T (see _encode_native)
                tab = _native.Tables(Pd)
                for blk in blocks:
                    _encode_native(lib, tab, _block_cols(src, geom, blk, buf, lib), idx[:, blk[0]:blk[1]])
            else:
                scratch = _Scratch(src, 2, C * K * _chunk_cols(C, K, M))
                for blk in blocks:
                    idx[:, blk[0]:blk[1]] = _encode_T(_block_cols(src, geom, blk, buf).detach(), Pd, scratch=scratch)
            lib_out = None if geom is None else _native.usable(lut_d, K=None)
            # a conv's output straight into NCHW by the native gather-sum (the same sums; no transposing copy)
            out = _lut_sum(lut_d, idx) if lib_out is None else \
                _native.lut_sum(lib_out, lut_d, idx, per_image=M // src.shape[0])
        if geom is not None:
            N, (OH, OW) = src.shape[0], geom.out_hw(src.shape)
            if out.dim() == 2:
                out = out.view(N, OH * OW, -1).transpose(1, 2).contiguous()
            out = out.view(N, -1, OH, OW)
        ctx.save_for_backward(src, P, lut)
        ctx.idx, ctx.geom = idx, geom
        ctx.temperature, ctx.soft_forward = float(temperature), bool(soft_forward)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        src, P, lut = ctx.saved_tensors
        geom = ctx.geom
        need_src, need_p, need_lut = ctx.needs_input_grad[:3]
        C, K, v = P.shape
        g = g.contiguous()  # [M, Cout], or a conv's [N, Cout, OH, OW]
        grad_src = grad_p = grad_lut = None
        soft_lut = need_lut and ctx.soft_forward  # d/dlut of soft @ lut: accumulated block by block
        hard_idx = ctx.idx if need_lut and not soft_lut else None  # d/dlut of the hard lookup: hard^T g
        if need_src or need_p or soft_lut:
            src_d, Pd, lut_d = src.detach(), P.detach(), lut.detach()
            lib = _native.usable(src_d, Pd, lut_d, K=K)
            if lib is not None:  # the fused kernel (_native_backward); else the torch formulation below
                gs, gp, gl = _native_backward(lib, src_d, Pd, lut_d, g, geom, ctx.temperature, need_src, need_p,
                                              soft_lut, hard_idx)
                return gs, gp, gl, None, None, None
        g = _grad_rows(g)  # the torch formulation (and the hard LUT gradient alone) take rows [M, Cout]
        if hard_idx is not None:
            lib = _native.usable(g, K=K)
            grad_lut = _hard_lut_grad(hard_idx, g, K) if lib is None else _native.hard_lut_grad(lib, hard_idx, g, K)
        elif need_lut:
            grad_lut = torch.zeros_like(lut)
        if need_src or need_p or soft_lut:
            src_d, Pd, lut_d = src.detach(), P.detach(), lut.detach()
            blocks = _column_blocks(src_d, geom, K)
            buf = None if geom is None else src_d.new_empty(C * v * max(b[1] - b[0] for b in blocks))
            if need_src and geom is not None:
                grad_src = torch.empty_like(src_d)
            scratch = _Scratch(src_d, 3, C * K * _chunk_cols(C, K, blocks[-1][1]))
            for blk in blocks:
                i0, i1, n0, n1 = blk
                ga, gp = _soft_backward(_block_cols(src_d, geom, blk, buf), Pd, lut_d, g[i0:i1], ctx.temperature,
                                        need_a=need_src, need_p=need_p, grad_lut=grad_lut if soft_lut else None,
                                        scratch=scratch)
                if need_p:
                    grad_p = gp if grad_p is None else grad_p.add_(gp)
                if need_src:
                    if geom is None:
                        grad_src = ga
                    else:
                        _col2im_T(ga, (n1 - n0, *src_d.shape[1:]), geom.kernel, geom.stride, geom.padding,
                                  out=grad_src[n0:n1])
        return grad_src, grad_p, grad_lut, None, None, None


def _grad_rows(g: Tensor) -> Tensor:
    """The output gradient as rows [M, Cout]: a conv's [N, Cout, OH, OW] in (n, oh, ow) order (a copy); rows as is."""
    return g if g.dim() == 2 else g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])


def _encode_native(lib, tab: "_native.Tables", ab: Tensor, out: Tensor) -> None:
    """:func:`_encode_T` by the fused kernel: nearest prototypes of ab [C, v, m] into out [C, m] (a view).

    The kernel computes the expanded scores and the same ambiguity test as :func:`_encode_block`
    (two or more scores within ``min + 2 tol``) and re-encodes those columns itself with the direct
    formula in :func:`_scan_nearest`'s order. Every other column's single hit is the direct strict-less
    scan's answer, so the result equals :func:`_encode_T`'s bit for bit. The prototypes are ``tab``'s.
    """
    _native.encode(lib, tab, ab.contiguous(), out, _encode_rel2(ab.shape[1]))


def _encode_rel2(v: int) -> float:
    """The native encoder's ambiguity bound for float32 subvectors of v elements: 2x :func:`_encode_block`'s."""
    return 2 * (8 * v + 16) * torch.finfo(torch.float32).eps


def _spread_rows(rows: int, cols: int, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised [rows, cols] view (on ``like``'s device, in ``dtype``, default ``like``'s) whose row stride
    is a whole number of 64-byte lines, an odd one: the kernels read one tile from each of many rows at once, and
    rows a multiple of 4 KiB apart (ResNet20's first stage: 64 x 784 floats) fall into one L1 set and evict each
    other."""
    dtype = like.dtype if dtype is None else dtype
    per_line = 64 // dtype.itemsize
    lines = -(-cols // per_line)
    lines += 1 - lines % 2
    return like.new_empty(rows, lines * per_line, dtype=dtype)[:, :cols]


def _native_backward(lib, src: Tensor, P: Tensor, lut: Tensor, g: Tensor, geom: "_ConvGeom | None",
                     temperature: float, need_src: bool, need_p: bool, soft_lut: bool,
                     hard_idx: Tensor | None = None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """:class:`_PQLookup`'s soft-assignment backward by the fused kernels: ``(dL/dsrc, dL/dP, dL/dlut)``.

    The same gradients as :func:`_soft_backward` (+ :func:`_col2im_T`), range of columns by range (a conv's
    patches built by the native im2col, its dL/da added into dL/dx by the native col2im range by range).
    Straight-through (``soft_lut`` False): ``pq_soft_grad_cols`` computes per tile of columns the scores,
    the flushed ``exp2`` softmax, ``gs = lut . g``, ``gz``, its column sum and dL/da = ``(2/T) P^T gz``;
    ``sum_m a_m gz_m^T`` for dL/dP is ``pq_outer_acc``. Soft forward: ``pq_soft_grad`` (prototypes in the
    lanes) also accumulates dL/dlut = ``soft^T g``; dL/da and dL/dP are batched GEMMs.
    src [C, v, M] (``geom`` None) or a conv input [N, Cin, H, W]; g [M, Cout] (``geom`` None) or the conv's
    [N, Cout, OH, OW], contiguous; P [C, K, v];
    lut [C, K, Cout]; dL/dlut is ``soft^T g`` with ``soft_lut``, ``hard^T g`` given the forward's encoding
    ``hard_idx`` [C, M] (a conv's in the same native call, range by range), else None.
    """
    C, K, v = P.shape
    tab = _native.Tables(P, lut)
    kp, cout = tab.kp, tab.cout
    scale = 2.0 / temperature
    need_gz = need_src or need_p
    conv_ste = geom is not None and need_gz and not soft_lut  # one native call, its buffers its own
    if geom is None:
        M = src.shape[2]
        step = max(1, min(M, _native_cols(C, v)))
        blocks = [(i, min(M, i + step), 0, 0) for i in range(0, M, step)]
        buf = None
    else:
        src = src.contiguous()
        blocks = _column_blocks(src, geom, K, cols=_native_cols(C, v))
        buf = None if conv_ste else src.new_empty(C * v * max(b[1] - b[0] for b in blocks))
    width = max(b[1] - b[0] for b in blocks)
    M = blocks[-1][1]
    # dL/da: a linear layer's straight into dL/dsrc [C, v, M]; otherwise block by block into one reused buffer,
    # a conv's then added into dL/dx [N, Cin, H, W] by the native col2im (kernel offsets in order, as _col2im_T)
    grad_src = None
    if need_src:
        grad_src = src.new_empty(C, v, M) if geom is None else torch.zeros_like(src)
    gab = None if (need_src and geom is None) or conv_ste else src.new_empty(C * v * width)

    def ga_block(i0: int, i1: int) -> Tensor:
        """Where block [i0, i1)'s dL/da goes: [C, v, i1 - i0] (rows contiguous)."""
        if gab is None:
            return grad_src[:, :, i0:i1]
        return gab[:C * v * (i1 - i0)].view(C, v, i1 - i0)

    def to_src(ga: Tensor, blk: tuple[int, int, int, int]) -> None:
        if need_src and geom is not None:
            _native.col2im(lib, ga.view(C * v, -1), blk[2], blk[3], geom.kernel, geom.stride, geom.padding,
                           grad_src)

    if need_gz and not soft_lut:  # straight-through: the column-lane kernel writes dL/da itself
        gT = _spread_rows(cout, M, g)  # [Cout, M]: from NCHW, one contiguous run per (image, output)
        if g.dim() == 4:
            gT.unflatten(1, (g.shape[0], -1)).copy_(g.flatten(2).transpose(0, 1))
        else:
            gT.copy_(g.t())
        ps = (P.transpose(1, 2) * scale).contiguous()  # (2/T) P^T [C, v, K]
        if conv_ste:  # a conv: patches, kernels and col2im range by range in one native call
            gzsum, gpT, grad_lut = _native.conv_backward(lib, tab, src, geom.kernel, geom.stride, geom.padding,
                                                         blocks[0][3] - blocks[0][2], gT, _LOG2E / temperature, ps,
                                                         grad_src, need_p, hard_idx)
        else:
            gzsum = src.new_zeros(C, K)
            gzb = src.new_empty(C * K * width) if need_p else None
            gpT = src.new_zeros(C, v, K) if need_p else None  # sum_m a_m gz_m^T
            for blk in blocks:
                i0, i1 = blk[0], blk[1]
                ab = src[:, :, i0:i1].contiguous()  # a linear layer's subvectors
                gz = gzb[:C * K * (i1 - i0)].view(C, K, i1 - i0) if need_p else None
                _native.soft_grad_cols(lib, tab, ab, gT[:, i0:], _LOG2E / temperature, ps, ga_block(i0, i1), gz,
                                       gzsum)
                if need_p:
                    _native.outer_acc(lib, ab, gz, gpT)
            grad_lut = None if hard_idx is None else _native.hard_lut_grad(lib, hard_idx, g, K)
    else:  # soft forward: the prototype-lane kernel also accumulates dL/dlut
        g = _grad_rows(g)
        gzbuf = src.new_empty(C * width * kp) if need_gz else None
        gpT = src.new_zeros(C, v, kp) if need_p else None
        gzsum = src.new_zeros(C, kp)
        glT = src.new_zeros(C, cout, kp)
        Ps = tab.pt2 * (-scale / 2) if need_src else None  # (2/T) P^T [C, v, kp], padding 0
        for blk in blocks:
            i0, i1 = blk[0], blk[1]
            ab = _block_cols(src, geom, blk, buf, lib).contiguous()
            gz = gzbuf[:C * (i1 - i0) * kp].view(C, i1 - i0, kp) if need_gz else None
            _native.soft_grad(lib, tab, ab, g[i0:i1], _LOG2E / temperature, gz, gzsum, glT)
            if need_p:
                gpT.baddbmm_(ab, gz)
            if need_src:
                ga = ga_block(i0, i1)
                torch.bmm(Ps, gz.transpose(1, 2), out=ga)
                to_src(ga, blk)
        gpT, gzsum = (None if gpT is None else gpT[:, :, :K]), gzsum[:, :K]
        grad_lut = glT[:, :, :K].transpose(1, 2).contiguous()
    grad_p = (gpT.transpose(1, 2) - P * gzsum[..., None]).mul_(scale) if need_p else None
    return grad_src, grad_p, grad_lut


def _im2col_T(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
              C: int, v: int, out: Tensor | None = None) -> Tensor:
    """Subvectors of x [N, Cin, H, W], subspace-major: [C, v, N*OH*OW], patch order (kh, kw, cin).

    ``out``: a contiguous buffer of ``C*v*N*OH*OW`` elements to write them into (a view of it is returned).
    """
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    N, Cin = x.shape[:2]
    OH, OW = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
    xt = (F.pad(x, (pw, pw, ph, ph)) if ph or pw else x).transpose(0, 1)  # [Cin, N, Hp, Wp] (a view)
    # One strided slice per kernel offset, stacked: [kh*kw, Cin, N, OH, OW], i.e. rows in
    # (kh, kw, cin) patch order and columns in (n, oh, ow) order, written once.
    taps = [xt[:, :, i:i + sh * (OH - 1) + 1:sh, j:j + sw * (OW - 1) + 1:sw] for i in range(kh) for j in range(kw)]
    if out is None:
        return torch.stack(taps).reshape(C, v, N * OH * OW)
    return torch.stack(taps, out=out.view(kh * kw, Cin, N, OH, OW)).view(C, v, N * OH * OW)


def _col2im_T(g: Tensor, x_shape: tuple[int, ...], kernel: tuple[int, int], stride: tuple[int, int],
              padding: tuple[int, int], out: Tensor | None = None) -> Tensor:
    """The adjoint of :func:`_im2col_T`: g [C, v, N*OH*OW] -> dL/dx [N, Cin, H, W] (into ``out`` when given).

    Each kernel offset's slice of g is added into one zero-padded buffer (autograd's own backward
    of the stacked slices builds a full-size zero tensor per offset, about 2.5x slower). The buffer is
    laid out [Cin, N, Hp, Wp] like g's rows (each offset's slice is then contiguous in (cin, n), 1.6-2x
    faster than adding into NCHW) and transposed once at the end.
    """
    (N, Cin, H, W), (kh, kw), (sh, sw), (ph, pw) = x_shape, kernel, stride, padding
    OH, OW = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    gx = g.new_zeros(Cin, N, H + 2 * ph, W + 2 * pw)
    gt = g.reshape(kh * kw, Cin, N, OH, OW)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        gx[:, :, i:i + sh * (OH - 1) + 1:sh, j:j + sw * (OW - 1) + 1:sw] += gt[t]
    gx = gx[:, :, ph:ph + H, pw:pw + W].transpose(0, 1)
    return gx.contiguous() if out is None else out.copy_(gx)


class _Im2colT(torch.autograd.Function):
    """:func:`_im2col_T` with a direct backward: each kernel offset's gradient slice added into one
    zero-padded buffer (autograd's own backward of the stacked slices builds a full-size zero
    tensor per offset, about 2.5x slower in training)."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel, stride, padding, C: int, v: int) -> Tensor:
        ctx.geom = (tuple(x.shape), kernel, stride, padding)
        return _im2col_T(x, kernel, stride, padding=padding, C=C, v=v)

    @staticmethod
    def backward(ctx, g: Tensor):
        x_shape, kernel, stride, padding = ctx.geom
        return _col2im_T(g, x_shape, kernel, stride, padding), None, None, None, None, None


@torch.no_grad()
def kmeans_subspaces(x: Tensor, K: int, iters: int = 20, seed: int = 0) -> Tensor:
    """Plain k-means in every subspace: x [C, n, v] -> prototypes [C, K, v] in ``x``'s dtype.

    One :func:`flow.compress.kmeans.masked_kmeans` run (mask None: plain k-means,
    k-means++ seeding, ties to the lowest index, empty clusters re-seeded) per
    subspace, all with ``seed``, so the result is deterministic.

    Raises:
        CodebookSizeError: ``K > n`` (fewer calibration subvectors than prototypes).
    """
    C, n, v = x.shape
    if K > n:
        raise CodebookSizeError(
            f"only {n} calibration subvectors per subspace for K={K} prototypes: pass more calibration "
            f"inputs (calib_x) or lower K"
        )
    return torch.stack([masked_kmeans(x[c], None, K, iters=iters, seed=seed).codebook for c in range(C)]).to(x)


class _PQBase(nn.Module):
    """State and math shared by :class:`PQConv2d` and :class:`PQLinear`.

    Subclasses provide ``weight_matrix() -> [Cout, D]`` (subvector order) and ``forward``.
    """

    prototypes: nn.Parameter
    weight: nn.Parameter
    bias: nn.Parameter | None
    temperature: Tensor
    lut_scale: Tensor | None

    def _init_pq(self, D: int, out: int, v: int, K: int, bias: bool, lut_bits: int, proto_bits: int) -> None:
        self.num_subspaces = _check_pq(D, v, K, where=type(self).__name__)
        self.v, self.K, self.D = v, K, D
        if lut_bits not in LUT_BITS:
            raise BitWidthError(f"lut_bits={lut_bits!r} is unsupported; the LUT memory holds {LUT_BITS} bit entries")
        self.lut_bits = int(lut_bits)
        if isinstance(proto_bits, bool) or not isinstance(proto_bits, int) or not 2 <= proto_bits <= 16:
            raise BitWidthError(f"proto_bits={proto_bits!r} is invalid; prototypes share the activation format, "
                                f"use 8 (int8/uint8)")
        self.proto_bits = proto_bits
        self.prototypes = nn.Parameter(torch.zeros(self.num_subspaces, K, v))
        self.bias = nn.Parameter(torch.zeros(out)) if bias else None
        self.register_buffer("temperature", torch.tensor(1.0))
        self.soft_forward = False  # training forward: hard lookup (False) or soft assignment; set_assignment()
        # None until quantize_lut_(): the forward uses the float LUT until then.
        self.register_buffer("lut_scale", None)

    # --- LUT -------------------------------------------------------------------------
    def weight_blocks(self) -> Tensor:
        """Weight blocks ``W_c`` as [C, Cout, v] (subvector order, see module docstring)."""
        Wm = self.weight_matrix()  # type: ignore[attr-defined]
        return Wm.reshape(Wm.shape[0], self.num_subspaces, self.v).transpose(0, 1)

    def lut(self) -> Tensor:
        """Float LUT [C, K, Cout]: ``LUT[c, k, o] = P[c, k] . W_c[o]`` (differentiable)."""
        return torch.einsum("ckv,cov->cko", self.prototypes, self.weight_blocks())

    def _qmax(self) -> int:
        return (1 << (self.lut_bits - 1)) - 1

    @torch.no_grad()
    def quantize_lut_(self, bits: int = 8) -> "_PQBase":
        """Fix the LUT format: symmetric per-layer ``bits``-bit (8 or 16), scale = max|LUT| / (2^(b-1)-1).

        Sets ``lut_bits`` and the 0-dim buffer ``lut_scale``; from then on the forward uses
        the quantized LUT (straight-through in training). Call again after further
        training to refit the scale (:func:`flow.compress.finetune.pq_finetune` does). Returns ``self``.
        """
        if bits not in LUT_BITS:
            raise BitWidthError(f"LUT bits={bits!r} is unsupported; use one of {LUT_BITS}")
        self.lut_bits = int(bits)
        amax = float(self.lut().abs().max())
        scale = amax / self._qmax() if amax > 0 else 1.0  # an all-zero LUT: any scale is exact
        self.lut_scale = torch.tensor(scale, dtype=self.prototypes.dtype, device=self.prototypes.device)
        return self

    @torch.no_grad()
    def int_lut(self) -> tuple[np.ndarray, float]:
        """``(codes, scale)``: the quantized LUT [C, K, Cout] in ±(2^(b-1)-1) and its float scale.

        ``codes`` is int8 for ``lut_bits`` 8, int16 for 16; ``codes * lut_scale`` (in the layer's
        dtype) is exactly the LUT the forward uses. Raises ValueError unless
        :meth:`quantize_lut_` was called.
        """
        if self.lut_scale is None:
            raise ValueError("the LUT is not quantized yet; call quantize_lut_(bits) first")
        q = torch.clamp(torch.round(self.lut() / self.lut_scale), -self._qmax(), self._qmax())
        dtype = np.int8 if self.lut_bits == 8 else np.int16
        return q.cpu().numpy().astype(dtype), float(self.lut_scale)

    def effective_lut(self) -> Tensor:
        """The LUT the forward uses [C, K, Cout]: float, or fake-quantized once ``lut_scale`` is set.

        Fake quantization is straight-through, so training still reaches P and W.
        """
        lut = self.lut()
        if self.lut_scale is None:
            return lut
        s = self.lut_scale.to(lut.dtype)
        q = torch.clamp(torch.round(lut / s), -self._qmax(), self._qmax()) * s
        # Value exactly q (lut - lut.detach() is exactly 0; "lut + (q - lut).detach()" can be an
        # ulp off), gradient the identity.
        return q.detach() + (lut - lut.detach())

    # --- encoding and the product ------------------------------------------------------
    def set_temperature(self, t: float) -> None:
        """Set the softmax temperature ``T`` > 0 of the soft (backward-only) assignment."""
        if not t > 0 or not math.isfinite(t):
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        self.temperature.fill_(float(t))

    def set_assignment(self, mode: str) -> None:
        """Training forward: ``"ste"`` (default; LUT-NN) = the hard lookup, soft-assignment gradient;
        ``"soft"`` = the soft assignment ``sum_c softmax(-dist/T)_c @ LUT_c`` forward and backward.

        Evaluation (eval mode or no grad) is the hard lookup in both modes.
        """
        if mode not in ("ste", "soft"):
            raise ValueError(f"assignment mode {mode!r}: use 'ste' (hard forward, soft gradient) or 'soft'")
        self.soft_forward = mode == "soft"

    @torch.no_grad()
    def distance_stats(self, aT: Tensor) -> tuple[float, int]:
        """``(sum, count)`` of the squared distance of each subvector of aT [C, v, M] to its nearest prototype."""
        P = self.prototypes.detach().to(aT.dtype)
        idx = _encode_T(aT, P)  # [C, M]
        near = torch.gather(P, 1, idx[:, :, None].expand(-1, -1, self.v))  # [C, M, v]
        return float(((aT.transpose(1, 2) - near) ** 2).sum()), int(idx.numel())

    @torch.no_grad()
    def encode(self, a_sub: Tensor) -> Tensor:
        """Nearest prototype of each subvector: a_sub [..., C, v] -> int64 [..., C], ties to the lowest index."""
        return nearest_prototype(a_sub, self.prototypes.detach())

    def _pq_product(self, aT: Tensor) -> Tensor:
        """aT: subvectors, subspace-major [C, v, M] -> [M, Cout] = sum_c LUT[c, idx_c] (+ bias).

        Training (with grad): value of the hard one-hot assignment, gradient of the soft
        one (straight-through, LUT-NN; see :class:`_PQLookup`). Otherwise a pure
        gather-and-sum: the LUT computation the engine does.
        """
        if self.training and torch.is_grad_enabled():
            return self._pq_train(aT, None)
        out = _lut_sum(self.effective_lut(), _encode_T(aT.detach(), self.prototypes.detach()))
        return out if self.bias is None else out + self.bias

    def _pq_train(self, src: Tensor, geom: _ConvGeom | None) -> Tensor:
        """The training product (:class:`_PQLookup`): src = aT [C, v, M] (geom None) -> [M, Cout], or a conv's
        input x [N, Cin, H, W] with its patch geometry -> [N, Cout, OH, OW] (+ bias)."""
        soft = getattr(self, "soft_forward", False)
        out = _PQLookup.apply(src, self.prototypes.to(src.dtype), self.effective_lut(), float(self.temperature),
                              soft, geom)
        if self.bias is None:
            return out
        return out + (self.bias if geom is None else self.bias[:, None, None])

    # --- accounting ----------------------------------------------------------------------
    def stored_bits(self) -> dict[str, int]:
        """Every stored bit: prototypes (``proto_bits``), LUT (``lut_bits``), LUT scale, int32 bias."""
        C, K, v = self.num_subspaces, self.K, self.v
        cout = self.weight.shape[0]
        return {
            "prototypes": C * K * v * self.proto_bits,
            "lut": C * K * cout * self.lut_bits,
            "lut_scale": 32,
            "bias": 0 if self.bias is None else cout * 32,
        }

    def float_bits(self) -> int:
        """Bits of the float32 source layer (weight + bias)."""
        return 32 * (self.weight.numel() + (0 if self.bias is None else self.bias.numel()))

    # lut_bits is a plain attribute; keep it (and a None/non-None lut_scale) across state_dict round trips.
    def get_extra_state(self) -> dict:
        return {"lut_bits": self.lut_bits}

    def set_extra_state(self, state: dict) -> None:
        self.lut_bits = int(state["lut_bits"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "lut_scale"
        if key in state_dict and self.lut_scale is None:
            self.lut_scale = torch.zeros((), dtype=self.prototypes.dtype, device=self.prototypes.device)
        elif key not in state_dict and self.lut_scale is not None:
            self.lut_scale = None
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class PQConv2d(_PQBase):
    """Conv2d whose input patches are product-quantized: [N, Cin, H, W] -> [N, Cout, OH, OW].

    Attributes: ``in_channels``, ``out_channels``, ``kernel_size``/``stride``/``padding``
    (tuples), ``v``, ``K``, ``num_subspaces`` (C = Cin*kh*kw / v), ``prototypes`` [C, K, v],
    ``weight`` [Cout, Cin, kh, kw] (float, for the LUT), ``bias`` [Cout] or None,
    ``temperature`` (0-dim buffer), ``lut_bits``, ``lut_scale`` (0-dim buffer or None).
    Patch order: (kh, kw, cin), see the module docstring.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, bias: bool = True,
                 v: int = 9, K: int = 16, lut_bits: int = 8, proto_bits: int = 8):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.dilation, self.groups = (1, 1), 1
        kh, kw = self.kernel_size
        self._init_pq(self.in_channels * kh * kw, self.out_channels, v, K=K, bias=bias, lut_bits=lut_bits,
                      proto_bits=proto_bits)
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, kh, kw))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, v: int = 9, K: int = 16, calib_x: Tensor | None = None,
                  iters: int = 20, seed: int = 0, max_samples: int = 8192) -> "PQConv2d":
        """Build from a trained Conv2d; prototypes = per-subspace k-means of ``calib_x``'s patches.

        Args:
            conv: plain Conv2d (groups 1, dilation 1, zero padding).
            calib_x: this layer's *input* activations [N, Cin, H, W] (required).
            iters, seed: k-means iterations and seed.
            max_samples: patches per subspace used for k-means (a seeded random subset
                when there are more) — k-means cost grows with it, quality saturates.
        """
        check_plain_conv(conv, "PQConv2d.from_conv")
        if calib_x is None:
            raise ShapeMismatchError("PQConv2d.from_conv needs calib_x: this layer's input activations "
                                     "[N, Cin, H, W] (capture them with a forward hook, or use compress(model, method='pq', data=...))")
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv_padding(conv),
                bias=conv.bias is not None, v=v, K=K)
        m = m.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(conv.weight)
            if conv.bias is not None:
                m.bias.copy_(conv.bias)
        a = m.subvectors(calib_x.detach().to(m.weight.dtype)).reshape(-1, m.num_subspaces, m.v)
        _init_prototypes(m, a, iters, seed=seed, max_samples=max_samples)
        return m

    def weight_matrix(self) -> Tensor:
        """Weight as [Cout, D] with D in (kh, kw, cin) order."""
        return self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1)

    def output_size(self, H: int, W: int) -> tuple[int, int]:
        """(OH, OW) for an H x W input."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1

    def subvectors(self, x: Tensor) -> Tensor:
        """im2col in channels-last order: x [N, Cin, H, W] -> [N, OH*OW, C, v]."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeMismatchError(f"PQConv2d expects input [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        kh, kw = self.kernel_size
        # F.unfold rows are ordered (cin, kh, kw): [N, Cin*kh*kw, L]; reorder to (kh, kw, cin).
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        N, _, L = cols.shape
        cols = cols.reshape(N, self.in_channels, kh * kw, L).permute(0, 3, 2, 1)  # [N, L, kh*kw, Cin]
        return cols.reshape(N, L, self.num_subspaces, self.v)

    def _subvectors_T(self, x: Tensor) -> Tensor:
        """The same subvectors subspace-major: x [N, Cin, H, W] -> [C, v, N*OH*OW] (one copy)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ShapeMismatchError(f"PQConv2d expects input [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        geom = (self.kernel_size, self.stride, self.padding, self.num_subspaces, self.v)
        if x.requires_grad and torch.is_grad_enabled():
            return _Im2colT.apply(x, *geom)
        return _im2col_T(x, *geom)

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x[None]
        N = x.shape[0]
        OH, OW = self.output_size(x.shape[2], x.shape[3])
        if self.training and torch.is_grad_enabled():  # patches built block by block inside (_PQLookup)
            if x.shape[1] != self.in_channels:
                raise ShapeMismatchError(f"PQConv2d expects input [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
            y = self._pq_train(x, _ConvGeom(self.kernel_size, self.stride, self.padding, self.num_subspaces, self.v))
            return y[0] if unbatched else y  # NCHW already
        else:  # the pure lookup path: a few images at a time (see _PATCH_CHUNK)
            nb = max(1, _PATCH_CHUNK // max(1, self.D * OH * OW))
            y = torch.cat([self._pq_product(self._subvectors_T(x[i:i + nb])) for i in range(0, N, nb)]) if N > nb \
                else self._pq_product(self._subvectors_T(x))
        # contiguous NCHW, as nn.Conv2d returns it: a model that flattens with view() must still run
        y = y.reshape(N, OH, OW, self.out_channels).permute(0, 3, 1, 2).contiguous()
        return y[0] if unbatched else y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, v={self.v}, K={self.K}, num_subspaces={self.num_subspaces}, "
                f"lut_bits={self.lut_bits}")


class PQLinear(_PQBase):
    """Linear whose input is product-quantized: [..., in_features] -> [..., out_features].

    Attributes as :class:`PQConv2d` with ``in_features``/``out_features``; subvector c is
    ``x[..., c*v:(c+1)*v]``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, v: int = 9, K: int = 16,
                 lut_bits: int = 8, proto_bits: int = 8):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_pq(self.in_features, self.out_features, v, K=K, bias=bias, lut_bits=lut_bits, proto_bits=proto_bits)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, lin: nn.Linear, v: int = 9, K: int = 16, calib_x: Tensor | None = None,
                    iters: int = 20, seed: int = 0, max_samples: int = 8192) -> "PQLinear":
        """Build from a trained Linear; ``calib_x`` = this layer's inputs [..., in_features] (required)."""
        if not isinstance(lin, nn.Linear):
            raise UnsupportedLayerError(f"PQLinear.from_linear needs an nn.Linear, got {type(lin).__name__}")
        if calib_x is None:
            raise ShapeMismatchError("PQLinear.from_linear needs calib_x: this layer's inputs [..., in_features] "
                                     "(capture them with a forward hook, or use compress(model, method='pq', data=...))")
        m = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, v=v, K=K)
        m = m.to(device=lin.weight.device, dtype=lin.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(lin.weight)
            if lin.bias is not None:
                m.bias.copy_(lin.bias)
        _init_prototypes(m, m.subvectors(calib_x.detach().to(m.weight.dtype)).reshape(-1, m.num_subspaces, m.v),
                         iters, seed=seed, max_samples=max_samples)
        return m

    def weight_matrix(self) -> Tensor:
        """Weight as [Cout, D] (already in subvector order)."""
        return self.weight

    def subvectors(self, x: Tensor) -> Tensor:
        """x [..., in_features] -> [..., C, v]."""
        if x.shape[-1] != self.in_features:
            raise ShapeMismatchError(f"PQLinear expects input [..., {self.in_features}], got {tuple(x.shape)}")
        return x.reshape(*x.shape[:-1], self.num_subspaces, self.v)

    def forward(self, x: Tensor) -> Tensor:
        a = self.subvectors(x)
        y = self._pq_product(a.reshape(-1, self.num_subspaces, self.v).permute(1, 2, 0).contiguous())
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, v={self.v}, K={self.K}, "
                f"num_subspaces={self.num_subspaces}, lut_bits={self.lut_bits}")


@torch.no_grad()
def _init_prototypes(m: _PQBase, a: Tensor, iters: int, seed: int, max_samples: int) -> None:
    """k-means prototypes from calibration subvectors a [n, C, v] (subsampled to max_samples)."""
    n = a.shape[0]
    if n == 0:
        raise ShapeMismatchError("calib_x gives no subvectors; pass at least one calibration input")
    if n > max_samples:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples].to(a.device)
        a = a[keep]
    m.prototypes.copy_(kmeans_subspaces(a.transpose(0, 1).contiguous(), m.K, iters, seed=seed))


# ----------------------------------------------------------------------------- model level


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def pq_layers(model: nn.Module) -> list[_PQBase]:
    """The PQ layers of ``model`` in module order."""
    return [m for m in model.modules() if isinstance(m, _PQBase)]


class _Captured(Exception):
    """Raised by the calibration hook to stop the forward pass once the layer's input is seen."""


def _layer_inputs(model: nn.Module, layer: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """The input ``layer`` receives when ``model`` runs on x (no grad, batched); stops each pass there."""
    inputs: list[Tensor] = []

    def grab(mod: nn.Module, args: tuple) -> None:
        inputs.append(args[0].detach())
        raise _Captured  # nothing downstream of this layer is needed

    hook = layer.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            for j in range(0, len(x), batch_size):
                try:
                    model(x[j:j + batch_size])
                except _Captured:
                    pass
    finally:
        hook.remove()
    if not inputs:
        raise UnsupportedLayerError("PQ calibration: a layer was never called in the forward pass; "
                                    "only layers the model uses can be calibrated")
    return torch.cat(inputs)


def temperature_at(step: int, total: int, t_start: float, t_end: float) -> float:
    """The geometric schedule: ``t_start`` at step 0, ``t_end`` at step ``total - 1`` (and after)."""
    if total <= 1:
        return float(t_end)
    return float(t_start * (t_end / t_start) ** (min(step, total - 1) / (total - 1)))


@torch.no_grad()
def pq_distance_scales(model: nn.Module, x: Tensor, batch_size: int = 128) -> dict[str, float]:
    """Per PQ layer: the mean squared distance of its input subvectors to their nearest prototype.

    The layer's own quantization error per subvector, on ``model``'s inputs x [N, ...] (eval
    mode, the model as it is). :func:`flow.compress.finetune.pq_finetune` measures the
    temperature in these units, so one schedule fits layers whose activations differ in scale.
    A layer with zero error (its data are prototypes) gets 1.0.
    """
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, _PQBase)]
    if not named:
        raise UnsupportedLayerError("pq_distance_scales: the model has no PQConv2d/PQLinear")
    acc = {n: [0.0, 0] for n, _ in named}

    def hook(name):
        def grab(mod: _PQBase, args: tuple) -> None:
            xin = args[0].detach()
            aT = mod._subvectors_T(xin) if isinstance(mod, PQConv2d) else \
                mod.subvectors(xin).reshape(-1, mod.num_subspaces, mod.v).permute(1, 2, 0).contiguous()
            s, n = mod.distance_stats(aT)
            acc[name][0] += s
            acc[name][1] += n
        return grab

    hooks = [m.register_forward_pre_hook(hook(n)) for n, m in named]
    was = model.training
    model.eval()
    try:
        x = torch.as_tensor(x).float()
        device = next(model.parameters()).device
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    out = {}
    for n, (s, cnt) in acc.items():
        mean = s / max(cnt, 1)
        out[n] = mean if mean > 0 and math.isfinite(mean) else 1.0
    return out
