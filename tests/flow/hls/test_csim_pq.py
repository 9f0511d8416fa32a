"""C-simulation of the lookup engine (PQ ops) vs the golden model, bit-exact."""
from __future__ import annotations

import dataclasses
import itertools
import zlib

import numpy as np
import pytest

from flow.boards import cycle_model
from flow.compile.engine import EngineConfig
from flow.compile.layout import place
from flow.compile.program import PQ, Program
from hls_testlib import check_exact, conv_op, pq_op, pq_program, program, rand_inputs
from engine_io import regmap

pytestmark = pytest.mark.csim

# the PYNQ-Z2 geometry with its lookup unit (v 9, K 16, 64 subspaces, a 32 KiB LUT memory)
PQ_CFG = dataclasses.replace(EngineConfig(), pq=True)
# a build with a small on-chip LUT memory (larger LUTs stream from DDR) and tight PQ limits
PQ_SMALL_CFG = EngineConfig(rows=4, cols=4, lanes=4, n=2, m=4, k_max=64, d_max=8, act_buf_bytes=4096, num_bufs=3,
                            acc_groups=4, vmem_entries=4096, cb_rows=256, dmem_words=1024, ch_rows=64, dsp_rows=2,
                            max_channels=64, max_kernel=3, max_ops=8, param_bytes=1 << 20, pq=True,
                            pq_v_max=9, pq_k_max=16, pq_subspaces_max=64, lut_bytes=1024)
# a C-simulation build with a wide lookup unit (v up to 16, K up to 64, 256 subspaces): the PQ semantics
# beyond the PYNQ-Z2 build's limits (v 9, K 16, 64 subspaces)
PQ_WIDE_CFG = EngineConfig(pq=True, pq_v_max=16, pq_k_max=64, pq_subspaces_max=256, lut_bytes=65536)


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.fixture(scope="module")
def engine():
    """The board geometry with the lookup unit (the default EngineConfig has none)."""
    from flow.hls.csim import CsimEngine
    return CsimEngine(PQ_CFG)


@pytest.fixture(scope="module")
def pq_small_engine():
    from flow.hls.csim import CsimEngine
    return CsimEngine(PQ_SMALL_CFG)


@pytest.fixture(scope="module")
def pq_wide_engine():
    from flow.hls.csim import CsimEngine
    return CsimEngine(PQ_WIDE_CFG)


def _random_pq_kwargs(rng, v: int, Kp: int, *, max_c: int = 24) -> dict:
    K = int(rng.choice([1, 3]))
    # C such that the patch KH*KW*C splits into subvectors of v
    cands = [c for c in range(1, max_c + 1) if (K * K * c) % v == 0]
    C = int(rng.choice(cands))
    pad = int(rng.integers(0, 2)) if K == 3 else 0
    stride = int(rng.integers(1, 3))
    H, W = int(rng.integers(max(1, K - 2 * pad), 9)), int(rng.integers(max(1, K - 2 * pad), 9))
    return dict(H=H, W=W, C=C, OC=int(rng.integers(1, 20)), K=K, stride=stride, pad=pad, v=v, Kp=Kp,
                lut_bits=int(rng.choice([8, 16])), in_unsigned=int(rng.integers(0, 2)),
                out_unsigned=int(rng.integers(0, 2)), residual=bool(rng.integers(0, 2)),
                res_unsigned=int(rng.integers(0, 2)))


CASES = list(itertools.product([1, 3, 4, 9], [2, 5, 8, 16, 64]))


@pytest.mark.parametrize("v,Kp", CASES, ids=[f"v{v}-K{k}" for v, k in CASES])
def test_pq_random_bit_exact(engine, pq_wide_engine, v, Kp):
    """Random geometry / formats / residual, with planted ties (duplicate and mirrored prototypes);
    on the board build where the op is inside its limits, else on the wide C-simulation build."""
    for trial in range(2):
        rng = _rng("pq", v, Kp, trial)
        prog = pq_program(rng, **_random_pq_kwargs(rng, v, Kp))
        op = prog.ops[-1]
        board_ok = v <= engine.config.pq_v_max and Kp <= engine.config.pq_k_max and \
            op.KH * op.KW * op.C // v <= engine.config.pq_subspaces_max
        check_exact(engine if board_ok else pq_wide_engine, prog, rand_inputs(rng, prog, 3))


