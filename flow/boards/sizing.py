"""Board sizing: the EngineConfig a board gets (``EngineConfig.for_board``).

``config_for_board(board, n=, m=)`` starts from the board's *reference* build
(REFERENCE: word width ``lanes``, codebook limits, activation buffers, channel
rows, PQ unit; ``n``/``m`` replaced when given) and searches, deterministically,

* ``rows`` in ROWS and ``dsp_rows`` in 0..rows (the array geometry),
* ``vmem_entries``, ``cb_rows``, ``dmem_words``, ``max_ops`` over fixed ladders
  (LADDERS) capped at the reference values (the parameter memories; a Program
  whose parameters do not all fit streams the rest per image, flow.compile.layout),

for the candidate that passes ``check_fit`` with, in order of preference:
the most multipliers, the most resident parameter bytes, the larger op table,
the most DSP rows (DSP products cost no LUTs and close timing more easily).

Everything else (lanes, n:m, k_max, d_max, act_buf_bytes, num_bufs,
acc_groups, ch_rows, max_channels, pq_*) is the reference's: those limits
decide which models compile at all, so the search never trades them away.

PYNQ-Z2 with the default n:m is pinned: ``EngineConfig()`` *is* that build and
is returned as is when it fits the budget. When the resource model says it does
not, a warning names the over-used resources and the searched config is
returned instead (adopt it as the new defaults).
"""
from __future__ import annotations

import dataclasses
import warnings

from flow.boards import Board, get_board
from flow.boards.resources import BRAM_FRAC, ResourceError, check_fit, estimate, idx_bits, over_budget
from flow.compile.engine import EngineConfig

ROWS = (64, 32, 16, 8, 4, 2, 1)

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


def _fits(e: EngineConfig, board: Board) -> bool:
    return not over_budget(estimate(e, board), board)


def memory_options(ref: EngineConfig) -> list[dict[str, int]]:
    """Every ladder combination not above the reference, best first: (resident bytes, max_ops) descending."""
    ladders = {k: sorted({v for v in vals if v <= getattr(ref, k)} | {getattr(ref, k)}, reverse=True)
               for k, vals in LADDERS.items()}
    combos = [dict(vmem_entries=v, cb_rows=c, dmem_words=d, max_ops=o)
              for v in ladders["vmem_entries"] for c in ladders["cb_rows"]
              for d in ladders["dmem_words"] for o in ladders["max_ops"]]
    combos.sort(key=lambda mem: (resident_bytes(dataclasses.replace(ref, **mem)), mem["max_ops"]), reverse=True)
    return combos


def search(board: Board | str, ref: EngineConfig) -> EngineConfig:
    """The preferred fitting config around ``ref`` (module docstring); ResourceError when none fits.

    Order: rows (most multipliers first) > memory option (most resident bytes first) > dsp_rows
    (most first). BRAM does not depend on dsp_rows, and DSP / LUT / FF depend on the memory option
    only through its LUTRAM: a memory option is skipped when its BRAM is over budget, or when an
    option with the same LUTRAM already failed for every dsp_rows of this geometry.
    """
    b = get_board(board) if isinstance(board, str) else board
    mems = memory_options(ref)
    bram_budget = BRAM_FRAC * b.bram36
    for rows in ROWS:
        failed_lutram: set[int] = set()
        for mem in mems:
            try:
                base = dataclasses.replace(ref, rows=rows, dsp_rows=rows, **mem)
            except ValueError:
                break          # the geometry itself is invalid for this reference
            u = estimate(base, b)
            if u.bram36 > bram_budget + 1e-9 or u.lutram in failed_lutram:
                continue
            for dsp_rows in range(rows, -1, -1):
                cand = dataclasses.replace(base, dsp_rows=dsp_rows)
                if _fits(cand, b):
                    return cand
            failed_lutram.add(u.lutram)
    raise ResourceError(f"no EngineConfig around the {b.name} reference fits {b.name} "
                        f"(lanes={ref.lanes}, n={ref.n}, m={ref.m}, pq={ref.pq})")


def config_for_board(board: str, *, n: int | None = None, m: int | None = None) -> EngineConfig:
    """The EngineConfig for ``board`` (n of every m weights kept; ``n == m``: dense build)."""
    b = get_board(board)
    ref = REFERENCE[b.name]
    n = ref.n if n is None else n
    m = ref.m if m is None else m
    pinned = PINNED.get(b.name)
    if pinned is not None and (n, m) == (pinned.n, pinned.m):
        try:
            check_fit(pinned, b)
            return pinned
        except ResourceError as err:
            warnings.warn(f"EngineConfig() is not a fitting {b.name} build under the resource model; "
                          f"returning the searched config instead:\n{err}", stacklevel=2)
    ref = dataclasses.replace(ref, n=n, m=m)     # raises ValueError for an invalid n:m
    return search(b, ref)
