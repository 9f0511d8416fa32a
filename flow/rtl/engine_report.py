"""The whole RTL engine on whole models: bit-exactness through AXI and measured cycles beside the cycle model.

    rows = [engine_row(engine_case("lenet-digits", "mvq"))]      # Verilator, every image of the case
    print(engine_line(rows[0]))
    # rtl engine: lenet-digits mvq bit-exact 360/360, measured 2749 cycles/image, model 2749 (error 0.0 %); ...

Measured: REAL_CYCLES (the engine's free-running counter) of one run call of every image, divided by the
images, and each op's op_start..op_done from the core (flow.rtl.engine_rtl). Modelled, two ways, both by
flow.boards.cycle_model.image_cycles on the same placed Program: with the HLS engine's stated fill depths
(DEPTH: the engine's CYCLES register) and with the RTL engine's own (flow.rtl.engine_rtl.RTL_DEPTH). The error
is (model - measured) / measured. A row whose HLS-depth error exceeds 5 % is marked "corrected": the model
holds only with the RTL's depths.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from flow.boards.cycle_model import image_cycles
from flow.rtl.engine_rtl import RTL_DEPTH, EngineRtlError, run_engine
from flow.text_table import format_table

TOLERANCE = 0.05     # the bound on the model's per-image error


@dataclass
class EngineRow:
    model: str
    method: str
    images: int
    exact: int                     # images whose output bytes equal the golden model's
    status: list                   # STATUS of the load call and of each run call
    measured: float                # cycles / image, MEASURED in RTL simulation
    model_hls: int                 # cycles / image, modelled with the HLS engine's fill depths
    model_rtl: int                 # cycles / image, modelled with the RTL engine's fill depths
    ops: list = field(default_factory=list)   # [name, kind, measured, model_rtl, model_hls] per op
    simulator: str = ""
    note: str = ""

    @property
    def err_hls(self) -> float:
        return (self.model_hls - self.measured) / self.measured

    @property
    def err_rtl(self) -> float:
        return (self.model_rtl - self.measured) / self.measured

    @property
    def corrected(self) -> bool:
        return abs(self.err_hls) > TOLERANCE

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(err_hls=self.err_hls, err_rtl=self.err_rtl, corrected=self.corrected)
        return d


def engine_row(case, images: int | None = None, simulator: str = "verilator") -> EngineRow:
    """Run ``images`` (default all) of an engine case (flow.rtl.engine_cases) through the RTL engine in one
    run call and compare; EngineRtlError when the RTL engine cannot run the case's Program."""
    n = len(case.inputs) if images is None else min(images, len(case.inputs))
    run = run_engine(case.image, case.engine, case.inputs[:n], batches=[n], simulator=simulator)
    exact = int((run.outputs == case.golden[:n]).all(axis=1).sum())
    prog = case.program
    hls = image_cycles(prog, case.engine)
    rtl = image_cycles(prog, case.engine, RTL_DEPTH)
    names = case.meta.get("ops") or [f"op{i}" for i in range(len(prog.ops))]
    per_op = run.op_cycles.mean(axis=0) if len(run.op_cycles) else np.zeros(len(prog.ops))
    ops = [[names[i], r.kind, float(per_op[i]), r.cycles, h.cycles] for i, (r, h) in enumerate(zip(rtl.ops, hls.ops))]
    return EngineRow(case.model, case.method, n, exact, [run.load_status, *run.statuses],
                     float(run.real_cycles[0]) / n, hls.total, rtl.total, ops, simulator)


def engine_line(row: EngineRow) -> str:
    """The `make cosim` line of one row."""
    ok = all(s == 0 for s in row.status)
    return (f"rtl engine: {row.model} {row.method} bit-exact {row.exact}/{row.images}"
            f"{'' if ok else f' (STATUS {row.status})'}, measured {row.measured:.0f} cycles/image, "
            f"model {row.model_rtl} (error {100 * row.err_rtl:+.1f} %; with the HLS engine's fill depths "
            f"{row.model_hls}, error {100 * row.err_hls:+.1f} %{', corrected' if row.corrected else ''})")


def skip_line(model: str, method: str, err: EngineRtlError) -> str:
    return f"rtl engine: {model} {method} not run: {err}"


def op_table(row: EngineRow) -> str:
    """Per-op cycles: measured (RTL), modelled with the RTL's depths, modelled with the HLS engine's."""
    rows = [[name, kind, f"{m:.0f}", str(r), f"{100 * (r - m) / m:+.1f}" if m else "-", str(h),
             f"{100 * (h - m) / m:+.1f}" if m else "-"] for name, kind, m, r, h in row.ops]
    return format_table(["op", "kind", "measured", "model (RTL depths)", "err %", "model (HLS depths)", "err %"], rows)


__all__ = ["TOLERANCE", "EngineRow", "engine_row", "engine_line", "skip_line", "op_table"]
