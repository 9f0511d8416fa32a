"""Compress a trained zoo model and report size and accuracy.

    python -m flow.compress --model lenet-digits --method mvq --n 2 --m 4 --k 64 --d 8 [--finetune-epochs E]

Prints the per-layer storage table and the test accuracy of the float model,
the compressed model, the compressed model with BatchNorm statistics
re-estimated on training images (``--calibrate``), and after fine-tuning
(``--finetune-epochs``).  Bad input: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time

import torch

from models import data as datasets
from models import zoo
from models.data import DatasetError
from models.train import evaluate, get_trained

from .api import compress, compression_report, plan, recalibrate_bn_
from .finetune import finetune, pq_finetune
from .spec import DEFAULT_SKIP, CompressSpec

_DEFAULT = CompressSpec()  # the flags' defaults are the spec's


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m flow.compress", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="zoo model name (lenet-digits, cnn-fmnist, resnet20)")
    ap.add_argument("--data", default=None, help="dataset (default: the model's)")
    ap.add_argument("--method", default=_DEFAULT.method,
                    help="mvq (N:M + masked k-means), vq (dense codebooks), pq (lookup tables), vecq (b-bit weights)")
    ap.add_argument("--n", type=int, default=_DEFAULT.n, help="keep n of every m weights (default %(default)s)")
    ap.add_argument("--m", type=int, default=_DEFAULT.m, help="N:M group size (default %(default)s)")
    ap.add_argument("--k", type=int, default=_DEFAULT.k, help="codebook size (default %(default)s)")
    ap.add_argument("--d", type=int, default=_DEFAULT.d, help="vector length along Cin (default %(default)s)")
    ap.add_argument("--mask-group", type=int, default=_DEFAULT.mask_group,
                    help="mvq: g output channels share one N:M pattern per input position (must divide every "
                         "compressed layer's output channels; default %(default)s = a pattern per channel)")
    ap.add_argument("--iters", type=int, default=_DEFAULT.iters, help="k-means iterations (default %(default)s)")
    ap.add_argument("--v", type=int, default=_DEFAULT.v, help="pq: subvector length (default %(default)s)")
    ap.add_argument("--K", type=int, default=_DEFAULT.K, help="pq: prototypes per subspace (default %(default)s)")
    ap.add_argument("--lut-bits", type=int, default=_DEFAULT.lut_bits,
                    help="pq: LUT bits, 8 or 16 (default %(default)s)")
    ap.add_argument("--bits", type=int, default=_DEFAULT.bits,
                    help="vecq: weight bits, 1..7 paper scheme, 2..8 sweep (default %(default)s)")
    ap.add_argument("--vecq-scheme", default=_DEFAULT.vecq_scheme, choices=("paper", "sweep"),
                    help="vecq: paper (half-integer levels, lambda*std step, least-squares scale; default) or "
                         "sweep (symmetric levels, exact vector-loss step)")
    ap.add_argument("--seed", type=int, default=_DEFAULT.seed,
                    help="seed of k-means initialization (default %(default)s)")
    ap.add_argument("--skip", nargs="*", default=None,
                    help="layers kept dense: 'first', 'last' and/or module names (default: first last; none "
                         "for vecq's paper scheme, which quantizes every layer)")
    ap.add_argument("--clip-k", action="store_true", help="use min(k, vectors) per layer instead of failing")
    ap.add_argument("--float-codebooks", action="store_true", help="keep float32 codebooks (default: int8)")
    ap.add_argument("--train-epochs", type=int, default=None, help="epochs for the float model (default: zoo's)")
    ap.add_argument("--train-limit", type=int, default=None, help="train the float model on the first N images")
    ap.add_argument("--calibrate", type=int, default=1024,
                    help="training images for BatchNorm re-estimation after compression (0: off; default 1024)")
    ap.add_argument("--finetune-epochs", type=int, default=0, help="fine-tuning epochs (default 0)")
    ap.add_argument("--finetune-lr", type=float, default=1e-3,
                    help="fine-tuning learning rate (Adam; default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="fine-tuning batch size (default %(default)s)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the report and accuracies as JSON")
    ap.add_argument("--quiet", action="store_true", help="no training progress on stderr")
    return ap


def spec_from_args(a: argparse.Namespace) -> CompressSpec:
    """The :class:`CompressSpec` of the command line: every flag named as a spec field, ``--skip`` (absent:
    the method's default) and ``--float-codebooks`` (the inverse of ``quantize_codebooks``)."""
    names = {f.name for f in dataclasses.fields(CompressSpec)} - {"skip", "overrides", "quantize_codebooks"}
    return CompressSpec(**{name: getattr(a, name) for name in names},
                        skip=DEFAULT_SKIP if a.skip is None else a.skip, quantize_codebooks=not a.float_codebooks)


def _trained_model(name: str, data: str, epochs: int | None, limit: int | None, progress: bool):
    """A trained float model: the cached checkpoint of models.train (trained and cached there when missing)."""
    return get_trained(name, data, epochs, train_limit=limit, progress=progress)


def run(a: argparse.Namespace) -> int:
    zoo.default_dataset(a.model)  # unknown model -> UnknownModelError (a ValueError) before any work
    data_name = a.data or zoo.default_dataset(a.model)
    for opt in ("train_epochs", "train_limit", "finetune_epochs", "calibrate"):
        v = getattr(a, opt)
        if v is not None and v < 0:
            raise ValueError(f"--{opt.replace('_', '-')} must be >= 0, got {v}")
    # Validate the compression arguments on an untrained model first: a typo costs no training time.
    spec = spec_from_args(a)
    shape = datasets.INFO.get(data_name, {}).get("shape")
    if shape is not None:
        probe = zoo.get(a.model, in_channels=shape[0], num_classes=datasets.INFO[data_name]["classes"])
        plan(probe, spec)

    xt, yt = datasets.load(data_name, "test")
    model = _trained_model(a.model, data_name, epochs=a.train_epochs, limit=a.train_limit, progress=not a.quiet)
    acc = {"float": evaluate(model, xt, yt)}

    calib = None
    if a.method == "pq":  # prototypes are learnt from activations
        calib = torch.from_numpy(datasets.load(data_name, "train")[0][:512])
    t0 = time.perf_counter()
    comp = compress(model, spec, data=calib, example=torch.from_numpy(xt[:1]))
    t_comp = time.perf_counter() - t0
    acc["compressed"] = evaluate(comp, xt, yt)
    report = compression_report(comp)
    print(f"{a.model} on {data_name}: {a.method} n:m={a.n}:{a.m} k={a.k} d={a.d} "
          + (f"mask_group={a.mask_group} " if a.method == "mvq" and a.mask_group > 1 else "")
          + f"({'float' if a.float_codebooks else 'int8'} codebooks), compressed in {t_comp:.1f} s")
    print(report.table())

    x = y = None
    if a.calibrate or a.finetune_epochs:
        x, y = datasets.load(data_name, "train")
    if a.calibrate:
        comp = recalibrate_bn_(copy.deepcopy(comp), x[:a.calibrate]).eval()
        acc["compressed+bn-calibrated"] = evaluate(comp, xt, yt)
    if a.finetune_epochs and a.method == "pq":  # PQA / LUT-NN: prototypes + LUT, annealed soft assignment
        pq_finetune(comp, x, y, epochs=a.finetune_epochs, lr=a.finetune_lr, batch_size=a.batch_size,
                    seed=a.seed, progress=True)
        acc[f"finetuned ({a.finetune_epochs} epochs)"] = evaluate(comp, xt, yt)
    elif a.finetune_epochs:
        finetune(comp, x, y, epochs=a.finetune_epochs, lr=a.finetune_lr, batch_size=a.batch_size, seed=a.seed)
        acc[f"finetuned ({a.finetune_epochs} epochs)"] = evaluate(comp, xt, yt)

    print()
    print("test accuracy:")
    for key, v in acc.items():
        print(f"  {key:<28} {100 * v:6.2f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "accuracy": acc, "report": report.as_dict()}, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        return run(a)
    except (ValueError, DatasetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
