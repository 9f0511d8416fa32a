"""One call from a user's ``nn.Module`` and data to a bit-exact C-simulation.

::

    import flow
    r = flow.simulate(model, x_calib, x_test, method="mvq", k=64, d=8)
    r.bit_exact        # True: the C-simulated engine gives exactly the golden integer model's outputs
    r.csim, r.golden   # integer logits [B, classes]
    r.logits           # the same in real units (csim * out_scale) [B, classes]
    r.engine_config    # the EngineConfig sized for the model on the board (flow.boards.sizing.size_engine)

    d = flow.deploy(model, (x_train, y_train), (x_test, y_test), out="build/mynet", method="mvq", k=64)
    d.bundle           # build/mynet/deploy: the verified deploy bundle (python -m host.run d.bundle --backend sim)
    d.bit_exact        # C-simulation == golden on every test image
    d.summary          # the build's numbers (float / fine-tuned / golden / C-sim accuracy, ratios, cycles)

``simulate`` gives numbers; ``deploy`` is ``python -m flow.build`` for an in-memory model and arrays
(fine-tuning, quantize, lower, HLS, C-sim, bundle, report; docs/api.md). It composes the stages ``flow.build`` runs (flow/build/stages.py): compress (BatchNorm statistics
re-estimated on ``x_calib``), quantize (flow.quant.quantize_model), golden model, engine sizing,
lowering (flow.compile.lower) and the C-simulated engine (flow.hls.csim.CsimEngine). Inputs are float
NCHW images ``[B, C, H, W]`` (numpy or torch), the same the float model takes.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flow.boards.sizing import size_engine
from flow.compile import lower
from flow.quant import quantize_input
from flow.quant import run as golden_run
from flow.quant.accuracy import golden_drop_warning
from models.data import npz_problems

__all__ = ["simulate", "Result", "deploy", "Deployment"]


@dataclass
class Result:
    """What :func:`simulate` returns. ``golden`` / ``csim``: integer outputs ``[B, classes]`` (int64);
    ``logits``: ``csim * out_scale`` (float64) ``[B, classes]``."""

    golden: np.ndarray
    csim: np.ndarray
    bit_exact: bool
    logits: np.ndarray
    engine_config: object
    program: object
    qgraph: object
    model: object                       # the compressed float model (the input model for method='none')
    compression: object | None = None   # flow.compress.compression_report of it (None for method='none')
    dense_fallback: list = field(default_factory=list)   # compressed layers the engine stores dense
    warnings: list = field(default_factory=list)
    float_acc: float | None = None      # the (compressed) float model on x_test, y_test (None without y_test)
    golden_acc: float | None = None     # the golden integer model (None without y_test)
    csim_acc: float | None = None       # the C-simulated engine (None without y_test)
    agreement: float | None = None      # fraction of x_test where golden and the float model pick the same class

    @property
    def predictions(self) -> np.ndarray:
        """Class index per image, from the C-simulation."""
        return self.csim.argmax(1)


def _as_tensor(x, what: str):
    import torch   # deferred: torch; `import flow` (flow.__getattr__ -> flow.api) does not load it

    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.detach().float().cpu()
    if t.ndim != 4:
        raise ValueError(f"simulate: {what} must be float images [B, C, H, W] (NCHW), got shape {tuple(t.shape)}")
    if len(t) == 0:
        raise ValueError(f"simulate: {what} is empty")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"simulate: {what} has {int((~torch.isfinite(t)).sum())} NaN/inf values: "
                         "repair or drop those images")
    return t


def _first_conv_channels(model) -> tuple[str, int] | None:
    """(name, in_channels) of the model's first Conv2d in registration order, None without one."""
    from torch import nn   # deferred: torch (see _as_tensor)

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            return name, int(mod.in_channels)
    return None


