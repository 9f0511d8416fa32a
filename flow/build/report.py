"""The build report: ``report.md`` and ``report.html`` (same content) plus ``plots/*.png``.

Sections: accuracies and bit-exactness, the compression report, the resource
model against the board (and the vendor reports beside it, with the model's
error, when Vitis HLS / Vivado ran), the resource model beside yosys' synthesis of the RTL engine of the
same EngineConfig (read from a cache or the bench results, never run here), modelled cycles per layer and images/s,
the vendor stages (ran, or the command to run them), and plots: per-layer bits
and compression, per-layer cycles, resources against the part, codebook usage.
Every modelled number says so.
"""
from __future__ import annotations

import html
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flow.boards import cycle_model, get_board, reports
from flow.boards import resource_model as rm
from flow.compile.program import CODEBOOK, CODEBOOK_SHARED, CONV
from flow.rtl.area import AreaError
from flow.rtl.engine_area import RESOURCES, build_config, model_rows, unit_map, yosys_reference


@dataclass
class Section:
    title: str
    text: str = ""
    table: tuple[list[str], list[list[Any]]] | None = None
    image: str | None = None     # path relative to the report


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:,.4g}" if abs(x) < 1e4 else f"{x:,.0f}"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return str(x)


def _md(sections: list[Section], title: str) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.text:
            out += [s.text, ""]
        if s.table:
            head, rows = s.table
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "|".join("---" for _ in head) + "|")
            out += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
            out.append("")
        if s.image:
            out += [f"![{s.title}]({s.image})", ""]
    return "\n".join(out)


