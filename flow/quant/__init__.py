"""The integer reference ("golden") model: formats, requantization, integer ops in numpy.

Torch-free parts import eagerly; ``quantize_model`` (needs torch) is loaded on first use.
"""
from flow.quant.golden import evaluate, predict, quantize_input, run
from flow.quant.graph import QGraph, QNode, QTensor
from flow.quant.requant import quantize_multiplier, requantize

__all__ = ["requantize", "quantize_multiplier", "QGraph", "QNode", "QTensor", "quantize_input", "run",
           "predict", "evaluate", "quantize_model", "UnsupportedLayerError"]


def __getattr__(name: str):
    if name in ("quantize_model", "UnsupportedLayerError", "QuantizationError"):
        from flow.quant import convert   # deferred: torch (the quantizer); the golden model is numpy only
        return getattr(convert, name)
    raise AttributeError(f"module 'flow.quant' has no attribute {name!r}")
