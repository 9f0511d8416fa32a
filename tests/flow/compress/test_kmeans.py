"""Masked k-means against brute force, by-hand masked means, monotone objective, determinism, errors.

Both backends (the fused native kernel and the pure-torch fallback, ``VQHLS_KMEANS``) are held to the
same rule: the assignment is the argmin of the float64 masked distances, ties to the lowest index.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flow.compress import _kmeans_native
from flow.compress.errors import CodebookSizeError, CompressionError, ShapeMismatchError
from flow.compress.kmeans import assign_nearest, masked_kmeans
from flow.compress.nm import nm_mask

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(params=["native", "torch"])
def backend(request, monkeypatch):
    """Run the test on one backend; native is skipped where the kernel cannot be built (no g++)."""
    monkeypatch.setenv("VQHLS_KMEANS", request.param)
    if request.param == "native":
        try:
            _kmeans_native.load()
        except _kmeans_native.KernelUnavailable as e:
            pytest.skip(f"native k-means kernel unavailable: {e}")
    return request.param


def brute_distances(x: np.ndarray, mask: np.ndarray | None, C: np.ndarray) -> np.ndarray:
    """[n, k] float64 masked squared distances with an explicit loop over codewords."""
    x = x.astype(np.float64)
    m = np.ones_like(x) if mask is None else mask.astype(np.float64)
    D = np.empty((x.shape[0], C.shape[0]))
    for j in range(C.shape[0]):
        D[:, j] = (m * (x - C[j].astype(np.float64)) ** 2).sum(1)
    return D


def assert_is_argmin(assign: np.ndarray, D: np.ndarray, rel: float = 1e-12) -> None:
    """Equal to the brute-force float64 argmin (first index on ties).

    The only leeway: two codewords whose float64 distances agree to ``rel`` (the kernel and numpy add
    the d terms in different orders, so their last bits may differ); such pairs never occur here.
    """
    best = D.argmin(1)
    diff = np.nonzero(assign != best)[0]
    gap = D[diff, assign[diff]] - D[diff, best[diff]]
    assert (gap <= rel * (1e-300 + D[diff].max(1))).all(), (len(diff), gap.max() if len(diff) else 0)


def masked_means(x: np.ndarray, mask: np.ndarray | None, assign: np.ndarray, k: int):
    """By hand: sum(mask*x)/sum(mask) per cluster and element, with explicit loops."""
    n, d = x.shape
    m = np.ones_like(x) if mask is None else mask
    num, den = np.zeros((k, d)), np.zeros((k, d))
    for i in range(n):
        for e in range(d):
            num[assign[i], e] += m[i, e] * x[i, e]
            den[assign[i], e] += m[i, e]
    return num, den


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("n,d,k", [(300, 8, 16), (1000, 4, 64), (257, 16, 5)])
def test_assign_nearest_equals_brute_force(backend, masked, n, d, k):
    g = torch.Generator().manual_seed(n + d + k)
    x = torch.randn(n, d, generator=g)
    mask = (torch.rand(n, d, generator=g) > 0.4).float() if masked else None
    C = torch.randn(k, d, generator=g)
    got = assign_nearest(x, C, mask).numpy()
    assert got.dtype == np.int64
    assert_is_argmin(got, brute_distances(x.numpy(), None if mask is None else mask.numpy(), C.numpy()))


def test_forced_ties_go_to_the_lowest_index(backend):
    # small integers: every distance is exact in float32, so ties are real ties
    C = torch.tensor([[1., 0.], [0., 1.], [1., 0.], [-1., 0.], [0., -1.]])  # codeword 2 duplicates 0
    x = torch.tensor([[0., 0.],   # equidistant from all five -> 0
                      [1., 0.],   # exactly codewords 0 and 2 -> 0
                      [0., 2.],   # only 1
                      [-1., 0.],  # only 3
                      [5., 5.]])  # 0 and 1 tie (41), 2 ties too -> 0
    mask = torch.tensor([[1., 1.], [1., 1.], [1., 1.], [0., 1.], [1., 1.]])  # point 3 only sees y=0: ties 0,2,3
    D = brute_distances(x.numpy(), mask.numpy(), C.numpy())
    got = assign_nearest(x, C, mask).numpy()
    np.testing.assert_array_equal(got, D.argmin(1))  # numpy argmin: first index of the minimum
    assert got.tolist() == [0, 0, 1, 0, 0]
    # integer data on a larger scale, many exact ties
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (5000, 4), generator=g).float()
    C = torch.randint(-2, 3, (40, 4), generator=g).float()
    mask = torch.randint(0, 2, (5000, 4), generator=g).float()
    np.testing.assert_array_equal(assign_nearest(x, C, mask).numpy(),
                                  brute_distances(x.numpy(), mask.numpy(), C.numpy()).argmin(1))


def test_large_k(backend):
    g = torch.Generator().manual_seed(2)
    x, C = torch.randn(600, 3, generator=g), torch.randn(5000, 3, generator=g)  # k > 4096: no packed argmin
    assert_is_argmin(assign_nearest(x, C).numpy(), brute_distances(x.numpy(), None, C.numpy()))


@pytest.mark.parametrize("case", ["dense", "random-mask", "nm-grouped"])
def test_every_iteration_assigns_to_the_nearest_codeword(backend, case):
    """Run t+1's assignment is the brute-force argmin for run t's codebook (runs are deterministic)."""
    g = torch.Generator().manual_seed(3)
    if case == "nm-grouped":  # enough points per 2:4 pattern for the pattern-grouped search
        n, d, k = 20000, 8, 24
    else:
        n, d, k = 1500, 8, 32
    x = torch.randn(n, d, generator=g)
    mask = {"dense": None, "random-mask": (torch.rand(n, d, generator=g) > 0.5).float(),
            "nm-grouped": nm_mask(x, 2, 4)}[case]
    mnp = None if mask is None else mask.numpy()
    for t in (1, 2, 4, 7):
        ct = masked_kmeans(x, mask, k, iters=t, seed=5).codebook
        nxt = masked_kmeans(x, mask, k, iters=t + 1, seed=5).assign
        assert_is_argmin(nxt.numpy(), brute_distances(x.numpy(), mnp, ct.numpy()))


@pytest.mark.parametrize("masked", [False, True])
def test_codebook_is_the_masked_mean_by_hand(backend, masked):
    g = torch.Generator().manual_seed(4)
    n, d, k = 400, 4, 12
    x = torch.randn(n, d, generator=g)
    mask = nm_mask(x, 1, 2) if masked else None
    r = masked_kmeans(x, mask, k, iters=6, seed=1)
    num, den = masked_means(x.numpy().astype(np.float64), None if mask is None else mask.numpy(),
                            r.assign.numpy(), k)
    seen = den > 0
    cb = r.codebook.numpy().astype(np.float64)
    np.testing.assert_allclose(cb[seen], (num[seen] / den[seen]), rtol=0, atol=1e-6)
    # and it is the float32 value nearest to the mean, not just close
    np.testing.assert_array_equal(r.codebook.numpy()[seen], (num[seen] / den[seen]).astype(np.float32))


def test_element_never_kept_keeps_its_value(backend):
    # column 0 is masked everywhere: no member ever votes on it, so it keeps its seed value (0: seeds are
    # masked points) while the other columns are real means
    g = torch.Generator().manual_seed(6)
    x = torch.randn(200, 3, generator=g) + 5
    mask = torch.ones(200, 3)
    mask[:, 0] = 0
    x[:, 0] = float("nan")  # values under a zero mask are never read
    r = masked_kmeans(x, mask, 8, iters=5, seed=0)
    assert torch.equal(r.codebook[:, 0], torch.zeros(8))
    assert torch.isfinite(r.codebook).all() and (r.codebook[:, 1:] > 2).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(20, 400), d=st.sampled_from([1, 2, 4, 8]), kfrac=st.floats(0.02, 0.9),
       density=st.sampled_from([None, 0.3, 0.7]), seed=st.integers(0, 1000), scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_objective_never_increases(backend, n, d, kfrac, density, seed, scale):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * scale
    mask = None if density is None else (torch.rand(n, d, generator=g) < density).float()
    k = max(1, int(kfrac * n))
    r = masked_kmeans(x, mask, k, iters=15, seed=seed)
    obj = np.array(r.objective)
    assert len(obj) >= 1 and np.isfinite(obj).all() and (obj >= 0).all()
    # exact descent; the float64 evaluation of J is accurate to ~1e-15 relative
    assert (np.diff(obj) <= 1e-12 * obj[0] + 1e-300).all(), obj
    # the recorded objective is the true one: J(A_T, C_{T-1}) recomputed directly
    prev = masked_kmeans(x, mask, k, iters=len(obj) - 1, seed=seed).codebook if len(obj) > 1 else None
    if prev is not None:
        D = brute_distances(x.numpy(), None if mask is None else mask.numpy(), prev.numpy())
        direct = D[np.arange(n), r.assign.numpy()].sum()
        assert direct == pytest.approx(obj[-1], rel=1e-6, abs=1e-9)


def test_objective_decreases_on_clustered_data_and_stops_at_a_fixed_point():
    g = torch.Generator().manual_seed(7)
    centers = torch.randn(5, 2, generator=g) * 20
    x = centers.repeat_interleave(40, 0) + 0.1 * torch.randn(200, 2, generator=g)
    r = masked_kmeans(x, None, 5, iters=50, seed=0)
    assert r.n_iter < 50  # converged early
    assert r.objective[-1] < 200 * 2 * 0.1 ** 2 * 2  # found the five blobs


def test_deterministic_for_a_seed():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3000, 8, generator=g)
    mask = nm_mask(x, 2, 4)
    a, b = masked_kmeans(x, mask, 32, seed=3), masked_kmeans(x, mask, 32, seed=3)
    assert torch.equal(a.codebook, b.codebook) and torch.equal(a.assign, b.assign) and a.objective == b.objective
    c = masked_kmeans(x, mask, 32, seed=4)
    assert not torch.equal(a.codebook, c.codebook)


def test_result_types_and_duplicates(backend):
    x = torch.tensor([[0.0, 0.0]] * 10 + [[1.0, 1.0]] * 10 + [[5.0, 5.0]] * 3)
    r = masked_kmeans(x, None, 5, iters=10, seed=0)  # only 3 distinct points: two codewords stay empty
    assert r.codebook.shape == (5, 2) and r.codebook.dtype == torch.float32
    assert r.assign.shape == (23,) and r.assign.dtype == torch.int64
    assert r.objective[-1] == 0.0
    assert masked_kmeans(x, None, 23, iters=3).objective[-1] == 0.0  # k == n is allowed


@pytest.mark.parametrize("mask_kind,d,k", [
    (mk, d, k) for d, k in [(1, 3), (3, 37), (4, 256), (5, 1), (8, 256), (8, 33), (16, 40), (20, 17)]
    for mk in (None, "random", "2:4", "1:4") if d % 4 == 0 or mk in (None, "random")])
def test_assign_is_exactly_the_float64_argmin(backend, mask_kind, d, k):
    """Every row length the kernel unrolls (2, 4, 8, 16) and the generic one, k below / above a block."""
    g = torch.Generator().manual_seed(10 * d + k)
    n = 3000
    x = torch.randn(n, d, generator=g) * torch.rand(1, d, generator=g) * 3  # columns of different scales
    mask = {None: None, "random": (torch.rand(n, d, generator=g) > 0.5).float(),
            "2:4": nm_mask(x, 2, 4) if d % 4 == 0 else None, "1:4": nm_mask(x, 1, 4) if d % 4 == 0 else None}[mask_kind]
    C = torch.randn(k, d, generator=g)
    C[k // 2] = C[0]  # a duplicate codeword: its points tie exactly, the lower index must win
    got = assign_nearest(x, C, mask).numpy()
    D = brute_distances(x.numpy(), None if mask is None else mask.numpy(), C.numpy())
    assert_is_argmin(got, D)
    if k > 1 and k // 2 != 0:
        assert not (got == k // 2).any()  # never the higher copy


def test_float32_ties_are_decided_in_float64(backend):
    """Distances equal in float32 but not in float64: the float64 order decides, not the lower index."""
    e = 2.0 ** -13  # (1 + e^2) rounds to 1 in float32, exactly representable in float64
    x = torch.zeros(4, 2)
    C = torch.tensor([[1.0, e], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]])  # distances 1 + 2^-26, 1, 1, 1
    assert assign_nearest(x, C).tolist() == [1, 1, 1, 1]
    C2 = torch.tensor([[1.0, 0.0], [1.0, e]])
    assert assign_nearest(x, C2).tolist() == [0, 0, 0, 0]
    # masked: the column that would separate them is not kept, so it is a real tie -> lowest index
    mask = torch.tensor([[1.0, 0.0]] * 4)
    C3 = torch.tensor([[2.0, 0.0], [1.0, e], [1.0, 0.0]])  # kept column only: distances 4, 1, 1
    assert assign_nearest(x, C3, mask).tolist() == [1, 1, 1, 1]
    # many near-ties at once, against brute force
    g = torch.Generator().manual_seed(11)
    base = torch.randn(64, 8, generator=g)
    C = torch.cat([base, base + torch.randn(64, 8, generator=g) * 2.0 ** -20])  # pairs 1e-6 apart
    x = base.repeat(20, 1) + torch.randn(1280, 8, generator=g) * 0.3
    assert_is_argmin(assign_nearest(x, C).numpy(), brute_distances(x.numpy(), None, C.numpy()))


def test_masked_means_against_numpy():
    """The update on N:M data of a realistic size: float32 nearest to the float64 masked mean."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(30000, 8, generator=g)
    mask = nm_mask(x, 2, 4)
    r = masked_kmeans(x, mask, 64, iters=4, seed=2)
    a, xn, mn = r.assign.numpy(), x.numpy().astype(np.float64), mask.numpy().astype(np.float64)
    num = np.stack([np.bincount(a, weights=xn[:, l] * mn[:, l], minlength=64) for l in range(8)], 1)
    den = np.stack([np.bincount(a, weights=mn[:, l], minlength=64) for l in range(8)], 1)
    seen = den > 0
    np.testing.assert_array_equal(r.codebook.numpy()[seen], (num[seen] / den[seen]).astype(np.float32))


