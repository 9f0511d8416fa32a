"""C-simulation of the HLS engine vs the golden model (flow.compile.program_exec.run_program): bit-exact."""
from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flow.compile.program import CODEBOOK, DENSE, Program
from flow.compile.program_exec import run_program
from hls_testlib import (check_exact, check_exact_on, conv_op, conv_program, fits, lenet_program, pool_op, program,
                         rand_inputs, resnet20_program)

pytestmark = pytest.mark.csim

NM = [(1, 4), (2, 4), (2, 8), (4, 8), (4, 4)]
DS = [4, 8, 16]
KS = [16, 64, 256]


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


# ---------------------------------------------------------------------------
# single convolutions
# ---------------------------------------------------------------------------
# every N:M x d x k where an N:M mask fits a d-vector (d a multiple of m)
CODEBOOK_CASES = [(n, m, d, k) for (n, m), d, k in itertools.product(NM, DS, KS) if d % m == 0]


@pytest.mark.parametrize("n,m,d,k", CODEBOOK_CASES, ids=[f"{n}:{m}-d{d}-k{k}" for n, m, d, k in CODEBOOK_CASES])
def test_codebook_conv(engine, wide_engine, n, m, d, k):
    rng = _rng("cb", n, m, d, k)
    K = int(rng.choice([1, 3, 5]))
    C = d * int(rng.integers(1, 5))
    prog = conv_program(rng, H=int(rng.integers(K, 10)), W=int(rng.integers(K, 10)), C=C,
                        OC=int(rng.integers(1, 20)), K=K, stride=int(rng.integers(1, 3)), pad=int(rng.integers(0, 3)),
                        wfmt=CODEBOOK, n=n, m=m, d=d, k=k, in_unsigned=int(rng.integers(0, 2)),
                        out_unsigned=int(rng.integers(0, 2)), residual=bool(rng.integers(0, 2)),
                        res_unsigned=int(rng.integers(0, 2)))
    assert fits(engine, prog) == (d <= engine.config.d_max)   # only d = 16 is past the board build
    check_exact_on(engine, wide_engine, prog, rand_inputs(rng, prog, 3))


# 7x7 kernels with pads past the default build's 4 banks: a tap's column then lies bank rows away from its group's
GEOMETRY = list(itertools.product([1, 3, 5], [1, 2], [0, 1, 2])) + [(7, 1, 6), (7, 2, 3), (7, 1, 5)]


@pytest.mark.parametrize("K,stride,pad", GEOMETRY, ids=[f"k{K}s{s}p{p}" for K, s, p in GEOMETRY])
@pytest.mark.parametrize("wfmt", [DENSE, CODEBOOK], ids=["dense", "codebook"])
def test_conv_geometry(engine, K, stride, pad, wfmt):
    rng = _rng("geo", K, stride, pad, wfmt)
    H, W = int(rng.integers(max(1, K - 2 * pad), 12)), int(rng.integers(max(1, K - 2 * pad), 12))
    prog = conv_program(rng, H=H, W=W, C=16, OC=int(rng.integers(1, 24)), K=K, stride=stride, pad=pad, wfmt=wfmt,
                        n=2, m=4, d=8, k=64, in_unsigned=int(rng.integers(0, 2)), out_unsigned=int(rng.integers(0, 2)))
    check_exact(engine, prog, rand_inputs(rng, prog, 2))


SIGNS = [(a, b, c, d) for a, b, c, d in itertools.product([0, 1], [0, 1], [False, True], [0, 1]) if c or not d]


@pytest.mark.parametrize("in_uns,out_uns,residual,res_uns", SIGNS,
                         ids=[f"in{'u' if a else 's'}-out{'u' if b else 's'}-{'res' + ('u' if d else 's') if c else 'nores'}"
                              for a, b, c, d in SIGNS])
def test_conv_signedness_and_residual(engine, in_uns, out_uns, residual, res_uns):
    rng = _rng("sign", in_uns, out_uns, residual, res_uns)
    prog = conv_program(rng, H=7, W=6, C=24, OC=10, K=3, stride=1, pad=1, wfmt=CODEBOOK, n=2, m=4, d=8, k=16,
                        in_unsigned=in_uns, out_unsigned=out_uns, residual=residual, res_unsigned=res_uns)
    check_exact(engine, prog, rand_inputs(rng, prog, 3))


