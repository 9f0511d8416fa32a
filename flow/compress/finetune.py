"""Fine-tuning of a compressed model through the codebook decoding.

The trainable state of an MVQ/VQ layer is its codebook (and bias); indices and
masks are buffers, so they stay fixed.  Gradients reach a codeword through
every weight that decodes from it (``codebook[indices]`` backpropagates as a
scatter-add), and pruned positions stay exactly zero because the decoded weight
is ``mask * codebook[indices]`` — the mask is applied on every forward, not once.
BatchNorm, biases and uncompressed layers train too.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from .errors import CompressionError, ShapeMismatchError
from .mvq import _CodebookLayer

__all__ = ["finetune", "nm_prune_finetune", "requantize_codebooks_"]


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
) -> dict[str, Tensor]:
    """MVQ's first step: N:M-prune the layers MVQ will compress and retrain the survivors (in place).

    The magnitude mask of each layer (groups of m along Cin, as MVQ cuts its vectors) is
    fixed; pruned weights are zeroed and their gradients masked, so with Adam (no weight
    decay) they stay exactly zero while the kept weights adapt. Masked k-means on the
    result then clusters weights that already work without their pruned neighbours.
    x [N, C, H, W], y [N]. Returns ``{layer name: mask}`` (0/1, the weight's shape).
    """
    from .api import plan
    from .nm import nm_mask

    plans = plan(model, "mvq", n, m, k=2, d=m, skip=skip, clip_k=True)
    modules = dict(model.named_modules())
    masks: dict[str, Tensor] = {}
    hooks = []
    for p in plans:
        if p.method == "none":
            continue
        w = modules[p.name].weight
        mask = nm_mask(w.detach(), n, m, dim=1).to(w.dtype)
        with torch.no_grad():
            w.mul_(mask)
        hooks.append(w.register_hook(lambda g, mask=mask: g * mask))
        masks[p.name] = mask
    try:
        finetune(model, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():  # exact zeros whatever the optimizer did
        for name, mask in masks.items():
            modules[name].weight.mul_(mask)
    return masks
