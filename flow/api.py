"""One call from a user's ``nn.Module`` and data to a bit-exact C-simulation.

::

    import flow
    r = flow.simulate(model, x_calib, x_test, method="mvq", k=64, d=8)
    r.bit_exact        # True: the C-simulated engine gives exactly the golden integer model's outputs
    r.csim, r.golden   # integer logits [B, classes]
    r.logits           # the same in real units (csim * out_scale) [B, classes]
    r.engine_config    # the EngineConfig sized for the model on the board (flow.boards.sizing.size_engine)

It composes the stages ``flow.build`` runs (flow/build/stages.py): compress (BatchNorm statistics
re-estimated on ``x_calib``), quantize (flow.quant.quantize_model), golden model, engine sizing,
lowering (flow.compile.lower) and the C-simulated engine (flow.hls.csim.CsimEngine). Inputs are float
NCHW images ``[B, C, H, W]`` (numpy or torch), the same the float model takes.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from flow.boards.sizing import size_engine
from flow.compile import lower
from flow.quant import quantize_input
from flow.quant import run as golden_run

__all__ = ["simulate", "Result"]


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
    return t


def simulate(model, x_calib, x_test, method: str = "mvq", *, board: str = "pynq-z2", engine=None,
             **compress_kw) -> Result:
    """Compress ``model`` with ``method`` ('mvq', 'vq', 'pq', 'vecq' or 'none'), quantize it on ``x_calib``,
    size an engine for ``board`` (or use ``engine``, an EngineConfig), lower it and run ``x_test`` on the
    golden integer model and on the C-simulated engine.

    ``compress_kw`` go to :func:`flow.compress.compress` (n, m, k, d, skip, overrides, v, K, bits, ...);
    ``clip_k`` defaults to True here, as in ``flow.build``. ``model`` is left untouched.
    Errors are the stages' own (CompressionError, UnsupportedLayerError, QuantizationError,
    SizingError, LoweringError: all ValueError subclasses) with messages naming the layer and the fix.
    """
    from flow.hls.csim import CsimEngine          # deferred: jinja2 (the engine's C++ templates)
    from flow.quant import quantize_model         # deferred: torch (flow.quant.convert)

    xc, xt = _as_tensor(x_calib, "x_calib"), _as_tensor(x_test, "x_test")
    if xc.shape[1:] != xt.shape[1:]:
        raise ValueError(f"simulate: x_calib images are {tuple(xc.shape[1:])}, x_test images {tuple(xt.shape[1:])}")
    was_training = model.training
    model.eval()
    try:
        report = None
        if method == "none":
            if compress_kw:
                raise ValueError(f"simulate: method='none' takes no compression arguments, got {sorted(compress_kw)}")
            cmodel = model
        else:
            from flow.compress import compress, compression_report   # deferred: torch, only when compressing

            compress_kw.setdefault("clip_k", True)
            cmodel = compress(model, method=method, data=xc, **compress_kw).eval()
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
    finally:
        model.train(was_training)
    B = len(xt)
    gold2 = np.asarray(gold).reshape(B, -1).astype(np.int64)
    sim2 = np.asarray(sim).reshape(B, -1).astype(np.int64)
    return Result(golden=gold2, csim=sim2, bit_exact=bool(np.array_equal(gold2, sim2)),
                  logits=sim2.astype(np.float64) * float(q.out_tensor.scale), engine_config=cfg, program=prog,
                  qgraph=q, model=cmodel, compression=report,
                  dense_fallback=list(q.meta.get("dense_fallback", [])), warnings=[str(w.message) for w in caught])