CHANNELS = [(1, 1), (1, 8), (3, 16), (5, 7), (16, 9), (24, 33), (40, 8), (64, 64), (136, 20), (512, 10)]


@pytest.mark.parametrize("C,OC", CHANNELS, ids=[f"c{c}-oc{o}" for c, o in CHANNELS])
def test_dense_conv_channels(engine, wide_engine, C, OC):
    rng = _rng("ch", C, OC)
    hw = 6 if C * 36 <= 16384 else 3
    prog = conv_program(rng, H=hw, W=hw, C=C, OC=OC, K=3, stride=1, pad=1, wfmt=DENSE,
                        in_unsigned=int(rng.integers(0, 2)), out_unsigned=int(rng.integers(0, 2)))
    check_exact_on(engine, wide_engine, prog, rand_inputs(rng, prog, 2))


def test_linear_as_1x1_conv(engine, wide_engine):
    rng = _rng("linear")
    for C, OC, wfmt, d in ((400, 120, DENSE, 8), (256, 10, CODEBOOK, 8), (64, 512, CODEBOOK, 16)):
        prog = conv_program(rng, H=1, W=1, C=C, OC=OC, K=1, pad=0, wfmt=wfmt, n=2, m=4, d=d, k=256,
                            in_unsigned=1, out_unsigned=0)
        assert fits(engine, prog) == (d == 8)
        check_exact_on(engine, wide_engine, prog, rand_inputs(rng, prog, 5))


def test_codebook_mask_denser_than_the_pes(engine, small_engine, odd_engine):
    """Layers whose N:M is denser than the PE's (and unstructured masks) run in several passes, exactly."""
    rng = _rng("denser")
    for eng in (engine, small_engine, odd_engine):
        d = 8 if eng.config.lanes % 8 == 0 or 8 % eng.config.lanes == 0 else 4   # d and lanes divide
        for n, m in ((4, 4), (4, 8), (2, 4), (3, 4)):
            if d % m:
                continue
            prog = conv_program(rng, H=5, W=5, C=8, OC=5, K=3, pad=1, wfmt=CODEBOOK, n=n, m=m, d=d, k=16,
                                in_unsigned=1)
            check_exact(eng, prog, rand_inputs(rng, prog, 2))
        # arbitrary (unstructured) masks
        prog = conv_program(rng, H=4, W=4, C=8, OC=4, K=3, pad=1, wfmt=CODEBOOK, n=2, m=4, d=d, k=16)
        prog.ops[0].arrays["mask"] = rng.integers(0, 1 << d, size=prog.ops[0].arrays["mask"].shape).astype(np.uint16)
        check_exact(eng, prog, rand_inputs(rng, prog, 2))


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------
# strides up to 5 (past the default build's 4 banks: a window moves by more than one bank row)
POOLS = [("max", 2, 2), ("max", 3, 1), ("max", 3, 2), ("avg", 2, 2), ("avg", 3, 1), ("avg", 8, 1), ("max", 5, 5),
         ("avg", 6, 5)]


@pytest.mark.parametrize("kind,K,stride", POOLS, ids=[f"{k}{K}s{s}" for k, K, s in POOLS])
@pytest.mark.parametrize("uns", [0, 1], ids=["int8", "uint8"])
def test_pooling(engine, kind, K, stride, uns):
    rng = _rng("pool", kind, K, stride, uns)
    H = 8 if K == 8 else int(rng.integers(K, 11))
    prog = program(pool_op(rng, kind, H=H, W=H, C=int(rng.integers(1, 40)), K=K, stride=stride, in_unsigned=uns,
                           out_unsigned=uns if kind == "max" else int(rng.integers(0, 2))))
    check_exact(engine, prog, rand_inputs(rng, prog, 3))


