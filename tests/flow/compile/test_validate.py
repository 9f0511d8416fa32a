"""flow.compile.validate: every rule the engine's validate_op had (and the run-time value checks), on the host.

For every rule a valid placed Program passes and a Program broken in exactly that way raises ProgramError
with the engine's ERR_* code and the failing op index.
"""
from __future__ import annotations

import dataclasses
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from flow.compile.engine import EngineConfig
from flow.compile.layout import PlacementError, place
from flow.compile.program import (
    CODEBOOK, DENSE, DERIVED_FIELDS, DESC_FIELDS, DESC_WORDS, HEADER_WORDS, Op, Program, replace, seal,
)
from flow.compile.validate import ERR_CRC, ProgramError, image_bytes, validate, validate_image
from engine_io import regmap

SMALL = EngineConfig(pq=True, rows=4, cols=4, lanes=4, n=1, m=4, k_max=64, d_max=8, act_buf_bytes=4096, num_bufs=3,
                     max_channels=64, max_kernel=5, max_ops=8, dsp_rows=0, acc_groups=8, vmem_entries=4096,
                     cb_rows=512, dmem_words=1024, ch_rows=64, pq_v_max=9, pq_k_max=16, pq_subspaces_max=64,
                     lut_bytes=8192)
DEFAULT = EngineConfig(pq=True)   # the PYNQ-Z2 build with the lookup unit (PQ models get it: flow.boards.sizing)
INT32_MAX = (1 << 31) - 1


# the random Program builders of the HLS tests (tests/flow/hls/hls_testlib.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hls"))
from hls_testlib import (conv_op, lenet_program, pool_op, pq_op, program,  # noqa: E402
                         resnet20_program)


def placed(prog: Program, cfg: EngineConfig = SMALL) -> Program:
    out = place(prog, cfg)
    validate(out, cfg)          # the valid baseline passes
    return out


def try_place(prog: Program, cfg: EngineConfig = SMALL) -> Program:
    """The program placed where the placement accepts it (a broken op may not place; the per-op rules
    are checked before the derived fields, so the expected error is the same either way)."""
    try:
        return place(prog, cfg)
    except (PlacementError, ValueError, ArithmeticError):   # place() itself may trip over an inconsistent op
        return prog


def expect(prog: Program, code: int, op: int | None, cfg: EngineConfig = SMALL, field: str | None = None,
           match: str | None = None) -> ProgramError:
    with pytest.raises(ProgramError) as info:
        validate(prog, cfg)
    e = info.value
    assert (e.code, e.op) == (code, op), (regmap.STATUS_NAMES.get(e.code), str(e))
    check_message(e, field, match)
    return e


def check_message(e: ProgramError, field: str | None = None, match: str | None = None) -> None:
    msg = str(e)
    assert "\n" not in msg and msg.count(": ") >= 2, msg          # where: what (field=value, limit x): fix
    if e.op is not None:
        assert msg.startswith(f"op {e.op}"), msg
    if field is not None:
        assert e.field == field and f"({field}=" in msg, msg
    if match is not None:
        assert match in msg, msg


def rng_(seed: int = 0):
    return np.random.default_rng(seed)


OK_KW = dict(H=4, W=4, C=8, OC=8, K=3, pad=1)
NXT = dict(in_buf=1, out_buf=0)


def with_bad(bad: Op, seed: int = 0) -> Program:
    """A valid first op and ``bad`` as op 1, placed when that is possible."""
    return try_place(program(conv_op(rng_(seed), **OK_KW, name="ok"), bad))