@pytest.mark.parametrize("masked", [False, True])
def test_backends_give_the_same_result(masked, monkeypatch):
    try:
        monkeypatch.setenv("VQHLS_KMEANS", "native")
        _kmeans_native.load()
    except _kmeans_native.KernelUnavailable as e:
        pytest.skip(f"native k-means kernel unavailable: {e}")
    g = torch.Generator().manual_seed(13)
    x = torch.randn(20000, 8, generator=g)  # enough points per 2:4 pattern for torch's grouped search
    mask = nm_mask(x, 2, 4) if masked else None
    a = masked_kmeans(x, mask, 48, iters=6, seed=1)
    monkeypatch.setenv("VQHLS_KMEANS", "torch")
    b = masked_kmeans(x, mask, 48, iters=6, seed=1)
    assert torch.equal(a.assign, b.assign) and torch.equal(a.codebook, b.codebook)
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-12)


def test_result_does_not_depend_on_the_thread_count(backend):
    g = torch.Generator().manual_seed(14)
    x = torch.randn(40000, 8, generator=g)  # several statistics ranges / search chunks
    mask = nm_mask(x, 2, 4)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = masked_kmeans(x, mask, 32, iters=3, seed=0)
        torch.set_num_threads(max(2, old))
        b = masked_kmeans(x, mask, 32, iters=3, seed=0)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a.assign, b.assign) and torch.equal(a.codebook, b.codebook) and a.objective == b.objective