@pytest.mark.parametrize("in_unsigned", [0, 1])
def test_pq_ties_pick_lowest_index(engine, in_unsigned):
    """Every prototype of a subspace equal (all distances tie): the engine must pick k = 0 everywhere,
    and with +p / -p pairs an all-zero input (and the zero padding) ties between the pair."""
    rng = _rng("ties", in_unsigned)
    op = pq_op(rng, H=5, W=5, C=4, OC=6, K=3, pad=1, v=4, Kp=16, in_unsigned=in_unsigned, ties=False)
    proto = op.arrays["proto"].copy()
    proto[:, :] = proto[:, :1]                                  # one value per subspace, K copies
    op.arrays["proto"] = proto
    lut = op.arrays["lut"].copy()
    lut[:, 0] = 0
    lut[:, 1:] = 100                                          # any index but 0 would move the output
    op.arrays["lut"] = lut
    op.arrays["mult"][:], op.arrays["shift"][:] = 1, 1
    op.arrays["bias"][:] = 0
    prog = program(op)
    x = rand_inputs(rng, prog, 2)
    out = check_exact(engine, prog, x)
    assert np.all(out == 0)
    if not in_unsigned:
        op = pq_op(rng, H=4, W=4, C=9, OC=5, K=1, pad=0, v=9, Kp=8, ties=False)
        p = op.arrays["proto"].view(np.int8).astype(np.int64)
        p[:, 2] = 40
        p[:, 5] = -40                                         # |0 - 40| == |0 + 40|: k=2 must win
        p[:, [0, 1, 3, 4, 6, 7]] = 127
        op.arrays["proto"] = (p & 0xFF).astype(np.uint8)
        check_exact(engine, program(op), np.zeros((1, 4, 4, 9), np.int8))


def test_pq_streamed_lut_and_small_engine(pq_small_engine):
    """A LUT larger than lut_bytes (1 KiB here) is read from DDR per lookup: same results."""
    rng = _rng("stream")
    prog = pq_program(rng, H=6, W=6, C=8, OC=20, K=3, pad=1, v=9, Kp=16, lut_bits=16, in_unsigned=1,
                      residual=True)
    assert prog.ops[-1].arrays["lut"].size * 2 > PQ_SMALL_CFG.lut_bytes
    check_exact(pq_small_engine, prog, rand_inputs(rng, prog, 2))
    small = pq_program(rng, H=4, W=4, C=2, OC=4, K=1, pad=0, v=2, Kp=4)          # resident
    check_exact(pq_small_engine, small, rand_inputs(rng, small, 2))


def _status(eng, prog: Program) -> tuple[int, int | None]:
    """(code, op) of the host-side check that refuses ``prog`` before any load call."""
    from flow.compile.validate import ProgramError
    with pytest.raises(ProgramError) as info:
        eng.load(prog)
    return info.value.code, info.value.op


def test_pq_engine_limits(pq_small_engine):
    rng = _rng("limits")
    cases = [
        (dict(v=9, Kp=32), regmap.ERR_LIMIT),                 # K > pq_k_max = 16
        (dict(v=12, Kp=4), regmap.ERR_LIMIT),                 # v > pq_v_max = 9
    ]
    for kw, code in cases:
        prog = program(pq_op(rng, H=3, W=3, C=4, OC=3, K=3, pad=1, **kw))
        assert _status(pq_small_engine, prog) == (code, 0), kw
    prog = program(pq_op(rng, H=3, W=3, C=64, OC=3, K=3, pad=1, v=8, Kp=4))      # 72 subspaces > 64
    assert _status(pq_small_engine, prog) == (regmap.ERR_LIMIT, 0)
    prog = program(pq_op(rng, H=3, W=3, C=2, OC=3, K=3, pad=1, v=9, Kp=4))
    prog.ops[0].lut_bits = 12
    assert _status(pq_small_engine, prog) == (regmap.ERR_PARAM, 0)
    prog = program(pq_op(rng, H=3, W=3, C=2, OC=3, K=3, pad=1, v=9, Kp=4))
    del prog.ops[0].arrays["lut"]
    assert _status(pq_small_engine, prog) == (regmap.ERR_OFFSET, 0)


