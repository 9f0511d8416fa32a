"""RTL simulation (cocotb; Icarus for the small cases, Verilator for lenet) of the engine core
``vqhls_engine_core``: its memories preloaded through the parameter port with what the HLS load call leaves
on chip (flow.rtl.onchip), images streamed in, every op run by the pool / conv units, the output streamed out.

References (never the RTL's own output): the golden model flow.compile.program_exec.run_program for output
bytes (np.array_equal), the C-sim engine's register-level call (flow.hls.csim, ``vqhls_call``) for STATUS,
input bytes consumed, output bytes and TLAST flags when TLAST is early or missing. Cycles are MEASURED in RTL
simulation (testbench clock edges between op_start and op_done) and printed beside the cycle model's
(flow/boards/cycle_model.py, MODELLED).
"""
from __future__ import annotations

import shutil
import zlib

import numpy as np
import pytest

from engine_io import regmap
from flow.compile.engine import EngineConfig
from flow.compile.program import AVGPOOL, MAXPOOL, CONV
from flow.compile.validate import prepare
from flow.rtl.engine_core_cases import (CoreCall, csim_call, golden_bytes, model_op_cycles,
                                        pool_program, run_core)

pytestmark = [pytest.mark.cosim,
              pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")]

ENGINE = EngineConfig()
DESC_WORDS = 64


def _inputs(rng, prog, n):
    """n random images for ``prog`` in its input format: (codes [n,H,W,C], bytes [n, in_bytes])."""
    op = prog.ops[0]
    lo, hi = (0, 256) if op.in_unsigned else (-128, 128)
    x = rng.integers(lo, hi, (n, op.H, op.W, op.C))
    return x, (x & 0xFF).astype(np.uint8).reshape(n, -1)


def _rtl_pool_cycles(op) -> int:
    """The RTL's own schedule of a pool op from op_start to op_done (engine_core.v.j2, pool_unit.v.j2):
    the descriptor read (DESC_WORDS), the start cycle, 4 setup products, one iteration per cycle
    (OH*OW*OCW*(KH*KW [+ lanes])), the write (+1), and for the average pool the requantization lane (+4)."""
    per = op.KH * op.KW + (ENGINE.lanes if op.opcode == AVGPOOL else 0)
    total = op.OH * op.OW * op.OCW * per
    return DESC_WORDS + 1 + 4 + total + 1 + (4 if op.opcode == AVGPOOL else 0)


def _report(prog, run, images):
    meas = run.op_cycles(len(prog.ops))
    model = model_op_cycles(prog, ENGINE)
    print(f"\nper-op cycles (measured in RTL simulation, {run.simulator}) vs cycle model (modelled):")
    for i, op in enumerate(prog.ops):
        kind = {CONV: "conv", MAXPOOL: "maxpool", AVGPOOL: "avgpool"}.get(op.opcode, str(op.opcode))
        shape = f"{op.OH}x{op.OW}x{op.OC}"
        print(f"  op {i} {kind:8s} {shape:10s} measured {[int(v) for v in meas[:, i]]}  model {model[i]}")
    assert meas.shape == (images, len(prog.ops)), meas
    return meas, model


POOL_CASES = {
    # max 2x2/2 then avg 3x3/1, int8, C=12 (2 channel words, the second half empty)
    "max-avg-int8": (dict(layers=[("max", 2, 2), ("avg", 3, 1)], H=6, W=9, C=12, in_unsigned=0), 2),
    # uint8, an average pool then a max pool whose stride (5) is past the bank count (4)
    "avg-max-stride5-uint8": (dict(layers=[("avg", 2, 1), ("max", 3, 5)], H=12, W=17, C=3, in_unsigned=1), 1),
    # a 1x1 copy (the residual copy of lower()) and a global average pool over 20 channels (3 words)
    "copy-global-avg": (dict(layers=[("max", 1, 1), ("avg", 4, 1)], H=4, W=4, C=20, in_unsigned=0), 2),
}


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pool_programs_bit_exact(tmp_path, case):
    """Pool-only programs: every output byte equals the golden model's; the op table reads back as written;
    each op's measured cycles equal the RTL's schedule (one pool iteration per cycle), printed beside the
    cycle model's."""
    kw, n = POOL_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))   # a stable seed per case
    prog = prepare(pool_program(rng, **kw), ENGINE)
    image = prog.to_bytes()
    x, xb = _inputs(rng, prog, n)
    run = run_core(image, ENGINE, [CoreCall.images(xb)], work=tmp_path)
    c = run.calls[0]
    assert c["status"] == 0, hex(c["status"])
    assert c["x_beats"] == 0
    want = golden_bytes(prog, x).reshape(-1)
    got = np.frombuffer(c["out"], np.uint8)
    assert np.array_equal(got, want), f"{case}: {np.count_nonzero(got != want)} of {want.size} bytes differ"
    assert c["last"] == [0] * (len(want) - 1) + [1]
    assert c["consumed"] == xb.size
    descs = np.frombuffer(image, "<u4", len(prog.ops) * DESC_WORDS, 64).tolist()
    assert run.readback == descs
    meas, model = _report(prog, run, n)
    for i, op in enumerate(prog.ops):
        assert (meas[:, i] == _rtl_pool_cycles(op)).all(), (i, meas[:, i], _rtl_pool_cycles(op))
        assert abs(int(meas[0, i]) - model[i]) <= 4   # the model: DESC_WORDS + iterations + DEPTH pool 8


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 5), (2, 9, 16)])
def test_stream_round_trip(tmp_path, shape):
    """stream_in -> a 1x1 max pool (an exact copy) -> stream_out gives back the input bytes (NHWC, channel
    counts below, equal to and twice the lanes; widths past the bank count)."""
    H, W, C = shape
    rng = np.random.default_rng(sum(shape))
    prog = prepare(pool_program(rng, [("max", 1, 1)], H=H, W=W, C=C, in_unsigned=1), ENGINE)
    x, xb = _inputs(rng, prog, 3)
    run = run_core(prog.to_bytes(), ENGINE, [CoreCall.images(xb)], work=tmp_path)
    assert run.calls[0]["status"] == 0
    assert np.array_equal(np.frombuffer(run.calls[0]["out"], np.uint8), xb.reshape(-1))
    assert np.array_equal(golden_bytes(prog, x).reshape(-1), xb.reshape(-1))