def _check_layout(model, x, what: str) -> None:
    """Refuse NHWC images (and images with the wrong channel count) in one line naming the NCHW shape the
    model's first Conv2d reads. Never transposed silently: an [B, 3, H, 3] batch is ambiguous."""
    conv = _first_conv_channels(model)
    if conv is None:
        return
    name, cin = conv
    shape = tuple(x.shape)
    if shape[1] == cin:
        return
    if shape[3] == cin:
        want = (shape[0], shape[3], shape[1], shape[2])
        raise ValueError(f"simulate: {what} has shape {shape}, which looks like NHWC [B, H, W, C]: the model's "
                         f"first Conv2d ({name}) reads {cin} channel(s), so give NCHW {want}: "
                         "x.transpose(0, 3, 1, 2) (numpy) or x.permute(0, 3, 1, 2) (torch)")
    raise ValueError(f"simulate: {what} has {shape[1]} channel(s) (shape {shape}, NCHW), the model's first "
                     f"Conv2d ({name}) reads {cin}")


def _float32_model(model) -> tuple[object, str | None]:
    """``model`` itself when its floating parameters and buffers are float32; otherwise a float32 copy and
    a note naming the dtypes converted (float64, float16, bfloat16: the quantizer works from float32)."""
    import torch   # deferred: torch (see _as_tensor)

    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    other = sorted(str(d).replace("torch.", "") for d in dtypes if d != torch.float32)
    if not other:
        return model, None
    return (copy.deepcopy(model).float(),
            f"the model's parameters are {', '.join(other)}: simulated a float32 copy (the model is unchanged)")


def _accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean())


