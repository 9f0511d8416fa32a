"""Run-time DDR reads in the whole RTL engine (vqhls_engine_top) driven at its AXI ports: PQ ops
(vqhls_pq_unit: prototypes and LUT per image) and conv weights streamed one output-channel tile at a time.

References are independent of the RTL: the golden model (flow.compile.program_exec.run_program on the placed
Program; for lenet-digits through flow.rtl.engine_cases). Cycle figures are MEASURED in RTL simulation
(REAL_CYCLES per run call, op_start..op_done per op); the model they are held to (within 5 %) is
flow.boards.cycle_model with the RTL engine's fill depths (flow.rtl.engine_rtl.RTL_DEPTH: "pq", "pq_op",
"load_chunk"). The random PQ layers (v, K, strides, padding, residual, signedness, odd and even OC) and the
planted argmin bug run on Icarus; lenet-digits pq (120 test images) under Verilator through the host's harness
(flow.rtl.engine_harness), all 360 on the cocotb bench in `make cosim`.
"""
from __future__ import annotations

import dataclasses
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from engine_io import regmap
from flow.boards.cycle_model import image_cycles
from flow.compile.program import CONV, PQ, Program
from flow.compile.program_exec import run_program
from flow.compile.validate import prepare
from flow.hls import vectors
from flow.rtl.cosim import CosimError, find_simulator
from flow.rtl.engine_cases import engine_case
from flow.rtl.engine_harness import run_engine_harness
from flow.rtl.engine_rtl import RTL_DEPTH, run_engine, unsupported
from flow.rtl.random_ops import SMALL_CFG

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flow" / "hls"))
from hls_testlib import pq_program  # noqa: E402

pytestmark = pytest.mark.cosim

# the small test geometry (4x4 array, 4 lanes, 3 buffers) with room for the random layers' LUTs (v 16, K 64)
PQ_CFG = dataclasses.replace(SMALL_CFG, lut_bytes=32768)


def _need(sim: str) -> None:
    try:
        find_simulator(sim)
    except CosimError as e:
        pytest.fail(str(e))   # the Makefile installs both: missing is a setup error, not a skip


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _pq_case(v: int, Kp: int, trial: int, **over):
    """A random PQ program placed for PQ_CFG (LUT on chip), its inputs and golden output bytes."""
    rng = _rng("rtl-pq", v, Kp, trial)
    K = int(rng.choice([1, 3]))
    cands = [c for c in range(1, 17) if (K * K * c) % v == 0]
    kw = dict(H=int(rng.integers(3, 7)), W=int(rng.integers(3, 7)), C=int(rng.choice(cands)),
              OC=int(rng.integers(1, 14)), K=K, stride=int(rng.integers(1, 3)),
              pad=int(rng.integers(0, 2)) if K == 3 else 0, v=v, Kp=Kp, lut_bits=int(rng.choice([8, 16])),
              in_unsigned=int(rng.integers(0, 2)), out_unsigned=int(rng.integers(0, 2)),
              residual=bool(rng.integers(0, 2)), res_unsigned=int(rng.integers(0, 2)))
    kw.update(over)
    prog = prepare(pq_program(rng, **kw), PQ_CFG)
    pq = [op for op in prog.ops if op.opcode == PQ]
    assert pq and all(op.lut_resident for op in pq), "the case is meant to keep its LUT on chip"
    x = rng.integers(0, 256, (2, *prog.in_shape)).astype(np.uint8)
    if not prog.ops[0].in_unsigned:
        x = x.view(np.int8)
    golden = vectors.outputs_to_bytes(prog, run_program(prog, x))
    return prog, vectors.check_inputs(prog, x), golden, kw


RANDOM = [(1, 2, 0), (3, 5, 0), (4, 16, 0), (9, 8, 0), (9, 16, 1), (16, 64, 0), (2, 4, 2)]


@pytest.mark.parametrize("v,Kp,trial", RANDOM, ids=[f"v{v}-K{k}-{t}" for v, k, t in RANDOM])
def test_random_pq_layer_bit_exact(v: int, Kp: int, trial: int) -> None:
    """Random PQ layers (v, K, kernel, stride, padding, residual, signedness, OC odd or even) with planted
    distance ties, through AXI on Icarus, against the golden model."""
    _need("icarus")
    prog, x, golden, kw = _pq_case(v, Kp, trial)
    run = run_engine(prog.to_bytes(), PQ_CFG, x, simulator="icarus")
    assert run.load_status == 0, regmap.status_message(run.load_status)
    assert run.statuses == [0], [regmap.status_message(s) for s in run.statuses]
    assert np.array_equal(run.outputs, golden), kw
    # the PQ op's measured cycles beside the model with the RTL depths (printed; held to 5 % on lenet below)
    i = next(j for j, op in enumerate(prog.ops) if op.opcode == PQ)
    model = image_cycles(prog, PQ_CFG, RTL_DEPTH).ops[i].cycles
    print(f"random pq v{v} K{Kp}: measured {run.op_cycles[:, i].mean():.0f} cycles (RTL simulation), "
          f"model {model}")


