"""Fuzzing the Program image loader and the engine (C-simulation bridge) with hypothesis.

A small real Program (dense conv, codebook conv, PQ conv with a residual, max / average pool, a
codebook Linear; every op kind and array kind the format has), placed for the default engine, is
mutated: bit flips; descriptor fields, header words and parameter values changed with the CRC
recomputed (so only the format's other rules can catch them); truncation and extension. For every
mutant:

* ``Program.from_bytes`` raises ProgramFormatError (one line) or returns a Program;
* the engine's load path (``CsimEngine.load_image``: the host check flow.compile.validate, then the load
  call) refuses it with a one-line ProgramError / EngineError, or accepts it, and then the engine's
  outputs equal, byte for byte, the golden ``run_program`` of the Program ``from_bytes`` decoded;
* whatever the golden ``run_program`` refuses, the load path refuses (with the same message when the
  rule is one that holds for every engine);
* the hardware's own checks alone (``load_image(validate=False)``) never crash or hang the engine.

``make test`` runs a bounded number of examples (FAST_EXAMPLES, well under a minute); the ``fuzz``
marker runs the long campaign (VQHLS_FUZZ_EXAMPLES examples per property, default 5000):
``pytest -m fuzz tests/flow/test_fuzz_program.py``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "hls"))
from hls_testlib import DEFAULT_CFG, conv_op, pool_op, pq_op, program  # noqa: E402

from flow.compile.layout import place  # noqa: E402
from flow.compile.program import (  # noqa: E402
    CODEBOOK, DESC_FIELDS, DESC_WORDS, HEADER_WORDS, Program, ProgramFormatError, seal,
)
from flow.compile.validate import ProgramError, check_program  # noqa: E402
from flow.compile.program_exec import ProgramExecError, run_program  # noqa: E402
from engine_io.program_image import CRC_START  # noqa: E402

FAST_EXAMPLES = 200
LONG_EXAMPLES = int(os.environ.get("VQHLS_FUZZ_EXAMPLES", "5000"))
BATCH = 2


def fuzz_program() -> Program:
    """6x6x4 uint8 -> dense conv -> codebook conv -> PQ conv (+ residual) -> maxpool -> global avgpool
    -> codebook Linear -> 1x1x10 int8; buffers 0, 1, 2 of the default engine."""
    rng = np.random.default_rng(12)
    ops = [
        conv_op(rng, H=6, W=6, C=4, OC=8, K=3, pad=1, in_unsigned=1, out_unsigned=1, shift_range=(8, 20),
                in_buf=0, out_buf=1, name="c0"),
        conv_op(rng, H=6, W=6, C=8, OC=8, K=3, pad=1, wfmt=CODEBOOK, d=8, n=2, m=4, k=16, in_unsigned=1,
                out_unsigned=0, shift_range=(8, 20), in_buf=1, out_buf=2, name="c1"),
        pq_op(rng, H=6, W=6, C=8, OC=8, K=3, pad=1, v=9, Kp=8, in_unsigned=0, out_unsigned=0,
              in_buf=2, out_buf=0, res_buf=1, res_unsigned=1, shift_range=(8, 20), name="pq2"),
        pool_op(rng, "max", H=6, W=6, C=8, K=2, stride=2, in_unsigned=0, in_buf=0, out_buf=2, name="max3"),
        pool_op(rng, "avg", H=3, W=3, C=8, K=3, stride=1, in_unsigned=0, in_buf=2, out_buf=1, name="avg4"),
        conv_op(rng, H=1, W=1, C=8, OC=10, K=1, pad=0, wfmt=CODEBOOK, d=4, n=2, m=4, k=8, in_unsigned=0,
                out_unsigned=0, shift_range=(8, 20), in_buf=1, out_buf=0, name="fc5"),
    ]
    prog = program(*ops)
    prog.in_scale, prog.out_scale = 1 / 255, 0.0625
    return place(prog, DEFAULT_CFG)


PROGRAM = fuzz_program()
IMAGE = PROGRAM.to_bytes()
HEAD = (HEADER_WORDS + len(PROGRAM.ops) * DESC_WORDS) * 4
_X = np.random.default_rng(3).integers(0, 256, size=(BATCH, 6, 6, 4)).astype(np.uint8)


# --------------------------------------------------------------------------- mutations
_INT32 = st.integers(-(1 << 31), (1 << 31) - 1)
_NEAR = st.integers(-3, 3)
_SPECIAL = st.sampled_from([0, 1, -1, 2, 3, 4, 7, 8, 9, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 511, 512,
                            4095, 65535, 65536, HEAD, len(IMAGE), (1 << 31) - 1, -(1 << 31)])


def _word(b: bytearray, pos: int, value: int) -> None:
    b[pos:pos + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")


def _get(b: bytes, pos: int) -> int:
    return int.from_bytes(b[pos:pos + 4], "little", signed=True)


@st.composite
def descriptor_edit(draw):
    """A descriptor field of one op set to a nearby, special, another op's or any int32 value."""
    i = draw(st.integers(0, len(PROGRAM.ops) - 1))
    f = draw(st.sampled_from(DESC_FIELDS))
    pos = 4 * (HEADER_WORDS + i * DESC_WORDS + DESC_FIELDS.index(f))
    old = _get(IMAGE, pos)
    other = getattr(PROGRAM.ops[draw(st.integers(0, len(PROGRAM.ops) - 1))], f, 0) if not f.startswith("off_") \
        else _get(IMAGE, 4 * (HEADER_WORDS + draw(st.integers(0, len(PROGRAM.ops) - 1)) * DESC_WORDS
                             + DESC_FIELDS.index(f)))
    value = draw(st.one_of(_NEAR.map(lambda d: old + d), _SPECIAL, st.just(other), _INT32))
    return ("desc", pos, value)


