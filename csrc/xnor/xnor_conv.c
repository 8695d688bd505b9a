/* XnorConv entry point: geometry checks, CPU dispatch, threads and timing helpers.
 * The modes live in xnor_binary.c (XNOR: bit-packed popcount GEMM) and xnor_bwn.c (BWN). */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "xnor_internal.h"

double xnor_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double xnor_cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void *xnor_alloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    return p;
}

void xnor_split(int64_t total, int tid, int n, int64_t *lo, int64_t *hi) {
    *lo = total * tid / n;
    *hi = total * (tid + 1) / n;
}

/* ---- CPU dispatch ---------------------------------------------------------------------- */

static int cpu_has(int path) {
#if XNOR_X86
    __builtin_cpu_init();
    if (path == XNOR_PATH_AVX512)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vpopcntdq") &&
               __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("gfni");
    if (path == XNOR_PATH_AVX2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return path == XNOR_PATH_PORTABLE;
}

const xnor_impl *xnor_impl_for(int path) {
    const xnor_impl *im = NULL;
    if (path == XNOR_PATH_PORTABLE) im = xnor_impl_portable();
    else if (path == XNOR_PATH_AVX2) im = xnor_impl_avx2();
    else if (path == XNOR_PATH_AVX512) im = xnor_impl_avx512();
    return (im && cpu_has(path)) ? im : NULL;
}

int xnor_path_supported(int path) { return xnor_impl_for(path) != NULL; }

int xnor_best_path(void) {
    for (int p = XNOR_PATH_COUNT - 1; p > XNOR_PATH_PORTABLE; --p)
        if (xnor_path_supported(p)) return p;
    return XNOR_PATH_PORTABLE;
}

/* ---- geometry ---------------------------------------------------------------------------- */

static int32_t out_dim(int32_t in, int32_t k, int32_t s, int32_t d, int32_t p0, int32_t p1) {
    int64_t span = (int64_t)d * (k - 1) + 1;
    int64_t room = (int64_t)in + p0 + p1 - span;
    if (room < 0) return -1;
    return (int32_t)(room / s + 1);
}

int xnor_out_hw(const xnor_geom *g, int32_t *oh, int32_t *ow) {
    if (!g || g->n < 1 || g->c < 1 || g->h < 1 || g->w < 1 || g->m < 1 || g->kh < 1 ||
        g->kw < 1 || g->sh < 1 || g->sw < 1 || g->dh < 1 || g->dw < 1 || g->pt < 0 ||
        g->pl < 0 || g->pb < 0 || g->pr < 0)
        return XNOR_EARG;
    if ((int64_t)g->h + g->pt + g->pb > INT32_MAX / 4 ||
        (int64_t)g->w + g->pl + g->pr > INT32_MAX / 4 || (int64_t)g->m > INT32_MAX / 64)
        return XNOR_EARG;
    int32_t a = out_dim(g->h, g->kh, g->sh, g->dh, g->pt, g->pb);
    int32_t b = out_dim(g->w, g->kw, g->sw, g->dw, g->pl, g->pr);
    if (a < 1 || b < 1 || (int64_t)a * b > INT32_MAX) return XNOR_EARG;
    if ((int64_t)g->c * g->kh * g->kw > (1 << 24)) return XNOR_EARG; /* D exact in float32 */
    *oh = a;
    *ow = b;
    return XNOR_OK;
}

/* 1 when a * b * c * d (each >= 0) is at most cap, computed without overflow. */
static int product_within(size_t cap, int64_t a, int64_t b, int64_t c, int64_t d) {
    const int64_t f[4] = {a, b, c, d};
    size_t acc = 1;
    for (int i = 0; i < 4; ++i) {
        if (f[i] < 0) return 0;
        if (f[i] != 0 && acc > cap / (size_t)f[i]) return 0;
        acc *= (size_t)f[i];
    }
    return 1;
}

/* ---- prepared weights -------------------------------------------------------------------- */

int xnor_weights_create(int mode, int path, int32_t m, int32_t c, int32_t kh, int32_t kw,
                        const uint64_t *wbits, size_t w_words, int threads, xnor_weights **out) {
    if (!out || !wbits || m < 1 || c < 1 || kh < 1 || kw < 1 || threads < 1 ||
        (int64_t)c * kh * kw > (1 << 24) || m > INT32_MAX / 64 ||
        !product_within(w_words, m, kh, kw, (c + 63) / 64))
        return XNOR_EARG;
    if (mode != XNOR_MODE_XNOR && mode != XNOR_MODE_BWN && mode != XNOR_MODE_SIGN)
        return XNOR_EMODE;
    const xnor_impl *im = xnor_impl_for(path == XNOR_PATH_AUTO ? xnor_best_path() : path);
    if (!im) return XNOR_EPATH;
    xnor_weights *w = (xnor_weights *)calloc(1, sizeof *w);
    if (!w) return XNOR_ENOMEM;
    w->mode = mode;
    w->im = im;
    w->m = m;
    w->c = c;
    w->kh = kh;
    w->kw = kw;
    w->cw = (c + 63) / 64;
    w->taps = kh * kw;
    int binary = mode != XNOR_MODE_BWN;
    w->mr = binary ? im->mr : im->bmr;
    w->mblocks = (m + w->mr - 1) / w->mr;
    w->mpad = w->mblocks * w->mr;
    w->units = (c + im->lane_bits - 1) / im->lane_bits;
    w->planes = mode == XNOR_MODE_SIGN ? 2 : 1;
    w->kunits = binary ? (int64_t)w->taps * w->planes * w->units : (int64_t)w->taps * c;
    w->esz = binary ? im->lane_bits / 8 : (int32_t)sizeof(float);
    w->panel = xnor_alloc((size_t)w->mpad * w->kunits * w->esz);
    if (binary) w->tapsum = (int32_t *)xnor_alloc(sizeof(int32_t) * (size_t)w->mpad * w->taps);
    if (!w->panel || (binary && !w->tapsum)) {
        xnor_weights_free(w);
        return XNOR_ENOMEM;
    }
    if (threads > w->mblocks) threads = w->mblocks;
    if (threads > 64) threads = 64;
    if (binary) xnor_prepare_binary(w, wbits, threads);
    else xnor_prepare_bwn(w, wbits, threads);
    if (mode == XNOR_MODE_SIGN) {
        int rc = xnor_weights_create(XNOR_MODE_XNOR, path, m, c, kh, kw, wbits, w_words, threads,
                                     &w->plain);
        if (rc != XNOR_OK) {
            xnor_weights_free(w);
            return rc;
        }
    }
    *out = w;
    return XNOR_OK;
}

void xnor_weights_free(xnor_weights *w) {
    if (!w) return;
    xnor_weights_free(w->plain);
    free(w->panel);
    free(w->tapsum);
    free(w);
}

int64_t xnor_weights_bytes(const xnor_weights *w) {
    if (!w) return 0;
    return (int64_t)w->mpad * w->kunits * w->esz + (w->tapsum ? 4 * (int64_t)w->mpad * w->taps : 0) +
           xnor_weights_bytes(w->plain);
}

/* 1 when some x[i] is 0 (either sign) or NaN: where ONNX Sign and sgn differ. */
static int has_zero_or_nan(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += 4096) {
        int64_t end = n - i < 4096 ? n : i + 4096;
        int z = 0;
        for (int64_t j = i; j < end; ++j) z |= !(x[j] > 0.0f) & !(x[j] < 0.0f);   /* vectorizes */
        if (z) return 1;
    }
    return 0;
}

