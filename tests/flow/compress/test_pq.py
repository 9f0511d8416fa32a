"""PQ (activation product quantization): encoding, LUT semantics, straight-through, errors, bit counts."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from flow.compress.errors import (
    ChannelDivisibilityError,
    CodebookSizeError,
    ShapeMismatchError,
    UnsupportedLayerError,
    VectorLengthError,
)
from flow.compress.pq import (
    PQConv2d,
    PQLinear,
    kmeans_subspaces,
    nearest_prototype,
)
from flow.compress.vecq import BitWidthError


# ----------------------------------------------------------------------------- references


def brute_nearest(a: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Explicit-loop nearest prototype, strict '<' so ties keep the lowest index. a [M,C,v], P [C,K,v]."""
    M, C, v = a.shape
    out = np.zeros((M, C), np.int64)
    for m in range(M):
        for c in range(C):
            best_k, best_d = 0, None
            for k in range(P.shape[1]):
                d = sum((float(a[m, c, j]) - float(P[c, k, j])) ** 2 for j in range(v))
                if best_d is None or d < best_d:
                    best_k, best_d = k, d
            out[m, c] = best_k
    return out


def hand_patches(x: torch.Tensor, kernel, stride, padding) -> torch.Tensor:
    """im2col by F.unfold, reordered by explicit index to (kh, kw, cin): [N, L, D]."""
    N, Cin = x.shape[:2]
    kh, kw = kernel
    cols = F.unfold(x, kernel, padding=padding, stride=stride)  # rows ordered (cin, kh, kw)
    order = [ci * kh * kw + i * kw + j for i in range(kh) for j in range(kw) for ci in range(Cin)]
    return cols[:, order, :].transpose(1, 2)


