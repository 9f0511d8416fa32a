"""The kit's one cache root: trained checkpoints (``checkpoints/``), compiled engines (engine_io.gxx_build),
rendered projects (flow.hls.csim), the k-means kernel and the bench caches, never in git.

``$VQHLS_CACHE`` (a directory) or ``<repo>/.cache/vqhls``. Every problem with it is a :class:`CacheError`:
one line naming the path (and VQHLS_CACHE) and the fix. Standard library only (runs on the board).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / ".cache" / "vqhls"   # <repo>/.cache/vqhls


class CacheError(ValueError):
    """The cache directory is unusable or a cached file is corrupt; the message names the path and the fix."""


def _origin(root: Path, explicit: bool) -> str:
    env = os.environ.get("VQHLS_CACHE")
    return f"VQHLS_CACHE={env}" if env and not explicit else f"the cache {root}"


def cache_root(root: Optional[Union[str, os.PathLike]] = None) -> Path:
    """``root``, else ``$VQHLS_CACHE``, else ``<repo>/.cache/vqhls`` (not created). CacheError when it exists
    and is not a directory."""
    env = os.environ.get("VQHLS_CACHE")
    path = Path(root) if root is not None else Path(env).expanduser() if env else DEFAULT_ROOT
    if path.exists() and not path.is_dir():
        raise CacheError(f"{_origin(path, root is not None)} is not a directory: set VQHLS_CACHE to a writable "
                         f"directory (or unset it to use {DEFAULT_ROOT})")
    return path


def cache_dir(*parts: str) -> Path:
    """``cache_root()`` plus ``parts``; created on demand. CacheError when it cannot be."""
    root = cache_root()
    path = root.joinpath(*parts)
    make_dir(path, _origin(root, False))
    return path


def make_dir(path: Path, where: str = "the build cache") -> None:
    """``mkdir -p path``; CacheError naming ``path`` and the fix when it cannot be created."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cannot create {path} in {where} ({e.strerror or type(e).__name__}): set VQHLS_CACHE "
                         f"to a writable directory (or unset it to use {DEFAULT_ROOT})") from None
