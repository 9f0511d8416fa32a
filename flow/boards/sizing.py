"""Board sizing: the EngineConfig a board gets (``config_for_board``).

``config_for_board(board, n=, m=)`` starts from the board's *reference* build
(REFERENCE: word width ``lanes``, codebook limits, activation buffers, channel
rows, PQ unit; ``n``/``m`` replaced when given) and searches, deterministically,

* ``rows`` in ROWS and ``dsp_rows`` in 0..rows (the array geometry),
* ``vmem_entries``, ``cb_rows``, ``dmem_words``, ``max_ops`` over fixed ladders
  (LADDERS) capped at the reference values (the parameter memories; a Program
  whose parameters do not all fit streams the rest per image, flow.compile.layout),

for the candidate that passes ``check_fit`` at its "high" level (flow.boards.resource_model: the CENTRAL
figure within the budgets, and the HIGH end -- every unit's pessimistic figure, calibrated so that yosys's
looser mapping of the RTL engine lies inside it -- within the part itself), with, in order of
preference: the most multipliers, the most resident parameter bytes, the larger
op table, the most DSP rows (DSP products cost no LUTs and close timing more
easily). It does not pick the largest config under the budget line at the
model's central figure alone: a build chosen this way still fits the part when the model is
wrong by up to the width of its range.

Everything else (lanes, n:m, k_max, d_max, act_buf_bytes, num_bufs,
acc_groups, ch_rows, max_channels, pq_*) is the reference's: those limits
decide which models compile at all, so the search never trades them away.

PYNQ-Z2 with the default n:m is pinned: ``EngineConfig()`` *is* that build and
is returned as is when it passes that check. When the resource model says it does
not, a warning names the over-used resources and the searched config is
returned instead (adopt it as the new defaults).
"""
from __future__ import annotations

import dataclasses
import warnings

from flow.boards import Board, get_board
from flow.boards.resource_model import BRAM_FRAC, ResourceError, check_fit, estimate, idx_bits, over_budget  # noqa: F401
from flow.compile.engine import EngineConfig
from flow.compile.layout import cdiv
from flow.compile.lower import LoweringError, allocate_buffers, lower, residual_copies
from flow.quant.graph import QGraph

ROWS = (64, 32, 16, 12, 8, 6, 5, 4, 3, 2, 1)   # not only powers of two: act_banks rounds up

# descending ladders of the parameter-memory sizes (BRAM-aligned steps)
LADDERS = {
    "vmem_entries": (147456, 73728, 36864, 32768, 24576, 16384, 8192),
    "cb_rows": (20480, 10240, 5120, 4096, 3072, 2048, 1024),
    "dmem_words": (8192, 4096, 2048, 1024),
    "max_ops": (64, 32),
}

# the reference build of each board: the fields the search keeps, and the caps of the ladders
REFERENCE = {
    "pynq-z2": EngineConfig(),
    # 4x the PYNQ-Z2 array: 16-byte words (cols = lanes = 16); the larger BRAM holds
    # twice the activation buffer and parameter memories
    "zcu104": EngineConfig(rows=8, cols=16, lanes=16, dsp_rows=8, act_buf_bytes=131072,
                           vmem_entries=73728, cb_rows=10240, dmem_words=4096),
}

# builds returned as they are (for the board's default n:m) when they fit
PINNED = {"pynq-z2": EngineConfig()}


def resident_bytes(e: EngineConfig) -> int:
    """Bytes of on-chip parameter storage: vmem entries (index + mask bits), codebook rows, dense words."""
    return e.vmem_entries * (idx_bits(e) + e.d_max) // 8 + e.cb_rows * e.d_max + e.dmem_words * e.lanes


def _fits(e: EngineConfig, board: Board, level: str = "high") -> bool:
    """``over_budget`` at ``level`` finds nothing ("high": central within the budgets, high end within the part)."""
    return not over_budget(estimate(e, board), board, level=level)


