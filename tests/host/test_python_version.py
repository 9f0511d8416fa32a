"""What runs on the board needs no newer Python than the PYNQ-Z2's images have: 3.8 (image v2.7) to 3.10
(v3.0, v3.1). Checked with vermin (the `dev` extra) over host/, engine_io/ (bundle loader, register map,
program image, .hwh parsing, g++ build) and the two models files host.run imports, plus an AST check for
the two runtime constructs vermin does not see: ``X | Y`` of types (3.10) and ``list[int]``-style
subscripts of builtin types (3.9) outside annotations.

Annotations: a module with ``from __future__ import annotations`` never evaluates them, so ``int | None``
and ``list[int]`` there are fine on 3.8; a module without it is checked with ``--eval-annotations``.
``--no-parse-comments``: a ``# novm`` comment cannot hide a finding.
"""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BOARD_PYTHON = (3, 8)           # the oldest Python of a PYNQ-Z2 image (v2.7, Ubuntu 20.04)
# host/ and engine_io/ whole (new files are checked too), and what host.run imports from models
CHECKED = ("host", "engine_io", "models/__init__.py", "models/data.py")
# files that must be among those checked: the check cannot pass by finding nothing
REQUIRED = ("host/accelerator.py", "host/pynq_backend.py", "host/run.py", "host/backend.py",
            "engine_io/bundle.py", "engine_io/regmap.py", "engine_io/program_image.py", "engine_io/gxx_build.py")
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}        # subscriptable from 3.9
TYPE_NAMES = BUILTIN_GENERICS | {"int", "float", "str", "bytes", "bool", "complex", "object"}


def board_files(root: Path = REPO) -> list[Path]:
    out: list[Path] = []
    for entry in CHECKED:
        p = root / entry
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return out


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
               for n in tree.body)


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (never evaluated under the __future__ import)."""
    roots: list[ast.AST] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.arg) and n.annotation is not None:
            roots.append(n.annotation)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.returns is not None:
            roots.append(n.returns)
        elif isinstance(n, ast.AnnAssign):
            roots.append(n.annotation)
    return {id(m) for r in roots for m in ast.walk(r)}


def _is_type_expr(n: ast.AST) -> bool:
    if isinstance(n, ast.Constant) and n.value is None:
        return True
    if isinstance(n, ast.Name) and n.id in TYPE_NAMES:
        return True
    if isinstance(n, ast.Subscript):
        return _is_type_expr(n.value)
    return isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) and (_is_type_expr(n.left) or _is_type_expr(n.right))


def runtime_type_syntax(path: Path) -> list[str]:
    """``X | Y`` of types and ``list[...]`` subscripts evaluated at run time (outside annotations when the
    module has the __future__ import; everywhere when it has not): findings as 'file:line: what'."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _annotation_nodes(tree) if _has_future_annotations(tree) else set()
    found = []
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) and (_is_type_expr(n.left) or _is_type_expr(n.right)):
            found.append(f"{path}:{n.lineno}: union type `X | Y` evaluated at run time requires 3.10")
        elif isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name) and n.value.id in BUILTIN_GENERICS:
            found.append(f"{path}:{n.lineno}: builtin generic `{n.value.id}[...]` evaluated at run time requires 3.9")
    return sorted(set(found))


def vermin_findings(files: list[Path], target: tuple[int, int] = BOARD_PYTHON) -> list[str]:
    """vermin over ``files`` against ``target``: [] when every file runs on it, else vermin's report (with
    line numbers). Modules without ``from __future__ import annotations`` get ``--eval-annotations``."""
    if importlib.util.find_spec("vermin") is None:
        pytest.fail("vermin is not installed: it is in the dev extra (make venv, or .venv/bin/pip install vermin)")
    groups: dict[bool, list[str]] = {True: [], False: []}
    for f in files:
        groups[_has_future_annotations(ast.parse(f.read_text()))].append(str(f))
    report = []
    for future, names in groups.items():
        if not names:
            continue
        # vermin has no __main__: its console script's entry point, under this interpreter
        cmd = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "--no-tips", "--violations",
               "--no-parse-comments", "-vvv", f"-t={target[0]}.{target[1]}-",
               *([] if future else ["--eval-annotations"]), *names]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            continue
        if proc.returncode != 1 or "Target versions not met" not in proc.stdout:
            pytest.fail(f"vermin failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        report.append(proc.stdout.strip())
    return report


def test_board_code_runs_on_the_images_python():
    files = board_files()
    rel = {f.relative_to(REPO).as_posix() for f in files}
    assert set(REQUIRED) <= rel, sorted(set(REQUIRED) - rel)
    findings = vermin_findings(files)
    assert not findings, (f"host/engine_io need a Python newer than {BOARD_PYTHON[0]}.{BOARD_PYTHON[1]} (the "
                          "PYNQ-Z2 image's):\n" + "\n".join(findings))
    runtime = [line for f in files for line in runtime_type_syntax(f)]
    assert not runtime, "\n".join(runtime)


def test_the_checks_catch_newer_python(tmp_path):
    """The same checks on planted code: each 3.9/3.10 construct is found, annotations under the __future__
    import are not, and a file without that import has its annotations checked."""
    newer = tmp_path / "newer.py"
    newer.write_text('def f():\n    return "xy".removeprefix("x")\n')
    match = tmp_path / "match.py"
    match.write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    zipped = tmp_path / "zipped.py"
    zipped.write_text("def f(a, b):\n    return list(zip(a, b, strict=True))\n")
    eager = tmp_path / "eager.py"
    eager.write_text("def f(x: list[int]) -> None:\n    pass\n")
    runtime = tmp_path / "runtime.py"
    runtime.write_text("from __future__ import annotations\nAlias = dict[str, int]\n"
                       "def f(v: int | None) -> list[int]:\n    return isinstance(v, int | float)\n")
    fine = tmp_path / "fine.py"
    fine.write_text("from __future__ import annotations\nimport math\n\n"
                    "def f(x: int | None, y: dict[str, list[int]]) -> tuple[int, ...] | None:\n"
                    "    return (math.prod([1, 2]),) if (n := 3) else None\n")
    for f, why in ((newer, "str.removeprefix"), (match, "pattern matching"), (zipped, "zip(strict)"),
                   (eager, "3.9")):
        report = vermin_findings([f])
        assert report and why in report[0], (f.name, report)
    assert vermin_findings([fine]) == []
    assert vermin_findings([runtime]) == []          # vermin misses both: the AST check finds them
    found = runtime_type_syntax(runtime)
    assert [s.split(": ", 1)[1] for s in found] == [
        "builtin generic `dict[...]` evaluated at run time requires 3.9",
        "union type `X | Y` evaluated at run time requires 3.10"], found
    assert runtime_type_syntax(fine) == []
