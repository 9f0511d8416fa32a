"""A residual that is the op's own input (``y = x + conv(x)``): lowered with a copy of x into a third buffer
(flow.compile.lower.residual_copies), the emitted engine in C-simulation computes the golden model's
bits. The golden reference is flow.quant.golden.run on the QGraph, which adds x itself (no copy)."""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compile"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
from quant_testlib import randomize_bn  # noqa: E402
from self_residual_lib import (SelfResidual, SelfResidualNet, SharedSkip, graph_inputs, quantized,  # noqa: E402
                               random_graph)

from flow.compile import lower  # noqa: E402
from flow.compile.program import MAXPOOL, PQ  # noqa: E402
from flow.quant.golden import run  # noqa: E402

pytestmark = pytest.mark.csim


def _exact(engine, g, x) -> np.ndarray:
    """lower for the engine's config, C-sim, and the golden run of the graph: equal, byte for byte."""
    prog = lower(g, engine.config)
    assert prog.meta["residual_copies"], "the model has no self-residual layer"
    want = run(g, x)
    got = engine.predict(prog, x)
    assert np.array_equal(got.astype(np.int64), want), \
        f"C-sim differs from golden at {int((got.astype(np.int64) != want).sum())} of {want.size} outputs"
    return want


def _model(name: str):
    from flow.compress import compress

    torch.manual_seed(0)
    if name == "tiny":
        return randomize_bn(SelfResidual(), seed=3), (8, 6, 6)
    if name == "tiny-mvq":
        m = randomize_bn(SelfResidual(c=16), seed=3).eval()
        return compress(m, method="mvq", n=2, m=4, k=16, d=8, iters=3, skip=()), (16, 5, 7)
    if name == "net":
        return randomize_bn(SelfResidualNet(), seed=4), (3, 8, 8)
    if name == "shared":
        return randomize_bn(SharedSkip(), seed=5), (3, 8, 8)
    assert name == "net-pq"   # the self-residual 3x3 conv, and the block's convs, as PQ layers
    m = randomize_bn(SelfResidualNet(), seed=4).eval()
    return compress(m, method="pq", v=8, K=16, data=torch.rand(64, 3, 8, 8), skip=("first", "last")), (3, 8, 8)


@pytest.mark.parametrize("name", ["tiny", "tiny-mvq", "net", "shared", "net-pq"])
def test_torch_models_with_a_self_residual_are_bit_exact(engine, name):
    """relu(x + conv(x)) on the input (dense and MVQ), inside a net with a downsampling block, two skips
    from one tensor, and the PQ-compressed net: quantize -> lower -> C-sim == golden."""
    model, shape = _model(name)
    g, x, _ = quantized(model, shape, n_test=5)
    if name == "net-pq":
        assert any(nd.kind == "pq" and nd.res == nd.inp for nd in g.nodes)
    want = _exact(engine, g, x)
    assert len(np.unique(want)) > 8   # not degenerate (all clamped, all zero)


def test_the_copy_runs_on_the_engine_and_is_counted(engine):
    """The copy is a 1x1 max pool the engine executes (its CYCLES counter moves by the modelled terms)."""
    from flow.boards import cycle_model
    from flow.compile.layout import place

    model, shape = _model("tiny")
    g, x, _ = quantized(model, shape)
    prog = lower(g, engine.config)
    assert prog.ops[0].opcode == MAXPOOL and (prog.ops[0].KH, prog.ops[0].in_buf) == (1, 0)
    _exact(engine, g, x)
    assert engine.modelled_cycles == cycle_model.run_cycles(place(prog, engine.config), engine.config, len(x))


# ---------------------------------------------------------------------------------------------------
# random configurations: self-residual conv / codebook / PQ layers drawn by hypothesis
# ---------------------------------------------------------------------------------------------------
@st.composite
def self_residual_cases(draw):
    K = draw(st.sampled_from([1, 3, 5]))
    kind = draw(st.sampled_from(["dense", "codebook", "pq"]))
    d = draw(st.sampled_from([4, 8]))
    if kind == "codebook":
        C = d * draw(st.integers(1, 3))
    elif kind == "pq":   # v divides the patch, at most 64 subspaces (the board build's lookup unit)
        C = draw(st.integers(1, 16))
        vs = [v for v in range(1, 10) if (K * K * C) % v == 0 and K * K * C // v <= 64]
        if not vs:
            C, vs = 8, [8]
    else:
        C = draw(st.integers(1, 24))
    layers = draw(st.integers(1, 2))
    return dict(H=draw(st.integers(1, 8)), W=draw(st.integers(1, 9)), C=C, K=K,
                wfmt="codebook" if kind == "codebook" else "dense", d=d,
                v=draw(st.sampled_from(vs)) if kind == "pq" else 0, layers=layers,
                stem=draw(st.booleans()), shared=draw(st.booleans()), in_unsigned=draw(st.booleans()),
                signs=tuple(draw(st.booleans()) for _ in range(layers)))


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=self_residual_cases())
def test_hypothesis_self_residual_layers(engine, case):
    rng = np.random.default_rng(zlib.crc32(repr(sorted(case.items())).encode()))
    g = random_graph(rng, **case)
    prog = lower(g, engine.config)
    assert len(prog.meta["residual_copies"]) == case["layers"]
    assert any(op.opcode == PQ for op in prog.ops) == bool(case["v"])
    _exact(engine, g, graph_inputs(rng, g, 2))
