"""Co-simulation cases of vqhls_pe_array and vqhls_requant against the golden model.

    from flow.rtl.cosim_cases import run_all, print_table
    print_table(run_all(default_program_dir()))   # renders, simulates (cocotb + Icarus), compares bit for bit

A pe_array case is one conv layer: its int weights (decoded from codebook + n:m masks with
flow.compile.program_exec.op_weights) and keep bits, random activations, driven through the core in the
engine's order (cycle_formulas.conv_schedule: pixel tile, oc tile, step = kernel tap x channel word, then the
tile's pixel groups); the accumulators that come out are compared with flow.quant.ops.conv2d (no bias)
with np.array_equal, and the measured cycles with cycle_formulas.pe_array_cycles. The testbench
(flow/rtl/tb/pe_array.py) reads the case from $VQHLS_CASE (npz) and writes $VQHLS_RESULT (json).

The cases: random ops (flow.rtl.random_ops; RANDOM_CASES by name, nothing built until asked), the first
codebook conv of the default model's program (flow.rtl.default_program: built on first use, cached), and
a back-pressure case; ``standard_cases`` lists them in the order ``make cosim`` prints.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flow.boards.cycle_model import ACC_DISTANCE
from flow.compile.engine import EngineConfig
from flow.compile.layout import derived_fields
from flow.compile.program import CODEBOOK, CONV, DENSE, Program
from flow.quant import ops as K
from flow.compile.program_exec import op_weights
from flow.quant.requant import requantize
from flow.compile.layout import cdiv
from flow.rtl import cycle_formulas
from flow.rtl.cosim import run_cocotb
from flow.rtl.default_program import PROGRAM_FILE, default_program_dir
from flow.rtl.random_ops import SMALL_CFG, conv_op
from flow.rtl.render import write_rtl

TB_MODULE = "flow.rtl.tb.pe_array"


@dataclass
class ConvCase:
    name: str
    engine: EngineConfig
    x: np.ndarray          # int [H, W, C]
    w: np.ndarray          # int [OC, KH, KW, C]
    keep: np.ndarray       # bool [OC, KH, KW, C]
    stride: int = 1
    pad: int = 1
    in_unsigned: int = 0
    p_gap: float = 0.0     # probability that a ready input beat is withheld one cycle
    p_stall: float = 0.0   # probability that out_ready is low in a cycle
    seed: int = 1
    bug: str = ""          # planted RTL bug (test of the test)
    vpc: int = 0           # codewords per column (0: dense words), sets the weight feeder's pace
    passes: int = 1        # the engine's array passes per step (flow.compile.layout), for the model table


@dataclass
class CaseResult:
    name: str
    exact: bool
    cycles: int
    model_cycles: int
    stall_cycles: int = 0
    gap_cycles: int = 0
    w_err: int = 0
    detail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def cycle_error(self) -> int:
        return self.cycles - self.model_cycles


def engine_array_cycles(dec: int, passes: int, steps: list[int]) -> int:
    """The engine cycle model's array terms for the same step list (flow.boards.cycle_model.conv_cycles without
    its fill depths and drain): the decode prologue, then per step max(passes * max(ng, ACC_DISTANCE), dec)."""
    return dec + sum(max(passes * max(ng, ACC_DISTANCE), dec) for ng in steps) if steps else 0


# ---------------------------------------------------------------- case construction
def conv_case_from_op(name: str, engine: EngineConfig, op, rng: np.random.Generator, **kw) -> ConvCase:
    """A case from a Program conv op (DENSE or CODEBOOK) with random activations of its signedness."""
    w = op_weights(op)
    if op.wfmt == CODEBOOK:
        keep = K.mask_bits_to_keep(op.arrays["mask"], op.d).reshape(w.shape)
    else:
        keep = np.ones(w.shape, bool)
    lo, hi = (0, 255) if op.in_unsigned else (-128, 127)
    x = rng.integers(lo, hi + 1, size=(op.H, op.W, op.C))
    f = derived_fields(op, engine)
    kw.setdefault("vpc", f["vpc"])
    kw.setdefault("passes", f["passes"])
    return ConvCase(name, engine, x, w, keep, op.stride, op.pad, int(op.in_unsigned), **kw)


def random_conv_case(name: str, engine: EngineConfig, seed: int, *, H: int, W: int, C: int, OC: int, K: int = 3,
                     stride: int = 1, pad: int = 1, wfmt: str = "codebook", d: int = 8, k: int = 16,
                     in_unsigned: int = 0, **kw) -> ConvCase:
    """A random MVQ (codebook + engine.n:engine.m masks) or dense conv (flow.rtl.random_ops.conv_op)."""
    rng = np.random.default_rng(seed)
    op = conv_op(rng, H=H, W=W, C=C, OC=OC, K=K, stride=stride, pad=pad,
                 wfmt=CODEBOOK if wfmt == "codebook" else DENSE, n=engine.n, m=engine.m, d=d, k=k,
                 in_unsigned=in_unsigned)
    return conv_case_from_op(name, engine, op, rng, seed=seed, **kw)


def default_model_case(program_dir: Path, engine: EngineConfig | None = None, seed: int = 5,
                       **kw) -> ConvCase | None:
    """The first codebook conv of the default model's MVQ program (``program_dir``: flow.rtl.default_program,
    the `features.4` layer: 4x4x16 -> 32, 3x3, 2:4, d 8) on the PYNQ-Z2 array; None when it has none."""
    path = Path(program_dir) / PROGRAM_FILE
    try:
        prog = Program.from_bytes(path.read_bytes())
    except ValueError as e:   # the cache folder is keyed by the sources, so only damage gets here
        raise RuntimeError(f"{path}: {e}; delete {program_dir} to build it again") from None
    i, op = next(((i, o) for i, o in enumerate(prog.ops) if o.opcode == CONV and o.wfmt == CODEBOOK), (-1, None))
    if op is None:
        return None
    return conv_case_from_op(f"lenet-digits-mvq op {i} {op.H}x{op.W}x{op.C}->{op.OC} {op.n}:{op.m}",
                             engine or EngineConfig(), op, np.random.default_rng(seed), seed=seed, **kw)


def schedule(case: ConvCase) -> dict:
    """The beats of a case in the engine's order, and the accumulators expected on the output port."""
    e = case.engine
    R, CL, L = e.rows, e.cols, e.lanes
    H, W, C = case.x.shape
    OC, KH, KW, _ = case.w.shape
    OH, OW = K.out_size(H, KH, case.stride, case.pad), K.out_size(W, KW, case.stride, case.pad)
    sch = cycle_formulas.conv_schedule(e, OH=OH, OW=OW, C=C, OC=OC, KH=KH, KW=KW)
    GR, CWD, NOT = cdiv(OW, R), cdiv(C, L), sch.n_oc_tiles
    # zero-padded operands: x [H+2p, W', CWD*L] (enough columns for every group), w [NOT*CL, KH, KW, CWD*L]
    p = case.pad
    wpad = GR * R * case.stride + KW + 1
    xp = np.zeros((H + 2 * p + KH, wpad + 2 * p, CWD * L), np.int64)
    xp[p:p + H, p:p + W, :C] = case.x
    wp = np.zeros((NOT * CL, KH, KW, CWD * L), np.int64)
    wp[:OC, ..., :C] = case.w
    kp = np.zeros(wp.shape, bool)
    kp[:OC, ..., :C] = case.keep
    acc = K.conv2d(case.x[None].astype(np.int64), case.w.astype(np.int64), None, case.stride, case.pad)[0]
    accp = np.zeros((OH, GR * R, NOT * CL), np.int64)
    accp[:, :OW, :OC] = acc
    P, I = cycle_formulas.weight_beats(CL, case.vpc)
    dec = cycle_formulas.weight_load_cycles(CL, case.vpc)
    wbeats, wkeep, wmeta, abeats, aflags, expect = [], [], [], [], [], []
    g0 = 0
    for ng in sch.tiles:
        groups = [divmod(g, GR) for g in range(g0, g0 + ng)]     # (oh, gx)
        for ot in range(NOT):
            step = 0
            for kh in range(KH):
                for kw in range(KW):
                    for j in range(CWD):
                        for c in range(0, CL, P):     # beats of P columns (the last may hold fewer)
                            wcol = np.zeros((2, L), np.int64)
                            kcol = np.zeros((2, L), bool)
                            nc = min(P, CL - c)
                            wcol[:nc] = wp[ot * CL + c:ot * CL + c + nc, kh, kw, j * L:(j + 1) * L]
                            kcol[:nc] = kp[ot * CL + c:ot * CL + c + nc, kh, kw, j * L:(j + 1) * L]
                            wbeats.append(wcol)
                            wkeep.append(kcol)
                            wmeta.append((c, nc, int(c + nc == CL)))
                        for gi, (oh, gx) in enumerate(groups):
                            ih = oh * case.stride + kh
                            iw = (gx * R + np.arange(R)) * case.stride + kw
                            beat = xp[ih, iw, j * L:(j + 1) * L].copy()
                            beat[gx * R + np.arange(R) >= OW] = 0      # rows past the output row: zero
                            abeats.append(beat)
                            aflags.append((gi, step == 0, step == sch.nstep - 1, gi == 0))
                        step += 1
            for oh, gx in groups:
                expect.append(accp[oh, gx * R:(gx + 1) * R, ot * CL:(ot + 1) * CL])
        g0 += ng
    return {
        "w_data": np.array(wbeats, np.int64), "w_keep": np.array(wkeep, bool),
        "w_meta": np.array(wmeta, np.int64), "w_interval": I, "dec": dec,
        "a_data": np.array(abeats, np.int64), "a_flags": np.array(aflags, np.int64),
        "expect": np.array(expect, np.int64), "steps": np.array(sch.steps, np.int64),
        "model_cycles": cycle_formulas.pe_array_cycles(dec, sch.steps),
        "engine_cycles": engine_array_cycles(dec, case.passes, sch.steps),
    }


