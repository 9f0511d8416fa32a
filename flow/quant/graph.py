"""QGraph: a quantized model as integer layer nodes over named NHWC tensors.

This is what :func:`flow.quant.convert.quantize_model` produces, what the golden
model executes and what :func:`flow.compile.lower` packs into a Program. It is
torch-free and deliberately close to the Program's ops (conv / maxpool /
avgpool with fused BN, ReLU and residual add), but keeps weights in a readable
form (codebook layers as indices + boolean keep-mask + int8 codebook), so that
comparing ``run(graph)`` with ``run_program(lower(graph))`` checks the packing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flow.quant import ops as K


@dataclass
class QTensor:
    """An activation tensor: real value = scale * integer, integer is uint8 (unsigned) or int8.

    shape: (H, W, C), NHWC without the batch dimension.
    """

    name: str
    shape: tuple[int, int, int]
    scale: float
    unsigned: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class QNode:
    """One integer layer.

    kind 'conv' (Conv2d / Linear, BN folded, ReLU and residual fused):
        acc = conv(x, w) + bias;  y = requantize(acc, mult, shift, lo, hi, res, res_mult)
        wfmt 'dense': ``weight`` int8 [OC,KH,KW,C];
        wfmt 'codebook': ``idx`` int [OC,KH,KW,C/d], ``keep`` bool [OC,KH,KW,C/d,d], ``codebook`` int8 [k,d];
        weights in real units are ``w_int * w_scale[oc]``.
    kind 'pq' (PQConv2d / PQLinear, BN folded into the LUT, ReLU and residual fused):
        acc = ops.pq_conv(x, proto, lut, bias);  y = requantize(acc, ...) as for 'conv'
        ``proto`` int [Cs,K,v] in the input tensor's integer grid, ``lut`` int [Cs,K,OC] within
        ``lut_bits`` bits, real accumulator value = ``lut_scale * acc``.
    kind 'maxpool': max over KHxKW windows (no padding, floor mode); no parameters.
    kind 'avgpool': window sum then requantize(acc, mult, shift, lo, hi).

    ``in_view`` is the (H, W, C) the node reads its input bytes as: it differs from
    the input tensor's shape only for a Linear after a spatial flatten, which reads
    the NHWC bytes of an HxWxC tensor as 1x1x(H*W*C).
    """

    name: str
    kind: str
    inp: str
    out: str
    in_view: tuple[int, int, int]
    KH: int = 1
    KW: int = 1
    stride: int = 1
    pad: int = 0
    res: str | None = None
    lo: int = -128
    hi: int = 127
    src: str = ""                      # torch module types fused into this node, e.g. "Conv2d+BatchNorm2d+ReLU"
    wfmt: str = "dense"
    weight: np.ndarray | None = None
    idx: np.ndarray | None = None
    keep: np.ndarray | None = None
    codebook: np.ndarray | None = None
    n: int = 0
    m: int = 0
    d: int = 0
    k: int = 0
    bias: np.ndarray | None = None     # int32 [OC]
    mult: np.ndarray | None = None     # int32 [OC]
    shift: np.ndarray | None = None    # int32 [OC] in 1..31
    res_mult: np.ndarray | None = None  # int32 [OC]
    w_scale: np.ndarray | None = None  # float [OC], metadata
    is_linear: bool = False
    proto: np.ndarray | None = None    # pq: int [Cs,K,v]
    lut: np.ndarray | None = None      # pq: int [Cs,K,OC]
    v: int = 0                         # pq: subvector length
    lut_bits: int = 0                  # pq: 8 or 16
    lut_scale: float | None = None     # pq: real value of one LUT / accumulator unit (metadata)

    def int_weight(self) -> np.ndarray:
        """Integer weights [OC,KH,KW,C] (codebook layers decoded)."""
        if self.wfmt == "dense":
            return np.asarray(self.weight, np.int64)
        return K.decode_codebook(self.idx, self.keep, self.codebook)


@dataclass
class QGraph:
    """Nodes in execution (topological) order over ``tensors``; ``input`` / ``output`` name tensors."""

    tensors: dict[str, QTensor]
    nodes: list[QNode]
    input: str
    output: str
    meta: dict = field(default_factory=dict)

    @property
    def in_tensor(self) -> QTensor:
        return self.tensors[self.input]

    @property
    def out_tensor(self) -> QTensor:
        return self.tensors[self.output]

    def summary(self) -> str:
        """One line per node: name, kind, shapes, scales."""
        lines = []
        for nd in self.nodes:
            ti, to = self.tensors[nd.inp], self.tensors[nd.out]
            extra = f" res={nd.res}" if nd.res else ""
            fmt = f" {nd.wfmt}" if nd.kind == "conv" else (f" v{nd.v}K{nd.proto.shape[1]}" if nd.kind == "pq" else "")
            lines.append(
                f"{nd.name:24s} {nd.kind}{fmt:9s} {nd.src:28s} {ti.shape}->{to.shape} "
                f"s_in={ti.scale:.4g} s_out={to.scale:.4g} {'u8' if to.unsigned else 'i8'}{extra}"
            )
        return "\n".join(lines)
