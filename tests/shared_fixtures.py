"""The real vendor-tool files of ``shared/fixtures/`` (Xilinx reports, a PYNQ-Z2 ``.hwh``): beside the clone
(``../shared``, the README's layout) or inside it (``./shared``). Importable from any test: pytest puts
``tests/`` on ``sys.path`` (its conftest.py, no ``__init__.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_fixture_dir(name: str) -> Path:
    """``shared/fixtures/<name>``; skips the calling test module (naming where it looked) when absent."""
    candidates = [REPO.parent / "shared" / "fixtures" / name, REPO / "shared" / "fixtures" / name]
    found = next((p for p in candidates if p.is_dir()), None)
    if found is None:
        pytest.skip(f"{name} fixtures not found (looked in " + ", ".join(map(str, candidates)) + ")",
                    allow_module_level=True)
    return found
