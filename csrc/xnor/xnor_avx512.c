/* AVX-512 path: VPOPCNTQ popcount GEMM on 512-bit vectors, FMA BWN GEMM, and sign-packing by
 * compare masks plus a GFNI/VBMI bit transpose.
 *
 * XNOR tile: 8 output channels x 32 positions = 16 zmm accumulators of 16 x int32 (one lane per
 * position, K in 32-bit units): 3 vector uops (vpxord, vpopcntd, vpaddd) per 512 bit-MACs, no
 * horizontal reduction, and a 16-wide epilogue. */
#include "xnor_internal.h"

#if XNOR_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,avx512vbmi,gfni,avx2,fma,popcnt")
#include <immintrin.h>
#include <string.h>

enum { Z_MR = 8, Z_NP = 32, Z_BMR = 6, Z_BNP = 32, PF_AHEAD = 256 };

#define STEP(r)                                                                      \
    do {                                                                             \
        __m512i b = _mm512_set1_epi32((int)bp[r]);                                   \
        c##r##0 = _mm512_add_epi32(c##r##0, _mm512_popcnt_epi32(_mm512_xor_si512(a0, b))); \
        c##r##1 = _mm512_add_epi32(c##r##1, _mm512_popcnt_epi32(_mm512_xor_si512(a1, b))); \
    } while (0)

static inline __mmask16 lane_mask16(int32_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* 16 outputs: D = base - 2 * popcount (+ corr), then float(D) * alpha (+ bias), unfused. */
static inline void store16(const xnor_tile *t, int32_t r, int q, __m512i acc) {
    __m512i d = _mm512_sub_epi32(_mm512_set1_epi32(t->base), _mm512_slli_epi32(acc, 1));
    if (t->corr) d = _mm512_add_epi32(d, _mm512_loadu_si512(t->corr + r * Z_NP + q * 16));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(t->alpha[r]));
    if (t->bias) v = _mm512_add_ps(v, _mm512_set1_ps(t->bias[r]));
    _mm512_mask_storeu_ps(t->y + r * t->ldy + q * 16, lane_mask16(t->cols - 16 * q), v);
}

#define STORE_ROW(r)                                                                 \
    if (r < t->rows) {                                                               \
        store16(t, r, 0, c##r##0);                                                   \
        if (t->cols > 16) store16(t, r, 1, c##r##1);                                 \
    }

/* 8 output channels x 32 positions, 32-bit lanes: 16 zmm accumulators; per 32-bit K unit
 * 2 panel loads, 8 broadcasts and 16 x (vpxord, vpopcntd, vpaddd). */
#define STEP1(r)                                                                     \
    c##r##0 = _mm512_add_epi32(c##r##0, _mm512_popcnt_epi32(_mm512_xor_si512(            \
                                            a0, _mm512_set1_epi32((int)bp[r]))))

/* Same for a panel with at most 16 columns: one vector per row. */
static void xnor_kernel16(const xnor_tile *t) {
    __m512i z = _mm512_setzero_si512();
    __m512i c00 = z, c10 = z, c20 = z, c30 = z, c40 = z, c50 = z, c60 = z, c70 = z;
    const uint32_t *ap = (const uint32_t *)t->a, *bp = (const uint32_t *)t->b;
    for (int32_t k = 0; k < t->kunits; ++k, ap += Z_NP, bp += Z_MR) {
        __m512i a0 = _mm512_load_si512(ap);
        STEP1(0); STEP1(1); STEP1(2); STEP1(3); STEP1(4); STEP1(5); STEP1(6); STEP1(7);
    }
    if (0 < t->rows) store16(t, 0, 0, c00);
    if (1 < t->rows) store16(t, 1, 0, c10);
    if (2 < t->rows) store16(t, 2, 0, c20);
    if (3 < t->rows) store16(t, 3, 0, c30);
    if (4 < t->rows) store16(t, 4, 0, c40);
    if (5 < t->rows) store16(t, 5, 0, c50);
    if (6 < t->rows) store16(t, 6, 0, c60);
    if (7 < t->rows) store16(t, 7, 0, c70);
}

static void xnor_kernel(const xnor_tile *t) {
    if (t->cols <= 16) {
        xnor_kernel16(t);
        return;
    }
    __m512i z = _mm512_setzero_si512();
    __m512i c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
    __m512i c40 = z, c41 = z, c50 = z, c51 = z, c60 = z, c61 = z, c70 = z, c71 = z;
    const uint32_t *ap = (const uint32_t *)t->a, *bp = (const uint32_t *)t->b;
    for (int32_t k = 0; k < t->kunits; ++k, ap += Z_NP, bp += Z_MR) {
        __m512i a0 = _mm512_load_si512(ap), a1 = _mm512_load_si512(ap + 16);
        STEP(0); STEP(1); STEP(2); STEP(3); STEP(4); STEP(5); STEP(6); STEP(7);
    }
    STORE_ROW(0) STORE_ROW(1) STORE_ROW(2) STORE_ROW(3)
    STORE_ROW(4) STORE_ROW(5) STORE_ROW(6) STORE_ROW(7)
}

