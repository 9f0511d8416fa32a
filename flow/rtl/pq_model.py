"""Cycle model of the RTL PQ core (hls_templates/rtl/pq_engine.v.j2, module ``vqhls_pq_engine``).

Clock edges are counted from the edge that accepts a layer's first patch element (edge 0) to the
edge that accepts its last accumulator beat; the element stream is always valid and the
accumulator stream always ready (back-pressure only adds cycles).

Stage latencies (edges):

    E0  element accepted, prototype word read (proto_mem[s*v + e])           edge t
    E1  K squared differences (a - p_k)^2                                     t + 1
    E2  K distance accumulators: a subvector's distances final at            t_last + 2
    A   argmin tree, max(levels, 1) edges (levels = ceil(log2 K); the last
        level writes the code queue)                                          t_last + ENC
        ENC = 2 + max(levels, 1)           (K = 16: 6)
    Q   code queue -> lookup pop                                              >= push + 1
    I   NOT issue edges (OC_LANES LUT entries + bias/acc tile each)           pop + 1 .. pop + NOT
    W   acc write (bias at a pixel's first subspace), 1 edge after its issue  pop + 2 .. pop + NOT + 1
    D   drain: bank handed over at the last write; NOT read edges from
        the next edge, each beat in the output FIFO 1 edge later and
        accepted 1 edge after that                                            W_last + 1 + ot (+2)

Throughput: the encoder takes v edges per subspace, the lookup NOT = ceil(OC / OC_LANES); the code
queue decouples them, the two acc banks overlap the drain of a pixel with the lookup of the next:

    cycles per pixel (steady state) T = nsub * max(v, NOT)
        (pixels shorter than ~NOT + 1 edges: T = ((nsub - 1) * max(v, NOT) + 2 * NOT + 2) / 2, the two
        acc banks limit: a pixel's first subspace waits for the drain of the pixel two before)
    cycles(npix) = v + ENC + (npix - 1) * T + (nsub - 1) * max(v, NOT) + 2 * NOT + 3

``schedule`` replays the core's control (credits, queue, bank claims) per subspace; it is exact
when nothing back-pressures, including the short-pixel corner (nsub * NOT < NOT + 2: a pixel waits
for the drain of the pixel two before it) that the closed formula ignores.
"""
from __future__ import annotations

from dataclasses import dataclass

from flow.compile.engine import EngineConfig

def clog2(n: int) -> int:
    return max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class PQCoreGeometry:
    """The build parameters the template derives from an EngineConfig."""
    v_max: int
    k: int
    k_pow2: int
    levels: int
    oc_lanes: int
    acc_depth: int
    lut_depth: int
    proto_depth: int
    dist_bits: int
    enc_latency: int
    cq_depth: int

    @classmethod
    def of(cls, engine: EngineConfig) -> "PQCoreGeometry":
        levels = clog2(engine.pq_k_max)
        enc = 2 + max(levels, 1)
        cq = 2
        while cq < enc + 3:
            cq *= 2
        return cls(v_max=engine.pq_v_max, k=engine.pq_k_max, k_pow2=1 << levels, levels=levels,
                   oc_lanes=engine.cols, acc_depth=-(-engine.max_channels // engine.cols),
                   lut_depth=max(1, engine.lut_bytes // 2 // engine.cols),
                   proto_depth=engine.pq_subspaces_max * engine.pq_v_max,
                   dist_bits=(engine.pq_v_max * 383 * 383).bit_length() + 1, enc_latency=enc, cq_depth=cq)


def n_tiles(oc: int, engine: EngineConfig) -> int:
    return -(-oc // engine.cols)


def cycles_per_pixel(v: int, nsub: int, NOT: int) -> float:
    """Steady-state edges per output pixel (input always valid, output always ready):
    nsub * max(v, NOT), unless pixels are so short that the two acc banks limit (a pixel's first
    subspace waits for the drain of the pixel two before: 2 pixels take (nsub-1)*max(v,NOT) + 2*NOT + 2)."""
    m = max(v, NOT)
    return max(nsub * m, ((nsub - 1) * m + 2 * NOT + 2) / 2)


def total_cycles(engine: EngineConfig, *, v: int, nsub: int, NOT: int, npix: int) -> int:
    """Closed formula: edges from the first element's acceptance to the last beat's acceptance
    (exact when the banks do not limit; ``schedule`` is exact in every case without back-pressure)."""
    g = PQCoreGeometry.of(engine)
    m = max(v, NOT)
    return int(v + g.enc_latency + (npix - 1) * cycles_per_pixel(v, nsub, NOT) + (nsub - 1) * m + 2 * NOT + 3)


def pixel_latency(engine: EngineConfig, *, NOT: int) -> dict:
    """Edges from the acceptance of a pixel's last element to its first / last accumulator beat
    (the lookup and drain idle when it arrives)."""
    g = PQCoreGeometry.of(engine)
    first = g.enc_latency + 1 + NOT + 1 + 1 + 2
    return {"encoder": g.enc_latency, "first_beat": first, "last_beat": first + NOT - 1}


def schedule(engine: EngineConfig, *, v: int, nsub: int, NOT: int, npix: int) -> dict:
    """Per-subspace replay of the core's control with no back-pressure: returns the total edges, the
    edge each pixel's last beat is accepted, and each pixel's latency (last element -> first beat)."""
    g = PQCoreGeometry.of(engine)
    N = npix * nsub
    pops: list[int] = []
    start_prev_end = -1
    lk_free_at = 0                 # earliest pop edge given the previous row's issue
    claim_clear: dict[int, int] = {}   # pixel -> edge its bank is released (drain's last issue)
    drain_next = 0                 # earliest drain issue edge (previous pixel's drain done)
    last_beats: list[int] = []
    latencies: list[int] = []      # pixel's last element -> its first beat
    for j in range(N):
        p, s = divmod(j, nsub)
        start = start_prev_end + 1
        if j >= g.cq_depth:        # a credit: the queue slot of subspace j - CQ_DEPTH must be popped
            start = max(start, pops[j - g.cq_depth] + 1)
        last = start + v - 1
        start_prev_end = last
        push = last + g.enc_latency
        pop = max(push + 1, lk_free_at)
        if s == 0 and p >= 2:
            pop = max(pop, claim_clear[p - 2] + 1)
        pops.append(pop)
        lk_free_at = pop + NOT
        if s == nsub - 1:
            w_last = pop + NOT + 1
            d0 = max(w_last + 1, drain_next)
            claim_clear[p] = d0 + NOT - 1
            drain_next = d0 + NOT
            last_beats.append(d0 + NOT - 1 + 2)
            latencies.append(d0 + 2 - last)
    return {"cycles": last_beats[-1], "last_beats": last_beats, "latencies": latencies}