@st.composite
def header_edit(draw):
    w = draw(st.sampled_from(range(HEADER_WORDS)))
    old = _get(IMAGE, 4 * w)
    value = draw(st.one_of(_NEAR.map(lambda d: old + d), _SPECIAL, _INT32))
    return ("header", 4 * w, value)


@st.composite
def param_edit(draw):
    """A byte or a word of the parameter arrays (weights, indices, masks, codebooks, channel parameters,
    prototypes, LUTs) changed."""
    pos = draw(st.integers(HEAD, len(IMAGE) - 1))
    if draw(st.booleans()):
        return ("byte", pos, draw(st.integers(0, 255)))
    pos -= pos % 4
    old = _get(IMAGE, pos)
    return ("word", pos, draw(st.one_of(_NEAR.map(lambda d: old + d), _SPECIAL, _INT32)))


@st.composite
def raw_edit(draw):
    """A bit flip anywhere (the CRC must catch it), a truncation or an extension."""
    kind = draw(st.sampled_from(["flip", "cut", "extend"]))
    if kind == "flip":
        return ("flip", draw(st.integers(0, len(IMAGE) - 1)), 1 << draw(st.integers(0, 7)))
    if kind == "cut":
        return ("cut", draw(st.integers(0, len(IMAGE) - 1)), 0)
    return ("extend", 0, draw(st.integers(1, 64)))


MUTATION = st.one_of(descriptor_edit(), header_edit(), param_edit(), raw_edit())


@st.composite
def mutant(draw):
    """(edits, reseal): 1-3 edits; reseal: recompute the CRC after them (mostly, so that only the
    format's other rules can catch the edits; never after a bit flip, which the CRC must catch)."""
    edits = draw(st.lists(MUTATION, min_size=1, max_size=3))
    reseal = draw(st.integers(0, 9)) > 0 and not any(e[0] == "flip" for e in edits)
    fix_size = draw(st.booleans())
    return tuple(edits), reseal, fix_size


def apply(case) -> bytes:
    """The image a ``mutant`` case describes (the edits are printed when a property fails)."""
    edits, reseal, fix_size = case
    b = bytearray(IMAGE)
    for kind, pos, value in sorted(edits, key=lambda e: e[0] in ("cut", "extend")):   # resizing last
        if kind in ("desc", "header", "word"):
            _word(b, pos, value)
        elif kind == "byte":
            b[pos] = value
        elif kind == "flip":
            b[pos] ^= value
        elif kind == "cut":
            del b[pos:]
        elif kind == "extend":
            b += bytes(value)
            if fix_size and len(b) >= 20:      # a consistent size word too
                _word(b, 16, len(b))
    if reseal and len(b) >= CRC_START:
        b = bytearray(seal(b))
    return bytes(b)


# --------------------------------------------------------------------------- the properties
def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg, repr(msg)
    return msg


def decode(image: bytes) -> Program | None:
    try:
        return Program.from_bytes(image)
    except ProgramFormatError as e:
        _one_line(e)
        return None


def golden(prog: Program | None):
    """(outputs, None) or (None, ProgramExecError) of run_program on the fixed inputs."""
    if prog is None:
        return None, None
    x = _X
    first = prog.ops[0]
    if (first.H, first.W, first.C) != _X.shape[1:] or not first.in_unsigned:
        return None, None    # the mutant reads another input: its outputs are not compared
    try:
        return run_program(prog, x), None
    except ProgramExecError as e:
        _one_line(e)
        return None, e