# ---------------------------------------------------------------------------
# multi-op programs
# ---------------------------------------------------------------------------
def test_multi_op_buffer_reuse(wide_engine):
    """conv -> maxpool -> conv(+res from an earlier op) -> avgpool -> linear, buffers reused."""
    rng = _rng("multi")
    ops = [
        conv_op(rng, H=10, W=10, C=3, OC=16, K=3, pad=1, in_unsigned=0, out_unsigned=1, in_buf=0, out_buf=1,
                shift_range=(8, 20), name="c1"),
        pool_op(rng, "max", H=10, W=10, C=16, K=2, stride=2, in_unsigned=1, in_buf=1, out_buf=0, name="p1"),
        conv_op(rng, H=5, W=5, C=16, OC=16, K=3, pad=1, wfmt=CODEBOOK, n=2, m=4, d=8, k=64, in_unsigned=1,
                out_unsigned=1, in_buf=0, out_buf=2, shift_range=(8, 20), name="c2"),
        conv_op(rng, H=5, W=5, C=16, OC=16, K=3, pad=1, wfmt=CODEBOOK, n=1, m=4, d=16, k=16, in_unsigned=1,
                out_unsigned=1, in_buf=2, out_buf=1, res_buf=0, res_unsigned=1, shift_range=(8, 20), name="c3"),
        pool_op(rng, "avg", H=5, W=5, C=16, K=5, stride=1, in_unsigned=1, in_buf=1, out_buf=0, name="gap"),
        conv_op(rng, H=1, W=1, C=16, OC=10, K=1, pad=0, in_unsigned=1, out_unsigned=0, in_buf=0, out_buf=2,
                name="fc"),
    ]
    prog = program(*ops)
    check_exact(wide_engine, prog, rand_inputs(rng, prog, 4))   # c3 has d = 16


def test_lenet_like(engine, small_engine, odd_engine):
    for eng in (engine, small_engine, odd_engine):
        rng = _rng("lenet", eng.config.hash())
        prog = lenet_program(rng, k=min(64, eng.config.k_max), d=8 if eng.config.lanes % 8 == 0 else 4)
        check_exact(eng, prog, rand_inputs(rng, prog, 16))


def test_resnet20_sized(engine):
    rng = _rng("resnet20")
    prog = resnet20_program(rng, size=32)
    check_exact(engine, prog, rand_inputs(rng, prog, 2))
    prog = resnet20_program(rng, size=28, wfmt=DENSE)
    check_exact(engine, prog, rand_inputs(rng, prog, 1))


