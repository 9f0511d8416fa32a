"""The whole engine in RTL on whole models: bit-exact through AXI, MEASURED cycles per image beside the model.

    python bench/rtl_engine.py [--cases lenet-digits-mvq,resnet20-mvq] [--images N] [--no-plot]

For every case of flow.rtl.engine_cases (lenet-digits mvq / vq / vecq / pq on all 360 digits test images,
resnet20 mvq / vq on 20 Fashion-MNIST images (untrained: see the case's source), ResNet-8 mvq / vq on 8 random
images (untrained, random calibration: no CIFAR-10 here)) the Program is loaded into the Verilator build of
vqhls_engine_top and its images run in one run call, the testbench playing the host at the AXI ports
(flow/rtl/tb/engine_top.py). Per case:

* bit-exact N/N: output bytes np.array_equal to the golden model (flow.compile.program_exec.run_program);
* measured: REAL_CYCLES of the call / images (MEASURED in RTL simulation: the engine's free-running counter),
  and images/s at 100 MHz from it;
* model: flow.boards.cycle_model.image_cycles with the RTL engine's fill depths (flow.rtl.engine_rtl.RTL_DEPTH)
  and with the HLS engine's stated ones (DEPTH, the HLS engine's CYCLES register): MODELLED, with their
  error against the measurement; "corrected" where only the RTL depths bring the model within 5 %.

A case the RTL engine cannot run yet (a PQ op: no lookup unit in the RTL) is listed with the reason, not run.
Writes RESULTS/ (bench/results, or $VQHLS_BENCH_OUT) rtl_engine.json and rtl_engine.png (measured vs
modelled cycles per image, per case).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, save  # noqa: E402
from flow.rtl.engine_cases import CASES, engine_case  # noqa: E402
from flow.rtl.engine_report import EngineRow, engine_line, engine_row, skip_line  # noqa: E402
from flow.rtl.engine_rtl import RTL_DEPTH, EngineRtlError  # noqa: E402
from flow.text_table import format_table  # noqa: E402

CLOCK_MHZ = 100.0


def summary(rows: list[EngineRow]) -> str:
    body = [[r.model, r.method, f"{r.exact}/{r.images}", f"{r.measured:.0f}", f"{CLOCK_MHZ * 1e6 / r.measured:.0f}",
             str(r.model_rtl), f"{100 * r.err_rtl:+.1f}", str(r.model_hls), f"{100 * r.err_hls:+.1f}",
             "corrected" if r.corrected else "as is"] for r in rows]
    return format_table(["model", "method", "bit-exact", "measured cycles/image", "images/s @100MHz",
                         "model (RTL depths)", "err %", "model (HLS depths)", "err %", "model"], body,
                        right=(2, 3, 4, 5, 6, 7, 8))


def plot(rows: list[EngineRow], path: Path) -> None:
    import matplotlib   # deferred: matplotlib, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r.model}\n{r.method}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    w = 0.27
    ax.bar([i - w for i in x], [r.measured for r in rows], w, label="measured (RTL simulation)")
    ax.bar(list(x), [r.model_rtl for r in rows], w, label="modelled, RTL fill depths")
    ax.bar([i + w for i in x], [r.model_hls for r in rows], w, label="modelled, HLS fill depths")
    ax.set_yscale("log")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, fontsize=7)
    ax.set_ylabel("cycles / image")
    ax.set_title("vqhls_engine_top: measured vs modelled cycles per image")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/rtl_engine.py", description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="", help="comma-separated model-method (default: every case)")
    ap.add_argument("--images", type=int, default=None, help="images per case (default: all of the case's)")
    ap.add_argument("--no-plot", action="store_true", help="do not draw bench/results/rtl_engine.png")
    a = ap.parse_args(argv)
    want = [c for c in a.cases.split(",") if c]
    rows, skipped = [], []
    for model, method in CASES:
        if want and f"{model}-{method}" not in want:
            continue
        case = engine_case(model, method)
        try:
            row = engine_row(case, a.images)
        except EngineRtlError as e:
            print(skip_line(model, method, e), flush=True)
            skipped.append(dict(model=model, method=method, reason=str(e)))
            continue
        print(engine_line(row), flush=True)
        rows.append(row)
    print()
    print("Cycles per image: measured in RTL simulation (Verilator) vs modelled (flow/boards/cycle_model.py)")
    print(summary(rows))
    payload = dict(clock_mhz=CLOCK_MHZ, rtl_depth=RTL_DEPTH, rows=[r.to_dict() for r in rows], skipped=skipped,
                   note="measured: REAL_CYCLES of one run call / images, Verilator simulation of vqhls_engine_top "
                        "driven at its AXI ports; model: flow.boards.cycle_model.image_cycles with the RTL engine's "
                        "fill depths (RTL_DEPTH) and with the HLS engine's stated ones (DEPTH). resnet20 and "
                        "resnet8 are untrained (see each case's source): their cycles do not depend on training.",
                   sources={f"{r.model}-{r.method}": CASES[(r.model, r.method)][2] for r in rows})
    path = save("rtl_engine", payload, __file__, argv if argv is not None else sys.argv[1:])
    print("wrote", path)
    if rows and not a.no_plot:
        plot(rows, RESULTS / "rtl_engine.png")
        print("wrote", RESULTS / "rtl_engine.png")
    return 0 if all(r.exact == r.images and all(s == 0 for s in r.status) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