def hand_weight_matrix(w: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, kh, kw] -> [Cout, D] with D ordered (kh, kw, cin), by explicit loops."""
    Cout, Cin, kh, kw = w.shape
    Wm = torch.empty(Cout, Cin * kh * kw, dtype=w.dtype)
    for o, i, j, ci in itertools.product(range(Cout), range(kh), range(kw), range(Cin)):
        Wm[o, (i * kw + j) * Cin + ci] = w[o, ci, i, j]
    return Wm


def hand_lut_output(a: torch.Tensor, P: torch.Tensor, Wm: torch.Tensor, bias, lut=None) -> torch.Tensor:
    """sum_c LUT[c, idx_c] + bias, idx by brute force. a [M, C, v] -> [M, Cout]."""
    C, K, v = P.shape
    idx = torch.from_numpy(brute_nearest(a.numpy(), P.numpy()))
    if lut is None:
        lut = torch.einsum("ckv,ocv->cko", P, Wm.reshape(Wm.shape[0], C, v))
    out = torch.zeros(a.shape[0], Wm.shape[0], dtype=a.dtype)
    for c in range(C):
        out += lut[c, idx[:, c]]
    return out if bias is None else out + bias


def make_pq_conv(cin=4, cout=5, kernel=(3, 3), stride=(1, 1), padding=(1, 1), v=6, K=8, bias=True, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=bias).double()
    x = torch.randn(3, cin, 7, 6, dtype=torch.float64)
    return conv, x, PQConv2d.from_conv(conv, v=v, K=K, calib_x=x, iters=5, seed=seed)


# ----------------------------------------------------------------------------- encoding


# every float32 CPU encode (eval, compress, the distance scales) runs the fused kernel when it loads
# (VQHLS_PQ=auto); "torch" is the reference formulation (_encode_block): both against the brute force
BACKENDS = ["auto", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_matches_bruteforce_with_planted_ties(backend, monkeypatch):
    monkeypatch.setenv("VQHLS_PQ", backend)
    P = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [1.0, 1.0]],  # k=2 duplicates k=0
                      [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]])  # C=2, K=4, v=2
    a = torch.tensor([
        [[1.0, 0.0], [0.0, 0.0]],   # c0: equidistant to k0,k1,k2,k3 (d=1)  -> 0; c1: all four at d=1 -> 0
        [[0.0, 0.0], [0.0, 0.5]],   # c0: k0 and its duplicate k2 at d=0   -> 0; c1: k2 nearest
        [[1.5, 0.5], [-0.5, 0.5]],  # c0: k1 and k3 tie (d=0.5)            -> 1; c1: k1,k2 tie -> 1
        [[0.5, 0.5], [0.0, -2.0]],  # c0: k0,k2,k3 tie (d=0.5)             -> 0; c1: k3
    ])
    got = nearest_prototype(a, P)
    want = brute_nearest(a.numpy(), P.numpy())
    assert np.array_equal(got.numpy(), want)
    assert got.tolist() == [[0, 0], [0, 2], [1, 1], [0, 3]]
    # The layer's encode is the same function of its prototypes.
    lin = PQLinear(4, 3, v=2, K=4)
    with torch.no_grad():
        lin.prototypes.copy_(P)
    assert torch.equal(lin.encode(a), got)
    assert got.dtype == torch.int64


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(st.data())
def test_encode_matches_bruteforce_small_integers(backend, data):
    # Values in {-2..2} make exact ties frequent; float arithmetic on them is exact.
    C, K, v, M = (data.draw(st.integers(1, n)) for n in (3, 6, 3, 6))
    K = max(K, 2)
    ints = st.integers(-2, 2)
    P = np.array(data.draw(st.lists(ints, min_size=C * K * v, max_size=C * K * v)), np.float32).reshape(C, K, v)
    a = np.array(data.draw(st.lists(ints, min_size=M * C * v, max_size=M * C * v)), np.float32).reshape(M, C, v)
    # set here, after the draws (a draw may end the example by an exception): hypothesis runs every example
    # inside one test call, so no monkeypatch; restored whatever happens
    before = os.environ.get("VQHLS_PQ")
    os.environ["VQHLS_PQ"] = backend
    try:
        got = nearest_prototype(torch.from_numpy(a), torch.from_numpy(P))
    finally:
        if before is None:
            os.environ.pop("VQHLS_PQ", None)
        else:
            os.environ["VQHLS_PQ"] = before
    assert np.array_equal(got.numpy(), brute_nearest(a, P))


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_random_float32_matches_bruteforce(backend, monkeypatch):
    """Random float32 data with many columns (several of the kernel's column tiles and a tail): the same
    indices as the direct scan (near-ties are settled by it on both paths)."""
    monkeypatch.setenv("VQHLS_PQ", backend)
    g = torch.Generator().manual_seed(5)
    P = torch.randn(4, 16, 9, generator=g)
    a = torch.randn(1000, 4, 9, generator=g)
    assert np.array_equal(nearest_prototype(a, P).numpy(), brute_nearest(a.numpy(), P.numpy()))


def test_encode_random_float64_matches_bruteforce():
    g = torch.Generator().manual_seed(3)
    P = torch.randn(3, 16, 9, generator=g, dtype=torch.float64)
    a = torch.randn(40, 3, 9, generator=g, dtype=torch.float64)
    assert np.array_equal(nearest_prototype(a, P).numpy(), brute_nearest(a.numpy(), P.numpy()))


# ----------------------------------------------------------------------------- LUT semantics


def test_patch_order_is_channels_last():
    # x[n, c, h, w] = 100*c + 10*h + w makes every patch element self-describing.
    pq = PQConv2d(3, 2, (2, 2), padding=0, v=3, K=2)
    h, w = torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij")
    x = torch.stack([100 * c + 10 * h + w for c in range(3)])[None]
    patch0 = pq.subvectors(x)[0, 0].reshape(-1)  # output pixel (0, 0)
    want = [100 * c + 10 * i + j for i in range(2) for j in range(2) for c in range(3)]
    assert patch0.tolist() == want


@pytest.mark.parametrize("kernel,stride,padding,v", [
    ((3, 3), (1, 1), (1, 1), 6),
    ((3, 2), (2, 1), (1, 0), 8),   # non-square kernel, subvectors straddle kernel offsets
    ((1, 1), (1, 1), (0, 0), 2),
])
def test_conv_eval_forward_equals_hand_lut(kernel, stride, padding, v):
    conv, x, pq = make_pq_conv(cin=4, cout=5, kernel=kernel, stride=stride, padding=padding, v=v, K=8)
    pq.eval()
    with torch.no_grad():
        y = pq(x)
    patches = hand_patches(x, kernel, stride, padding)  # [N, L, D]
    N, L, D = patches.shape
    Wm = hand_weight_matrix(conv.weight.detach())
    ref = hand_lut_output(patches.reshape(N * L, D // v, v), pq.prototypes.detach(), Wm, conv.bias.detach())
    OH, OW = pq.output_size(x.shape[2], x.shape[3])
    assert y.shape == conv(x).shape == (N, 5, OH, OW)
    torch.testing.assert_close(y, ref.reshape(N, OH, OW, 5).permute(0, 3, 1, 2), rtol=0, atol=1e-12)
    # lut() is prototypes . weight blocks in the same order.
    C = D // v
    lut_ref = torch.einsum("ckv,ocv->cko", pq.prototypes.detach(), Wm.reshape(5, C, v))
    torch.testing.assert_close(pq.lut().detach(), lut_ref, rtol=0, atol=1e-12)


def test_linear_eval_forward_equals_hand_lut():
    torch.manual_seed(1)
    lin = nn.Linear(12, 7).double()
    x = torch.randn(30, 12, dtype=torch.float64)
    pq = PQLinear.from_linear(lin, v=4, K=5, calib_x=x, iters=5).eval()
    with torch.no_grad():
        y = pq(x)
        y3 = pq(x.reshape(5, 6, 12))
    ref = hand_lut_output(x.reshape(30, 3, 4), pq.prototypes.detach(), lin.weight.detach(), lin.bias.detach())
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(y3, ref.reshape(5, 6, 7), rtol=0, atol=1e-12)


def test_exact_when_prototypes_are_the_data():
    # Every patch's subvector is a prototype -> encoding is lossless -> PQ == conv.
    conv, x, _ = make_pq_conv()
    x = x[:1]
    pq = PQConv2d(4, 5, 3, padding=1, v=6, K=7 * 6)
    pq = pq.double()
    with torch.no_grad():
        pq.weight.copy_(conv.weight)
        pq.bias.copy_(conv.bias)
        a = pq.subvectors(x)[0]  # [L=42, C, v]
        pq.prototypes.copy_(a.transpose(0, 1))
    torch.testing.assert_close(pq.eval()(x), conv(x), rtol=1e-10, atol=1e-10)


def test_kmeans_converges_to_exact_layer_as_K_grows():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    ref = conv(x).detach()
    errs = []
    for K in (2, 6, 16, 25):  # 25 patches: K = 25 makes every subvector a prototype (k-means++ picks them all)
        pq = PQConv2d.from_conv(conv, v=3, K=K, calib_x=x, iters=30).eval()
        with torch.no_grad():
            errs.append(float((pq(x) - ref).pow(2).mean() / ref.pow(2).mean()))
    assert errs[0] > errs[1] > errs[2] > errs[3]
    assert errs[3] < 1e-12  # exact up to the float32 codebook masked_kmeans returns


def test_kmeans_subspaces_deterministic_and_local_optimum():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(3, 200, 4, generator=g)
    P1 = kmeans_subspaces(xs, 6, iters=50, seed=7)
    P2 = kmeans_subspaces(xs, 6, iters=50, seed=7)
    assert P1.shape == (3, 6, 4) and torch.equal(P1, P2)
    # At a Lloyd fixed point each centroid is the mean of its members.
    assign = nearest_prototype(xs.transpose(0, 1), P1).T
    for c, k in itertools.product(range(3), range(6)):
        members = xs[c][assign[c] == k]
        assert len(members)
        torch.testing.assert_close(P1[c, k], members.mean(0), rtol=1e-5, atol=1e-5)
    with pytest.raises(CodebookSizeError, match="calib_x"):
        kmeans_subspaces(xs[:, :5], 6)


# ----------------------------------------------------------------------------- training


def test_straight_through_value_is_hard_and_gradient_is_soft():
    conv, x, pq = make_pq_conv(v=6, K=8)
    pq.set_temperature(0.5)
    with torch.no_grad():
        y_hard = pq.eval()(x)
    pq.train()
    xg = x.clone().requires_grad_(True)
    y = pq(xg)
    torch.testing.assert_close(y, y_hard, rtol=0, atol=1e-12)  # forward = hard assignment
    gy = torch.randn_like(y)
    (y * gy).sum().backward()
    assert pq.prototypes.grad.abs().sum() > 0
    assert pq.weight.grad.abs().sum() > 0
    assert xg.grad.abs().sum() > 0  # upstream layers learn through the soft assignment

    # Reference: d/dtheta [ hard @ LUT(theta) + soft(theta) @ LUT.detach() ].
    P = pq.prototypes.detach().clone().requires_grad_(True)
    W = pq.weight.detach().clone().requires_grad_(True)
    a = hand_patches(x, pq.kernel_size, pq.stride, pq.padding).reshape(-1, pq.num_subspaces, pq.v)
    Wm = W.permute(0, 2, 3, 1).reshape(5, -1)
    lut = torch.einsum("ckv,ocv->cko", P, Wm.reshape(5, pq.num_subspaces, pq.v))
    idx = torch.from_numpy(brute_nearest(a.numpy(), P.detach().numpy()))
    hard = F.one_hot(idx, pq.K).double()
    dist = ((a[:, :, None, :] - P[None]) ** 2).sum(-1)
    soft = torch.softmax(-dist / 0.5, -1)
    out = (hard.flatten(1) @ lut.flatten(0, 1)) + (soft.flatten(1) @ lut.detach().flatten(0, 1)) + pq.bias.detach()
    N, L = x.shape[0], a.shape[0] // x.shape[0]
    out = out.reshape(N, *pq.output_size(7, 6), 5).permute(0, 3, 1, 2)
    (out * gy).sum().backward()
    torch.testing.assert_close(pq.prototypes.grad, P.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pq.weight.grad, W.grad, rtol=1e-9, atol=1e-9)


def test_temperature_buffer():
    _, _, pq = make_pq_conv()
    pq.set_temperature(0.125)
    assert float(pq.temperature) == 0.125 and "temperature" in dict(pq.named_buffers())
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            pq.set_temperature(bad)


# ----------------------------------------------------------------------------- LUT quantization


@pytest.mark.parametrize("bits", [8, 16])
def test_quantize_lut(bits):
    conv, x, pq = make_pq_conv()
    lut = pq.lut().detach()
    pq.quantize_lut_(bits)
    qmax = 2 ** (bits - 1) - 1
    assert pq.lut_bits == bits and pq.lut_scale.dim() == 0
    assert float(pq.lut_scale) == pytest.approx(float(lut.abs().max()) / qmax, rel=1e-12)
    codes, scale = pq.int_lut()
    assert codes.dtype == (np.int8 if bits == 8 else np.int16)
    assert np.abs(codes).max() == qmax
    assert np.abs(codes * scale - lut.numpy()).max() <= scale / 2 + 1e-12
    # Eval forward now uses exactly codes * scale.
    pq.eval()
    with torch.no_grad():
        y = pq(x)
    patches = hand_patches(x, pq.kernel_size, pq.stride, pq.padding)
    N, L, D = patches.shape
    ref = hand_lut_output(patches.reshape(N * L, pq.num_subspaces, pq.v), pq.prototypes.detach(),
                          hand_weight_matrix(conv.weight.detach()), conv.bias.detach(),
                          lut=torch.from_numpy(codes.astype(np.float64)) * scale)
    torch.testing.assert_close(y, ref.reshape(N, *pq.output_size(7, 6), 5).permute(0, 3, 1, 2), rtol=0, atol=1e-12)


def test_quantize_lut_rejects_other_bits_and_needs_quantization_first():
    _, _, pq = make_pq_conv()
    with pytest.raises(ValueError, match="quantize_lut_"):
        pq.int_lut()
    for bad in (4, 12, 32):
        with pytest.raises(BitWidthError):
            pq.quantize_lut_(bad)


def test_state_dict_round_trip_keeps_lut_format():
    _, x, pq = make_pq_conv()
    pq.quantize_lut_(16)
    fresh = PQConv2d(4, 5, 3, padding=1, v=6, K=8).double()
    assert fresh.lut_scale is None and fresh.lut_bits == 8
    fresh.load_state_dict(pq.state_dict())
    assert fresh.lut_bits == 16 and float(fresh.lut_scale) == float(pq.lut_scale)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), pq.eval()(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- errors


def test_bad_configs_raise_documented_errors():
    with pytest.raises(ChannelDivisibilityError, match="pick v dividing"):
        PQConv2d(4, 5, 3, v=5)  # D = 36
    with pytest.raises(ChannelDivisibilityError):
        PQLinear(10, 3, v=4)
    with pytest.raises(CodebookSizeError, match="K >= 2"):
        PQLinear(8, 3, v=4, K=1)
    with pytest.raises(VectorLengthError, match="v >= 1"):
        PQLinear(8, 3, v=0)
    with pytest.raises(UnsupportedLayerError, match="groups"):
        PQConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), v=9, calib_x=torch.zeros(1, 4, 5, 5))
    with pytest.raises(UnsupportedLayerError, match="dilat"):
        PQConv2d.from_conv(nn.Conv2d(4, 4, 3, dilation=2), v=9, calib_x=torch.zeros(1, 4, 5, 5))
    with pytest.raises(ShapeMismatchError, match="calib_x"):
        PQConv2d.from_conv(nn.Conv2d(4, 4, 3), v=9)
    with pytest.raises(ShapeMismatchError):
        PQConv2d(4, 5, 3, v=9)(torch.zeros(1, 3, 5, 5))
    for err in (ChannelDivisibilityError, CodebookSizeError, VectorLengthError, UnsupportedLayerError):
        assert issubclass(err, ValueError)


# ----------------------------------------------------------------------------- accounting


def test_stored_bits_hand_count():
    pq = PQConv2d(4, 8, 3, padding=1, v=9, K=16)  # D = 36, C = 4
    C, K, v, cout = 4, 16, 9, 8
    assert pq.num_subspaces == C
    assert pq.stored_bits() == {
        "prototypes": C * K * v * 8,  # int8 in the input activation's grid
        "lut": C * K * cout * 8,
        "lut_scale": 32,
        "bias": cout * 32,
    }
    assert pq.float_bits() == (cout * 4 * 9 + cout) * 32
    pq.quantize_lut_(16)
    assert pq.stored_bits()["lut"] == C * K * cout * 16
    lin = PQLinear(18, 5, bias=False, v=9, K=4)
    assert lin.stored_bits() == {"prototypes": 2 * 4 * 9 * 8, "lut": 2 * 4 * 5 * 8, "lut_scale": 32, "bias": 0}
    assert lin.float_bits() == 18 * 5 * 32


def test_attributes_for_the_lowering():
    conv = nn.Conv2d(3, 4, (3, 3), stride=2, padding=1)
    pq = PQConv2d.from_conv(conv, calib_x=torch.randn(2, 3, 8, 8), iters=2)
    assert (pq.in_channels, pq.out_channels, pq.kernel_size, pq.stride, pq.padding) == (3, 4, (3, 3), (2, 2), (1, 1))
    assert (pq.v, pq.K, pq.num_subspaces) == (9, 16, 3)
    assert isinstance(pq.prototypes, nn.Parameter) and pq.prototypes.shape == (3, 16, 9)
    assert isinstance(pq.weight, nn.Parameter) and pq.weight.shape == conv.weight.shape
    assert pq.lut().shape == (3, 16, 4) and pq.lut_scale is None and pq.lut_bits == 8
    assert PQConv2d.from_conv(nn.Conv2d(3, 4, 3, padding="same"), calib_x=torch.randn(1, 3, 4, 4),
                              iters=1).padding == (1, 1)


def test_eval_mode_forward_still_passes_gradients_to_weights_and_prototypes():
    """Hard assignment in eval mode, yet d(out)/d(weight) must flow through the table lookup."""
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 5, 3, padding=1)
    x = torch.randn(6, 4, 5, 5)
    layer = PQConv2d.from_conv(conv, v=4, K=8, calib_x=x, iters=3, seed=0).eval()
    out = layer(x)
    out.square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.prototypes.grad is not None


# ----------------------------------------------------------------------------- joint training (pq_finetune)


def _dyadic_lut_(layer, exp: int = -6):
    """Quantize the layer's LUT with the scale 2^exp: every LUT value and every partial sum of them
    is then exact in float64, so any summation order gives the same bits."""
    layer.quantize_lut_(8)
    layer.lut_scale.fill_(2.0 ** exp)
    return layer


def test_soft_forward_anneals_to_the_hard_lookup_bit_for_bit():
    from flow.compress.pq import temperature_at

    conv, x, pq = make_pq_conv(cin=4, cout=5, v=6, K=8)
    _dyadic_lut_(pq)
    codes, scale = pq.int_lut()
    patches = hand_patches(x, pq.kernel_size, pq.stride, pq.padding)
    N, L, D = patches.shape
    a = patches.reshape(N * L, pq.num_subspaces, pq.v).numpy()
    # independent reference: brute-force nearest prototype, then the LUT rows summed in numpy
    idx = brute_nearest(a, pq.prototypes.detach().numpy())
    lut = codes.astype(np.float64) * scale
    ref = np.zeros((N * L, 5))
    for c in range(pq.num_subspaces):
        ref += lut[c, idx[:, c]]
    ref += pq.bias.detach().numpy()
    ref = torch.from_numpy(ref).reshape(N, *pq.output_size(7, 6), 5).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert torch.equal(pq.eval()(x), ref)  # the lookup itself
    pq.train()
    pq.set_assignment("soft")
    steps, diffs = 40, []
    for s in range(steps):  # the annealing schedule from T = 10 down to T = 1e-30
        pq.set_temperature(temperature_at(s, steps, 10.0, 1e-30))
        y = pq(x.requires_grad_(True))  # training forward (grad enabled): the soft assignment
        diffs.append(float((y.detach() - ref).abs().max()))
    assert diffs[0] > 1e-3  # soft at high T: not the lookup
    assert diffs[-1] == 0.0 and torch.equal(y.detach(), ref)  # bit for bit at the end
    assert all(b <= a + 1e-12 for a, b in zip(diffs, diffs[1:]))  # and monotonically closer on the way


def test_soft_mode_gradients_flow_and_match_finite_differences():
    from torch.func import functional_call

    torch.manual_seed(1)
    lin = nn.Linear(6, 3).double()
    xs = torch.randn(20, 6, dtype=torch.float64)
    pq = PQLinear.from_linear(lin, v=3, K=4, calib_x=xs, iters=3).train()
    pq.set_assignment("soft")
    pq.set_temperature(0.7)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    y = pq(x)
    (y * torch.randn_like(y)).sum().backward()
    for t in (pq.prototypes.grad, pq.weight.grad, pq.bias.grad, x.grad):
        assert t is not None and torch.isfinite(t).all() and t.abs().sum() > 0

    def f(xin, P, W, b):
        return functional_call(pq, {"prototypes": P, "weight": W, "bias": b}, (xin,))

    args = (x.detach().clone().requires_grad_(True), pq.prototypes.detach().clone().requires_grad_(True),
            pq.weight.detach().clone().requires_grad_(True), pq.bias.detach().clone().requires_grad_(True))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-4)
    # STE mode at the same T: the forward is the lookup, the prototypes still get the soft gradient
    pq.set_assignment("ste")
    pq.zero_grad()
    y = pq(x)
    with torch.no_grad():
        assert torch.equal(y, pq.eval()(x))
    pq.train()
    pq(x).sum().backward()
    assert pq.prototypes.grad.abs().sum() > 0 and pq.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="ste"):
        pq.set_assignment("hard")


def test_im2col_backward_matches_autograd():
    conv, x, pq = make_pq_conv(cin=3, cout=4, kernel=(3, 2), stride=(2, 1), padding=(1, 0), v=3, K=4)
    xg = x.clone().requires_grad_(True)
    aT = pq._subvectors_T(xg)
    g = torch.randn_like(aT)
    aT.backward(g)
    xr = x.clone().requires_grad_(True)
    pr = hand_patches(xr, pq.kernel_size, pq.stride, pq.padding)  # [N, L, D]
    assert torch.equal(aT.detach(), pr.detach().reshape(-1, pq.num_subspaces, pq.v).permute(1, 2, 0))
    pr.backward(g.permute(2, 0, 1).reshape(pr.shape))
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-12, atol=1e-12)


def _tiny_resnet(seed: int = 0) -> nn.Module:
    from models.zoo import BasicBlock

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        BasicBlock(8, 16, stride=2), BasicBlock(16, 16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    )


def test_pq_default_skip_keeps_first_1x1_and_classifier_dense():
    from flow.compress import compress
    from flow.compress.api import plan
    from models import zoo

    model = zoo.get("resnet20", in_channels=1)
    for v in (9, 4, 8):  # at v=4 and 8 the 1x1 shortcuts' D (16, 32) would divide: still dense
        plans = {p.name: p.method for p in plan(model, "pq", v=v, K=16)}
        dense = sorted(n for n, m in plans.items() if m == "none")
        assert dense == ["conv1", "fc", "layers.3.shortcut.0", "layers.6.shortcut.0"], (v, dense)
        assert sum(m == "pq" for m in plans.values()) == 18
    # explicit choices still win: an override PQs a 1x1 conv, skip=() PQs the first conv
    plans = {p.name: p for p in plan(model, "pq", v=8, K=16, overrides={"layers.3.shortcut.0": dict(method="pq")})}
    assert plans["layers.3.shortcut.0"].method == "pq" and plans["layers.3.shortcut.0"].v == 8
    assert {p.name: p.method for p in plan(model, "pq", v=9, skip=())}["conv1"] == "pq"
    assert {p.name: p.method for p in plan(model, "pq", v=9, skip=())}["layers.3.shortcut.0"] == "none"
    # the compressed model: 1x1 shortcuts are plain Conv2d
    tiny = _tiny_resnet()
    c = compress(tiny, "pq", v=8, K=4, iters=2, data=torch.randn(16, 1, 8, 8))
    assert type(c[3].shortcut[0]) is nn.Conv2d and isinstance(c[3].conv1, PQConv2d)
    assert type(c[0]) is nn.Conv2d and type(c[7]) is nn.Linear


def test_pq_finetune_phases_tiny_model():
    from flow.compress import compress
    from flow.compress.errors import CompressionError
    from flow.compress.finetune import pq_finetune
    from flow.compress.pq import pq_distance_scales, pq_layers

    torch.manual_seed(0)
    x = torch.randn(96, 1, 8, 8)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long() + (x[:, 0].mean((1, 2)) > 0.3).long()
    c = compress(_tiny_resnet(), "pq", v=8, K=4, iters=2, data=x[:32])
    layers = pq_layers(c)
    assert len(layers) == 4 and all(m.lut_scale is not None for m in layers)
    scales = pq_distance_scales(c, x[:32])
    assert len(scales) == 4 and all(s > 0 for s in scales.values())
    with torch.no_grad():
        before = F.cross_entropy(c.eval()(x), y).item()
    hist = pq_finetune(c, x, y, epochs=3, batch_size=32, lr=1e-2, t_start=1.0, t_end=0.05, hard_epochs=1,
                       assignment="soft")
    assert not c.training and len(hist["loss"]) == 3 and len(hist["hard_loss"]) == 1
    with torch.no_grad():
        after = F.cross_entropy(c(x), y).item()
    assert after < before
    for (name, s), m in zip(hist["distance_scales"].items(), layers):
        assert float(m.temperature) == pytest.approx(0.05 * s)  # relative temperature, ended at t_end
        assert m.lut_scale is not None and not m.soft_forward
        codes, scale = m.int_lut()
        assert codes.dtype == np.int8 and np.abs(codes).max() == 127  # quantized after the soft phase
    # the hard phase alone trains BatchNorm and biases only; prototypes and weights are frozen
    frozen = {n: p.detach().clone() for n, p in c.named_parameters()}
    pq_finetune(c, x, y, epochs=0, batch_size=32, hard_epochs=2, hard_lr=1e-2)
    changed = {n for n, p in c.named_parameters() if not torch.equal(p, frozen[n])}
    assert changed and all(".bn" in n or n.startswith(("1.", "7.bias")) or "shortcut.1" in n for n in changed), changed
    assert all(p.requires_grad for p in c.parameters())  # restored
    with pytest.raises(CompressionError, match="assignment"):
        pq_finetune(c, x, y, epochs=1, assignment="hard")
    with pytest.raises(CompressionError, match="no PQConv2d"):
        pq_finetune(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), x, y, epochs=1)


def test_pq_finetune_spec_and_keywords_train_alike():
    """pq_finetune's settings are one PQTrainSpec: passing it or its fields as keywords trains the same model."""
    import copy

    from flow.compress import PQTrainSpec, compress
    from flow.compress.errors import CompressionError
    from flow.compress.finetune import pq_finetune

    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    c = compress(_tiny_resnet(), "pq", v=8, K=4, iters=2, data=x[:32])
    a, b = copy.deepcopy(c), copy.deepcopy(c)
    settings = dict(epochs=1, batch_size=32, hard_epochs=1, hard_params="all", seed=2)
    ha = pq_finetune(a, x, y, PQTrainSpec(**settings))
    hb = pq_finetune(b, x, y, **settings)
    assert ha["loss"] == hb["loss"] and ha["hard_loss"] == hb["hard_loss"]
    sa, sb = a.state_dict(), b.state_dict()  # a PQ layer's extra state (a dict) is in it too
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], v) if isinstance(v, torch.Tensor) else sa[k] == v for k, v in sb.items())
    with pytest.raises(CompressionError, match="hard_params"):
        PQTrainSpec(hard_params="most")
    with pytest.raises(TypeError, match="lrr"):
        pq_finetune(c, x, y, lrr=1e-3)