def simulate(model, x_calib, x_test, method: str = "mvq", *, y_test=None, board: str = "pynq-z2", engine=None,
             **compress_kw) -> Result:
    """Compress ``model`` with ``method`` ('mvq', 'vq', 'pq', 'vecq' or 'none'), quantize it on ``x_calib``,
    size an engine for ``board`` (or use ``engine``, an EngineConfig), lower it and run ``x_test`` on the
    golden integer model and on the C-simulated engine.

    Inputs are float NCHW images [B, C, H, W] (numpy or torch, any float dtype: taken as float32); NHWC
    images are refused in one line naming the NCHW shape (never transposed silently). A float64 or half
    model is simulated as a float32 copy (noted in ``Result.warnings``). With ``y_test`` (labels [B]) the
    Result holds the float, golden and C-sim accuracies, and a golden accuracy more than
    ``flow.quant.accuracy.MARGIN_POINTS`` (2 points) below the float model's is warned about (UserWarning, and in
    ``Result.warnings``) with its likely cause: a small calibration set or calibration images in another
    range than the test images. ``Result.agreement`` (golden vs float top-1) is there without labels.

    ``compress_kw`` go to :func:`flow.compress.compress` (n, m, k, d, skip, overrides, v, K, bits, ...);
    ``clip_k`` defaults to True here, as in ``flow.build``. ``model`` is left untouched.
    Errors are the stages' own (CompressionError, UnsupportedLayerError, QuantizationError,
    SizingError, LoweringError: all ValueError subclasses) with messages naming the layer and the fix.
    """
    import torch                                   # deferred: torch (see _as_tensor)

    from flow.hls.csim import CsimEngine          # deferred: jinja2 (the engine's C++ templates)
    from flow.quant import quantize_model         # deferred: torch (flow.quant.convert)

    xc, xt = _as_tensor(x_calib, "x_calib"), _as_tensor(x_test, "x_test")
    _check_layout(model, xc, "x_calib")
    _check_layout(model, xt, "x_test")
    if xc.shape[1:] != xt.shape[1:]:
        raise ValueError(f"simulate: x_calib images are {tuple(xc.shape[1:])}, x_test images {tuple(xt.shape[1:])}")
    yt = None
    if y_test is not None:
        yt = np.asarray(y_test.detach().cpu() if isinstance(y_test, torch.Tensor) else y_test).reshape(-1)
        if len(yt) != len(xt) or yt.dtype.kind not in "iu":
            raise ValueError(f"simulate: y_test must be {len(xt)} integer labels (one per x_test image), got "
                             f"{yt.dtype.name} {list(np.shape(y_test))}")
    notes: list[str] = []
    fmodel, note = _float32_model(model)
    if note:
        notes.append(note)
        warnings.warn(note, UserWarning, stacklevel=2)
    was_training = fmodel.training
    fmodel.eval()
    try:
        report = None
        if method == "none":
            if compress_kw:
                raise ValueError(f"simulate: method='none' takes no compression arguments, got {sorted(compress_kw)}")
            cmodel = fmodel
        else:
            from flow.compress import compress, compression_report   # deferred: torch, only when compressing

            compress_kw.setdefault("clip_k", True)
            cmodel = compress(fmodel, method=method, data=xc, **compress_kw).eval()
            report = compression_report(cmodel)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            q = quantize_model(cmodel, xc)
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        cfg = engine if engine is not None else size_engine(q, board)
        prog = lower(q, cfg)
        x_int = quantize_input(xt, q.in_tensor.scale, q.in_tensor.unsigned)
        gold = golden_run(q, x_int)
        sim = CsimEngine(cfg).predict(prog, x_int)
        with torch.no_grad():
            fpred = cmodel(xt).reshape(len(xt), -1).argmax(1).numpy()
    finally:
        fmodel.train(was_training)
    B = len(xt)
    gold2 = np.asarray(gold).reshape(B, -1).astype(np.int64)
    sim2 = np.asarray(sim).reshape(B, -1).astype(np.int64)
    notes += [str(w.message) for w in caught]
    res = Result(golden=gold2, csim=sim2, bit_exact=bool(np.array_equal(gold2, sim2)),
                 logits=sim2.astype(np.float64) * float(q.out_tensor.scale), engine_config=cfg, program=prog,
                 qgraph=q, model=cmodel, compression=report,
                 dense_fallback=list(q.meta.get("dense_fallback", [])), warnings=notes,
                 agreement=_accuracy(gold2.argmax(1), fpred))
    if yt is not None:
        res.float_acc, res.golden_acc = _accuracy(fpred, yt), _accuracy(gold2.argmax(1), yt)
        res.csim_acc = _accuracy(sim2.argmax(1), yt)
        msg = golden_drop_warning(res.float_acc, res.golden_acc, np.asarray(xc), np.asarray(xt),
                                  what="the float model" if method == "none" else "the compressed float model")
        if msg:
            res.warnings.append(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
    return res


# --------------------------------------------------------------------------- deploy: the build, in memory

# BuildOptions fields deploy() sets itself (the model, its data, where) or that would retrain the model
_DEPLOY_OWN = {"model", "model_file", "checkpoint", "data", "out", "train_epochs", "retrain", "board", "method",
               "layers"}
_HANDOFF: list = []   # the model of the deploy() call in progress, for its inputs/<name>.py factory

_FACTORY_SOURCE = '''"""Written by flow.deploy: hands the model of its call to flow.build (its weights: model.pt beside).

Outside that call there is no model here: to rebuild from the command line, give your own model file,
e.g. python -m flow.build --model-file mynet.py:factory --checkpoint <this folder>/model.pt
--data <this folder>/data.npz.
"""
from flow.api import deployed_model as factory  # noqa: F401
'''


def deployed_model():
    """The model of the :func:`deploy` call in progress (a float32 copy); the factory of the model file
    deploy writes for flow.build. Outside a deploy() call: ValueError saying how to rebuild instead."""
    if not _HANDOFF:
        raise ValueError("this model file was written by flow.deploy for its own call and holds no model: give "
                         "your own --model-file path.py:factory with --checkpoint <out>/inputs/model.pt")
    return copy.deepcopy(_HANDOFF[-1])


@dataclass
class Deployment:
    """What :func:`deploy` returns: where the build wrote the bundle and the report, and its numbers."""

    out: Path                   # the build directory
    bundle: Path | None         # <out>/deploy (None when stage stopped before 'bundle')
    report: Path | None         # <out>/report.md (None when stage stopped before 'report')
    summary: dict               # the build's summary (what --json writes): accuracies, ratios, cycles, ...
    warnings: list = field(default_factory=list)
    build: object = None        # the flow.build.Build (its model, qgraph, program, engine)

    @property
    def bit_exact(self) -> bool:
        """C-simulation equals the golden integer model on every test image (False when csim did not run)."""
        s = self.summary
        return "bit_exact" in s and s["bit_exact"] == s.get("images")


def _as_array(x, what: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if a.dtype == object:
        raise ValueError(f"deploy: {what} is not a numeric array")
    return a


def _split(pair, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise ValueError(f"deploy: {what} must be a pair (images [N, C, H, W], labels [N]), got {type(pair).__name__}")
    return _as_array(pair[0], f"{what} images"), _as_array(pair[1], f"{what} labels")


def deploy(model, train, test, *, out: str | Path | None = None, method: str = "mvq", board: str = "pynq-z2",
           **options) -> Deployment:
    """From an in-memory float model and arrays to a fine-tuned, bit-exact deploy bundle: ``python -m
    flow.build`` with the model and the data given here, the same stages (compress, fine-tune, quantize,
    lower, fit, hls, csim, vitis/vivado where installed, bundle, report) and the same options.

    ``train`` / ``test``: ``(images, labels)``, images NCHW float (in the range the model was trained on)
    or uint8 0..255 (scaled to 0..1), labels integers 0..classes-1; numpy or torch. Calibration and
    fine-tuning use ``train``, golden / C-sim accuracy ``test``. ``options`` are flow.build's flags with
    ``_`` for ``-`` (k, d, n, m, v, K, bits, vecq_scheme, finetune_epochs, limit, vectors, stage, json,
    recipe); the model is not trained again. ``out`` defaults to ``build/<class name>-<method>``.

    It writes ``<out>/inputs/``: ``data.npz`` (x_train, y_train, x_test, y_test: ``python -m host.run
    <out>/deploy --data <out>/inputs/data.npz`` runs its test split), ``model.pt`` (the state_dict) and
    the model file that hands the model to flow.build. Returns a :class:`Deployment`; a golden accuracy
    more than ``flow.quant.accuracy.MARGIN_POINTS`` below the (fine-tuned) float model's is warned about with its likely
    cause. Errors are flow.build's (ValueError / RuntimeError subclasses, one line each)."""
    import torch   # deferred: torch (see _as_tensor)

    import flow.build as fb   # deferred: flow.build imports torch, tqdm and every stage
    from flow.build.options import parse   # deferred: with flow.build (torch, via flow.compress)

    bad = sorted(set(options) - ({f for f in fb.BuildOptions.__dataclass_fields__} - _DEPLOY_OWN))
    if bad:
        own = sorted(set(options) & _DEPLOY_OWN)
        raise ValueError(f"deploy: unknown option(s) {', '.join(bad)}"
                         + (f" ({', '.join(own)}: deploy sets these itself from its arguments)" if own else "")
                         + ": use flow.build's flags with _ for - (python -m flow.build --help)")
    xtr, ytr = _split(train, "train")
    xte, yte = _split(test, "test")
    fmodel, note = _float32_model(model)
    notes = [note] if note else []
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    for x, what in ((xtr, "train"), (xte, "test")):
        if x.ndim == 4:
            _check_layout(fmodel, x, f"{what} images")
    name = type(model).__name__.lower() or "model"
    out_dir = Path(out) if out is not None else Path("build") / f"{name}-{method}"
    argv = ["--board", board, "--method", method, "--out", str(out_dir)]
    for key, value in options.items():
        if value is not None:
            argv += ["--" + key.replace("_", "-"), str(value)]
    inputs = out_dir / "inputs"
    npz, ckpt, mfile = inputs / "data.npz", inputs / "model.pt", inputs / f"{name}.py"
    argv += ["--model-file", f"{mfile}:factory", "--checkpoint", str(ckpt), "--data", str(npz)]
    opts = parse(argv)   # every flag checked as on the command line, before anything is written
    inputs.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(".data.tmp.npz")
    np.savez(tmp, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    problems = npz_problems(tmp)
    if problems:
        tmp.unlink()
        raise ValueError("deploy: " + "; ".join(p.replace(f"--data {tmp}: ", "") for p in problems))
    tmp.replace(npz)
    torch.save(fmodel.state_dict(), ckpt)
    mfile.write_text(_FACTORY_SOURCE)
    _HANDOFF.append(fmodel)
    try:
        b = fb.run(opts)
    finally:
        _HANDOFF.pop()
    s = b.summary
    notes += list(s.get("warnings", []))   # the build's own (golden vs float: flow.build.stages warns already)
    return Deployment(out=b.out, bundle=b.bundle_path, report=b.report_paths[0] if b.report_paths else None,
                      summary=dict(s), warnings=notes, build=b)
