/* XnorConv: binary 2-D convolution kernels (plain C, no Python, no ONNX Runtime).
 *
 * Math (identical to onnxcompress/ops.py and the numpy reference):
 *   mode XNOR: y[n,m,p] = alpha[m] * D[n,m,p] (+ bias[m])
 *              D = sum over valid taps t and channels c of sgn(x[n,c,tap(p,t)]) * sgn(w[m,c,t])
 *              sgn(v) = +1 if v >= 0 else -1 (so sgn(0) = +1, NaN -> -1); taps that fall into the
 *              zero padding contribute 0.  D is an exact integer; the output is computed as
 *              (float)D * alpha[m] then + bias[m], two float32 roundings, no FMA.
 *   mode BWN:  same with x used as is (float), weights still sgn(w) = +-1.
 *   mode SIGN: as XNOR with ONNX Sign(x) in {-1, 0, +1} for sgn(x) (NaN counts 0), D exact.  Computed
 *              as XNOR over 2C channels [x, -x] with weights [w, -w]: sgn(x) - sgn(-x) = 2 Sign(x),
 *              so D2 = 2 D, and y = (float)D2 * (alpha / 2) is the same float as (float)D * alpha;
 *              a padded tap adds -S(w) - S(-w) = 0, so no border correction is needed.
 *              When no input is 0 or NaN, Sign(x) = sgn(x) and the call runs as mode XNOR
 *              (half the work; the result is the same to the bit).
 *
 * Weight bits: uint64 words wbits[m][t][j], t = kh_i * KW + kw_i, j < CW = ceil(C / 64); bit b of
 * word j is 1 when channel 64*j + b has weight +1, 0 for -1; bits for channels >= C are ignored.
 * Stored little-endian, this is the uint8 layout [M][KH*KW*CW*8] documented in ops.py.
 */
#ifndef ONNXCOMPRESS_XNOR_H
#define ONNXCOMPRESS_XNOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum xnor_path { XNOR_PATH_AUTO = -1, XNOR_PATH_PORTABLE = 0, XNOR_PATH_AVX2 = 1,
                 XNOR_PATH_AVX512 = 2, XNOR_PATH_COUNT = 3 };
enum xnor_mode { XNOR_MODE_XNOR = 0, XNOR_MODE_BWN = 1, XNOR_MODE_SIGN = 2 };
enum xnor_status { XNOR_OK = 0, XNOR_EARG = -1, XNOR_EPATH = -2, XNOR_ENOMEM = -3,
                   XNOR_ETHREAD = -4, XNOR_EMODE = -5 };

/* Shapes of one convolution; pads in ONNX order begin/begin/end/end = top, left, bottom, right. */
typedef struct {
    int32_t n, c, h, w;         /* input NCHW */
    int32_t m;                  /* output channels */
    int32_t kh, kw;             /* kernel_shape */
    int32_t sh, sw;             /* strides */
    int32_t dh, dw;             /* dilations */
    int32_t pt, pl, pb, pr;     /* pads */
} xnor_geom;

/* Optional split of one call in seconds: wall clock, and CPU time of the calling thread (which
 * is all the work when threads == 1, and excludes time the OS ran something else). */
typedef struct {
    double pack, gemm, total;              /* wall: sign-packing of the input, GEMM phase
                                              (im2col panels, popcount GEMM, output transform) */
    double pack_cpu, gemm_cpu, total_cpu;  /* same, calling thread's CPU time */
} xnor_timing;

/* Output height/width; returns XNOR_EARG when the geometry is invalid. */
int xnor_out_hw(const xnor_geom *g, int32_t *oh, int32_t *ow);

/* 1 when `path` is compiled in and supported by this CPU, else 0. */
int xnor_path_supported(int path);

/* The fastest supported path. */
int xnor_best_path(void);

/* Weights laid out for one path and mode (weight panels, per-tap sums); build once per layer.
 * wbits (w_words 64-bit words, at least m * kh * kw * ceil(c / 64)) is read during the call
 * only; a smaller buffer is XNOR_EARG. */
typedef struct xnor_weights xnor_weights;
int xnor_weights_create(int mode, int path, int32_t m, int32_t c, int32_t kh, int32_t kw,
                        const uint64_t *wbits, size_t w_words, int threads, xnor_weights **out);
void xnor_weights_free(xnor_weights *w);
/* Bytes held by a prepared weight object. */
int64_t xnor_weights_bytes(const xnor_weights *w);

/* y[N][M][OH][OW] = XnorConv(x, w, alpha, bias); g->m, g->c, g->kh, g->kw must match w.
 * x_len and y_len are the element counts of the caller's x and y buffers: the call is
 * XNOR_EARG, touching neither, unless x holds N*C*H*W and y N*M*OH*OW floats (so a caller
 * whose idea of the geometry differs from g's cannot make the kernel write past y).
 * alpha and bias hold M floats; bias and timing may be NULL; threads >= 1.  Returns an
 * xnor_status. */
int xnor_conv2d_prepared(const xnor_weights *w, const xnor_geom *g, const float *x,
                         size_t x_len, const float *alpha, const float *bias, float *y,
                         size_t y_len, int threads, xnor_timing *timing);

/* One-shot form: prepares the weights, runs, frees them (timing includes the preparation).
 * path XNOR_PATH_AUTO picks xnor_best_path(). */
int xnor_conv2d(const xnor_geom *g, int mode, const float *x, size_t x_len,
                const uint64_t *wbits, size_t w_words, const float *alpha, const float *bias,
                float *y, size_t y_len, int threads, int path, xnor_timing *timing);

/* Benchmark helpers (xnor_bench.c); rates are per ns of the calling thread's CPU time. */
double xnor_measure_ghz(int64_t cycles);
double xnor_peak_binary(int path, int64_t iters);   /* bit-MACs per ns on one thread */
double xnor_peak_fma(int width_bits, int64_t iters); /* float32 flops per ns, 256 or 512 */
/* The popcount GEMM tiles alone on pre-built random panels (M x P outputs, K = kbits rounded up
 * to the path's lane width); seconds[2 * r] = wall, seconds[2 * r + 1] = calling thread's CPU
 * time of run r. */
int xnor_bench_gemm_core(int path, int32_t m, int32_t kbits, int32_t p, int reps, int threads,
                         double *seconds);

#ifdef __cplusplus
}
#endif
#endif
