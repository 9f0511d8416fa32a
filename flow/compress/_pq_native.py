"""Loader of the fused PQ training kernel ``_pq_kernel.cpp`` (ctypes, no Python headers) and its calls.

Built, cached and loaded like the k-means kernel, by :mod:`flow.compress._native_build` (a copy next to this
file built at install time, else one in the kernel cache keyed by the source, compiler and flags, else
compiled there once with ``$CXX``/``g++``, about 2 s). One build carries an AVX-512, an AVX2 + FMA and a baseline
copy; :func:`isa` says which runs.

``VQHLS_PQ`` selects how :mod:`flow.compress.pq` trains and encodes: ``auto`` (default: the kernel for
float32 CPU tensors with K <= 64 when it loads, else the torch path with a one-time warning), ``native`` (the
kernel or an error) or ``torch`` (never the kernel: the reference formulation). ``VQHLS_PQ_ISA`` (``auto``,
``avx512``, ``avx2``, ``base``) picks a narrower copy than the CPU's best.
"""
from __future__ import annotations

import ctypes
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from ._native_build import ISAS, KernelUnavailable, NativeKernel

__all__ = ["backend", "load", "isa", "usable", "Tables", "encode", "soft_grad", "soft_grad_cols", "hard_lut_grad",
           "outer_acc", "lut_sum", "im2col", "col2im", "conv_encode", "conv_backward", "KernelUnavailable", "ISAS",
           "KP_MAX"]

ABI = 10
SRC = Path(__file__).with_name("_pq_kernel.cpp")
KP_MAX = 64  # the kernel is compiled for K padded to 16, 32 or 64


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.pq_kernel_abi.restype = ctypes.c_int
    if lib.pq_kernel_abi() != ABI:
        raise KernelUnavailable(f"{path}: ABI {lib.pq_kernel_abi()} != {ABI} (a stale build: delete it)")
    vp, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.pq_kernel_isa.restype = i32
    lib.pq_kernel_isa.argtypes = [i32]
    lib.pq_soft_grad.restype = i32
    lib.pq_soft_grad.argtypes = [i32, i64, i64, i64, i64, i64, i64, vp, vp, vp, vp, vp, f32, vp, vp, vp, i32]
    lib.pq_encode_cols.restype = i64
    lib.pq_encode_cols.argtypes = [i32, i64, i64, i64, i64, i64, vp, vp, vp, vp, f32, vp, i64]
    lib.pq_soft_grad_cols.restype = i32
    lib.pq_soft_grad_cols.argtypes = [i32, i64, i64, i64, i64, i64, i64, i64, vp, vp, vp, vp, vp, vp, i64, f32, vp, i64,
                                      vp, vp]
    lib.pq_hard_lut_grad.restype = i32
    lib.pq_hard_lut_grad.argtypes = [i32, i64, i64, i64, i64, i64, vp, i64, vp, vp]
    lib.pq_outer_acc.restype = i32
    lib.pq_outer_acc.argtypes = [i32, i64, i64, i64, i64, i64, vp, vp, vp]
    lib.pq_lut_sum.restype = i32
    lib.pq_lut_sum.argtypes = [i32, i64, i64, i64, i64, i64, vp, i64, vp, vp, i64]
    lib.pq_im2col.restype = lib.pq_col2im.restype = i32
    lib.pq_im2col.argtypes = [i64] * 13 + [vp, vp, i64]  # 4 ranges + 9 geometry, x, out, ldo
    lib.pq_col2im.argtypes = [i64] * 13 + [vp, i64, vp]  # 4 ranges + 9 geometry, g, ldg, dx
    lib.pq_conv_encode.restype = i64
    lib.pq_conv_encode.argtypes = [i32, vp, i64, i64, i64, i64, i64, i64, vp, vp, vp, vp, vp, f32, vp, i64]
    lib.pq_conv_backward.restype = i32
    lib.pq_conv_backward.argtypes = [i32, vp, i64, i64, i64, i64, i64, i64, i64, i64, vp, vp, vp, vp, vp, vp, vp, i64,
                                     f32, vp, vp, vp, vp, vp, vp, i64, vp, vp]
    return lib


KERNEL = NativeKernel(SRC, ABI, "pq", "VQHLS_PQ", "PQ training", _bind, isa_fn="pq_kernel_isa")


def backend() -> str:
    """``auto``, ``native`` or ``torch`` from ``$VQHLS_PQ`` (read at every call)."""
    return KERNEL.backend()


