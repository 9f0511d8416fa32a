"""N:M masks: the N:M property, largest magnitudes (or scores) kept, ties to the lower index, importance, errors."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flow.compress.errors import CompressionError, DivisibilityError, NMConfigError, ShapeMismatchError
from flow.compress.nm import importance_scores, is_nm_sparse, nm_mask

NM = [(1, 4), (2, 4), (3, 4), (2, 8), (4, 8)]


def reference_mask(w: np.ndarray, n: int, m: int, dim: int) -> np.ndarray:
    """Sort-based reference, one group at a time: stable sort of -|w| keeps the lower index on ties."""
    a = np.moveaxis(np.abs(w), dim, -1)
    out = np.zeros_like(a)
    for idx in np.ndindex(a.shape[:-1]):
        row = a[idx]
        for g in range(0, row.shape[0], m):
            order = np.argsort(-row[g:g + m], kind="stable")[:n]
            out[idx + (g + order,)] = 1.0
    return np.moveaxis(out, -1, dim)


def groups_of(mask: np.ndarray, m: int, dim: int) -> np.ndarray:
    a = np.moveaxis(mask, dim, -1)
    return a.reshape(*a.shape[:-1], a.shape[-1] // m, m)


@pytest.mark.parametrize("n,m", NM)
@pytest.mark.parametrize("dim", [0, 1])
def test_nm_property_and_largest_magnitudes(n, m, dim):
    torch.manual_seed(n * 10 + m + dim)
    w = torch.randn(8, 16, 3, 3)
    mask = nm_mask(w, n, m, dim=dim)
    assert mask.shape == w.shape and mask.dtype == torch.float32
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    g = groups_of(mask.numpy(), m, dim)
    assert (g.sum(-1) == n).all()  # exactly n kept in every group of m
    assert is_nm_sparse(mask, n, m, dim)
    np.testing.assert_array_equal(mask.numpy(), reference_mask(w.numpy(), n, m, dim))
    # every kept |w| >= every dropped |w| of the same group
    aw = groups_of(np.abs(w.numpy()), m, dim)
    kept = np.where(g == 1, aw, np.inf).min(-1)
    dropped = np.where(g == 0, aw, -np.inf).max(-1)
    assert (kept >= dropped).all()


@pytest.mark.parametrize("n,m", NM)
def test_ties_keep_the_lower_index(n, m):
    # values in {-1, 0, 1}: almost every group has ties in magnitude
    g = torch.Generator().manual_seed(m + n)
    w = torch.randint(-1, 2, (6, 16), generator=g).float()
    mask = nm_mask(w, n, m, dim=1)
    np.testing.assert_array_equal(mask.numpy(), reference_mask(w.numpy(), n, m, 1))
    # all-equal group: the first n positions win
    assert nm_mask(torch.ones(1, m), n, m).tolist() == [[1.0] * n + [0.0] * (m - n)]


def test_n_equals_m_is_all_ones():
    w = torch.randn(4, 8)
    assert torch.equal(nm_mask(w, 4, 4), torch.ones(4, 8))


def test_negative_dim_and_linear_weight():
    w = torch.randn(5, 12)
    assert torch.equal(nm_mask(w, 1, 4, dim=-1), nm_mask(w, 1, 4, dim=1))


@settings(max_examples=30, deadline=None)
@given(nm=st.sampled_from(NM), dim=st.integers(0, 2), lead=st.integers(1, 3), groups=st.integers(1, 3),
       seed=st.integers(0, 2 ** 16))
def test_nm_property_random_shapes(nm, dim, lead, groups, seed):
    n, m = nm
    shape = [lead, 2, 3]
    shape[dim] = groups * m
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    mask = nm_mask(w, n, m, dim=dim)
    assert (groups_of(mask.numpy(), m, dim).sum(-1) == n).all()
    np.testing.assert_array_equal(mask.numpy(), reference_mask(w.numpy(), n, m, dim))


def test_errors_name_the_fix():
    w = torch.randn(4, 8)
    with pytest.raises(NMConfigError, match="n <= m"):
        nm_mask(w, 5, 4)
    with pytest.raises(NMConfigError, match="at least one"):
        nm_mask(w, 0, 4)
    with pytest.raises(DivisibilityError, match="not divisible by m=3"):
        nm_mask(w, 1, 3)
    with pytest.raises(CompressionError, match="out of range"):
        nm_mask(w, 2, 4, dim=2)
    for cls in (NMConfigError, DivisibilityError):
        assert issubclass(cls, ValueError)


# --- importance criteria ---------------------------------------------------------------------------------


def test_score_ranks_instead_of_magnitude_and_magnitude_score_is_the_default():
    torch.manual_seed(3)
    w = torch.randn(4, 8, 3)
    score = torch.rand(4, 8, 3)
    mask = nm_mask(w, 2, 4, dim=1, score=score)
    np.testing.assert_array_equal(mask.numpy(), reference_mask(score.numpy(), 2, 4, 1))
    assert torch.equal(nm_mask(w, 2, 4, dim=1, score=w.abs()), nm_mask(w, 2, 4, dim=1))
    # ties in the score still go to the lower index, whatever the weights
    assert nm_mask(torch.tensor([[1.0, 5.0, 3.0, 2.0]]), 2, 4, score=torch.ones(1, 4)).tolist() == [[1, 1, 0, 0]]
    with pytest.raises(ShapeMismatchError, match="one importance value per weight"):
        nm_mask(w, 2, 4, score=torch.rand(4, 8))
    with pytest.raises(CompressionError, match="score contains NaN"):
        nm_mask(w, 2, 4, score=torch.full_like(w, float("nan")))


def _taylor_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 4 * 4, 3))


def test_taylor_importance_is_the_accumulated_abs_weight_times_gradient():
    net = _taylor_net()
    bn_free = copy.deepcopy(net)
    x, y = torch.randn(40, 1, 4, 4), torch.randint(0, 3, (40,))
    scores = importance_scores(net, ["2", "5"], "taylor", x, y, batch_size=16)
    # by hand: one backward per batch of 16 (16, 16, 8 images), |w * grad| summed over the batches
    for name in ("2", "5"):
        w = dict(bn_free.named_modules())[name].weight
        ref = torch.zeros_like(w)
        for i in range(0, 40, 16):
            bn_free.zero_grad()
            torch.nn.functional.cross_entropy(bn_free(x[i:i + 16]), y[i:i + 16]).backward()
            ref += (w.detach() * w.grad).abs()
        torch.testing.assert_close(scores[name], ref, rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in net.parameters())  # no .grad left behind
    mags = importance_scores(net, ["2"], "magnitude")
    assert torch.equal(mags["2"], net[2].weight.detach().abs())
    # max_images: only the first images count
    assert torch.equal(importance_scores(net, ["2"], "taylor", x, y, batch_size=16, max_images=16)["2"],
                       importance_scores(net, ["2"], "taylor", x[:16], y[:16], batch_size=16)["2"])


def test_importance_errors_name_the_fix():
    net = _taylor_net()
    with pytest.raises(CompressionError, match="'magnitude', 'taylor'"):
        importance_scores(net, ["2"], "hessian")
    with pytest.raises(CompressionError, match="needs calibration data"):
        importance_scores(net, ["2"], "taylor")
    with pytest.raises(CompressionError, match="not a Conv2d/Linear"):
        importance_scores(net, ["1"], "magnitude")


def test_nm_prune_finetune_with_taylor_importance_prunes_by_the_taylor_score():
    from flow.compress import nm_prune_finetune

    net = _taylor_net()
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))
    scores = importance_scores(copy.deepcopy(net), ["2"], "taylor", x, y, batch_size=64, max_images=32)
    masks = nm_prune_finetune(net, x, y, n=2, m=4, epochs=0, skip=("first", "last"), batch_size=64,
                              importance="taylor", calib_images=32, progress=False)
    assert set(masks) == {"2"}
    assert torch.equal(masks["2"], nm_mask(net[2].weight, 2, 4, score=scores["2"]))
    assert not torch.equal(masks["2"], nm_mask(_taylor_net()[2].weight, 2, 4))  # differs from magnitude here
    assert torch.all(net[2].weight[masks["2"] == 0] == 0)
