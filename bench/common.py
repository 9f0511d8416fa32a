"""Shared helpers for the benchmark scripts: tables, JSON results, plots."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def table(rows: list[dict], cols: list[str]) -> str:
    """Plain-text table of ``rows`` (dicts) over ``cols``."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


def save(name: str, payload: dict) -> Path:
    """Write ``bench/results/<name>.json`` with machine facts added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                          "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path