def test_backend_switch(monkeypatch):
    monkeypatch.setenv("VQHLS_KMEANS", "torch")
    assert _kmeans_native.load() is None
    monkeypatch.setenv("VQHLS_KMEANS", "fast")
    with pytest.raises(ValueError, match="VQHLS_KMEANS"):
        masked_kmeans(torch.randn(10, 2), None, 2)


def test_bench_quick(tmp_path, capsys):
    """bench/kmeans.py --quick runs, its correctness checks pass, it says where it ran (CPU, ISA flags,
    threads, code path, commit), and it writes its table and plot."""
    pytest.importorskip("faiss")
    sys.path.insert(0, str(REPO))  # bench/ is not installed
    try:
        from bench import kmeans as kb
    finally:
        sys.path.remove(str(REPO))
    t = time.perf_counter()
    assert kb.main(["--quick", "--out", str(tmp_path), "--sample", "3000"]) == 0
    import json

    data = json.loads((tmp_path / "kmeans_quick.json").read_text())
    assert [r["impl"] for r in data["rows"]] == ["ours masked (2:4)", "ours unmasked", "faiss unmasked"]
    assert data["checks"] == {"codebook_is_masked_mean": True, "argmin_sample": 3000, "argmin_mismatches": 0}
    assert (tmp_path / "kmeans_quick.png").stat().st_size > 0
    faiss_row = data["rows"][2]
    assert faiss_row["vs_faiss"] == 1.0 and all(r["N"] == kb.QUICK_N for r in data["rows"])
    # same algorithm, same data: our unmasked inertia is within a few percent of faiss's
    assert data["rows"][1]["inertia"] <= 1.05 * faiss_row["inertia"]
    # where it ran, beside the commit that provenance() records
    assert data["code_path"] == _kmeans_native.isa() and [r["path"] for r in data["rows"]][1:] == [
        data["code_path"], "faiss"]
    assert set(data["cpu"]["flags"]) == {"avx2", "avx512f", "fma"} and data["cpu"]["model"]
    assert data["torch_threads"] == data["faiss_threads"] == data["threads"] and data["machine"]["commit"]
    out = capsys.readouterr().out
    head = out.splitlines()[:2]
    assert head[0].startswith("machine: ") and "avx2 " in head[0] and "avx512f " in head[0] and "commit " in head[0]
    assert head[1].startswith(f"threads: {data['threads']} (torch ") and f"ours: {data['code_path']} = " in head[1]
    print(f"bench --quick: {time.perf_counter() - t:.1f} s")


