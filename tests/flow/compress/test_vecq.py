"""VecQ: the paper scheme against a direct numpy implementation (levels, lambda * std step, least-squares
alpha), the sweep scheme's step search against a fine grid, the quantizers' grids, straight-through,
compress() defaults, the engine's integer weights, errors, bit counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flow.compress import compress, compression_report, plan, vecq
from flow.compress.errors import CompressionError, UnsupportedLayerError
from flow.compress.vecq import (
    LAMBDA,
    BitWidthError,
    VecQConv2d,
    VecQLinear,
    optimal_step,
    paper_quantize,
    step_loss,
    vecq_loss,
)

BITS = range(2, 9)  # sweep
PAPER_BITS = range(1, 8)


def J_ref(w: np.ndarray, steps: np.ndarray, bits: int) -> np.ndarray:
    """Independent VecQ loss at many steps: (1 - cos) + (|w| - |q|)^2 / |w|^2, q = 0 -> 2. Chunked."""
    L = 2 ** (bits - 1) - 1
    w = w.ravel().astype(np.float64)
    nw = np.sqrt(w @ w)
    out = np.empty(steps.size)
    for i in range(0, steps.size, 256):
        s = steps[i:i + 256, None]
        q = np.clip(np.round(w[None] / s), -L, L) * s
        nq = np.sqrt((q * q).sum(1))
        with np.errstate(divide="ignore", invalid="ignore"):
            out[i:i + 256] = np.where(nq > 0, 1 - (q @ w) / (nw * nq) + (nw - nq) ** 2 / nw**2, 2.0)
    return out


def grid_min(w: np.ndarray, bits: int, points: int = 20_000) -> float:
    amax = np.abs(w).max()
    return float(J_ref(w, np.linspace(2 * amax / points, 2 * amax, points), bits).min())


def weights(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(n) * 0.1
    if kind == "trained":  # heavy-tailed with a few outliers and exact zeros, like a trained conv
        w = rng.laplace(size=n) * 0.03
        w[rng.choice(n, 5, replace=False)] *= 12
        w[rng.choice(n, n // 20, replace=False)] = 0.0
        return w
    conv = nn.Conv2d(8, 16, 3)  # kaiming-uniform init: bounded, flat
    torch.manual_seed(seed)
    nn.init.kaiming_uniform_(conv.weight)
    return conv.weight.detach().double().numpy().ravel()


# ----------------------------------------------------------------------------- step search


@pytest.mark.parametrize("kind", ["normal", "trained", "uniform"])
@pytest.mark.parametrize("bits", BITS)
def test_optimal_step_beats_fine_grid(kind, bits):
    w = weights(kind, 1000 if kind != "uniform" else 1152, seed=bits)
    s = optimal_step(w, bits)
    J = float(J_ref(w, np.array([s]), bits)[0])
    assert J == pytest.approx(step_loss(w, s, bits), abs=1e-15)
    assert 0 < s < 2 * np.abs(w).max()
    assert J <= grid_min(w, bits) + 1e-9


@pytest.mark.parametrize("bits", [2, 5, 8])
def test_windowed_search_beats_fine_grid(bits, monkeypatch):
    # Force the large-layer path (grid basins + local exact sweep) on a small vector.
    monkeypatch.setattr(vecq, "_FULL_SWEEP_MAX", 100)
    w = weights("trained", 1500, seed=10 + bits)
    s = optimal_step(w, bits)
    assert float(J_ref(w, np.array([s]), bits)[0]) <= grid_min(w, bits) + 1e-9


@pytest.mark.slow
def test_large_layer_beats_fine_grid():
    w = weights("trained", 40_000, seed=1)  # 40k * 127 breakpoints: the windowed path for real
    s = optimal_step(w, 8)
    assert float(J_ref(w, np.array([s]), 8)[0]) <= grid_min(w, 8) + 1e-9


def test_stored_float32_step_beats_fine_grid():
    # Rounding the float64 optimum to the float32 buffer can cross a code boundary on small
    # layers (it did for 9 of these 210 cases); refresh_step must store a step that still wins.
    for seed in range(30):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, 40))
        w = (rng.standard_normal(n) * 0.1).astype(np.float32)
        for bits in BITS:
            lin = VecQLinear(n, 1, bits=bits, scheme="sweep")
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w)[None])
            lin.refresh_step()
            codes, step = lin.int_weight()
            w64 = w.astype(np.float64)
            J_layer = vecq_loss(w64, codes.ravel().astype(np.float64) * step)
            assert J_layer <= grid_min(w64, bits) + 1e-9, (seed, bits)


def test_optimal_step_is_exact_on_tiny_vectors():
    # Very few breakpoints: the optimum sits inside a code interval at ||w|| / ||z||, which a
    # grid only approaches; a much finer grid must not beat it either.
    for w in (np.array([1.0, 0.3, -0.2]), np.array([0.5, 0.5, 0.5, -0.1]), np.array([2.0])):
        for bits in (2, 3):
            s = optimal_step(w, bits)
            amax = np.abs(w).max()
            grid = J_ref(w, np.linspace(2 * amax / 200_000, 2 * amax, 200_000), bits).min()
            assert step_loss(w, s, bits) <= grid + 1e-12


def test_optimal_step_scale_equivariant_and_special_cases():
    w = weights("normal", 500, seed=0)
    for bits in (2, 4, 8):
        s = optimal_step(w, bits)
        assert step_loss(w * 1000, optimal_step(w * 1000, bits), bits) == pytest.approx(step_loss(w, s, bits), abs=1e-9)
    assert optimal_step(np.zeros(7), 4) == 1.0
    assert optimal_step(torch.tensor([0.5, -0.25]), 3) > 0  # tensors accepted
    with pytest.raises(ValueError, match="NaN"):
        optimal_step(np.array([1.0, np.nan]), 4)
    with pytest.raises(ValueError, match="empty"):
        optimal_step(np.array([]), 4)


def test_vecq_loss_definition():
    w = np.array([3.0, 4.0])
    assert vecq_loss(w, w) == pytest.approx(0.0, abs=1e-15)
    assert vecq_loss(w, np.zeros(2)) == 2.0
    assert vecq_loss(w, 2 * w) == pytest.approx(1.0)  # same direction, |q| = 2|w|: modulus term 1
    assert vecq_loss(w, np.array([4.0, -3.0])) == pytest.approx(1.0)  # orthogonal, same length
    assert vecq_loss(np.zeros(2), np.zeros(2)) == 0.0


# ----------------------------------------------------------------------------- layers


def make_conv(bits=4, bias=True, step_every=50, seed=0, scheme="sweep"):
    torch.manual_seed(seed)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=bias)
    return conv, VecQConv2d.from_conv(conv, bits=bits, step_every=step_every, scheme=scheme)


@pytest.mark.parametrize("bits", BITS)
def test_quantized_weights_lie_on_the_grid(bits):
    conv, q = make_conv(bits)
    codes, step = q.int_weight()
    L = 2 ** (bits - 1) - 1
    assert codes.dtype == np.int8 and codes.shape == tuple(conv.weight.shape)
    assert np.abs(codes).max() <= L
    assert len(np.unique(codes)) <= 2**bits - 1
    assert step == pytest.approx(optimal_step(conv.weight.detach(), bits), rel=1e-6)  # stored as float32
    wq = q.eval().quantized_weight().detach()
    torch.testing.assert_close(wq, torch.from_numpy(codes).float() * step, rtol=0, atol=0)
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(q(x), F.conv2d(x, wq, conv.bias, 2, 1), rtol=0, atol=0)


def test_linear_matches_codes():
    torch.manual_seed(1)
    lin = nn.Linear(20, 7)
    q = VecQLinear.from_linear(lin, bits=3, scheme="sweep").eval()
    codes, step = q.int_weight()
    x = torch.randn(5, 20)
    with torch.no_grad():
        torch.testing.assert_close(q(x), F.linear(x, torch.from_numpy(codes).float() * step, lin.bias))
    assert np.abs(codes).max() <= 3


def test_straight_through_gradient_is_identity():
    _, q = make_conv(bits=2)
    q.train()
    with torch.no_grad():
        q.weight[0, 0, 0, 0] = 50.0  # far outside the grid: clamped, gradient still identity
    g = torch.randn_like(q.weight)
    wq = q.quantized_weight()
    (wq * g).sum().backward()
    torch.testing.assert_close(q.weight.grad, g, rtol=0, atol=0)
    codes, step = q.int_weight()  # the value is exactly on the grid, clamped outlier included
    assert codes[0, 0, 0, 0] == 1
    torch.testing.assert_close(wq.detach(), torch.from_numpy(codes).float() * step, rtol=0, atol=0)
    # Through the layer: grad w.r.t. weight = grad of the conv w.r.t. its (quantized) weight.
    q.weight.grad = None
    x = torch.randn(2, 4, 5, 5)
    wq = q.eval().quantized_weight().detach().requires_grad_(True)
    F.conv2d(x, wq, q.bias.detach(), q.stride, q.padding).sum().backward()
    q.train()
    q.step_every = 0  # keep the same step for the comparison
    q(x).sum().backward()
    torch.testing.assert_close(q.weight.grad, wq.grad)


def test_step_refresh_schedule():
    _, q = make_conv(bits=4, step_every=2)
    x = torch.randn(1, 4, 5, 5)
    q.train()
    s0 = float(q.step)
    with torch.no_grad():
        q.weight.mul_(2.0)
    q(x)  # forward 0: refresh
    assert float(q.step) == pytest.approx(2 * s0, rel=1e-6)
    with torch.no_grad():
        q.weight.mul_(2.0)
    q(x)  # forward 1: no refresh
    assert float(q.step) == pytest.approx(2 * s0, rel=1e-6)
    q.eval()  # leaving training refreshes the stale step
    assert float(q.step) == pytest.approx(4 * s0, rel=1e-6)
    frozen = make_conv(bits=4, step_every=0)[1].train()
    s = float(frozen.step)
    with torch.no_grad():
        frozen.weight.mul_(3.0)
    frozen(x)
    frozen.eval()
    assert float(frozen.step) == s
    assert frozen.refresh_step() == pytest.approx(3 * s, rel=1e-6)


def test_attributes_and_state_dict():
    conv, q = make_conv(bits=5)
    assert (q.in_channels, q.out_channels, q.kernel_size, q.stride, q.padding) == (4, 6, (3, 3), (2, 2), (1, 1))
    assert q.bits == 5 and isinstance(q.weight, nn.Parameter) and q.step.dim() == 0
    assert "step" in dict(q.named_buffers())
    fresh = VecQConv2d(4, 6, 3, stride=2, padding=1, bits=5, scheme="sweep")
    fresh.load_state_dict(q.state_dict())
    assert float(fresh.step) == float(q.step) and "alpha" not in q.state_dict()  # sweep: the old layout
    _, p = make_conv(bits=3, scheme="paper")
    fresh = VecQConv2d(4, 6, 3, stride=2, padding=1, bits=3)
    fresh.load_state_dict(p.state_dict())
    assert fresh.scheme == "paper" and float(fresh.alpha) == float(p.alpha) and float(fresh.step) == float(p.step)
    assert np.array_equal(fresh.int_weight()[0], p.int_weight()[0])


# ----------------------------------------------------------------------------- errors


def test_bad_bits_raise():
    for bad in (1, 9, 0, -3, 4.0, True, "4"):
        with pytest.raises(BitWidthError):
            optimal_step(np.ones(3), bad)
        with pytest.raises(BitWidthError):
            VecQLinear(3, 2, bits=bad, scheme="sweep")
    for bad in (8, 9, 0, -1, 4.0, True, "4"):  # paper: 1..7
        with pytest.raises(BitWidthError):
            VecQLinear(3, 2, bits=bad)
        with pytest.raises(BitWidthError):
            paper_quantize(np.ones(3), bad)
    with pytest.raises(BitWidthError, match="2..8"):
        VecQConv2d.from_conv(nn.Conv2d(2, 2, 3), bits=16, scheme="sweep")
    with pytest.raises(BitWidthError, match="1..7"):
        VecQConv2d.from_conv(nn.Conv2d(2, 2, 3), bits=16)
    # 8-bit paper codes are the odd ints up to +-255: one line naming both fixes
    with pytest.raises(BitWidthError, match=r"bits <= 7, or vecq_scheme='sweep'") as e:
        VecQConv2d.from_conv(nn.Conv2d(2, 2, 3), bits=8)
    assert "\n" not in str(e.value)
    with pytest.raises(CompressionError, match="'paper'"):
        VecQLinear(3, 2, scheme="exact")
    assert issubclass(BitWidthError, ValueError)


def test_unsupported_layers_raise():
    with pytest.raises(UnsupportedLayerError, match="groups"):
        VecQConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=4), bits=4)
    with pytest.raises(UnsupportedLayerError, match="padding_mode"):
        VecQConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), bits=4)
    with pytest.raises(UnsupportedLayerError):
        VecQLinear.from_linear(nn.Conv2d(4, 4, 3), bits=4)
    with pytest.raises(ValueError, match="step_every"):
        VecQLinear(3, 2, step_every=-1)


# ----------------------------------------------------------------------------- accounting


def test_stored_bits_hand_count():
    q = VecQConv2d(4, 8, 3, bits=4)  # paper: b bits per weight too, one float32 scale
    assert q.stored_bits() == {"weight": 8 * 4 * 3 * 3 * 4, "step": 32, "bias": 8 * 32}
    assert q.float_bits() == (8 * 4 * 9 + 8) * 32
    lin = VecQLinear(10, 3, bias=False, bits=2)
    assert lin.stored_bits() == {"weight": 30 * 2, "step": 32, "bias": 0}
    assert lin.float_bits() == 30 * 32



# ----------------------------------------------------------------------------- paper scheme


def paper_ref(w: np.ndarray, bits: int, step: float | None = None):
    """Direct numpy form of the paper's quantizer: nearest of the 2^b levels sign * (|z| + 0.5) (found by a
    brute-force argmin over the level set, not by floor; ties upward), step = lambda_b * std(w),
    alpha = <w,q>/<q,q>."""
    lam = {1: 1.0000, 2: 0.9957, 3: 0.5860, 4: 0.3352, 5: 0.1881, 6: 0.1041, 7: 0.0569, 8: 0.0308}[bits]
    w = np.asarray(w, np.float64).ravel()
    if step is None:
        step = lam * np.sqrt(np.mean((w - w.mean()) ** 2))
    z = np.arange(2 ** (bits - 1))
    levels = np.concatenate([-(z[::-1] + 0.5), z + 0.5])  # 2^b levels, no zero
    dist = np.abs(w[:, None] / step - levels[None, :])
    lv = levels[levels.size - 1 - np.argmin(dist[:, ::-1], axis=1)]  # a tie (w = 0: +-0.5) goes up
    q = step * lv
    alpha = (w @ q) / (q @ q)
    return lv, step, alpha


def test_lambda_table_is_the_papers():
    assert LAMBDA == {1: 1.0000, 2: 0.9957, 3: 0.5860, 4: 0.3352, 5: 0.1881, 6: 0.1041, 7: 0.0569, 8: 0.0308}


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6])
def test_lambda_is_the_gaussian_optimal_uniform_step(bits):
    # The table's meaning: for b >= 2, lambda_b is the MSE-optimal step of the 2^b-level midrise
    # quantizer of a unit Gaussian (Max 1960). Checked on a large sample against a fine grid.
    w = np.random.default_rng(bits).standard_normal(200_000)
    L = 2 ** (bits - 1)
    steps = np.linspace(0.5, 1.5, 201) * LAMBDA[bits]
    mse = [np.mean((w - s * (np.clip(np.floor(w / s), -L, L - 1) + 0.5)) ** 2) for s in steps]
    assert steps[int(np.argmin(mse))] == pytest.approx(LAMBDA[bits], rel=0.03)


@pytest.mark.parametrize("bits", PAPER_BITS)
@pytest.mark.parametrize("kind", ["normal", "trained", "uniform"])
def test_paper_quantize_matches_numpy_reference(bits, kind):
    w = weights(kind, 1152, seed=bits)
    o, step, alpha = paper_quantize(w, bits)
    lv, step_ref, alpha_ref = paper_ref(w, bits)
    assert step == pytest.approx(step_ref, rel=1e-12) and step == pytest.approx(LAMBDA[bits] * np.std(w), rel=1e-12)
    assert np.array_equal(o.ravel(), (2 * lv).astype(np.int64))
    assert alpha == pytest.approx(alpha_ref, rel=1e-12)


@pytest.mark.parametrize("bits", PAPER_BITS)
def test_paper_layer_matches_reference_and_engine_form(bits):
    torch.manual_seed(bits)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.normal_(0, 0.1)  # Gaussian, as the lambda table assumes (tails reach the top levels)
    q = VecQConv2d.from_conv(conv, bits=bits).eval()
    assert q.scheme == "paper" and q.step_every == 1
    w = conv.weight.detach().double().numpy().ravel()
    codes, unit = q.int_weight()
    assert codes.dtype == np.int8 and codes.shape == tuple(conv.weight.shape)
    # the step is lambda_b * std(w) (stored float32); the levels are the reference's at that step
    assert float(q.step) == pytest.approx(LAMBDA[bits] * np.std(w), rel=1e-6)
    lv, _, alpha_ref = paper_ref(w, bits, step=float(q.step))
    assert np.array_equal(codes.ravel(), (2 * lv).astype(np.int8))
    # half-integer levels as odd ints within +-(2^b - 1), every level of the set present on 1152 weights
    used = set(np.unique(codes).tolist())
    full = {s * (2 * j + 1) for j in range(2 ** (bits - 1)) for s in (1, -1)}
    assert used <= full and (bits > 4 or used == full)
    assert np.abs(codes).max() <= 2**bits - 1 == q.levels
    # alpha: the closed form <w, q> / <q, q>; the engine's scale is alpha * step / 2
    assert float(q.alpha) == pytest.approx(alpha_ref, rel=1e-6)
    assert unit == pytest.approx(alpha_ref * float(q.step) / 2, rel=1e-6)
    # least squares: the residual is orthogonal to q
    qv = codes.ravel().astype(np.float64)
    assert abs((w - unit * qv) @ qv) <= 1e-5 * np.linalg.norm(w) * np.linalg.norm(qv)
    # the eval forward uses exactly codes * scale
    wq = q.quantized_weight().detach()
    torch.testing.assert_close(wq, torch.from_numpy(codes).float() * unit, rtol=0, atol=0)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(q(x), F.conv2d(x, wq, conv.bias, 1, 1), rtol=0, atol=0)


def test_paper_one_bit_is_binary_with_mean_abs_scale():
    torch.manual_seed(0)
    lin = nn.Linear(50, 20)
    q = VecQLinear.from_linear(lin, bits=1)
    codes, unit = q.int_weight()
    w = lin.weight.detach().double().numpy()
    assert np.array_equal(codes, np.where(w >= 0, 1, -1).astype(np.int8))
    assert unit == pytest.approx(np.abs(w).mean(), rel=1e-6)  # <w, sign w> / n


def test_paper_degenerate_weights():
    for w, bits in ((np.full(6, 0.3), 3), (np.full(6, -0.3), 1), (np.zeros(4), 2), (np.array([0.7]), 4)):
        lin = VecQLinear(w.size, 1, bits=bits)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w).float()[None])
        lin.refresh_step()
        codes, unit = lin.int_weight()
        np.testing.assert_allclose(codes.astype(np.float64).ravel() * unit, w, rtol=1e-6, atol=0)
        assert np.all(codes % 2 == 1)


def test_paper_straight_through_and_refresh_every_forward():
    torch.manual_seed(3)
    q = VecQConv2d.from_conv(nn.Conv2d(4, 6, 3), bits=2).train()
    with torch.no_grad():
        q.weight[0, 0, 0, 0] = 50.0  # far outside the grid: clamped to the top level, gradient still identity
    g = torch.randn_like(q.weight)
    wq = q.quantized_weight()  # refreshes: the step follows std of the changed weights
    assert float(q.step) == pytest.approx(LAMBDA[2] * q.weight.detach().double().std(correction=0).item(), rel=1e-6)
    (wq * g).sum().backward()
    torch.testing.assert_close(q.weight.grad, g, rtol=0, atol=0)
    codes, unit = q.int_weight()
    assert codes[0, 0, 0, 0] == 3
    torch.testing.assert_close(wq.detach(), torch.from_numpy(codes).float() * unit, rtol=0, atol=0)
    with torch.no_grad():
        q.weight.mul_(2.0)
    s = float(q.step)
    q(torch.randn(1, 4, 5, 5))
    assert float(q.step) == pytest.approx(2 * s, rel=1e-6)  # every training forward
    q.eval()
    assert float(q.step) == pytest.approx(2 * s, rel=1e-6)


def test_paper_training_reduces_loss():
    # Straight-through training of a 2-bit paper layer fits a linear target better than its conversion.
    torch.manual_seed(0)
    x = torch.randn(512, 16)
    target = nn.Linear(16, 4)
    y = target(x).detach()
    q = VecQLinear.from_linear(nn.Linear(16, 4), bits=2)
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    q.eval()
    with torch.no_grad():
        before = float(F.mse_loss(q(x), y))
    q.train()
    for _ in range(200):
        opt.zero_grad()
        F.mse_loss(q(x), y).backward()
        opt.step()
    q.eval()
    with torch.no_grad():
        assert float(F.mse_loss(q(x), y)) < 0.3 * before


# ----------------------------------------------------------------------------- compress()


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, groups=2),
                         nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2))


def test_compress_paper_quantizes_every_layer_by_default():
    net = small_net()
    c = compress(net, method="vecq", bits=3)  # paper: first and last too; the grouped conv stays dense
    assert [type(c[i]).__name__ for i in (0, 2, 3, 5, 6)] == ["VecQConv2d", "VecQConv2d", "Conv2d", "VecQLinear",
                                                             "VecQLinear"]
    assert all(m.scheme == "paper" and m.bits == 3 for m in c.modules() if hasattr(m, "int_weight"))
    assert type(net[0]) is nn.Conv2d  # the input model is untouched
    s = compress(net, method="vecq", bits=3, vecq_scheme="sweep")  # sweep: first / last kept dense
    assert type(s[0]) is nn.Conv2d and type(s[6]) is nn.Linear and isinstance(s[2], VecQConv2d)
    assert s[2].scheme == "sweep"
    assert type(compress(net, method="vecq", skip=("first", "last"))[0]) is nn.Conv2d  # explicit skip wins
    mixed = compress(net, method="vecq", bits=2, overrides={"2": dict(vecq_scheme="sweep", bits=8)})
    assert (mixed[2].scheme, mixed[2].bits, mixed[5].scheme) == ("sweep", 8, "paper")
    rep = compression_report(c)
    assert {r.name: r.method for r in rep.rows} == {"0": "vecq", "2": "vecq", "3": "dense", "5": "vecq", "6": "vecq"}
    assert rep.rows[0].bits == {"weights": 36 * 3, "scale": 32, "bias": 4 * 32}
    # the other methods keep their default
    assert [p.method for p in plan(net, "vq", k=2, d=4, clip_k=True)][0] == "none"


def test_compress_bad_vecq_settings():
    net = small_net()
    with pytest.raises(BitWidthError, match="vecq_scheme='sweep'"):
        compress(net, method="vecq", bits=8)
    with pytest.raises(BitWidthError, match="2..8"):
        compress(net, method="vecq", bits=1, vecq_scheme="sweep")
    with pytest.raises(CompressionError, match="'paper'"):
        compress(net, method="vecq", vecq_scheme="vector")
    with pytest.raises(BitWidthError, match="layer '2'"):
        plan(net, "vecq", bits=4, overrides={"2": dict(bits=8)})


# ----------------------------------------------------------------------------- engine integers


@pytest.mark.parametrize("scheme,bits", [("paper", 1), ("paper", 2), ("paper", 4), ("paper", 7), ("sweep", 4)])
def test_quantized_graph_holds_the_layers_integers(scheme, bits):
    from flow.quant import quantize_model

    torch.manual_seed(bits)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    c = compress(net, method="vecq", bits=bits, vecq_scheme=scheme, skip=())
    g = quantize_model(c, torch.rand(32, 1, 8, 8))
    convs = [nd for nd in g.nodes if nd.kind == "conv"]
    assert len(convs) == 3
    for nd, name in zip(convs[:2], ("0", "2")):
        codes, unit = c.get_submodule(name).int_weight()
        assert nd.wfmt == "dense" and np.array_equal(nd.weight, codes.transpose(0, 2, 3, 1))
        assert np.all(nd.w_scale == unit)
        if scheme == "paper":
            assert np.all(nd.weight % 2 == 1) and np.abs(nd.weight).max() <= 2**bits - 1
