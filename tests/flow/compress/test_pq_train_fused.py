"""The PQ training product (flow.compress.pq._PQLookup) against a brute-force per-subspace formulation.

The reference is written out here with autograd: patches by F.unfold reordered to (kh, kw, cin), per
subspace the direct squared distances, the first argmin (ties to the lowest index), the softmax and
``(hard + soft - soft.detach()) @ LUT_c`` (straight-through) or ``soft @ LUT_c`` (soft forward).
The fused code builds patches block by block, computes the distances as a GEMM expansion, the softmax
through exp2 with underflow flushed, and writes its own backward; values and gradients must agree
within float tolerance, and the straight-through forward must equal the eval (hard lookup) forward
bit for bit, since that is what the integer golden model reproduces.
"""
from __future__ import annotations

import copy
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flow.compress import pq as pqm
from flow.compress.pq import PQConv2d, PQLinear


def ref_patches(x: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """[N, Cin, H, W] -> [N*L, D], D in (kh, kw, cin) order, by F.unfold and an explicit index."""
    N, Cin = x.shape[:2]
    kh, kw = kernel
    cols = F.unfold(x, kernel, padding=padding, stride=stride)  # [N, Cin*kh*kw, L], rows (cin, kh, kw)
    order = [ci * kh * kw + i * kw + j for i in range(kh) for j in range(kw) for ci in range(Cin)]
    return cols[:, order, :].transpose(1, 2).reshape(-1, len(order))


def ref_product(a: torch.Tensor, P: torch.Tensor, lut: torch.Tensor, T: float, soft_forward: bool) -> torch.Tensor:
    """a [M, C*v], P [C, K, v], lut [C, K, Cout] -> [M, Cout], one subspace at a time."""
    C, K, v = P.shape
    out = 0
    for c in range(C):
        ac = a[:, c * v:(c + 1) * v]
        d = ((ac[:, None, :] - P[c][None]) ** 2).sum(-1)  # [M, K], direct
        soft = torch.softmax(-d / T, 1)
        if soft_forward:
            w = soft
        else:
            hard = F.one_hot(d.detach().argmin(1), K).to(a.dtype)  # argmin: the first minimum
            w = hard + soft - soft.detach()
        out = out + w @ lut[c]
    return out


def ref_conv(layer: PQConv2d, x: torch.Tensor, P, W, b, T: float, soft_forward: bool) -> torch.Tensor:
    N = x.shape[0]
    a = ref_patches(x, layer.kernel_size, layer.stride, layer.padding)
    Wm = W.permute(0, 2, 3, 1).reshape(W.shape[0], layer.num_subspaces, layer.v)
    lut = torch.einsum("ckv,ocv->cko", P, Wm)
    y = ref_product(a, P, lut, T, soft_forward) + b
    OH, OW = layer.output_size(x.shape[2], x.shape[3])
    return y.reshape(N, OH, OW, -1).permute(0, 3, 1, 2)


def planted_ties(layer, x: torch.Tensor) -> None:
    """Make exact ties: prototype 1 duplicates prototype 0 in every subspace, prototype 2 of each is a real
    patch (distance exactly 0 for it), and on an integer grid many distances coincide."""
    with torch.no_grad():
        layer.prototypes.copy_(torch.round(layer.prototypes * 2) / 2)
        layer.prototypes[:, 1] = layer.prototypes[:, 0]
        if isinstance(layer, PQConv2d):
            a = ref_patches(x, layer.kernel_size, layer.stride, layer.padding)
        else:
            a = x.reshape(-1, layer.in_features)
        layer.prototypes[:, 2] = a[0].reshape(layer.num_subspaces, layer.v)


# (Cin, Cout, kernel, stride, padding, v, K, N, H, W)
CONV_SHAPES = [
    (4, 5, (3, 3), (1, 1), (1, 1), 6, 8, 3, 7, 6),    # subvectors straddle kernel offsets
    (3, 4, (3, 2), (2, 1), (1, 0), 3, 4, 2, 9, 5),    # rectangular kernel, stride, one-sided padding
    (16, 8, (3, 3), (2, 2), (1, 1), 9, 16, 5, 8, 8),  # the ResNet20 (9, 16) shape, strided
    (2, 3, (1, 1), (1, 1), (0, 0), 2, 5, 4, 3, 3),    # 1x1
]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s[:2])) + f"-v{s[5]}K{s[6]}")
@pytest.mark.parametrize("mode", ["ste", "soft"])
@pytest.mark.parametrize("chunk", [1 << 19, 40])  # 40: many image ranges and many distance blocks per range
@pytest.mark.parametrize("ties", [False, True])
def test_conv_training_product_matches_bruteforce(shape, mode, chunk, ties, monkeypatch):
    monkeypatch.setattr(pqm, "_SCORE_CHUNK", chunk)
    Cin, Cout, kernel, stride, padding, v, K, N, H, W = shape
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, mode, ties)).encode()))
    conv = nn.Conv2d(Cin, Cout, kernel, stride, padding).double()
    x = torch.randn(N, Cin, H, W, dtype=torch.float64, generator=g)
    if ties:
        x = torch.round(x * 2) / 2
    layer = PQConv2d.from_conv(conv, v=v, K=K, calib_x=x, iters=3)
    if ties:
        planted_ties(layer, x)
    T = 0.7
    layer.set_temperature(T)
    layer.set_assignment(mode)
    layer.train()
    xg = x.clone().requires_grad_(True)
    y = layer(xg)
    gy = torch.randn(y.shape, dtype=y.dtype, generator=g)
    (y * gy).sum().backward()

    P = layer.prototypes.detach().clone().requires_grad_(True)
    Wt = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    yr = ref_conv(layer, xr, P, Wt, b, T, soft_forward=mode == "soft")
    (yr * gy).sum().backward()

    torch.testing.assert_close(y.detach(), yr.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.prototypes.grad, P.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.weight.grad, Wt.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(layer.bias.grad, b.grad, rtol=1e-9, atol=1e-9)
    if mode == "ste":  # the training forward is the hard lookup the golden model computes, bit for bit
        with torch.no_grad():
            assert torch.equal(y.detach(), copy.deepcopy(layer).eval()(x))


@pytest.mark.parametrize("mode", ["ste", "soft"])
@pytest.mark.parametrize("ties", [False, True])
def test_linear_training_product_matches_bruteforce(mode, ties):
    g = torch.Generator().manual_seed(7 + ties)
    lin = nn.Linear(12, 5).double()
    x = torch.randn(2, 9, 12, dtype=torch.float64, generator=g)  # leading dims are flattened into M
    if ties:
        x = torch.round(x)
    layer = PQLinear.from_linear(lin, v=4, K=6, calib_x=x, iters=3)
    if ties:
        planted_ties(layer, x)
    layer.set_temperature(0.4)
    layer.set_assignment(mode)
    layer.train()
    xg = x.clone().requires_grad_(True)
    y = layer(xg)
    gy = torch.randn(y.shape, dtype=y.dtype, generator=g)
    (y * gy).sum().backward()
    P, Wt, b = (t.detach().clone().requires_grad_(True) for t in (layer.prototypes, layer.weight, layer.bias))
    xr = x.clone().requires_grad_(True)
    lut = torch.einsum("ckv,ocv->cko", P, Wt.reshape(5, 3, 4))
    yr = ref_product(xr.reshape(-1, 12), P, lut, 0.4, mode == "soft").reshape(2, 9, 5) + b
    (yr * gy).sum().backward()
    torch.testing.assert_close(y.detach(), yr.detach(), rtol=1e-10, atol=1e-10)
    for got, want in ((xg.grad, xr.grad), (layer.prototypes.grad, P.grad), (layer.weight.grad, Wt.grad),
                      (layer.bias.grad, b.grad)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    if mode == "ste":
        with torch.no_grad():
            assert torch.equal(y.detach(), copy.deepcopy(layer).eval()(x))


@pytest.mark.parametrize("T", [3.0, 0.05, 1e-3])
def test_float32_training_step_matches_float64_reference(T):
    """float32 (what training runs in) within float32 tolerance of the float64 reference, including
    temperatures where most soft weights underflow (flushed to 0 here, denormal or 0 in the reference)."""
    g = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(16, 8, 3, 1, 1)
    x = torch.randn(4, 16, 6, 6, generator=g)
    layer = PQConv2d.from_conv(conv, v=9, K=16, calib_x=x, iters=3)
    layer.set_temperature(T)
    layer.train()
    xg = x.clone().requires_grad_(True)
    y = layer(xg)
    gy = torch.randn(y.shape, generator=g)
    (y * gy).sum().backward()
    P, Wt, b = (t.detach().double().clone().requires_grad_(True) for t in (layer.prototypes, layer.weight, layer.bias))
    xr = x.double().requires_grad_(True)
    yr = ref_conv(layer, xr, P, Wt, b, T, soft_forward=False)
    (yr * gy.double()).sum().backward()
    with torch.no_grad():
        assert torch.equal(y.detach(), copy.deepcopy(layer).eval()(x))
    torch.testing.assert_close(y.detach().double(), yr.detach(), rtol=1e-4, atol=1e-4)
    for got, want in ((xg.grad, xr.grad), (layer.prototypes.grad, P.grad), (layer.weight.grad, Wt.grad)):
        assert torch.isfinite(got).all()
        scale = want.abs().max().clamp_min(1e-12)
        assert float((got.double() - want).abs().max() / scale) < 1e-3


def test_soft_weights_flush_underflow_to_exact_zero_and_one():
    """At a tiny temperature the soft assignment is an exact one-hot (the others flushed, not denormal),
    ties share the weight exactly, and no value is NaN."""
    P = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [5.0, 5.0]]])  # k=2 ties k=0
    a = torch.tensor([[[0.1, 0.0, 0.9, 30.0], [0.0, 0.0, 0.0, 30.0]]])  # [C=1, v=2, m=4]
    pn = (P * P).sum(-1)
    soft = pqm._soft_block(a, P, pn, temperature=1e-6)
    assert torch.isfinite(soft).all()
    assert soft[0, :, 0].tolist() == [0.5, 0.0, 0.5, 0.0]  # 0 and 2 tie exactly
    assert soft[0, :, 2].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert soft[0, :, 3].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert (soft[(soft > 0) & (soft < 1)] == 0.5).all()  # no denormal leftovers


