"""Resource model of the engine: BRAM36, DSP, LUT, FF (and LUTRAM) of an EngineConfig, as a range.

Everything here is *modelled*, not measured: no vendor tool runs. The model
counts the hardware the HLS templates write (flow/compile/engine.py,
hls_templates/engine/) unit by unit. Every unit is a :class:`Unit`: a
low / central / high :class:`Range` per resource and a ``source`` string that
says where its figures come from (a formula over the EngineConfig, the
project's own yosys measurement in bench/results/area.json, the second engine
review ``engine-hls-review-2.md`` §3, or a Xilinx product guide to calibrate
against). The engine's usage is the sum of the units: a range.

* low      what the unit costs if Vivado maps it as tightly as the structure allows;
* central  the expected figure;
* high     a pessimistic but plausible figure (weak mapping, replication for fanout): since issue 20 item 4
           it reaches yosys 0.23's ``synth_xilinx -family xc7`` count of the RTL engine (flow/rtl/engine_area.py,
           bench/results/rtl_engine_area.json), the UPPER reference (yosys maps more loosely than Vivado).

Calibration against yosys (issue 20 item 4): every RTL unit's yosys figure lies in [low, high] at the default
and the dense PYNQ-Z2 builds (tests/rtl/test_resource_calibration.py); each constant that moved says so where
it is defined (its yosys source, which way, how much).

``check_fit`` (at its default level "high") passes a build when the **central** figure is under the budgets
(80 % BRAM36, 90 % DSP, 70 % LUT / FF / LUTRAM of the part) and the **high** end is within HIGH_FRAC (100 %)
of the part: the high end is yosys' loose mapping, which the budget's margin was not meant to absorb twice
(under the old rule, high end under the budgets, the default PYNQ-Z2 build is over: LUT high 44,119 =
82.9 % of the xc7z020, and no PYNQ-Z2 build fits). The sizing search (flow.boards.sizing) uses the same
rule. Calibrate the constants against a post-route ``report_utilization`` when one exists.

Memories (``memories(engine)``), storage rule
--------------------------------------------
A memory with ``depth * width <= 1024`` bits, or ``depth <= 64`` (shallow,
possibly wide), is distributed RAM (LUTRAM); every other memory is block RAM.
This is the model's rule, close to Vivado's own inference threshold, and it is
*enforced*, not guessed: the templates render ``#pragma HLS BIND_STORAGE ...
impl=`` from ``Memory.impl``.

* LUTRAM: ``ceil(depth / 64) * width`` LUTs for a simple dual port memory
  (one write, one read port), twice that for two read ports (true dual port or
  "2r"): a LUT6 holds 64 x 1 bit per read port. The range (``lutram_range``)
  spans the RAM32M / RAM64M packing Vivado uses for SDP memories (4 LUTs hold
  32 x 6 or 64 x 3 bits) and this rule.
* BRAM: the cheapest tiling in RAMB18 units, ``ceil(depth / D) * ceil(width / W)``
  over the RAMB18 aspect ratios D x W: 16Kx1, 8Kx2, 4Kx4, 2Kx9, 1Kx18 (true dual
  port) and 512x36 (simple dual port only). These are half of the RAMB36 ones
  (32Kx1 ... 1Kx36, 512x72 SDP), so tiling in RAMB18 units loses nothing. One
  configuration per memory (no mixed-aspect tilings). A memory's RAMB18s are
  reported as ``ceil(bram18 / 2)`` BRAM36 tiles: Vivado packs two RAMB18 of one
  memory into one RAMB36 tile. The model does *not* pack RAMB18s of different
  memories into one tile, although the placer can; so an odd RAMB18 count costs
  half a tile more than a placer might need. BRAM counts are exact (low = high);
  the loader FIFOs and the DMA add a range.

Multipliers (DSP48E1 on 7-series, DSP48E2 on UltraScale+)
--------------------------------------------------------
* Array: ``dsp_rows * cols * slots`` 8 x 9 products on DSPs, ONE per DSP on both
  families (DSP48E1's 25-bit A port cannot hold two 9-bit activations; on
  DSP48E2 the templates do not write WP487's packing and Vitis HLS does not
  infer it). The other ``(rows - dsp_rows) * cols * slots`` products are fabric
  multipliers (``BIND_OP impl=fabric``): 72 / 88 / 159 LUT each (low: one LUT
  per partial-product bit, a*b = 72, the floor; central: 88, the middle of the
  review's 75-100 LUT estimate for Vivado on a signed 8x9 product, no published
  Vivado figure was found to cite; high: 159, the project's own yosys 0.23
  measurement, bench/results/area.json).
* Requantization: 6 DSPs per lane (``acc x M`` 32x32 = 2x2 tiles of <= 18x25,
  ``Mr x res`` 32x9 = 2 tiles). Lanes: ``cols`` + 1 (average pool) + 1 (PQ).
* Run-time multiplies (two run-time operands) outside those declared units:
  counted in the emitted firmware by ``flow.hls.lint.multiplier_counts`` and
  passed as ``estimate(..., counts=)``. Each costs 1 / 3 / 4 DSP48E1 (low: a
  narrow product, <= 18 x 25 bits, that demanded-bits analysis shrinks to one
  DSP; central: 3, Vitis HLS's default binding of a 32 x 32 multiply; high: 4,
  the full 2 x 2 tiling). If Vivado put one in fabric instead it would cost
  ~0.6-1k LUT (review §3.2); the model charges DSPs. Without counts (sizing
  before any code exists) an allowance of ``MULT_ALLOWANCE`` multiplies stands
  in for the setup arithmetic the lowering could not move into the descriptor.

LUT and FF: one function per unit (array muxes, PE adder trees, fabric
multipliers, accumulator read muxes, activation crossbar, decoder,
requantization lanes, pooling, PQ unit, control and glue, AXI adapters) and the
Vivado block design around the engine IP (AXI DMA, SmartConnect, AXI
Interconnect, PS7 reset). Adders cost 1 LUT per bit (carry chain); an m:1 mux
costs ``ceil(m/4)`` LUT6 per bit up to 16:1 (a LUT6 is a 4:1 mux, F7/F8
combine four of them). FF counts the pipeline registers each unit needs at II=1.

Not modelled: routing congestion, timing, LUT-FF packing losses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from flow.boards import Board, get_board
from flow.compile.engine import EngineConfig
from flow.compile.layout import cdiv
from flow.compile.program import DESC_WORDS

# ---- default budgets (fractions of the part) ---------------------------------
BRAM_FRAC = 0.8
DSP_FRAC = 0.9
LUT_FRAC = 0.7
# the part's share the HIGH end must stay within when the check is at "high": since the recalibration against
# yosys 0.23 (issue 20 item 4) the high end is yosys' loose mapping, an upper reference, so the budgets above hold
# the CENTRAL figure and the high end must fit the part itself. Was: the high end against the budgets above, under
# which the default PYNQ-Z2 build is over (LUT high 44,119 = 82.9 % of the xc7z020) and no PYNQ-Z2 build fits
HIGH_FRAC = 1.0

# ---- constants of the model ---------------------------------------------------
ACT_BITS = 9               # activation as it enters a multiplier (int8 or uint8 widened)
WEIGHT_BITS = 8
PROD_BITS = ACT_BITS + WEIGHT_BITS   # 17-bit signed product
ACC_BITS = 32
CH_BITS = 32 + 32 + 5 + 32          # bias, mult, shift, res_mult: 101 bits per channel
LUTRAM_DEPTH = 64                   # a LUT6 holds 64 x 1 bit
LUTRAM_MAX_BITS = 1024              # storage rule: <= 1024 bits is LUTRAM
OPS_WORDS = DESC_WORDS              # 32-bit words per op descriptor (flow.compile.program)
REQUANT_DSP = 4 + 2                 # acc x M (2x2 tiles) + res x Mr (2 tiles)
# the average pool's lane has no residual: acc x M only (yosys 0.23, default and dense builds, flattened: 4 DSP;
# 6 with the hierarchy kept, where has_res = 0 is not propagated into vqhls_requant): was 6 exact, now 4/4/6
REQUANT_POOL_DSP = (4.0, 4.0, 6.0)
# FF per lane: low 2 * 64 + 32 (two of the four 64-bit stages are the DSP48E1s' MREG/PREG, no fabric FF;
# yosys 0.23: vqhls_requant 257 FF), central / high 4 * 64 + 32 as before: low moved from 288 to 160 (-44 %)
REQUANT_FF_LOW = 2 * 64 + 32
REQUANT_PIPE_STAGES = 4             # 64-bit registers along one requantization lane
PQ_DIFF_BITS = 10                   # activation - prototype, both int8 or uint8 held as 9 bits
PQ_ELEM_BITS = 9                    # a stored prototype element (pq_config::elem_t, int8 or uint8)

# RAMB18 aspect ratios (depth, width)
BRAM18_TDP = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18))
BRAM18_SDP_ONLY = ((512, 36),)


def clog2(x: int) -> int:
    """ceil(log2(x)) for x >= 1 (0 for x == 1)."""
    return max(0, (x - 1).bit_length())


# ---- memories -----------------------------------------------------------------
def bram18_tiles(depth: int, width: int, ports: str) -> int:
    """RAMB18s of the cheapest single-aspect tiling: min over D x W of ceil(depth/D) * ceil(width/W).

    ports "s2p" (1 read + 1 write) may use every aspect including 512x36;
    "t2p" and "2r" (two read ports) only the true dual port ones (<= 18 bits wide).
    """
    aspects = BRAM18_TDP + (BRAM18_SDP_ONLY if ports == "s2p" else ())
    return min(cdiv(depth, d) * cdiv(width, w) for d, w in aspects)


def is_lutram(depth: int, width: int) -> bool:
    """The storage rule: depth * width <= 1024 bits, or depth <= 64."""
    return depth * width <= LUTRAM_MAX_BITS or depth <= LUTRAM_DEPTH


def lutram_luts(depth: int, width: int, ports: str) -> int:
    """ceil(depth / 64) * width LUTs per read port: x1 for "s2p", x2 for "t2p" / "2r"."""
    return cdiv(depth, LUTRAM_DEPTH) * width * (1 if ports == "s2p" else 2)


@dataclass(frozen=True)
class Memory:
    """``count`` identical physical memories of ``depth`` x ``width`` bits."""

    name: str
    count: int
    depth: int
    width: int
    ports: str          # "s2p": 1R + 1W; "t2p": true dual port (2 R/W); "2r": two read ports
    impl: str           # "bram" | "lutram" (the templates' BIND_STORAGE impl=)
    bram18_each: int    # RAMB18 per memory (0 for LUTRAM)
    lut_each: int       # LUTs per memory (0 for BRAM)

    @property
    def bram36_each(self) -> int:
        """BRAM36 tiles per memory: two RAMB18 of one memory share a tile."""
        return cdiv(self.bram18_each, 2)

    @property
    def bram36(self) -> int:
        return self.count * self.bram36_each

    @property
    def luts(self) -> int:
        return self.count * self.lut_each

    @property
    def bits(self) -> int:
        return self.count * self.depth * self.width


def memory(name: str, count: int, depth: int, width: int, ports: str) -> Memory:
    """A Memory with its storage decided by the rule and its cost filled in."""
    if ports not in ("s2p", "t2p", "2r"):
        raise ValueError(f"memory {name}: ports must be s2p, t2p or 2r, got {ports!r}")
    if is_lutram(depth, width):
        return Memory(name, count, depth, width, ports, "lutram", 0, lutram_luts(depth, width, ports))
    return Memory(name, count, depth, width, ports, "bram", bram18_tiles(depth, width, ports), 0)


def idx_bits(engine: EngineConfig) -> int:
    """Bits of a codeword index: max(1, ceil(log2 k_max))."""
    return max(1, clog2(engine.k_max))


def memories(engine: EngineConfig) -> list[Memory]:
    """The engine's on-chip memories, in a fixed order (the templates bind storage from this list).

    act     num_bufs * act_banks x [bank_words] x 8*lanes   s2p
    acc     2 * rows * cols      x [acc_groups] x 32        s2p (ping-pong accumulators)
    vidx    1 x [vmem_entries] x idx_bits                   t2p
    vmask   1 x [vmem_entries] x d_max                      t2p
    cbmem   1 x [cb_rows] x 8*d_max                         t2p
    dmem    1 x [dmem_words] x 8*lanes                      t2p
    chmem   cols x [ch_rows] x 101                          s2p (one read per cycle: the conv reads its two
                                                            tiles' rows in two cycles at tile start)
    ops     1 x [max_ops * 64] x 32                         s2p
    PQ only (engine.pq):
    proto   1 x [pq_subspaces_max * pq_v_max] x 9*pq_k_max  t2p (one word: element e of every prototype
                                                            of a subspace, read by all K distance units)
    lut     cols x [lut_bytes / 2 / cols] x 16              s2p
    pq_acc  cols x [ceil(max_channels / cols)] x 32         s2p
    """
    e = engine
    mems = [
        memory("act", e.num_bufs * e.act_banks, e.bank_words, 8 * e.lanes, "s2p"),
        memory("acc", 2 * e.rows * e.cols, e.acc_groups, ACC_BITS, "s2p"),
        memory("vidx", 1, e.vmem_entries, idx_bits(e), "t2p"),
        memory("vmask", 1, e.vmem_entries, e.d_max, "t2p"),
        memory("cbmem", 1, e.cb_rows, 8 * e.d_max, "t2p"),
        memory("dmem", 1, e.dmem_words, 8 * e.lanes, "t2p"),
        memory("chmem", e.cols, e.ch_rows, CH_BITS, "s2p"),
        memory("ops", 1, e.max_ops * OPS_WORDS, 32, "s2p"),
    ]
    if e.pq:
        mems += [
            memory("proto", 1, e.pq_subspaces_max * e.pq_v_max, PQ_ELEM_BITS * e.pq_k_max, "t2p"),
            memory("lut", e.cols, max(1, e.lut_bytes // 2 // e.cols), 16, "s2p"),
            memory("pq_acc", e.cols, cdiv(e.max_channels, e.cols), ACC_BITS, "s2p"),
        ]
    return mems


# ---- logic primitives -----------------------------------------------------------
def mux_luts_per_bit(ways: int) -> int:
    """LUT6 per output bit of a ways:1 mux: 0 for 1 way; ceil(ways/4) up to 16:1 (F7/F8 are free);
    wider muxes are ceil(ways/16) 16:1 muxes (4 LUT each) and a mux over their outputs."""
    if ways <= 1:
        return 0
    if ways <= 16:
        return cdiv(ways, 4)
    groups = cdiv(ways, 16)
    return 4 * groups + mux_luts_per_bit(groups)


def squarer_luts(bits: int) -> float:
    """LUT-mapped w-bit squarer: w * (w + 1) / 2 LUT (the symmetric partial products fold; 10 -> 55)."""
    return bits * (bits + 1) / 2


def adder_tree(leaves: int, leaf_bits: int) -> int:
    """LUTs (= registered bits) of a binary adder tree: each adder of two w-bit inputs is w+1 LUT.

    Level by level: floor(k/2) adders of (w+1) bits, k -> ceil(k/2), w -> w+1.
    """
    luts, k, w = 0, leaves, leaf_bits
    while k > 1:
        luts += (k // 2) * (w + 1)
        k, w = cdiv(k, 2), w + 1
    return luts


def lutram_range(depth: int, width: int, ports: str) -> tuple[float, float, float]:
    """(low, central, high) LUTs of one LUTRAM memory per read port pair.

    Vivado packs a simple dual port memory of depth <= 32 into RAM32M (4 LUTs: 32 x 6 bits) and of
    depth <= 64 into RAM64M (4 LUTs: 64 x 3 bits); deeper ones into RAM64M columns. The model's rule
    (``lutram_luts``: 1 LUT per bit per 64 deep) is the other estimate; low/high are the smaller /
    larger of the two, central the packing. x2 for two read ports ("t2p", "2r")."""
    if depth <= 32:
        pack = cdiv(width, 6) * 4
    else:
        pack = cdiv(depth, 64) * cdiv(width, 3) * 4
    pack *= 1 if ports == "s2p" else 2
    rule = lutram_luts(depth, width, ports)
    return float(min(pack, rule)), float(pack), float(max(pack, rule))


# ---- ranges and units -------------------------------------------------------------
RESOURCES = ("bram36", "dsp", "lut", "ff", "lutram")


@dataclass(frozen=True)
class Range:
    """low <= central <= high of one resource (a count of BRAM36 tiles, DSPs, LUTs, FFs)."""

    low: float
    central: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.central <= self.high:
            raise ValueError(f"Range needs low <= central <= high, got {self.low}, {self.central}, {self.high}")

    @classmethod
    def exact(cls, x: float) -> "Range":
        return cls(float(x), float(x), float(x))

    @classmethod
    def factors(cls, x: float, low: float, high: float) -> "Range":
        """x * (low, 1, high): a stated formula x with its error band."""
        return cls(x * low, float(x), x * high)

    def __add__(self, o: "Range") -> "Range":
        return Range(self.low + o.low, self.central + o.central, self.high + o.high)

    def __mul__(self, k: float) -> "Range":
        return Range(self.low * k, self.central * k, self.high * k)

    __rmul__ = __mul__

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.low, self.central, self.high)


ZERO = Range(0.0, 0.0, 0.0)


def rng(low: float, central: float, high: float) -> Range:
    return Range(float(low), float(central), float(high))


@dataclass(frozen=True)
class Unit:
    """One hardware unit of the build: a Range per resource and where its figures come from."""

    name: str
    source: str
    bram36: Range = ZERO
    dsp: Range = ZERO
    lut: Range = ZERO
    ff: Range = ZERO
    lutram: Range = ZERO      # LUTs used as memory (also counted in lut)

    def get(self, res: str) -> Range:
        return getattr(self, res)


# ---- the array -------------------------------------------------------------------------
# fabric 8x9 signed product, LUTs: low = a*b partial-product bits (one LUT each on the carry chains,
# the floor); central = middle of the review's 75-100 for Vivado (engine-hls-review-2.md §3.3; no
# published Vivado figure for this size was found to cite); high = the project's yosys 0.23 run:
# bench/results/area.json, 2:4 build of 4x8x8 with -nodsp minus with DSPs, (24,118 - 3,780) / 128
# products = 158.9 LUT each (the dense build gives 204: a weak mapper's figure, an upper bound).
FABRIC_MULT_LUT = Range(72.0, 88.0, 159.0)
FABRIC_MULT_SOURCE = ("low 72 = 8x9 partial-product bits; central 88 = middle of the review's Vivado estimate "
                      "75-100 (engine-hls-review-2.md §3.3); high 159 = yosys 0.23 synth_xilinx, "
                      "bench/results/area.json ((24118 - 3780) LUT / 128 products, 2:4 -nodsp vs DSP)")


def dsp_products(engine: EngineConfig) -> int:
    """Array products bound to DSPs: dsp_rows * cols * slots."""
    return engine.dsp_rows * engine.cols * engine.slots


def fabric_products(engine: EngineConfig) -> int:
    """Array products in fabric: (rows - dsp_rows) * cols * slots."""
    return (engine.rows - engine.dsp_rows) * engine.cols * engine.slots


def array_dsp(engine: EngineConfig, board: Board) -> int:
    """DSPs of the array: one product per DSP on both families (the templates' ``pe_mul_dsp`` forms one
    product per multiplier; WP487's two-per-DSP48E2 packing is not written, Vitis does not infer it)."""
    return dsp_products(engine)


def unit_array_dsp(engine: EngineConfig, board: Board) -> Unit:
    n = array_dsp(engine, board)
    # FF: the product register is the DSP48E1's MREG/PREG, no fabric FF (yosys 0.23: the dense build, twice the
    # products, has fewer conv-unit FF than the default one); low / central moved from n * 17 to 0, high kept
    return Unit("array.mult_dsp", "dsp_rows*cols*slots products, one per DSP (exact count); FF 0 (in the DSP) .. "
                "n x 17", dsp=Range.exact(n), ff=rng(0, 0, n * PROD_BITS))


def unit_array_fabric(engine: EngineConfig) -> Unit:
    """(rows - dsp_rows)*cols*slots products x FABRIC_MULT_LUT; FF 1 / 2 / 3 stages of 17 bits."""
    n = fabric_products(engine)
    return Unit("array.mult_fabric", FABRIC_MULT_SOURCE, lut=FABRIC_MULT_LUT * n,
                ff=rng(n * PROD_BITS, 2 * n * PROD_BITS, 3 * n * PROD_BITS))


def max_passes(engine: EngineConfig) -> int:
    """ceil(m / n): weight sets a PE holds (a chunk denser than n:m takes passes)."""
    return cdiv(engine.m, engine.n)


def unit_array_mux(engine: EngineConfig) -> Unit:
    """Sparse build: per slot of every PE an m:1 mux of 9 bits (rows*cols*slots * 9 * ceil(m/4)), plus per
    column and slot the run-time pass select of pe_w[c][p] (8-bit weight + select bits, max_passes:1).
    Range x(1, 1, 1.2) (review §3.3: 2,600-3,000 for the 8x8 array). Dense build: no muxes."""
    e = engine
    if e.dense:
        return Unit("array.mux", "dense build: no m:1 muxes")
    n = e.rows * e.cols * e.slots
    pe = n * ACT_BITS * mux_luts_per_bit(e.m)
    pas = e.cols * e.slots * (WEIGHT_BITS + clog2(e.m)) * mux_luts_per_bit(max_passes(e))
    return Unit("array.mux", "formula: PE m:1 muxes + pass select; high +20 % (review §3.3 2,600-3,000 at 8x8)",
                lut=Range.factors(pe + pas, 1.0, 1.2), ff=Range.exact(n * ACT_BITS))


def unit_array_rowmux(engine: EngineConfig) -> Unit:
    """Row-mux build (EngineConfig.row_mux): the m:1 selection once per array row for the whole column tile
    (ROW_COMPACT: rows*slots muxes of 9 bits, each m:1, on the tile's one select per pass and slot), the
    compacted lanes broadcast to the row's plain PEs; plus the run-time pass select of the shared selects
    (slots * log2(m) bits, max_passes:1) and of every column's weights (cols*slots*8 bits, max_passes:1).
    Same range as unit_array_mux (x1..1.2); FF: the compacted lanes, rows*slots*9 (the per-PE form registers
    rows*cols*slots*9). Docs: docs/engine.md "The row-mux array"."""
    e = engine
    if e.dense:
        return Unit("array.mux", "dense build: no m:1 muxes")
    n = e.rows * e.slots
    row = n * ACT_BITS * mux_luts_per_bit(e.m)
    pas = (e.slots * clog2(e.m) + e.cols * e.slots * WEIGHT_BITS) * mux_luts_per_bit(max_passes(e))
    return Unit("array.mux", "formula: per-row m:1 compaction (rows*slots, not rows*cols*slots) + pass select; "
                "high +20 % as unit_array_mux", lut=Range.factors(row + pas, 1.0, 1.2), ff=Range.exact(n * ACT_BITS))


def unit_decoder_rowmux(engine: EngineConfig) -> Unit:
    """The decoder of a row-mux build: unit_decoder's per-column byte selects and kept-weight placement, but
    one mask -> slot select for the tile (2*lanes, not 2*lanes per column), the union of the columns' keeps
    (lanes ORs of cols inputs: ceil(cols/6) LUT each) and the zeroing of a weight its column does not keep
    (cols*slots*8 AND, folded into the select's LUT at low); FF: one select set instead of cols.
    Same x2.2..4.5 range as unit_decoder (the review's factor for the code as written)."""
    e = engine
    lut = e.cols * e.lanes * 8
    if not e.dense:
        lut += e.cols * e.slots * 8 * mux_luts_per_bit(e.m) + 2 * e.lanes + e.lanes * cdiv(e.cols, 6)
    ff = e.cols * e.lanes * 8 + 2 * (e.cols * e.slots * 8 + e.slots * clog2(e.m)) * max_passes(e)
    return Unit("decoder", "formula x2.2..4.5 as unit_decoder; one slot select per tile + union + zeroing",
                lut=rng(2.2 * lut, 3 * lut, 4.5 * lut), ff=Range.factors(ff, 1.0, 1.3))


def vmask_shared_depth(engine: EngineConfig) -> int:
    """Mask entries a build that ran ONLY shared-mask layers would need: one per (oc tile, tap, vector), i.e.
    vmem_entries / cols. The row-mux build as written keeps the full vmask memory (vmem_entries: per-channel
    masks still run, on the union of the tile's masks); this is the saving a mask-shared-only build adds."""
    return cdiv(engine.vmem_entries, engine.cols)


def array_forms(engine: EngineConfig, board: Board | str = "pynq-z2") -> dict[str, dict[str, Unit]]:
    """The array in three forms at equal dense-MAC throughput (rows x cols PEs, lanes input channels per cycle):
    "dense" (n = m: rows*cols*lanes multipliers, no mux), "per-PE mux" (today's sparse n:m array:
    rows*cols*slots multipliers, an m:1 mux per slot), "row mux" (the same multipliers, the mux once per row).
    Per form: multipliers (DSP, fabric), the mux, the adder trees, the decoder and the mask memory
    ("mem.vmask": full depth for every form that stores per-channel masks; "mem.vmask_shared": the
    vmem_entries / cols a shared-only build would need, row mux only). Modelled (this file's formulas)."""
    import dataclasses as _dc

    b = _board(board)
    sparse = _dc.replace(engine, row_mux=False)
    dense = _dc.replace(engine, n=engine.m, row_mux=False)
    rowmux = _dc.replace(engine, row_mux=True)

    def vmask(e: EngineConfig, depth: int, name: str) -> Unit:
        mem = memory(name, 1, depth, e.d_max, "t2p")
        if mem.impl == "bram":
            return Unit(f"mem.{name}", f"1 x {depth}x{e.d_max} t2p", bram36=bram_range(mem))
        lo, ce, hi = lutram_range(depth, e.d_max, "t2p")
        return Unit(f"mem.{name}", f"1 x {depth}x{e.d_max} t2p LUTRAM", lut=rng(lo, ce, hi), lutram=rng(lo, ce, hi))

    out: dict[str, dict[str, Unit]] = {}
    for form, e, mux, dec in (("dense", dense, unit_array_mux, unit_decoder),
                              ("per-PE mux", sparse, unit_array_mux, unit_decoder),
                              ("row mux", rowmux, unit_array_rowmux, unit_decoder_rowmux)):
        units = [unit_array_dsp(e, b), unit_array_fabric(e), mux(e), unit_array_adders(e), dec(e)]
        if not e.dense:
            units.append(vmask(e, e.vmem_entries, "vmask"))
        if form == "row mux":
            units.append(vmask(e, vmask_shared_depth(e), "vmask_shared"))
        out[form] = {u.name: u for u in units}
    return out


def unit_array_adders(engine: EngineConfig) -> Unit:
    """Per PE an adder tree over its slot products + the 32-bit accumulate (the bias enters as the
    accumulator's first value): rows*cols * (adder_tree(slots, 17) + 32). Range x(0.8, 1, 1.17) (review §3.3: 4,500-6,500 at 8x8;
    low: one add folded into a DSP post-adder)."""
    e = engine
    per_pe = adder_tree(e.slots, PROD_BITS) + ACC_BITS
    n = e.rows * e.cols * per_pe
    # FF low: the 32-bit accumulator register per PE only (the tree unregistered, or in DSP post-adders;
    # yosys 0.23: conv unit 6,570 FF default / 6,442 dense against a low of 10,320 / 11,792): was 0.8 x the
    # tree's bits; central halfway to the registered tree, high as before
    acc = e.rows * e.cols * ACC_BITS
    return Unit("array.adders", "formula: PE adder tree + 32-bit accumulate; x0.8..1.17 (review §3.3 4,500-6,500); "
                "FF accumulators only .. registered tree", lut=Range.factors(n, 0.8, 1.17),
                ff=rng(acc, (acc + n) / 2, 1.17 * n))


def unit_acc_read(engine: EngineConfig) -> Unit:
    """Accumulator reads: per PE the role mux (compute or drain address, 2:1 of acc_groups address bits)
    and the ping-pong 2:1 of 32 bits; per column the drain's rows:1 32-bit mux.
    LUT: PE 32-bit 2:1 at 0.5 (two per LUT6, O5/O6) / 0.75 / 1 LUT per bit + address bits + drain
    cols * 32 * ceil(rows/4) (review §3.3: 1,300-3,300 at 8x8)."""
    e = engine
    pe = e.rows * e.cols
    addr = pe * 2 * clog2(max(2, e.acc_groups))
    drain = e.cols * ACC_BITS * mux_luts_per_bit(e.rows)
    low = pe * ACC_BITS * 0.5 + addr + drain
    cen = pe * ACC_BITS * 0.75 + addr + drain
    high = pe * ACC_BITS + addr + drain
    return Unit("acc.read_mux", "formula: per-PE role/ping-pong 2:1 + per-column drain rows:1 "
                "(review §3.3 1,300-3,300)", lut=rng(low, cen, high), ff=Range.exact(pe * ACC_BITS))


def act_addr_bits(engine: EngineConfig) -> int:
    return max(1, clog2(engine.bank_words))


def unit_crossbar(engine: EngineConfig) -> Unit:
    """The activation read path as the templates write it (act_mem with the BRAM output register, latency 2):
    per bank a num_bufs:1 buffer select of the word (registered), per array row an act_banks:1 word mux
    (registered), the residual read (act_banks:1 of one word, registered), and per bank the read address
    (adder + compare + role mux, addr bits each) and the write enable decode.

    LUT = w*(banks*mux(num_bufs) + rows*mux(banks) + mux(banks)) + banks*3*addr_bits + num_bufs*banks,
    w = 8*lanes; FF = w*(banks + rows + 1) + banks*addr_bits. Range x(0.9, 1, 1.2): low merges the buffer
    select into the bank mux's first LUT level; high replicates the wide selects for fanout. (The review's
    4,500-9,000 at 8x8 is for the flat 48:1 the code first wrote, not this factored one.)"""
    e = engine
    w, banks = 8 * e.lanes, e.act_banks
    ab = act_addr_bits(e)
    lut = (w * (banks * mux_luts_per_bit(e.num_bufs) + e.rows * mux_luts_per_bit(banks) + mux_luts_per_bit(banks))
           + banks * 3 * ab + e.num_bufs * banks)
    ff = w * (banks + e.rows + 1) + banks * ab
    return Unit("crossbar", "formula: per-bank num_bufs:1 + per-row banks:1 + residual banks:1 + bank addressing; "
                "x0.9..1.2", lut=Range.factors(lut, 0.9, 1.2), ff=Range.exact(ff))


def unit_decoder(engine: EngineConfig) -> Unit:
    """Weight decode into the columns' stationary weight registers (2 entries per cycle).

    Formula (per copy): per column and lane an 8-bit source select (codebook / dense / zero: 1 LUT per bit),
    sparse builds add per column slots*8*ceil(m/4) (kept weight of each group) + 2*lanes (mask -> slot
    select). Range x(2.2, 3, 4.5) of it: the review counts 2,000-4,000 at 8x8 for the code as written
    (variable byte select, st_w demux, assign_slots), against 896 for this formula.
    FF: decoded word + double-buffered weight + select registers."""
    e = engine
    lut = e.cols * e.lanes * 8
    if not e.dense:
        lut += e.cols * (e.slots * 8 * mux_luts_per_bit(e.m) + 2 * e.lanes)
    ff = e.cols * e.lanes * 8 + 2 * e.cols * e.slots * (8 + clog2(e.m)) * max_passes(e)
    return Unit("decoder", "formula x2.2..4.5 (review §3.3: 2,000-4,000 at 8x8 vs 896)",
                lut=rng(2.2 * lut, 3 * lut, 4.5 * lut), ff=Range.factors(ff, 1.0, 1.3))


def requant_lane_luts() -> int:
    """One requantization lane: bias add (32) + residual-product add (64) + rounding add (64)
    + 64-bit variable right shift by S in 1..31 (3 levels of 4:1 muxes: 64 * 3)
    + clamp to [lo, hi] (two 64-bit compares + an 8-bit 3:1 select: 2*64 + 8*2) = 496 LUT."""
    return 32 + 64 + 64 + 64 * 3 + (2 * 64 + 8 * 2)


def requant_lanes(engine: EngineConfig) -> int:
    """cols lanes (conv drain) + 1 (average pool) + 1 (PQ, when pq)."""
    return engine.cols + 1 + (1 if engine.pq else 0)


def _requant_lanes_unit(name: str, n: int, dsp: Range, what: str) -> Unit:
    """``n`` requantization lanes: DSP ``dsp`` per lane; LUT = 496 / 600 / 700 per lane (the formula, then
    the review's 5,000-7,000 for 10 lanes; yosys 0.23: vqhls_requant 570); FF REQUANT_FF_LOW / 4 * 64 + 32."""
    ff = REQUANT_PIPE_STAGES * 64 + 32
    return Unit(name, f"{n} lane(s) ({what}); LUT formula 496 .. review §3.3 5,000-7,000 / 10 lanes; "
                f"FF {REQUANT_FF_LOW}-{ff} per lane (yosys 0.23: 257)",
                dsp=dsp * n, lut=rng(n * requant_lane_luts(), n * 600, n * 700),
                ff=rng(n * REQUANT_FF_LOW, n * ff, n * ff))


def unit_requant(engine: EngineConfig) -> Unit:
    """The conv drain's ``cols`` requantization lanes: 6 DSP each (acc x M 2x2 tiles + Mr x res 2 tiles, exact;
    yosys 0.23: 48 at cols = 8)."""
    return _requant_lanes_unit("requant", engine.cols, Range.exact(REQUANT_DSP), "conv drain, 6 DSP each")


def unit_requant_pool(engine: EngineConfig) -> Unit:
    """The average pool's requantization lane: no residual, REQUANT_POOL_DSP (4 / 4 / 6)."""
    return _requant_lanes_unit("requant.pool", 1, Range(*REQUANT_POOL_DSP), "average pool, no residual: 4/4/6 DSP")


def unit_requant_pq(engine: EngineConfig) -> Unit:
    """The PQ unit's requantization lane (when pq): 6 DSP (not measured: both yosys builds have pq=False)."""
    if not engine.pq:
        return Unit("requant.pq", "pq=False: no PQ lane")
    return _requant_lanes_unit("requant.pq", 1, Range.exact(REQUANT_DSP), "PQ, 6 DSP, not measured")


# pool LUT factors of the datapath formula (low, central, high): was (1, 1.35, 1.7); yosys 0.23 maps the RTL pool
# unit to 3,015 LUT (default) / 3,127 (dense), ~570 of them its requant lane, against 1,008 / 1,291 / 1,570 with
# the lane: the formula has no window walker (POOL_WALKER_REGS address / loop registers with their adds and
# compares) nor the setup multiplier's operand muxes. Central x1.35 -> x4 (the unit's central x2.05), high
# x1.7 -> x5.5; low kept (the datapath alone, Vivado-style)
POOL_LUT_FACTORS = (1.0, 4.0, 5.5)
# the pool's walker: 20 16-bit registers (pool_unit.v.j2: oh, ow, jw, jc, orow, ocw, irow0, icw0, iw0, kh, kw, qi,
# krow, kcw, kiw, rwi, srwi, ssq, win, the setup product); FF central / high add them (yosys 0.23: pool unit
# 939 FF at both builds against 672 exact): was not counted
POOL_WALKER_REGS = 20


def unit_pool(engine: EngineConfig) -> Unit:
    """Max and average pooling: bank read mux (8L bits, act_banks:1), max compare+select (16 per lane),
    window-sum accumulators (32 per lane), a lanes:1 32-bit mux into its requantization lane.
    LUT x POOL_LUT_FACTORS (1 / 4 / 5.5; review §3.3: 700-1,200 vs 704; yosys 0.23 above); FF the datapath
    registers, + the walker's POOL_WALKER_REGS x 16 (central) .. x 24 (high); LUTRAM 0 / 16 / 32 (yosys 0.23:
    16 SRL16E delay taps)."""
    e = engine
    w = 8 * e.lanes
    lut = w * mux_luts_per_bit(e.act_banks) + e.lanes * 16 + e.lanes * 32 + 32 * mux_luts_per_bit(e.lanes)
    ff = w + e.lanes * (8 + 32)
    walk = POOL_WALKER_REGS * COUNTER_BITS
    lo, ce, hi = POOL_LUT_FACTORS
    return Unit("pool", f"formula x{lo:g}/{ce:g}/{hi:g} (review §3.3 700-1,200; yosys 0.23: 3,015 LUT with the lane); "
                f"FF + walker {walk}", lut=rng(lo * lut, ce * lut, hi * lut),
                ff=rng(ff, ff + walk, ff + 1.5 * walk), lutram=rng(0, 16, 32))


def pq_dist_bits(engine: EngineConfig) -> int:
    """Width of a squared-distance accumulator, as the templates size it: bits of the largest
    distance pq_v_max * 383^2 (383 = 255 - (-128)) plus one spare bit (22 for v_max = 9)."""
    return (engine.pq_v_max * 383 * 383).bit_length() + 1


def unit_pq(engine: EngineConfig) -> Unit:
    """PQ unit (when pq): pq_k_max distance units (10-bit subtract + 10-bit squarer in fabric + accumulator),
    the input word mux (act_banks:1) and byte select, the argmin tree ((K-1) compares + selects) and the
    per-column lookup-accumulate (32-bit adds). Range x(1.1, 1.35, 1.65) of the formula (review §3.3:
    3,000-4,500 vs ~2,700: LUT row fetch, subspace sequencing)."""
    e = engine
    if not e.pq:
        return Unit("pq", "pq=False: no lookup unit")
    dw, cb = pq_dist_bits(e), max(1, clog2(e.pq_k_max))
    enc = e.pq_k_max * (PQ_DIFF_BITS + squarer_luts(PQ_DIFF_BITS) + dw) \
        + 8 * e.lanes * mux_luts_per_bit(e.act_banks) + 8 * mux_luts_per_bit(e.lanes)
    arg = (e.pq_k_max - 1) * (2 * dw + cb)
    look = e.cols * ACC_BITS
    lut = enc + arg + look
    ff = e.pq_k_max * (3 * PQ_DIFF_BITS + dw) + 8 * e.lanes + 8 + (e.pq_k_max - 1) * (dw + cb) + e.cols * ACC_BITS
    return Unit("pq", "formula (encoder + argmin + lookup) x1.1..1.65 (review §3.3 3,000-4,500)",
                lut=rng(1.1 * lut, 1.35 * lut, 1.65 * lut), ff=Range.factors(ff, 1.0, 1.2))


# ---- control and glue --------------------------------------------------------------------
CHECK_OP_COMPARES = 60          # check_op: descriptor fields against the engine limits (review §3.3)
TILE_COUNTERS = 26              # counters of the tile loop (review §2.2)
COUNTER_BITS = 16               # their width once narrowed (issue 17, deliverable 1)
LOADERS = 8                     # DATAFLOW loader processes (burst reader + unpack each)
CYCLE_COUNTERS = 3              # 64-bit: modelled CYCLES accumulate, REAL_CYCLES free-running + latch
# the loader's units (check_op, burst loaders, CRC32, m_axi) x (low, central, high) LUT: yosys 0.23 maps the RTL
# loader to 9,083 LUT (default) / 9,045 (dense) against 2,520 / 4,240 / 5,280 modelled; low kept (Vivado-style),
# central x2 (8,480), high x1.85 (9,768): was x1 / x1 / x1
LOADER_LUT_SCALE = (1.0, 2.0, 1.85)


def unit_control(engine: EngineConfig) -> list[Unit]:
    """Control, one Unit per stated formula (the review's §3.3 puts these together at 5,000-9,000 LUT for
    the code as first written, with 32-bit counters):

    control.check_op    CHECK_OP_COMPARES 32-bit compares: 12 / 24 / 28 LUT each (against a constant
                        2 bits per LUT; two run-time operands 1 bit per LUT on the carry chain)
    control.unpack_op   DESC_WORDS x 32 descriptor bits into op registers: 0.1 / 0.25 / 0.5 LUT per bit
                        (word-select clock enables, field sign/zero extension)
    control.counters    TILE_COUNTERS counters of COUNTER_BITS: adder + wrap compare + reload mux,
                        2 / 3 / 4 LUT per bit; FF the counter and its precomputed wrap flag
    control.loaders     LOADERS burst readers (32-bit address + length counters, FSM): 100 / 175 / 225
    control.crc32       2 CRC32 networks over a 32-bit word: 150 / 225 / 300 LUT each
    control.streams     stream in + out (byte counters, TLAST, word pack/unpack): 2 x 100 / 175 / 250
    control.cycles      CYCLE_COUNTERS 64-bit adders: 64 LUT + 64 FF each (x1..1.5)
    control.sequencer   op loop, top FSM, status/error words: 200 / 350 / 600
    control.pipe        the tile loop's control pipeline (op fields, counters, flags along 20 / 25 / 30
                        stages of 100 / 150 / 200 bits): FF, and SRL32 delay lines 300 / 600 / 1,000 LUT
                        as memory (review §3.4)
    """
    w = 8 * engine.lanes
    c, dbits = CHECK_OP_COMPARES, DESC_WORDS * 32
    tc = TILE_COUNTERS * COUNTER_BITS
    ls = LOADER_LUT_SCALE
    return [
        Unit("control.check_op", f"{c} 32-bit compares x 12/24/28 LUT (review §3.3: ~60) x LOADER_LUT_SCALE {ls}",
             lut=rng(c * 12 * ls[0], c * 24 * ls[1], c * 28 * ls[2]), ff=Range.exact(c)),
        # LUT high 0.5 -> 1.0 LUT per descriptor bit, central 0.25 -> 0.5 (field selects out of whole descriptor
        # registers); FF central 0.75 -> 1.5, high 1 -> 3 descriptor words: the RTL keeps three whole
        # 2,048-bit descriptors (op, first, last); yosys 0.23 engine_core at both builds: 3,702 LUT, 6,457 FF
        Unit("control.unpack_op", f"{DESC_WORDS} descriptor words x 32 bits x 0.1/0.5/1 LUT; FF the used bits of "
             "one descriptor .. three whole descriptors (the RTL's op, first, last)",
             lut=rng(0.1 * dbits, 0.5 * dbits, 1.0 * dbits), ff=rng(0.5 * dbits, 1.5 * dbits, 3 * dbits)),
        Unit("control.counters", f"{TILE_COUNTERS} counters x {COUNTER_BITS} bits x 2/3/4 LUT (review §2.2: ~26)",
             lut=rng(2 * tc, 3 * tc, 4 * tc), ff=Range.exact(TILE_COUNTERS * (COUNTER_BITS + 1))),
        Unit("control.loaders", f"{LOADERS} DATAFLOW loaders x 100/175/225 LUT x LOADER_LUT_SCALE, 150/250/400 FF",
             lut=rng(LOADERS * 100 * ls[0], LOADERS * 175 * ls[1], LOADERS * 225 * ls[2]),
             ff=rng(LOADERS * 150, LOADERS * 250, LOADERS * 400)),
        Unit("control.crc32", "2 CRC32 XOR networks (32-bit word) x 150/225/300 LUT x LOADER_LUT_SCALE",
             lut=rng(300 * ls[0], 450 * ls[1], 600 * ls[2]), ff=Range.exact(2 * 32)),
        # LUT high 250 -> 350 per stream (yosys 0.23: 911 LUT for stream in + out with their AXIS ports, default
        # build; 901 dense), central 175 -> 225
        Unit("control.streams", "stream in + out x 100/225/350 LUT (counters, TLAST, word pack)",
             lut=rng(200, 450, 700), ff=rng(2 * w, 2 * w + 128, 2 * w + 256)),
        # FF high + 64 (yosys 0.23 at both builds: 295 FF in vqhls_engine_top: the REAL_CYCLES latch and flags)
        Unit("control.cycles", f"{CYCLE_COUNTERS} 64-bit cycle counters x 64 LUT (x1..1.5), 64 FF each (+64 high)",
             lut=rng(CYCLE_COUNTERS * 64, CYCLE_COUNTERS * 64, CYCLE_COUNTERS * 96),
             ff=rng(CYCLE_COUNTERS * 64 + 64, CYCLE_COUNTERS * 64 + 64, CYCLE_COUNTERS * 64 + 128)),
        Unit("control.sequencer", "op loop, top FSM, status words: 200/350/600 LUT", lut=rng(200, 350, 600),
             ff=rng(200, 400, 800)),
        # low 20 x 100 -> 7 x 50 FF (the RTL's conv pipeline is 7 deep, flow.rtl.engine_rtl.RTL_DEPTH), central
        # 25 x 150 -> 15 x 100; SRL low 300 -> 50, central 600 -> 150 (yosys 0.23 at both builds: 90 SRL16E in
        # the conv unit; its FF 6,570 default / 6,442 dense were under the old low 10,320 / 11,792); high kept
        Unit("control.pipe", "tile-loop control pipeline 7/15/30 stages x 50/100/200 bits (RTL depth 7 .. review "
             "§3.4); SRL delay lines 50/150/1,000 LUT as memory",
             lut=rng(50, 150, 1000), lutram=rng(50, 150, 1000), ff=rng(7 * 50, 15 * 100, 30 * 200)),
    ]


def unit_glue(engine: EngineConfig) -> Unit:
    """Port muxes of the memories shared by non-inlined functions (review §3.3: 2,000-4,000 at 8x8).

    act_mem: every bank's address is muxed between its K = 4 users (stream in, conv, pool, PQ; 3 without
    PQ): banks_total * addr_bits * ceil(K/4); the write data (8*lanes bits) is muxed once per buffer (low),
    per buffer and writer pair (central: 2 per buffer), or per bank (high: each partition its own port);
    the other parameter memories (vidx, vmask, cb, dmem, ch) add a 2:1 address mux (loader / decoder) each."""
    e = engine
    k = 4 if e.pq else 3
    banks = e.num_bufs * e.act_banks
    w = 8 * e.lanes
    addr = banks * act_addr_bits(e) * mux_luts_per_bit(k)
    params = sum(clog2(max(2, d)) for d in (e.vmem_entries, e.vmem_entries, e.cb_rows, e.dmem_words, e.ch_rows))
    params += e.cols * clog2(max(2, e.ch_rows))
    data = w * mux_luts_per_bit(k)
    return Unit("glue.port_mux", "act_mem address per bank + write data per buffer/bank, K users; param memories "
                "2:1 address (review §3.3 2,000-4,000)",
                lut=rng(addr + params + e.num_bufs * data, addr + params + (banks * data + e.num_bufs * data) / 2,
                        addr + params + banks * data + banks),
                ff=Range.exact(banks))


def unit_axi(engine: EngineConfig) -> list[Unit]:
    """The engine's AXI adapters (Vitis HLS generates them; typical csynth reports of 32-bit interfaces,
    review §3.3 1,800-2,500 LUT together): m_axi (read channel, 2 RAMB18 of burst buffer = 1 BRAM36, or 0
    when Vivado maps it to LUTRAM), s_axilite (the register map), 2 AXI-Stream ports."""
    return [
        Unit("axi.m_axi", "Vitis m_axi adapter: 700/950/1,200 LUT x LOADER_LUT_SCALE, 500/700/1,000 FF, 0-1 BRAM36",
             bram36=rng(0, 1, 1), lut=rng(700 * LOADER_LUT_SCALE[0], 950 * LOADER_LUT_SCALE[1],
                                          1200 * LOADER_LUT_SCALE[2]), ff=rng(500, 700, 1000)),
        # LUT low 450 -> 250: yosys 0.23 maps the RTL's register map (vqhls_control) to 280 LUT at both builds
        Unit("axi.s_axilite", "Vitis s_axilite adapter (register map): 250/650/900 LUT (RTL: 280), 300/400/600 FF",
             lut=rng(250, 650, 900), ff=rng(300, 400, 600)),
        Unit("axi.axis", "2 AXI-Stream ports (8-bit): 2 x 60/100/150 LUT", lut=rng(120, 200, 300),
             ff=rng(120, 200, 300)),
    ]


def unit_block_design(engine: EngineConfig) -> list[Unit]:
    """The Vivado block design around the engine IP (flow/hls/vendor.py builds it). Ranges from the review
    (engine-hls-review-2.md §3.3, §3.4: +4,000-7,000 LUT, 6-9k FF); calibrate against the product guides'
    resource tables (AMD publishes them on the 'Performance and Resource Utilization' pages PG021 / PG247 /
    PG059 link to; their figures were not retrieved here) or a report_utilization -hierarchical."""
    return [
        Unit("bd.axi_dma", "AXI DMA, simple (direct register) mode, 8-bit streams, 26-bit length: review §3.3 "
             "1.7-2.5k LUT; calibrate: PG021 resource utilization", bram36=rng(0, 1, 2),
             lut=rng(1700, 2100, 2500), ff=rng(2400, 3000, 3800), lutram=rng(100, 200, 300)),
        Unit("bd.smartconnect", "SmartConnect 3x1 with a 32->64 upsizer (engine m_axi + DMA MM2S/S2MM -> HP0): "
             "review §3.3 2-3.5k LUT; calibrate: PG247", lut=rng(2000, 2700, 3500), ff=rng(2800, 3600, 4600),
             lutram=rng(100, 300, 500)),
        Unit("bd.interconnect", "AXI Interconnect 1x2 with AXI3->AXI4-Lite conversion (GP0 -> engine control, DMA "
             "lite): review §3.3 0.5-1k LUT; calibrate: PG059 protocol converter / crossbar tables",
             lut=rng(500, 750, 1000), ff=rng(700, 1000, 1400)),
        Unit("bd.ps7_reset", "Processor System Reset (proc_sys_reset): ~20-40 LUT, ~40-60 FF",
             lut=rng(20, 30, 40), ff=rng(40, 50, 60)),
    ]


# ---- run-time multiplies -----------------------------------------------------------------
# multiplies the resource model counts in their own units: the PE products and the requantization
# resid_mul: Mr x residual (in unit_requant); pq_square: the PQ encoder's squarers (fabric, in unit_pq)
DECLARED_MULTIPLIES = ("pe_mul_dsp", "pe_mul_lut", "requantize", "resid_mul", "pq_square")
MULT_DSP = Range(1.0, 3.0, 4.0)       # DSP48E1 per 32x32 run-time multiply: narrow / Vitis default / 2x2 tiles
# multiplies assumed when no firmware has been counted yet: was 2, now 3 = the RTL engine's own (yosys 0.23 at
# both builds: conv plan_op 20x20 -> 2 DSP, pool plan_op 16x16 -> 1, loader check_op 32x32 -> 3; 6 DSP in all)
MULT_ALLOWANCE = 3


def function_base(name: str) -> str:
    """'vqhls::check_op(const op_t&, unsigned)' -> 'check_op' (namespaces and arguments dropped)."""
    return name.split("(")[0].split("<")[0].split("::")[-1].strip()


def undeclared_multiplies(counts: dict[str, int]) -> dict[str, int]:
    """The counts of functions other than the declared product / requantization units, non-zero only."""
    return {f: int(n) for f, n in counts.items() if n and function_base(f) not in DECLARED_MULTIPLIES}


def unit_runtime_mults(counts: dict[str, int] | None) -> Unit:
    """Run-time multiplies (two run-time operands) outside the declared units: MULT_DSP each
    (1 / 3 / 4 DSP48E1). ``counts``: flow.hls.lint.multiplier_counts of the emitted firmware
    (function -> count); None: MULT_ALLOWANCE multiplies (no firmware counted yet)."""
    if counts is None:
        return Unit("mult.runtime", f"allowance: {MULT_ALLOWANCE} run-time multiplies x 1/3/4 DSP "
                    "(no firmware counted; the hls stage passes flow.hls.lint.multiplier_counts)",
                    dsp=MULT_DSP * MULT_ALLOWANCE)
    extra = undeclared_multiplies(counts)
    n = sum(extra.values())
    what = ", ".join(f"{function_base(f)} {c}" for f, c in sorted(extra.items())) or "none"
    return Unit("mult.runtime", f"counted in the firmware (flow.hls.lint.multiplier_counts): {n} x 1/3/4 DSP "
                f"({what})", dsp=MULT_DSP * n)


def dsp_units(engine: EngineConfig, board: Board) -> dict[str, int]:
    """DSPs per counted unit: the array (see array_dsp) and the requantization lanes (6 each, 4 for the
    average pool's: central)."""
    return {"array.mult_dsp": array_dsp(engine, board),
            "requant": int(sum(u.dsp.central for u in (unit_requant(engine), unit_requant_pool(engine),
                                                      unit_requant_pq(engine))))}


# ---- estimate -------------------------------------------------------------------
@dataclass(frozen=True)
class Totals:
    """One end of the range, summed over the units."""

    bram36: float
    dsp: int
    lut: int
    ff: int
    lutram: int


def _total(units: dict[str, Unit], end: str) -> Totals:
    s = {r: sum(getattr(u.get(r), end) for u in units.values()) for r in RESOURCES}
    up = math.ceil if end == "high" else round
    return Totals(bram36=float(s["bram36"]), dsp=int(up(s["dsp"] - 1e-9)), lut=int(up(s["lut"] - 1e-9)),
                  ff=int(up(s["ff"] - 1e-9)), lutram=int(up(s["lutram"] - 1e-9)))


@dataclass
class Usage:
    """Modelled usage of one engine build: the units and the low / central / high totals.

    ``bram36``, ``dsp``, ``lut``, ``ff``, ``lutram`` are the HIGH end: what ``check_fit`` holds
    against the budgets. ``counts``: the firmware's run-time multiply counts the estimate used (None:
    the allowance)."""

    units: dict[str, Unit]
    low: Totals
    central: Totals
    high: Totals
    counts: dict[str, int] | None = None

    @property
    def bram36(self) -> float:
        return self.high.bram36

    @property
    def dsp(self) -> int:
        return self.high.dsp

    @property
    def lut(self) -> int:
        return self.high.lut

    @property
    def ff(self) -> int:
        return self.high.ff

    @property
    def lutram(self) -> int:
        return self.high.lutram

    def range(self, res: str) -> tuple[float, float, float]:
        """(low, central, high) of one resource ("bram36", "dsp", "lut", "ff", "lutram")."""
        return (getattr(self.low, res), getattr(self.central, res), getattr(self.high, res))

    @property
    def per_unit(self) -> dict[str, dict]:
        """JSON-ready: unit -> {resource: {low, central, high}, source} (resources a unit uses)."""
        out = {}
        for name, u in self.units.items():
            d: dict = {r: dict(zip(("low", "central", "high"), u.get(r).as_tuple())) for r in RESOURCES
                       if u.get(r) != ZERO}
            d["source"] = u.source
            out[name] = d
        return out


def _board(board: Board | str) -> Board:
    return get_board(board) if isinstance(board, str) else board


def bram_range(mem: Memory) -> Range:
    """BRAM36 tiles of ``mem.count`` block-RAM memories: low = central = count * RAMB18 / 2 (a tile holds two
    RAMB18 of any memories: Vivado's "Block RAM Tile" = RAMB36 + RAMB18 / 2, as yosys' count; calibrated:
    yosys 0.23 at the default build packs chmem's 24 RAMB18 as 12 tiles, low moved from 16 to 12), high =
    count * ceil(RAMB18 / 2) (no two memories share a tile: the old exact figure)."""
    return Range(mem.count * mem.bram18_each / 2, mem.count * mem.bram18_each / 2, float(mem.bram36))


# the RTL keeps each column's 5-bit shift beside its 3 x 32-bit channel words as a LUTRAM (ch_shift): yosys 0.23
# at both builds, 8 RAM64M = 32 LUT per column (256 at cols = 8); the HLS engine's one 101-bit word has none
CH_SHIFT_BITS = 5


def unit_bram_memory(mem: Memory, engine: EngineConfig) -> Unit:
    """One block-RAM memory of ``memories``: bram_range; chmem adds the RTL's shift LUTRAM as the high end
    (low = central = 0: the HLS engine's 101-bit word holds the shift in the same RAMB18s)."""
    src = (f"{mem.count} x {mem.depth}x{mem.width} {mem.ports}: {mem.bram18_each} RAMB18 each, "
           f"{_fmt(mem.count * mem.bram18_each / 2)}-{mem.bram36} BRAM36 (RAMB18 tiling; tiles shared or not)")
    if mem.name != "chmem":
        return Unit(f"mem.{mem.name}", src, bram36=bram_range(mem))
    shift = mem.count * lutram_range(mem.depth, CH_SHIFT_BITS, "s2p")[1]
    r = rng(0, 0, shift)
    return Unit(f"mem.{mem.name}", src + f"; RTL: the shift in LUTRAM, 0-{_fmt(shift)} LUT (yosys 0.23: 256 at cols 8)",
                bram36=bram_range(mem), lut=r, lutram=r)


def engine_units(engine: EngineConfig, board: Board | str = "pynq-z2",
                 counts: dict[str, int] | None = None) -> list[Unit]:
    """Every unit of the build, memories first."""
    b = _board(board)
    units: list[Unit] = []
    for mem in memories(engine):
        if mem.impl == "bram":
            units.append(unit_bram_memory(mem, engine))
        else:
            lo, ce, hi = lutram_range(mem.depth, mem.width, mem.ports)
            r = Range(lo, ce, hi) * mem.count
            units.append(Unit(f"mem.{mem.name}", f"{mem.count} x {mem.depth}x{mem.width} {mem.ports} LUTRAM: "
                              "RAM32M/RAM64M packing .. 1 LUT per bit per 64 deep", lut=r, lutram=r))
    units.append(Unit("mem.loader_fifos", "loader FIFOs at least one burst deep: 0-4 BRAM36 (review §3.1)",
                      bram36=rng(0, 2, 4)))
    units += [unit_array_dsp(engine, b), unit_array_fabric(engine),
              unit_array_rowmux(engine) if engine.row_mux else unit_array_mux(engine),
              unit_array_adders(engine), unit_acc_read(engine), unit_crossbar(engine),
              unit_decoder_rowmux(engine) if engine.row_mux else unit_decoder(engine),
              unit_requant(engine), unit_requant_pool(engine), unit_requant_pq(engine), unit_pool(engine),
              unit_pq(engine), unit_runtime_mults(counts)]
    units += unit_control(engine)
    units.append(unit_glue(engine))
    units += unit_axi(engine)
    units += unit_block_design(engine)
    return units


def estimate(engine: EngineConfig, board: Board | str = "pynq-z2", counts: dict[str, int] | None = None) -> Usage:
    """Modelled BRAM36 / DSP / LUT / FF of ``engine`` on ``board`` as a low / central / high range,
    with the per-unit breakdown. ``counts``: run-time multiplies per firmware function
    (flow.hls.lint.multiplier_counts); None charges the MULT_ALLOWANCE."""
    units = {u.name: u for u in engine_units(engine, board, counts)}
    return Usage(units=units, low=_total(units, "low"), central=_total(units, "central"),
                 high=_total(units, "high"), counts=None if counts is None else dict(counts))


# ---- budgets ----------------------------------------------------------------------
class ResourceError(ValueError):
    """The engine does not fit the board's budget; the message lists every over-used resource."""


def budgets(board: Board | str, *, bram_frac: float = BRAM_FRAC, dsp_frac: float = DSP_FRAC,
            lut_frac: float = LUT_FRAC) -> list[tuple[str, str, int, float, float]]:
    """(label, Usage attribute, available, fraction, budget) per checked resource.

    BRAM36 <= bram_frac, DSP <= dsp_frac, LUT and FF <= lut_frac of the part; LUTRAM <= lut_frac
    of the LUTs that can be memory (SLICEM), when the board states them.
    """
    b = _board(board)
    rows = [("BRAM36", "bram36", b.bram36, bram_frac), ("DSP", "dsp", b.dsp, dsp_frac),
            ("LUT", "lut", b.lut, lut_frac), ("FF", "ff", b.ff, lut_frac)]
    if b.lutram:
        rows.append(("LUTRAM", "lutram", b.lutram, lut_frac))
    return [(label, attr, avail, frac, frac * avail) for label, attr, avail, frac in rows]


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) and x != int(x) else f"{int(x)}"


_FIXES = {
    "BRAM36": "shrink vmem_entries / cb_rows / dmem_words / max_ops, or build without the lookup unit (pq=False)",
    "DSP": "lower dsp_rows (products move to LUTs) or rows, or remove run-time multiplies from the firmware",
    "LUT": "lower rows, or raise dsp_rows while DSPs remain",
    "FF": "lower rows",
    "LUTRAM": "lower acc_groups or rows (accumulators are LUTRAM)",
}


LEVELS = ("low", "central", "high")


def over_budget(usage: Usage, board: Board | str, *, bram_frac: float = BRAM_FRAC, dsp_frac: float = DSP_FRAC,
                lut_frac: float = LUT_FRAC, level: str = "high", high_frac: float = HIGH_FRAC) -> list[str]:
    """One line per over-used resource. ``level`` "high" (the default): the CENTRAL figure above its budget
    (``*_frac`` of the part) or the HIGH end above ``high_frac`` of the part (the high end is yosys' loose
    mapping, see HIGH_FRAC); "central" / "low": that figure above its budget. A line reads
    "LUT high 41000 (low 30000, central 35000) / 37240 (70% of 53200): <fix>" for the budget, or
    "LUT high 56000 (...) / 53200 (100% of 53200, the high end): <fix>" for the part."""
    over = []
    at = LEVELS.index("central" if level == "high" else level)
    for label, attr, avail, frac, budget in budgets(board, bram_frac=bram_frac, dsp_frac=dsp_frac, lut_frac=lut_frac):
        lo, ce, hi = usage.range(attr)
        head = f"{label} high {_fmt(hi)} (low {_fmt(lo)}, central {_fmt(ce)})"
        if (lo, ce, hi)[at] > budget + 1e-9:
            over.append(f"{head} / {int(budget)} ({frac:.0%} of {avail}): {_FIXES[label]}")
        elif level == "high" and hi > high_frac * avail + 1e-9:
            over.append(f"{head} / {int(high_frac * avail)} ({high_frac:.0%} of {avail}, the high end): "
                        f"{_FIXES[label]}")
    return over


def check_fit(engine: EngineConfig, board: Board | str = "pynq-z2", *, counts: dict[str, int] | None = None,
              bram_frac: float = BRAM_FRAC, dsp_frac: float = DSP_FRAC, lut_frac: float = LUT_FRAC,
              level: str = "high") -> Usage:
    """The usage of ``engine`` if it fits ``board`` at ``level`` (see ``over_budget``; "high": the central
    figure within the budgets and the high end within the part); else ResourceError naming every over-used
    resource with its range and the fix. ``counts``: the
    firmware's run-time multiplies (see ``estimate``)."""
    b = _board(board)
    usage = estimate(engine, b, counts)
    over = over_budget(usage, b, bram_frac=bram_frac, dsp_frac=dsp_frac, lut_frac=lut_frac, level=level)
    if over:
        raise ResourceError(
            f"engine {engine.hash()} does not fit {b.name} ({b.part}) at the {level} end of the modelled range:\n"
            + "\n".join("  " + line for line in over)
            + f"\n  fix: use config_for_board({b.name!r}) (flow.boards.sizing), or change the fields above")
    return usage


def table(usage: Usage, board: Board | str) -> str:
    """The modelled range against the part and the budgets: resource, low, central, high, available,
    high percent, budget (OVER when the central figure exceeds the budget or the high end HIGH_FRAC of the part;
    "high over budget" when only the high end is above the budget line)."""
    b = _board(board)
    lines = [f"{b.name} ({b.part}), modelled usage (low / central / high; checked: the central figure against "
             f"the budget, the high end against {HIGH_FRAC:.0%} of the part):",
             f"{'resource':<8} {'low':>8} {'central':>8} {'high':>8} {'available':>10} {'high %':>7} {'budget':>14}"]
    for label, attr, avail, frac, budget in budgets(b):
        lo, ce, hi = usage.range(attr)
        flag = ("  OVER" if ce > budget + 1e-9 or hi > HIGH_FRAC * avail + 1e-9
                else "  high over budget" if hi > budget + 1e-9 else "")
        lines.append(f"{label:<8} {_fmt(lo):>8} {_fmt(ce):>8} {_fmt(hi):>8} {avail:>10} {100 * hi / avail:>6.1f}% "
                     f"{int(budget):>7} ({frac:.0%}){flag}")
    return "\n".join(lines)


def breakdown(usage: Usage) -> str:
    """Per-unit table (modelled): unit, then low/central/high of LUT and FF, central DSP and BRAM36, source."""
    lines = [f"{'unit':<20}{'BRAM36':>8}{'DSP':>12}{'LUT low':>10}{'central':>9}{'high':>9}{'FF central':>11}  source"]
    for name, u in usage.units.items():
        if all(u.get(r) == ZERO for r in RESOURCES):
            continue
        d = u.dsp
        dsp = _fmt(d.central) if d.low == d.high else f"{_fmt(d.low)}-{_fmt(d.high)}"
        lines.append(f"{name:<20}{_fmt(round(u.bram36.central, 1)):>8}{dsp:>12}"
                     + "".join(f"{_fmt(round(x)):>{w}}" for x, w in zip(u.lut.as_tuple(), (10, 9, 9)))
                     + f"{_fmt(round(u.ff.central)):>11}  {u.source}")
    return "\n".join(lines)


def usage_json(usage: Usage, board: Board | str) -> dict:
    """JSON of a Usage for resources.json: the high end (checked), the range per resource, the
    firmware's multiply counts (None: the allowance), and every unit with its source."""
    b = _board(board)
    return {"board": b.name, "modelled": {r: getattr(usage.high, r) for r in RESOURCES},
            "range": {r: dict(zip(("low", "central", "high"), usage.range(r))) for r in RESOURCES},
            "multiplier_counts": usage.counts, "per_unit": usage.per_unit}
