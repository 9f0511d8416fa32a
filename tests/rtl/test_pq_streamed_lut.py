"""A PQ op whose LUT does not fit on chip (``lut_resident = 0``) in the whole RTL engine (vqhls_engine_top)
driven at its AXI ports: per pixel the encoder alone, then one run-time request per subspace for the LUT row
of its code (vqhls_pq_unit S_ROWQ .. S_ROW: tiles of cols entries, each updating its accumulators once), then
the drain alone (hls_templates/engine/lookup_engine.h.j2 PQ_ROWS / row_accum is the specification).

References are independent of the RTL: the golden model (flow.compile.program_exec.run_program) and the C-sim
engine (flow.hls.csim.CsimEngine, the HLS engine compiled with g++) on the same Program image, with the same
STATUS. Cycle figures are MEASURED in RTL simulation (op_start .. op_done of the core); the model they are held
to (within 5 %) is flow.boards.cycle_model with the RTL engine's depths (flow.rtl.engine_rtl.RTL_DEPTH:
"pq_stream", "pq_row", "pq_op_stream"). Icarus, one shrunk engine build (lut_bytes 64 forces every LUT to
stream; max_channels 256 lets a row run past 64 beats).
"""
from __future__ import annotations

import dataclasses
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from engine_io import program_image, regmap
from flow.boards.cycle_model import image_cycles
from flow.compile.program import PQ
from flow.compile.program_exec import run_program
from flow.compile.validate import prepare
from flow.hls import vectors
from flow.quant.ops import im2col, pq_distances
from flow.rtl.cosim import CosimError, find_simulator
from flow.rtl.engine_rtl import RTL_DEPTH, run_engine, unsupported
from flow.rtl.random_ops import SMALL_CFG

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flow" / "hls"))
from hls_testlib import pq_program  # noqa: E402

pytestmark = pytest.mark.cosim

# the small test geometry (4x4 array, 4 lanes) with a 64-byte LUT memory: every PQ LUT streams
STREAM_CFG = dataclasses.replace(SMALL_CFG, lut_bytes=64, max_channels=256, ch_rows=256, act_buf_bytes=8192)

CASES = {
    # pairs (OC and cols even: two entries per beat), 3x3 with padding, NOT 2
    "pairs_v4_k8": dict(H=4, W=4, C=4, OC=8, K=3, pad=1, v=4, Kp=8),
    # singles (odd OC: rows start in the upper half of a beat half the time), stride 2, residual, unsigned
    "odd_oc_stride2_res": dict(H=5, W=5, C=3, OC=7, K=3, stride=2, pad=1, v=3, Kp=5, in_unsigned=1,
                               residual=True, res_unsigned=1),
    # NOT 1: every row updates the same accumulator word (a row's write before the next row's read), v 1
    "not1_v1": dict(H=3, W=3, C=2, OC=3, K=1, pad=0, v=1, Kp=16),
    # rows of 201 int16 (101 beats: more than one 64-beat burst; a 46 KiB LUT: rows across 4 KiB pages), singles
    "long_rows_oc201": dict(H=2, W=2, C=6, OC=201, K=1, pad=0, v=2, Kp=7, residual=True),
}

_CSIM: dict = {}


def _need(sim: str) -> None:
    try:
        find_simulator(sim)
    except CosimError as e:
        pytest.fail(str(e))   # the Makefile installs both: missing is a setup error, not a skip


