"""Column-aligned plain-text tables: the one table printer of the flow and the bench scripts.

Torch-free and import-free, so any layer may use it.
"""
from __future__ import annotations

from collections.abc import Collection, Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Collection[int] = (),
                 footer: Sequence[Sequence[str]] = ()) -> str:
    """``header``, a rule of dashes under each column, ``rows``, then (when given) a second rule and the
    ``footer`` rows (totals). Cells are strings; each column is as wide as its widest cell, columns are
    two spaces apart, and the columns whose index is in ``right`` are right-aligned (the others left)."""
    lines = [list(header), *map(list, rows), *map(list, footer)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    out = [fmt(lines[0]), rule, *(fmt(r) for r in lines[1:1 + len(rows)])]
    if footer:
        out += [rule, *(fmt(r) for r in lines[1 + len(rows):])]
    return "\n".join(out)
