"""N:M pruning masks and the importance scores they rank.

In every group of ``m`` consecutive elements along a dimension, the ``n``
elements of largest importance are kept (the pattern a 2:4 sparse tensor core
or our sparse systolic array executes).  Importance is ``|w|`` by default
(magnitude pruning); :func:`importance_scores` also gives the first-order
Taylor score ``sum over calibration batches of |w * dL/dw|``, passed to
:func:`nm_mask` as ``score``.  Ties go to the lower index, so the mask is a
pure function of the scores — the hardware flow never has to guess.

Shared masks (``group=g``): the ``g`` consecutive output channels ``[g*i, g*i+g)`` (dim 0) share one
pattern per input position, chosen by the group's summed importance (``sum`` of ``|w|`` or of the
score over its ``g`` channels); ``g == 1`` is the per-weight mask, computed exactly as without it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .errors import CompressionError, DivisibilityError, NMConfigError, ShapeMismatchError

__all__ = ["nm_mask", "check_nm", "is_nm_sparse", "importance_scores", "IMPORTANCE", "check_mask_group",
           "is_shared_mask", "MaskGroupError"]

IMPORTANCE = ("magnitude", "taylor")


class MaskGroupError(NMConfigError):
    """A shared-mask group size g is not a positive integer or does not divide the output channels."""


def check_mask_group(g: int, cout: int | None = None, where: str = "") -> None:
    """Raise :class:`MaskGroupError` unless ``g`` is an int >= 1 (and divides ``cout`` when given).

    ``where``: a prefix naming the layer, e.g. ``"layer 'fc': "``.
    """
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise MaskGroupError(f"{where}mask_group={g!r} is invalid: the shared-mask group size must be an integer "
                             f">= 1 (1 = a mask per output channel, e.g. 4 or 8 = the engine's column count)")
    if cout is not None and cout % g:
        fits = [v for v in range(1, cout + 1) if cout % v == 0]
        raise MaskGroupError(f"{where}mask_group={g} does not divide the {cout} output channels: pick g from {fits}, "
                             f"or set a per-layer override, e.g. overrides={{name: dict(mask_group=...)}}")


def is_shared_mask(mask: Tensor, group: int, dim: int = 0) -> bool:
    """True iff the ``group`` consecutive slices ``[g*i, g*i+g)`` of ``mask`` along ``dim`` are all equal."""
    check_mask_group(group, mask.shape[dim])
    m = (mask != 0).movedim(dim, 0)
    m = m.reshape(m.shape[0] // group, group, *m.shape[1:])
    return bool((m == m[:, :1]).all())


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


def nm_mask(weight: Tensor, n: int, m: int, dim: int = 1, score: Tensor | None = None, group: int = 1) -> Tensor:
    """N:M mask of ``weight``: magnitude by default, or by an importance ``score``.

    Args:
        weight: any-shape float tensor; ``weight.shape[dim]`` must be a multiple of ``m``.
        n, m: keep ``n`` of every ``m`` consecutive elements along ``dim`` (``1 <= n <= m``).
        dim: the grouping dimension (1 = Cin for a conv ``[Cout, Cin, kh, kw]`` or a Linear ``[out, in]``).
        score: optional importance of each weight (``weight``'s shape, larger = more important,
            e.g. from :func:`importance_scores`); None ranks by ``|weight|``.
        group: ``g`` consecutive output channels (dim 0, ``[g*i, g*i+g)``) share one pattern, chosen on the
            importance summed over them (``g`` must divide ``weight.shape[0]``; needs ``dim != 0``); 1 = a
            pattern per channel.

    Returns:
        float32 tensor of ``weight.shape`` with 0/1 entries; each group of ``m`` along
        ``dim`` holds exactly ``n`` ones, on the largest ``|w|`` (or ``score``), ties to the
        lower index.  ``n == m`` gives all ones.

    Raises:
        NMConfigError: ``n < 1`` or ``n > m``.
        DivisibilityError: ``weight.shape[dim] % m != 0``.
        ShapeMismatchError: ``score`` is not of ``weight``'s shape.
        MaskGroupError: ``group`` is not an int >= 1 dividing ``weight.shape[0]``.
    """
    check_nm(n, m)
    if weight.dim() == 0:
        raise DivisibilityError("nm_mask needs a tensor with at least one dimension, got a scalar")
    nd = weight.dim()
    if not -nd <= dim < nd:
        raise CompressionError(f"dim={dim} is out of range for a {nd}-d weight; use 0..{nd - 1}")
    dim %= nd
    check_mask_group(group, weight.shape[0])
    if group > 1:
        return _shared_nm_mask(weight, n, m, dim, score, group)
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


def _shared_nm_mask(weight: Tensor, n: int, m: int, dim: int, score: Tensor | None, group: int) -> Tensor:
    """:func:`nm_mask` with ``group > 1``: the pattern of the importance summed over each group of ``group``
    output channels (dim 0), repeated over the group's channels."""
    if dim == 0:
        raise CompressionError("a shared mask groups output channels (dim 0): the N:M dim must be another one")
    if score is not None and (not isinstance(score, Tensor) or tuple(score.shape) != tuple(weight.shape)):
        got = tuple(score.shape) if isinstance(score, Tensor) else type(score).__name__
        raise ShapeMismatchError(f"score shape {got} != weight shape {tuple(weight.shape)}: give one "
                                 f"importance value per weight")
    imp = weight.detach().abs() if score is None else score.detach().to(weight.device)
    if imp.is_floating_point() and torch.isnan(imp).any():
        what = "weight" if score is None else "score"
        raise CompressionError(f"{what} contains NaN: N:M pruning is undefined; fix the {what}s first")
    # [Cout, ...] -> [Cout/g, g, ...] summed over the g channels of each group (float64: exact enough that
    # the pattern maximises the group's summed importance however the sum is ordered)
    summed = imp.to(torch.float64).reshape(weight.shape[0] // group, group, *weight.shape[1:]).sum(1)
    one = nm_mask(summed, n, m, dim=dim, score=summed)  # one pattern per group and input position
    return one.repeat_interleave(group, dim=0).to(torch.float32).contiguous()


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