def load() -> ctypes.CDLL | None:
    """The kernel for the current ``VQHLS_PQ`` setting, or None for the torch path.

    Raises:
        KernelUnavailable: ``VQHLS_PQ=native`` and the kernel cannot be built or loaded.
    """
    return KERNEL.load()


def isa_level(lib: ctypes.CDLL) -> int:
    """The code path (index into :data:`ISAS`) under ``$VQHLS_PQ_ISA`` (ValueError: unknown, or not on this CPU)."""
    return KERNEL.isa_level(lib)


def isa() -> str:
    """The code path PQ training runs here: ``avx512``, ``avx2``, ``base`` (the kernel) or ``torch``."""
    lib = load()
    return "torch" if lib is None else ISAS[isa_level(lib)]


def usable(*tensors: Tensor, K: int | None) -> ctypes.CDLL | None:
    """The kernel when it applies to these tensors (float32, CPU) and K (<= 64; None: any K, for the functions
    that do not score prototypes), else None."""
    if (K is not None and K > KP_MAX) or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        if backend() == "native" and K is not None and K > KP_MAX:
            raise KernelUnavailable(f"VQHLS_PQ=native: the kernel is compiled for K <= {KP_MAX}, not {K}")
        return None
    return load()


def _kp(K: int) -> int:
    return 16 if K <= 16 else 32 if K <= 32 else 64


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


_pool: ThreadPoolExecutor | None = None


def _parallel(fns: list) -> list:
    """Call each of fns (no arguments) on its own thread (ctypes releases the GIL; one: inline): their results."""
    global _pool
    if len(fns) == 1:
        return [fns[0]()]
    if _pool is None or _pool._max_workers < len(fns):  # noqa: SLF001
        _pool = ThreadPoolExecutor(max_workers=len(fns), thread_name_prefix="vqhls-pq")
    return list(_pool.map(lambda f: f(), fns))


