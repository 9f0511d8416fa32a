"""Board descriptions: the resources a build must fit and how to reach the part."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    lut: int
    ff: int
    dsp: int
    bram36: int
    clock_mhz: float
    ddr_gbps: float


BOARDS = {
    "pynq-z2": Board("pynq-z2", "xc7z020clg400-1", lut=53_200, ff=106_400, dsp=220, bram36=140,
                     clock_mhz=100.0, ddr_gbps=1.6),
}


class UnknownBoardError(ValueError):
    """The board name is not described in flow.boards."""


def get_board(name: str) -> Board:
    if name not in BOARDS:
        raise UnknownBoardError(f"unknown board {name!r}: choose one of {', '.join(sorted(BOARDS))}")
    return BOARDS[name]
