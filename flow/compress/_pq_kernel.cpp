// Fused PQ training kernels for flow/compress/pq.py (the encoder of the straight-through forward and the
// soft-assignment backward), loaded with ctypes by flow/compress/_pq_native.py.
//
// Plain C ABI, no Python or torch headers: the caller passes raw pointers of contiguous float32 CPU
// tensors and a range of subspaces [c0, c1); the kernel is single-threaded (the caller may run disjoint
// subspace ranges on its own threads: every output row belongs to one subspace).
//
// Two layouts of the work per (subspace c, column):
// * columns in the lanes (pq_encode_cols, pq_soft_grad_cols: the default path): W columns per vector,
//   loops over k and j with scalar operands, no horizontal reductions; P as p2 [C, K, v] = -2 P,
//   pn [C, K] = ||P_k||^2.
// * prototypes in the lanes (pq_soft_grad, used for the soft forward's LUT gradient): K rounded up to
//   KP (16, 32 or 64) lanes, padding lanes with pn = +inf (never the minimum, soft weight 0):
//   pt2 [C, v, KP] = -2 P^T, pn [C, KP], lutT [C, Cout, KP], g [m, Cout].
// Common: a [C, v, m] the subvectors of a block of m columns (subspace-major); the scores
// e_k = ||P_k||^2 - 2 P_k . a (the squared distance less ||a||^2); W is the machine's width, one copy
// per instruction set as in _kmeans_kernel.cpp (AVX-512 16, AVX2 + FMA 8, baseline 4), picked at run time.
//
// pq_encode_cols: the nearest prototype; where the best and the runner-up lie within the error bound of
//   the expanded form (e_k <= e_min + rel2 (||a||^2 + max_k ||P_k||^2) for two or more k) it re-encodes the
//   column with the direct formula in flow.compress.pq._scan_nearest's order (exact_nearest), as
//   flow.compress.pq._encode_block does; returns how many columns that was.
// pq_soft_grad_cols: the straight-through backward (below), W columns in the vector lanes.
// pq_soft_grad: soft = softmax_k(-e / T) computed as 2^((e_min - e) s), s = log2(e) / T, with weights
//   below 2^-126 flushed to 0 (flow.compress.pq._soft_block); then, with gs_k = lut_k . g (dL/dsoft),
//   gz = soft * (gs - <soft, gs>) (dL/dz) written to gz [C, m, KP], and accumulated: gzsum[c, k] += gz_k
//   ([C, KP]) and (soft forward only, when glT is not NULL) glT[c, o, k] += soft_k g_o ([C, Cout, KP], the
//   LUT gradient of soft @ lut).  need_gz = 0 skips gz and its sum (only glT wanted).  The two products
//   with gz that have long inner dimensions (dL/da = (2/T) P^T gz and sum_m a_m gz_m^T for dL/dP) are
//   the caller's batched GEMMs.
// pq_hard_lut_grad: the straight-through LUT gradient hard^T g, gl[c, idx[c, col]] += g[col].
// pq_outer_acc: sum_m a_m gz_m^T for dL/dP (columns in L1-sized chunks, the K sums of a row in registers).
// pq_lut_sum: the hard lookup's value sum_c lut[c, idx[c, col]], in embedding_bag's order (bit for bit), as rows
//   [M, Cout] or straight into a conv's NCHW output.
// pq_im2col / pq_col2im: a conv's patches [D, cols] of a range of images straight from its input, and their
//   adjoint added into dL/dx (no padded copy, no stacked slices; the torch formulation is pq._im2col_T).
// pq_conv_encode / pq_conv_backward: a conv layer's straight-through forward encode and backward, range after
//   range of images in one call (patches, kernels, col2im), for the training passes of flow.compress.pq.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#define PQ_INLINE __attribute__((always_inline)) inline

