/* Measurement helpers for benchmarks/xnor_conv.py: core clock, per-path binary peak, float32
 * FMA peak and the popcount GEMM core alone on pre-built panels.  Nothing here is used by
 * xnor_conv2d. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "xnor_internal.h"

static volatile uint64_t sink_u64;
static volatile float sink_f32;

/* Core clock from a chain of dependent register adds (1 cycle each), per ns of CPU time. */
double xnor_measure_ghz(int64_t cycles) {
    uint64_t x = 0, one = 1;
    int64_t iters = cycles / 32;
    double t0 = xnor_cpu_now();
    for (int64_t i = 0; i < iters; ++i) {
#if XNOR_X86
        __asm__ volatile(".rept 32\n\taddq %1, %0\n\t.endr" : "+r"(x) : "r"(one));
#else
        x += 32 * one;
        __asm__ volatile("" : "+r"(x));
#endif
    }
    double dt = xnor_cpu_now() - t0;
    sink_u64 = x;
    return (double)iters * 32.0 / (dt * 1e9);
}

#if XNOR_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,avx2,fma,popcnt")
#include <immintrin.h>

#define ZCH(i) acc##i = _mm512_add_epi64(acc##i, _mm512_popcnt_epi64(_mm512_xor_si512(x##i, b)))
static double peak_avx512(int64_t iters) {
    __m512i b = _mm512_set1_epi64(0x5555), z = _mm512_setzero_si512();
    __m512i x0 = _mm512_set1_epi64(1), x1 = _mm512_set1_epi64(2), x2 = _mm512_set1_epi64(3);
    __m512i x3 = _mm512_set1_epi64(4), x4 = _mm512_set1_epi64(5), x5 = _mm512_set1_epi64(6);
    __m512i x6 = _mm512_set1_epi64(7), x7 = _mm512_set1_epi64(8), x8 = _mm512_set1_epi64(9);
    __m512i x9 = _mm512_set1_epi64(10), x10 = _mm512_set1_epi64(11), x11 = _mm512_set1_epi64(12);
    __m512i acc0 = z, acc1 = z, acc2 = z, acc3 = z, acc4 = z, acc5 = z, acc6 = z, acc7 = z;
    __m512i acc8 = z, acc9 = z, acc10 = z, acc11 = z;
    double t0 = xnor_cpu_now();
    for (int64_t i = 0; i < iters; ++i) {
        __asm__ volatile("" : "+v"(b));
        ZCH(0); ZCH(1); ZCH(2); ZCH(3); ZCH(4); ZCH(5);
        ZCH(6); ZCH(7); ZCH(8); ZCH(9); ZCH(10); ZCH(11);
    }
    double dt = xnor_cpu_now() - t0;
    __m512i s = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(acc0, acc1), _mm512_add_epi64(acc2, acc3)),
                                 _mm512_add_epi64(_mm512_add_epi64(acc4, acc5), _mm512_add_epi64(acc6, acc7)));
    s = _mm512_add_epi64(s, _mm512_add_epi64(_mm512_add_epi64(acc8, acc9), _mm512_add_epi64(acc10, acc11)));
    sink_u64 = (uint64_t)_mm512_reduce_add_epi64(s);
    return (double)iters * 12 * 512 / (dt * 1e9);
}

static inline __m256i pc8(__m256i v, __m256i lut, __m256i low4) {
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low4)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low4)));
}

#define YCH(i) acc##i = _mm256_add_epi8(acc##i, pc8(_mm256_xor_si256(x##i, b), lut, low4))
static double peak_avx2(int64_t iters) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low4 = _mm256_set1_epi8(0x0f), z = _mm256_setzero_si256();
    __m256i b = _mm256_set1_epi64x(0x5555);
    __m256i x0 = _mm256_set1_epi64x(1), x1 = _mm256_set1_epi64x(2), x2 = _mm256_set1_epi64x(3);
    __m256i x3 = _mm256_set1_epi64x(4), x4 = _mm256_set1_epi64x(5), x5 = _mm256_set1_epi64x(6);
    __m256i acc0 = z, acc1 = z, acc2 = z, acc3 = z, acc4 = z, acc5 = z;
    double t0 = xnor_cpu_now();
    for (int64_t i = 0; i < iters; ++i) {   /* byte counters wrap: only the timing matters */
        __asm__ volatile("" : "+x"(b));
        YCH(0); YCH(1); YCH(2); YCH(3); YCH(4); YCH(5);
    }
    double dt = xnor_cpu_now() - t0;
    __m256i s = _mm256_add_epi8(_mm256_add_epi8(acc0, acc1), _mm256_add_epi8(acc2, acc3));
    s = _mm256_add_epi8(s, _mm256_add_epi8(acc4, acc5));
    sink_u64 = (uint64_t)_mm256_extract_epi64(s, 0);
    return (double)iters * 6 * 256 / (dt * 1e9);
}

