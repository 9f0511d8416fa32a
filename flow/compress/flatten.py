"""Linear layers that read a flattened feature map, and the column order their vectors are cut in.

torch flattens an ``[N, C, H, W]`` map in (c, h, w) order, so the d consecutive inputs of a
Linear after such a flatten are d *positions* of one channel.  The engine holds the map NHWC
and runs that Linear as an HxW-kernel conv whose codeword vectors run along C: a torch-order
vector's elements lie C bytes apart there and the layer could only be stored dense.  Cutting
the vectors (and the N:M groups) along C instead, in (h, w, c) order, gives codewords the engine
stores as they are.  ``flatten_sources`` finds those layers (torch.fx + shape propagation on one
example input); ``to_hwc`` / ``from_hwc`` permute ``[Cout, C*H*W]`` columns between the orders.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.fx import symbolic_trace
from torch.fx.passes.shape_prop import ShapeProp

__all__ = ["flatten_sources", "vector_order", "to_hwc", "from_hwc"]

# modules between a flatten and its Linear that neither move nor mix features
_TRANSPARENT = (nn.Dropout, nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU)


def to_hwc(w: Tensor, chw: tuple[int, int, int]) -> Tensor:
    """Columns of ``w [Cout, C*H*W]`` from torch's (c, h, w) order to (h, w, c)."""
    C, H, W = chw
    return w.reshape(w.shape[0], C, H, W).permute(0, 2, 3, 1).reshape(w.shape[0], C * H * W)


def from_hwc(w: Tensor, chw: tuple[int, int, int]) -> Tensor:
    """Inverse of :func:`to_hwc`: columns of ``w [Cout, H*W*C]`` from (h, w, c) back to (c, h, w)."""
    C, H, W = chw
    return w.reshape(w.shape[0], H, W, C).permute(0, 3, 1, 2).reshape(w.shape[0], C * H * W)


def vector_order(chw, in_features: int, d: int, m: int) -> tuple[int, int, int] | None:
    """``chw`` when a Linear of ``in_features`` inputs can cut its d-vectors and m-groups along C, else None.

    Needs a spatial map (H*W > 1; with H*W == 1 both orders coincide) covering the inputs exactly, and
    C a multiple of d and m so no vector or group straddles two positions."""
    if chw is None:
        return None
    C, H, W = (int(v) for v in chw)
    if H * W <= 1 or C * H * W != in_features or C % d or C % m:
        return None
    return C, H, W


def _flatten_input(node: "torch.fx.Node", modules: dict) -> "torch.fx.Node | None":
    """The node a flatten-like ``node`` flattens (nn.Flatten, torch.flatten, .flatten/.view/.reshape)."""
    if node.op == "call_module" and isinstance(modules.get(node.target), nn.Flatten):
        return node.args[0]
    if node.op == "call_function" and node.target in (torch.flatten, torch.reshape):
        return node.args[0]
    if node.op == "call_method" and node.target in ("flatten", "view", "reshape"):
        return node.args[0]
    return None


def flatten_sources(model: nn.Module, example: Tensor | None) -> dict[str, tuple[int, int, int]]:
    """``{Linear name: (C, H, W)}`` for each nn.Linear whose input is a flattened ``[N, C, H, W]`` map, H*W > 1.

    ``example``: one input batch ``[B, C, H, W]`` (its first sample is used). Empty when there is no
    example or the model does not trace (torch.fx): those Linears keep torch's order, and the
    quantizer then says that the engine stores them dense."""
    if example is None:
        return {}
    was = model.training
    try:
        gm = symbolic_trace(model)
        model.eval()   # BatchNorm must not update its statistics on the example
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.as_tensor(example[:1]).float())
    except Exception:   # noqa: BLE001 - an untraceable model only loses the better vector order
        return {}
    finally:
        model.train(was)
    modules = dict(gm.named_modules())
    out: dict[str, tuple[int, int, int]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Linear):
            continue
        src = node.args[0] if node.args else None
        while isinstance(src, torch.fx.Node) and src.op == "call_module" and \
                isinstance(modules.get(src.target), _TRANSPARENT):
            src = src.args[0]
        flat = _flatten_input(src, modules) if isinstance(src, torch.fx.Node) else None
        meta = flat.meta.get("tensor_meta") if isinstance(flat, torch.fx.Node) else None
        shape = tuple(getattr(meta, "shape", ()) or ())
        if len(shape) == 4 and shape[2] * shape[3] > 1 and \
                shape[1] * shape[2] * shape[3] == modules[node.target].in_features:
            out[str(node.target)] = (int(shape[1]), int(shape[2]), int(shape[3]))
    return out
