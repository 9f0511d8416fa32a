"""VecQ: per-layer symmetric b-bit weights whose step minimises the vector loss.

Reference: C. Gong, Y. Chen, Y. Lu, T. Li, C. Hao, D. Chen, "VecQ: Minimal Loss
DNN Model Compression With Vectorized Weight Quantization", IEEE Transactions
on Computers, 2020 (arXiv:2005.08501).

VecQ treats a layer's whole weight tensor as one vector ``w`` and measures the
quantization loss as a *vector* loss: the orientation error plus the modulus
error between ``w`` and its quantized version ``q``. The paper splits it into an
orientation loss (``1 - cos``) and a modulus loss; we use the normalised form

    J(w, q) = J_angle + J_modulus
    J_angle   = 1 - <w, q> / (||w|| ||q||)
    J_modulus = (||w|| - ||q||)^2 / ||w||^2

(the paper's modulus term may be normalised differently; dividing by ``||w||^2``
makes ``J`` scale invariant, ``J(c w, c step) = J(w, step)``, so one number means
the same thing for every layer). ``q = 0`` (every weight rounded to zero) is
defined as ``J = 2``: no direction (cos := 0) and the whole modulus lost.

Quantizer: ``q(w; step) = step * clamp(round(w / step), -L, L)`` with
``L = 2^(b-1) - 1`` (symmetric, ``2^b - 1`` levels, no zero point, so the engine's
dense mode multiplies int8 codes directly), round half to even (numpy/torch).

Finding the step. For a fixed step the integer codes ``z`` are fixed between
*breakpoints* ``|w_i| / (j + 0.5)`` (j = 0..L-1), where one code changes by one.
On such an interval ``cos(w, q) = cos(w, z)`` is constant and ``J_modulus`` is a
convex parabola in the step with minimum at ``||w|| / ||z||``; so the exact global
minimum is found by sweeping the breakpoints in order, updating ``<|w|, |z|>`` and
``||z||^2`` incrementally, and minimising the parabola on every interval
(:func:`optimal_step`). When there are too many breakpoints (large layers at
7..8 bits) a dense geometric grid locates the best basins first and the exact
sweep runs only inside them. Every returned step is re-checked with the real
quantizer.

When the step is updated during training: see :attr:`VecQConv2d.step_every`.
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
    "convert_to_vecq",
    "conv_padding",
    "MIN_BITS",
    "MAX_BITS",
]

MIN_BITS, MAX_BITS = 2, 8
# Above this many breakpoints (n_weights * L) the exact sweep runs only inside the
# basins found by a grid: 2M breakpoints ~ 100 MB of float64 temporaries.
_FULL_SWEEP_MAX = 1 << 21
_GRID_POINTS = 2048
_GRID_BASINS = 3


class BitWidthError(CompressionError):
    """A bit width is outside the range the format supports (VecQ weights: 2..8; PQ LUT: 8 or 16)."""


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is an int in 2..8, else raise :class:`BitWidthError`."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise BitWidthError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise BitWidthError(
            f"bits={bits} is unsupported: VecQ weights are {MIN_BITS}..{MAX_BITS} bits "
            f"(int8 storage on the systolic array); pick bits in that range"
        )
    return int(bits)


def _levels(bits: int) -> int:
    """Largest code magnitude L = 2^(b-1) - 1 (symmetric grid, 2^b - 1 levels)."""
    return (1 << (bits - 1)) - 1


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
    L = _levels(check_bits(bits))
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
    bits = check_bits(bits)
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
        candidates += _sweep(a, nw, L, 0.0, top)
    else:
        # Geometric grid from deep saturation (step << max|w| / L) up to q == 0,
        # then the exact sweep inside the windows around the best grid points.
        lo_s = float(a.max()) / (L + 0.5) * 1e-3
        steps = np.geomspace(lo_s, top, _GRID_POINTS)
        J = _grid_losses(np.sort(a), nw, L, steps)
        for g in np.argsort(J, kind="stable")[:_GRID_BASINS]:
            win_lo = float(steps[g - 1]) if g > 0 else 0.0
            win_hi = float(steps[g + 1]) if g + 1 < steps.size else top
            candidates += _sweep(a, nw, L, win_lo, win_hi)
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
    """Shared VecQ state: ``bits``, ``step`` buffer, straight-through quantization."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    step: Tensor

    def _init_vecq(self, bits: int, step_every: int) -> None:
        self.bits = check_bits(bits)
        if isinstance(step_every, bool) or not isinstance(step_every, int) or step_every < 0:
            raise ValueError(f"step_every must be an int >= 0 (0 = frozen step), got {step_every!r}")
        self.step_every = step_every
        self._train_forwards = 0
        self._stale = False  # weights trained since the last refresh_step
        self.register_buffer("step", torch.ones(()))  # type: ignore[attr-defined]

    @property
    def levels(self) -> int:
        """Largest code magnitude ``L = 2^(bits-1) - 1``."""
        return _levels(self.bits)

    @torch.no_grad()
    def refresh_step(self) -> float:
        """Set ``step`` to the VecQ optimum (:func:`optimal_step`) of the current weight; return it.

        The optimum can sit a hair inside a code interval, closer to its edge than the
        buffer's precision (float32: 6e-8 relative); rounding it could cross the edge and
        change codes. So the few representable steps around it are scored with the codes
        the layer will really use (``round(w / step)`` in the weight's dtype) and the best
        one is stored.
        """
        w = self.weight.detach()
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
        z = torch.clamp(torch.round(w / step.to(w.dtype)), -self.levels, self.levels)
        return vecq_loss(w64, z.double().cpu().numpy() * float(step))

    def train(self, mode: bool = True):
        """As ``nn.Module.train``; leaving training mode refreshes a stale step (``step_every > 0``),
        so the eval step is the optimum of the final weights."""
        if not mode and self.training and self.step_every and self._stale:
            self.refresh_step()
        return super().train(mode)  # type: ignore[misc]

    def quantized_weight(self) -> Tensor:
        """``step * clamp(round(w / step), -L, L)``, same shape as ``weight``.

        Straight-through: the value is quantized, the gradient w.r.t. ``weight`` is the
        identity (also on clamped weights): the standard straight-through estimator. In
        training mode the step is refreshed every ``step_every`` forward passes (see the
        class docstring).
        """
        if self.training and self.step_every:  # type: ignore[attr-defined]
            if self._train_forwards % self.step_every == 0:
                self.refresh_step()
            self._train_forwards += 1
            self._stale = True  # the optimizer will update the weights after this pass
        step = self.step.to(self.weight.dtype)
        q = torch.clamp(torch.round(self.weight / step), -self.levels, self.levels) * step
        # Value exactly q (w - w.detach() is exactly 0, whereas "w + (q - w).detach()" can be
        # an ulp off q for clamped weights), gradient exactly the identity.
        return q.detach() + (self.weight - self.weight.detach())

    @torch.no_grad()
    def int_weight(self) -> tuple[np.ndarray, float]:
        """``(codes, step)``: int8 codes of ``weight``'s shape in -L..L and the float32 step.

        Uses the stored ``step`` buffer, so ``codes * step`` equals the eval-mode forward's
        weight exactly.
        """
        step = self.step.to(self.weight.dtype)
        z = torch.clamp(torch.round(self.weight / step), -self.levels, self.levels)
        return z.to(torch.int8).cpu().numpy(), float(self.step)

    def stored_bits(self) -> dict[str, int]:
        """Every stored bit: b-bit codes, one float32 step, int32/float32 bias."""
        return {
            "weight": self.weight.numel() * self.bits,
            "step": 32,
            "bias": 0 if self.bias is None else self.bias.numel() * 32,
        }

    def float_bits(self) -> int:
        """Bits of the float32 source layer (weight + bias)."""
        return 32 * (self.weight.numel() + (0 if self.bias is None else self.bias.numel()))


