"""The lint's rules over pipelined loops, checked on the firmware text as Vitis HLS would see it.

Rules (flow/hls/lint.py lists them with the others):
  dependence  a memory stored and loaded in one pipelined iteration is named by a DEPENDENCE pragma of
              that loop; every DEPENDENCE pragma has a justification comment directly above it
  ports       per pipelined loop and physical memory (after ARRAY_PARTITION), reads / writes per
              iteration within the ports of its BIND_STORAGE type
  widths      no loop-carried counter wider than 16 bits in a pipelined loop (nor its induction
              variable), unless its line carries ``// lint: wide-counter <reason>``
  m_axi       no m_axi pointer dereference inside a pipelined loop nested in another loop of its function

How the text is read (a small C++ front end, enough for the emitted engine, not a compiler):
  * the synthesis view: comments stripped, ``#if`` regions evaluated with ``__SYNTHESIS__`` defined
    (and every ``#define`` that follows from it), other preprocessor lines blanked; ``#pragma HLS``
    lines kept as statements; offsets and line numbers preserved;
  * a pipelined loop is a ``for`` whose body holds ``#pragma HLS PIPELINE`` (not ``off``) among its
    direct statements; every loop inside it is unrolled (as Vitis does), each iteration walked with
    its loop variable bound when the trip count is a compile-time constant;
  * calls of ``#pragma HLS INLINE`` helpers are expanded, transitively: array, pointer and non-const
    reference parameters are bound to the caller's lvalue (``pe_w[c]`` stays ``pe_w`` with index c),
    by-value and const-reference parameters are locals (read once at the call);
  * an index is compile-time when it evaluates from literals, constants (``E::rows``, enums,
    ``static const``), template arguments, bound loop variables and const locals initialised from
    those; anything else is a run-time index and, into a partitioned dimension, reaches every partition;
  * both arms of an ``if`` with a run-time condition count as one (the larger), an ``if`` whose
    condition is compile-time counts its taken arm only; different predicates are never proven
    exclusive (Vitis does not either).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import product

from flow.hls.lint_common import (KEYWORDS, Violation, _functions, _line_of, _match_close, split_spans,
                                  strip_comments)
from flow.hls.lint_cexpr import evaluate

TOP = "vqhls_engine"
UNROLL_CAP = 4096                      # iterations walked one by one; above this a loop counts its body x trips
EXPAND_DEPTH = 16                      # INLINE helper expansion depth (recursion is its own rule)
COUNTER_BITS = 16                      # widest loop-carried counter a pipelined loop may keep
WAIVER = re.compile(r"//\s*lint:\s*wide-counter\b(.*)$")

RE_PRAGMA = re.compile(r"#\s*pragma\s+HLS\s+(\w+)(.*)", re.IGNORECASE)
RE_IDENT = re.compile(r"[A-Za-z_]\w*")
TYPE_KEYWORDS = {
    "unsigned", "signed", "int", "long", "short", "char", "bool", "void", "const", "static", "volatile",
    "constexpr", "typename", "auto", "struct", "class", "enum", "inline", "true", "false", "this", "template",
    "typedef", "using", "namespace", "break", "continue", "goto", "default", "nullptr", "NULL",
}
NOT_TYPES = KEYWORDS | {"return", "break", "continue", "goto", "case", "default", "delete", "throw", "else", "do",
                        "typedef", "using", "new"}
BUILTIN_WIDTH = {
    "bool": 1, "char": 8, "signed char": 8, "unsigned char": 8, "short": 16, "short int": 16, "signed short": 16,
    "unsigned short": 16, "unsigned short int": 16, "int": 32, "signed": 32, "signed int": 32, "unsigned": 32,
    "unsigned int": 32, "long": 64, "long int": 64, "unsigned long": 64, "unsigned long int": 64, "long long": 64,
    "long long int": 64, "unsigned long long": 64, "unsigned long long int": 64, "size_t": 64,
    "int8_t": 8, "uint8_t": 8, "int16_t": 16, "uint16_t": 16, "int32_t": 32, "uint32_t": 32, "int64_t": 64,
    "uint64_t": 64,
}
# ports of a BIND_STORAGE type: (reads, writes, total); None = unlimited
PORTS = {
    "ram_1p": (None, None, 1), "ram_2p": (None, None, 2), "ram_t2p": (None, None, 2), "ram_s2p": (1, 1, None),
    "ram_1wnr": (None, 1, None), "rom_1p": (1, 0, None), "rom_2p": (2, 0, None), "rom_np": (None, 0, None),
}
DEFAULT_STORAGE = "ram_2p"             # no BIND_STORAGE: the most Vitis infers on its own


# ---------------------------------------------------------------------------
# the synthesis view
# ---------------------------------------------------------------------------
def _cond(expr: str, defined: dict[str, str]) -> bool:
    e = re.sub(r"defined\s*\(\s*(\w+)\s*\)|defined\s+(\w+)",
               lambda m: "1" if (m.group(1) or m.group(2)) in defined else "0", expr)
    e = re.sub(r"__has_include\s*\([^)]*\)", "0", e)

    def res(n: str) -> int:
        v = defined.get(n)
        if v is None:
            return 0
        return int(v) if re.fullmatch(r"-?\d+", v.strip()) else 1
    return bool(evaluate(e, res))


def _view(nc: str, defined: dict[str, str], found: dict[str, str]) -> str:
    """Blank what synthesis does not see; keep '#pragma HLS' lines. Collects active #defines into found."""
    out = []
    stack: list[tuple[bool, bool]] = []      # (parent active, a branch was taken)
    active = True
    last_ifndef = None
    cont = False
    for line in nc.split("\n"):
        s = line.strip()
        if cont:
            cont = s.endswith("\\")
            out.append(" " * len(line))
            continue
        m = re.match(r"#\s*(\w+)\s*(.*)", s)
        if not m:
            out.append(line if active else " " * len(line))
            continue
        cont = s.endswith("\\")
        d, arg = m.group(1), m.group(2).rstrip("\\").strip()
        keep = False
        if d in ("if", "ifdef", "ifndef"):
            name = arg.split()[0] if arg.split() else ""
            c = (name in defined) if d == "ifdef" else (name not in defined) if d == "ifndef" else _cond(arg, defined)
            stack.append((active, c))
            active = active and c
        elif d == "elif" and stack:
            parent, taken = stack[-1]
            c = not taken and _cond(arg, defined)
            stack[-1] = (parent, taken or c)
            active = parent and c
        elif d == "else" and stack:
            parent, taken = stack[-1]
            stack[-1] = (parent, True)
            active = parent and not taken
        elif d == "endif" and stack:
            active = stack.pop()[0]
        elif d == "define" and active:
            mm = re.match(r"(\w+)(?:\s+(.*))?", arg)
            if mm and mm.group(1) != last_ifndef:          # an include guard defines nothing of interest
                found[mm.group(1)] = (mm.group(2) or "1").strip()
        elif d == "pragma" and active:
            keep = bool(re.match(r"#\s*pragma\s+HLS\b", s, re.IGNORECASE))
        last_ifndef = arg.split()[0] if d == "ifndef" and arg.split() else None
        out.append(line if keep else " " * len(line))
    return "\n".join(out)


