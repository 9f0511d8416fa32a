"""The build's stages, one function each, in order (``STAGES``).

Every stage takes the ``Build`` (options, build directory, what the earlier
stages produced) and writes its outputs into the build directory:

    train     model.pt (float state_dict), data                      -> b.model
    compress  compression.json (the format's bits per layer)          -> b.cmodel
    finetune  compressed.pt (the compressed model after fine-tuning)  -> b.cmodel, b.creport
    quantize  golden.npz (integer test inputs, golden outputs)        -> b.qgraph, b.x_int, b.gold
    lower     program.bin, program.json                               -> b.engine, b.program
    fit       resources.json (the resource model against the board)  -> b.usage
    hls       hls/ (the HLS project with test vectors, linted)        -> b.project
    csim      csim.json (C-simulation vs golden, bit for bit)         -> b.sim
    vitis     vitis/ (csynth / cosim / IP export, or the skip line)   -> b.vendor["vitis"]
              --engine rtl: rtl/ (the RTL engine's Verilog, packaged as the IP by Vivado; no Vitis HLS)
                                                                      -> b.vendor["vivado ip"]
    vivado    vivado/ (block design, .bit + .hwh, or the skip line)   -> b.vendor["vivado"]
    bundle    deploy/ (flow.bundle: manifest, program, sources, vectors, bitstream when built)
    report    report.md, report.html, plots/
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from engine_io.gxx_build import find_cxx
from flow import bundle
from flow.boards import cycle_model, get_board
from flow.boards.resource_model import (ResourceError, check_fit, estimate, over_budget, undeclared_multiplies,
                                        usage_json)
from flow.boards.sizing import config_for_board, size_engine
from flow.build.options import STAGES, BuildOptions, OptionsError
from flow.build import rtl_ip
from flow.build.report import write_report
from flow.compile import lower
from flow.compress import compress, compression_report, finetune, plan, pq_finetune, recalibrate_bn_
from flow.finite import check_finite, check_model_finite
from flow.hls import vendor
from flow.hls.lint import lint_project, multiplier_instances
from flow.quant import quantize_input, quantize_model
from flow.quant import run as golden_run
from flow.quant.accuracy import golden_drop_warning
from flow.rtl import engine_rtl
from models import data as datasets
from models import train as trainer
from models import zoo


class BuildError(RuntimeError):
    """A stage failed (the message names the stage and the reason)."""


@dataclass
class Build:
    """The state one build carries from stage to stage."""

    opts: BuildOptions
    out: Path
    summary: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    data_name: str = ""
    model: Any = None
    cmodel: Any = None
    creport: Any = None
    data: dict[str, np.ndarray] = field(default_factory=dict)
    qgraph: Any = None
    x_int: np.ndarray | None = None
    gold: np.ndarray | None = None
    engine: Any = None
    program: Any = None
    usage: Any = None
    project: Any = None
    sim: np.ndarray | None = None
    vendor: dict[str, Any] = field(default_factory=dict)
    bundle_path: Path | None = None
    report_paths: list[Path] = field(default_factory=list)

    @property
    def recipe(self) -> dict:
        d = self.opts.defaults()
        return dict(k=self.opts.k or d["k"], d=self.opts.d or d["d"],
                    finetune_epochs=d["finetune_epochs"] if self.opts.finetune_epochs is None
                    else self.opts.finetune_epochs,
                    finetune_limit=d["finetune_limit"], calib=d["calib"])

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.out / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
        tmp.replace(path)
        return path


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serializable: {type(x)}")


@contextmanager
def timed(b: Build, name: str):
    t0 = time.perf_counter()
    print(f"[{name}] ...", file=sys.stderr, flush=True)
    yield
    b.times[name] = time.perf_counter() - t0
    print(f"[{name}] done in {b.times[name]:.2f} s", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# model and data
# ---------------------------------------------------------------------------
def load_model_file(spec: str):
    """``path/to/file.py:factory`` -> factory() (an nn.Module). Raises OptionsError."""
    path, _, attr = spec.rpartition(":")
    p = Path(path)
    if not p.is_file():
        raise OptionsError(f"--model-file {spec}: {path} not found")
    name = f"vqhls_user_model_{p.stem}"
    mod_spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(mod_spec)
    # registered so its classes pickle (compressed.pt holds the whole model); torch.load of that file
    # needs the same module: load it with this function first, or torch.load(weights_only=False) after import
    sys.modules[name] = module
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:   # the user's file: report it in one line
        sys.modules.pop(name, None)
        raise OptionsError(f"--model-file {spec}: importing {path} failed: {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise OptionsError(f"--model-file {spec}: {path} has no callable {attr!r}")
    try:
        model = factory()
    except Exception as e:   # the user's factory: one line naming it
        raise OptionsError(f"--model-file {spec}: {attr}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise OptionsError(f"--model-file {spec}: {attr}() returned a {type(model).__name__}, not a "
                           "torch.nn.Module: return the model itself (e.g. nn.Sequential(...))")
    return model


def display_path(path: str) -> str:
    """``path`` as a user may copy it: relative to the current directory when under it, else its file name
    (a build report or manifest never holds the absolute path of the machine that built it)."""
    p = Path(path)
    if not p.is_absolute():
        return path
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def display_model(o: BuildOptions) -> str:
    """The model as the summary, report and manifest name it: the zoo name, or file.py:factory (no
    absolute path)."""
    if not o.model_file:
        return o.model
    path, _, attr = o.model_file.rpartition(":")
    return f"{display_path(path)}:{attr}"


def _load_checkpoint(model, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise OptionsError(f"checkpoint {path} not found: give a state_dict saved with torch.save(model.state_dict())")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:   # a corrupt file or not a torch file: one line
        raise OptionsError(f"checkpoint {path} is not readable: {type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0]}") from None
    why = trainer.state_dict_mismatch(model, state)   # every missing / unexpected key, not torch's first line
    if why:
        raise OptionsError(f"checkpoint {path} does not fit the model: {why}")
    try:
        model.load_state_dict(state)
    except Exception as e:   # what the key and shape comparison did not catch
        raise OptionsError(f"checkpoint {path} does not fit the model: {type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0]}") from None


def stage_train(b: Build) -> None:
    """The float model (zoo checkpoint cache, --checkpoint, or --model-file) and the dataset."""
    o = b.opts
    if o.model_file:
        if not o.data:
            raise OptionsError("--model-file needs --data (the dataset to calibrate, fine-tune and test on)")
        b.data_name = o.data
        model = load_model_file(o.model_file)
        if o.checkpoint:
            _load_checkpoint(model, o.checkpoint)
        else:
            xtr, ytr = datasets.load(b.data_name, "train")
            trainer.train(model, xtr, ytr, epochs=o.train_epochs or 5)
    else:
        zoo._check(o.model)
        b.data_name = o.data or ("fashion-mnist" if zoo.default_dataset(o.model) == "cifar10"
                                 else zoo.default_dataset(o.model))
        if o.checkpoint:
            model = trainer.build(o.model, b.data_name)
            _load_checkpoint(model, o.checkpoint)
        else:
            model = trainer.get_trained(o.model, b.data_name, o.train_epochs, retrain=o.retrain)
    model.eval()
    check_model_finite(model, f"checkpoint {o.checkpoint}" if o.checkpoint
                       else f"the trained {o.model_file or o.model}")
    xtr, ytr = datasets.load(b.data_name, "train")
    xte, yte = datasets.load(b.data_name, "test")
    for x, split in ((xtr, "train"), (xte, "test")):   # where the data enter: a NaN image is named here
        check_finite(x, f"dataset {b.data_name} ({split} split) images", "repair or remove those images")
    if o.limit:
        xte, yte = xte[: o.limit], yte[: o.limit]
    b.data = dict(xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    b.model = model
    torch.save(model.state_dict(), b.out / "model.pt")
    # the data set as the report and the manifest name it: a user's .npz by its relative path or file name
    b.data_name = display_path(b.data_name) if datasets.is_npz(b.data_name) else b.data_name
    b.summary.update(model=display_model(o), data=b.data_name, method=o.method,
                     float_acc=trainer.evaluate(model, xte, yte))


# training images the BatchNorm statistics are re-estimated on after compression (flow.compress's --calibrate)
BN_CALIB_IMAGES = 1024


def stage_compress(b: Build) -> None:
    o = b.opts
    if o.method == "none":
        b.cmodel = b.model
        return
    calib = torch.from_numpy(b.data["xtr"][:512]) if (o.method == "pq" or any(
        e.get("method") == "pq" for e in o.layers)) else None
    spec = o.compress_spec(b.model)
    # one training image: a Linear after a spatial flatten then cuts its vectors along C (flow.compress.flatten)
    b.cmodel = compress(b.model, spec, data=calib, example=torch.from_numpy(b.data["xtr"][:1]))
    # clip_k=True (a codebook cannot have more entries than the layer has vectors): say where it applied
    clipped = [f"{p.name} (k = {p.k})" for p in plan(b.model, spec) if p.method in ("mvq", "vq")
               and p.k < spec.k and p.name not in spec.overrides]
    if clipped:
        print(f"note: --k {spec.k} is more than some layers have vectors; their codebooks hold one entry per "
              f"vector: {', '.join(clipped)}")
        b.summary["k_clipped"] = clipped
    # as flow.compress does: BatchNorm statistics re-estimated for the compressed weights (compress() did it
    # already when it had calibration data); without it resnet20 reads ~13 % here before fine-tuning
    if calib is None:
        recalibrate_bn_(b.cmodel, torch.from_numpy(b.data["xtr"][:BN_CALIB_IMAGES]))
    b.cmodel.eval()
    b.summary["compressed_acc"] = trainer.evaluate(b.cmodel, b.data["xte"], b.data["yte"])
    b.write_json("compression.json", _report_rows(compression_report(b.cmodel)))


def stage_finetune(b: Build) -> None:
    o, r = b.opts, b.recipe
    if o.method != "none" and r["finetune_epochs"]:
        lim = r["finetune_limit"] or len(b.data["xtr"])
        xf, yf = torch.from_numpy(b.data["xtr"][:lim]), torch.from_numpy(b.data["ytr"][:lim])
        if o.method == "pq":   # PQA / LUT-NN: prototypes and LUT trained jointly, annealed to hard
            pq_finetune(b.cmodel, xf, yf, epochs=r["finetune_epochs"], progress=True)
        else:
            finetune(b.cmodel, xf, yf, epochs=r["finetune_epochs"])
    b.creport = compression_report(b.cmodel)
    if o.method != "none":
        b.summary["finetuned_acc"] = trainer.evaluate(b.cmodel, b.data["xte"], b.data["yte"])
    b.summary["ratio"] = b.creport.ratio
    b.write_json("compression.json", _report_rows(b.creport))
    torch.save(b.cmodel, b.out / "compressed.pt")
    print(b.creport.table())


def _report_rows(report) -> dict:
    return {"ratio": report.ratio, "total_bits": report.total_bits, "float_bits": report.float_bits,
            "layers": [{"name": r.name, "type": r.type, "method": r.method, "params": r.params,
                        "bits": dict(r.bits), "total_bits": r.total_bits} for r in report.rows]}


def stage_quantize(b: Build) -> None:
    calib = torch.from_numpy(b.data["xtr"][: b.recipe["calib"]])
    b.qgraph = quantize_model(b.cmodel, calib)   # warns (one line per layer) when a layer is stored dense
    fallback = b.qgraph.meta.get("dense_fallback_ratio", {})
    if fallback and b.creport is not None:
        # the ratio the engine stores: a codebook layer after a flatten is lowered as dense int8 + int32 bias
        rows = {r.name: r for r in b.creport.rows}
        extra = sum(rows[n].float_bits / v["stored"] - rows[n].total_bits for n, v in fallback.items() if n in rows)
        b.summary["stored_ratio"] = b.creport.float_bits / (b.creport.total_bits + extra)
        b.summary["dense_fallback"] = sorted(fallback)
    b.x_int = quantize_input(b.data["xte"], b.qgraph.in_tensor.scale, b.qgraph.in_tensor.unsigned)
    b.gold = golden_run(b.qgraph, b.x_int)
    yte = b.data["yte"]
    b.summary["golden_acc"] = float((b.gold.reshape(len(yte), -1).argmax(1) == yte).mean())
    np.savez_compressed(b.out / "golden.npz", inputs=b.x_int, outputs=b.gold)
    ref = next((k for k in ("finetuned_acc", "compressed_acc", "float_acc") if k in b.summary), None)
    what = {"finetuned_acc": "the fine-tuned float model", "compressed_acc": "the compressed float model",
            "float_acc": "the float model"}.get(ref, "")
    drop = ref and golden_drop_warning(b.summary[ref], b.summary["golden_acc"], calib.numpy(), b.data["xte"],
                                       what=f"{what} it quantizes ({ref})")
    if drop:
        b.summary.setdefault("warnings", []).append(drop)
        warnings.warn(drop, stacklevel=2)


def stage_lower(b: Build) -> None:
    o = b.opts
    # the board's standard build when the model fits it (its cached engine), else one grown for the model
    # within the board's resources (SizingError lists every limit it cannot meet)
    standard = config_for_board(o.board, n=o.n, m=o.m, row_mux=o.row_mux).to_dict()
    b.engine = size_engine(b.qgraph, o.board, n=o.n, m=o.m, row_mux=o.row_mux)
    grown = {k: v for k, v in b.engine.to_dict().items() if standard.get(k) != v}
    if grown:
        b.summary["engine_sized"] = grown
        print(f"engine sized for the model on {o.board} (not the standard build): "
              + ", ".join(f"{k}={v}" for k, v in sorted(grown.items())))
    b.program = lower(b.qgraph, b.engine)
    if o.engine == "rtl":   # what the RTL engine cannot run yet: refused before anything is packaged
        why = rtl_refusal(b.program)
        if why:
            raise OptionsError(why)
    image = b.program.to_bytes()
    (b.out / "program.bin").write_bytes(image)
    board = get_board(o.board)
    ic = cycle_model.image_cycles(b.program, b.engine)
    b.summary.update(program_bytes=len(image),
                     float_bytes=4 * sum(p.numel() for p in b.model.parameters()),
                     modelled_cycles_per_image=ic.total,
                     modelled_images_per_s=board.clock_mhz * 1e6 / ic.total,
                     resident_ops=sum(op.resident for op in b.program.ops if op.opcode == 1))
    b.write_json("program.json", {"engine": b.engine.to_dict(), "engine_hash": b.engine.hash(),
                                  "ops": [{"name": op.name, "opcode": op.opcode, "resident": op.resident}
                                          for op in b.program.ops],
                                  "bytes": len(image)})


def stage_fit(b: Build) -> None:
    # the HIGH end of the modelled range should fit (the board's standard builds do); a build sized for a
    # model that fits only at the CENTRAL estimate is kept, with a warning and a line in the summary (the
    # model can be wrong either way: Vivado's report decides); over at the central estimate is an error,
    # ResourceError (a ValueError) listing every over-used resource
    try:
        b.usage = check_fit(b.engine, b.opts.board)
        b.summary["fits_at"] = "high"
    except ResourceError as err:
        b.usage = check_fit(b.engine, b.opts.board, level="central")
        b.summary["fits_at"] = "central"
        warnings.warn(f"{err}\n  it fits at the CENTRAL estimate: building it; check Vivado's utilization report",
                      stacklevel=2)
    b.summary["resources"] = {"bram36": b.usage.bram36, "dsp": b.usage.dsp, "lut": b.usage.lut, "ff": b.usage.ff}
    b.write_json("resources.json", usage_json(b.usage, b.opts.board))


def stage_hls(b: Build) -> None:
    from flow.hls.project import write_project   # deferred: jinja2 (the HLS templates), for this stage only

    board = get_board(b.opts.board)
    # the project carries the test vectors, so its own `make csim` re-checks them without Python;
    # Vitis HLS targets the board's part at its clock
    b.project = write_project(b.engine, b.out / "hls", program=b.program, inputs=b.x_int, expected=b.gold,
                              board=board.name, part=board.part, clock_ns=1000.0 / board.clock_mhz,
                              fit_level=b.summary.get("fits_at", "high"))
    problems = lint_project(b.project.path)
    if problems:
        raise BuildError("emitted HLS fails the synthesizability lint: " + "; ".join(map(str, problems[:5])))
    # the resource model again, now charging the run-time multiplies the emitted firmware really has;
    # over budget at the high end is reported (resources.json, a warning), not yet a failed build
    b.usage = estimate(b.engine, board, counts=multiplier_instances(b.project.path))
    over = over_budget(b.usage, board)
    b.summary["resources"] = {"bram36": b.usage.bram36, "dsp": b.usage.dsp, "lut": b.usage.lut, "ff": b.usage.ff}
    b.summary["multiplier_counts"] = undeclared_multiplies(b.usage.counts or {})
    b.summary["over_budget_with_firmware_multiplies"] = over
    b.write_json("resources.json", usage_json(b.usage, board))
    if over:
        warnings.warn("with the emitted firmware's run-time multiplies the engine is over budget at the high end "
                      "of the resource model:\n" + "\n".join("  " + line for line in over), stacklevel=2)


def stage_csim(b: Build) -> None:
    from flow.hls.csim import CsimEngine   # deferred: jinja2 (the engine's C++ templates), for this stage only

    hw = CsimEngine(b.engine, project=b.project)
    n = len(b.x_int)
    outs, cycles = [], 0
    t0 = time.perf_counter()
    for i in tqdm(range(0, n, 64), desc="csim", unit="batch", file=sys.stderr, disable=n <= 64):
        outs.append(hw.predict(b.program, b.x_int[i:i + 64]))
        cycles += hw.modelled_cycles
    b.sim = np.concatenate(outs) if outs else np.zeros((0,), np.int8)
    b.summary["csim_images_per_s"] = n / max(time.perf_counter() - t0, 1e-9)
    b.summary["csim_cycles_per_image"] = cycles // max(1, n)
    yte = b.data["yte"]
    same = np.array([np.array_equal(s, g) for s, g in zip(b.sim, b.gold)])
    b.summary["csim_acc"] = float((b.sim.reshape(n, -1).argmax(1) == yte).mean())
    b.summary["bit_exact"] = int(same.sum())
    b.summary["images"] = int(len(same))
    b.write_json("csim.json", {k: b.summary[k] for k in ("csim_acc", "bit_exact", "images",
                                                          "csim_cycles_per_image", "csim_images_per_s")})


def rtl_refusal(program) -> str | None:
    """--engine rtl: why the RTL engine cannot run the lowered ``program`` (flow.rtl.engine_rtl.unsupported, the
    one statement of the rule), as the build's one-line error; None when it can."""
    why = engine_rtl.unsupported(program)
    return f"--engine rtl: {why}; build it with --engine hls (Vitis HLS) instead" if why else None


