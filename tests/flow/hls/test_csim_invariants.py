"""The C-simulation checks of the facts the engine's pragmas rely on (memories.h ``csim_violation``).

The tile loop declares two dependences to Vitis: the accumulator read-modify-write recurs no sooner than
ACC_DISTANCE iterations later (``DEPENDENCE ... distance=2 true``), and no word the drain writes into
``out_buf`` reaches a later read (``DEPENDENCE variable=act_mem ... false``). Vitis trusts a pragma; it does
not check it. C-simulation checks both on every iteration. Each test re-inserts into a rendered project the
bug that would break one of them and sees C-simulation refuse to pass, then sees the unmodified project pass
the same program bit-exactly (the golden model is the reference).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from flow.compile.program import DENSE
from flow.hls.csim import CsimEngine, InvariantError
from flow.hls.project import write_project
from flow.compile.program_exec import run_program
from hls_testlib import DEFAULT_CFG, conv_op, program, rand_inputs

pytestmark = pytest.mark.csim


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _patch(project, name: str, old: str, new: str) -> None:
    path = project.firmware_dir / name
    text = path.read_text()
    assert old in text, f"{name} no longer contains {old!r}: update the re-inserted bug"
    path.write_text(text.replace(old, new))


def _one_group_dense_conv(rng):
    """A dense conv whose only pixel tile has ONE pixel group (OH = 1, OW <= rows) on the 2:4 array: every
    step takes two passes over that group, the case ACC_DISTANCE exists for."""
    return program(conv_op(rng, H=3, W=DEFAULT_CFG.rows + 2, C=8, OC=8, K=3, stride=1, pad=0, wfmt=DENSE))


def test_accumulator_distance_is_checked(tmp_path):
    rng = _rng("acc-distance")
    prog = _one_group_dense_conv(rng)
    x = rand_inputs(rng, prog, 2)
    good = CsimEngine(project=write_project(DEFAULT_CFG, tmp_path / "good"))
    np.testing.assert_array_equal(good.predict(prog, x), run_program(prog, x))

    bad = write_project(DEFAULT_CFG, tmp_path / "bad")
    # the bug: a pass sweeps only the tile's groups, so with one group the same accumulator is
    # read-modified-written on consecutive iterations (the pragma's distance 2 would be a lie)
    _patch(bad, "op_plan.h", "const int ngs_last = ng_last > ACC_DISTANCE ? ng_last : ACC_DISTANCE;",
           "const int ngs_last = ng_last;")
    _patch(bad, "systolic_array.h", "const E::cnt_t ngs = ng > (unsigned)ACC_DISTANCE ? ng : E::cnt_t(ACC_DISTANCE);",
           "const E::cnt_t ngs = ng;")
    with pytest.raises(InvariantError, match="invariant"):
        CsimEngine(project=bad).predict(prog, x)


def test_reading_the_written_buffer_is_checked(tmp_path):
    rng = _rng("out-buf")
    prog = program(conv_op(rng, H=5, W=5, C=8, OC=8, K=3, stride=1, pad=1, wfmt=DENSE, in_buf=0, out_buf=1))
    x = rand_inputs(rng, prog, 1)
    image = _retarget_output(prog, DEFAULT_CFG)

    bad = write_project(DEFAULT_CFG, tmp_path / "bad")
    # the bug: the engine's own check of out_buf != in_buf removed, and an image whose conv writes the buffer it
    # reads sent without the host check (the case the act_mem DEPENDENCE pragma declares impossible)
    _patch(bad, "top.cpp", "op.out_buf == op.in_buf) return regmap::ERR_BUFFER;", "false) return regmap::ERR_BUFFER;")
    eng = CsimEngine(project=bad)
    eng.load_image(image, validate=False)
    with pytest.raises(InvariantError, match="invariant"):
        eng.run_bytes(x.reshape(1, -1).view(np.uint8))


def _retarget_output(prog, engine_config) -> bytes:
    """The placed image of ``prog`` with the conv's out_buf set to its in_buf (descriptor word 2), resealed."""
    from flow.compile.program import DESC_FIELDS, DESC_WORDS, HEADER_WORDS
    from flow.compile.validate import prepare
    from engine_io.program_image import seal

    blob = bytearray(prepare(prog, engine_config).to_bytes())
    word = 4 * (HEADER_WORDS + DESC_FIELDS.index("out_buf"))
    blob[word:word + 4] = (0).to_bytes(4, "little")
    assert DESC_WORDS >= len(DESC_FIELDS)
    return bytes(seal(bytes(blob)))