def synthesis_views(files: dict[str, str]) -> dict[str, str]:
    """{rel: code} as synthesis reads it (see the module docstring); same offsets as the input."""
    ncs = {rel: strip_comments(t) for rel, t in files.items()}
    defined = {"__SYNTHESIS__": "1"}
    for _ in range(4):
        found: dict[str, str] = {}
        for rel in sorted(ncs):
            _view(ncs[rel], defined, found)
        new = {**found, **defined}
        if new == defined:
            break
        defined = new
    return {rel: _view(nc, defined, {}) for rel, nc in ncs.items()}


def _blank_pragmas(code: str) -> str:
    return re.sub(r"(?m)^[ \t]*#[^\n]*", lambda m: " " * len(m.group(0)), code)


# ---------------------------------------------------------------------------
# statements
# ---------------------------------------------------------------------------
@dataclass
class Node:
    kind: str                          # block pragma for while do if switch simple
    pos: int
    end: int
    label: str | None = None
    head: tuple = ()                   # for: (init, cond, step) spans; if/while/switch: (cond span,)
    body: "Node | None" = None
    els: "Node | None" = None
    children: list = field(default_factory=list)


_LABEL = re.compile(r"([A-Za-z_]\w*)\s*:(?!:)")
_KW = re.compile(r"(for|while|if|switch|do)\b")


def _ws(code: str, i: int, end: int) -> int:
    while i < end and code[i].isspace():
        i += 1
    return i


def parse_block(code: str, i: int, end: int) -> list[Node]:
    out = []
    while True:
        i = _ws(code, i, end)
        if i >= end:
            return out
        if code[i] == ";":
            i += 1
            continue
        node, i = parse_stmt(code, i, end)
        if node is not None:
            out.append(node)


def parse_stmt(code: str, i: int, end: int) -> tuple[Node | None, int]:
    i = _ws(code, i, end)
    if i >= end:
        return None, end
    c = code[i]
    if c == "#":
        j = code.find("\n", i)
        j = end if j < 0 or j > end else j
        return Node("pragma", i, j), j
    if c == "{":
        j = min(_match_close(code, i, "{", "}"), end - 1)
        return Node("block", i, j + 1, children=parse_block(code, i + 1, j)), j + 1
    m = _LABEL.match(code, i)
    if m and m.group(1) not in ("default", "public", "private", "protected"):
        if m.group(1) == "case":
            pass
        else:
            node, j = parse_stmt(code, m.end(), end)
            if node is not None:
                node.label = m.group(1)
            return node, j
    if code.startswith("case", i) and not (i + 4 < end and (code[i + 4].isalnum() or code[i + 4] == "_")) or \
            code.startswith("default", i) and code[_ws(code, i + 7, end):_ws(code, i + 7, end) + 1] == ":":
        k = i
        while k < end:
            if code[k] == ":" and code[k + 1:k + 2] != ":" and code[k - 1] != ":":
                break
            k += 1
        return None, k + 1
    m = _KW.match(code, i)
    if m:
        kw = m.group(1)
        j = _ws(code, m.end(), end)
        if kw == "do":
            body, j = parse_stmt(code, j, end)
            j = _ws(code, j, end)
            cond = (j, j)
            if code.startswith("while", j):
                p = _ws(code, j + 5, end)
                q = _match_close(code, p, "(", ")")
                cond = (p + 1, q)
                j = q + 1
            j = _ws(code, j, end)
            if j < end and code[j] == ";":
                j += 1
            return Node("while", i, j, head=(cond,), body=body), j
        if j < end and code[j] == "(":
            q = _match_close(code, j, "(", ")")
            if kw == "for":
                parts, k = [], j + 1
                depth = 0
                start = k
                for t in range(j + 1, q):
                    ch = code[t]
                    if ch in "([{":
                        depth += 1
                    elif ch in ")]}":
                        depth -= 1
                    elif ch == ";" and depth == 0:
                        parts.append((start, t))
                        start = t + 1
                parts.append((start, q))
                body, k = parse_stmt(code, q + 1, end)
                return Node("for", i, k, head=tuple(parts), body=body), k
            body, k = parse_stmt(code, q + 1, end)
            node = Node(kw, i, k, head=((j + 1, q),), body=body)
            if kw == "if":
                k2 = _ws(code, k, end)
                if code.startswith("else", k2) and not (code[k2 + 4:k2 + 5].isalnum() or code[k2 + 4:k2 + 5] == "_"):
                    node.els, k = parse_stmt(code, k2 + 4, end)
                    node.end = k
            return node, k
    # a simple statement: up to ';' at depth 0
    depth = 0
    k = i
    while k < end:
        ch = code[k]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                break
        elif ch == ";" and depth == 0:
            break
        k += 1
    return Node("simple", i, k), min(k + 1, end)


# ---------------------------------------------------------------------------
# the firmware's symbols
# ---------------------------------------------------------------------------
@dataclass
class Mem:
    name: str
    rel: str
    line: int
    type: str
    dims: list                         # int | None per dimension
    parts: dict = field(default_factory=dict)   # dim (0-based) -> (kind, factor)
    storage: tuple | None = None       # (type, impl)

    @property
    def register(self) -> bool:
        return bool(self.dims) and all(self.parts.get(d, ("",))[0] == "complete" for d in range(len(self.dims)))

    def binding(self) -> str:
        return (self.storage[0] if self.storage else DEFAULT_STORAGE).lower()


@dataclass
class Param:
    name: str
    type: str
    ref: bool
    const: bool
    array: bool
    ptr: bool


@dataclass
class Func:
    name: str
    rel: str
    line: int
    params: list
    tparams: list
    body_start: int
    body_end: int
    inline: bool
    expr: str | None                   # body is a single 'return EXPR;'
    node: Node | None = None
    has_pipeline: bool = False         # a pipelined loop in it or in an INLINE helper it calls


def _split_params(text: str) -> list[str]:
    """The non-empty, non-``void`` parameters (or template arguments) of a list."""
    parts = (text[a:b].strip() for a, b in split_spans(text, angles=True))
    return [p for p in parts if p and p != "void"]


def _param(text: str) -> Param | None:
    text = text.split("=")[0].strip()
    m = re.match(r"(.*?)([A-Za-z_]\w*)\s*((?:\[[^\]]*\]\s*)*)$", text, re.S)
    if not m:
        return None
    typ = m.group(1).strip()
    return Param(m.group(2), typ.replace("&", "").replace("*", "").strip(), "&" in typ,
                 bool(re.search(r"\bconst\b", typ)), bool(m.group(3).strip()), "*" in typ)


