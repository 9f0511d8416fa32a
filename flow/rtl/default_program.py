"""The default model's build for the RTL cases: lenet-digits, MVQ, lowered to a Program and an HLS project.

    out = default_program_dir()          # <cache>/rtl/default-program/lenet-digits-mvq-<key>/
    prog = Program.from_bytes((out / "program.bin").read_bytes())

Built on first use with ``python -m flow.build --model lenet-digits --method mvq --stage hls`` (as `make
csim` lowers it; training reuses the checkpoint cache) into the kit's cache (``engine_io.cache``:
$VQHLS_CACHE or <repo>/.cache/vqhls), never into the repository's build/. The folder's key is a digest of
its inputs: the build's arguments and the sources that make it (the Python of flow/ outside flow/rtl,
models/, and hls_templates/ but the RTL units other than the cycle counter), so an edit to the compiler or the templates builds it again. A build is
written into a temporary sibling folder and renamed into place, so concurrent sessions never read half
a build.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from engine_io.cache import cache_dir

MODEL = "lenet-digits"
METHOD = "mvq"
STAGE = "hls"
PROGRAM_FILE = "program.bin"
HLS_DIR = "hls"

# the directory holding the packages flow/ and models/ and the folder hls_templates/
_KIT_ROOT = Path(__file__).resolve().parents[2]
_RTL_DIR = Path(__file__).resolve().parent


def _sources() -> list[Path]:
    """The files the build reads besides the data and the checkpoint: flow/ (without flow/rtl, which only
    consumes the build), models/ and hls_templates/."""
    files = [p for p in (_KIT_ROOT / "flow").rglob("*.py") if _RTL_DIR not in p.parents]
    files += (_KIT_ROOT / "models").rglob("*.py")
    # hls_templates/ without the RTL engine's units: the HLS project reads only the cycle counter of
    # hls_templates/rtl (its blackbox), so an edit to another RTL unit does not rebuild the model
    rtl = _KIT_ROOT / "hls_templates" / "rtl"
    files += (p for p in (_KIT_ROOT / "hls_templates").rglob("*")
              if p.is_file() and (rtl not in p.parents or p.name == "cycle_counter.v.j2"))
    return sorted(files)


def build_key() -> str:
    """Digest of the build's arguments and of every source file (path and bytes)."""
    h = hashlib.sha256(f"{MODEL}\0{METHOD}\0{STAGE}\0".encode())
    for p in _sources():
        h.update(str(p.relative_to(_KIT_ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _build(out: Path) -> None:
    """Run the flow into ``out`` (cwd: out's parent, so nothing lands where the caller stands)."""
    r = subprocess.run([sys.executable, "-m", "flow.build", "--model", MODEL, "--method", METHOD,
                        "--stage", STAGE, "--out", str(out)], capture_output=True, text=True, cwd=out.parent)
    if r.returncode != 0:
        raise RuntimeError(f"building the default model's program failed:\n{r.stderr[-2000:]}")


def default_program_dir(build: bool = True) -> Path | None:
    """The folder of the default model's build (program.bin, hls/, ...); built first when missing
    (``build``), else None."""
    parent = cache_dir("rtl", "default-program")
    out = parent / f"{MODEL}-{METHOD}-{build_key()}"
    if (out / PROGRAM_FILE).is_file():
        return out
    if not build:
        return None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=parent))
    try:
        _build(tmp / "build")
        if out.is_dir() and not (out / PROGRAM_FILE).is_file():   # a damaged earlier build
            shutil.rmtree(out, ignore_errors=True)
        try:
            (tmp / "build").rename(out)
        except OSError:   # another session renamed its build into place first: same inputs, same build
            if not (out / PROGRAM_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
