"""``python -m flow.rtl`` (``make cosim``): co-simulate the RTL cores against the golden model.

Runs the PE-array / requantization cases (flow.rtl.cosim_cases: random N:M configs, the default
model's codebook layer, back-pressure) and the PQ lookup-engine cases (flow.rtl.pq_cases: PQA's
v=9 K=16, ties, signedness, back-pressure, a planted argmin bug that must be caught) with cocotb
and Icarus Verilog, and prints for each whether the outputs equal the golden model bit for bit and
the measured cycles against the cores' cycle models. Where `vitis_hls` is on PATH it also runs Vitis
HLS C/RTL co-simulation of the HLS engine on the default model's test vectors; otherwise it prints
the skip line and the command. The default model's build (flow.rtl.default_program) comes from the
cache, built there first when missing. Exit status 0 when every case is bit-exact (and the planted bug caught).
"""
from __future__ import annotations

import argparse
import os
import sys

from flow.hls import vendor
from flow.rtl import cosim_cases, engine_report, pq_cases
from flow.rtl.area import AreaError
from flow.rtl.engine_area import RESOURCES, XC7Z020, engine_area, format_rows
from flow.rtl.engine_cases import CASES, engine_case
from flow.rtl.engine_rtl import EngineRtlError
from flow.rtl.default_program import HLS_DIR, default_program_dir

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # inherited by the default-program build (torch) it may run


def parser() -> argparse.ArgumentParser:
    """The command line: ``--no-area`` skips the whole engine's yosys table; ``--help`` prints this and exits
    before any co-simulation."""
    ap = argparse.ArgumentParser(
        prog="python -m flow.rtl",
        description="Co-simulate the RTL cores (PE array, requantization lane, PQ lookup engine) against the "
                    "golden model with cocotb and Icarus Verilog, and the HLS engine with Vitis HLS where "
                    "vitis_hls is on PATH (else the skip line and the command); then the whole RTL engine on every "
                    "model case (Verilator) and its yosys table (cached; the first run synthesizes for about "
                    "twenty minutes). Exit 0 when every case is bit-exact.")
    ap.add_argument("--no-area", action="store_true", help="skip the yosys synthesis of the whole engine")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)   # --help exits here, before any work
    print("== PE array (sparse N:M and dense builds) and requantization lane: RTL vs golden ==")
    pe_ok = cosim_cases.main() == 0
    print()
    print("== PQ lookup engine: RTL vs golden ==")
    pq_ok = pq_cases.main([]) == 0
    print()
    print("== the whole engine in RTL (vqhls_engine_top, Verilator): host calls at its AXI ports vs golden ==")
    engine_ok = True
    for model, method in CASES:
        case = engine_case(model, method)
        try:
            row = engine_report.engine_row(case)
        except EngineRtlError as e:
            print(engine_report.skip_line(model, method, e), flush=True)
            continue
        print(engine_report.engine_line(row), flush=True)
        engine_ok &= row.exact == row.images and all(s == 0 for s in row.status)
    print()
    if not args.no_area:
        print("== yosys synth_xilinx of the whole engine (default PYNQ-Z2 build; cached in .cache/yosys-area) ==")
        try:
            rec = engine_area("default")
        except AreaError as e:
            print(f"yosys area: not run: {e}")
        else:
            print(format_rows(rec))
            t = rec["total"]
            print("yosys total / xc7z020: " + ", ".join(f"{r} {t[r]:g} ({100 * t[r] / XC7Z020[r]:.1f} %)"
                                                         for r in RESOURCES))
            print("(yosys maps more loosely than Vivado: an upper reference; bench/rtl_engine_area.py has the rest)")
        print()
    build_dir = default_program_dir()
    hls_dir = build_dir / HLS_DIR
    cmd = vendor.vitis_command(hls_dir, csim=False, synth=True, cosim=True, export=False, impl=False)
    res = vendor.run_or_skip("vitis_hls", cmd, hls_dir, build_dir / "vitis_cosim.log")
    print(f"Vitis HLS C/RTL co-simulation of the engine: {res.message}")
    ok = pe_ok and pq_ok and engine_ok and (not res.ran or res.returncode == 0)
    print("cosim: all bit-exact" if ok else "cosim: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
