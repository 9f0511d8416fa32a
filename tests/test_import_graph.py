"""The import graph of the package is one-way, read from the source with ``ast`` (every import, function-local
ones included: they are dependencies too, only deferred).

Units are the top-level packages and the sub-packages of ``flow``, ranked in data-flow order (lowest first).
A unit may import only units of lower rank; an import of an equal (sibling) or higher rank, a cycle between
units, or an import of ``tests`` fails, naming every offending import. Function-local imports must say why
they are deferred (a comment on their line or the line above): they defer torch or an optional tool.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine_io", "models", "flow", "host")

# data flow: models -> compress -> quant -> compile -> (hls | rtl) -> build -> bundle -> host. engine_io is
# below everything (what flow and host share); flow.build runs every stage, the bundle writer included, so
# it sits above flow.bundle; flow.rtl renders with flow.hls's template environment, so it sits above it.
RANK = {
    "engine_io": 0,
    "models": 1,
    "flow.finite": 2, "flow.text_table": 2,     # small helpers every flow stage may use
    "flow.compress": 3,
    "flow.quant": 4,
    "flow.compile": 5,
    "flow.boards": 6,
    "flow.hls": 7,
    "flow.rtl": 8,
    "flow.bundle": 8,
    "flow.build": 9,
    "flow": 10,                                 # flow/__init__.py and flow.api: the one-call facade
    "host": 11,
}
# the board runs host/ without torch and without the flow: it imports only these (models.data is numpy only)
ONLY = {"host": {"engine_io", "models"}}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "tests":
        return "tests"
    if parts[0] not in PACKAGES:
        return None
    if parts[0] != "flow" or len(parts) == 1:
        return parts[0]
    return "flow" if parts[1] in ("api", "__main__") else f"flow.{parts[1]}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    p = REPO.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _targets(node: ast.AST, module: str, is_pkg: bool) -> list[str]:
    """The modules one import statement loads (``from a import b`` loads ``a.b`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_pkg else module.split(".")[:-1]
        here = here[: len(here) - (node.level - 1)]
        base = ".".join(here + ([node.module] if node.module else []))
    subs = [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")]
    return subs or [base]


def scan(packages=PACKAGES, root: Path = REPO):
    """[(module, line, imported module, function-local?, has a reason comment?)] over every .py file."""
    out = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            src = path.read_text()
            lines = src.splitlines()
            tree = ast.parse(src)
            module, is_pkg = _module_name(path), path.name == "__init__.py"
            local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                     for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                line = lines[node.lineno - 1]
                above = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                reason = "#" in line or above.startswith("#")
                for target in _targets(node, module, is_pkg):
                    out.append((module, node.lineno, target, id(node) in local, reason))
    return out


def violations(imports) -> list[str]:
    """Imports against the ranking (or of tests), and every cycle between units, one line each."""
    bad, edges = [], {}
    for module, line, target, _, _ in imports:
        a, b = unit_of(module), unit_of(target)
        if b is None or a == b:
            continue
        edges.setdefault(a, {}).setdefault(b, []).append(f"{module}:{line} imports {target}")
        if b == "tests":
            bad.append(f"{module}:{line} imports {target}: the package never imports tests/")
        elif a in ONLY and b not in ONLY[a]:
            bad.append(f"{module}:{line} imports {target}: {a} may import only {', '.join(sorted(ONLY[a]))}")
        elif RANK[b] >= RANK[a]:
            bad.append(f"{module}:{line} imports {target}: {a} (rank {RANK[a]}) may import only units upstream "
                       f"of it, {b} is rank {RANK[b]}")
    for cycle in _cycles(edges):
        hops = [edges[x][y][0] for x, y in zip(cycle, cycle[1:] + cycle[:1])]
        bad.append("cycle " + " -> ".join(cycle + cycle[:1]) + ": " + "; ".join(hops))
    return bad


def _cycles(edges: dict) -> list[list[str]]:
    """One cycle per strongly connected component of more than one unit (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(_a_cycle(edges, set(comp)))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _a_cycle(edges: dict, comp: set) -> list[str]:
    start = min(comp)
    path, seen = [start], {start}
    while True:   # walk inside the component until a unit repeats
        nxt = min(w for w in edges.get(path[-1], {}) if w in comp)
        if nxt in seen:
            return path[path.index(nxt):]
        path.append(nxt)
        seen.add(nxt)


def test_the_import_graph_is_one_way():
    bad = violations(scan())
    assert not bad, "imports against the data flow:\n  " + "\n  ".join(bad)


def test_function_local_imports_say_why():
    """A deferred import defers torch or an optional tool, and says so; anything else is imported at the top."""
    stdlib = set(sys.stdlib_module_names)
    bad = [f"{m}:{line} imports {t} inside a function without saying why" for m, line, t, local, reason in scan()
           if local and not reason and t.split(".")[0] not in stdlib]
    assert not bad, "\n  ".join(bad)


# --------------------------------------------------------------------------- tests of the test

@pytest.mark.parametrize("module, target", [
    ("flow.bundle", "host.accelerator"),           # the old flow <-> host cycle (the bundle loader in flow)
    ("host.accelerator", "flow.bundle"),
    ("flow.quant.golden", "flow.compile.program_exec"),   # quant <-> compile (the executor in quant)
    ("flow.compile.engine", "flow.boards.sizing"),  # compile <-> boards (EngineConfig.for_board)
    ("engine_io.gxx_build", "models.train"),       # the cache root in models
    ("flow.rtl.cosim_cases", "tests.flow.hls.hls_testlib"),
])
def test_a_re_added_old_import_is_caught(module, target):
    imports = scan() + [(module, 1, target, False, False)]
    bad = violations(imports)
    assert any(f"{module}:1 imports {target}" in b for b in bad), bad


def test_a_cycle_is_named():
    imports = [("flow.quant.golden", 3, "flow.compile.program", False, False),
               ("flow.compile.lower", 5, "flow.quant.graph", False, False)]
    bad = violations(imports)
    assert any(b.startswith("cycle flow.compile -> flow.quant -> flow.compile") for b in bad), bad
