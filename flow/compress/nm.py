"""N:M magnitude pruning masks.

In every group of ``m`` consecutive elements along a dimension, the ``n``
elements of largest magnitude are kept (the pattern a 2:4 sparse tensor core
or our sparse systolic array executes).  Ties go to the lower index, so the
mask is a pure function of the tensor — the hardware flow never has to guess.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .errors import CompressionError, DivisibilityError, NMConfigError

__all__ = ["nm_mask", "check_nm", "is_nm_sparse"]


def check_nm(n: int, m: int) -> None:
    """Raise :class:`NMConfigError` unless ``1 <= n <= m`` (both ints)."""
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise NMConfigError(f"n and m must be integers, got n={n!r}, m={m!r}")
    if m < 1:
        raise NMConfigError(f"m={m} is invalid: the group size m must be >= 1 (e.g. m=4)")
    if n < 1:
        raise NMConfigError(f"n={n} is invalid: keep at least one weight per group, use 1 <= n <= m (m={m})")
    if n > m:
        raise NMConfigError(f"n={n} > m={m}: cannot keep more than m weights per group of m; use n <= m")


def nm_mask(weight: Tensor, n: int, m: int, dim: int = 1) -> Tensor:
    """Magnitude N:M mask of ``weight``.

    Args:
        weight: any-shape float tensor; ``weight.shape[dim]`` must be a multiple of ``m``.
        n, m: keep ``n`` of every ``m`` consecutive elements along ``dim`` (``1 <= n <= m``).
        dim: the grouping dimension (1 = Cin for a conv ``[Cout, Cin, kh, kw]`` or a Linear ``[out, in]``).

    Returns:
        float32 tensor of ``weight.shape`` with 0/1 entries; each group of ``m`` along
        ``dim`` holds exactly ``n`` ones, on the largest ``|w|``, ties to the lower index.
        ``n == m`` gives all ones.

    Raises:
        NMConfigError: ``n < 1`` or ``n > m``.
        DivisibilityError: ``weight.shape[dim] % m != 0``.
    """
    check_nm(n, m)
    if weight.dim() == 0:
        raise DivisibilityError("nm_mask needs a tensor with at least one dimension, got a scalar")
    nd = weight.dim()
    if not -nd <= dim < nd:
        raise CompressionError(f"dim={dim} is out of range for a {nd}-d weight; use 0..{nd - 1}")
    dim %= nd
    size = weight.shape[dim]
    if size % m:
        raise DivisibilityError(
            f"size {size} along dim {dim} is not divisible by m={m}: pad the tensor, pick m dividing {size}, "
            f"or leave this layer uncompressed"
        )
    if n == m:
        return torch.ones(weight.shape, dtype=torch.float32, device=weight.device)
    w = weight.detach()
    if w.is_floating_point() and torch.isnan(w).any():
        raise CompressionError("weight contains NaN: N:M magnitude pruning is undefined; fix the weights first")
    # Put the grouping dim last and cut it into groups of m: [..., groups, m].
    mag = w.abs().movedim(dim, -1)
    lead = mag.shape[:-1]
    mag = mag.reshape(*lead, size // m, m)
    # Stable descending sort: equal magnitudes keep their original order, so the
    # lower index wins a tie (topk gives no such guarantee).
    order = torch.sort(mag, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(mag, dtype=torch.float32)
    keep.scatter_(-1, order[..., :n], 1.0)
    return keep.reshape(*lead, size).movedim(-1, dim).contiguous()


def is_nm_sparse(mask: Tensor, n: int, m: int, dim: int = 1) -> bool:
    """True iff ``mask`` (0/1) has exactly ``n`` nonzeros in every group of ``m`` along ``dim``."""
    check_nm(n, m)
    if mask.shape[dim] % m:
        return False
    g = (mask != 0).movedim(dim, -1)
    g = g.reshape(*g.shape[:-1], g.shape[-1] // m, m).sum(-1)
    return bool((g == n).all())