def memory_options(ref: EngineConfig) -> list[dict[str, int]]:
    """Every ladder combination not above the reference, best first: (resident bytes, max_ops) descending."""
    ladders = {k: sorted({v for v in vals if v <= getattr(ref, k)} | {getattr(ref, k)}, reverse=True)
               for k, vals in LADDERS.items()}
    combos = [dict(vmem_entries=v, cb_rows=c, dmem_words=d, max_ops=o)
              for v in ladders["vmem_entries"] for c in ladders["cb_rows"]
              for d in ladders["dmem_words"] for o in ladders["max_ops"]]
    combos.sort(key=lambda mem: (resident_bytes(dataclasses.replace(ref, **mem)), mem["max_ops"]), reverse=True)
    return combos


def search(board: Board | str, ref: EngineConfig, level: str = "high") -> EngineConfig:
    """The preferred config around ``ref`` that fits at ``level`` (module docstring); ResourceError when none does.

    Order: rows (most multipliers first) > memory option (most resident bytes first) > dsp_rows
    (most first), every candidate judged by ``check_fit``'s rule at ``level``. BRAM does not depend
    on dsp_rows, and DSP / FF do not depend on the memory option; LUT grows with its LUTRAM and its
    address widths: a memory option is skipped when its BRAM is over budget, or when an option with
    the same LUTRAM and no more LUTs already failed for every dsp_rows of this geometry.
    """
    b = get_board(board) if isinstance(board, str) else board
    mems = memory_options(ref)
    bram_budget = BRAM_FRAC * b.bram36
    for rows in ROWS:
        failed: dict[int, int] = {}     # high LUTRAM -> fewest high LUTs that failed at every dsp_rows
        for mem in mems:
            try:
                base = dataclasses.replace(ref, rows=rows, dsp_rows=rows, **mem)
            except ValueError:
                break          # the geometry itself is invalid for this reference
            u = estimate(base, b)
            t = getattr(u, level)
            if t.bram36 > bram_budget + 1e-9 or failed.get(t.lutram, t.lut + 1) <= t.lut:
                continue
            for dsp_rows in range(rows, -1, -1):
                cand = dataclasses.replace(base, dsp_rows=dsp_rows)
                if _fits(cand, b, level):
                    return cand
            failed[t.lutram] = min(t.lut, failed.get(t.lutram, t.lut))
    raise ResourceError(f"no EngineConfig around the {b.name} reference fits {b.name} at the {level} end of the "
                        f"modelled range (lanes={ref.lanes}, n={ref.n}, m={ref.m}, pq={ref.pq})")


def config_for_board(board: str, *, n: int | None = None, m: int | None = None,
                     row_mux: bool = False) -> EngineConfig:
    """The EngineConfig for ``board`` (n of every m weights kept; ``n == m``: dense build; ``row_mux``: the
    sparse array with the selection once per row, searched like any other build)."""
    b = get_board(board)
    ref = REFERENCE[b.name]
    n = ref.n if n is None else n
    m = ref.m if m is None else m
    pinned = PINNED.get(b.name)
    if pinned is not None and (n, m) == (pinned.n, pinned.m) and not row_mux:
        try:
            check_fit(pinned, b)
            return pinned
        except ResourceError as err:
            warnings.warn(f"EngineConfig() is not a fitting {b.name} build under the resource model; "
                          f"returning the searched config instead:\n{err}", stacklevel=2)
    ref = dataclasses.replace(ref, n=n, m=m, row_mux=row_mux)     # raises ValueError for an invalid n:m
    return search(b, ref)


# ----------------------------------------------------------------------------------------------------------
# sizing an engine for one model


class SizingError(ValueError):
    """The model cannot run on any engine that fits the board; the message lists every broken limit."""


