"""VecQ: per-layer b-bit weights, as the paper defines them or with the exact vector-loss step.

Reference: C. Gong, Y. Chen, Y. Lu, T. Li, C. Hao, D. Chen, "VecQ: Minimal Loss
DNN Model Compression With Vectorized Weight Quantization", IEEE Transactions
on Computers, 2020 (arXiv:2005.08501).

Two schemes (``scheme=`` on the layers, ``vecq_scheme=`` in :func:`flow.compress.compress`):

``"paper"`` (the default): VecQ as its paper defines it.

* Levels: ``sign * (|z| + 0.5)``, |z| = 0 .. 2^(b-1) - 1: 2^b half-integer levels, no
  zero (1 bit: +-0.5, i.e. binary weights).
* Step: ``step = lambda_b * std(w)`` (population std of the layer's whole weight tensor)
  with the paper's table ``lambda_b`` = 1.0000, 0.9957, 0.5860, 0.3352, 0.1881, 0.1041,
  0.0569, 0.0308 for b = 1..8 (the optimal uniform step of a unit Gaussian).
* Assignment: the nearest level, ``l = clamp(floor(w / step), -2^(b-1), 2^(b-1) - 1) + 0.5``
  (an exact tie ``w / step`` = integer goes up). ``q = step * l``.
* Scale: the least-squares ``alpha = <w, q> / <q, q>``; the weight is ``alpha * q``.
* Engine: ``2 l`` is an odd integer in +-(2^b - 1), so the layer is stored as odd int
  codes ``o = 2 l`` with one scale ``alpha * step / 2`` (half-integer levels are odd
  integers at twice the resolution) and runs on the dense int8 mode unchanged. That
  needs ``2^b - 1 <= 127``: b = 1..7; b = 8 (odd codes up to +-255, 9 bits) is refused.
* Training: straight-through (identity gradient, also for clamped weights); step and
  alpha are recomputed from the current weights on every training forward (both are
  O(n)).

``"sweep"``: symmetric levels with zero and the step that minimises the vector loss
exactly (this module's original scheme, kept as an option). VecQ treats a layer's
whole weight tensor as one vector ``w`` and measures the quantization loss as a
*vector* loss: the orientation error plus the modulus error between ``w`` and its
quantized version ``q``. We use the normalised form

    J(w, q) = J_angle + J_modulus
    J_angle   = 1 - <w, q> / (||w|| ||q||)
    J_modulus = (||w|| - ||q||)^2 / ||w||^2

(dividing by ``||w||^2`` makes ``J`` scale invariant, ``J(c w, c step) = J(w, step)``,
so one number means the same thing for every layer). ``q = 0`` (every weight rounded
to zero) is defined as ``J = 2``: no direction (cos := 0) and the whole modulus lost.

Quantizer: ``q(w; step) = step * clamp(round(w / step), -L, L)`` with
``L = 2^(b-1) - 1`` (symmetric, ``2^b - 1`` levels, no zero point, so the engine's
dense mode multiplies int8 codes directly), round half to even (numpy/torch); b = 2..8.

Finding the step. For a fixed step the integer codes ``z`` are fixed between
*breakpoints* ``|w_i| / (j + 0.5)`` (j = 0..L-1), where one code changes by one.
On such an interval ``cos(w, q) = cos(w, z)`` is constant and ``J_modulus`` is a
convex parabola in the step with minimum at ``||w|| / ||z||``; so the exact global
minimum is found by sweeping the breakpoints in order, updating ``<|w|, |z|>`` and
``||z||^2`` incrementally, and minimising the parabola on every interval
(:func:`optimal_step`). When there are too many breakpoints (large layers at
7..8 bits) a dense geometric grid locates the best basins first and the exact
sweep runs only inside them. Every returned step is re-checked with the real
quantizer. When the step is updated during training: see :attr:`VecQConv2d.step_every`.

Both schemes give the engine ``int_weight() -> (int8 codes, one float scale)`` with
``codes * scale`` exactly the eval-mode weight.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .errors import CompressionError, ShapeMismatchError, UnsupportedLayerError

__all__ = [
    "BitWidthError",
    "VecQConv2d",
    "VecQLinear",
    "vecq_loss",
    "step_loss",
    "quantize_codes",
    "optimal_step",
    "paper_quantize",
    "conv_padding",
    "check_bits",
    "check_scheme",
    "SCHEMES",
    "LAMBDA",
    "BITS_RANGE",
    "MIN_BITS",
    "MAX_BITS",
]

SCHEMES = ("paper", "sweep")
# The paper's step table: step = LAMBDA[b] * std(w) (the optimal uniform quantizer of a unit Gaussian).
LAMBDA = {1: 1.0000, 2: 0.9957, 3: 0.5860, 4: 0.3352, 5: 0.1881, 6: 0.1041, 7: 0.0569, 8: 0.0308}
# Bit widths each scheme can run on the int8 engine: paper codes are odd ints up to +-(2^b - 1).
BITS_RANGE = {"paper": (1, 7), "sweep": (2, 8)}
MIN_BITS, MAX_BITS = 1, 8  # over both schemes
# Above this many breakpoints (n_weights * L) the exact sweep runs only inside the
# basins found by a grid: 2M breakpoints ~ 100 MB of float64 temporaries.
_FULL_SWEEP_MAX = 1 << 21
_GRID_POINTS = 2048
_GRID_BASINS = 3


class BitWidthError(CompressionError):
    """A bit width is outside the range the format supports (VecQ weights: paper 1..7, sweep 2..8; PQ LUT: 8 or 16)."""


def check_scheme(scheme: str) -> str:
    """Return ``scheme`` if it is 'paper' or 'sweep', else raise :class:`CompressionError`."""
    if scheme not in SCHEMES:
        raise CompressionError(f"vecq scheme {scheme!r} is unknown: use 'paper' (half-integer levels, "
                               f"lambda * std step, least-squares scale) or 'sweep' (symmetric levels, "
                               f"exact vector-loss step)")
    return scheme


def check_bits(bits: int, scheme: str = "paper") -> int:
    """``bits`` if it is an int the scheme supports (paper 1..7, sweep 2..8), else raise :class:`BitWidthError`."""
    lo, hi = BITS_RANGE[check_scheme(scheme)]
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise BitWidthError(f"bits must be an integer in {lo}..{hi} (vecq scheme {scheme!r}), got {bits!r}")
    if scheme == "paper" and bits == 8:
        raise BitWidthError("bits=8 is unsupported with vecq scheme 'paper': its 256 half-integer levels are the "
                            "odd codes +-1..+-255 (9 bits), wider than the engine's int8 weights; use bits <= 7, "
                            "or vecq_scheme='sweep' for 8-bit symmetric codes")
    if not lo <= bits <= hi:
        raise BitWidthError(
            f"bits={bits} is unsupported: VecQ weights with scheme {scheme!r} are {lo}..{hi} bits "
            f"(int8 storage on the systolic array); pick bits in that range"
        )
    return int(bits)


def _levels(bits: int) -> int:
    """Largest code magnitude L = 2^(b-1) - 1 (symmetric grid, 2^b - 1 levels)."""
    return (1 << (bits - 1)) - 1


def paper_quantize(w: np.ndarray | Tensor, bits: int) -> tuple[np.ndarray, float, float]:
    """The paper's VecQ quantizer in float64: ``(odd codes, step, alpha)``.

    ``step = LAMBDA[bits] * std(w)`` (population std; for constant ``w``: max|w|, or 1
    for all-zero ``w``), level ``l = clamp(floor(w / step), -2^(b-1), 2^(b-1)-1) + 0.5``,
    ``q = step * l``, ``alpha = <w, q> / <q, q>``. Returns the odd int64 codes
    ``o = 2 l`` (shape of ``w``), so the quantized weight is ``alpha * step / 2 * o``.
    The layers compute the same in torch with a float32 step; this function is the
    reference form (no float32 rounding).
    """
    bits = check_bits(bits, "paper")
    if isinstance(w, Tensor):
        w = w.detach().cpu().double().numpy()
    w = np.asarray(w, np.float64)
    if w.size == 0 or not np.isfinite(w).all():
        raise ValueError("paper_quantize: w is empty or has NaN/inf; fix the weights before quantizing")
    std = float(w.std())
    step = LAMBDA[bits] * std if std > 0 else (float(np.abs(w).max()) or 1.0)
    half = 1 << (bits - 1)
    o = 2 * np.clip(np.floor(w / step), -half, half - 1).astype(np.int64) + 1
    q = step * o / 2
    alpha = float((w.ravel() @ q.ravel()) / (q.ravel() @ q.ravel()))
    return o, float(step), alpha


# ----------------------------------------------------------------------------- loss


def vecq_loss(w: np.ndarray, q: np.ndarray) -> float:
    """VecQ vector loss ``J = (1 - cos(w, q)) + (||w|| - ||q||)^2 / ||w||^2`` (float64).

    ``w``, ``q``: same-shape arrays (flattened). ``q == 0`` gives 2.0; ``w == 0`` gives 0.0
    when ``q == 0`` too (nothing to lose), else raises (the loss is undefined).
    """
    w = np.asarray(w, np.float64).ravel()
    q = np.asarray(q, np.float64).ravel()
    if w.shape != q.shape:
        raise ShapeMismatchError(f"vecq_loss: w has {w.size} elements, q has {q.size}; pass the same shape")
    nw, nq = float(np.linalg.norm(w)), float(np.linalg.norm(q))
    if nw == 0.0:
        if nq == 0.0:
            return 0.0
        raise ValueError("vecq_loss: w is all zeros but q is not; the vector loss is undefined for ||w|| = 0")
    if nq == 0.0:
        return 2.0
    return 1.0 - float(w @ q) / (nw * nq) + (nw - nq) ** 2 / nw**2


def quantize_codes(w: np.ndarray, step: float, bits: int) -> np.ndarray:
    """Integer codes ``clamp(round(w / step), -L, L)`` as int64 (round half to even)."""
    L = _levels(check_bits(bits, "sweep"))
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    return np.clip(np.round(np.asarray(w, np.float64) / step), -L, L).astype(np.int64)


def step_loss(w: np.ndarray, step: float, bits: int) -> float:
    """``J(w, q(w; step))`` for the symmetric ``bits``-bit quantizer (float64)."""
    return vecq_loss(w, step * quantize_codes(w, step, bits))


# ----------------------------------------------------------------------------- step search


def _sweep(a: np.ndarray, nw: float, L: int, s_lo: float, s_hi: float) -> list[float]:
    """Exact minimisation of J over steps in the open window (s_lo, s_hi).

    a: |w| of the nonzero weights, float64 [n]. Returns candidate steps (the best
    interior point of the best few code intervals), to be verified by the caller.
    """
    # Codes on the interval just below s_hi: floor(a/s + 0.5) is the limit of
    # round(a/s) as s decreases to s_hi (a half-way tie resolves upward there).
    z_hi = np.minimum(np.floor(a / s_hi + 0.5), L)
    # Breakpoint j (code j -> j+1) of weight i sits at a_i / (j + 0.5); those inside
    # the window have j from z_hi to the last one still above s_lo.
    if s_lo > 0:
        j_last = np.minimum(np.ceil(a / s_lo - 0.5) - 1, L - 1)
    else:
        j_last = np.full_like(a, L - 1)
    count = np.maximum(j_last - z_hi + 1, 0).astype(np.int64)
    total = int(count.sum())
    owner = np.repeat(np.arange(a.size), count)
    start = np.repeat(np.cumsum(count) - count, count)
    j = z_hi[owner] + (np.arange(total) - start)
    bp = a[owner] / (j + 0.5)
    # Sweep from large steps to small ones. The order among equal breakpoints does not
    # matter: the states between them live on zero-width intervals, which are dropped.
    order = np.argsort(-bp)
    bp, owner, j = bp[order], owner[order], j[order]
    # State per interval: <|w|, |z|> and ||z||^2, before and after each crossing.
    wz = float(a @ z_hi) + np.concatenate([[0.0], np.cumsum(a[owner])])
    zz = float(z_hi @ z_hi) + np.concatenate([[0.0], np.cumsum(2.0 * j + 1.0)])
    hi = np.concatenate([[s_hi], bp])
    lo = np.concatenate([bp, [s_lo]])
    ok = (hi > lo) & (zz > 0)  # empty intervals (equal breakpoints) and q == 0 carry no candidate
    if not ok.any():
        return []
    hi, lo, wz, zz = hi[ok], lo[ok], wz[ok], zz[ok]
    nz = np.sqrt(zz)
    # Interior nudge: an endpoint itself is a breakpoint where rounding flips, so
    # stay strictly inside by a hair (relative 1e-10 of the interval, >= 64 ulps).
    d = np.maximum((hi - lo) * 1e-10, 64 * np.finfo(np.float64).eps * hi)
    s = np.clip(nw / nz, lo + d, hi - d)
    s = np.where(lo + d >= hi - d, 0.5 * (lo + hi), s)
    J = 1.0 - wz / (nw * nz) + (nw - s * nz) ** 2 / nw**2
    best = np.argsort(J, kind="stable")[:4]
    return [float(x) for x in s[best]]


def _grid_losses(a_sorted: np.ndarray, nw: float, L: int, steps: np.ndarray) -> np.ndarray:
    """J at many steps at once from the sorted |w| and prefix sums (O(G L log n))."""
    n = a_sorted.size
    prefix = np.concatenate([[0.0], np.cumsum(a_sorted)])
    edges = steps[:, None] * (np.arange(L) + 0.5)[None, :]  # [G, L]: code j -> j+1 above edge j
    above = n - np.searchsorted(a_sorted, edges, side="right")  # weights past each edge
    wz = (prefix[n] - prefix[n - above]).sum(1)
    zz = (above * (2.0 * np.arange(L) + 1.0)[None, :]).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        nz = np.sqrt(zz)
        J = 1.0 - wz / (nw * nz) + (nw - steps * nz) ** 2 / nw**2
    return np.where(zz > 0, J, 2.0)


def optimal_step(w: np.ndarray | Tensor, bits: int) -> float:
    """The step minimising the VecQ loss ``J(w, q(w; step))`` over all steps > 0.

    Args:
        w: weights, any shape (flattened; float64 internally).
        bits: 2..8.

    Returns:
        the step (float, > 0). Steps >= 2 max|w| quantize everything to 0 (J = 2),
        so the optimum always lies in (0, 2 max|w|). All-zero ``w`` returns 1.0
        (any step is exact).

    Raises:
        BitWidthError: ``bits`` outside 2..8.
        ValueError: ``w`` has NaN/inf or is empty.
    """
    bits = check_bits(bits, "sweep")
    if isinstance(w, Tensor):
        w = w.detach().cpu().double().numpy()
    w = np.asarray(w, np.float64).ravel()
    if w.size == 0:
        raise ValueError("optimal_step: w is empty; a layer needs at least one weight")
    if not np.isfinite(w).all():
        raise ValueError("optimal_step: w has NaN or inf; fix the weights before quantizing")
    L = _levels(bits)
    a = np.abs(w[w != 0])  # zeros quantize to 0 at every step: they never move J
    if a.size == 0:
        return 1.0
    nw = float(np.linalg.norm(a))
    top = 2.0 * float(a.max()) * (1 + 1e-9)  # above every breakpoint: q == 0

    candidates: list[float] = []
    if a.size * L <= _FULL_SWEEP_MAX:
        candidates += _sweep(a, nw, L, s_lo=0.0, s_hi=top)
    else:
        # Geometric grid from deep saturation (step << max|w| / L) up to q == 0,
        # then the exact sweep inside the windows around the best grid points.
        lo_s = float(a.max()) / (L + 0.5) * 1e-3
        steps = np.geomspace(lo_s, top, _GRID_POINTS)
        J = _grid_losses(np.sort(a), nw, L, steps=steps)
        for g in np.argsort(J, kind="stable")[:_GRID_BASINS]:
            win_lo = float(steps[g - 1]) if g > 0 else 0.0
            win_hi = float(steps[g + 1]) if g + 1 < steps.size else top
            candidates += _sweep(a, nw, L, s_lo=win_lo, s_hi=win_hi)
            candidates.append(float(steps[g]))
    # Verify with the real quantizer (rounding ties at breakpoints, float error).
    best_s, best_J = top / 4, math.inf
    for s in candidates:
        Js = step_loss(w, s, bits)
        if Js < best_J:
            best_s, best_J = s, Js
    return float(best_s)


# ----------------------------------------------------------------------------- layers


def conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """``conv.padding`` as an explicit (ph, pw) tuple ('valid' -> 0, 'same' -> (k-1)/2).

    Raises :class:`UnsupportedLayerError` for 'same' padding that is not symmetric
    (even kernel), which the engine's single ``pad`` field cannot express.
    """
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        kh, kw = conv.kernel_size
        if (kh - 1) % 2 or (kw - 1) % 2:
            raise UnsupportedLayerError(
                f"padding='same' with kernel {conv.kernel_size} pads asymmetrically; use an odd kernel "
                f"or explicit integer padding"
            )
        return ((kh - 1) // 2, (kw - 1) // 2)
    return tuple(int(p) for p in conv.padding)  # type: ignore[return-value]


def check_plain_conv(conv: nn.Module, who: str) -> None:
    """Raise :class:`UnsupportedLayerError` unless ``conv`` is a dense, undilated, zero-padded Conv2d."""
    if not isinstance(conv, nn.Conv2d):
        raise UnsupportedLayerError(f"{who} needs an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1:
        raise UnsupportedLayerError(f"{who}: grouped conv (groups={conv.groups}) is not supported; keep it dense")
    if tuple(conv.dilation) != (1, 1):
        raise UnsupportedLayerError(f"{who}: dilated conv (dilation={conv.dilation}) is not supported; keep it dense")
    if conv.padding_mode != "zeros":
        raise UnsupportedLayerError(
            f"{who}: padding_mode={conv.padding_mode!r} is not supported; the engine pads with zeros"
        )


class _VecQMixin:
    """What VecQConv2d and VecQLinear share: the float weight and bias, the copy from a trained layer,
    ``bits``, ``scheme``, the ``step`` (and paper ``alpha``) buffers, straight-through, codes and sizes;
    the layers add only their geometry, ``forward`` and ``extra_repr``."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    step: Tensor

    def _init_layer(self, shape: tuple[int, ...], bias: bool, bits: int, step_every: int | None, scheme: str,
                    init_step: bool) -> None:
        """The float ``weight`` of ``shape`` (kaiming-uniform, as torch's Conv2d/Linear), a zero bias of
        ``shape[0]`` when ``bias``, the VecQ state and, when ``init_step``, its grid."""
        self.weight = nn.Parameter(torch.empty(*shape))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(shape[0])) if bias else None
        self._init_vecq(bits, step_every, scheme)
        if init_step:  # from_conv/from_linear set it once, from the copied weights
            self.refresh_step()

    @classmethod
    def _copy_float(cls, src: nn.Module, geometry: dict, bits: int, step_every: int | None, scheme: str):
        """A ``cls`` of ``geometry`` (its constructor's shape arguments) holding ``src``'s weight and bias, on
        ``src``'s device and dtype, with the scheme's grid set from them."""
        check_bits(bits, scheme)
        m = cls(**geometry, bias=src.bias is not None, bits=bits, step_every=step_every, scheme=scheme,
                _init_step=False)
        m = m.to(device=src.weight.device, dtype=src.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(src.weight)
            if src.bias is not None:
                m.bias.copy_(src.bias)
        m.refresh_step()
        return m

    def _init_vecq(self, bits: int, step_every: int | None, scheme: str) -> None:
        self.scheme = check_scheme(scheme)
        self.bits = check_bits(bits, scheme)
        if step_every is None:
            step_every = 1 if scheme == "paper" else 50
        if isinstance(step_every, bool) or not isinstance(step_every, int) or step_every < 0:
            raise ValueError(f"step_every must be an int >= 0 (0 = frozen step), got {step_every!r}")
        self.step_every = step_every
        self._train_forwards = 0
        self._stale = False  # weights trained since the last refresh_step
        self.register_buffer("step", torch.ones(()))  # type: ignore[attr-defined]
        if scheme == "paper":  # the least-squares scale (sweep state dicts keep their old layout)
            self.register_buffer("alpha", torch.ones(()))  # type: ignore[attr-defined]

    @property
    def levels(self) -> int:
        """Largest code magnitude of :meth:`int_weight`: sweep ``2^(b-1) - 1``, paper ``2^b - 1`` (odd codes)."""
        return (1 << self.bits) - 1 if self.scheme == "paper" else _levels(self.bits)

    def _codes(self, w: Tensor, step: Tensor) -> Tensor:
        """The integer codes (in ``w``'s dtype) of ``w`` on the grid of ``step``: sweep
        ``clamp(round(w / step), -L, L)``; paper the odd ``2 clamp(floor(w / step), -2^(b-1), 2^(b-1)-1) + 1``."""
        step = step.to(w.dtype)
        if self.scheme == "paper":
            half = 1 << (self.bits - 1)
            return 2 * torch.clamp(torch.floor(w / step), -half, half - 1) + 1
        return torch.clamp(torch.round(w / step), -self.levels, self.levels)

    def _unit(self) -> Tensor:
        """The weight of one code step (``codes * unit`` is the weight): sweep ``step``, paper ``alpha * step / 2``."""
        if self.scheme == "paper":
            return self.alpha * self.step * 0.5
        return self.step

    @torch.no_grad()
    def refresh_step(self) -> float:
        """Recompute the grid from the current weight (the scheme's rule); return the step.

        Paper: ``step = LAMBDA[b] * std(w)`` and the least-squares ``alpha = <w, q> / <q, q>``
        (``q = step * codes / 2``), both in float64 and stored as float32; alpha is computed
        with the float32 step and the codes the layer really uses, so it is exactly the
        least-squares scale of the stored grid (up to its float32 rounding).

        Sweep: the VecQ optimum (:func:`optimal_step`). The optimum can sit a hair inside a
        code interval, closer to its edge than the buffer's precision (float32: 6e-8
        relative); rounding it could cross the edge and change codes. So the few
        representable steps around it are scored with the codes the layer will really use
        (``round(w / step)`` in the weight's dtype) and the best one is stored.
        """
        w = self.weight.detach()
        if self.scheme == "paper":
            w64 = w.double()
            std = float(torch.sqrt(((w64 - w64.mean()) ** 2).mean()))  # population std, as numpy's
            step = LAMBDA[self.bits] * std if std > 0 else (float(w64.abs().max()) or 1.0)
            self.step.fill_(step)
            o = self._codes(w, self.step).double()
            q = float(self.step) * 0.5 * o
            self.alpha.fill_(float((w64 * q).sum() / (q * q).sum()))
            self._stale = False
            return float(self.step)
        w64 = w.double().cpu().numpy()
        best = torch.tensor(optimal_step(w64, self.bits), dtype=self.step.dtype, device=self.step.device)
        cands, up, down = [best], best, best
        for _ in range(4):
            up, down = torch.nextafter(up, up + 1), torch.nextafter(down, down - 1)
            cands += [up, down]
        cands = [c for c in cands if c > 0]
        scores = [self._loss_at(w, w64, c) for c in cands]
        self.step.copy_(cands[int(np.argmin(scores))])
        self._stale = False
        return float(self.step)

    def _loss_at(self, w: Tensor, w64: np.ndarray, step: Tensor) -> float:
        z = self._codes(w, step)
        return vecq_loss(w64, z.double().cpu().numpy() * float(step))

    def train(self, mode: bool = True):
        """As ``nn.Module.train``; leaving training mode refreshes a stale step (``step_every > 0``),
        so the eval grid is the one of the final weights."""
        if not mode and self.training and self.step_every and self._stale:
            self.refresh_step()
        return super().train(mode)  # type: ignore[misc]

    def quantized_weight(self) -> Tensor:
        """``codes * unit``, same shape as ``weight`` (sweep: ``step * clamp(round(w / step), -L, L)``;
        paper: ``alpha * step * (clamp(floor(w / step), ...) + 0.5)``).

        Straight-through: the value is quantized, the gradient w.r.t. ``weight`` is the
        identity (also on clamped weights): the standard straight-through estimator. In
        training mode the grid is refreshed every ``step_every`` forward passes (see the
        class docstring).
        """
        if self.training and self.step_every:  # type: ignore[attr-defined]
            if self._train_forwards % self.step_every == 0:
                self.refresh_step()
            self._train_forwards += 1
            self._stale = True  # the optimizer will update the weights after this pass
        q = self._codes(self.weight, self.step) * self._unit().to(self.weight.dtype)
        # Value exactly q (w - w.detach() is exactly 0, whereas "w + (q - w).detach()" can be
        # an ulp off q for clamped weights), gradient exactly the identity.
        return q.detach() + (self.weight - self.weight.detach())

    @torch.no_grad()
    def int_weight(self) -> tuple[np.ndarray, float]:
        """``(codes, scale)``: int8 codes of ``weight``'s shape and the float32 scale of one code.

        Sweep: codes in -L..L, scale = ``step``. Paper: odd codes in -(2^b - 1)..2^b - 1
        (twice the half-integer levels), scale = ``alpha * step / 2``. Uses the stored
        buffers, so ``codes * scale`` equals the eval-mode forward's weight exactly.
        """
        unit = self._unit().to(self.weight.dtype)
        z = self._codes(self.weight, self.step)
        return z.to(torch.int8).cpu().numpy(), float(unit)

    def stored_bits(self) -> dict[str, int]:
        """Every stored bit: b-bit codes, one float32 scale, int32/float32 bias."""
        return {
            "weight": self.weight.numel() * self.bits,
            "step": 32,
            "bias": 0 if self.bias is None else self.bias.numel() * 32,
        }

    def float_bits(self) -> int:
        """Bits of the float32 source layer (weight + bias)."""
        return 32 * (self.weight.numel() + (0 if self.bias is None else self.bias.numel()))


class VecQConv2d(_VecQMixin, nn.Module):
    """Conv2d with VecQ b-bit weights (module docstring: the 'paper' and 'sweep' schemes).

    Shapes: input [N, Cin, H, W] -> output [N, Cout, OH, OW]; ``weight`` [Cout, Cin, kh, kw]
    (float, trained); the codes come from :meth:`int_weight`.

    ``step_every``: in training mode the grid (step, and alpha for 'paper') is recomputed
    from the current weight on the first training forward and then every ``step_every``
    forward passes. Default (None): 1 for 'paper' (lambda * std and the least-squares
    alpha are O(n)), 50 for 'sweep': one :func:`optimal_step` costs O(n log n)
    (10..100 ms for a 37k-weight layer on one CPU core), which would dominate
    fine-tuning of a small model; the weights move little in 50 steps, and between
    refreshes the straight-through estimator still trains them against the current
    grid. ``0`` freezes the grid: call :meth:`refresh_step` yourself (e.g. once per
    epoch). Eval mode always uses the stored buffers, so eval output and
    :meth:`int_weight` agree exactly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, bias: bool = True,
                 bits: int = 4, step_every: int | None = None, scheme: str = "paper", *, _init_step: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.dilation, self.groups = (1, 1), 1  # what the engine runs; kept so readers can treat any conv alike
        self._init_layer((self.out_channels, self.in_channels, *self.kernel_size), bias, bits=bits,
                         step_every=step_every, scheme=scheme, init_step=_init_step)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bits: int = 4, step_every: int | None = None,
                  scheme: str = "paper") -> "VecQConv2d":
        """Copy a trained Conv2d (weight, bias, geometry) and set the scheme's grid."""
        check_plain_conv(conv, "VecQConv2d.from_conv")
        geometry = dict(in_channels=conv.in_channels, out_channels=conv.out_channels, kernel_size=conv.kernel_size,
                        stride=conv.stride, padding=conv_padding(conv))
        return cls._copy_float(conv, geometry, bits=bits, step_every=step_every, scheme=scheme)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.quantized_weight(), self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, bits={self.bits}, scheme={self.scheme!r}")


class VecQLinear(_VecQMixin, nn.Module):
    """Linear with VecQ b-bit weights: [..., in] -> [..., out]; ``weight`` [out, in].

    ``step_every`` and ``scheme`` as in :class:`VecQConv2d`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 4,
                 step_every: int | None = None, scheme: str = "paper", *, _init_step: bool = True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_layer((self.out_features, self.in_features), bias, bits=bits, step_every=step_every,
                         scheme=scheme, init_step=_init_step)

    @classmethod
    def from_linear(cls, lin: nn.Linear, bits: int = 4, step_every: int | None = None,
                    scheme: str = "paper") -> "VecQLinear":
        """Copy a trained Linear and set the scheme's grid."""
        if not isinstance(lin, nn.Linear):
            raise UnsupportedLayerError(f"VecQLinear.from_linear needs an nn.Linear, got {type(lin).__name__}")
        geometry = dict(in_features=lin.in_features, out_features=lin.out_features)
        return cls._copy_float(lin, geometry, bits=bits, step_every=step_every, scheme=scheme)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, bits={self.bits}, scheme={self.scheme!r}")
