// The C ABI of a Verilator model of the RTL engine (vqhls_engine_top, hls_templates/rtl/engine_top.v.j2),
// built into a shared library by engine_io/verilator_build.py and driven by host/rtl_backend.py.
//
// This file is the PS side of the block design and its memory, as a test double: it owns the engine's
// clock and plays, cycle by cycle,
//   * the PS's GP0 port: one AXI4-Lite transaction per vqhls_rtl_axil_write / vqhls_rtl_axil_read, the
//     model clocked until its response handshake;
//   * the DDR behind HP0: an AXI4 read slave (m_axi_gmem: INCR bursts of 4-byte beats, one ID, returned in
//     order) over host memory the caller maps by physical address (vqhls_rtl_map); a read outside every
//     mapped region answers DECERR with zero data, as the interconnect does;
//   * the AXI DMA in simple mode: MM2S drives the input stream from a mapped buffer, TLAST on the final
//     byte; S2MM takes the output stream into a mapped buffer until TLAST or until it is full (then it
//     stops taking bytes: the engine sees back-pressure, as from a DMA with no receive posted).
// None of it models the engine: the engine is the Verilog, untouched.
//
// Every clock edge services all of it at once (a register access does not stop the DMA or the DDR), and
// the harness counts every edge since reset (vqhls_rtl_cycles): the testbench's clock, beside the engine's
// own REAL_CYCLES register.
//
// Timing of one cycle (tick): with ap_clk low, drive the inputs from the double's state, settle the model
// (eval), sample every handshake (valid && ready), raise ap_clk (the model's registers take the same
// inputs), advance the double's state by the handshakes sampled, lower ap_clk. The double's outputs depend
// only on its state, so they behave as registered outputs.
//
// Build-time constant: VQHLS_RTL_TOP_HEADER / VQHLS_RTL_TOP_CLASS name Verilator's class of the top
// (default Vvqhls_engine_top); the port names are the engine top's (fixed widths: AXI-Lite 7-bit address,
// 32-bit data; m_axi_gmem 64-bit address, 32-bit data; 8-bit streams).

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>

#include "verilated.h"

#ifndef VQHLS_RTL_TOP_HEADER
#define VQHLS_RTL_TOP_HEADER "Vvqhls_engine_top.h"
#endif
#ifndef VQHLS_RTL_TOP_CLASS
#define VQHLS_RTL_TOP_CLASS Vvqhls_engine_top
#endif
#include VQHLS_RTL_TOP_HEADER

#define VQHLS_RTL_ABI_VERSION 2

namespace {

enum { RESP_OKAY = 0, RESP_SLVERR = 2, RESP_DECERR = 3 };

struct Region {
    uint8_t* ptr;
    uint64_t size;
};

struct Burst {            // one accepted AR: the beats still to return
    uint64_t addr;
    uint32_t beats;       // remaining
    uint32_t bytes;       // per beat (1 << arsize)
    uint32_t wait;        // cycles before the first beat (the memory's latency)
};

struct Dma {              // one simple-mode channel
    bool active = false;
    uint64_t addr = 0;
    uint64_t nbytes = 0;
    uint64_t done = 0;    // bytes moved
    bool last = false;    // S2MM: the final byte taken carried TLAST
    int error = 0;        // a byte outside every mapped region (DMADecErr)
};

struct Harness {
    std::unique_ptr<VerilatedContext> ctx;
    std::unique_ptr<VQHLS_RTL_TOP_CLASS> top;
    std::map<uint64_t, Region> mem;        // physical address -> host memory
    uint64_t cycles = 0;                   // rising edges since reset was released
    // AXI4-Lite master (GP0)
    bool aw_pending = false, w_pending = false, b_wait = false;
    bool ar_pending = false, r_wait = false;
    uint32_t rdata = 0;
    int bresp = 0, rresp = 0;
    // AXI4 read slave (DDR)
    bool have_burst = false;
    Burst burst{};
    uint32_t latency = 0;
    uint64_t bursts = 0, beats = 0, bad_reads = 0;
    // AXI DMA
    Dma mm2s, s2mm;
    uint64_t stream_in_bytes = 0, stream_out_bytes = 0, stray_out_bytes = 0;
    // stall detection: consecutive cycles in which a stream waits on a DMA channel that is not running
    uint64_t starved_in = 0, starved_out = 0;
    // throttling (vqhls_rtl_throttle): a DMA sharing the HP port and the interconnect. Per cycle, with
    // probability in_gap / 256 MM2S presents no new byte, with out_stall / 256 S2MM is not ready. A byte
    // once presented stays valid until taken (AXI-Stream: TVALID does not fall before its handshake).
    uint32_t in_gap = 0, out_stall = 0, rng = 1;
    bool gap_now = false, stall_now = false, in_held = false;

