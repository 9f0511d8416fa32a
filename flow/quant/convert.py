"""PyTorch model -> QGraph: trace, fuse, calibrate, quantize.

``quantize_model(model, calib_x)`` traces the model with torch.fx and maps the
graph generically (no per-model code):

* PQ layers (PQConv2d / PQLinear: any module with ``prototypes``, ``v`` and ``K``)
  become 'pq' nodes (the lookup engine), fused like a conv;
* Conv2d / Linear / codebook layers (MVQ and VQ: any module with ``codebook``,
  ``indices``, ``mask``, ``decoded_weight`` and ``int_codebook``) / low-bit dense
  layers (VecQ: ``int_weight() -> (codes, scale)``) start a requantizing node;
* a BatchNorm2d directly after a conv folds into that node's multiplier and
  bias; a ReLU after a conv / linear / residual add / average pool fuses as the
  uint8 clamp [0, 255];
* a residual add fuses into the conv producing one operand (the lhs when both
  qualify); the other operand becomes the node's ``res`` input;
* MaxPool2d, AvgPool2d, AdaptiveAvgPool2d and Flatten map to pool nodes / views;
  Identity and Dropout are no-ops (eval mode).

Anything else raises :class:`UnsupportedLayerError` naming the module path and type.

Numeric choices (see DESIGN.md, "The numeric contract"):
* activations: symmetric per-tensor scale, uint8 after a fused ReLU (and after
  a pool of a uint8 tensor), int8 otherwise; the input is uint8 with scale 1/255
  when the calibration data lies in [0, 1];
* dense weights: int8 in [-127, 127] with a per-output-channel scale
  max|w|/127; VecQ weights: their codes with the layer's one scale (sweep: codes -L..L, scale = step; paper:
  odd codes 2l for the half-integer levels l, scale = alpha * step / 2); codebook weights: mask * int8
  codebook[idx] with the layer's codebook scale;
* BN: a = gamma / sqrt(var + eps), b = beta - a * mean (+ a * conv bias);
  real multiplier a * s_x * s_w / s_y (negative when gamma is), bias
  round(b / (a * s_x * s_w)) in accumulator units.
* degenerate BN channels (a == 0, or a so small that the bias would not fit the
  int32 accumulator): the channel's output does not depend on its weights (by
  more than a/s_y * max|acc|, recorded in ``graph.meta['constant_channels']``),
  so its weights are zeroed (dense rows, or codebook mask bits) and it becomes
  the exact constant round(b / s_y): bias = that constant, multiplier 1.0
  (M = 2^S exactly), so a fused residual still adds normally.
* PQ layers: prototypes round(P / s_in) clamped to the input's integer range (the
  encoder compares integers with integers); BN folded into the weight columns
  (w' = a[o] * w); the LUT recomputed from the *quantized* prototypes,
  LUT[s,k,o] = (P_q[s,k] * s_in) . W'_s[o], and quantized symmetric per layer to
  the layer's ``lut_bits`` (scale s_lut = max|LUT| / (2^(b-1)-1)); the accumulator
  is in units of s_lut: real multiplier s_lut / s_y, bias round(b' / s_lut).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from flow.finite import check_finite, check_model_finite
from flow.quant.calibrate import activation_ranges
from flow.quant.graph import QGraph, QNode, QTensor
from flow.quant.ops import decode_codebook
from flow.quant.requant import INT32_MAX, act_range, quantize_multiplier

SUPPORTED = (
    "Conv2d (groups=1, dilation=1, zero padding, equal strides/pads)",
    "Linear (after Flatten or another Linear)",
    "MVQ / VQ codebook layers (MVQConv2d, MVQLinear)",
    "VecQ low-bit layers (VecQConv2d, VecQLinear: dense mode)",
    "PQ layers (PQConv2d, PQLinear: the lookup engine)",
    "BatchNorm2d (directly after a conv, folded)",
    "ReLU (nn.ReLU, F.relu, torch.relu, Tensor.relu; fused after conv/linear/add/avgpool)",
    "MaxPool2d / AvgPool2d (no padding, floor mode)",
    "AdaptiveAvgPool2d (output size dividing the input)",
    "F.max_pool2d / F.avg_pool2d (as the modules)",
    "Flatten / torch.flatten(x, 1) / x.flatten(1) / x.view(x.size(0), -1) / x.reshape(x.shape[0], -1) / "
    "x.view(-1, C*H*W)",
    "residual add (operator.add, torch.add, Tensor.add; fused into a conv producing one operand)",
    "Identity, Dropout (no-ops in eval mode)",
)

# constant-mode biases are clamped here: far outside any output range, far inside int32
_CONST_BIAS_LIMIT = 1 << 20


class UnsupportedLayerError(ValueError):
    """The model contains a layer, function or pattern the integer engine cannot run."""


class QuantizationError(ValueError):
    """A numeric problem while quantizing (e.g. an unrepresentable scale)."""


def supported_layers() -> str:
    return "; ".join(SUPPORTED)


def _unsupported(where: str, what: str, why: str = "") -> UnsupportedLayerError:
    msg = f"{where}: {what} is not supported" + (f" ({why})" if why else "")
    return UnsupportedLayerError(f"{msg}. Supported: {supported_layers()}")


def is_codebook_layer(mod: nn.Module) -> bool:
    """Duck-typed MVQ / VQ layer (flow.compress.mvq.MVQConv2d / MVQLinear, and VQ as n == m)."""
    return all(hasattr(mod, a) for a in ("codebook", "indices", "mask", "decoded_weight", "int_codebook"))


def is_pq_layer(mod: nn.Module) -> bool:
    """Duck-typed PQ layer (flow.compress.pq.PQConv2d / PQLinear): ``prototypes`` [Cs,K,v], ``v``, ``K``."""
    return all(hasattr(mod, a) for a in ("prototypes", "v", "K", "weight_matrix"))


def is_int_weight_layer(mod: nn.Module) -> bool:
    """Duck-typed dense low-bit layer (flow.compress.vecq.VecQConv2d / VecQLinear):
    ``int_weight() -> (int8 codes shaped like weight, float scale)``; runs on the dense mode."""
    return hasattr(mod, "int_weight") and hasattr(mod, "weight") and not is_codebook_layer(mod)


class _Tracer(torch.fx.Tracer):
    """fx tracer that keeps codebook / low-bit layers as leaves (their forward decodes or fake-quantizes
    weights: not to be inlined)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (is_codebook_layer(m) or is_int_weight_layer(m) or is_pq_layer(m)
                or super().is_leaf_module(m, qualname))


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """Symbolically trace ``model`` with codebook layers as leaves."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # data-dependent control flow etc.
        raise UnsupportedLayerError(f"torch.fx could not trace {type(model).__name__}: {e}") from e
    gm = torch.fx.GraphModule(tracer.root, graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


# ---------------------------------------------------------------------------------------------
# pass 1: structure (which fx nodes fuse into which integer node)


@dataclass
class _T:
    """A materialized activation (a QTensor), possibly viewed flattened (rank 2)."""

    name: str
    flat: bool = False       # rank-2 view [B, H*W*C] of an HxWxC tensor (torch flattens NCHW, we hold NHWC)


@dataclass
class _P:
    """A requantizing node under construction (conv/linear/avgpool with fusions)."""

    kind: str                # 'conv' | 'avgpool'
    name: str
    inp: _T
    chain: list              # fx nodes whose value this is; fusion needs each to have one user
    mod: nn.Module | None = None
    is_linear: bool = False
    KH: int = 1
    KW: int = 1
    stride: int = 1
    pad: int = 0
    bn: nn.BatchNorm2d | None = None
    relu: bool = False
    res: _T | None = None
    src: list = field(default_factory=list)
    out: _T | None = None    # set once materialized

    @property
    def last(self) -> torch.fx.Node:
        return self.chain[-1]

    def fusable(self, arg: torch.fx.Node) -> bool:
        return self.out is None and arg is self.last and all(len(_value_users(n)) == 1 for n in self.chain)


def _value_users(n: torch.fx.Node) -> list[torch.fx.Node]:
    """Users of ``n`` that read its values: ``n.size(...)`` / ``n.shape`` read only its (constant) shape,
    so ``x = conv(x); x = x.view(x.size(0), -1)`` still fuses what follows the conv."""
    return [u for u in n.users
            if not ((u.op == "call_method" and u.target == "size")
                    or (u.op == "call_function" and u.target is getattr and u.args[1:] == ("shape",)))]


@dataclass
class _Dim:
    """A symbolic size: ``x.size(dim)`` / ``x.shape[dim]`` (``dim`` None: the whole ``x.size()`` / ``x.shape``)."""

    dim: int | None


def _bind(n: torch.fx.Node, names: tuple[str, ...], defaults: dict) -> dict:
    """An fx call's positional and keyword arguments by parameter name, defaults filled in."""
    out = dict(defaults)
    out.update(zip(names, n.args))
    out.update(n.kwargs)
    return out


