"""Co-simulation cases of the RTL PQ core: build a case, run the cocotb testbench
(flow/rtl/tb/pq_engine.py) on the rendered ``vqhls_pq_engine``, compare its accumulators bit for
bit with the golden ``flow.quant.ops.pq_conv`` (before requantization) and its cycles with
``flow.rtl.pq_model``.

    python -m flow.rtl.pq_cases [--out DIR]      # what ``make cosim`` runs for the PQ core

A case file (npz) holds x [H,W,C], proto [Cs,K,v], lut [Cs,K,OC], bias [OC], the geometry and the
stream handshake probabilities; the testbench writes acc [npix, NOT*OC_LANES] and its edge counts.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flow.boards.cycle_model import pq_pixel_cycles
from flow.compile.engine import EngineConfig
from flow.quant.ops import im2col, out_size, pq_conv, pq_distances
from flow.rtl import pq_model
from flow.rtl.cosim import read_results, run_cocotb
from flow.rtl.render import render_rtl

TB_MODULE = "flow.rtl.tb.pq_engine"
TOPLEVEL = "vqhls_pq_engine"


@dataclass(frozen=True)
class PQCase:
    name: str
    H: int
    W: int
    C: int
    OC: int
    v: int
    K: int                      # prototypes of the op (cfg_k)
    KH: int = 3
    stride: int = 1
    pad: int = 1
    in_unsigned: int = 0
    p_in: float = 1.0           # probability the element stream is valid in a cycle
    p_out: float = 1.0          # probability the accumulator stream is ready in a cycle
    engine: dict = field(default_factory=dict)   # EngineConfig overrides of the build
    seed: int = 0

    @property
    def config(self) -> EngineConfig:
        return EngineConfig(**self.engine)

    @property
    def nsub(self) -> int:
        return self.KH * self.KH * self.C // self.v

    @property
    def OH(self) -> int:
        return out_size(self.H, self.KH, self.stride, self.pad)

    @property
    def OW(self) -> int:
        return out_size(self.W, self.KH, self.stride, self.pad)


CASES = [
    PQCase("pqa_v9_k16", H=4, W=4, C=16, OC=16, v=9, K=16, seed=1),                 # PQA's layer shape
    PQCase("unsigned_v4_k8_s2", H=5, W=5, C=8, OC=20, v=4, K=8, stride=2, in_unsigned=1, seed=2),
    PQCase("lookup_bound_v2_k16", H=3, W=3, C=4, OC=40, v=2, K=16, seed=3),         # NOT = 5 > v
    PQCase("backpressure_v9_k16", H=4, W=4, C=16, OC=16, v=9, K=16, p_in=0.7, p_out=0.3, seed=4),
    PQCase("k5_build_linear_v3", H=4, W=4, C=6, OC=8, v=3, K=5, KH=1, pad=0, engine={"pq_k_max": 5},
           seed=5),                                                                  # K not a power of 2
    PQCase("corner_v1_nsub1", H=4, W=4, C=1, OC=8, v=1, K=16, KH=1, pad=0, seed=6),  # 1 element per pixel:
                                           # a pixel waits for the drain of the one two before (bank claim)
    PQCase("fwd_v1_not1", H=4, W=4, C=4, OC=8, v=1, K=16, KH=1, pad=0, seed=7),      # back-to-back lookups of
                                           # the same acc tile: the read-after-write forwarding
    PQCase("short_px_backpressure", H=4, W=4, C=2, OC=16, v=1, K=16, KH=1, pad=0, p_out=0.25, seed=8),
                                           # the drain held back: a pixel must not overwrite an undrained bank
]
BUG_CASE = PQCase("bug_argmin_le", H=4, W=4, C=16, OC=16, v=9, K=16, seed=1)


def make_arrays(case: PQCase) -> dict[str, np.ndarray]:
    """Random op with planted ties: duplicate prototypes (k1 < k2), mirrored +p / -p pairs (signed),
    and some input pixels copied from prototype subvectors so that ties are actually the minimum."""
    rng = np.random.default_rng(case.seed)
    lo, hi = (0, 255) if case.in_unsigned else (-128, 127)
    Cs = case.nsub
    proto = rng.integers(lo, hi + 1, size=(Cs, case.K, case.v))
    for s in range(Cs):
        if case.K >= 2:   # duplicates k1 < k2; unsigned: small values, so all-zero (padding) subvectors pick them
            k1, k2 = sorted(int(k) for k in rng.choice(case.K, size=2, replace=False))
            if case.in_unsigned:
                proto[s, k1] = rng.integers(0, 3, size=case.v)
            proto[s, k2] = proto[s, k1]
            if not case.in_unsigned and case.K >= 4:   # mirrored small pair k3 < k4: padding ties them
                others = [k for k in range(case.K) if k not in (k1, k2)]
                k3, k4 = sorted(int(k) for k in rng.choice(others, size=2, replace=False))
                proto[s, k3] = rng.integers(-2, 3, size=case.v)
                proto[s, k3, 0] = 1
                proto[s, k4] = -proto[s, k3]
    x = rng.integers(lo, hi + 1, size=(case.H, case.W, case.C))
    # pull some input bytes onto duplicated prototypes: with KH = 1 a subvector is a slice of one pixel
    if case.KH == 1 and case.C % case.v == 0:
        for ih in range(case.H):
            for iw in range(case.W):
                if rng.random() < 0.5:
                    s = int(rng.integers(Cs))
                    dup = [k for k in range(case.K) for k2 in range(k) if np.array_equal(proto[s, k], proto[s, k2])]
                    if dup:
                        x[ih, iw, s * case.v:(s + 1) * case.v] = proto[s, dup[0]]
    lut = rng.integers(-32767, 32768, size=(Cs, case.K, case.OC))
    bias = rng.integers(-(1 << 20), 1 << 20, size=case.OC)
    return {"x": x, "proto": proto, "lut": lut, "bias": bias}


def golden(case: PQCase, arr: dict) -> np.ndarray:
    acc = pq_conv(arr["x"][None], arr["proto"], arr["lut"], arr["bias"], case.KH, case.KH, case.stride, case.pad)
    return acc[0].reshape(-1, case.OC)


def count_ties(case: PQCase, arr: dict) -> int:
    """Subvectors whose minimal distance is reached by two or more prototypes."""
    a = im2col(arr["x"][None], case.KH, case.KH, case.stride, case.pad).reshape(-1, case.nsub, case.v)
    d = pq_distances(a, arr["proto"])
    return int(((d == d.min(-1, keepdims=True)).sum(-1) > 1).sum())


def write_case(case: PQCase, arr: dict, path: Path, result: Path) -> None:
    np.savez(path, **arr, KH=case.KH, KW=case.KH, stride=case.stride, pad=case.pad, in_unsigned=case.in_unsigned,
             p_in=case.p_in, p_out=case.p_out, seed=case.seed, oc_lanes=case.config.cols, result=str(result))


def run_case(case: PQCase, work: Path, *, argmin_le: bool = False, simulator: str | None = None) -> dict:
    """Render, simulate, compare. Returns the figures (bit_exact, mismatches, cycles, model, formula, ...)."""
    work = Path(work) / case.name
    work.mkdir(parents=True, exist_ok=True)
    engine = case.config
    src = work / "vqhls_pq_engine.v"
    src.write_text(render_rtl("pq_engine", engine, **({"bug": "argmin_le"} if argmin_le else {})))
    arr = make_arrays(case)
    case_path, result_path = work / "case.npz", work / "result.npz"
    if result_path.exists():
        result_path.unlink()
    write_case(case, arr, case_path, result_path)
    try:
        res = run_cocotb([src], TOPLEVEL, TB_MODULE, build_dir=work / "sim", simulator=simulator,
                         extra_env={"VQHLS_PQ_CASE": str(case_path)})
    except SystemExit:   # under pytest the cocotb runner exits on a failed cocotb test: read its verdict
        res = read_results(work / "sim" / "results.xml")
    out: dict = {"case": case.name, "cocotb": res.summary(), "tb_passed": res.failed == 0 and res.passed > 0}
    if not result_path.exists():
        out.update(bit_exact=False, mismatches=-1)
        return out
    r = np.load(result_path)
    NOT = pq_model.n_tiles(case.OC, engine)
    npix = case.OH * case.OW
    acc = r["acc"].astype(np.int64)[:, :case.OC]
    ref = golden(case, arr)
    mism = int((acc != ref).sum()) if acc.shape == ref.shape else -1
    sched = pq_model.schedule(engine, v=case.v, nsub=case.nsub, NOT=NOT, npix=npix)
    formula = pq_model.total_cycles(engine, v=case.v, nsub=case.nsub, NOT=NOT, npix=npix)
    cycles = int(r["cycles"])
    lat = pq_model.pixel_latency(engine, NOT=NOT)
    # the HLS engine's model of the same layer (flow.boards.cycle_model, LUT on chip): its pixels do not overlap and
    # it requantizes in one lane, so it is compared per pixel with the RTL's steady state
    eng_px = pq_pixel_cycles(case.v, case.nsub, NOT, case.OC)
    out.update(engine_per_pixel=eng_px, engine_cycles=npix * eng_px,
               engine_err=(npix * eng_px - cycles) / cycles)
    out.update(bit_exact=mism == 0, mismatches=mism, outputs=int(ref.size), ties=count_ties(case, arr),
               cycles=cycles, model=sched["cycles"], formula=formula, npix=npix, nsub=case.nsub, v=case.v,
               K=case.K, NOT=NOT, cycles_per_pixel=pq_model.cycles_per_pixel(case.v, case.nsub, NOT),
               model_err=(cycles - sched["cycles"]) / sched["cycles"], formula_err=(cycles - formula) / formula,
               first_latency=int(r["first_latency"]), model_first_latency=sched["latencies"][0], idle_latency=lat["first_beat"],
               backpressure=case.p_in < 1 or case.p_out < 1)
    return out


def format_table(rows: list[dict]) -> str:
    head = (f"{'case':24s} {'v':>2s} {'K':>3s} {'nsub':>4s} {'NOT':>3s} {'px':>3s} {'exact':>5s} {'ties':>4s} "
            f"{'cycles':>6s} {'model':>6s} {'err':>7s} {'formula':>7s} {'err':>7s} {'lat':>4s} {'m.lat':>5s} "
            f"{'engine':>7s} {'err':>8s}")
    lines = [head]
    for r in rows:
        if "cycles" not in r:
            lines.append(f"{r['case']:24s} NO RESULT: {r['cocotb']}")
            continue
        lines.append(f"{r['case']:24s} {r['v']:2d} {r['K']:3d} {r['nsub']:4d} {r['NOT']:3d} {r['npix']:3d} "
                     f"{'yes' if r['bit_exact'] else 'NO':>5s} {r['ties']:4d} {r['cycles']:6d} {r['model']:6d} "
                     f"{100 * r['model_err']:6.2f}% {r['formula']:7d} {100 * r['formula_err']:6.2f}% "
                     f"{r['first_latency']:4d} {r['model_first_latency']:5d} "
                     f"{r['engine_cycles']:7d} {100 * r['engine_err']:+7.1f}%"
                     + ("  (back-pressure)" if r["backpressure"] else ""))
    return "\n".join(lines)


def run_all(out_dir: str | None = None, *, with_bug: bool = True) -> list[dict]:
    """Every case (and the planted-bug check); prints bit-exactness and cycle figures."""
    work = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="pq_cosim_"))
    rows = [run_case(c, work) for c in CASES]
    print(format_table(rows))
    print("engine: the HLS engine's cycle model of the same layer (flow.boards.cycle_model.pq_pixel_cycles); err is"
          " engine vs the RTL, measured")
    if with_bug:
        b = run_case(BUG_CASE, work, argmin_le=True)
        print(f"planted bug (argmin <=): {b['mismatches']} of {b.get('outputs', '?')} accumulators differ "
              f"-> {'caught' if b['mismatches'] else 'NOT CAUGHT'}")
        rows.append(b)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    rows = run_all(args.out)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    ok = all(r.get("bit_exact") for r in rows[:len(CASES)]) and rows[-1].get("mismatches", 0) > 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