static double peak_scalar(int64_t iters) {
    uint64_t b = 0x5555, a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    double t0 = xnor_cpu_now();
    for (int64_t i = 0; i < iters; ++i) {
        __asm__ volatile("" : "+r"(b));
        a0 += (uint64_t)__builtin_popcountll(b ^ 1); a1 += (uint64_t)__builtin_popcountll(b ^ 2);
        a2 += (uint64_t)__builtin_popcountll(b ^ 3); a3 += (uint64_t)__builtin_popcountll(b ^ 4);
        a4 += (uint64_t)__builtin_popcountll(b ^ 5); a5 += (uint64_t)__builtin_popcountll(b ^ 6);
        a6 += (uint64_t)__builtin_popcountll(b ^ 7); a7 += (uint64_t)__builtin_popcountll(b ^ 8);
    }
    double dt = xnor_cpu_now() - t0;
    sink_u64 = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    return (double)iters * 8 * 64 / (dt * 1e9);
}

#define FZ(i) f##i = _mm512_fmadd_ps(f##i, m, a)
static double fma512(int64_t iters) {
    __m512 m = _mm512_set1_ps(0.999f), a = _mm512_set1_ps(1e-3f);
    /* distinct starting values, or the compiler merges identical chains into one */
#define FI(i) __m512 f##i = _mm512_set1_ps(1.0f + 0.01f * i)
    FI(0); FI(1); FI(2); FI(3); FI(4); FI(5); FI(6); FI(7);
    FI(8); FI(9); FI(10); FI(11); FI(12); FI(13); FI(14); FI(15);
#undef FI
    double t0 = xnor_cpu_now();
    for (int64_t i = 0; i < iters; ++i) {
        FZ(0); FZ(1); FZ(2); FZ(3); FZ(4); FZ(5); FZ(6); FZ(7);
        FZ(8); FZ(9); FZ(10); FZ(11); FZ(12); FZ(13); FZ(14); FZ(15);
    }
    double dt = xnor_cpu_now() - t0;
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(f0, f1), _mm512_add_ps(f2, f3)),
                             _mm512_add_ps(_mm512_add_ps(f4, f5), _mm512_add_ps(f6, f7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(f8, f9), _mm512_add_ps(f10, f11)),
                                       _mm512_add_ps(_mm512_add_ps(f12, f13), _mm512_add_ps(f14, f15))));
    sink_f32 = _mm512_reduce_add_ps(s);
    return (double)iters * 16 * 16 * 2 / (dt * 1e9);
}

#define FY(i) f##i = _mm256_fmadd_ps(f##i, m, a)
static double fma256(int64_t iters) {
    __m256 m = _mm256_set1_ps(0.999f), a = _mm256_set1_ps(1e-3f);
#define FI(i) __m256 f##i = _mm256_set1_ps(1.0f + 0.01f * i)
    FI(0); FI(1); FI(2); FI(3); FI(4); FI(5); FI(6); FI(7); FI(8); FI(9); FI(10); FI(11);
#undef FI
    double t0 = xnor_cpu_now();
    for (int64_t i = 0; i < iters; ++i) {
        FY(0); FY(1); FY(2); FY(3); FY(4); FY(5); FY(6); FY(7); FY(8); FY(9); FY(10); FY(11);
    }
    double dt = xnor_cpu_now() - t0;
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(f0, f1), _mm256_add_ps(f2, f3)),
                             _mm256_add_ps(_mm256_add_ps(f4, f5), _mm256_add_ps(f6, f7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(f8, f9), _mm256_add_ps(f10, f11)));
    float o[8];
    _mm256_storeu_ps(o, s);
    sink_f32 = o[0];
    return (double)iters * 12 * 8 * 2 / (dt * 1e9);
}
#pragma GCC pop_options
#endif

double xnor_peak_binary(int path, int64_t iters) {
    if (!xnor_path_supported(path)) return -1.0;
#if XNOR_X86
    if (path == XNOR_PATH_AVX512) return peak_avx512(iters);
    if (path == XNOR_PATH_AVX2) return peak_avx2(iters);
    return peak_scalar(iters);
#else
    (void)iters;
    return -1.0;
#endif
}

