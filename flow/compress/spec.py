"""The settings of one compression run: :class:`CompressSpec`, its defaults and its checks in one place.

:func:`flow.compress.compress`, :func:`flow.compress.plan`, ``python -m flow.compress`` and the
build's options (``flow.build.options``) all take their compression settings, defaults and
per-layer keys from here, so a setting is named, defaulted and checked once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import NMConfigError, UnknownMethodError
from .nm import check_mask_group, check_nm

__all__ = ["CompressSpec", "METHODS", "LAYER_KEYS", "DEFAULT_SKIP", "default_skip", "check_method"]

METHODS = ("mvq", "vq", "pq", "vecq")
# the settings an ``overrides`` entry (one layer) may change; the rest hold for the whole model
LAYER_KEYS = ("method", "n", "m", "k", "d", "iters", "seed", "v", "K", "bits", "lut_bits", "vecq_scheme",
              "mask_group")


class _MethodDefault:
    """``skip``'s default: ('first', 'last') kept dense, except VecQ's paper scheme, which quantizes
    every Conv2d/Linear as its paper does (see :func:`default_skip`)."""

    def __repr__(self) -> str:
        return "<method default: ('first', 'last'); () for vecq_scheme='paper'>"


DEFAULT_SKIP = _MethodDefault()


def default_skip(method: str, vecq_scheme: str = "paper") -> tuple[str, ...]:
    """The layers ``skip=DEFAULT_SKIP`` keeps dense: none for VecQ with the paper scheme (every conv and
    linear layer quantized, first and last included), else the first and the last Conv2d/Linear."""
    return () if method == "vecq" and vecq_scheme == "paper" else ("first", "last")


def check_method(method: Any, where: str = "") -> None:
    """Raise :class:`UnknownMethodError` unless ``method`` is one of :data:`METHODS`."""
    if method not in METHODS:
        raise UnknownMethodError(f"{where}unknown method {method!r}: use one of {', '.join(map(repr, METHODS))}")


@dataclass(frozen=True)
class CompressSpec:
    """How to compress a model (see :func:`flow.compress.compress` for what each setting does).

    Building one checks the whole-model settings (the method, VecQ's bits and scheme, MVQ/VQ's
    N:M); settings that depend on a layer (``k``, ``d``, ``v``, ``K``, ``lut_bits`` against its
    shape) are checked by :func:`flow.compress.plan`, which names the layer. ``skip`` is kept as a
    tuple (a single string is one name); ``overrides`` maps a layer name to a dict of
    :data:`LAYER_KEYS` and is treated as read-only.
    """

    method: str = "mvq"
    n: int = 2
    m: int = 4
    k: int = 256
    d: int = 8
    skip: tuple[str, ...] | _MethodDefault = DEFAULT_SKIP
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    iters: int = 20
    seed: int = 0
    clip_k: bool = False
    v: int = 9
    K: int = 16
    bits: int = 4
    lut_bits: int = 8
    vecq_scheme: str = "paper"
    quantize_codebooks: bool = True
    mask_group: int = 1   # mvq: g output channels share one N:M pattern per input position (1: per channel)

    def __post_init__(self) -> None:
        skip = self.skip
        if skip is not DEFAULT_SKIP:
            object.__setattr__(self, "skip", (skip,) if isinstance(skip, str) else tuple(skip or ()))
        object.__setattr__(self, "overrides", dict(self.overrides or {}))
        self._check()

    def _check(self) -> None:
        """The whole-model checks, in the order :func:`flow.compress.plan` has always made them."""
        check_method(self.method)
        if self.method == "vecq":
            from .vecq import check_bits  # vecq imports torch layers; spec stays light for the CLIs

            check_bits(self.bits, self.vecq_scheme)
        if self.method in ("mvq", "vq"):
            check_nm(self.n, self.m)
        if self.method == "mvq" and self.n >= self.m:
            raise NMConfigError(f"method='mvq' needs sparsity, i.e. n < m, got n={self.n}, m={self.m}: "
                                "use method='vq' for dense codebooks")
        check_mask_group(self.mask_group)

    @classmethod
    def of(cls, spec: CompressSpec | str | None = None, **settings: Any) -> CompressSpec:
        """A spec from a spec, a method name or nothing, with ``settings`` (keywords) changed.

        ``of("pq", v=9)``, ``of(method="pq", v=9)`` and ``of(CompressSpec(method="pq"), v=9)`` are the
        same spec. An unknown setting raises TypeError naming it and the known ones.
        """
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"unknown compression setting(s) {', '.join(unknown)}: use "
                            f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        if isinstance(spec, CompressSpec):
            return dataclasses.replace(spec, **settings) if settings else spec
        if spec is not None:
            if "method" in settings:
                raise TypeError(f"method given twice ({spec!r} and method={settings['method']!r}): give it once")
            settings["method"] = spec
        return cls(**settings)

    @property
    def skipped(self) -> tuple[str, ...]:
        """``skip`` with :data:`DEFAULT_SKIP` resolved for this method (:func:`default_skip`)."""
        return default_skip(self.method, self.vecq_scheme) if self.skip is DEFAULT_SKIP else self.skip

    def layer_settings(self) -> dict[str, Any]:
        """The :data:`LAYER_KEYS` settings of this spec (what one layer's ``overrides`` entry updates)."""
        return {key: getattr(self, key) for key in LAYER_KEYS}