def test_pq_resnet_block_with_dense_1x1_shortcut_lowers_bit_exact():
    """PQ 3x3 convs around a dense 1x1 projection shortcut: quantize -> lower -> program == golden graph."""
    from flow.compile import EngineConfig, lower
    from flow.compress import compress
    from flow.quant.convert import quantize_model
    from flow.quant.golden import quantize_input, run
    from flow.compile.program_exec import run_program

    torch.manual_seed(0)
    x = torch.rand(48, 1, 8, 8)
    c = compress(_tiny_resnet(), "pq", v=8, K=4, iters=2, data=x[:32]).eval()
    g = quantize_model(c, x[:32])
    kinds = [(nd.name, nd.kind) for nd in g.nodes]
    assert sum(k == "pq" for _, k in kinds) == 4 and any("shortcut" in n and k == "conv" for n, k in kinds), kinds
    prog = lower(g, EngineConfig(pq=True))
    xi = quantize_input(x[32:], g.in_tensor.scale, g.in_tensor.unsigned)
    assert np.array_equal(run_program(prog, xi), run(g, xi))


def test_pq_layers_kept_dense_for_divisibility_are_named():
    """compress(method='pq') says which layers it could not cut into v-subvectors (never silently dense)."""
    import warnings

    from flow.compress import CompressionWarning, compress

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 9, 3), nn.ReLU(), nn.Conv2d(9, 4, 3),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(32, 1, 10, 10)
    # patch lengths: 9, 72, 81, 64 -> with v=9 only the Linear (64) is not divisible
    with pytest.warns(CompressionWarning, match=r"keeps 1 layer\(s\) dense.*6 \(patch length 64\)"):
        c = compress(model, "pq", v=9, K=4, iters=2, data=x, skip=("first",))
    assert type(c[6]) is nn.Linear and isinstance(c[2], PQConv2d) and isinstance(c[4], PQConv2d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # named in skip: kept dense quietly
        compress(model, "pq", v=9, K=4, iters=2, data=x, skip=("first", "6"))
    # v=7 divides none of 72 and 81 (the default skips the first and last layers): nothing to compress
    with pytest.raises(ChannelDivisibilityError, match=r"compresses no layer: 2 \(patch length 72\), 4 \(patch "
                                                       r"length 81\)"):
        compress(model, "pq", v=7, K=4, iters=2, data=x)