class Firmware:
    """Symbols and functions of the firmware sources (synthesis view)."""

    def __init__(self, files: dict[str, str], top: str = TOP):
        self.raw = files
        self.code = synthesis_views(files)
        self.plain = {rel: _blank_pragmas(c) for rel, c in self.code.items()}
        self.top = top
        self.consts: dict[str | None, dict[str, str]] = {}
        self.typedefs: dict[str | None, dict[str, str]] = {}
        self.members: dict[str, dict[str, str]] = {}
        self.scopes: dict[str, str] = {}        # name -> 'struct' | 'ns'
        self.ns_depth: dict[str, int] = {}
        self.mems: dict[str, Mem] = {}
        self.globals: dict[str, tuple[str, str, int]] = {}
        self.funcs: dict[str, Func] = {}
        self._memo: dict[tuple, int | None] = {}
        for rel in sorted(self.code):
            self._collect(rel)
        self._memo.clear()
        for mem in self.mems.values():
            mem.dims = [self.value(d, None) for d in mem.dims]
        self._pragmas()
        self.maxi = self._maxi()
        self._mark_pipelines()

    # -- collection --------------------------------------------------------
    def _collect(self, rel: str) -> None:
        code = self.plain[rel]
        funcs = _functions(rel, code)
        ranges = []
        for m in re.finditer(r"\bnamespace\s+(\w+)\s*\{", code):
            ranges.append((m.end() - 1, _match_close(code, m.end() - 1, "{", "}"), "ns", m.group(1)))
        for m in re.finditer(r"\b(?:struct|class)\s+(\w+)\s*(?::[^{;()]*)?\{", code):
            ranges.append((m.end() - 1, _match_close(code, m.end() - 1, "{", "}"), "struct", m.group(1)))
        for a, b, kind, name in ranges:
            self.scopes.setdefault(name, kind)
            if kind == "ns":
                self.ns_depth[name] = sum(1 for a2, b2, k2, _ in ranges if k2 == "ns" and a2 < a and b < b2)
        outer = list(code)
        for f in funcs:
            for k in range(f.body_start + 1, f.body_end):
                if outer[k] != "\n":
                    outer[k] = " "
        outer_s = "".join(outer)

        def scope_at(pos: int) -> tuple[str | None, str | None]:
            inner = None
            for a, b, kind, name in ranges:
                if a < pos < b and (inner is None or a > inner[0]):
                    inner = (a, kind, name)
            return (inner[1], inner[2]) if inner else (None, None)

        for m in re.finditer(r"\benum\s+(?:class\s+)?\w*\s*(?::\s*\w+\s*)?\{([^}]*)\}", outer_s):
            _, sc = scope_at(m.start())
            val = -1
            for item in m.group(1).split(","):
                mm = re.match(r"\s*(\w+)\s*(?:=\s*(.+))?", item, re.S)
                if not mm:
                    continue
                if mm.group(2):
                    v = evaluate(mm.group(2), lambda n: None)
                    val = v if v is not None else val + 1
                else:
                    val += 1
                self.consts.setdefault(sc, {})[mm.group(1)] = str(val)
        start = 0
        for k, ch in enumerate(outer_s + ";"):
            if ch not in ";{}":
                continue
            seg = outer_s[start:k]
            segpos = start
            start = k + 1
            if ch == "{" or not seg.strip():
                continue
            kind, sc = scope_at(segpos + len(seg) - len(seg.lstrip()))
            self._declaration(rel, code, seg.strip(), segpos + len(seg) - len(seg.lstrip()), kind, sc)
        for f in funcs:
            self._function(rel, f)

    def _declaration(self, rel: str, code: str, seg: str, pos: int, kind: str | None, sc: str | None) -> None:
        if seg.startswith(("using", "template", "return", "namespace", "extern \"")):
            return
        if seg.startswith("typedef"):
            m = re.match(r"typedef\s+(.+?)\s*\b(\w+)\s*$", seg, re.S)
            if m and "(" not in seg:
                self.typedefs.setdefault(sc, {})[m.group(2)] = " ".join(m.group(1).split())
            return
        m = re.match(r"(?:static\s+)?(?:const|constexpr)\s+(?:static\s+)?(.+?)\s+(\w+)\s*=\s*(.+)$", seg, re.S)
        if m:
            self.consts.setdefault(sc, {})[m.group(2)] = m.group(3).strip()
            return
        if "(" in seg.split("=")[0] and not re.search(r"\[", seg.split("=")[0]):
            return
        m = re.match(r"(static\s+)?(.+?)\s+(\w+)\s*((?:\[[^\]]*\]\s*)+)(?:=.*)?$", seg, re.S)
        if m and kind != "struct":
            dims = re.findall(r"\[([^\]]*)\]", m.group(4))
            self.mems[m.group(3)] = Mem(m.group(3), rel, _line_of(code, pos), " ".join(m.group(2).split()),
                                        dims)
            return
        m = re.match(r"(static\s+)?(.+?)\s+(\w+(?:\s*\[[^\]]*\])?(?:\s*,\s*\w+(?:\s*\[[^\]]*\])?)*)\s*(?:=.*)?$",
                     seg, re.S)
        if not m or m.group(2).split()[0] in NOT_TYPES:
            return
        typ = " ".join(m.group(2).split())
        for name in re.findall(r"(\w+)(?:\s*\[[^\]]*\])?", m.group(3)):
            if kind == "struct":
                self.members.setdefault(sc, {})[name] = typ
            else:
                self.globals[name] = (typ, rel, _line_of(code, pos))

    def _function(self, rel: str, f) -> None:
        code = self.code[rel]
        body = code[f.body_start:f.body_end + 1]
        inline = bool(re.search(r"#\s*pragma\s+HLS\s+INLINE\b(?!\s+off)", body, re.IGNORECASE))
        plain = _blank_pragmas(body)
        m = re.fullmatch(r"\{\s*return\s+([^;]*);\s*\}", plain, re.S)
        # template parameters: 'template <...>' opening the declaration
        plain = self.plain[rel]
        names = [m2.start() for m2 in re.finditer(r"\b" + re.escape(f.name) + r"\s*\(", plain[:f.body_start])]
        tparams = []
        if names:
            npos = names[-1]
            seg = max(plain.rfind(";", 0, npos), plain.rfind("}", 0, npos), plain.rfind("{", 0, npos)) + 1
            mt = re.search(r"\btemplate\s*<", plain[seg:npos])
            if mt:
                q = _match_angle(plain, seg + mt.end() - 1)
                if q is not None:
                    tparams = [re.findall(r"\w+", p)[-1] for p in _split_params(plain[seg + mt.end():q])
                               if re.findall(r"\w+", p)]
        params = [p for p in (_param(s) for s in _split_params(f.params)) if p]
        fn = Func(f.name, rel, f.line, params, tparams, f.body_start, f.body_end, inline,
                  m.group(1).strip() if m else None)
        fn.node = Node("block", f.body_start, f.body_end + 1,
                       children=parse_block(code, f.body_start + 1, f.body_end))
        # static locals are memories (one object for every call)
        for ms in re.finditer(r"\bstatic\s+(?!const\b)([\w:<>, ]+?)\s+(\w+)\s*((?:\[[^\]]*\]\s*)+)",
                              self.plain[rel][f.body_start:f.body_end]):
            dims = re.findall(r"\[([^\]]*)\]", ms.group(3))
            self.mems[ms.group(2)] = Mem(ms.group(2), rel, _line_of(code, f.body_start + ms.start()),
                                         ms.group(1).strip(), dims)
        if f.name not in self.funcs or (self.funcs[f.name].node is None):
            self.funcs[f.name] = fn

    def _pragmas(self) -> None:
        for rel, code in self.code.items():
            for m in RE_PRAGMA.finditer(code):
                kind = m.group(1).upper()
                opts = dict(re.findall(r"(\w+)\s*=\s*([\w:]+)", m.group(2)))
                words = set(re.findall(r"\b(complete|cyclic|block)\b", m.group(2)))
                var = opts.get("variable")
                mem = self.mems.get(var) if var else None
                if mem is None:
                    continue
                if kind == "ARRAY_PARTITION":
                    ptype = opts.get("type") or (sorted(words)[0] if words else "complete")
                    dim = self.value(opts.get("dim", "1"), None)
                    factor = self.value(opts["factor"], None) if "factor" in opts else None
                    dims = range(len(mem.dims)) if dim == 0 else [dim - 1] if dim else []
                    for d in dims:
                        mem.parts[d] = (ptype, factor)
                elif kind == "BIND_STORAGE":
                    mem.storage = (opts.get("type", DEFAULT_STORAGE), opts.get("impl", ""))

    def _maxi(self) -> dict[str, set[str]]:
        """m_axi pointer names per function: the top's m_axi ports, followed through call arguments."""
        out: dict[str, set[str]] = {name: set() for name in self.funcs}
        top = self.funcs.get(self.top)
        if top is None:
            return out
        body = self.code[top.rel][top.body_start:top.body_end]
        for m in RE_PRAGMA.finditer(body):
            if m.group(1).upper() == "INTERFACE" and re.search(r"\bm_axi\b", m.group(2)):
                p = re.search(r"\bport\s*=\s*(\w+)", m.group(2))
                if p:
                    out[self.top].add(p.group(1))
        changed = True
        while changed:
            changed = False
            for name, f in self.funcs.items():
                if not out[name]:
                    continue
                code = self.plain[f.rel]
                for m in re.finditer(r"\b(\w+)\s*(?:<[^<>;()]*>)?\s*\(", code[f.body_start:f.body_end]):
                    g = self.funcs.get(m.group(1))
                    if g is None:
                        continue
                    a = f.body_start + m.end() - 1
                    args = _split_params(code[a + 1:_match_close(code, a, "(", ")")])
                    for p, arg in zip(g.params, args):
                        r = re.match(r"\(?\s*(\w+)\b(?!\s*\[)", arg)
                        if r and r.group(1) in out[name] and p.name not in out[g.name] and (p.ptr or p.array):
                            out[g.name].add(p.name)
                            changed = True
        return out

    def _mark_pipelines(self) -> None:
        direct = {n: any(_pipelined(self.code[f.rel], s) for s in _loops(f.node)) for n, f in self.funcs.items()}
        calls = {n: {m.group(0) for m in RE_IDENT.finditer(self.plain[f.rel][f.body_start:f.body_end])}
                 & set(self.funcs) for n, f in self.funcs.items()}
        changed = True
        while changed:
            changed = False
            for n, f in self.funcs.items():
                v = direct[n] or any(self.funcs[c].inline and direct[c] for c in calls[n])
                if v and not direct[n]:
                    direct[n] = True
                    changed = True
        self.direct_pipeline = {n for n, f in self.funcs.items()
                                if any(_pipelined(self.code[f.rel], s) for s in _loops(f.node))}
        for n, f in self.funcs.items():
            f.has_pipeline = direct[n]
        self.calls = calls

    # -- constants and types ------------------------------------------------
    def resolve_scope(self, name: str) -> str | None:
        seen = 0
        while name not in self.scopes and seen < 8:
            seen += 1
            t = None
            for defs in self.typedefs.values():
                if name in defs:
                    t = defs[name]
                    break
            if t is None:
                return None
            name = t.split("::")[-1].strip()
        return name if name in self.scopes else None

    def _ns_order(self) -> list:
        return [None] + sorted((n for n, k in self.scopes.items() if k == "ns"), key=lambda n: self.ns_depth.get(n, 0))

    def const(self, name: str, scope: str | None) -> int | None:
        """Value of a (possibly qualified) constant seen from struct/namespace `scope`."""
        key = (name, scope)
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = None                       # recursion guard
        val = None
        if "::" in name:
            head, _, tail = name.rpartition("::")
            sc = self.resolve_scope(head.split("::")[-1].strip())
            if sc is not None and tail in self.consts.get(sc, {}):
                val = self.value(self.consts[sc][tail], sc)
            elif sc is not None and self.scopes.get(sc) == "ns":
                val = self.const(tail, None)
        else:
            for sc in ([scope] if scope else []) + self._ns_order():
                if name in self.consts.get(sc, {}):
                    val = self.value(self.consts[sc][name], sc)
                    break
        self._memo[key] = val
        return val

    def value(self, expr: str, scope: str | None) -> int | None:
        return evaluate(expr, lambda n: self.const(n, scope))

    def typedef(self, name: str, scope: str | None) -> tuple[str, str | None] | None:
        if "::" in name:
            head, _, tail = name.rpartition("::")
            sc = self.resolve_scope(head.split("::")[-1].strip())
            if sc is not None and tail in self.typedefs.get(sc, {}):
                return self.typedefs[sc][tail], sc
            return None
        for sc in ([scope] if scope else []) + self._ns_order():
            if name in self.typedefs.get(sc, {}):
                return self.typedefs[sc][name], sc
        return None

    def width(self, typ: str, scope: str | None = None, depth: int = 0) -> int | None:
        """Bit width of a scalar type (None: unknown / not a scalar)."""
        t = re.sub(r"\b(const|volatile|static|inline|constexpr|typename|register)\b", " ", typ)
        t = " ".join(t.replace("&", " ").split())
        m = re.fullmatch(r"(?:\w+\s*::\s*)*ap_u?int\s*<(.+)>", t)
        if m:
            return self.value(m.group(1), scope)
        m = re.fullmatch(r"(?:\w+\s*::\s*)*ap_u?fixed\s*<([^,>]+).*>", t)
        if m:
            return self.value(m.group(1), scope)
        if t in BUILTIN_WIDTH:
            return BUILTIN_WIDTH[t]
        if depth < 8 and re.fullmatch(r"(?:\w+\s*::\s*)*\w+", t):
            td = self.typedef(t.replace(" ", ""), scope)
            if td:
                return self.width(td[0], td[1], depth + 1)
        return None

    def struct_of(self, typ: str, depth: int = 0) -> str | None:
        t = " ".join(re.sub(r"\b(const|volatile|static|typename|struct)\b", " ", typ).replace("&", " ").split())
        name = t.split("::")[-1].strip()
        if name in self.members:
            return name
        if depth < 8:
            td = self.typedef(t.replace(" ", ""), None)
            if td:
                return self.struct_of(td[0], depth + 1)
        return None

    def member_type(self, typ: str, path: list[str]) -> str | None:
        for mname in path:
            st = self.struct_of(typ)
            if st is None or mname not in self.members.get(st, {}):
                return None
            typ = self.members[st][mname]
        return typ


