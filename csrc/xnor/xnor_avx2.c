/* AVX2 path (no vector popcount): nibble-table popcount with vpshufb, byte counters flushed
 * into int64 lanes with vpsadbw every 31 k words (31 * 8 < 256), FMA BWN GEMM, packing with
 * movemask bytes and a scalar bit transpose. */
#include "xnor_internal.h"

#if XNOR_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,popcnt")
#include <immintrin.h>
#include <string.h>

enum { Y_MR = 4, Y_NP = 8, Y_BMR = 4, Y_BNP = 16, FLUSH = 31 };

static inline __m256i popcnt_bytes(__m256i v, __m256i lut, __m256i low4) {
    __m256i lo = _mm256_and_si256(v, low4);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

static void store_row(const xnor_tile *t, int32_t r, __m256i s0, __m256i s1) {
    int64_t cnt[8];
    _mm256_storeu_si256((__m256i *)cnt, s0);
    _mm256_storeu_si256((__m256i *)(cnt + 4), s1);
    float *y = t->y + r * t->ldy;
    for (int32_t i = 0; i < t->cols; ++i) {
        int32_t d = t->base - 2 * (int32_t)cnt[i];
        if (t->corr) d += t->corr[r * Y_NP + i];
        float v = (float)d * t->alpha[r];
        y[i] = t->bias ? v + t->bias[r] : v;
    }
}

static void xnor_kernel(const xnor_tile *t) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    __m256i sum[Y_MR][2];
    for (int r = 0; r < Y_MR; ++r) sum[r][0] = sum[r][1] = zero;
    for (int32_t k0 = 0; k0 < t->kunits; k0 += FLUSH) {
        int32_t k1 = t->kunits - k0 < FLUSH ? t->kunits : k0 + FLUSH;
        __m256i acc[Y_MR][2];
        for (int r = 0; r < Y_MR; ++r) acc[r][0] = acc[r][1] = zero;
        for (int32_t k = k0; k < k1; ++k) {
            const uint64_t *ap = (const uint64_t *)t->a + (int64_t)k * Y_NP;
            const uint64_t *bp = (const uint64_t *)t->b + (int64_t)k * Y_MR;
            __m256i a0 = _mm256_load_si256((const __m256i *)ap);
            __m256i a1 = _mm256_load_si256((const __m256i *)(ap + 4));
#pragma GCC unroll 4
            for (int r = 0; r < Y_MR; ++r) {
                __m256i b = _mm256_set1_epi64x((long long)bp[r]);
                acc[r][0] = _mm256_add_epi8(acc[r][0], popcnt_bytes(_mm256_xor_si256(a0, b), lut, low4));
                acc[r][1] = _mm256_add_epi8(acc[r][1], popcnt_bytes(_mm256_xor_si256(a1, b), lut, low4));
            }
        }
        for (int r = 0; r < Y_MR; ++r)
            for (int q = 0; q < 2; ++q)
                sum[r][q] = _mm256_add_epi64(sum[r][q], _mm256_sad_epu8(acc[r][q], zero));
    }
    for (int32_t r = 0; r < t->rows; ++r) store_row(t, r, sum[r][0], sum[r][1]);
}

static void bwn_kernel(const bwn_tile *t) {
    __m256 acc[Y_BMR][2];
    for (int r = 0; r < Y_BMR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    const float *ap = t->a, *bp = t->b;
    for (int32_t k = 0; k < t->k; ++k, ap += Y_BNP, bp += Y_BMR) {
        __m256 a0 = _mm256_load_ps(ap), a1 = _mm256_load_ps(ap + 8);
#pragma GCC unroll 4
        for (int r = 0; r < Y_BMR; ++r) {   /* a * (+-1) is exact, so FMA equals mul + add */
            __m256 b = _mm256_set1_ps(bp[r]);
            acc[r][0] = _mm256_fmadd_ps(a0, b, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a1, b, acc[r][1]);
        }
    }
    for (int32_t r = 0; r < t->rows; ++r) {
        float out[Y_BNP];
        for (int q = 0; q < 2; ++q) {
            __m256 v = _mm256_mul_ps(acc[r][q], _mm256_set1_ps(t->alpha[r]));
            if (t->bias) v = _mm256_add_ps(v, _mm256_set1_ps(t->bias[r]));
            _mm256_storeu_ps(out + 8 * q, v);
        }
        memcpy(t->y + r * t->ldy, out, sizeof(float) * (size_t)t->cols);
    }
}

/* Byte masks of 8 positions per compare into rows[channel], then the portable bit transpose. */
static void pack_block(const float *src, int64_t plane, int32_t nch, int32_t npos, int negate,
                       uint64_t *out) {
    uint8_t *rows = (uint8_t *)out;
    const __m256 zero = _mm256_setzero_ps();
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    memset(out, 0, sizeof(uint64_t) * 64);
    for (int32_t b = 0; b < nch; ++b, src += plane)
        for (int g = 0; g < 8 && 8 * g < npos; ++g) {
            __m256 v;
            if (npos - 8 * g >= 8) v = _mm256_loadu_ps(src + 8 * g);
            else v = _mm256_maskload_ps(src + 8 * g,
                                        _mm256_cmpgt_epi32(_mm256_set1_epi32(npos - 8 * g), idx));
            int bits = _mm256_movemask_ps(negate ? _mm256_cmp_ps(v, zero, _CMP_LE_OQ)
                                                 : _mm256_cmp_ps(v, zero, _CMP_GE_OQ));
            rows[8 * b + g] = (uint8_t)(bits & ((1 << (npos - 8 * g < 8 ? npos - 8 * g : 8)) - 1));
        }
    xnor_transpose64(out);
}

static const xnor_impl IMPL = {"avx2", 64, Y_MR, Y_NP, xnor_kernel, Y_BMR, Y_BNP, bwn_kernel,
                               pack_block};

const xnor_impl *xnor_impl_avx2(void) { return &IMPL; }

#pragma GCC pop_options
#else
const xnor_impl *xnor_impl_avx2(void) { return 0; }
#endif
