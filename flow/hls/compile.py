"""g++ builds of a rendered HLS project: the testbench executable and the
shared library the Python bridge loads (hls4ml's compile()).

Builds are cached in ``$VQHLS_CACHE`` (default ``<repo>/.cache/vqhls/``) under
``<engine hash>-<source hash>/``, where the source hash covers the project's
firmware and testbench files as they are on disk (so the EngineConfig and the
templates they were rendered from), the compiler flags and the g++ version:
a second call with the same project does not recompile.

A cached build is used only when it verifies: ``build.sha256`` (written last, after the
binaries were renamed into place) must hold the sha256 of both binaries; a truncated or
otherwise damaged library (which dlopen would map and crash on with SIGBUS) is rebuilt
instead. g++ runs in a temporary ``.tmp-build-<pid>-*`` folder of the cache entry; the
folders of builds that were killed (their process gone, or older than STALE_SECONDS) are
removed by the next build.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from flow.hls.ap_types import ap_types_dir
from flow.hls.project import CXXFLAGS, Project
from host.files import sums_match, sums_text
from models import cache as _cache

REPO_ROOT = Path(__file__).resolve().parents[2]
TB_NAME = "vqhls_tb"
LIB_NAME = "libvqhls_engine.so"
SUMS_NAME = "build.sha256"          # sha256 of the binaries, written after them: the build is complete
TMP_PREFIX = ".tmp-build-"          # + "<pid>-<random>": g++'s working folder inside a cache entry
STALE_SECONDS = 6 * 3600            # a working folder this old is removed even if its pid is alive (reused)


class ToolchainError(RuntimeError):
    """No usable C++ compiler."""


class CompileError(RuntimeError):
    """g++ rejected the project; the message holds the command and its output."""


def cache_root() -> Path:
    """Where builds are cached: $VQHLS_CACHE, else <repo>/.cache/vqhls (models.cache.cache_root: a
    CacheError, one line naming VQHLS_CACHE, when it is not a directory)."""
    return _cache.cache_root()


@lru_cache(maxsize=None)
def _find_cxx(name: str) -> tuple[str, str]:
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(
            f"C++ compiler {name!r} not found: install it with `apt-get install g++` (or point CXX at one)"
        )
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ToolchainError(f"{path} --version failed ({exc}): reinstall it with `apt-get install g++`") from exc
    return path, version.splitlines()[0] if version else ""


def find_cxx() -> tuple[str, str]:
    """(path, version line) of the C++ compiler ($CXX, default g++)."""
    return _find_cxx(os.environ.get("CXX", "g++"))


def _sources(project: Project) -> list[Path]:
    files = sorted(project.firmware_dir.glob("*.h")) + sorted(project.firmware_dir.glob("*.cpp"))
    files += [project.tb_dir / "tb.cpp", project.tb_dir / "bridge.cpp"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"project {project.path} is incomplete (missing {', '.join(missing)}): rewrite it")
    return files


# the exact-width variant: the datapath types synthesis uses (ap_int of the stated widths), in C-simulation
EXACT_FLAGS = ("-DVQHLS_EXACT_TYPES",)


def _flags(exact: bool) -> list[str]:
    return [*CXXFLAGS, *(EXACT_FLAGS if exact else ())]


def build_key(project: Project, exact: bool = False) -> str:
    """Cache key: engine config hash + hash of the sources on disk, flags and compiler."""
    _, version = find_cxx()
    h = hashlib.sha1()
    for f in _sources(project):
        h.update(f.relative_to(project.path).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(" ".join(_flags(exact)).encode() + b"\0" + version.encode() + b"\0" + str(ap_types_dir()).encode())
    return f"{project.engine.hash()}-{h.hexdigest()[:12]}{'-exact' if exact else ''}"


def build_dir(project: Project, exact: bool = False) -> Path:
    return cache_root() / build_key(project, exact)


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


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cache.CacheError(f"cannot create the build cache folder {path} ({e.strerror or type(e).__name__}): "
                                "set VQHLS_CACHE to a writable directory (or unset it)") from None


def build(project: Project, *, force: bool = False, exact: bool = False) -> tuple[Path, Path]:
    """Build (or fetch from the cache) the testbench executable and the shared library: (tb, lib).

    A cached build is used only when its sums verify (``verify_build``); else it is rebuilt.
    ``exact``: compile the exact-width datapath types synthesis uses (``-DVQHLS_EXACT_TYPES``)
    instead of C-simulation's native ints; slower, the same bits."""
    cxx, _ = find_cxx()
    inc = ["-I", str(project.firmware_dir), "-I", str(ap_types_dir())]
    out = build_dir(project, exact)
    tb, lib = out / TB_NAME, out / LIB_NAME
    if not force and verify_build(out):
        return tb, lib
    _mkdir(out)
    clean_stale(out.parent)
    work = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=out))
    try:
        flags = [*_flags(exact), "-fPIC"]
        objs = {"top": work / "top.o", "tb": work / "tb.o", "bridge": work / "bridge.o"}
        srcs = {"top": project.firmware_dir / "top.cpp", "tb": project.tb_dir / "tb.cpp",
                "bridge": project.tb_dir / "bridge.cpp"}
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


def build_testbench(project: Project, *, force: bool = False, exact: bool = False) -> Path:
    """The testbench executable (tb PROGRAM.bin INPUTS.bin OUTPUTS.bin [EXPECTED.bin])."""
    return build(project, force=force, exact=exact)[0]


def build_library(project: Project, *, force: bool = False, exact: bool = False) -> Path:
    """The shared library with the extern "C" bridge (vqhls_load / vqhls_run / vqhls_config_hash)."""
    return build(project, force=force, exact=exact)[1]