def check_mutant(engine, image: bytes) -> str:
    """The properties for one mutant; returns how it ended (for the statistics)."""
    from flow.hls.csim import EngineError

    prog = decode(image)
    want, refused = golden(prog)
    if refused is not None:   # the golden executor's refusal is the engine-independent rule's
        with pytest.raises(ProgramError) as info:
            check_program(prog)
        assert str(info.value) == str(refused)
    try:
        engine.load_image(image)
    except (ProgramError, EngineError) as e:
        _one_line(e)
        # what the golden model refuses, the host check refuses (before anything reaches the engine)
        assert refused is None or isinstance(e, ProgramError), (str(e), str(refused))
        return "refused"
    # accepted by the host check and the engine: the image is a valid Program, run exactly as the golden
    assert prog is not None, "the engine accepted an image Program.from_bytes refuses"
    assert refused is None, f"the engine accepted a Program the golden model refuses: {refused}"
    got = engine.run_bytes(_X.reshape(BATCH, -1))
    if want is None:      # another input shape / signedness: run it on inputs of its own
        first = prog.ops[0]
        lo, hi = (0, 255) if first.in_unsigned else (-128, 127)
        x = np.random.default_rng(0).integers(lo, hi + 1, size=(BATCH, first.H, first.W, first.C))
        want = run_program(prog, x)
        got = engine.run_bytes((x & 0xFF).astype(np.uint8).reshape(BATCH, -1))
    assert np.array_equal(got, (want.astype(np.int64) & 0xFF).astype(np.uint8).reshape(BATCH, -1)), \
        "engine output differs from the golden model of the decoded Program"
    return "exact"


def check_hardware_only(engine, image: bytes) -> None:
    """The load call's own checks (no host check): a STATUS error or a load that runs, never a crash."""
    from flow.hls.csim import EngineError

    try:
        engine.load_image(image, validate=False)
    except EngineError as e:
        _one_line(e)
        return
    in_bytes = int.from_bytes(image[20:24], "little")
    x = np.random.default_rng(1).integers(0, 256, size=(1, in_bytes)).astype(np.uint8)
    try:
        engine.run_bytes(x)
    except EngineError as e:
        _one_line(e)


@pytest.fixture(scope="module")
def engine():
    from flow.hls.csim import CsimEngine

    return CsimEngine(DEFAULT_CFG)


def _settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=n == FAST_EXAMPLES, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- tests
@pytest.mark.csim
def test_fuzz_program_is_exact_on_the_engine(engine):
    """The unmutated image: from_bytes round trip (scales and signedness included), and the engine
    runs it bit-exact."""
    prog = Program.from_bytes(IMAGE)
    assert prog.to_bytes() == IMAGE
    assert (prog.in_scale, prog.out_scale, prog.in_unsigned, prog.out_unsigned) == (1 / 255, 0.0625, True, False)
    assert check_mutant(engine, IMAGE) == "exact"


@pytest.mark.csim
@pytest.mark.parametrize("op, field, value", [(0, "OC", 7), (1, "in_buf", 0), (4, "in_buf", 0), (1, "out_buf", 0)])
def test_cross_op_inconsistencies_are_refused_like_the_golden(engine, op, field, value):
    """Descriptor edits behind a valid CRC that only the dataflow between ops reveals: the golden model
    and the engine's load path refuse them with the same one-line rule (ERR_BUFFER, the op)."""
    from engine_io import regmap

    b = bytearray(IMAGE)
    _word(b, 4 * (HEADER_WORDS + op * DESC_WORDS + DESC_FIELDS.index(field)), value)
    image = seal(b)
    prog = Program.from_bytes(image)
    with pytest.raises(ProgramExecError) as g:
        run_program(prog, _X)
    with pytest.raises(ProgramError) as h:
        engine.load_image(image)
    assert str(h.value) == str(g.value) and (h.value.code, h.value.op) == (g.value.code, g.value.op)
    assert h.value.code == regmap.ERR_BUFFER and "\n" not in str(h.value)


@pytest.mark.csim
@given(mutant())
@_settings(FAST_EXAMPLES)
def test_fuzz_engine_load_path(engine, case):
    event(check_mutant(engine, apply(case)))


@pytest.mark.csim
@given(mutant())
@_settings(FAST_EXAMPLES)
def test_fuzz_hardware_checks_never_crash(engine, case):
    check_hardware_only(engine, apply(case))


@pytest.mark.csim
@pytest.mark.fuzz
@given(mutant())
@_settings(LONG_EXAMPLES)
def test_fuzz_engine_load_path_long(engine, case):
    event(check_mutant(engine, apply(case)))


@pytest.mark.csim
@pytest.mark.fuzz
@given(mutant())
@_settings(LONG_EXAMPLES)
def test_fuzz_hardware_checks_never_crash_long(engine, case):
    check_hardware_only(engine, apply(case))