# ----------------------------------------------------------------------------- the native kernel (default path)
# float32 CPU training runs flow/compress/_pq_kernel.cpp (VQHLS_PQ=auto); float64 (the tests above) runs the
# torch formulation. Here the kernel against the float64 brute-force reference (float32 tolerance) and
# against the torch formulation (bit-equal forward, gradients within float32 rounding), on every K padding
# (16, 32, 64 lanes), strides, ties, small blocks, the soft forward and each ISA copy the CPU runs.

from flow.compress import _pq_native  # noqa: E402

# (Cin, Cout, kernel, stride, padding, v, K, N, H, W)
NATIVE_SHAPES = [
    (16, 8, (3, 3), (1, 1), (1, 1), 9, 16, 3, 6, 6),   # ResNet20 (9, 16)
    (16, 16, (3, 3), (2, 2), (1, 1), 9, 5, 2, 7, 7),   # K = 5: 11 padded lanes, strided
    (4, 6, (3, 2), (1, 2), (1, 0), 4, 32, 2, 8, 9),    # K padded to 32, subvectors straddle offsets
    (3, 5, (1, 1), (1, 1), (0, 0), 3, 64, 2, 9, 9),    # K = 64
]


def _step(layer, x, gy, backend: str, monkeypatch):
    monkeypatch.setenv("VQHLS_PQ", backend)
    layer = copy.deepcopy(layer)
    xg = x.clone().requires_grad_(True)
    y = layer(xg)
    (y * gy).sum().backward()
    return y.detach(), [xg.grad, layer.prototypes.grad, layer.weight.grad, layer.bias.grad]


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("shape", NATIVE_SHAPES, ids=lambda s: f"K{s[6]}-s{s[3][0]}")
@pytest.mark.parametrize("mode", ["ste", "soft"])
@pytest.mark.parametrize("T", [2.0, 0.02, 1e-4])  # 1e-4: nearly every column one-hot (the kernel skips them)
def test_native_matches_bruteforce_and_torch_path(shape, mode, T, monkeypatch):
    monkeypatch.setattr(pqm, "_SCORE_CHUNK", 600)  # several image ranges per layer
    Cin, Cout, kernel, stride, padding, v, K, N, H, W = shape
    monkeypatch.setattr(pqm, "_NATIVE_FLOATS", 60 * Cin * kernel[0] * kernel[1])  # 60 columns per native range
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, mode, T)).encode()))
    x = torch.randn(N, Cin, H, W, generator=g)
    layer = PQConv2d.from_conv(nn.Conv2d(Cin, Cout, kernel, stride, padding), v=v, K=K, calib_x=x, iters=2)
    layer.set_temperature(T)
    layer.set_assignment(mode)
    layer.train()
    gy = torch.randn(layer(x).shape, generator=g)
    y_n, g_n = _step(layer, x, gy, "native", monkeypatch)
    y_t, g_t = _step(layer, x, gy, "torch", monkeypatch)
    if mode == "ste":  # the hard lookup, bit for bit, on both paths and in eval
        assert torch.equal(y_n, y_t)
        with torch.no_grad():
            assert torch.equal(y_n, copy.deepcopy(layer).eval()(x))
    else:
        torch.testing.assert_close(y_n, y_t, rtol=0, atol=0)  # the soft forward is the torch code on both
    # The scores' rounding (different summation orders) moves the soft weights by about ulp(e) / T: at
    # T = 1e-4 near-tie columns are that ill-conditioned on both paths alike.
    tol = 2e-4 if T >= 1e-2 else 2e-2
    for got, want in zip(g_n, g_t):
        assert _rel(got, want) < tol
    if T < 1e-2:  # the float64 reference keeps weights under 2^-126 that both float32 paths flush (above)
        return
    # and against the independent float64 reference
    P, Wt, b = (t.detach().double().clone().requires_grad_(True) for t in (layer.prototypes, layer.weight, layer.bias))
    xr = x.double().requires_grad_(True)
    yr = ref_conv(layer, xr, P, Wt, b, T, soft_forward=mode == "soft")
    (yr * gy.double()).sum().backward()
    torch.testing.assert_close(y_n.double(), yr.detach(), rtol=1e-4, atol=1e-4)
    for got, want in zip(g_n, (xr.grad, P.grad, Wt.grad, b.grad)):
        assert torch.isfinite(got).all() and _rel(got, want) < 1e-3


