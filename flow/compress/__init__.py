"""Weight compression: N:M masks, masked k-means, MVQ / VQ layers, fine-tuning, size reports.

``compress(model, method="mvq", n=2, m=4, k=256, d=8)`` (or ``compress(model, CompressSpec(...))``)
returns a compressed deep copy; ``compression_report(model).table()`` counts every stored bit.
"""
from .api import CompressionWarning, LayerRow, Report, compress, compression_report, plan, recalibrate_bn_, recipe
from .errors import (
    ChannelDivisibilityError,
    CodebookSizeError,
    CompressionError,
    DivisibilityError,
    NMConfigError,
    ShapeMismatchError,
    UnknownLayerError,
    UnknownMethodError,
    UnsupportedLayerError,
    VectorLengthError,
)
from .finetune import PQTrainSpec, finetune, nm_prune_finetune, pq_finetune, requantize_codebooks_
from .kmeans import KMeansResult, assign_nearest, masked_kmeans
from .mvq import MVQConv2d, MVQLinear, mask_bits_per_group, mvq_diagnostics
from .nm import importance_scores, is_nm_sparse, nm_mask
from .spec import CompressSpec
from .vq import VQConv2d, VQLinear

__all__ = [
    "compress", "CompressSpec", "compression_report", "plan", "recalibrate_bn_", "Report", "LayerRow",
    "finetune", "nm_prune_finetune", "pq_finetune", "PQTrainSpec", "CompressionWarning", "recipe",
    "requantize_codebooks_",
    "masked_kmeans", "assign_nearest", "KMeansResult",
    "nm_mask", "is_nm_sparse", "mask_bits_per_group", "importance_scores", "mvq_diagnostics",
    "MVQConv2d", "MVQLinear", "VQConv2d", "VQLinear",
    "CompressionError", "NMConfigError", "DivisibilityError", "VectorLengthError", "ChannelDivisibilityError",
    "CodebookSizeError", "UnsupportedLayerError", "UnknownMethodError", "UnknownLayerError", "ShapeMismatchError",
]
