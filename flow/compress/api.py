"""Whole-model compression (:func:`compress`) and its honest size accounting (:func:`compression_report`)."""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from flow.finite import check_finite, check_model_finite
from flow.text_table import format_table

from .errors import (
    ChannelDivisibilityError,
    CodebookSizeError,
    CompressionError,
    NMConfigError,
    UnknownLayerError,
    UnsupportedLayerError,
    VectorLengthError,
)
from .flatten import flatten_sources
from .mvq import MVQConv2d, MVQLinear, _check_conv, _CodebookLayer, check_layer_config, mask_bits
from .nm import check_mask_group, check_nm
from .pq import PQConv2d, PQLinear, _layer_inputs
from .spec import LAYER_KEYS, CompressSpec, check_method
from .vecq import VecQConv2d, VecQLinear, check_bits
from .vq import VQConv2d, VQLinear

__all__ = ["compress", "compression_report", "Report", "LayerRow", "plan", "recipe"]


@dataclass(frozen=True)
class LayerPlan:
    """What :func:`compress` will do to one layer (method 'none' = keep it dense)."""

    name: str
    kind: str  # "conv" or "linear"
    method: str
    n: int = 0
    m: int = 0
    k: int = 0
    d: int = 0
    iters: int = 0
    seed: int = 0
    v: int = 0         # pq: subvector length
    K: int = 0         # pq: prototypes per subspace
    bits: int = 0      # vecq: weight bits; pq: LUT bits
    scheme: str = ""   # vecq: 'paper' or 'sweep'
    why: str = ""      # method 'none' by the default sweep for a reason the user should hear (compress warns)
    mask_group: int = 1  # mvq: output channels sharing one N:M pattern (1 for every other method)

    @classmethod
    def dense(cls, name: str, kind: str, why: str = "") -> "LayerPlan":
        """The layer is kept dense (``why``: a reason :func:`compress` warns about)."""
        return cls(name=name, kind=kind, method="none", why=why)


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d / Linear modules in module order (the ones 'first' / 'last' refer to)."""
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]


def _matches(name: str, pattern: str) -> bool:
    # a module name selects itself and everything inside it ("layers.0" skips the whole block)
    return name == pattern or name.startswith(pattern + ".")


def plan(model: nn.Module, spec: CompressSpec | str | None = None, **settings: Any) -> list[LayerPlan]:
    """Resolve and validate the per-layer configuration of :func:`compress` without clustering anything.

    ``spec``: a :class:`CompressSpec`, or a method name, with any setting of it as a keyword
    (``plan(model, "pq", v=9)``; see :meth:`CompressSpec.of`).
    Returns one :class:`LayerPlan` per Conv2d/Linear (method 'none' for layers kept dense).
    Raises every documented error up front, so a bad argument fails in milliseconds.
    """
    spec = CompressSpec.of(spec, **settings)
    cands = _candidates(model)
    listing = ", ".join(name for name, _ in cands) if cands else "(none)"
    skipped = _skipped_layers(model, spec.skipped, cands=cands, listing=listing)
    _check_overrides(model, spec.overrides, cands=cands, listing=listing)
    plans: list[LayerPlan] = []
    for name, mod in cands:
        ov = spec.overrides.get(name)
        kind = "conv" if isinstance(mod, nn.Conv2d) else "linear"
        if ov is None and name in skipped:
            plans.append(LayerPlan.dense(name, kind))
            continue
        cfg = spec.layer_settings()
        cfg.update(ov or {})
        plans.append(_plan_layer(name, kind, mod, cfg=cfg, explicit=ov is not None, clip_k=spec.clip_k))
    return plans


def _skipped_layers(model: nn.Module, skip: tuple, cands: list[tuple[str, nn.Module]], listing: str) -> set[str]:
    """The candidate layers ``skip`` names ('first', 'last', module names and what is inside them)."""
    cand_names = [name for name, _ in cands]
    all_names = {name for name, _ in model.named_modules()}
    skipped: set[str] = set()
    for s in skip:
        if s == "first":
            skipped.update(cand_names[:1])
        elif s == "last":
            skipped.update(cand_names[-1:])
        elif not isinstance(s, str) or s not in all_names or s == "":
            raise UnknownLayerError(f"skip entry {s!r} is not a module of the model: use 'first', 'last' or one of "
                                    f"{listing}")
        else:
            skipped.update(c for c in cand_names if _matches(c, s))
    return skipped


def _check_overrides(model: nn.Module, overrides: Mapping, cands: list[tuple[str, nn.Module]], listing: str) -> None:
    """Every ``overrides`` entry names a Conv2d/Linear of the model and sets only :data:`LAYER_KEYS`."""
    by_name = dict(cands)
    modules = dict(model.named_modules())
    for name, ov in overrides.items():
        if name not in modules or name == "":
            raise UnknownLayerError(f"override {name!r} is not a module of the model: compressible layers are {listing}")
        if name not in by_name:
            raise UnsupportedLayerError(
                f"override {name!r} points to a {type(modules[name]).__name__}: only Conv2d and Linear layers can be "
                f"compressed (compressible layers: {listing})")
        if not isinstance(ov, Mapping):
            raise CompressionError(f"override for {name!r} must be a dict such as dict(k=64), got {ov!r}")
        bad = sorted(set(ov) - set(LAYER_KEYS))
        if bad:
            raise CompressionError(f"override for {name!r} has unknown keys {bad}: use {', '.join(LAYER_KEYS)}")


def _plan_layer(name: str, kind: str, mod: nn.Module, cfg: dict, explicit: bool, clip_k: bool) -> LayerPlan:
    """One layer's plan from its settings ``cfg`` (the spec's, updated by its override when ``explicit``)."""
    lm = cfg["method"]
    if lm == "none":
        return LayerPlan.dense(name, kind)
    check_method(lm, f"layer {name!r}: ")
    if kind == "conv":
        try:
            _check_conv(mod, name)
        except UnsupportedLayerError:
            if explicit:
                raise  # explicitly asked for: say why it cannot be done
            return LayerPlan.dense(name, kind)  # the default sweep leaves grouped/dilated convs dense
    if lm in ("pq", "vecq"):
        return _plan_pq_vecq(name, kind, mod, cfg=cfg, explicit=explicit)
    ln, lmm = cfg["n"], cfg["m"]
    check_nm(ln, lmm)
    if lm == "mvq" and ln >= lmm:
        raise NMConfigError(f"layer {name!r}: method='mvq' needs n < m, got n={ln}, m={lmm}: "
                            f"use method='vq' for a dense codebook")
    if lm == "vq":
        ln = lmm  # dense: the engine's M:M mode
    w = mod.weight
    cin = w.shape[1]
    ld, lk = cfg["d"], cfg["k"]
    nvec = (w.numel() // ld) if isinstance(ld, int) and ld > 0 and cin % ld == 0 else 0
    if clip_k and isinstance(lk, int) and nvec > 0:
        lk = min(lk, nvec)
    check_layer_config(name, cin, n_vectors=nvec, n=ln, m=lmm, k=lk, d=ld)
    g = cfg.get("mask_group", 1) if lm == "mvq" else 1
    check_mask_group(g, int(w.shape[0]), f"layer {name!r}: ")
    return LayerPlan(name=name, kind=kind, method=lm, n=ln, m=lmm, k=lk, d=ld, iters=int(cfg["iters"]),
                     seed=int(cfg["seed"]), mask_group=g)


def _plan_pq_vecq(name: str, kind: str, mod: nn.Module, cfg: dict, explicit: bool) -> LayerPlan:
    """Validate a PQ or VecQ layer.

    The default PQ sweep keeps a layer dense when D % v != 0 and keeps every 1x1 conv dense
    (PQA's ResNet20: the first conv, the 1x1 projection shortcuts and the classifier stay
    dense; 'first'/'last' are the default ``skip``). A layer named in ``overrides`` is PQ'd
    whatever its kernel (``overrides={name: dict(method="pq")}``).
    """
    if cfg["method"] == "vecq":
        try:
            check_bits(cfg["bits"], cfg["vecq_scheme"])
        except CompressionError as e:
            raise type(e)(f"layer {name!r}: {e}") from None
        return LayerPlan(name=name, kind=kind, method="vecq", bits=int(cfg["bits"]), scheme=cfg["vecq_scheme"])
    lv, lK, lb = cfg["v"], cfg["K"], cfg["lut_bits"]
    if not isinstance(lv, int) or lv < 1:
        raise VectorLengthError(f"layer {name!r}: PQ subvector length v={lv!r} must be a positive integer")
    if not isinstance(lK, int) or lK < 2:
        raise CodebookSizeError(f"layer {name!r}: PQ needs K >= 2 prototypes per subspace, got K={lK!r}")
    if lb not in (8, 16):
        raise CompressionError(f"layer {name!r}: lut_bits={lb!r}: the lookup tables are int8 or int16, use 8 or 16")
    if kind == "conv" and tuple(mod.kernel_size) == (1, 1) and not explicit:
        return LayerPlan.dense(name, kind)
    D = mod.weight[0].numel()  # im2col patch length (Cin*kh*kw) or in_features
    if D % lv:
        if explicit:
            raise ChannelDivisibilityError(
                f"layer {name!r}: patch length {D} is not divisible by v={lv}: choose v dividing {D}")
        return LayerPlan.dense(name, kind, why=f"patch length {D}")
    return LayerPlan(name=name, kind=kind, method="pq", iters=int(cfg["iters"]), seed=int(cfg["seed"]), v=lv, K=lK,
                     bits=lb)


def recipe(model: nn.Module, rule) -> dict[str, dict[str, Any]]:
    """Per-layer ``overrides`` for :func:`compress` from a rule over the Conv2d/Linear layers.

    ``rule(name, module) -> dict | None``, e.g. PQ for 3x3 convs and the default method elsewhere::

        compress(model, "mvq", data=x, overrides=recipe(model, lambda n, m: dict(method="pq")
                 if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) else None))
    """
    out: dict[str, dict[str, Any]] = {}
    for name, mod in _candidates(model):
        cfg = rule(name, mod)
        if cfg:
            out[name] = dict(cfg)
    return out


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def compress(
    model: nn.Module,
    spec: CompressSpec | str | None = None,
    *,
    data: Tensor | np.ndarray | tuple | None = None,
    example: Tensor | np.ndarray | None = None,
    **settings: Any,
) -> nn.Module:
    """A deep copy of ``model`` with its Conv2d/Linear layers replaced by MVQ, VQ, PQ or VecQ layers.

    Called as ``compress(model, method="mvq", k=64, ...)``, ``compress(model, "pq", v=9, data=x)`` or
    ``compress(model, CompressSpec(...), data=x)``: ``spec`` is a :class:`CompressSpec` or a method name, and
    the keyword settings are the spec's fields (:meth:`CompressSpec.of`):

        method: 'mvq' (N:M mask + masked k-means, needs n < m), 'vq' (no mask; the layer gets n = m),
            'pq' (activation product quantization with lookup tables; needs ``data``) or 'vecq'
            (b-bit weights, see ``vecq_scheme``).  ``overrides`` may mix methods per layer.
        n, m: keep n of every m consecutive weights along Cin.
        k, d: codebook size and vector length (d % m == 0, Cin % d == 0 for every compressed layer).
        skip: 'first' / 'last' (first / last Conv2d-or-Linear in module order) and/or module names;
            a name also skips every layer inside that module.  Default: ('first', 'last'), except
            method='vecq' with vecq_scheme='paper', which quantizes every Conv2d/Linear as the VecQ
            paper does (:func:`flow.compress.spec.default_skip`); pass ``skip`` explicitly to choose.
        overrides: ``{layer name: dict(method=..., n=..., m=..., k=..., d=..., iters=..., seed=...)}``
            (any of :data:`flow.compress.spec.LAYER_KEYS`); method 'none' keeps a layer dense.  An override
            wins over ``skip``.
        iters, seed: masked k-means iterations and seed (deterministic).
        v, K, lut_bits: PQ subvector length, prototypes per subspace, LUT bits (8 or 16).
        bits: VecQ weight bits (paper scheme 1..7, sweep 2..8).
        vecq_scheme: 'paper' (default: half-integer levels sign * (|z| + 0.5), step = lambda_b * std(w),
            least-squares scale; odd int codes on the engine) or 'sweep' (symmetric levels with zero, the
            step minimising the vector loss exactly); see :mod:`flow.compress.vecq`.
        quantize_codebooks: make every codebook int8 with a per-layer scale (what the engine stores).
        mask_group: MVQ only: ``g`` consecutive output channels ``[g*i, g*i+g)`` share one N:M pattern per
            input position, chosen by the group's summed ``|w|`` (``g`` must divide every MVQ layer's output
            channels; a per-layer override sets another; ``g`` = the engine's ``cols`` aligns a group with a
            column tile); 1 (default) = a pattern per channel, today's MVQ.
        clip_k: use ``min(k, number of vectors)`` per layer instead of raising :class:`CodebookSizeError`.

    Args:
        model: the float model (left untouched).
        data: optional calibration inputs ``x [N, C, H, W]`` (or ``(x, y)``): BatchNorm running statistics
            are re-estimated on them after compression, which recovers much of the accuracy lost to the
            weight change without any training.
        example: an input batch ``[B, C, H, W]`` (default: ``data``'s first image): a MVQ/VQ Linear that reads
            a flattened CxHxW map then cuts its vectors and N:M groups along C (:mod:`flow.compress.flatten`),
            so the engine stores it compressed; without one such a Linear keeps torch's order and is stored
            dense int8 (``quantize_model`` warns).

    Grouped or dilated convolutions are kept dense by the default sweep; naming one in
    ``overrides`` raises :class:`UnsupportedLayerError`.  All errors subclass ValueError.
    """
    spec = CompressSpec.of(spec, **settings)
    check_model_finite(model, "compress(model)")   # NaN / inf refused here, with the tensor's name
    if data is not None:
        check_finite(data[0] if isinstance(data, (tuple, list)) else data, "compress(data=...): calibration images",
                     "remove or repair those images")
    plans = plan(model, spec)
    calib = _calibration_images(data)
    _pq_divisibility(spec.v, plans)
    if any(p.method == "pq" for p in plans) and calib is None:
        raise CompressionError("method 'pq' learns its prototypes from activations: pass data=<calibration "
                               "inputs [N, C, H, W]> (a few hundred training images)")
    if example is None and calib is not None:
        example = calib[:1]
    chw = {}
    if any(p.kind == "linear" and p.method in ("mvq", "vq") for p in plans):
        chw = flatten_sources(model, None if example is None else torch.as_tensor(np.asarray(example)[:1]))
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for p in plans:  # module order: a PQ layer calibrates on the inputs of the model converted so far
        if p.method == "none":
            continue
        mod = modules[p.name]
        new = (_make_pq_vecq(out, mod, p, calib=calib) if p.method in ("pq", "vecq")
               else _make_codebook_layer(mod, p, in_chw=chw.get(p.name)))
        new.to(mod.weight.device)
        if spec.quantize_codebooks and p.method in ("mvq", "vq"):
            new.quantize_codebook_(8)
        new.train(mod.training)
        _set_module(out, p.name, new)
    if calib is not None:
        recalibrate_bn_(out, calib)
    return out


def _calibration_images(data: Tensor | np.ndarray | tuple | None) -> Tensor | None:
    """``compress(data=...)``'s images as a float tensor (``(x, y)`` gives ``x``), or None."""
    if data is None:
        return None
    calib = data[0] if isinstance(data, (tuple, list)) else data
    return (calib if isinstance(calib, Tensor) else torch.from_numpy(np.asarray(calib))).float()


def _make_codebook_layer(mod: nn.Module, p: LayerPlan, in_chw: tuple[int, int, int] | None) -> nn.Module:
    """The MVQ or VQ layer of plan ``p`` for the Conv2d/Linear ``mod`` (``in_chw``: a Linear's flattened map)."""
    common = dict(k=p.k, d=p.d, iters=p.iters, seed=p.seed, name=p.name)
    if p.kind == "conv":
        return (MVQConv2d.from_conv(mod, n=p.n, m=p.m, mask_group=p.mask_group, **common) if p.method == "mvq"
                else VQConv2d.from_conv(mod, m=p.m, **common))
    return (MVQLinear.from_linear(mod, n=p.n, m=p.m, in_chw=in_chw, mask_group=p.mask_group, **common)
            if p.method == "mvq"
            else VQLinear.from_linear(mod, m=p.m, in_chw=in_chw, **common))


class CompressionWarning(UserWarning):
    """A layer asked to be compressed was kept dense (the reason and the fix are in the message)."""


def _pq_divisibility(v: int, plans: list[LayerPlan]) -> None:
    """Say which layers the PQ sweep keeps dense because their patch length is not divisible by v.

    None compressed at all: :class:`ChannelDivisibilityError`.  Some: a :class:`CompressionWarning`
    naming them (pass them in ``skip`` to keep them dense quietly).  Layers the defaults skip
    ('first', 'last', 1x1 convs) are PQA's choice, not a surprise: ``plan`` gives no ``why`` for them.
    """
    lost = [f"{p.name} ({p.why})" for p in plans if p.why]
    if not lost:
        return
    where = ", ".join(lost)
    if not any(p.method != "none" for p in plans):
        raise ChannelDivisibilityError(f"compress(method='pq', v={v}) compresses no layer: {where} not divisible "
                                       f"by v: choose v dividing those lengths")
    warnings.warn(f"compress(method='pq', v={v}) keeps {len(lost)} layer(s) dense, patch length not divisible "
                  f"by v: {where}; choose v dividing them, or pass them in skip= to keep them dense quietly",
                  CompressionWarning, stacklevel=3)


def _make_pq_vecq(model: nn.Module, mod: nn.Module, p: LayerPlan, calib: Tensor | None) -> nn.Module:
    """The PQ or VecQ layer of plan ``p`` for ``mod``; PQ learns its prototypes from ``mod``'s inputs in ``model``
    (the part converted so far) on the calibration images ``calib``."""
    if p.method == "vecq":
        return (VecQConv2d.from_conv(mod, bits=p.bits, scheme=p.scheme) if p.kind == "conv"
                else VecQLinear.from_linear(mod, bits=p.bits, scheme=p.scheme))
    was = model.training
    model.eval()
    x = _layer_inputs(model, mod, calib[:512], batch_size=128)
    model.train(was)
    if p.kind == "conv":
        new = PQConv2d.from_conv(mod, v=p.v, K=p.K, calib_x=x, iters=p.iters, seed=p.seed)
    else:
        new = PQLinear.from_linear(mod, v=p.v, K=p.K, calib_x=x, iters=p.iters, seed=p.seed)
    new.quantize_lut_(p.bits)
    return new


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, x, batch_size: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var on inputs ``x [N, C, H, W]`` (in place)."""
    bns = [mod for mod in model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    x = x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    x = x.float()
    was_training = model.training
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all calibration batches
    model.train()
    device = next(model.parameters()).device
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size].to(device))
    for bn, mom in zip(bns, saved):
        bn.momentum = mom
    model.train(was_training)
    return model


# ----------------------------------------------------------------------------------------------------------
# size accounting


@dataclass
class LayerRow:
    """Stored size of one layer.  ``bits`` maps a component to its bit count:
    weights (dense), indices, masks, codebook, scale, bias, bn."""

    name: str
    type: str
    method: str  # mvq, vq, dense, bn, other
    params: int  # float32 values the uncompressed layer needs
    bits: dict[str, int] = field(default_factory=dict)

    @property
    def total_bits(self) -> int:
        return int(sum(self.bits.values()))

    @property
    def float_bits(self) -> int:
        return 32 * self.params

    @property
    def ratio(self) -> float:
        return self.float_bits / self.total_bits if self.total_bits else float("inf")


_COLUMNS = ("weights", "indices", "masks", "codebook", "lut", "scale", "bias", "bn")
# PQ / VecQ layers name their parts themselves; fold them into the report's columns
_PART_COLUMN = {"prototypes": "codebook", "lut": "lut", "lut_scale": "scale", "weight": "weights", "step": "scale",
                "bias": "bias"}


@dataclass
class Report:
    """Per-layer and whole-model storage of a (compressed) model; see :func:`compression_report`."""

    rows: list[LayerRow]

    @property
    def total_bits(self) -> int:
        return sum(r.total_bits for r in self.rows)

    @property
    def float_bits(self) -> int:
        return sum(r.float_bits for r in self.rows)

    @property
    def ratio(self) -> float:
        """float32 model bits / stored bits."""
        return self.float_bits / self.total_bits if self.total_bits else float("inf")

    def as_dict(self) -> dict:
        return {
            "layers": [dict(name=r.name, type=r.type, method=r.method, params=r.params, bits=dict(r.bits),
                            total_bits=r.total_bits, float_bits=r.float_bits, ratio=r.ratio) for r in self.rows],
            "total_bits": self.total_bits, "float_bits": self.float_bits, "ratio": self.ratio,
        }

    def table(self) -> str:
        """A fixed-width text table: one row per layer, bits per component, size and ratio, then totals."""
        head = ["layer", "type", "method", "params"] + list(_COLUMNS) + ["total bits", "KiB", "ratio"]
        body = []
        for r in self.rows:
            body.append([r.name, r.type, r.method, f"{r.params:,}"] + [f"{r.bits.get(c, 0):,}" if r.bits.get(c) else "-"
                                                                        for c in _COLUMNS]
                        + [f"{r.total_bits:,}", f"{r.total_bits / 8192:.2f}", f"{r.ratio:.2f}x"])
        tot = ["TOTAL", "", "", f"{sum(r.params for r in self.rows):,}"] + \
            [f"{sum(r.bits.get(c, 0) for r in self.rows):,}" for c in _COLUMNS] + \
            [f"{self.total_bits:,}", f"{self.total_bits / 8192:.2f}", f"{self.ratio:.2f}x"]
        return (format_table(head, body, right=range(3, len(head)), footer=[tot])
                + f"\nfloat32 model: {self.float_bits / 8192:.2f} KiB -> stored: {self.total_bits / 8192:.2f} KiB "
                f"(compression {self.ratio:.2f}x)")

    def __str__(self) -> str:
        return self.table()


def compression_report(model: nn.Module, dense_bits: int = 32) -> Report:
    """Count every stored bit of ``model``, layer by layer.

    * MVQ/VQ layer: indices ``n_vectors * ceil(log2 k)``; masks: each N:M group of m
      weights stores its pattern as a rank among the C(m, n) possible ones,
      ``ceil(log2 C(m, n))`` bits per group (2:4 -> 3 bits per 4 weights; a plain
      m-bit bitmap would cost 4), none when n == m; a mask shared by g output channels
      (``mask_group``) stores one pattern per group of g channels and m inputs,
      ``Cout/g * kh*kw*Cin/m`` patterns (:func:`flow.compress.mvq.mask_bits`); codebook ``k * d * 8`` when
      int8-quantized (its bit width in general) or ``k * d * 32`` when float, plus a
      32-bit scale when quantized; bias 32 bits per output channel.
    * Conv2d / Linear kept dense: ``dense_bits`` per weight (default float32; with
      dense_bits < 32 a 32-bit per-layer scale is added), bias 32 bits per channel.
    * BatchNorm: folded scale + shift, ``2 * C * 32`` bits.
    * Any other module with parameters: 32 bits per parameter.

    ``float_bits`` (the reference) counts every value the float32 model needs at 32 bits
    (weights, biases, folded BN).
    """
    if isinstance(dense_bits, bool) or not isinstance(dense_bits, int) or not 1 <= dense_bits <= 32:
        raise CompressionError(f"dense_bits={dense_bits!r}: use an integer in 1..32")
    rows: list[LayerRow] = []
    for name, mod in model.named_modules():
        if isinstance(mod, _CodebookLayer):
            wnum = mod.mask.numel()
            nbias = mod.bias.numel() if mod.bias is not None else 0
            bits = {
                "indices": mod.n_vectors * (math.ceil(math.log2(mod.k)) if mod.k > 1 else 0),
                "masks": mask_bits(wnum, mod.n, mod.m, mod.mask_group),
                "codebook": mod.k * mod.d * (mod.codebook_bits or 32),
                "scale": 32 if mod.codebook_scale is not None else 0,
                "bias": 32 * nbias,
            }
            rows.append(LayerRow(name, type(mod).__name__, method=mod.method, params=wnum + nbias, bits=bits))
        elif hasattr(mod, "stored_bits") and hasattr(mod, "float_bits"):  # PQ and VecQ layers
            method = "pq" if hasattr(mod, "prototypes") else "vecq"
            bits: dict[str, int] = {}
            for part, nbits in mod.stored_bits().items():
                col = _PART_COLUMN.get(part, part)
                bits[col] = bits.get(col, 0) + int(nbits)
            rows.append(LayerRow(name, type(mod).__name__, method=method, params=mod.float_bits() // 32, bits=bits))
        elif isinstance(mod, (nn.Conv2d, nn.Linear)):
            wnum = mod.weight.numel()
            nbias = mod.bias.numel() if mod.bias is not None else 0
            bits = {"weights": wnum * dense_bits, "scale": 32 if dense_bits < 32 else 0, "bias": 32 * nbias}
            rows.append(LayerRow(name, type(mod).__name__, method="dense", params=wnum + nbias, bits=bits))
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            rows.append(LayerRow(name, type(mod).__name__, method="bn", params=2 * mod.num_features,
                                 bits={"bn": 2 * mod.num_features * 32}))
        else:
            own = sum(p.numel() for p in mod.parameters(recurse=False))
            if own:
                rows.append(LayerRow(name, type(mod).__name__, method="other", params=own, bits={"weights": 32 * own}))
    return Report(rows)