def _loops(node: Node | None):
    """Every for node under `node` (not through calls)."""
    if node is None:
        return
    if node.kind == "for":
        yield node
    for ch in node.children:
        yield from _loops(ch)
    yield from _loops(node.body)
    yield from _loops(node.els)


def _direct_pragmas(code: str, node: Node) -> list[tuple[int, str]]:
    body = node.body
    if body is None:
        return []
    if body.kind == "pragma":
        return [(body.pos, code[body.pos:body.end])]
    if body.kind != "block":
        return []
    return [(c.pos, code[c.pos:c.end]) for c in body.children if c.kind == "pragma"]


def _pipelined(code: str, node: Node) -> bool:
    return any(re.match(r"#\s*pragma\s+HLS\s+PIPELINE\b(?!\s+off)", t, re.IGNORECASE) for _, t in _direct_pragmas(code, node))


def _unroll(code: str, node: Node) -> tuple[bool, int | None]:
    for _, t in _direct_pragmas(code, node):
        m = re.match(r"#\s*pragma\s+HLS\s+UNROLL\b(.*)", t, re.IGNORECASE)
        if m:
            f = re.search(r"factor\s*=\s*(\d+)", m.group(1))
            return True, int(f.group(1)) if f else None
    return False, None


# ---------------------------------------------------------------------------
# the walk
# ---------------------------------------------------------------------------
@dataclass(eq=False)
class Var:
    name: str
    type: str
    value: int | None = None
    pipe: int | None = None            # the pipelined loop it was declared in
    ref: "Ref | None" = None
    array: bool = False
    maxi: bool = False
    rel: str = ""
    line: int = 0


