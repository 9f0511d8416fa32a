"""What the lint's modules share: the violation record, the declared multiplier units, the C++ keywords, and
the text reading they all do (comments blanked, brackets matched, function definitions found).

``flow.hls.lint`` (the rules and the CLI), ``flow.hls.lint_pipeline`` (the pipelined-loop rules) and
``flow.hls.lint_mult`` (the ``multipliers`` rule) import these from here: the two rule modules need not
import ``flow.hls.lint``, which imports them. ``flow.hls.lint`` re-exports every name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# The declared product and requantization units: the only functions on the engine's pipelined paths
# allowed to hold a run-time multiply (the templates put every legitimate one in one of these).
DECLARED_MULT_UNITS = ("pe_mul_dsp", "pe_mul_lut", "requantize", "resid_mul", "pq_square")

KEYWORDS = {
    "if", "for", "while", "switch", "return", "sizeof", "catch", "do", "else", "case", "new", "delete",
    "static_cast", "reinterpret_cast", "const_cast", "dynamic_cast", "decltype", "alignof", "defined",
    "operator", "typeid", "noexcept", "static_assert",
}


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.rule}: {self.message}"


# ---------------------------------------------------------------------------
# text preparation
# ---------------------------------------------------------------------------
def strip_comments(text: str) -> str:
    """Blank out comments and string / char literals (same length, newlines kept)."""
    out = list(text)
    i, n = 0, len(text)

    def blank(a: int, b: int, keep_quotes: bool = False) -> None:
        for j in range(a, b):
            if out[j] != "\n" and not (keep_quotes and j in (a, b - 1)):
                out[j] = " "

    while i < n:
        c = text[i]
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif c == "/" and i + 1 < n and text[i + 1] == "*":
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            blank(i, j)
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            # keep #include "file.h" readable
            line_start = text.rfind("\n", 0, i) + 1
            if not text[line_start:i].lstrip().startswith("#"):
                blank(i, j, keep_quotes=True)
            i = j
        else:
            i += 1
    return "".join(out)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _match_close(text: str, pos: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket closing the one at ``pos`` (or len(text))."""
    depth = 0
    for j in range(pos, len(text)):
        if text[j] == open_ch:
            depth += 1
        elif text[j] == close_ch:
            depth -= 1
            if depth == 0:
                return j
    return len(text)


# ---------------------------------------------------------------------------
# function definitions
# ---------------------------------------------------------------------------
@dataclass
class _Func:
    name: str
    rel: str
    line: int
    params: str
    body_start: int
    body_end: int
    code: str


def _functions(rel: str, code: str) -> list[_Func]:
    """Function definitions: NAME(params) [const|noexcept|-> T] { body }."""
    funcs = []
    for m in re.finditer(r"\b([A-Za-z_]\w*)\s*\(", code):
        name = m.group(1)
        if name in KEYWORDS:
            continue
        pstart = m.end() - 1
        pend = _match_close(code, pstart, "(", ")")
        rest = re.match(r"\s*(?:const\s*)?(?:noexcept\s*)?(?:override\s*)?(?::[^;{]*)?\{", code[pend + 1:])
        if not rest:
            continue
        # the token before NAME must look like a return type / qualifier, not an operator or '('
        before = code[:m.start()].rstrip()
        if not before or before[-1] in "=(,!&|+-*/%<?:" and not before.endswith(("&", "*", ">")):
            continue
        if re.search(r"\b(return|else|new|case)\s*$", before):
            continue
        bstart = pend + 1 + rest.end() - 1
        bend = _match_close(code, bstart, "{", "}")
        funcs.append(_Func(name, rel, _line_of(code, m.start()), code[pstart + 1:pend], bstart, bend, code))
    return funcs


def split_spans(code: str, start: int = 0, end: int | None = None, sep: str = ",",
                angles: bool = False) -> list[tuple[int, int]]:
    """(start, end) of the parts of ``code[start:end]`` separated by ``sep`` outside brackets (``<>`` too
    with ``angles``: template argument lists); the last part is there even when empty."""
    end = len(code) if end is None else end
    opens, closes = ("([{<", ")]}>") if angles else ("([{", ")]}")
    out, depth, first = [], 0, start
    for k in range(start, end):
        ch = code[k]
        if ch in opens:
            depth += 1
        elif ch in closes:
            depth -= 1
        elif ch == sep and depth == 0:
            out.append((first, k))
            first = k + 1
    out.append((first, end))
    return out


def split_top(text: str, sep: str = ",") -> list[str]:
    """The parts of ``text`` separated by ``sep`` outside ``()[]{}`` (empty ones kept)."""
    return [text[a:b] for a, b in split_spans(text, sep=sep)]