def _tlast_program():
    rng = np.random.default_rng(7)
    prog = prepare(pool_program(rng, [("avg", 2, 2)], H=4, W=6, C=5, in_unsigned=1), ENGINE)
    x, xb = _inputs(rng, prog, 3)
    return prog, x, xb


def _tlast_calls(xb):
    n_in = xb.shape[1]
    stream = xb.tobytes()
    return {
        "early-inside-image-1": CoreCall(3, stream, n_in + 5),       # image 0 computed, 1 and 2 blank
        "early-on-image-0-end": CoreCall(2, stream[:2 * n_in], n_in - 1),   # image 0 complete and computed
        "missing": CoreCall(2, stream[:2 * n_in], -1),               # every byte read, no TLAST: flagged
        "late": CoreCall(1, stream[:n_in] + b"\x01", n_in),          # TLAST past the call's bytes: missing
        "good": CoreCall(3, stream, len(stream) - 1),
    }


def test_tlast_errors_match_csim(tmp_path):
    """Early and missing TLAST: STATUS (ERR_TLAST, op 0xFF), the input bytes consumed, the output bytes (the
    computed images' and zeros for the others) and the output TLAST flags equal the C-sim engine's for the
    same call; a well-formed call after them runs bit-exact (the core recovers)."""
    prog, x, xb = _tlast_program()
    image = prog.to_bytes()
    calls = _tlast_calls(xb)
    run = run_core(image, ENGINE, list(calls.values()), work=tmp_path)
    for (name, call), got in zip(calls.items(), run.calls):
        ref = csim_call(image, ENGINE, call)
        assert got["status"] == ref["status"], (name, hex(got["status"]), hex(ref["status"]))
        assert got["consumed"] == ref["consumed"], (name, got["consumed"], ref["consumed"])
        assert got["out"] == ref["out"], name
        assert got["last"] == ref["last"], name
        if name != "good":
            assert regmap.decode_status(got["status"])[0] == regmap.ERR_TLAST, (name, hex(got["status"]))
            assert (got["status"] >> 8) & 0xFF == 0xFF
    good = run.calls[-1]
    assert good["status"] == 0
    assert np.array_equal(np.frombuffer(good["out"], np.uint8), golden_bytes(prog, x).reshape(-1))
    # image 0 of the early-inside call was computed: its bytes are the golden model's, the rest zeros
    n_out = prog.output_bytes
    first = np.frombuffer(run.calls[0]["out"], np.uint8)
    assert np.array_equal(first[:n_out], golden_bytes(prog, x[:1]).reshape(-1)) and not first[n_out:].any()