# ---------------------------------------------------------------------------
# valid programs
# ---------------------------------------------------------------------------
def test_valid_programs_pass():
    rng = rng_(1)
    placed(lenet_program(rng), DEFAULT)
    placed(resnet20_program(rng), DEFAULT)
    placed(lenet_program(rng), SMALL)
    placed(lenet_program(rng, wfmt=DENSE), SMALL)
    # pq (resident LUT, streamed LUT, residual), avgpool, codebook with d = 2 < lanes and d = 8 > lanes
    placed(program(pq_op(rng, H=4, W=4, C=4, OC=6, K=3, v=9, Kp=16)))
    big = placed(program(pq_op(rng, H=6, W=6, C=8, OC=40, K=3, v=9, Kp=16, lut_bits=16)))
    assert big.ops[0].lut_resident == 0
    placed(program(conv_op(rng, **OK_KW, out_buf=2, name="res"),
                   pq_op(rng, **OK_KW, v=8, Kp=4, res_buf=2, name="pq")))
    placed(program(conv_op(rng, **OK_KW), pool_op(rng, "avg", H=4, W=4, C=8, K=4, stride=1, **NXT)))
    placed(program(conv_op(rng, **OK_KW, wfmt=CODEBOOK, d=2, n=2, m=2, k=8)))
    placed(program(conv_op(rng, H=4, W=4, C=16, OC=8, wfmt=CODEBOOK, d=8, n=1, m=4, k=64)))
    # a residual read from the op's own input buffer is refused: the drain's residual read and the
    # array's read would need two read ports on one buffer's banks
    expect(program(conv_op(rng, **OK_KW, res_buf=0)), regmap.ERR_BUFFER, 0, field="res_buf")
    # a pooling op is not bound by max_kernel (a global pool's window is the whole map)
    placed(program(conv_op(rng, H=8, W=8, C=8, OC=8), pool_op(rng, "avg", H=8, W=8, C=8, K=8, stride=1, **NXT)))


def test_error_object():
    prog = placed(program(conv_op(rng_(), **OK_KW)))
    prog.ops[0].arrays["shift"][3] = 0
    e = expect(prog, regmap.ERR_PARAM, 0, field="shift[3]", match="(shift[3]=0, limit 1..31)")
    assert isinstance(e, ValueError)
    assert regmap.decode_status(e.status) == (regmap.ERR_PARAM, 0)
    assert str(e).startswith("op 0 'conv': requantization shift of channel 3")
    again = pickle.loads(pickle.dumps(e))
    assert (again.code, again.op, again.field, str(again)) == (e.code, e.op, e.field, str(e))
    prog.ops[0].arrays["shift"][3] = 4
    validate(prog, SMALL)
    assert image_bytes(prog) == len(prog.to_bytes())


