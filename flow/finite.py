"""Non-finite values (NaN, inf) are refused where they enter the flow, with the tensor's name.

A NaN in a weight, a BatchNorm statistic, a calibration image or an input does not
fail loudly downstream: it turns into a NaN scale, a constant channel or a "bias
does not fit int32" several stages later, or into a silently wrong integer model.
``check_finite`` / ``check_model_finite`` are called where such tensors enter:
``flow.compress.compress`` (the model and its calibration data),
``flow.quant.quantize_model`` (the model and the calibration set),
``flow.quant.quantize_input`` (the images for the golden model / C-simulation) and
``flow.build`` (the checkpoint and the dataset).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["NonFiniteError", "check_finite", "check_model_finite"]


class NonFiniteError(ValueError):
    """A tensor holds NaN or inf; the message names the tensor, where the first bad value is, and the fix."""


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):   # a torch tensor (without importing torch here)
        x = x.detach()
        if x.is_floating_point() or x.is_complex():
            x = x.float() if x.dtype.itemsize < 4 else x  # bfloat16/half have no numpy dtype everywhere
        return x.cpu().numpy()
    return np.asarray(x)


def check_finite(x: Any, name: str, fix: str = "") -> None:
    """Raise :class:`NonFiniteError` when ``x`` (numpy array or torch tensor) holds NaN or inf.

    ``name`` says what ``x`` is ("calibration images", "parameter 'conv1.weight'"); ``fix`` is
    appended after a colon. For a batch (ndim >= 2), the message gives the first bad item's index.
    """
    a = _numpy(x)
    if not np.issubdtype(a.dtype, np.inexact) or a.size == 0:
        return
    bad = ~np.isfinite(a)
    if not bad.any():
        return
    n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    kinds = " and ".join(k for k, c in (("NaN", n_nan), ("inf", n_inf)) if c)
    where = ""
    if a.ndim >= 2:
        items = np.flatnonzero(bad.reshape(len(a), -1).any(1))
        where = f" (item {int(items[0])} of {len(a)}" + (f", {len(items)} items in all)" if len(items) > 1 else ")")
    msg = f"{name} contains {kinds} ({int(bad.sum())} of {a.size} values){where}"
    raise NonFiniteError(msg + (f": {fix}" if fix else ""))


def check_model_finite(model: Any, where: str = "model", fix: str = "") -> None:
    """Every floating parameter and buffer of an ``nn.Module`` (BatchNorm running_mean / running_var
    included) is finite, and every BatchNorm running_var is >= 0; raises :class:`NonFiniteError`
    naming the first bad tensor."""
    fix = fix or "retrain the model or load a clean checkpoint"
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            check_finite(t, f"{where}: {kind} '{name}'", fix)
            if name.endswith("running_var") and t.numel() and bool((t < 0).any()):
                raise NonFiniteError(f"{where}: buffer '{name}' (BatchNorm running variance) has negative "
                                     f"values ({int((t < 0).sum())} of {t.numel()}): {fix}")