def test_errors():
    x = torch.randn(10, 4)
    with pytest.raises(CodebookSizeError, match="k <= 10"):
        masked_kmeans(x, None, 11)
    with pytest.raises(CodebookSizeError):
        masked_kmeans(x, None, 0)
    with pytest.raises(ShapeMismatchError, match="mask shape"):
        masked_kmeans(x, torch.ones(10, 3), 2)
    with pytest.raises(ShapeMismatchError, match=r"\[n, d\]"):
        masked_kmeans(torch.randn(10), None, 2)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(CompressionError, match="NaN"):
        masked_kmeans(bad, None, 2)
    with pytest.raises(CompressionError, match="iters"):
        masked_kmeans(x, None, 2, iters=0)
    with pytest.raises(ShapeMismatchError):
        assign_nearest(x, torch.randn(3, 5))


@pytest.mark.slow
def test_quality_matches_faiss_on_a_large_problem():
    faiss = pytest.importorskip("faiss")
    x = np.random.default_rng(0).standard_normal((200_000, 8)).astype(np.float32)
    km = faiss.Kmeans(8, 256, niter=15, seed=1, max_points_per_centroid=10 ** 9)
    km.train(x)
    ours = masked_kmeans(torch.from_numpy(x), None, 256, iters=15, seed=1)
    # same algorithm (Lloyd from k-means++ vs random seeds): objectives within a few percent
    assert ours.objective[-1] <= 1.03 * km.obj[-1]
    assert (np.diff(ours.objective) <= 0).all()
    D = brute_distances(x[:2000], None, ours.codebook.numpy())  # spot check the final codebook's assignment
    final = assign_nearest(torch.from_numpy(x[:2000]), ours.codebook).numpy()
    assert_is_argmin(final, D)


