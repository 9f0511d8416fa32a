"""Plain VQ ("And the bit goes down" baseline): MVQ with an all-ones mask.

``VQConv2d`` / ``VQLinear`` are the MVQ classes with ``n == m`` (no pruning),
so every reader of :class:`~flow.compress.mvq.MVQConv2d` handles them too
(``isinstance(layer, MVQConv2d)`` holds; ``layer.n == layer.m``).  ``m`` only
says how the dense vectors are grouped on the engine (M:M is its dense mode);
it defaults to ``d``.
"""
from __future__ import annotations

from torch import nn

from .mvq import MVQConv2d, MVQLinear

__all__ = ["VQConv2d", "VQLinear"]


class VQConv2d(MVQConv2d):
    """VQ Conv2d: ``codebook[indices]`` with no mask (mask buffer all ones, ``n == m``)."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, k: int, d: int, iters: int = 20, seed: int = 0,  # type: ignore[override]
                  m: int | None = None, name: str = "") -> "VQConv2d":
        """Cluster the ``[*, d]`` vectors of ``conv`` (cut along Cin) into ``k`` codewords."""
        m = d if m is None else m
        return super().from_conv(conv, n=m, m=m, k=k, d=d, iters=iters, seed=seed, name=name)  # type: ignore


class VQLinear(MVQLinear):
    """VQ Linear: ``codebook[indices]`` with no mask (mask buffer all ones, ``n == m``)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, k: int, d: int, iters: int = 20, seed: int = 0,  # type: ignore[override]
                    m: int | None = None, name: str = "",
                    in_chw: tuple[int, int, int] | None = None) -> "VQLinear":
        """Cluster the ``[*, d]`` vectors of ``linear`` (cut along its input dimension, or along C of the
        flattened ``in_chw`` map, see :meth:`MVQLinear.from_linear`) into ``k`` codewords."""
        m = d if m is None else m
        return super().from_linear(linear, n=m, m=m, k=k, d=d, iters=iters, seed=seed, name=name,  # type: ignore
                                   in_chw=in_chw)
