"""Integer constant expressions of the emitted C++ (for the lint's loop, index and type-width analysis).

``evaluate(expr, resolve)`` computes a C integer expression whose identifiers ``resolve(name)`` maps
to ints (``None``: not a compile-time value, and the whole expression is then ``None``). Casts to
builtin integer types, ``static_cast<T>(x)`` and ``ap_(u)int<W>(x)`` are read as the value itself.
"""
from __future__ import annotations

import re
from typing import Callable

Resolver = Callable[[str], "int | None"]

_CASTS = re.compile(
    r"\(\s*(?:const\s+)?(?:unsigned|signed|int|long|short|char|bool|size_t|u?int(?:8|16|32|64)_t)"
    r"(?:\s+(?:int|long|short|char))*\s*\)")
_FUNC_CAST = re.compile(
    r"\b(?:static_cast\s*<[^<>;]*(?:<[^<>;]*>[^<>;]*)?>|ap_u?int\s*<[^<>;]*>|"
    r"(?:unsigned|int|long|bool|short|char))\s*\(")
_TOKEN = re.compile(
    r"\s*(0[xX][0-9a-fA-F]+|\d+|(?:[A-Za-z_]\w*\s*::\s*)*[A-Za-z_]\w*|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%()<>!~&|^?:])")
_SUFFIX = re.compile(r"\b(0[xX][0-9a-fA-F]+|\d+)[uUlL]+\b")


class NotConst(Exception):
    """The expression is not a compile-time integer."""


def evaluate(expr: str, resolve: Resolver) -> int | None:
    """Value of ``expr`` or None when it is not a compile-time integer (or cannot be parsed)."""
    text = _SUFFIX.sub(r"\1", expr)
    text = _CASTS.sub(" ", text)
    text = _FUNC_CAST.sub("(", text)
    text = re.sub(r"\btrue\b", "1", text)
    text = re.sub(r"\bfalse\b", "0", text)
    toks: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            return None
        toks.append(re.sub(r"\s+", "", m.group(1)))
        pos = m.end()
    if not toks:
        return None
    try:
        p = _Parser(toks, resolve)
        v = p.ternary()
        if p.i != len(toks):
            return None
        return v
    except (NotConst, ZeroDivisionError, IndexError, ValueError, OverflowError):
        return None


class _Parser:
    # binary operators by precedence, lowest first
    LEVELS = (("||",), ("&&",), ("|",), ("^",), ("&",), ("==", "!="), ("<", "<=", ">", ">="), ("<<", ">>"),
              ("+", "-"), ("*", "/", "%"))

    def __init__(self, toks: list[str], resolve: Resolver):
        self.t = toks
        self.i = 0
        self.resolve = resolve

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self) -> str:
        tok = self.t[self.i]
        self.i += 1
        return tok

    def ternary(self) -> int:
        c = self.binary(0)
        if self.peek() == "?":
            self.take()
            a = self.ternary()
            if self.take() != ":":
                raise NotConst
            b = self.ternary()
            return a if c else b
        return c

    def binary(self, level: int) -> int:
        if level == len(self.LEVELS):
            return self.unary()
        v = self.binary(level + 1)
        while self.peek() in self.LEVELS[level]:
            op = self.take()
            w = self.binary(level + 1)
            v = _apply(op, v, w)
        return v

    def unary(self) -> int:
        tok = self.peek()
        if tok in ("-", "+", "!", "~"):
            self.take()
            v = self.unary()
            return {"-": -v, "+": v, "!": int(not v), "~": ~v}[tok]
        return self.primary()

    def primary(self) -> int:
        tok = self.take()
        if tok == "(":
            v = self.ternary()
            if self.take() != ")":
                raise NotConst
            return v
        if tok[0].isdigit():
            return int(tok, 0) if not (len(tok) > 1 and tok[0] == "0" and tok[1].isdigit()) else int(tok, 8)
        if tok[0].isalpha() or tok[0] == "_":
            v = self.resolve(tok)
            if v is None:
                raise NotConst
            return int(v)
        raise NotConst


def _apply(op: str, a: int, b: int) -> int:
    if op in ("<<", ">>") and not 0 <= b <= 512:
        raise NotConst
    if op in ("/", "%"):
        q = abs(a) // abs(b)
        q = q if (a >= 0) == (b >= 0) else -q
        return q if op == "/" else a - q * b
    return {
        "||": lambda: int(bool(a) or bool(b)), "&&": lambda: int(bool(a) and bool(b)),
        "|": lambda: a | b, "^": lambda: a ^ b, "&": lambda: a & b,
        "==": lambda: int(a == b), "!=": lambda: int(a != b), "<": lambda: int(a < b), "<=": lambda: int(a <= b),
        ">": lambda: int(a > b), ">=": lambda: int(a >= b), "<<": lambda: a << b, ">>": lambda: a >> b,
        "+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
    }[op]()