@dataclass
class _Pool:
    name: str
    inp: _T
    out: _T
    KH: int
    KW: int
    stride: int


def _where(n: torch.fx.Node) -> str:
    """Human-readable location of an fx node: module path and type."""
    if n.op == "call_module":
        return f"'{n.target}'"
    stack = n.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    fn = getattr(n.target, "__name__", str(n.target))
    return f"'{path + '.' if path else ''}{fn}' ({n.op} {fn})"


def _pair(v, what: str, where: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return int(v[0]), int(v[1])
    raise _unsupported(where, f"{what}={v!r}")


def _same(v, what: str, where: str) -> int:
    a, b = _pair(v, what, where)
    if a != b:
        raise _unsupported(where, f"{what}={v!r}", "the engine has one value for both axes")
    return a


def _shape_of(n: torch.fx.Node) -> tuple[int, ...]:
    tm = n.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        raise UnsupportedLayerError(f"{_where(n)}: produces a non-tensor value")
    return tuple(int(s) for s in tm.shape)


def _hwc(n: torch.fx.Node) -> tuple[int, int, int]:
    s = _shape_of(n)
    if len(s) == 4:
        return s[2], s[3], s[1]
    if len(s) == 2:
        return 1, 1, s[1]
    raise UnsupportedLayerError(f"{_where(n)}: tensor of rank {len(s)} (shape {s}); only [B,C,H,W] and [B,F] are supported")


_ADD_FUNCS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_", "__add__", "__iadd__")
_RELU_FUNCS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")
_FLATTEN_FUNCS = (torch.flatten,)
_FLATTEN_METHODS = ("flatten",)


_PLAIN_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d,
                  nn.AdaptiveAvgPool2d, nn.Flatten)


def _module_type_supported(mod: nn.Module) -> bool:
    """A module type _Builder.module handles (its configuration is checked there)."""
    return is_codebook_layer(mod) or is_int_weight_layer(mod) or is_pq_layer(mod) or isinstance(mod, _PLAIN_MODULES)


def check_module_types(gm: torch.fx.GraphModule) -> None:
    """Every module the traced model calls is of a supported type; else one UnsupportedLayerError naming
    each unsupported module and its type (before any shape propagation or node handling, so a Conv1d or
    an LSTM is named as such, not through the flatten / permute / getitem next to it)."""
    mods = dict(gm.named_modules())
    bad = [(str(n.target), type(mods[n.target]).__name__) for n in gm.graph.nodes
           if n.op == "call_module" and not _module_type_supported(mods[n.target])]
    if bad:
        types = sorted({t for _, t in bad})
        where = ", ".join(f"'{name}' ({t})" for name, t in bad)
        raise UnsupportedLayerError(
            f"{where}: layer type{'s' if len(types) > 1 else ''} {', '.join(types)} "
            f"{'are' if len(types) > 1 else 'is'} not supported by the integer engine (2-D convolutional networks "
            f"only). Supported: {supported_layers()}")


