"""Build, cache and load one C-ABI native kernel (ctypes, no Python headers): the k-means kernel
(:mod:`flow.compress._kmeans_native`) and the PQ training kernel (:mod:`flow.compress._pq_native`).

A kernel is looked up, in order:

1. a copy built at install time next to its source (``<stem>*.so``, e.g. by a setuptools ``Extension``), used
   when it is not older than the source and reports the expected ABI number;
2. a copy in the kernel cache, keyed by the sha1 of the source, the compiler's version, the flags, the machine
   and the ABI (``$VQHLS_KERNEL_CACHE``, else ``kernels/`` in the kit's cache: ``$VQHLS_CACHE`` or
   ``<repo>/.cache/vqhls``, see engine_io.cache; a per-user temporary directory when neither is writable);
3. otherwise it is compiled there once with ``$CXX`` (default ``g++``, which ``make setup`` installs), to a
   temporary name then renamed, so concurrent processes never load a half-written file.

``$<ENV>`` (``auto``, ``native``, ``torch``) chooses between the kernel and the caller's torch path: ``auto``
falls back to torch with a one-time warning when the kernel does not load, ``native`` makes that an error.
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
from typing import Callable

from engine_io.cache import cache_root

FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-ffp-contract=fast", "-Wno-psabi"]
ISAS = ("base", "avx2", "avx512")  # every kernel's code paths, by the level its <name>_isa(want) reports (0, 1, 2)


class KernelUnavailable(RuntimeError):
    """A native kernel could not be built or loaded (``$VQHLS_KMEANS`` / ``$VQHLS_PQ`` = native makes this an
    error)."""


def cache_dirs() -> list[Path]:
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


class NativeKernel:
    """One kernel: its source, ABI, cache prefix, the environment variable choosing it, and a ``bind(path)``
    that loads the library, checks its ABI (KernelUnavailable when stale) and declares its functions."""

    def __init__(self, src: Path, abi: int, prefix: str, env: str, what: str,
                 bind: Callable[[Path], ctypes.CDLL], isa_fn: str, flags: list[str] = FLAGS):
        self.src, self.abi, self.prefix, self.env, self.what = src, abi, prefix, env, what
        self.flags, self._bind, self.isa_fn = list(flags), bind, isa_fn
        self._lock = threading.Lock()
        self._state: dict = {}

    def backend(self) -> str:
        """``auto``, ``native`` or ``torch`` from the environment variable (read at every call)."""
        b = os.environ.get(self.env, "auto").strip().lower() or "auto"
        if b not in ("auto", "native", "torch"):
            raise ValueError(f"{self.env}={b!r}: use auto, native or torch")
        return b

    def prebuilt(self) -> Path | None:
        """An install-time build next to the source, not older than it."""
        src_mtime = self.src.stat().st_mtime
        for p in sorted(self.src.parent.glob(f"{self.src.stem}*.so")):
            if p.stat().st_mtime >= src_mtime:
                return p
        return None

    def compile(self) -> Path:
        """The cached build for this source, compiler and flags, compiled once when missing."""
        cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
        if not cxx:
            raise KernelUnavailable("no C++ compiler (set CXX or install g++: `make setup` does)")
        try:
            ver = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise KernelUnavailable(f"{cxx} --version failed: {e}") from e
        key = hashlib.sha1("\0".join([self.src.read_text(), ver, " ".join(self.flags), platform.machine(),
                                      str(self.abi)]).encode()).hexdigest()[:16]
        for d in cache_dirs():
            out = d / f"{self.prefix}-{key}.so"
            if out.is_file():
                return out
            try:
                d.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{self.prefix}-", suffix=".so", dir=d)
                os.close(fd)
            except OSError:
                continue  # not writable: try the next place
            try:
                r = subprocess.run([cxx, *self.flags, "-o", tmp, str(self.src)], capture_output=True, text=True,
                                   timeout=300)
                if r.returncode != 0:
                    raise KernelUnavailable(f"{cxx} failed to build {self.src.name}:\n{r.stderr[-2000:]}")
                os.replace(tmp, out)
                return out
            except (OSError, subprocess.SubprocessError) as e:
                raise KernelUnavailable(f"building {self.src.name} with {cxx} failed: {e}") from e
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        raise KernelUnavailable("no writable cache directory for the kernel (set VQHLS_KERNEL_CACHE)")

    def load_fresh(self) -> ctypes.CDLL:
        """The prebuilt copy when it binds, else the cached / freshly compiled one (no memo)."""
        pre = self.prebuilt()
        if pre is not None:
            try:
                return self._bind(pre)
            except (OSError, AttributeError, KernelUnavailable):
                pass  # fall through to a cached / fresh build
        try:
            return self._bind(self.compile())
        except (OSError, AttributeError) as e:
            raise KernelUnavailable(f"loading the {self.what} kernel failed: {e}") from e

    def load(self) -> ctypes.CDLL | None:
        """The kernel for the current backend setting (memoized per process), or None for the torch path.

        Raises:
            KernelUnavailable: the backend is ``native`` and the kernel cannot be built or loaded.
        """
        b = self.backend()
        if b == "torch":
            return None
        with self._lock:
            if "lib" not in self._state and "error" not in self._state:
                try:
                    self._state["lib"] = self.load_fresh()
                except KernelUnavailable as e:
                    self._state["error"] = e
            if "lib" in self._state:
                return self._state["lib"]
            err = self._state["error"]
            if b == "native":
                raise err
            if not self._state.get("warned"):
                self._state["warned"] = True
                warnings.warn(f"{self.what} runs on the slower pure-torch path: {err}", RuntimeWarning, stacklevel=4)
            return None

    def supported_isas(self, lib: ctypes.CDLL) -> list[str]:
        """The kernel's code paths this CPU can run, narrowest first (``base`` always)."""
        return list(ISAS[: getattr(lib, self.isa_fn)(-1) + 1])

    def isa_level(self, lib: ctypes.CDLL) -> int:
        """The code path (index into :data:`ISAS`) the kernel runs under ``$<ENV>_ISA`` (read at every call).

        Raises:
            ValueError: an unknown value, or a path this CPU does not support.
        """
        var = f"{self.env}_ISA"
        want = os.environ.get(var, "auto").strip().lower() or "auto"
        if want == "auto":
            return getattr(lib, self.isa_fn)(-1)
        if want not in ISAS:
            raise ValueError(f"{var}={want!r}: use auto, {', '.join(reversed(ISAS))}")
        level = getattr(lib, self.isa_fn)(ISAS.index(want))
        if level < 0:
            raise ValueError(f"{var}={want}: this CPU runs only {', '.join(self.supported_isas(lib))}; "
                             "pick one of those or auto")
        return level