def _vendor_kit(b: Build):
    """The build's relocatable vendor handoff (vivado/vivado.tcl, vendor/run_vendor.sh; with --engine rtl also
    rtl/: the Verilog and package_ip.tcl), written afresh: a vendor.VendorKit or an rtl_ip.RtlKit."""
    if b.opts.engine == "rtl":
        return rtl_ip.write_rtl_kit(b.out, b.opts.board, b.engine)
    return vendor.write_vendor_kit(b.out, b.opts.board, b.project.path, b.engine.hash())


def _skipped(res: "vendor.VendorResult", tool: str, b: Build) -> "vendor.VendorResult":
    """A skipped vendor run's message: the one documented command that runs the handoff elsewhere
    (relative paths, board_repo= named), instead of this machine's absolute command line."""
    note = vendor.board_files_note(b.opts.board)
    where = (f"Vivado is installed (copy the build's {rtl_ip.RTL_SUBDIR}/" if b.opts.engine == "rtl"
             else f"Vitis HLS and Vivado are installed (copy the build's {vendor.HLS_SUBDIR}/")
    msg = (f"skipped: {tool} not found\nrun where {where}, vivado/ and vendor/ folders together): "
           f"{vendor.kit_command(b.out)}"
           + (f"\n  board_repo: {note}" if note else ""))
    return vendor.VendorResult(res.ran, res.returncode, res.log, msg, vendor.kit_command(b.out))


