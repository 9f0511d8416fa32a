"""flow/rtl/onchip.py against the C-sim engine's own memories (not against a reading of the templates).

For every case: the program is placed for the engine, loaded on a fresh private instance of the C-sim
library (flow.hls.csim.CsimEngine.onchip_memories, which copies memories.h's statics out through the
bridge's vqhls_csim_dump), and every memory must equal onchip_state's (np.array_equal). Programs: the
default model (lenet-digits MVQ, conftest.default_model_build), random VQ and dense programs with a
residual, an average pool and a max pool (flow.rtl.random_ops), tests/flow/small_cases.tiny_program, and
the same programs on an engine too small to hold every op's weights (streamed ops: not on chip after the
load). Engines: EngineConfig() (the PYNQ-Z2 build) and flow.rtl.random_ops.SMALL_CFG. The activation
layout (pack / unpack) is checked on the C-sim's activation buffers after a run: the first op's input
buffer holds pack_activation(x), the last op's output buffer unpacks to the golden outputs.
The C-sim builds are the cached ones of CsimEngine (engine_io.gxx_build).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from flow.compile.engine import EngineConfig
from flow.compile.program import CODEBOOK, DENSE, Program
from flow.compile.program_exec import run_program
from flow.compile.validate import prepare
from flow.rtl import engine_cases, onchip
from flow.rtl.random_ops import SMALL_CFG, act_range, random_program

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flow"))
from small_cases import tiny_program  # noqa: E402

pytestmark = pytest.mark.csim

# the small geometry with little weight memory: some ops of the random programs stream their weights
STREAM_CFG = dataclasses.replace(SMALL_CFG, vmem_entries=256, dmem_words=256)
ENGINES = {"default": EngineConfig(), "small": SMALL_CFG, "stream": STREAM_CFG}
_CSIM: dict[str, object] = {}


def csim_engine(name: str):
    from flow.hls.csim import CsimEngine   # deferred: jinja2 + g++ (the cached build)

    if name not in _CSIM:
        _CSIM[name] = CsimEngine(ENGINES[name])
    return _CSIM[name]


def case_program(case: str, engine: EngineConfig, build: Path) -> Program:
    if case == "lenet-mvq":
        return Program.from_bytes((build / "program.bin").read_bytes())
    if case == "vq":
        return random_program(CODEBOOK)
    if case == "dense":
        return random_program(DENSE)
    return tiny_program(engine)


CASES = [("lenet-mvq", "default"), ("lenet-mvq", "small"), ("vq", "default"), ("vq", "small"), ("vq", "stream"),
         ("dense", "default"), ("dense", "small"), ("dense", "stream"), ("tiny", "default"), ("tiny", "small")]


@pytest.fixture(scope="module")
def build(default_model_build) -> Path:
    return default_model_build


def rand_input(program: Program, rng: np.random.Generator) -> np.ndarray:
    """One input image [1, H, W, C] of the first op's signedness."""
    op = program.ops[0]
    lo, hi = act_range(op.in_unsigned)
    return rng.integers(lo, hi + 1, (1, op.H, op.W, op.C)).astype(np.uint8 if op.in_unsigned else np.int8)