# ---------------------------------------------------------------------------
# ports of tests/flow/hls/test_engine_errors.py
# ---------------------------------------------------------------------------
def test_program_limits_are_reported_with_the_op():
    rng = rng_(2)
    cases = {
        regmap.ERR_LIMIT: [
            conv_op(rng, H=1, W=1, C=80, OC=8, K=1, pad=0, **NXT),                         # C > max_channels
            conv_op(rng, H=1, W=1, C=8, OC=80, K=1, pad=0, **NXT),                         # OC > max_channels
            conv_op(rng, H=8, W=8, C=8, OC=8, K=7, pad=3, **NXT),                          # K > max_kernel
            conv_op(rng, H=4, W=4, C=16, OC=8, wfmt=CODEBOOK, d=16, k=16, **NXT),          # d > d_max
            conv_op(rng, H=4, W=4, C=8, OC=8, wfmt=CODEBOOK, d=8, k=128, **NXT),           # k > k_max
            conv_op(rng, H=9, W=9, C=8, OC=8, stride=3, **NXT),                            # stride > max_stride
            conv_op(rng, H=4, W=4, C=12, OC=8, wfmt=CODEBOOK, d=6, n=2, m=2, k=8, **NXT),  # d vs lanes = 4
            replace(conv_op(rng, **OK_KW, wfmt=CODEBOOK, d=8, k=16, **NXT), C=12),         # d does not divide C
            replace(conv_op(rng, **OK_KW, wfmt=CODEBOOK, d=8, k=16, **NXT), d=0),
            replace(conv_op(rng, **OK_KW, wfmt=CODEBOOK, d=8, k=16, **NXT), k=0),
        ],
        regmap.ERR_BUF_SIZE: [
            conv_op(rng, H=16, W=16, C=8, OC=32, **NXT),                                   # 8192-byte output
            conv_op(rng, H=40, W=40, C=4, OC=4, K=1, pad=0, **NXT),                        # 6400-byte input
            conv_op(rng, H=40, W=9, C=5, OC=4, K=1, pad=0, **NXT),                         # 1800 bytes, 160 words/bank
        ],
        regmap.ERR_BUFFER: [
            conv_op(rng, **OK_KW, in_buf=1, out_buf=1),
            conv_op(rng, **OK_KW, in_buf=1, out_buf=3),
            conv_op(rng, **OK_KW, in_buf=-1, out_buf=0),
            conv_op(rng, **OK_KW, in_buf=3, out_buf=0),
            pool_op(rng, "max", H=4, W=4, C=8, K=2, stride=2, in_buf=1, out_buf=1),
            replace(pool_op(rng, "max", H=4, W=4, C=8, K=2, stride=2, **NXT), res_buf=2),  # residual on a pool
            replace(pool_op(rng, "avg", H=4, W=4, C=8, K=2, stride=2, **NXT), res_buf=2),
            conv_op(rng, **OK_KW, **NXT, res_buf=0),                                       # residual = output
            conv_op(rng, **OK_KW, **NXT, res_buf=3),
            replace(conv_op(rng, **OK_KW, **NXT), res_buf=-2),
        ],
        regmap.ERR_SHAPE: [
            replace(conv_op(rng, **OK_KW, **NXT), OH=5),
            replace(conv_op(rng, **OK_KW, **NXT), OW=3),
            replace(conv_op(rng, **OK_KW, **NXT), H=0),
            replace(conv_op(rng, **OK_KW, **NXT), stride=0),
            replace(conv_op(rng, **OK_KW, **NXT), pad=-1),
            replace(conv_op(rng, **OK_KW, **NXT), W=5000),                                 # > act_buf_bytes
            replace(conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=0, **NXT), H=2, OH=0),      # kernel > padded input
            replace(pool_op(rng, "max", H=4, W=4, C=8, K=2, stride=2, **NXT), pad=1, OH=3, OW=3),
            replace(pool_op(rng, "max", H=4, W=4, C=8, K=2, stride=2, **NXT), OC=4),
        ],
        regmap.ERR_OPCODE: [
            replace(conv_op(rng, **OK_KW, **NXT), opcode=9),
            replace(conv_op(rng, **OK_KW, **NXT), opcode=0),
            replace(conv_op(rng, **OK_KW, **NXT), wfmt=5),
        ],
    }
    for code, bad_ops in cases.items():
        for j, bad in enumerate(bad_ops):
            prog = with_bad(bad)
            with pytest.raises(ProgramError) as info:
                validate(prog, SMALL)
            assert (info.value.code, info.value.op) == (code, 1), (code, j, str(info.value))
            check_message(info.value)
    # the banked layout, not just the bytes: 1800 bytes fit act_buf_bytes, 160 words do not fit a 128-word bank
    e = expect(with_bad(cases[regmap.ERR_BUF_SIZE][2]), regmap.ERR_BUF_SIZE, 1, field="words per bank")
    assert "limit bank_words=128" in str(e) and "act_buf_bytes" in str(e)
    expect(with_bad(cases[regmap.ERR_LIMIT][0]), regmap.ERR_LIMIT, 1, field="C", match="EngineConfig.max_channels")
    expect(with_bad(cases[regmap.ERR_LIMIT][4]), regmap.ERR_LIMIT, 1, field="k", match="raise EngineConfig.k_max")
    expect(with_bad(cases[regmap.ERR_LIMIT][5]), regmap.ERR_LIMIT, 1, field="stride", match="max_stride=2")
    # a PQ op on an engine without a lookup unit
    nopq = dataclasses.replace(SMALL, pq=False)
    prog = program(conv_op(rng, **OK_KW), pq_op(rng, **OK_KW, v=8, Kp=4, **NXT))
    expect(prog, regmap.ERR_OPCODE, 1, cfg=nopq, field="opcode", match="EngineConfig.pq=False")
    placed(program(prog.ops[0]), nopq)


