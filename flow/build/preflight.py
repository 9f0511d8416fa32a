"""Everything ``flow.build`` can check before training, checked before training.

``preflight(opts)`` runs before the first stage (before the build directory is
created) and raises one :class:`OptionsError` listing every problem it found:

* the data set (present, finite) and the model (zoo name, ``--model-file``
  factory, ``--checkpoint`` present, loadable into the model, finite), the
  checkpoint cache (``VQHLS_CACHE``) when a zoo model may be trained;
* the compression: ``flow.compress.plan`` of the method and its settings against
  the *untrained* model (what ``compress`` would do to each layer, without
  clustering), and a method that would compress no layer at all;
* the engine and the board: ``config_for_board(board, n, m)``, the board's
  resource budget, and every planned layer against the engine's limits (codebook
  size and codeword length, the PEs' n:m, the lookup unit's v / K / subspaces);
* a dry run of compress (one k-means iteration) -> quantize -> lower on the
  untrained model: layers the quantizer does not support, activation buffers,
  channels, kernels, op count, buffers and placement, as the real stages check them;
  a model the standard build is too small for is sized as the lower stage will size it
  (``flow.boards.sizing.size_engine``: activation buffer, channels, kernel, ops grown
  within the board's resources), and refused only when no build on the board holds it;
* ``--engine rtl``: the dry run's Program against what the RTL engine runs (flow.rtl.engine_rtl.unsupported,
  e.g. no weights streamed from DDR at run time);
* the toolchain: the C++ compiler when the build goes as far as C-simulation.

Only what the stages up to ``--stage`` need is checked. Limits that depend on the
trained weights (accumulator ranges, LUT values) are still checked by the stages.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import sys
import warnings
from typing import Any

import torch

from engine_io.cache import cache_dir
from engine_io.gxx_build import ToolchainError, find_cxx
from flow.boards import get_board
from flow.boards.resource_model import check_fit
from flow.boards.sizing import SizingError, config_for_board, size_engine
from flow.build.options import STAGES, BuildOptions, OptionsError
from flow.build.options import one_line as _one_line
from flow.build.stages import _load_checkpoint, load_model_file, rtl_refusal
from flow.compile import lower
from flow.compile.lower import LoweringError
from flow.compress import compress, plan
from flow.compress.errors import CompressionError
from flow.compress.spec import CompressSpec
from flow.finite import NonFiniteError, check_model_finite
from flow.quant.convert import UnsupportedLayerError, check_module_types, quantize_model, trace
from models import data as datasets
from models import zoo


def _needs(opts: BuildOptions, stage: str) -> bool:
    return STAGES.index(opts.stage) >= STAGES.index(stage)


def probe_model(opts: BuildOptions, problems: list[str]) -> tuple[str | None, Any]:
    """(dataset name, untrained model -- or the --checkpoint's) without training; problems appended."""
    if opts.model_file:
        if not opts.data:
            problems.append("--model-file needs --data (the dataset to calibrate, fine-tune and test on)")
            return None, None
        data_name = opts.data
        if not _data_ok(data_name, problems):
            data_name = None
        try:
            model = load_model_file(opts.model_file)
        except OptionsError as e:
            problems.append(str(e))
            return data_name, None
    else:
        try:
            zoo._check(opts.model)
        except ValueError as e:
            problems.append(str(e))
            return None, None
        default = zoo.default_dataset(opts.model)
        data_name = opts.data or ("fashion-mnist" if default == "cifar10" else default)
        if not _data_ok(data_name, problems):
            return None, None
        info = datasets.info(data_name)
        model = zoo.get(opts.model, in_channels=info["shape"][0], num_classes=info["classes"])
        if not opts.checkpoint:   # a zoo model without --checkpoint is trained into the cache (or read from it)
            try:
                cache_dir("checkpoints")
            except (OSError, ValueError) as e:
                msg = _one_line(e)
                problems.append(f"the checkpoint cache: {msg}" if "VQHLS_CACHE" in msg else
                                f"the checkpoint cache is not usable ({msg}): set VQHLS_CACHE to a writable "
                                "directory (or unset it)")
    if opts.checkpoint:
        try:
            _load_checkpoint(model, opts.checkpoint)
            check_model_finite(model, f"checkpoint {opts.checkpoint}")
        except (OptionsError, NonFiniteError) as e:
            problems.append(str(e))
    model.eval()
    return data_name, model


def _data_ok(data_name: str, problems: list[str]) -> bool:
    """A built-in data set name or a user's .npz that loads (keys, dtypes, NCHW shapes, labels: every
    problem appended, one line each)."""
    if datasets.is_npz(data_name):
        found = datasets.npz_problems(data_name)
        problems.extend(found)
        return not found
    if data_name not in datasets.INFO:
        problems.append(f"--data {data_name}: unknown dataset: choose one of {', '.join(datasets.DATASETS)} "
                        "or give a .npz (x_train, y_train, x_test, y_test)")
        return False
    return True


def _output_problem(opts: BuildOptions, model, x, classes: int) -> str | None:
    """The model's output count against the data's classes (a forward pass on two test images)."""
    try:
        with torch.no_grad():
            y = model.eval()(torch.from_numpy(x[:2]))
    except Exception as e:   # the model cannot take these images at all: one line naming both
        return (f"the model {opts.model_file or opts.model} fails on the data's images {tuple(x.shape[1:])} "
                f"(C, H, W): {type(e).__name__}: {_one_line(e)}")
    if not isinstance(y, torch.Tensor) or y.dim() != 2:
        return (f"the model {opts.model_file or opts.model} returns "
                f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__} per batch: it must "
                "return logits [N, classes]")
    if y.shape[1] != classes:
        return (f"the model {opts.model_file or opts.model} has {y.shape[1]} outputs but the data set "
                f"{opts.data or ''} has {classes} classes: make its last layer output {classes}".replace("  ", " "))
    return None