namespace {

constexpr int ABI = 10;

template <int W>
struct VT {
    typedef float f __attribute__((vector_size(W * sizeof(float))));
    typedef int32_t i __attribute__((vector_size(W * sizeof(int32_t))));
};

template <int W>
PQ_INLINE typename VT<W>::f ld(const float* p) {
    typename VT<W>::f v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

template <int W>
PQ_INLINE void st(float* p, typename VT<W>::f v) {
    std::memcpy(p, &v, sizeof(v));
}

// Horizontal sum / minimum of a W-lane float vector: halve until one lane is left.
template <int W, class V>
PQ_INLINE float hsum(V v) {
    if constexpr (W == 1) {
        return v[0];
    } else {
        typedef float H __attribute__((vector_size(sizeof(float) * W / 2)));
        H a, b;
        std::memcpy(&a, &v, sizeof(a));
        std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(a), sizeof(b));
        return hsum<W / 2>(a + b);
    }
}

template <int W, class V>
PQ_INLINE float hmin(V v) {
    if constexpr (W == 1) {
        return v[0];
    } else {
        typedef float H __attribute__((vector_size(sizeof(float) * W / 2)));
        H a, b;
        std::memcpy(&a, &v, sizeof(a));
        std::memcpy(&b, reinterpret_cast<const char*>(&v) + sizeof(a), sizeof(b));
        return hmin<W / 2>(a < b ? a : b);
    }
}

// 2^x for x in [-1/2, 1/2]: 1 + x P(x), P of degree 5 with Cephes' exp2f coefficients (peak relative error
// 1.7e-7, about 2 ulp; exactly 1 at x = 0, so a column's best weight stays exactly 1). Six multiply-adds.
template <int W>
PQ_INLINE typename VT<W>::f exp2_poly(typename VT<W>::f x) {
    typename VT<W>::f q = x * 1.535336188319500e-4f + 1.339887440266574e-3f;
    q = q * x + 9.618437357674640e-3f;
    q = q * x + 5.550332471162809e-2f;
    q = q * x + 2.402264791363012e-1f;
    q = q * x + 6.931472028550421e-1f;
    return q * x + 1.0f;
}

#if defined(__x86_64__) && defined(__GNUC__)
// exp2_neg (below) on AVX-512 in 10 instructions instead of 16: the rounding by vrndscaleps, 2^n and the
// flush by one zero-masked vscalefps (p * 2^n where z > -126, else 0). Same polynomial; n rounds to nearest,
// so f lies in [-1/2, 1/2] instead of (-1/2, 1/2].
// GCC's builtins rather than the intrinsics: an intrinsic carries target("avx512f") and could not be
// inlined into this template, which only takes the target of the AVX-512 function it is inlined into.
PQ_INLINE VT<16>::f exp2_neg16(VT<16>::f z) {
    typedef VT<16>::f vf;
    const vf zero = vf{};
    const unsigned short keep = __builtin_ia32_cmpps512_mask(z, zero - 126.0f, _CMP_GT_OQ, (unsigned short)-1,
                                                             _MM_FROUND_CUR_DIRECTION);
    const vf lo = zero - 127.0f;
    const vf zz = z > lo ? z : lo;
    const vf n = __builtin_ia32_rndscaleps_mask(zz, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC, zz,
                                                (unsigned short)-1, _MM_FROUND_CUR_DIRECTION);
    const vf x = zz - n;
    const vf p = exp2_poly<16>(x);
    return __builtin_ia32_scalefps512_mask(p, n, zero, keep, _MM_FROUND_CUR_DIRECTION);
}
#define PQ_EXP2_AVX512 1
#endif

// 2^z for z <= 0, and exactly 0 where z <= -126 (below float32's smallest normal: flushed, as in
// _soft_block).  z = n + f with n = trunc(z - 1/2) (so f in [-1/2, 1/2]); 2^f by exp2_poly, 2^n from the
// exponent bits.
template <int W>
PQ_INLINE typename VT<W>::f exp2_neg(typename VT<W>::f z) {
    typedef typename VT<W>::f vf;
    typedef typename VT<W>::i vi;
#ifdef PQ_EXP2_AVX512
    if constexpr (W == 16) return exp2_neg16(z);  // only the AVX-512 copies instantiate W = 16
#endif
    const vf lo = vf{} - 126.0f;
    const vi keep = z > lo;  // -1 where kept
    const vf zz = z > lo ? z : lo;
    const vi n = __builtin_convertvector(zz - 0.5f, vi);
    const vf x = zz - __builtin_convertvector(n, vf);
    const vf p = exp2_poly<W>(x);
    const vi bits = (n + 127) << 23;
    vf scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    const vi r = (vi)(p * scale) & keep;
    vf out;
    std::memcpy(&out, &r, sizeof(out));
    return out;
}

struct GradArgs {
    int64_t c0, c1, v, m, cout;
    const float *a, *pt2, *pn, *lutT, *g;
    float s;
    float *gz, *gzsum, *glT;
    int need_gz;
};

// e[0..NB) = pn - 2 P . a for column `col` of subspace c; also ||a||^2 when want_an.
template <int W, int NB, bool want_an>
PQ_INLINE float scores(typename VT<W>::f* e, const float* ac, const float* pt2c, const float* pnc, int64_t v,
                       int64_t m, int64_t col) {
    constexpr int KP = W * NB;
    // Two partial sums (even and odd j): the multiply-adds of one column are a dependency chain otherwise.
    typename VT<W>::f e1[NB];
    for (int b = 0; b < NB; ++b) {
        e[b] = ld<W>(pnc + b * W);
        e1[b] = typename VT<W>::f{};
    }
    float an = 0.0f, an1 = 0.0f;
    int64_t j = 0;
    for (; j + 1 < v; j += 2) {
        const float aj = ac[j * m + col], ak = ac[(j + 1) * m + col];
        if (want_an) {
            an += aj * aj;
            an1 += ak * ak;
        }
        for (int b = 0; b < NB; ++b) {
            e[b] += aj * ld<W>(pt2c + j * KP + b * W);
            e1[b] += ak * ld<W>(pt2c + (j + 1) * KP + b * W);
        }
    }
    if (j < v) {
        const float aj = ac[j * m + col];
        if (want_an) an += aj * aj;
        for (int b = 0; b < NB; ++b) e[b] += aj * ld<W>(pt2c + j * KP + b * W);
    }
    for (int b = 0; b < NB; ++b) e[b] += e1[b];
    return an + an1;
}

template <int W, int NB>
PQ_INLINE float emin_of(const typename VT<W>::f* e) {
    typename VT<W>::f mn = e[0];
    for (int b = 1; b < NB; ++b) mn = e[b] < mn ? e[b] : mn;
    return hmin<W>(mn);
}

template <int W, int NB>
PQ_INLINE void grad_range(const GradArgs& A) {
    typedef typename VT<W>::f vf;
    constexpr int KP = W * NB;
    const int64_t v = A.v, m = A.m, cout = A.cout;
    for (int64_t c = A.c0; c < A.c1; ++c) {
        const float* ac = A.a + c * v * m;
        const float* pt2c = A.pt2 + c * v * KP;
        const float* pnc = A.pn + c * KP;
        const float* lutc = A.lutT + c * cout * KP;
        float* glc = A.glT ? A.glT + c * cout * KP : nullptr;
        vf zs[NB];
        for (int b = 0; b < NB; ++b) zs[b] = ld<W>(A.gzsum + c * KP + b * W);
        for (int64_t col = 0; col < m; ++col) {
            vf e[NB];
            scores<W, NB, false>(e, ac, pt2c, pnc, v, m, col);
            const float emin = emin_of<W, NB>(e);
            vf p[NB];
            vf tot = vf{};
            for (int b = 0; b < NB; ++b) {
                p[b] = exp2_neg<W>((emin - e[b]) * A.s);
                tot += p[b];
            }
            const float inv = 1.0f / hsum<W>(tot);
            for (int b = 0; b < NB; ++b) p[b] *= inv;
            const float* gr = A.g + col * cout;
            if (glc) {
                for (int64_t o = 0; o < cout; ++o)
                    for (int b = 0; b < NB; ++b)
                        st<W>(glc + o * KP + b * W, ld<W>(glc + o * KP + b * W) + p[b] * gr[o]);
            }
            if (!A.need_gz) continue;
            float* gzo = A.gz + (c * m + col) * KP;
            // A one-hot column (every other weight flushed to exactly 0, common at small T): gz_k =
            // 1 * (gs_k - gs_k) = 0 and 0 * (...) = 0 elsewhere, exactly; skip gs.
            vf nz = vf{};
            for (int b = 0; b < NB; ++b) nz += p[b] > vf{} ? vf{} + 1.0f : vf{};
            if (hsum<W>(nz) == 1.0f) {
                for (int b = 0; b < NB; ++b) st<W>(gzo + b * W, vf{});
                continue;
            }
            // gs = lut . g in four partial sums (o mod 4): independent chains of multiply-adds.
            vf gs[NB], q1[NB], q2[NB], q3[NB];
            for (int b = 0; b < NB; ++b) gs[b] = q1[b] = q2[b] = q3[b] = vf{};
            int64_t o = 0;
            for (; o + 3 < cout; o += 4) {
                const float g0 = gr[o], g1 = gr[o + 1], g2 = gr[o + 2], g3 = gr[o + 3];
                for (int b = 0; b < NB; ++b) {
                    gs[b] += ld<W>(lutc + o * KP + b * W) * g0;
                    q1[b] += ld<W>(lutc + (o + 1) * KP + b * W) * g1;
                    q2[b] += ld<W>(lutc + (o + 2) * KP + b * W) * g2;
                    q3[b] += ld<W>(lutc + (o + 3) * KP + b * W) * g3;
                }
            }
            for (; o < cout; ++o)
                for (int b = 0; b < NB; ++b) gs[b] += ld<W>(lutc + o * KP + b * W) * gr[o];
            for (int b = 0; b < NB; ++b) gs[b] += (q1[b] + q2[b]) + q3[b];
            vf dv = vf{};
            for (int b = 0; b < NB; ++b) dv += p[b] * gs[b];
            const float dot = hsum<W>(dv);
            for (int b = 0; b < NB; ++b) {
                const vf gz = (gs[b] - dot) * p[b];
                st<W>(gzo + b * W, gz);
                zs[b] += gz;
            }
        }
        for (int b = 0; b < NB; ++b) st<W>(A.gzsum + c * KP + b * W, zs[b]);
    }
}

// pq_soft_grad_cols: the STE backward with W columns in the vector lanes (no horizontal reductions):
//   p2 [C, K, v] = -2 P, ps [C, v, K] = (2/T) P^T, pn [C, K], lut = lutT [C, Cout, kp], gT [Cout, ldg] (g
//   transposed, columns [0, m) used); writes ga [C, v, ldo] (columns [0, m)) = (2/T) sum_k P_k gz_k (dL/da)
//   and, when gz is not NULL, gz [C, K, m]; accumulates
//   gzsum [C, K].  K = KT when KT > 0 (a compile-time K), else the runtime A.K (at most 64).
struct ColArgs {
    int64_t c0, c1, v, m, cout, K, kp, ldg, ldo;  // ldg: row stride of gT; ldo: row stride of ga
    const float *a, *p2, *ps, *pn, *lut, *gT;
    float s;
    float *ga, *gz, *gzsum;
};

template <int W>
PQ_INLINE typename VT<W>::f ldp(const float* p, int n) {
    typename VT<W>::f v = typename VT<W>::f{};
    std::memcpy(&v, p, n * sizeof(float));
    return v;
}

template <int W, int KT, bool TAIL>
PQ_INLINE void col_tile(const ColArgs& A, int64_t c, int64_t col, int n, typename VT<W>::f* zs) {
    typedef typename VT<W>::f vf;
    const int64_t K = KT > 0 ? KT : A.K;
    const int64_t v = A.v, m = A.m, cout = A.cout;
    const float* ac = A.a + c * v * m + col;
    const float* p2c = A.p2 + c * K * v;
    const float* psc = A.ps + c * v * K;
    const float* pnc = A.pn + c * K;
    const float* lutc = A.lut + c * cout * A.kp;
    constexpr int KM = KT > 0 ? KT : 64;
    constexpr int VM = 64;
    vf av[VM], e[KM], gs[KM];
    for (int64_t j = 0; j < v; ++j) av[j] = TAIL ? ldp<W>(ac + j * m, n) : ld<W>(ac + j * m);
    vf mn = vf{} + INFINITY;
    for (int64_t k = 0; k < K; ++k) {
        vf x0 = vf{} + pnc[k], x1 = vf{};
        int64_t j = 0;
        for (; j + 1 < v; j += 2) {
            x0 += av[j] * p2c[k * v + j];
            x1 += av[j + 1] * p2c[k * v + j + 1];
        }
        if (j < v) x0 += av[j] * p2c[k * v + j];
        e[k] = x0 + x1;
        mn = e[k] < mn ? e[k] : mn;
    }
    vf tot = vf{};
    for (int64_t k = 0; k < K; ++k) {
        e[k] = exp2_neg<W>((mn - e[k]) * A.s);
        tot += e[k];
    }
    const vf inv = 1.0f / tot;
    for (int64_t k = 0; k < K; ++k) {
        e[k] *= inv;  // the soft weights
        gs[k] = vf{};
    }
    // gs_k = sum_o lut[k, o] g_o: o outer, the K accumulators in registers (lutT: [Cout, kp] per subspace)
    const float* gc = A.gT + col;
    for (int64_t o = 0; o < cout; ++o) {
        const vf go = TAIL ? ldp<W>(gc + o * A.ldg, n) : ld<W>(gc + o * A.ldg);
        const float* lo = lutc + o * A.kp;
        for (int64_t k = 0; k < K; ++k) gs[k] += go * lo[k];
    }
    vf dot = vf{};
    for (int64_t k = 0; k < K; ++k) dot += e[k] * gs[k];
    for (int64_t k = 0; k < K; ++k) {
        const vf gz = (gs[k] - dot) * e[k];
        gs[k] = gz;
        zs[k] += gz;
        if (A.gz) {
            float* dst = A.gz + (c * K + k) * m + col;
            if (TAIL) std::memcpy(dst, &gz, n * sizeof(float)); else st<W>(dst, gz);
        }
    }
    // dL/da_j = sum_k ps[j, k] gz_k: j outer, two register accumulators (no chain through memory)
    for (int64_t j = 0; j < v; ++j) {
        const float* pj = psc + j * K;
        vf x0 = vf{}, x1 = vf{};
        int64_t k = 0;
        for (; k + 1 < K; k += 2) {
            x0 += gs[k] * pj[k];
            x1 += gs[k + 1] * pj[k + 1];
        }
        if (k < K) x0 += gs[k] * pj[k];
        x0 += x1;
        float* dst = A.ga + (c * v + j) * A.ldo + col;
        if (TAIL) std::memcpy(dst, &x0, n * sizeof(float)); else st<W>(dst, x0);
    }
}

template <int W, int KT>
PQ_INLINE void cols_range(const ColArgs& A) {
    typedef typename VT<W>::f vf;
    const int64_t K = KT > 0 ? KT : A.K;
    constexpr int KM = KT > 0 ? KT : 64;
    for (int64_t c = A.c0; c < A.c1; ++c) {
        vf zs[KM];
        for (int64_t k = 0; k < K; ++k) zs[k] = vf{};
        int64_t col = 0;
        for (; col + W <= A.m; col += W) col_tile<W, KT, false>(A, c, col, W, zs);
        if (col < A.m) col_tile<W, KT, true>(A, c, col, (int)(A.m - col), zs);
        for (int64_t k = 0; k < K; ++k) A.gzsum[c * K + k] += hsum<W>(zs[k]);
    }
}

template <int W>
PQ_INLINE void cols_w(const ColArgs& A) {
    if (A.K == 16) cols_range<W, 16>(A); else cols_range<W, 0>(A);
}

// flow.compress.pq._scan_nearest for one column a [v] against P = -p2c / 2 [K, v] (exact: a power of two):
// d_k = (a_0 - P_k0)^2 + (a_1 - P_k1)^2 + ..., summed in j order with every square and sum rounded to float32
// (no fused multiply-add: this function is compiled for the baseline instruction set, which has none, and is
// not inlined into the AVX copies), and the first k with the least d_k (torch's argmin: the first minimum).
__attribute__((noinline, optimize("fp-contract=off")))
int64_t exact_nearest(const float* a, const float* p2c, int64_t K, int64_t v) {
    float best = INFINITY;
    int64_t bi = 0;
    for (int64_t k = 0; k < K; ++k) {
        float d = 0.0f;
        for (int64_t j = 0; j < v; ++j) {
            const float df = a[j] - p2c[k * v + j] * -0.5f;
            const float sq = df * df;
            d = j ? d + sq : sq;
        }
        if (d < best) {
            best = d;
            bi = k;
        }
    }
    return bi;
}

// pq_encode_cols: the nearest prototype with W columns in the vector lanes: p2 [C, K, v] = -2 P, pn [C, K];
// the ambiguity test of flow.compress.pq._encode_block, its columns re-encoded by exact_nearest; K, v <= 64.
struct EncColArgs {
    int64_t c0, c1, v, m, K;
    const float *a, *p2, *pn, *pnmax;
    float rel2;
    int64_t* idx;
    int64_t ld;
};

template <int W, int KT, bool TAIL>
PQ_INLINE int64_t enc_tile(const EncColArgs& A, int64_t c, int64_t col, int n) {
    typedef typename VT<W>::f vf;
    const int64_t K = KT > 0 ? KT : A.K;
    const int64_t v = A.v, m = A.m;
    const float* ac = A.a + c * v * m + col;
    const float* p2c = A.p2 + c * K * v;
    const float* pnc = A.pn + c * K;
    constexpr int KM = KT > 0 ? KT : 64;
    vf av[64], e[KM];
    vf an0 = vf{}, an1 = vf{};
    int64_t j = 0;
    for (; j + 1 < v; j += 2) {
        av[j] = TAIL ? ldp<W>(ac + j * m, n) : ld<W>(ac + j * m);
        av[j + 1] = TAIL ? ldp<W>(ac + (j + 1) * m, n) : ld<W>(ac + (j + 1) * m);
        an0 += av[j] * av[j];
        an1 += av[j + 1] * av[j + 1];
    }
    if (j < v) {
        av[j] = TAIL ? ldp<W>(ac + j * m, n) : ld<W>(ac + j * m);
        an0 += av[j] * av[j];
    }
    vf mn = vf{} + INFINITY;
    for (int64_t k = 0; k < K; ++k) {
        vf x0 = vf{} + pnc[k], x1 = vf{};
        int64_t i = 0;
        for (; i + 1 < v; i += 2) {
            x0 += av[i] * p2c[k * v + i];
            x1 += av[i + 1] * p2c[k * v + i + 1];
        }
        if (i < v) x0 += av[i] * p2c[k * v + i];
        e[k] = x0 + x1;
        mn = e[k] < mn ? e[k] : mn;
    }
    const vf thr = ((an0 + an1) + A.pnmax[c]) * A.rel2 + mn;
    vf cnt = vf{}, which = vf{};
    for (int64_t k = 0; k < K; ++k) {
        const auto hit = e[k] <= thr;
        cnt += hit ? vf{} + 1.0f : vf{};
        which = hit ? vf{} + (float)k : which;
    }
    // The answers as one int64 vector, stored whole or (tail) in part. A column with two or more hits (rare:
    // 0.1 % of ResNet20's) is re-encoded here by the direct formula, one lane at a time.
    typedef int64_t vl __attribute__((vector_size(W * sizeof(int64_t))));
    vf ans = cnt == 1.0f ? which : vf{} - 1.0f;
    const typename VT<W>::i bad = (ans < 0.0f) & 1;
    int64_t amb = 0;
    for (int l = 0; l < (TAIL ? n : W); ++l) amb += bad[l];
    if (amb) {
        float lane[64];
        for (int l = 0; l < (TAIL ? n : W); ++l) {
            if (!bad[l]) continue;
            for (int64_t i = 0; i < v; ++i) lane[i] = av[i][l];
            ans[l] = (float)exact_nearest(lane, p2c, K, v);
        }
    }
    const vl res = __builtin_convertvector(ans, vl);
    std::memcpy(A.idx + c * A.ld + col, &res, (TAIL ? n : W) * sizeof(int64_t));
    return amb;
}

// Returns the number of columns re-encoded by the direct formula.
template <int W, int KT>
PQ_INLINE int64_t enc_cols_range(const EncColArgs& A) {
    int64_t amb = 0;
    for (int64_t c = A.c0; c < A.c1; ++c) {
        int64_t col = 0;
        for (; col + W <= A.m; col += W) amb += enc_tile<W, KT, false>(A, c, col, W);
        if (col < A.m) amb += enc_tile<W, KT, true>(A, c, col, (int)(A.m - col));
    }
    return amb;
}

template <int W>
PQ_INLINE int64_t enc_cols_w(const EncColArgs& A) {
    return A.K == 16 ? enc_cols_range<W, 16>(A) : enc_cols_range<W, 0>(A);
}

// gl[c, idx[c, col], :] += g[col, :] for col < m (idx [C, ld] int64, g [m, cout], gl [C, K, cout]).
void hard_lut_grad(int64_t c0, int64_t c1, int64_t m, int64_t cout, int64_t K, const int64_t* idx, int64_t ld,
                   const float* g, float* gl) {
    for (int64_t c = c0; c < c1; ++c) {
        const int64_t* ic = idx + c * ld;
        float* glc = gl + c * K * cout;
        for (int64_t col = 0; col < m; ++col) {
            float* row = glc + ic[col] * cout;
            const float* gr = g + col * cout;
            for (int64_t o = 0; o < cout; ++o) row[o] += gr[o];
        }
    }
}

template <int W>
PQ_INLINE int grad_w(int64_t kp, const GradArgs& A) {
    switch (kp / W) {
        case 16 / W: grad_range<W, 16 / W>(A); return 0;
        case 32 / W: grad_range<W, 32 / W>(A); return 0;
        case 64 / W: grad_range<W, 64 / W>(A); return 0;
        default: return -1;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define PQ_X86 1
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
int grad_avx512(int64_t kp, const GradArgs& A) { return grad_w<16>(kp, A); }
__attribute__((target("avx2,fma")))
int grad_avx2(int64_t kp, const GradArgs& A) { return grad_w<8>(kp, A); }
__attribute__((target("avx512f,avx512vl,avx2,fma")))
void hard_avx512(int64_t c0, int64_t c1, int64_t m, int64_t cout, int64_t K, const int64_t* idx, int64_t ld,
                 const float* g, float* gl) { hard_lut_grad(c0, c1, m, cout, K, idx, ld, g, gl); }
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
void cols_avx512(const ColArgs& A) { cols_w<16>(A); }
__attribute__((target("avx2,fma")))
void cols_avx2(const ColArgs& A) { cols_w<8>(A); }
#endif
void cols_base(const ColArgs& A) { cols_w<4>(A); }
#ifdef PQ_X86
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
int64_t enc_cols_avx512(const EncColArgs& A) { return enc_cols_w<16>(A); }
__attribute__((target("avx2,fma")))
int64_t enc_cols_avx2(const EncColArgs& A) { return enc_cols_w<8>(A); }
#endif
int64_t enc_cols_base(const EncColArgs& A) { return enc_cols_w<4>(A); }
int grad_base(int64_t kp, const GradArgs& A) { return grad_w<4>(kp, A); }

// Transpose the W x W matrix held in W vectors r[0..W) (row i = r[i]) in place: log2(W) rounds of two-source
// shuffles with constant masks; round h swaps the lanes j with bit h set of row i (bit h clear) with the lanes
// j - h of row i + h.
template <int W>
PQ_INLINE void transpose(typename VT<W>::f* r) {
    typedef typename VT<W>::i vi;
#pragma GCC unroll 8
    for (int h = W / 2; h >= 1; h /= 2) {
        vi lo, hi;
#pragma GCC unroll 16
        for (int j = 0; j < W; ++j) {
            lo[j] = (j & h) ? W + j - h : j;
            hi[j] = (j & h) ? W + j : j + h;
        }
#pragma GCC unroll 16
        for (int i = 0; i < W; ++i) {
            if (i & h) continue;
            const typename VT<W>::f a = r[i], b = r[i + h];
            r[i] = __builtin_shuffle(a, b, lo);
            r[i + h] = __builtin_shuffle(a, b, hi);
        }
    }
}

// out[col] = sum_c lut[c, idx[c, col]] in c order from 0: per tile of T columns and W outputs, the T partial
// sums stay in registers through every c (one store each); outputs past the last multiple of W, one at a time.
// Layout of out: rows [M, cout] (L = 0), or a conv's NCHW [M / L, cout, L] with L columns per image (each W x W
// block of sums transposed in registers so that the column becomes the fastest index; a block straddling two
// images, or a partial one, lane by lane).
template <int W>
PQ_INLINE void lut_sum_w(int64_t m0, int64_t m1, int64_t C, int64_t K, int64_t cout, const int64_t* idx, int64_t ldi,
                         const float* lut, float* out, int64_t L) {
    typedef typename VT<W>::f vf;
    constexpr int64_t T = 16;
    const int64_t ov = cout - cout % W, step = L ? L : 1;  // step: from one output to the next
    int64_t at[T];  // where output 0 of each column of the tile goes
    for (int64_t t0 = m0; t0 < m1; t0 += T) {
        const int64_t nt = t0 + T < m1 ? T : m1 - t0;
        for (int64_t l = 0; l < nt; ++l) at[l] = L ? ((t0 + l) / L) * cout * L + (t0 + l) % L : (t0 + l) * cout;
        for (int64_t o = 0; o < ov; o += W) {
            vf acc[T];
            for (int64_t l = 0; l < T; ++l) acc[l] = vf{};
            for (int64_t c = 0; c < C; ++c) {
                const int64_t* ic = idx + c * ldi + t0;
                const float* lc = lut + c * K * cout + o;
                if (nt == T) {
                    for (int64_t l = 0; l < T; ++l) acc[l] += ld<W>(lc + ic[l] * cout);
                } else {
                    for (int64_t l = 0; l < nt; ++l) acc[l] += ld<W>(lc + ic[l] * cout);
                }
            }
            if (!L) {
                for (int64_t l = 0; l < nt; ++l) st<W>(out + (t0 + l) * cout + o, acc[l]);
                continue;
            }
#pragma GCC unroll 16
            for (int g = 0; g < T / W; ++g) {  // groups of W columns (constant indices: acc stays in registers)
                const int64_t g0 = g * W;
                if (g0 >= nt) break;
                if (g0 + W <= nt && at[g0 + W - 1] == at[g0] + W - 1) {  // W columns of one image: transposed
                    transpose<W>(acc + g0);  // in registers, then one store per output
#pragma GCC unroll 16
                    for (int i = 0; i < W; ++i) st<W>(out + at[g0] + (o + i) * L, acc[g0 + i]);
                    continue;
                }
                float tr[W * W];  // straddling two images, or the last columns: lane by lane
#pragma GCC unroll 16
                for (int l = 0; l < W; ++l) st<W>(tr + l * W, acc[g0 + l]);
                for (int64_t i = 0; i < W; ++i)
                    for (int64_t l = 0; l < W && g0 + l < nt; ++l) out[at[g0 + l] + (o + i) * L] = tr[l * W + i];
            }
        }
        for (int64_t o = ov; o < cout; ++o) {
            float acc[T] = {};
            for (int64_t c = 0; c < C; ++c) {
                const int64_t* ic = idx + c * ldi + t0;
                const float* lc = lut + c * K * cout + o;
                for (int64_t l = 0; l < nt; ++l) acc[l] += lc[ic[l] * cout];
            }
            for (int64_t l = 0; l < nt; ++l) out[at[l] + o * step] = acc[l];
        }
    }
}
void lut_sum(int64_t m0, int64_t m1, int64_t C, int64_t K, int64_t cout, const int64_t* idx, int64_t ld,
             const float* lut, float* out, int64_t L) { lut_sum_w<4>(m0, m1, C, K, cout, idx, ld, lut, out, L); }
#ifdef PQ_X86
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
void lut_sum_avx512(int64_t m0, int64_t m1, int64_t C, int64_t K, int64_t cout, const int64_t* idx, int64_t ld,
                    const float* lut, float* out, int64_t L) { lut_sum_w<16>(m0, m1, C, K, cout, idx, ld, lut, out, L); }
__attribute__((target("avx2,fma")))
void lut_sum_avx2(int64_t m0, int64_t m1, int64_t C, int64_t K, int64_t cout, const int64_t* idx, int64_t ld,
                  const float* lut, float* out, int64_t L) { lut_sum_w<8>(m0, m1, C, K, cout, idx, ld, lut, out, L); }
#endif

// dst [m, cout] = src [cout, lds] transposed (columns [0, m) of src): W x W blocks through registers.
template <int W>
PQ_INLINE void rows_of_w(const float* src, int64_t lds, int64_t m, int64_t cout, float* dst) {
    typedef typename VT<W>::f vf;
    const int64_t mv = m - m % W, ov = cout - cout % W;
    for (int64_t c0 = 0; c0 < mv; c0 += W) {
        for (int64_t o = 0; o < ov; o += W) {
            vf r[W];
#pragma GCC unroll 16
            for (int i = 0; i < W; ++i) r[i] = ld<W>(src + (o + i) * lds + c0);
            transpose<W>(r);
#pragma GCC unroll 16
            for (int i = 0; i < W; ++i) st<W>(dst + (c0 + i) * cout + o, r[i]);
        }
        for (int64_t o = ov; o < cout; ++o)
            for (int64_t i = 0; i < W; ++i) dst[(c0 + i) * cout + o] = src[o * lds + c0 + i];
    }
    for (int64_t col = mv; col < m; ++col)
        for (int64_t o = 0; o < cout; ++o) dst[col * cout + o] = src[o * lds + col];
}
void rows_of(const float* src, int64_t lds, int64_t m, int64_t cout, float* dst) {
    rows_of_w<4>(src, lds, m, cout, dst);
}
#ifdef PQ_X86
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
void rows_of_avx512(const float* src, int64_t lds, int64_t m, int64_t cout, float* dst) {
    rows_of_w<16>(src, lds, m, cout, dst);
}
__attribute__((target("avx2,fma")))
void rows_of_avx2(const float* src, int64_t lds, int64_t m, int64_t cout, float* dst) {
    rows_of_w<8>(src, lds, m, cout, dst);
}
#endif

// A conv's patch geometry (pq_im2col, pq_col2im).
struct Geom {
    int64_t Cin, H, W, kh, kw, sh, sw, ph, pw;
    int64_t OH() const { return (H + 2 * ph - kh) / sh + 1; }
    int64_t OW() const { return (W + 2 * pw - kw) / sw + 1; }
    // The output columns [lo, hi) whose input column ow*sw + j - pw lies inside [0, W).
    void valid_ow(int64_t j, int64_t& lo, int64_t& hi) const {
        const int64_t ow_n = OW();
        lo = pw - j > 0 ? (pw - j + sw - 1) / sw : 0;
        hi = W - 1 + pw - j >= 0 ? (W - 1 + pw - j) / sw + 1 : 0;
        if (hi > ow_n) hi = ow_n;
        if (lo > hi) lo = hi;
    }
};

// A "same" conv (stride 1, output plane = input plane): a patch row of one image is its input plane shifted by
// `shift` elements, except the rows above or below the image (outside [q0, q1)) and the columns past its left
// or right edge (outside [lo, hi) in each row), which are zero. One copy per (row, image) instead of one per
// output row (ResNet20's 3x3 convs: 28, 14 or 7 rows of 28, 14 or 7 floats).
struct SameShift {
    int64_t shift, q0, q1, lo, hi;
    SameShift(const Geom& G, int64_t i, int64_t j) {
        const int64_t L = G.H * G.W;
        shift = (i - G.ph) * G.W + (j - G.pw);
        q0 = shift < 0 ? (-shift < L ? -shift : L) : 0;
        q1 = shift > 0 ? (shift < L ? L - shift : 0) : L;
        if (q1 < q0) q1 = q0;
        G.valid_ow(j, lo, hi);
    }
};

PQ_INLINE bool same_plane(const Geom& G) { return G.sh == 1 && G.sw == 1 && G.OH() == G.H && G.OW() == G.W; }

void im2col(const Geom& G, int64_t n0, int64_t n1, int64_t p0, int64_t p1, const float* x, float* out, int64_t ldo) {
    const int64_t OH = G.OH(), OW = G.OW(), plane = G.H * G.W;
    const bool same = same_plane(G);
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t t = p / G.Cin, cin = p % G.Cin, i = t / G.kw, j = t % G.kw;
        int64_t lo, hi;
        G.valid_ow(j, lo, hi);
        float* dst = out + p * ldo;
        if (same) {
            const SameShift S(G, i, j);
            for (int64_t n = n0; n < n1; ++n, dst += plane) {
                const float* src = x + (n * G.Cin + cin) * plane;
                std::memset(dst, 0, S.q0 * sizeof(float));
                std::memcpy(dst + S.q0, src + S.q0 + S.shift, (S.q1 - S.q0) * sizeof(float));
                std::memset(dst + S.q1, 0, (plane - S.q1) * sizeof(float));
                if (S.lo > 0 || S.hi < OW) {  // the edge columns took a neighbouring row's element
                    for (int64_t r = 0; r < plane; r += OW) {
                        for (int64_t ow = 0; ow < S.lo; ++ow) dst[r + ow] = 0.0f;
                        for (int64_t ow = S.hi; ow < OW; ++ow) dst[r + ow] = 0.0f;
                    }
                }
            }
            continue;
        }
        for (int64_t n = n0; n < n1; ++n) {
            const float* src = x + (n * G.Cin + cin) * plane;
            for (int64_t oh = 0; oh < OH; ++oh, dst += OW) {
                const int64_t ih = oh * G.sh + i - G.ph;
                if (ih < 0 || ih >= G.H) {
                    std::memset(dst, 0, OW * sizeof(float));
                    continue;
                }
                for (int64_t ow = 0; ow < lo; ++ow) dst[ow] = 0.0f;
                const float* row = src + ih * G.W + j - G.pw;
                if (G.sw == 1) {
                    std::memcpy(dst + lo, row + lo, (hi - lo) * sizeof(float));
                } else {
                    for (int64_t ow = lo; ow < hi; ++ow) dst[ow] = row[ow * G.sw];
                }
                for (int64_t ow = hi; ow < OW; ++ow) dst[ow] = 0.0f;
            }
        }
    }
}

// A "same" conv's col2im masks: per kernel offset t, keep[t * L + q] = all ones where patch position q's input
// lies inside the image, else 0 (one masked add over the whole shifted plane instead of one add loop per
// output row). Empty for any other conv.
std::unique_ptr<uint32_t[]> same_keep(const Geom& G) {
    std::unique_ptr<uint32_t[]> keep;
    if (!same_plane(G)) return keep;
    const int64_t OW = G.OW(), L = G.OH() * OW;
    keep.reset(new uint32_t[G.kh * G.kw * L]);
    for (int64_t t = 0; t < G.kh * G.kw; ++t) {
        const SameShift S(G, t / G.kw, t % G.kw);
        for (int64_t q = 0, ow = 0; q < L; ++q, ow = ow + 1 == OW ? 0 : ow + 1)
            keep[t * L + q] = (q >= S.q0 && q < S.q1 && ow >= S.lo && ow < S.hi) ? 0xffffffffu : 0u;
    }
    return keep;
}

// keep: same_keep(G) (built once per layer by the caller).
void col2im(const Geom& G, int64_t n0, int64_t n1, int64_t ci0, int64_t ci1, const float* g, int64_t ldg, float* dx,
            const uint32_t* keep) {
    const int64_t OH = G.OH(), OW = G.OW(), plane = G.H * G.W, L = OH * OW;
    const bool same = keep != nullptr;
    for (int64_t cin = ci0; cin < ci1; ++cin) {
        for (int64_t t = 0; t < G.kh * G.kw; ++t) {
            const int64_t i = t / G.kw, j = t % G.kw, p = t * G.Cin + cin;
            int64_t lo, hi;
            G.valid_ow(j, lo, hi);
            const SameShift S(G, i, j);
            for (int64_t n = n0; n < n1; ++n) {
                float* dst = dx + (n * G.Cin + cin) * plane;
                const float* src = g + p * ldg + (n - n0) * L;
                if (same) {
                    // dx[q + shift] += g[q] where kept; a dropped position adds +0 to an element of its range
                    // (exact), so each element's terms still come in kernel-offset order
                    const uint32_t* __restrict kt = keep + t * L;
                    float* __restrict d = dst + S.shift;
                    for (int64_t q = S.q0; q < S.q1; ++q) {
                        uint32_t b;
                        std::memcpy(&b, src + q, sizeof(b));
                        b &= kt[q];
                        float f;
                        std::memcpy(&f, &b, sizeof(f));
                        d[q] += f;
                    }
                    continue;
                }
                for (int64_t oh = 0; oh < OH; ++oh) {
                    const int64_t ih = oh * G.sh + i - G.ph;
                    if (ih < 0 || ih >= G.H) continue;
                    float* __restrict row = dst + ih * G.W + j - G.pw;
                    const float* __restrict s = src + oh * OW;
                    if (G.sw == 1) {
                        for (int64_t ow = lo; ow < hi; ++ow) row[ow] += s[ow];
                    } else {
                        for (int64_t ow = lo; ow < hi; ++ow) row[ow * G.sw] += s[ow];
                    }
                }
            }
        }
    }
}

// gp[c, j, k] += sum over col < m of a[c, j, col] gz[c, k, col]: a [C, v, m], gz [C, K, m], gp [C, v, K] (the
// dL/dP term sum_m a_m gz_m^T). Columns in chunks whose K rows of gz stay in L1 while every j passes over them;
// per (c, j, k) a W-lane sum carried from chunk to chunk and reduced once (the order does not depend on threads).
template <int W, int KT>
PQ_INLINE void outer_range(int64_t c0, int64_t c1, int64_t v, int64_t K_, int64_t m, const float* a, const float* gz,
                           float* gp) {
    typedef typename VT<W>::f vf;
    const int64_t K = KT > 0 ? KT : K_;
    constexpr int KM = KT > 0 ? KT : 64;
    const int64_t chunk = (int64_t)(4096 / (K * W)) * W;  // K rows of `chunk` floats: 16 KiB (half of L1)
    // The carried sums, W floats per (j, k), on the heap (up to 64 x 64 vectors would not fit a small thread
    // stack) and as plain floats: no library container of vector types crosses the target attributes.
    std::unique_ptr<float[]> sums(new float[v * K * W]);
    for (int64_t c = c0; c < c1; ++c) {
        const float* gzc = gz + c * K * m;
        std::memset(sums.get(), 0, v * K * W * sizeof(float));
        for (int64_t s0 = 0; s0 < m; s0 += chunk) {
            const int64_t s1 = s0 + chunk < m ? s0 + chunk : m;
            for (int64_t j = 0; j < v; ++j) {
                const float* aj = a + (c * v + j) * m;
                vf acc[KM];
                for (int64_t k = 0; k < K; ++k) acc[k] = ld<W>(sums.get() + (j * K + k) * W);
                int64_t col = s0;
                for (; col + W <= s1; col += W) {
                    const vf x = ld<W>(aj + col);
                    for (int64_t k = 0; k < K; ++k) acc[k] += x * ld<W>(gzc + k * m + col);
                }
                if (col < s1) {
                    const int n = (int)(s1 - col);
                    const vf x = ldp<W>(aj + col, n);
                    for (int64_t k = 0; k < K; ++k) acc[k] += x * ldp<W>(gzc + k * m + col, n);
                }
                for (int64_t k = 0; k < K; ++k) st<W>(sums.get() + (j * K + k) * W, acc[k]);
            }
        }
        float* g = gp + c * v * K;
        for (int64_t i = 0; i < v * K; ++i) g[i] += hsum<W>(ld<W>(sums.get() + i * W));
    }
}

template <int W>
PQ_INLINE void outer_w(int64_t c0, int64_t c1, int64_t v, int64_t K, int64_t m, const float* a, const float* gz,
                       float* gp) {
    if (K == 16) outer_range<W, 16>(c0, c1, v, K, m, a, gz, gp); else outer_range<W, 0>(c0, c1, v, K, m, a, gz, gp);
}
void outer_base(int64_t c0, int64_t c1, int64_t v, int64_t K, int64_t m, const float* a, const float* gz, float* gp) {
    outer_w<4>(c0, c1, v, K, m, a, gz, gp);
}
#ifdef PQ_X86
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
void outer_avx512(int64_t c0, int64_t c1, int64_t v, int64_t K, int64_t m, const float* a, const float* gz, float* gp) {
    outer_w<16>(c0, c1, v, K, m, a, gz, gp);
}
__attribute__((target("avx2,fma")))
void outer_avx2(int64_t c0, int64_t c1, int64_t v, int64_t K, int64_t m, const float* a, const float* gz, float* gp) {
    outer_w<8>(c0, c1, v, K, m, a, gz, gp);
}
#endif

int best_isa() {
#ifdef PQ_X86
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

int pq_kernel_abi(void) { return ABI; }

// want < 0: the best code path this CPU supports (0 baseline, 1 AVX2 + FMA, 2 AVX-512); else want when
// the CPU supports it, -1 when it does not.
int pq_kernel_isa(int want) {
    const int best = best_isa();
    if (want < 0) return best;
    return want <= best ? want : -1;
}

// pq_encode with columns in the lanes (see enc_cols_range): every answer final (the ambiguous columns
// re-encoded by exact_nearest); returns how many were, or -1 for an unsupported K or v.
int64_t pq_encode_cols(int isa, int64_t c0, int64_t c1, int64_t v, int64_t m, int64_t K, const float* a,
                       const float* p2, const float* pn, const float* pnmax, float rel2, int64_t* idx, int64_t ld) {
    if (K > 64 || v > 64) return -1;
    const EncColArgs A{c0, c1, v, m, K, a, p2, pn, pnmax, rel2, idx, ld};
#ifdef PQ_X86
    if (isa >= 2) return enc_cols_avx512(A);
    if (isa == 1) return enc_cols_avx2(A);
#endif
    return enc_cols_base(A);
}

// The hard lookup's sum for columns [m0, m1): out[col, :] = sum over c = 0, 1, ..., C-1 (in that order, from
// 0) of lut[c, idx[c, col], :]; idx [C, ld] int64, lut [C, K, cout], out [M, cout] (L = 0) or [M / L, cout, L]
// (L > 0: a conv's output, NCHW, L pixels per image); the columns m0..m1 written.
// The same additions in the same order as torch's embedding_bag(mode="sum") (flow.compress.pq._lut_sum).
int pq_lut_sum(int isa, int64_t m0, int64_t m1, int64_t C, int64_t K, int64_t cout, const int64_t* idx, int64_t ld,
               const float* lut, float* out, int64_t L) {
#ifdef PQ_X86
    if (isa >= 2) return lut_sum_avx512(m0, m1, C, K, cout, idx, ld, lut, out, L), 0;
    if (isa == 1) return lut_sum_avx2(m0, m1, C, K, cout, idx, ld, lut, out, L), 0;
#endif
    return lut_sum(m0, m1, C, K, cout, idx, ld, lut, out, L), 0;
}

// The dL/dP term, accumulated (see outer_range); K <= 64.
int pq_outer_acc(int isa, int64_t c0, int64_t c1, int64_t v, int64_t K, int64_t m, const float* a, const float* gz,
                 float* gp) {
    if (K > 64 || v > 64) return -1;
#ifdef PQ_X86
    if (isa >= 2) return outer_avx512(c0, c1, v, K, m, a, gz, gp), 0;
    if (isa == 1) return outer_avx2(c0, c1, v, K, m, a, gz, gp), 0;
#endif
    return outer_base(c0, c1, v, K, m, a, gz, gp), 0;
}

// Patches of a conv input, subspace-major (flow.compress.pq._im2col_T): rows p in [p0, p1) of the D = kh*kw*Cin
// patch rows in (kh, kw, cin) order, columns (n - n0, oh, ow) for images [n0, n1): out[p * ldo + col] =
// x[n, cin, oh*sh + i - ph, ow*sw + j - pw], 0 outside the input; x [N, Cin, H, W] contiguous.
int pq_im2col(int64_t n0, int64_t n1, int64_t p0, int64_t p1, int64_t Cin, int64_t H, int64_t W, int64_t kh,
              int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, const float* x, float* out, int64_t ldo) {
    const Geom G{Cin, H, W, kh, kw, sh, sw, ph, pw};
    im2col(G, n0, n1, p0, p1, x, out, ldo);
    return 0;
}

// The adjoint, accumulated: dx[n, cin, ih, iw] += g[p * ldg + col] over the patch rows p of channels
// [ci0, ci1) (every kernel offset, in (kh, kw) order) and images [n0, n1) (columns as in pq_im2col).
// Each dx element gets its terms in kernel-offset order, whatever the split of channels across calls.
int pq_col2im(int64_t n0, int64_t n1, int64_t ci0, int64_t ci1, int64_t Cin, int64_t H, int64_t W, int64_t kh,
              int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, const float* g, int64_t ldg, float* dx) {
    const Geom G{Cin, H, W, kh, kw, sh, sw, ph, pw};
    col2im(G, n0, n1, ci0, ci1, g, ldg, dx, same_keep(G).get());
    return 0;
}

// The STE backward with columns in the lanes (see cols_range); K <= 64, v <= 64.
int pq_soft_grad_cols(int isa, int64_t c0, int64_t c1, int64_t v, int64_t m, int64_t cout, int64_t K, int64_t kp,
                      const float* a,
                      const float* p2, const float* ps, const float* pn, const float* lut, const float* gT,
                      int64_t ldg, float s, float* ga, int64_t ldo, float* gz, float* gzsum) {
    if (K > 64 || v > 64) return -1;
    const ColArgs A{c0, c1, v, m, cout, K, kp, ldg, ldo, a, p2, ps, pn, lut, gT, s, ga, gz, gzsum};
#ifdef PQ_X86
    if (isa >= 2) return cols_avx512(A), 0;
    if (isa == 1) return cols_avx2(A), 0;
#endif
    return cols_base(A), 0;
}

// The hard (straight-through) LUT gradient, accumulated: gl[c, idx[c, col]] += g[col] for c in [c0, c1).
int pq_hard_lut_grad(int isa, int64_t c0, int64_t c1, int64_t m, int64_t cout, int64_t K, const int64_t* idx,
                     int64_t ld, const float* g, float* gl) {
#ifdef PQ_X86
    if (isa >= 2) return hard_avx512(c0, c1, m, cout, K, idx, ld, g, gl), 0;
#endif
    return hard_lut_grad(c0, c1, m, cout, K, idx, ld, g, gl), 0;
}

// Returns 0, or -1 for an unsupported KP (16, 32 and 64 are compiled).
int pq_soft_grad(int isa, int64_t kp, int64_t c0, int64_t c1, int64_t v, int64_t m, int64_t cout, const float* a,
                 const float* pt2, const float* pn, const float* lutT, const float* g, float s, float* gz,
                 float* gzsum, float* glT, int need_gz) {
    const GradArgs A{c0, c1, v, m, cout, a, pt2, pn, lutT, g, s, gz, gzsum, glT, need_gz};
#ifdef PQ_X86
    if (isa >= 2) return grad_avx512(kp, A);
    if (isa == 1) return grad_avx2(kp, A);
#endif
    return grad_base(kp, A);
}

// A conv layer's straight-through passes in one call (no Python per range): images [n0, n1) in ranges of nb
// images; per range its patches into buf [C*v, m] (m = the range's columns, gm = the 9 geometry values of
// pq_im2col, C*v = Cin*kh*kw), then
// * pq_conv_encode: the encoder (pq_encode_cols) into idx [C, ld] (columns of image n from n * L, L = OH*OW);
//   returns the columns re-encoded, or -1 for an unsupported K or v;
// * pq_conv_backward: pq_soft_grad_cols (gT [Cout, ldg]: the layer's whole output gradient, transposed) with
//   dL/da into ga [C*v, m], added into dx by col2im (dx NULL: not wanted); when gp is not NULL also gz
//   [C, K, m] and pq_outer_acc's sum_m a_m gz_m^T into gp [C, v, K]; gzsum [C, K] accumulated; when gl is not
//   NULL also the straight-through LUT gradient (pq_hard_lut_grad, idx [C, ldi] the layer's encoding) of the
//   range's output gradient, transposed back to rows [m, Cout] in `rows`, accumulated into gl [C, K, Cout].
//   Returns 0 or -1.
// A caller may run disjoint image ranges on its own threads, each with its own buf, ga, gz, gzsum, gp, rows and gl.
int64_t pq_conv_encode(int isa, const int64_t* gm, int64_t n0, int64_t n1, int64_t nb, int64_t C, int64_t v,
                       int64_t K, const float* x, float* buf, const float* p2, const float* pn, const float* pnmax,
                       float rel2, int64_t* idx, int64_t ld) {
    const Geom G{gm[0], gm[1], gm[2], gm[3], gm[4], gm[5], gm[6], gm[7], gm[8]};
    const int64_t L = G.OH() * G.OW();
    int64_t amb = 0;
    for (int64_t r0 = n0; r0 < n1; r0 += nb) {
        const int64_t r1 = r0 + nb < n1 ? r0 + nb : n1, m = (r1 - r0) * L;
        im2col(G, r0, r1, 0, C * v, x, buf, m);
        const int64_t a = pq_encode_cols(isa, 0, C, v, m, K, buf, p2, pn, pnmax, rel2, idx + r0 * L, ld);
        if (a < 0) return -1;
        amb += a;
    }
    return amb;
}

int pq_conv_backward(int isa, const int64_t* gm, int64_t n0, int64_t n1, int64_t nb, int64_t C, int64_t v, int64_t K,
                     int64_t kp, int64_t cout, const float* x, float* buf, const float* p2, const float* ps,
                     const float* pn, const float* lut, const float* gT, int64_t ldg, float s, float* ga, float* gz,
                     float* gzsum, float* dx, float* gp, const int64_t* idx, int64_t ldi, float* rows, float* gl) {
    const Geom G{gm[0], gm[1], gm[2], gm[3], gm[4], gm[5], gm[6], gm[7], gm[8]};
    const int64_t L = G.OH() * G.OW();
    const std::unique_ptr<uint32_t[]> keep = same_keep(G);
    for (int64_t r0 = n0; r0 < n1; r0 += nb) {
        const int64_t r1 = r0 + nb < n1 ? r0 + nb : n1, m = (r1 - r0) * L;
        im2col(G, r0, r1, 0, C * v, x, buf, m);
        if (pq_soft_grad_cols(isa, 0, C, v, m, cout, K, kp, buf, p2, ps, pn, lut, gT + r0 * L, ldg, s, ga, m,
                              gp ? gz : nullptr, gzsum))
            return -1;
        if (dx) col2im(G, r0, r1, 0, G.Cin, ga, m, dx, keep.get());
        if (gp && pq_outer_acc(isa, 0, C, v, K, m, buf, gz, gp)) return -1;
        if (gl) {
            const float* gr = gT + r0 * L;
#ifdef PQ_X86
            if (isa >= 2) rows_of_avx512(gr, ldg, m, cout, rows);
            else if (isa == 1) rows_of_avx2(gr, ldg, m, cout, rows);
            else
#endif
                rows_of(gr, ldg, m, cout, rows);
            pq_hard_lut_grad(isa, 0, C, m, cout, K, idx + r0 * L, ldi, rows, gl);
        }
    }
    return 0;
}

}  // extern "C"