def test_invalid_parameters_are_reported():
    rng = rng_(3)
    base = program(conv_op(rng, H=4, W=4, C=8, OC=4, K=3, pad=1))
    prog = placed(base)
    prog.ops[0].arrays["shift"][2] = 0                                 # shift outside 1..31
    expect(prog, regmap.ERR_PARAM, 0, field="shift[2]")
    prog.ops[0].arrays["shift"][2] = 32
    expect(prog, regmap.ERR_PARAM, 0, field="shift[2]", match="(shift[2]=32, limit 1..31)")

    cb = placed(program(conv_op(rng, H=4, W=4, C=8, OC=4, K=3, pad=1, wfmt=CODEBOOK, d=8, n=1, m=4, k=16)))
    prog = program(replace(cb.ops[0], k=8, arrays={**cb.ops[0].arrays, "codebook": cb.ops[0].arrays["codebook"][:8]}))
    prog.ops[0].arrays["idx"] = prog.ops[0].arrays["idx"].copy()
    prog.ops[0].arrays["idx"][:] = 3
    prog.ops[0].arrays["idx"].reshape(-1)[5] = 12                      # indices now reach past the codebook
    prog = place(prog, SMALL)
    expect(prog, regmap.ERR_PARAM, 0, field="idx[5]", match="(idx[5]=12, limit k-1=7)")
    mask = cb.ops[0].arrays["mask"].copy()
    mask.reshape(-1)[7] |= 1 << 9                                      # a bit above d = 8
    prog = program(replace(cb.ops[0], arrays={**cb.ops[0].arrays, "mask": mask}))
    expect(prog, regmap.ERR_PARAM, 0, field="mask[7]")
    expect(program(replace(cb.ops[0], n=5, m=4)), regmap.ERR_PARAM, 0, field="n")

    for key in ("mult", "shift", "weight"):                            # missing array
        prog = placed(base)
        del prog.ops[0].arrays[key]
        expect(prog, regmap.ERR_OFFSET, 0, field=f"off_{key}", match="missing")
    prog = placed(base)
    prog.ops[0].arrays["shift"] = prog.ops[0].arrays["shift"][:3]      # short array
    expect(prog, regmap.ERR_OFFSET, 0, field="len(shift)")
    prog = placed(base)
    prog.ops[0].arrays["bias"] = np.zeros(5, np.int32)                 # optional, but then of OC values
    expect(prog, regmap.ERR_OFFSET, 0, field="len(bias)")
    prog = placed(base)
    del prog.ops[0].arrays["bias"]                                     # absent bias: fine
    validate(prog, SMALL)
    prog.ops[0].arrays["bias"] = np.array([0, 0, 1 << 40, 0])          # would wrap in to_bytes
    expect(prog, regmap.ERR_PARAM, 0, field="bias[2]")
    for key in ("idx", "mask", "codebook"):
        prog = program(replace(cb.ops[0], arrays={k: v for k, v in cb.ops[0].arrays.items() if k != key}))
        expect(prog, regmap.ERR_OFFSET, 0, field=f"off_{key}")
    prog = program(conv_op(rng, **OK_KW, out_buf=2), conv_op(rng, **OK_KW, res_buf=2))
    prog = placed(prog)
    del prog.ops[1].arrays["res_mult"]                                 # residual without its multiplier
    expect(prog, regmap.ERR_OFFSET, 1, field="off_res_mult")

    for kw, field in ((dict(hi=300), "hi"), (dict(lo=-129), "lo"), (dict(lo=10, hi=5), "lo"),
                      (dict(out_unsigned=1, lo=-1, hi=255), "lo"), (dict(out_unsigned=0, lo=0, hi=255), "hi")):
        prog = placed(base)
        prog.ops[0] = replace(prog.ops[0], **kw)                        # clamp outside the output format
        expect(prog, regmap.ERR_PARAM, 0, field=field)
    # a maxpool has no requantization: its lo / hi are not used
    pool = pool_op(rng, "max", H=4, W=4, C=8, K=2, stride=2, **NXT)
    placed(program(conv_op(rng, **OK_KW), replace(pool, lo=500, hi=-500)))


def test_avgpool_rules():
    rng = rng_(4)
    prog = placed(program(conv_op(rng, **OK_KW), pool_op(rng, "avg", H=4, W=4, C=8, K=2, stride=2, **NXT)))
    for key in ("mult", "shift"):
        bad = placed(prog)
        del bad.ops[1].arrays[key]
        expect(bad, regmap.ERR_OFFSET, 1, field=f"off_{key}")
    bad = placed(prog)
    bad.ops[1].arrays["shift"][0] = 0
    expect(bad, regmap.ERR_PARAM, 1, field="shift[0]")
    bad = placed(prog)
    bad.ops[1] = replace(bad.ops[1], out_unsigned=1, lo=-5)
    expect(bad, regmap.ERR_PARAM, 1, field="lo")


