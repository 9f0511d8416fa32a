"""Cycle model of the engine: the schedule the HLS templates implement, in cycles.

Every number here is *modelled*: it counts the iterations of the engine's
loops at II=1 (the conditions Vitis needs for II=1 -- memory ports, declared
dependences, no multiplier or wide counter in the recurrence -- are checked by
flow/hls/lint.py; the schedule itself only csynth can confirm), plus a stated
fill depth per loop entry and a stated DDR latency per burst. The C-simulation
counter (the CYCLES register) adds exactly the same terms, and a test holds
the two equal: a sync test of two copies of one model, not a measurement.
Measured numbers come from elsewhere and say so: the REAL_CYCLES register on a
board, Vitis HLS C/RTL co-simulation (``cosim_design`` latency report), RTL
simulation of the cores (flow.rtl), or wall-clock time on the board (host
``Accelerator.stats``).
Stalls the model leaves out: AXI-Stream back-pressure from the DMA, DDR
refresh and contention with the PS, and HLS scheduling that misses II=1.

The schedule, per image (program already placed for the engine, fields as in
flow/compile/program.py):

* stream in:  H*W*C cycles (one byte per beat) + DEPTH["stream"];
* per op:     DESC_WORDS cycles to fetch its descriptor from the op table;
* conv:       if not resident, its parameters are burst-loaded first
              (``param_load_cycles``). Tiles t = (pixel tile, oc tile), oc tile
              inner; ng_t pixel groups in tile t. One decode prologue of
              ``dec`` cycles (the tile loop's first entry: + DEPTH["conv"]), then per tile one loop of
              max(NSTEP * max(passes * max(ng_t, 2), dec), rows * ng_{t-1})
              iterations: the array computes tile t (each step lasts passes *
              ng_t cycles -- a pass at least ACC_DISTANCE = 2, so an accumulator
              is never updated on consecutive cycles -- or dec when the decoder
              of the next step is slower) while the
              drain requantizes tile t-1 (one pixel of ``cols`` channels per
              cycle, ``rows`` pixels per group); + DEPTH["conv"] per loop entry;
              a final drain-only loop of rows * ng_{T-1} (+ DEPTH["conv"]);
* maxpool:    OH*OW*OCW*KH*KW + DEPTH["pool"] (one activation word per cycle);
* avgpool:    OH*OW*OCW*(KH*KW + lanes) + DEPTH["pool"] (window sums, then one
              requantization lane);
* pq:         prototypes (one byte per cycle) and, when it fits, the LUT (two
              entries per cycle when OC and cols are even, else one) loaded per
              image in chunked bursts (``burst``). Per pixel ONE pipelined loop
              (PQ_STEP): nsub windows of span = max(v, NOT, ACC_DISTANCE) cycles
              (window w encodes subspace w; window 0 loads the bias into the NOT
              accumulator words, window w >= 1 adds the LUT row of subspace
              w-1), a last lookup window of max(NOT, ACC_DISTANCE), then OC drain
              cycles (one requantization lane), + DEPTH["pq"] once
              (``pq_pixel_cycles``). A LUT that does not fit streams its rows
              (no m_axi read inside a pipelined loop): per pixel the encoder
              alone (nsub * v + DEPTH["pq"]), then per subspace the row of its
              code through a DATAFLOW region per chunk of at most LOAD_CHUNK
              beats (DDR_LATENCY + DEPTH["load"] each, + OC/2 cycles, OC when OC
              or cols is odd; ``pq_row_cycles``), then the drain alone
              (OC + DEPTH["pq"]);
* stream out: OH*OW*OC + DEPTH["stream"].

An array of N 32-bit beats is loaded in chunks of at most LOAD_CHUNK = 64 beats
(one AXI burst; param_loader.h), each a DATAFLOW region costing DDR_LATENCY +
DEPTH["load"] + its unpacker's steps (a beat per cycle, or a byte per cycle
where a beat feeds four): ``burst``. The load call: header (DDR_LATENCY +
HEADER_WORDS), one chunked pass over the image body computing its CRC32 and
capturing the descriptors (``burst(body words)``), then per op its descriptor
(DESC_WORDS cycles), its channel parameters and, when resident, its weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flow.compile.engine import EngineConfig
from flow.compile.layout import cdiv
from flow.compile.program import AVGPOOL, CODEBOOK, CODEBOOK_SHARED, CONV, DENSE, DESC_WORDS, HEADER_WORDS, MAXPOOL, PQ, Op, Program

DDR_LATENCY = 30     # cycles from an m_axi read request to its first beat (Zynq-7000 HP0 at 100 MHz, typical)
# a pass sweeps at least this many group slots, so one accumulator is read-modified-written at most
# every ACC_DISTANCE cycles (the accumulate recurrence: LUTRAM read, add, write), whatever the tile size
ACC_DISTANCE = 2
BEAT_BYTES = 4       # m_axi data width: one 32-bit beat per cycle
# fill depth of each loop (cycles from the first iteration's start to its last stage), per loop entry
DEPTH = {
    # TILE_CYCLE: counters 1, BRAM read with output register 2, buffer select + register 1, bank select +
    # register 1, m:1 mux 1, DSP multiply 3, adder tree 2, accumulate + LUTRAM write 2 = 13 on the compute
    # path; the drain path after its accumulator read: row mux 1, 32x32 requantization multiply 6, round /
    # shift / clamp 2, BRAM write 1, and the decoded weights reach the PEs only after the decoder's two
    # BRAM reads: the second review expects 20-30 stages (engine-hls-review-2.md section 2.2). 24 is that
    # range's middle: a stated guess that only a csynth report can replace.
    "conv": 24,
    "pool": 8,       # BRAM read with output register 2, compare / add 1, write 1; average: requantization 4 more
    "pq": 16,        # PQ_STEP: gather 2, distance 3, argmin tree 2, LUT read 1, accumulate 1, requantization 6, write 1
    "stream": 2,     # AXI-Stream register slice + BRAM write
    "load": 2,       # per burst loop: beat register + memory write
}


@dataclass
class OpCycles:
    """Modelled cycles of one op per image, split by phase."""

    name: str
    kind: str
    cycles: int
    phases: dict[str, int] = field(default_factory=dict)
    macs: int = 0            # dense-equivalent multiply-accumulates (OH*OW*OC*KH*KW*C)
    products: int = 0        # products the array really forms (kept weights only)
    ddr_bytes: int = 0       # bytes read over m_axi per image


@dataclass
class ImageCycles:
    ops: list[OpCycles]
    stream_in: int
    stream_out: int

    @property
    def total(self) -> int:
        return self.stream_in + self.stream_out + sum(o.cycles for o in self.ops)

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.ops)

    @property
    def ddr_bytes(self) -> int:
        return sum(o.ddr_bytes for o in self.ops)


LOAD_CHUNK = 64      # beats per loader DATAFLOW region: one burst (max_read_burst_length), the FIFO depth (param_loader.h)


def burst(words: int, steps: int | None = None, depth: dict | None = None) -> int:
    """Cycles to load ``words`` 32-bit beats: chunks of at most LOAD_CHUNK beats, each one DATAFLOW region
    (reader burst -> FIFO -> unpacker) of DDR_LATENCY + DEPTH["load"] + its unpacker steps; ``steps`` is the
    unpacker's total (the beats by default; the bytes when a beat feeds four steps). 0 words: nothing issued.
    ``depth`` (``_depths``): its ``load_chunk``, when given, replaces DDR_LATENCY + DEPTH["load"] per chunk."""
    if words <= 0:
        return 0
    dp = depth or {}
    per_chunk = dp.get("load_chunk", DDR_LATENCY + dp.get("load", DEPTH["load"]))
    return cdiv(words, LOAD_CHUNK) * per_chunk + (words if steps is None else steps)


def _words(nbytes: int) -> int:
    return cdiv(nbytes, BEAT_BYTES)


def byte_cycles(nbytes: int, row: int) -> int:
    """Cycles to place ``nbytes`` bytes that form rows of ``row`` bytes: a beat per cycle when rows are
    whole beats (row % 4 == 0), else a byte per cycle."""
    return nbytes // 4 if row % 4 == 0 else nbytes


def channel_load_cycles(op: Op) -> int:
    """bias / mult / shift / res_mult arrays (int32 each) of a conv, pq or avgpool op."""
    if op.opcode not in (CONV, PQ, AVGPOOL):
        return 0
    arrays = 2  # mult, shift
    if op.opcode in (CONV, PQ):
        arrays += int(op.arrays.get("bias") is not None and op.arrays["bias"].size > 0) + int(op.res_buf >= 0)
    return arrays * burst(op.OC)


def param_load_cycles(op: Op, oc_count: int | None = None, with_codebook: bool = True) -> tuple[int, int]:
    """(cycles, DDR bytes) to copy the weights of ``oc_count`` output channels (all by default) on chip.

    idx and mask are uint16 (two entries per beat, written to a dual-port memory); codebook rows
    and dense weight words take a whole beat per cycle when d (C) is a multiple of 4, so a beat never
    straddles a row (a tap), else one byte per cycle (a beat feeds four cycles)."""
    if op.opcode != CONV:
        return 0, 0
    oc = op.OC if oc_count is None else oc_count
    if op.wfmt == DENSE:
        nbytes = oc * op.KH * op.KW * op.C
        return burst(_words(nbytes), byte_cycles(nbytes, op.C)), 4 * _words(nbytes)
    nv = oc * op.KH * op.KW * (op.C // op.d)
    # masks: one entry per d-vector, or one per group of mg output channels (shared-mask format)
    nm = cdiv(oc, op.mg) * op.KH * op.KW * (op.C // op.d) if op.wfmt == CODEBOOK_SHARED else nv
    cyc, ddr = burst(cdiv(nv, 2)) + burst(cdiv(nm, 2)), 4 * cdiv(nv, 2) + 4 * cdiv(nm, 2)
    if with_codebook:
        cb = op.k * op.d
        cyc += burst(_words(cb), byte_cycles(cb, op.d))
        ddr += 4 * _words(cb)
    return cyc, ddr


def conv_tiles(op: Op, engine: EngineConfig, oc_tiles: int | None = None) -> list[int]:
    """Pixel groups of every tile in execution order (pixel tile outer, oc tile inner)."""
    tiles = []
    for pt in range(op.NPT):
        ng = min(engine.acc_groups, op.NG - pt * engine.acc_groups)
        tiles += [ng] * (op.NOT if oc_tiles is None else oc_tiles)
    return tiles


def _depths(depth: dict | None) -> dict:
    """DEPTH (the HLS engine's stated fill depths) with ``depth``'s entries over it. Keys beyond DEPTH's, 0 when
    absent: ``conv_plan`` (cycles per conv op before its first loop), ``maxpool`` / ``avgpool`` (per pool kind,
    else ``pool``), ``op_gap`` (cycles between one op's end and the next op's start), ``image_glue`` (cycles per
    image besides its stream bytes, the ops and their gaps)."""
    return {**DEPTH, **(depth or {})}


def conv_cycles(op: Op, engine: EngineConfig, oc_tiles: int | None = None, depth: dict | None = None) -> dict[str, int]:
    """Phases of a placed conv op (or of ``oc_tiles`` of its output-channel tiles run alone): decode
    prologue, tile loops (compute overlapped with the previous tile's drain), final drain. ``depth``: fill
    depths other than the HLS engine's (``_depths``; the RTL engine's are flow.rtl.engine_rtl.RTL_DEPTH)."""
    dp = _depths(depth)
    tiles = conv_tiles(op, engine, oc_tiles)
    step = lambda ng: max(op.passes * max(ng, ACC_DISTANCE), op.dec)   # noqa: E731
    loops = 0
    compute = drain_wait = 0
    prev = 0
    for ng in tiles:
        c = op.NSTEP * step(ng)
        d = engine.rows * prev
        loops += max(c, d) + dp["conv"]
        compute += c
        drain_wait += max(0, d - c)
        prev = ng
    final = engine.rows * prev + dp["conv"]
    # the prologue is the tile loop's first entry, decoding step 0 only (one decoder instance per op)
    return {"prologue": op.dec + dp["conv"] + dp.get("conv_plan", 0), "tiles": loops, "final_drain": final,
            "compute": compute, "drain_stall": drain_wait}


def pq_row_chunks(OC: int, pairs: bool) -> list[int]:
    """LUT entries of each DATAFLOW chunk of one streamed row of OC int16: at most LOAD_CHUNK beats, so
    2 * LOAD_CHUNK entries when rows start on a beat (pairs), else 2 * LOAD_CHUNK - 2 (a row may start in
    the upper half of a beat)."""
    per = 2 * LOAD_CHUNK if pairs else 2 * LOAD_CHUNK - 2
    return [min(per, OC - done) for done in range(0, OC, per)]


def pq_row_cycles(OC: int, pairs: bool, depth: dict | None = None) -> int:
    """Cycles to add one streamed LUT row into the accumulators: per chunk DDR_LATENCY + DEPTH["load"] + its
    steps (two entries per step when pairs, else one). ``depth`` (``_depths``): its ``load_chunk``, when given,
    replaces DDR_LATENCY + DEPTH["load"] per chunk, and its ``pq_row`` (0 when absent) is added once per row
    (the RTL engine: one run-time request per row, bursts kept in flight, so a round trip per row)."""
    dp = depth or {}
    per_chunk = dp.get("load_chunk", DDR_LATENCY + dp.get("load", DEPTH["load"]))
    return dp.get("pq_row", 0) + sum(per_chunk + (n // 2 if pairs else n) for n in pq_row_chunks(OC, pairs))


def pq_pixel_cycles(v: int, nsub: int, NOT: int, OC: int, resident: bool = True, pairs: bool = True,
                    depth: dict | None = None) -> int:
    """Cycles of one PQ output pixel (pixels do not overlap).

    LUT on chip: one PQ_STEP loop of nsub windows of max(v, NOT, ACC_DISTANCE) (encoder of subspace w, bias
    init in window 0, lookup of subspace w-1 in window w >= 1), a last lookup window of max(NOT,
    ACC_DISTANCE), OC drain cycles, + DEPTH["pq"]. Streamed LUT: the encoder alone (nsub * v + DEPTH["pq"]),
    nsub rows (``pq_row_cycles``), the drain alone (OC + DEPTH["pq"]). ``depth``: as ``conv_cycles``; its
    ``pq_stream``, when given, replaces the streamed pixel's 2 * DEPTH["pq"] (the RTL engine's own fill)."""
    dp = _depths(depth)
    dpq = dp["pq"]
    if resident:
        span, last = max(v, NOT, ACC_DISTANCE), max(NOT, ACC_DISTANCE)
        return nsub * span + last + OC + dpq
    return nsub * v + nsub * pq_row_cycles(OC, pairs, depth) + OC + dp.get("pq_stream", 2 * dpq)


def pq_cycles(op: Op, engine: EngineConfig, depth: dict | None = None) -> tuple[dict[str, int], int]:
    """(phases, DDR bytes per image) of a placed PQ op. The streamed rows' DDR bytes are an upper bound when
    OC is odd (a chunk's first and last beats may hold one entry each). ``depth``: as ``conv_cycles`` (its
    ``pq_op``, 0 when absent: cycles per PQ op besides its loads and pixels; ``pq_op_stream`` instead when the
    LUT streams, which has no LUT load request)."""
    dp = _depths(depth)
    rows = op.nsub * op.K
    pairs = op.OC % 2 == 0 and engine.cols % 2 == 0
    per_op = dp.get("pq_op", 0) if op.lut_resident else dp.get("pq_op_stream", dp.get("pq_op", 0))
    proto = burst(_words(rows * op.v), rows * op.v, dp) + per_op
    ddr = 4 * _words(rows * op.v)
    lut = 0
    if op.lut_resident:
        count = rows * op.OC
        lut = burst(cdiv(count, 2), None if pairs else count, dp)
        ddr += 4 * cdiv(count, 2)
    npix = op.OH * op.OW
    per_pixel = pq_pixel_cycles(op.v, op.nsub, op.NOT, op.OC, bool(op.lut_resident), pairs, depth)
    if not op.lut_resident:
        ddr += npix * op.nsub * BEAT_BYTES * sum(n // 2 + (0 if pairs else 1) for n in pq_row_chunks(op.OC, pairs))
    return {"proto_load": proto, "lut_load": lut, "pixels": npix * per_pixel}, ddr


def op_cycles(op: Op, engine: EngineConfig, depth: dict | None = None) -> OpCycles:
    """Modelled cycles of one placed op per image (descriptor fetch included); ``depth`` as ``conv_cycles``."""
    dp = _depths(depth)
    phases: dict[str, int] = {"fetch": DESC_WORDS}
    macs = products = ddr = 0
    kind = {CONV: "conv", MAXPOOL: "maxpool", AVGPOOL: "avgpool", PQ: "pq"}.get(op.opcode, "?")
    if op.opcode == CONV and op.resident:
        phases.update(conv_cycles(op, engine, depth=depth))
    elif op.opcode == CONV:   # streamed: per oc tile, load its weights (the codebook with the first), run it
        phases.update(param_load=0, prologue=0, tiles=0, final_drain=0, compute=0, drain_stall=0)
        for ot in range(op.NOT):
            oc = min(engine.cols, op.OC - ot * engine.cols)
            cyc, b = param_load_cycles(op, oc, with_codebook=ot == 0)
            phases["param_load"] += cyc
            ddr += b
            for k, v in conv_cycles(op, engine, oc_tiles=1, depth=depth).items():
                phases[k] += v
    if op.opcode == CONV:
        macs = op.OH * op.OW * op.OC * op.KH * op.KW * op.C
        if op.wfmt in (CODEBOOK, CODEBOOK_SHARED) and "mask" in op.arrays:
            kept = int(np.unpackbits(np.ascontiguousarray(op.arrays["mask"], np.uint16).view(np.uint8)).sum())
            if op.wfmt == CODEBOOK_SHARED:   # rows of mg channels (a partial last group counts its channels)
                rows = np.ascontiguousarray(op.arrays["mask"], np.uint16).reshape(-1, op.KH * op.KW * (op.C // op.d))
                per_row = np.unpackbits(rows.view(np.uint8), axis=1).sum(1)
                width = np.minimum(op.mg, op.OC - np.arange(rows.shape[0]) * op.mg)
                kept = int((per_row * width).sum())
            products = op.OH * op.OW * kept
        else:
            products = macs
    elif op.opcode == MAXPOOL:
        phases["window"] = op.OH * op.OW * op.OCW * op.KH * op.KW + dp.get("maxpool", dp["pool"])
    elif op.opcode == AVGPOOL:
        phases["window"] = op.OH * op.OW * op.OCW * (op.KH * op.KW + engine.lanes) + dp.get("avgpool", dp["pool"])
    elif op.opcode == PQ:
        p, ddr = pq_cycles(op, engine, depth)
        phases.update(p)
    total = sum(v for k, v in phases.items() if k not in ("compute", "drain_stall"))
    return OpCycles(op.name, kind, total, phases, macs, products, ddr)


def image_cycles(program: Program, engine: EngineConfig, depth: dict | None = None) -> ImageCycles:
    """Modelled cycles of one image through a placed program (flow.compile.layout.place); ``depth`` as
    ``conv_cycles`` (the gaps between ops and the per-image glue are charged to stream_out)."""
    dp = _depths(depth)
    first, last = program.ops[0], program.ops[-1]
    glue = dp.get("op_gap", 0) * (len(program.ops) - 1) + dp.get("image_glue", 0)
    return ImageCycles(
        ops=[op_cycles(op, engine, depth) for op in program.ops],
        stream_in=first.H * first.W * first.C + dp["stream"],
        stream_out=last.OH * last.OW * last.OC + dp["stream"] + glue,
    )


def run_cycles(program: Program, engine: EngineConfig, n_images: int) -> int:
    """The CYCLES register after a run call of ``n_images`` images."""
    return n_images * image_cycles(program, engine).total


def load_cycles(program: Program, engine: EngineConfig, image_bytes: int | None = None) -> int:
    """The CYCLES register after the load call (N_IMAGES = 0) of a valid placed program."""
    total = image_bytes if image_bytes is not None else len(program.to_bytes())
    cyc = DDR_LATENCY + HEADER_WORDS + burst(total // 4 - HEADER_WORDS)
    for op in program.ops:
        cyc += DESC_WORDS + channel_load_cycles(op)
        if op.opcode == CONV and op.resident:
            cyc += param_load_cycles(op)[0]
    return cyc


def images_per_second(program: Program, engine: EngineConfig, clock_mhz: float = 100.0) -> float:
    """Modelled throughput at ``clock_mhz`` (one image at a time, no overlap between images)."""
    return clock_mhz * 1e6 / image_cycles(program, engine).total