@dataclass
class Ref:
    mem: Mem | None                    # a memory, or
    var: Var | None                    # a variable (scalar, struct, m_axi pointer)
    prefix: list                       # indices already applied (int | None)
    members: list                      # member path already applied


@dataclass(eq=False)
class LoopRec:
    id: int
    rel: str
    pos: int
    line: int
    label: str
    func: str
    nested: bool
    pragmas: list
    reads: set = field(default_factory=set)
    writes: set = field(default_factory=set)
    ports: Counter = field(default_factory=Counter)
    runtime_parts: set = field(default_factory=set)
    incs: dict = field(default_factory=dict)
    derefs: list = field(default_factory=list)
    ivar: tuple | None = None


@dataclass
class Frame:
    func: Func
    rel: str
    code: str
    scopes: list


class Walker:
    def __init__(self, fw: Firmware):
        self.fw = fw
        self.loops: list[LoopRec] = []
        self.loop: LoopRec | None = None
        self.outer: list = []            # enclosing (non-pipelined) loops of the walked function
        self.depth = 0
        self.next_id = 0

    # -- names --------------------------------------------------------------
    def lookup(self, fr: Frame, name: str) -> Var | Mem | None:
        for sc in reversed(fr.scopes):
            if name in sc:
                return sc[name]
        if name in self.fw.mems:
            return self.fw.mems[name]
        g = self.fw.globals.get(name)
        if g:
            return Var(name, g[0], rel=g[1], line=g[2])
        return None

    def resolver(self, fr: Frame):
        def res(n: str) -> int | None:
            if "::" not in n:
                for sc in reversed(fr.scopes):
                    if n in sc:
                        v = sc[n]
                        return v.value if isinstance(v, Var) else None
            return self.fw.const(n, None)
        return res

    def expand_expr(self, text: str) -> str:
        for _ in range(8):
            m = None
            for m2 in re.finditer(r"\b(\w+)\s*(<[^<>;()]*(?:<[^<>;()]*>[^<>;()]*)*>)?\s*\(", text):
                f = self.fw.funcs.get(m2.group(1))
                if f is not None and f.expr is not None and f.inline:
                    m = m2
                    break
            if m is None:
                return text
            f = self.fw.funcs[m.group(1)]
            a = m.end() - 1
            b = _match_close(text, a, "(", ")")
            args = _split_params(text[a + 1:b])
            targs = _split_params(m.group(2)[1:-1]) if m.group(2) else []
            body = f.expr
            for p, arg in list(zip([p.name for p in f.params], args)) + list(zip(f.tparams, targs)):
                body = re.sub(r"(?<![\w.])" + re.escape(p) + r"\b", lambda _m, a=arg: "(" + a + ")", body)
            text = text[:m.start()] + "(" + body + ")" + text[b + 1:]
        return text

    def val(self, fr: Frame, text: str) -> int | None:
        if not text.strip():
            return None
        return evaluate(self.expand_expr(text), self.resolver(fr))

    # -- entry ----------------------------------------------------------------
    def walk_function(self, f: Func) -> None:
        maxi = self.fw.maxi.get(f.name, set())
        params = {p.name: Var(p.name, p.type, array=p.array, maxi=p.name in maxi, rel=f.rel, line=f.line)
                  for p in f.params}
        fr = Frame(f, f.rel, self.fw.code[f.rel], [params])
        self.outer = []
        self.loop = None
        self.walk(fr, f.node)

    # -- statements -----------------------------------------------------------
    def walk(self, fr: Frame, node: Node | None) -> Counter:
        if node is None:
            return Counter()
        k = node.kind
        if k == "block":
            fr.scopes.append({})
            total: Counter = Counter()
            for ch in node.children:
                total.update(self.walk(fr, ch))
            fr.scopes.pop()
            return total
        if k == "pragma":
            return Counter()
        if k == "simple":
            return self.simple(fr, node.pos, node.end)
        if k == "if":
            a, b = node.head[0]
            c = self.scan(fr, a, b)
            v = self.val(fr, fr.code[a:b]) if self.loop is not None else None
            if v is not None:
                c.update(self.walk(fr, node.body if v else node.els))
                return c
            t = self.walk(fr, node.body)
            e = self.walk(fr, node.els)
            c.update(Counter({key: max(t.get(key, 0), e.get(key, 0)) for key in set(t) | set(e)}))
            return c
        if k in ("while", "switch"):
            a, b = node.head[0]
            c = self.scan(fr, a, b)
            if k == "while" and self.loop is None:
                self.outer.append(node)
                c.update(self.walk(fr, node.body))
                self.outer.pop()
            else:
                c.update(self.walk(fr, node.body))
            return c
        if k == "for":
            return self.walk_for(fr, node)
        return Counter()

    def walk_for(self, fr: Frame, node: Node) -> Counter:
        code = fr.code
        init, cond, step = (node.head + ((node.pos, node.pos),) * 3)[:3]
        fr.scopes.append({})
        decl, _ = self.declare(fr, init[0], init[1])
        mi = re.match(r"\s*(\w+)\s*=", code[init[0]:init[1]])
        var = decl[0] if decl else (mi.group(1) if mi else None)
        ivar = fr.scopes[-1].get(var) if var else None
        if ivar is None and var:
            outer_v = self.lookup(fr, var)
            ivar = outer_v if isinstance(outer_v, Var) else None
        unroll, factor = _unroll(code, node)
        try:
            if self.loop is not None or (unroll and factor is None):
                values = self.trip_values(fr, var, init, cond, step)
                if var and values is not None and len(values) <= UNROLL_CAP:
                    total: Counter = Counter()
                    for v in values:
                        fr.scopes.append({var: Var(var, ivar.type if ivar else "", value=v, pipe=self.loop and self.loop.id)})
                        total.update(self.walk(fr, node.body))
                        fr.scopes.pop()
                    return total
                if var and var in fr.scopes[-1]:
                    fr.scopes[-1][var].value = None
                c = self.walk(fr, node.body)
                n = len(values) if values is not None else (factor or 1)
                return Counter({key: cnt * n for key, cnt in c.items()})
            if _pipelined(code, node):
                rec = LoopRec(self.next_id, fr.rel, node.pos, _line_of(code, node.pos), node.label or "<unlabelled>",
                              fr.func.name, bool(self.outer), _direct_pragmas(code, node))
                self.next_id += 1
                if ivar is not None:
                    rec.ivar = (ivar.name, ivar.type, _line_of(code, node.pos), ivar)
                    if var in fr.scopes[-1]:
                        fr.scopes[-1][var].pipe = rec.id
                self.loop = rec
                try:
                    rec.ports = self.walk(fr, node.body)
                finally:
                    self.loop = None
                self.loops.append(rec)
                return Counter()
            self.outer.append(node)
            try:
                self.walk(fr, node.body)
            finally:
                self.outer.pop()
            return Counter()
        finally:
            fr.scopes.pop()

    def trip_values(self, fr: Frame, var: str | None, init, cond, step) -> list[int] | None:
        if not var:
            return None
        code = fr.code
        mi = re.search(r"\b" + re.escape(var) + r"\s*=\s*(.+)$", code[init[0]:init[1]], re.S)
        start = self.val(fr, mi.group(1)) if mi else None
        mc = re.fullmatch(r"\s*" + re.escape(var) + r"\s*(<=|<|>=|>|!=)\s*(.+?)\s*", code[cond[0]:cond[1]], re.S)
        bound = self.val(fr, mc.group(2)) if mc else None
        st = code[step[0]:step[1]].strip()
        inc = None
        if st in (var + "++", "++" + var):
            inc = 1
        elif st in (var + "--", "--" + var):
            inc = -1
        else:
            ms = re.fullmatch(re.escape(var) + r"\s*(\+=|-=)\s*(.+)", st, re.S)
            if ms:
                d = self.val(fr, ms.group(2))
                inc = None if d is None else (d if ms.group(1) == "+=" else -d)
        if start is None or bound is None or not inc:
            return None
        op = mc.group(1)
        test = {"<": lambda x: x < bound, "<=": lambda x: x <= bound, ">": lambda x: x > bound,
                ">=": lambda x: x >= bound, "!=": lambda x: x != bound}[op]
        out, x = [], start
        while test(x):
            out.append(x)
            if len(out) > UNROLL_CAP:
                return out
            x += inc
        return out

    # -- declarations -----------------------------------------------------------
    def declare(self, fr: Frame, a: int, b: int) -> tuple[list[str], Counter]:
        """Declarations in code[a:b] into the innermost scope: (their names, the accesses of the initialisers)."""
        code = fr.code
        text = code[a:b]
        acc: Counter = Counter()
        m = re.match(r"\s*((?:(?:static|const|constexpr|volatile|register)\s+)*)", text)
        i = m.end()
        quals = m.group(1).split()
        t0 = i
        mb = re.match(r"(?:unsigned|signed|long|short)(?:\s+(?:int|long|char|short))*\b", text[i:])
        if mb:
            i += mb.end()
        else:
            while True:
                mm = RE_IDENT.match(text, i)
                if not mm:
                    return [], acc
                i = mm.end()
                j = _ws(text, i, len(text))
                if j < len(text) and text[j] == "<":
                    q = _match_angle(text, j)
                    if q is None:
                        return [], acc
                    i = q + 1
                    j = _ws(text, i, len(text))
                if text.startswith("::", j):
                    i = _ws(text, j + 2, len(text))
                    continue
                break
        typ = text[t0:i].strip()
        first = typ.split("<")[0].split("::")[0].strip()
        if not typ or first in NOT_TYPES:
            return [], acc
        mc = re.match(r"\s*const\b", text[i:])
        if mc:
            quals.append("const")
            i += mc.end()
        if not re.match(r"\s*[&*]*\s*[A-Za-z_]\w*\s*([=;,\[({]|$)", text[i:]):
            return [], acc
        const = "const" in quals or "constexpr" in quals
        static = "static" in quals
        names = []
        for pa, pb in _split_params_pos(code, a + i, b):
            ptxt = code[pa:pb]
            md = re.match(r"\s*([&*]*)\s*([A-Za-z_]\w*)\s*((?:\[[^\]]*\]\s*)*)", ptxt)
            if not md:
                continue
            name = md.group(2)
            init_a = pa + md.end()
            init_txt = code[init_a:pb]
            ia = iend = None
            mi = re.match(r"\s*=\s*", init_txt)
            if mi:
                ia, iend = init_a + mi.end(), pb
            elif re.match(r"\s*[({]", init_txt):
                ia = init_a + len(init_txt) - len(init_txt.lstrip()) + 1
                iend = max(ia, pb - 1)
            names.append(name)
            if static and md.group(3) and name in self.fw.mems:
                continue
            v = Var(name, typ, pipe=self.loop.id if self.loop else None, array=bool(md.group(3)),
                    rel=fr.rel, line=_line_of(code, pa))
            if ia is not None:
                if "&" in md.group(1):
                    v.ref = self.lvalue(fr, ia, iend)
                if v.ref is None:
                    acc.update(self.scan(fr, ia, iend))
                    if const and not v.array:
                        v.value = self.val(fr, code[ia:iend])
            fr.scopes[-1][name] = v
        return names, acc

    def simple(self, fr: Frame, a: int, b: int) -> Counter:
        names, acc = self.declare(fr, a, b)
        if names:
            return acc
        return self.scan(fr, a, b)

    # -- expressions ---------------------------------------------------------------
    def lvalue(self, fr: Frame, a: int, b: int) -> Ref | None:
        """code[a:b] as 'NAME[i]...[.member...]' bound to a memory / variable, else None."""
        code = fr.code
        m = re.match(r"\s*\(?\s*([A-Za-z_]\w*)", code[a:b])
        if not m:
            return None
        k = a + m.end(1)
        tgt = self.lookup(fr, m.group(1))
        if tgt is None:
            return None
        idx = []
        while True:
            k2 = _ws(code, k, b)
            if k2 < b and code[k2] == "[":
                e = _match_close(code, k2, "[", "]")
                idx.append(self.val(fr, code[k2 + 1:e]))
                k = e + 1
                continue
            break
        members = []
        while True:
            mm = re.match(r"\s*\.\s*([A-Za-z_]\w*)(?!\s*\()", code[k:b])
            if not mm:
                break
            members.append(mm.group(1))
            k += mm.end()
        if code[k:b].strip().strip(")").strip():
            return None
        if isinstance(tgt, Mem):
            return Ref(tgt, None, idx, members)
        if tgt.ref is not None:
            r = tgt.ref
            return Ref(r.mem, r.var, r.prefix + idx, r.members + members)
        return Ref(None, tgt, idx, members)

    def scan(self, fr: Frame, a: int, b: int) -> Counter:
        """Accesses in the expression code[a:b] (and the INLINE helpers it calls)."""
        code = fr.code
        out: Counter = Counter()
        inside = self.loop is not None
        i = a
        while i < b:
            m = RE_IDENT.search(code, i, b)
            if not m:
                break
            name, s, e = m.group(0), m.start(), m.end()
            i = e
            p = s - 1
            while p >= a and code[p] in " \t\n":
                p -= 1
            if p >= a and (code[p] == "." or code[p - 1:p + 1] in ("->", "::")):
                continue
            j = _ws(code, e, b)
            if code.startswith("::", j):
                continue
            f = self.fw.funcs.get(name)
            if f is not None and f.inline and (inside or f.has_pipeline):
                k = j
                targs = []
                if k < b and code[k] == "<":
                    depth, q = 0, k
                    while q < b:
                        depth += code[q] == "<"
                        depth -= code[q] == ">"
                        if depth == 0:
                            break
                        q += 1
                    targs = _split_params(code[k + 1:q])
                    k = _ws(code, q + 1, b)
                if k < b and code[k] == "(":
                    close = _match_close(code, k, "(", ")")
                    out.update(self.call(fr, f, k, close, targs))
                    i = close + 1
                continue
            if not inside or name in KEYWORDS or name in TYPE_KEYWORDS:
                continue
            tgt = self.lookup(fr, name)
            if tgt is None:
                continue
            c, i = self.occurrence(fr, tgt, name, s, e, a, b)
            out.update(c)
        return out

    def occurrence(self, fr: Frame, tgt, name: str, s: int, e: int, a: int, b: int) -> tuple[Counter, int]:
        """One use of a memory / variable at code[s:e]: (its accesses, where the scan goes on)."""
        code = fr.code
        out: Counter = Counter()
        arrow = re.match(r"\s*->", code[e:b]) is not None
        k = e
        idx_spans = []
        while True:
            k2 = _ws(code, k, b)
            if k2 < b and code[k2] == "[":
                close = _match_close(code, k2, "[", "]")
                idx_spans.append((k2 + 1, close))
                k = close + 1
                continue
            break
        members, method = [], False
        while True:
            mm = re.match(r"\s*(?:\.|->)\s*([A-Za-z_]\w*)", code[k:b])
            if not mm:
                break
            k += mm.end()
            k2 = _ws(code, k, b)
            if k2 < b and code[k2] == "(":
                method = True
                close = _match_close(code, k2, "(", ")")
                out.update(self.scan(fr, k2 + 1, close))
                k = close + 1
            else:
                members.append(mm.group(1))
        for ia, ib in idx_spans:
            out.update(self.scan(fr, ia, ib))
        op = _assign_op(code, k, b)
        pre = _pre_incdec(code, s, a)
        if isinstance(tgt, Var) and tgt.ref is not None:
            r = tgt.ref
            mem, var = r.mem, r.var
            prefix, mpath = list(r.prefix), list(r.members)
        elif isinstance(tgt, Mem):
            mem, var, prefix, mpath = tgt, None, [], []
        else:
            mem, var, prefix, mpath = None, tgt, [], []
        idx = prefix + [self.val(fr, code[ia:ib]) for ia, ib in idx_spans]
        line = _line_of(code, s)
        if mem is not None:
            if op in ("op=", "inc") or pre:
                kinds = "RW"
            elif op == "=":
                kinds = "RW" if (method or len(idx) > len(mem.dims)) else "W"
            else:
                kinds = "R"
            out.update(self.touch(mem, idx, kinds))
            return out, k
        if var is None:
            return out, k
        if var.maxi:
            if (idx_spans or arrow or _unary_star(code, s, a)) and self.loop is not None:
                self.loop.derefs.append((name, fr.rel, line))
            return out, k
        if idx_spans or var.array:
            return out, k
        rhs = code[k:b]
        is_inc = op == "inc" or pre or (op == "op=" and re.match(r"\s*[-+]=", rhs) is not None)
        if op == "=" and not is_inc:
            lhs = re.sub(r"\s+", "", code[s:k])
            mr = re.match(r"\s*=\s*(.*)", rhs, re.S)
            r_text = re.sub(r"\s+", "", mr.group(1)) if mr else ""
            is_inc = r_text.startswith(lhs) and r_text[len(lhs):len(lhs) + 1] in ("+", "-") or \
                re.search(r"[-+]" + re.escape(lhs) + r"$", r_text) is not None
        if is_inc and self.loop is not None and var.pipe != self.loop.id:
            path = mpath + members
            typ = var.type if not path else self.fw.member_type(var.type, path)
            key = (var.name,) + tuple(path)
            if key not in self.loop.incs:
                self.loop.incs[key] = (".".join(key), typ, fr.rel, line, var)
        return out, k

    def touch(self, mem: Mem, idx: list, kinds: str) -> Counter:
        rec = self.loop
        out: Counter = Counter()
        if rec is None or mem.register:
            return out
        for kd in kinds:
            (rec.reads if kd == "R" else rec.writes).add(mem.name)
        choices = []
        runtime = False
        for d in sorted(mem.parts):
            kind, factor = mem.parts[d]
            size = mem.dims[d] if d < len(mem.dims) else None
            n = size if kind == "complete" else factor
            v = idx[d] if d < len(idx) else None
            if n is None:
                choices.append(["*"])
                continue
            if v is None:
                runtime = True
                choices.append(list(range(n)))
            elif kind == "cyclic":
                choices.append([v % n])
            elif kind == "block":
                choices.append([v // max(1, -(-size // n)) if size else 0])
            else:
                choices.append([v])
        for key in product(*choices):
            for kd in kinds:
                out[(mem.name, key, kd)] += 1
            if runtime:
                rec.runtime_parts.add((mem.name, key))
        return out

    def call(self, fr: Frame, f: Func, pa: int, pb: int, targs: list[str]) -> Counter:
        out: Counter = Counter()
        code = fr.code
        args = _split_params_pos(code, pa + 1, pb)
        if self.depth >= EXPAND_DEPTH or f.node is None:
            for x, y in args:
                out.update(self.scan(fr, x, y))
            return out
        bound: dict = {}
        for p, (x, y) in zip(f.params, args):
            if p.array or p.ptr or (p.ref and not p.const):
                ref = self.lvalue(fr, x, y)
                if ref is not None:
                    bound[p.name] = Var(p.name, p.type, pipe=self.loop.id if self.loop else None, ref=ref,
                                        array=p.array, rel=f.rel, line=f.line)
                    if ref.var is not None and ref.var.maxi and not ref.prefix:
                        bound[p.name].maxi = True
                    continue
            out.update(self.scan(fr, x, y))
            bound[p.name] = Var(p.name, p.type, value=self.val(fr, code[x:y]),
                                pipe=self.loop.id if self.loop else None, array=p.array, rel=f.rel, line=f.line)
        for tp, ta in zip(f.tparams, targs):
            bound[tp] = Var(tp, "", value=self.val(fr, ta), pipe=self.loop.id if self.loop else None)
        callee = Frame(f, f.rel, self.fw.code[f.rel], [bound])
        self.depth += 1
        try:
            out.update(self.walk(callee, f.node))
        finally:
            self.depth -= 1
        return out


def _match_angle(text: str, j: int) -> int | None:
    """Index of the '>' closing the '<' at j (None when a ';', '{' or '}' comes first)."""
    depth = 0
    for k in range(j, len(text)):
        if text[k] == "<":
            depth += 1
        elif text[k] == ">":
            depth -= 1
            if depth == 0:
                return k
        elif text[k] in ";{}":
            return None
    return None


def _split_params_pos(code: str, a: int, b: int) -> list[tuple[int, int]]:
    """Spans of the arguments in ``code[a:b]`` (a blank last one dropped)."""
    spans = split_spans(code, a, b)
    return spans if code[spans[-1][0]:b].strip() else spans[:-1]


def _assign_op(code: str, k: int, b: int) -> str | None:
    k = _ws(code, k, b)
    two = code[k:k + 2]
    if code[k:k + 3] in ("<<=", ">>="):
        return "op="
    if two in ("+=", "-=", "*=", "/=", "%=", "&=", "|=", "^="):
        return "op="
    if two in ("++", "--"):
        return "inc"
    if two[:1] == "=" and two != "==":
        return "="
    return None


def _pre_incdec(code: str, s: int, a: int) -> bool:
    p = s - 1
    while p >= a and code[p] in " \t\n":
        p -= 1
    return p - 1 >= a and code[p - 1:p + 1] in ("++", "--")


def _unary_star(code: str, s: int, a: int) -> bool:
    p = s - 1
    while p >= a and code[p] in " \t\n":
        p -= 1
    if p < a or code[p] != "*":
        return False
    q = p - 1
    while q >= a and code[q] in " \t\n":
        q -= 1
    return q < a or code[q] in "=(,;{}!&|?:+-*/%<>[" or code[q - 5:q + 1] == "return"


# ---------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------
def _ports_ok(binding: str, r: int, w: int) -> str | None:
    """None when r reads and w writes fit the binding, else its ports in words."""
    rmax, wmax, tmax = PORTS.get(binding, PORTS[DEFAULT_STORAGE])
    if (rmax is not None and r > rmax) or (wmax is not None and w > wmax) or (tmax is not None and r + w > tmax):
        parts = []
        if tmax is not None:
            parts.append(f"{tmax} port{'s' if tmax > 1 else ''} in all")
        if rmax is not None:
            parts.append(f"{rmax} read")
        if wmax is not None:
            parts.append(f"{wmax} write")
        if rmax is None and tmax is None:
            parts.append("any number of reads")
        return " + ".join(parts)
    return None


def _justified(raw_lines: list[str], k: int) -> bool:
    j = k - 1
    while j >= 0 and re.match(r"\s*#\s*pragma\s+HLS\s+DEPENDENCE\b", raw_lines[j], re.IGNORECASE):
        j -= 1
    text = []
    while j >= 0 and raw_lines[j].strip().startswith("//"):
        text.append(raw_lines[j].strip()[2:])
        j -= 1
    return bool(re.search(r"[A-Za-z0-9]", " ".join(text)))


def _waived(raw: dict[str, str], rel: str, line: int) -> bool:
    lines = raw.get(rel, "").split("\n")
    if not 1 <= line <= len(lines):
        return False
    m = WAIVER.search(lines[line - 1])
    return bool(m and re.search(r"[A-Za-z]", m.group(1)))


def pipeline_rules(files: dict[str, str], *, top: str = TOP) -> list[Violation]:
    """The dependence / ports / widths / m_axi rules over firmware sources {rel: text}."""
    return analyse(files, top=top)[0]


def analyse(files: dict[str, str], *, top: str = TOP) -> tuple[list[Violation], Firmware]:
    """(the pipeline rules' violations, the parsed firmware)."""
    fw = Firmware(files, top)
    w = Walker(fw)
    for f in fw.funcs.values():
        if f.has_pipeline:
            w.walk_function(f)
    out: set[Violation] = set()
    for rec in w.loops:
        where = f"{rec.label} (in {rec.func})"
        deps = {}
        for _, text in rec.pragmas:
            m = re.match(r"#\s*pragma\s+HLS\s+DEPENDENCE\b(.*)", text, re.IGNORECASE)
            if m:
                v = re.search(r"\bvariable\s*=\s*(\w+)", m.group(1))
                if v:
                    deps[v.group(1)] = True
        for mem in sorted(rec.reads & rec.writes):
            if mem not in deps:
                out.add(Violation(rec.rel, rec.line, "dependence",
                                  f"{where}: '{mem}' is stored and loaded in one pipelined iteration and no "
                                  f"'#pragma HLS DEPENDENCE variable={mem}' in the loop says whether the carried "
                                  "dependence is real (Vitis assumes it is: II > 1)"))
        worst: dict[str, tuple] = {}
        keys = {(m, key) for (m, key, _) in rec.ports}
        for m, key in sorted(keys, key=str):
            r, wr = rec.ports.get((m, key, "R"), 0), rec.ports.get((m, key, "W"), 0)
            mem = fw.mems[m]
            bad = _ports_ok(mem.binding(), r, wr)
            if bad and (m not in worst or r + wr > worst[m][1] + worst[m][2]):
                worst[m] = (key, r, wr, bad)
        for m, (key, r, wr, bad) in sorted(worst.items()):
            mem = fw.mems[m]
            part = "".join(f"[{k}]" for k in key) if key else ""
            note = " (a run-time index into a partitioned dimension reaches every partition)" \
                if (m, key) in rec.runtime_parts else ""
            out.add(Violation(rec.rel, rec.line, "ports",
                              f"{where}: memory {m}{part} ({mem.binding()}: {bad}) gets {r} read(s) and {wr} write(s) "
                              f"per iteration{note}: II > 1"))
        if rec.ivar is not None:
            name, typ, line, var = rec.ivar
            wd = fw.width(typ)
            if wd is not None and wd > COUNTER_BITS and not _waived(files, rec.rel, line):
                out.add(Violation(rec.rel, line, "widths",
                                  f"{where}: induction variable '{name}' is {typ} ({wd} bits): use a counter of at most 16 bits"
                                  " (or '// lint: wide-counter <reason>' when the trip count needs more)"))
        for key, (name, typ, rel, line, var) in rec.incs.items():
            wd = fw.width(typ) if typ else None
            if wd is None or wd <= COUNTER_BITS:
                continue
            if _waived(files, rel, line) or _waived(files, var.rel, var.line):
                continue
            out.add(Violation(rel, line, "widths",
                              f"{where}: loop-carried counter '{name}' is {typ} ({wd} bits), updated from itself every "
                              "iteration: narrow it to at most 16 bits (or '// lint: wide-counter <reason>' on its line)"))
        if rec.nested:
            for name, rel, line in rec.derefs:
                out.add(Violation(rel, line, "m_axi",
                                  f"{where}: m_axi pointer '{name}' dereferenced in a pipelined loop nested in another "
                                  f"loop ({rec.rel}:{rec.line}): the ~64-cycle read latency is paid at every loop entry"))
    # every DEPENDENCE pragma carries a justification
    for rel, code in fw.code.items():
        raw_lines = files[rel].split("\n")
        for m in re.finditer(r"#\s*pragma\s+HLS\s+DEPENDENCE\b([^\n]*)", code, re.IGNORECASE):
            line = _line_of(code, m.start())
            if not _justified(raw_lines, line - 1):
                v = re.search(r"\bvariable\s*=\s*(\w+)", m.group(1))
                out.add(Violation(rel, line, "dependence",
                                  f"DEPENDENCE pragma on '{v.group(1) if v else '?'}' has no justification: put a // "
                                  "comment directly above it naming the invariant that makes it safe"))
    return sorted(out, key=lambda v: (v.path, v.line, v.rule, v.message)), fw