    uint32_t draw() {      // xorshift32: deterministic per seed
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        return rng & 255u;
    }

    uint8_t* find(uint64_t addr, uint64_t n) {
        auto it = mem.upper_bound(addr);
        if (it == mem.begin()) return nullptr;
        --it;
        if (addr < it->first || addr + n > it->first + it->second.size) return nullptr;
        return it->second.ptr + (addr - it->first);
    }

    void drive() {
        VQHLS_RTL_TOP_CLASS* t = top.get();
        // AXI-Lite: the address / data / response signals were set when the transaction was posted
        t->s_axi_control_awvalid = aw_pending;
        t->s_axi_control_wvalid = w_pending;
        t->s_axi_control_bready = b_wait;
        t->s_axi_control_arvalid = ar_pending;
        t->s_axi_control_rready = r_wait;
        // DDR: one burst at a time; its beats after the latency
        t->m_axi_gmem_arready = !have_burst;
        bool beat = have_burst && burst.wait == 0;
        t->m_axi_gmem_rvalid = beat;
        t->m_axi_gmem_rid = 0;
        t->m_axi_gmem_rlast = beat && burst.beats == 1;
        uint32_t word = 0;
        int resp = RESP_OKAY;
        if (beat) {
            const uint8_t* p = find(burst.addr, burst.bytes);
            if (p) {
                for (uint32_t i = 0; i < burst.bytes && i < 4; ++i) word |= uint32_t(p[i]) << (8 * ((burst.addr + i) & 3));
            } else {
                resp = RESP_DECERR;
            }
        }
        t->m_axi_gmem_rdata = word;
        t->m_axi_gmem_rresp = resp;
        // MM2S -> input stream
        bool send = mm2s.active && mm2s.done < mm2s.nbytes;
        uint8_t byte = 0;
        if (send) {
            const uint8_t* p = find(mm2s.addr + mm2s.done, 1);
            if (p) byte = *p;
        }
        t->s_axis_in_tvalid = send && (in_held || !gap_now);
        t->s_axis_in_tdata = byte;
        t->s_axis_in_tlast = send && mm2s.done + 1 == mm2s.nbytes;
        // output stream -> S2MM
        t->m_axis_out_tready = s2mm.active && !s2mm.last && s2mm.done < s2mm.nbytes && !stall_now;
        // the write channels of m_axi_gmem: never used by the engine; accept anything
        t->m_axi_gmem_awready = 1;
        t->m_axi_gmem_wready = 1;
        t->m_axi_gmem_bvalid = 0;
        t->m_axi_gmem_bresp = 0;
    }