def _unmatched_rules(opts: BuildOptions, names: list[str]) -> list[str]:
    """Recipe [[layers]] rules whose pattern matches no Conv2d / Linear layer (they would be ignored)."""
    return [f"recipe {opts.recipe}: [[layers]] match = {e['match']!r} matches no layer: the Conv2d / Linear "
            f"layers are {', '.join(names) or 'none'}" for e in opts.layers
            if not any(fnmatch.fnmatchcase(n, e["match"]) for n in names)]


def _limit_problems(plans, model, engine) -> list[str]:
    """Every planned layer against the engine's compile-time limits: all of them, each limit once with the
    layers that break it."""
    broken: dict[str, list[str]] = {}   # limit (and its fix) -> "layer (value)"

    def add(limit: str, name: str, value: str) -> None:
        broken.setdefault(limit, []).append(f"{name} ({value})")

    mods = dict(model.named_modules())
    for p in plans:
        if p.method in ("mvq", "vq"):
            if p.k > engine.k_max:
                add(f"codebook size k > engine.k_max = {engine.k_max}: use --k {engine.k_max} or less", p.name,
                    f"k = {p.k}")
            if p.d > engine.d_max:
                add(f"codeword length d > engine.d_max = {engine.d_max}: use --d {engine.d_max} or less", p.name,
                    f"d = {p.d}")
            elif p.d and p.d % engine.lanes and engine.lanes % p.d:
                add(f"codeword length d and engine.lanes = {engine.lanes}: one must divide the other", p.name,
                    f"d = {p.d}")
            # any N:M mask runs: the array takes denser groups in passes (flow.compile.lower, layout.passes_of)
        elif p.method == "pq":
            if not engine.pq:
                add("a PQ layer, but the engine has no lookup unit (engine.pq = False)", p.name, "pq")
                continue
            D = mods[p.name].weight[0].numel()
            if p.v > engine.pq_v_max:
                add(f"PQ subvector length v > engine.pq_v_max = {engine.pq_v_max}: use --v {engine.pq_v_max} or less",
                    p.name, f"v = {p.v}")
            if p.K > engine.pq_k_max:
                add(f"PQ prototypes per subspace K > engine.pq_k_max = {engine.pq_k_max}: use --K "
                    f"{engine.pq_k_max} or less", p.name, f"K = {p.K}")
            if p.v and D // p.v > engine.pq_subspaces_max:
                add(f"PQ subspaces KH*KW*C/v > engine.pq_subspaces_max = {engine.pq_subspaces_max}: use a larger --v",
                    p.name, f"{D // p.v}")
    return [f"{limit.split(':')[0]} in layer{'s' if len(ls) > 1 else ''} {', '.join(ls)}"
            + (f":{limit.split(':', 1)[1]}" if ":" in limit else "") for limit, ls in broken.items()]


def _nothing_compressed(opts: BuildOptions, plans, model, engine) -> str | None:
    """The method compresses no layer at all (e.g. PQ whose v divides no patch length): say why."""
    if opts.method == "none" or any(p.method != "none" for p in plans):
        return None
    if opts.method != "pq":
        return (f"--method {opts.method} compresses no layer of this model (every Conv2d/Linear stays dense): "
                "use --method none, or name layers in a recipe's [[layers]]")
    mods = dict(model.named_modules())
    names = [p.name for p in plans]
    skip = {names[0], names[-1]} if names else set()   # 'first' / 'last', PQ's default skip
    lengths = {n: mods[n].weight[0].numel() for n in names
               if n not in skip and getattr(mods[n], "kernel_size", (3, 3)) != (1, 1)}
    vmax = engine.pq_v_max if engine is not None else 9
    ok = sorted(((sum(D % v == 0 for D in lengths.values()), v) for v in range(2, vmax + 1)), reverse=True)
    hint = " or ".join(f"--v {v}" for n, v in ok[:3] if n)
    listing = ", ".join(f"{n} {D}" for n, D in lengths.items())
    return (f"--method pq --v {opts.v} compresses no layer (PQ keeps the first and last layer and 1x1 convs dense, "
            f"and layers whose patch length KH*KW*C is not a multiple of v; patch lengths: {listing or 'none'})"
            + (f": choose a v dividing them, e.g. {hint}" if hint else ""))