def test_planted_argmin_bug_is_caught() -> None:
    """Test of the test: an argmin whose right operand wins ties (<=) changes the outputs of a layer with
    planted ties (duplicate prototypes, zero padding against mirrored ones), and the clean build does not."""
    _need("icarus")
    prog, x, golden, kw = _pq_case(3, 5, 0)
    bad = run_engine(prog.to_bytes(), PQ_CFG, x, simulator="icarus", bugs={"pq_unit": "argmin_le"})
    assert bad.load_status == 0 and bad.statuses == [0]
    assert not np.array_equal(bad.outputs, golden), "the planted argmin bug went unnoticed"


# A PQ op whose LUT does not fit on chip (streamed rows per pixel) runs too: tests/rtl/test_pq_streamed_lut.py.


@pytest.mark.slow
@pytest.mark.parametrize("driver,n", [pytest.param("harness", 120, id="harness"),
                                      pytest.param("cocotb", 15, id="cocotb", marks=pytest.mark.cocotb_verilator)])
def test_lenet_pq_bit_exact_through_axi(driver: str, n: int) -> None:
    """lenet-digits pq (its engine: the lookup unit), the first 120 test images in two run calls under
    Verilator through the host's harness (all 360 on the cocotb bench in `make cosim` / bench/rtl_engine.py;
    15 here under marker cocotb_verilator), bit-exact; cycles per image within 5 % of the model with RTL_DEPTH,
    and per op where the cocotb bench saw the core's op timestamps."""
    _need("verilator")
    case = engine_case("lenet-digits", "pq")
    assert any(op.opcode == PQ for op in case.program.ops)
    first = n // 3
    run_fn = run_engine_harness if driver == "harness" else run_engine
    run = run_fn(case.image, case.engine, case.inputs[:n], batches=[first, n - first])
    assert run.load_status == 0, regmap.status_message(run.load_status)
    assert all(s == 0 for s in run.statuses), [regmap.status_message(s) for s in run.statuses]
    bad = np.flatnonzero(~(run.outputs == case.golden[:n]).all(axis=1))
    assert bad.size == 0, f"{bad.size}/{n} images differ from the golden model (first {bad[:5]})"
    model = image_cycles(case.program, case.engine, RTL_DEPTH)
    measured = sum(run.real_cycles) / n
    print(f"rtl engine: lenet-digits pq bit-exact {n}/{n}, measured {measured:.1f} cycles/image, "
          f"model {model.total} (error {100 * (model.total - measured) / measured:+.2f} %)")
    per_image = np.array(run.real_cycles, float) / np.array([k for _, k in run.calls])
    assert np.all(np.abs(model.total - per_image) <= 0.05 * per_image), (model.total, per_image)
    if run.op_cycles.shape[1]:      # the cocotb bench's per-op timestamps (the harness sees the ports only)
        per_op = run.op_cycles.mean(axis=0)
        for i, oc in enumerate(model.ops):
            print(f"  op {i} {oc.kind}: measured {per_op[i]:.1f}, model {oc.cycles}")
            assert abs(oc.cycles - per_op[i]) <= 0.05 * per_op[i], (i, oc.name, oc.cycles, per_op[i])


# ---------------------------------------------------------------------------
# the other run-time DDR reads: conv weights streamed one oc tile at a time (CONV_STREAMED)
# ---------------------------------------------------------------------------
STREAMED = [(512, 128), (1024, 256)]


@pytest.mark.parametrize("vmem,dmem", STREAMED, ids=[f"vmem{v}-dmem{d}" for v, d in STREAMED])
def test_streamed_conv_weights_bit_exact(vmem: int, dmem: int) -> None:
    """lenet-digits mvq on its engine shrunk until its weights do not fit (every conv streamed: dense C=1 in
    bytes, dense C=64 in words with a partial last tile (OC 10), codebook with masks and NOT 8; or the last
    two streamed beside resident ones): the loader's run-time load_weights per oc tile and the conv unit's
    ot_base, bit-exact through AXI on Icarus against the golden model."""
    _need("icarus")
    case = engine_case("lenet-digits", "mvq")
    engine = dataclasses.replace(case.engine, vmem_entries=vmem, dmem_words=dmem)
    prog = prepare(Program.from_bytes(case.image), engine)
    streamed = [i for i, op in enumerate(prog.ops) if op.opcode == CONV and not op.resident]
    assert streamed and unsupported(prog) is None
    n = 2       # two run calls of one image: the weights stream again in the second call
    run = run_engine(prog.to_bytes(), engine, case.inputs[:n], batches=[1, 1], simulator="icarus")
    assert run.load_status == 0, regmap.status_message(run.load_status)
    assert run.statuses == [0, 0], [regmap.status_message(s) for s in run.statuses]
    assert np.array_equal(run.outputs, case.golden[:n])
    model = image_cycles(prog, engine, RTL_DEPTH)
    per_op = run.op_cycles.mean(axis=0)
    print(f"streamed conv (vmem {vmem}, dmem {dmem}, ops {streamed}): measured "
          f"{sum(run.real_cycles) / n:.0f} cycles/image (RTL simulation), model {model.total}; per streamed op "
          + ", ".join(f"{i}: {per_op[i]:.0f} vs {model.ops[i].cycles}" for i in streamed))
