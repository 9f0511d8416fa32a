"""Models whose residual is a layer's own input (``y = x + conv(x)``), for the lowering and C-sim tests.

* torch models (quantized by flow.quant.quantize_model): a single conv with a skip around it, one inside a
  net with a downsampling residual block, two skips that share one input;
* ``random_graph``: a QGraph drawn from a configuration (kernel, channels, weight format, PQ,
  signedness, position in the program, a second skip from the same input), built node by node with
  random integer parameters, so the golden model runs it exactly as written (no torch in between).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hls"))
from hls_testlib import nm_masks, requant_params  # noqa: E402

from flow.quant.graph import QGraph, QNode, QTensor  # noqa: E402
from flow.quant.ops import mask_bits_to_keep  # noqa: E402


class SelfResidual(nn.Module):
    """y = relu(x + bn(conv(x))): the residual is the conv's own input, here the network input."""

    def __init__(self, c: int = 8, k: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(c, c, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


class SelfResidualNet(nn.Module):
    """stem -> self-residual conv -> a residual block with a 1x1 stride-2 downsample -> self-residual conv
    -> global pool -> linear: [B, 3, 8, 8] -> [B, 10]."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.self1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.conv1 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.self2 = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.self1(x))
        x = F.relu(self.conv2(self.conv1(x)) + self.down(x))
        x = F.relu(x + self.self2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SharedSkip(nn.Module):
    """Two skips from one input: a = relu(x + c1(x)); y = relu(x + c2(a)), x the stem's output."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.c1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.c2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x):
        x = self.stem(x)
        a = F.relu(x + self.c1(x))
        return F.relu(x + self.c2(a))


# ------------------------------------------------------------------------------------------------ QGraphs
def _fmt(unsigned: bool) -> tuple[int, int]:
    return (0, 255) if unsigned else (-128, 127)


def _conv_node(rng: np.random.Generator, name: str, inp: QTensor, out: QTensor, *, K: int, OC: int,
               wfmt: str, res: QTensor | None, stride: int = 1, d: int = 8, k: int = 16, n: int = 2, m: int = 4,
               v: int = 0, Kp: int = 16, lut_bits: int = 8) -> QNode:
    """A conv ('dense' / 'codebook') or, with ``v``, a PQ node reading ``inp`` (+ ``res``) into ``out``;
    'same' padding. Requantization parameters put typical outputs inside the format, not all clamped."""
    H, W, C = inp.shape
    pad = K // 2
    lo, hi = _fmt(out.unsigned)
    kw: dict = dict(name=name, kind="conv", inp=inp.name, out=out.name, in_view=(H, W, C), KH=K, KW=K,
                    stride=stride, pad=pad, res=res.name if res is not None else None, lo=lo, hi=hi, src="random")
    x_rms = 147.0 if inp.unsigned else 74.0
    if v:   # product quantization: prototypes in the input's grid, LUT within lut_bits
        Cs = K * K * C // v
        xlo, xhi = _fmt(inp.unsigned)
        qmax = (1 << (lut_bits - 1)) - 1
        kw.update(kind="pq", proto=rng.integers(xlo, xhi + 1, size=(Cs, Kp, v)),
                  lut=rng.integers(-qmax, qmax + 1, size=(Cs, Kp, OC)), v=v, lut_bits=lut_bits)
        acc_scale = np.full(OC, np.sqrt(Cs) * qmax * 0.6 + 1)
    elif wfmt == "dense":
        w = rng.integers(-127, 128, size=(OC, K, K, C))   # lower() takes |w| <= 127
        kw.update(wfmt="dense", weight=w)
        acc_scale = np.sqrt((w.astype(np.float64) ** 2).reshape(OC, -1).sum(1)) * x_rms * 0.7 + 1
    else:
        nvec = C // d
        masks = nm_masks(rng, OC * K * K * nvec, d, n, m).reshape(OC, K, K, nvec)
        keep = mask_bits_to_keep(masks, d)
        cb = rng.integers(-128, 128, size=(k, d))
        idx = rng.integers(0, k, size=(OC, K, K, nvec))
        kw.update(wfmt="codebook", idx=idx, keep=keep, codebook=cb, n=n, m=m, d=d, k=k)
        w = (cb[idx] * keep).reshape(OC, K, K, C)
        acc_scale = np.sqrt((w.astype(np.float64) ** 2).reshape(OC, -1).sum(1)) * x_rms * 0.7 + 1
    mult, shift, res_mult = requant_params(rng, acc_scale, 1.0 if res is not None else None, (8, 24))
    kw.update(bias=rng.integers(-2000, 2001, size=OC), mult=mult, shift=shift, res_mult=res_mult)
    return QNode(**kw)


def random_graph(rng: np.random.Generator, *, H: int, W: int, C: int, K: int, wfmt: str, v: int = 0,
                 layers: int = 1, stem: bool = False, shared: bool = False, in_unsigned: bool = True,
                 signs: tuple[bool, ...] = (True,), d: int = 8) -> QGraph:
    """``layers`` self-residual layers (``y_i = y_{i-1} + layer_i(y_{i-1})`` fused, KxK 'same', C -> C)
    on an HxWxC input; with ``stem`` a dense 3x3 conv comes first (else the first self-residual layer
    reads the program's input); with ``shared`` a last conv reads the last output and adds, as its
    residual, the last self-residual layer's input (two skips from one tensor). ``signs[i]``: layer i's
    output is uint8 (else int8). ``v`` > 0 makes the self-residual layers PQ (v divides K*K*C)."""
    tensors = {"input": QTensor("input", (H, W, C), 1 / 255, in_unsigned)}
    nodes: list[QNode] = []
    cur = tensors["input"]

    def new(name: str, unsigned: bool) -> QTensor:
        tensors[name] = QTensor(name, (H, W, C), 0.05, unsigned)
        return tensors[name]

    if stem:
        out = new("stem", True)
        nodes.append(_conv_node(rng, "stem", cur, out, K=3, OC=C, wfmt="dense", res=None))
        cur = out
    prev_in = cur
    for i in range(layers):
        out = new(f"self{i}", signs[i % len(signs)])
        nodes.append(_conv_node(rng, f"self{i}", cur, out, K=K, OC=C, wfmt=wfmt, res=cur, v=v, d=d))
        prev_in, cur = cur, out
    if shared:
        out = new("shared", False)
        nodes.append(_conv_node(rng, "shared", cur, out, K=3, OC=C, wfmt="dense", res=prev_in))
        cur = out
    return QGraph(tensors=tensors, nodes=nodes, input="input", output=cur.name)


def graph_inputs(rng: np.random.Generator, g: QGraph, batch: int) -> np.ndarray:
    """Random integer inputs [B, H, W, C] in the graph input's format."""
    lo, hi = _fmt(g.in_tensor.unsigned)
    return rng.integers(lo, hi + 1, size=(batch, *g.in_tensor.shape)).astype(
        np.uint8 if g.in_tensor.unsigned else np.int8)


def quantized(model: nn.Module, shape, seed: int = 0, n_calib: int = 32, n_test: int = 4):
    """(QGraph, integer test inputs, float test images) of ``model`` on random [0, 1) images of ``shape``."""
    from flow.quant import quantize_input, quantize_model

    gen = torch.Generator().manual_seed(seed)
    calib = torch.rand(n_calib, *shape, generator=gen)
    xt = torch.rand(n_test, *shape, generator=gen)
    q = quantize_model(model.eval(), calib)
    return q, quantize_input(xt.numpy(), q.in_tensor.scale, q.in_tensor.unsigned), xt