@pytest.mark.parametrize("isa", ["avx512", "avx2", "base"])
def test_native_isa_copies_agree(isa, monkeypatch):
    """Each compiled copy the CPU runs gives the torch path's forward bit for bit and its gradients."""
    lib = _pq_native.load()
    if lib is None or isa not in _pq_native.ISAS[:lib.pq_kernel_isa(-1) + 1]:
        pytest.skip(f"this CPU does not run the {isa} copy")  # a real skip: the CPU lacks the instructions
    monkeypatch.setenv("VQHLS_PQ_ISA", isa)
    g = torch.Generator().manual_seed(11)
    x = torch.round(torch.randn(2, 16, 6, 6, generator=g) * 2) / 2  # integer grid: ties and ambiguous columns
    layer = PQConv2d.from_conv(nn.Conv2d(16, 8, 3, 1, 1), v=9, K=16, calib_x=x, iters=2)
    planted_ties(layer, x)
    layer.set_temperature(0.3)
    layer.train()
    gy = torch.randn(2, 8, 6, 6, generator=g)
    y_n, g_n = _step(layer, x, gy, "native", monkeypatch)
    y_t, g_t = _step(layer, x, gy, "torch", monkeypatch)
    assert torch.equal(y_n, y_t)
    for got, want in zip(g_n, g_t):
        assert _rel(got, want) < 2e-4


