"""Run-time multiplies of the emitted firmware, counted from g++'s optimised GIMPLE (the lint's ``multipliers`` rule).

Every multiply with two run-time operands costs a DSP48E1 or a fabric multiplier in hardware; a
multiply by a constant folds into shifts and adds. g++ sees the same constants Vitis does once the
code is optimised, so the project's firmware is compiled the way C-simulation compiles it (native
datapath ints: products are plain ``*`` that g++ can see) with

    g++ -std=c++14 -O2 -fno-inline -fdump-tree-optimized-lineno

``-fno-inline`` keeps every ``#pragma HLS INLINE`` helper as its own function, so each multiply is
attributed to the function whose source holds it. Counted: GIMPLE ``a_1 * b_2`` / ``a_1 w* b_2``
(MULT_EXPR / WIDEN_MULT_EXPR) where neither operand is a literal, and calls of an ap_int
``operator*`` where neither argument is a literal (an exact-width multiply left in the native build).
The counts are a property of the code (what g++ leaves after constant folding), not a synthesis
result: Vitis may still share or split multipliers.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from engine_io.gxx_build import ap_types_dir
from flow.hls.lint_common import DECLARED_MULT_UNITS, Violation

GXX_FLAGS = ("-std=c++14", "-O2", "-fno-inline", "-fdump-tree-optimized-lineno", "-w")
_OPND = r"(-?[\w.]+(?:\(D\))?)"
RE_MULT = re.compile(r"^\s*(?:\[([^\]\s]+):(\d+):\d+\]\s*)?[\w.]+(?:\(D\))?\s*=\s*" + _OPND + r"\s+w?\*\s+" + _OPND + r";")
RE_APMUL = re.compile(r"^\s*(?:\[([^\]\s]+):(\d+):\d+\]\s*)+.*?\boperator\*<[^>]*>\s*\(([^,()]+),\s*([^,()]+)\)")
RE_LOC = re.compile(r"^\s*\[([^\]\s]+):(\d+):\d+\]")
CLONE_SUFFIX = re.compile(r"(?:\.(?:isra|constprop|part|cold|lto_priv|localalias)(?:\.\d+)?)+$")


class MultCompileError(RuntimeError):
    """g++ could not compile the firmware for the count."""


def _is_literal(op: str) -> bool:
    return re.fullmatch(r"-?\d[\w.+-]*", op.strip()) is not None


def short_name(gimple_name: str) -> str:
    """'vqhls::pe<true>.isra' -> 'pe<true>' (namespaces and clone suffixes dropped, template arguments kept)."""
    name = CLONE_SUFFIX.sub("", gimple_name.strip())
    depth, cut = 0, 0
    for k, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == ":" and depth == 0 and name[k + 1:k + 2] == ":":
            cut = k + 2
    return name[cut:]


def base_name(name: str) -> str:
    """'pe<true>' -> 'pe'."""
    return name.split("<")[0].strip()


def _gxx() -> str | None:
    return shutil.which("g++")


def _sources(fw: Path) -> list[Path]:
    return sorted(p for p in fw.iterdir() if p.suffix in (".h", ".hpp", ".cpp", ".cc"))


def _key(fw: Path, gxx: str, inc: str) -> str:
    h = hashlib.sha256()
    for p in _sources(fw):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(" ".join(GXX_FLAGS).encode() + gxx.encode() + inc.encode())
    return h.hexdigest()


@lru_cache(maxsize=32)
def _dump(key: str, fw_s: str, gxx: str, inc: str) -> str:
    """The optimised GIMPLE of every firmware .cpp (cached per content hash)."""
    fw = Path(fw_s)
    out = []
    with tempfile.TemporaryDirectory(prefix="vqhls-lint-") as tmp:
        for src in (p for p in _sources(fw) if p.suffix in (".cpp", ".cc")):
            cmd = [gxx, *GXX_FLAGS, "-I", str(fw), "-I", inc, "-c", str(src), "-o", str(Path(tmp) / (src.stem + ".o"))]
            r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
            if r.returncode != 0:
                first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:300])
                raise MultCompileError(f"{src.name}: g++ failed ({first.strip()})")
            for dump in sorted(Path(tmp).glob("*optimized")):
                out.append(dump.read_text())
                dump.unlink()
    return "\n".join(out)


def multiplier_sites(project_dir: str | Path) -> dict[str, list[tuple[str, int]]] | None:
    """{function: [(firmware-relative file, line) of each run-time multiply]} for every firmware function
    g++ emits (empty lists included); None when g++ is not installed. Raises MultCompileError."""
    root = Path(project_dir)
    fw = (root / "firmware").resolve()
    gxx = _gxx()
    if gxx is None:
        return None
    inc = str(ap_types_dir())
    text = _dump(_key(fw, gxx, inc), str(fw), gxx, inc)
    sites: dict[str, list[tuple[str, int]]] = {}
    for chunk in text.split("\n;; Function ")[1:]:
        name = short_name(chunk.split(" (", 1)[0])
        mine = False
        last: tuple[str, int] | None = None
        found = []
        for line in chunk.split("\n"):
            loc = RE_LOC.match(line)
            if loc:
                p = Path(loc.group(1))
                p = p if p.is_absolute() else (fw / p)
                if p.resolve().parent == fw:
                    mine = True
                    last = (f"firmware/{p.name}", int(loc.group(2)))
                else:
                    last = None
            m = RE_MULT.match(line)
            if m and not _is_literal(m.group(3)) and not _is_literal(m.group(4)):
                found.append(last)
                continue
            m = RE_APMUL.match(line)
            if m and not _is_literal(m.group(3)) and not _is_literal(m.group(4)):
                found.append(last)
        if mine:
            sites.setdefault(name, []).extend(found)
    return sites


def multiplier_counts(project_dir: str | Path) -> dict[str, int]:
    """{function name (namespaces dropped, template arguments kept): run-time multiplies in its own body}
    of the project's firmware, from g++'s optimised GIMPLE. Raises RuntimeError when g++ is missing."""
    sites = multiplier_sites(project_dir)
    if sites is None:
        raise RuntimeError("g++ not found: install it with `apt-get install g++` to count the firmware's multiplies")
    return {name: len(v) for name, v in sorted(sites.items())}


RE_ALLOCATION = re.compile(r"#\s*pragma\s+HLS\s+ALLOCATION\s+operation\s+instances=mul\s+limit=(\d+)", re.IGNORECASE)
RE_FUNC_HEAD = re.compile(r"\b([A-Za-z_]\w*)\s*\([^;{}()]*(?:\([^;{}()]*\)[^;{}()]*)*\)\s*(?:const\s*)?\{")


def allocation_limits(project_dir: str | Path) -> dict[str, int]:
    """{function: N} for every firmware function whose body carries ``#pragma HLS ALLOCATION operation
    instances=mul limit=N``: Vitis builds at most N multipliers for it, whatever its multiply count."""
    out: dict[str, int] = {}
    for path in sorted((Path(project_dir) / "firmware").glob("*")):
        if path.suffix not in (".h", ".hpp", ".cpp", ".cc"):
            continue
        text = path.read_text()
        for m in RE_ALLOCATION.finditer(text):
            heads = list(RE_FUNC_HEAD.finditer(text, 0, m.start()))
            if heads:
                out[heads[-1].group(1)] = int(m.group(1))
    return out


def multiplier_instances(project_dir: str | Path) -> dict[str, int]:
    """{function: multipliers hardware builds for it}: the run-time multiply count of ``multiplier_counts``,
    capped at the ALLOCATION limit of the functions that share theirs (``allocation_limits``)."""
    counts = multiplier_counts(project_dir)
    limits = allocation_limits(project_dir)
    return {f: min(n, limits[base_name(f)]) if base_name(f) in limits else n for f, n in counts.items()}


def multiplier_rules(project_dir: str | Path, pipelined: set[str], inline_helpers: set[str],
                     calls: dict[str, set[str]]) -> list[Violation]:
    """The ``multipliers`` rule: no run-time multiply in a function that holds a pipelined loop or in an
    INLINE helper such a function calls (transitively), except the DECLARED_MULT_UNITS.
    `pipelined`: functions with a pipelined loop of their own; `calls`: function -> firmware functions it names."""
    try:
        sites = multiplier_sites(project_dir)
    except (RuntimeError, OSError) as exc:
        return [Violation("firmware", 0, "multipliers", f"cannot count multiplies: {exc}")]
    if sites is None:
        print("lint: multipliers rule SKIPPED: g++ not found (install it with `apt-get install g++`)", file=sys.stderr)
        return []
    scope = set(pipelined)
    todo = list(pipelined)
    while todo:
        f = todo.pop()
        for g in calls.get(f, ()):
            if g in inline_helpers and g not in scope:
                scope.add(g)
                todo.append(g)
    out = []
    for name, locs in sites.items():
        base = base_name(name)
        if base not in scope or base in DECLARED_MULT_UNITS:
            continue
        why = "holds a pipelined loop" if base in pipelined else "is an INLINE helper of a function with a pipelined loop"
        per_line: dict[tuple[str, int], int] = {}
        for loc in locs:
            key = loc if loc else ("firmware", 0)
            per_line[key] = per_line.get(key, 0) + 1
        for (rel, line), n in per_line.items():
            what = "a run-time multiply" if n == 1 else f"{n} run-time multiplies"
            out.append(Violation(rel, line, "multipliers",
                                 f"{what} (both operands run-time) in '{name}', which {why}: each is a DSP or "
                                 f"fabric multiplier; use a counter / precomputed value, or one of the declared "
                                 f"units {', '.join(DECLARED_MULT_UNITS)}"))
    return out
