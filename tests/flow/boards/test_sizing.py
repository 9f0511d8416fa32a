"""Board sizing (flow.boards.sizing) picks by the HIGH end of the modelled range.

The reference is brute force: every geometry (rows, dsp_rows) of a small search space is estimated, and
the search's answer must be the preferred one among those whose high end fits, with nothing preferred
over it fitting. The model is not re-implemented here: its units are tested in test_resources.py.
"""
from __future__ import annotations

import dataclasses

import pytest

from flow.boards import get_board
from flow.boards.resource_model import check_fit, estimate, over_budget
from flow.boards.sizing import ROWS, search
from flow.compile.engine import EngineConfig


def _fits_high(e, board) -> bool:
    u = estimate(e, board)
    b = get_board(board)
    # the rule since the yosys recalibration (resource_model.HIGH_FRAC): the central figure under the budgets,
    # the high end (yosys' loose mapping) within the part
    c, h = u.central, u.high
    return (c.bram36 <= 0.8 * b.bram36 and c.dsp <= 0.9 * b.dsp and c.lut <= 0.7 * b.lut and c.ff <= 0.7 * b.ff
            and (not b.lutram or c.lutram <= 0.7 * b.lutram)
            and h.bram36 <= b.bram36 and h.dsp <= b.dsp and h.lut <= b.lut and h.ff <= b.ff
            and (not b.lutram or h.lutram <= b.lutram))


@pytest.mark.parametrize("board, ref", [
    ("pynq-z2", EngineConfig(pq=False)),
    ("pynq-z2", EngineConfig(pq=False, n=4, m=4)),
    ("zcu104", EngineConfig(rows=8, cols=16, lanes=16, dsp_rows=8, act_buf_bytes=131072,
                            vmem_entries=73728, cb_rows=10240, dmem_words=4096)),
])
def test_search_returns_the_most_rows_whose_high_end_fits(board, ref):
    e = search(board, ref)
    assert _fits_high(e, board) and not over_budget(estimate(e, board), board)
    check_fit(e, board)
    # brute force over the rows the search may pick, at the reference's parameter memories reduced as far as
    # the ladders go: no config with more rows fits at the high end at any dsp_rows
    smallest = dict(vmem_entries=8192, cb_rows=1024, dmem_words=1024, max_ops=32)
    for rows in (r for r in ROWS if r > e.rows):
        for dsp_rows in range(rows + 1):
            cand = dataclasses.replace(ref, rows=rows, dsp_rows=dsp_rows, **smallest)
            assert not _fits_high(cand, board), (rows, dsp_rows)
    # the dsp_rows preferred: none above it fits with this geometry and memories
    for dsp_rows in range(e.dsp_rows + 1, e.rows + 1):
        assert not _fits_high(dataclasses.replace(e, dsp_rows=dsp_rows), board)


def test_search_holds_the_high_end_to_the_part():
    """A central figure under the budget is not enough: the high end must be within HIGH_FRAC of the part, and
    over_budget names a high end above it."""
    from flow.boards.resource_model import HIGH_FRAC
    e = search("pynq-z2", EngineConfig(pq=False))
    u = estimate(e)
    assert u.central.lut <= 0.7 * 53_200 and u.high.lut <= HIGH_FRAC * 53_200
    assert not over_budget(u, "pynq-z2")
    over = over_budget(u, "pynq-z2", high_frac=(u.high.lut - 1) / 53_200)
    assert len(over) == 1 and over[0].startswith(f"LUT high {u.high.lut} ") and "the high end" in over[0]


def test_default_engine_config_fits_at_the_high_end():
    e = EngineConfig()
    assert _fits_high(e, "pynq-z2")
    u = check_fit(e, "pynq-z2")
    assert u.lut == u.high.lut > u.central.lut >= u.low.lut


def test_sized_activation_buffer_holds_the_model_at_the_banks_of_the_build_found():
    """size_engine sizes act_buf_bytes for the base build's banks, then searches the geometry; a build with more
    rows has more banks (a power of two >= rows * max_stride) and pads each pixel row to a multiple of them.
    The engine returned must hold the model at ITS banks: the layout's own need (model_needs at cfg.act_banks)
    and the compiler (lower) agree that it does."""
    import torch
    from torch import nn

    from flow.boards.sizing import model_needs, size_engine
    from flow.compile.lower import lower
    from flow.quant.convert import quantize_model

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 96, 3, padding=1), nn.ReLU(), nn.Conv2d(96, 16, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(4), nn.Flatten(), nn.Linear(16 * 7 * 7, 10)).eval()
    graph = quantize_model(net, torch.rand(8, 1, 28, 28))
    cfg = size_engine(graph, "pynq-z2")
    need = model_needs(graph, cfg.lanes, cfg.act_banks)["act_buf_bytes"]
    assert cfg.act_buf_bytes >= need, (cfg.rows, cfg.act_banks, cfg.act_buf_bytes, need)
    lower(graph, cfg)       # raises LoweringError when a tensor does not fit the banks