    void tick() {
        VQHLS_RTL_TOP_CLASS* t = top.get();
        drive();
        t->eval();
        // ---- sample every handshake before the edge
        bool aw = t->s_axi_control_awvalid && t->s_axi_control_awready;
        bool w = t->s_axi_control_wvalid && t->s_axi_control_wready;
        bool b = t->s_axi_control_bvalid && t->s_axi_control_bready;
        int b_resp = t->s_axi_control_bresp;
        bool ar = t->s_axi_control_arvalid && t->s_axi_control_arready;
        bool r = t->s_axi_control_rvalid && t->s_axi_control_rready;
        uint32_t r_data = t->s_axi_control_rdata;
        int r_resp = t->s_axi_control_rresp;
        bool g_ar = t->m_axi_gmem_arvalid && t->m_axi_gmem_arready;
        uint64_t g_addr = t->m_axi_gmem_araddr;
        uint32_t g_len = t->m_axi_gmem_arlen;
        uint32_t g_size = t->m_axi_gmem_arsize;
        bool g_r = t->m_axi_gmem_rvalid && t->m_axi_gmem_rready;
        bool g_resp_bad = t->m_axi_gmem_rresp != RESP_OKAY;
        bool in = t->s_axis_in_tvalid && t->s_axis_in_tready;
        bool out = t->m_axis_out_tvalid && t->m_axis_out_tready;
        uint8_t out_data = t->m_axis_out_tdata;
        bool out_last = t->m_axis_out_tlast;
        // a stream waiting on a DMA channel that is not running (for the stall report)
        starved_in = (t->s_axis_in_tready && !mm2s_busy()) ? starved_in + 1 : 0;
        // (not the TREADY the throttle drops: a throttled but running S2MM is not a stall)
        starved_out = (t->m_axis_out_tvalid && !s2mm_busy()) ? starved_out + 1 : 0;
        bool in_wait = t->s_axis_in_tvalid && !t->s_axis_in_tready;
        // ---- the edge
        t->ap_clk = 1;
        t->eval();
        ++cycles;
        // ---- the double's state after the edge
        if (aw) aw_pending = false;
        if (w) w_pending = false;
        if (b) { b_wait = false; bresp = b_resp; }
        if (ar) ar_pending = false;
        if (r) { r_wait = false; rdata = r_data; rresp = r_resp; }
        if (have_burst && burst.wait) --burst.wait;
        if (g_r) {
            ++beats;
            if (g_resp_bad) ++bad_reads;
            burst.addr += burst.bytes;
            if (--burst.beats == 0) have_burst = false;
        }
        if (g_ar) {
            have_burst = true;
            burst.addr = g_addr;
            burst.beats = g_len + 1;
            burst.bytes = 1u << (g_size > 2 ? 2 : g_size);
            burst.wait = latency;
            ++bursts;
        }
        if (in) {
            ++mm2s.done;
            ++stream_in_bytes;
            if (!find(mm2s.addr + mm2s.done - 1, 1)) mm2s.error = 1;
        }
        if (out) {
            ++stream_out_bytes;
            uint8_t* p = find(s2mm.addr + s2mm.done, 1);
            if (p) *p = out_data; else s2mm.error = 1;
            ++s2mm.done;
            if (out_last) s2mm.last = true;
        }
        in_held = in_wait;
        gap_now = in_gap && draw() < in_gap;
        stall_now = out_stall && draw() < out_stall;
        t->ap_clk = 0;
        t->eval();
    }

    bool mm2s_busy() const { return mm2s.active && mm2s.done < mm2s.nbytes; }
    bool s2mm_busy() const { return s2mm.active && !s2mm.last && s2mm.done < s2mm.nbytes; }
};

Harness* H(void* h) { return static_cast<Harness*>(h); }

}  // namespace