# ---------------------------------------------------------------- running
def run_conv_case(case: ConvCase, work_dir: str | os.PathLike | None = None) -> CaseResult:
    """Render, simulate, compare bit for bit; cycles vs cycle_formulas.pe_array_cycles."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="vqhls_rtl_"))
    work.mkdir(parents=True, exist_ok=True)
    sch = schedule(case)
    e = case.engine
    case_path, result_path = work / "case.npz", work / "result.json"
    if result_path.exists():
        result_path.unlink()
    np.savez(case_path, w_data=sch["w_data"], w_keep=sch["w_keep"], w_meta=sch["w_meta"],
             w_interval=np.int64(sch["w_interval"]), a_data=sch["a_data"], a_flags=sch["a_flags"],
             unsigned=np.int64(case.in_unsigned), rows=np.int64(e.rows), cols=np.int64(e.cols),
             lanes=np.int64(e.lanes), n_out=np.int64(len(sch["expect"])), p_gap=np.float64(case.p_gap),
             p_stall=np.float64(case.p_stall), seed=np.int64(case.seed),
             max_cycles=np.int64(4 * sch["model_cycles"] + 1000))
    src = write_rtl("pe_array", e, work, bug=case.bug)
    res = run_cocotb([src], "vqhls_pe_array", TB_MODULE, build_dir=work / "sim", testcase="pe_array_case",
                     extra_env={"VQHLS_CASE": str(case_path), "VQHLS_RESULT": str(result_path)})
    info = {"steps": len(sch["steps"]), "out_beats": len(sch["expect"]), "dec": sch["dec"], "passes": case.passes,
            "engine_cycles": sch["engine_cycles"],
            "model_periods": cycle_formulas.step_periods(sch["dec"], [int(v) for v in sch["steps"]]),
            "engine_periods": [max(case.passes * max(int(ng), ACC_DISTANCE), sch["dec"]) for ng in sch["steps"][:-1]]}
    if res.failed or not result_path.is_file():
        return CaseResult(case.name, False, -1, sch["model_cycles"], detail=res.summary(), extra=info)
    out = json.loads(result_path.read_text())
    swaps = out.get("swaps", [])
    info["measured_periods"] = [b - a for a, b in zip(swaps, swaps[1:])]
    got = np.array(out["acc"], np.int64).reshape(sch["expect"].shape) if out["acc"] else np.zeros(0)
    exact = got.shape == sch["expect"].shape and np.array_equal(got, sch["expect"])
    detail = ""
    if not exact and got.shape == sch["expect"].shape:
        bad = np.argwhere(got != sch["expect"])
        detail = f"{len(bad)} accumulators differ, first at beat/row/col {tuple(bad[0])}"
    return CaseResult(case.name, bool(exact), out["cycles"], sch["model_cycles"], out["stall_cycles"],
                      out["gap_cycles"], out["w_err"], detail, info)


def requant_vectors(n: int = 400, seed: int = 3) -> dict:
    """Random requantization inputs incl. extremes (int32 min/max acc and mult, shift 1 and 31, negative
    mults, residuals of both signs) and the golden bytes."""
    rng = np.random.default_rng(seed)
    i32 = (-(1 << 31), (1 << 31) - 1)
    acc = rng.integers(*i32, size=n, endpoint=True)
    acc[rng.random(n) < 0.5] //= 1 << 16
    mult = rng.integers(*i32, size=n, endpoint=True)
    mult[rng.random(n) < 0.3] //= 1 << 12
    shift = rng.integers(1, 32, size=n)
    res = rng.integers(-128, 256, size=n)
    res_mult = rng.integers(*i32, size=n, endpoint=True)
    has_res = rng.random(n) < 0.5
    uns = rng.random(n) < 0.5
    ext = [(i32[0], i32[0], 31), (i32[0], i32[0], 1), (i32[1], i32[1], 31), (i32[1], i32[1], 1),
           (i32[0], i32[1], 31), (i32[1], i32[0], 1), (i32[0], -1, 1), (-1, -1, 1), (1, 1, 1), (-1, 1, 1),
           (3, 1, 1), (-3, 1, 1), (5, -1, 2), (-5, 1, 2), (0, i32[0], 31), (1 << 30, 1 << 30, 31)]
    for i, (a, m, s) in enumerate(ext):
        acc[i], mult[i], shift[i] = a, m, s
    has_res[:len(ext) // 2] = False
    res[len(ext)] , res_mult[len(ext)], has_res[len(ext)] = -128, i32[0], True
    res[len(ext) + 1], res_mult[len(ext) + 1], has_res[len(ext) + 1] = 255, i32[1], True
    lo = np.where(uns, 0, -128)
    hi = np.where(uns, 255, 127)
    want = np.array([requantize(np.int64(acc[i]), int(mult[i]), int(shift[i]), int(lo[i]), int(hi[i]),
                                res=np.int64(res[i]) if has_res[i] else None,
                                res_mult=int(res_mult[i]) if has_res[i] else None) for i in range(n)], np.int64)
    return dict(acc=acc, mult=mult, shift=shift, res=res, res_mult=res_mult, has_res=has_res.astype(np.int64),
                lo=lo, hi=hi, want=want)


def run_requant_case(work_dir=None, *, n: int = 400, seed: int = 3, p_gap: float = 0.0, p_stall: float = 0.0,
                     name: str = "requant") -> CaseResult:
    work = Path(work_dir or tempfile.mkdtemp(prefix="vqhls_rq_"))
    work.mkdir(parents=True, exist_ok=True)
    vec = requant_vectors(n, seed)
    case_path, result_path = work / "case.npz", work / "result.json"
    if result_path.exists():
        result_path.unlink()
    np.savez(case_path, **vec, p_gap=np.float64(p_gap), p_stall=np.float64(p_stall), seed=np.int64(seed),
             max_cycles=np.int64(4 * n + 1000))
    src = write_rtl("requant", EngineConfig(), work)
    res = run_cocotb([src], "vqhls_requant", TB_MODULE, build_dir=work / "sim", testcase="requant_case",
                     extra_env={"VQHLS_CASE": str(case_path), "VQHLS_RESULT": str(result_path)})
    model = cycle_formulas.requant_cycles(n)
    if res.failed or not result_path.is_file():
        return CaseResult(name, False, -1, model, detail=res.summary())
    out = json.loads(result_path.read_text())
    got = np.array(out["bytes"], np.int64)
    want = vec["want"] & 0xFF
    exact = got.shape == want.shape and np.array_equal(got, want)
    detail = "" if exact else f"{int((got != want).sum()) if got.shape == want.shape else 'shape'} bytes differ"
    return CaseResult(name, bool(exact), out["cycles"], model, out["stall_cycles"], out["gap_cycles"], 0, detail)


_SPARSE24 = EngineConfig()                  # 8x8, 8 lanes, 2:4 (the PYNQ-Z2 build)
_SPARSE14 = EngineConfig(n=1, m=4)          # 8x8, 8 lanes, 1:4
_DENSE = EngineConfig(n=4, m=4)             # 8x8, 8 lanes, dense build (no muxes)

# name -> (engine, seed, random_conv_case keywords): small shapes, each built only when asked for
RANDOM_CASES: dict[str, tuple[EngineConfig, int, dict]] = {
    "2:4 8x8x8 mvq 6x6x16->16 3x3": (_SPARSE24, 11, dict(H=6, W=6, C=16, OC=16, in_unsigned=1)),
    "1:4 8x8x8 mvq 5x9x8->12 3x3": (_SPARSE14, 12, dict(H=5, W=9, C=8, OC=12)),
    "4:4 dense 8x8x8 5x5x12->8 3x3 int8": (_DENSE, 13, dict(H=5, W=5, C=12, OC=8, wfmt="dense")),
    "1:4 4x4x4 mvq 11x11x8->8 s2, 3 pixel tiles": (SMALL_CFG, 14, dict(H=11, W=11, C=8, OC=8, stride=2,
                                                                      in_unsigned=1)),
    # the weight feeder's other paces: a column of two codewords (1 column/cycle), of four (1 per 2 cycles)
    "2:4 8x8x8 mvq d4 4x12x16->8 3x3": (_SPARSE24, 16, dict(H=4, W=12, C=16, OC=8, d=4)),
    "1:2 8x8x8 mvq d2 3x3x8->16 1x1": (EngineConfig(n=1, m=2), 17, dict(H=3, W=3, C=8, OC=16, K=1, pad=0, d=2)),
    "2:4 8x8x8 back-pressure": (_SPARSE24, 15, dict(H=6, W=6, C=16, OC=16, p_gap=0.3, p_stall=0.3)),
}
BACK_PRESSURE_CASE = "2:4 8x8x8 back-pressure"


def random_case(name: str) -> ConvCase:
    """The RANDOM_CASES entry ``name``, built."""
    engine, seed, kw = RANDOM_CASES[name]
    return random_conv_case(name, engine, seed, **kw)


def standard_cases(program_dir: Path) -> list[ConvCase]:
    """Every case, in the printed order: the random ones, the default model's layer (``program_dir``:
    flow.rtl.default_program), back-pressure last."""
    cases = [random_case(n) for n in RANDOM_CASES if n != BACK_PRESSURE_CASE]
    dm = default_model_case(program_dir)
    if dm is not None:
        cases.append(dm)
    cases.append(random_case(BACK_PRESSURE_CASE))
    return cases


def run_all(program_dir: Path, work_root=None) -> list[CaseResult]:
    """Every conv case (``program_dir``: the default model's build) and the two requantization cases."""
    root = Path(work_root or tempfile.mkdtemp(prefix="vqhls_rtl_all_"))
    out = [run_conv_case(c, root / f"pe{i}") for i, c in enumerate(standard_cases(program_dir))]
    out.append(run_requant_case(root / "rq"))
    out.append(run_requant_case(root / "rq_bp", p_gap=0.3, p_stall=0.3, name="requant back-pressure"))
    return out


def print_table(results: list[CaseResult]) -> bool:
    print(f"{'case':46s} {'bit-exact':9s} {'cycles':>7s} {'model':>7s} {'error':>6s} {'stalls':>6s} {'gaps':>5s}")
    for r in results:
        print(f"{r.name[:46]:46s} {'yes' if r.exact else 'NO':9s} {r.cycles:7d} {r.model_cycles:7d} "
              f"{r.cycle_error:+6d} {r.stall_cycles:6d} {r.gap_cycles:5d}" + (f"  {r.detail}" if r.detail else ""))
    return all(r.exact for r in results)


def engine_model_rows(results: list[CaseResult]) -> list[dict]:
    """The engine cycle model (flow.boards.cycle_model) against the RTL, per pe_array case without back-pressure:
    step periods (swap to swap) measured vs the engine's per-step term, and the whole run."""
    rows = []
    for r in results:
        x = r.extra
        if "engine_cycles" not in x or r.cycles < 0 or r.stall_cycles or r.gap_cycles:
            continue
        meas, eng = x.get("measured_periods", []), x["engine_periods"]
        diff = [e - m for m, e in zip(meas, eng)]
        rows.append({"case": r.name, "steps": x["steps"], "dec": x["dec"], "passes": x["passes"],
                     "periods_equal": sum(d == 0 for d in diff), "periods": len(diff),
                     "period_error_max": max(diff, default=0), "rtl_cycles": r.cycles,
                     "engine_cycles": x["engine_cycles"], "error": x["engine_cycles"] - r.cycles,
                     "error_pct": 100.0 * (x["engine_cycles"] - r.cycles) / r.cycles})
    return rows


def print_engine_model_table(rows: list[dict]) -> None:
    """The cycle-model error table: the engine's model (array terms) vs the RTL's measured cycles."""
    print(f"{'case':46s} {'dec':>4s} {'steps':>6s} {'periods =':>10s} {'max err':>7s} {'RTL':>7s} "
          f"{'engine':>7s} {'error':>6s} {'%':>6s}")
    for w in rows:
        print(f"{w['case'][:46]:46s} {w['dec']:4d} {w['steps']:6d} {w['periods_equal']:4d}/{w['periods']:<5d} "
              f"{w['period_error_max']:+7d} {w['rtl_cycles']:7d} {w['engine_cycles']:7d} {w['error']:+6d} "
              f"{w['error_pct']:+6.2f}")


def main() -> int:
    """Run every case (the default model built first when missing) and print the bit-exact / cycle table;
    exit status 0 when all are bit-exact."""
    results = run_all(default_program_dir())
    ok = print_table(results)
    print("\nengine cycle model (flow.boards.cycle_model: decode prologue + per step max(passes*max(ng, 2), dec))"
          " vs RTL, measured:")
    print_engine_model_table(engine_model_rows(results))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