def _case(name: str):
    """(placed Program, its PQ op index, input bytes [2, in_bytes], golden output bytes [2, out_bytes])."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    prog = prepare(pq_program(rng, **CASES[name]), STREAM_CFG)
    i = next(j for j, op in enumerate(prog.ops) if op.opcode == PQ)
    assert not prog.ops[i].lut_resident, "the case is meant to stream its LUT rows"
    x = rng.integers(0, 256, (2, *prog.in_shape)).astype(np.uint8)
    if not prog.ops[0].in_unsigned:
        x = x.view(np.int8)
    golden = vectors.outputs_to_bytes(prog, run_program(prog, x))
    return prog, i, vectors.check_inputs(prog, x), golden


def _csim(image: bytes, inputs: np.ndarray) -> tuple[int, np.ndarray | None]:
    """(load STATUS, output bytes) of the C-sim engine on the same image (the HLS engine's own streamed rows)."""
    from flow.hls.csim import CsimEngine, EngineError   # deferred: jinja2 + g++ (the cached C-sim build)

    if "eng" not in _CSIM:
        _CSIM["eng"] = CsimEngine(STREAM_CFG)
    eng = _CSIM["eng"]
    try:
        eng.load_image(image, validate=False)
        return 0, eng.run_bytes(inputs)
    except EngineError as e:
        return e.status, None


def _rows_read(prog, i: int, image: bytes, x_bytes: np.ndarray) -> list[tuple[int, int]]:
    """(first byte, bytes) in the image of every LUT row the op reads for the first image, from the codes an
    independent encoder (flow.quant.ops.pq_distances, argmin with ties to the lowest index) picks."""
    op = prog.ops[i]
    x = x_bytes[0].view(np.uint8 if op.in_unsigned else np.int8).reshape(op.H, op.W, op.C).astype(np.int64)
    a = im2col(x[None], op.KH, op.KW, op.stride, op.pad).reshape(-1, op.nsub, op.v)
    codes = pq_distances(a, op.arrays["proto"].astype(np.int64)).argmin(-1)   # [pixels, nsub]
    words = program_image.header_words(image)
    base = program_image.HEADER_BYTES + 4 * words[program_image.WORD["desc_words"]] * i
    off_lut = int(np.frombuffer(image, "<i4", 1, base + 4 * program_image.DESC_FIELDS.index("off_lut"))[0])
    return [(off_lut + 2 * ((s * op.K + int(c)) * op.OC), 2 * op.OC) for px in codes for s, c in enumerate(px)]


@pytest.mark.parametrize("name", list(CASES))
def test_streamed_lut_bit_exact(name: str) -> None:
    """The streamed rows through AXI on Icarus: outputs equal to the golden model's and the C-sim engine's,
    STATUS OK as the C-sim's; the op's measured cycles within 5 % of the model with RTL_DEPTH."""
    _need("icarus")
    prog, i, x, golden = _case(name)
    assert unsupported(prog) is None
    image = prog.to_bytes()
    run = run_engine(image, STREAM_CFG, x, simulator="icarus")
    c_status, c_out = _csim(image, x)
    assert run.load_status == c_status == 0, (regmap.status_message(run.load_status), c_status)
    assert run.statuses == [0], [regmap.status_message(s) for s in run.statuses]
    assert np.array_equal(c_out, golden), "the C-sim engine disagrees with the golden model"
    assert np.array_equal(run.outputs, golden), name
    if name == "long_rows_oc201":   # the rows really need the burst reader's splits (the AR rule: test_loader)
        rows = _rows_read(prog, i, image, x)
        beats = [(b + n - 1) // 4 - b // 4 + 1 for b, n in rows]
        assert min(beats) > 64
        assert any(b // 4096 != (b + n - 1) // 4096 for b, n in rows), "no row read crosses a 4 KiB page"
    model = image_cycles(prog, STREAM_CFG, RTL_DEPTH).ops[i].cycles
    hls = image_cycles(prog, STREAM_CFG).ops[i].cycles
    measured = run.op_cycles[:, i].astype(float)
    print(f"streamed pq {name}: measured {measured.mean():.1f} cycles/op (RTL simulation), model (RTL depths) "
          f"{model} ({100 * (model - measured.mean()) / measured.mean():+.2f} %), model (HLS depths) {hls}")
    assert np.all(np.abs(model - measured) <= 0.05 * measured), (model, measured)


def test_planted_row_address_bug_is_caught() -> None:
    """Test of the test: a row address one LUT row too far (r_h + OC) changes the outputs."""
    _need("icarus")
    prog, i, x, golden = _case("pairs_v4_k8")
    bad = run_engine(prog.to_bytes(), STREAM_CFG, x, simulator="icarus", bugs={"pq_unit": "lut_row"})
    assert bad.load_status == 0 and bad.statuses == [0]
    assert not np.array_equal(bad.outputs, golden), "the planted LUT row bug went unnoticed"
