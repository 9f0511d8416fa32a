"""Fine-tuning of a compressed model through the codebook decoding.

The trainable state of an MVQ/VQ layer is its codebook (and bias); indices and
masks are buffers, so they stay fixed.  Gradients reach a codeword through
every weight that decodes from it (``codebook[indices]`` backpropagates as a
scatter-add), and pruned positions stay exactly zero because the decoded weight
is ``mask * codebook[indices]`` — the mask is applied on every forward, not once.
BatchNorm, biases and uncompressed layers train too.

PQ layers have their own recipe, :func:`pq_finetune` (joint soft training of prototypes and
LUT with an annealed temperature, then the LUT quantized and BatchNorm/biases fine-tuned).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from .api import plan, recalibrate_bn_
from .errors import CompressionError, ShapeMismatchError
from .flatten import flatten_sources, from_hwc, to_hwc, vector_order
from .mvq import _CodebookLayer
from .nm import importance_scores, nm_mask
from .pq import pq_distance_scales, pq_layers, temperature_at

__all__ = ["finetune", "nm_prune_finetune", "requantize_codebooks_", "pq_finetune", "PQTrainSpec"]


def _as_tensor(a) -> Tensor:
    return a if isinstance(a, Tensor) else torch.from_numpy(np.asarray(a))


def requantize_codebooks_(model: nn.Module) -> int:
    """Re-quantize, in place, every codebook that was quantized before (same bit width); returns how many."""
    count = 0
    for mod in model.modules():
        if isinstance(mod, _CodebookLayer) and mod.codebook_scale is not None:
            mod.quantize_codebook_(mod.codebook_bits or 8)
            count += 1
    return count


def finetune(
    model: nn.Module,
    x,
    y,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place on x ``[N, C, H, W]`` float, y ``[N]`` int64 (cross-entropy, Adam); returns it.

    Trains every parameter (codebooks, biases, BatchNorm, uncompressed layers);
    indices and masks are buffers and do not change.  Codebooks that were
    quantized before (``codebook_scale`` set) are re-quantized to the same bit
    width afterwards, so the result is again deployable as int codebooks.
    Deterministic for a seed.  Leaves the model in eval mode.
    """
    x, y = _as_tensor(x).float(), _as_tensor(y).long()
    if x.shape[0] != y.shape[0]:
        raise ShapeMismatchError(f"x has {x.shape[0]} samples but y has {y.shape[0]}: give one label per sample")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise CompressionError(f"epochs={epochs!r}: use a non-negative integer")
    if batch_size < 1 or lr <= 0:
        raise CompressionError(f"batch_size={batch_size}, lr={lr}: both must be positive")
    params = [p for p in model.parameters() if p.requires_grad]
    if epochs == 0 or not params or len(x) == 0:
        model.eval()
        return model
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    # Cosine decay: the codebooks end near a minimum rather than oscillating around it.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss_fn = nn.CrossEntropyLoss()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in tqdm(range(0, len(x), batch_size), desc=f"finetune {ep + 1}/{epochs}", unit="batch",
                      file=sys.stderr, leave=False, disable=not progress):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx].to(device)), y[idx].to(device))
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    requantize_codebooks_(model)
    return model


