"""Open synthesis of the whole RTL engine (vqhls_engine_top) beside the resource model, at the default PYNQ-Z2
geometry and the dense build (issue 20, item 4).

    python bench/rtl_engine_area.py [--builds default dense] [--board pynq-z2]

Every yosys figure is a yosys 0.23 ``synth_xilinx -family xc7 -noiopad -noclkbuf`` cell count of the rendered
RTL (flow/rtl/engine_area.py): the totals, memories and logic depth from the flattened run, the units from
the run with the hierarchy kept; technology-mapped cells before place and route, not a Vivado report. The
modelled figures are flow/boards/resource_model.py's (low / central / high) for the same EngineConfig; the
block design (AXI DMA, SmartConnect, interconnect, reset) exists only in the model and is added to the
yosys total, labelled. Both yosys runs are cached (.cache/yosys-area/), so a rerun only prints.

Writes RESULTS/rtl_engine_area.json (bench/results, or $VQHLS_BENCH_OUT).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save  # noqa: E402
from flow.rtl.area import AreaError, yosys_version  # noqa: E402
from flow.rtl.engine_area import (RESOURCES, XC7Z020, build_config, engine_area, format_rows,  # noqa: E402
                                  multiplies)

# a LUT level with its routing on a -1 xc7z020, for the depth budget (see depth_lines)
NS_PER_LEVEL = (0.5, 0.7)
CLOCK_NS = 10.0


def path_line(p: dict | None) -> str:
    if not p:
        return "none"
    cells = " > ".join(f"{c['type']}" for c in p["cells"])
    return (f"{p['levels']} levels ({p['lut_levels']} LUT) from {p['start']['kind']} {p['start']['unit']}:"
            f"{p['start']['net']} to {p['end']['kind']}.{p['end']['port']} {p['end']['unit']}:{p['end']['net']}"
            f"\n      cells: {cells}")


def depth_lines(d: dict) -> list[str]:
    lo, hi = NS_PER_LEVEL
    return [
        "  longest path by levels (LUT/INV/MUXF7/MUXF8/CARRY4/LUTRAM read/unregistered DSP, one each): "
        + path_line(d["levels"]),
        "  longest path by LUT levels (LUT1..6, INV, LUTRAM read): " + path_line(d["lut_levels"]),
        f"  worst path into a DSP48E1 with AREG=BREG=MREG=0 ({d.get('dsp_unregistered_inputs', 0)} such DSPs; "
        f"the multiplier's delay inside the DSP comes on top): " + path_line(d.get("dsp_entry")),
        f"  endpoints by levels: {d['histogram']}; comb loops: {d['loops']}; unknown cell types: "
        f"{d['unknown_cells'] or 'none'}",
        "  worst path ending in each unit: " + "; ".join(
            f"{u} {r['levels']} ({r['lut_levels']} LUT)" for u, r in d.get("by_unit", {}).items()),
        f"  budget at {CLOCK_NS:g} ns with {lo}-{hi} ns per level (a LUT plus its route, -1 grade): "
        f"{int(CLOCK_NS / hi)}-{int(CLOCK_NS / lo)} levels, minus clock-to-out and setup",
    ]


def memory_lines(mems: dict) -> list[str]:
    out = []
    for name, cells in mems.items():
        out.append(f"  {name}: " + ", ".join(f"{n} {t}" for t, n in sorted(cells.items())))
    return out


def mult_lines(muls: list[dict], src: dict[str, str]) -> tuple[list[str], int]:
    groups: dict[tuple, list] = {}
    for m in muls:
        key = (m["unit"], m["line"], m["a_width"], m["b_width"], m["y_width"], m["a_signed"], m["dsp"])
        groups.setdefault(key, []).append(m)
    lines, total = [], 0
    for (unit, line, aw, bw, yw, sg, dsp), ms in sorted(groups.items()):
        text = src.get(f"vqhls_{unit}.v", "").splitlines()
        code = text[line - 1].strip() if 0 < line <= len(text) else "?"
        total += dsp * len(ms)
        lines.append(f"  {len(ms):>4} x {aw}x{bw}->{yw} {'signed' if sg else 'unsigned'} = {dsp} DSP each  "
                     f"vqhls_{unit}.v:{line}  {code[:70]}")
    return lines, total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--builds", nargs="+", default=["default", "dense"], choices=["default", "dense"],
                    help="the PYNQ-Z2 builds to synthesize: default (2:4 sparse) and / or dense (n == m)")
    ap.add_argument("--board", default="pynq-z2", help="the board whose build and part to use (default pynq-z2)")
    a = ap.parse_args(argv)
    try:
        version = yosys_version()
    except AreaError as e:
        print(f"skipped: {e}")
        return 1
    from flow.rtl.engine_rtl import engine_sources
    t0 = time.perf_counter()
    print(f"{version}; synth_xilinx -family xc7 -top vqhls_engine_top [-flatten] -noiopad -noclkbuf")
    records = []
    for b in a.builds:
        e = build_config(b)
        print(f"\n=== build {b}: {e}", flush=True)
        rec = engine_area(b, a.board)
        muls = multiplies(e)
        mlines, mdsp = mult_lines(muls, engine_sources(e))
        rec["multiplies"] = muls
        rec["dsp_from_multiplies"] = mdsp
        records.append(rec)
        print(f"yosys runs: flat {rec['runtime_s']['flat']:.0f} s{' (cached)' if rec['cached']['flat'] else ''}, "
              f"hierarchy kept {rec['runtime_s']['hier']:.0f} s{' (cached)' if rec['cached']['hier'] else ''}")
        print(format_rows(rec))
        t = rec["total"]
        print(f"yosys flattened total: RAMB36 {t['ramb36']}, RAMB18 {t['ramb18']} (= {t['bram36']:g} BRAM36), "
              f"DSP48E1 {t['dsp']}, LUT {t['lut']} (logic {t['logic_lut']}, LUTRAM {t['lutram']}), FF {t['ff']}, "
              f"CARRY4 {t['carry4']}, MUXF7 {t['muxf7']}, MUXF8 {t['muxf8']}")
        print("yosys total / xc7z020: " + ", ".join(f"{r} {100 * t[r] / XC7Z020[r]:.1f}%" for r in RESOURCES))
        print("memories (flattened netlist: the cells each memory became):")
        print("\n".join(memory_lines(rec["memories"])))
        print(f"multiplies as elaborated (synth_xilinx -flatten -run :map_dsp) and their DSP48E1s by mul2dsp's xc7 tiling: "
              f"{mdsp} DSP (yosys mapped {t['dsp']})")
        print("\n".join(mlines))
        print("logic depth (flattened mapped netlist, between FF / BRAM / registered-DSP / top ports):")
        print("\n".join(depth_lines(rec["depth"])))
    payload = {"yosys": version, "board": a.board, "part": XC7Z020,
               "columns": {"yosys": "yosys 0.23 synth_xilinx cell counts (bram36 = RAMB36 + RAMB18/2; lut = logic "
                                    "LUT + INV + LUTRAM sites + SRL; lutram = LUTRAM sites + SRL)",
                           "modelled": "flow/boards/resource_model.py low/central/high"},
               "builds": records, "wall_s": round(time.perf_counter() - t0, 1)}
    print("\nwrote", save("rtl_engine_area", payload, __file__, argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
