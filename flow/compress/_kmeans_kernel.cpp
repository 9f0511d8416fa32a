// Fused masked distance + argmin + cluster statistics for flow/compress/kmeans.py.
//
// Plain C ABI, loaded with ctypes (flow/compress/_kmeans_native.py builds it with the system g++ on
// first use, or finds a copy built at install time).  No Python or torch headers: the caller passes
// raw pointers of contiguous CPU tensors and runs ranges of points on its own threads (ctypes
// releases the GIL), so the kernel itself is single-threaded and its result does not depend on how
// the points are split.
//
// For each point p with kept columns L_p (mask != 0; all columns when mask is NULL), r = |L_p|:
//
//     dist(p, j) = sum_{l in L_p} (x_pl - c_jl)^2          (only the kept columns are read)
//     assign[p]  = argmin_j dist(p, j), ties to the lowest j, decided in float64.
//
// Three stages, each trusted only when its float32 error bound separates the best codeword from
// every other one (a near or real tie goes on to the next stage):
//
// 1. Expansion (the GEMM form faiss uses, fused with the argmin): on the centred values
//    x' = fl(x - mu), c' = fl(c - mu) in float32 (mu: the caller's per-column shift, the data mean),
//        s_j = T_j + sum_{l in L} x'_l w_jl,   w = -2 c',   T_j = sum_{l in L} c'_jl^2,
//    so dist'(p, j) = |x'_L|^2 + s_j.  r multiply-adds per codeword (the direct form needs 2 r), and T
//    comes from a table per mask pattern (one row for no mask).  Error bound: s_j is a sum of 2 r
//    terms, each rounded at most 2 r + 2 times (u = 2^-24, with or without FMA), and the sum of their
//    magnitudes is at most 5 A + 3 D_j (A = |x'_L|^2, D_j = dist'(p, j): |c'| <= |x'| + sqrt(D_j));
//    the shift's own rounding moves dist by at most u (2 A + 4 D_j).  Together, with tau = (2 r + 4)
//    2^-23 (twice the rounding factor), the float32 winner is the exact one when
//        d2 - d1 > tau (2 (d1 + d2) + 7 A) + 4 sigma     (d1, d2: A + best and second-best s, float64;
//                                                          sigma: subnormal slack)
//    (expand the bounds |d_j - dist_j| <= gamma (6 A + 4 D'_j), |d_j - D'_j| <= gamma (5 A + 3 D'_j),
//    gamma = gamma_{2r+2}; tau >= 2 gamma while (2 r + 4)(2 r + 2) u <= 2: the caller skips stage 1
//    for d > 2048).  Nothing overflows while every |x'_l| and |c'_jl| is at most 2^40 (the caller checks
//    c', BIG_A checks x').  The bound is relative to |x'|^2, not to the distance: with the centring it
//    fails only for points whose two nearest codewords are within about 1e-5 |x - mu|^2 of each other
//    (on the bench data, 1.5 points in 10^4).
// 2. Direct (for points stage 1 cannot decide): sum (x_l - c_jl)^2 in float32 on the original values.
//    A sum of r non-negative terms is within (r + 2) u of exact, so with a 2x margin the float32 winner
//    is the exact one when the second best exceeds the best by more than (2 r + 4) 2^-23 times itself:
//    a bound relative to the distance itself (a few points in 10^5 fail it).
// 3. float64 over all k codewords, first minimum winning.
// The result is the float64 argmin with ties to the lowest index.
//
// Both float32 stages run over W codewords per vector (GCC vector extensions) keeping the best and
// second-best value per lane in two interleaved lane sets.  W is the machine's vector width: the
// entry point picks a copy compiled for AVX-512 (W = 16, zmm), AVX2 + FMA (W = 8, ymm) or baseline
// x86-64 (W = 4, xmm; SSE2, no FMA) at run time (vq_kmeans_isa), or the one the caller asks for.
// A vector wider than the target's registers would be split by GCC into scalar code (the blends), so
// every copy uses exactly its own width.
//
// Statistics (optional, for the Lloyd update): per codeword j and column l the sum of kept x (float64)
// and the number of kept elements (int64, exact), the member count, and sum of x^2 over kept elements.
// They are accumulated in point order within the range, so fixed ranges give fixed sums.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#define VQ_INLINE __attribute__((always_inline)) inline

