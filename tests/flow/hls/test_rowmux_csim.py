"""The row-mux array (EngineConfig.row_mux) and the shared-mask weight format (wfmt CODEBOOK_SHARED) in
C-simulation, bit-exact (np.array_equal) against the golden model flow.compile.program_exec.run_program.

docs/engine.md "The row-mux array" defines both. The golden model computes the convolution from the
descriptor's arrays alone; the engine selects lanes once per array row with the union of the oc tile's
masks and broadcasts them to mux-less PEs."""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest

from engine_io import regmap
from flow.compile.engine import EngineConfig
from flow.compile.layout import masks_shared, passes_of, place, share_masks
from flow.compile.program import CODEBOOK, CODEBOOK_SHARED, CONV, DENSE, Program
from flow.compile.program_exec import run_program
from flow.compile.validate import ProgramError, prepare, validate
from hls_testlib import SMALL_CFG, check_exact, conv_op, lenet_program, program, rand_inputs

pytestmark = pytest.mark.csim

RM_CFG = EngineConfig(row_mux=True)                              # the PYNQ-Z2 geometry, 2:4, 8 columns
SMALL_RM_CFG = dataclasses.replace(SMALL_CFG, pq=False, row_mux=True)   # 4x4, 1:4 array


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.fixture(scope="module")
def rm_engine():
    from flow.hls.csim import CsimEngine
    return CsimEngine(RM_CFG)


@pytest.fixture(scope="module")
def small_rm_engine():
    from flow.hls.csim import CsimEngine
    return CsimEngine(SMALL_RM_CFG)


