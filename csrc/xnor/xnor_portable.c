/* Portable C path: scalar popcount GEMM, scalar BWN GEMM and sign-packing; the reference
 * that the ISA paths are tested against.  __builtin_popcountll becomes one instruction where
 * the compiler may use it (target_clones picks popcnt on x86 at load time). */
#include <string.h>

#include "xnor_internal.h"

enum { P_MR = 4, P_NP = 8, P_BMR = 4, P_BNP = 8 };

static void store_row(const xnor_tile *t, int32_t r, const int64_t *acc) {
    float *y = t->y + r * t->ldy;
    for (int32_t i = 0; i < t->cols; ++i) {
        int32_t d = t->base - 2 * (int32_t)acc[i];
        if (t->corr) d += t->corr[r * P_NP + i];
        float v = (float)d * t->alpha[r];
        y[i] = t->bias ? v + t->bias[r] : v;
    }
}

#if XNOR_X86
__attribute__((target_clones("popcnt", "default")))
#endif
static void xnor_kernel(const xnor_tile *t) {
    int64_t acc[P_MR][P_NP];
    memset(acc, 0, sizeof acc);
    for (int32_t k = 0; k < t->kunits; ++k) {
        const uint64_t *a = (const uint64_t *)t->a + (int64_t)k * P_NP;
        const uint64_t *b = (const uint64_t *)t->b + (int64_t)k * P_MR;
        for (int r = 0; r < P_MR; ++r)
            for (int i = 0; i < P_NP; ++i) acc[r][i] += __builtin_popcountll(a[i] ^ b[r]);
    }
    for (int32_t r = 0; r < t->rows; ++r) store_row(t, r, acc[r]);
}

static void bwn_kernel(const bwn_tile *t) {
    float acc[P_BMR][P_BNP];
    memset(acc, 0, sizeof acc);
    for (int32_t k = 0; k < t->k; ++k) {
        const float *a = t->a + (int64_t)k * P_BNP;
        const float *b = t->b + (int64_t)k * P_BMR;
        for (int r = 0; r < P_BMR; ++r)
            for (int i = 0; i < P_BNP; ++i) acc[r][i] += a[i] * b[r];
    }
    for (int32_t r = 0; r < t->rows; ++r) {
        float *y = t->y + r * t->ldy;
        for (int32_t i = 0; i < t->cols; ++i) {
            float v = acc[r][i] * t->alpha[r];
            y[i] = t->bias ? v + t->bias[r] : v;
        }
    }
}

void xnor_transpose64(uint64_t *a) {
    uint64_t m = 0x00000000FFFFFFFFull;
    for (int j = 32; j; j >>= 1, m ^= m << j)
        for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
            uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
            a[k] ^= t << j;
            a[k | j] ^= t;
        }
}

static void pack_block(const float *src, int64_t plane, int32_t nch, int32_t npos, int negate,
                       uint64_t *out) {
    memset(out, 0, sizeof(uint64_t) * 64);
    for (int32_t b = 0; b < nch; ++b, src += plane)
        for (int32_t i = 0; i < npos; ++i)
            out[i] |= (uint64_t)(negate ? src[i] <= 0.0f : src[i] >= 0.0f) << b;
}

static const xnor_impl IMPL = {"portable", 64, P_MR, P_NP, xnor_kernel, P_BMR, P_BNP, bwn_kernel,
                               pack_block};

const xnor_impl *xnor_impl_portable(void) { return &IMPL; }