def model_needs(graph, lanes: int, act_banks: int) -> dict[str, int]:
    """The smallest value of each model-dependent EngineConfig limit that ``graph`` (a QGraph) needs
    on an engine with ``lanes``-byte words and ``act_banks`` activation banks.

    Keys: act_buf_bytes (banked layout of the largest tensor, flow.compile.layout), max_channels,
    max_kernel (a Linear after a flatten runs as an HxW kernel), max_stride, max_ops, num_bufs, k_max,
    d_max, pq_v_max, pq_k_max, pq_subspaces_max, pq (1 when a PQ layer is present)."""
    graph = residual_copies(graph)   # y = x + conv(x) runs with a copy of x: one op and one live buffer more
    words = 0
    for t in graph.tensors.values():
        H, W, C = t.shape
        words = max(words, H * cdiv(W, act_banks) * cdiv(C, lanes))
    need = dict(act_buf_bytes=words * act_banks * lanes, max_channels=1, max_kernel=1, max_stride=1,
                max_ops=len(graph.nodes), num_bufs=1, k_max=1, d_max=1, pq_v_max=1, pq_k_max=1,
                pq_subspaces_max=1, pq=0)
    for nd in graph.nodes:
        src = graph.tensors[nd.inp].shape
        oc = graph.tensors[nd.out].shape[2]
        cin, kh, kw = nd.in_view[2], nd.KH, nd.KW
        if nd.is_linear and tuple(nd.in_view) != tuple(src):   # flatten: an HxW-kernel conv on src
            kh, kw, cin = src[0], src[1], src[2]
        need["max_channels"] = max(need["max_channels"], cin, oc)
        if nd.kind in ("conv", "pq"):
            need["max_kernel"] = max(need["max_kernel"], kh, kw)
            need["max_stride"] = max(need["max_stride"], nd.stride)
        if nd.kind == "conv" and nd.wfmt == "codebook":
            need["k_max"] = max(need["k_max"], nd.k)
            need["d_max"] = max(need["d_max"], nd.d)
        if nd.kind == "pq":
            cs, k, v = nd.proto.shape
            need.update(pq=1, pq_v_max=max(need["pq_v_max"], v), pq_k_max=max(need["pq_k_max"], k),
                        pq_subspaces_max=max(need["pq_subspaces_max"], cs))
    for nb in range(1, 17):
        try:
            allocate_buffers(graph, nb)
            need["num_bufs"] = nb
            break
        except LoweringError:
            continue
    return need


def _graph_of(model_or_graph, calib_x):
    if isinstance(model_or_graph, QGraph):
        return model_or_graph
    if calib_x is None:
        raise SizingError("size_engine(model, ...) needs calib_x (calibration images [N, C, H, W]) to quantize "
                          "the model; or pass the QGraph of flow.quant.quantize_model")
    from flow.quant.convert import quantize_model   # deferred: torch, only for an nn.Module (not a QGraph)

    return quantize_model(model_or_graph, calib_x)


def _search_holding(b: Board, ref: EngineConfig, grown: dict[str, int]) -> EngineConfig:
    """``search`` at the high level, else at the central estimate (warned), else SizingError naming the
    limits the model needs and what even the smallest build over-uses."""
    cfg = None
    try:
        cfg = search(b, ref)
    except ResourceError:
        cfg = None
    if cfg is None:
        # nothing that holds the model passes the fit check (central figure within the budgets AND high end
        # within the part): the largest build whose CENTRAL estimate fits, said loudly (the build records it)
        # -- the model can be wrong without the build failing, and a central-estimate build is what Vivado
        # would be tried on
        try:
            cfg = search(b, ref, level="central")
            warnings.warn(f"no {b.name} engine that holds this model keeps the high end of the resource model "
                          f"inside the part; using one whose CENTRAL estimate fits the budgets ({cfg.rows} array "
                          f"rows, pq={cfg.pq}, hash {cfg.hash()}): check its utilization report after Vivado",
                          stacklevel=3)
        except ResourceError:
            cfg = None
    if cfg is None:
        small = dataclasses.replace(ref, rows=1, dsp_rows=1, cols=ref.lanes,
                                    **{k: min(vals) for k, vals in LADDERS.items() if k != "max_ops"})
        over = over_budget(estimate(small, b), b)
        lines = [f"{k}: the model needs {v}, the {b.name} reference build has {getattr(REFERENCE[b.name], k)}"
                 for k, v in grown.items()]
        raise SizingError(f"no engine that fits {b.name} holds the model; the limits it needs:\n"
                          + "\n".join("  " + line for line in lines)
                          + "\n  and even the smallest such build (1 array row, the smallest parameter "
                            "memories) over-uses:\n" + "\n".join("    " + line for line in over)) from None
    return cfg