def stage_vitis(b: Build) -> None:
    if b.opts.engine == "rtl":   # no Vitis HLS: the RTL engine is packaged as the IP by Vivado
        _stage_rtl_ip(b)
        return
    _vendor_kit(b)
    cmd = vendor.vitis_command(b.project.path, csim=True, synth=True, cosim=True, export=True, impl=True)
    res = vendor.run_or_skip("vitis_hls", cmd, b.project.path, b.out / "vitis.log")
    if not res.ran:
        res = _skipped(res, "vitis_hls", b)
    b.vendor["vitis"] = res
    print(res.message, file=sys.stderr)
    if res.ran and res.returncode != 0:
        raise BuildError(f"vitis_hls failed (exit {res.returncode}): see {b.out / 'vitis.log'}")


def _stage_rtl_ip(b: Build) -> None:
    """--engine rtl: rtl/ (the engine's Verilog, package_ip.tcl), vivado/vivado.tcl and vendor/run_vendor.sh;
    Vivado packages the IP into rtl/ip where it is installed, else the skip line."""
    kit = _vendor_kit(b)
    res = vendor.run_or_skip("vivado", vendor.vivado_command(kit.package_tcl), kit.rtl_dir, b.out / RTL_IP_LOG)
    if not res.ran:
        res = _skipped(res, "vivado", b)
    b.vendor[RTL_IP_TOOL] = res
    print(res.message, file=sys.stderr)
    if res.ran and res.returncode != 0:
        raise BuildError(f"vivado (IP packager) failed (exit {res.returncode}): see {b.out / RTL_IP_LOG}")