def test_engine_without_lookup_unit_rejects_pq(tmp_path):
    from flow.hls.csim import CsimEngine
    from flow.hls.project import render

    cfg = EngineConfig(pq=False)
    files = render(cfg)
    assert "#include \"lookup_engine.h\"" not in files["firmware/top.cpp"] and "pq_layer" not in files["firmware/top.cpp"]
    eng = CsimEngine(cfg)
    rng = _rng("nopq")
    prog = program(conv_op(rng, H=4, W=4, C=8, OC=4, K=3, pad=1, in_buf=0, out_buf=1),
                   pq_op(rng, H=4, W=4, C=4, OC=5, K=3, pad=1, v=9, Kp=4, in_buf=1, out_buf=0))
    assert _status(eng, prog) == (regmap.ERR_OPCODE, 1)
    conv_only = program(prog.ops[0])
    check_exact(eng, conv_only, rand_inputs(rng, conv_only, 2))


def test_mixed_model_lowered_and_simulated(engine):
    """MVQ conv + PQ conv + dense linear: quantize_model -> lower -> C-sim == run(graph), bit-exact."""
    import torch
    from torch import nn

    from flow.compile import lower
    from flow.compress.mvq import MVQConv2d
    from flow.compress.pq import PQConv2d
    from flow.quant.convert import quantize_model
    from flow.quant.golden import quantize_input, run

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.mvq = nn.Conv2d(16, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.pq = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(16)
            self.fc = nn.Linear(16 * 4 * 4, 10)

        def forward(self, x):
            y = self.stem(x)
            y = torch.relu(self.bn1(self.mvq(y)))
            y = torch.relu(self.bn2(self.pq(y)))
            return self.fc(torch.flatten(y, 1))

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = Mixed().eval()
    x = torch.rand(64, 3, 8, 8, generator=gen)
    model.mvq = MVQConv2d.from_conv(model.mvq, n=2, m=4, k=32, d=8, iters=5).quantize_codebook_(8)
    with torch.no_grad():
        h = torch.relu(model.bn1(model.mvq(model.stem(x))))
    model.pq = PQConv2d.from_conv(model.pq, v=9, K=16, calib_x=h, iters=5).quantize_lut_(8)
    g = quantize_model(model, x)
    assert [(nd.kind, nd.wfmt) for nd in g.nodes] == [("conv", "dense"), ("conv", "codebook"), ("pq", "pq"),
                                                      ("conv", "dense")]
    prog = lower(g, engine.config)
    assert [op.opcode for op in prog.ops].count(PQ) == 1
    xi = quantize_input(x, g.in_tensor.scale, g.in_tensor.unsigned)
    got = engine.predict(prog, xi)
    assert np.array_equal(got.astype(np.int64), run(g, xi))


def test_engine_checks_the_crc(engine):
    """Header word 7 is the CRC32 of the image body: the host refuses a mismatch (ProgramError) and so
    does the engine's load call (STATUS ERR_CRC), which computes it in its one pass over the body."""
    from flow.compile.layout import place
    from flow.compile.validate import ProgramError
    from flow.hls.csim import EngineError
    from flow.compile.program_exec import run_program

    rng = _rng("crc")
    prog = place(pq_program(rng, H=4, W=4, C=3, OC=5, K=3, pad=1, v=9, Kp=8), engine.config)
    x = rand_inputs(rng, prog, 2)
    good = prog.to_bytes()
    flipped_crc = bytearray(good)
    flipped_crc[28:32] = (0xDEADBEEF).to_bytes(4, "little")
    flipped_body = bytearray(good)
    flipped_body[-3] ^= 0x10                                  # a LUT bit
    for image in (flipped_crc, flipped_body):
        with pytest.raises(ProgramError) as info:
            engine.load_image(bytes(image))
        assert info.value.code == regmap.ERR_CRC
        with pytest.raises(EngineError) as info:
            engine.load_image(bytes(image), validate=False)
        assert info.value.code == regmap.ERR_CRC
    engine.load_image(good)
    got = engine.run_bytes(np.ascontiguousarray(x).view(np.uint8).reshape(2, -1))
    assert np.array_equal(got.view(np.int8).reshape(run_program(prog, x).shape), run_program(prog, x))


def _modelled_equals_model(eng, prog: Program, n: int = 2) -> None:
    """Bit-exact, and the CYCLES register of the load and run calls equals flow/boards/cycle_model.py."""
    placed = place(prog, eng.config)
    eng.load(prog)
    assert eng.modelled_cycles == cycle_model.load_cycles(placed, eng.config)
    check_exact(eng, prog, rand_inputs(_rng("cyc", prog.ops[-1].OC), prog, n))
    assert eng.modelled_cycles == cycle_model.run_cycles(placed, eng.config, n)


@pytest.mark.parametrize("v,C,OC", [(9, 8, 12), (4, 8, 40), (1, 2, 3), (3, 1, 21)],
                         ids=["v9-NOT2", "v4-NOT5", "v1-span2", "v3-oddOC"])
def test_pq_resident_cycles(engine, v, C, OC):
    """LUT on chip: nsub windows of max(v, NOT, 2), a last window of max(NOT, 2), OC drain cycles per pixel
    (pq_pixel_cycles) -- windows shorter than v, longer than v, the ACC_DISTANCE floor, odd OC (one LUT
    entry per load cycle)."""
    prog = pq_program(_rng("res", v, C, OC), H=5, W=6, C=C, OC=OC, K=3, pad=1, v=v, Kp=16, residual=True)
    assert place(prog, engine.config).ops[-1].lut_resident == 1
    _modelled_equals_model(engine, prog)


@pytest.mark.parametrize("OC", [20, 21, 200, 201])
def test_pq_streamed_rows_cycles(engine, pq_small_engine, OC):
    """LUT rows from DDR through the chunked DATAFLOW region: two entries per cycle (even OC) or one (odd
    OC: rows start mid-beat), rows longer than one chunk (OC 200 / 201 > 2 * LOAD_CHUNK entries)."""
    eng = pq_small_engine if OC <= PQ_SMALL_CFG.max_channels else engine
    prog = pq_program(_rng("rows", OC), H=4, W=5, C=16, OC=OC, K=3, pad=1, v=9, Kp=16, in_unsigned=1,
                      residual=OC % 2 == 1)
    assert place(prog, eng.config).ops[-1].lut_resident == 0
    _modelled_equals_model(eng, prog)
    assert cycle_model.pq_row_chunks(OC, OC % 2 == 0) == ([OC] if OC <= 126 else [128, OC - 128] if OC % 2 == 0
                                                   else [126, OC - 126])


def test_bounded_stream_catches_a_burst_longer_than_its_fifo(tmp_path):
    """Re-insert the review's loader bug: a DATAFLOW region that moves more beats than its FIFO holds
    (chunks of 2 * LOAD_FIFO_DEPTH). C-simulation runs the region serialised, as a failed DATAFLOW would
    in hardware, where it deadlocks; the bounded FIFO must report it (InvariantError) on the load call,
    and the unmodified engine must load the same program without one."""
    from flow.hls.csim import CsimEngine, InvariantError
    from flow.hls.project import write_project

    rng = _rng("fifo")
    prog = pq_program(rng, H=4, W=4, C=8, OC=4, K=3, pad=1, v=9, Kp=16)   # 1152 prototype bytes: 288 beats
    project = write_project(PQ_SMALL_CFG, tmp_path / "bug")
    loader = project.firmware_dir / "param_loader.h"
    text = loader.read_text()
    fixed = "static const unsigned LOAD_CHUNK = LOAD_FIFO_DEPTH;"
    assert text.count(fixed) == 1
    loader.write_text(text.replace(fixed, "static const unsigned LOAD_CHUNK = 2 * LOAD_FIFO_DEPTH;"))
    with pytest.raises(InvariantError):
        CsimEngine(project=project).load(prog)
    check_exact(CsimEngine(PQ_SMALL_CFG), prog, rand_inputs(rng, prog, 1))


def test_pq_exact_width_types():
    """The exact-width datapath types of synthesis (VQHLS_EXACT_TYPES: ap_int counters, addresses, distances)
    bit for bit against the golden model: resident LUT, streamed rows of even and odd OC, a residual."""
    from flow.hls.csim import CsimEngine

    eng = CsimEngine(PQ_SMALL_CFG, exact=True)
    rng = _rng("exact")
    progs = [pq_program(rng, H=4, W=4, C=2, OC=4, K=1, pad=0, v=2, Kp=4),
             pq_program(rng, H=5, W=4, C=8, OC=20, K=3, pad=1, v=9, Kp=16, residual=True),
             pq_program(rng, H=4, W=5, C=4, OC=21, K=3, pad=1, v=4, Kp=8, in_unsigned=1)]
    assert [place(p, eng.config).ops[-1].lut_resident for p in progs] == [1, 0, 0]
    for prog in progs:
        _modelled_equals_model(eng, prog)
