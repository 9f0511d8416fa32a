"""Modelled engine throughput and resources on the PYNQ-Z2: cycles per layer, images/s, MAC utilisation.

    python bench/engine.py [--iters N] [--no-plot]

Every number here is MODELLED (flow/boards/cycle_model.py for cycles, flow/boards/
resources.py for BRAM/DSP/LUT/FF), not measured on a board or in co-simulation.

Models: lenet-digits (8x8x1), resnet20 (Fashion-MNIST, 28x28x1) and MLPerf Tiny's
ResNet-8 (``resnet8``, 32x32x3, the reference layer shapes), built as
``make csim`` builds them (compress -> quantize_model -> lower) but WITHOUT
training: random init with fixed seeds, random calibration images. The cycle
model depends only on layer shapes, the N:M masks (array passes, kept
products) and where the parameters are placed, none of which training changes
(2:4 masks always keep 2 of every 4 weights; a codebook's size is set by k,
not by its values). Rows per model:

* sparse build ``config_for_board("pynq-z2")`` (2:4): MVQ 2:4 (the main
  row, k=64 lenet / k=256 resnet20, d=8) and int8 dense ("none");
* dense build ``config_for_board("pynq-z2", n=4, m=4)``: VQ (n == m
  codebooks, d=8) and int8 dense ("none").

MAC utilisation = dense-equivalent MACs / (cycles x 220): against the roofline
of the xc7z020's 220 DSP48E1 at one int8 product per DSP per cycle (DSP48E1
cannot pack two int8 products, see flow/boards/resource_model.py). A 2:4 build can
exceed 1: it skips the pruned half of the MACs, and the array has fabric
multipliers beside its DSP ones. Array utilisation = products the array
really forms / (cycles x engine.multipliers).

Targets (issue 17, item 9): resnet20 MVQ 2:4 >= 700 images/s and lenet-digits
>= 20,000 images/s at 100 MHz on the default build, modelled; ResNet-8 reported.
They are compared, never gated: a modelled number cannot meet a target, so the
table says "modelled >= target" or "modelled < target (short by X)" and the
exit status is 0 whatever they say. Resources are printed as the model's
low / central / high range against the part (check_fit holds the high end).
The published figures printed beside them are OTHER designs' measurements on
their boards (hls4ml, fpgaConvNet, FINN), not ours.
Writes RESULTS/ (bench/results, or $VQHLS_BENCH_OUT: ``make bench`` puts build/bench there) engine.json and engine.png.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see flow/__init__.py

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, save  # noqa: E402
from flow.boards import get_board  # noqa: E402
from flow.boards.cycle_model import BEAT_BYTES, image_cycles, load_cycles  # noqa: E402
from flow.boards.resource_model import ResourceError, check_fit, estimate, table as res_table  # noqa: E402
from flow.boards.sizing import config_for_board  # noqa: E402
from flow.compile import EngineConfig, untrained  # noqa: E402
from flow.compile.program import CODEBOOK, CODEBOOK_SHARED, CONV, Program  # noqa: E402
from flow.text_table import format_table  # noqa: E402

BOARD = "pynq-z2"
# images/s at the board clock, default build, modelled (issue 17 item 9); None: reported only
TARGETS = {"lenet-digits": 20_000.0, "resnet20": 700.0, "resnet8": None}
# published figures of OTHER designs (measured by their authors on their boards), as issue 17 cites them
PUBLISHED = (
    ("hls4ml RN08 (MLPerf Tiny ResNet-8)", "PYNQ-Z2", "130.8 images/s", "resnet8"),
    ("fpgaConvNet ResNet-8 (MLPerf Tiny)", "at 143 MHz", "2,431 images/s", "resnet8"),
    ("FINN CNV-W1A1 (CIFAR-10, 1-bit)", "PYNQ / ZedBoard class", "661 images/s", None),
)
# (model, build, method): the default build runs MVQ 2:4 and int8; the dense build VQ and int8
BUILDS = (("sparse", "mvq"), ("sparse", "none"), ("dense", "vq"), ("dense", "none"))
MAIN = ("sparse", "mvq")
PHASES = ("compute", "drain_stall", "param_load", "overhead")


def engines() -> dict[str, EngineConfig]:
    """The two PYNQ-Z2 builds: the default 2:4 sparse one and the dense (n == m) one."""
    return {"sparse": config_for_board(BOARD), "dense": config_for_board(BOARD, n=4, m=4)}


MODELS = untrained.MODELS
# one copy of the untrained builder: flow/compile/untrained.py (the RTL engine's cases use it too)
build_model = untrained.build_model


def build_program(name: str, method: str, engine: EngineConfig, *, seed: int = 0, iters: int = 2,
                  calib_images: int = 8) -> Program:
    """flow.compile.untrained.untrained_program (the bench's name for it)."""
    return untrained.untrained_program(name, method, engine, seed=seed, iters=iters, calib_images=calib_images)


def _phase_split(phases: dict[str, int], cycles: int) -> dict[str, int]:
    """cycles split into array compute (or the pool window / PQ pixel loop), drain stall,
    parameter loads over m_axi, and the rest (descriptor fetch, decode prologue, loop fills, final drain)."""
    compute = phases.get("compute", 0) + phases.get("window", 0) + phases.get("pixels", 0)
    stall = phases.get("drain_stall", 0)
    load = phases.get("param_load", 0) + phases.get("proto_load", 0) + phases.get("lut_load", 0)
    return {"compute": compute, "drain_stall": stall, "param_load": load, "overhead": cycles - compute - stall - load}


def model_report(program: Program, engine: EngineConfig, board: str = BOARD) -> dict:
    """Modelled per-layer and total numbers of a placed Program on ``engine`` at ``board``'s clock."""
    b = get_board(board)
    ic = image_cycles(program, engine)
    total = ic.total
    pack = 2 if b.family == "ultrascale+" else 1        # int8 products per DSP (WP487 needs DSP48E2)
    roof = b.dsp * pack                                  # products per cycle of the DSP roofline
    layers = []
    for op, oc in zip(program.ops, ic.ops):
        layers.append(dict(
            name=oc.name, kind=oc.kind, fmt=("codebook" if op.wfmt == CODEBOOK else "shared-mask codebook" if op.wfmt == CODEBOOK_SHARED else "int8") if op.opcode == CONV else "-",
            passes=op.passes, cycles=oc.cycles, percent=100.0 * oc.cycles / total,
            macs=oc.macs, products=oc.products, mac_util=oc.macs / (oc.cycles * roof),
            resident=bool(op.resident) if op.opcode == CONV else None,
            ddr_bytes=oc.ddr_bytes, phases=dict(oc.phases), split=_phase_split(oc.phases, oc.cycles)))
    first, last = program.ops[0], program.ops[-1]
    return dict(
        cycles=total, stream_in=ic.stream_in, stream_out=ic.stream_out,
        images_per_s=b.clock_mhz * 1e6 / total, clock_mhz=b.clock_mhz,
        macs=ic.macs, products=sum(o.products for o in ic.ops),
        mac_util=ic.macs / (total * roof), roofline_products_per_cycle=roof,
        roofline_images_per_s=b.clock_mhz * 1e6 * roof / ic.macs if ic.macs else None,
        array_util=sum(o.products for o in ic.ops) / (total * engine.multipliers),
        ddr_bytes=ic.ddr_bytes, stream_bytes=first.H * first.W * first.C + last.OH * last.OW * last.OC,
        ddr_mb_per_s=ic.ddr_bytes * b.clock_mhz * 1e6 / total / 1e6,
        load_cycles=load_cycles(program, engine), program_bytes=len(program.to_bytes()),
        resident_all=all(bool(op.resident) for op in program.ops if op.opcode == CONV),
        dense_fallback=list(program.meta.get("quant", {}).get("dense_fallback", [])),
        layers=layers)


# ---- printing -------------------------------------------------------------------------------
def versus(value: float, target: float | None) -> str:
    """'modelled >= target' or 'modelled < target (short by X)'; '-' without a target. Never a pass/fail."""
    if not target:
        return "-"
    if value >= target:
        return "modelled >= target"
    return f"modelled < target (short by {target - value:,.1f})"


def summary_table(rows: list[dict]) -> str:
    header = ["model", "build", "method", "cycles/img", "images/s", "MACs/img", "products/img", "MAC util",
              "array util", "DDR B/img", "all resident", "target", "modelled vs target"]
    body = []
    for r in rows:
        t = r.get("target")
        body.append([r["model"], r["build"], r["method"], f"{r['cycles']:,}", f"{r['images_per_s']:,.1f}",
                     f"{r['macs']:,}", f"{r['products']:,}", f"{r['mac_util']:.3f}", f"{r['array_util']:.3f}",
                     f"{r['ddr_bytes']:,}", "yes" if r["resident_all"] else "no",
                     f">= {t:,.0f}" if t else "-", versus(r["images_per_s"], t)])
    return format_table(header, body, right={3, 4, 5, 6, 7, 8, 9})


def layer_table(rep: dict) -> str:
    header = ["layer", "kind", "weights", "passes", "cycles", "%", "MACs", "products", "MAC util", "resident",
              "DDR B", "compute", "drain stall", "param load", "overhead"]
    body = []
    for L in rep["layers"]:
        s = L["split"]
        body.append([L["name"], L["kind"], L["fmt"], str(L["passes"]) if L["passes"] else "-", f"{L['cycles']:,}", f"{L['percent']:.1f}", f"{L['macs']:,}",
                     f"{L['products']:,}", f"{L['mac_util']:.3f}",
                     "-" if L["resident"] is None else ("yes" if L["resident"] else "NO"), f"{L['ddr_bytes']:,}",
                     f"{s['compute']:,}", f"{s['drain_stall']:,}", f"{s['param_load']:,}", f"{s['overhead']:,}"])
    for name, c in (("(stream in)", rep["stream_in"]), ("(stream out)", rep["stream_out"])):
        body.append([name, "axis", "-", "-", f"{c:,}", f"{100 * c / rep['cycles']:.1f}", "0", "0", "-", "-", "0",
                     "-", "-", "-", f"{c:,}"])
    body.append(["TOTAL", "", "", "", f"{rep['cycles']:,}", "100.0", f"{rep['macs']:,}", f"{rep['products']:,}",
                 f"{rep['mac_util']:.3f}", "", f"{rep['ddr_bytes']:,}",
                 *(f"{sum(L['split'][p] for L in rep['layers']):,}" for p in PHASES[:3]),
                 f"{sum(L['split']['overhead'] for L in rep['layers']) + rep['stream_in'] + rep['stream_out']:,}"])
    return format_table(header, body, right={3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14})


def engine_line(name: str, e: EngineConfig) -> str:
    return (f"{name:<6} build: n:m {e.n}:{e.m}, array {e.rows} rows x {e.cols} cols x {e.slots} slots = "
            f"{e.multipliers} multipliers ({e.dsp_rows * e.cols * e.slots} on DSP48E1, "
            f"{(e.rows - e.dsp_rows) * e.cols * e.slots} in fabric), vmem {e.vmem_entries}, cb_rows {e.cb_rows}, "
            f"dmem_words {e.dmem_words}, hash {e.hash()}")


# ---- plot -------------------------------------------------------------------------------------
def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    fig = plt.figure(figsize=(15, 9.5))
    gs = fig.add_gridspec(2, 2, height_ratios=(1.25, 1), width_ratios=(1.4, 1))
    ax = fig.add_subplot(gs[0, :])
    rows = {(r["model"], r["build"], r["method"]): r for r in result["rows"]}
    series = [(("resnet20", "sparse", "mvq"), "2:4 build, MVQ 2:4"), (("resnet20", "dense", "vq"), "dense build, VQ"),
              (("resnet20", "dense", "none"), "dense build, int8")]
    colors = {"compute": "#4c72b0", "drain_stall": "#dd8452", "param_load": "#c44e52", "overhead": "#b0b0b0"}
    hatches = ("", "//", "..")
    names = [L["name"] for L in rows[series[0][0]]["layers"]]
    x = np.arange(len(names))
    width = 0.28
    handles = []
    for j, (key, label) in enumerate(series):
        rep = rows[key]
        assert [L["name"] for L in rep["layers"]] == names
        bottom = np.zeros(len(names))
        for p in PHASES:
            v = np.array([L["split"][p] for L in rep["layers"]], float)
            ax.bar(x + (j - 1) * width, v, width, bottom=bottom, color=colors[p], hatch=hatches[j],
                   edgecolor="white", linewidth=0.3, label=p.replace("_", " ") if j == 0 else None)
            bottom += v
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=hatches[j] * 2,
                             label=f"{label}: {rep['cycles']:,} cycles, {rep['images_per_s']:,.0f} img/s"))
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("modelled cycles per image")
    ax.set_title("resnet20 (28x28x1) per layer on the PYNQ-Z2, MODELLED (flow/boards/cycle_model.py): "
                 "bars left to right = 2:4 MVQ / dense VQ / dense int8")
    phase_handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=phase_handles + handles, fontsize=8, ncol=2, loc="upper left")
    ax.grid(axis="y", alpha=0.3)

    ax = fig.add_subplot(gs[1, 0])
    labels = []
    pal = {("sparse", "mvq"): "#4c72b0", ("sparse", "none"): "#8fa8d0", ("dense", "vq"): "#55a868",
           ("dense", "none"): "#a5d1b0"}
    pos = 0.0
    for model in MODELS:
        xs = []
        for build, method in BUILDS:
            r = rows[(model, build, method)]
            ax.bar(pos, r["images_per_s"], 0.8, color=pal[(build, method)],
                   label=f"{build} build, {method}" if model == "lenet-digits" else None)
            ax.text(pos, r["images_per_s"] * 1.08, f"{r['images_per_s']:,.0f}", ha="center", fontsize=7)
            xs.append(pos)
            pos += 1
        t = TARGETS[model]
        if t:
            ax.hlines(t, xs[0] - 0.5, xs[-1] + 0.5, colors="red", linestyles="--")
            ax.text(xs[-1] + 0.5, t, f" target {t:,.0f}", color="red", va="center", fontsize=7)
        roof = rows[(model, *MAIN)]["roofline_images_per_s"]
        ax.hlines(roof, xs[0] - 0.5, xs[-1] + 0.5, colors="black", linestyles=":")
        ax.text(xs[0] - 0.5, roof * 1.25, f"220-DSP dense roofline {roof:,.0f}", fontsize=7)
        labels.append((np.mean(xs), model))
        pos += 1.5
    ax.set_xticks([p for p, _ in labels], [m for _, m in labels])
    ax.set_yscale("log")
    ax.set_ylim(100, None)
    ax.set_ylabel("modelled images/s at 100 MHz")
    ax.set_title("throughput vs targets (MODELLED; targets compared, not gated)")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(axis="y", alpha=0.3, which="both")

    ax = fig.add_subplot(gs[1, 1])
    res = result["resources"]
    keys = [k for k in ("BRAM36", "DSP", "LUT", "FF", "LUTRAM") if k in res["sparse"]["percent"]]
    xr = np.arange(len(keys))
    for j, (build, col) in enumerate((("sparse", "#4c72b0"), ("dense", "#55a868"))):
        pc = [res[build]["percent"][k] for k in keys]
        cen = np.array([x["central"] for x in pc])
        err = np.array([[x["central"] - x["low"] for x in pc], [x["high"] - x["central"] for x in pc]])
        ax.bar(xr + (j - 0.5) * 0.38, cen, 0.38, color=col, yerr=err, capsize=3,
               label=f"{build} build, central, bar = low..high "
                     f"({'fits' if res[build]['fits_at_high_end'] else 'DOES NOT FIT'} at the high end)")
    for i, k in enumerate(keys):
        ax.hlines(100 * res["sparse"]["budget_frac"][k], i - 0.4, i + 0.4, colors="red", linestyles="--",
                  label="budget (check_fit)" if i == 0 else None)
    ax.axhline(100, color="black", lw=0.8)
    ax.set_xticks(xr, keys)
    ax.set_ylabel("% of xc7z020 (MODELLED)")
    ax.set_ylim(0, 130)
    ax.set_title("resource model range vs the part (MODELLED)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------------
def resources_of(engine: EngineConfig) -> tuple[dict, str]:
    """The modelled range of ``engine`` on the board (flow.boards.resource_model) and its printed table."""
    from flow.boards.resource_model import RESOURCES, budgets

    u = estimate(engine, BOARD)
    try:
        check_fit(engine, BOARD)
        fit, err = True, ""
    except ResourceError as e:
        fit, err = False, str(e)
    bud = budgets(BOARD)
    d = dict(low={r: getattr(u.low, r) for r in RESOURCES}, central={r: getattr(u.central, r) for r in RESOURCES},
             high={r: getattr(u.high, r) for r in RESOURCES}, fits_at_high_end=fit, check_fit_error=err,
             percent={label: {end: 100.0 * getattr(getattr(u, end), attr) / avail for end in ("low", "central", "high")}
                      for label, attr, avail, _, _ in bud},
             budget_frac={label: frac for label, _, _, frac, _ in bud},
             per_unit=u.per_unit)
    return d, res_table(u, BOARD)


def run(iters: int = 2, progress: bool = True) -> tuple[dict, str]:
    """Build every program, model it; returns (JSON payload, printed text)."""
    b = get_board(BOARD)
    engs = engines()
    out: list[str] = []
    p = out.append
    p("=" * 100)
    p(f"vqhls engine on {b.name} ({b.part}) at {b.clock_mhz:g} MHz: every number below is MODELLED")
    p("(cycles: flow/boards/cycle_model.py; resources: flow/boards/resource_model.py), not measured on a board or in cosim,")
    p("except the 'published' rows, which are other designs' own measurements.")
    p("Programs come from UNTRAINED zoo models (random init, seed 0; random calibration images): the modelled")
    p("cycles depend only on layer shapes, the N:M masks and parameter placement, not on trained values.")
    p(f"MAC util = dense MACs / (cycles x {b.dsp}): the {b.dsp}-DSP48E1 roofline, one int8 product per DSP")
    p("per cycle (DSP48E1 cannot pack two; resources.py). > 1 is possible on a 2:4 build (skipped zeros).")
    p("array util = products formed / (cycles x engine multipliers). DDR B = m_axi parameter reads per image")
    p("(the image itself arrives on AXI-Stream: stream in/out rows).")
    p("=" * 100)
    for name, e in engs.items():
        p(engine_line(name, e))
    rows: list[dict] = []
    timings = {}
    jobs = [(m, bd, meth) for m in MODELS for bd, meth in BUILDS]
    for model, build, method in tqdm(jobs, desc="build + model", disable=not progress, file=sys.stderr):
        t0 = time.perf_counter()
        prog = build_program(model, method, engs[build], iters=iters)
        rep = model_report(prog, engs[build])
        timings[f"{model}/{build}/{method}"] = time.perf_counter() - t0
        target = TARGETS[model] if (build, method) == MAIN else None
        rows.append(dict(model=model, build=build, method=method, engine_hash=engs[build].hash(), target=target,
                         **rep))
    p("")
    p("Per model, build and method, MODELLED (images/s at the board clock, one image at a time):")
    p(summary_table(rows))
    for r in rows:
        if (r["build"], r["method"]) == MAIN:
            p(f"  {r['model']}: dense MACs {r['macs']:,}/image -> {b.dsp}-DSP dense roofline "
              f"{r['roofline_images_per_s']:,.1f} images/s (modelled); load call {r['load_cycles']:,} cycles "
              f"(modelled, once per program), program image {r['program_bytes']:,} bytes")
    for r in rows:
        if (r["build"], r["method"]) == MAIN:
            p("")
            p(f"{r['model']} per layer, {r['build']} build ({engs[r['build']].n}:{engs[r['build']].m}), "
              f"method {r['method']}, MODELLED:")
            p(layer_table(r))
            if r["dense_fallback"]:
                p(f"  stored int8 dense by flow.quant (codebook vectors broken by the NHWC flatten permutation): "
                  f"{', '.join(r['dense_fallback'])}")
    resources = {}
    for name, e in engs.items():
        d, txt = resources_of(e)
        resources[name] = d
        p("")
        p(f"Resources, {name} build {e.n}:{e.m} (hash {e.hash()}), MODELLED range:")
        p(txt)
        p(f"check_fit (high end under the budgets): "
          f"{'fits' if d['fits_at_high_end'] else 'DOES NOT FIT: ' + d['check_fit_error']}")
    p("")
    p("Targets (issue 17 item 9), MODELLED on the default build; compared, not gated:")
    targets = []
    for r in rows:
        if (r["build"], r["method"]) != MAIN:
            continue
        t = r["target"]
        verdict = versus(r["images_per_s"], t) if t else "reported (no target)"
        targets.append(dict(model=r["model"], what=f"{r['model']} {r['method']} on the {r['build']} build",
                            target=t, modelled=r["images_per_s"], verdict=verdict))
        p(f"  {r['model']} {r['method']} {r['build']} build: modelled {r['images_per_s']:,.1f} images/s"
          + (f", target >= {t:,.0f}: {verdict}" if t else ": reported (no target)"))
    p("")
    p("Published figures of OTHER designs (their authors' measurements, not ours), beside our modelled ones:")
    ours = {r["model"]: r["images_per_s"] for r in rows if (r["build"], r["method"]) == MAIN}
    pub_rows = [[what, where, fig, f"{ours[m]:,.1f} (modelled, {m})" if m else "-"] for what, where, fig, m in PUBLISHED]
    p(format_table(["published design", "board / clock", "published", "this engine"], pub_rows))
    r20 = next(r for r in rows if r["model"] == "resnet20" and (r["build"], r["method"]) == MAIN)
    if r20["images_per_s"] < TARGETS["resnet20"]:
        e = engs["sparse"]
        p(f"note: resnet20 is short of 700 images/s by {700 - r20['images_per_s']:,.1f} (modelled) because the "
          f"default build has {e.rows} array rows ({e.multipliers} multipliers): the larger arrays do not fit "
          f"the xc7z020 at the HIGH end of the resource model (see the resource range above), which is the "
          f"line check_fit and the sizing now hold.")
    payload = dict(
        note="MODELLED numbers (flow/boards/cycle_model.py, flow/boards/resource_model.py), untrained models: cycles depend "
             "only on shapes, N:M masks and placement; 'published' are other designs' measured figures",
        board=dict(name=b.name, part=b.part, clock_mhz=b.clock_mhz, dsp=b.dsp, family=b.family),
        engines={name: dict(config=e.to_dict(), hash=e.hash(), multipliers=e.multipliers) for name, e in engs.items()},
        rows=rows, resources=resources, targets=targets,
        published=[dict(design=w, board=bd, figure=f, compare_with=m) for w, bd, f, m in PUBLISHED],
        seconds=timings, kmeans_iters=iters,
        units=dict(mac_util=f"dense MACs / (cycles x {b.dsp} DSP48E1, 1 product each)",
                   array_util="products / (cycles x engine.multipliers)", ddr_bytes="m_axi bytes per image",
                   beat_bytes=BEAT_BYTES))
    return payload, "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2, help="k-means iterations (cycles do not depend on them)")
    ap.add_argument("--no-plot", action="store_true", help="write the JSON only, no PNG")
    a = ap.parse_args()
    t0 = time.perf_counter()
    payload, text = run(a.iters)
    print(text)
    path = save("engine", payload, __file__)
    msg = f"\nwrote {path}"
    if not a.no_plot:
        plot(payload, RESULTS / "engine.png")
        msg += f" and {RESULTS / 'engine.png'}"
    print(msg + f" ({time.perf_counter() - t0:.1f} s)")
    return 0      # modelled numbers never decide the exit status


if __name__ == "__main__":
    sys.exit(main())
