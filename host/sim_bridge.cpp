// host/sim_bridge.cpp: the board's engine as a shared library for the host's
// sim backend (host/sim.py). Compiled together with a deploy bundle's
// hls/firmware/top.cpp: the engine is the bundle's own C++, unchanged.
//
// Testbench code, never synthesized. A static file (not generated); it relies
// only on the names every rendered engine defines: vqhls_engine (top.h),
// vqhls::word_t, vqhls::axis_byte_t, vqhls::HEADER_WORDS,
// vqhls::engine_config::{config_hash, param_bytes}.
//
// One call of vqhls_sim_call is one ap_start .. ap_done of the engine: the
// Python side has latched the AXI-Lite registers (PARAMS, N_IMAGES), copied
// the DDR region PARAMS points to, and queued the input AXI-Stream bytes with
// their TLAST position; it gets back the output stream's bytes with their
// TLAST flags and the output registers (CONFIG_HASH, CYCLES, STATUS, REAL_CYCLES:
// the last one the counter's C model's "not available", regmap::REAL_CYCLES_NA).
//
// Not re-entrant: the engine's on-chip memories are statics of this library.
// host/sim.py gives each SimDevice its own copy of the library and serializes
// calls into it with a lock.
#ifndef __SYNTHESIS__
#include <cstring>
#include <vector>

#include "top.h"

namespace {

typedef vqhls::engine_config E;

// The DDR window the engine's m_axi port sees: sized to the largest image the
// engine accepts (param_bytes) once, so a header that claims more than the
// caller passed reads zeros, never past the end of the vector.
std::vector<vqhls::word_t> g_params;
unsigned long long g_params_used = 0;   // words the previous call wrote (zeroed before the next)

// What the engine holds on chip after the last load call (mirrored here: the
// engine's own flags are statics of top.cpp).
bool g_loaded = false;
unsigned long long g_in_bytes = 0;
unsigned long long g_out_bytes = 0;

void put_params(const unsigned char *bytes, unsigned long long nbytes) {
    const unsigned long long cap_words = (E::param_bytes + 3) / 4 > vqhls::HEADER_WORDS
                                             ? (E::param_bytes + 3) / 4
                                             : vqhls::HEADER_WORDS;
    if (g_params.size() != cap_words) {
        g_params.assign(cap_words, vqhls::word_t(0));
        g_params_used = 0;
    }
    if (nbytes > 4 * cap_words) nbytes = 4 * cap_words;
    const unsigned long long words = (nbytes + 3) / 4;
    for (unsigned long long i = 0; i < words; i++) {
        unsigned w = 0;
        for (unsigned b = 0; b < 4 && 4 * i + b < nbytes; b++) w |= (unsigned)bytes[4 * i + b] << (8 * b);
        g_params[i] = w;
    }
    for (unsigned long long i = words; i < g_params_used; i++) g_params[i] = 0;
    g_params_used = words;
}

} // namespace

extern "C" {

// EngineConfig.hash() of this build as uint32 (what the CONFIG_HASH register reads).
unsigned vqhls_sim_config_hash(void) { return E::config_hash; }

// The largest parameter image the engine accepts (its m_axi depth), in bytes.
unsigned long long vqhls_sim_param_bytes(void) { return E::param_bytes; }

// 1 when the last load call succeeded (a program is on chip); its per-image
// input / output stream bytes in *in_bytes / *out_bytes (0 when not loaded).
int vqhls_sim_loaded(unsigned long long *in_bytes, unsigned long long *out_bytes) {
    *in_bytes = g_loaded ? g_in_bytes : 0;
    *out_bytes = g_loaded ? g_out_bytes : 0;
    return g_loaded ? 1 : 0;
}

// One engine call (ap_start .. ap_done).
//   params, nbytes      the DDR bytes from PARAMS on (zero-padded by the bridge)
//   n_images            the N_IMAGES register (0: the load call)
//   in, in_len          the input AXI-Stream bytes offered to this call
//   tlast_pos           index in `in` of the byte carrying TLAST, or -1 for none
//   *in_consumed        bytes the engine read (the caller keeps the rest queued)
//   out, out_last       output bytes and their TLAST flags (1 byte each), out_cap of each
//   *out_len            bytes the engine wrote (more than out_cap: the excess is dropped)
//   *cycles, *config_hash   the CYCLES and CONFIG_HASH registers
//   *real_cycles        the REAL_CYCLES register (REAL_CYCLES_NA: no real counter in C-simulation)
// Returns the STATUS register. The caller offers at least the bytes the engine
// reads (n_images x input bytes, or up to an earlier TLAST): an hls::stream
// read while empty would return zeros here where the hardware blocks.
unsigned vqhls_sim_call(const unsigned char *params, unsigned long long nbytes, unsigned n_images,
                        const unsigned char *in, unsigned long long in_len, long long tlast_pos,
                        unsigned long long *in_consumed, unsigned char *out, unsigned char *out_last,
                        unsigned long long out_cap, unsigned long long *out_len, unsigned long long *cycles,
                        unsigned *config_hash, unsigned long long *real_cycles) {
    put_params(params, nbytes);
    hls::stream<vqhls::axis_byte_t> in_stream("in_stream"), out_stream("out_stream");
    for (unsigned long long i = 0; i < in_len; i++) {
        vqhls::axis_byte_t beat;
        beat.data = in[i];
        beat.keep = 1;
        beat.strb = 1;
        beat.last = ((long long)i == tlast_pos) ? 1 : 0;
        in_stream.write(beat);
    }
    ap_uint<32> hash = 0, status = 0;
    ap_uint<64> cyc = 0, real = 0;
    vqhls_engine(in_stream, out_stream, &g_params[0], ap_uint<32>(n_images), &hash, &cyc, &status, &real);
    *cycles = (unsigned long long)cyc;
    *real_cycles = (unsigned long long)real;
    *config_hash = (unsigned)hash;

    if (n_images == 0) {   // the load call: the engine forgets its program first, keeps it only on success
        g_loaded = (unsigned)status == 0;
        g_in_bytes = g_loaded ? (unsigned long long)(unsigned)g_params[5] : 0;
        g_out_bytes = g_loaded ? (unsigned long long)(unsigned)g_params[6] : 0;
    }

    unsigned long long left = 0;   // bytes the engine did not read stay queued on the caller's side
    while (!in_stream.empty()) {
        in_stream.read();
        left++;
    }
    *in_consumed = in_len - left;
    unsigned long long n = 0;
    while (!out_stream.empty()) {
        vqhls::axis_byte_t beat = out_stream.read();
        if (n < out_cap) {
            out[n] = (unsigned char)(unsigned)beat.data;
            out_last[n] = (unsigned)beat.last ? 1 : 0;
        }
        n++;
    }
    *out_len = n;
    return (unsigned)status;
}

} // extern "C"
#endif // __SYNTHESIS__