class _Builder:
    """Walks the fx graph once, fusing into _P / _Pool protos in materialization (= execution) order."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.mods = dict(gm.named_modules())
        self.val: dict[torch.fx.Node, object] = {}
        self.order: list = []                       # materialized _P / _Pool, in execution order
        self.tensors: dict[str, dict] = {}          # name -> {shape, unsigned, fx node (None: input)}
        self.names: set[str] = set()
        self.input: _T | None = None
        self.output: _T | None = None

    # -- helpers
    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.names:
            i += 1
            name = f"{base}#{i}"
        self.names.add(name)
        return name

    def _new_tensor(self, fxn: torch.fx.Node | None, unsigned: bool, shape, same_scale_as: str | None = None) -> _T:
        """Register a QTensor; ``same_scale_as``: its scale is that tensor's (max pooling), not calibrated."""
        name = "input" if fxn is None else fxn.name
        self.tensors[name] = {"shape": tuple(shape), "unsigned": unsigned, "fx": fxn, "alias": same_scale_as}
        return _T(name)

    def materialize(self, v, where: str) -> _T:
        if isinstance(v, _T):
            return v
        if isinstance(v, _P):
            if v.out is None:
                unsigned = v.relu or (v.kind == "avgpool" and self.tensors[v.inp.name]["unsigned"])
                v.out = self._new_tensor(v.last, unsigned, _hwc(v.last))
                v.out.flat = v.is_linear  # a linear's output is rank 2 (1x1xC: no permutation issue)
                self.order.append(v)
            return v.out
        raise UnsupportedLayerError(f"{where}: operand is not a tensor produced by a supported layer")

    def arg(self, n: torch.fx.Node, i: int = 0):
        a = n.args[i] if i < len(n.args) else None
        if not isinstance(a, torch.fx.Node):
            raise _unsupported(_where(n), f"a non-tensor operand {a!r}")
        return a, self.val[a]

    def spatial_input(self, n: torch.fx.Node, what: str) -> _T:
        a, v = self.arg(n)
        t = self.materialize(v, _where(n))
        if t.flat:
            raise _unsupported(_where(n), f"{what} on a flattened [B, F] activation")
        return t

    # -- node handlers
    def run(self) -> None:
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if self.input is not None:
                    raise UnsupportedLayerError("models with more than one input are not supported")
                h, w, c = _hwc(n)
                self.input = self._new_tensor(None, True, (h, w, c))
                self.val[n] = self.input
            elif n.op == "call_module":
                self.val[n] = self.module(n, self.mods[n.target])
            elif n.op in ("call_function", "call_method"):
                self.val[n] = self.function(n)
            elif n.op == "output":
                out = n.args[0]
                if not isinstance(out, torch.fx.Node):
                    raise UnsupportedLayerError("the model must return a single tensor")
                t = self.materialize(self.val[out], "model output")
                if t.name == self.input.name:
                    raise UnsupportedLayerError("the model returns its input: nothing to compile")
                if t.flat and self.tensors[t.name]["shape"][:2] != (1, 1):
                    raise _unsupported("model output", "returning a flattened HxW>1 activation",
                                       "the engine holds NHWC, torch flattens NCHW")
                self.output = t
            else:  # get_attr: parameters used as tensors outside a module
                raise _unsupported(_where(n), f"fx op {n.op} {n.target!r}", "parameters must live inside supported modules")

    def module(self, n: torch.fx.Node, mod: nn.Module):
        where = f"'{n.target}' ({type(mod).__name__})"
        if is_codebook_layer(mod) or is_int_weight_layer(mod) or is_pq_layer(mod):
            if hasattr(mod, "kernel_size"):
                return self.conv(n, mod, where)
            return self.linear(n, mod, where)
        if isinstance(mod, nn.Conv2d):
            return self.conv(n, mod, where)
        if isinstance(mod, nn.Linear):
            return self.linear(n, mod, where)
        if isinstance(mod, nn.BatchNorm2d):
            a, v = self.arg(n)
            if not (isinstance(v, _P) and v.kind == "conv" and not v.is_linear and v.bn is None
                    and not v.relu and v.res is None and v.fusable(a)):
                raise _unsupported(where, "a BatchNorm2d that does not directly follow a Conv2d used only by it",
                                   "BN is folded into the preceding conv")
            if not mod.track_running_stats or mod.running_mean is None:
                raise _unsupported(where, "BatchNorm2d without running statistics")
            v.bn = mod
            v.chain.append(n)
            v.src.append(type(mod).__name__)
            return v
        if isinstance(mod, nn.ReLU):
            return self.relu(n, where)
        if isinstance(mod, (nn.Identity, nn.Dropout)):
            a, v = self.arg(n)
            if isinstance(v, _P) and v.fusable(a):
                v.chain.append(n)  # alias: later fusions check this node's users too
            return v
        if isinstance(mod, nn.MaxPool2d):
            return self.maxpool(n, n.target, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                                mod.return_indices, where)
        if isinstance(mod, nn.AvgPool2d):
            return self.avgpool(n, n.target, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode,
                                mod.divisor_override, where)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self.adaptive_pool(n, mod.output_size, where)
        if isinstance(mod, nn.Flatten):
            return self.flatten(n, mod.start_dim, mod.end_dim, where)
        raise _unsupported(where, f"layer type {type(mod).__name__}")

    def maxpool(self, n: torch.fx.Node, name: str, kernel, stride, padding, dilation, ceil_mode, return_indices,
                where: str) -> _T:
        if dilation not in (1, (1, 1), [1, 1]) or ceil_mode or return_indices:
            raise _unsupported(where, "MaxPool2d with dilation, ceil_mode or return_indices")
        if _pair(padding, "padding", where) != (0, 0):
            raise _unsupported(where, f"MaxPool2d padding={padding}", "pooling windows have no padding")
        t = self.spatial_input(n, "MaxPool2d")
        kh, kw = _pair(kernel, "kernel_size", where)
        s = _same(stride if stride not in (None, (), []) else kernel, "stride", where)
        out = self._new_tensor(n, self.tensors[t.name]["unsigned"], _hwc(n), same_scale_as=t.name)
        self.order.append(_Pool(self._unique(name), t, out, kh, kw, s))
        return out

    def avgpool(self, n: torch.fx.Node, name: str, kernel, stride, padding, ceil_mode, divisor_override,
                where: str) -> _P:
        if _pair(padding, "padding", where) != (0, 0) or ceil_mode or divisor_override:
            raise _unsupported(where, "AvgPool2d with padding, ceil_mode or divisor_override")
        t = self.spatial_input(n, "AvgPool2d")
        kh, kw = _pair(kernel, "kernel_size", where)
        s = _same(stride if stride not in (None, (), []) else kernel, "stride", where)
        return _P("avgpool", self._unique(name), t, [n], KH=kh, KW=kw, stride=s, src=["AvgPool2d"])

    def conv(self, n: torch.fx.Node, mod: nn.Module, where: str) -> _P:
        groups = getattr(mod, "groups", 1)
        if groups != 1:
            raise _unsupported(where, f"grouped / depthwise convolution (groups={groups})")
        if _pair(getattr(mod, "dilation", 1), "dilation", where) != (1, 1):
            raise _unsupported(where, f"dilated convolution (dilation={mod.dilation})")
        if getattr(mod, "padding_mode", "zeros") != "zeros":
            raise _unsupported(where, f"padding_mode={mod.padding_mode!r}", "only zero padding")
        kh, kw = _pair(mod.kernel_size, "kernel_size", where)
        pad = mod.padding
        if pad == "valid":
            pad = 0
        elif pad == "same":
            if kh != kw or kh % 2 == 0 or _same(mod.stride, "stride", where) != 1:
                raise _unsupported(where, "padding='same' with an even or non-square kernel")
            pad = kh // 2
        t = self.spatial_input(n, type(mod).__name__)
        return _P("conv", self._unique(n.target), t, [n], mod=mod, KH=kh, KW=kw,
                  stride=_same(mod.stride, "stride", where), pad=_same(pad, "padding", where),
                  src=[type(mod).__name__])

    def linear(self, n: torch.fx.Node, mod: nn.Module, where: str) -> _P:
        a, v = self.arg(n)
        t = self.materialize(v, where)
        if not t.flat:
            raise _unsupported(where, "Linear on a 4-D [B,C,H,W] activation", "insert a Flatten first")
        return _P("conv", self._unique(n.target), t, [n], mod=mod, is_linear=True, src=[type(mod).__name__])

    def relu(self, n: torch.fx.Node, where: str):
        a, v = self.arg(n)
        if isinstance(v, _P) and not v.relu and v.fusable(a):
            v.relu = True
            v.chain.append(n)
            v.src.append("ReLU")
            return v
        t = self.materialize(v, where)
        if self.tensors[t.name]["unsigned"]:
            return t  # already >= 0: ReLU is the identity
        raise _unsupported(where, "a ReLU on a signed tensor that is not the output of a conv/linear/add/avgpool",
                           "ReLU is fused into the requantization of the op producing its input")

    def flatten(self, n: torch.fx.Node, start: int, end: int, where: str) -> _T:
        a, v = self.arg(n)
        t = self.materialize(v, where)
        if start != 1 or end not in (-1, 3):
            raise _unsupported(where, f"flatten(start_dim={start}, end_dim={end})", "only flatten(x, 1)")
        return _T(t.name, flat=True)

    def size(self, n: torch.fx.Node, where: str):
        """``x.size()`` / ``x.size(i)`` / ``x.shape``: a symbolic dimension (only the batch size, dim 0, may
        reach a view / reshape: it is the one dimension that is not a constant of the model)."""
        a, v = self.arg(n)
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        if dim is None:
            return _Dim(None)
        if not isinstance(dim, int):
            raise _unsupported(where, f"size({dim!r})")
        return _Dim(dim)

    def getitem(self, n: torch.fx.Node, where: str) -> "_Dim":
        a, v = self.arg(n)
        i = n.args[1]
        if not isinstance(v, _Dim) or v.dim is not None or not isinstance(i, int):
            raise _unsupported(where, "indexing (getitem)", "only x.size()[i] / x.shape[i] in a view / reshape")
        return _Dim(i)

    def view(self, n: torch.fx.Node, spec, where: str) -> _T:
        """``x.view(...)`` / ``x.reshape(...)`` / ``torch.reshape(x, ...)``: supported when it is a flatten
        from dim 1, written the ways models write it: ``(x.size(0), -1)``, ``(x.shape[0], -1)``,
        ``(-1, C*H*W)``, ``(x.size(0), C*H*W)``; or a no-op view of an already flat [B, F] tensor."""
        a, v = self.arg(n)
        t = self.materialize(v, where)
        if len(spec) == 1 and isinstance(spec[0], (tuple, list)):
            spec = tuple(spec[0])
        H, W, C = self.tensors[t.name]["shape"]
        feat = H * W * C

        def batch(e) -> bool:
            return isinstance(e, torch.fx.Node) and isinstance(self.val.get(e), _Dim) and self.val[e].dim == 0

        ok = len(spec) == 2 and ((batch(spec[0]) and (spec[1] == -1 or spec[1] == feat))
                                 or (spec[0] == -1 and spec[1] == feat))
        if not ok:
            shown = ", ".join("x.size(0)" if batch(e) else (e.name if isinstance(e, torch.fx.Node) else repr(e))
                              for e in spec)
            raise _unsupported(where, f"{n.target}({shown}) on a [B, {C}, {H}, {W}] tensor",
                               f"only a flatten from dim 1 is supported: x.view(x.size(0), -1), "
                               f"x.view(-1, {feat}), torch.flatten(x, 1) or nn.Flatten()")
        return _T(t.name, flat=True)

    def adaptive_pool(self, n: torch.fx.Node, size, where: str) -> _P:
        t = self.spatial_input(n, "AdaptiveAvgPool2d")
        H, W, _ = self.tensors[t.name]["shape"]
        oh, ow = _pair(size, "output_size", where) if size is not None else (H, W)
        oh, ow = oh or H, ow or W  # None in a tuple means "keep"
        if H % oh or W % ow or (oh > 1 and ow > 1 and H // oh != W // ow) or (oh == 1) != (ow == 1):
            raise _unsupported(where, f"AdaptiveAvgPool2d({size}) on {H}x{W}", "needs equal, exact windows")
        kh, kw = H // oh, W // ow
        stride = 1 if oh == 1 and ow == 1 else kh  # global pool: one window, stride irrelevant
        return _P("avgpool", self._unique(n.target if n.op == "call_module" else n.name), t, [n],
                  KH=kh, KW=kw, stride=stride, src=["AdaptiveAvgPool2d"])

    def add(self, n: torch.fx.Node, where: str) -> _P:
        if len(n.args) != 2 or any(k != "alpha" or v != 1 for k, v in n.kwargs.items()):
            raise _unsupported(where, "this form of add", "only a + b of two tensors")
        (a, va), (b, vb) = self.arg(n, 0), self.arg(n, 1)
        if a is b:
            raise _unsupported(where, "x + x", "the two operands of a residual add must differ")

        def ok(node, v):
            return isinstance(v, _P) and v.kind == "conv" and not v.relu and v.res is None and v.fusable(node)

        if ok(a, va):
            main, other = va, vb
        elif ok(b, vb):
            main, other = vb, va
        else:
            raise UnsupportedLayerError(
                f"{where}: this add cannot be fused: neither operand is the output of a conv/linear (+BN) "
                "used only by this add; the engine adds residuals inside the requantization of such a conv")
        t = self.materialize(other, where)
        if t.flat != main.is_linear or self.tensors[t.name]["shape"] != _hwc(n):
            raise _unsupported(where, "an add of tensors of different shapes (broadcasting)")
        main.res = t
        main.chain.append(n)
        main.src.append("Add")
        return main

    def function(self, n: torch.fx.Node):
        where = _where(n)
        tgt = n.target
        if (n.op == "call_function" and tgt in _ADD_FUNCS) or (n.op == "call_method" and tgt in _ADD_METHODS):
            return self.add(n, where)
        if (n.op == "call_function" and tgt in _RELU_FUNCS) or (n.op == "call_method" and tgt in _RELU_METHODS):
            return self.relu(n, where)
        if (n.op == "call_function" and tgt in _FLATTEN_FUNCS) or (n.op == "call_method" and tgt in _FLATTEN_METHODS):
            args = list(n.args[1:]) + [None, None]
            start = n.kwargs.get("start_dim", args[0] if args[0] is not None else 0)
            end = n.kwargs.get("end_dim", args[1] if args[1] is not None else -1)
            return self.flatten(n, start, end, where)
        if n.op == "call_function" and tgt is F.adaptive_avg_pool2d:
            return self.adaptive_pool(n, n.args[1] if len(n.args) > 1 else n.kwargs.get("output_size"), where)
        if n.op == "call_function" and tgt is F.dropout:
            a, v = self.arg(n)
            return v
        if n.op == "call_method" and tgt == "size":
            return self.size(n, where)
        if n.op == "call_function" and tgt is getattr and len(n.args) == 2 and n.args[1] == "shape":
            self.arg(n)
            return _Dim(None)
        if n.op == "call_function" and tgt is operator.getitem:
            return self.getitem(n, where)
        if n.op == "call_method" and tgt in ("view", "reshape"):
            return self.view(n, tuple(n.args[1:]) or (n.kwargs.get("shape") or n.kwargs.get("size"),), where)
        if n.op == "call_function" and tgt is torch.reshape:
            return self.view(n, (n.args[1] if len(n.args) > 1 else n.kwargs.get("shape"),), where)
        if n.op == "call_function" and tgt is F.max_pool2d:
            args = _bind(n, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                         dict(stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False))
            return self.maxpool(n, n.name, args["kernel_size"], args["stride"], args["padding"], args["dilation"],
                                args["ceil_mode"], args["return_indices"], where)
        if n.op == "call_function" and tgt is F.avg_pool2d:
            args = _bind(n, ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                             "divisor_override"),
                         dict(stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None))
            return self.avgpool(n, n.name, args["kernel_size"], args["stride"], args["padding"], args["ceil_mode"],
                                args["divisor_override"], where)
        name = getattr(tgt, "__name__", str(tgt))
        hint = "use nn.Flatten or torch.flatten(x, 1)" if name in ("squeeze",) else ""
        raise _unsupported(where, f"{'method' if n.op == 'call_method' else 'function'} {name}", hint)