extern "C" {

int vqhls_rtl_abi_version() { return VQHLS_RTL_ABI_VERSION; }

// A fresh engine: reset (ap_rst_n low) for reset_cycles edges, then released; the memory's read latency
// in cycles (0: the first beat in the cycle after the AR handshake).
void* vqhls_rtl_new(uint32_t reset_cycles, uint32_t mem_latency) {
    Harness* h = new Harness;
    h->ctx.reset(new VerilatedContext);
    h->ctx->randReset(0);       // registers without a reset start at zero (the engine resets what it uses)
    h->top.reset(new VQHLS_RTL_TOP_CLASS(h->ctx.get(), "top"));
    h->latency = mem_latency;
    VQHLS_RTL_TOP_CLASS* t = h->top.get();
    t->ap_clk = 0;
    t->ap_rst_n = 0;
    t->s_axi_control_awaddr = 0;
    t->s_axi_control_wdata = 0;
    t->s_axi_control_wstrb = 0xF;
    t->s_axi_control_araddr = 0;
    t->eval();
    for (uint32_t i = 0; i < (reset_cycles ? reset_cycles : 1); ++i) h->tick();
    t->ap_rst_n = 1;
    h->tick();
    h->cycles = 0;
    return h;
}

void vqhls_rtl_free(void* h) {
    if (!h) return;
    H(h)->top->final();
    delete H(h);
}

// Map ``size`` bytes of host memory at ``ptr`` as DDR at physical address ``addr`` (the caller keeps the
// memory alive until unmapped); 0, or -1 when it overlaps a mapped region.
int vqhls_rtl_map(void* h, uint64_t addr, void* ptr, uint64_t size) {
    Harness* s = H(h);
    for (auto& kv : s->mem)
        if (addr < kv.first + kv.second.size && kv.first < addr + size) return -1;
    s->mem[addr] = Region{static_cast<uint8_t*>(ptr), size};
    return 0;
}

int vqhls_rtl_unmap(void* h, uint64_t addr) { return H(h)->mem.erase(addr) ? 0 : -1; }

// Clock the model ``n`` edges, everything serviced.
void vqhls_rtl_step(void* h, uint64_t n) {
    Harness* s = H(h);
    for (uint64_t i = 0; i < n; ++i) s->tick();
}

// One AXI-Lite write (AW and W together, then B): BRESP, or -1 when no response within max_cycles.
int vqhls_rtl_axil_write(void* h, uint32_t addr, uint32_t data, uint32_t strb, uint64_t max_cycles) {
    Harness* s = H(h);
    VQHLS_RTL_TOP_CLASS* t = s->top.get();
    t->s_axi_control_awaddr = addr;
    t->s_axi_control_wdata = data;
    t->s_axi_control_wstrb = strb;
    s->aw_pending = s->w_pending = s->b_wait = true;
    for (uint64_t i = 0; i < max_cycles; ++i) {
        s->tick();
        if (!s->aw_pending && !s->w_pending && !s->b_wait) return s->bresp;
    }
    s->aw_pending = s->w_pending = s->b_wait = false;
    return -1;
}

// One AXI-Lite read (AR, then R): RRESP with the data in *data, or -1 when no response within max_cycles.
int vqhls_rtl_axil_read(void* h, uint32_t addr, uint32_t* data, uint64_t max_cycles) {
    Harness* s = H(h);
    s->top->s_axi_control_araddr = addr;
    s->ar_pending = s->r_wait = true;
    for (uint64_t i = 0; i < max_cycles; ++i) {
        s->tick();
        if (!s->ar_pending && !s->r_wait) {
            *data = s->rdata;
            return s->rresp;
        }
    }
    s->ar_pending = s->r_wait = false;
    return -1;
}

// Clock the model, reading the register at ``ctrl`` every ``poll`` edges (as the PS polls), until a read
// shows a bit of ``mask`` (1, the register's value in *value: a clear-on-read bit is consumed, as on the
// board), until a stream has waited ``stall`` edges on a DMA channel that is not running (2: 1 the input,
// 2 the output, in *value), or until ``max_cycles`` edges have passed (0). -1: a register read got no
// response.
int vqhls_rtl_run_until(void* h, uint32_t ctrl, uint32_t mask, uint32_t poll, uint64_t stall,
                        uint64_t max_cycles, uint32_t* value) {
    Harness* s = H(h);
    uint64_t start = s->cycles;
    if (poll == 0) poll = 1;
    while (s->cycles - start < max_cycles) {
        for (uint32_t i = 0; i < poll; ++i) s->tick();
        uint32_t v = 0;
        if (vqhls_rtl_axil_read(h, ctrl, &v, 1000) < 0) return -1;
        if (v & mask) {
            *value = v;
            return 1;
        }
        if (stall && (s->starved_in >= stall || s->starved_out >= stall)) {
            *value = s->starved_in >= stall ? 1 : 2;
            return 2;
        }
    }
    return 0;
}

// Start the MM2S channel: ``nbytes`` from physical address ``addr`` into the input stream, TLAST on the
// final byte. 0; -1 when a transfer is in flight; -2 when the bytes are not all mapped (DMADecErr).
int vqhls_rtl_dma_send(void* h, uint64_t addr, uint64_t nbytes) {
    Harness* s = H(h);
    if (s->mm2s_busy()) return -1;
    if (!nbytes || !s->find(addr, nbytes)) return -2;
    s->mm2s = Dma();
    s->mm2s.active = true;
    s->mm2s.addr = addr;
    s->mm2s.nbytes = nbytes;
    return 0;
}

// Post the S2MM channel: up to ``nbytes`` of the output stream into physical address ``addr``, complete at
// TLAST or when full. 0; -1 when a receive is in flight; -2 when the buffer is not all mapped.
int vqhls_rtl_dma_recv(void* h, uint64_t addr, uint64_t nbytes) {
    Harness* s = H(h);
    if (s->s2mm_busy()) return -1;
    if (!nbytes || !s->find(addr, nbytes)) return -2;
    s->s2mm = Dma();
    s->s2mm.active = true;
    s->s2mm.addr = addr;
    s->s2mm.nbytes = nbytes;
    return 0;
}

// Clock until neither channel is busy (1), a busy channel's stream has not moved for ``stall`` edges (0),
// or ``max_cycles`` edges have passed (0).
int vqhls_rtl_dma_wait(void* h, uint64_t stall, uint64_t max_cycles) {
    Harness* s = H(h);
    uint64_t start = s->cycles, still = 0, moved = s->stream_in_bytes + s->stream_out_bytes;
    while (s->mm2s_busy() || s->s2mm_busy()) {
        if (s->cycles - start >= max_cycles) return 0;
        s->tick();
        uint64_t now = s->stream_in_bytes + s->stream_out_bytes;
        still = now == moved ? still + 1 : 0;
        moved = now;
        if (stall && still >= stall) return 0;
    }
    return 1;
}

// Both DMA channels back to idle (a soft reset): transfers in flight are dropped.
void vqhls_rtl_dma_reset(void* h) {
    Harness* s = H(h);
    s->mm2s = Dma();
    s->s2mm = Dma();
}

// The DMA's and the memory's state: [0] MM2S active, [1] bytes sent, [2] bytes to send, [3] MM2S error,
// [4] S2MM active, [5] bytes received, [6] receive length, [7] TLAST received, [8] S2MM error,
// [9] AR bursts, [10] R beats, [11] reads outside the mapped memory, [12] input stream bytes in all,
// [13] output stream bytes in all, [14] edges the input stream has waited on an idle MM2S,
// [15] edges the output stream has waited on the S2MM.
void vqhls_rtl_state(void* h, uint64_t* out) {
    Harness* s = H(h);
    uint64_t v[16] = {s->mm2s.active, s->mm2s.done, s->mm2s.nbytes, (uint64_t)s->mm2s.error,
                      s->s2mm.active, s->s2mm.done, s->s2mm.nbytes, s->s2mm.last, (uint64_t)s->s2mm.error,
                      s->bursts, s->beats, s->bad_reads, s->stream_in_bytes, s->stream_out_bytes,
                      s->starved_in, s->starved_out};
    std::memcpy(out, v, sizeof v);
}

// Throttle the DMA from now on: per cycle MM2S offers no new byte with probability in_gap / 256 and S2MM is
// not ready with probability out_stall / 256 (0, 0: full speed, the default), drawn from ``seed`` (not 0).
void vqhls_rtl_throttle(void* h, uint32_t in_gap, uint32_t out_stall, uint32_t seed) {
    Harness* s = H(h);
    s->in_gap = in_gap > 255 ? 255 : in_gap;
    s->out_stall = out_stall > 255 ? 255 : out_stall;
    s->rng = seed ? seed : 1;
    s->gap_now = s->stall_now = false;
}

// Rising edges of ap_clk since reset was released (the harness's count, not the engine's register).
uint64_t vqhls_rtl_cycles(void* h) { return H(h)->cycles; }

}  // extern "C"