@pytest.mark.parametrize("mode", ["ste", "soft"])
def test_native_linear_matches_torch_path(mode, monkeypatch):
    monkeypatch.setattr(pqm, "_SCORE_CHUNK", 64)  # several column blocks
    monkeypatch.setattr(pqm, "_NATIVE_FLOATS", 50 * 24)  # and 50 columns per native range
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 40, 24, generator=g)
    layer = PQLinear.from_linear(nn.Linear(24, 7), v=6, K=10, calib_x=x, iters=2)
    layer.set_temperature(0.5)
    layer.set_assignment(mode)
    layer.train()
    gy = torch.randn(3, 40, 7, generator=g)
    y_n, g_n = _step(layer, x, gy, "native", monkeypatch)
    y_t, g_t = _step(layer, x, gy, "torch", monkeypatch)
    assert torch.equal(y_n, y_t)
    for got, want in zip(g_n, g_t):
        assert _rel(got, want) < 2e-4


def test_native_encoder_equals_the_eval_encoder_on_near_ties(monkeypatch):
    """The kernel's encoder (expanded scores, ambiguous columns re-encoded directly) gives the torch
    formulation's indices (_encode_T under VQHLS_PQ=torch) exactly, on data built to put many columns within
    rounding of a tie, and _encode_T on the kernel (the default) gives the same."""
    lib = _pq_native.load()
    g = torch.Generator().manual_seed(2)
    C, K, v, m = 6, 16, 9, 3000
    P = torch.round(torch.randn(C, K, v, generator=g) * 4) / 4
    P[:, 1] = P[:, 0]  # exact duplicates
    aT = torch.round(torch.randn(C, v, m, generator=g) * 4) / 4
    aT[:, :, :50] = P[:, 3, :, None]  # exact hits
    aT[:, :, 50:100] = (P[:, 4] + P[:, 5])[:, :, None] / 2 + 1e-7  # midpoints: near ties
    monkeypatch.setenv("VQHLS_PQ", "torch")
    want = pqm._encode_T(aT, P)
    monkeypatch.delenv("VQHLS_PQ")
    assert torch.equal(pqm._encode_T(aT, P), want)
    raw = torch.empty(C, m, dtype=torch.int64)
    n = _pq_native.encode(lib, _pq_native.Tables(P), aT, raw, 2 * (8 * v + 16) * torch.finfo(torch.float32).eps)
    assert n >= 100  # the ambiguous columns are there, re-encoded by the kernel's direct formula
    assert torch.equal(raw, want)
    got = torch.empty(C, m, dtype=torch.int64)
    pqm._encode_native(lib, _pq_native.Tables(P), aT, got)
    assert torch.equal(got, want)
    assert torch.equal(got, pqm._scan_nearest(aT.permute(0, 2, 1).reshape(-1, v),
                                              P.repeat_interleave(m, 0)).reshape(C, m))


