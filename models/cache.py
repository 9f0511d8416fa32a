"""Where the kit keeps checkpoints and build caches (never in git)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_dir(*parts: str) -> Path:
    """``$VQHLS_CACHE`` or ``<repo>/.cache/vqhls``, plus ``parts``; created on demand."""
    root = Path(os.environ.get("VQHLS_CACHE", REPO_ROOT / ".cache" / "vqhls"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