def _html(sections: list[Section], title: str) -> str:
    e = html.escape
    out = ["<!doctype html>", "<html><head><meta charset='utf-8'>", f"<title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
           "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#eee}"
           "pre{background:#f6f6f6;padding:8px;overflow-x:auto}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for s in sections:
        out.append(f"<h2>{e(s.title)}</h2>")
        if s.text:
            for para in s.text.split("\n\n"):
                if para.startswith("```"):
                    out.append(f"<pre>{e(para.strip('`').strip())}</pre>")
                else:
                    out.append(f"<p>{e(para)}</p>")
        if s.table:
            head, rows = s.table
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        if s.image:
            out.append(f"<p><img src='{e(s.image)}' style='max-width:100%'></p>")
    out.append("</body></html>")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# content
# ---------------------------------------------------------------------------
# the top function's summary (set_top in hls_templates/tcl/build.tcl.j2); Vitis HLS writes it as csynth.xml and
# <top>_csynth.xml beside one <function>_csynth.xml per sub-function, which must not stand in for the top
_CSYNTH_TOP = ("csynth.xml", "vqhls_engine_csynth.xml")


def _vendor_reports(b) -> tuple[dict[str, Any], list[str]]:
    """Vitis HLS csynth.xml and Vivado utilization, when the vendor stages produced them.

    Returns (parsed reports by kind, one error line per report that exists but does not parse); each
    error is also a warning, so a broken report is seen, never silently left out of the comparison."""
    paths: dict[str, tuple[Path, Any]] = {}
    if b.project is not None:
        rdir = Path(b.project.path) / "vqhls_prj" / "solution1" / "syn" / "report"
        top = next((rdir / n for n in _CSYNTH_TOP if (rdir / n).is_file()), None)
        if top is not None:
            paths["csynth"] = (top, reports.parse_csynth_xml)
    util = b.out / "vivado" / "out" / "utilization.rpt"
    if util.is_file():
        paths["utilization"] = (util, reports.parse_utilization)
    found: dict[str, Any] = {}
    errors: list[str] = []
    for kind, (path, parse) in paths.items():
        try:
            found[kind] = parse(path)
        except reports.ReportError as e:
            errors.append(f"{kind} report {path} did not parse: {e}")
            warnings.warn(errors[-1], stacklevel=2)
    return found, errors


def sections(b, plots: dict[str, str]) -> list[Section]:
    s = b.summary
    board = get_board(b.opts.board)
    found, report_errors = _vendor_reports(b)
    out: list[Section] = []
    acc = [(label, s[key]) for key, label in (("float_acc", "float"), ("compressed_acc", "compressed"),
                                                ("finetuned_acc", "after fine-tuning"),
                                                ("golden_acc", "golden integer model"), ("csim_acc", "C-simulation"))
           if key in s]
    exact = (f"C-simulation is bit-exact with the golden model on {s['bit_exact']} of {s['images']} test images."
             if "bit_exact" in s else "C-simulation did not run in this build.")
    out.append(Section("Accuracy", f"Model {s.get('model')} on {s.get('data')}, method {b.opts.method}, board "
                       f"{board.name} ({board.part}). " + exact,
                       (["model", "top-1 accuracy %"], [[k, round(100 * v, 2)] for k, v in acc])))
    if b.creport is not None:
        rows = [[r.name, r.type, r.method, r.params, r.total_bits,
                 round(32 * r.params / r.total_bits, 2) if r.total_bits and r.params else "-"]
                for r in b.creport.rows]
        fallback = (b.program.meta.get("quant", {}).get("dense_fallback") or []) if b.program is not None else []
        note = (f" Stored int8 dense by the lowering (a codebook Linear after a flatten, compressed without "
                f"an example input: its vectors run along torch's flatten order, not the engine's NHWC channels), so the table overstates their compression: {', '.join(fallback)}; the "
                f"whole model as the engine stores it: {s.get('stored_ratio', float('nan')):.2f}x."
                if fallback else "")
        out.append(Section("Compression", f"Every stored bit counted (flow.compress.compression_report): "
                           f"{b.creport.ratio:.2f}x smaller than float32 in the format; the Program image the "
                           f"engine loads is {s.get('program_bytes', 0):,} bytes (word-aligned)." + note,
                           (["layer", "type", "method", "params", "bits", "ratio"], rows),
                           plots.get("bits")))
    if b.usage is not None:
        u = b.usage
        avail = {"BRAM36": board.bram36, "DSP": board.dsp, "LUT": board.lut, "FF": board.ff}
        model = {"BRAM36": u.bram36, "DSP": u.dsp, "LUT": u.lut, "FF": u.ff}
        head = ["resource", "modelled", "available", "% of part"]
        rows = [[k, model[k], avail[k], round(100 * model[k] / avail[k], 1)] for k in model]
        note = ("Modelled by flow/boards/resource_model.py (formulas per unit, docs/engine.md). "
                + ("No vendor report parsed: see 'Vendor reports that did not parse'." if report_errors else
                   "No vendor report exists for this build (Vitis HLS / Vivado did not run here)."))
        if found:
            measured = {}
            if "utilization" in found:
                ur = found["utilization"]
                measured = {"BRAM36": ur.bram36, "DSP": ur.dsp, "LUT": ur.lut, "FF": ur.ff}
                src = "Vivado report_utilization (post-route)"
            else:
                hr = found["csynth"]
                measured = {"BRAM36": hr.bram18 / 2, "DSP": hr.dsp, "LUT": hr.lut, "FF": hr.ff}
                src = "Vitis HLS csynth estimate"
            cmp = {r["resource"]: r for r in reports.compare(model, measured)}
            head += [src, "model error"]
            rows = [row + [cmp[row[0]]["report"], "-" if cmp[row[0]]["error"] is None
                           else f"{100 * cmp[row[0]]['error']:+.1f}%"] for row in rows]
            note = ("Modelled (flow/boards/resource_model.py) beside the vendor tool's numbers."
                    + (" A vendor report did not parse: see 'Vendor reports that did not parse'." if report_errors
                       else ""))
        out.append(Section("Resources", note, (head, rows), plots.get("resources")))
    ysec = yosys_section(b, board, plots.get("yosys"))
    if ysec is not None:
        out.append(ysec)
    if b.program is not None:
        ic = cycle_model.image_cycles(b.program, b.engine)
        rows = [[o.name, o.kind, o.cycles, round(100 * o.cycles / ic.total, 1), o.macs, o.products, o.ddr_bytes]
                for o in ic.ops]
        rows += [["(stream in)", "axis", ic.stream_in, round(100 * ic.stream_in / ic.total, 1), 0, 0, 0],
                 ["(stream out)", "axis", ic.stream_out, round(100 * ic.stream_out / ic.total, 1), 0, 0, 0],
                 ["TOTAL", "", ic.total, 100.0, ic.macs, sum(o.products for o in ic.ops), ic.ddr_bytes]]
        ips = board.clock_mhz * 1e6 / ic.total
        out.append(Section(
            "Cycles (modelled)",
            f"MODELLED by flow/boards/cycle_model.py (the C-simulation CYCLES register counts the same schedule): "
            f"{ic.total:,} cycles per image = {ips:,.0f} images/s at {board.clock_mhz:g} MHz; load call "
            f"{cycle_model.load_cycles(b.program, b.engine):,} cycles once per program. Measured numbers come from "
            f"Vitis co-simulation or the board.",
            (["layer", "kind", "cycles", "%", "MACs", "products", "DDR bytes"], rows), plots.get("cycles")))
    if plots.get("codebooks"):
        out.append(Section("Codebook usage", "Share of each codebook's codewords that the layer's indices use, "
                           "and how evenly (entropy of the index histogram over log2 k).", None,
                           plots["codebooks"]))
    out.extend(_bundle_sections(b))
    lines = []
    for tool, res in b.vendor.items():
        lines.append(f"{tool}: {res.message}")
    if lines:
        out.append(Section("Vendor tools", "```\n" + "\n".join(lines) + "\n```"))
    if report_errors:
        out.append(Section("Vendor reports that did not parse",
                           "ERROR: these reports exist but could not be read, so their numbers are missing "
                           "above:\n\n```\n" + "\n".join(report_errors) + "\n```"))
    times = [[k, round(v, 2)] for k, v in b.times.items()]
    out.append(Section("Stage times", "", (["stage", "seconds"], times)))
    return out


_RES_LABEL = {"bram36": "BRAM36", "dsp": "DSP", "lut": "LUT", "ff": "FF", "lutram": "LUTRAM"}
YOSYS_LABEL = "synthesized by {version} synth_xilinx -family xc7: an upper reference, Vivado maps tighter"


def model_split(usage: rm.Usage) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """(engine, block design) of a modelled usage: per resource (low, central, high) summed over the non-bd
    units and over the bd.* units (what the RTL engine holds; what only the block design adds)."""
    eng = {r: [0.0, 0.0, 0.0] for r in RESOURCES}
    bd = {r: [0.0, 0.0, 0.0] for r in RESOURCES}
    for name, u in usage.units.items():
        target = bd if name.startswith("bd.") else eng
        for r in RESOURCES:
            for i, x in enumerate(u.get(r).as_tuple()):
                target[r][i] += x
    return {r: tuple(v) for r, v in eng.items()}, {r: tuple(v) for r, v in bd.items()}


def _against(y: float, lo: float, hi: float) -> str:
    if lo <= y <= hi:
        return "in range"
    return f"+{y - hi:,.0f} over high" if y > hi else f"-{lo - y:,.0f} under low"


def _produce_command(b, board) -> str:
    """The command that produces the yosys figures of this build's engine (minutes of yosys; never run here)."""
    e = b.engine
    if board.name == "pynq-z2":
        if e.hash() == build_config("default").hash():
            return "python bench/rtl_engine_area.py --builds default"
        if e.n == e.m and e.hash() == build_config("dense").hash():
            return "python bench/rtl_engine_area.py --builds dense"
    cfg = f"EngineConfig(**json.load(open('{_rel(b.out / 'program.json', b.out)}'))['engine'])"
    if e.pq:      # engine_area's comparison rows raise for pq engines (model_rows): the two runs fill the cache
        return ("python -c \"import json; from flow.compile.engine import EngineConfig; from flow.rtl.engine_area "
                f"import synth_engine; e = {cfg}; synth_engine(e, flatten=True); synth_engine(e, flatten=False)\"")
    return ("python -c \"import json; from flow.compile.engine import EngineConfig; from flow.rtl.engine_area import "
            f"engine_area; engine_area({cfg}, '{board.name}')\"")


def yosys_section(b, board, image: str | None = None) -> Section | None:
    """'Resources: modelled vs yosys': per RTL unit and resource the modelled low / central / high beside yosys'
    figure, then the engine totals and the engine with the block design's modelled share added, with the % of
    the part. The yosys figures are read (flow.rtl.engine_area.yosys_reference: the synth_area cache, else the
    bench results when their engine hash is this build's), never synthesized in a build. None without an engine."""
    if b.engine is None:
        return None
    title = "Resources: modelled vs yosys"
    usage = b.usage if b.usage is not None else rm.estimate(b.engine, board)
    ref, why = yosys_reference(b.engine)
    if ref is None:
        return Section(title, f"The yosys figures are not available for this engine ({b.engine.hash()}): {why}. "
                              f"They come from `{_produce_command(b, board)}` (minutes of yosys; a build never runs "
                              "it), after which this report reads them.")
    eng, bd = model_split(usage)
    notes = []
    try:
        mrows, _, _ = model_rows(b.engine, board.name, usage=usage)
    except AreaError as e:
        mrows = None
        notes.append(f"Per-unit rows are not shown: {e}; the engine totals are.")
    if mrows is not None and not ref.get("units"):
        mrows = None
        notes.append("Per-unit rows are not shown: the yosys run with the hierarchy kept is not among the figures "
                     "read; the engine totals are.")
    avail = {"bram36": board.bram36, "dsp": board.dsp, "lut": board.lut, "ff": board.ff, "lutram": board.lutram}

    def pct(x: float, r: str) -> str:
        return f"{100 * x / avail[r]:.1f}" if avail[r] else "-"

    rows: list[list[Any]] = []
    for unit in (unit_map(b.engine) if mrows is not None else ()):
        if unit not in ref["units"]:          # figures written before the row existed: the totals still show
            continue
        for r in RESOURCES:
            lo, ce, hi = mrows[unit][r]
            y = ref["units"][unit][r]
            if any((lo, ce, hi, y)):
                rows.append([unit, _RES_LABEL[r], lo, ce, hi, y, _against(y, lo, hi), "-"])
    for label, ytot in (("engine (sum of units, hierarchy kept)", ref.get("hier_total")),
                        ("engine (flattened)", ref["total"])):
        if ytot is None:
            continue
        for r in RESOURCES:
            lo, ce, hi = eng[r]
            rows.append([label, _RES_LABEL[r], lo, ce, hi, ytot[r], _against(ytot[r], lo, hi),
                         f"{pct(ce, r)} / {pct(ytot[r], r)}"])
    for r in RESOURCES:
        lo, ce, hi = bd[r]
        if any((lo, ce, hi)):
            rows.append(["block design (modelled only)", _RES_LABEL[r], lo, ce, hi, "-", "-", f"{pct(ce, r)} / -"])
    for r in RESOURCES:
        lo, ce, hi = (eng[r][i] + bd[r][i] for i in range(3))
        y = ref["total"][r] + bd[r][1]
        rows.append(["engine + block design (yosys: flattened + modelled bd central)", _RES_LABEL[r], lo, ce, hi, y,
                     _against(y, lo, hi), f"{pct(ce, r)} / {pct(y, r)}"])
    family = ("" if board.family == "7series" else
              f" {board.part} is {board.family}: the yosys cells are 7-series ones, a rough reference there.")
    text = ("Modelled: flow/boards/resource_model.py low / central / high (this build's estimate, the figures of "
            "'Resources'). yosys: " + YOSYS_LABEL.format(version=ref["yosys"].split(" (")[0]) + "; technology-"
            "mapped cells before place and route of the RTL engine of this EngineConfig (hls_templates/rtl), per "
            "unit with the hierarchy kept (each unit alone), in total flattened. The block design (DMA, "
            "interconnect, reset) exists only in the model: its modelled central share is added to the yosys "
            "total in the last rows. The model's run-time multiplies (mult.runtime) count a third each to the "
            "conv, pool and loader rows (flow.rtl.engine_area.UNIT_MAP), hence fractions of a DSP there. "
            f"% of part: of {board.part}, modelled central / yosys. Source of the yosys "
            f"figures: {ref['source']}." + family + ("\n\n" + " ".join(notes) if notes else ""))
    head = ["unit", "resource", "modelled low", "modelled central", "modelled high", "yosys (synthesized)",
            "yosys against the model", "% of part (modelled central / yosys)"]
    return Section(title, text, (head, rows), image)


def _rel(path, out: Path) -> str:
    """A path as the user may copy it, never the machine's absolute path: relative to the current directory
    when under it, else relative to the folder that holds the build folder ``out``."""
    p = Path(path).resolve()
    for base in (Path.cwd().resolve(), Path(out).resolve().parent):
        try:
            return str(p.relative_to(base))
        except ValueError:
            continue
    return p.name


def _has_bitstream(bundle_path) -> bool:
    from flow import bundle   # deferred: the bundle reader, only when the build wrote one
    try:
        return bool(bundle.load(bundle_path).has_bitstream)
    except Exception:   # a bundle that does not load is reported as not board-ready, not as a report crash
        return False


def mask_lines(creport) -> list[str]:
    """The ratio conventions of a model with N:M masks (MVQ): what the masks cost and the ratio without them.

    ``creport``: flow.compress's Report. Empty when no layer stores masks. Every ratio the kit prints counts
    the masks; the MVQ paper's convention is unpublished and may leave them out, so the figure without them
    is given for comparison only (docs/design-notes.md "MVQ against VQ, with every bit counted": where each
    MVQ form stands)."""
    if creport is None:
        return []
    masks = sum(r.bits.get("masks", 0) for r in creport.rows)
    if not masks:
        return []
    total = creport.total_bits
    return [f"- N:M masks: {masks:,} bits, {100 * masks / total:.1f} % of the stored bits (one pattern per group "
            "of output channels where the model shares them). Every ratio here counts them; without them (the MVQ "
            f"paper's convention, for comparison only): {creport.float_bits / (total - masks):.2f}x.",
            "- MVQ against plain VQ at equal ratio, every bit counted (measured on resnet20 / Fashion-MNIST, "
            "bench/results/frontier.json): masks shared by the array's column tile put MVQ ahead of VQ from 32x "
            "up; below 32x VQ is more accurate; MVQ computes half (2:4) or a quarter (1:4, 2:8) of the MACs, "
            "and the row-mux array that shared masks allow is the smallest of the three arrays (yosys). "
            "Numbers: docs/design-notes.md \"MVQ against VQ, with every bit counted\"."]


def _bundle_sections(b) -> list[Section]:
    """The engine (config, hash, standard or sized for this model), the two compression ratios, and the
    bundle's status with the exact next commands."""
    s = b.summary
    out: list[Section] = []
    if b.engine is not None:
        sized = s.get("engine_sized")
        text = (f"Engine config hash {b.engine.hash()} (the bitstream must carry the same hash). "
                + (f"The engine was SIZED FOR THIS MODEL on {b.opts.board} (not the board's standard build: "
                   + ", ".join(f"{k}={v}" for k, v in sorted(sized.items()))
                   + "), so it needs its own bitstream: one built for the standard engine will not load."
                   if sized else f"The board's standard engine for {b.opts.board}: a bitstream of the standard "
                   "build with this hash fits it."))
        rows = [[k, str(v)] for k, v in sorted(b.engine.to_dict().items())]
        out.append(Section("Engine", text, (["parameter", "value"], rows)))
    if "ratio" in s:
        lines = [f"- Compressed model: {s['ratio']:.2f}x: every bit the compressed format stores (indices, masks, "
                 "codebooks, scales, dense layers) against the float32 weights (flow.compress.compression_report)."]
        stored = s.get("stored_ratio", s["ratio"])
        lines.append(f"- Engine stores: {stored:.2f}x: the same count for the layers as the engine holds them"
                     + (f"; {', '.join(s.get('dense_fallback', []))} are stored dense int8 by the lowering, so "
                        "this is lower" if "stored_ratio" in s else "; no layer is stored differently, so it "
                        "equals the model's") + ".")
        lines += mask_lines(getattr(b, "creport", None))
        if "program_bytes" in s:
            lines.append(f"- Program image: {s['program_bytes']:,} bytes, word-aligned for the engine, so larger "
                         "than the bit count above.")
        out.append(Section("Compression ratios", "\n".join(lines)))
    for w in s.get("warnings", []):
        out.append(Section("Warning", f"WARNING: {w}"))
    if b.bundle_path is not None:
        bpath = _rel(b.bundle_path, b.out)
        if _has_bitstream(b.bundle_path):
            text = (f"BOARD-READY: the bundle {bpath} holds a bitstream verified against its engine config hash. "
                    f"On the board: `python -m host.run {bpath} --backend pynq`.")
        else:
            script = b.out / "vendor" / "run_vendor.sh"
            vendor_run = (f"sh {_rel(script, b.out)} board_repo=<TUL board files>\n" if script.is_file() else
                          "# (its command is under 'Vendor tools' below; docs/build.md)\n")
            bit_dir = _rel(b.out / "vivado" / "out", b.out)
            text = (f"SIMULATION-ONLY until a verified bitstream is added: the bundle {bpath} runs with "
                    f"`python -m host.run {bpath} --backend sim` here. Next steps:\n\n"
                    "```\n"
                    f"# 1. on a machine with {'Vivado' if b.opts.engine == 'rtl' else 'Vitis HLS and Vivado'}: "
                    "the vendor run\n" + vendor_run +
                    f"# 2. add the bitstream it wrote (vqhls.bit, vqhls.hwh in {bit_dir}), verified against "
                    f"engine config hash {b.engine.hash() if b.engine is not None else '?'}\n"
                    f"python -m flow.bundle add-bitstream {bpath} {bit_dir}\n"
                    "# 3. on the board\n"
                    f"python -m host.run {bpath} --backend pynq\n"
                    "```")
        out.append(Section("Bundle status and next steps", text))
    return out


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------
def make_plots(b, pdir: Path) -> dict[str, str]:
    import matplotlib   # deferred: matplotlib, needed only to draw the plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt   # deferred: as above, and after matplotlib.use("Agg")

    pdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    if b.creport is not None:
        rows = [r for r in b.creport.rows if r.params]
        fig, ax = plt.subplots(figsize=(10, 4))
        x = np.arange(len(rows))
        ax.bar(x, [32 * r.params for r in rows], color="#cccccc", label="float32 bits")
        ax.bar(x, [r.total_bits for r in rows], color="#4c72b0", label="stored bits")
        ax.set_yscale("log")
        ax.set_xticks(x, [r.name for r in rows], rotation=70, fontsize=7)
        ax.set_title(f"per-layer bits (model ratio {b.creport.ratio:.2f}x)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(pdir / "bits.png", dpi=90)
        plt.close(fig)
        out["bits"] = "plots/bits.png"
    if b.usage is not None:
        board = get_board(b.opts.board)
        names = ["BRAM36", "DSP", "LUT", "FF"]
        used = [b.usage.bram36, b.usage.dsp, b.usage.lut, b.usage.ff]
        avail = [board.bram36, board.dsp, board.lut, board.ff]
        budget = [80, 90, 70, 70]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        pct = [100 * u / a for u, a in zip(used, avail)]
        ax.bar(names, pct, color=["#c44e52" if p > bud else "#55a868" for p, bud in zip(pct, budget)])
        for i, bud in enumerate(budget):
            ax.hlines(bud, i - 0.4, i + 0.4, colors="k", linestyles="--")
        ax.set_ylabel(f"% of {board.part} (modelled)")
        ax.set_ylim(0, 105)
        ax.set_title("resources against the part (dashed: budget)")
        fig.tight_layout()
        fig.savefig(pdir / "resources.png", dpi=90)
        plt.close(fig)
        out["resources"] = "plots/resources.png"
    if b.engine is not None:
        ref, _ = yosys_reference(b.engine)
        if ref is not None:
            board = get_board(b.opts.board)
            eng, _bd = model_split(b.usage if b.usage is not None else rm.estimate(b.engine, board))
            res = ["lut", "ff", "dsp", "bram36"]
            avail = [board.lut, board.ff, board.dsp, board.bram36]
            lo, ce, hi = ([100 * eng[r][i] / a for r, a in zip(res, avail)] for i in range(3))
            ys = [100 * ref["total"][r] / a for r, a in zip(res, avail)]
            fig, ax = plt.subplots(figsize=(6, 3.5))
            x = np.arange(len(res))
            ax.bar(x - 0.2, ce, 0.4, yerr=[np.subtract(ce, lo), np.subtract(hi, ce)], capsize=3, color="#4c72b0",
                   label="modelled central (bars: low..high)")
            ax.bar(x + 0.2, ys, 0.4, color="#dd8452", label="synthesized by yosys (upper reference)")
            ax.set_xticks(x, [_RES_LABEL[r] for r in res])
            ax.set_ylabel(f"% of {board.part}")
            ax.set_title("RTL engine without block design: modelled vs yosys (flattened)", fontsize=9)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(pdir / "yosys.png", dpi=90)
            plt.close(fig)
            out["yosys"] = "plots/yosys.png"
    if b.program is not None:
        ic = cycle_model.image_cycles(b.program, b.engine)
        fig, ax = plt.subplots(figsize=(10, 4))
        x = np.arange(len(ic.ops))
        ax.bar(x, [o.cycles for o in ic.ops], color="#4c72b0")
        ax.set_xticks(x, [o.name for o in ic.ops], rotation=70, fontsize=7)
        ax.set_ylabel("cycles per image (modelled)")
        ax.set_title(f"per-layer cycles: {ic.total:,} per image (modelled, flow/boards/cycle_model.py)")
        fig.tight_layout()
        fig.savefig(pdir / "cycles.png", dpi=90)
        plt.close(fig)
        out["cycles"] = "plots/cycles.png"
        cb_ops = [op for op in b.program.ops if op.opcode == CONV and op.wfmt in (CODEBOOK, CODEBOOK_SHARED)]
        if cb_ops:
            used, ent = [], []
            for op in cb_ops:
                counts = np.bincount(op.arrays["idx"].ravel().astype(np.int64), minlength=op.k)[: op.k]
                p = counts[counts > 0] / counts.sum()
                used.append(100 * (counts > 0).mean())
                ent.append(float(-(p * np.log2(p)).sum() / max(np.log2(op.k), 1e-9)))
            fig, ax = plt.subplots(figsize=(10, 3.5))
            x = np.arange(len(cb_ops))
            ax.bar(x - 0.2, used, 0.4, label="% of codewords used")
            ax.bar(x + 0.2, [100 * e for e in ent], 0.4, label="index entropy / log2 k (%)")
            ax.set_xticks(x, [op.name for op in cb_ops], rotation=70, fontsize=7)
            ax.set_ylim(0, 105)
            ax.legend(fontsize=8)
            ax.set_title("codebook usage per layer")
            fig.tight_layout()
            fig.savefig(pdir / "codebooks.png", dpi=90)
            plt.close(fig)
            out["codebooks"] = "plots/codebooks.png"
    return out


def write_report(b) -> list[Path]:
    """Write report.md, report.html and plots/ into the build directory (atomically); returns the paths."""
    tmp = Path(tempfile.mkdtemp(prefix=".report.tmp-", dir=b.out))
    try:
        plots = make_plots(b, tmp / "plots")
        secs = sections(b, plots)
        title = f"vqhls build report: {b.summary.get('model')} ({b.opts.method}) on {b.opts.board}"
        (tmp / "report.md").write_text(_md(secs, title) + "\n")
        (tmp / "report.html").write_text(_html(secs, title) + "\n")
        final = b.out / "plots"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / "plots", final)
        os.replace(tmp / "report.md", b.out / "report.md")
        os.replace(tmp / "report.html", b.out / "report.html")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [b.out / "report.md", b.out / "report.html"]