static void bwn_kernel(const bwn_tile *t) {
    __m512 acc[Z_BMR][2];
    for (int r = 0; r < Z_BMR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const float *ap = t->a, *bp = t->b;
    for (int32_t k = 0; k < t->k; ++k, ap += Z_BNP, bp += Z_BMR) {
        __m512 a0 = _mm512_load_ps(ap), a1 = _mm512_load_ps(ap + 16);
#pragma GCC unroll 6
        for (int r = 0; r < Z_BMR; ++r) {   /* a * (+-1) is exact, so FMA equals mul + add */
            __m512 b = _mm512_set1_ps(bp[r]);
            acc[r][0] = _mm512_fmadd_ps(a0, b, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(a1, b, acc[r][1]);
        }
    }
    for (int32_t r = 0; r < t->rows; ++r)
        for (int q = 0; q < 2; ++q) {
            int32_t n = t->cols - 16 * q;
            if (n <= 0) break;
            __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
            __m512 v = _mm512_mul_ps(acc[r][q], _mm512_set1_ps(t->alpha[r]));
            if (t->bias) v = _mm512_add_ps(v, _mm512_set1_ps(t->bias[r]));
            _mm512_mask_storeu_ps(t->y + r * t->ldy + 16 * q, m, v);
        }
}

/* rows[r] bit p -> out[p] bit r for a 64 x 64 bit block (rows 8R..8R+7 in register R):
 * vpermb groups each 8x8 bit tile into one qword, gf2p8affineqb transposes the tiles,
 * an 8x8 qword transpose across registers and a second vpermb put the bytes in place. */
static void transpose64_gfni(const uint64_t *rows, uint64_t *out) {
    static const uint8_t tile_idx[64] __attribute__((aligned(64))) = {
        56, 48, 40, 32, 24, 16, 8, 0, 57, 49, 41, 33, 25, 17, 9, 1,
        58, 50, 42, 34, 26, 18, 10, 2, 59, 51, 43, 35, 27, 19, 11, 3,
        60, 52, 44, 36, 28, 20, 12, 4, 61, 53, 45, 37, 29, 21, 13, 5,
        62, 54, 46, 38, 30, 22, 14, 6, 63, 55, 47, 39, 31, 23, 15, 7};
    static const uint8_t byte_idx[64] __attribute__((aligned(64))) = {
        0, 8, 16, 24, 32, 40, 48, 56, 1, 9, 17, 25, 33, 41, 49, 57,
        2, 10, 18, 26, 34, 42, 50, 58, 3, 11, 19, 27, 35, 43, 51, 59,
        4, 12, 20, 28, 36, 44, 52, 60, 5, 13, 21, 29, 37, 45, 53, 61,
        6, 14, 22, 30, 38, 46, 54, 62, 7, 15, 23, 31, 39, 47, 55, 63};
    const __m512i pa = _mm512_load_si512(tile_idx), pc = _mm512_load_si512(byte_idx);
    const __m512i unit = _mm512_set1_epi64(0x8040201008040201ll);
    __m512i y[8], t[8], u[8];
    for (int r = 0; r < 8; ++r)
        y[r] = _mm512_gf2p8affine_epi64_epi8(
            unit, _mm512_permutexvar_epi8(pa, _mm512_loadu_si512(rows + 8 * r)), 0);
    for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm512_unpacklo_epi64(y[2 * i], y[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi64(y[2 * i], y[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i)
        for (int k = 0; k < 2; ++k) {
            u[4 * i + k] = _mm512_shuffle_i64x2(t[4 * i + k], t[4 * i + 2 + k], 0x88);
            u[4 * i + 2 + k] = _mm512_shuffle_i64x2(t[4 * i + k], t[4 * i + 2 + k], 0xDD);
        }
    for (int k = 0; k < 4; ++k) {
        _mm512_storeu_si512(out + 8 * k,
                            _mm512_permutexvar_epi8(pc, _mm512_shuffle_i64x2(u[k], u[4 + k], 0x88)));
        _mm512_storeu_si512(out + 8 * (4 + k),
                            _mm512_permutexvar_epi8(pc, _mm512_shuffle_i64x2(u[k], u[4 + k], 0xDD)));
    }
}

/* Lanes (under k) where v >= 0, or -v >= 0 (that is 0 >= v) when negate; NaN gives 0. */
static inline __mmask16 ge_mask(__m512 v, int negate, __mmask16 k) {
    const __m512 zero = _mm512_setzero_ps();
    return negate ? _mm512_mask_cmp_ps_mask(k, zero, v, _CMP_GE_OQ)
                  : _mm512_mask_cmp_ps_mask(k, v, zero, _CMP_GE_OQ);
}

/* One compare per 16 positions into a 16-bit mask, stored as rows[channel], then transpose. */
static void pack_block(const float *src, int64_t plane, int32_t nch, int32_t npos, int negate,
                       uint64_t *out) {
    uint16_t rows[256] __attribute__((aligned(64)));
    __mmask16 lm[4];
    for (int s = 0; s < 4; ++s) {
        int32_t n = npos - 16 * s;
        lm[s] = n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
    }
    int32_t b = 0;
    if (npos == 64)   /* one stream per channel is too many for the prefetchers: help them */
        for (; b < nch; ++b, src += plane)
            for (int s = 0; s < 4; ++s) {
                _mm_prefetch((const char *)(src + PF_AHEAD + 16 * s), _MM_HINT_T0);
                rows[4 * b + s] = ge_mask(_mm512_loadu_ps(src + 16 * s), negate, (__mmask16)0xFFFF);
            }
    else
        for (; b < nch; ++b, src += plane)
            for (int s = 0; s < 4; ++s)
                rows[4 * b + s] = ge_mask(_mm512_maskz_loadu_ps(lm[s], src + 16 * s), negate, lm[s]);
    if (nch < 64) memset(rows + 4 * nch, 0, sizeof(uint16_t) * 4 * (size_t)(64 - nch));
    transpose64_gfni((const uint64_t *)rows, out);
}

static const xnor_impl IMPL = {"avx512", 32, Z_MR, Z_NP, xnor_kernel, Z_BMR, Z_BNP, bwn_kernel,
                               pack_block};

const xnor_impl *xnor_impl_avx512(void) { return &IMPL; }

#pragma GCC pop_options
#else
const xnor_impl *xnor_impl_avx512(void) { return 0; }
#endif
