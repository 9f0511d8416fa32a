"""Cases for the conv unit of the whole-engine RTL (hls_templates/rtl/conv_unit.v.j2, vqhls_conv_unit).

    c = case("cb-d4-mvq-3x3-s2")                          # a Program, the op the unit runs, the input
    r = run_case(c, tmp_path)                             # Icarus + cocotb (flow/rtl/tb/conv_unit.py)
    assert r.exact, r.detail

A case is a Program of random conv ops (flow.rtl.random_ops.conv_op, the ops the HLS C-sim tests draw),
placed and checked for the engine by flow.compile (``prepare``), and one op of it that the unit runs. The
testbench preloads what the HLS load call leaves on chip (the op's descriptor words, every op's on-chip
parameters: vidx / vmask / codebook rows / dense words / channel fields) and the activation buffers the op
reads (its input, and for a residual op the residual tensor the previous op wrote, as the golden model
computed it), pulses start, counts the cycles to done and reads the output buffer back. The comparison is
with the golden model (flow.compile.program_exec.run_program on the same Program) by np.array_equal.

Cycles: the measured count (RTL simulation, start to done) is compared with the unit's own schedule
(``rtl_schedule_cycles``: 18 cycles of plan, then per loop its HLS iteration count plus the 7-cycle flush;
exact) and printed next to the HLS engine's cycle model for the op (flow.boards.cycle_model.conv_cycles: the
same loop iteration counts plus DEPTH conv = 24 per loop entry, no plan term), so the difference is
18 - 17 * (loops) cycles with loops = NPT*NOT + 2; it is reported, not forced.
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flow.boards.cycle_model import ACC_DISTANCE, conv_cycles, conv_tiles
from flow.compile.engine import EngineConfig
from flow.compile.layout import share_masks
from flow.compile.program import CODEBOOK, DENSE, Op, Program
from flow.compile.program_exec import run_program
from flow.compile.validate import prepare
from flow.rtl import onchip
from flow.rtl.cosim import run_cocotb
from flow.rtl.random_ops import act_range, conv_op
from flow.rtl.render import context, write_rtl

# small 2:4 engine (rows 2, 4 lanes, 4 banks, 4 groups per accumulator tile): several pixel and oc tiles
# on small layers, d up to 8 (> lanes: a codeword spans two steps); Icarus runs it fast
SMALL_24 = EngineConfig(rows=2, cols=4, lanes=4, n=2, m=4, k_max=64, d_max=8, act_buf_bytes=2048, num_bufs=3,
                        acc_groups=4, vmem_entries=4096, cb_rows=256, dmem_words=1024, ch_rows=64, dsp_rows=2,
                        max_channels=64, max_kernel=5, max_ops=8, param_bytes=1 << 20)
# the same geometry built dense (n == m: no muxes, one pass)
SMALL_DENSE = EngineConfig(rows=2, cols=4, lanes=4, n=4, m=4, k_max=64, d_max=8, act_buf_bytes=2048, num_bufs=3,
                           acc_groups=4, vmem_entries=4096, cb_rows=256, dmem_words=1024, ch_rows=64, dsp_rows=2,
                           max_channels=64, max_kernel=5, max_ops=8, param_bytes=1 << 20)
# 4 rows (4 banks at stride 1 and 2 needs 8), 3 groups per tile: an odd tile size
SMALL_R4 = EngineConfig(rows=4, cols=4, lanes=4, n=2, m=4, k_max=64, d_max=8, act_buf_bytes=4096, num_bufs=3,
                        acc_groups=3, vmem_entries=4096, cb_rows=256, dmem_words=1024, ch_rows=64, dsp_rows=2,
                        max_channels=64, max_kernel=5, max_ops=8, param_bytes=1 << 20)

# the 2:4 geometry with the row-mux array (issue 22: one m:1 selection per row for the column tile)
SMALL_24_RM = dataclasses.replace(SMALL_24, row_mux=True)

FLUSH = 7          # the unit's cycles between loops (conv_unit.v.j2 FLUSH)
PLAN = 18          # start cycle (0) -> first issue cycle: the plan steps 0..15 (one product each) and the setup step
TEMPLATE_WRAP = "rtl/tb/conv_unit_wrap.v.j2"


@dataclass
class ConvUnitCase:
    name: str
    engine: EngineConfig
    program: Program          # placed for engine (flow.compile.validate.prepare)
    op_index: int             # the op the unit runs
    x: np.ndarray             # the program's input [1, H, W, C]
    bug: str = ""             # a planted bug of the RTL (test of the test)


@dataclass
class ConvUnitResult:
    exact: bool
    detail: str
    cycles: int               # measured in RTL simulation: start pulse to done pulse
    schedule_cycles: int      # the unit's own schedule (rtl_schedule_cycles)
    hls_model_cycles: int     # flow.boards.cycle_model.conv_cycles: prologue + tiles + final drain
    got: np.ndarray = field(repr=False, default=None)
    want: np.ndarray = field(repr=False, default=None)

    @property
    def vs_hls(self) -> int:
        return self.cycles - self.hls_model_cycles


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_case(name: str, engine: EngineConfig, *, seed: int = 0, residual: bool = False, res_unsigned: int = 0,
              bug: str = "", share: bool = False, **kw) -> ConvUnitCase:
    """One conv (buffer 0 -> 1) drawn by flow.rtl.random_ops.conv_op; with ``residual`` a dense conv of the
    same geometry first writes the residual into buffer 2 (the unit runs the second op). ``share``: the unit's
    codebook op gets masks shared by every aligned group of engine.cols output channels (the group's first
    channel's copied) and, on a row-mux engine, the shared-mask format (flow.compile.layout.share_masks)."""
    rng = _rng(name, seed)
    ops: list[Op] = []
    if residual:
        geo = {k: kw[k] for k in ("H", "W", "C", "OC", "K", "stride", "pad") if k in kw}
        ops.append(conv_op(rng, **geo, in_unsigned=kw.get("in_unsigned", 0), out_unsigned=res_unsigned,
                           in_buf=0, out_buf=2, shift_range=(8, 24), name="residual_src"))
        ops.append(conv_op(rng, **kw, in_buf=0, out_buf=1, res_buf=2, res_unsigned=res_unsigned, name=name))
    else:
        ops.append(conv_op(rng, **kw, name=name))
    if share:
        mask = ops[-1].arrays["mask"]
        for g0 in range(0, mask.shape[0], engine.cols):
            mask[g0:g0 + engine.cols] = mask[g0]
    prog = Program(ops=ops, in_shape=(ops[0].H, ops[0].W, ops[0].C))
    if share:
        prog = share_masks(prog, engine)
    placed = prepare(prog, engine)
    first = placed.ops[0]
    lo, hi = act_range(first.in_unsigned)
    x = rng.integers(lo, hi + 1, size=(1, first.H, first.W, first.C))
    return ConvUnitCase(name, engine, placed, len(ops) - 1, x, bug)


# name -> (engine, conv_op keywords): dense and codebook weights, MVQ (passes 1) and VQ / dense (passes 2) on
# the 2:4 array, d in {2, 4, 8}, 3x3 pad 1 stride 1 and 2, 1x1, several pixel and oc tiles, a residual,
# unsigned input; a dense build; a 4-row array; 5x5 and 7x7 kernels with large pads; EngineConfig()
CASES: dict[str, tuple[EngineConfig, dict]] = {
    "dense-3x3-s1": (SMALL_24, dict(H=5, W=6, C=6, OC=6, K=3, stride=1, pad=1, wfmt=DENSE)),
    "dense-3x3-s2-uns": (SMALL_24, dict(H=7, W=7, C=8, OC=5, K=3, stride=2, pad=1, wfmt=DENSE, in_unsigned=1,
                                        out_unsigned=1)),
    "cb-d4-mvq-3x3-s1": (SMALL_24, dict(H=6, W=5, C=8, OC=8, K=3, stride=1, pad=1, wfmt=CODEBOOK, d=4, n=2, m=4,
                                        k=16)),
    "cb-d4-mvq-3x3-s2": (SMALL_24, dict(H=7, W=8, C=8, OC=7, K=3, stride=2, pad=1, wfmt=CODEBOOK, d=4, n=2, m=4,
                                        k=16)),
    "cb-d2-vq-3x3": (SMALL_24, dict(H=5, W=5, C=6, OC=6, K=3, stride=1, pad=1, wfmt=CODEBOOK, d=2, n=2, m=2,
                                    k=8)),
    "cb-d8-mvq-3x3": (SMALL_24, dict(H=5, W=6, C=16, OC=6, K=3, stride=1, pad=1, wfmt=CODEBOOK, d=8, n=2, m=4,
                                     k=32)),
    "cb-d4-1x1": (SMALL_24, dict(H=4, W=7, C=12, OC=9, K=1, stride=1, pad=0, wfmt=CODEBOOK, d=4, n=2, m=4,
                                 k=16)),
    # last pixel tile of one group (bubble slots: a pass still sweeps ACC_DISTANCE slots)
    "dense-1x1-s2-ng1": (SMALL_24, dict(H=9, W=3, C=5, OC=4, K=1, stride=2, pad=0, wfmt=DENSE)),
    "cb-d4-mvq-ng1": (SMALL_24, dict(H=3, W=6, C=4, OC=4, K=3, stride=1, pad=1, wfmt=CODEBOOK, d=4, n=2, m=4,
                                     k=16)),
    "residual-uns": (SMALL_24, dict(H=5, W=5, C=8, OC=8, K=3, stride=1, pad=1, wfmt=CODEBOOK, d=4, n=2, m=4, k=16,
                                    in_unsigned=1, out_unsigned=1, residual=True, res_unsigned=1)),
    "residual-signed-dense": (SMALL_24, dict(H=4, W=6, C=4, OC=6, K=3, stride=1, pad=1, wfmt=DENSE,
                                             residual=True, res_unsigned=0)),
    "densebuild-cb-d4": (SMALL_DENSE, dict(H=5, W=6, C=8, OC=6, K=3, stride=2, pad=1, wfmt=CODEBOOK, d=4, n=2,
                                           m=4, k=16)),
    "rows4-dense-s2": (SMALL_R4, dict(H=7, W=9, C=6, OC=6, K=3, stride=2, pad=1, wfmt=DENSE, in_unsigned=1)),
    # 5x5 pad 2, and on EngineConfig() 7x7 pad 6 (past the 4 banks: a tap's column bank rows from its group's)
    "dense-5x5-p2": (SMALL_24, dict(H=6, W=9, C=4, OC=4, K=5, stride=1, pad=2, wfmt=DENSE)),
    "default-dense-7x7-p6-s2": (EngineConfig(), dict(H=5, W=6, C=8, OC=8, K=7, stride=2, pad=6, wfmt=DENSE,
                                                     in_unsigned=1)),
    "default-cb-d8": (EngineConfig(), dict(H=9, W=12, C=16, OC=12, K=3, stride=1, pad=1, wfmt=CODEBOOK, d=8, n=2,
                                           m=4, k=64)),
}
# the test of the test: the crossbar bug (rows past 0 ignore the stride) on a stride-2 case
BUG_CASE = ("cb-d4-mvq-3x3-s2", "xbar")


def case(name: str, bug: str = "") -> ConvUnitCase:
    engine, kw = CASES[name]
    return make_case(name, engine, bug=bug, **kw)


# ---------------------------------------------------------------------------------------------------------
# on-chip state (flow.rtl.onchip: the HLS load call's memories; the banked activation layout)
# ---------------------------------------------------------------------------------------------------------
def onchip_writes(program: Program, engine: EngineConfig) -> list[tuple[int, int, int, int]]:
    """(pw_mem, addr, col, data) parameter-port writes that leave the memories as the HLS load call of
    ``program`` does (flow.rtl.onchip: onchip_state, writes), without the op table (the testbench writes the
    descriptor of the op the unit runs)."""
    return [w for w in onchip.writes(onchip.onchip_state(program.to_bytes(), engine)) if w[0] != onchip.PW_OPW]


# ---------------------------------------------------------------------------------------------------------
# cycles
# ---------------------------------------------------------------------------------------------------------
def loop_lengths(op: Op, engine: EngineConfig) -> list[int]:
    """Issue cycles of every loop of the HLS conv_layer (prologue, tiles, last drain), from the placed op."""
    step = lambda ng: max(op.passes * max(ng, ACC_DISTANCE), op.dec)   # noqa: E731
    lens, prev = [op.dec], 0
    for ng in conv_tiles(op, engine):
        lens.append(max(op.NSTEP * step(ng), engine.rows * prev))
        prev = ng
    lens.append(engine.rows * prev)
    return lens


def rtl_schedule_cycles(op: Op, engine: EngineConfig) -> int:
    """The unit's schedule, start pulse to done pulse: PLAN cycles, then per loop its issue cycles and FLUSH."""
    return PLAN + sum(n + FLUSH for n in loop_lengths(op, engine))


def hls_model_cycles(op: Op, engine: EngineConfig) -> int:
    """The HLS engine's modelled cycles of the conv (flow.boards.cycle_model.conv_cycles: prologue, tile
    loops, last drain, each with DEPTH conv; without the descriptor fetch, which is the sequencer's)."""
    c = conv_cycles(op, engine)
    return c["prologue"] + c["tiles"] + c["final_drain"]


# ---------------------------------------------------------------------------------------------------------
# running a case
# ---------------------------------------------------------------------------------------------------------
def render_sources(engine: EngineConfig, out_dir: Path, bug: str = "") -> list[Path]:
    """vqhls_conv_unit (with ``bug``) and the test wrapper, rendered into ``out_dir``."""
    from flow.hls.project import _environment   # deferred: jinja2 (the template environment), only to render

    out_dir.mkdir(parents=True, exist_ok=True)
    unit = write_rtl("conv_unit", engine, out_dir, bug=bug)
    banner = (f"Generated by vqhls (flow.rtl) from hls_templates/{TEMPLATE_WRAP} for engine {engine.hash()} "
              "-- do not edit.")
    wrap = out_dir / "vqhls_conv_unit_wrap.v"
    wrap.write_text(_environment().get_template(TEMPLATE_WRAP).render(banner=banner, **context(engine)))
    return [unit, wrap]


def golden(c: ConvUnitCase) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(input [H,W,C], residual [OH,OW,OC] or None, expected output [OH,OW,OC]) of the unit's op, read with
    the op's flags, from flow.compile.program_exec.run_program on the case's Program."""
    outs = run_program(c.program, c.x, return_all=True)
    op = c.program.ops[c.op_index]
    x = c.x[0]                      # every case's unit op reads the program's input (buffer 0)
    res = None
    if op.res_buf >= 0:
        src = next(i for i in range(c.op_index - 1, -1, -1) if c.program.ops[i].out_buf == op.res_buf)
        res = outs[src][0]
    return x, res, outs[c.op_index][0]


def build_case_file(c: ConvUnitCase, path: Path) -> dict:
    """The testbench's input (json): descriptor, parameter writes, activation words, words to read back."""
    op = c.program.ops[c.op_index]
    e = c.engine
    x, res, want = golden(c)
    assert c.op_index == 0 or op.in_buf == c.program.ops[0].in_buf, "the unit's op reads the program's input"
    writes = onchip_writes(c.program, e)
    words = [int(v) for v in onchip.onchip_state(c.program.to_bytes(), e).op_words[c.op_index]]
    act = [(op.in_buf, bk, a, w) for (bk, a), w in onchip.pack_activation(np.asarray(x), e, op.WB, op.CW).items()]
    if res is not None:
        act += [(op.res_buf, bk, a, w)
                for (bk, a), w in onchip.pack_activation(np.asarray(res), e, op.OWB, op.OCW).items()]
    read = sorted(onchip.pack_activation(np.zeros((op.OH, op.OW, op.OC), np.int64), e, op.OWB, op.OCW))
    sched = rtl_schedule_cycles(op, e)
    obj = {"op_words": words, "writes": [list(w) for w in writes],
           "act": [list(a) for a in act], "out_buf": op.out_buf, "read": [list(r) for r in read],
           "max_cycles": 4 * sched + 1000}
    path.write_text(json.dumps(obj))
    return obj


def run_case(c: ConvUnitCase, work: Path, simulator: str | None = None) -> ConvUnitResult:
    """Render, simulate (cocotb, flow/rtl/tb/conv_unit.py), compare with the golden model."""
    work = Path(work)
    srcs = render_sources(c.engine, work / "src", c.bug)
    case_path, result_path = work / "case.json", work / "result.json"
    obj = build_case_file(c, case_path)
    res = run_cocotb(srcs, "vqhls_conv_unit_wrap", "flow.rtl.tb.conv_unit", build_dir=work / "sim",
                     simulator=simulator,
                     extra_env={"VQHLS_CASE": str(case_path), "VQHLS_RESULT": str(result_path)})
    op = c.program.ops[c.op_index]
    sched, model = rtl_schedule_cycles(op, c.engine), hls_model_cycles(op, c.engine)
    if res.failed or not result_path.exists():
        return ConvUnitResult(False, res.summary(), -1, sched, model)
    out = json.loads(result_path.read_text())
    words = {(bk, a): int(w) for (bk, a), w in zip(obj["read"], out["words"])}
    got = onchip.unpack_activation(words, c.engine, op.OH, op.OW, op.OC, op.OWB, op.OCW,
                            np.uint8 if op.out_unsigned else np.int8).astype(np.int64)
    _, _, want = golden(c)
    exact = bool(np.array_equal(got, want))
    detail = "bit-exact"
    if not exact:
        bad = np.argwhere(got != want)
        i = tuple(int(v) for v in bad[0])
        detail = (f"{len(bad)} of {want.size} outputs differ; first at (oh, ow, oc) = {i}: RTL {got[i]}, "
                  f"golden {want[i]}")
    return ConvUnitResult(exact, detail, int(out["cycles"]), sched, model, got, want)
