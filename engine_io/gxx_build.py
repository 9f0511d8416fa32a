"""The one g++ path of a rendered engine: find the compiler and the ap_types headers, build the testbench
executable and the C-simulation library (cached), and open the library behind its C ABI.

Both users build the same sources, rendered by the flow (``flow.hls.project.write_project``) and never by
this module (the board has neither the templates nor jinja2)::

    <root>/firmware/*.h, *.cpp     the engine (top.cpp is compiled; the rest are its headers)
    <root>/tb/tb.cpp               the testbench main:   tb PROGRAM.bin INPUTS.bin OUTPUTS.bin [EXPECTED.bin]
    <root>/tb/bridge.cpp           the C ABI (hls_templates/tb/bridge.cpp.j2), see ``bind``

* ``flow.hls.csim`` (the C-sim ``CsimEngine``, ``csim``): ``root`` is a rendered HLS project;
* ``host.sim`` (the sim backend): ``root`` is a deploy bundle's ``hls/`` (the bundle ships the same files).

Builds are cached under ``cache_root()`` (``$VQHLS_CACHE``, default ``<repo>/.cache/vqhls``) in
``<config hash>-<source hash>[-exact]/``: the source hash covers the files above as they are on disk
(relative paths and bytes), the compiler flags, the g++ version line and the ap_types location, so one
engine rendered twice, or shipped in a bundle, is one cache entry. An entry is used only when it verifies:
``build.sha256`` (written last, after the binaries were renamed into place) holds the sha256 of both
binaries; a truncated or otherwise damaged library (which dlopen would map and crash on with SIGBUS) is
rebuilt instead. g++ runs in a temporary ``.tmp-build-<pid>-*`` folder of the entry; the folders of builds
that were killed (their process gone, or older than STALE_SECONDS) are removed by the next build.

Standard library only (ctypes): this runs on the board, without torch, jinja2, hls4ml's import or the flow.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine_io.cache import cache_root, make_dir
from engine_io.files import sums_match, sums_text

# -fno-gnu-unique: no process-wide statics shared between engine libraries (each private copy is its own engine)
CXXFLAGS = ("-O3", "-std=c++14", "-fno-gnu-unique")
EXACT_FLAGS = ("-DVQHLS_EXACT_TYPES",)   # the exact-width datapath types synthesis uses, in C-simulation
AP_TYPES_REQUIRED = ("ap_int.h", "hls_stream.h")
AP_TYPES_FIX = "pip install hls4ml (it ships the ap_types headers) or set VQHLS_AP_TYPES"
TB_NAME = "vqhls_tb"
LIB_NAME = "libvqhls_engine.so"
SUMS_NAME = "build.sha256"          # sha256 of the binaries, written after them: the build is complete
TMP_PREFIX = ".tmp-build-"          # + "<pid>-<random>": g++'s working folder inside a cache entry
STALE_SECONDS = 6 * 3600            # a working folder this old is removed even if its pid is alive (reused)


class BuildError(RuntimeError):
    """The engine cannot be built or loaded; one line with the fix."""


class ToolchainError(BuildError):
    """No usable C++ compiler."""


class APTypesNotFound(BuildError):
    """The ap_types headers are not installed."""


class CompileError(BuildError):
    """g++ rejected the sources; the message holds the command and its output."""


# --------------------------------------------------------------------------- toolchain

def ap_types_dir() -> Path:
    """Directory holding ap_int.h / hls_stream.h: ``$VQHLS_AP_TYPES``, else the hls4ml package's
    ``templates/vivado/ap_types`` (located without importing hls4ml). APTypesNotFound names the fix."""
    override = os.environ.get("VQHLS_AP_TYPES")
    if override:
        path = Path(override)
        missing = [f for f in AP_TYPES_REQUIRED if not (path / f).is_file()]
        if missing:
            raise APTypesNotFound(f"VQHLS_AP_TYPES={override} lacks {', '.join(missing)}: {AP_TYPES_FIX}")
        return path
    try:
        spec = importlib.util.find_spec("hls4ml")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise APTypesNotFound(f"the ap_types headers come with the hls4ml package, which is not installed: "
                              f"{AP_TYPES_FIX}")
    for root in spec.submodule_search_locations or []:
        path = Path(root) / "templates" / "vivado" / "ap_types"
        if all((path / f).is_file() for f in AP_TYPES_REQUIRED):
            return path
    raise APTypesNotFound(f"hls4ml is installed but lacks templates/vivado/ap_types/{{ap_int.h, hls_stream.h}}: "
                          f"reinstall it (pip install --force-reinstall hls4ml) or set VQHLS_AP_TYPES")


@lru_cache(maxsize=None)
def _cxx_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ToolchainError(f"{path} --version failed ({e}): install g++ (apt-get install g++)") from None
    return out.splitlines()[0] if out else ""


def find_cxx() -> tuple[str, str]:
    """(path, version line) of the C++ compiler: ``$CXX``, default g++."""
    name = os.environ.get("CXX") or "g++"
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"C++ compiler {name!r} not found: install g++ (apt-get install g++), or point CXX "
                             "at one")
    return path, _cxx_version(path)


# --------------------------------------------------------------------------- the build

@dataclass(frozen=True)
class EngineSources:
    """A rendered engine's C++ on disk (module docstring: ``root``'s layout) and its EngineConfig hash."""

    root: Path
    config_hash: str

    @property
    def firmware_dir(self) -> Path:
        return self.root / "firmware"

    @property
    def tb_dir(self) -> Path:
        return self.root / "tb"

    def files(self) -> list[Path]:
        """The files a build reads (its cache key hashes them); FileNotFoundError naming the missing ones."""
        fw = self.firmware_dir
        files = sorted(fw.glob("*.h")) + sorted(fw.glob("*.cpp")) + [self.tb_dir / "tb.cpp", self.tb_dir / "bridge.cpp"]
        missing = [str(f) for f in files if not f.is_file()]
        if not (fw / "top.cpp").is_file():
            missing.insert(0, str(fw / "top.cpp"))
        if missing:
            raise FileNotFoundError(f"engine sources in {self.root} are incomplete (missing {', '.join(missing)}): "
                                    "render them again")
        return files


def _flags(exact: bool) -> list[str]:
    return [*CXXFLAGS, *(EXACT_FLAGS if exact else ())]


def build_key(sources: EngineSources, exact: bool = False) -> str:
    """Cache key: config hash + hash of the sources on disk, the flags, the compiler and the ap_types location."""
    _, version = find_cxx()
    h = hashlib.sha1()
    for f in sources.files():
        h.update(f.relative_to(sources.root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(" ".join(_flags(exact)).encode() + b"\0" + version.encode() + b"\0" + str(ap_types_dir()).encode())
    return f"{sources.config_hash}-{h.hexdigest()[:12]}{'-exact' if exact else ''}"


def build_dir(sources: EngineSources, exact: bool = False, root: str | os.PathLike | None = None) -> Path:
    return cache_root(root) / build_key(sources, exact)


def _run(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs: list[tuple[list[str], subprocess.Popen]]) -> None:
    errors = []
    for cmd, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"$ {' '.join(cmd)}\n{out[-8000:]}")
    if errors:
        raise CompileError("g++ failed to build the engine:\n" + "\n".join(errors))


def verify_build(out: Path) -> bool:
    """True when ``out`` holds a complete build: both binaries and the sums written after them, matching."""
    return sums_match([out / TB_NAME, out / LIB_NAME], out / SUMS_NAME)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True    # exists (another user's) or cannot tell: keep its folder
    return True


def clean_stale(root: Path | None = None) -> list[Path]:
    """Remove the g++ working folders (``<entry>/.tmp-build-<pid>-*``) of builds that were killed: their
    process is gone, or they are older than STALE_SECONDS. Returns the removed folders."""
    root = cache_root() if root is None else root
    removed = []
    folders = [(w, True) for w in root.glob(f"*/{TMP_PREFIX}*")]
    folders += [(w, False) for w in root.glob("*/build-*")]   # unnamed by pid (older kits): by age only
    for work, named in folders:
        if not work.is_dir():
            continue
        try:
            pid = int(work.name[len(TMP_PREFIX):].split("-", 1)[0]) if named else 0
        except ValueError:
            pid = -1
        try:
            age = time.time() - work.stat().st_mtime
        except OSError:
            continue
        if pid == os.getpid() and age < STALE_SECONDS:
            continue   # one of this process's builds (another thread)
        if age > STALE_SECONDS or (named and (pid <= 0 or not _pid_alive(pid))):
            shutil.rmtree(work, ignore_errors=True)
            removed.append(work)
    return removed


def build(sources: EngineSources, *, force: bool = False, exact: bool = False,
          root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Build (or fetch from the cache ``cache_root(root)``) the testbench executable and the library: (tb, lib).

    A cached build is used only when its sums verify (``verify_build``); else it is rebuilt.
    ``exact``: compile the exact-width datapath types synthesis uses (``-DVQHLS_EXACT_TYPES``)
    instead of C-simulation's native ints; slower, the same bits."""
    cxx, _ = find_cxx()
    inc = ["-I", str(sources.firmware_dir), "-I", str(ap_types_dir())]
    out = build_dir(sources, exact, root)
    tb, lib = out / TB_NAME, out / LIB_NAME
    if not force and verify_build(out):
        return tb, lib
    make_dir(out)
    clean_stale(out.parent)
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=out))
    try:
        flags = [*_flags(exact), "-fPIC"]
        objs = {"top": work / "top.o", "tb": work / "tb.o", "bridge": work / "bridge.o"}
        srcs = {"top": sources.firmware_dir / "top.cpp", "tb": sources.tb_dir / "tb.cpp",
                "bridge": sources.tb_dir / "bridge.cpp"}
        procs = []
        for key in ("top", "bridge", "tb"):
            cmd = [cxx, *flags, *inc, "-c", str(srcs[key]), "-o", str(objs[key])]
            procs.append((cmd, _run(cmd, work)))
        _wait(procs)
        tb_tmp, lib_tmp = work / TB_NAME, work / LIB_NAME
        _wait([
            (cmd, _run(cmd, work)) for cmd in (
                [cxx, *flags, str(objs["top"]), str(objs["tb"]), "-o", str(tb_tmp)],
                [cxx, *flags, "-shared", str(objs["top"]), str(objs["bridge"]), "-o", str(lib_tmp)],
            )
        ])
        sums_tmp = work / SUMS_NAME
        sums_tmp.write_text(sums_text([tb_tmp, lib_tmp]))
        (out / SUMS_NAME).unlink(missing_ok=True)   # the sums go last: a build killed here is not 'complete'
        os.replace(tb_tmp, tb)      # atomic: a concurrent build never sees half a binary
        os.replace(lib_tmp, lib)
        os.replace(sums_tmp, out / SUMS_NAME)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tb, lib