def test_several_pixel_tiles(small_engine, odd_engine):
    """Output maps larger than the accumulator tile (small engines: 512 / 300 pixels per tile)."""
    rng = _rng("tiles")
    for eng, hw in ((small_engine, 16), (odd_engine, 16)):
        from flow.hls.project import derived_params
        groups = hw * -(-hw // eng.config.rows)
        assert groups > 3 * eng.config.acc_groups            # several pixel tiles, and a partial last one
        assert derived_params(eng.config)["banks"] >= 2 * eng.config.rows
        for wfmt in (DENSE, CODEBOOK):
            prog = conv_program(rng, H=hw, W=hw, C=1, OC=2, K=3, pad=1, wfmt=wfmt, n=1, m=1, d=1, k=16,
                                in_unsigned=1, out_unsigned=1)
            check_exact(eng, prog, rand_inputs(rng, prog, 2))
        prog = program(pool_op(rng, "max", H=hw, W=hw, C=1, K=2, stride=1, in_unsigned=1),
                       pool_op(rng, "avg", H=hw - 1, W=hw - 1, C=1, K=3, stride=2, in_unsigned=1, in_buf=1,
                               out_buf=2))
        check_exact(eng, prog, rand_inputs(rng, prog, 2))


# ---------------------------------------------------------------------------
# hypothesis-drawn shapes (one compiled engine, few examples)
# ---------------------------------------------------------------------------
@st.composite
def conv_cases(draw):
    K = draw(st.sampled_from([1, 2, 3, 5]))
    pad = draw(st.integers(0, min(2, K)))
    stride = draw(st.integers(1, 2))
    H = draw(st.integers(max(1, K - 2 * pad), 9))
    W = draw(st.integers(max(1, K - 2 * pad), 9))
    wfmt = draw(st.sampled_from([DENSE, CODEBOOK]))
    n, m = draw(st.sampled_from(NM))
    d = draw(st.sampled_from([d for d in DS if d % m == 0]))
    C = d * draw(st.integers(1, 4)) if wfmt == CODEBOOK else draw(st.integers(1, 40))
    return dict(H=H, W=W, C=C, OC=draw(st.integers(1, 20)), K=K, stride=stride, pad=pad, wfmt=wfmt, n=n, m=m,
                d=d, k=draw(st.sampled_from(KS)), in_unsigned=draw(st.integers(0, 1)),
                out_unsigned=draw(st.integers(0, 1)), residual=draw(st.booleans()), res_unsigned=draw(st.integers(0, 1)),
                seed=draw(st.integers(0, 2**31)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=conv_cases())
def test_hypothesis_conv_shapes(engine, wide_engine, case):
    case = dict(case)
    rng = np.random.default_rng(case.pop("seed"))
    prog = conv_program(rng, **case)
    check_exact_on(engine, wide_engine, prog, rand_inputs(rng, prog, 2))


# ---------------------------------------------------------------------------
# saturation corners
# ---------------------------------------------------------------------------
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def test_saturation_int32_bound_and_extreme_multipliers(engine):
    """Accumulators at exactly +-(2^31 - 1) / -2^31 with extreme M, S and residual multipliers."""
    rng = _rng("sat")
    C, K = 64, 3
    taps = K * K * C
    corners = [(INT32_MAX, 31), (INT32_MIN, 31), (1, 31), (1, 1), (-1, 1), (INT32_MAX, 1), (INT32_MIN, 1),
               (12345, 20), (-777, 13), (INT32_MAX, 16)]
    OC = len(corners)
    for x_val, uns in ((-128, 0), (127, 0), (255, 1), (0, 1)):
        op = conv_op(rng, H=3, W=3, C=C, OC=OC, K=K, stride=1, pad=0, in_unsigned=uns, out_unsigned=0)
        sign = np.where(np.arange(OC) % 2 == 0, 1, -1)
        w = np.where(sign[:, None, None, None] > 0, -128, 127) * np.ones((OC, K, K, C), np.int64)
        if x_val == 0:   # the bias alone at the bound: any weight would overflow the int32 for another input
            w = np.zeros_like(w)
        op.arrays["weight"] = w.astype(np.int8)
        acc_no_bias = (w.reshape(OC, -1).sum(1) * x_val).astype(np.int64)
        # push every channel's accumulator to the int32 bound on its side
        target = np.where(acc_no_bias >= 0, INT32_MAX, INT32_MIN)
        bias = target - acc_no_bias
        assert np.all(np.abs(acc_no_bias) <= taps * 128 * 255)
        op.arrays["bias"] = np.clip(bias, INT32_MIN, INT32_MAX).astype(np.int32)
        op.arrays["mult"] = np.array([mm for mm, _ in corners], np.int32)
        op.arrays["shift"] = np.array([s for _, s in corners], np.int32)
        prog = program(op)
        x = np.full((2, 3, 3, C), x_val, np.uint8 if uns else np.int8)
        out = check_exact(engine, prog, x)
        assert len(np.unique(out)) > 1
    # residual with extreme res_mult and extreme residual bytes
    prog = conv_program(rng, H=4, W=4, C=16, OC=8, K=3, pad=1, residual=True, res_unsigned=1, in_unsigned=1)
    prog.ops[1].arrays["res_mult"] = np.array([INT32_MAX, INT32_MIN, 1, -1, 0, 1 << 20, -(1 << 20), 3], np.int32)
    prog.ops[1].arrays["shift"] = np.array([31, 31, 1, 1, 31, 20, 20, 2], np.int32)
    for v in (0, 255):
        check_exact(engine, prog, np.full((1, 4, 4, 16), v, np.uint8))


def test_input_extremes_random_weights(engine):
    rng = _rng("extremes")
    for uns, vals in ((0, (-128, 127)), (1, (0, 255))):
        prog = conv_program(rng, H=6, W=6, C=32, OC=12, K=3, pad=1, wfmt=CODEBOOK, n=2, m=4, d=8, k=256,
                            in_unsigned=uns, out_unsigned=1 - uns)
        cb = prog.ops[0].arrays["codebook"]
        cb[: len(cb) // 2] = -128
        x = rng.choice(vals, size=(3, 6, 6, 32)).astype(np.uint8 if uns else np.int8)
        check_exact(engine, prog, x)


# ---------------------------------------------------------------------------
# the two C-sim paths agree; the cycle counter moves
# ---------------------------------------------------------------------------
def test_testbench_and_bridge_agree(engine):
    from flow.hls.csim import csim

    rng = _rng("paths")
    prog = lenet_program(rng)
    x = rand_inputs(rng, prog, 7)
    via_bridge = engine.predict(prog, x)
    via_tb = csim(engine.project, prog, x)
    assert via_tb.dtype == via_bridge.dtype
    assert np.array_equal(via_tb, via_bridge)
    assert np.array_equal(via_tb, run_program(prog, x))
    # and with the expected outputs given, the testbench passes
    csim(engine.project, prog, x, expected=run_program(prog, x))


def test_modelled_cycles_equal_the_python_model(engine, small_engine, odd_engine):
    """The CYCLES counter of C-simulation is the cycle model of flow/boards/cycle_model.py, term for term:
    load call and run calls, resident and streamed weights, pools, PQ, several engine geometries."""
    from flow.boards import cycle_model
    from flow.compile.layout import place
    from hls_testlib import pq_program

    rng = _rng("cycles")
    for eng in (engine, small_engine, odd_engine):
        cfg = eng.config
        progs = [lenet_program(rng, k=16) if cfg.lanes != 12 else None,
                 conv_program(rng, H=9, W=7, C=2 * cfg.lanes, OC=20, K=3, pad=1, stride=2, residual=True),
                 conv_program(rng, H=4, W=4, C=4 * cfg.lanes, OC=3 * cfg.cols, K=3, pad=1),
                 program(pool_op(rng, "avg", H=6, W=6, C=12, K=3, stride=1)),
                 pq_program(rng, H=5, W=5, C=8, OC=12, K=3, pad=1, v=9, Kp=16)]
        for prog in progs:
            if prog is None or not fits(eng, prog):
                continue
            placed = place(prog, cfg)
            eng.load(prog)
            assert eng.modelled_cycles == cycle_model.load_cycles(placed, cfg)
            for n in (1, 3):
                eng.predict(prog, rand_inputs(rng, prog, n))
                assert eng.modelled_cycles == cycle_model.run_cycles(placed, cfg, n), [op.name for op in prog.ops]
    # weights that do not fit stream one oc tile at a time, and the model counts the loads
    import dataclasses
    tight = dataclasses.replace(small_engine.config)
    prog = conv_program(rng, H=4, W=4, C=64, OC=20, K=3, pad=1)
    placed = place(prog, tight)
    assert placed.ops[0].resident == 0
    small_engine.predict(prog, rand_inputs(rng, prog, 2))
    assert small_engine.modelled_cycles == cycle_model.run_cycles(placed, tight, 2)
    assert cycle_model.op_cycles(placed.ops[0], tight).phases["param_load"] > 0
    # PQ LUTs larger than lut_bytes stream their rows: two entries per beat (even OC) or one (odd OC)
    for oc in (20, 21):
        prog = pq_program(rng, H=4, W=4, C=16, OC=oc, K=3, pad=1, v=9, Kp=16, in_unsigned=1)
        placed = place(prog, tight)
        assert placed.ops[0].lut_resident == 0
        check_exact(small_engine, prog, rand_inputs(rng, prog, 2))
        assert small_engine.modelled_cycles == cycle_model.run_cycles(placed, tight, 2)


def test_program_roundtrip_through_bytes(engine):
    """The engine runs Program.from_bytes(to_bytes()) the same (it only ever sees the bytes)."""
    rng = _rng("bytes")
    prog = lenet_program(rng)
    again = Program.from_bytes(prog.to_bytes())
    x = rand_inputs(rng, prog, 3)
    assert np.array_equal(engine.predict(again, x), engine.predict(prog, x))


ENGINE_D = [("small_engine", 4), ("small_engine", 8), ("odd_engine", 4), ("odd_engine", 12),
            ("engine", 4), ("engine", 8), ("wide_engine", 16)]


@pytest.mark.parametrize("which,d", ENGINE_D, ids=[f"{w}-d{d}" for w, d in ENGINE_D])
def test_codebook_across_engine_geometries(request, which, d):
    """Codeword lengths that tile the PE width or not (d_max 8 / 12 / 16), several channel chunks."""
    eng = request.getfixturevalue(which)
    rng = _rng("geom", which, d)
    for C in (d, 2 * d, 3 * d):
        if C > eng.config.max_channels or 5 * 5 * C > eng.config.act_buf_bytes:
            continue
        prog = conv_program(rng, H=5, W=5, C=C, OC=7, K=3, pad=1, stride=int(rng.integers(1, 3)), wfmt=CODEBOOK,
                            n=2, m=4, d=d, k=min(32, eng.config.k_max), in_unsigned=int(rng.integers(0, 2)),
                            residual=bool(rng.integers(0, 2)))
        check_exact(eng, prog, rand_inputs(rng, prog, 2))


def test_large_batch_crosses_bridge_chunks(engine):
    """More images than one engine call takes (the bridge streams 64 per call)."""
    rng = _rng("batch")
    prog = lenet_program(rng)
    check_exact(engine, prog, rand_inputs(rng, prog, 150))


# ---------------------------------------------------------------------------
# the exact-width types synthesis compiles (ap_int of the stated widths), in C-simulation
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exact_engine():
    from flow.hls.csim import CsimEngine
    from hls_testlib import DEFAULT_CFG
    return CsimEngine(DEFAULT_CFG, exact=True)


def test_exact_width_types_are_bit_exact(exact_engine, engine):
    """The -DVQHLS_EXACT_TYPES build uses the __SYNTHESIS__ datapath types (ap_int<9> activations,
    ap_int<17> products, psum / accumulator / 64-bit requantization widths): same bits as golden."""
    from hls_testlib import pq_program

    assert exact_engine.library_path != engine.library_path and exact_engine.exact
    rng = _rng("exact")
    progs = [lenet_program(rng),
             conv_program(rng, H=6, W=6, C=24, OC=12, K=3, pad=1, stride=2, wfmt=CODEBOOK, n=2, m=4, d=8, k=64,
                          residual=True, res_unsigned=1, in_unsigned=1),
             conv_program(rng, H=5, W=5, C=16, OC=9, K=3, pad=1, wfmt=DENSE, in_unsigned=0, out_unsigned=1),
             pq_program(rng, H=5, W=5, C=8, OC=12, K=3, pad=1, v=9, Kp=16, residual=True),
             program(pool_op(rng, "avg", H=6, W=6, C=12, K=3, stride=1), ),
             resnet20_program(rng, size=16, in_ch=1)]
    for prog in progs:
        x = rand_inputs(rng, prog, 2)
        out = check_exact(exact_engine, prog, x)
        assert np.array_equal(out, engine.predict(prog, x))


@pytest.mark.slow
@pytest.mark.parametrize("board,nm", [("pynq-z2", (4, 4)), ("zcu104", (None, None))], ids=["pynq-dense", "zcu104"])
def test_board_builds_are_bit_exact(board, nm):
    """The other board builds (flow.boards.sizing.config_for_board): the dense PYNQ-Z2 baseline (plain PEs, no
    muxes) and the ZCU104 array (16-byte words) compile, fit their part and compute the golden bits."""
    from flow.boards.resource_model import check_fit
    from flow.boards.sizing import config_for_board
    from flow.hls.csim import CsimEngine

    cfg = config_for_board(board, n=nm[0], m=nm[1])
    check_fit(cfg, board)
    eng = CsimEngine(cfg)
    rng = _rng("board", board)
    assert cfg.dense == (nm == (4, 4))
    progs = [lenet_program(rng, k=32),
             conv_program(rng, H=7, W=9, C=2 * cfg.lanes, OC=cfg.cols + 3, K=3, pad=1, stride=2, wfmt=CODEBOOK,
                          n=2, m=4, d=8, k=64, residual=True, in_unsigned=1),
             resnet20_program(rng, size=16, in_ch=1)]
    for prog in progs:
        check_exact(eng, prog, rand_inputs(rng, prog, 2))