def _dry_run(opts: BuildOptions, model, spec: CompressSpec | None, x, engine) -> str | None:
    """compress (one k-means iteration) -> quantize -> lower on the untrained model; the first structural
    error, or None. Numeric errors that depend on trained weights are left to the stages."""
    x = torch.from_numpy(x)
    try:
        with warnings.catch_warnings():   # the stages report them (a dry run on an untrained model)
            warnings.simplefilter("ignore")
            cmodel = model
            if opts.method != "none":
                cmodel = compress(model, spec, iters=1, data=x if _uses_pq(opts) else None, example=x[:1])
            if not _needs(opts, "quantize"):
                return None
            q = quantize_model(cmodel, x)
        if engine is not None and _needs(opts, "lower"):
            try:
                prog = lower(q, engine)
            except LoweringError:   # the standard build is too small: the lower stage sizes one for the model
                sized = size_engine(q, opts.board, n=opts.n, m=opts.m)   # SizingError: every limit it cannot meet
                prog = lower(q, sized) if opts.engine == "rtl" else None
            if opts.engine == "rtl":   # placement (shapes and engine), not weights, decides: the lower stage
                why = rtl_refusal(prog)   # checks the trained model's Program again
                if why:
                    return why
    except (UnsupportedLayerError, LoweringError, CompressionError, SizingError) as e:
        return f"{_one_line(e)} (found before training, on the untrained model)"
    except Exception:   # anything weight-dependent (scales, ranges): the stages check it on the trained model
        return None
    return None


def _uses_pq(opts: BuildOptions) -> bool:
    return opts.method == "pq" or any(e.get("method") == "pq" for e in opts.layers)


def preflight(opts: BuildOptions) -> None:
    """Raise one OptionsError listing every problem found before training (module docstring)."""
    problems: list[str] = []
    notes: list[str] = []
    board = get_board(opts.board)   # an unknown board: nothing else can be checked

    if _needs(opts, "csim"):
        try:
            find_cxx()
        except ToolchainError as e:
            problems.append(f"C-simulation needs a C++ compiler: {e}")

    engine = None
    if _needs(opts, "lower"):
        try:
            engine = config_for_board(opts.board, n=opts.n, m=opts.m)
        except ValueError as e:
            problems.append(f"the {board.name} engine for --n {opts.n} --m {opts.m}: {_one_line(e)}")
        if engine is not None and _needs(opts, "fit"):
            try:
                check_fit(engine, board)
            except ValueError as e:
                problems.append(_one_line(e))
        if engine is not None and not engine.pq and _uses_pq(opts):
            # the standard build has no lookup unit; the lower stage sizes one with it for a model with PQ
            # layers (flow.boards.sizing.size_engine), so the layers are checked against its limits
            engine = dataclasses.replace(engine, pq=True)

    data_name, model = probe_model(opts, problems)
    x = None
    if data_name is not None:
        try:
            x = datasets.load(data_name, "test")[0][:8]
        except (ValueError, RuntimeError, OSError) as e:   # DatasetError: missing files, with the fix
            problems.append(_one_line(e))

    if model is not None and x is not None:
        err = _output_problem(opts, model, x, datasets.info(data_name)["classes"])
        if err:
            problems.append(err)
    if model is not None and opts.layers:
        problems.extend(_unmatched_rules(opts, [n for n, m in model.named_modules()
                                                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]))

    if model is not None and _needs(opts, "quantize"):   # layers the quantizer cannot run, whatever the method
        try:
            check_module_types(trace(model))
        except UnsupportedLayerError as e:
            problems.append(_one_line(e))

    if model is not None and _needs(opts, "compress") and opts.method != "none":
        try:
            plans = plan(model, opts.compress_spec(model))
        except ValueError as e:
            problems.append(f"--method {opts.method}: {_one_line(e)}")
            plans = None
        if plans is not None:
            if engine is not None:
                problems.extend(_limit_problems(plans, model, engine))
            nothing = _nothing_compressed(opts, plans, model=model, engine=engine)
            if nothing:
                problems.append(nothing)
            elif opts.method == "pq":
                kept = [p.name for p in plans if p.method == "none"]
                if kept:
                    notes.append(f"note: PQ keeps {', '.join(kept)} dense (first / last layer, 1x1 conv, or a "
                                 f"patch length not a multiple of v = {opts.v})")

    if not problems and model is not None and x is not None and _needs(opts, "quantize"):
        spec = opts.compress_spec(model) if opts.method != "none" else None
        err = _dry_run(opts, model, spec=spec, x=x, engine=engine)
        if err:
            problems.append(err)

    if not problems:
        for line in notes:
            print(line, file=sys.stderr)
        return
    if problems:
        head = "" if len(problems) == 1 else f"{len(problems)} problems, found before any training: "
        raise OptionsError(head + "; ".join(f"({i + 1}) {p}" if len(problems) > 1 else p
                                            for i, p in enumerate(problems)))