def size_engine(model_or_graph, board: str = "pynq-z2", *, calib_x=None, n: int | None = None,
                m: int | None = None, row_mux: bool = False):
    """An EngineConfig for ``board`` that runs ``model_or_graph`` (a QGraph, or an nn.Module with ``calib_x``).

    Starts from :func:`config_for_board` (returned as is when the model fits it: PYNQ-Z2's default
    build reuses the cached engine), raises each model-dependent limit (:func:`model_needs`) to what the
    model needs, then searches the array geometry and parameter memories (:func:`search`) for a build
    within the board's resource budget (parameters that no longer fit on chip stream per image), and
    checks the result by lowering the model. ``n``/``m``: the engine's N:M (default: the board's; any
    layer's N:M runs on it, denser masks in several passes); ``row_mux``: the row-mux array (:func:`config_for_board`).

    Raises :class:`SizingError` listing every limit that cannot be met at once (limits no build
    supports, and every over-used resource of the smallest build that holds the model).
    """
    graph = _graph_of(model_or_graph, calib_x)
    b = get_board(board)
    base = config_for_board(b.name, n=n, m=m, row_mux=row_mux)
    need = model_needs(graph, base.lanes, base.act_banks)
    problems: list[str] = []
    hard = dict(d_max=16, pq_v_max=64, pq_k_max=256, k_max=1 << 16)
    for key, cap in hard.items():
        if need[key] > cap:
            problems.append(f"{key}: the model needs {need[key]}, no engine supports more than {cap}")
    if need["d_max"] > 1 and (need["d_max"] % base.m or (need["d_max"] % base.lanes and base.lanes % need["d_max"])):
        problems.append(f"d_max: codeword length {need['d_max']} must be a multiple of m={base.m} and divide or be "
                        f"a multiple of lanes={base.lanes}")
    grown = {}
    for key, v in need.items():
        if key == "pq":
            if v and not base.pq:
                grown["pq"] = True
            continue
        if key == "max_ops":
            v = max(v, 32)
        if v > getattr(base, key):
            grown[key] = v
    if problems:
        raise SizingError(f"the model cannot run on a {b.name} engine:\n" + "\n".join("  " + p for p in problems))
    if not grown:
        cfg = base
    else:
        grown_d = grown.get("d_max")
        if grown_d is not None:   # d_max grows in steps the word layout accepts
            grown["d_max"] = max(grown_d, base.d_max)
        ref = dataclasses.replace(REFERENCE[b.name], n=base.n, m=base.m)
        ref = dataclasses.replace(ref, **{k: max(v, getattr(ref, k)) for k, v in grown.items()})
        # what this model does not use is not built: fewer activation buffers, no lookup unit
        ref = dataclasses.replace(ref, num_bufs=max(need["num_bufs"], 2 if need["num_bufs"] <= 2 else 3),
                                  pq=bool(need["pq"]) or "pq" in grown)
        # act_buf_bytes was sized for the base build's banks; a searched build with more rows has more banks
        # (act_banks: a power of two >= rows * max_stride) and pads each row of pixels to a multiple of them,
        # so the need is recomputed for the build found and the search repeated until it holds (it only grows)
        for _ in range(len(ROWS) + 1):
            cfg = _search_holding(b, ref, grown)
            act = model_needs(graph, cfg.lanes, cfg.act_banks)["act_buf_bytes"]
            if act <= cfg.act_buf_bytes:
                break
            ref = dataclasses.replace(ref, act_buf_bytes=act)
    try:
        lower(graph, cfg)
    except LoweringError as e:
        raise SizingError(f"the model does not run on the sized {b.name} engine: {e}") from None
    return cfg
