/* BWN mode: float activations, +-1 weights.  Weights are expanded to a float panel
 * [mblocks][taps * C][mr] of +-1, activations gathered into float im2col panels [taps * C][np]
 * (zero outside the image, so padding needs no correction) and the ISA kernel runs a float
 * GEMM.  Untuned: it exists for correctness and the memory saving of 1-bit weights.
 * Prepared weights are floats, 32x the packed bits. */
#include <stdlib.h>
#include <string.h>

#include "xnor_internal.h"

typedef struct {
    const xnor_call *k;
    int32_t mr, np, mblocks;
    int64_t kdim, panels_per_img, panels;
    const float *wpan;    /* prepared: [mblocks][kdim][mr] */
    void **scratch;       /* per thread: panel [kdim][np] */
} bwn_ctx;

static void prepare_blocks(void *arg, int tid, int n) {
    prep_ctx *p = (prep_ctx *)arg;
    xnor_weights *w = p->w;
    int64_t lo, hi;
    xnor_split(w->mblocks, tid, n, &lo, &hi);
    for (int64_t mb = lo; mb < hi; ++mb) {
        float *dst = (float *)w->panel + mb * w->kunits * w->mr;
        for (int32_t r = 0; r < w->mr; ++r) {
            int32_t m = (int32_t)mb * w->mr + r;
            for (int32_t t = 0; t < w->taps; ++t)
                for (int32_t ch = 0; ch < w->c; ++ch) {
                    float v = 0.0f;
                    if (m < w->m) {
                        uint64_t bits = xnor_weight_word(
                            p->wbits, ((int64_t)m * w->taps + t) * w->cw + ch / 64);
                        v = (bits >> (ch % 64)) & 1 ? 1.0f : -1.0f;
                    }
                    dst[((int64_t)t * w->c + ch) * w->mr + r] = v;
                }
        }
    }
}

void xnor_prepare_bwn(xnor_weights *w, const uint64_t *wbits, int threads) {
    prep_ctx p = {w, wbits};
    xnor_parallel(threads, prepare_blocks, &p);
}

static void build_panel(const bwn_ctx *c, int64_t b, int64_t q0, int32_t cols, float *pan) {
    const xnor_geom *g = c->k->g;
    const float *img = c->k->x + b * g->c * g->h * g->w;
    for (int32_t t = 0; t < c->k->taps; ++t) {
        int32_t ty = t / g->kw, tx = t % g->kw;
        for (int32_t ch = 0; ch < g->c; ++ch) {
            float *dst = pan + ((int64_t)t * g->c + ch) * c->np;
            const float *plane = img + (int64_t)ch * g->h * g->w;
            for (int32_t i = 0; i < c->np; ++i) {
                float v = 0.0f;
                if (i < cols) {
                    int64_t q = q0 + i;
                    int64_t iy = (q / c->k->ow) * g->sh - g->pt + (int64_t)ty * g->dh;
                    int64_t ix = (q % c->k->ow) * g->sw - g->pl + (int64_t)tx * g->dw;
                    if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w) v = plane[iy * g->w + ix];
                }
                dst[i] = v;
            }
        }
    }
}

static void gemm_phase(void *arg, int tid, int n) {
    bwn_ctx *c = (bwn_ctx *)arg;
    const xnor_call *k = c->k;
    float *pan = (float *)c->scratch[tid];
    int64_t lo, hi;
    xnor_split(c->panels, tid, n, &lo, &hi);
    bwn_tile t;
    t.a = pan;
    t.k = (int32_t)c->kdim;
    t.ldy = k->p;
    for (int64_t pi = lo; pi < hi; ++pi) {
        int64_t b = pi / c->panels_per_img, q0 = (pi % c->panels_per_img) * c->np;
        int32_t cols = (int32_t)(k->p - q0 < c->np ? k->p - q0 : c->np);
        build_panel(c, b, q0, cols, pan);
        t.cols = cols;
        for (int32_t mb = 0; mb < c->mblocks; ++mb) {
            int32_t m0 = mb * c->mr;
            t.b = c->wpan + (int64_t)mb * c->kdim * c->mr;
            t.rows = k->g->m - m0 < c->mr ? k->g->m - m0 : c->mr;
            t.y = k->y + (b * k->g->m + m0) * k->p + q0;
            t.alpha = k->alpha + m0;
            t.bias = k->bias ? k->bias + m0 : NULL;
            k->im->bkern(&t);
        }
    }
}

int xnor_run_bwn(const xnor_call *k, int threads, xnor_timing *tm) {
    bwn_ctx c;
    memset(&c, 0, sizeof c);
    c.k = k;
    c.mr = k->w->mr;
    c.np = k->im->bnp;
    c.mblocks = k->w->mblocks;
    c.wpan = (const float *)k->w->panel;
    c.kdim = (int64_t)k->taps * k->g->c;
    c.panels_per_img = (k->p + c.np - 1) / c.np;
    c.panels = c.panels_per_img * k->g->n;
    /* a float MAC costs about what 10 bit-MACs do */
    threads = xnor_useful_threads(threads, 10 * k->p * k->g->n * k->g->m * (int64_t)k->g->c * k->taps);
    if (threads > c.panels) threads = (int)c.panels;
    c.scratch = (void **)calloc((size_t)threads, sizeof(void *));
    int rc = c.scratch ? XNOR_OK : XNOR_ENOMEM;
    for (int i = 0; rc == XNOR_OK && i < threads; ++i)
        if (!(c.scratch[i] = xnor_alloc(sizeof(float) * (size_t)c.kdim * c.np))) rc = XNOR_ENOMEM;
    if (rc == XNOR_OK) {
        double t0 = tm ? xnor_now() : 0.0, c0 = tm ? xnor_cpu_now() : 0.0;
        xnor_parallel(threads, gemm_phase, &c);
        if (tm) {
            tm->pack = tm->pack_cpu = 0.0;
            tm->gemm = xnor_now() - t0;
            tm->gemm_cpu = xnor_cpu_now() - c0;
        }
    }
    if (c.scratch)
        for (int i = 0; i < threads; ++i) free(c.scratch[i]);
    free(c.scratch);
    return rc;
}
