"""N:M pruning masks and the importance scores they rank.

In every group of ``m`` consecutive elements along a dimension, the ``n``
elements of largest importance are kept (the pattern a 2:4 sparse tensor core
or our sparse systolic array executes).  Importance is ``|w|`` by default
(magnitude pruning); :func:`importance_scores` also gives the first-order
Taylor score ``sum over calibration batches of |w * dL/dw|``, passed to
:func:`nm_mask` as ``score``.  Ties go to the lower index, so the mask is a
pure function of the scores — the hardware flow never has to guess.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .errors import CompressionError, DivisibilityError, NMConfigError, ShapeMismatchError

__all__ = ["nm_mask", "check_nm", "is_nm_sparse", "importance_scores", "IMPORTANCE"]

IMPORTANCE = ("magnitude", "taylor")


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


def nm_mask(weight: Tensor, n: int, m: int, dim: int = 1, score: Tensor | None = None) -> Tensor:
    """N:M mask of ``weight``: magnitude by default, or by an importance ``score``.

    Args:
        weight: any-shape float tensor; ``weight.shape[dim]`` must be a multiple of ``m``.
        n, m: keep ``n`` of every ``m`` consecutive elements along ``dim`` (``1 <= n <= m``).
        dim: the grouping dimension (1 = Cin for a conv ``[Cout, Cin, kh, kw]`` or a Linear ``[out, in]``).
        score: optional importance of each weight (``weight``'s shape, larger = more important,
            e.g. from :func:`importance_scores`); None ranks by ``|weight|``.

    Returns:
        float32 tensor of ``weight.shape`` with 0/1 entries; each group of ``m`` along
        ``dim`` holds exactly ``n`` ones, on the largest ``|w|`` (or ``score``), ties to the
        lower index.  ``n == m`` gives all ones.

    Raises:
        NMConfigError: ``n < 1`` or ``n > m``.
        DivisibilityError: ``weight.shape[dim] % m != 0``.
        ShapeMismatchError: ``score`` is not of ``weight``'s shape.
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
    if score is not None:
        if not isinstance(score, Tensor) or tuple(score.shape) != tuple(weight.shape):
            got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
            raise ShapeMismatchError(f"score shape {got} != weight shape {tuple(weight.shape)}: give one "
                                     f"importance value per weight")
        w = score.detach().to(weight.device)
        what = "score"
    else:
        w = weight.detach().abs()
        what = "weight"
    if w.is_floating_point() and torch.isnan(w).any():
        raise CompressionError(f"{what} contains NaN: N:M pruning is undefined; fix the {what}s first")
    # Put the grouping dim last and cut it into groups of m: [..., groups, m].
    mag = w.movedim(dim, -1)
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


def importance_scores(model: nn.Module, names, criterion: str = "magnitude", x=None, y=None,
                      batch_size: int = 64, max_images: int | None = 1024) -> dict[str, Tensor]:
    """Per-weight importance of the Conv2d/Linear modules ``names`` of ``model``, for :func:`nm_mask`.

    ``criterion``:

    * ``"magnitude"``: ``|w|`` (what ``nm_mask`` uses without a score; x, y unused).
    * ``"taylor"``: first-order Taylor estimate of the loss change when a weight is removed,
      accumulated on calibration data: ``sum over batches b of |w * dL_b/dw|`` with the
      cross-entropy ``L_b`` of batch b (mean over the batch).  x ``[N, C, H, W]`` float and
      y ``[N]`` int64 are required; the first ``max_images`` (None = all) are used, in order.
      The model runs in eval mode (BatchNorm statistics are not touched); gradients come
      from ``torch.autograd.grad``, so no ``.grad`` field changes.

    Returns ``{name: score}`` (float32, the weight's shape, on the CPU).

    Raises:
        CompressionError: unknown criterion, missing data, or a name that is not a Conv2d/Linear.
    """
    if criterion not in IMPORTANCE:
        raise CompressionError(f"unknown importance criterion {criterion!r}: use one of "
                               f"{', '.join(map(repr, IMPORTANCE))}")
    modules = dict(model.named_modules())
    names = list(names)
    for name in names:
        mod = modules.get(name)
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            raise CompressionError(f"{name!r} is not a Conv2d/Linear module of the model "
                                   f"(got {type(mod).__name__ if mod is not None else 'nothing'})")
    weights = {name: modules[name].weight for name in names}
    if criterion == "magnitude":
        return {name: w.detach().abs().float().cpu() for name, w in weights.items()}
    if x is None or y is None:
        raise CompressionError("importance 'taylor' needs calibration data: pass x [N, C, H, W] and y [N]")
    x = x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    y = y if isinstance(y, Tensor) else torch.from_numpy(np.asarray(y))
    x, y = x.float(), y.long()
    if max_images is not None:
        x, y = x[:max_images], y[:max_images]
    if len(x) == 0 or len(x) != len(y):
        raise CompressionError(f"importance 'taylor' needs as many labels as images and at least one image, "
                               f"got x {tuple(x.shape)}, y {tuple(y.shape)}")
    device = next(model.parameters()).device
    acc = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            grads = torch.autograd.grad(
                nn.functional.cross_entropy(model(x[i:i + batch_size].to(device)), y[i:i + batch_size].to(device)),
                list(weights.values()), allow_unused=True)
            for (name, w), g in zip(weights.items(), grads):
                if g is not None:
                    acc[name] += (w.detach() * g).abs().float()
    finally:
        model.train(was_training)
    return {name: a.cpu() for name, a in acc.items()}
