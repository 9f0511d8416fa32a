"""yosys area of the RTL cores at equal effective throughput: dense vs 2:4 vs 1:4 PE arrays, and the
PQ lookup engine vs a dense MAC array on ResNet20's 64->64 3x3 layers, with and without DSP inference.

    python bench/area.py [--rows R] [--no-plot]

Every area number here (the columns without a model_ prefix) is a yosys 0.x ``synth_xilinx -family xc7 -flatten -noiopad -noclkbuf [-nodsp]``
cell count (flow/rtl/area.py) of a core rendered from hls_templates/rtl/ (flow/rtl/render.py): a
technology-mapped netlist before place and route, not a Vivado utilisation report. Beside each
array row the analytic model of flow/boards/resource_model.py (the same units: products, muxes, adder
trees, decoder, accumulators) is shown for comparison.

Equal effective throughput, arrays. Throughput is counted in DENSE MACs per cycle: the multiply-
accumulates of the unpruned layer that a cycle retires. Every build has the same geometry
ROWS x COLS PEs x LANES lanes: each cycle each row receives LANES input channels and each PE
covers all LANES of them for its output channel, so every build retires ROWS*COLS*LANES dense MACs
per cycle. A dense PE (N == M) does that with LANES multipliers; an N:M PE with LANES*N/M
multipliers (its M:1 muxes route the N kept activations of every group of M to them), because the
other LANES*(M-N)/M weights are zeros of an N:M-pruned layer. So 2:4 needs half, 1:4 a quarter of
the multipliers for the same dense-MAC throughput, and pays an M:1 mux of 9 bits per multiplier
(plus a wider weight decoder). (A dense model does NOT run at that rate on a sparse build: the
equality holds for layers pruned to N:M, which is what MVQ's claim compares.)

Equal throughput, lookup vs MAC (ResNet20, a 64->64 3x3 layer, stride 1; per output pixel):
* MAC: 3*3*64 = 576 MACs per output channel, 576*64 = 36,864 MACs per pixel; a dense array of
  ROWS x COLS x LANES retires ROWS*COLS*LANES per cycle at full utilisation (64 and 576 are
  multiples of COLS and LANES), so cycles/pixel = 36,864 / (ROWS*COLS*LANES).
* PQ (v=9, K=16): the 576-element patch is 64 subspaces. vqhls_pq_engine takes one patch element
  per cycle (K distance units in parallel: v cycles per subspace) and accumulates OC_LANES = COLS
  LUT entries per cycle (ceil(OC / COLS) cycles per subspace); encoder and lookup overlap through
  its code queue, so cycles/pixel = subspaces * max(v, ceil(OC / COLS)) = 64 * max(9, 8) = 576
  at COLS = 8 (pq_model_cycles_per_pixel). The MAC array is then sized (its ROWS) to the closest
  pixels per cycle: 36,864 / 576 = 64 MACs/cycle = a dense 1 x 8 x 8 array, an exact match.
  Performance per area = MODELLED pixels per cycle (the formulas above, not simulated) / MEASURED
  (yosys) slice LUTs (LUT + LUTRAM + SRL): column model_perf_per_yosys_lut, in the table relative
  to the MAC array; DSPs and BRAMs are listed beside it, not folded in (the -nodsp rows are the
  all-fabric comparison). What each core contains: the PE array holds its stationary weights
  (COLS x LANES bytes) and accumulators, not the layer's weight memory; the lookup engine holds
  its prototype, LUT (lut_bytes = 32 KB of the layer's 128 KB LUT: the rest streams) and
  accumulator memories, hence its BRAMs.

Writes RESULTS/ (bench/results, or $VQHLS_BENCH_OUT: ``make bench`` puts build/bench there) area.json and area.png.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, save, table  # noqa: E402
from flow.boards import resource_model as rm  # noqa: E402
from flow.compile.engine import EngineConfig  # noqa: E402
from flow.rtl.area import AreaError, synth_area, yosys_version  # noqa: E402
from flow.rtl.engine_area import netlist_facts  # noqa: E402
from flow.rtl.render import write_rtl  # noqa: E402

BUILD = Path(__file__).resolve().parent.parent / "build" / "area"
COLS = LANES = 8
SPARSITY = ((4, 4), (2, 4), (1, 4))          # dense, 2:4, 1:4
# the array forms: (unit, top, form); the row-mux form (issue 22) only for sparse builds
FORMS = (("pe_array", "vqhls_pe_array", "per-PE mux"), ("pe_array_rowmux", "vqhls_pe_array_rowmux", "row mux"))
# ResNet20's 64->64 3x3 layers
LAYER = dict(cin=64, cout=64, k=3)
PQ_V, PQ_K = 9, 16


# ---- helpers -------------------------------------------------------------------------------------
def synth_unit(unit: str, engine: EngineConfig, top: str, nodsp: bool, netlist: bool = False) -> dict:
    """yosys cell counts (MEASURED) of core ``unit`` rendered for ``engine`` (``netlist``: keep the mapped
    netlist too, for the logic depth)."""
    out = BUILD / f"{unit}-{engine.hash()}"
    path = write_rtl(unit, engine, out)
    return synth_area(path, top, nodsp=nodsp, netlist=netlist)


def depth_of(a: dict, top: str) -> dict:
    """The longest path of a synthesized core in logic levels (flow.rtl.engine_area.netlist_facts on its mapped
    netlist: LUT, MUXF7/8, CARRY4 and LUTRAM reads between registers, DSP48E1s with PREG, top-level ports), its
    LUT levels, and where it starts and ends."""
    d = netlist_facts(a["netlist"], top)["depth"]
    lv = d["levels"] or {}
    where = f"{lv.get('start', {}).get('net', '?')} -> {lv.get('end', {}).get('net', '?')}" if lv else ""
    return {"depth": lv.get("levels"), "depth_lut": (d["lut_levels"] or {}).get("lut_levels"), "depth_path": where}


def lut_total(a: dict) -> int:
    """Slice LUTs: logic LUTs + LUT sites used as distributed RAM + SRLs."""
    return a["lut"] + a.get("lutram_luts", 0) + a.get("srl", 0)


def array_engine(rows: int, n: int, m: int, *, dsp: bool) -> EngineConfig:
    return EngineConfig(rows=rows, cols=COLS, lanes=LANES, n=n, m=m, d_max=max(8, m),
                        dsp_rows=rows if dsp else 0)


def model_array(e: EngineConfig) -> dict:
    """resources.py's units that the pe_array core contains: products (DSP / fabric), muxes, adder
    trees + accumulate, weight decoder, and ONE accumulator bank (rows*cols x acc_groups x 32, the
    engine's ping-pong has two)."""
    return _model(e, rm.unit_array_mux(e))


def _model(e: EngineConfig, mux) -> dict:
    """Central values of the resource model's array units (products in fabric, ``mux``, adder trees, decoder)
    and one accumulator bank."""
    units = [rm.unit_array_fabric(e), mux, rm.unit_array_adders(e), rm.unit_decoder(e)]
    acc = rm.memory("acc", e.rows * e.cols, e.acc_groups, rm.ACC_BITS, "s2p")
    return {"lut": round(sum(u.lut.central for u in units) + acc.luts), "ff": round(sum(u.ff.central for u in units)),
            "dsp": rm.dsp_products(e)}


# ---- part 1: dense vs N:M arrays -------------------------------------------------------------------
def bench_arrays(rows: int) -> list[dict]:
    out = []
    for nodsp in (False, True):
        for (n, m), (unit, top, form) in ((nm, f) for nm in SPARSITY for f in FORMS):
            if n == m and unit != "pe_array":
                continue
            e = array_engine(rows, n, m, dsp=not nodsp)
            t0 = time.perf_counter()
            a = synth_unit(unit, e, top, nodsp, netlist=True)
            mod = model_array(e) if unit == "pe_array" else model_rowmux(e)
            build = "dense" if n == m else f"{n}:{m}" + (" row-mux" if unit != "pe_array" else "")
            out.append({
                "part": "array", "build": build, "form": "dense" if n == m else form, "nodsp": nodsp,
                "rows": rows, "cols": COLS, "lanes": LANES, "n": n, "m": m,
                "multipliers": e.multipliers, "dense_macs_per_cycle": rows * COLS * LANES,
                "lut": a["lut"], "lut_total": lut_total(a), "lutram_luts": a["lutram_luts"], "ff": a["ff"],
                "carry4": a["carry4"], "dsp": a["dsp"], "bram18": a["bram18"], "bram36": a["bram36"],
                "muxf7": a["muxf7"], "muxf8": a["muxf8"],
                "model_lut": mod["lut"], "model_ff": mod["ff"], "model_dsp": mod["dsp"],
                **depth_of(a, top),
                "yosys_s": a["runtime_s"], "cached": a["cached"], "wall_s": round(time.perf_counter() - t0, 2),
                "cells": a["cells"],
            })
            print(f"  {unit} {out[-1]['build']:>11} {'-nodsp' if nodsp else 'dsp   '}: "
                  f"yosys {a['runtime_s']:.1f} s{' (cached)' if a['cached'] else ''}", flush=True)
    for r in out:
        base = next(x for x in out if x["nodsp"] == r["nodsp"] and x["n"] == x["m"])
        r["lut_vs_dense"] = r["lut_total"] / base["lut_total"] if base["lut_total"] else math.nan
        r["ff_vs_dense"] = r["ff"] / base["ff"] if base["ff"] else math.nan
        r["dsp_vs_dense"] = r["dsp"] / base["dsp"] if base["dsp"] else math.nan
    return out


def model_rowmux(e: EngineConfig) -> dict:
    """The resource model of the row-mux array when flow/boards/resource_model.py has one (``unit_array_rowmux``:
    the same units as model_array with ROWS x SLOTS compaction muxes instead of the per-PE ones); otherwise
    no model (None)."""
    f = getattr(rm, "unit_array_rowmux", None)
    if f is None:
        return {"lut": None, "ff": None, "dsp": None}
    return _model(dataclasses.replace(e, row_mux=True), f(dataclasses.replace(e, row_mux=True)))


# ---- part 2: lookup engine vs MAC array ----------------------------------------------------------
def pq_model_cycles_per_pixel(e: EngineConfig) -> dict:
    """The lookup engine's cycles per output pixel of the 64->64 3x3 layer (modelled).

    subspaces = 3*3*64 / v; encode: the K distance units take one element of the subvector per cycle
    (v cycles per subspace); lookup: COLS LUT entries accumulated per cycle (OC / COLS cycles per
    subspace); the two overlap (encoder of subspace s+1 runs during the lookup of s), so cycles =
    subspaces * max(v, ceil(OC / COLS))."""
    d = LAYER["k"] * LAYER["k"] * LAYER["cin"]
    subspaces = d // PQ_V
    enc = subspaces * PQ_V
    look = subspaces * math.ceil(LAYER["cout"] / e.cols)
    return {"subspaces": subspaces, "encode": enc, "lookup": look, "cycles": max(enc, look)}


def mac_model_cycles_per_pixel(e: EngineConfig) -> float:
    """The dense MAC array's cycles per output pixel of the layer at full utilisation (modelled)."""
    return LAYER["k"] * LAYER["k"] * LAYER["cin"] * LAYER["cout"] / (e.rows * e.cols * e.lanes)


def bench_pq() -> tuple[list[dict], dict]:
    pq_e = EngineConfig(rows=1, cols=COLS, lanes=LANES, n=4, m=4, dsp_rows=0, pq=True, pq_v_max=PQ_V, pq_k_max=PQ_K,
                        pq_subspaces_max=64)
    pc = pq_model_cycles_per_pixel(pq_e)
    # the MAC array whose cycles/pixel are closest to the PQ engine's: rows from 36864 / (cycles * C * L)
    want_rows = LAYER["k"] ** 2 * LAYER["cin"] * LAYER["cout"] / (pc["cycles"] * COLS * LANES)
    mac_rows = max(1, round(want_rows))
    method = {
        "layer": "64->64 3x3 (ResNet20 stage 3), per output pixel",
        "pq": f"v={PQ_V}, K={PQ_K}: {pc['subspaces']} subspaces; encode {pc['encode']} cycles "
              f"(1 element/cycle, K units in parallel), lookup {pc['lookup']} cycles ({COLS} OC per cycle); "
              f"pipelined: {pc['cycles']} cycles/pixel",
        "mac": f"576 x 64 = 36864 MACs/pixel on a dense {mac_rows}x{COLS}x{LANES} array "
               f"({mac_rows * COLS * LANES} MACs/cycle): {mac_model_cycles_per_pixel(array_engine(mac_rows, 4, 4, dsp=True)):g} cycles/pixel",
        "want_mac_rows": want_rows,
    }
    rows = []
    for nodsp in (False, True):
        me = array_engine(mac_rows, 4, 4, dsp=not nodsp)
        for kind, e, unit, top, cyc in (
                ("MAC (dense array)", me, "pe_array", "vqhls_pe_array", mac_model_cycles_per_pixel(me)),
                ("PQ lookup", pq_e, "pq_engine", "vqhls_pq_engine", pc["cycles"])):
            a = synth_unit(unit, e, top, nodsp)
            print(f"  {unit} {'-nodsp' if nodsp else 'dsp   '}: yosys {a['runtime_s']:.1f} s"
                  f"{' (cached)' if a['cached'] else ''}", flush=True)
            rows.append({"part": "pq_vs_mac", "build": kind, "nodsp": nodsp, "model_cycles_per_pixel": cyc,
                         "model_pixels_per_kcycle": 1000.0 / cyc, "lut": a["lut"], "lut_total": lut_total(a),
                         "lutram_luts": a["lutram_luts"], "ff": a["ff"], "carry4": a["carry4"],
                         "dsp": a["dsp"], "bram18": a["bram18"], "bram36": a["bram36"],
                         "yosys_s": a["runtime_s"], "cached": a["cached"], "cells": a["cells"]})
    for r in rows:
        mac = next(x for x in rows if x["nodsp"] == r["nodsp"] and x["build"].startswith("MAC"))
        # modelled throughput over measured area: the two sources stay visible in the name
        r["model_perf_per_yosys_lut"] = r["model_pixels_per_kcycle"] / r["lut_total"]
        r["model_perf_per_yosys_lut_vs_mac"] = r["model_perf_per_yosys_lut"] / mac["model_perf_per_yosys_lut"]
    return rows, method


# ---- report --------------------------------------------------------------------------------------
ARRAY_COLS = ["build", "nodsp", "multipliers", "dense_macs_per_cycle", "lut", "lutram_luts", "lut_total",
              "lut_vs_dense", "ff", "ff_vs_dense", "carry4", "dsp", "depth", "depth_lut", "model_lut", "model_ff",
              "model_dsp", "yosys_s"]
PQ_COLS = ["build", "nodsp", "model_cycles_per_pixel", "lut", "lutram_luts", "lut_total", "ff", "carry4", "dsp",
           "bram18", "bram36", "model_perf_per_yosys_lut_vs_mac", "yosys_s"]
# which result columns are measured (yosys on the rendered RTL) and which modelled (formulas, no synthesis)
COLUMNS = {
    "measured": "lut, lut_total, lutram_luts, ff, carry4, dsp, bram18, bram36, muxf7, muxf8, cells, yosys_s: "
                "yosys synth_xilinx cell counts of the rendered core; *_vs_dense are ratios of them; depth, "
                "depth_lut, depth_path: the longest path of the mapped netlist in logic levels / LUT levels "
                "(flow.rtl.engine_area.netlist_facts; top-level ports count as path ends)",
    "modelled": "model_lut, model_ff, model_dsp: flow/boards/resource_model.py; model_cycles_per_pixel, "
                "model_pixels_per_kcycle: the analytic cycle counts of pq_model_cycles_per_pixel / "
                "mac_model_cycles_per_pixel, not simulated",
    "mixed": "model_perf_per_yosys_lut = model_pixels_per_kcycle / lut_total (modelled throughput over "
             "measured slice LUTs); _vs_mac: relative to the MAC array's",
}


def _pct(ratio: float) -> str:
    return f"{100 * (1 - ratio):.0f}% smaller" if ratio <= 1 else f"{100 * (ratio - 1):.0f}% larger"


def comparison(arrays: list[dict], pq: list[dict]) -> list[str]:
    """Each sparse build against the dense one, and the lookup engine against the MAC array, in words."""
    lines = []
    for nodsp in (False, True):
        d = {r["build"]: r for r in arrays if r["nodsp"] == nodsp}
        tag = "-nodsp (every multiplier in LUTs)" if nodsp else "DSP inference"
        for b in ("2:4", "2:4 row-mux", "1:4", "1:4 row-mux"):
            if b in d:
                r = d[b]
                line = (f"{tag}: {b} vs dense at equal dense-MAC throughput: slice LUT {_pct(r['lut_vs_dense'])}, "
                        f"FF {_pct(r['ff_vs_dense'])}")
                if not nodsp:
                    line += f", DSP48E1 {_pct(r['dsp_vs_dense'])}"
                pe = d.get(b.split()[0]) if b.endswith("row-mux") else None
                if pe:
                    line += (f"; vs the per-PE-mux {pe['build']}: slice LUT {_pct(r['lut_total'] / pe['lut_total'])}, "
                             f"FF {_pct(r['ff'] / pe['ff'])}, logic depth {r['depth']} vs {pe['depth']} levels")
                lines.append(line)
    for nodsp in (False, True):
        p = next((r for r in pq if r["nodsp"] == nodsp and r["build"] == "PQ lookup"), None)
        m = next((r for r in pq if r["nodsp"] == nodsp and r["build"].startswith("MAC")), None)
        if p and m:
            lines.append(f"{'-nodsp' if nodsp else 'DSP inference'}: PQ lookup vs MAC array at "
                         f"{p['model_cycles_per_pixel']:g} vs {m['model_cycles_per_pixel']:g} modelled cycles/pixel: "
                         f"modelled performance per measured slice LUT "
                         f"x{p['model_perf_per_yosys_lut_vs_mac']:.2f} "
                         f"({100 * (p['model_perf_per_yosys_lut_vs_mac'] - 1):+.0f}%); "
                         f"DSP {p['dsp']} vs {m['dsp']}, BRAM (RAMB18 + 2 x RAMB36) {p['bram18'] + 2 * p['bram36']} vs "
                         f"{m['bram18'] + 2 * m['bram36']}")
    return lines


def plot(arrays: list[dict], pq: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    builds = [b for b in ("dense", "2:4", "2:4 row-mux", "1:4", "1:4 row-mux") if any(r["build"] == b for r in arrays)]
    w = 0.2
    for i, (nodsp, key, label) in enumerate(((False, "lut_total", "LUT (DSP inferred)"),
                                             (False, "dsp", "DSP48E1 (DSP inferred)"),
                                             (True, "lut_total", "LUT (-nodsp)"), (True, "ff", "FF (-nodsp)"))):
        vals = [next(r[key] for r in arrays if r["build"] == b and r["nodsp"] == nodsp) for b in builds]
        xs = [j + (i - 1.5) * w for j in range(len(builds))]
        bars = ax.bar(xs, vals, w, label=label)
        ax.bar_label(bars, fmt="%d", fontsize=6, rotation=90)
    ax.set_yscale("log")
    ax.set_xticks(range(len(builds)), [f"{b}\n{next(r['multipliers'] for r in arrays if r['build'] == b)} mult"
                                       for b in builds])
    r0 = arrays[0]
    ax.set_title(f"PE array {r0['rows']}x{r0['cols']}x{r0['lanes']}, {r0['dense_macs_per_cycle']} dense MAC/cycle each")
    ax.legend(fontsize=7)
    ax = axes[1]
    labels = [f"{r['build']}\n{'-nodsp' if r['nodsp'] else 'DSP'}" for r in pq]
    vals = [r["model_perf_per_yosys_lut_vs_mac"] for r in pq]
    ax.bar(range(len(pq)), vals, color=["C0" if r["build"].startswith("MAC") else "C1" for r in pq])
    ax.axhspan(1.40, 2.04, color="grey", alpha=0.2, label="PQA claim: +40..104%")
    ax.set_xticks(range(len(pq)), labels, fontsize=7)
    ax.set_ylabel("modelled pixels/cycle per yosys LUT, relative to MAC")
    ax.set_title("64->64 3x3 layer: lookup vs MAC at equal throughput")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4, help="array rows (COLS = LANES = 8)")
    ap.add_argument("--no-plot", action="store_true", help="write the JSON only, no PNG")
    ap.add_argument("--arrays-only", action="store_true",
                    help="synthesize the array rows only; the lookup-vs-MAC rows are copied from the existing "
                         "RESULTS/area.json (their yosys counts as measured then; marked pq_from_previous_run)")
    a = ap.parse_args()
    try:
        version = yosys_version()
    except AreaError as e:
        print(f"skipped: {e}")
        return 1
    t0 = time.perf_counter()
    print(f"{version}; synth_xilinx -family xc7 -flatten -noiopad -noclkbuf [-nodsp]")
    arrays = bench_arrays(a.rows)
    prev = None
    if a.arrays_only:
        import json
        prev = json.loads((RESULTS / "area.json").read_text())
        pq, method = prev["pq_vs_mac"], prev["pq_method"]
    else:
        pq, method = bench_pq()
    print()
    print("Equal effective throughput: every array below retires ROWS*COLS*LANES dense MACs per cycle on an\n"
          "N:M-pruned layer (a dense PE uses LANES multipliers; an N:M PE LANES*N/M multipliers behind M:1\n"
          "muxes, skipping the zeros). model_* = flow/boards/resource_model.py for the same units.")
    print(table(arrays, ARRAY_COLS))
    print()
    print("Lookup vs MAC, method:")
    for k, v in method.items():
        print(f"  {k}: {v}")
    print(table(pq, PQ_COLS))
    print()
    cmp = comparison(arrays, pq)
    for line in cmp:
        print(line)
    total = time.perf_counter() - t0
    ys = sum(r["yosys_s"] for r in arrays + pq)
    print(f"\nyosys time (sum of runs, cached ones as first measured): {ys:.1f} s; this run's wall time {total:.1f} s")
    payload = {"yosys": version, "script": "synth_xilinx -family xc7 -flatten -noiopad -noclkbuf [-nodsp]; stat -json",
               "equal_throughput": "dense MACs per cycle = ROWS*COLS*LANES for every N:M build (N:M-pruned layers)",
               "arrays": arrays, "pq_vs_mac": pq, "pq_method": method, "comparison": cmp, "columns": COLUMNS,
               "claims": {"mvq": "sparse systolic array 55% smaller than the dense EWS baseline",
                          "pqa": "lookup engine 40-104% more performance per area than a MAC engine (ResNet20)"},
               "yosys_s_total": ys, "wall_s": total}
    if prev is not None:
        payload["pq_from_previous_run"] = {"machine": prev.get("machine"), "pq_from_previous_run":
                                           prev.get("pq_from_previous_run")}
    print("wrote", save("area", payload, __file__))
    if not a.no_plot:
        plot(arrays, pq, RESULTS / "area.png")
        print("wrote", RESULTS / "area.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