@pytest.mark.parametrize("case,eng", CASES, ids=[f"{c}-{e}" for c, e in CASES])
def test_onchip_state_equals_csim(case: str, eng: str, build: Path) -> None:
    engine = ENGINES[eng]
    placed = prepare(case_program(case, engine, build), engine)
    image = placed.to_bytes()
    streamed = onchip.resident(image, engine)
    if eng == "stream":
        assert streamed, "the stream engine was meant to leave some op's weights off chip"
    else:
        assert streamed == [], f"{case} on {eng}: ops {streamed} not resident"
    x = rand_input(placed, np.random.default_rng(3))
    got = csim_engine(eng).onchip_memories(image)   # after the load call only (a run streams weights in)
    ref = onchip.onchip_state(image, engine)
    for name, want in ref.memories().items():
        assert want.shape == got[name].shape and want.dtype == got[name].dtype, name
        bad = np.argwhere(want != got[name])
        assert bad.size == 0, f"{case} on {eng}: {name} differs at {len(bad)} entries, first {tuple(bad[0])}: " \
                              f"reference {want[tuple(bad[0])]}, C-sim {got[name][tuple(bad[0])]}"
    print(f"{case} on {eng}: " + ", ".join(f"{k} {int(np.count_nonzero(v))}" for k, v in ref.memories().items())
          + f" non-zero; streamed ops {streamed}")

    # the parameter-port writes rebuild exactly that state
    rebuilt = onchip.apply_writes(engine, onchip.writes(ref))
    for name, want in ref.memories().items():
        assert np.array_equal(getattr(rebuilt, name), want), name

    # activation layout on the C-sim's buffers after the run: input packed, output unpacked == golden
    act = csim_engine(eng).onchip_memories(image, inputs=x.view(np.uint8).reshape(1, -1))["act"]
    first, last = placed.ops[0], placed.ops[-1]
    if all(op.out_buf != first.in_buf for op in placed.ops):   # the input buffer is not overwritten
        for (bank, addr), word in onchip.pack_activation(x[0], engine, first.WB, first.CW).items():
            assert int.from_bytes(act[first.in_buf, bank, addr].tobytes(), "little") == word, (bank, addr)
    y = onchip.unpack_activation(lambda b, a: int.from_bytes(act[last.out_buf, b, a].tobytes(), "little"), engine,
                                 last.OH, last.OW, last.OC, last.OWB, last.OCW,
                                 np.uint8 if last.out_unsigned else np.int8)
    want = run_program(placed, x)[0]
    assert np.array_equal(y.astype(np.int64), np.asarray(want).astype(np.int64))


def test_pack_unpack_roundtrip() -> None:
    """pack then unpack is the identity; words past C are zero lanes; every word is in its bank's range."""
    rng = np.random.default_rng(1)
    for engine in (EngineConfig(), SMALL_CFG):
        for H, W, C in ((3, 5, 3), (4, 9, 8), (2, 17, 13)):
            B, L = engine.act_banks, engine.lanes
            WB, CW = -(-W // B), -(-C // L)
            x = rng.integers(-128, 128, (H, W, C)).astype(np.int8)
            words = onchip.pack_activation(x, engine, WB, CW)
            assert len(words) == H * W * CW
            assert all(0 <= a < H * WB * CW for _, a in words)
            assert np.array_equal(onchip.unpack_activation(words, engine, H, W, C, WB, CW, np.int8), x)


def test_streamed_weights_absent(build: Path) -> None:
    """A streamed op's weights are not in the memories after the load; every resident op's are."""
    engine = STREAM_CFG
    placed = prepare(random_program(CODEBOOK), engine)
    image = placed.to_bytes()
    st = onchip.onchip_state(image, engine)
    for i in onchip.resident(image, engine):
        op = placed.ops[i]
        assert not op.resident
    used = np.count_nonzero(st.vmask)
    want = sum(op.OC * op.KH * op.KW * op.NVEC for op in placed.ops if op.resident and op.wfmt == CODEBOOK
               and op.opcode == 1)
    assert used == want   # masks of n = m VQ codewords are never zero



@pytest.mark.slow
@pytest.mark.parametrize("model,method", list(engine_cases.CASES), ids=[f"{a}-{b}" for a, b in engine_cases.CASES])
def test_engine_case(model: str, method: str) -> None:
    """The whole-model cases of flow.rtl.engine_cases (built and cached on first use): onchip_state equals the
    C-sim's memories after the load, and the C-sim's outputs equal the case's golden bytes (run_program) on
    its first 4 images."""
    from flow.hls.csim import CsimEngine   # deferred: jinja2 and the g++ build, only when the test runs

    case = engine_cases.engine_case(model, method)
    eng = CsimEngine(case.engine)
    got = eng.onchip_memories(case.image)
    for name, want in onchip.onchip_state(case.image, case.engine).memories().items():
        assert np.array_equal(want, got[name]), f"{case.name}: {name}"
    eng.load_image(case.image)
    assert np.array_equal(eng.run_bytes(case.inputs[:4]), case.golden[:4])
    print(engine_cases.residency_table([case]))
