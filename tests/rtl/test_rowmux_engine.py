"""The row-mux array in the RTL engine (issue 22 item 3; EngineConfig.row_mux, the shared-mask weight format
wfmt CODEBOOK_SHARED of docs/engine.md): vqhls_conv_unit built with row_mux runs shared-mask convs, per-channel
-mask convs (the union rule: more passes) and dense convs bit-exact against the golden model
(flow.compile.program_exec.run_program, np.array_equal), in the cycles of its own schedule, and in the same
cycles as the per-PE-mux build on the same shared-mask op. A planted bug (every oc tile reads the first tile's
shared masks) is caught.

The whole engine (vqhls_engine_top through AXI, flow.rtl.engine_rtl.run_engine, Icarus) on a row-mux build: an
MVQ lenet whose masks are shared per column tile (lowered to the shared format) bit-exact against the golden
model, its MEASURED op cycles (RTL simulation) within 5 % of flow.boards.cycle_model with RTL_DEPTH; a streamed
shared op (shrunk vmem: one mask row per oc tile at run time) bit-exact; the loader's check_op for the shared
format (per-channel image on the row-mux build, shared image on the plain build, mg != cols, the mask array's
bound of NOT*KH*KW*NVEC entries) giving the C-sim engine's STATUS (flow.hls.csim, the HLS engine compiled with
g++); and a planted loader bug (shared masks checked and loaded with the per-channel count) caught.
"""
from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from engine_io import program_image, regmap
from flow.boards.cycle_model import image_cycles
from flow.compile.engine import EngineConfig
from flow.compile.layout import place, share_masks
from flow.compile.program import CODEBOOK, CODEBOOK_SHARED, CONV, DENSE, Program
from flow.compile.program_exec import run_program
from flow.compile.validate import prepare
from flow.hls import vectors
from flow.rtl import conv_unit_cases as cu
from flow.rtl import engine_rtl
from flow.rtl.engine_rtl import RTL_DEPTH, run_engine
from flow.rtl.random_ops import conv_op

