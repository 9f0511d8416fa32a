"""Placed Programs of UNTRAINED zoo models, for cycle and area studies where no training (or no dataset) exists.

    prog = untrained_program("resnet8", "mvq", EngineConfig())     # compress -> quantize_model -> lower

The flow of ``make csim`` (compress -> flow.quant.quantize_model -> lower) WITHOUT training: a random init
with a fixed seed and random calibration images in [0, 1]. The engine's cycles depend only on layer shapes,
the N:M masks (array passes, kept products) and where parameters are placed, none of which training
changes (2:4 masks always keep 2 of every 4 weights; a codebook's size is set by k, not by its values), so
such a Program measures and models the engine's speed honestly; its accuracy means nothing. Used by
bench/engine.py (modelled throughput) and flow/rtl/engine_cases.py (ResNet-8, whose CIFAR-10 is not on this
machine: the RTL engine's measured cycles).
"""
from __future__ import annotations

import torch

from flow.compile.engine import EngineConfig
from flow.compile.lower import lower
from flow.compile.program import Program
from flow.compress import compress
from flow.quant import quantize_model
from models import zoo

# model: (zoo kwargs, input [C, H, W], codebook size k as flow/build/options.py's MODEL_DEFAULTS)
MODELS = {
    "lenet-digits": ({}, (1, 8, 8), 64),
    "resnet20": ({"in_channels": 1}, (1, 28, 28), 256),
    "resnet8": ({}, (3, 32, 32), 256),
}


def build_model(name: str, seed: int = 0) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """The zoo model with a deterministic random init (eval mode) and its input shape [C, H, W]."""
    kw, shape, _ = MODELS[name]
    torch.manual_seed(seed)
    return zoo.get(name, **kw).eval(), shape


def untrained_program(name: str, method: str, engine: EngineConfig, *, seed: int = 0, iters: int = 2,
                      calib_images: int = 8) -> Program:
    """The placed Program of an untrained zoo model, as flow/build/stages.py makes it: compress (method
    'mvq' / 'vq' / 'none', d=8, the model's k, few k-means iterations: cycles do not depend on the
    codeword values; vectors of a Linear after a spatial flatten along C, as flow.build cuts them),
    quantize_model on random calibration images in [0, 1], lower for ``engine``."""
    model, shape = build_model(name, seed)
    k = MODELS[name][2]
    g = torch.Generator().manual_seed(seed + 1)
    calib = torch.rand(calib_images, *shape, generator=g)
    if method != "none":
        n = 2 if method == "mvq" else engine.m
        model = compress(model, method=method, n=n, m=engine.m, k=k, d=8, clip_k=True, iters=iters, seed=seed,
                         example=calib[:1])
    return lower(quantize_model(model, calib), engine)


__all__ = ["MODELS", "build_model", "untrained_program"]
