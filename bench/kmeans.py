"""Masked k-means against faiss-cpu: seconds per Lloyd iteration, side by side in one run.

    python bench/kmeans.py [--quick] [--iters N] [--repeats R] [--threads T] [--code-path P] [--sklearn] [--out DIR]

Data: the weights of a ResNet-18 (ImageNet shapes, every conv but the first, whose Cin of 3 does not
split into vectors of 8), Kaiming-normal initialised layer by layer (std sqrt(2 / fan_in), seeded), cut
as flow.compress.mvq does: ``[Cout, Cin, kh, kw] -> [Cout, kh, kw, Cin] -> [*, 8]`` = 1,394,688 vectors
of length 8; the masks are each layer's 2:4 magnitude mask along Cin (flow.compress.nm_mask).
``--quick`` takes the first 50,000 of them (for the tests).

Implementations, all on the same vectors, k = 256, the same iteration count, seed 0:

* ours masked: ``masked_kmeans(x, mask)`` (distances over the kept elements only, per-element masked
  means, k-means++ seeding on the masked data);
* ours unmasked: ``masked_kmeans(x, None)``;
* faiss unmasked: ``faiss.Kmeans(8, 256, niter, seed, max_points_per_centroid=10**9)``, so faiss
  clusters every point (its default subsamples to 256 points per centroid); random seeding;
* scikit-learn (``--sklearn``): ``KMeans(init="random", n_init=1, algorithm="lloyd", tol=0)``.

Per-iteration time is steady state: ``(T(1 + iters) - T(1)) / iters`` for each implementation, which
cancels the one-time work (seeding, setup); the implementations run one after the other inside each
repeat (``--repeats`` rounds, interleaved), and the table shows the median over the repeats; the ratio
to faiss is the median of the per-repeat ratios (each against the faiss run of the same round, so a
load spike from other processes hits both sides).  ``cpu_s_per_iter`` is the process CPU time (all
threads) per iteration, the same difference.  All use ``--threads`` threads (default: every core:
``torch.set_num_threads`` and ``faiss.omp_set_num_threads``).

Where it ran: above the table (and in the JSON) the CPU model, its ISA flags that pick code paths
(avx2, avx512f, fma), the threads each side ran on, the commit, and the code path of ours: the native
kernel's copy (``avx512``: 16 float32 lanes, ``avx2``: 8 lanes with FMA, ``base``: 4 lanes, SSE2; the
widest the CPU runs unless ``--code-path`` asks for a narrower one) or ``torch`` (the pure-torch BLAS
path).  faiss picks its own build (generic / AVX2 / AVX-512) and runs BLAS sgemm plus its argmin.

Inertia: the final codebook's objective, recomputed here in float64 for every implementation (each
point to its nearest codeword), per vector; masked rows count the kept elements only, so they are
not comparable with the unmasked rows.  Checks (printed, and stored): the masked result's codebook is
the per-element masked mean of its assignment, and ``assign_nearest`` (the kernel masked_kmeans uses)
equals a brute-force float64 numpy argmin (ties to the lowest index) on a subsample.

Writes RESULTS/ (bench/results, or $VQHLS_BENCH_OUT: ``make bench`` puts build/bench there) kmeans.json and kmeans.png (``--quick``: kmeans_quick.*; ``--out DIR`` elsewhere).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see flow/__init__.py

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, cpu_info, git_commit, save, table  # noqa: E402
from flow.compress import _kmeans_native, nm_mask  # noqa: E402
from flow.compress.kmeans import assign_nearest, masked_kmeans  # noqa: E402

K, D, SEED = 256, 8, 0
QUICK_N = 50_000
# ResNet-18 (ImageNet) convolutions [Cout, Cin, kh, kw], the first (Cin = 3) left out.
RESNET18 = (
    [(64, 64, 3, 3)] * 4
    + [(128, 64, 3, 3), (128, 128, 3, 3), (128, 64, 1, 1), (128, 128, 3, 3), (128, 128, 3, 3)]
    + [(256, 128, 3, 3), (256, 256, 3, 3), (256, 128, 1, 1), (256, 256, 3, 3), (256, 256, 3, 3)]
    + [(512, 256, 3, 3), (512, 512, 3, 3), (512, 256, 1, 1), (512, 512, 3, 3), (512, 512, 3, 3)]
)
COLS = ["impl", "path", "N", "d", "k", "iters", "s_per_iter", "vs_faiss", "cpu_s_per_iter", "init_s", "inertia"]
# What each code path of ours is, for the header.
PATHS = {"avx512": "native kernel, AVX-512 copy (16 float32 lanes per vector)",
         "avx2": "native kernel, AVX2 + FMA copy (8 float32 lanes per vector)",
         "base": "native kernel, baseline x86-64 copy (4 float32 lanes per vector, SSE2, no FMA)",
         "torch": "pure-torch path (a BLAS GEMM per chunk of points, packed argmin)"}


def resnet18_vectors(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [N, 8] float32, mask [N, 8] float32 0/1): ResNet-18's conv weights as MVQ cuts them."""
    g = torch.Generator().manual_seed(SEED)
    xs, ms = [], []
    for cout, cin, kh, kw in RESNET18:
        w = torch.randn(cout, cin, kh, kw, generator=g) * (2.0 / (cin * kh * kw)) ** 0.5
        m = nm_mask(w, 2, 4, dim=1)
        xs.append(w.permute(0, 2, 3, 1).reshape(-1, D))
        ms.append(m.permute(0, 2, 3, 1).reshape(-1, D))
    x, mask = torch.cat(xs).contiguous(), torch.cat(ms).contiguous()
    if n is not None:
        x, mask = x[:n].contiguous(), mask[:n].contiguous()
    return x, mask


