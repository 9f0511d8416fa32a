"""The RTL cycle model of the cores in hls_templates/rtl: stated latencies and cycle counts, as formulas.

Counting convention: cycles are *inclusive*, from the cycle of the first input handshake (on any input
port) to the cycle of the last output handshake, at a clock with no back-pressure (out_ready always
high) and inputs driven as early as the core accepts them (valid held high).

vqhls_pe_array (pe_array.v.j2)
    Pipeline S0 input register -> S0b operands (M:1 mux output, weight) -> S1 products -> S2 adder tree
    -> S3 accumulate / output register:
    a beat accepted in cycle t with in_last is accepted on the output port in cycle t + PE_ARRAY_LATENCY.
    Weight port: one beat carries up to WPB = 2 columns; the feeder (the HLS codebook decoder, two
    codebook entries per cycle) offers a beat of P columns every I cycles once the shadow bank is free
    (weight_beats: P = 2, I = 1 when a column is one codeword or a dense word; P = 1, I = 1 when it is
    two codewords; P = 1, I = vpc/2 when more), so a step's weights take DEC = ceil(COLS / P) * I
    cycles, the engine's ``dec`` (flow.compile.layout). A step's last beat (w_last) fills the shadow
    bank, which stays full until the step's first activation beat (in_swap) is accepted (a w_last in
    the same cycle counts: forwarded); the next step's load starts the cycle after. So step k+1 starts
    max(ng_k, DEC) cycles after step k (ng_k: pixel-group beats of step k):

        cycles = DEC + sum_{k < S-1} max(ng_k, DEC) + ng_{S-1} + PE_ARRAY_LATENCY - 1

    counted from the first cycle inputs are offered (the first DEC cycles load step 0; its swap beat is
    accepted with the last of them).
    Back-pressure: the pipeline has one global enable (out_valid && !out_ready holds every stage and
    in_ready), so each cycle the output register is held adds at most one cycle; input gaps (valid low)
    on the activation port add one cycle each when they fall on the critical port (the weight port
    hides gaps on the activation port while ng_k < DEC, and the reverse). cycles_measured - model is
    reported as the back-pressure / gap overhead; it is never negative.

vqhls_requant (requant.v.j2)
    S0 input register -> S1 products -> S2 sum + rounding -> S3 shift + clamp / output register:
    one value per cycle, latency REQUANT_LATENCY:  cycles(n) = n + REQUANT_LATENCY.
"""
from __future__ import annotations

from dataclasses import dataclass

from flow.compile.layout import cdiv

PE_ARRAY_LATENCY = 5     # input handshake of a last beat -> output handshake, cycles
REQUANT_LATENCY = 4      # input handshake -> output handshake, cycles
PE_ARRAY_STAGES = ("input", "operands", "products", "adder tree", "accumulate/output")
REQUANT_STAGES = ("input", "products", "sum+round", "shift+clamp/output")


@dataclass(frozen=True)
class ConvSchedule:
    """The engine's order for one conv on the array: pixel tiles (<= acc_groups groups) outer, oc tiles
    (cols channels) inner, then NSTEP = KH*KW*ceil(C/lanes) steps, each streaming the tile's groups."""
    groups: int            # NG = OH * ceil(OW / rows)
    tiles: tuple[int, ...]  # groups of each pixel tile
    n_oc_tiles: int
    nstep: int

    @property
    def steps(self) -> list[int]:
        """Pixel-group beats of every step, in order."""
        return [ng for ng in self.tiles for _ in range(self.n_oc_tiles) for _ in range(self.nstep)]

    @property
    def out_beats(self) -> int:
        return sum(self.tiles) * self.n_oc_tiles


def conv_schedule(engine, *, OH: int, OW: int, C: int, OC: int, KH: int, KW: int) -> ConvSchedule:
    ng_total = OH * cdiv(OW, engine.rows)
    tiles = tuple(min(engine.acc_groups, ng_total - s) for s in range(0, ng_total, engine.acc_groups))
    return ConvSchedule(ng_total, tiles, cdiv(OC, engine.cols), KH * KW * cdiv(C, engine.lanes))


def weight_beats(cols: int, vpc: int) -> tuple[int, int]:
    """(columns per beat P, cycles per beat I) of the weight feeder: two codebook entries per cycle, a
    column being ``vpc`` codewords (0: a dense word, as one codeword)."""
    vpc = max(1, vpc)
    if vpc == 1:
        return min(2, cols), 1
    return 1, vpc // 2


def weight_load_cycles(cols: int, vpc: int) -> int:
    """DEC: cycles to load one step's COLS columns through the weight port."""
    p, i = weight_beats(cols, vpc)
    return cdiv(cols, p) * i


def pe_array_cycles(dec: int, steps: list[int]) -> int:
    """Cycles of vqhls_pe_array for the step list (pixel-group beats per step) when a step's weights
    take ``dec`` cycles to load, no back-pressure."""
    if not steps:
        return 0
    return dec + sum(max(ng, dec) for ng in steps[:-1]) + steps[-1] + PE_ARRAY_LATENCY - 1


def step_periods(dec: int, steps: list[int]) -> list[int]:
    """Cycles from each step's swap beat to the next one's: max(ng_k, DEC)."""
    return [max(ng, dec) for ng in steps[:-1]]


def requant_cycles(n: int) -> int:
    """Cycles of vqhls_requant for n back-to-back values, no back-pressure."""
    return n + REQUANT_LATENCY if n else 0