# the --engine rtl packaging run: its name in the summary and its log
RTL_IP_TOOL = "vivado ip"
RTL_IP_LOG = "vivado-ip.log"


def stage_vivado(b: Build) -> None:
    kit = _vendor_kit(b)
    # board files Vivado does not ship (PYNQ-Z2: TUL's) from $VQHLS_BOARD_REPO when Vivado runs here
    board_repo = os.environ.get("VQHLS_BOARD_REPO") or None
    res = vendor.run_or_skip("vivado", vendor.vivado_command(kit.vivado_tcl, board_repo=board_repo),
                             kit.vivado_tcl.parent, b.out / "vivado.log")
    if not res.ran:
        res = _skipped(res, "vivado", b)
    b.vendor["vivado"] = res
    print(res.message, file=sys.stderr)
    if res.ran and res.returncode != 0:
        raise BuildError(f"vivado failed (exit {res.returncode}): see {b.out / 'vivado.log'}")


def _verified_bitstream(b: Build) -> tuple[Path, Path] | None:
    """vivado/out/vqhls.{bit,hwh} when they exist and the .hwh names this engine (config hash, register
    offsets: flow.bundle.verify_bitstream); else None, with one warning line when a bitstream was refused.
    What happened goes to b.summary["bitstream"]: {"status": "verified" | "refused" | "absent", ...}."""
    bit = b.out / vendor.VIVADO_SUBDIR / vendor.VIVADO_OUT / f"{vendor.OVERLAY_NAME}.bit"
    hwh = bit.with_suffix(".hwh")
    if not bit.is_file() and not hwh.is_file():
        b.summary["bitstream"] = {"status": "absent"}
        return None
    try:
        ip = bundle.verify_bitstream(bit, hwh, b.engine.hash(), "vivado/out")
    except bundle.BundleError as e:
        b.summary["bitstream"] = {"status": "refused", "reason": str(e)}
        warnings.warn(f"not bundling the bitstream: {e}; the bundle is simulation-only", stacklevel=2)
        return None
    b.summary["bitstream"] = {"status": "verified", "engine_ip": ip.vlnv}
    return bit, hwh