double xnor_peak_fma(int width_bits, int64_t iters) {
#if XNOR_X86
    if (width_bits == 512 && xnor_path_supported(XNOR_PATH_AVX512)) return fma512(iters);
    if (width_bits == 256 && xnor_path_supported(XNOR_PATH_AVX2)) return fma256(iters);
#endif
    (void)width_bits;
    (void)iters;
    return -1.0;
}

/* ---- GEMM core alone --------------------------------------------------------------------- */

typedef struct {
    const xnor_impl *im;
    const char *a, *b;      /* panels; K unit = im->lane_bits */
    float *y;
    const float *alpha;
    int32_t m, kunits, p, mblocks;
    int64_t panels;
} core_ctx;

static void core_run(void *arg, int tid, int n) {
    core_ctx *c = (core_ctx *)arg;
    int64_t lo = c->panels * tid / n, hi = c->panels * (tid + 1) / n;
    xnor_tile t;
    memset(&t, 0, sizeof t);
    int64_t esz = c->im->lane_bits / 8;
    t.kunits = c->kunits;
    t.ldy = c->p;
    t.base = c->kunits * c->im->lane_bits;
    for (int64_t pi = lo; pi < hi; ++pi) {
        int64_t q0 = pi * c->im->np;
        t.a = c->a + pi * c->kunits * c->im->np * esz;
        t.cols = (int32_t)(c->p - q0 < c->im->np ? c->p - q0 : c->im->np);
        for (int32_t mb = 0; mb < c->mblocks; ++mb) {
            int32_t m0 = mb * c->im->mr;
            t.b = c->b + (int64_t)mb * c->kunits * c->im->mr * esz;
            t.rows = c->m - m0 < c->im->mr ? c->m - m0 : c->im->mr;
            t.y = c->y + (int64_t)m0 * c->p + q0;
            t.alpha = c->alpha + m0;
            c->im->kern(&t);
        }
    }
}

int xnor_bench_gemm_core(int path, int32_t m, int32_t kbits, int32_t p, int reps, int threads,
                         double *seconds) {
    const xnor_impl *im = xnor_impl_for(path == XNOR_PATH_AUTO ? xnor_best_path() : path);
    if (!im) return XNOR_EPATH;
    if (m < 1 || kbits < 1 || p < 1 || reps < 1 || threads < 1 || !seconds) return XNOR_EARG;
    int32_t kunits = (kbits + im->lane_bits - 1) / im->lane_bits;
    core_ctx c = {im, NULL, NULL, NULL, NULL, m, kunits, p, (m + im->mr - 1) / im->mr,
                  ((int64_t)p + im->np - 1) / im->np};
    /* sizes in 64-bit words, rounded up */
    int32_t kwords = (kunits * im->lane_bits + 63) / 64;
    size_t na = (size_t)c.panels * kwords * im->np, nb = (size_t)c.mblocks * kwords * im->mr;
    uint64_t *a = (uint64_t *)xnor_alloc(na * 8), *b = (uint64_t *)xnor_alloc(nb * 8);
    float *y = (float *)xnor_alloc((size_t)m * p * sizeof(float));
    float *alpha = (float *)xnor_alloc((size_t)c.mblocks * im->mr * sizeof(float));
    int rc = (a && b && y && alpha) ? XNOR_OK : XNOR_ENOMEM;
    if (rc == XNOR_OK) {
        uint64_t s = 0x9E3779B97F4A7C15ull;
        for (size_t i = 0; i < na; ++i) a[i] = (s = s * 6364136223846793005ull + 1442695040888963407ull);
        for (size_t i = 0; i < nb; ++i) b[i] = (s = s * 6364136223846793005ull + 1442695040888963407ull);
        for (int32_t i = 0; i < c.mblocks * im->mr; ++i) alpha[i] = 1.0f;
        c.a = (const char *)a;
        c.b = (const char *)b;
        c.y = y;
        c.alpha = alpha;
        if (threads > c.panels) threads = (int)c.panels;
        for (int r = 0; r < reps; ++r) {
            double t0 = xnor_now(), c0 = xnor_cpu_now();
            xnor_parallel(threads, core_run, &c);
            seconds[2 * r] = xnor_now() - t0;
            seconds[2 * r + 1] = xnor_cpu_now() - c0;
        }
    }
    free(a);
    free(b);
    free(y);
    free(alpha);
    return rc;
}
