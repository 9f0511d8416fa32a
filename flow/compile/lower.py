"""Lowering: QGraph -> Program for one EngineConfig.

``lower(qgraph, engine)`` maps every QGraph node to one Program op, assigns
activation buffers, packs the integer parameters in the layouts program.py
defines, and checks every engine limit, raising :class:`LoweringError` that
names the layer and the limit it breaks.

Buffer allocation: the input arrives in buffer 0; each op writes a buffer
that none of its operands occupies; a buffer is reused once the last op
reading its tensor has run (a residual stays alive until the conv that adds
it). Pooling ops are not bounded by engine.max_kernel (a global average pool's
window is the whole map; the pool unit walks windows, it holds no kernel).
Lowest free id first, so plain chains ping-pong between buffers 0 and 1
and a ResNet basic block needs exactly 3.

A residual that is the op's own input (``y = x + conv(x)``): the engine reads the
residual through the port of the residual buffer's bank while the array reads the
input buffer's banks, so the two must be different buffers (validate.py refuses
res_buf == in_buf). ``residual_copies`` inserts, right before such an op, a copy of
its input into a fresh tensor, as a 1x1 stride-1 max pool (an exact byte copy on
every executor: the golden model, the validator and the engine's pool unit), and
the op reads its residual from the copy. The op then needs three live buffers
(input, copy, output) plus whatever else is live; when the engine has fewer,
``allocate_buffers`` refuses it here, naming the copy. The Program has one op more
per such residual (the cycle model counts it like any max pool).

Field conventions for ops (beyond program.py's docstring):
  dense conv ops have n = m = d = k = 0; codebook ops carry the layer's n, m, d, k;
  maxpool ops have out_unsigned = in_unsigned and lo/hi of that format;
  a global average pool has KH = H, KW = W, stride 1;
  a Linear is a 1x1 conv on a 1x1xC input (C = H*W*C' after a flatten: the weight
  columns were permuted at conversion, flow.quant.convert).
  PQ ops ('pq' nodes) carry v, K, lut_bits and the arrays proto / lut; their limits are
  engine.pq, pq_v_max, pq_k_max, pq_subspaces_max. A LUT larger than engine.lut_bytes
  (on-chip, 16-bit entries) is not an error: the lookup engine then reads its rows
  from DDR per lookup (slow; listed in ``program.meta['pq_streamed']``); only the whole
  image must fit engine.param_bytes.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from flow.compile.engine import EngineConfig
from flow.compile.layout import PlacementError, place, share_masks
from flow.compile.program import AVGPOOL, CODEBOOK, CONV, DENSE, MAXPOOL, PQ, Op, Program
from flow.quant.graph import QGraph, QNode, QTensor
from flow.quant.ops import acc_bound, keep_to_mask_bits, pq_acc_bound

INT64_MAX = (1 << 63) - 1
COPY_SRC = "residual copy"   # QNode.src of the copy ops residual_copies inserts


class LoweringError(ValueError):
    """The model does not fit the engine (a limit, named in the message, is exceeded)."""


def _check_limits(nd: QNode, op: Op, engine: EngineConfig, graph: QGraph) -> None:
    where = f"layer '{nd.name}' ({nd.src or nd.kind})"
    for t in {nd.inp, nd.out} | ({nd.res} if nd.res else set()):
        nb = graph.tensors[t].nbytes
        if nb > engine.act_buf_bytes:
            raise LoweringError(
                f"{where}: activation '{t}' {graph.tensors[t].shape} is {nb} bytes, "
                f"engine.act_buf_bytes = {engine.act_buf_bytes}")
    cin = op.C
    src = graph.tensors[nd.inp].shape
    if nd.is_linear and tuple(nd.in_view) != tuple(src) and int(np.prod(src)) == op.C:
        # a Linear after a flatten runs as an HxW-kernel conv on the HxWxC tensor (flow.compile.layout
        # ._unflatten): the array sees C input channels, and the kernel must fit max_kernel
        cin = src[2]
        if max(src[0], src[1]) > engine.max_kernel:
            raise LoweringError(f"{where}: a Linear on a flattened {src[0]}x{src[1]}x{src[2]} tensor runs as a "
                                f"{src[0]}x{src[1]} kernel > engine.max_kernel = {engine.max_kernel}: pool the map "
                                f"first or raise max_kernel")
    for what, v in (("input channels", cin), ("output channels", op.OC)):
        if v > engine.max_channels:
            raise LoweringError(f"{where}: {what} {v} > engine.max_channels = {engine.max_channels}")
    if op.opcode == PQ:
        _check_pq_limits(where, op, engine)
    if op.opcode in (CONV, PQ) and max(op.KH, op.KW) > engine.max_kernel:
        raise LoweringError(f"{where}: kernel {op.KH}x{op.KW} > engine.max_kernel = {engine.max_kernel}")
    if op.wfmt == CODEBOOK:
        if op.k > engine.k_max:
            raise LoweringError(f"{where}: codebook size k = {op.k} > engine.k_max = {engine.k_max}")
        if op.d > engine.d_max:
            raise LoweringError(f"{where}: codeword length d = {op.d} > engine.d_max = {engine.d_max}")
        if op.C % op.d:
            raise LoweringError(f"{where}: Cin = {op.C} is not a multiple of d = {op.d}")
        # any N:M (and dense) codebook layer runs: the array takes each of its engine.m-lane groups in
        # passes_of(op) passes of engine.n weights (flow.compile.layout; the validator recomputes them),
        # so a model may mix 2:4 and 4:8 layers on one engine; denser masks only cost cycles


def lut_entries(op: Op) -> int:
    """Entries of a PQ op's LUT (Cs * K * OC)."""
    return (op.KH * op.KW * op.C // op.v) * op.K * op.OC if op.v else 0


def _check_pq_limits(where: str, op: Op, engine: EngineConfig) -> None:
    if not engine.pq:
        raise LoweringError(f"{where}: a PQ layer, but the engine has no lookup unit (engine.pq = False)")
    D = op.KH * op.KW * op.C
    if op.v > engine.pq_v_max:
        raise LoweringError(f"{where}: PQ subvector length v = {op.v} > engine.pq_v_max = {engine.pq_v_max}")
    if op.K > engine.pq_k_max:
        raise LoweringError(f"{where}: PQ prototypes per subspace K = {op.K} > engine.pq_k_max = {engine.pq_k_max}")
    if D % op.v:
        raise LoweringError(f"{where}: PQ patch length KH*KW*C = {D} is not a multiple of v = {op.v}")
    if D // op.v > engine.pq_subspaces_max:
        raise LoweringError(f"{where}: PQ subspaces KH*KW*C/v = {D // op.v} > engine.pq_subspaces_max = "
                            f"{engine.pq_subspaces_max}")
    if op.lut_bits not in (8, 16):
        raise LoweringError(f"{where}: PQ lut_bits = {op.lut_bits}, the LUT memory holds 8 or 16 bit entries")
    lut = op.arrays["lut"]
    qmax = (1 << (op.lut_bits - 1)) - 1
    if lut.size and int(np.abs(lut.astype(np.int64)).max()) > qmax:
        raise LoweringError(f"{where}: LUT values exceed lut_bits = {op.lut_bits}")
    nbytes = lut_entries(op) * 2
    if nbytes > engine.param_bytes:
        raise LoweringError(f"{where}: PQ LUT is {nbytes} bytes > engine.param_bytes = {engine.param_bytes}")


def _check_overflow(nd: QNode, op: Op, w: np.ndarray, engine: EngineConfig, graph: QGraph) -> None:
    """|acc| <= sum|w| * max|x| + |bias| must fit acc_bits; the int64 requant sum must fit too."""
    where = f"layer '{nd.name}' ({nd.src or nd.kind})"
    x_max = 255 if op.in_unsigned else 128
    if op.opcode == CONV:
        bound = acc_bound(w, nd.bias, x_max)
    elif op.opcode == PQ:  # one LUT row per subspace: sum_s max_k |lut| + |bias|
        bound = pq_acc_bound(nd.lut, nd.bias)
    else:  # average pool accumulates the window
        bound = np.full(op.C, op.KH * op.KW * x_max, np.int64)
    acc_max = (1 << (engine.acc_bits - 1)) - 1
    if bound.max(initial=0) > acc_max:
        c = int(bound.argmax())
        what = "sum_s max_k |lut| + |bias|" if op.opcode == PQ else f"sum|w|*{x_max} + |bias|"
        raise LoweringError(
            f"{where}: accumulator can reach {int(bound[c])} (channel {c}: {what}), "
            f"more than the engine's int{engine.acc_bits} accumulator ({acc_max})")
    if op.opcode != MAXPOOL:
        req = bound.astype(object) * np.abs(nd.mult.astype(object)) + (1 << 30)
        if nd.res is not None:
            req = req + 255 * np.abs(nd.res_mult.astype(object))
        if max(req, default=0) > INT64_MAX:  # pragma: no cover - impossible with int32 acc and M
            raise LoweringError(f"{where}: the requantization sum can exceed int64")


def _node_to_op(nd: QNode, graph: QGraph, bufs: dict[str, int]) -> tuple[Op, np.ndarray | None]:
    tin, tout = graph.tensors[nd.inp], graph.tensors[nd.out]
    H, W, C = nd.in_view
    OH, OW, OC = tout.shape
    common = dict(H=H, W=W, C=C, OH=OH, OW=OW, OC=OC, KH=nd.KH, KW=nd.KW, stride=nd.stride, pad=nd.pad,
                  in_unsigned=int(tin.unsigned), out_unsigned=int(tout.unsigned), lo=nd.lo, hi=nd.hi,
                  name=nd.name)
    if nd.kind == "maxpool":
        return Op(MAXPOOL, bufs[nd.inp], bufs[nd.out], **common), None
    if nd.kind == "avgpool":
        return Op(AVGPOOL, bufs[nd.inp], bufs[nd.out], arrays=dict(mult=nd.mult, shift=nd.shift), **common), None
    if nd.kind not in ("conv", "pq"):
        raise LoweringError(f"layer '{nd.name}': unknown node kind {nd.kind!r}")
    arrays = dict(bias=nd.bias, mult=nd.mult, shift=nd.shift)
    res_buf, res_uns = -1, 0
    if nd.res is not None:
        res_buf, res_uns = bufs[nd.res], int(graph.tensors[nd.res].unsigned)
        arrays["res_mult"] = nd.res_mult
    if nd.kind == "pq":
        Cs, Kp, v = nd.proto.shape
        lut = np.asarray(nd.lut, np.int64)
        if lut.size and np.abs(lut).max() > (1 << 15) - 1:
            raise LoweringError(f"layer '{nd.name}': LUT values exceed int16")
        arrays.update(proto=np.asarray(nd.proto, np.int64), lut=lut)
        try:
            op = Op(PQ, bufs[nd.inp], bufs[nd.out], res_buf=res_buf, res_unsigned=res_uns, v=int(v), K=int(Kp),
                    lut_bits=int(nd.lut_bits), arrays=arrays, **common)
        except ValueError as e:  # prototypes outside the input format
            raise LoweringError(f"layer '{nd.name}': {e}") from None
        return op, None
    w = nd.int_weight()
    if nd.wfmt == "dense":
        if np.abs(w).max(initial=0) > 127:
            raise LoweringError(f"layer '{nd.name}': dense weights exceed int8")
        arrays["weight"] = w  # already [Cout][KH][KW][Cin]
        op = Op(CONV, bufs[nd.inp], bufs[nd.out], res_buf=res_buf, res_unsigned=res_uns, wfmt=DENSE,
                arrays=arrays, **common)
    else:
        if nd.k > 1 << 16:
            raise LoweringError(f"layer '{nd.name}': k = {nd.k} does not fit 16-bit indices")
        arrays.update(idx=nd.idx, mask=keep_to_mask_bits(nd.keep), codebook=nd.codebook)
        op = Op(CONV, bufs[nd.inp], bufs[nd.out], res_buf=res_buf, res_unsigned=res_uns, wfmt=CODEBOOK,
                n=nd.n, m=nd.m, d=nd.d, k=nd.k, arrays=arrays, **common)
    return op, w


def _fresh(name: str, taken) -> str:
    """``name``, or ``name`` with the lowest numeric suffix not in ``taken``."""
    out, i = name, 1
    while out in taken:
        out, i = f"{name}{i}", i + 1
    return out


def self_residual(nd: QNode) -> bool:
    """True when the node adds its own input as its residual (``y = x + conv(x)``)."""
    return nd.res is not None and nd.res == nd.inp


def residual_copies(graph: QGraph) -> QGraph:
    """``graph`` with a copy op before every node whose residual is its own input, that node reading
    its residual from the copy (the module docstring says why). The copy is a 1x1, stride-1, pad-0
    'maxpool' node (max over one element: the byte itself) into a new tensor of the same shape, scale
    and signedness, named ``<node>.res_copy``. Returns ``graph`` itself when it has no such node; the
    caller's graph is never modified. The result computes the same outputs (flow.quant.golden.run)."""
    if not any(self_residual(nd) for nd in graph.nodes):
        return graph
    tensors = dict(graph.tensors)
    names = {nd.name for nd in graph.nodes}
    nodes: list[QNode] = []
    for nd in graph.nodes:
        if self_residual(nd):
            t = graph.tensors[nd.inp]
            copy = _fresh(f"{nd.name}.res_copy", names.union(tensors))
            names.add(copy)
            tensors[copy] = QTensor(copy, tuple(t.shape), t.scale, t.unsigned)
            lo, hi = (0, 255) if t.unsigned else (-128, 127)
            nodes.append(QNode(name=copy, kind="maxpool", inp=nd.inp, out=copy, in_view=tuple(t.shape),
                               KH=1, KW=1, stride=1, pad=0, lo=lo, hi=hi, src=COPY_SRC))
            nd = dataclasses.replace(nd, res=copy)
        nodes.append(nd)
    return QGraph(tensors=tensors, nodes=nodes, input=graph.input, output=graph.output, meta=dict(graph.meta))


def allocate_buffers(graph: QGraph, num_bufs: int) -> dict[str, int]:
    """Tensor name -> activation buffer id (0..num_bufs-1); raises LoweringError if more are needed.

    A node whose residual is its own input is first given a copy (``residual_copies``): the result
    names the copies' tensors too, and counts the buffers the engine really needs."""
    graph = residual_copies(graph)
    last_use: dict[str, int] = {graph.input: -1}
    for i, nd in enumerate(graph.nodes):
        for t in (nd.inp, nd.res):
            if t is not None:
                last_use[t] = i
    last_use[graph.output] = len(graph.nodes)  # the result is read out after the last op
    bufs = {graph.input: 0}
    holder: dict[int, str] = {0: graph.input}
    for i, nd in enumerate(graph.nodes):
        # free buffers whose tensor was last read by an earlier op (this op's operands stay busy)
        for b, t in list(holder.items()):
            if last_use.get(t, -1) < i:
                del holder[b]
        free = [b for b in range(num_bufs) if b not in holder]
        if not free:
            live = ", ".join(f"'{t}'" for t in holder.values())
            why = ""
            if nd.src == COPY_SRC or nd.res in {c.out for c in graph.nodes if c.src == COPY_SRC}:
                why = ("; its residual is its own input, which the engine reads from a copy in another buffer "
                       "(input, copy and output live at once)")
            raise LoweringError(
                f"layer '{nd.name}': needs more than engine.num_bufs = {num_bufs} activation buffers "
                f"(live: {live}, plus its output){why}: raise EngineConfig.num_bufs")
        bufs[nd.out] = free[0]
        holder[free[0]] = nd.out
    return bufs


def lower(qgraph: QGraph, engine: EngineConfig) -> Program:
    """Compile a QGraph into a Program for ``engine``.

    Raises LoweringError (naming the layer and the limit) when the model does not fit:
    activation size, channels, kernel, k, d, N:M, op count, parameter image size,
    buffers, accumulator overflow, the banked activation layout and the on-chip parameter memories
    (flow.compile.layout.place, whose fields the returned Program carries).
    """
    if engine.act_bits != 8 or engine.weight_bits != 8:
        raise LoweringError(f"the integer program uses 8-bit activations and weights; engine has "
                            f"act_bits={engine.act_bits}, weight_bits={engine.weight_bits}")
    if not qgraph.nodes:
        raise LoweringError("empty graph: nothing to lower")
    if qgraph.nodes[-1].out != qgraph.output:
        raise LoweringError("the graph's output is not produced by its last node")
    n_model = len(qgraph.nodes)
    qgraph = residual_copies(qgraph)   # y = x + conv(x): the residual is read from a copy of x
    copies = [nd.name for nd in qgraph.nodes if nd.src == COPY_SRC]
    if len(qgraph.nodes) > engine.max_ops:
        extra = (f" ({n_model} layers and {len(copies)} copies of an input that is its layer's own residual)"
                 if copies else "")
        raise LoweringError(f"model has {len(qgraph.nodes)} ops{extra} > engine.max_ops = {engine.max_ops}")
    tin = qgraph.in_tensor
    if tin.nbytes > engine.act_buf_bytes:
        raise LoweringError(f"input {tin.shape} is {tin.nbytes} bytes > engine.act_buf_bytes = {engine.act_buf_bytes}")
    bufs = allocate_buffers(qgraph, engine.num_bufs)
    ops: list[Op] = []
    meta_ops = []
    pq_streamed: list[str] = []   # PQ layers whose LUT exceeds the on-chip lut_bytes (read from DDR)
    for nd in qgraph.nodes:
        op, w = _node_to_op(nd, qgraph, bufs)
        _check_limits(nd, op, engine, qgraph)
        _check_overflow(nd, op, w, engine, qgraph)
        ops.append(op)
        meta_ops.append({
            "name": nd.name, "src": nd.src, "kind": nd.kind,
            "in": nd.inp, "out": nd.out, "res": nd.res,
            "in_scale": qgraph.tensors[nd.inp].scale, "out_scale": qgraph.tensors[nd.out].scale,
            "res_scale": qgraph.tensors[nd.res].scale if nd.res else None,
            "w_scale": None if nd.w_scale is None else [float(s) for s in nd.w_scale],
            "lut_scale": nd.lut_scale,
        })
        if op.opcode == PQ and lut_entries(op) * 2 > engine.lut_bytes:
            pq_streamed.append(nd.name)
    prog = Program(
        ops=ops, in_scale=float(tin.scale), out_scale=float(qgraph.out_tensor.scale), in_shape=tuple(tin.shape),
        meta={"ops": meta_ops, "engine": engine.to_dict(), "engine_hash": engine.hash(),
              "buffers": {t: b for t, b in bufs.items()}, "num_bufs_used": len(set(bufs.values())),
              "in_unsigned": bool(tin.unsigned), "out_unsigned": bool(qgraph.out_tensor.unsigned),
              "quant": {k: v for k, v in qgraph.meta.items()}, "pq_streamed": pq_streamed,
              "residual_copies": copies},
    )
    # a row-mux engine: codebook layers whose masks are shared by every aligned group of cols output
    # channels get the shared-mask format (one mask per oc tile); the others keep per-channel masks and
    # run on the union of their tile's masks (more passes, flow.compile.layout.passes_of)
    prog = share_masks(prog, engine)
    try:   # the descriptor fields this engine derives: word layouts, tiles, on-chip addresses
        prog = place(prog, engine)
    except PlacementError as e:
        raise LoweringError(str(e)) from None
    size = len(prog.to_bytes())
    if size > engine.param_bytes:
        raise LoweringError(f"parameter image is {size} bytes > engine.param_bytes = {engine.param_bytes}")
    prog.meta["param_bytes"] = size
    return prog