def stage_bundle(b: Build) -> None:
    nvec = min(b.opts.vectors, len(b.x_int))
    bitstream = _verified_bitstream(b)
    tools = _tool_versions()
    meta = b.program.meta
    out_shape = tuple(int(s) for s in b.gold.shape[1:])
    b.bundle_path = bundle.write_bundle(
        b.out / "deploy", program_image=b.program.to_bytes(), engine_config=b.engine.to_dict(),
        config_hash=b.engine.hash(), model=str(b.summary.get("model")), method=b.opts.method, data=b.data_name,
        in_scale=float(b.program.in_scale), in_shape=tuple(int(s) for s in b.program.in_shape),
        in_unsigned=bool(meta.get("in_unsigned")), out_shape=out_shape, out_scale=float(b.program.out_scale),
        out_unsigned=bool(meta.get("out_unsigned")), hls_dir=b.project.path,
        vectors=(b.x_int[:nvec], b.gold[:nvec]), golden_acc=b.summary.get("golden_acc"),
        bit_exact=(b.summary["bit_exact"], b.summary["images"]) if "bit_exact" in b.summary else None,
        tools=tools, bitstream=bitstream, rtl_sources=engine_rtl.engine_sources(b.engine),
        extra={"board": b.opts.board, "modelled_cycles_per_image": b.summary.get("modelled_cycles_per_image"),
               **({"engine": "rtl"} if b.opts.engine == "rtl" else {})})
    b.summary["bundle"] = str(b.bundle_path)