pytestmark = [pytest.mark.cosim,
              pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")]

RM = cu.SMALL_24_RM
# name -> (conv_op keywords, share): 2 oc tiles (cols 4), a partial tile, d 4 / 8 / 2, stride 2, 1x1, unsigned
CASES = {
    "shared-d4-3x3-s1": (dict(H=5, W=5, C=8, OC=8, K=3, stride=1, pad=1, wfmt=CODEBOOK, d=4, n=2, m=4, k=16), True),
    "shared-d8-3x3-s2-oc7": (dict(H=7, W=6, C=16, OC=7, K=3, stride=2, pad=1, wfmt=CODEBOOK, d=8, n=2, m=4, k=32,
                                  in_unsigned=1, out_unsigned=1), True),
    "shared-d4-1x1-oc12": (dict(H=4, W=5, C=12, OC=12, K=1, stride=1, pad=0, wfmt=CODEBOOK, d=4, n=2, m=4, k=16),
                           True),
    "per-channel-masks-d4": (dict(H=4, W=5, C=8, OC=6, K=3, stride=1, pad=1, wfmt=CODEBOOK, d=4, n=2, m=4, k=16),
                             False),
    "dense-3x3": (dict(H=4, W=5, C=6, OC=5, K=3, stride=1, pad=1, wfmt=DENSE), False),
}


def _case(name: str, engine=RM, bug: str = "") -> cu.ConvUnitCase:
    kw, share = CASES[name]
    return cu.make_case(name, engine, seed=3, share=share, bug=bug, **kw)


@pytest.mark.parametrize("name", list(CASES))
def test_rowmux_conv_unit_bit_exact(name, tmp_path):
    c = _case(name)
    op = c.program.ops[c.op_index]
    _, share = CASES[name]
    if share:
        assert op.wfmt == CODEBOOK_SHARED and op.mg == RM.cols and op.passes == 1
    r = cu.run_case(c, tmp_path)
    print(f"{name}: wfmt {op.wfmt} passes {op.passes}: {r.cycles} cycles (RTL simulation), schedule "
          f"{r.schedule_cycles}")
    assert r.exact, r.detail
    assert r.cycles == r.schedule_cycles


def test_rowmux_cycles_equal_the_per_pe_build(tmp_path):
    """The same shared masks on the per-PE-mux build (wfmt CODEBOOK there: per channel rows, equal within
    groups): the same outputs in the same cycles."""
    rm = _case("shared-d4-3x3-s1")
    pe = _case("shared-d4-3x3-s1", engine=cu.SMALL_24)
    assert pe.program.ops[pe.op_index].wfmt == CODEBOOK
    a, b = cu.run_case(rm, tmp_path / "rm"), cu.run_case(pe, tmp_path / "pe")
    assert a.exact and b.exact, (a.detail, b.detail)
    print(f"row-mux {a.cycles} cycles, per-PE-mux {b.cycles} cycles (RTL simulation)")
    assert a.cycles == b.cycles


def test_planted_bug_first_tiles_mask_is_caught(tmp_path):
    """Test of the test: every oc tile compacting with the first tile's shared masks must fail."""
    c = _case("shared-d4-3x3-s1", bug="tile_mask")
    assert "PLANTED BUG" in cu.render_sources(RM, tmp_path / "src0", "tile_mask")[0].read_text()
    r = cu.run_case(c, tmp_path)
    assert r.cycles > 0, r.detail
    assert not r.exact, "a conv unit reading the first tile's masks for every tile passed"


def test_rowmux_verilog_tools(tmp_path):
    """The row-mux conv unit (small build and the PYNQ-Z2 geometry with row_mux) and the row-mux array core are
    Verilog-2005 that Icarus (-g2005) and yosys (read_verilog, hierarchy -check, proc) accept."""
    import subprocess

    from flow.compile.engine import EngineConfig
    from flow.rtl.render import write_rtl

    srcs = [(cu.render_sources(e, tmp_path / e.hash())[0], "vqhls_conv_unit")
            for e in (RM, EngineConfig(row_mux=True))]
    srcs.append((write_rtl("pe_array_rowmux", EngineConfig(), tmp_path / "core"), "vqhls_pe_array_rowmux"))
    for path, top in srcs:
        subprocess.run(["iverilog", "-g2005", "-o", str(tmp_path / "a.out"), str(path)], check=True)
        if shutil.which("yosys"):
            script = f"read_verilog {path}; hierarchy -check -top {top}; proc"
            out = subprocess.run(["yosys", "-q", "-p", script], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------------------------------------------------------
# The whole engine (vqhls_engine_top, Icarus): the loader's shared-mask loads and checks, the core, the conv unit

RM_CFG = EngineConfig(row_mux=True)                  # the PYNQ-Z2 geometry with the row-mux array (8 columns)
PLAIN_CFG = EngineConfig()
# the small 2:4 row-mux build with a 256-entry vmem: a shared op of 12 oc x 36 entries streams its oc tiles
STREAM_RM = dataclasses.replace(RM, vmem_entries=256)
# the planted loader bugs (tests of the test), applied to the rendered loader: shared masks checked and loaded with
# the per-channel count (OC*KH*KW*NVEC entries from off_mask); a streamed tile's masks loaded as per-channel ones
# (occ*TAPV entries from entry ot*cols*TAPV)
MASK_COUNT_BUG = [("5'd25: m_mv <= is_shared ? mul_p : m_tv;", "5'd25: m_mv <= m_tv;"),
                  ("3'd1: if (is_shared) begin", "3'd1: if (1'b0) begin")]
_CSIM: dict = {}


def _csim_load(image: bytes, engine: EngineConfig) -> int:
    """The C-sim engine's (the HLS engine compiled with g++) STATUS for loading ``image`` unchecked."""
    from flow.hls.csim import CsimEngine, EngineError   # deferred: jinja2 + g++ (the cached C-sim build)

    key = engine.hash()
    if key not in _CSIM:
        _CSIM[key] = CsimEngine(engine)
    try:
        _CSIM[key].load_image(image, validate=False)
    except EngineError as e:
        return e.status
    return 0


def _shared(op, group: int):
    """``op`` (codebook) with every aligned group of ``group`` output channels taking its first channel's mask."""
    op.arrays["mask"] = op.arrays["mask"][(np.arange(op.OC) // group) * group].copy()
    return op


def _mvq_lenet_shared() -> Program:
    """The MVQ lenet-digits of flow.compile.untrained (compress -> quantize -> lower, untrained weights) with its
    masks made shared per group of RM_CFG.cols channels, lowered to the shared format and placed for RM_CFG."""
    from flow.compile.untrained import untrained_program

    prog = untrained_program("lenet-digits", "mvq", PLAIN_CFG)
    for op in prog.ops:
        if op.opcode == CONV and op.wfmt == CODEBOOK:
            _shared(op, RM_CFG.cols)
    return prepare(share_masks(prog, RM_CFG), RM_CFG)


def _streamed_program() -> tuple:
    """Two shared-mask convs for STREAM_RM (TAPV = 3*3*2 = 18): a resident one of two oc tiles (NOT*TAPV masks at
    the load call), then one of 14 oc (the last tile partial) whose 14*18 index entries do not fit beside it (per
    oc tile at run time: its TAPV masks from entry ot*TAPV)."""
    rng = np.random.default_rng(22)
    a = _shared(conv_op(rng, H=6, W=5, C=8, OC=8, K=3, pad=1, wfmt=CODEBOOK, n=2, m=4, d=4, k=16, in_unsigned=1,
                        out_unsigned=1, shift_range=(8, 20), in_buf=0, out_buf=1, name="resident"), STREAM_RM.cols)
    b = _shared(conv_op(rng, H=6, W=5, C=8, OC=14, K=3, stride=2, pad=1, wfmt=CODEBOOK, n=2, m=4, d=4,
                        k=32, in_unsigned=1, shift_range=(8, 20), in_buf=1, out_buf=0, name="streamed"),
                STREAM_RM.cols)
    return a, b


def _inputs(prog: Program, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(engine input bytes [n, in_bytes], golden output bytes [n, out_bytes]) for random inputs."""
    x = np.random.default_rng(seed).integers(0, 256, (n, *prog.in_shape)).astype(np.uint8)
    if not prog.ops[0].in_unsigned:
        x = x.view(np.int8)
    return vectors.check_inputs(prog, x), vectors.outputs_to_bytes(prog, run_program(prog, x))


def _mutated(monkeypatch, edits) -> None:
    """run_engine renders the loader with ``edits`` (old, new) applied (each must be present)."""
    real = engine_rtl.render_rtl

    def render(unit, eng, **params):
        text = real(unit, eng, **params)
        if unit == "loader":
            for old, new in edits:
                assert old in text, f"planted bug: {old!r} not in the rendered loader"
                text = text.replace(old, new, 1)
        return text

    monkeypatch.setattr(engine_rtl, "render_rtl", render)


def _set_field(image: bytes, op: int, name: str, value: int) -> bytes:
    """``image`` with descriptor field ``name`` of op ``op`` set, re-sealed (header CRC)."""
    b = bytearray(image)
    off = program_image.HEADER_BYTES + 4 * (op * program_image.DESC_WORDS + program_image.DESC_FIELDS.index(name))
    b[off:off + 4] = int(value).to_bytes(4, "little", signed=True)
    return program_image.seal(bytes(b))


def test_engine_runs_a_shared_mask_lenet_bit_exact():
    """The MVQ lenet with shared masks on the row-mux PYNQ-Z2 build through AXI: load STATUS 0 as the C-sim
    engine's, outputs equal to the golden model's, each op's MEASURED cycles within 5 % of the model (RTL_DEPTH)."""
    prog = _mvq_lenet_shared()
    shared = [op for op in prog.ops if op.wfmt == CODEBOOK_SHARED]
    assert len(shared) == 2 and all(op.mg == RM_CFG.cols and op.rowmux == 1 and op.passes == 1 for op in shared)
    image = prog.to_bytes()
    x, golden = _inputs(prog, 1, 5)
    run = run_engine(image, RM_CFG, x, simulator="icarus")
    assert run.load_status == _csim_load(image, RM_CFG) == 0, regmap.status_message(run.load_status)
    assert run.statuses == [0], [regmap.status_message(s) for s in run.statuses]
    assert np.array_equal(run.outputs, golden)
    model = image_cycles(prog, RM_CFG, RTL_DEPTH)
    per_op = run.op_cycles.mean(axis=0)
    for i, oc in enumerate(model.ops):
        print(f"op {i} {oc.name}: measured {per_op[i]:.1f} cycles (RTL simulation), model (RTL depths) {oc.cycles}")
        assert abs(oc.cycles - per_op[i]) <= 0.05 * per_op[i], (i, oc.name, oc.cycles, per_op[i])
    per_image = run.image_cycles[0]
    print(f"per image: measured {per_image:.1f} (REAL_CYCLES / images, RTL simulation), model {model.total} "
          f"({100 * (model.total - per_image) / per_image:+.2f} %)")
    assert abs(model.total - per_image) <= 0.05 * per_image


def test_engine_streams_shared_masks_per_oc_tile():
    """A shared op too large for vmem streams per oc tile (its one mask row from entry ot*TAPV) after a resident
    shared op of two tiles: bit-exact against the golden model, load STATUS 0 as the C-sim engine's."""
    prog = prepare(share_masks(Program(ops=list(_streamed_program()), in_shape=(6, 5, 8)), STREAM_RM), STREAM_RM)
    a, b = prog.ops
    assert a.wfmt == b.wfmt == CODEBOOK_SHARED and a.NOT == 2 and b.NOT == 4
    assert a.resident == 1 and b.resident == 0
    image = prog.to_bytes()
    x, golden = _inputs(prog, 2, 6)
    run = run_engine(image, STREAM_RM, x, simulator="icarus")
    assert run.load_status == _csim_load(image, STREAM_RM) == 0, regmap.status_message(run.load_status)
    assert run.statuses == [0], [regmap.status_message(s) for s in run.statuses]
    assert np.array_equal(run.outputs, golden)


def _mask_at_end(prog: Program, i: int, past: int) -> bytes:
    """``prog``'s image with op i's shared mask array moved to end ``past`` bytes after the image's end (0: it
    ends the image, so an engine reading the per-channel count OC*KH*KW*NVEC runs past it)."""
    op = prog.ops[i]
    image = prog.to_bytes()
    nbytes = 2 * op.NOT * op.KH * op.KW * op.NVEC
    assert op.wfmt == CODEBOOK_SHARED and op.NOT < op.OC and (len(image) - nbytes) % 4 == 0
    return _set_field(image, i, "off_mask", len(image) - nbytes + past)


def _status_images() -> dict[str, tuple[bytes, EngineConfig, int]]:
    """name -> (image, engine, expected load STATUS code) for the shared format's check_op rules."""
    prog = _mvq_lenet_shared()
    i = next(j for j, op in enumerate(prog.ops) if op.wfmt == CODEBOOK_SHARED)
    last = max(j for j, op in enumerate(prog.ops) if op.wfmt == CODEBOOK_SHARED)
    from flow.compile.untrained import untrained_program

    per_pe = untrained_program("lenet-digits", "mvq", PLAIN_CFG)     # placed for the per-PE-mux array
    return {
        "per-channel image on the row-mux build": (per_pe.to_bytes(), RM_CFG, regmap.ERR_PARAM),
        "shared image on the plain build": (place(prog, PLAIN_CFG).to_bytes(), PLAIN_CFG, regmap.ERR_OPCODE),
        "mg != cols": (_set_field(prog.to_bytes(), i, "mg", RM_CFG.cols // 2), RM_CFG, regmap.ERR_PARAM),
        "rowmux 0 on the row-mux build": (_set_field(prog.to_bytes(), i, "rowmux", 0), RM_CFG, regmap.ERR_PARAM),
        "shared masks past the image": (_mask_at_end(prog, last, 4), RM_CFG, regmap.ERR_OFFSET),
        "shared masks end the image": (_mask_at_end(prog, last, 0), RM_CFG, regmap.OK),
    }


STATUS_CASES = ["per-channel image on the row-mux build", "shared image on the plain build", "mg != cols",
                "rowmux 0 on the row-mux build", "shared masks past the image", "shared masks end the image"]


def _no_input(image: bytes) -> np.ndarray:
    """One all-zero input image of the Program's input bytes (a load-status case runs one image)."""
    return np.zeros((1, program_image.header_words(image)[program_image.WORD["input_bytes"]]), np.uint8)


@pytest.mark.parametrize("name", STATUS_CASES)
def test_shared_format_load_status_is_the_csim_one(name):
    """The loader's check_op for the shared format gives the C-sim engine's STATUS (code and op index)."""
    image, engine, code = _status_images()[name]
    want = _csim_load(image, engine)
    assert want & 0xFF == code, regmap.status_message(want)
    run = run_engine(image, engine, _no_input(image), simulator="icarus", raw=True)
    print(f"{name}: RTL {regmap.status_message(run.load_status)}, C-sim {regmap.status_message(want)}")
    assert run.load_status == want


@pytest.mark.parametrize("bug", ["count", "tile"])
def test_planted_loader_bug_mask_count_is_caught(monkeypatch, bug):
    """Tests of the test: a loader that checks and loads shared masks with the per-channel count
    (OC*KH*KW*NVEC entries) refuses an image the C-sim engine loads (the masks end the image: ERR_OFFSET); one
    that loads a streamed tile's masks as per-channel ones (occ*TAPV entries from entry ot*cols*TAPV) streams the
    wrong masks (outputs differ from the golden model)."""
    _mutated(monkeypatch, MASK_COUNT_BUG[:1] if bug == "count" else MASK_COUNT_BUG[1:])
    if bug == "count":
        image, engine, _ = _status_images()["shared masks end the image"]
        bad = run_engine(image, engine, _no_input(image), simulator="icarus", raw=True)
        assert bad.load_status != _csim_load(image, engine) == 0, "the per-channel mask count went unnoticed"
        assert bad.load_status & 0xFF == regmap.ERR_OFFSET
        return
    prog = prepare(share_masks(Program(ops=list(_streamed_program()), in_shape=(6, 5, 8)), STREAM_RM), STREAM_RM)
    x, golden = _inputs(prog, 2, 6)
    run = run_engine(prog.to_bytes(), STREAM_RM, x, simulator="icarus")
    assert run.load_status == 0 and run.statuses == [0]
    assert not np.array_equal(run.outputs, golden), "streamed tiles with the per-channel mask offset passed"
