"""Where the kit keeps checkpoints and build caches (never in git), and reading a cached checkpoint.

``$VQHLS_CACHE`` (a directory) or ``<repo>/.cache/vqhls``: trained checkpoints under
``checkpoints/``, compiled engines and rendered projects (host.gxx_build, flow.hls.csim). Every problem with it
is a :class:`CacheError`: one line naming the path (and VQHLS_CACHE) and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO_ROOT / ".cache" / "vqhls"


class CacheError(ValueError):
    """The cache directory is unusable or a cached file is corrupt; the message names the path and the fix."""


def _origin(root: Path) -> str:
    env = os.environ.get("VQHLS_CACHE")
    return f"VQHLS_CACHE={env}" if env else f"the cache {root}"


def cache_root() -> Path:
    """``$VQHLS_CACHE`` or ``<repo>/.cache/vqhls`` (not created). CacheError when it exists and is not a
    directory."""
    env = os.environ.get("VQHLS_CACHE")
    root = Path(env).expanduser() if env else DEFAULT_ROOT
    if root.exists() and not root.is_dir():
        raise CacheError(f"{_origin(root)} is not a directory: set VQHLS_CACHE to a writable directory "
                         f"(or unset it to use {DEFAULT_ROOT})")
    return root


def cache_dir(*parts: str) -> Path:
    """``cache_root()`` plus ``parts``; created on demand. CacheError when it cannot be."""
    root = cache_root()
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cannot create {path} in {_origin(root)} ({e.strerror or type(e).__name__}): set "
                         f"VQHLS_CACHE to a writable directory (or unset it to use {DEFAULT_ROOT})") from None
    return path


def load_checkpoint(model, path, fix: str = "delete it (or pass --retrain) to train the model again") -> None:
    """Load the state_dict cached at ``path`` into ``model``; CacheError naming the path and ``fix`` when
    the file is truncated, corrupt or from another model (torch's zip / unpickling / size errors)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:   # RuntimeError (zip, sizes), UnpicklingError, EOFError, KeyError, ...
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CacheError(f"cached checkpoint {path} is corrupt or does not fit the model ({type(e).__name__}: "
                         f"{detail}): {fix}") from None