# ---------------------------------------------------------------------------------------------
# pass 2: integer parameters


def _bn_affine(bn: nn.BatchNorm2d | None, oc: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with bn(z) = a*z + b per channel; identity when there is no BN."""
    if bn is None:
        return np.ones(oc), np.zeros(oc)
    var = bn.running_var.detach().double().numpy()
    mu = bn.running_mean.detach().double().numpy()
    g = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones(oc)
    beta = bn.bias.detach().double().numpy() if bn.bias is not None else np.zeros(oc)
    a = g / np.sqrt(var + bn.eps)
    return a, beta - a * mu


def _codebook_weights(mod: nn.Module, is_linear: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(idx [OC,KH,KW,V], keep bool [OC,KH,KW,V,d], codebook int8 [k,d], scale) of an MVQ/VQ layer."""
    if getattr(mod, "codebook_scale", None) is None:
        # quantizing it here would make the golden model differ from the float model the caller holds
        raise QuantizationError("codebook is still float: call layer.quantize_codebook_(8) before quantize_model")
    cb, scale = mod.int_codebook()
    cb = np.asarray(cb)
    d = int(mod.d)
    idx = mod.indices.detach().cpu().numpy().astype(np.int64)
    mask = mod.mask.detach().cpu().numpy()
    if getattr(mod, "in_chw", None):   # vectors along C of a flattened map: the mask in the same (h, w, c) order
        C, H, W = mod.in_chw
        mask = _flatten_perm(mask, (H, W, C))
    if is_linear:
        idx = idx[:, None, None, :]
        mask = mask[:, :, None, None]
    oc, cin, kh, kw = mask.shape
    if cin % d:
        raise QuantizationError(f"Cin={cin} is not a multiple of d={d}")
    keep = (mask.transpose(0, 2, 3, 1) != 0).reshape(oc, kh, kw, cin // d, d)
    if idx.shape != (oc, kh, kw, cin // d):
        raise QuantizationError(f"indices shape {idx.shape} does not match [Cout,KH,KW,Cin/d]")
    return idx, keep, cb.astype(np.int8), float(scale)


def _dense_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [OC,KH,KW,C] -> (int8 [OC,KH,KW,C] in [-127,127], per-channel scale [OC])."""
    amax = np.abs(w).reshape(w.shape[0], -1).max(1)
    s = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.rint(w / s[:, None, None, None]), -127, 127).astype(np.int8), s


def _flatten_perm(w: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    """Linear weight columns in torch order (c, h, w) -> our NHWC order (h, w, c). w: [OC, C*H*W]."""
    from flow.compress.flatten import to_hwc   # the one definition of that column order

    H, W, C = hwc
    return to_hwc(torch.from_numpy(np.ascontiguousarray(w)), (C, H, W)).numpy()


def _warn_dense_fallback(name: str, mod: nn.Module, hwc: tuple[int, int, int], notes: dict) -> None:
    """A codebook Linear after a spatial flatten is stored dense: say so, with the ratio really stored.

    Its codeword vectors are d consecutive inputs in torch's flatten order (c*H*W + h*W + w): d positions of
    one channel. The engine holds the map NHWC and runs such a Linear as an HxW-kernel conv whose vectors run
    along C; a torch vector's elements lie C bytes apart there, so no permutation keeps the vectors whole
    and the layer is stored as its decoded int8 weights. ``compress`` cuts the vectors along C instead when
    it is given an example input and C is a multiple of d (``flow.compress.flatten``)."""
    import math
    import warnings

    nw = int(mod.mask.numel())
    n_bias = 0 if getattr(mod, "bias", None) is None else int(mod.bias.numel())
    k = int(mod.codebook.shape[0])
    idx_bits = int(mod.indices.numel()) * (math.ceil(math.log2(k)) if k > 1 else 0)
    n, m = int(mod.n), int(mod.m)
    mask_bits = (nw // m) * (math.ceil(math.log2(math.comb(m, n))) if n < m else 0)
    cb_bits = k * int(mod.d) * (getattr(mod, "codebook_bits", None) or 32)
    float_bits = 32 * (nw + n_bias)
    claimed = float_bits / max(1, idx_bits + mask_bits + cb_bits + 32 * n_bias)
    stored = float_bits / (8 * nw + 32 * n_bias)    # int8 weights, int32 bias
    H, W, C = hwc
    notes.setdefault("dense_fallback_ratio", {})[name] = {"compressed": claimed, "stored": stored}
    warnings.warn(
        f"layer '{name}' ({type(mod).__name__}, {claimed:.2f}x compressed) is stored DENSE int8 by the engine "
        f"({stored:.2f}x vs float32): it reads a flattened {C}x{H}x{W} map whose NHWC order splits its codeword "
        f"vectors; compress with an example input (compress(..., data=x) or example=x[:1]) so its vectors run "
        f"along C" + (f" (needs C = {C} a multiple of d = {int(mod.d)})" if C % int(mod.d) else "")
        + f", pool to 1x1 before the flatten, or leave it uncompressed (skip=[{name!r}])", UserWarning, stacklevel=4)


def _pq_node(p: _P, tensors: dict[str, QTensor]) -> QNode:
    """A PQ layer -> 'pq' node (see the module docstring for the numeric choices)."""
    tin, tout = tensors[p.inp.name], tensors[p.out.name]
    mod = p.mod
    where = f"layer '{p.name}' ({type(mod).__name__})"
    H, W, C = tin.shape
    if p.is_linear and H * W > 1 and C > 1:
        raise _unsupported(where, "a PQLinear after a spatial flatten",
                           "its subvectors run along torch's (c, h, w) order, the engine holds NHWC")
    in_view = (1, 1, H * W * C) if p.is_linear else tin.shape
    nd = QNode(p.name, "pq", tin.name, tout.name, in_view, KH=p.KH, KW=p.KW, stride=p.stride, pad=p.pad,
               src="+".join(p.src), is_linear=p.is_linear)
    v = int(mod.v)
    lut_bits = int(getattr(mod, "lut_bits", 8))
    if lut_bits not in (8, 16):
        raise QuantizationError(f"{where}: lut_bits={lut_bits}, the LUT memory holds 8 or 16 bit entries")
    with torch.no_grad():
        P = mod.prototypes.detach().double().cpu().numpy()                # [Cs,K,v]
        Wm = mod.weight_matrix().detach().double().cpu().numpy()          # [OC,D], D in (kh,kw,cin) order
    Cs, Kp, _ = P.shape
    oc = Wm.shape[0]
    if Cs * v != Wm.shape[1] or Wm.shape[1] != nd.KH * nd.KW * in_view[2]:
        raise QuantizationError(f"{where}: {Cs} subspaces x v={v} do not cover the {Wm.shape[1]}-long input")
    lo, hi = act_range(tin.unsigned)
    s_in = tin.scale
    Pq = np.clip(np.rint(P / s_in), lo, hi)                              # the input's integer grid
    bias_f = mod.bias.detach().double().cpu().numpy() if getattr(mod, "bias", None) is not None else np.zeros(oc)
    a, b = _bn_affine(p.bn, oc)
    b = b + a * bias_f
    Wf = (a[:, None] * Wm).reshape(oc, Cs, v)                          # BN folded into the columns
    lut_f = np.einsum("skv,osv->sko", Pq * s_in, Wf)                    # from the QUANTIZED prototypes
    qmax = (1 << (lut_bits - 1)) - 1
    amax = float(np.abs(lut_f).max(initial=0.0))
    s_y = tout.scale
    s_lut = amax / qmax if amax > 0 else s_y                           # all-zero LUT: output = bias only
    lut_i = np.clip(np.rint(lut_f / s_lut), -qmax, qmax).astype(np.int64)
    bias_i = np.rint(b / s_lut)
    room = INT32_MAX - int(np.abs(lut_i).max(axis=1).sum(axis=0).max(initial=0))
    if np.abs(bias_i).max(initial=0) > room:
        raise QuantizationError(f"{where}: bias {np.abs(b).max():.3g} is too large for the LUT scale {s_lut:.3g} "
                                f"(the int32 accumulator would overflow)")
    real_mr = None
    if p.res is not None:
        nd.res = p.res.name
        real_mr = np.full(oc, tensors[p.res.name].scale / s_y)
    try:
        m, mr, s = quantize_multiplier(np.full(oc, s_lut / s_y), real_mr)
    except ValueError as e:
        raise QuantizationError(f"{where}: {e}") from e
    nd.wfmt = "pq"
    nd.proto, nd.lut, nd.v, nd.lut_bits, nd.lut_scale = Pq.astype(np.int64), lut_i, v, lut_bits, s_lut
    nd.bias, nd.mult, nd.shift, nd.res_mult = bias_i.astype(np.int64), m, s, mr
    nd.lo, nd.hi = act_range(tout.unsigned)
    return nd


def _conv_node(p: _P, tensors: dict[str, QTensor], notes: dict) -> QNode:
    if is_pq_layer(p.mod):
        return _pq_node(p, tensors)
    tin, tout = tensors[p.inp.name], tensors[p.out.name]
    H, W, C = tin.shape
    in_view = (1, 1, H * W * C) if p.is_linear else tin.shape
    spatial_flat = p.is_linear and H * W > 1
    mod = p.mod
    nd = QNode(p.name, "conv", tin.name, tout.name, in_view, KH=p.KH, KW=p.KW, stride=p.stride, pad=p.pad,
               src="+".join(p.src), is_linear=p.is_linear)
    if is_codebook_layer(mod):
        try:
            idx, keep, cb, scale = _codebook_weights(mod, p.is_linear)
        except QuantizationError as e:
            raise QuantizationError(f"layer '{p.name}' ({type(mod).__name__}): {e}") from None
        nd.n, nd.m, nd.d, nd.k = int(mod.n), int(mod.m), int(mod.d), int(cb.shape[0])
        oc = idx.shape[0]
        w_scale = np.full(oc, scale)
        if spatial_flat and tuple(getattr(mod, "in_chw", None) or ()) == (C, H, W):
            # compressed with its vectors along C of this very map (flow.compress.flatten): the (h, w, c)
            # columns are the NHWC order the engine reads, the layer stays a codebook layer
            nd.wfmt, nd.idx, nd.keep, nd.codebook = "codebook", idx, keep, cb
        elif spatial_flat:
            # the codeword vectors run along torch's (c,h,w) columns; after the NHWC permutation they
            # are no longer contiguous along C, so this layer is stored dense (exactly the same integers)
            wi = _flatten_perm(decode_codebook(idx, keep, cb).reshape(oc, -1), (H, W, C))
            nd.weight = wi.reshape(oc, 1, 1, -1).astype(np.int8)
            notes.setdefault("dense_fallback", []).append(p.name)
            _warn_dense_fallback(p.name, mod, (H, W, C), notes)
        else:
            nd.wfmt, nd.idx, nd.keep, nd.codebook = "codebook", idx, keep, cb
    else:
        if is_int_weight_layer(mod):  # already integer (VecQ): one step for the whole layer
            codes, step = mod.int_weight()  # weight = codes * step (VecQ paper: odd codes, step = alpha*step/2)
            wf = np.asarray(codes, np.float64)
        else:
            wf = mod.weight.detach().double().numpy()
        if p.is_linear:
            if spatial_flat:
                wf = _flatten_perm(wf, (H, W, C))
            wf = wf[:, None, None, :]
        else:
            wf = wf.transpose(0, 2, 3, 1)  # [OC,C,KH,KW] -> [OC,KH,KW,C]
        if is_int_weight_layer(mod):
            if np.abs(wf).max(initial=0) > 127:
                raise QuantizationError(f"layer '{p.name}': int_weight() codes exceed int8; use fewer bits "
                                        f"(VecQ: <= 7 with the paper scheme, <= 8 with sweep)")
            nd.weight, w_scale = wf.astype(np.int8), np.full(wf.shape[0], float(step))
        else:
            nd.weight, w_scale = _dense_weights(wf)
    oc = len(w_scale)
    bias_f = mod.bias.detach().double().numpy() if getattr(mod, "bias", None) is not None else np.zeros(oc)
    a, b = _bn_affine(p.bn, oc)
    b = b + a * bias_f
    s_x, s_y = tin.scale, tout.scale
    real_m = a * s_x * w_scale / s_y
    x_max = 255 if tin.unsigned else 128
    amax = np.abs(nd.int_weight()).reshape(oc, -1).sum(1) * x_max
    with np.errstate(divide="ignore", invalid="ignore"):
        bias_i = np.rint(b / (a * s_x * w_scale))
    const = ~np.isfinite(bias_i) | (np.abs(bias_i) > INT32_MAX - np.minimum(amax, 1 << 30))
    if const.any():
        # see the module docstring: the weights cannot move the output, make the channel an exact constant
        lost = float(np.max(np.abs(real_m[const]) * amax[const]))
        notes.setdefault("constant_channels", {})[p.name] = {"channels": np.flatnonzero(const).tolist(),
                                                             "max_lost_lsb": lost}
        if nd.wfmt == "dense":
            nd.weight = nd.weight.copy()
            nd.weight[const] = 0
        else:
            nd.keep = nd.keep.copy()
            nd.keep[const] = False
        real_m = np.where(const, 1.0, real_m)
        bias_i = np.where(const, np.clip(np.rint(b / s_y), -_CONST_BIAS_LIMIT, _CONST_BIAS_LIMIT), bias_i)
    real_mr = None
    if p.res is not None:
        nd.res = p.res.name
        real_mr = np.full(oc, tensors[p.res.name].scale / s_y)
    try:
        m, mr, s = quantize_multiplier(real_m, real_mr)
    except ValueError as e:
        raise QuantizationError(f"layer '{p.name}': {e}") from e
    nd.bias = bias_i.astype(np.int64)
    nd.mult, nd.shift = m, s
    nd.res_mult = mr
    nd.w_scale = w_scale
    nd.lo, nd.hi = act_range(tout.unsigned)
    return nd


def _avgpool_node(p: _P, tensors: dict[str, QTensor]) -> QNode:
    tin, tout = tensors[p.inp.name], tensors[p.out.name]
    C = tin.shape[2]
    m, _, s = quantize_multiplier(np.full(C, tin.scale / (p.KH * p.KW * tout.scale)))
    lo, hi = act_range(tout.unsigned)
    return QNode(p.name, "avgpool", tin.name, tout.name, tin.shape, KH=p.KH, KW=p.KW, stride=p.stride,
                 lo=lo, hi=hi, mult=m, shift=s, src="+".join(p.src))


class _Probe(torch.fx.Interpreter):
    """Runs the traced model once; an exception names the fx node (module) where the forward failed."""

    def run_node(self, n: torch.fx.Node):
        try:
            return super().run_node(n)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            where = _where(n)
            if n.op == "call_module":
                where += f" ({type(self.module.get_submodule(n.target)).__name__})"
            raise UnsupportedLayerError(f"the model's forward() fails at {where} on a calibration batch of "
                                        f"shape {tuple(self.args_shape)}: {type(e).__name__}: {first}") from None


def _probe_forward(gm: torch.fx.GraphModule, x: torch.Tensor) -> None:
    probe = _Probe(gm)
    probe.args_shape = x.shape
    probe.extra_traceback = False   # torch appends the fx node and a tracing hint to the message otherwise
    probe.run(x)


def _input_format(x: torch.Tensor, scale: float | None, unsigned: bool | None) -> tuple[float, bool]:
    lo, hi = float(x.min()), float(x.max())
    if unsigned is None:
        unsigned = lo >= 0.0
    if scale is None:
        if unsigned and hi <= 1.0:
            scale = 1.0 / 255.0  # images in [0, 1]: the contract's input format
        else:
            r = max(abs(lo), abs(hi)) or 1.0
            scale = r / (255.0 if unsigned else 127.0)
    return float(scale), bool(unsigned)


def quantize_model(
    model: nn.Module,
    calib_x: torch.Tensor,
    *,
    method: str = "percentile",
    percentile: float = 99.99,
    input_scale: float | None = None,
    input_unsigned: bool | None = None,
    batch_size: int = 256,
) -> QGraph:
    """Quantize ``model`` for the integer engine.

    model: float model (put in eval mode for calibration, its mode is restored);
    calib_x: float [N,C,H,W] calibration inputs (a few hundred training images suffice).
    method / percentile: activation range calibration (see flow.quant.calibrate); the
    model output is always calibrated with the max so the logits are never clipped.
    input_scale / input_unsigned: input format; default uint8 with scale 1/255 for data in [0, 1].
    Returns a QGraph; raises UnsupportedLayerError for layers the engine cannot run.
    """
    calib_x = torch.as_tensor(calib_x).float()
    if calib_x.ndim != 4:
        raise ValueError(f"calib_x must be [N,C,H,W], got shape {tuple(calib_x.shape)}")
    if len(calib_x) == 0:
        raise QuantizationError("the calibration set is empty (calib_x has 0 images): pass a few hundred "
                                "training images [N,C,H,W]")
    check_finite(calib_x, "calibration images", "remove or repair those images (every activation range is "
                 "measured on them)")
    check_model_finite(model, "quantize_model(model)")
    was_training = model.training
    model.eval()
    try:
        gm = trace(model)
        check_module_types(gm)
        with torch.no_grad():
            _probe_forward(gm, calib_x[:1])   # the model's own forward errors, in one line (ShapeProp prints them)
            ShapeProp(gm).propagate(calib_x[:1])
        bld = _Builder(gm)
        bld.run()
        in_scale, in_unsigned = _input_format(calib_x, input_scale, input_unsigned)
        bld.tensors["input"]["unsigned"] = in_unsigned
        fx_names = {t["fx"].name for t in bld.tensors.values() if t["fx"] is not None and t["alias"] is None}
        out_fx = bld.tensors[bld.output.name]["fx"].name
        ranges = activation_ranges(gm, calib_x, fx_names, method, percentile, exact_max={out_fx},
                                   batch_size=batch_size)
    finally:
        model.train(was_training)

    tensors: dict[str, QTensor] = {}
    for name, t in bld.tensors.items():  # insertion order: an alias's source comes first
        if t["fx"] is None:
            scale = in_scale
        elif t["alias"] is not None:
            scale = tensors[t["alias"]].scale
        else:
            scale = ranges[t["fx"].name] / (255.0 if t["unsigned"] else 127.0)
        tensors[name] = QTensor(name, t["shape"], float(scale), bool(t["unsigned"]))
    notes: dict = {}
    nodes: list[QNode] = []
    for p in bld.order:
        if isinstance(p, _Pool):
            tin = tensors[p.inp.name]
            lo, hi = act_range(tin.unsigned)
            nodes.append(QNode(p.name, "maxpool", tin.name, p.out.name, tin.shape, KH=p.KH, KW=p.KW,
                               stride=p.stride, lo=lo, hi=hi, src="MaxPool2d"))
        elif p.kind == "avgpool":
            nodes.append(_avgpool_node(p, tensors))
        else:
            nodes.append(_conv_node(p, tensors, notes))
    meta = {"calibration": {"method": method, "percentile": percentile, "n": int(len(calib_x))}, **notes}
    return QGraph(tensors, nodes, "input", bld.output.name, meta)
