"""Resource model of the engine: BRAM36, DSP, LUT, FF (and LUTRAM) of an EngineConfig.

Everything here is *modelled*, not measured: no vendor tool runs. The model
follows the hardware the HLS templates implement (flow/compile/engine.py,
hls_templates/engine/) unit by unit; each unit is a small function whose
docstring states its formula. Calibrate the constants against a post-route
``report_utilization`` when one exists.

Memories (``memories(engine)``), storage rule
--------------------------------------------
A memory with ``depth * width <= 1024`` bits, or ``depth <= 64`` (shallow,
possibly wide), is distributed RAM (LUTRAM); every other memory is block RAM.
This is the model's rule, close to Vivado's own inference threshold, and it is
*enforced*, not guessed: the templates render ``#pragma HLS BIND_STORAGE ...
impl=`` from ``Memory.impl``.

* LUTRAM: ``ceil(depth / 64) * width`` LUTs for a simple dual port memory
  (one write, one read port), twice that for two read ports (true dual port or
  "2r"): a LUT6 holds 64 x 1 bit per read port. (Real RAM32M/RAM64M packing is
  0.67-1.33 LUT per bit for SDP; 1 LUT per bit is the model's middle value.)
* BRAM: the cheapest tiling in RAMB18 units, ``ceil(depth / D) * ceil(width / W)``
  over the RAMB18 aspect ratios D x W: 16Kx1, 8Kx2, 4Kx4, 2Kx9, 1Kx18 (true dual
  port) and 512x36 (simple dual port only). These are half of the RAMB36 ones
  (32Kx1 ... 1Kx36, 512x72 SDP), so tiling in RAMB18 units loses nothing. One
  configuration per memory (no mixed-aspect tilings). A memory's RAMB18s are
  reported as ``ceil(bram18 / 2)`` BRAM36 tiles: Vivado packs two RAMB18 of one
  memory into one RAMB36 tile. The model does *not* pack RAMB18s of different
  memories into one tile, although the placer can (Vivado then reports half
  tiles); so an odd RAMB18 count costs half a tile more than a placer might
  need: conservative by at most 0.5 tile per memory.

Multipliers (DSP48E1 on 7-series, DSP48E2 on UltraScale+)
--------------------------------------------------------
* Array: ``engine.multipliers`` products of 8 x 9 bits (int8 weight x int8 or
  uint8 activation widened to 9 bits, 17-bit signed product). ``dsp_rows *
  cols * slots`` of them bind to DSPs. On DSP48E1 that is ONE product per DSP:
  its A port is 25 bits, and two 9-bit activations packed as ``a << 18 | b``
  need 27 bits (two 17-bit products plus separation), so the INT8 packing of
  Xilinx WP487 (two products sharing one operand in one DSP) needs the 27-bit
  A port of DSP48E2. On DSP48E2 (UltraScale+) the products of two rows (which
  share each column's weight) could pack into one DSP, but the templates do not
  write that packing and Vitis HLS does not infer it: one product per DSP on
  both families (``array_dsp``). The remaining
  ``(rows - dsp_rows) * cols * slots`` products are fabric multipliers of
  ``8 * 9 * 1.0 = 72`` LUT each (estimate: a LUT-mapped a x b multiplier costs
  about a*b LUTs, one per partial-product bit on the carry chains). The templates
  must bind these with ``BIND_OP ... impl=fabric`` (otherwise Vitis HLS may put
  them on DSPs too).
* Requantization ``clamp((acc*M + res*Mr + round) >> S)``: ``acc(32b) x M(32b)``
  is 4 DSPs (each signed 32-bit operand splits into a 17-bit unsigned low part
  and a 15-bit signed high part; the 2 x 2 partial products are <= 18 x 18
  signed, each fits a 25 x 18 (or 27 x 18) multiplier, and the 17-bit shifted
  PCIN cascade sums them); ``Mr(32b) x res(9b)`` is 2 DSPs (32 bits exceed both
  the 25/27-bit A and the 18-bit B port: two 16-bit slices of Mr times the
  9-bit residual). 6 DSPs per lane on both families. Lanes: ``cols`` for the
  conv drain, 1 for average pooling, 1 for the PQ unit (when ``pq``).
* The PQ encoder's ``pq_k_max`` squarers (10 x 10 bits) are fabric.

LUT and FF: one function per unit (array muxes, PE adder trees, fabric
multipliers, activation crossbar, decoder, requantization lanes, pooling, PQ
encoder / argmin / lookup, AXI adapters and control). Adders cost 1 LUT per
bit (carry chain); an m:1 mux costs ``ceil(m/4)`` LUT6 per bit up to 16:1 (a
LUT6 is a 4:1 mux, F7/F8 combine four of them). FF counts the pipeline
registers each unit needs at II=1.

Not modelled: the Vivado block design around the engine IP (AXI DMA,
SmartConnect, PS7 reset, interrupt glue: a few thousand LUT and a few BRAM36),
routing congestion, timing. The budget fractions of ``check_fit`` (80% BRAM,
90% DSP, 70% LUT/FF) leave room for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flow.boards import Board, get_board
from flow.compile.engine import EngineConfig
from flow.compile.program import DESC_WORDS

# ---- default budgets (fractions of the part) ---------------------------------
BRAM_FRAC = 0.8
DSP_FRAC = 0.9
LUT_FRAC = 0.7

# ---- constants of the model ---------------------------------------------------
ACT_BITS = 9               # activation as it enters a multiplier (int8 or uint8 widened)
WEIGHT_BITS = 8
PROD_BITS = ACT_BITS + WEIGHT_BITS   # 17-bit signed product
ACC_BITS = 32
CH_BITS = 32 + 32 + 5 + 32          # bias, mult, shift, res_mult: 101 bits per channel
FABRIC_LUT_PER_PP_BIT = 1.0         # fabric multiplier: LUT per partial-product bit (a*b of them)
LUTRAM_DEPTH = 64                   # a LUT6 holds 64 x 1 bit
LUTRAM_MAX_BITS = 1024              # storage rule: <= 1024 bits is LUTRAM
OPS_WORDS = DESC_WORDS              # 32-bit words per op descriptor (flow.compile.program)
REQUANT_DSP = 4 + 2                 # acc x M (2x2 tiles) + res x Mr (2 tiles)
REQUANT_PIPE_STAGES = 4             # 64-bit registers along one requantization lane
PQ_DIFF_BITS = 10                   # activation - prototype, both int8 or uint8 held as 9 bits
PQ_ELEM_BITS = 9                    # a stored prototype element (pq_config::elem_t, int8 or uint8)

# AXI adapters and control, constants from typical Vitis HLS reports of 32-bit
# interfaces (gmem_m_axi: 2 RAMB18, ~580-820 LUT, ~510-730 FF; control_s_axi:
# ~490 LUT, ~290 FF for a handful of registers). The control FSM / op decode /
# address counters constant is a guess for this engine's units.
INFRA = {
    "infra.m_axi":     dict(bram18=2, lut=800, ff=700),
    "infra.s_axilite": dict(bram18=0, lut=500, ff=300),
    "infra.axis":      dict(bram18=0, lut=2 * 60, ff=2 * 60),    # stream in + stream out
    "infra.control":   dict(bram18=0, lut=1_500, ff=2_000),
}

# RAMB18 aspect ratios (depth, width)
BRAM18_TDP = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18))
BRAM18_SDP_ONLY = ((512, 36),)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


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


def fabric_mult_luts(a_bits: int, b_bits: int) -> float:
    """LUT-mapped a x b multiplier: a * b * 1.0 LUT (estimate; 8 x 9 -> 72)."""
    return a_bits * b_bits * FABRIC_LUT_PER_PP_BIT


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


def _unit(bram36: float = 0, dsp: int = 0, lut: float = 0, ff: float = 0, lutram: float = 0) -> dict[str, float]:
    return {"bram36": float(bram36), "dsp": float(dsp), "lut": float(lut), "ff": float(ff), "lutram": float(lutram)}


# ---- units ------------------------------------------------------------------------
def dsp_products(engine: EngineConfig) -> int:
    """Array products bound to DSPs: dsp_rows * cols * slots."""
    return engine.dsp_rows * engine.cols * engine.slots


def fabric_products(engine: EngineConfig) -> int:
    """Array products in fabric: (rows - dsp_rows) * cols * slots."""
    return (engine.rows - engine.dsp_rows) * engine.cols * engine.slots


def array_dsp(engine: EngineConfig, board: Board) -> int:
    """DSPs of the array: one product per DSP, on both families. On DSP48E2 two rows sharing a
    weight could pack into one DSP (WP487: ceil(dsp_rows / 2) * cols * slots), but the templates'
    ``pe_mul_dsp`` forms one product per multiplier and Vitis HLS does not pack them by itself, so
    the model counts what the code builds."""
    return dsp_products(engine)


def array_fabric_mult(engine: EngineConfig) -> dict[str, float]:
    """Fabric products: LUT = n_fabric * 8*9*1.0; FF = n_fabric * 2 * 17 (two pipeline stages)."""
    n = fabric_products(engine)
    return _unit(lut=n * fabric_mult_luts(WEIGHT_BITS, ACT_BITS), ff=n * 2 * PROD_BITS)


def array_mux(engine: EngineConfig) -> dict[str, float]:
    """Sparse build: one m:1 mux of 9 bits per slot of every PE, LUT = rows*cols*slots * 9 * ceil(m/4);
    FF = 9 per slot (registered mux output). Dense build (n == m): no muxes."""
    if engine.dense:
        return _unit()
    n = engine.rows * engine.cols * engine.slots
    return _unit(lut=n * ACT_BITS * mux_luts_per_bit(engine.m), ff=n * ACT_BITS)


def array_adders(engine: EngineConfig) -> dict[str, float]:
    """Per PE: an adder tree over its slots 17-bit products plus the 32-bit accumulate.

    LUT = rows*cols * (adder_tree(slots, 17) + 32); FF = LUT (every adder output registered).
    Modelled in fabric even for DSP products (Vitis may fold one add into a DSP's post-adder).
    """
    per_pe = adder_tree(engine.slots, PROD_BITS) + ACC_BITS
    n = engine.rows * engine.cols * per_pe
    return _unit(lut=n, ff=n)


def crossbar(engine: EngineConfig) -> dict[str, float]:
    """Activation read path: per bank a num_bufs:1 buffer select, per row an act_banks:1 bank select,
    each 8*lanes bits wide. LUT = 8L * (act_banks * mux(num_bufs) + rows * mux(act_banks));
    FF = 8L * (act_banks + rows) (bank output and row registers)."""
    w = 8 * engine.lanes
    lut = w * (engine.act_banks * mux_luts_per_bit(engine.num_bufs) + engine.rows * mux_luts_per_bit(engine.act_banks))
    return _unit(lut=lut, ff=w * (engine.act_banks + engine.rows))


def decoder(engine: EngineConfig) -> dict[str, float]:
    """Weight decode into the columns' stationary weight registers.

    Per column and lane an 8-bit source select (codebook port A / B, dense word, zero: 1 LUT per bit):
    cols * lanes * 8. Sparse builds add, per column, an m:1 mux of 8 bits per slot (the kept weight of
    each group of m lanes) and mask -> slot-select logic (2 LUT per lane):
    cols * (slots * 8 * ceil(m/4) + 2 * lanes). FF: the decoded word (cols * lanes * 8) and the
    double-buffered weight + select registers (2 * cols * slots * (8 + ceil(log2 m))).
    """
    e = engine
    lut = e.cols * e.lanes * 8
    if not e.dense:
        lut += e.cols * (e.slots * 8 * mux_luts_per_bit(e.m) + 2 * e.lanes)
    ff = e.cols * e.lanes * 8 + 2 * e.cols * e.slots * (8 + clog2(e.m))
    return _unit(lut=lut, ff=ff)


def requant_lane_luts() -> int:
    """One requantization lane: bias add (32) + residual-product add (64) + rounding add (64)
    + 64-bit variable right shift by S in 1..31 (3 levels of 4:1 muxes: 64 * 3)
    + clamp to [lo, hi] (two 64-bit compares + an 8-bit 3:1 select: 2*64 + 8*2) = 496 LUT."""
    return 32 + 64 + 64 + 64 * 3 + (2 * 64 + 8 * 2)


def requant_lanes(engine: EngineConfig) -> int:
    """cols lanes (conv drain) + 1 (average pool) + 1 (PQ, when pq)."""
    return engine.cols + 1 + (1 if engine.pq else 0)


def requant(engine: EngineConfig) -> dict[str, float]:
    """Requantization lanes: DSP = 6 per lane; LUT = 496 per lane; FF = 4 * 64 + 32 per lane."""
    n = requant_lanes(engine)
    return _unit(dsp=n * REQUANT_DSP, lut=n * requant_lane_luts(), ff=n * (REQUANT_PIPE_STAGES * 64 + 32))


def pool(engine: EngineConfig) -> dict[str, float]:
    """Max and average pooling over one activation word per cycle.

    Bank read mux (8L bits, act_banks:1) shared by both; max: lanes 8-bit compare + select (16 LUT);
    average: lanes 32-bit window-sum accumulators (32 LUT) and a lanes:1 32-bit mux into its one
    requantization lane (counted in ``requant``). FF: 8L (read) + lanes * (8 + 32).
    """
    e = engine
    w = 8 * e.lanes
    lut = w * mux_luts_per_bit(e.act_banks) + e.lanes * 16 + e.lanes * 32 + 32 * mux_luts_per_bit(e.lanes)
    return _unit(lut=lut, ff=w + e.lanes * (8 + 32))


def pq_dist_bits(engine: EngineConfig) -> int:
    """Width of a squared-distance accumulator, as the templates size it: bits of the largest
    distance pq_v_max * 383^2 (383 = 255 - (-128)) plus one spare bit (22 for v_max = 9)."""
    return (engine.pq_v_max * 383 * 383).bit_length() + 1


def pq_encoder(engine: EngineConfig) -> dict[str, float]:
    """pq_k_max distance units: 10-bit subtract (10) + 10-bit squarer (55, fabric) + accumulator
    (dist_bits) each; input path: act_banks:1 word mux (8L bits) and a lanes:1 byte select.
    FF per unit: 10 + 20 + dist_bits; input 8L + 8. (A "prototype" read is one of pq_k_max memories.)"""
    e = engine
    if not e.pq:
        return _unit()
    dw = pq_dist_bits(e)
    per = PQ_DIFF_BITS + squarer_luts(PQ_DIFF_BITS) + dw
    lut = e.pq_k_max * per + 8 * e.lanes * mux_luts_per_bit(e.act_banks) + 8 * mux_luts_per_bit(e.lanes)
    ff = e.pq_k_max * (PQ_DIFF_BITS + 2 * PQ_DIFF_BITS + dw) + 8 * e.lanes + 8
    return _unit(lut=lut, ff=ff)


def pq_argmin(engine: EngineConfig) -> dict[str, float]:
    """Argmin tree over pq_k_max leaves: pq_k_max - 1 nodes, each a dist_bits compare plus a
    (dist_bits + code bits) 2:1 select, registered: LUT = (K-1) * (2*dw + cb), FF = (K-1) * (dw + cb)."""
    e = engine
    if not e.pq:
        return _unit()
    dw, cb = pq_dist_bits(e), max(1, clog2(e.pq_k_max))
    n = e.pq_k_max - 1
    return _unit(lut=n * (2 * dw + cb), ff=n * (dw + cb))


def pq_lookup(engine: EngineConfig) -> dict[str, float]:
    """Lookup-accumulate: per column a 32-bit add of a 16-bit LUT entry into pq_acc: LUT = FF = cols * 32."""
    if not engine.pq:
        return _unit()
    return _unit(lut=engine.cols * ACC_BITS, ff=engine.cols * ACC_BITS)


def dsp_units(engine: EngineConfig, board: Board) -> dict[str, int]:
    """DSPs per unit: array (see array_dsp) and the requantization lanes (6 each)."""
    return {"array.mult_dsp": array_dsp(engine, board), "requant": requant_lanes(engine) * REQUANT_DSP}


# ---- estimate -------------------------------------------------------------------
@dataclass
class Usage:
    """Modelled usage of one engine build. per_unit[name] = {bram36, dsp, lut, ff, lutram}."""

    bram36: float
    dsp: int
    lut: int
    ff: int
    per_unit: dict[str, dict[str, float]] = field(default_factory=dict)
    lutram: int = 0      # LUTs used as distributed RAM (part of lut; limited to SLICEM LUTs)


def _board(board: Board | str) -> Board:
    return get_board(board) if isinstance(board, str) else board


def estimate(engine: EngineConfig, board: Board | str = "pynq-z2") -> Usage:
    """Modelled BRAM36 / DSP / LUT / FF of ``engine`` on ``board``, with the per-unit breakdown."""
    b = _board(board)
    units: dict[str, dict[str, float]] = {}
    for mem in memories(engine):
        units[f"mem.{mem.name}"] = _unit(bram36=mem.bram36, lut=mem.luts, lutram=mem.luts)
    units["array.mult_dsp"] = _unit(dsp=array_dsp(engine, b))
    units["array.mult_fabric"] = array_fabric_mult(engine)
    units["array.mux"] = array_mux(engine)
    units["array.adders"] = array_adders(engine)
    units["crossbar"] = crossbar(engine)
    units["decoder"] = decoder(engine)
    units["requant"] = requant(engine)
    units["pool"] = pool(engine)
    units["pq.encoder"] = pq_encoder(engine)
    units["pq.argmin"] = pq_argmin(engine)
    units["pq.lookup"] = pq_lookup(engine)
    for name, c in INFRA.items():
        units[name] = _unit(bram36=cdiv(c["bram18"], 2), lut=c["lut"], ff=c["ff"])
    tot = {k: sum(u[k] for u in units.values()) for k in ("bram36", "dsp", "lut", "ff", "lutram")}
    return Usage(bram36=tot["bram36"], dsp=int(round(tot["dsp"])), lut=int(round(tot["lut"])),
                 ff=int(round(tot["ff"])), per_unit=units, lutram=int(round(tot["lutram"])))


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
    "DSP": "lower dsp_rows (products move to LUTs) or rows",
    "LUT": "lower rows, or raise dsp_rows while DSPs remain",
    "FF": "lower rows",
    "LUTRAM": "lower acc_groups or rows (accumulators are LUTRAM)",
}


def over_budget(usage: Usage, board: Board | str, *, bram_frac: float = BRAM_FRAC, dsp_frac: float = DSP_FRAC,
                lut_frac: float = LUT_FRAC) -> list[str]:
    """One line per resource of ``usage`` above its budget: "BRAM36 130 / 112 (80% of 140): <fix>"."""
    over = []
    for label, attr, avail, frac, budget in budgets(board, bram_frac=bram_frac, dsp_frac=dsp_frac, lut_frac=lut_frac):
        used = getattr(usage, attr)
        if used > budget + 1e-9:
            over.append(f"{label} {_fmt(used)} / {int(budget)} ({frac:.0%} of {avail}): {_FIXES[label]}")
    return over


def check_fit(engine: EngineConfig, board: Board | str = "pynq-z2", *, bram_frac: float = BRAM_FRAC,
              dsp_frac: float = DSP_FRAC, lut_frac: float = LUT_FRAC) -> Usage:
    """The usage of ``engine`` if it fits ``board``'s budget; else ResourceError naming every
    over-used resource as "BRAM36 130 / 112 (80% of 140)" and the fix."""
    b = _board(board)
    usage = estimate(engine, b)
    over = over_budget(usage, b, bram_frac=bram_frac, dsp_frac=dsp_frac, lut_frac=lut_frac)
    if over:
        raise ResourceError(
            f"engine {engine.hash()} does not fit {b.name} ({b.part}) under the modelled budget:\n"
            + "\n".join("  " + line for line in over)
            + f"\n  fix: use EngineConfig.for_board({b.name!r}) (flow.boards.sizing), or change the fields above")
    return usage


def table(usage: Usage, board: Board | str) -> str:
    """The usage against the part and the default budgets: resource, used, available, percent, budget."""
    b = _board(board)
    lines = [f"{b.name} ({b.part}), modelled usage:",
             f"{'resource':<8} {'used':>9} {'available':>10} {'percent':>8} {'budget':>14}"]
    for label, attr, avail, frac, budget in budgets(b):
        used = getattr(usage, attr)
        flag = "" if used <= budget + 1e-9 else "  OVER"
        lines.append(f"{label:<8} {_fmt(used):>9} {avail:>10} {100 * used / avail:>7.1f}% "
                     f"{int(budget):>7} ({frac:.0%}){flag}")
    return "\n".join(lines)


def breakdown(usage: Usage) -> str:
    """Per-unit table (modelled): unit, BRAM36, DSP, LUT, FF, LUTRAM; units using nothing are left out."""
    keys = ("bram36", "dsp", "lut", "ff", "lutram")
    lines = [f"{'unit':<18}" + "".join(f"{k:>9}" for k in keys)]
    for name, u in usage.per_unit.items():
        if any(u[k] for k in keys):
            lines.append(f"{name:<18}" + "".join(f"{_fmt(round(u[k], 1)):>9}" for k in keys))
    return "\n".join(lines)