def masked_inertia(x: np.ndarray, mask: np.ndarray | None, C: np.ndarray, assign: np.ndarray) -> float:
    """sum_i ||m_i (x_i - C[a_i])||^2 in float64."""
    diff = x.astype(np.float64) - C.astype(np.float64)[assign]
    if mask is not None:
        diff *= mask
    return float((diff * diff).sum())


def brute_argmin(x: np.ndarray, mask: np.ndarray | None, C: np.ndarray, chunk: int = 2000) -> np.ndarray:
    """float64 masked squared distances to every codeword, argmin (numpy: first index of the minimum)."""
    C64 = C.astype(np.float64)
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), chunk):
        xc = x[s:s + chunk].astype(np.float64)
        diff = xc[:, None, :] - C64[None]
        if mask is not None:
            diff *= mask[s:s + chunk, None, :]
        out[s:s + chunk] = (diff * diff).sum(2).argmin(1)
    return out


def timed(run, it: int) -> tuple[float, float, float, object]:
    """(wall s/iter, cpu s/iter, init s, result of the long run): (T(1 + it) - T(1)) / it.

    ``run(iters)`` returns (result, iterations actually run): masked_kmeans stops early at a fixed
    point, so the difference is divided by the iterations the long run really did beyond the first.
    """
    w, c = time.perf_counter(), time.process_time()
    run(1)
    w1, c1 = time.perf_counter() - w, time.process_time() - c
    w, c = time.perf_counter(), time.process_time()
    res, done = run(1 + it)
    wn, cn = time.perf_counter() - w, time.process_time() - c
    extra = max(done - 1, 1)
    per = (wn - w1) / extra
    return per, (cn - c1) / extra, max(w1 - per, 0.0), res


def checks(x: torch.Tensor, mask: torch.Tensor, res, sample: int) -> dict:
    """Masked means of the final assignment, and assign_nearest against brute force on a subsample."""
    xn, mn = x.numpy(), mask.numpy()
    a = res.assign.numpy()
    num = np.stack([np.bincount(a, weights=xn[:, l].astype(np.float64) * mn[:, l], minlength=K) for l in range(D)], 1)
    den = np.stack([np.bincount(a, weights=mn[:, l].astype(np.float64), minlength=K) for l in range(D)], 1)
    seen = den > 0
    cb = res.codebook.numpy()
    mean_ok = bool(np.array_equal(cb[seen], (num[seen] / den[seen]).astype(np.float32)))
    idx = np.random.default_rng(SEED).choice(len(xn), size=min(sample, len(xn)), replace=False)
    got = assign_nearest(x[idx], res.codebook, mask[idx]).numpy()
    ref = brute_argmin(xn[idx], mn[idx], cb)
    return {"codebook_is_masked_mean": mean_ok, "argmin_sample": int(len(idx)),
            "argmin_mismatches": int((got != ref).sum())}


