"""Shared helpers for the benchmark scripts: tables, JSON results, plots."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

# where results go: $VQHLS_BENCH_OUT (make bench sets it to build/bench, untracked), else the committed
# bench/results (running a script by hand updates the published numbers, as its "wrote ..." line says)
RESULTS = Path(os.environ.get("VQHLS_BENCH_OUT") or Path(__file__).resolve().parent / "results").resolve()


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
    """Write ``RESULTS/<name>.json`` (bench/results or $VQHLS_BENCH_OUT) with machine facts added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload["machine"] = {"platform": platform.platform(), "python": platform.python_version(),
                          "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def pareto_front(points: list[dict], x: str = "ratio", y: str = "acc") -> list[int]:
    """Indices of the points of ``points`` that no other point dominates, sorted by ``x`` ascending.

    ``q`` dominates ``p`` when ``q[x] >= p[x]`` and ``q[y] >= p[y]`` with at least one strict
    (higher compression *and* accuracy is better); of exact duplicates the first is kept.
    The frontier is the step function ``r -> max(p[y] for p with p[x] >= r)`` (:func:`best_at`).
    """
    order = sorted(range(len(points)), key=lambda i: (-points[i][x], -points[i][y], i))
    front, best = [], float("-inf")
    for i in order:
        if points[i][y] > best:
            front.append(i)
            best = points[i][y]
    return sorted(front, key=lambda i: (points[i][x], i))


def best_at(points: list[dict], r: float, x: str = "ratio", y: str = "acc"):
    """``max(p[y] for p in points if p[x] >= r)``, None when no point reaches ``r``."""
    ys = [p[y] for p in points if p[x] >= r]
    return max(ys) if ys else None


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename,
    so a killed run never leaves a truncated file (readers see the old file or the new one)."""
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
