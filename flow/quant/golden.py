"""The integer golden model: the one executable definition of the numeric contract.

* ``run(graph, x_int)``: integer inference on a QGraph (a compiled Program is
  executed by ``flow.compile.program_exec.run_program``, exactly as the engine
  does; C-simulation is compared with that);
* ``quantize_input`` / ``predict`` / ``evaluate``: the float <-> integer edges.

Everything between ``quantize_input`` and the final dequantization is integer
arithmetic (int64 in numpy; float64 matmuls are used only where they are exact,
see flow.quant.ops).
"""
from __future__ import annotations

import numpy as np

from flow.finite import check_finite
from flow.quant import ops as K
from flow.quant.graph import QGraph, QNode
from flow.quant.requant import requantize

__all__ = ["quantize_input", "run", "predict", "evaluate", "run_node"]


def quantize_input(x_float_nchw, scale: float, unsigned: bool) -> np.ndarray:
    """Float images [B,C,H,W] -> integer NHWC [B,H,W,C] (uint8 if unsigned else int8).

    round-half-to-even of x / scale, saturated; this is the host's job, outside the integer program.
    """
    x = np.asarray(x_float_nchw.detach().cpu().numpy() if hasattr(x_float_nchw, "detach") else x_float_nchw,
                   dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"quantize_input: expected [B,C,H,W], got shape {x.shape}")
    check_finite(x, "quantize_input: input images", "a NaN would become an arbitrary integer; repair the images")
    lo, hi = (0, 255) if unsigned else (-128, 127)
    q = np.clip(np.rint(x / scale), lo, hi).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(q.astype(np.uint8 if unsigned else np.int8))


def run_node(nd: QNode, x: np.ndarray, res: np.ndarray | None = None, w: np.ndarray | None = None) -> np.ndarray:
    """One QGraph node. x: int [B,H,W,C] (the input tensor); res: int [B,OH,OW,OC] or None;
    w: pre-decoded int weights [OC,KH,KW,C] (decoded here when None). Returns int64 [B,OH,OW,OC]."""
    x = np.asarray(x, np.int64).reshape(x.shape[0], *nd.in_view)
    if nd.kind == "conv":
        acc = K.conv2d(x, nd.int_weight() if w is None else w, nd.bias, nd.stride, nd.pad)
        return requantize(acc, nd.mult, nd.shift, nd.lo, nd.hi, res, nd.res_mult if res is not None else None)
    if nd.kind == "pq":
        acc = K.pq_conv(x, nd.proto, nd.lut, nd.bias, nd.KH, nd.KW, nd.stride, nd.pad)
        return requantize(acc, nd.mult, nd.shift, nd.lo, nd.hi, res, nd.res_mult if res is not None else None)
    if nd.kind == "maxpool":
        return K.maxpool(x, nd.KH, nd.KW, nd.stride)
    if nd.kind == "avgpool":
        return requantize(K.window_sum(x, nd.KH, nd.KW, nd.stride), nd.mult, nd.shift, nd.lo, nd.hi)
    raise ValueError(f"node {nd.name}: unknown kind {nd.kind!r}")


def _run_graph(graph: QGraph, x_int: np.ndarray, batch_size: int, return_all: bool):
    tin = graph.in_tensor
    if x_int.shape[1:] != tin.shape:
        raise ValueError(f"input is {x_int.shape[1:]}, the graph expects {tin.shape} (HWC)")
    weights = {nd.name: nd.int_weight() for nd in graph.nodes if nd.kind == "conv"}  # decode once
    outs_all: dict[str, list[np.ndarray]] = {nd.name: [] for nd in graph.nodes}
    result = []
    for i in range(0, max(len(x_int), 1), batch_size):
        vals = {graph.input: np.asarray(x_int[i: i + batch_size], np.int64)}
        for nd in graph.nodes:
            res = vals[nd.res] if nd.res is not None else None
            vals[nd.out] = run_node(nd, vals[nd.inp], res, weights.get(nd.name))
            if return_all:
                outs_all[nd.name].append(vals[nd.out])
        result.append(vals[graph.output])
    if return_all:
        return {k: np.concatenate(v) for k, v in outs_all.items()}
    return np.concatenate(result)


def run(graph: QGraph, x_int: np.ndarray, batch_size: int = 256, return_all: bool = False):
    """Integer inference. x_int: int [B,H,W,C] (from ``quantize_input``).

    Returns int64 [B,OH,OW,OC], the output tensor's integers (multiply by its scale for real values).
    ``return_all=True`` returns every node's output instead: {node name: array}.
    """
    if not isinstance(graph, QGraph):
        raise TypeError(f"run: expected a QGraph, got {type(graph).__name__} (a Program runs with "
                        "flow.compile.program_exec.run_program)")
    return _run_graph(graph, np.asarray(x_int), batch_size, return_all)


def predict(graph: QGraph, x_float, batch_size: int = 256) -> np.ndarray:
    """Float inputs [B,C,H,W] -> dequantized outputs: [B,OC] when the output is 1x1 (logits),
    else [B,OC,OH,OW] (torch layout)."""
    s_in, uns, s_out = graph.in_tensor.scale, graph.in_tensor.unsigned, graph.out_tensor.scale
    y = run(graph, quantize_input(x_float, s_in, uns), batch_size=batch_size) * s_out
    return y[:, 0, 0, :] if y.shape[1:3] == (1, 1) else y.transpose(0, 3, 1, 2)


def evaluate(model, graph: QGraph, x, y, batch_size: int = 256) -> dict:
    """Float (torch ``model``; None to skip) vs integer top-1 accuracy on x float [N,C,H,W], y [N].

    Returns {'float_acc', 'int_acc', 'agreement' (fraction of equal predictions), 'n'}.
    Argmax ties go to the lowest index (numpy's argmax), as in hardware.
    """
    y = np.asarray(y.numpy() if hasattr(y, "numpy") else y)
    logits_q = predict(graph, x, batch_size)
    pred_q = logits_q.reshape(len(logits_q), -1).argmax(1)
    out = {"int_acc": float((pred_q == y).mean()) if len(y) else 0.0, "n": int(len(y))}
    if model is not None:
        import torch  # only needed for the float side

        xt = torch.as_tensor(np.asarray(x.numpy() if hasattr(x, "numpy") else x)).float()
        was = model.training
        model.eval()
        with torch.no_grad():
            pf = torch.cat([model(xt[i: i + batch_size]) for i in range(0, len(xt), batch_size)]).argmax(1).numpy()
        model.train(was)
        out["float_acc"] = float((pf == y).mean()) if len(y) else 0.0
        out["agreement"] = float((pf == pred_q).mean()) if len(y) else 0.0
    return out