# ---------------------------------------------------------------------------
# PQ (ports of tests/flow/hls/test_csim_pq.py::test_pq_engine_limits and more)
# ---------------------------------------------------------------------------
def test_pq_engine_limits():
    rng = rng_(5)
    for kw, field in ((dict(v=9, Kp=32), "K"), (dict(v=12, Kp=4), "v")):
        prog = try_place(program(pq_op(rng, H=3, W=3, C=4, OC=3, K=3, pad=1, **kw)))
        expect(prog, regmap.ERR_LIMIT, 0, field=field)
    prog = try_place(program(pq_op(rng, H=3, W=3, C=64, OC=3, K=3, pad=1, v=8, Kp=4)))     # 72 subspaces > 64
    expect(prog, regmap.ERR_LIMIT, 0, field="KH*KW*C/v", match="pq_subspaces_max=64")
    ok = placed(program(pq_op(rng, H=3, W=3, C=2, OC=3, K=3, pad=1, v=9, Kp=4)))
    for kw, code, field in ((dict(lut_bits=12), regmap.ERR_PARAM, "lut_bits"), (dict(v=0), regmap.ERR_LIMIT, "v"),
                            (dict(K=0), regmap.ERR_LIMIT, "K"), (dict(v=4), regmap.ERR_LIMIT, "v"),
                            (dict(KH=7, KW=7, pad=3), regmap.ERR_LIMIT, "KH")):
        expect(program(replace(ok.ops[0], **kw)), code, 0, field=field)
    for key in ("lut", "proto"):
        prog = placed(ok)
        del prog.ops[0].arrays[key]
        expect(prog, regmap.ERR_OFFSET, 0, field=f"off_{key}")
    prog = placed(ok)
    prog.ops[0].arrays["proto"] = prog.ops[0].arrays["proto"][:, :2]
    expect(prog, regmap.ERR_OFFSET, 0, field="len(proto)")
    prog = placed(ok)
    prog.ops[0].arrays["lut"].reshape(-1)[4] = 128                   # outside lut_bits = 8
    expect(prog, regmap.ERR_PARAM, 0, field="lut[4]", match="limit -128..127")
    prog.ops[0].lut_bits = 16
    validate(prog, SMALL)
    prog = placed(ok)
    prog.ops[0].arrays["lut"].reshape(-1)[0] = -128                  # the full 8-bit range
    validate(prog, SMALL)
    prog.ops[0].arrays["shift"][1] = 0
    expect(prog, regmap.ERR_PARAM, 0, field="shift[1]")
    prog = placed(ok)
    prog.ops[0] = replace(prog.ops[0], res_buf=2)
    expect(prog, regmap.ERR_OFFSET, 0, field="off_res_mult")


# ---------------------------------------------------------------------------
# placement and derived fields
# ---------------------------------------------------------------------------
def test_placement_capacity():
    rng = rng_(6)
    two = program(conv_op(rng, **OK_KW), conv_op(rng, **OK_KW, **NXT))           # 2 channel rows each
    cfg = dataclasses.replace(SMALL, ch_rows=3)
    expect(two, regmap.ERR_LIMIT, None, cfg=cfg, field="channel rows", match="raise EngineConfig.ch_rows")
    # an op whose weights do not fit streams them one output-channel tile (cols = 4 channels) at a time:
    # only a tile that does not fit is an error
    cfg = dataclasses.replace(SMALL, dmem_words=60)                              # a tile: 4*9*2 = 72 words
    expect(two, regmap.ERR_LIMIT, 0, cfg=cfg, field="dense weight words", match="dmem_words=60")
    cb = program(conv_op(rng, **OK_KW), conv_op(rng, **OK_KW, wfmt=CODEBOOK, d=8, n=1, m=4, k=32, **NXT))
    cfg = dataclasses.replace(SMALL, vmem_entries=30)                            # a tile: 4*9*1 = 36 entries
    expect(cb, regmap.ERR_LIMIT, 1, cfg=cfg, field="codeword index / mask entries")
    cfg = dataclasses.replace(SMALL, cb_rows=16)
    expect(cb, regmap.ERR_LIMIT, 1, cfg=cfg, field="codebook rows")
    # parameters that do not all fit stream from a shared region: valid, with resident = 0 somewhere
    cfg = dataclasses.replace(SMALL, dmem_words=200)
    streamed = placed(two, cfg)
    assert [op.resident for op in streamed.ops] == [0, 0]


