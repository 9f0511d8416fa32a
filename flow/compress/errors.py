"""Errors raised by ``flow.compress``.

Every class subclasses :class:`ValueError` (so callers that catch bad input
generically still work) and every message names the fix.
"""
from __future__ import annotations

__all__ = [
    "CompressionError",
    "NMConfigError",
    "DivisibilityError",
    "ChannelDivisibilityError",
    "VectorLengthError",
    "CodebookSizeError",
    "UnsupportedLayerError",
    "UnknownMethodError",
    "UnknownLayerError",
    "ShapeMismatchError",
]


class CompressionError(ValueError):
    """Base class of every bad-input error in ``flow.compress``."""


class NMConfigError(CompressionError):
    """Invalid N:M pair: n < 1, n > m, or n >= m where sparsity was asked (method 'mvq')."""


class DivisibilityError(CompressionError):
    """A tensor's size along the N:M grouping dimension is not a multiple of m."""


class VectorLengthError(CompressionError):
    """The vector length d is < 1 or not a multiple of m (an N:M group must not straddle two vectors)."""


class ChannelDivisibilityError(CompressionError):
    """A layer's input channel count (Cin / in_features) is not divisible by d."""


class CodebookSizeError(CompressionError):
    """k is < 1 or larger than the number of vectors to cluster."""


class UnsupportedLayerError(CompressionError):
    """A layer asked to be compressed is not a plain Conv2d/Linear (BatchNorm, grouped or dilated conv, ...)."""


class UnknownMethodError(CompressionError):
    """The compression method is not one of the supported names."""


class UnknownLayerError(CompressionError):
    """A name in ``skip`` or ``overrides`` is not a module of the model."""


class ShapeMismatchError(CompressionError):
    """Tensor shapes given to a function do not agree."""
