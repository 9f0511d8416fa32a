"""File helpers the flow and the host share (standard library only: this runs on the board).

``file_sha256`` checksums bundles and cached builds; ``sums_text`` / ``sums_match`` write and check
the sums file a cached build records last (a build without matching sums is incomplete or damaged
and is rebuilt); ``swap_into_place`` publishes a directory
written under a temporary name so a reader never sees a half-written one.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["file_sha256", "sums_text", "sums_match", "swap_into_place"]


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sums_text(files: list[Path]) -> str:
    """``sha256sum`` lines (``<hex>  <name>``) of ``files``, in order."""
    return "".join(f"{file_sha256(f)}  {f.name}\n" for f in files)


def sums_match(files: list[Path], sums: Path) -> bool:
    """True when every file exists and ``sums`` holds exactly their :func:`sums_text`."""
    try:
        return all(f.is_file() for f in files) and sums.read_text() == sums_text(files)
    except (OSError, UnicodeDecodeError):
        return False


def swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished directory ``tmp`` to ``out_dir``, replacing any old one.

    The old directory is first renamed aside (restored if the second rename fails) and deleted
    last, so ``out_dir`` is at every moment either the old complete tree or the new one.
    """
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    old.rmdir()
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