def select_code_path(path: str) -> str:
    """Point masked_kmeans at ``path`` (auto, avx512, avx2, base, torch) through its environment
    variables; return the path that runs (auto: the widest copy this CPU runs).

    Raises:
        ValueError: a copy this CPU does not run.
    """
    os.environ["VQHLS_KMEANS"] = "torch" if path == "torch" else "auto"
    os.environ["VQHLS_KMEANS_ISA"] = "auto" if path == "torch" else path
    return _kmeans_native.isa()


def run_bench(n: int | None, iters: int, repeats: int, threads: int, sklearn: bool, sample: int,
              code_path: str = "auto") -> dict:
    import faiss

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    x, mask = resnet18_vectors(n)
    N = x.shape[0]
    xn = x.numpy()
    t = time.perf_counter()
    path = select_code_path(code_path)  # a first run compiles the kernel (cached afterwards)
    backend = "torch" if path == "torch" else "native"
    load_s = time.perf_counter() - t

    def ours(m):
        def run(it: int):
            r = masked_kmeans(x, m, K, iters=it, seed=SEED)
            return r, r.n_iter
        return run

    def faiss_run(it: int):
        km = faiss.Kmeans(D, K, niter=it, seed=SEED, verbose=False, max_points_per_centroid=10 ** 9)
        km.train(xn)
        return km, it

    impls = [("ours masked (2:4)", ours(mask)), ("ours unmasked", ours(None)), ("faiss unmasked", faiss_run)]
    if sklearn:
        from sklearn.cluster import KMeans

        def sk_run(it: int):
            km = KMeans(K, n_init=1, max_iter=it, tol=0, init="random", random_state=SEED, algorithm="lloyd").fit(xn)
            return km, km.n_iter_

        impls.append(("sklearn unmasked", sk_run))
    for _, run in impls:  # warm-up, untimed: imports, thread pools, first-touch allocations
        run(1)
    per: dict[str, list] = {name: [] for name, _ in impls}
    last: dict[str, object] = {}
    for rep in range(repeats):
        for name, run in impls:
            w, c, init, res = timed(run, iters)
            per[name].append((w, c, init))
            last[name] = res
        f = per["faiss unmasked"][-1][0]
        print(f"  round {rep + 1}/{repeats}: " + ", ".join(f"{nm} {v[-1][0]:.4f}" for nm, v in per.items())
              + f" s/iter (faiss {f:.4f})", file=sys.stderr, flush=True)

    rows = []
    faiss_w = [v[0] for v in per["faiss unmasked"]]
    for name, _ in impls:
        vals = per[name]
        res = last[name]
        masked = "masked" in name and "unmasked" not in name
        if name.startswith("ours"):
            C = res.codebook.numpy()
        elif name.startswith("faiss"):
            C = res.centroids
        else:
            C = res.cluster_centers_.astype(np.float32)
        mm = mask if masked else None
        a = assign_nearest(x, torch.from_numpy(np.ascontiguousarray(C)), mm).numpy()
        inertia = masked_inertia(xn, None if mm is None else mm.numpy(), C, a) / N
        rows.append(dict(
            impl=name, path=path if name.startswith("ours") else name.split()[0], N=N, d=D, k=K, iters=iters,
            s_per_iter=statistics.median(v[0] for v in vals),
            vs_faiss=statistics.median(v[0] / f for v, f in zip(vals, faiss_w)),
            cpu_s_per_iter=statistics.median(v[1] for v in vals),
            init_s=statistics.median(v[2] for v in vals),
            inertia=inertia, rounds=[list(v) for v in vals],
        ))
    chk = checks(x, mask, last["ours masked (2:4)"], sample)
    return {"rows": rows, "checks": chk, "backend": backend, "code_path": path,
            "code_path_what": PATHS[path], "cpu": cpu_info(), "kernel_load_s": load_s, "threads": threads,
            "torch_threads": torch.get_num_threads(), "faiss_threads": faiss.omp_get_max_threads(),
            "faiss": getattr(faiss, "__version__", "?"), "torch": torch.__version__, "N": N,
            "data": "ResNet-18 convs (all but the first), Kaiming-normal, [Cout,kh,kw,Cin] -> [*, 8], 2:4 "
                    "magnitude masks along Cin", "k": K, "iters": iters, "repeats": repeats, "seed": SEED}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [r["impl"] for r in rows]
    ys = range(len(rows))
    ax.barh(ys, [r["s_per_iter"] for r in rows], color=["C0" if n.startswith("ours") else "C7" for n in names])
    for y, r in zip(ys, rows):
        for w, _, _ in r["rounds"]:
            ax.plot(w, y, "k.", ms=3)
        right = max([r["s_per_iter"]] + [w for w, _, _ in r["rounds"]])
        ax.text(right, y, f"  {r['vs_faiss']:.2f}x faiss (median ratio)", va="center", fontsize=8)
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per Lloyd iteration (bars: median; dots: rounds)")
    ax.set_title(f"k-means, {result['N']:,} x {D}, k={K}, {result['threads']} threads, ours: {result['code_path']}")
    ax.set_xlim(0, 1.6 * max(max(w for w, _, _ in r["rounds"]) for r in rows))
    fig.subplots_adjust(left=0.22, right=0.97, bottom=0.17, top=0.88)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"the first {QUICK_N:,} vectors, 3 iterations, 1 round")
    ap.add_argument("--iters", type=int, help="Lloyd iterations timed (default 10; --quick 3)")
    ap.add_argument("--repeats", type=int, help="interleaved rounds (default 3; --quick 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads for the k-means kernels (default: all cores)")
    ap.add_argument("--code-path", choices=["auto", *reversed(_kmeans_native.ISAS), "torch"], default="auto",
                    help="ours on this code path: auto (the widest kernel copy the CPU runs), a narrower "
                         "kernel copy, or torch (the pure-torch BLAS path)")
    ap.add_argument("--sklearn", action="store_true", help="add scikit-learn's KMeans (slow)")
    ap.add_argument("--sample", type=int, default=20_000, help="points checked against brute force")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and PNG (default bench/results)")
    ap.add_argument("--no-plot", action="store_true", help="write the JSON only, no PNG")
    a = ap.parse_args(argv)
    iters = a.iters or (3 if a.quick else 10)
    repeats = a.repeats or (1 if a.quick else 3)
    if iters < 1 or repeats < 1 or a.threads < 1:
        ap.error("--iters, --repeats and --threads must be >= 1")
    saved = {v: os.environ.get(v) for v in ("VQHLS_KMEANS", "VQHLS_KMEANS_ISA")}
    try:
        try:
            select_code_path(a.code_path)
        except (ValueError, _kmeans_native.KernelUnavailable) as e:
            print(f"error: --code-path {a.code_path}: {e}", file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        result = run_bench(QUICK_N if a.quick else None, iters, repeats, a.threads, a.sklearn, a.sample,
                           a.code_path)
        result["wall_s"] = time.perf_counter() - t0
    finally:  # main() also runs in-process (the tests): leave the caller's environment as it was
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
    cpu = result["cpu"]
    flags = ", ".join(f"{f} {'?' if v is None else ('yes' if v else 'no')}" for f, v in cpu["flags"].items())
    print(f"machine: {cpu['model']}, {cpu['cores']} cores; {flags}; commit {git_commit()}")
    print(f"threads: {a.threads} (torch {result['torch_threads']}, faiss {result['faiss_threads']}); "
          f"ours: {result['code_path']} = {result['code_path_what']}")
    print(f"k-means, {result['N']:,} vectors x {D}, k={K}, {iters} iterations, {a.threads} threads, "
          f"median of {repeats} interleaved rounds; backend: {result['backend']}")
    print("s_per_iter = (T(1+iters) - T(1)) / iters, wall clock; vs_faiss = median of the per-round ratios; "
          "inertia per vector (masked: kept elements only)")
    print(table(result["rows"], COLS))
    c = result["checks"]
    print(f"checks: codebook is the masked mean of its assignment: {c['codebook_is_masked_mean']}; "
          f"assign_nearest vs brute-force float64 argmin: {c['argmin_mismatches']} mismatches "
          f"in {c['argmin_sample']:,} points")
    name = "kmeans_quick" if a.quick else "kmeans"
    path = save(name, result, __file__, argv, out=a.out)
    print("wrote", path)
    if not a.no_plot:
        plot(result, a.out / f"{name}.png")
        print("wrote", a.out / f"{name}.png")
    ok = c["codebook_is_masked_mean"] and c["argmin_mismatches"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
