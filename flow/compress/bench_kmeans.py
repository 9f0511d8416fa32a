"""Time masked_kmeans against faiss-cpu k-means (full data, same iterations).

    python -m flow.compress.bench_kmeans [--n 1400000] [--d 8] [--k 256] [--iters 20] [--threads T] [--repeat 2]

faiss subsamples to 256 points per centroid by default; here it gets
``max_points_per_centroid`` large enough to use every point, so both sides do
the same work per iteration.  Prints seconds per iteration (best of --repeat).
Not a test: timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from .kmeans import masked_kmeans
from .nm import nm_mask


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flow.compress.bench_kmeans", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_400_000)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch / faiss threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    x = np.random.default_rng(0).standard_normal((a.n, a.d)).astype(np.float32)
    xt = torch.from_numpy(x)
    mask = nm_mask(xt, 2, 4) if a.d % 4 == 0 else None
    print(f"n={a.n} d={a.d} k={a.k} iters={a.iters} threads={threads}")

    def best(fn) -> tuple[float, object]:
        times, out = [], None
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        faiss.omp_set_num_threads(threads)

        def run_faiss():
            km = faiss.Kmeans(a.d, a.k, niter=a.iters, seed=1, max_points_per_centroid=a.n)
            km.train(x)
            return km

        t, km = best(run_faiss)
        print(f"faiss-cpu k-means           {t / a.iters:.4f} s/iter  (total {t:.2f} s, objective {km.obj[-1]:.1f})")
    else:
        print("faiss-cpu not installed: pip install faiss-cpu to compare")
    for label, m in (("masked_kmeans, no mask", None), ("masked_kmeans, 2:4 mask", mask)):
        if "2:4" in label and m is None:
            continue  # d not a multiple of 4
        t, r = best(lambda: masked_kmeans(xt, m, a.k, iters=a.iters, seed=1))
        print(f"{label:<27} {t / r.n_iter:.4f} s/iter  (total {t:.2f} s incl. k-means++ seeding, "
              f"{r.n_iter} iters, objective {r.objective[-1]:.1f})")


if __name__ == "__main__":
    main()
