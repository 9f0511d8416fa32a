"""Loader of the fused masked k-means kernel ``_kmeans_kernel.cpp`` (ctypes, no Python headers).

Built, cached and loaded by :mod:`flow.compress._native_build` (an install-time copy next to this file, else
the kernel cache keyed by the source, compiler and flags, else compiled there once with ``$CXX``/``g++``:
about 6 s of CPU).

The kernel carries three copies of its range loop, each compiled for one instruction set with its own
vector width (AVX-512: 16 float32 lanes, AVX2 + FMA: 8, baseline x86-64 / other CPUs: 4), and picks the
widest the CPU supports at run time, so one build runs on any x86-64 machine at its best width.
:func:`isa` says which copy runs.

``VQHLS_KMEANS`` selects the backend of :mod:`flow.compress.kmeans`: ``auto`` (default: the kernel
when it loads, else the pure-torch path with a one-time warning), ``native`` (the kernel or an error)
or ``torch`` (never the kernel).  ``VQHLS_KMEANS_ISA`` (``auto``, ``avx512``, ``avx2`` or ``base``)
makes the kernel run a narrower copy than the CPU's best (to test or time each copy on one machine).
"""
from __future__ import annotations

import ctypes
from pathlib import Path

from ._native_build import ISAS, KernelUnavailable, NativeKernel

__all__ = ["backend", "load", "isa", "isa_level", "supported_isas", "KernelUnavailable", "ISAS"]

ABI = 3
SRC = Path(__file__).with_name("_kmeans_kernel.cpp")
# the flags (_native_build.FLAGS) carry -ffp-contract=fast: ISO C++ mode turns multiply-add contraction off,
# and the search is one FMA per codeword and kept column (the error bounds hold with or without it)


def _bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.vq_kmeans_abi.restype = ctypes.c_int
    lib.vq_kmeans_abi.argtypes = []
    if lib.vq_kmeans_abi() != ABI:
        raise KernelUnavailable(f"{path}: ABI {lib.vq_kmeans_abi()} != {ABI} (a stale build: delete it)")
    vp, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.vq_kmeans_isa.restype = i32
    lib.vq_kmeans_isa.argtypes = [i32]
    lib.vq_assign.restype = None
    lib.vq_assign.argtypes = [i32, i32, i64, i64, vp, vp, vp, vp, vp, vp, i32, vp, vp, i64, i64, vp, vp, vp, vp,
                              vp, vp, vp]
    return lib


KERNEL = NativeKernel(SRC, ABI, "kmeans", "VQHLS_KMEANS", "masked k-means", _bind, isa_fn="vq_kmeans_isa")


def backend() -> str:
    """``auto``, ``native`` or ``torch`` from ``$VQHLS_KMEANS`` (read at every call)."""
    return KERNEL.backend()


def _load() -> ctypes.CDLL:
    """The kernel, built or found (no memo; KernelUnavailable when it cannot be)."""
    return KERNEL.load_fresh()


def load() -> ctypes.CDLL | None:
    """The kernel library for the current ``VQHLS_KMEANS`` setting, or None for the torch path.

    Raises:
        KernelUnavailable: ``VQHLS_KMEANS=native`` and the kernel cannot be built or loaded.
    """
    return KERNEL.load()


def supported_isas(lib: ctypes.CDLL) -> list[str]:
    """The kernel's code paths this CPU can run, narrowest first (``base`` always)."""
    return KERNEL.supported_isas(lib)


def isa_level(lib: ctypes.CDLL) -> int:
    """The code path (index into :data:`ISAS`) the kernel runs under ``$VQHLS_KMEANS_ISA`` (read at every call).

    Raises:
        ValueError: an unknown value, or a path this CPU does not support.
    """
    return KERNEL.isa_level(lib)


def isa(lib: ctypes.CDLL | None = None) -> str:
    """Which code path masked k-means runs here: ``avx512``, ``avx2`` or ``base`` (the kernel's copies),
    or ``torch`` when the kernel is not used (``VQHLS_KMEANS=torch``, or no compiler under ``auto``)."""
    lib = load() if lib is None else lib
    return "torch" if lib is None else ISAS[isa_level(lib)]
