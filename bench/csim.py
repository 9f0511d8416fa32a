"""C-simulation speed: vqhls's engine vs hls4ml's compile()/predict(), in one run.

    python bench/csim.py [--resnet-images N]

Rows: vqhls C-sim (shared-library bridge) on lenet-digits uncompressed and
MVQ 2:4, on resnet20 (Fashion-MNIST, MVQ 2:4), each checked bit-exact
against the golden model; hls4ml 1.3 (Vivado backend, io_parallel and
io_stream, ap_fixed<16,6>) on the same uncompressed lenet-digits.
Writes RESULTS/ (bench/results, or $VQHLS_BENCH_OUT: ``make bench`` puts build/bench there) csim.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see flow/__init__.py

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save, table  # noqa: E402
from flow.compile import EngineConfig, lower  # noqa: E402
from flow.compress import compress, finetune  # noqa: E402
from flow.hls.csim import CsimEngine  # noqa: E402
from flow.quant import quantize_input, quantize_model  # noqa: E402
from flow.quant import run as golden_run  # noqa: E402
from models import data as datasets  # noqa: E402
from models import train as trainer  # noqa: E402


def _time(fn, min_seconds: float = 1.0) -> tuple[float, object]:
    """Seconds per call (repeating until min_seconds have passed) and the last result."""
    reps, t0 = 0, time.perf_counter()
    while True:
        out = fn()
        reps += 1
        if time.perf_counter() - t0 >= min_seconds:
            return (time.perf_counter() - t0) / reps, out


def vqhls_row(label: str, model, data_name: str, limit: int | None, method: str | None) -> dict:
    xtr, _ = datasets.load(data_name, "train")
    xte, yte = datasets.load(data_name, "test")
    if limit:
        xte, yte = xte[:limit], yte[:limit]
    if method:  # as make csim does: compress, re-estimate BN, one short codebook fine-tuning epoch
        model = compress(model, method=method, n=2, m=4, k=64 if "lenet" in label else 256, d=8, clip_k=True,
                         data=torch.from_numpy(xtr[:1024]))
        _, ytr = datasets.load(data_name, "train")
        finetune(model, torch.from_numpy(xtr[:5000]), torch.from_numpy(ytr[:5000]), epochs=1)
    q = quantize_model(model, torch.from_numpy(xtr[:256]))
    x = quantize_input(xte, q.in_tensor.scale, q.in_tensor.unsigned)
    engine = EngineConfig()
    prog = lower(q, engine)
    hw = CsimEngine(engine)
    hw.predict(prog, x[:1])  # warm: compile / load the shared library outside the timing
    sec, out = _time(lambda: hw.predict(prog, x))
    gold = golden_run(q, x)
    exact = sum(np.array_equal(a, b) for a, b in zip(out, gold))
    return dict(impl="vqhls csim", model=label, images=len(x), images_per_s=len(x) / sec,
                bit_exact=f"{exact}/{len(x)}", accuracy=100 * float((out.reshape(len(x), -1).argmax(1) == yte).mean()))


def hls4ml_row(model, io_type: str) -> dict:
    import hls4ml

    xte, yte = datasets.load("digits", "test")
    cfg = hls4ml.utils.config_from_pytorch_model(model, input_shape=(1, 8, 8), granularity="name",
                                                 default_precision="ap_fixed<16,6>")
    tmp = tempfile.mkdtemp(prefix="hls4ml-bench-")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hm = hls4ml.converters.convert_from_pytorch_model(model, hls_config=cfg, output_dir=tmp,
                                                              backend="Vivado", io_type=io_type)
            t = time.perf_counter()
            hm.compile()
            compile_s = time.perf_counter() - t
            x = np.ascontiguousarray(xte)
            sec, out = _time(lambda: hm.predict(x))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    acc = 100 * float((np.asarray(out).reshape(len(x), -1).argmax(1) == yte).mean())
    return dict(impl=f"hls4ml {hls4ml.__version__} {io_type}", model="lenet-digits (float)", images=len(x),
                images_per_s=len(x) / sec, bit_exact="n/a", accuracy=acc, compile_s=compile_s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resnet-images", type=int, default=100,
                    help="resnet20 test images C-simulated (default %(default)s)")
    ap.add_argument("--skip-hls4ml", action="store_true", help="leave out the hls4ml comparison row")
    a = ap.parse_args()
    lenet = trainer.get_trained("lenet-digits", "digits")
    rows = [vqhls_row("lenet-digits (int8)", lenet, "digits", None, None),
            vqhls_row("lenet-digits (MVQ 2:4)", lenet, "digits", None, "mvq")]
    if not a.skip_hls4ml:
        rows += [hls4ml_row(lenet, "io_parallel"), hls4ml_row(lenet, "io_stream")]
    r20 = trainer.get_trained("resnet20", "fashion-mnist")
    rows.append(vqhls_row("resnet20 (MVQ 2:4)", r20, "fashion-mnist", a.resnet_images, "mvq"))
    print(table(rows, ["impl", "model", "images", "images_per_s", "bit_exact", "accuracy"]))
    print(f"\nwrote {save('csim', {'rows': rows}, __file__)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