/* ---- entry points ------------------------------------------------------------------------ */

int xnor_conv2d_prepared(const xnor_weights *w, const xnor_geom *g, const float *x,
                         size_t x_len, const float *alpha, const float *bias, float *y,
                         size_t y_len, int threads, xnor_timing *timing) {
    double start = timing ? xnor_now() : 0.0, start_cpu = timing ? xnor_cpu_now() : 0.0;
    xnor_call k;
    memset(&k, 0, sizeof k);
    if (!w || xnor_out_hw(g, &k.oh, &k.ow) != XNOR_OK || !x || !alpha || !y || threads < 1 ||
        g->m != w->m || g->c != w->c || g->kh != w->kh || g->kw != w->kw)
        return XNOR_EARG;
    /* the buffers must be as large as this geometry says: the last guard against a caller that
       sized them from other numbers */
    if (!product_within(x_len, g->n, g->c, g->h, g->w) ||
        !product_within(y_len, g->n, g->m, k.oh, k.ow))
        return XNOR_EARG;
    k.g = g;
    k.w = w;
    k.im = w->im;
    k.x = x;
    k.alpha = alpha;
    k.bias = bias;
    k.y = y;
    k.cw = w->cw;
    k.taps = w->taps;
    k.p = (int64_t)k.oh * k.ow;
    if (threads > 64) threads = 64;
    if (w->plain && !has_zero_or_nan(x, (int64_t)g->n * g->c * g->h * g->w)) {
        k.w = w = w->plain;   /* Sign(x) = sgn(x) everywhere: mode XNOR gives the same bits */
        k.im = w->im;
    }
    int rc = w->mode != XNOR_MODE_BWN ? xnor_run_binary(&k, threads, timing)
                                      : xnor_run_bwn(&k, threads, timing);
    if (timing) {
        timing->total = xnor_now() - start;
        timing->total_cpu = xnor_cpu_now() - start_cpu;
    }
    return rc;
}

int xnor_conv2d(const xnor_geom *g, int mode, const float *x, size_t x_len,
                const uint64_t *wbits, size_t w_words, const float *alpha, const float *bias,
                float *y, size_t y_len, int threads, int path, xnor_timing *timing) {
    double start = timing ? xnor_now() : 0.0, start_cpu = timing ? xnor_cpu_now() : 0.0;
    int32_t oh, ow;
    if (xnor_out_hw(g, &oh, &ow) != XNOR_OK) return XNOR_EARG;
    xnor_weights *w = NULL;
    int rc = xnor_weights_create(mode, path, g->m, g->c, g->kh, g->kw, wbits, w_words, threads,
                                 &w);
    if (rc == XNOR_OK)
        rc = xnor_conv2d_prepared(w, g, x, x_len, alpha, bias, y, y_len, threads, timing);
    xnor_weights_free(w);
    if (timing) {
        timing->total = xnor_now() - start;
        timing->total_cpu = xnor_cpu_now() - start_cpu;
    }
    return rc;
}