def nm_prune_finetune(
    model: nn.Module,
    x,
    y,
    n: int = 2,
    m: int = 4,
    epochs: int = 1,
    skip=("first", "last"),
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    importance: str = "magnitude",
    calib_images: int | None = 1024,
    progress: bool = True,
    mask_group: int = 1,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Tensor]:
    """MVQ's first step: N:M-prune the layers MVQ will compress and retrain the survivors (in place).

    The mask of each layer (groups of m along Cin, as MVQ cuts its vectors; along C for a Linear that
    reads a flattened CxHxW map, see :mod:`flow.compress.flatten`) keeps the n
    most important weights of every group and is then fixed; pruned weights are zeroed and
    their gradients masked, so with Adam (no weight decay) they stay exactly zero while the
    kept weights adapt. Masked k-means on the result then clusters weights that already
    work without their pruned neighbours (``compress(model, "mvq", ...)`` of the result
    finds the same masks: the pruned weights are the zeros of each group).
    x [N, C, H, W], y [N].

    ``importance``: ``"magnitude"`` (|w|, the default) or ``"taylor"`` (``sum |w * dL/dw|``
    over the first ``calib_images`` of x, see :func:`flow.compress.nm.importance_scores`).
    ``mask_group``: g output channels share one pattern, chosen by the importance summed over the group
    (:func:`flow.compress.nm.nm_mask` ``group=``); ``overrides``: per-layer settings as in
    :func:`flow.compress.compress` (e.g. ``{"fc": dict(mask_group=2)}`` where g does not divide Cout).
    ``epochs=0`` prunes without retraining. Returns ``{layer name: mask}`` (0/1, the weight's shape).
    """
    plans = plan(model, "mvq", n=n, m=m, k=2, d=m, skip=skip, clip_k=True, mask_group=mask_group,
                 overrides={name: {**ov, "k": 2, "d": m} for name, ov in (overrides or {}).items()})
    modules = dict(model.named_modules())
    names = [p.name for p in plans if p.method != "none"]
    group = {p.name: p.mask_group for p in plans}
    scores = importance_scores(model, names, criterion=importance, x=x, y=y, batch_size=batch_size,
                               max_images=calib_images)
    # a Linear on a flattened map groups along C, as compress() will cut its vectors (flow.compress.flatten)
    chw = flatten_sources(model, _as_tensor(x)[:1]) if len(x) else {}
    masks: dict[str, Tensor] = {}
    hooks = []
    for name in names:
        w = modules[name].weight
        order = vector_order(chw.get(name), w.shape[1], d=m, m=m) if w.dim() == 2 else None
        if order:
            mask = from_hwc(nm_mask(to_hwc(w.detach(), order), n, m, dim=1, group=group[name],
                                    score=to_hwc(scores[name].to(w.device), order)), order).to(w.dtype)
        else:
            mask = nm_mask(w.detach(), n, m, dim=1, score=scores[name].to(w.device), group=group[name]).to(w.dtype)
        with torch.no_grad():
            w.mul_(mask)
        hooks.append(w.register_hook(lambda g, mask=mask: g * mask))
        masks[name] = mask
    try:
        finetune(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():  # exact zeros whatever the optimizer did
        for name, mask in masks.items():
            modules[name].weight.mul_(mask)
    return masks


# ---------------------------------------------------------------------------------------------------------
# PQ: joint training of prototypes and LUT (LUT-NN / PQA), then the LUT quantized and BN/bias fine-tuned


def _bn_and_bias_params(model: nn.Module) -> list[Tensor]:
    """BatchNorm affine parameters and every layer's bias: what the hard phase of :func:`pq_finetune` trains."""
    out, seen = [], set()
    for mod in model.modules():
        cand = []
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            cand = [mod.weight, mod.bias]
        elif isinstance(getattr(mod, "bias", None), nn.Parameter):
            cand = [mod.bias]
        for p in cand:
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _kd_loss(logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """Hinton's distillation term: ``tau^2 KL(softmax(t / tau) || softmax(s / tau))``."""
    return F.kl_div(F.log_softmax(logits / tau, 1), F.log_softmax(teacher_logits / tau, 1), reduction="batchmean",
                    log_target=True) * tau * tau


def _non_negative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CompressionError(f"{name}={value!r}: use a non-negative integer")


@dataclass(frozen=True)
class PQTrainSpec:
    """How :func:`pq_finetune` trains PQ layers (the LUT-NN / PQA recipe); checked when built.

    Joint soft phase: ``epochs`` epochs of ``images_per_epoch`` images (a fresh seeded draw from x each
    epoch; None: all of x), Adam from ``lr`` with cosine decay, batches of ``batch_size``, cross-entropy
    (plus ``kd_weight`` x distillation at temperature ``kd_tau`` from the teacher, when given). The
    assignment's temperature decays geometrically per step from ``t_start`` to ``t_end``; with
    ``relative_temperature`` both are in units of each layer's mean squared distance of a subvector to its
    nearest prototype (:func:`flow.compress.pq.pq_distance_scales`, measured once before training), so
    ``T = 1`` spreads the softmax over the prototypes within one typical quantization error whatever the
    layer's activation scale. ``assignment``: ``"ste"`` (LUT-NN: the forward is the hard lookup, the
    gradient the soft assignment's) or ``"soft"`` (the forward is the soft assignment, exactly the lookup
    once T is small enough; see :meth:`PQConv2d.set_assignment`).

    Hard phase: BatchNorm re-estimated on ``bn_images`` training images, then ``hard_epochs`` epochs at
    ``hard_lr`` training ``hard_params``: ``"bn"`` = BatchNorm affine parameters and biases, ``"all"`` =
    everything. ``seed`` makes the run deterministic.
    """

    epochs: int = 8
    images_per_epoch: int | None = None
    lr: float = 1e-3
    batch_size: int = 64
    t_start: float = 1.0
    t_end: float = 0.03
    relative_temperature: bool = True
    assignment: str = "ste"
    hard_epochs: int = 1
    hard_lr: float = 1e-3
    hard_params: str = "bn"
    bn_images: int = 1024
    kd_weight: float = 0.0
    kd_tau: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        _non_negative_int("epochs", self.epochs)
        _non_negative_int("hard_epochs", self.hard_epochs)
        if self.batch_size < 1 or self.lr <= 0 or self.hard_lr <= 0:
            raise CompressionError(f"batch_size={self.batch_size}, lr={self.lr}, hard_lr={self.hard_lr}: "
                                   "all must be positive")
        if not (self.t_start > 0 and self.t_end > 0):
            raise CompressionError(f"temperatures must be > 0, got t_start={self.t_start}, t_end={self.t_end}")
        if self.assignment not in ("ste", "soft"):
            raise CompressionError(f"assignment={self.assignment!r}: use 'ste' (hard forward, soft gradient) "
                                   "or 'soft'")
        if self.hard_params not in ("bn", "all"):
            raise CompressionError(f"hard_params={self.hard_params!r}: use 'bn' (BatchNorm and biases) or 'all'")

    @classmethod
    def of(cls, spec: PQTrainSpec | None = None, **settings: Any) -> PQTrainSpec:
        """``spec`` (default: the defaults) with ``settings`` changed; an unknown setting raises TypeError."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            raise TypeError(f"unknown PQ training setting(s) {', '.join(unknown)}: use {', '.join(names)}")
        if spec is not None and not isinstance(spec, PQTrainSpec):
            raise TypeError(f"spec must be a PQTrainSpec, got {type(spec).__name__}: pass the settings as keywords")
        return dataclasses.replace(spec, **settings) if spec is not None else cls(**settings)


@dataclass
class _PQRun:
    """The state one :func:`pq_finetune` run hands from step to step."""

    model: nn.Module
    x: Tensor
    y: Tensor
    spec: PQTrainSpec
    teacher: nn.Module | None
    named: list[tuple[str, nn.Module]]   # the PQ layers, by name
    n_img: int                           # images per epoch
    gen: torch.Generator                 # every random draw of the run, in order
    say: Callable[[str], None]
    progress: bool
    hist: dict = field(default_factory=dict)
    t0: float = 0.0                      # wall clock at the start (progress lines)
    scales: dict[str, float] = field(default_factory=dict)
    lut_bits: dict[str, int] = field(default_factory=dict)

    def set_temperature(self, t: float) -> None:
        """Every PQ layer's temperature: ``t`` times its distance scale."""
        for n, m in self.named:
            m.set_temperature(t * self.scales[n])


def pq_finetune(model: nn.Module, x, y, spec: PQTrainSpec | None = None, *, teacher: nn.Module | None = None,
                progress: bool = False, log: Callable[[str], None] | None = None,
                after_soft: Callable[[nn.Module], Any] | None = None, **settings: Any) -> dict:
    """Train a model with PQ layers the way LUT-NN / PQA do; in place; returns a history dict.

    The model comes from ``compress(method="pq", ...)`` (prototypes k-means'd on calibration
    activations). ``spec`` is a :class:`PQTrainSpec`, its settings given as keywords
    (``pq_finetune(model, x, y, epochs=8, hard_epochs=0)``) or both (the keywords win). Two phases:

    1. **Joint soft training** (:func:`_soft_phase`): every parameter trains (prototypes, the
       weights the LUT is derived from, BatchNorm, the layers kept dense); the LUT is float and the
       assignment's temperature anneals (:class:`PQTrainSpec`).
    2. **Hard** (:func:`_harden`, :func:`_hard_phase`): every PQ layer switched to the hard forward at
       ``t_end``, its LUT quantized to its ``lut_bits`` (int8 by default: the format the engine stores),
       BatchNorm statistics re-estimated, then ``hard_epochs`` epochs training only ``hard_params``
       (``"all"``: the LUT fake-quantized straight-through, re-quantized at the end).

    ``teacher``: the float model, for ``kd_weight > 0``. Deterministic for a seed. Leaves the model in
    eval mode (the hard, quantized lookup: what the golden model and the engine compute). The history
    holds the per-layer distance scales, the temperatures, the mean loss per epoch and the seconds per
    phase (CPU seconds of this process too: ``cpu_soft``, ``cpu_hard``). ``after_soft(model)``, when
    given, is called between the phases (model in eval mode: the hard lookup with the float LUT) and its
    result kept as ``history["after_soft"]`` (e.g. a test accuracy). ``log`` receives one line per epoch.
    """
    run = _start_pq_run(model, x, y, spec=PQTrainSpec.of(spec, **settings), teacher=teacher, progress=progress,
                        log=log)
    hist, c0 = run.hist, time.process_time()
    _soften(run)
    if run.spec.epochs:
        _soft_phase(run)
    t1, c1 = time.perf_counter(), time.process_time()
    hist["seconds_soft"], hist["cpu_soft"] = t1 - run.t0, c1 - c0
    if after_soft is not None:
        model.eval()
        hist["after_soft"] = after_soft(model)
        t1, c1 = time.perf_counter(), time.process_time()
    _harden(run)
    if run.spec.hard_epochs:
        _hard_phase(run)
    hist["seconds_hard"], hist["cpu_hard"] = time.perf_counter() - t1, time.process_time() - c1
    model.eval()
    return hist


def _start_pq_run(model: nn.Module, x, y, spec: PQTrainSpec, teacher: nn.Module | None, progress: bool,
                  log: Callable[[str], None] | None) -> _PQRun:
    """Check the inputs against ``spec`` and the model, and set up the run (its clock starts here)."""
    x, y = _as_tensor(x).float(), _as_tensor(y).long()
    if x.shape[0] != y.shape[0]:
        raise ShapeMismatchError(f"x has {x.shape[0]} samples but y has {y.shape[0]}: give one label per sample")
    if spec.kd_weight and teacher is None:
        raise CompressionError("kd_weight > 0 needs a teacher model (the float model)")
    pq_set = set(pq_layers(model))
    named = [(n, m) for n, m in model.named_modules() if m in pq_set]
    if not named:
        raise CompressionError("pq_finetune: the model has no PQConv2d/PQLinear layers; compress it with method='pq'")
    n_img = len(x) if spec.images_per_epoch is None else max(1, min(int(spec.images_per_epoch), len(x)))
    hist = {"epochs": spec.epochs, "hard_epochs": spec.hard_epochs, "images_per_epoch": n_img,
            "assignment": spec.assignment, "t_start": spec.t_start, "t_end": spec.t_end,
            "relative_temperature": spec.relative_temperature, "loss": [], "hard_loss": []}
    return _PQRun(model=model, x=x, y=y, spec=spec, teacher=teacher, named=named, n_img=n_img,
                  gen=torch.Generator().manual_seed(spec.seed), say=log or (lambda msg: None), progress=progress,
                  hist=hist, t0=time.perf_counter())


def _soften(run: _PQRun) -> None:
    """Measure each layer's distance scale, and make its LUT float and its assignment the spec's."""
    x = run.x
    run.scales = (pq_distance_scales(run.model, x[:min(len(x), 256)]) if run.spec.relative_temperature
                  else {n: 1.0 for n, _ in run.named})
    run.hist["distance_scales"] = run.scales
    run.lut_bits = {n: m.lut_bits for n, m in run.named}
    for _, m in run.named:
        m.lut_scale = None  # float LUT while the prototypes and weights move
        m.set_assignment(run.spec.assignment)
    if run.teacher is not None:
        run.teacher.eval()


def _batches(n_img: int, batch_size: int) -> int:
    return (n_img + batch_size - 1) // batch_size


def _soft_phase(run: _PQRun) -> None:
    """Phase 1: every parameter, Adam with cosine decay, the temperature annealed per step."""
    s = run.spec
    opt = torch.optim.Adam([p for p in run.model.parameters() if p.requires_grad], lr=s.lr)
    total_steps = s.epochs * _batches(run.n_img, s.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    _run_epochs(run, s.epochs, opt=opt, sched=sched, tag="soft",
                step_t=lambda k: temperature_at(k, total=total_steps, t_start=s.t_start, t_end=s.t_end))


def _harden(run: _PQRun) -> None:
    """Between the phases: hard forward at ``t_end``, LUT quantized, BatchNorm re-estimated."""
    x = run.x
    run.set_temperature(run.spec.t_end)
    for n, m in run.named:
        m.set_assignment("ste")
        m.quantize_lut_(run.lut_bits[n])
    recalibrate_bn_(run.model, x[torch.randperm(len(x), generator=run.gen)[:min(run.spec.bn_images, len(x))]])


def _hard_phase(run: _PQRun) -> None:
    """Phase 2: ``hard_params`` trained at ``hard_lr`` (cosine) on the hard, quantized lookup."""
    s = run.spec
    with _only_bn_and_bias_trainable(run.model, s.hard_params == "bn"):
        opt = torch.optim.Adam([p for p in run.model.parameters() if p.requires_grad], lr=s.hard_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, s.hard_epochs
                                                                    * _batches(run.n_img, s.batch_size)))
        _run_epochs(run, s.hard_epochs, opt=opt, sched=sched, tag="hard", step_t=None)
    if s.hard_params == "all":  # the LUT trained fake-quantized: quantize it again
        for n, m in run.named:
            m.quantize_lut_(run.lut_bits[n])


@contextmanager
def _only_bn_and_bias_trainable(model: nn.Module, active: bool) -> Iterator[None]:
    """Within the block (when ``active``) only BatchNorm affine parameters and biases train; restored after."""
    frozen = []
    if active:
        keep = {id(p) for p in _bn_and_bias_params(model)}
        for p in model.parameters():
            if p.requires_grad and id(p) not in keep:
                p.requires_grad_(False)
                frozen.append(p)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _run_epochs(run: _PQRun, n_epochs: int, opt, sched, tag: str, step_t: Callable[[int], float] | None) -> None:
    """``n_epochs`` epochs of ``run.n_img`` seeded images; the mean losses go to ``run.hist[...]``
    ('loss' for the soft phase, 'hard_loss' for the hard one), the step count to ``{tag}_steps``."""
    s, x, y = run.spec, run.x, run.y
    losses = run.hist["loss" if tag == "soft" else "hard_loss"]
    step = 0
    for ep in range(n_epochs):
        run.model.train()
        perm = torch.randperm(len(x), generator=run.gen)[:run.n_img]
        total = 0.0
        for i in tqdm(range(0, run.n_img, s.batch_size), desc=f"{tag} {ep + 1}/{n_epochs}", unit="batch",
                      file=sys.stderr, leave=False, disable=not run.progress):
            if step_t is not None:
                run.set_temperature(step_t(step))
            idx = perm[i:i + s.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = _batch_loss(run, x[idx], y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            step += 1
        losses.append(total / run.n_img)
        run.say(f"    {tag} epoch {ep + 1}/{n_epochs}: loss {losses[-1]:.4f}"
                + (f", T {step_t(step - 1):.3g}" if step_t is not None else "")
                + f" [{time.perf_counter() - run.t0:.0f}s]")
    run.hist[f"{tag}_steps"] = step


def _batch_loss(run: _PQRun, xb: Tensor, yb: Tensor) -> Tensor:
    """Cross-entropy, mixed with the teacher's distillation term when ``kd_weight`` is set."""
    s = run.spec
    device = next(run.model.parameters()).device  # the data stays on the CPU; each batch goes where the model is
    xb, yb = xb.to(device), yb.to(device)
    logits = run.model(xb)
    loss = F.cross_entropy(logits, yb)
    if s.kd_weight:
        with torch.no_grad():
            tl = run.teacher(xb)
        loss = (1 - s.kd_weight) * loss + s.kd_weight * _kd_loss(logits, tl, s.kd_tau)
    return loss