def test_derived_fields_must_match_the_placement():
    rng = rng_(7)
    prog = placed(lenet_program(rng))
    for i, f in ((0, "CW"), (2, "NSTEP"), (2, "passes"), (2, "v_base"), (4, "cb_base"), (1, "OWB"), (4, "ch_base")):
        bad = Program(ops=[replace(op) for op in prog.ops], meta=prog.meta)
        setattr(bad.ops[i], f, getattr(bad.ops[i], f) + 1)
        e = expect(bad, regmap.ERR_PARAM, i, field=f, match="flow.compile.layout.place(program, engine)")
        assert f"descriptor field {f} = {getattr(bad.ops[i], f)}" in str(e)
    pq = placed(program(pq_op(rng, H=6, W=6, C=8, OC=40, K=3, v=9, Kp=16, lut_bits=16)))
    for f in ("nsub", "lut_resident", "NOT", "GR"):
        bad = program(replace(pq.ops[0], **{f: getattr(pq.ops[0], f) ^ 1}))
        expect(bad, regmap.ERR_PARAM, 0, field=f)
    # not placed at all
    e = expect(lenet_program(rng_(7)), regmap.ERR_PARAM, 0, match="not placed")
    assert e.field in DERIVED_FIELDS
    # placed for another engine
    other = place(lenet_program(rng_(7)), DEFAULT)
    validate(other, DEFAULT)
    e = expect(other, regmap.ERR_PARAM, 0, match=f"placed for engine {DEFAULT.hash()}, this engine is {SMALL.hash()}")
    # a changed mask changes the array passes of a sparse build: the old placement no longer holds
    cb = placed(program(conv_op(rng, **OK_KW, wfmt=CODEBOOK, d=8, n=1, m=4, k=16)))
    assert cb.ops[0].passes == 1
    cb.ops[0].arrays["mask"][:] = 0xFF
    expect(cb, regmap.ERR_PARAM, 0, field="passes")


def test_program_header_rules():
    rng = rng_(8)
    expect(Program(ops=[]), regmap.ERR_HEADER, None, field="n_ops")
    ops = [conv_op(rng, H=2, W=2, C=4, OC=4, K=1, pad=0, in_buf=i % 2, out_buf=1 - i % 2) for i in range(9)]
    expect(program(*ops), regmap.ERR_HEADER, None, field="n_ops", match="1..8 (max_ops)")
    placed(program(*ops[:8]))
    prog = placed(lenet_program(rng))
    cfg = dataclasses.replace(SMALL, param_bytes=image_bytes(prog) - 4)
    expect(prog, regmap.ERR_HEADER, None, cfg=cfg, field="image bytes")
    validate(prog, dataclasses.replace(SMALL, param_bytes=image_bytes(prog)))


# ---------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------
def _with_crc(b: bytearray) -> bytes:
    return seal(b)