def _code_paths() -> list[str]:
    """The kernel's code paths (base, avx2, avx512) this CPU runs; empty without the kernel."""
    try:
        lib = _kmeans_native._load()
    except _kmeans_native.KernelUnavailable:
        return []
    return _kmeans_native.supported_isas(lib)


@pytest.fixture(params=list(_kmeans_native.ISAS))
def code_path(request, monkeypatch):
    """Each copy of the native kernel (VQHLS_KMEANS_ISA); skipped where the CPU (or the compiler) lacks it."""
    if request.param not in _code_paths():
        pytest.skip(f"this CPU (or build) does not run the {request.param} kernel")
    monkeypatch.setenv("VQHLS_KMEANS", "native")
    monkeypatch.setenv("VQHLS_KMEANS_ISA", request.param)
    assert _kmeans_native.isa() == request.param
    return request.param


def _nm(x: torch.Tensor, n: int, m: int) -> torch.Tensor:
    return nm_mask(x, n, m)


@pytest.mark.parametrize("case", [
    "dense d=8 k=256", "2:4 d=8 k=256 (pattern table)", "random d=8 k=70 (pattern table)",
    "random d=16 k=40 (per-point T)", "1:4 d=16 k=33", "random d=20 k=17 (runtime r)", "dense d=3 k=300 > n",
    "offset 1000 d=8 k=64", "blobs 50 apart d=4 k=40", "tiny 1e-20 d=8 k=32", "huge 1e13 d=4 k=16",
    "zero rows d=8 k=20", "k=1 d=4"])