def _split(fn, C: int) -> list[int]:
    """fn(c0, c1) over [0, C), split across torch's intra-op thread count: the return codes."""
    n = max(1, min(torch.get_num_threads(), C))
    cuts = [C * i // n for i in range(n + 1)]
    return _parallel([lambda i=i: fn(cuts[i], cuts[i + 1]) for i in range(n)])


def _run(fn, C: int) -> None:
    """:func:`_split`, every call returning 0."""
    if any(_split(fn, C)):
        raise KernelUnavailable("PQ kernel: unsupported K padding")


class Tables:
    """The per-call constants of one layer, padded to KP lanes: P [C, K, v] (float32) and, for the
    gradient, the LUT [C, K, Cout]. The columns-in-lanes kernels read p2, pn_k, pnmax and lutT; the
    prototype-lane layouts pt2 and pn are built on first use (only the soft forward's backward reads them)."""

    def __init__(self, P: Tensor, lut: Tensor | None = None):
        C, K, v = P.shape
        self.C, self.K, self.v, self.kp = C, K, v, _kp(K)
        self._P = P
        pn = (P * P).sum(-1)
        self.pnmax = pn.amax(-1).contiguous()
        self.p2 = (P * -2.0).contiguous()  # [C, K, v]
        self.pn_k = pn.contiguous()  # [C, K]
        if lut is not None:
            self.cout = lut.shape[2]
            self.lutT = P.new_zeros(C, self.cout, self.kp)
            self.lutT[:, :, :K] = lut.transpose(1, 2)

    @functools.cached_property
    def pt2(self) -> Tensor:
        """-2 P^T [C, v, KP], padding lanes 0."""
        pt2 = self._P.new_zeros(self.C, self.v, self.kp)
        pt2[:, :, :self.K] = self._P.transpose(1, 2) * -2.0
        return pt2

    @functools.cached_property
    def pn(self) -> Tensor:
        """||P_k||^2 [C, KP], padding lanes +inf (never the minimum, soft weight 0)."""
        pn = self._P.new_full((self.C, self.kp), float("inf"))
        pn[:, :self.K] = self.pn_k
        return pn


def encode(lib: ctypes.CDLL, tab: Tables, aT: Tensor, out: Tensor, rel2: float) -> int:
    """Nearest prototypes of aT [C, v, m] (contiguous float32) into out [C, >= m] int64 (a row-contiguous
    view), :func:`flow.compress.pq._encode_T`'s answers bit for bit: returns how many columns the expanded form
    could not decide and the kernel re-encoded by the direct formula."""
    level = isa_level(lib)
    m = aT.shape[2]
    ld = out.stride(0)
    assert aT.is_contiguous() and out.stride(1) == 1
    rc = _split(lambda c0, c1: lib.pq_encode_cols(level, c0, c1, tab.v, m, tab.K, aT.data_ptr(), tab.p2.data_ptr(),
                                                  tab.pn_k.data_ptr(), tab.pnmax.data_ptr(), rel2, out.data_ptr(),
                                                  ld), tab.C)
    if any(r < 0 for r in rc):
        raise KernelUnavailable(f"PQ kernel: the encoder takes K <= {KP_MAX} and v <= 64, not K={tab.K}, v={tab.v}")
    return sum(rc)


def outer_acc(lib: ctypes.CDLL, a: Tensor, gz: Tensor, gp: Tensor) -> None:
    """``gp[c] += a[c] @ gz[c]^T``: a [C, v, m], gz [C, K, m], gp [C, v, K] (contiguous float32), threads over c;
    the sums in an order that does not depend on the split."""
    C, v, m = a.shape
    K = gz.shape[1]
    assert a.is_contiguous() and gz.is_contiguous() and gp.is_contiguous() and gz.shape == (C, K, m)
    level = isa_level(lib)
    _run(lambda c0, c1: lib.pq_outer_acc(level, c0, c1, v, K, m, a.data_ptr(), gz.data_ptr(), gp.data_ptr()), C)


def lut_sum(lib: ctypes.CDLL, lut: Tensor, idx: Tensor, per_image: int = 0) -> Tensor:
    """``out[m] = sum_c lut[c, idx[c, m]]`` (c in order, from 0: :func:`flow.compress.pq._lut_sum`'s additions):
    lut [C, K, Cout] float32, idx [C, M] int64 (rows contiguous) -> [M, Cout], or with ``per_image`` = L > 0 a
    conv's output [M / L, Cout, L] (NCHW, columns in (n, pixel) order); threads over the columns."""
    C, K, cout = lut.shape
    M = idx.shape[1]
    lut = lut.contiguous()
    assert idx.stride(1) == 1 and (per_image == 0 or M % per_image == 0)
    out = lut.new_empty(M, cout) if per_image == 0 else lut.new_empty(M // per_image, cout, per_image)
    level = isa_level(lib)
    _run(lambda m0, m1: lib.pq_lut_sum(level, m0, m1, C, K, cout, idx.data_ptr(), idx.stride(0), lut.data_ptr(),
                                       out.data_ptr(), per_image), M)
    return out


def _geom_args(x_shape: tuple[int, ...], kernel, stride, padding) -> tuple[int, ...]:
    (_, cin, h, w), (kh, kw), (sh, sw), (ph, pw) = x_shape, kernel, stride, padding
    return cin, h, w, kh, kw, sh, sw, ph, pw


def im2col(lib: ctypes.CDLL, x: Tensor, n0: int, n1: int, kernel, stride, padding, out: Tensor) -> None:
    """The patches of images [n0, n1) of x [N, Cin, H, W] (contiguous float32) into out [D, >= (n1-n0)*OH*OW]
    (rows contiguous), rows in (kh, kw, cin) order (:func:`flow.compress.pq._im2col_T`), threads over rows."""
    assert x.is_contiguous() and out.stride(1) == 1 and x.dtype == out.dtype == torch.float32
    g = _geom_args(tuple(x.shape), kernel, stride, padding)
    D = g[0] * g[3] * g[4]
    _run(lambda p0, p1: lib.pq_im2col(n0, n1, p0, p1, *g, x.data_ptr(), out.data_ptr(), out.stride(0)), D)


def col2im(lib: ctypes.CDLL, g: Tensor, n0: int, n1: int, kernel, stride, padding, dx: Tensor) -> None:
    """The adjoint of :func:`im2col`, accumulated: dx [N, Cin, H, W] (contiguous float32) += the patch gradients
    g [D, >= (n1-n0)*OH*OW] (rows contiguous) of images [n0, n1); threads over the input channels."""
    assert dx.is_contiguous() and g.stride(1) == 1 and g.dtype == dx.dtype == torch.float32
    ga = _geom_args(tuple(dx.shape), kernel, stride, padding)
    _run(lambda c0, c1: lib.pq_col2im(n0, n1, c0, c1, *ga, g.data_ptr(), g.stride(0), dx.data_ptr()), ga[0])


_scratch = threading.local()


def _work(n: int, part: int, slot: int) -> Tensor:
    """n uninitialised float32 CPU elements of a grow-only buffer kept per calling thread, ``part`` (the image
    range a call gives one worker) and ``slot``: the per-range work buffers of the conv calls are reused from step
    to step instead of allocated afresh (a fresh multi-MiB tensor costs a page fault per 4 KiB on first touch:
    24k faults per ResNet20 step). Valid until the same thread asks for the same (part, slot) again."""
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = {}
    buf = pool.get((part, slot))
    if buf is None or buf.numel() < n:
        buf = pool[(part, slot)] = torch.empty(max(n, 1))
    return buf[:n]


def _image_parts(N: int, nb: int) -> list[tuple[int, int]]:
    """Images [0, N), ranges of nb, split across torch's intra-op threads at range boundaries."""
    R = -(-N // nb)
    n = max(1, min(torch.get_num_threads(), R))
    cuts = [min(N, (R * i // n) * nb) for i in range(n + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


def conv_encode(lib: ctypes.CDLL, tab: Tables, x: Tensor, kernel, stride, padding, nb: int, idx: Tensor,
                rel2: float) -> int:
    """:func:`encode` of a conv's patches straight from its input x [N, Cin, H, W] (contiguous float32), nb images
    per range (each range's patches built and encoded while in cache), into idx [C, N*OH*OW] int64 (rows
    contiguous); threads over image ranges. Returns the columns re-encoded by the direct formula."""
    assert x.is_contiguous() and x.dtype == torch.float32 and idx.stride(1) == 1
    gm = (ctypes.c_int64 * 9)(*_geom_args(tuple(x.shape), kernel, stride, padding))
    level, N, D = isa_level(lib), x.shape[0], tab.C * tab.v
    L = idx.shape[1] // N
    parts = _image_parts(N, nb)
    bufs = [_work(D * min(nb, N) * L, i, 0) for i in range(len(parts))]
    rc = _parallel([lambda i=i, n0=n0, n1=n1: lib.pq_conv_encode(
        level, gm, n0, n1, nb, tab.C, tab.v, tab.K, x.data_ptr(), bufs[i].data_ptr(), tab.p2.data_ptr(),
        tab.pn_k.data_ptr(), tab.pnmax.data_ptr(), rel2, idx.data_ptr(), idx.stride(0))
        for i, (n0, n1) in enumerate(parts)])
    if any(r < 0 for r in rc):
        raise KernelUnavailable(f"PQ kernel: the encoder takes K <= {KP_MAX} and v <= 64, not K={tab.K}, v={tab.v}")
    return sum(rc)


def conv_backward(lib: ctypes.CDLL, tab: Tables, x: Tensor, kernel, stride, padding, nb: int, gT: Tensor, s: float,
                  ps: Tensor, dx: Tensor | None, need_p: bool,
                  hard_idx: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """A conv's straight-through backward straight from its input x [N, Cin, H, W] (contiguous float32), nb images
    per range: per range the patches, :func:`soft_grad_cols` (gT [Cout, >= N*OH*OW], rows contiguous: the whole
    output gradient transposed; ps = (2/T) P^T [C, v, K]), dL/da added into dx [N, Cin, H, W] (None: not
    wanted), with ``need_p`` :func:`outer_acc` and, given the layer's encoding ``hard_idx`` [C, N*OH*OW] (rows
    contiguous), :func:`hard_lut_grad` of the range (its gradient rows transposed back from gT in cache). Threads
    over image ranges, each with its own sums, added in thread order. Returns (gzsum [C, K], sum_m a_m gz_m^T
    [C, v, K] or None, the LUT gradient [C, K, Cout] or None)."""
    assert x.is_contiguous() and x.dtype == torch.float32 and gT.stride(1) == 1 and ps.is_contiguous()
    assert dx is None or dx.is_contiguous()
    gm = (ctypes.c_int64 * 9)(*_geom_args(tuple(x.shape), kernel, stride, padding))
    level, N, C, K, v = isa_level(lib), x.shape[0], tab.C, tab.K, tab.v
    L = gT.shape[1] // N
    parts = _image_parts(N, nb)
    cols = min(nb, N) * L
    hard = hard_idx is not None
    assert not hard or hard_idx.stride(1) == 1
    work = [(_work(C * v * cols, i, 0), _work(C * v * cols, i, 1), _work(C * K * cols, i, 2) if need_p else None,
             x.new_zeros(C, K), x.new_zeros(C, v, K) if need_p else None,
             _work(cols * tab.cout, i, 3) if hard else None, x.new_zeros(C, K, tab.cout) if hard else None)
            for i in range(len(parts))]
    rc = _parallel([lambda w=w, n0=n0, n1=n1: lib.pq_conv_backward(
        level, gm, n0, n1, nb, C, v, K, tab.kp, tab.cout, x.data_ptr(), w[0].data_ptr(), tab.p2.data_ptr(),
        ps.data_ptr(), tab.pn_k.data_ptr(), tab.lutT.data_ptr(), gT.data_ptr(), gT.stride(0), s, w[1].data_ptr(),
        _ptr(w[2]), w[3].data_ptr(), _ptr(dx), _ptr(w[4]), _ptr(hard_idx), hard_idx.stride(0) if hard else 0,
        _ptr(w[5]), _ptr(w[6])) for w, (n0, n1) in zip(work, parts)])
    if any(rc):
        raise KernelUnavailable(f"PQ kernel: the backward takes K <= {KP_MAX} and v <= 64, not K={K}, v={v}")
    gzsum, gp, gl = work[0][3], work[0][4], work[0][6]
    for w in work[1:]:
        gzsum += w[3]
        if need_p:
            gp += w[4]
        if hard:
            gl += w[6]
    return gzsum, gp, gl


def soft_grad(lib: ctypes.CDLL, tab: Tables, aT: Tensor, g: Tensor, s: float, gz: Tensor | None,
              gzsum: Tensor | None, glT: Tensor | None) -> None:
    """One block: aT [C, v, m], g [m, Cout] (contiguous float32); gz [C, m, KP] written, gzsum [C, KP] and
    glT [C, Cout, KP] accumulated (see _pq_kernel.cpp). gz None: only glT."""
    level = isa_level(lib)
    m = aT.shape[2]
    assert aT.is_contiguous() and g.is_contiguous()
    need = gz is not None
    _run(lambda c0, c1: lib.pq_soft_grad(level, tab.kp, c0, c1, tab.v, m, tab.cout, aT.data_ptr(), tab.pt2.data_ptr(),
                                         tab.pn.data_ptr(), tab.lutT.data_ptr(), g.data_ptr(), s, _ptr(gz),
                                         _ptr(gzsum), _ptr(glT), int(need)), tab.C)


def soft_grad_cols(lib: ctypes.CDLL, tab: Tables, aT: Tensor, gT: Tensor, s: float, ps: Tensor, ga: Tensor,
                   gz: Tensor | None, gzsum: Tensor) -> None:
    """The straight-through backward of one block, columns in the vector lanes: aT [C, v, m] contiguous,
    gT [Cout, >= m] (rows contiguous: g transposed, this block's columns), ps [C, v, K] = (2/T) P^T;
    writes ga [C, v, >= m] (dL/da, rows contiguous) and gz [C, K, m] (None: not written), accumulates
    gzsum [C, K] (see _pq_kernel.cpp)."""
    level = isa_level(lib)
    m = aT.shape[2]
    assert aT.is_contiguous() and gT.stride(1) == 1 and ga.stride(2) == 1 and ps.is_contiguous()
    _run(lambda c0, c1: lib.pq_soft_grad_cols(level, c0, c1, tab.v, m, tab.cout, tab.K, tab.kp, aT.data_ptr(),
                                              tab.p2.data_ptr(), ps.data_ptr(), tab.pn_k.data_ptr(),
                                              tab.lutT.data_ptr(), gT.data_ptr(), gT.stride(0), s, ga.data_ptr(),
                                              ga.stride(1), _ptr(gz), gzsum.data_ptr()), tab.C)


def hard_lut_grad(lib: ctypes.CDLL, idx: Tensor, g: Tensor, K: int) -> Tensor:
    """``grad[c, k] = sum of g[m] over the m with idx[c, m] = k``: idx [C, M] int64 (rows contiguous), g [M, Cout]
    float32 (contiguous) -> [C, K, Cout] (:func:`flow.compress.pq._hard_lut_grad`, summed in column order)."""
    C, M = idx.shape
    cout = g.shape[1]
    if idx.stride(1) != 1:
        idx = idx.contiguous()
    gl = g.new_zeros(C, K, cout)
    level = isa_level(lib)
    _run(lambda c0, c1: lib.pq_hard_lut_grad(level, c0, c1, M, cout, K, idx.data_ptr(), idx.stride(0), g.data_ptr(),
                                             gl.data_ptr()), C)
    return gl
