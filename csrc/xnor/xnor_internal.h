/* Shared between the XnorConv driver and its per-ISA kernels; not part of the public API. */
#ifndef ONNXCOMPRESS_XNOR_INTERNAL_H
#define ONNXCOMPRESS_XNOR_INTERNAL_H

#include <string.h>

#include "xnor.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define XNOR_X86 1
#else
#define XNOR_X86 0
#endif

/* One register tile of the popcount GEMM: rows output channels x cols output positions.
 * K is split into `kunits` units of the path's lane width (64 or 32 bits; a 64-bit channel word
 * is two 32-bit units, low half first).
 * a: activation panel [kunits][np] (zero-filled past cols), b: weight panel [kunits][mr]
 * (zero rows past `rows`).
 * y[r * ldy + i] = (float)(base - 2 * popcount_sum + corr[r * np + i]) * alpha[r] (+ bias[r]). */
typedef struct {
    const void *a;
    const void *b;
    int32_t kunits;
    int32_t rows, cols;
    float *y;
    ptrdiff_t ldy;
    const float *alpha;
    const float *bias;       /* NULL: no bias */
    int32_t base;            /* C * KH * KW */
    const int32_t *corr;     /* NULL: no padding correction in this tile */
} xnor_tile;

/* One tile of the BWN float GEMM: a [k][np] floats, b [k][mr] floats of +-1. */
typedef struct {
    const float *a;
    const float *b;
    int32_t k;
    int32_t rows, cols;
    float *y;
    ptrdiff_t ldy;
    const float *alpha;
    const float *bias;
} bwn_tile;

typedef void (*xnor_kernel_fn)(const xnor_tile *t);
typedef void (*bwn_kernel_fn)(const bwn_tile *t);

/* Sign-pack a block of up to 64 flattened positions x up to 64 channels: src points at
 * channel 0, position 0 of the block, channels `plane` floats apart; out[i] (i < npos) gets bit b
 * = (v >= 0) with v = src[b * plane + i], or -v when `negate`, for b < nch, 0 above (NaN: 0).
 * out[npos..63] are scratch. */
typedef void (*xnor_pack_fn)(const float *src, int64_t plane, int32_t nch, int32_t npos,
                             int negate, uint64_t *out);

/* In place: bit p of a[r] <-> bit r of a[p] (portable; used by the paths without GFNI). */
void xnor_transpose64(uint64_t *a);

typedef struct {
    const char *name;
    int32_t lane_bits;        /* XNOR K unit: 64 or 32 */
    int32_t mr, np;           /* XNOR tile: output channels x positions */
    xnor_kernel_fn kern;
    int32_t bmr, bnp;         /* BWN tile */
    bwn_kernel_fn bkern;
    xnor_pack_fn pack;
} xnor_impl;

/* Each returns NULL when the path is not compiled in (the CPU check is the driver's job). */
const xnor_impl *xnor_impl_portable(void);
const xnor_impl *xnor_impl_avx2(void);
const xnor_impl *xnor_impl_avx512(void);

/* The implementation of `path` when compiled in and supported by the CPU, else NULL. */
const xnor_impl *xnor_impl_for(int path);

/* Run fn(ctx, tid, n) for every tid < n on the persistent pool (xnor_pool.c; the caller is
 * tid 0); shares no worker can take are run by the caller, so this never fails. */
void xnor_parallel(int n, void (*fn)(void *ctx, int tid, int n), void *ctx);

/* Prepared weights (see xnor.h). */
struct xnor_weights {
    int mode;
    const xnor_impl *im;
    int32_t m, c, kh, kw, cw, taps;
    int32_t mr, mblocks, mpad;
    int32_t units;        /* XNOR: K units per tap and plane = ceil(C / lane_bits) (a 64-bit
                             word's high half is skipped when it holds only padding) */
    int32_t planes;       /* sign planes: 1, or 2 in mode SIGN ([x, -x]) */
    int64_t kunits;       /* K units per output channel (XNOR: taps * planes * units;
                             BWN: taps * C) */
    int32_t esz;          /* bytes per K unit */
    void *panel;          /* [mblocks][kunits][mr] */
    int32_t *tapsum;      /* XNOR: S[t][mpad] = 2 * popcount(w bits of tap t) - C (mode SIGN:
                             0, the two planes cancel); BWN: NULL */
    struct xnor_weights *plain;   /* mode SIGN: the same bits laid out for mode XNOR, used when
                                     no input is 0 or NaN (then Sign(x) = sgn(x)): half the work */
};

/* What a weight-preparation worker reads (xnor_binary.c, xnor_bwn.c). */
typedef struct {
    xnor_weights *w;
    const uint64_t *wbits;
} prep_ctx;

/* Fill w->panel (and w->tapsum) from the caller's bits; w's sizes are already set. */
void xnor_prepare_binary(xnor_weights *w, const uint64_t *wbits, int threads);  /* xnor_binary.c */
void xnor_prepare_bwn(xnor_weights *w, const uint64_t *wbits, int threads);     /* xnor_bwn.c */

/* One validated call, shared by the two modes. */
typedef struct {
    const xnor_geom *g;
    const xnor_weights *w;
    const xnor_impl *im;
    const float *x, *alpha, *bias;   /* bias may be NULL */
    float *y;
    int32_t oh, ow, cw, taps;
    int64_t p;                       /* output positions per image */
} xnor_call;

int xnor_run_binary(const xnor_call *k, int threads, xnor_timing *tm);   /* xnor_binary.c */
int xnor_run_bwn(const xnor_call *k, int threads, xnor_timing *tm);      /* xnor_bwn.c */

/* Bits set in v, without the libgcc call __builtin_popcountll becomes on a baseline target. */
static inline int xnor_popcount64(uint64_t v) {
    v = v - ((v >> 1) & 0x5555555555555555ull);
    v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0Full;
    return (int)((v * 0x0101010101010101ull) >> 56);
}

/* Word idx of the caller's weight bits, read without assuming alignment. */
static inline uint64_t xnor_weight_word(const uint64_t *wbits, int64_t idx) {
    uint64_t v;
    memcpy(&v, (const char *)wbits + 8 * idx, sizeof v);
    return v;
}

/* Threads worth using for `work` units (bit-MACs, or float MACs weighted by the caller): a
 * worker's wake-up and the split cost about as much as XNOR_MIN_WORK, so small calls stay on
 * the caller's thread. */
#define XNOR_MIN_WORK 20000000LL
static inline int xnor_useful_threads(int threads, int64_t work) {
    int64_t most = 1 + work / XNOR_MIN_WORK;
    return most < threads ? (int)most : threads;
}

/* [lo, hi) of `total` items for thread tid of n. */
void xnor_split(int64_t total, int tid, int n, int64_t *lo, int64_t *hi);

/* fn1 for every tid, then (after all of them) fn2 for every tid, on the same pool; the
 * caller's clocks when phase 2 starts go to mid_wall / mid_cpu when not NULL. */
void xnor_parallel2(int n, void (*fn1)(void *ctx, int tid, int n),
                    void (*fn2)(void *ctx, int tid, int n), void *ctx, double *mid_wall,
                    double *mid_cpu);

double xnor_now(void);       /* wall clock, seconds */
double xnor_cpu_now(void);   /* calling thread's CPU time, seconds */
void *xnor_alloc(size_t bytes);   /* 64-byte aligned, NULL on failure; free with free() */

#endif
