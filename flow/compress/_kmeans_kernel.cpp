// Fused masked distance + argmin + cluster statistics for flow/compress/kmeans.py.
//
// Plain C ABI, loaded with ctypes (flow/compress/_kmeans_native.py builds it with the system g++ on
// first use, or finds a copy built at install time).  No Python or torch headers: the caller passes
// raw pointers of contiguous CPU tensors and runs ranges of points on its own threads (ctypes
// releases the GIL), so the kernel itself is single-threaded and its result does not depend on how
// the points are split.
//
// For each point p with kept columns L_p (mask != 0; all columns when mask is NULL):
//
//     dist(p, j) = sum_{l in L_p} (x_pl - c_jl)^2          (only the kept columns are read)
//     assign[p]  = argmin_j dist(p, j), ties to the lowest j, decided in float64.
//
// The search runs in float32 over 16 codewords at a time (GCC vector extensions: one zmm with
// AVX-512, two ymm with AVX2, four xmm otherwise; target_clones picks the best at load time), keeping the best and second-best value per lane.
// A float32 sum of r non-negative terms (x - c)^2 is within (r + 2) u of the exact value (u = 2^-24,
// in any order, with or without FMA contraction); with a 2x margin, when the second-best float32 value
// exceeds the best by more than 2 (2r + 4) u times itself, the float32 winner is the exact winner.  Otherwise (a near or real
// tie, or a value that is not finite) the point is redone in float64 over all k codewords with the
// first minimum winning.  The result is the float64 argmin with ties to the lowest index.
//
// Statistics (optional, for the Lloyd update): per codeword j and column l the sum of kept x (float64)
// and the number of kept elements (int64, exact), the member count, and sum of x^2 over kept elements.
// They are accumulated in point order within the range, so fixed ranges give fixed sums.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int W = 16;  // codewords per vector
typedef float vf __attribute__((vector_size(W * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(W * sizeof(int32_t))));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VQ_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VQ_CLONES
#endif

// float64 argmin over all k codewords (rows of c [k, d]) on the kept columns kl[0..r).
int64_t exact_argmin(int d, int64_t k, const float* c, const int* kl, const float* xs, int r) {
    double best = INFINITY;
    int64_t bj = 0;
    for (int64_t j = 0; j < k; ++j) {
        const float* cj = c + j * d;
        double a = 0.0;
        for (int q = 0; q < r; ++q) {
            double t = (double)xs[q] - (double)cj[kl[q]];
            a += t * t;
        }
        if (a < best) {  // strict: the first minimum wins
            best = a;
            bj = j;
        }
    }
    return bj;
}


// Horizontal minimum of a 16-lane vector (float or int32): four butterfly steps.
template <class V>
inline auto hmin(V v) {
    V s = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    v = v < s ? v : s;
    s = __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    v = v < s ? v : s;
    s = __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    v = v < s ? v : s;
    s = __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    v = v < s ? v : s;
    return v[0];
}

// Running per-lane minimum over blocks of 16 codewords: best value, its codeword, second-best value.
struct Lanes {
    vf b1, b2;
    vi i1;
};

__attribute__((always_inline)) inline void lanes_update(Lanes& s, vf acc, vi jv) {
    vi lt = acc < s.b1;
    vf mx = lt ? s.b1 : acc;       // max(b1, acc): the value that is not the new best
    s.b2 = mx < s.b2 ? mx : s.b2;  // per-lane second best
    s.b1 = lt ? acc : s.b1;        // strict <: the earliest codeword of a lane wins its ties
    s.i1 = lt ? jv : s.i1;
}

template <int R>
__attribute__((always_inline)) inline vf block_dist(const float* const* rows, const vf* xv, const float* xs, int rr,
                                                    int64_t jb) {
    vf a0 = vf{}, a1 = vf{};
    for (int q = 0; q < rr; ++q) {
        vf cv;
        std::memcpy(&cv, rows[q] + jb, sizeof(vf));
        vf t = (R > 0 ? xv[q] : vf{} + xs[q]) - cv;
        if ((q & 1) && rr > 4)  // two partial sums for long rows: a shorter dependency chain
            a1 += t * t;
        else
            a0 += t * t;
    }
    return rr > 4 ? a0 + a1 : a0;
}

// Float32 search of one point over the kept columns (rows[q] = the codebook's column kl[q], padded to
// kp, a multiple of 32), R = the number of kept columns (a template for the common sizes, 0 = runtime
// r).  Two independent lane states (even and odd blocks of 16 codewords) keep two dependency chains
// in flight.  Returns the best index, or -1 when the float32 values cannot decide it (near or real
// tie, or not finite).
template <int R>
__attribute__((always_inline)) inline int64_t search_point(const float* const* rows, const float* xs, int r,
                                                           int64_t kp) {
    const int rr = R > 0 ? R : r;
    const vf inf = vf{} + INFINITY;
    vf xv[R > 0 ? R : 1];
    if (R > 0)
        for (int q = 0; q < R; ++q) xv[q] = vf{} + xs[q];
    vi jv = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    Lanes s0{inf, inf, vi{}}, s1{inf, inf, vi{}};
    for (int64_t jb = 0; jb < kp; jb += 2 * W) {
        vf d0 = block_dist<R>(rows, xv, xs, rr, jb);
        vf d1 = block_dist<R>(rows, xv, xs, rr, jb + W);
        lanes_update(s0, d0, jv);
        lanes_update(s1, d1, jv + W);
        jv += 2 * W;
    }
    // Across the 32 lanes (every ?: below is on a plain comparison: GCC emits blends for those).  The
    // lanes hold disjoint codewords, so only the winning lane has i1 == ib (a lane never updated has
    // b1 = inf and does not matter).
    const vf lo = s0.b1 < s1.b1 ? s0.b1 : s1.b1;
    const float m1 = hmin(lo);
    const vi big = vi{} + INT32_MAX;
    const vi c0 = s0.b1 == m1 ? s0.i1 : big, c1 = s1.b1 == m1 ? s1.i1 : big;
    const int32_t ib = hmin(c0 < c1 ? c0 : c1);  // lowest index among the lanes at the minimum
    const vf o0 = s0.i1 == ib ? inf : s0.b1, o1 = s1.i1 == ib ? inf : s1.b1;
    const vf sb = s0.b2 < s1.b2 ? s0.b2 : s1.b2, ob = o0 < o1 ? o0 : o1;
    const float m2 = hmin(sb < ob ? sb : ob);  // min(second of every lane, best of the other lanes)
    // A sum of rr non-negative float32 terms (x - c)^2 is within g = (2 rr + 4) u of exact (u = 2^-24;
    // about twice the (rr + 2) u bound, whatever the order or FMA contraction) plus a few subnormal
    // spacings.  Every other codeword is at least m2 (1 - g), the winner at most m1 (1 + g): decided when
    // m2 - m1 > 2 g m2 + slack.  A second best beyond 2^120 (inf: k == 1, or an overflow) is decided
    // unless the best is huge too.  Anything else (near or real tie, not finite) goes to float64.
    if (!std::isfinite(m1)) return -1;
    if (m2 > 0x1p120f) return m1 < 0x1p100f ? ib : -1;
    const float tol = (float)(2 * rr + 4) * 0x1p-23f;
    return m2 - m1 > tol * m2 + (float)(4 * rr) * 0x1p-149f ? ib : -1;
}

}  // namespace