namespace {

constexpr int ABI = 3;

template <int W>
struct VT {
    typedef float f __attribute__((vector_size(W * sizeof(float))));
    typedef int32_t i __attribute__((vector_size(W * sizeof(int32_t))));
};

template <int W>
VQ_INLINE typename VT<W>::f load(const float* p) {
    typename VT<W>::f v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

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

// Horizontal minimum of a W-lane vector (float or int32): halve until two lanes are left.
template <int W, class V>
VQ_INLINE auto hmin(V v) {
    typedef std::remove_cv_t<std::remove_reference_t<decltype(v[0])>> T;
    if constexpr (W == 2) {
        return v[0] < v[1] ? v[0] : v[1];
    } else {
        typedef T H __attribute__((vector_size(sizeof(T) * W / 2)));
        H a, b;
        std::memcpy(&a, &v, sizeof(a));
        std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(a), sizeof(b));
        return hmin<W / 2>(a < b ? a : b);
    }
}

// Running per-lane minimum over blocks of W codewords: best value, its codeword, second-best value.
template <int W>
struct Lanes {
    typename VT<W>::f b1, b2;
    typename VT<W>::i i1;
};

template <int W>
VQ_INLINE void lanes_update(Lanes<W>& s, typename VT<W>::f acc, typename VT<W>::i jv) {
    typename VT<W>::i lt = acc < s.b1;  // NaN (padding codewords) never compares: never best or second
    typename VT<W>::f mx = lt ? s.b1 : acc;  // max(b1, acc): the value that is not the new best
    s.b2 = mx < s.b2 ? mx : s.b2;            // per-lane second best
    s.b1 = lt ? acc : s.b1;                  // strict <: the earliest codeword of a lane wins its ties
    s.i1 = lt ? jv : s.i1;
}

// Best value m1, its lowest codeword ib, and m2 = the least value of any other codeword, over the two
// lane sets.  The lanes hold disjoint codewords, so only the winning lane has i1 == ib (a lane never
// updated has b1 = inf and does not matter).  Every ?: is on a plain comparison (a blend).
template <int W>
VQ_INLINE void lanes_finish(const Lanes<W>& s0, const Lanes<W>& s1, float& m1, int32_t& ib, float& m2) {
    typedef typename VT<W>::f vf;
    typedef typename VT<W>::i vi;
    const vf inf = vf{} + INFINITY;
    const vf lo = s0.b1 < s1.b1 ? s0.b1 : s1.b1;
    m1 = hmin<W>(lo);
    const vi big = vi{} + INT32_MAX;
    const vi c0 = s0.b1 == m1 ? s0.i1 : big, c1 = s1.b1 == m1 ? s1.i1 : big;
    ib = hmin<W>(c0 < c1 ? c0 : c1);
    const vf o0 = s0.i1 == ib ? inf : s0.b1, o1 = s1.i1 == ib ? inf : s1.b1;
    const vf sb = s0.b2 < s1.b2 ? s0.b2 : s1.b2, ob = o0 < o1 ? o0 : o1;
    m2 = hmin<W>(sb < ob ? sb : ob);  // min(second of every lane, best of the other lanes)
}

template <int W>
VQ_INLINE typename VT<W>::i lane_ids() {
    typename VT<W>::i v;
    for (int l = 0; l < W; ++l) v[l] = l;
    return v;
}

// Stage 1 for one block of W codewords: T[jb..] + sum_q x'_q w_q[jb..] (two partial sums for long rows:
// a shorter dependency chain).
template <int W, int R>
VQ_INLINE typename VT<W>::f expand_block(const float* const* wr, const float* t, const typename VT<W>::f* xv,
                                         const float* xs, int rr, int64_t jb) {
    typedef typename VT<W>::f vf;
    vf a0 = load<W>(t + jb), a1 = vf{};
    for (int q = 0; q < rr; ++q) {
        const vf xq = R > 0 ? xv[q] : vf{} + xs[q];
        if ((q & 1) && rr > 4)
            a1 += xq * load<W>(wr[q] + jb);
        else
            a0 += xq * load<W>(wr[q] + jb);
    }
    return rr > 4 ? a0 + a1 : a0;
}

// Stage 2 for one block: sum_q (x_q - c_q[jb..])^2.
template <int W, int R>
VQ_INLINE typename VT<W>::f direct_block(const float* const* cr, const typename VT<W>::f* xv, const float* xs,
                                         int rr, int64_t jb) {
    typedef typename VT<W>::f vf;
    vf a0 = vf{}, a1 = vf{};
    for (int q = 0; q < rr; ++q) {
        const vf t = (R > 0 ? xv[q] : vf{} + xs[q]) - load<W>(cr[q] + jb);
        if ((q & 1) && rr > 4)
            a1 += t * t;
        else
            a0 += t * t;
    }
    return rr > 4 ? a0 + a1 : a0;
}

// Float32 search of one point over kp codewords (a multiple of 32, two blocks of W per step: two
// dependency chains in flight).  EXPAND selects stage 1 (rows = w columns, t = the T row, xs = x') or
// stage 2 (rows = codebook columns, xs = x).  R = the number of kept columns (a template for the
// common sizes, 0 = runtime r).  Returns the best index, or -1 when the float32 values cannot decide.
template <int W, int R, bool EXPAND>
VQ_INLINE int64_t search(const float* const* rows, const float* t, const float* xs, int r, int64_t kp, double A) {
    typedef typename VT<W>::f vf;
    typedef typename VT<W>::i vi;
    const int rr = R > 0 ? R : r;
    const vf inf = vf{} + INFINITY;
    vf xv[R > 0 ? R : 1];
    if (R > 0)
        for (int q = 0; q < R; ++q) xv[q] = vf{} + xs[q];
    vi jv = lane_ids<W>();
    Lanes<W> s0{inf, inf, vi{}}, s1{inf, inf, vi{}};
    for (int64_t jb = 0; jb < kp; jb += 2 * W) {
        vf d0, d1;
        if constexpr (EXPAND) {
            d0 = expand_block<W, R>(rows, t, xv, xs, rr, jb);
            d1 = expand_block<W, R>(rows, t, xv, xs, rr, jb + W);
        } else {
            d0 = direct_block<W, R>(rows, xv, xs, rr, jb);
            d1 = direct_block<W, R>(rows, xv, xs, rr, jb + W);
        }
        lanes_update<W>(s0, d0, jv);
        lanes_update<W>(s1, d1, jv + W);
        jv += 2 * W;
    }
    float m1, m2;
    int32_t ib;
    lanes_finish<W>(s0, s1, m1, ib, m2);
    if (!std::isfinite(m1)) return -1;
    if constexpr (EXPAND) {
        // The caller's guards (|x'|, |c'| <= 2^40) rule out overflow, so an infinite m2 means k == 1.
        if (m2 == INFINITY) return ib;
        const double tau = (2 * rr + 4) * 0x1p-23, sigma = (2 * rr + 4) * 0x1p-149;
        const double d1 = A + (double)m1, d2 = A + (double)m2;
        return d2 - d1 > tau * (2.0 * (d1 + d2) + 7.0 * A) + 4.0 * sigma ? ib : -1;
    } else {
        // A second best beyond 2^120 (inf: k == 1, or an overflow) is decided unless the best is huge
        // too.  Else decided when m2 - m1 > 2 g m2 + slack, g = (2 rr + 4) u (see the header).
        if (m2 > 0x1p120f) return m1 < 0x1p100f ? ib : -1;
        const float tol = (float)(2 * rr + 4) * 0x1p-23f;
        return m2 - m1 > tol * m2 + (float)(4 * rr) * 0x1p-149f ? ib : -1;
    }
}

template <int W, bool EXPAND>
VQ_INLINE int64_t search_r(const float* const* rows, const float* t, const float* xs, int r, int64_t kp, double A) {
    switch (r) {  // unrolled for the common row lengths (d = 4, 8, 16 with N:M masks)
        case 2: return search<W, 2, EXPAND>(rows, t, xs, r, kp, A);
        case 4: return search<W, 4, EXPAND>(rows, t, xs, r, kp, A);
        case 8: return search<W, 8, EXPAND>(rows, t, xs, r, kp, A);
        case 16: return search<W, 16, EXPAND>(rows, t, xs, r, kp, A);
        default: return search<W, 0, EXPAND>(rows, t, xs, r, kp, A);
    }
}

struct Args {
    int d;
    int64_t k, kp;
    const float* x;
    const uint8_t* mask;
    const float* mu;
    const float* w;
    const float* tab;
    const int32_t* pid;
    int tmode;
    const float* ct;
    const float* c;
    int64_t p0, p1;
    int64_t* assign;
    const int64_t* prev;
    double* s1;
    int64_t* cnt;
    int64_t* nk;
    double* sa;
    int64_t* info;
};

constexpr double BIG_A = 0x1p80;  // |x'|^2 above this (some |x'_l| > 2^40): skip stage 1 (overflow guard)

template <int W, bool MASKED>
VQ_INLINE void assign_range(const Args& a) {
    const int d = a.d;
    const int64_t k = a.k, kp = a.kp;
    std::vector<int> kl(d);
    std::vector<float> xs(d), xc(d);
    std::vector<const float*> rw(d), rows(d);
    std::vector<float> trow(a.tmode == 2 ? kp : 0);
    int64_t nexact = 0, ndirect = 0, moved = 0;
    double sumsq = 0.0;
    if (a.s1) {
        std::memset(a.s1, 0, sizeof(double) * k * d);
        std::memset(a.cnt, 0, sizeof(int64_t) * k);
        if (a.nk) std::memset(a.nk, 0, sizeof(int64_t) * k * d);
    }
    if (!MASKED)
        for (int l = 0; l < d; ++l) {  // every point keeps every column: the rows never change
            kl[l] = l;
            rw[l] = a.w + (int64_t)l * kp;
        }
    for (int64_t p = a.p0; p < a.p1; ++p) {
        const float* xp = a.x + p * d;
        int r = 0;
        if constexpr (MASKED) {
            const uint8_t* mp = a.mask + p * d;
            for (int l = 0; l < d; ++l) {  // branch-free: N:M patterns are unpredictable
                kl[r] = l;
                xs[r] = xp[l];
                xc[r] = xp[l] - a.mu[l];  // x' = fl(x - mu), rounded as the caller rounds c'
                rw[r] = a.w + (int64_t)l * kp;
                r += mp[l] != 0;
            }
        } else {
            for (int l = 0; l < d; ++l) {
                xs[l] = xp[l];
                xc[l] = xp[l] - a.mu[l];
            }
            r = d;
        }
        double A = 0.0, sx2 = 0.0;
        for (int q = 0; q < r; ++q) {
            A += (double)xc[q] * (double)xc[q];
            sx2 += (double)xs[q] * (double)xs[q];
        }
        int64_t best = 0;  // no kept column: every distance is 0, the lowest index wins
        if (r > 0) {
            best = -1;
            if (a.tmode >= 0 && A <= BIG_A) {
                const float* t = a.tab;
                if (a.tmode == 1) {
                    t = a.tab + (int64_t)a.pid[p] * kp;
                } else if (a.tmode == 2) {  // T of this point's pattern: sum of its columns of c'^2
                    typedef typename VT<W>::f vf;
                    for (int q = 0; q < r; ++q) rows[q] = a.tab + (int64_t)kl[q] * kp;
                    for (int64_t jb = 0; jb < kp; jb += W) {
                        vf acc = vf{};
                        for (int q = 0; q < r; ++q) acc += load<W>(rows[q] + jb);
                        std::memcpy(trow.data() + jb, &acc, sizeof(acc));
                    }
                    t = trow.data();
                }
                best = search_r<W, true>(rw.data(), t, xc.data(), r, kp, A);
            }
            if (best < 0) {
                ++ndirect;
                for (int q = 0; q < r; ++q) rows[q] = a.ct + (int64_t)kl[q] * kp;
                best = search_r<W, false>(rows.data(), nullptr, xs.data(), r, kp, 0.0);
            }
            if (best < 0) {
                best = exact_argmin(d, k, a.c, kl.data(), xs.data(), r);
                ++nexact;
            }
        }
        a.assign[p] = best;
        if (a.prev) moved += a.prev[p] != best;
        if (a.s1) {
            a.cnt[best] += 1;
            sumsq += sx2;
            double* srow = a.s1 + best * d;
            for (int q = 0; q < r; ++q) srow[kl[q]] += (double)xs[q];
            if (a.nk) {
                int64_t* nrow = a.nk + best * d;
                for (int q = 0; q < r; ++q) nrow[kl[q]] += 1;
            }
        }
    }
    if (a.s1) a.sa[0] = sumsq;
    a.info[0] = nexact;
    a.info[1] = moved;
    a.info[2] = ndirect;
}

// One copy of the whole range loop per instruction set, each with its own vector width (and one per
// masked / unmasked: without a mask the column rows never change from point to point).
#if defined(__x86_64__) && defined(__GNUC__)
#define VQ_X86 1
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi,bmi2,popcnt")))
void assign_avx512(const Args& a) { a.mask ? assign_range<16, true>(a) : assign_range<16, false>(a); }
__attribute__((target("avx2,fma,bmi,bmi2,popcnt")))
void assign_avx2(const Args& a) { a.mask ? assign_range<8, true>(a) : assign_range<8, false>(a); }
#endif
void assign_base(const Args& a) { a.mask ? assign_range<4, true>(a) : assign_range<4, false>(a); }

// 2: AVX-512 (F, VL, BW, DQ), 1: AVX2 + FMA, 0: baseline.  __builtin_cpu_supports also checks that the
// OS saves the wider registers.
int best_isa() {
#ifdef VQ_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma"))
        return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

}  // namespace

extern "C" {

int vq_kmeans_abi(void) { return ABI; }

// The code path vq_assign runs for a request: want < 0 = the best this CPU supports; else want
// (0 baseline, 1 AVX2 + FMA, 2 AVX-512) when the CPU supports it, -1 when it does not.
int vq_kmeans_isa(int want) {
    const int best = best_isa();
    if (want < 0) return best;
    return want <= best ? want : -1;
}

// isa: a value vq_kmeans_isa returned (>= 0).  Points [p0, p1) of x [n, d] float32 (values under a
// zero mask are read but never used).  mask [n, d] uint8 (nonzero = kept) or NULL (all kept).
// mu [d] float32: the shift of stage 1 (x' = fl(x - mu) in float32).  w [d, kp] float32: -2 c'^T
// (c' = fl(c - mu)), zero beyond k.
// tab and tmode (the T rows of stage 1, NaN beyond k: padding never wins): tmode 0: tab [1, kp], one
// row for every point (no mask); 1: tab [npat, kp], row pid[p] (pid [n] int32); 2: tab [d, kp] =
// fl(c'^2)^T, a point's row summed over its kept columns here; -1: skip stage 1 (|c'| > 2^40).
// ct [d, kp] float32: the codebook transposed, NaN beyond k (stage 2).  c [k, d] float32: the codebook
// (float64 stage).  kp % 32 == 0.  assign [n] int64: written for [p0, p1).  prev [n] int64 or NULL: the
// previous assignment, to count the points that moved.  Statistics for the range (all NULL to skip,
// else zeroed here): s1 [k, d] float64 sums of kept x, cnt [k] int64 members, nk [k, d] int64 kept
// elements (only when mask is not NULL), sa [1] float64 sum of kept x^2.
// info [3] int64: points decided in float64, points whose index differs from prev, points stage 1 left
// to stage 2.
void vq_assign(int isa, int d, int64_t k, int64_t kp, const float* x, const uint8_t* mask, const float* mu,
               const float* w, const float* tab, const int32_t* pid, int tmode, const float* ct, const float* c,
               int64_t p0, int64_t p1, int64_t* assign, const int64_t* prev, double* s1, int64_t* cnt, int64_t* nk,
               double* sa, int64_t* info) {
    const Args a{d, k, kp, x, mask, mu, w, tab, pid, tmode, ct, c, p0, p1, assign, prev, s1, cnt, nk, sa, info};
#ifdef VQ_X86
    if (isa >= 2) return assign_avx512(a);
    if (isa == 1) return assign_avx2(a);
#endif
    assign_base(a);
}

}  // extern "C"
