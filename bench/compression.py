"""Float vs VQ vs MVQ (2:4) at matched compression ratios, and masked k-means speed.

    python bench/compression.py [--quick]

Part 1: for lenet-digits (digits) and resnet20 (Fashion-MNIST), pick for each
method the (k, d) whose whole-model ratio (every stored bit counted) is
closest to 8x, 16x and 24x, compress, and report test accuracy before and
after codebook fine-tuning. Part 2: time per iteration of masked_kmeans
against faiss-cpu and scikit-learn k-means on the same unmasked data of a
ResNet-18-sized layer set (1.4M vectors, d=8, k=256).
Writes RESULTS/ (bench/results, or $VQHLS_BENCH_OUT: ``make bench`` puts build/bench there) compression.json and compression.png.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see flow/__init__.py

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, save, table  # noqa: E402
from flow.compress import compress, compression_report, finetune, nm_prune_finetune  # noqa: E402
from flow.compress.kmeans import masked_kmeans  # noqa: E402
from models import data as datasets  # noqa: E402
from models import train as trainer  # noqa: E402

TARGETS = (8.0, 16.0, 24.0)
SETUPS = {
    # model: (dataset, train epochs, train images, finetune epochs, finetune images)
    "lenet-digits": ("digits", 30, None, 6, None),
    "resnet20": ("fashion-mnist", 3, None, 1, 10000),
}


# The classifier is compressed too (only the first conv, Cin of 1, stays dense) and
# dense layers are counted at int8 + per-channel scale, as the engine stores them:
# at float32 the two dense layers alone would cap lenet-digits near 12x.
SKIP = ("first",)
DENSE_BITS = 8


def _kw(method: str, k: int, d: int) -> dict:
    return dict(method=method, n=2 if method == "mvq" else 4, m=4, k=k, d=d, clip_k=True, skip=SKIP)


def _ratio(model) -> float:
    return compression_report(model, dense_bits=DENSE_BITS).ratio


def pick_configs(model, method: str) -> dict[float, tuple[int, int, float]]:
    """For each target ratio the (k, d, ratio) closest to it, from a 1-iteration k-means."""
    found = []
    for d, k in itertools.product((4, 8, 16), (8, 16, 32, 64, 128, 256, 512, 1024)):
        try:
            r = _ratio(compress(model, iters=1, **_kw(method, k, d)))
        except ValueError:
            continue
        found.append((k, d, r))
    return {t: min(found, key=lambda c: abs(np.log(c[2] / t))) for t in TARGETS}


def accuracy_part(models: list[str]) -> list[dict]:
    rows = []
    for name in models:
        data_name, ep, lim, ft_ep, ft_lim = SETUPS[name]
        model = trainer.get_trained(name, data_name, ep, lim)
        xtr, ytr = datasets.load(data_name, "train")
        xte, yte = datasets.load(data_name, "test")
        base = trainer.evaluate(model, xte, yte)
        rows.append(dict(model=name, method="float", target="-", k="-", d="-", ratio=1.0,
                         acc=100 * base, acc_ft=100 * base))
        ft_lim = ft_lim or len(xtr)
        xft, yft = torch.from_numpy(xtr[:ft_lim]), torch.from_numpy(ytr[:ft_lim])
        # MVQ as its paper runs it: N:M-prune and retrain the weights, then masked k-means,
        # then codebook fine-tuning. The same training budget goes to the baselines: VQ
        # fine-tunes its codebooks for both phases' epochs, and "mvq (no prune-ft)" is the
        # ablation that skips the retraining step.
        pruned = copy.deepcopy(model)
        nm_prune_finetune(pruned, xft, yft, n=2, m=4, epochs=ft_ep, skip=SKIP)
        pruned_acc = trainer.evaluate(pruned, xte, yte)
        rows.append(dict(model=name, method="2:4 pruned (float)", target="-", k="-", d="-", ratio="-",
                         acc=100 * pruned_acc, acc_ft=100 * pruned_acc))
        variants = (("vq", model, 2 * ft_ep), ("mvq (no prune-ft)", model, 2 * ft_ep), ("mvq", pruned, ft_ep))
        for label, src, epochs in variants:
            method = label.split()[0]
            for target, (k, d, _) in pick_configs(model, method).items():
                c = compress(src, iters=20, **_kw(method, k, d))
                acc0 = trainer.evaluate(c, xte, yte)
                finetune(c, xft, yft, epochs=epochs)
                acc1 = trainer.evaluate(c, xte, yte)
                ratio = _ratio(c)
                rows.append(dict(model=name, method=label, target=f"{target:g}x", k=k, d=d, ratio=ratio,
                                 acc=100 * acc0, acc_ft=100 * acc1))
                print(f"  {name} {label} {target:g}x: k={k} d={d} ratio {ratio:.1f} "
                      f"acc {100 * acc0:.2f} -> {100 * acc1:.2f}", file=sys.stderr)
    return rows


def _per_iter(run, iters: int) -> tuple[float, float, object]:
    """(steady-state s/iter, one-time init s, last result): T(1 + iters) - T(1) cancels the initialisation."""
    t = time.perf_counter()
    run(1)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    res = run(1 + iters)
    tn = time.perf_counter() - t
    return (tn - t1) / iters, max(t1 - (tn - t1) / iters, 0.0), res


def kmeans_part(n: int, iters: int) -> list[dict]:
    import faiss
    from sklearn.cluster import KMeans

    from flow.compress import nm_mask

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    xt = torch.from_numpy(x)
    k = 256
    rows = []
    mask = nm_mask(xt, 2, 4, dim=1)  # the 2:4 masks MVQ clusters with
    for label, m in (("vqhls masked_kmeans (no mask)", None), ("vqhls masked_kmeans (2:4 mask)", mask)):
        s, init, res = _per_iter(lambda it, m=m: masked_kmeans(xt, m, k, iters=it, seed=0), iters)
        rows.append(dict(impl=label, s_per_iter=s, init_s=init, objective=float(res.objective[-1]) / n))

    def faiss_run(it: int):
        km = faiss.Kmeans(8, k, niter=it, seed=0, verbose=False, max_points_per_centroid=n)  # every point
        km.train(x)
        return km

    s, init, km = _per_iter(faiss_run, iters)
    rows.append(dict(impl="faiss-cpu Kmeans", s_per_iter=s, init_s=init, objective=float(km.obj[-1]) / n))

    sk_iters = max(2, iters // 4)  # slow: fewer iterations, total time / iterations
    t = time.perf_counter()
    skm = KMeans(k, n_init=1, max_iter=sk_iters, tol=0, init="random", random_state=0, algorithm="lloyd").fit(x)
    rows.append(dict(impl="scikit-learn KMeans (lloyd)", s_per_iter=(time.perf_counter() - t) / skm.n_iter_,
                     init_s=float("nan"), objective=float(skm.inertia_) / n))
    faiss_t = rows[2]["s_per_iter"]
    for r in rows:
        r["vs_faiss"] = r["s_per_iter"] / faiss_t
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models):
        for method, style in (("vq", "o--"), ("mvq (no prune-ft)", "^:"), ("mvq", "s-")):
            pts = sorted((r["ratio"], r["acc_ft"]) for r in rows if r["model"] == name and r["method"] == method)
            if pts:
                ax.plot(*zip(*pts), style, label=f"{method} (fine-tuned)")
        base = [r["acc"] for r in rows if r["model"] == name and r["method"] == "float"]
        if base:
            ax.axhline(base[0], color="k", lw=0.8, label="float32")
        ax.set_xlabel("compression ratio (all stored bits)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="lenet-digits only, 200k vectors for k-means")
    ap.add_argument("--kmeans-iters", type=int, default=10)
    ap.add_argument("--part", choices=("all", "accuracy", "kmeans"), default="all")
    a = ap.parse_args()
    torch.manual_seed(0)
    models = ["lenet-digits"] if a.quick else ["lenet-digits", "resnet20"]
    acc_rows, km_rows = [], []
    if a.part in ("all", "accuracy"):
        acc_rows = accuracy_part(models)
        cols = ["model", "method", "target", "k", "d", "ratio", "acc", "acc_ft"]
        print("Accuracy (%) at matched compression ratios; acc = after k-means, acc_ft = after codebook fine-tuning")
        print(table(acc_rows, cols))
        plot(acc_rows, RESULTS / "compression.png")
    if a.part in ("all", "kmeans"):
        n = 200_000 if a.quick else 1_400_000
        km_rows = kmeans_part(n, a.kmeans_iters)
        print()
        print(f"k-means, {n} vectors x 8, k=256: steady-state seconds per iteration "
              f"((T(1+{a.kmeans_iters}) - T(1)) / {a.kmeans_iters}), one-time initialisation apart")
        print(table(km_rows, ["impl", "s_per_iter", "vs_faiss", "init_s", "objective"]))
    payload = {"skip": SKIP, "dense_bits": DENSE_BITS, "setups": {
        k: dict(zip(("data", "train_epochs", "train_images", "finetune_epochs", "finetune_images"), v))
        for k, v in SETUPS.items()}}
    # a partial run keeps the other part's last results in compression.json
    prev = RESULTS / "compression.json"
    old = json.loads(prev.read_text()) if prev.exists() else {}
    payload["accuracy"] = acc_rows or old.get("accuracy", [])
    payload["kmeans"] = km_rows or old.get("kmeans", [])
    path = save("compression", payload)
    print(f"\nwrote {path} and {RESULTS / 'compression.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