class VecQConv2d(_VecQMixin, nn.Module):
    """Conv2d with VecQ b-bit symmetric weights.

    Shapes: input [N, Cin, H, W] -> output [N, Cout, OH, OW]; ``weight`` [Cout, Cin, kh, kw]
    (float, trained); the codes come from :meth:`int_weight`.

    ``step_every``: in training mode the step is recomputed from the current weight
    on the first training forward and then every ``step_every`` forward passes
    (default 50). Recomputing on every batch keeps the step exactly optimal but one
    :func:`optimal_step` costs O(n log n) (10..100 ms for a 37k-weight layer on
    one CPU core), which would dominate fine-tuning of a small model; the weights
    move little in 50 steps, and between refreshes the straight-through estimator
    still trains them against the current grid. ``0`` freezes the step: call
    :meth:`refresh_step` yourself (e.g. once per epoch). Eval mode always uses the
    stored ``step``, so eval output and :meth:`int_weight` agree exactly.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, bias: bool = True,
                 bits: int = 4, step_every: int = 50, *, _init_step: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.dilation, self.groups = (1, 1), 1  # what the engine runs; kept so readers can treat any conv alike
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, *self.kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None
        self._init_vecq(bits, step_every)
        if _init_step:  # from_conv/from_linear set it once, from the copied weights
            self.refresh_step()

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bits: int = 4, step_every: int = 50) -> "VecQConv2d":
        """Copy a trained Conv2d (weight, bias, geometry) and set the VecQ-optimal step."""
        check_plain_conv(conv, "VecQConv2d.from_conv")
        check_bits(bits)
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv_padding(conv),
                bias=conv.bias is not None, bits=bits, step_every=step_every, _init_step=False)
        m = m.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(conv.weight)
            if conv.bias is not None:
                m.bias.copy_(conv.bias)
        m.refresh_step()
        return m

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.quantized_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, bits={self.bits}")


class VecQLinear(_VecQMixin, nn.Module):
    """Linear with VecQ b-bit symmetric weights: [..., in] -> [..., out]; ``weight`` [out, in].

    ``step_every`` as in :class:`VecQConv2d`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 4,
                 step_every: int = 50, *, _init_step: bool = True):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        self._init_vecq(bits, step_every)
        if _init_step:  # from_conv/from_linear set it once, from the copied weights
            self.refresh_step()

    @classmethod
    def from_linear(cls, lin: nn.Linear, bits: int = 4, step_every: int = 50) -> "VecQLinear":
        """Copy a trained Linear and set the VecQ-optimal step."""
        if not isinstance(lin, nn.Linear):
            raise UnsupportedLayerError(f"VecQLinear.from_linear needs an nn.Linear, got {type(lin).__name__}")
        check_bits(bits)
        m = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, bits=bits, step_every=step_every,
                _init_step=False)
        m = m.to(device=lin.weight.device, dtype=lin.weight.dtype)
        with torch.no_grad():
            m.weight.copy_(lin.weight)
            if lin.bias is not None:
                m.bias.copy_(lin.bias)
        m.refresh_step()
        return m

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, bits={self.bits}")


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def convert_to_vecq(model: nn.Module, bits: int = 4, keep_first_last: bool = True,
                    step_every: int = 50) -> dict[str, str]:
    """Replace Conv2d/Linear layers of ``model`` in place by VecQ layers.

    ``keep_first_last``: the first and the last Conv2d/Linear (in ``named_modules``
    order) stay float, as DESIGN.md keeps them int8 dense. Grouped/dilated convs stay
    float too. Returns ``{layer name: "vecq" or the reason it was kept}``.
    """
    check_bits(bits)
    names = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    done: dict[str, str] = {}
    for i, name in enumerate(names):
        layer = model.get_submodule(name)
        if keep_first_last and i in (0, len(names) - 1):
            done[name] = "kept dense: first/last layer"
            continue
        try:
            new = (VecQConv2d.from_conv(layer, bits, step_every) if isinstance(layer, nn.Conv2d)
                   else VecQLinear.from_linear(layer, bits, step_every))
        except UnsupportedLayerError as e:
            done[name] = f"kept dense: {e}"
            continue
        new.train(layer.training)
        _set_submodule(model, name, new)
        done[name] = "vecq"
    return done