def _set_word(b: bytearray, word: int, value: int) -> None:
    b[4 * word: 4 * word + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")


def _desc_word(op: int, field: str) -> int:
    return HEADER_WORDS + op * DESC_WORDS + DESC_FIELDS.index(field)


def _image_error(image: bytes, cfg: EngineConfig = SMALL) -> ProgramError:
    with pytest.raises(ProgramError) as info:
        validate_image(image, cfg)
    check_message(info.value)
    return info.value


def test_validate_image_round_trip():
    rng = rng_(9)
    for prog, cfg in ((placed(lenet_program(rng)), SMALL), (placed(resnet20_program(rng), DEFAULT), DEFAULT),
                      (placed(program(pq_op(rng, **OK_KW, v=8, Kp=4))), SMALL)):
        image = prog.to_bytes()
        got = validate_image(image, cfg)
        assert got.to_bytes() == image and got.in_shape == (prog.ops[0].H, prog.ops[0].W, prog.ops[0].C)
    # an image of an unplaced program is refused like the Program
    e = _image_error(lenet_program(rng_(9)).to_bytes())
    assert (e.code, e.op) == (regmap.ERR_PARAM, 0)


def test_corrupted_images():
    rng = rng_(10)
    prog = placed(lenet_program(rng))
    image = bytearray(prog.to_bytes())
    head = (HEADER_WORDS + len(prog.ops) * DESC_WORDS) * 4
    for word, value, code in ((0, 0x12345678, regmap.ERR_MAGIC), (1, 7, regmap.ERR_VERSION),
                              (2, 10_000, regmap.ERR_HEADER), (2, 0, regmap.ERR_HEADER), (2, 9, regmap.ERR_HEADER),
                              (3, 40, regmap.ERR_HEADER), (4, len(image) + 4, regmap.ERR_HEADER),
                              (4, len(image) - 2, regmap.ERR_HEADER), (4, 64, regmap.ERR_HEADER),
                              (5, 3, regmap.ERR_IO), (6, 11, regmap.ERR_IO), (7, 0xDEADBEEF, ERR_CRC)):
        bad = bytearray(image)
        _set_word(bad, word, value)
        e = _image_error(bytes(bad))
        assert (e.code, e.op) == (code, None), (word, str(e))
    assert _image_error(bytes(image[:-4])).code == regmap.ERR_HEADER                       # truncated
    assert "truncated" in str(_image_error(bytes(image[:-4])))
    assert _image_error(bytes(image) + b"\0" * 4).code == regmap.ERR_HEADER                # trailing bytes
    assert _image_error(bytes(image[:20])).code == regmap.ERR_HEADER                       # shorter than the header
    assert _image_error(b"").code == regmap.ERR_HEADER
    assert _image_error(b"XXXX" + bytes(image[4:])).code == regmap.ERR_MAGIC
    assert _image_error(bytes(image), dataclasses.replace(SMALL, param_bytes=len(image) - 4)).code == regmap.ERR_HEADER
    bad = bytearray(image)
    bad[head + 5] ^= 0x10                                                                  # a flipped parameter bit
    e = _image_error(bytes(bad))
    assert (e.code, e.op) == (ERR_CRC, None) and "checksum" in str(e)
    # descriptor corruptions with a consistent checksum: the op's own rule
    for op, field, value, code in ((2, "off_mult", len(image) - 4, regmap.ERR_OFFSET),
                                   (2, "off_idx", head - 4, regmap.ERR_OFFSET),
                                   (0, "off_weight", head + 2, regmap.ERR_OFFSET),
                                   (2, "off_mult", 0, regmap.ERR_OFFSET),
                                   (1, "H", -1, regmap.ERR_SHAPE), (3, "OH", 5, regmap.ERR_SHAPE),
                                   (4, "k", -3, regmap.ERR_LIMIT), (4, "k", 1000, regmap.ERR_LIMIT),
                                   (2, "opcode", 7, regmap.ERR_OPCODE), (1, "out_buf", 1, regmap.ERR_BUFFER),
                                   (2, "hi", 256, regmap.ERR_PARAM), (2, "NSTEP", 1, regmap.ERR_PARAM),
                                   (4, "ch_base", 0, regmap.ERR_PARAM)):
        bad = bytearray(image)
        _set_word(bad, _desc_word(op, field), value)
        e = _image_error(_with_crc(bad))
        assert (e.code, e.op) == (code, op), (field, value, str(e))
    # a parameter value the hardware used to check while running, behind a valid checksum
    bad = bytearray(image)
    off_shift = int(np.frombuffer(bytes(image), "<i4")[_desc_word(0, "off_shift")])
    _set_word(bad, off_shift // 4 + 2, 0)
    e = _image_error(_with_crc(bad))
    assert (e.code, e.op, e.field) == (regmap.ERR_PARAM, 0, "shift[2]")
    assert prog.ops[0].arrays["shift"][2] != 0


def test_image_rules_keep_the_engine_order():
    """The descriptor rules of an op come before its arrays are read, op by op, as validate_op ran."""
    prog = placed(lenet_program(rng_(11)))
    image = bytearray(prog.to_bytes())
    _set_word(image, _desc_word(0, "OH"), 7)                      # op 0: bad shape
    _set_word(image, _desc_word(2, "off_mult"), len(image) + 64)  # op 2: array outside the image
    e = _image_error(_with_crc(image))
    assert (e.code, e.op, e.field) == (regmap.ERR_SHAPE, 0, "OH")
    image = bytearray(prog.to_bytes())
    _set_word(image, _desc_word(2, "d"), 16)                      # d > d_max, and idx / mask / codebook sizes change
    e = _image_error(_with_crc(image))
    assert (e.code, e.op, e.field) == (regmap.ERR_LIMIT, 2, "d")


def test_validate_does_not_modify_the_program():
    prog = placed(resnet20_program(rng_(12)), DEFAULT)
    before = prog.to_bytes()
    validate(prog, DEFAULT)
    assert prog.to_bytes() == before
