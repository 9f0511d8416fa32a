"""Loader of the fused masked k-means kernel ``_kmeans_kernel.cpp`` (ctypes, no Python headers).

The kernel is a plain C-ABI shared library.  It is looked up, in order:

1. a copy built at install time next to this file (``_kmeans_kernel*.so``, e.g. by a setuptools
   ``Extension("flow.compress._kmeans_kernel", ["flow/compress/_kmeans_kernel.cpp"])``), used when
   it is not older than the source and reports the expected ABI number;
2. a copy in the kernel cache, keyed by the sha1 of the source, the compiler's version and the flags
   (``$VQHLS_KERNEL_CACHE``, else ``kernels/`` in the kit's cache: ``$VQHLS_CACHE`` or
   ``<repo>/.cache/vqhls``, see engine_io.cache; a per-user temporary directory when neither is writable);
3. otherwise it is compiled there once with ``$CXX`` (default ``g++``, which ``make setup`` installs):
   a few seconds (about 6 s of CPU); the build is written to a temporary name and renamed, so
   concurrent processes never load a half-written file.

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
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

from engine_io.cache import cache_root

__all__ = ["backend", "load", "isa", "isa_level", "supported_isas", "KernelUnavailable", "ISAS"]

ABI = 3
SRC = Path(__file__).with_name("_kmeans_kernel.cpp")
# -ffp-contract=fast: ISO C++ mode turns multiply-add contraction off, and the search is one FMA per
# codeword and kept column (the error bounds hold with or without it).
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=fast", "-Wno-psabi"]
ISAS = ("base", "avx2", "avx512")  # the kernel's code paths, by vq_kmeans_isa level (0, 1, 2)

_lock = threading.Lock()
_state: dict = {}


class KernelUnavailable(RuntimeError):
    """The native kernel could not be built or loaded (VQHLS_KMEANS=native makes this an error)."""


def backend() -> str:
    """``auto``, ``native`` or ``torch`` from ``$VQHLS_KMEANS`` (read at every call)."""
    b = os.environ.get("VQHLS_KMEANS", "auto").strip().lower() or "auto"
    if b not in ("auto", "native", "torch"):
        raise ValueError(f"VQHLS_KMEANS={b!r}: use auto, native or torch")
    return b


def _cache_dirs() -> list[Path]:
    """Where a build may live: $VQHLS_KERNEL_CACHE, else the kit's cache (engine_io.cache: $VQHLS_CACHE or
    <repo>/.cache/vqhls) under kernels/; then a per-user temporary directory when that is not writable."""
    env = os.environ.get("VQHLS_KERNEL_CACHE")
    dirs = []
    if env:
        dirs.append(Path(env).expanduser())
    else:
        try:
            dirs.append(cache_root() / "kernels")
        except Exception:  # noqa: BLE001 - an unusable cache only costs the fallback directory
            pass
    uid = os.getuid() if hasattr(os, "getuid") else 0
    dirs.append(Path(tempfile.gettempdir()) / f"vqhls-{uid}-kernels")
    return dirs


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


def _prebuilt() -> Path | None:
    src_mtime = SRC.stat().st_mtime
    for p in sorted(SRC.parent.glob("_kmeans_kernel*.so")):
        if p.stat().st_mtime >= src_mtime:
            return p
    return None


def _compile() -> Path:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise KernelUnavailable("no C++ compiler (set CXX or install g++: `make setup` does)")
    try:
        ver = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelUnavailable(f"{cxx} --version failed: {e}") from e
    key = hashlib.sha1("\0".join([SRC.read_text(), ver, " ".join(FLAGS), platform.machine(), str(ABI)])
                       .encode()).hexdigest()[:16]
    for d in _cache_dirs():
        out = d / f"kmeans-{key}.so"
        if out.is_file():
            return out
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".kmeans-", suffix=".so", dir=d)
            os.close(fd)
        except OSError:
            continue  # not writable: try the next place
        try:
            r = subprocess.run([cxx, *FLAGS, "-o", tmp, str(SRC)], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise KernelUnavailable(f"{cxx} failed to build {SRC.name}:\n{r.stderr[-2000:]}")
            os.replace(tmp, out)
            return out
        except (OSError, subprocess.SubprocessError) as e:
            raise KernelUnavailable(f"building {SRC.name} with {cxx} failed: {e}") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise KernelUnavailable("no writable cache directory for the kernel (set VQHLS_KERNEL_CACHE)")


def _load() -> ctypes.CDLL:
    pre = _prebuilt()
    if pre is not None:
        try:
            return _bind(pre)
        except (OSError, AttributeError, KernelUnavailable):
            pass  # fall through to a cached / fresh build
    try:
        return _bind(_compile())
    except (OSError, AttributeError) as e:
        raise KernelUnavailable(f"loading the k-means kernel failed: {e}") from e


def load() -> ctypes.CDLL | None:
    """The kernel library for the current ``VQHLS_KMEANS`` setting, or None for the torch path.

    Raises:
        KernelUnavailable: ``VQHLS_KMEANS=native`` and the kernel cannot be built or loaded.
    """
    b = backend()
    if b == "torch":
        return None
    with _lock:
        if "lib" not in _state and "error" not in _state:
            try:
                _state["lib"] = _load()
            except KernelUnavailable as e:
                _state["error"] = e
        if "lib" in _state:
            return _state["lib"]
        err = _state["error"]
        if b == "native":
            raise err
        if not _state.get("warned"):
            _state["warned"] = True
            warnings.warn(f"masked k-means runs on the slower pure-torch path: {err}", RuntimeWarning, stacklevel=3)
        return None


def supported_isas(lib: ctypes.CDLL) -> list[str]:
    """The kernel's code paths this CPU can run, narrowest first (``base`` always)."""
    return list(ISAS[: lib.vq_kmeans_isa(-1) + 1])


def isa_level(lib: ctypes.CDLL) -> int:
    """The code path (index into :data:`ISAS`) the kernel runs under ``$VQHLS_KMEANS_ISA`` (read at every call).

    Raises:
        ValueError: an unknown value, or a path this CPU does not support.
    """
    want = os.environ.get("VQHLS_KMEANS_ISA", "auto").strip().lower() or "auto"
    if want == "auto":
        return lib.vq_kmeans_isa(-1)
    if want not in ISAS:
        raise ValueError(f"VQHLS_KMEANS_ISA={want!r}: use auto, {', '.join(reversed(ISAS))}")
    level = lib.vq_kmeans_isa(ISAS.index(want))
    if level < 0:
        raise ValueError(f"VQHLS_KMEANS_ISA={want}: this CPU runs only {', '.join(supported_isas(lib))}; "
                         "pick one of those or auto")
    return level


def isa(lib: ctypes.CDLL | None = None) -> str:
    """Which code path masked k-means runs here: ``avx512``, ``avx2`` or ``base`` (the kernel's copies),
    or ``torch`` when the kernel is not used (``VQHLS_KMEANS=torch``, or no compiler under ``auto``)."""
    lib = load() if lib is None else lib
    return "torch" if lib is None else ISAS[isa_level(lib)]
