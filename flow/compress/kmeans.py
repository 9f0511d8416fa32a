"""Masked k-means: the clustering step of MVQ (and, with no mask, of plain VQ).

Each point ``x_i`` (a weight vector of length ``d``) carries a 0/1 mask ``m_i``
(its N:M pattern).  Only kept elements count:

    distance(i, j) = || m_i * (x_i - c_j) ||^2          (argmin ties -> lowest j)
    codeword update: c_jl = sum_{i in j} m_il x_il / sum_{i in j} m_il

Speed (1.4M vectors, d=8, k=256, two cores) comes from:

* the expansion ``||m(x-c)||^2 = sum m x^2 - 2 (m x).c + m.(c^2)``: one skinny
  GEMM per chunk of points gives a ``[chunk, k]`` score block that stays in
  cache; no ``n x k x d`` tensor ever exists.  Points that share a mask pattern
  (36 patterns for 2:4 with d=8) are searched together over their kept
  columns only, which shrinks the GEMM from ``2d+1`` to ``|kept|+2`` columns;
* a packed argmin (column index in the low mantissa bits, see ``_Searcher``),
  because torch's ``min(dim)`` with indices is ~10x slower than ``amin``;
* chunks run side by side on Python threads (the kernels release the GIL);
* Hamerly bounds: an upper bound on each point's distance to its codeword and a
  lower bound on its distance to every other one, moved each iteration by how
  far the codewords moved (measured over the point's kept columns, which bounds
  the change of the masked seminorm), let settled points skip the search.
  Bounds carry float32 rounding slack, so a point is skipped only when its
  assignment provably cannot change;
* per-cluster sums kept in float64 and updated only for points that moved.

Monotonicity: the objective ``J(A_t, C_{t-1})`` is recorded right after the
assignment of iteration t.  A point only moves when its direct distance strictly
drops (or stays equal towards a lower index), decided exactly (float64 where
float32 cannot tell); each codeword element becomes the float32 value nearest
to the exact masked mean, which is never farther from the mean than the old
float32 value.  Both steps are descent steps, so the recorded objective never
increases (``J`` is evaluated in float64 from the sufficient statistics; its
own rounding is ~1e-15 relative).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .errors import CodebookSizeError, CompressionError, ShapeMismatchError

__all__ = ["KMeansResult", "masked_kmeans", "assign_nearest"]

_EPS32 = 2.0 ** -23  # float32 machine epsilon (spacing at 1.0)
_GROW = 1.0 + 2.0 ** -20  # relative slack for a bound after a float32 add / sqrt
# Above this fraction of points to re-check, one contiguous search beats gathering the candidates.
_FULL_SEARCH_FRACTION = 0.6


@dataclass
class KMeansResult:
    """Output of :func:`masked_kmeans`.

    Attributes:
        codebook: ``[k, d]`` float32 codewords (masked means of their members).
        assign: ``[n]`` int64 codeword index per point.
        objective: ``J(A_t, C_{t-1}) = sum_i ||m_i (x_i - c_{a_i})||^2`` after the
            assignment of iteration t, one float per iteration run; non-increasing.
            Shorter than ``iters`` when the assignment reached a fixed point.
    """

    codebook: Tensor
    assign: Tensor
    objective: list[float] = field(default_factory=list)

    @property
    def n_iter(self) -> int:
        return len(self.objective)


def _prepare(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Validate; return xm ``[n,d]`` float32 (zero where masked) and the mask as float32 (or None)."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ShapeMismatchError(f"x must be [n, d], got shape {tuple(x.shape)}: reshape the vectors to 2-D")
    if not (x.is_floating_point()):
        x = x.float()
    x = x.detach().to("cpu", torch.float32)  # the clustering runs on the CPU
    if mask is None:
        if not torch.isfinite(x).all():
            raise CompressionError("x contains NaN or inf: clean the data (or mask those elements out)")
        return x.contiguous(), None
    if not isinstance(mask, Tensor):
        mask = torch.as_tensor(mask)
    if mask.shape != x.shape:
        raise ShapeMismatchError(
            f"mask shape {tuple(mask.shape)} != x shape {tuple(x.shape)}: give one 0/1 mask element per element of x"
        )
    mf = (mask.detach().cpu() != 0).to(torch.float32).contiguous()
    # torch.where (not mf * x): values under a zero mask are ignored even if NaN/inf.
    xm = torch.where(mf > 0, x, torch.zeros((), dtype=torch.float32)).contiguous()
    if not torch.isfinite(xm).all():
        raise CompressionError("x contains NaN or inf at unmasked positions: clean the data or mask them out")
    if bool((mf == 1).all()):
        return xm, None  # all-ones mask: the cheaper unmasked path gives the same result
    return xm, mf


def _direct(xm: Tensor, mf: Tensor | None, C: Tensor, pts: Tensor, cw: Tensor, dtype=torch.float32) -> Tensor:
    """``||m_p (x_p - c_j)||^2`` for the pairs ``(pts[i], cw[i])``: ``[len(pts)]`` of ``dtype``."""
    diff = xm.index_select(0, pts).to(dtype) - C.index_select(0, cw).to(dtype)
    if mf is not None:
        diff = diff * mf.index_select(0, pts).to(dtype)
    return (diff * diff).sum(1)


def _parallel(fn, tasks: list, pool: ThreadPoolExecutor | None) -> None:
    """Run ``fn`` over contiguous slices of ``tasks``, one per worker thread.

    The chunk kernels (a skinny GEMM and int32 reductions on a ``[chunk, k]``
    block) are too small for torch's intra-op threads, but they release the GIL:
    running chunks side by side on Python threads, each with one intra-op
    thread, uses every core.  Chunks write disjoint output slices, so the
    result does not depend on the number of threads.
    """
    nw = getattr(pool, "vq_workers", 1) if pool is not None else 1
    if nw <= 1 or len(tasks) < 2:
        fn(tasks)
        return
    step = -(-len(tasks) // nw)
    parts = [tasks[i:i + step] for i in range(0, len(tasks), step)]
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # avoid nw x intra-op threads on nw cores
    try:
        for f in [pool.submit(fn, p) for p in parts]:
            f.result()
    finally:
        torch.set_num_threads(old)


class _Block:
    """A contiguous range of points searched with one GEMM layout."""

    __slots__ = ("start", "end", "Z", "cols", "masked", "es", "W", "cmax2", "kept")

    def __init__(self, start: int, end: int, Z: Tensor, cols: Tensor | None, masked: bool, es: float,
                 kept: Tensor | None = None):
        self.start, self.end, self.Z, self.cols, self.masked, self.es, self.kept = start, end, Z, cols, masked, es, kept


class _Searcher:
    """Exhaustive nearest / second-nearest codeword search, chunked over points.

    One GEMM per chunk gives every score ``S[i, j] = ||m_i (x_i - c_j)||^2 + off_i``.
    Dense layout (no mask, or a block of points sharing one mask pattern whose kept
    columns ``L`` are gathered once): ``Z = [x_L, a', 1]`` times
    ``W = [-2 C_L^T; 1; |C_L|^2 + g]`` (K = |L| + 2).  Generic masked layout:
    ``Z = [m x, m, a']`` times ``W = [-2 C^T; (C^2 + g)^T; 1]`` (K = 2d + 1).
    The per-point offset ``off_i`` (the same for every j, so it never changes the
    argmin) is at least the worst-case float32 error of the GEMM, so every score is
    a non-negative float, whose bit pattern read as int32 orders like the float.

    torch's ``min(dim)`` with indices is ~10x slower than a plain ``amin``, so the
    argmin is packed: the low ``bits`` bits of each score's int32 pattern are
    replaced by the column index, and one ``amin`` over the int32 keys gives the
    bucket of the minimum *and* its index.  When the best and second-best keys
    share a bucket (a near tie, ~1e-4 relative) the row is redone with the exact
    ``torch.min`` (first index of the minimum), so the result always equals the
    argmin of the float32 scores with ties to the lowest index.
    """

    MAX_BITS = 12  # keep >= 11 mantissa bits in the key; larger k uses the exact path only

    def __init__(self, xm: Tensor, mf: Tensor | None, chunk: int,
                 groups: list[tuple[int, int, Tensor]] | None = None, pool: ThreadPoolExecutor | None = None):
        self.n, self.d = n, d = xm.shape
        self.pool = pool
        self.a = (xm * xm).sum(1)  # sum_l m x^2 (xm is already zero where masked)
        self.chunk = max(1, int(chunk))
        self.blocks: list[_Block] = []
        if mf is None:
            self._dense(0, n, xm, None)
        elif groups is not None:
            for s, e, cols in groups:
                self._dense(s, e, xm[s:e].index_select(1, cols), cols)
        else:
            es = (2 * d + 1 + 4) * _EPS32
            Z = torch.cat([xm, mf, (self.a * (1 + 2 * es))[:, None]], 1).contiguous()
            self.blocks.append(_Block(0, n, Z, None, True, es, kept=mf.sum(1)))
        self.bstart = torch.tensor([b.start for b in self.blocks] + [n], dtype=torch.int64)
        self.blk = torch.repeat_interleave(torch.arange(len(self.blocks)), self.bstart.diff())  # block of each point
        self.es2 = torch.tensor([2 * b.es for b in self.blocks], dtype=torch.float32)

    def _dense(self, s: int, e: int, xL: Tensor, cols: Tensor | None) -> None:
        # 2^-23 = 2u per flop; a GEMM of K terms is off by at most K u sum|terms|: 2x margin.
        es = (xL.shape[1] + 2 + 4) * _EPS32
        a = self.a[s:e]
        Z = torch.cat([xL, (a * (1 + 2 * es))[:, None], torch.ones(e - s, 1)], 1).contiguous()
        self.blocks.append(_Block(s, e, Z, cols, False, es))

    def set_codebook(self, C: Tensor) -> None:
        k = self.k = C.shape[0]
        for b in self.blocks:
            Cb = C if b.cols is None else C.index_select(1, b.cols)
            c2 = Cb * Cb
            b.cmax2 = float(c2.double().sum(1).max())
            g = 2 * b.es * b.cmax2
            if b.masked:
                # m.(c^2 + g) adds g per kept element: the cmax2 part of the offset.
                b.W = torch.cat([-2.0 * Cb.T, (c2 + g).T, torch.ones(1, k)], 0).contiguous()
            else:
                b.W = torch.cat([-2.0 * Cb.T, torch.ones(1, k), (c2.sum(1) + g)[None]], 0).contiguous()
        self.cmax2 = torch.tensor([b.cmax2 for b in self.blocks], dtype=torch.float32)
        self.bits = max(1, (k - 1).bit_length())
        self.packed = self.bits <= self.MAX_BITS and k > 1
        self.low = (1 << self.bits) - 1
        self.jrow = torch.arange(k, dtype=torch.int32)

    def search(self, rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Nearest codeword for ``rows`` (sorted point indices; None = all points).

        Returns ``idx [b]`` int64 (ties -> lowest index) and, as float32 ``[b]``,
        guaranteed bounds on the true squared distances: ``best_lo <= d(idx) <= best_hi``
        and ``second_lo <= d(j)`` for every ``j != idx`` (inf when k == 1).
        """
        n = self.n if rows is None else rows.numel()
        k1 = torch.empty(n, dtype=torch.int32)
        k2 = torch.full((n,), 2 ** 31 - 1, dtype=torch.int32)
        # Position range of each block in the output (rows are sorted, blocks contiguous).
        pos = self.bstart if rows is None else torch.searchsorted(rows, self.bstart)
        pos = pos.tolist()
        exact: list[tuple[_Block, Tensor, Tensor]] = []  # (block, positions, local rows) redone exactly
        tasks: list[tuple[_Block, int, int, Tensor | None]] = []  # (block, first, end position, local rows)
        for bi, b in enumerate(self.blocks):
            p0, p1 = pos[bi], pos[bi + 1]
            local = None if rows is None else rows[p0:p1] - b.start
            if not self.packed:
                exact.append((b, torch.arange(p0, p1), torch.arange(p1 - p0) if local is None else local))
                continue
            for s in range(p0, p1, self.chunk):
                e = min(p1, s + self.chunk)
                tasks.append((b, s, e, None if local is None else local[s - p0:e - p0]))

        def run(part: list) -> None:
            for b, s, e, loc in part:
                Zc = b.Z[s - b.start:e - b.start] if loc is None else b.Z.index_select(0, loc)
                keys = torch.mm(Zc, b.W).view(torch.int32)  # [c, k] scores >= 0, as int32
                keys.bitwise_and_(~self.low).bitwise_or_(self.jrow)
                torch.amin(keys, 1, out=k1[s:e])
                keys.scatter_(1, (k1[s:e] & self.low).long()[:, None], 2 ** 31 - 1)
                torch.amin(keys, 1, out=k2[s:e])

        _parallel(run, tasks, self.pool)
        idx = (k1 & self.low).long()
        blo = (k1 & ~self.low).view(torch.float32)
        bhi = (k1 | self.low).view(torch.float32)
        slo = (k2 & ~self.low).view(torch.float32)
        if self.packed:
            amb = ((k1 >> self.bits) == (k2 >> self.bits)).nonzero().flatten()
            if amb.numel():  # near ties: redo those rows with the exact float argmin
                bpos = torch.tensor(pos, dtype=torch.int64)
                which = torch.searchsorted(bpos, amb, right=True) - 1
                for bi in which.unique().tolist():
                    b = self.blocks[bi]
                    ps = amb[which == bi]
                    loc = ps - pos[bi] if rows is None else rows.index_select(0, ps) - b.start
                    exact.append((b, ps, loc))
        for b, ps, loc in exact:
            for s in range(0, ps.numel(), self.chunk):
                p, lc = ps[s:s + self.chunk], loc[s:s + self.chunk]
                S = torch.mm(b.Z.index_select(0, lc), b.W)
                v1, i1 = torch.min(S, 1)  # first index of the minimum: ties -> lowest index
                idx[p], blo[p], bhi[p] = i1, v1, v1
                if self.k > 1:
                    S.scatter_(1, i1[:, None], float("inf"))
                    slo[p] = S.amin(1)
                else:
                    slo[p] = float("inf")
        # Remove the offset and widen by the GEMM error bound (vectorised over blocks).
        a = self.a if rows is None else self.a.index_select(0, rows)
        bid = self.blk if rows is None else self.blk.index_select(0, rows)
        es2 = self.es2.index_select(0, bid)
        err = es2 * (a + self.cmax2.index_select(0, bid))
        if self.blocks[0].masked:  # generic masked layout: the cmax2 part of the offset scales with kept
            kept = self.blocks[0].kept if rows is None else self.blocks[0].kept.index_select(0, rows)
            off = es2 * (a + self.cmax2.index_select(0, bid) * kept)
        else:
            off = err
        blo -= off + err
        bhi += err - off
        slo -= off + err
        return idx, blo, bhi, slo


def _group_by_pattern(mf: Tensor) -> tuple[Tensor, list[tuple[int, int, Tensor]]] | None:
    """Sort points by mask pattern when there are few patterns (N:M masks: 36 for 2:4, d=8).

    Within one pattern the masked distance is a plain distance over the kept
    columns, so the GEMM shrinks from ``2d + 1`` to ``|kept| + 2`` columns.
    Returns (permutation, [(start, end, kept columns)]) or None when not worth it.
    """
    n, d = mf.shape
    if d > 62:
        return None
    code = (mf.to(torch.int64) << torch.arange(d, dtype=torch.int64)).sum(1)
    pats, counts = torch.unique(code, return_counts=True)
    if pats.numel() > 1024 or pats.numel() * 512 > n:
        return None
    perm = torch.sort(code, stable=True).indices
    groups, s = [], 0
    for pat, c in zip(pats.tolist(), counts.tolist()):
        cols = torch.tensor([l for l in range(d) if (pat >> l) & 1], dtype=torch.int64)
        groups.append((s, s + c, cols))
        s += c
    return perm, groups


def _kmeanspp(xm: Tensor, mf: Tensor | None, k: int, g: torch.Generator, sample: int) -> Tensor:
    """k-means++ seeding with the masked distance on a seeded subsample; returns ``[k, d]`` float32.

    Seeds are masked points (zero where masked).  Running on ``sample`` points
    instead of all n costs O(k * sample * d) instead of O(k * n * d); the seeds are
    just as good in practice, and Lloyd iterations run on all points anyway.
    """
    n, d = xm.shape
    s = min(n, max(sample, k))
    pick = torch.randperm(n, generator=g)[:s] if s < n else torch.arange(n)
    xs = xm.index_select(0, pick)
    # One mat-vec per seed through the same expansion as the search: [s, 2d] @ [2d].
    if mf is not None:
        ms = mf.index_select(0, pick)
        Z = torch.cat([xs, ms], 1)
    else:
        Z = xs
    a = (xs * xs).sum(1)
    chosen = torch.zeros(s, dtype=torch.bool)

    def dist_to(p: int) -> Tensor:
        c = xs[p]
        w = torch.cat([-2.0 * c, c * c]) if mf is not None else -2.0 * c
        dist = torch.mv(Z, w) + a
        if mf is None:
            dist += (c * c).sum()
        # Seeding only needs sampling weights: rounding noise is harmless, negatives are not.
        return dist.clamp_min_(0).masked_fill_(chosen, 0.0)

    first = int(torch.randint(s, (1,), generator=g))
    seeds = [first]
    chosen[first] = True
    D = dist_to(first)
    for _ in range(1, k):
        if float(D.sum()) > 0:
            p = int(torch.multinomial(D, 1, generator=g))
        else:  # all remaining points coincide with seeds (duplicates): take an unchosen one at random
            free = (~chosen).nonzero().flatten()
            p = int(free[torch.randint(free.numel(), (1,), generator=g)])
        seeds.append(p)
        chosen[p] = True
        D = torch.minimum(D, dist_to(p))
    return xm.index_select(0, pick[torch.tensor(seeds)]).clone()


def masked_kmeans(
    x: Tensor,
    mask: Tensor | None = None,
    k: int = 256,
    iters: int = 20,
    seed: int = 0,
    chunk: int = 2048,
    init_sample: int | None = None,
) -> KMeansResult:
    """Lloyd's k-means under a per-element 0/1 mask.

    Args:
        x: ``[n, d]`` float points (values under a zero mask are ignored, even NaN).
        mask: ``[n, d]`` 0/1 (any dtype; nonzero = kept) or None for plain k-means.
        k: number of codewords, ``1 <= k <= n``.
        iters: maximum Lloyd iterations (>= 1); stops early at a fixed point.
        seed: makes the run deterministic (k-means++ seeding and any random choice).
        chunk: points per GEMM block; the ``[chunk, k]`` score block is the largest temporary.
        init_sample: points used for k-means++ seeding (default ``max(64 k, 16384)``).

    Returns:
        :class:`KMeansResult` with codebook ``[k, d]`` float32, assign ``[n]`` int64,
        objective (one float per iteration, non-increasing).

    Assignment: ``argmin_j ||m_i (x_i - c_j)||^2``, ties to the lowest index.
    Update: masked mean per element; an element no member keeps keeps its old value.
    Empty clusters are re-seeded at the points with the largest current error.
    Runs on the CPU.  With ``torch.get_num_threads() > 1`` the search runs on that
    many Python worker threads (intra-op threads set to 1 meanwhile, then restored);
    the result does not depend on the thread count.

    Raises:
        ShapeMismatchError: x not 2-D, or mask shape != x shape.
        CodebookSizeError: k < 1 or k > n.
        CompressionError: NaN/inf at unmasked positions, or iters < 1.
    """
    xm, mf = _prepare(x, mask)
    n, d = xm.shape
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CodebookSizeError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise CodebookSizeError(f"k={k} is larger than the number of vectors n={n}: use k <= {n}")
    if iters < 1:
        raise CompressionError(f"iters={iters}: run at least one iteration (iters >= 1)")
    if d == 0:
        raise ShapeMismatchError("x has d=0 columns: vectors must have at least one element")

    g = torch.Generator().manual_seed(int(seed))
    C = _kmeanspp(xm, mf, k, g, init_sample if init_sample is not None else max(64 * k, 16384))
    # Points sharing a mask pattern are searched together with a narrower GEMM; the loop then runs
    # in that sorted order and `perm` maps back (perm[i] = original index of internal point i).
    grouped = _group_by_pattern(mf) if mf is not None else None
    if grouped is not None:
        xm, mf = xm.index_select(0, grouped[0]), mf.index_select(0, grouped[0])
    nthreads = torch.get_num_threads()
    pool = ThreadPoolExecutor(nthreads) if nthreads > 1 and n >= 4 * chunk else None
    if pool is not None:
        pool.vq_workers = nthreads  # type: ignore[attr-defined]
    try:
        return _lloyd(xm, mf, C, k, iters, chunk, grouped, pool)
    finally:
        if pool is not None:
            pool.shutdown()


def _lloyd(xm: Tensor, mf: Tensor | None, C: Tensor, k: int, iters: int, chunk: int, grouped, pool) -> KMeansResult:
    """The Lloyd loop of :func:`masked_kmeans` (points possibly permuted by mask pattern)."""
    n, d = xm.shape
    perm, groups = grouped if grouped is not None else (None, None)
    srch = _Searcher(xm, mf, chunk, groups, pool)

    # Sufficient statistics in float64, kept in step with `assign` (only moved points touch them).
    S1 = torch.zeros(k, d, dtype=torch.float64)  # sum of m*x over members
    N = torch.zeros(k, d, dtype=torch.float64)  # sum of m over members
    cnt = torch.zeros(k, dtype=torch.int64)
    sum_a = float(xm.double().pow(2).sum())  # sum_i sum_l m x^2 in float64: the same for every assignment
    if groups is not None:
        # Grouped by pattern, N is (members per cluster and pattern) @ (pattern masks): integer counts
        # instead of a float64 scatter of mask rows.
        nb = len(groups)
        blk = srch.blk  # pattern block of each (permuted) point
        pmask = torch.stack([mf[s] for s, _, _ in groups]).double()  # [B, d]
        cntB = torch.zeros(nb * k, dtype=torch.int64)

    def add_stats(pts: Tensor | None, cw: Tensor, sign: int) -> None:
        xs = (xm if pts is None else xm.index_select(0, pts)).double()
        S1.index_add_(0, cw, xs, alpha=sign)
        cnt.add_(torch.bincount(cw, minlength=k), alpha=sign)
        if groups is not None:
            b = blk if pts is None else blk.index_select(0, pts)
            cntB.add_(torch.bincount(b * k + cw, minlength=nb * k), alpha=sign)
        elif mf is not None:
            N.index_add_(0, cw, (mf if pts is None else mf.index_select(0, pts)).double(), alpha=sign)

    def sync_n() -> None:
        if groups is not None:
            N.copy_(cntB.view(nb, k).T.double() @ pmask)
        elif mf is None:
            N.copy_(cnt.double()[:, None].expand(k, d))

    assign = torch.zeros(n, dtype=torch.int64)
    u = torch.zeros(n, dtype=torch.float32)  # upper bound on ||m(x - c_assign)||
    lo = torch.zeros(n, dtype=torch.float32)  # lower bound on ||m(x - c_j)|| for every j != assign
    objective: list[float] = []

    for t in range(iters):
        srch.set_codebook(C)
        C64 = C.double()
        moved = 0
        rows: Tensor | None = None  # None = search every point
        if t > 0:
            cand = (u >= lo).nonzero().flatten()
            if cand.numel() <= _FULL_SEARCH_FRACTION * n:
                # Tighten u with the exact distance; many candidates are then settled without a search.
                du = torch.sqrt(_direct(xm, mf, C, cand, assign.index_select(0, cand)))
                du.mul_(1.0 + (d + 4) * _EPS32)
                u[cand] = du
                rows = cand[du >= lo.index_select(0, cand)]
        if rows is None or rows.numel():
            i1, blo, bhi, slo = srch.search(rows)
            new_u = torch.sqrt(bhi.clamp_min_(0)).mul_(_GROW)
            new_l = torch.sqrt(slo.clamp_min_(0)).div_(_GROW)
            if t == 0:
                assign, u, lo = i1, new_u, new_l
                add_stats(None, assign, 1)
                moved = n
            else:
                old = assign if rows is None else assign.index_select(0, rows)
                sw = (i1 != old).nonzero().flatten()
                if sw.numel():
                    # Descent guard: a point moves only if its direct distance strictly drops, or stays
                    # equal towards a lower index (decided in float64, where products of float32 are exact).
                    P = sw if rows is None else rows.index_select(0, sw)
                    jn, jo = i1.index_select(0, sw), old.index_select(0, sw)
                    # float32 first; float64 only where float32 cannot tell (|dn - do| within rounding).
                    dn = _direct(xm, mf, C, P, jn)
                    do = _direct(xm, mf, C, P, jo)
                    tol = (2 * (d + 4) * _EPS32) * torch.maximum(dn, do)
                    ok = dn < do - tol
                    unsure = ((dn - do).abs() <= tol).nonzero().flatten()
                    if unsure.numel():
                        Pu, ju, jv = P[unsure], jn[unsure], jo[unsure]
                        dn64 = _direct(xm, mf, C, Pu, ju, torch.float64)
                        do64 = _direct(xm, mf, C, Pu, jv, torch.float64)
                        ok[unsure] = (dn64 < do64) | ((dn64 == do64) & (ju < jv))
                        do[unsure] = do64.float()
                    if not bool(ok.all()):
                        rej = sw[~ok]
                        # Keep the old codeword; every codeword is at least the best found.
                        i1[rej] = old[rej]
                        new_u[rej] = torch.sqrt(do[~ok]) * ((1.0 + (d + 4) * _EPS32) * _GROW)
                        new_l[rej] = torch.sqrt(blo[rej].clamp_min(0)) / _GROW
                    P, jn, jo = P[ok], jn[ok], jo[ok]
                    if P.numel():
                        add_stats(P, jo, -1)
                        add_stats(P, jn, 1)
                        moved = P.numel()
                if rows is None:
                    assign, u, lo = i1, new_u, new_l
                else:
                    assign[rows] = i1
                    u[rows] = new_u
                    lo[rows] = new_l
        sync_n()
        # Stats of an emptied cluster are exactly zero, not float64 residue of +x - x.
        empty = cnt == 0
        if bool(empty.any()):
            S1[empty] = 0.0
            N[empty] = 0.0
        # J(A_t, C_{t-1}) = sum a - 2 sum C.S1 + sum C^2.N: exact algebra on the float64 statistics.
        J = sum_a - 2.0 * float((C64 * S1).sum()) + float((C64 * C64 * N).sum())
        objective.append(max(J, 0.0))
        if t > 0 and moved == 0:
            break  # fixed point: same statistics -> same codebook -> same assignment forever

        # Update: the float32 nearest to the float64 masked mean; unseen elements keep their value.
        newC = torch.where(N > 0, S1 / N.clamp_min(1.0), C64).to(torch.float32)
        if bool(empty.any()):
            _reseed(xm, mf, newC, assign, empty, perm)
        if t + 1 < iters:
            # Hamerly bound update.  A point's masked distance changes by at most the codeword's move
            # measured over the point's kept columns: per pattern block when grouped, else the full norm.
            dC = newC.double() - C64
            if grouped is not None:
                # [k, B]: each codeword's move over each pattern's kept columns.
                delta = (dC * dC) @ pmask.T
                _move_bounds(u, lo, assign, delta.T.contiguous(), blk)
            else:
                _move_bounds(u, lo, assign, (dC * dC).sum(1)[None], None)
        C = newC
    if perm is not None:
        assign = torch.empty_like(assign).index_copy_(0, perm, assign)
    return KMeansResult(codebook=C.contiguous(), assign=assign, objective=objective)


def _move_bounds(u: Tensor, lo: Tensor, assign: Tensor, move2: Tensor, blk: Tensor | None) -> None:
    """Loosen the Hamerly bounds in place after the codewords moved.

    ``move2 [B, k]`` float64: squared move of each codeword over the kept columns of
    pattern block b (B = 1, full norm, when not grouped); ``blk [n]`` block of each point.
    """
    # Slack: the float64 norm rounded up, and _GROW per float32 add.
    delta = move2.sqrt().mul_(1 + 1e-9).to(torch.float32).mul_(_GROW)  # [B, k]
    B, k = delta.shape
    flat = assign if blk is None else blk * k + assign
    u.add_(delta.view(-1).index_select(0, flat)).mul_(_GROW)
    if k > 1:
        top = torch.topk(delta, 2, dim=1)
        d1, d2, j1 = top.values[:, 0], top.values[:, 1], top.indices[:, 0]
        if blk is None:
            lo.sub_(float(d1[0])).div_(_GROW)
            own = (assign == int(j1[0])).nonzero().flatten()
            lo.index_add_(0, own, ((d1 - d2) / _GROW).expand(own.numel()))
        else:
            lo.sub_(d1.index_select(0, blk)).div_(_GROW)
            # Points of their block's fastest codeword only lose that block's second-largest move.
            own = (assign == j1.index_select(0, blk)).nonzero().flatten()
            lo.index_add_(0, own, ((d1 - d2) / _GROW).index_select(0, blk.index_select(0, own)))


def _reseed(xm: Tensor, mf: Tensor | None, C: Tensor, assign: Tensor, empty: Tensor,
            perm: Tensor | None = None) -> bool:
    """Move each empty codeword onto one of the points with the largest current error (in place).

    Equal errors go to the lower original point index (``perm`` maps internal to original order).
    """
    err = _direct(xm, mf, C, torch.arange(xm.shape[0]), assign)
    order = torch.arange(xm.shape[0]) if perm is None else torch.sort(perm).indices  # by original index
    order = order[torch.sort(err.index_select(0, order), descending=True, stable=True).indices]
    ej = empty.nonzero().flatten()
    order = order[: ej.numel()]
    order = order[err.index_select(0, order) > 0]  # a zero-error point would not help
    if order.numel() == 0:
        return False
    for j, p in zip(ej.tolist(), order.tolist()):
        if mf is None:
            C[j] = xm[p]
        else:  # elements the point does not keep have no information: leave them as they were
            C[j] = torch.where(mf[p] > 0, xm[p], C[j])
    return True


def assign_nearest(x: Tensor, codebook: Tensor, mask: Tensor | None = None, chunk: int = 4096) -> Tensor:
    """Nearest codeword per point under the mask: ``[n]`` int64, ties to the lowest index.

    x ``[n, d]``, codebook ``[k, d]``, mask ``[n, d]`` 0/1 or None.
    """
    xm, mf = _prepare(x, mask)
    C = codebook.detach().to(torch.float32)
    if C.dim() != 2 or C.shape[1] != xm.shape[1]:
        raise ShapeMismatchError(f"codebook must be [k, {xm.shape[1]}], got {tuple(C.shape)}")
    s = _Searcher(xm, mf, chunk)
    s.set_codebook(C)
    return s.search(None)[0]
