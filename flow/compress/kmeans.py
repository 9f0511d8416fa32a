"""Masked k-means: the clustering step of MVQ (and, with no mask, of plain VQ).

Each point ``x_i`` (a weight vector of length ``d``) carries a 0/1 mask ``m_i``
(its N:M pattern).  Only kept elements count:

    distance(i, j) = || m_i * (x_i - c_j) ||^2          (argmin ties -> lowest j)
    codeword update: c_jl = sum_{i in j} m_il x_il / sum_{i in j} m_il

Assignment is exact: it is the argmin of the float64 distances, ties to the
lowest index.  Two backends compute it (``VQHLS_KMEANS`` = auto | native | torch,
see :mod:`flow.compress._kmeans_native`):

* native (default): ``_kmeans_kernel.cpp``, a fused distance-and-argmin kernel
  built with the system g++ on first use (or at install time) and called
  through ctypes on one Python thread per torch thread.  For each point it reads only
  the kept columns and searches all codewords in float32, W codewords per vector
  instruction (W = 16 on AVX-512, 8 on AVX2 + FMA, 4 on baseline x86-64: one copy
  per instruction set, picked at run time), keeping the best and second-best value
  per lane.  Stage 1 is the expansion faiss uses, fused with the argmin: on values
  centred at the data mean ``mu``, ``|x'|^2 + T_j - 2 x'.c'_j`` with ``T_j`` the
  codeword's squared norm over the point's kept columns (one table row per mask
  pattern), one multiply-add per codeword and kept column.  A point whose best and
  second-best stage-1 values are within that form's rounding bound (relative to
  ``|x - mu|^2``) goes to stage 2, the direct form ``sum (x - c)^2`` (bound relative
  to the distance); one within that bound too (a near or real tie: a few points in
  10^5) is redone in float64.  The cluster statistics (per-element sums of kept x,
  counts of kept elements) are accumulated in the same pass.  No ``[n, k]`` score
  matrix is ever written: on a 2:4 mask the kernel does half the arithmetic of the
  unmasked search.
* torch (no compiler): the expansion ``||m(x-c)||^2 = sum m x^2 - 2 (m x).c +
  m.(c^2)`` as one skinny GEMM per chunk of points (points sharing a mask
  pattern searched together over their kept columns), a packed argmin, and
  float64 for every point whose float32 bounds cannot separate the best
  codeword from the second (``_Searcher``).

Both give the same assignment (up to float64 rounding ties between codewords,
which never occur on real data), so the same seed gives the same codebooks on
either backend (they add the float64 statistics in different orders, so an
element whose mean sits on a float32 rounding boundary could differ in its
last bit).  Each backend adds its statistics in a fixed order, so its result
does not depend on the number of threads.

Monotonicity: the objective ``J(A_t, C_{t-1})`` is recorded right after the
assignment of iteration t.  The assignment is the exact argmin (a point only
moves when its distance strictly drops, or ties towards a lower index), and
each codeword element becomes the float32 value nearest to the exact masked
mean, which is never farther from the mean than the old float32 value.  Both
steps are descent steps, so the recorded objective never increases (``J`` is
evaluated in float64 from the sufficient statistics; its own rounding is
~1e-15 relative).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import _kmeans_native
from .errors import CodebookSizeError, CompressionError, ShapeMismatchError

__all__ = ["KMeansResult", "masked_kmeans", "assign_nearest"]

_EPS32 = 2.0 ** -23  # float32 machine epsilon (spacing at 1.0)
# Native statistics ranges: at least _SLOT_MIN points each, at most _MAX_SLOTS of them, and at most
# _SLOT_BYTES of per-range partial sums.  A function of (n, k, d) only: the sums, hence the result,
# do not depend on the thread count.
_SLOT_MIN = 8192
_MAX_SLOTS = 64
_SLOT_BYTES = 32 << 20


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
            self._dense(0, n, xm, cols=None)
        elif groups is not None:
            for s, e, cols in groups:
                self._dense(s, e, xm[s:e].index_select(1, cols), cols=cols)
        else:
            es = (2 * d + 1 + 4) * _EPS32
            Z = torch.cat([xm, mf, (self.a * (1 + 2 * es))[:, None]], 1).contiguous()
            self.blocks.append(_Block(0, n, Z, cols=None, masked=True, es=es, kept=mf.sum(1)))
        self.bstart = torch.tensor([b.start for b in self.blocks] + [n], dtype=torch.int64)
        self.blk = torch.repeat_interleave(torch.arange(len(self.blocks)), self.bstart.diff())  # block of each point
        self.es2 = torch.tensor([2 * b.es for b in self.blocks], dtype=torch.float32)

    def _dense(self, s: int, e: int, xL: Tensor, cols: Tensor | None) -> None:
        # 2^-23 = 2u per flop; a GEMM of K terms is off by at most K u sum|terms|: 2x margin.
        es = (xL.shape[1] + 2 + 4) * _EPS32
        a = self.a[s:e]
        Z = torch.cat([xL, (a * (1 + 2 * es))[:, None], torch.ones(e - s, 1)], 1).contiguous()
        self.blocks.append(_Block(s, e, Z, cols=cols, masked=False, es=es))

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


def _exact_argmin(xm: Tensor, mf: Tensor | None, C: Tensor, rows: Tensor) -> Tensor:
    """float64 argmin over all codewords for ``rows`` (first minimum wins): ``[len(rows)]`` int64."""
    k, d = C.shape
    C64 = C.double()
    out = torch.empty(rows.numel(), dtype=torch.int64)
    step = max(1, (1 << 21) // (k * d))
    for s in range(0, rows.numel(), step):
        r = rows[s:s + step]
        diff = xm.index_select(0, r).double()[:, None, :] - C64[None]
        if mf is not None:
            diff = diff * mf.index_select(0, r).double()[:, None, :]
        out[s:s + step] = torch.min((diff * diff).sum(2), 1).indices  # first index of the minimum
    return out


# Stage 1 of the kernel reads T (the codewords' squared norms over a point's kept columns) from a table
# with one row per mask pattern when the patterns are few (N:M masks: 36 for 2:4 on d = 8); otherwise
# each point sums its own row.  A table row costs k * d once per iteration, a summed row k * r per point.
_MAX_PATTERNS = 4096
_PATTERN_TABLE_BYTES = 4 << 20
_MAX_STAGE1_D = 2048  # the kernel's stage-1 error constant assumes (2r + 4)(2r + 2) u <= 2; beyond: stage 2
_STAGE1_LIMIT = 2.0 ** 40  # |c - mu| above this could overflow stage 1's float32 terms: stage 2 only


def _patterns(mf: Tensor, kp: int) -> tuple[Tensor, Tensor] | None:
    """``(pid [n] int32, patterns [npat, d] float64 0/1)`` when the mask has few patterns, else None."""
    n, d = mf.shape
    if d > 62:
        return None
    code = mf.to(torch.int64) @ (1 << torch.arange(d, dtype=torch.int64))
    if d <= 20:  # a lookup table over every possible code: O(n), no sort
        seen = torch.bincount(code, minlength=1 << d).nonzero().flatten()
        lut = torch.zeros(1 << d, dtype=torch.int64)
        lut[seen] = torch.arange(seen.numel())
        pats, pid = seen, lut[code]
    else:
        pats, pid = torch.unique(code, return_inverse=True)
    npat = pats.numel()
    if npat > _MAX_PATTERNS or npat * kp * 4 > _PATTERN_TABLE_BYTES or 4 * npat > n:
        return None
    bits = ((pats[:, None] >> torch.arange(d, dtype=torch.int64)) & 1).to(torch.float64)
    return pid.to(torch.int32).contiguous(), bits.contiguous()


class _NativeStep:
    """Assignment (and the Lloyd statistics) by the fused kernel ``_kmeans_kernel.cpp``.

    The points are cut into fixed ranges; each range is one kernel call on a worker
    thread (ctypes releases the GIL) and writes its own partial sums, which are then
    added in range order.  Per call this side prepares the kernel's small inputs from
    the codebook: ``-2 c'^T`` and the T table of stage 1 (``c' = c - mu``, ``mu`` the
    mean of the kept data, so the expansion's error bound is relative to ``|x - mu|^2``),
    and ``C^T`` for stage 2.
    """

    def __init__(self, lib, xm: Tensor, mf: Tensor | None, k: int, nthreads: int):
        n, d = xm.shape
        self.lib, self.n, self.d, self.k = lib, n, d, k
        self.level = _kmeans_native.isa_level(lib)
        self.x = xm.contiguous()
        self.m = None if mf is None else (mf != 0).to(torch.uint8).contiguous()
        self.kp = kp = -(-k // 32) * 32  # the kernel runs two blocks of up to 16 codewords at a time
        # Stage 1's shift: the per-column mean of the kept values (xm is zero where masked).
        kept = torch.full((d,), float(n), dtype=torch.float64) if mf is None else mf.sum(0, dtype=torch.float64)
        self.mu = (xm.sum(0, dtype=torch.float64) / kept.clamp_min(1.0)).to(torch.float32).contiguous()
        self.tmode, self.pid, self.pats = 0, None, None
        if mf is not None:
            found = _patterns(mf, kp)
            if found is None:
                self.tmode = 2
            else:
                self.tmode = 1
                self.pid, self.pats = found
        if d > _MAX_STAGE1_D:
            self.tmode = -1
        g = max(1, min(_MAX_SLOTS, -(-n // _SLOT_MIN), _SLOT_BYTES // (k * d * 16 + k * 8)))
        step = max(1, -(-n // g))
        self.ranges = [(s, min(n, s + step)) for s in range(0, n, step)]
        G = len(self.ranges)
        self.s1 = torch.empty(G, k, d, dtype=torch.float64)
        self.cnt = torch.empty(G, k, dtype=torch.int64)
        self.nk = torch.empty(G, k, d, dtype=torch.int64) if self.m is not None else None
        self.sa = torch.empty(G, dtype=torch.float64)
        self.info = torch.zeros(G, 3, dtype=torch.int64)
        self.bufs = [torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)]  # ping-pong
        self.prev: Tensor | None = None
        self.pool = ThreadPoolExecutor(min(nthreads, G)) if nthreads > 1 and G > 1 else None
        self.n_exact = 0  # points decided in float64 so far (near or real ties)
        self.n_direct = 0  # points stage 1 (the expansion) left to stage 2 (the direct form) so far
        self.moved = 0  # points that changed codeword in the last step

    @property
    def code_path(self) -> str:
        """The kernel copy that runs: ``avx512``, ``avx2`` or ``base``."""
        return _kmeans_native.ISAS[self.level]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def _tables(self, C: Tensor) -> tuple[Tensor, Tensor, Tensor, int]:
        """``(w, tab, ct, tmode)`` for the kernel (see ``vq_assign``): padding beyond k never wins."""
        d, k, kp = self.d, self.k, self.kp
        nan = float("nan")
        ct = torch.full((d, kp), nan, dtype=torch.float32)
        ct[:, :k] = C.T
        cs = C - self.mu  # c' = fl(c - mu) in float32, as the kernel rounds x'
        tmode = self.tmode
        if tmode >= 0 and not bool(cs.abs().max() <= _STAGE1_LIMIT):
            tmode = -1
        w = torch.zeros(d, kp, dtype=torch.float32)
        if tmode < 0:
            return w, ct, ct, -1
        w[:, :k] = -2.0 * cs.T  # exact (a power of two)
        c2 = cs.double().square()
        if tmode == 0:
            tab = torch.full((1, kp), nan, dtype=torch.float32)
            tab[0, :k] = c2.sum(1)  # rounded once from float64
        elif tmode == 1:
            tab = torch.full((self.pats.shape[0], kp), nan, dtype=torch.float32)
            tab[:, :k] = self.pats @ c2.T
        else:
            tab = torch.full((d, kp), nan, dtype=torch.float32)
            tab[:, :k] = (cs * cs).T  # float32 squares; the kernel sums a point's kept rows
        return w, tab, ct, tmode

    def assign(self, C: Tensor, stats: bool = False) -> Tensor:
        """``[n]`` int64 nearest codeword; with ``stats`` also fills the per-range partial sums."""
        d, k, kp = self.d, self.k, self.kp
        C = C.to(torch.float32).contiguous()
        w, tab, ct, tmode = self._tables(C)
        prev = self.prev
        out = self.bufs[1] if prev is self.bufs[0] else self.bufs[0]
        xp, mp, op = self.x.data_ptr(), None if self.m is None else self.m.data_ptr(), out.data_ptr()
        mup, wp, tp, ctp, cp = self.mu.data_ptr(), w.data_ptr(), tab.data_ptr(), ct.data_ptr(), C.data_ptr()
        pidp = None if self.pid is None else self.pid.data_ptr()
        pp = None if prev is None else prev.data_ptr()
        isz, dsz = 8, 8  # bytes per int64 / float64 element
        lvl = self.level

        def run(g: int) -> None:
            s, e = self.ranges[g]
            info = self.info.data_ptr() + 3 * isz * g
            head = (lvl, d, k, kp, xp, mp, mup, wp, tp, pidp, tmode, ctp, cp, s, e, op, pp)
            if not stats:
                self.lib.vq_assign(*head, None, None, None, None, info)
                return
            self.lib.vq_assign(*head, self.s1[g].data_ptr(), self.cnt[g].data_ptr(),
                               None if self.nk is None else self.nk[g].data_ptr(), self.sa.data_ptr() + dsz * g, info)

        G = len(self.ranges)
        if self.pool is not None:
            list(self.pool.map(run, range(G)))
        else:
            for g in range(G):
                run(g)
        tot = self.info.sum(0).tolist()
        self.n_exact += tot[0]
        self.n_direct += tot[2]
        self.moved = tot[1] if prev is not None else self.n
        return out

    def __call__(self, C: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, float, int]:
        """(assign, S1 [k,d] float64, N [k,d] float64, cnt [k] int64, sum of kept x^2, points moved)."""
        assign = self.prev = self.assign(C, stats=True)
        S1, cnt = self.s1[0].clone(), self.cnt[0].clone()
        N = None if self.nk is None else self.nk[0].clone()
        for g in range(1, len(self.ranges)):  # in range order: fixed summation order
            S1 += self.s1[g]
            cnt += self.cnt[g]
            if N is not None:
                N += self.nk[g]
        sum_a = 0.0
        for v in self.sa.tolist():
            sum_a += v
        N = cnt.double()[:, None].expand(self.k, self.d).clone() if N is None else N.double()
        return assign, S1, N, cnt, sum_a, self.moved


class _TorchStep:
    """The same step in pure torch (the fallback when the kernel cannot be built).

    ``_Searcher`` gives every point its float32 best codeword with guaranteed bounds;
    points whose bounds do not separate the best from the second best are redone in
    float64, so the assignment is the same exact argmin as the kernel's.
    """

    def __init__(self, xm: Tensor, mf: Tensor | None, k: int, chunk: int, nthreads: int):
        n, d = xm.shape
        self.xm, self.mf, self.k = xm, mf, k
        grouped = _group_by_pattern(mf) if mf is not None else None
        self.perm, groups, xs, ms = None, None, xm, mf
        if grouped is not None:
            self.perm, groups = grouped
            xs, ms = xm.index_select(0, self.perm), mf.index_select(0, self.perm)
        self.pool = ThreadPoolExecutor(nthreads) if nthreads > 1 and n >= 4 * chunk else None
        if self.pool is not None:
            self.pool.vq_workers = nthreads  # type: ignore[attr-defined]
        self.srch = _Searcher(xs, ms, chunk, groups=groups, pool=self.pool)
        # row sums, then numpy's single-threaded sum: the same value for any torch thread count
        self.sum_a = float(xm.double().pow(2).sum(1).numpy().sum())
        self.n_exact = 0
        self.prev: Tensor | None = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def assign(self, C: Tensor, stats: bool = False) -> Tensor:
        self.srch.set_codebook(C)
        idx, _, bhi, slo = self.srch.search(None)
        if self.perm is not None:  # back to the caller's order
            idx = torch.empty_like(idx).index_copy_(0, self.perm, idx)
            bhi = torch.empty_like(bhi).index_copy_(0, self.perm, bhi)
            slo = torch.empty_like(slo).index_copy_(0, self.perm, slo)
        amb = (~(slo > bhi)).nonzero().flatten()  # not provably the unique minimum (or not finite)
        if amb.numel():
            idx[amb] = _exact_argmin(self.xm, self.mf, C, rows=amb)
            self.n_exact += amb.numel()
        return idx

    def __call__(self, C: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, float, int]:
        assign = self.assign(C)
        moved = assign.numel() if self.prev is None else int((assign != self.prev).sum())
        self.prev = assign
        k, d = self.k, self.xm.shape[1]
        S1 = torch.zeros(k, d, dtype=torch.float64)
        N = torch.zeros(k, d, dtype=torch.float64)
        step = 1 << 18
        for s in range(0, assign.numel(), step):
            a = assign[s:s + step]
            S1.index_add_(0, a, self.xm[s:s + step].double())
            if self.mf is not None:
                N.index_add_(0, a, self.mf[s:s + step].double())
        cnt = torch.bincount(assign, minlength=k)
        if self.mf is None:
            N = cnt.double()[:, None].expand(k, d).clone()
        return assign, S1, N, cnt, self.sum_a, moved


def _step(xm: Tensor, mf: Tensor | None, k: int, chunk: int):
    """The backend chosen by ``VQHLS_KMEANS`` (native kernel when it loads, else torch)."""
    lib = _kmeans_native.load()
    nthreads = torch.get_num_threads()
    if lib is not None:
        return _NativeStep(lib, xm, mf, k=k, nthreads=nthreads)
    return _TorchStep(xm, mf, k, chunk=chunk, nthreads=nthreads)


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
        chunk: points per GEMM block of the torch backend (the native kernel needs no block).
        init_sample: points used for k-means++ seeding (default ``max(64 k, 16384)``).

    Returns:
        :class:`KMeansResult` with codebook ``[k, d]`` float32, assign ``[n]`` int64,
        objective (one float per iteration, non-increasing).

    Assignment: ``argmin_j ||m_i (x_i - c_j)||^2`` in float64, ties to the lowest index.
    Update: masked mean per element; an element no member keeps keeps its old value.
    Empty clusters are re-seeded at the points with the largest current error.
    Runs on the CPU on ``torch.get_num_threads()`` worker threads; the result does not
    depend on the thread count.

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
    C = _kmeanspp(xm, mf, k, g=g, sample=init_sample if init_sample is not None else max(64 * k, 16384))
    step = _step(xm, mf, k, chunk=chunk)
    try:
        return _lloyd(step, xm, mf, C=C, iters=iters)
    finally:
        step.close()


def _lloyd(step, xm: Tensor, mf: Tensor | None, C: Tensor, iters: int) -> KMeansResult:
    """The Lloyd loop of :func:`masked_kmeans`: ``step(C)`` assigns and returns the statistics."""
    objective: list[float] = []
    assign: Tensor | None = None
    for t in range(iters):
        assign, S1, N, cnt, sum_a, moved = step(C)
        # J(A_t, C_{t-1}) = sum a - 2 sum C.S1 + sum C^2.N: exact algebra on the float64 statistics.
        C64 = C.double()
        J = sum_a - 2.0 * float((C64 * S1).sum()) + float((C64 * C64 * N).sum())
        objective.append(max(J, 0.0))
        if t > 0 and moved == 0:
            break  # fixed point: same statistics -> same codebook -> same assignment forever
        # Update: the float32 nearest to the float64 masked mean; unseen elements keep their value.
        newC = torch.where(N > 0, S1 / N.clamp_min(1.0), C64).to(torch.float32)
        empty = cnt == 0
        if bool(empty.any()):
            _reseed(xm, mf, newC, assign=assign, empty=empty)
        C = newC
    return KMeansResult(codebook=C.contiguous(), assign=assign, objective=objective)


def _reseed(xm: Tensor, mf: Tensor | None, C: Tensor, assign: Tensor, empty: Tensor) -> bool:
    """Move each empty codeword onto one of the points with the largest current error (in place).

    Equal errors go to the lower point index.
    """
    err = _direct(xm, mf, C, pts=torch.arange(xm.shape[0]), cw=assign)
    order = torch.sort(err, descending=True, stable=True).indices
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

    x ``[n, d]``, codebook ``[k, d]``, mask ``[n, d]`` 0/1 or None.  The argmin of the
    float64 masked distances, as in :func:`masked_kmeans` (``chunk``: torch backend only).
    """
    xm, mf = _prepare(x, mask)
    C = codebook.detach().to("cpu", torch.float32)
    if C.dim() != 2 or C.shape[1] != xm.shape[1] or C.shape[0] < 1:
        raise ShapeMismatchError(f"codebook must be [k, {xm.shape[1]}] with k >= 1, got {tuple(C.shape)}")
    if not torch.isfinite(C).all():
        raise CompressionError("codebook contains NaN or inf")
    step = _step(xm, mf, C.shape[0], chunk=chunk)
    try:
        return step.assign(C)
    finally:
        step.close()