def test_every_code_path_is_the_float64_argmin(code_path, case):
    """Each kernel copy, each way of getting the stage-1 table, and the guards, against brute force."""
    g = torch.Generator().manual_seed(sum(map(ord, case)))
    d = int(case.split("d=")[1].split()[0])
    k = int(case.split("k=")[1].split()[0])
    n = 200 if "> n" in case else 2000
    x = torch.randn(n, d, generator=g)
    C = torch.randn(k, d, generator=g)
    mask = None
    if case.startswith("2:4"):
        mask = _nm(x, 2, 4)
    elif case.startswith("1:4"):
        mask = _nm(x, 1, 4)
    elif case.startswith("random") or case.startswith("zero rows"):
        mask = (torch.rand(n, d, generator=g) > 0.5).float()
    if case.startswith("zero rows"):
        mask[::7] = 0  # no kept element: every distance is 0, codeword 0 wins
    if case.startswith("offset"):  # a common offset: stage 1 runs on x - mu, so it still decides
        x, C = x + 1000.0, C * 0.5 + 1000.0
    if case.startswith("blobs"):  # clusters far apart next to their spread: stage 2 decides many points
        centers = torch.randn(4, d, generator=g) * 50
        x = centers[torch.randint(0, 4, (n,), generator=g)] + torch.randn(n, d, generator=g)
        C = centers.repeat(10, 1) + torch.randn(k, d, generator=g)
    if case.startswith("tiny"):  # float32 subnormal distances
        x, C = x * 1e-20, C * 1e-20
    if case.startswith("huge"):  # |c| > 2^40: stage 1 is skipped (overflow guard)
        x, C = x * 1e13, C * 1e13
    C[k // 2] = C[0]  # a duplicate codeword: the lower index must win its exact ties
    got = assign_nearest(x, C, mask).numpy()
    D = brute_distances(x.numpy(), None if mask is None else mask.numpy(), C.numpy())
    assert_is_argmin(got, D)
    if k > 1:
        assert not (got == k // 2).any()
    if case.startswith("zero rows"):
        assert (got[::7] == 0).all()


def test_stage_one_decides_almost_every_point(code_path, monkeypatch):
    """The expansion (stage 1) must leave few points to the slower stages, or the speed is gone: on
    clustered 2:4 data with an offset, under 1% go on to the direct form and under 0.1% to float64."""
    from flow.compress import kmeans as km

    g = torch.Generator().manual_seed(21)
    x = torch.randn(40000, 8, generator=g) + 3.0
    mask = nm_mask(x - 3.0, 2, 4)
    xm, mf = km._prepare(x, mask)
    C = km._kmeanspp(xm, mf, 128, g=g, sample=16384)
    step = km._NativeStep(_kmeans_native.load(), xm, mf, 128, nthreads=1)
    try:
        assert step.code_path == code_path and step.tmode == 1  # 36 patterns: the table
        step(C)
    finally:
        step.close()
    assert step.n_direct < 0.01 * 40000 and step.n_exact < 0.001 * 40000, (step.n_direct, step.n_exact)


def test_near_ties_on_every_code_path(code_path):
    """Codeword pairs 2^-20 apart (relative): stage 1 and stage 2 cannot split them, float64 does."""
    g = torch.Generator().manual_seed(22)
    base = torch.randn(48, 8, generator=g)
    C = torch.cat([base, base + torch.randn(48, 8, generator=g) * 2.0 ** -20])
    x = base.repeat(25, 1) + torch.randn(1200, 8, generator=g) * 0.3
    for mask in (None, nm_mask(x, 2, 4)):
        D = brute_distances(x.numpy(), None if mask is None else mask.numpy(), C.numpy())
        assert_is_argmin(assign_nearest(x, C, mask).numpy(), D)


def test_code_path_choice(monkeypatch):
    """VQHLS_KMEANS_ISA picks a copy; auto is the widest the CPU runs; a bad value is a one-line error."""
    paths = _code_paths()
    if not paths:
        pytest.skip("native k-means kernel unavailable")
    monkeypatch.setenv("VQHLS_KMEANS", "native")
    monkeypatch.delenv("VQHLS_KMEANS_ISA", raising=False)
    assert _kmeans_native.isa() == paths[-1] and paths[0] == "base"
    monkeypatch.setenv("VQHLS_KMEANS_ISA", "sse9")
    with pytest.raises(ValueError, match="VQHLS_KMEANS_ISA='sse9': use auto, avx512, avx2, base"):
        _kmeans_native.isa()
    if "avx512" not in paths:
        monkeypatch.setenv("VQHLS_KMEANS_ISA", "avx512")
        with pytest.raises(ValueError, match="this CPU runs only"):
            _kmeans_native.isa()
    monkeypatch.setenv("VQHLS_KMEANS", "torch")
    assert _kmeans_native.isa() == "torch"


def test_code_paths_give_the_same_result(monkeypatch):
    """Every copy of the kernel gives the same codebooks bit for bit (same assignment, same sums)."""
    paths = _code_paths()
    if len(paths) < 2:
        pytest.skip("fewer than two kernel copies run on this CPU")
    g = torch.Generator().manual_seed(23)
    x = torch.randn(20000, 8, generator=g)
    mask = nm_mask(x, 2, 4)
    monkeypatch.setenv("VQHLS_KMEANS", "native")
    runs = []
    for p in paths:
        monkeypatch.setenv("VQHLS_KMEANS_ISA", p)
        runs.append([masked_kmeans(x, m, 48, iters=4, seed=1) for m in (None, mask)])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a.assign, b.assign) and torch.equal(a.codebook, b.codebook)
            assert a.objective == b.objective