def _tool_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__}
    try:
        out["g++"] = find_cxx()[1]
    except Exception:   # no compiler: the csim stage would have failed already
        out["g++"] = "not found"
    for tool in ("vitis_hls", "vivado"):
        out[tool] = vendor.find_tool(tool) or "not found"
    return out


def stage_report(b: Build) -> None:
    b.report_paths = write_report(b)
    b.summary["report"] = str(b.report_paths[0])


STAGE_FUNCS = {
    "train": stage_train, "compress": stage_compress, "finetune": stage_finetune, "quantize": stage_quantize,
    "lower": stage_lower, "fit": stage_fit, "hls": stage_hls, "csim": stage_csim, "vitis": stage_vitis,
    "vivado": stage_vivado, "bundle": stage_bundle, "report": stage_report,
}
assert tuple(STAGE_FUNCS) == STAGES


def run_stages(b: Build, until: str) -> Build:
    """Run the stages in order up to ``until`` (inclusive)."""
    b.out.mkdir(parents=True, exist_ok=True)
    for name in STAGES[: STAGES.index(until) + 1]:
        # with --engine rtl the vitis stage runs no Vitis HLS: it packages the RTL engine (named so in the log)
        with timed(b, "rtl-ip" if name == "vitis" and b.opts.engine == "rtl" else name):
            STAGE_FUNCS[name](b)
    return b


def clean_partial(b: Build) -> None:
    """Leftovers of an interrupted stage: temporary directories the atomic writers did not rename."""
    for p in b.out.glob(".*.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
