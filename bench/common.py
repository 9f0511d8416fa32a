"""Shared helpers for the benchmark scripts: tables, Pareto fronts, JSON results with their provenance."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flow.text_table import format_table

REPO = Path(__file__).resolve().parent.parent

# where results go: $VQHLS_BENCH_OUT (make bench sets it to build/bench, untracked), else the committed
# bench/results (running a script by hand updates the published numbers, as its "wrote ..." line says)
RESULTS = Path(os.environ.get("VQHLS_BENCH_OUT") or REPO / "bench" / "results").resolve()


def table(rows: list[dict], cols: list[str]) -> str:
    """Plain-text table of ``rows`` (dicts) over ``cols``."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    return format_table(cols, [[fmt(r.get(c, "")) for c in cols] for r in rows])


def git_commit() -> str:
    """HEAD of the repository, '+dirty' when tracked files differ from it; 'unknown' without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_info(flags: tuple[str, ...] = ("avx2", "avx512f", "fma")) -> dict:
    """The CPU as a bench records it: model name, cores, and whether it has each of ``flags`` (the ISA
    extensions that pick code paths; from /proc/cpuinfo's flags, None where that is not readable)."""
    have: set[str] | None = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"model": cpu_model(), "cores": os.cpu_count(),
            "flags": {f: (None if have is None else f in have) for f in flags}}


def provenance(script: str | Path, argv: list[str] | None = None) -> dict:
    """What produced a result: the commit, the script and its arguments, the date and the machine.

    ``script`` is the bench script's ``__file__`` (stored relative to the repository); ``argv`` its
    arguments (default ``sys.argv[1:]``; pass them when ``main(argv)`` was called in-process)."""
    path = Path(script).resolve()
    return {"commit": git_commit(),
            "script": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
            "argv": list(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu_model(), "cores": os.cpu_count(),
            "isa": cpu_info()["flags"], "threads": _threads(),
            "platform": platform.platform(), "python": platform.python_version()}


def _threads() -> dict:
    """The thread counts a result ran with: torch's intra-op threads (when the script loaded torch) and
    OMP_NUM_THREADS as set (None: the library default, all cores)."""
    torch = sys.modules.get("torch")
    return {"torch": torch.get_num_threads() if torch is not None else None,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def save(name: str, payload: dict, script: str | Path, argv: list[str] | None = None,
         out: Path | None = None) -> Path:
    """Write ``<out>/<name>.json`` (default RESULTS: bench/results or $VQHLS_BENCH_OUT) atomically, with
    :func:`provenance` under ``"machine"``."""
    payload = dict(payload, machine=provenance(script, argv))
    return atomic_write_text(Path(out or RESULTS) / f"{name}.json", json.dumps(payload, indent=2, default=float))


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
