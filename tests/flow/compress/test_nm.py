"""N:M magnitude masks: the N:M property, largest magnitudes kept, ties to the lower index, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flow.compress.errors import CompressionError, DivisibilityError, NMConfigError
from flow.compress.nm import is_nm_sparse, nm_mask

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
