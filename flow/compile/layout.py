"""Placement: the fields a Program's descriptors carry for one EngineConfig.

``place(program, engine)`` returns a copy of ``program`` whose ops carry the
derived descriptor fields (program.py, format version 4; added in 3): activation word
layouts, tile counts, decode cycles, array passes, and where each op's
parameters live in the engine's on-chip memories. The engine then needs no
run-time divide and no address arithmetic beyond counters; the host-side
validator (flow.compile.validate) recomputes every field and refuses a
Program whose fields disagree.

Activation layout (docs/engine.md): a tensor [H, W, C] is stored as words of
``lanes`` channels; pixel (ih, iw), word (channel chunk) j lives in bank
``iw mod B`` at address ``(ih * WB + iw div B) * CW + j`` with
B = engine.act_banks, WB = ceil(W / B), CW = ceil(C / lanes); a bank holds
``bank_words`` words, so a tensor fits when H * WB * CW <= bank_words.

On-chip parameters: every op's parameters are *resident* (copied by the load
call) when all of them fit; otherwise ops are resident in program order while
they fit beside a shared *stream region*, and the rest are copied into that
region before each run of the op (per image; the cycle model counts it).
Channel parameters are always resident. PQ prototypes and LUTs are loaded per
op (per image) into the lookup unit; a LUT larger than ``lut_bytes`` streams
its rows from DDR per lookup (``lut_resident = 0``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from flow.compile.engine import EngineConfig
from flow.compile.program import AVGPOOL, CODEBOOK, CODEBOOK_SHARED, CONV, DENSE, DERIVED_FIELDS, PQ, Op, Program


class PlacementError(ValueError):
    """The Program does not fit the engine's on-chip memories or layout (the message names the op and limit)."""


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for integers (b > 0), exact for any size; the one copy the flow uses."""
    return -(-a // b)


@dataclass(frozen=True)
class Need:
    """On-chip parameter storage one op needs: vmem entries, codebook rows, dense words, channel rows."""

    v: int = 0
    cb: int = 0
    w: int = 0
    ch: int = 0

    def fits(self, engine: EngineConfig, used: "Need") -> bool:
        return (used.v + self.v <= engine.vmem_entries and used.cb + self.cb <= engine.cb_rows
                and used.w + self.w <= engine.dmem_words)

    def __add__(self, o: "Need") -> "Need":
        return Need(self.v + o.v, self.cb + o.cb, self.w + o.w, self.ch + o.ch)

    def max(self, o: "Need") -> "Need":
        return Need(max(self.v, o.v), max(self.cb, o.cb), max(self.w, o.w), max(self.ch, o.ch))


def is_codebook(op: Op) -> bool:
    """A codebook weight format: per-channel masks (CODEBOOK) or masks shared by mg channels (CODEBOOK_SHARED)."""
    return op.wfmt in (CODEBOOK, CODEBOOK_SHARED)


def passes_of(op: Op, engine: EngineConfig) -> int:
    """Array passes per step: the most weights one m-group of lanes keeps, over n, rounded up.

    Per-PE muxes (``engine.row_mux`` False): the most one output channel keeps. Row-mux array: the most
    the *union* of an output-channel tile's masks keeps (the tile's columns share one selection per row):
    for a shared-mask layer the shared pattern, for per-channel masks usually all m lanes."""
    if op.opcode != CONV:
        return 0
    if engine.n == engine.m:
        return 1
    if op.wfmt == DENSE:   # every channel kept; a layer narrower than a lane group keeps only C of m
        return cdiv(min(engine.m, op.C), engine.n)
    mask = op.arrays.get("mask")
    if mask is None or mask.size == 0:
        return cdiv(engine.m, engine.n)
    nvec = op.C // op.d
    mask = mask.reshape(-1, op.KH, op.KW, nvec)
    if op.wfmt == CODEBOOK_SHARED:               # [ceil(OC/mg)] rows -> one per output channel
        mask = mask[np.arange(op.OC) // max(op.mg, 1)]
    bits = (mask.astype(np.int64)[..., None] >> np.arange(op.d)) & 1          # [OC, KH, KW, nvec, d]
    per_ch = bits.reshape(*mask.shape[:-1], op.C)                               # [OC, KH, KW, C]
    pad = (-op.C) % engine.lanes                                                # lanes past C hold nothing
    per_ch = np.concatenate([per_ch, np.zeros((*per_ch.shape[:-1], pad), np.int64)], -1)
    if engine.row_mux:                           # union over each tile of cols output channels
        tpad = (-op.OC) % engine.cols
        per_ch = np.concatenate([per_ch, np.zeros((tpad, *per_ch.shape[1:]), np.int64)], 0)
        per_ch = per_ch.reshape(-1, engine.cols, *per_ch.shape[1:]).max(1)    # [NOT, KH, KW, CW*lanes]
    kept = per_ch.reshape(*per_ch.shape[:-1], -1, engine.m).sum(-1)
    return max(1, cdiv(int(kept.max(initial=0)), engine.n))


def mask_entries(op: Op, oc: int) -> int:
    """vmask_mem entries (one per d-vector) the masks of ``oc`` consecutive output channels starting at a
    tile boundary occupy: per channel (CODEBOOK), or one row per group of mg channels (CODEBOOK_SHARED)."""
    per = op.KH * op.KW * (op.C // op.d)
    return (cdiv(oc, op.mg) if op.wfmt == CODEBOOK_SHARED else oc) * per


def masks_shared(op: Op, group: int) -> bool:
    """True when a CODEBOOK conv's mask tensor [OC][KH][KW][C/d] is identical within every aligned group of
    ``group`` output channels (the last, partial group included)."""
    if op.opcode != CONV or op.wfmt != CODEBOOK or group < 1:
        return False
    mask = op.arrays.get("mask")
    if mask is None or mask.size == 0:
        return False
    mask = np.asarray(mask).reshape(op.OC, -1)
    first = mask[(np.arange(op.OC) // group) * group]      # each channel's group leader
    return bool(np.array_equal(mask, first))


def share_masks(program: Program, engine: EngineConfig) -> Program:
    """For a row-mux engine: every CODEBOOK conv whose masks are shared by each aligned group of
    ``engine.cols`` output channels becomes CODEBOOK_SHARED (mask rows of the groups' leaders, mg = cols);
    other ops unchanged. Without ``engine.row_mux`` the program is returned as is."""
    if not engine.row_mux:
        return program
    ops = []
    for op in program.ops:
        if masks_shared(op, engine.cols):
            arrays = dict(op.arrays)
            nvec = op.C // op.d
            arrays["mask"] = np.asarray(op.arrays["mask"]).reshape(op.OC, op.KH, op.KW, nvec)[::engine.cols].copy()
            op = dataclasses.replace(op, wfmt=CODEBOOK_SHARED, mg=engine.cols, arrays=arrays)
        ops.append(op)
    return Program(ops=ops, in_scale=program.in_scale, out_scale=program.out_scale, in_shape=program.in_shape,
                   meta=dict(program.meta))


def op_need(op: Op, engine: EngineConfig) -> Need:
    """On-chip storage of one op's parameters."""
    ch = cdiv(op.OC, engine.cols) if op.opcode in (CONV, PQ, AVGPOOL) else 0
    if op.opcode != CONV:
        return Need(ch=ch)
    if op.wfmt == DENSE:
        return Need(w=op.OC * op.KH * op.KW * cdiv(op.C, engine.lanes), ch=ch)
    return Need(v=op.OC * op.KH * op.KW * (op.C // op.d), cb=op.k, ch=ch)   # idx sets it: masks take <= as many


def _derive(op: Op, engine: EngineConfig) -> dict:
    L, B, R = engine.lanes, engine.act_banks, engine.rows
    f = dict(CW=cdiv(op.C, L), WB=cdiv(op.W, B), OCW=cdiv(op.OC, L), OWB=cdiv(op.OW, B),
             GR=0, NG=0, NPT=0, NOT=0, NSTEP=0, passes=0, dec=0, vpc=0, cpv=0, nsub=0, lut_resident=0,
             NVEC=0, rowmux=0)
    if op.opcode in (CONV, PQ):
        f["GR"] = cdiv(op.OW, R)
        f["NOT"] = cdiv(op.OC, engine.cols)
    if op.opcode == CONV:
        f["NG"] = op.OH * f["GR"]
        f["NPT"] = cdiv(f["NG"], engine.acc_groups)
        f["NSTEP"] = op.KH * op.KW * f["CW"]
        f["passes"] = passes_of(op, engine)
        f["rowmux"] = int(engine.row_mux)
        if is_codebook(op) and op.d:
            f["vpc"] = L // op.d if op.d <= L else 1
            f["cpv"] = op.d // L if op.d > L else 1
            f["NVEC"] = op.C // op.d
            f["dec"] = cdiv(engine.cols * f["vpc"], 2)   # two vmem / codebook reads per cycle
        else:
            f["dec"] = cdiv(engine.cols, 2)              # two dense weight words per cycle
    if op.opcode == PQ and op.v:
        f["nsub"] = op.KH * op.KW * op.C // op.v
        # the LUT memory holds rows of NOT words per output-channel lane: lut_bytes / 2 / cols entries each
        f["lut_resident"] = int(f["nsub"] * op.K * f["NOT"] <= engine.lut_bytes // 2 // engine.cols)
    return f


def derived_fields(op: Op, engine: EngineConfig) -> dict:
    """The fields ``place`` derives for ``op`` on ``engine`` (tile counts, passes, dec, vpc, ...), without placing it."""
    return _derive(op, engine)


def check_layout(op: Op, engine: EngineConfig, where: str = "") -> None:
    """Raise PlacementError when the op's tensors do not fit the banked buffers or its shape the array."""
    where = where or f"op '{op.name}'"
    B, words = engine.act_banks, engine.bank_words
    for what, H, W, C in (("input", op.H, op.W, op.C), ("output", op.OH, op.OW, op.OC)):
        need = H * cdiv(W, B) * cdiv(C, engine.lanes)
        if need > words:
            raise PlacementError(
                f"{where}: {what} {H}x{W}x{C} needs {need} words per activation bank "
                f"(H * ceil(W/{B}) * ceil(C/{engine.lanes})), engine.bank_words = {words}: "
                f"raise act_buf_bytes (now {engine.act_buf_bytes})")
    if op.opcode == CONV and op.stride > engine.max_stride:
        raise PlacementError(f"{where}: stride {op.stride} > engine.max_stride = {engine.max_stride} "
                             "(the activation banks serve rows * max_stride input columns per cycle)")
    if op.opcode == CONV and is_codebook(op) and op.d and op.d % engine.lanes and engine.lanes % op.d:
        raise PlacementError(f"{where}: codeword length d = {op.d} and engine.lanes = {engine.lanes}: "
                             "one must divide the other")


def _unflatten(op: Op, src: tuple[int, int, int], engine: EngineConfig, where: str) -> Op:
    """A Linear (1x1 conv on 1x1xC) that reads an HxWxC' tensor as a flat vector, rewritten as the
    equivalent HxW-kernel conv on that tensor: the same sum over the same bytes (the flatten order is
    NHWC), but it reads the tensor in its own word layout, which a flat view of the bytes would not."""
    H, W, C = src
    if is_codebook(op) and op.d and C % op.d:
        raise PlacementError(f"{where}: a codebook Linear on a flattened {H}x{W}x{C} tensor needs d = {op.d} "
                             f"to divide its channels {C}: lower that layer dense")
    if max(H, W) > engine.max_kernel:
        raise PlacementError(f"{where}: a Linear on a flattened {H}x{W}x{C} tensor runs as a {H}x{W} kernel, "
                             f"engine.max_kernel = {engine.max_kernel}: pool the map first or raise max_kernel")
    arrays = dict(op.arrays)
    nvec = C // op.d if is_codebook(op) and op.d else 0
    mrows = cdiv(op.OC, op.mg) if op.wfmt == CODEBOOK_SHARED and op.mg else op.OC
    for key, shape in (("weight", (op.OC, H, W, C)), ("idx", (op.OC, H, W, nvec)), ("mask", (mrows, H, W, nvec))):
        if key in arrays and arrays[key].size:
            arrays[key] = np.asarray(arrays[key]).reshape(shape)
    return dataclasses.replace(op, H=H, W=W, C=C, KH=H, KW=W, arrays=arrays)


def _match_shapes(ops: list[Op], engine: EngineConfig) -> list[Op]:
    """Follow the tensor each buffer holds; rewrite flattening Linears (``_unflatten``), refuse other
    reinterpretations of a buffer (the word layout depends on the tensor's H, W, C)."""
    held: dict[int, tuple[int, int, int]] = {ops[0].in_buf: (ops[0].H, ops[0].W, ops[0].C)}
    out = []
    for i, op in enumerate(ops):
        where = f"op {i} '{op.name}'"
        if op.opcode == CONV and (op.wfmt not in (DENSE, CODEBOOK, CODEBOOK_SHARED) or
                                  (is_codebook(op) and (op.d < 1 or op.C % op.d))):
            raise PlacementError(f"{where}: weight format {op.wfmt} with d = {op.d} and C = {op.C} cannot be placed")
        if op.opcode == PQ and (op.v < 1 or (op.KH * op.KW * op.C) % op.v):
            raise PlacementError(f"{where}: PQ subvector length v = {op.v} does not split a "
                                 f"{op.KH}x{op.KW}x{op.C} patch")
        src = held.get(op.in_buf)
        if src is not None and src != (op.H, op.W, op.C):
            flat = (op.opcode == CONV and op.H == op.W == op.KH == op.KW == 1 and op.pad == 0
                    and src[0] * src[1] * src[2] == op.C)
            if not flat:
                raise PlacementError(f"{where}: reads buffer {op.in_buf} as {op.H}x{op.W}x{op.C}, which holds a "
                                     f"{src[0]}x{src[1]}x{src[2]} tensor (only a Linear may flatten one)")
            op = _unflatten(op, src, engine, where)
        if op.res_buf >= 0 and held.get(op.res_buf, (op.OH, op.OW, op.OC)) != (op.OH, op.OW, op.OC):
            r = held[op.res_buf]
            raise PlacementError(f"{where}: residual buffer {op.res_buf} holds {r[0]}x{r[1]}x{r[2]}, "
                                 f"the output is {op.OH}x{op.OW}x{op.OC}")
        held[op.out_buf] = (op.OH, op.OW, op.OC)
        out.append(op)
    return out


def tile_need(op: Op, engine: EngineConfig) -> Need:
    """On-chip weights of one output-channel tile (cols channels) of a conv, and its whole codebook:
    what a streamed op loads before each of its oc tiles."""
    if op.opcode != CONV:
        return Need()
    oc = min(engine.cols, op.OC)
    if op.wfmt == DENSE:
        return Need(w=oc * op.KH * op.KW * cdiv(op.C, engine.lanes))
    return Need(v=oc * op.KH * op.KW * (op.C // op.d), cb=op.k)


def _choose_resident(ops: list[Op], needs: list[Need], engine: EngineConfig) -> tuple[list[bool], Need]:
    """Which ops keep their weights on chip when not all fit: a stream region sized for the largest oc
    tile of the streamed ops, resident ops packed beside it in program order (two passes: the region
    shrinks to the ops that really stream, which may let more stay)."""
    weighted = [i for i, n in enumerate(needs) if n.v or n.cb or n.w]

    def region_of(idx) -> Need:
        r = Need()
        for i in idx:
            t = tile_need(ops[i], engine)
            r = r.max(Need(t.v, t.cb, t.w))
        return r

    def pack(region: Need) -> set[int]:
        used, out = region, set()
        for i in weighted:
            n = Need(needs[i].v, needs[i].cb, needs[i].w)
            if n.fits(engine, used):
                used = used + n
            else:
                out.add(i)
        return out

    region = region_of(weighted)              # pass 1: room for any op's tile
    if not region.fits(engine, Need()):
        big = max(weighted, key=lambda i: sum(dataclasses.astuple(tile_need(ops[i], engine))))
        t = tile_need(ops[big], engine)
        raise PlacementError(
            f"op {big} '{ops[big].name}': one output-channel tile needs {t.v} vmem entries, {t.cb} codebook "
            f"rows, {t.w} weight words; the engine has {engine.vmem_entries}, {engine.cb_rows}, "
            f"{engine.dmem_words}")
    streamed = pack(region)
    region2 = region_of(streamed)             # pass 2: a region for the ops that really stream
    streamed2 = pack(region2)
    if all(region2.max(Need(*dataclasses.astuple(tile_need(ops[i], engine))[:3])) == region2 for i in streamed2):
        region, streamed = region2, streamed2
    for i in streamed:
        op = ops[i]
        step = engine.cols * op.KH * op.KW * (op.C if op.wfmt == DENSE else 2 * (op.C // op.d))
        if op.wfmt == CODEBOOK_SHARED:   # the tile's masks: one row of KH*KW*C/d entries
            step = math.gcd(step, 2 * op.KH * op.KW * (op.C // op.d))
        if step % 4:
            raise PlacementError(f"op {i} '{op.name}' streams its weights per output-channel tile, but a tile "
                                 f"starts {step} bytes after the previous one (not 4-byte aligned)")
    return [i not in streamed for i in range(len(ops))], region


def place(program: Program, engine: EngineConfig) -> Program:
    """A copy of ``program`` with every op's derived fields set for ``engine``; raises PlacementError."""
    ops = [dataclasses.replace(op, arrays=dict(op.arrays)) for op in program.ops]
    ops = _match_shapes(ops, engine)
    needs = []
    for i, op in enumerate(ops):
        check_layout(op, engine, f"op {i} '{op.name}'")
        needs.append(op_need(op, engine))
    total_ch = sum(n.ch for n in needs)
    if total_ch > engine.ch_rows:
        raise PlacementError(f"channel parameters need {total_ch} rows of {engine.cols} channels, "
                             f"engine.ch_rows = {engine.ch_rows}")
    total = Need()
    for n in needs:
        total = total + n
    all_fit = Need(ch=0).fits(engine, Need(total.v, total.cb, total.w))
    resident = [True] * len(ops)
    region = Need()
    if not all_fit:
        resident, region = _choose_resident(ops, needs, engine)
    pos = Need() if all_fit else region   # resident ops start after the stream region
    ch = 0
    out = []
    for op, n, res in zip(ops, needs, resident):
        f = _derive(op, engine)
        base = pos if res else Need()
        f.update(resident=int(res), v_base=base.v if n.v else 0, cb_base=base.cb if n.cb else 0,
                 w_base=base.w if n.w else 0, ch_base=ch if n.ch else 0)
        if res:
            pos = pos + Need(n.v, n.cb, n.w)
        ch += n.ch
        out.append(dataclasses.replace(op, **f))
    meta = dict(program.meta)
    meta["placement"] = {"engine_hash": engine.hash(), "resident": [bool(r) for r in resident],
                         "vmem": pos.v, "cb": pos.cb, "dmem": pos.w, "ch": ch,
                         "stream_region": dataclasses.asdict(region)}
    return Program(ops=out, in_scale=program.in_scale, out_scale=program.out_scale, in_shape=program.in_shape,
                   meta=meta)


def is_placed(program: Program, engine: EngineConfig) -> bool:
    """True when every op's derived fields equal what ``place`` computes for ``engine``."""
    try:
        ref = place(program, engine)
    except PlacementError:
        return False
    return all(getattr(a, f) == getattr(b, f) for a, b in zip(program.ops, ref.ops) for f in DERIVED_FIELDS)