def build_testbench(sources: EngineSources, *, force: bool = False, exact: bool = False) -> Path:
    """The testbench executable (tb PROGRAM.bin INPUTS.bin OUTPUTS.bin [EXPECTED.bin])."""
    return build(sources, force=force, exact=exact)[0]


def build_library(sources: EngineSources, *, force: bool = False, exact: bool = False,
                  root: str | os.PathLike | None = None) -> Path:
    """The shared library with the bridge's C ABI (``bind``)."""
    return build(sources, force=force, exact=exact, root=root)[1]


# --------------------------------------------------------------------------- the library's C ABI

_U64 = ctypes.c_ulonglong
_U64P = ctypes.POINTER(ctypes.c_ulonglong)

# name -> (restype, argtypes): the exports of hls_templates/tb/bridge.cpp.j2, where each is documented
ABI = {
    "vqhls_config_hash": (ctypes.c_uint, []),
    "vqhls_param_bytes": (_U64, []),
    "vqhls_csim_violations": (_U64, []),
    "vqhls_real_cycles": (_U64, []),
    # image level (flow.hls.csim.CsimEngine): load a program image, run batches through it
    "vqhls_load": (ctypes.c_uint, [ctypes.c_char_p, _U64, _U64P, _U64P, _U64P]),
    "vqhls_run": (ctypes.c_uint, [ctypes.c_void_p, ctypes.c_void_p, _U64, _U64P]),
    # register level (host.sim.SimDevice): one ap_start .. ap_done on raw DDR and stream bytes
    "vqhls_loaded": (ctypes.c_int, [_U64P, _U64P]),
    "vqhls_call": (ctypes.c_uint, [
        ctypes.c_void_p, _U64, ctypes.c_uint,              # params, nbytes, n_images
        ctypes.c_void_p, _U64, ctypes.c_longlong, _U64P,   # in, in_len, tlast_pos, in_consumed
        ctypes.c_void_p, ctypes.c_void_p, _U64, _U64P,     # out, out_last, out_cap, out_len
        _U64P, ctypes.POINTER(ctypes.c_uint),              # cycles, config_hash
    ]),
}


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the C ABI's signatures on ``lib`` (BuildError when an export is missing: an older build)."""
    for name, (restype, argtypes) in ABI.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise BuildError(f"{lib._name} lacks {name}: a library from an older bridge; delete it and rebuild") \
                from None
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def open_library(path: Path) -> ctypes.CDLL:
    """The library at ``path``, bound (``bind``). dlopen shares one instance (its statics: one engine) per
    path in a process: ``open_private`` gives a separate one."""
    try:
        return bind(ctypes.CDLL(str(Path(path).resolve())))
    except OSError as e:
        raise BuildError(f"cannot load {path} ({e}): delete the cache entry {Path(path).parent} and retry") from None