extern "C" {

int vq_kmeans_abi(void) { return 2; }

// Points [p0, p1) of x [n, d] float32 (values under a zero mask are never read).  mask [n, d] uint8
// (nonzero = kept) or NULL (all kept).  ct [d, kp] float32: the codebook transposed, columns k..kp-1
// NaN (a NaN distance never compares less, so padding never wins); kp % 32 == 0.  c [k, d] float32:
// the codebook (float64 path).  assign [n] int64: written for [p0, p1).  prev [n] int64 or NULL: the
// previous assignment, to count the points that moved.  Statistics for the range (all NULL to skip,
// else zeroed here): s1 [k, d] float64 sums of kept x, cnt [k] int64 members, nk [k, d] int64 kept
// elements (only when mask is not NULL), sa [1] float64 sum of kept x^2.
// info [2] int64: points decided in float64 (near ties), points whose index differs from prev.
VQ_CLONES
void vq_assign(int d, int64_t k, int64_t kp, const float* x, const uint8_t* mask, const float* ct,
               const float* c, int64_t p0, int64_t p1, int64_t* assign, const int64_t* prev, double* s1,
               int64_t* cnt, int64_t* nk, double* sa, int64_t* info) {
    std::vector<int> kl(d);
    std::vector<float> xs(d);
    std::vector<const float*> rows(d);
    int64_t nexact = 0, moved = 0;
    double sumsq = 0.0;
    if (s1) {
        std::memset(s1, 0, sizeof(double) * k * d);
        std::memset(cnt, 0, sizeof(int64_t) * k);
        if (nk) std::memset(nk, 0, sizeof(int64_t) * k * d);
    }
    for (int64_t p = p0; p < p1; ++p) {
        const float* xp = x + p * d;
        const uint8_t* mp = mask ? mask + p * d : nullptr;
        int r = 0;
        if (mp) {
            for (int l = 0; l < d; ++l) {  // branch-free: N:M patterns are unpredictable
                kl[r] = l;
                xs[r] = xp[l];
                rows[r] = ct + (int64_t)l * kp;
                r += mp[l] != 0;
            }
        } else {
            for (int l = 0; l < d; ++l) {
                kl[l] = l;
                xs[l] = xp[l];
                rows[l] = ct + (int64_t)l * kp;
            }
            r = d;
        }
        int64_t best = 0;  // no kept column: every distance is 0, the lowest index wins
        if (r > 0) {
            const float* const* rw = rows.data();
            const float* xv = xs.data();
            switch (r) {  // unrolled for the common row lengths (d = 4, 8, 16 with N:M masks)
                case 2: best = search_point<2>(rw, xv, r, kp); break;
                case 4: best = search_point<4>(rw, xv, r, kp); break;
                case 8: best = search_point<8>(rw, xv, r, kp); break;
                case 16: best = search_point<16>(rw, xv, r, kp); break;
                default: best = search_point<0>(rw, xv, r, kp); break;
            }
            if (best < 0) {
                best = exact_argmin(d, k, c, kl.data(), xv, r);
                ++nexact;
            }
        }
        assign[p] = best;
        if (prev) moved += prev[p] != best;
        if (s1) {
            cnt[best] += 1;
            double* srow = s1 + best * d;
            for (int q = 0; q < r; ++q) {
                double v = xs[q];
                srow[kl[q]] += v;
                sumsq += v * v;
            }
            if (nk) {
                int64_t* nrow = nk + best * d;
                for (int q = 0; q < r; ++q) nrow[kl[q]] += 1;
            }
        }
    }
    if (s1) sa[0] = sumsq;
    info[0] = nexact;
    info[1] = moved;
}

}  // extern "C"