def test_native_threads_split_subspaces_without_changing_the_result(monkeypatch):
    """With 2 torch threads the kernel runs disjoint subspace ranges on 2 threads: the same bits as 1 thread."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 16, 7, 7, generator=g)
    layer = PQConv2d.from_conv(nn.Conv2d(16, 8, 3, 1, 1), v=9, K=16, calib_x=x, iters=2)
    layer.set_temperature(0.5)
    layer.train()
    gy = torch.randn(3, 8, 7, 7, generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, g1 = _step(layer, x, gy, "native", monkeypatch)
        torch.set_num_threads(2)
        y2, g2 = _step(layer, x, gy, "native", monkeypatch)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(y1, y2)
    assert torch.equal(g1[0], g2[0])  # dL/dx: the kernel's per-subspace work and col2im, the same on any split
    assert _rel(g1[1], g2[1]) < 1e-5  # dL/dP: also a torch GEMM, whose blocking may follow the thread count


# (N, Cin, H, W, kernel, stride, padding): odd sizes, rectangular kernels, one-sided padding, strides > kernel
IM2COL_SHAPES = [
    (3, 16, 7, 6, (3, 3), (1, 1), (1, 1)),
    (2, 5, 9, 5, (3, 2), (2, 1), (1, 0)),
    (4, 3, 8, 8, (3, 3), (2, 2), (1, 1)),
    (2, 2, 3, 3, (1, 1), (1, 1), (0, 0)),
    (2, 3, 10, 9, (2, 2), (3, 3), (2, 1)),
    (2, 3, 6, 7, (5, 5), (1, 1), (2, 2)),  # "same" convs: the shifted-plane copy, 5x5
    (3, 2, 5, 4, (3, 1), (1, 1), (1, 0)),  # and one padded in h only
    (2, 2, 2, 3, (5, 3), (1, 1), (2, 1)),  # a kernel taller than the image: whole patch rows outside it
]


@pytest.mark.parametrize("shape", IM2COL_SHAPES, ids=lambda s: "x".join(map(str, s[:4])))
@pytest.mark.parametrize("threads", [1, 2])
def test_native_im2col_and_col2im_match_unfold(shape, threads):
    """The kernel's patches of a range of images equal F.unfold's (reordered to (kh, kw, cin)) bit for bit, and
    its accumulated adjoint equals autograd's gradient of those patches, on any thread split."""
    lib = _pq_native.load()
    N, Cin, H, W, kernel, stride, padding = shape
    g = torch.Generator().manual_seed(zlib.crc32(repr(shape).encode()))
    x = torch.randn(N, Cin, H, W, generator=g)
    want = ref_patches(x, kernel, stride, padding).T  # [D, N*L]
    D, M = want.shape
    L = M // N
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        out = torch.full((D, M + 5), float("nan"))[:, :M + 3]  # rows strided, columns past the range untouched
        _pq_native.im2col(lib, x, 0, N, kernel, stride, padding, out)
        assert torch.equal(out[:, :M], want) and out[:, M:].isnan().all()
        part = torch.empty(D, (N - 1) * L)
        _pq_native.im2col(lib, x, 1, N, kernel, stride, padding, part)
        assert torch.equal(part, want[:, L:])
        gp = torch.randn(D, M, generator=g)
        xr = x.double().requires_grad_(True)
        (ref_patches(xr, kernel, stride, padding).T * gp.double()).sum().backward()
        dx = torch.full_like(x, 0.5)  # accumulated into: two calls over image ranges, on top of 0.5
        _pq_native.col2im(lib, gp[:, :L], 0, 1, kernel, stride, padding, dx)
        _pq_native.col2im(lib, gp[:, L:], 1, N, kernel, stride, padding, dx)
        torch.testing.assert_close(dx.double(), xr.grad + 0.5, rtol=1e-6, atol=1e-6)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_native_lut_sum_is_embedding_bag_bit_for_bit(threads, monkeypatch):
    """The hard lookup's sum by the kernel equals torch's embedding_bag (the torch path and the eval path of
    other devices) bit for bit: the same additions in the same order; and a brute-force sum within rounding. Written
    as a conv's NCHW output (77 columns per image: tiles of 16 straddle images), the same numbers transposed."""
    g = torch.Generator().manual_seed(4)
    C, K, cout, M = 19, 16, 37, 1001
    lut = torch.randn(C, K, cout, generator=g) * torch.logspace(-3, 3, cout)  # very different magnitudes
    idx = torch.randint(0, K, (C, M), generator=g)
    monkeypatch.setenv("VQHLS_PQ", "torch")
    want = pqm._lut_sum(lut, idx)
    monkeypatch.delenv("VQHLS_PQ")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        got = _pq_native.lut_sum(_pq_native.load(), lut, idx)
        nchw = _pq_native.lut_sum(_pq_native.load(), lut, idx, per_image=77)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, want)
    assert nchw.shape == (13, cout, 77) and torch.equal(nchw, want.view(13, 77, cout).transpose(1, 2))
    brute = sum(lut.double()[c, idx[c]] for c in range(C))
    torch.testing.assert_close(got.double(), brute, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("K", [16, 5, 64])
def test_native_outer_acc_matches_float64_einsum(K):
    """dL/dP's sum_m a_m gz_m^T by the kernel (accumulated, any m including a partial last tile) against
    float64 einsum; 2 threads give the same bits as 1."""
    lib = _pq_native.load()
    g = torch.Generator().manual_seed(K)
    C, v, m = 5, 9, 1237
    a, gz = torch.randn(C, v, m, generator=g), torch.randn(C, K, m, generator=g)
    base = torch.randn(C, v, K, generator=g)
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            gp = base.clone()
            _pq_native.outer_acc(lib, a, gz, gp)
            outs.append(gp)
    finally:
        torch.set_num_threads(before)
    want = base.double() + torch.einsum("cjm,ckm->cjk", a.double(), gz.double())
    torch.testing.assert_close(outs[0].double(), want, rtol=1e-5, atol=1e-4)
    assert torch.equal(outs[0], outs[1])


def test_native_encoder_counts_its_ambiguous_columns():
    """encode returns how many columns it re-encoded by the direct formula, and those answers are the
    torch direct formula's (_scan_nearest), first minimum on exact ties."""
    lib = _pq_native.load()
    g = torch.Generator().manual_seed(3)
    C, K, v, m = 4, 16, 9, 500
    P = torch.round(torch.randn(C, K, v, generator=g) * 4) / 4
    P[:, 1] = P[:, 0]
    aT = torch.randn(C, v, m, generator=g)
    aT[:, :, :40] = P[:, 0, :, None]  # exact hits of the duplicated prototype: ambiguous
    out = torch.empty(C, m, dtype=torch.int64)
    n = _pq_native.encode(lib, _pq_native.Tables(P), aT, out, 2 * (8 * v + 16) * torch.finfo(torch.float32).eps)
    assert n >= 4 * 40
    assert (out[:, :40] == 0).all()  # exact ties of prototypes 0 and 1: the first
    assert torch.equal(out, pqm._scan_nearest(aT.permute(0, 2, 1).reshape(-1, v), P.repeat_interleave(m, 0)).reshape(C, m))
