"""Lint an emitted HLS project for the synthesizable subset Vitis HLS accepts.

    python -m flow.hls.lint PROJECT_DIR        # exit 1 and one 'file:line:rule: message' per violation

No Vitis HLS runs here, so the C++ is checked as text (the open-source ap_types
refuse ``-D__SYNTHESIS__``, so the guard cannot be checked by compiling).
Only ``firmware/`` is held to the rules (``tb/`` is testbench code). Code
inside ``#ifndef __SYNTHESIS__`` (or the ``#else`` of ``#ifdef __SYNTHESIS__``)
is testbench-only and exempt from the ``float`` and ``io`` rules.

Rules:
  alloc      no new / delete / malloc / calloc / realloc / free
  stl        no std:: containers (vector, map, list, string, deque, set, unordered_*, array, ...);
             hls::stream is the one container allowed
  recursion  no function that calls itself, directly or through others (call graph of the firmware)
  virtual    no virtual functions
  float      no float / double outside #ifndef __SYNTHESIS__ blocks
  io         no printf / std::cout / fopen / FILE / <iostream> / <fstream> / <cstdio> outside those blocks
  loop-bound every for loop's bound is a constant expression (literals, ALL_CAPS constants,
             Config::member constants, sizeof) or the loop body starts with #pragma HLS loop_tripcount
  interface  the top function carries '#pragma HLS INTERFACE ... port=P' for each argument P and
             an s_axilite 'port=return'

Rules over pipelined loops (a 'for' whose body holds '#pragma HLS PIPELINE'; INLINE helpers it calls
expanded transitively, every loop inside it unrolled; flow/hls/lint_pipeline.py says how the text is read).
Memories: arrays at namespace scope and static arrays, split by '#pragma HLS ARRAY_PARTITION' (complete:
one physical memory per index; completely partitioned in every dimension: registers, exempt):
  dependence a memory both stored and loaded in one pipelined iteration (read-modify-writes included)
             is named by a '#pragma HLS DEPENDENCE variable=X' in that loop; every DEPENDENCE pragma
             has a non-empty // justification comment on the line(s) directly above it
  ports      per pipelined loop and physical memory, reads and writes per iteration fit the ports of
             its '#pragma HLS BIND_STORAGE' type (ram_1p 1; ram_2p / ram_t2p 2 in all; ram_s2p 1 read
             + 1 write; ram_1wnr 1 write + any reads; none: ram_2p); an index into a partitioned
             dimension that is not a compile-time value is charged to every partition it can reach;
             the two arms of one if/else count as their maximum, different predicates add up
  widths     no loop-carried counter wider than 16 bits in a pipelined loop: a scalar (or struct
             member) declared outside the loop and updated from itself inside it (x++, x += e,
             x = x + e), nor the loop's own induction variable (int, unsigned, typedefs resolved,
             ap_(u)int<W> with W > 16); waived by '// lint: wide-counter <reason>' on the line
             that declares or updates it
  m_axi      no dereference of an m_axi pointer (the top's m_axi ports, followed through call
             arguments) inside a pipelined loop nested in another loop of the same function
  multipliers  (lint_project only: compiles the firmware with g++ -O2 -fno-inline, flow/hls/lint_mult.py)
             no multiply with two run-time operands in a function that holds a pipelined loop or in
             an INLINE helper such a function calls, except the declared units DECLARED_MULT_UNITS;
             multiplier_counts(project_dir) gives the count per function; skipped with a printed
             notice only when g++ is not installed
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from flow.hls import lint_common, lint_mult
from flow.hls.lint_common import Violation, _Func, _functions, _line_of, _match_close, split_top, strip_comments
from flow.hls.lint_pipeline import analyse

TOP = "vqhls_engine"
# defined in flow/hls/lint_common.py (shared with lint_pipeline and lint_mult), named here as before
DECLARED_MULT_UNITS = lint_common.DECLARED_MULT_UNITS
KEYWORDS = lint_common.KEYWORDS
SOURCE_SUFFIXES = (".h", ".hpp", ".cpp", ".cc")

STL_CONTAINERS = (
    "vector", "map", "multimap", "list", "forward_list", "string", "wstring", "deque", "set", "multiset",
    r"unordered_\w+", "array", "queue", "stack", "priority_queue", "valarray", "bitset",
)
RE_STL = re.compile(r"\bstd\s*::\s*(" + "|".join(STL_CONTAINERS) + r")\b")
RE_STL_INCLUDE = re.compile(
    r"#\s*include\s*<(vector|map|list|forward_list|string|deque|set|unordered_map|unordered_set|array|queue|"
    r"stack|valarray|bitset)>")
RE_ALLOC = re.compile(r"\bnew\b|\bdelete\b|\b(malloc|calloc|realloc|free|aligned_alloc|posix_memalign)\s*\(")
RE_FLOAT = re.compile(r"\b(float|double)\b")
RE_VIRTUAL = re.compile(r"\bvirtual\b")
RE_IO = re.compile(
    r"\b(printf|fprintf|sprintf|snprintf|vprintf|puts|putchar|fputs|fopen|fclose|fread|fwrite|fscanf|scanf|"
    r"perror)\s*\(|\bFILE\b|\bstd\s*::\s*(cout|cerr|clog|cin|endl|ofstream|ifstream|fstream|ostream|istream)\b")
RE_IO_INCLUDE = re.compile(r"#\s*include\s*[<\"](iostream|fstream|cstdio|stdio\.h|sstream|iomanip)[>\"]")
RE_TRIPCOUNT = re.compile(r"#\s*pragma\s+HLS\s+loop_tripcount\b", re.IGNORECASE)
RE_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*(?:<[^;(){}<>]*(?:<[^;(){}<>]*>[^;(){}<>]*)*>)?\s*\(")
RE_CONST_IDENT = re.compile(r"^(?:[A-Z_][A-Z0-9_]*|(?:[A-Za-z_]\w*\s*::\s*)+[A-Za-z_]\w*)$")


# ---------------------------------------------------------------------------
# text preparation
# ---------------------------------------------------------------------------
def blank_preprocessor(text: str) -> str:
    """Blank preprocessor lines (incl. continuations), keeping offsets."""
    lines = text.split("\n")
    cont = False
    for k, line in enumerate(lines):
        if cont or line.lstrip().startswith("#"):
            cont = line.rstrip().endswith("\\")
            lines[k] = " " * len(line)
        else:
            cont = False
    return "\n".join(lines)


def guarded_lines(text: str) -> list[bool]:
    """Per line (0-based): True when inside a testbench-only (not __SYNTHESIS__) region."""
    stack: list[tuple[str, bool]] = []   # (kind, in_else); kind: 'nosyn' | 'syn' | 'other'
    flags = []
    for line in text.split("\n"):
        s = line.strip()
        m = re.match(r"#\s*(ifndef|ifdef|if|elif|else|endif)\b(.*)", s)
        directive = None
        if m:
            directive, arg = m.group(1), m.group(2).strip()
            if directive == "ifndef":
                stack.append(("nosyn" if arg == "__SYNTHESIS__" else "other", False))
            elif directive == "ifdef":
                stack.append(("syn" if arg == "__SYNTHESIS__" else "other", False))
            elif directive == "if":
                a = arg.replace(" ", "")
                if a in ("!defined(__SYNTHESIS__)", "!defined__SYNTHESIS__"):
                    stack.append(("nosyn", False))
                elif a in ("defined(__SYNTHESIS__)", "defined__SYNTHESIS__"):
                    stack.append(("syn", False))
                else:
                    stack.append(("other", False))
            elif directive == "elif" and stack:
                stack[-1] = ("other", True)
            elif directive == "else" and stack:
                stack[-1] = (stack[-1][0], True)
            elif directive == "endif" and stack:
                stack.pop()
        guarded = any((k == "nosyn" and not e) or (k == "syn" and e) for k, e in stack)
        flags.append(guarded)
    return flags


# ---------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------
def _line_rules(rel: str, raw_nc: str, guard: list[bool]) -> list[Violation]:
    out = []
    for k, line in enumerate(raw_nc.split("\n")):
        ln = k + 1
        is_pp = line.lstrip().startswith("#")
        if not is_pp:
            if RE_ALLOC.search(line):
                out.append(Violation(rel, ln, "alloc", "dynamic allocation (new/delete/malloc/free) is not synthesizable"))
            m = RE_STL.search(line)
            if m:
                out.append(Violation(rel, ln, "stl", f"std::{m.group(1)}: no STL containers in firmware (only hls::stream)"))
            if RE_VIRTUAL.search(line):
                out.append(Violation(rel, ln, "virtual", "virtual functions are not synthesizable"))
        if RE_STL_INCLUDE.search(line):
            out.append(Violation(rel, ln, "stl", "STL container header included in firmware"))
        if guard[k]:
            continue
        if not is_pp:
            m = RE_FLOAT.search(line)
            if m:
                out.append(Violation(rel, ln, "float", f"'{m.group(1)}' in firmware outside #ifndef __SYNTHESIS__"))
            m = RE_IO.search(line)
            if m:
                out.append(Violation(rel, ln, "io", f"'{m.group(0).rstrip('(').strip()}' (file I/O / printing) outside #ifndef __SYNTHESIS__"))
        if RE_IO_INCLUDE.search(line):
            out.append(Violation(rel, ln, "io", "I/O header included outside #ifndef __SYNTHESIS__"))
    return out


def _is_const_expr(expr: str) -> bool:
    expr = re.sub(r"\bsizeof\s*\([^()]*\)", "0", expr)
    expr = re.sub(r"\((?:unsigned|int|long|short|char|signed|unsigned int|long long|unsigned long)\)", "", expr)
    expr = re.sub(r"\b(?:0[xX][0-9a-fA-F]+|\d+)[uUlL]*\b", "0", expr)
    # qualified names (Config::member, typename X::y) are compile-time constants
    expr = re.sub(r"\btypename\b", "", expr)
    tokens = re.findall(r"(?:[A-Za-z_]\w*\s*::\s*)+[A-Za-z_]\w*|[A-Za-z_]\w*|\d+|\S", expr)
    for tok in tokens:
        if re.fullmatch(r"\d+", tok) or tok in "+-*/%()<>?:&|^~!" or tok in ("<<", ">>"):
            continue
        if re.match(r"[A-Za-z_]", tok):
            if RE_CONST_IDENT.match(tok):
                continue
            return False
        if tok in "+-*/%()<>?:&|^~!=":
            continue
        return False
    return True


def _loop_rules(rel: str, code: str, raw_nc: str) -> list[Violation]:
    out = []
    for m in re.finditer(r"\bfor\s*\(", code):
        hstart = m.end() - 1
        hend = _match_close(code, hstart, "(", ")")
        header = code[hstart + 1:hend]
        parts = split_top(header, ";")
        ln = _line_of(code, m.start())
        if len(parts) != 3:
            out.append(Violation(rel, ln, "loop-bound", "range-for / unparsable loop header: give it a constant bound"))
            continue
        init, cond, _ = parts
        var = None
        mi = re.search(r"([A-Za-z_]\w*)\s*=", init)
        if mi:
            var = mi.group(1)
        const = False
        mc = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*(<=|<|>=|>|!=)\s*(.+?)\s*", cond, re.S)
        if mc and (var is None or mc.group(1) == var):
            const = _is_const_expr(mc.group(3))
        if const:
            continue
        # the loop body must start with '#pragma HLS loop_tripcount' (before any nested loop)
        j = hend + 1
        while j < len(code) and code[j].isspace():
            j += 1
        if j >= len(code) or code[j] != "{":
            out.append(Violation(rel, ln, "loop-bound", f"loop bound '{cond.strip()}' is not a constant and the loop has no body block for a tripcount pragma"))
            continue
        bend = _match_close(code, j, "{", "}")
        nested = re.search(r"\b(for|while)\s*\(", code[j + 1:bend])
        region_end = j + 1 + nested.start() if nested else bend
        if not RE_TRIPCOUNT.search(raw_nc[j:region_end]):
            out.append(Violation(rel, ln, "loop-bound",
                                 f"loop bound '{cond.strip()}' is not a compile-time constant and the loop has no "
                                 "#pragma HLS loop_tripcount"))
    for m in re.finditer(r"\bwhile\s*\(", code):
        ln = _line_of(code, m.start())
        hend = _match_close(code, m.end() - 1, "(", ")")
        j = hend + 1
        while j < len(code) and code[j].isspace():
            j += 1
        if j < len(code) and code[j] == "{":
            bend = _match_close(code, j, "{", "}")
            nested = re.search(r"\b(for|while)\s*\(", code[j + 1:bend])
            region_end = j + 1 + nested.start() if nested else bend
            if RE_TRIPCOUNT.search(raw_nc[j:region_end]):
                continue
        out.append(Violation(rel, ln, "loop-bound", "while loop without #pragma HLS loop_tripcount"))
    return out


def _recursion_rules(funcs: list[_Func]) -> list[Violation]:
    names = {f.name for f in funcs}
    graph: dict[str, set[str]] = {}
    where: dict[str, _Func] = {}
    for f in funcs:
        body = f.code[f.body_start + 1:f.body_end]
        calls = {c.group(1) for c in RE_CALL.finditer(body)} & names
        graph.setdefault(f.name, set()).update(calls)
        where.setdefault(f.name, f)
    out = []
    # cycles: Tarjan's strongly connected components (iterative)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    counter = [0]
    sccs: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                sccs.append(comp)
    for comp in sccs:
        if len(comp) > 1 or comp[0] in graph.get(comp[0], set()):
            for name in sorted(comp):
                f = where[name]
                cyc = " -> ".join(sorted(comp) + [sorted(comp)[0]]) if len(comp) > 1 else f"{name} -> {name}"
                out.append(Violation(f.rel, f.line, "recursion", f"'{name}' is recursive ({cyc}): not synthesizable"))
    return out


def _interface_rules(funcs: list[_Func], raw: dict[str, str], top: str) -> list[Violation]:
    defs = [f for f in funcs if f.name == top]
    if not defs:
        return [Violation("firmware", 0, "interface", f"top function '{top}' is not defined in firmware/")]
    out = []
    for f in defs:
        params = []
        for p in split_top(f.params, ","):
            p = p.strip()
            if not p or p == "void":
                continue
            p = re.sub(r"\[[^\]]*\]", "", p)
            mm = re.search(r"([A-Za-z_]\w*)\s*$", p)
            if mm:
                params.append((mm.group(1), "stream" in p))
        body = raw[f.rel][f.body_start:f.body_end]
        pragmas = re.findall(r"#\s*pragma\s+HLS\s+INTERFACE\b([^\n]*)", body, re.IGNORECASE)
        ports: dict[str, list[str]] = {}
        for prag in pragmas:
            mp = re.search(r"\bport\s*=\s*(\w+)", prag)
            if mp:
                ports.setdefault(mp.group(1), []).append(prag)
        for p, is_stream in params:
            if p not in ports:
                out.append(Violation(f.rel, f.line, "interface", f"top argument '{p}' has no #pragma HLS INTERFACE port={p}"))
            elif is_stream and not any(re.search(r"\b(axis|ap_fifo)\b", prag) for prag in ports[p]):
                out.append(Violation(f.rel, f.line, "interface", f"stream argument '{p}' has no axis (or ap_fifo) INTERFACE pragma"))
        if not any(re.search(r"\bs_axilite\b", prag) for prag in ports.get("return", [])):
            out.append(Violation(f.rel, f.line, "interface", "top function has no '#pragma HLS INTERFACE s_axilite port=return'"))
    return out


def _basic_rules(files: dict[str, str], *, top: str = TOP) -> list[Violation]:
    """The synthesizable-subset rules (alloc .. interface) over {relative path: text}."""
    out: list[Violation] = []
    funcs: list[_Func] = []
    raw_nc: dict[str, str] = {}
    for rel, text in sorted(files.items()):
        nc = strip_comments(text)
        raw_nc[rel] = nc
        guard = guarded_lines(nc)
        code = blank_preprocessor(nc)
        # testbench-only regions take no part in the loop / call-graph rules either
        code_lines = code.split("\n")
        for k, g in enumerate(guard):
            if g:
                code_lines[k] = " " * len(code_lines[k])
        code = "\n".join(code_lines)
        out += _line_rules(rel, nc, guard)
        out += _loop_rules(rel, code, nc)
        funcs += _functions(rel, code)
    out += _recursion_rules(funcs)
    out += _interface_rules(funcs, raw_nc, top)
    return sorted(set(out), key=lambda v: (v.path, v.line, v.rule, v.message))


def _lint_all(files: dict[str, str], top: str):
    base = _basic_rules(files, top=top)
    extra, fw = analyse(files, top=top)
    return sorted(set(base) | set(extra), key=lambda v: (v.path, v.line, v.rule, v.message)), fw


def lint_sources(files: dict[str, str], *, top: str = TOP) -> list[Violation]:
    """Lint firmware sources given as {relative path: text}: every rule but ``multipliers`` (which compiles)."""
    return _lint_all(files, top)[0]


def lint_project(project_dir: str | Path, *, top: str = TOP) -> list[Violation]:
    """Lint ``PROJECT_DIR/firmware`` with every rule (``multipliers`` included); returns the violations (empty: clean)."""
    root = Path(project_dir)
    fw = root / "firmware"
    if not fw.is_dir():
        raise FileNotFoundError(f"{root} has no firmware/ directory (not an HLS project?)")
    files = {p.relative_to(root).as_posix(): p.read_text() for p in sorted(fw.rglob("*")) if p.suffix in SOURCE_SUFFIXES}
    out, fwi = _lint_all(files, top)
    out += lint_mult.multiplier_rules(root, fwi.direct_pipeline, {n for n, f in fwi.funcs.items() if f.inline}, fwi.calls)
    return sorted(set(out), key=lambda v: (v.path, v.line, v.rule, v.message))


def multiplier_counts(project_dir: str | Path) -> dict[str, int]:
    """Run-time multiplies per firmware function of an emitted project (flow/hls/lint_mult.py)."""
    return lint_mult.multiplier_counts(project_dir)


def multiplier_instances(project_dir: str | Path) -> dict[str, int]:
    """Multipliers hardware builds per firmware function: the counts, capped by ``ALLOCATION ... mul limit=N``
    (the once-per-op sequential functions share one multiplier; flow/hls/lint_mult.py)."""
    return lint_mult.multiplier_instances(project_dir)



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flow.hls.lint",
                                 description="Check an emitted HLS project's firmware for the synthesizable subset.")
    ap.add_argument("project_dir")
    ap.add_argument("--top", default=TOP, help=f"top function name (default {TOP})")
    args = ap.parse_args(argv)
    try:
        violations = lint_project(args.project_dir, top=args.top)
    except FileNotFoundError as exc:
        print(f"lint: {exc}", file=sys.stderr)
        return 2
    for v in violations:
        print(v)
    if violations:
        print(f"lint: {len(violations)} violation(s)", file=sys.stderr)
        return 1
    print(f"lint: {args.project_dir}: clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