def open_private(path: Path) -> ctypes.CDLL:
    """A private instance of the library at ``path`` (own statics: its own engine): a copy dlopen'ed and
    unlinked. ``close_private`` unmaps it."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".instance-", suffix=".so", dir=path.parent)
    except OSError:   # a read-only cache: the instance goes to the temporary directory
        fd, tmp = tempfile.mkstemp(prefix="vqhls-sim-", suffix=".so")
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        lib = ctypes.CDLL(tmp, mode=getattr(os, "RTLD_LOCAL", 0) | getattr(os, "RTLD_NOW", 2))
    except OSError as e:
        raise BuildError(f"cannot load {path} ({e}): delete the cache entry {path.parent} and retry") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return bind(lib)


def close_private(handle: int) -> None:
    """dlclose a private instance by its handle (``lib._handle``); best effort."""
    try:
        import _ctypes   # CPython's dlclose; only needed here

        _ctypes.dlclose(handle)
    except Exception:   # the mapping then lives until exit
        pass


__all__ = ["BuildError", "ToolchainError", "APTypesNotFound", "CompileError", "EngineSources",
           "ap_types_dir", "find_cxx", "build_key", "build_dir", "build", "build_testbench",
           "build_library", "verify_build", "clean_stale", "bind", "open_library", "open_private",
           "close_private", "CXXFLAGS", "EXACT_FLAGS"]