def shared_nm_masks(rng: np.random.Generator, OC: int, K: int, C: int, d: int, n: int, m: int,
                    group: int) -> np.ndarray:
    """uint16 masks [OC][K][K][C/d]: per aligned group of ``group`` output channels and tap one pattern keeping
    exactly n of every m consecutive input channels (d may be smaller than m: a pattern then spans vectors)."""
    G = -(-OC // group)
    keep = np.zeros((G, K, K, C), bool)
    for g0 in range(0, C, m):
        w = min(m, C - g0)
        order = np.argsort(rng.random((G, K, K, w)), axis=-1)[..., :min(n, w)]
        np.put_along_axis(keep[..., g0:g0 + w], order, True, axis=-1)
    bits = (keep.reshape(G, K, K, C // d, d).astype(np.int64) << np.arange(d)).sum(-1).astype(np.uint16)
    return bits[np.arange(OC) // group]


def shared_conv(rng, *, n: int, m: int, d: int, group: int, **kw):
    """A random codebook conv whose masks are shared by every aligned group of ``group`` output channels."""
    # conv_op draws per-vector masks (needs m | d); they are replaced, so a d < m draw uses d:d
    op = conv_op(rng, wfmt=CODEBOOK, n=n if d % m == 0 else d, m=m if d % m == 0 else d, d=d, **kw)
    op = dataclasses.replace(op, n=n, m=m, arrays=dict(op.arrays))
    op.arrays["mask"] = shared_nm_masks(rng, op.OC, op.KH, op.C, d, n, m, group)
    return op


def with_residual(rng, main_kw: dict, res_unsigned: int):
    """A dense conv writing the residual into buffer 2, then the main conv reading it."""
    geo = {k: main_kw[k] for k in ("H", "W", "C", "OC", "K", "stride", "pad")}
    return conv_op(rng, **geo, in_unsigned=main_kw.get("in_unsigned", 0), out_unsigned=res_unsigned, in_buf=0,
                   out_buf=2, shift_range=(8, 24), name="residual_src")


CASES = [(n, m, d) for n, m in ((2, 4), (1, 4)) for d in (2, 4, 8)]


@pytest.mark.parametrize("n,m,d", CASES, ids=[f"{n}:{m}-d{d}" for n, m, d in CASES])
def test_shared_mask_conv(rm_engine, n, m, d):
    """Random shared-mask convs (strides 1/2, padding, residual, signedness) run in the shared format in one
    pass per step and equal the golden model."""
    rng = _rng("shared", n, m, d)
    for trial in range(2):
        K = int(rng.choice([1, 3]))
        kw = dict(H=int(rng.integers(K, 9)), W=int(rng.integers(K, 9)), C=8 * int(rng.integers(1, 3)),
                  OC=int(rng.integers(1, 20)), K=K, stride=int(rng.integers(1, 3)), pad=int(rng.integers(0, 2)),
                  in_unsigned=int(rng.integers(0, 2)), out_unsigned=int(rng.integers(0, 2)))
        res_uns = int(rng.integers(0, 2))
        residual = bool(trial % 2)
        main = shared_conv(rng, n=n, m=m, d=d, k=16, group=RM_CFG.cols, **kw,
                           **(dict(in_buf=0, out_buf=1, res_buf=2, res_unsigned=res_uns) if residual else {}))
        ops = [with_residual(rng, kw, res_uns), main] if residual else [main]
        prog = share_masks(program(*ops), RM_CFG)
        sh = prog.ops[-1]
        assert sh.wfmt == CODEBOOK_SHARED and sh.mg == RM_CFG.cols
        assert sh.arrays["mask"].shape == (-(-sh.OC // RM_CFG.cols), K, K, sh.C // d)
        assert place(prog, RM_CFG).ops[-1].passes == 1     # n:m shared: one pass of n per group of m lanes
        check_exact(rm_engine, prog, rand_inputs(rng, prog, 2))


def test_shared_mask_conv_small_1of4(small_rm_engine):
    """The 4x4 1:4 row-mux array (4 columns, 1 slot per PE): shared 1:4 masks, d 4 and 8, two oc tiles."""
    rng = _rng("small")
    for d in (4, 8):
        op = shared_conv(rng, n=1, m=4, d=d, k=16, group=SMALL_RM_CFG.cols, H=5, W=6, C=8, OC=7, K=3, stride=2, pad=1)
        prog = share_masks(program(op), SMALL_RM_CFG)
        assert prog.ops[0].wfmt == CODEBOOK_SHARED
        check_exact(small_rm_engine, prog, rand_inputs(rng, prog, 2))


def test_per_channel_masks_and_dense_run_on_the_union(rm_engine):
    """Layers that do not share masks keep the per-channel format on a row-mux engine and run on the union of
    their tile's masks (more passes, same numbers); dense layers run all lanes."""
    rng = _rng("union")
    prog = program(conv_op(rng, H=6, W=7, C=16, OC=13, K=3, pad=1, wfmt=CODEBOOK, n=2, m=4, d=8, k=16))
    assert not masks_shared(prog.ops[0], RM_CFG.cols)
    assert share_masks(prog, RM_CFG).ops[0].wfmt == CODEBOOK
    assert passes_of(prog.ops[0], EngineConfig()) == 1 and passes_of(prog.ops[0], RM_CFG) == 2
    check_exact(rm_engine, prog, rand_inputs(rng, prog, 2))
    dense = program(conv_op(rng, H=5, W=5, C=12, OC=9, K=3, pad=1, stride=2, wfmt=DENSE))
    check_exact(rm_engine, dense, rand_inputs(rng, dense, 2))


def _mvq_lenet_shared(group: int) -> Program:
    """An MVQ-compressed lenet-digits (flow.compile.untrained: the real compress -> quantize -> lower flow,
    untrained weights) whose masks are made shared: each aligned group of ``group`` output channels takes its
    first channel's mask (the codeword indices are kept: bit-exactness does not need them re-derived)."""
    from flow.compile.untrained import untrained_program

    prog = untrained_program("lenet-digits", "mvq", EngineConfig())
    for op in prog.ops:
        if op.opcode == CONV and op.wfmt == CODEBOOK:
            mk = op.arrays["mask"]
            op.arrays["mask"] = mk[(np.arange(op.OC) // group) * group].copy()
    return prog


def test_whole_model_mvq_lenet_shared(rm_engine):
    """A whole MVQ lenet with shared masks lowered for the row-mux engine: its codebook layers take the
    shared format, one pass per step, and the outputs equal the golden model."""
    prog = share_masks(_mvq_lenet_shared(RM_CFG.cols), RM_CFG)
    cb = [op for op in prog.ops if op.opcode == CONV and op.wfmt != DENSE]
    assert cb and all(op.wfmt == CODEBOOK_SHARED for op in cb)
    placed = place(prog, RM_CFG)
    assert all(op.passes == 1 for op in placed.ops if op.wfmt == CODEBOOK_SHARED)
    rng = _rng("lenet")
    check_exact(rm_engine, prog, rand_inputs(rng, prog, 4))
    # and the random lenet-shaped program of the other C-sim tests, masks made shared
    rl = lenet_program(rng, k=16)
    for op in rl.ops:
        if op.opcode == CONV and op.wfmt == CODEBOOK:
            op.arrays["mask"] = op.arrays["mask"][(np.arange(op.OC) // 8) * 8].copy()
    rl = share_masks(rl, RM_CFG)
    assert sum(op.wfmt == CODEBOOK_SHARED for op in rl.ops) == 2
    check_exact(rm_engine, rl, rand_inputs(rng, rl, 3))


def test_lower_picks_the_shared_format():
    """flow.compile.lower gives a row-mux engine the shared format for the layers whose masks are shared,
    and the per-channel format otherwise; a build without row_mux never gets it."""
    from flow.compile.untrained import untrained_program

    rm = untrained_program("lenet-digits", "mvq", RM_CFG)   # untrained MVQ masks: not shared
    assert all(op.wfmt != CODEBOOK_SHARED and op.rowmux == 1 for op in rm.ops if op.opcode == CONV)
    plain = share_masks(_mvq_lenet_shared(8), EngineConfig())
    assert all(op.wfmt != CODEBOOK_SHARED for op in plain.ops)


def test_mismatched_images_are_refused(rm_engine):
    """An image placed for the per-PE-mux array is refused by the row-mux engine's load call (ERR_PARAM:
    its passes follow the other rule), and a shared-format image by the host check of a plain engine."""
    from flow.hls.csim import EngineError

    rng = _rng("mismatch")
    prog = program(conv_op(rng, H=5, W=5, C=8, OC=8, K=3, pad=1, wfmt=CODEBOOK, n=2, m=4, d=8, k=16))
    plain_image = prepare(prog, EngineConfig()).to_bytes()
    with pytest.raises(EngineError) as e:
        rm_engine.load_image(plain_image, validate=False)
    assert e.value.status == regmap.ERR_PARAM
    with pytest.raises(ProgramError) as e:
        rm_engine.load_image(plain_image)     # the host check says the same first
    assert e.value.code == regmap.ERR_PARAM
    op = shared_conv(rng, n=2, m=4, d=8, k=16, group=8, H=5, W=5, C=8, OC=8, K=3, pad=1)
    shared = share_masks(program(op), RM_CFG)
    with pytest.raises(ProgramError) as e:
        validate(place(shared, EngineConfig()), EngineConfig())
    assert e.value.code == regmap.ERR_OPCODE


def test_modelled_cycles_of_the_shared_format(rm_engine):
    """The CYCLES register (C-simulation) equals flow/boards/cycle_model.py for the shared format's
    load (one mask row per oc tile) and run calls, resident and streamed."""
    from flow.boards import cycle_model

    rng = _rng("cycles")
    op = shared_conv(rng, n=2, m=4, d=8, k=16, group=8, H=6, W=6, C=16, OC=20, K=3, pad=1)
    prog = share_masks(program(op), RM_CFG)
    placed = place(prog, RM_CFG)
    rm_engine.load(prog)
    assert rm_engine.modelled_cycles == cycle_model.load_cycles(placed, RM_CFG)
    rm_engine.predict(prog, rand_inputs(rng, prog, 2))
    assert rm_engine.modelled_cycles == cycle_model.run_cycles(placed, RM_CFG, 2)


def test_streamed_shared_masks(small_rm_engine):
    """A shared-format op too large for the on-chip memories streams one oc tile (its idx and its one mask
    row) at a time, bit-exact."""
    rng = _rng("stream")
    op = shared_conv(rng, n=1, m=4, d=8, k=16, group=4, H=4, W=4, C=64, OC=60, K=3, pad=1)
    prog = share_masks(program(op), SMALL_RM_CFG)
    assert place(prog, SMALL_RM_CFG).ops[0].resident == 0     # 60*9*8 = 4320 idx entries > vmem_entries 4096
    check_exact(small_rm_engine, prog, rand_inputs(rng, prog, 2))


def _patched_engine(tmp_path, old: str, new: str, name: str = "codebook_decoder.h"):
    from flow.hls.csim import CsimEngine
    from flow.hls.project import write_project

    proj = write_project(RM_CFG, tmp_path / "bad")
    path = proj.firmware_dir / name
    text = path.read_text()
    assert old in text, f"{name} no longer contains {old!r}: update the planted bug"
    path.write_text(text.replace(old, new))
    return CsimEngine(project=proj)


def test_planted_bugs_are_caught(tmp_path):
    """Tests of the tests: the decoder reads oc tile 0's mask row for every tile (the mask address does not
    advance with the tile), and the union does not zero a weight its column does not keep; both differ from
    the golden model on the cases above."""
    rng = _rng("planted")
    op = shared_conv(rng, n=2, m=4, d=8, k=16, group=8, H=5, W=6, C=16, OC=20, K=3, pad=1)
    prog = share_masks(program(op), RM_CFG)
    x = rand_inputs(rng, prog, 2)
    want = run_program(prog, x)
    bad = _patched_engine(tmp_path / "a", "dc.mot_addr += pl.tapv;", "")
    assert not np.array_equal(bad.predict(prog, x), want)
    per_ch = program(conv_op(rng, H=5, W=6, C=16, OC=13, K=3, pad=1, wfmt=CODEBOOK, n=2, m=4, d=8, k=16))
    x2 = rand_inputs(rng, per_ch, 2)
    bad2 = _patched_engine(tmp_path / "b", "st_keep[c][lane] ? st_w[c][lane] : E::weight_t(0)", "st_w[c][lane]")
    assert not np.array_equal(bad2.predict(per_ch, x2), run_program(per_ch, x2))


def test_row_mux_build_has_no_lint_finding(tmp_path):
    """flow/hls/lint.py (dependence, ports, multipliers, widths, m_axi) on the row-mux build: no finding; and the
    PE has no mux there (the per-PE select array is not generated)."""
    from flow.hls import lint as lint_mod
    from flow.hls.project import write_project

    proj = write_project(RM_CFG, tmp_path / "rm")
    found = lint_mod.lint_project(proj.path)
    assert found == [], "\n".join(map(str, found))
    text = (proj.firmware_dir / "systolic_array.h").read_text() + (proj.firmware_dir / "codebook_decoder.h").read_text()
    assert "ROW_COMPACT:" in text and "pe_sel" not in text


def test_resource_model_counts_the_row_mux():
    """The row-mux array's muxes are counted per row (rows*slots of 9 bits), the per-PE form's per PE
    (rows*cols*slots), by hand from the geometry; a row_mux build's estimate uses the row-mux units and the
    three forms share multipliers (sparse) or double them (dense)."""
    from flow.boards import resource_model as rm

    e = EngineConfig()
    forms = rm.array_forms(e)
    assert forms["per-PE mux"]["array.mux"].ff.central == e.rows * e.cols * e.slots * 9
    assert forms["row mux"]["array.mux"].ff.central == e.rows * e.slots * 9
    assert forms["row mux"]["array.mux"].lut.central < forms["per-PE mux"]["array.mux"].lut.central
    assert forms["dense"]["array.mult_dsp"].dsp.central == 2 * forms["row mux"]["array.mult_dsp"].dsp.central
    assert "mem.vmask" not in forms["dense"]
    assert rm.vmask_shared_depth(e) == e.vmem_entries // e.cols
    units = {u.name: u for u in rm.engine_units(RM_CFG)}
    assert units["array.mux"].ff.central == e.rows * e.slots * 9


def test_compressed_shared_mask_lenet_end_to_end(rm_engine):
    """flow.compress MVQ with mask_group = cols (helper E's shared masks) -> quantize -> lower for the row-mux
    engine: every MVQ layer takes the shared format with one pass per step, and C-simulation equals the golden
    model (untrained weights: bit-exactness and the format do not depend on training)."""
    import torch

    from flow.compile.lower import lower
    from flow.compile.untrained import build_model
    from flow.compress import compress
    from flow.quant import quantize_model

    model, shape = build_model("lenet-digits")
    calib = torch.rand(8, *shape, generator=torch.Generator().manual_seed(1))
    model = compress(model, method="mvq", n=2, m=4, k=64, d=8, clip_k=True, iters=2, seed=0, example=calib[:1],
                     mask_group=RM_CFG.cols)
    prog = lower(quantize_model(model, calib), RM_CFG)
    shared = [op for op in prog.ops if op.opcode == CONV and op.wfmt == CODEBOOK_SHARED]
    assert len(shared) == 2 and all(op.passes == 1 and op.mg == RM_CFG.cols for op in shared)
    check_exact(rm_engine, prog, rand_inputs(_rng("e2e"), prog, 4))