def test_tlast_mutant_is_caught(tmp_path):
    """Test of the test: a stream_in that does not stop at an early TLAST reads on and computes the image,
    which the C-sim engine does not: the comparison above fails on it."""
    prog, x, xb = _tlast_program()
    image = prog.to_bytes()
    call = _tlast_calls(xb)["early-inside-image-1"]
    run = run_core(image, ENGINE, [call], work=tmp_path, bugs={"stream_in": "tlast_ignored"})
    ref = csim_call(image, ENGINE, call)
    assert (run.calls[0]["consumed"], run.calls[0]["out"]) != (ref["consumed"], ref["out"])


@pytest.mark.parametrize("bug", ["", "no_hold"])
def test_backpressure_and_input_gaps(tmp_path, bug):
    """Random input gaps (30 %) and output back-pressure (m_tready low 40 %): the same bytes as the golden
    model; the call takes more cycles than without. Test of the test: a stream_out that reads S0's word
    while S1 holds (no_hold) loses bytes under back-pressure and is caught."""
    rng = np.random.default_rng(11)
    prog = prepare(pool_program(rng, [("max", 2, 1), ("avg", 2, 2)], H=5, W=7, C=10, in_unsigned=0), ENGINE)
    x, xb = _inputs(rng, prog, 2)
    calls = [CoreCall.images(xb)]
    want = golden_bytes(prog, x).reshape(-1)
    run = run_core(prog.to_bytes(), ENGINE, calls, in_gaps=0.3, out_stalls=0.4, work=tmp_path / "bp",
                   bugs={"stream_out": bug} if bug else None)
    got = np.frombuffer(run.calls[0]["out"], np.uint8)
    if bug:
        assert not np.array_equal(got, want), "the planted no_hold bug went unnoticed"
        return
    assert run.calls[0]["status"] == 0 and run.calls[0]["x_beats"] == 0
    assert np.array_equal(got, want)
    free = run_core(prog.to_bytes(), ENGINE, calls, work=tmp_path / "free")
    assert np.array_equal(np.frombuffer(free.calls[0]["out"], np.uint8), want)
    print(f"\ncall cycles (measured in RTL simulation): {free.calls[0]['cycles']} free-flowing, "
          f"{run.calls[0]['cycles']} with gaps and back-pressure")
    assert run.calls[0]["cycles"] > free.calls[0]["cycles"]


# ---------------------------------------------------------------------------- with the conv unit
def test_tiny_conv_program(tmp_path):
    """tests/flow/small_cases.py tiny_program (one 3x3 dense conv 4x4x8) through the core, bit-exact."""
    prog = prepare(_tiny_program(), ENGINE)
    rng = np.random.default_rng(3)
    x, xb = _inputs(rng, prog, 2)
    run = run_core(prog.to_bytes(), ENGINE, [CoreCall.images(xb)], work=tmp_path)
    assert run.calls[0]["status"] == 0
    assert np.array_equal(np.frombuffer(run.calls[0]["out"], np.uint8), golden_bytes(prog, x).reshape(-1))
    _report(prog, run, 2)


def _tiny_program():
    """tests/flow/small_cases.py tiny_program (that folder is not a package: loaded from its file)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "flow" / "small_cases.py"
    spec = importlib.util.spec_from_file_location("vqhls_small_cases", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.tiny_program(ENGINE)


