/* XNOR mode: sign-packing, im2col panels, XOR/popcount GEMM and exact padding correction.
 *
 * The input is sign-packed into act[n][u][Hp][Wp]: one plane per K unit u (a 64-bit channel
 * word, or half of one on 32-bit-lane paths, where a half holding only padding channels is
 * dropped), Hp/Wp including the pads, whose bits are all 0.
 * For each block of np output positions an im2col panel [kunits][np] is copied from act (one
 * contiguous run per output row when the stride is 1) and the ISA kernel runs a register-tiled
 * XOR/popcount GEMM against the weight panel [kunits][mr].
 *
 * Padding: a padded tap holds bits 0, i.e. x = -1, and so adds -S[m][t] to the dot, where
 * S[m][t] = sum_c sgn(w[m,c,t]) = 2 * popcount(wbits[m][t]) - C; the true contribution is 0.
 * A border position whose window has valid taps [y0,y1) x [x0,x1) therefore gets
 * corr[m] = sum of S[m][t] over its padded taps, added to the integer dot before conversion, so
 * the result stays exact.  Windows repeat (9 kinds for a 3x3 kernel with pad 1), so corr is
 * computed once per kind and copied into a small [mr][np] tile per kernel call, border columns
 * only.
 */
#include <stdlib.h>
#include <string.h>

#include "xnor_internal.h"

typedef struct {
    int32_t i0, len;   /* panel columns i0 .. i0+len-1 */
    int64_t src;       /* unit offset in act (plane 0) of the first column's tap (0, 0) */
} run;

typedef struct {
    const xnor_call *k;
    int32_t upw, units, kunits;     /* units per 64-bit word, per position (all planes), per
                                       output */
    int32_t pu;                     /* units per position in one sign plane */
    const float *alpha;             /* the caller's alpha, or alpha / 2 in mode SIGN */
    float *alpha_half;
    int32_t esz;                    /* bytes per unit */
    int32_t mr, np, mblocks, mpad;  /* from the prepared weights */
    int32_t hp, wp;
    int64_t plane;                  /* Hp * Wp */
    int64_t panels_per_img, panels;
    char *act;                      /* [N][units][Hp][Wp] */
    const char *wpan;               /* prepared: [mblocks][kunits][mr] */
    const int32_t *tapsum;          /* prepared: S[t][mpad] */
    int32_t *rowkind, *colkind;     /* window kind per output row / column */
    int32_t nrk, nck, fullrow, fullcol;   /* kind counts; kind of the all-valid window or -1 */
    int32_t *corrkind;              /* [nrk * nck][mpad] */
    void **scratch;                 /* per thread: panel, corr [mpad][np], runs, border list */
} bin_ctx;

/* ---- packing phase ----------------------------------------------------------------------- */

/* ---- weight preparation ------------------------------------------------------------------ */

/* Channel word j of tap t, sign plane `plane`, as K unit(s) of row r in a [kunits][mr] panel. */
static void put_units(const xnor_weights *w, char *panel, int32_t t, int32_t plane, int32_t j,
                      int32_t r, uint64_t v) {
    int64_t k = ((int64_t)t * w->planes + plane) * w->units;
    if (w->esz == 8) {
        ((uint64_t *)panel)[(k + j) * w->mr + r] = v;
    } else {
        ((uint32_t *)panel)[(k + 2 * j) * w->mr + r] = (uint32_t)v;
        if (2 * j + 1 < w->units) ((uint32_t *)panel)[(k + 2 * j + 1) * w->mr + r] = (uint32_t)(v >> 32);
    }
}

static uint64_t tail_mask(int32_t channels, int32_t j) {
    int32_t left = channels - 64 * j;
    return left >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << left) - 1);
}

static void prepare_blocks(void *arg, int tid, int n) {
    prep_ctx *p = (prep_ctx *)arg;
    xnor_weights *w = p->w;
    int64_t lo, hi;
    xnor_split(w->mblocks, tid, n, &lo, &hi);
    for (int64_t mb = lo; mb < hi; ++mb) {
        char *dst = (char *)w->panel + mb * w->kunits * w->mr * w->esz;
        for (int32_t r = 0; r < w->mr; ++r) {
            int32_t m = (int32_t)mb * w->mr + r;
            for (int32_t t = 0; t < w->taps; ++t) {
                int32_t ones = 0;
                for (int32_t j = 0; j < w->cw; ++j) {
                    uint64_t v = 0;
                    if (m < w->m)
                        v = xnor_weight_word(p->wbits, ((int64_t)m * w->taps + t) * w->cw + j) &
                            tail_mask(w->c, j);
                    put_units(w, dst, t, 0, j, r, v);
                    if (w->planes == 2)   /* weights -w for the -x plane */
                        put_units(w, dst, t, 1, j, r, m < w->m ? ~v & tail_mask(w->c, j) : 0);
                    ones += xnor_popcount64(v);
                }
                w->tapsum[(int64_t)t * w->mpad + m] =
                    m < w->m && w->planes == 1 ? 2 * ones - w->c : 0;
            }
        }
    }
}

void xnor_prepare_binary(xnor_weights *w, const uint64_t *wbits, int threads) {
    prep_ctx p = {w, wbits};
    xnor_parallel(threads, prepare_blocks, &p);
}

/* ---- packing phase ----------------------------------------------------------------------- */

/* Sign-pack 64 flattened positions of image b (all channel words) into the act planes. */
static void pack_positions(bin_ctx *c, int64_t b, int64_t q0, int32_t nq) {
    const xnor_geom *g = c->k->g;
    int64_t in_plane = (int64_t)g->h * g->w;
    uint64_t tmp[64] __attribute__((aligned(64)));
    for (int32_t s = 0; s < c->units / c->pu; ++s)   /* sign plane: x, then -x in mode SIGN */
    for (int32_t j = 0; j < c->k->cw; ++j) {
        int32_t nch = g->c - 64 * j < 64 ? g->c - 64 * j : 64;
        c->k->im->pack(c->k->x + (b * g->c + 64 * (int64_t)j) * in_plane + q0, in_plane, nch, nq,
                       s, tmp);
        int64_t h = q0 / g->w, w = q0 % g->w;
        int64_t unit = (int64_t)s * c->pu + (int64_t)j * c->upw;
        int64_t at = ((b * c->units + unit) * c->hp + h + g->pt) * c->wp + g->pl;
        int high = c->upw == 2 && 2 * j + 1 < c->pu;   /* else the high half is padding */
        for (int32_t i = 0; i < nq; ++i) {
            if (c->upw == 1) {
                ((uint64_t *)c->act)[at + w] = tmp[i];
            } else {
                ((uint32_t *)c->act)[at + w] = (uint32_t)tmp[i];
                if (high) ((uint32_t *)c->act)[at + c->plane + w] = (uint32_t)(tmp[i] >> 32);
            }
            if (++w == g->w) {
                w = 0;
                at += c->wp;
            }
        }
    }
}

static void pack_phase(void *arg, int tid, int n) {
    bin_ctx *c = (bin_ctx *)arg;
    const xnor_geom *g = c->k->g;
    int64_t lo, hi;
    int64_t in_plane = (int64_t)g->h * g->w, per_img = (in_plane + 63) / 64;
    xnor_split(g->n * per_img, tid, n, &lo, &hi);
    for (int64_t i = lo; i < hi; ++i) {
        int64_t q0 = (i % per_img) * 64;
        pack_positions(c, i / per_img, q0, (int32_t)(in_plane - q0 < 64 ? in_plane - q0 : 64));
    }
}

/* Zero the pad units of every act plane (the pack phase writes all the others). */
static void zero_pads(bin_ctx *c) {
    const xnor_geom *g = c->k->g;
    size_t row = (size_t)c->wp * c->esz;
    for (int64_t pl = 0; pl < (int64_t)g->n * c->units; ++pl) {
        char *p = c->act + pl * c->plane * c->esz;
        memset(p, 0, row * g->pt);
        memset(p + (size_t)(g->pt + g->h) * row, 0, row * g->pb);
        for (int32_t h = g->pt; h < g->pt + g->h; ++h) {
            memset(p + h * row, 0, (size_t)g->pl * c->esz);
            memset(p + h * row + (size_t)(g->pl + g->w) * c->esz, 0, (size_t)g->pr * c->esz);
        }
    }
}

/* ---- padding correction by window kind --------------------------------------------------- */

/* Valid taps [lo, hi) along one axis for output index o. */
static void valid_taps(int32_t o, int32_t s, int32_t d, int32_t pad, int32_t k, int32_t in,
                       int32_t *lo, int32_t *hi) {
    int64_t start = (int64_t)o * s - pad;
    int32_t a = 0, b = k;
    while (a < k && start + (int64_t)a * d < 0) ++a;
    while (b > a && start + (int64_t)(b - 1) * d >= in) --b;
    *lo = a;
    *hi = b;
}

/* Kind index per output index along one axis; windows[2 * kind] = lo, hi; returns the count. */
static int32_t axis_kinds(int32_t out, int32_t s, int32_t d, int32_t pad, int32_t k, int32_t in,
                          int32_t *kind, int32_t *windows, int32_t *full) {
    int32_t n = 0;
    *full = -1;
    for (int32_t o = 0; o < out; ++o) {
        int32_t lo, hi, f = 0;
        valid_taps(o, s, d, pad, k, in, &lo, &hi);
        while (f < n && (windows[2 * f] != lo || windows[2 * f + 1] != hi)) ++f;
        if (f == n) {
            windows[2 * n] = lo;
            windows[2 * n + 1] = hi;
            if (lo == 0 && hi == k) *full = n;
            ++n;
        }
        kind[o] = f;
    }
    return n;
}

static int build_kinds(bin_ctx *c) {
    const xnor_geom *g = c->k->g;
    int32_t oh = c->k->oh, ow = c->k->ow;
    int32_t *rw = (int32_t *)malloc(sizeof(int32_t) * 2 * ((size_t)g->kh + 1) * (g->kh + 2));
    int32_t *cwin = (int32_t *)malloc(sizeof(int32_t) * 2 * ((size_t)g->kw + 1) * (g->kw + 2));
    c->rowkind = (int32_t *)malloc(sizeof(int32_t) * (size_t)oh);
    c->colkind = (int32_t *)malloc(sizeof(int32_t) * (size_t)ow);
    int rc = XNOR_ENOMEM;
    if (rw && cwin && c->rowkind && c->colkind) {
        c->nrk = axis_kinds(oh, g->sh, g->dh, g->pt, g->kh, g->h, c->rowkind, rw, &c->fullrow);
        c->nck = axis_kinds(ow, g->sw, g->dw, g->pl, g->kw, g->w, c->colkind, cwin, &c->fullcol);
        c->corrkind = (int32_t *)calloc((size_t)c->nrk * c->nck * c->mpad, sizeof(int32_t));
        if (c->corrkind) {
            rc = XNOR_OK;
            for (int32_t a = 0; a < c->nrk; ++a)
                for (int32_t b = 0; b < c->nck; ++b) {
                    int32_t *v = c->corrkind + ((int64_t)a * c->nck + b) * c->mpad;
                    for (int32_t t = 0; t < c->k->taps; ++t) {
                        int32_t ty = t / g->kw, tx = t % g->kw;
                        if (ty >= rw[2 * a] && ty < rw[2 * a + 1] && tx >= cwin[2 * b] &&
                            tx < cwin[2 * b + 1])
                            continue;
                        const int32_t *s = c->tapsum + (int64_t)t * c->mpad;
                        for (int32_t m = 0; m < c->mpad; ++m) v[m] += s[m];
                    }
                }
        }
    }
    free(rw);
    free(cwin);
    return rc;
}

/* The panel's border columns (cols_out) and their window kinds (kinds_out); returns how many. */
static int32_t border_columns(const bin_ctx *c, int64_t q0, int32_t cols, int32_t *cols_out,
                              int32_t *kinds_out) {
    int32_t nb = 0;
    int64_t oy = q0 / c->k->ow, ox = q0 % c->k->ow;   /* one division per panel, not per column */
    for (int32_t i = 0; i < cols; ++i) {
        int32_t a = c->rowkind[oy], b = c->colkind[ox];
        if (a != c->fullrow || b != c->fullcol) {
            cols_out[nb] = i;
            kinds_out[nb++] = a * c->nck + b;
        }
        if (++ox == c->k->ow) {
            ox = 0;
            ++oy;
        }
    }
    return nb;
}

/* corr [mr][np] for output channels m0.. : border columns from their kind, others stay 0. */
static void fill_corr(const bin_ctx *c, int32_t m0, int32_t nb, const int32_t *restrict cols,
                      const int32_t *restrict kinds, int32_t *restrict corr) {
    const int32_t mr = c->mr, np = c->np, mpad = c->mpad;
    const int32_t *restrict table = c->corrkind;
    for (int32_t j = 0; j < nb; ++j) {
        const int32_t *v = table + (int64_t)kinds[j] * mpad + m0;
        int32_t *col = corr + cols[j];
        for (int32_t r = 0; r < mr; ++r) col[r * np] = v[r];
    }
}

/* ---- GEMM phase -------------------------------------------------------------------------- */

/* Columns of one panel grouped into runs along one output row; returns the run count. */
static int32_t panel_runs(const bin_ctx *c, int64_t b, int64_t q0, int32_t cols, run *runs) {
    const xnor_geom *g = c->k->g;
    int32_t nr = 0;
    int64_t oy = q0 / c->k->ow, ox = q0 % c->k->ow;
    for (int32_t i = 0; i < cols;) {
        int32_t len = (int32_t)(c->k->ow - ox);
        if (len > cols - i) len = cols - i;
        runs[nr].i0 = i;
        runs[nr].len = len;
        runs[nr].src = b * c->units * c->plane + oy * g->sh * c->wp + ox * g->sw;
        ++nr;
        i += len;
        ox = 0;
        ++oy;
    }
    return nr;
}

/* panel[(t * units + u) * np + i] = act unit u of column i's tap t; T = uint64_t or uint32_t. */
#define BUILD_PANEL(NAME, T)                                                                 \
    static void NAME(const bin_ctx *c, const run *runs, int32_t nr, int32_t cols, T *pan) {  \
        const xnor_geom *g = c->k->g;                                                        \
        const T *act = (const T *)c->act;                                                    \
        const int32_t sw = g->sw;                                                            \
        for (int32_t t = 0; t < c->k->taps; ++t) {                                           \
            int64_t off = (int64_t)(t / g->kw) * g->dh * c->wp + (int64_t)(t % g->kw) * g->dw; \
            for (int32_t u = 0; u < c->units; ++u) {                                         \
                T *dst = pan + ((int64_t)t * c->units + u) * c->np;                          \
                for (int32_t r = 0; r < nr; ++r) {                                           \
                    const T *restrict src = act + runs[r].src + u * c->plane + off;          \
                    T *restrict d = dst + runs[r].i0;                                        \
                    int32_t len = runs[r].len; /* locals: no aliasing, so it vectorizes */   \
                    if (sw == 1)                                                             \
                        for (int32_t i = 0; i < len; ++i) d[i] = src[i];                     \
                    else                                                                     \
                        for (int32_t i = 0; i < len; ++i) d[i] = src[(int64_t)i * sw];       \
                }                                                                            \
                for (int32_t i = cols; i < c->np; ++i) dst[i] = 0;                           \
            }                                                                                \
        }                                                                                    \
    }
BUILD_PANEL(build_panel64, uint64_t)
BUILD_PANEL(build_panel32, uint32_t)

static void gemm_phase(void *arg, int tid, int n) {
    bin_ctx *c = (bin_ctx *)arg;
    const xnor_call *k = c->k;
    char *pan = (char *)c->scratch[tid];
    int32_t *corr = (int32_t *)(pan + (int64_t)c->kunits * c->np * c->esz);
    int32_t *border = corr + (int64_t)c->mr * c->np, *kinds = border + c->np;
    run *runs = (run *)(kinds + c->np);
    int64_t lo, hi;
    xnor_split(c->panels, tid, n, &lo, &hi);
    xnor_tile t;
    memset(&t, 0, sizeof t);
    t.a = pan;
    t.kunits = c->kunits;
    t.ldy = k->p;
    t.base = k->g->c * k->taps * (c->units / c->pu);
    for (int64_t pi = lo; pi < hi; ++pi) {
        int64_t b = pi / c->panels_per_img, q0 = (pi % c->panels_per_img) * c->np;
        int32_t cols = (int32_t)(k->p - q0 < c->np ? k->p - q0 : c->np);
        int32_t nr = panel_runs(c, b, q0, cols, runs);
        if (c->upw == 1) build_panel64(c, runs, nr, cols, (uint64_t *)pan);
        else build_panel32(c, runs, nr, cols, (uint32_t *)pan);
        int32_t nb = border_columns(c, q0, cols, border, kinds);
        if (nb) memset(corr, 0, sizeof(int32_t) * (size_t)c->mr * c->np);
        t.cols = cols;
        for (int32_t mb = 0; mb < c->mblocks; ++mb) {
            int32_t m0 = mb * c->mr;
            t.b = c->wpan + (int64_t)mb * c->kunits * c->mr * c->esz;
            t.rows = k->g->m - m0 < c->mr ? k->g->m - m0 : c->mr;
            t.y = k->y + (b * k->g->m + m0) * k->p + q0;
            t.alpha = c->alpha + m0;
            t.bias = k->bias ? k->bias + m0 : NULL;
            t.corr = NULL;
            if (nb) {
                fill_corr(c, m0, nb, border, kinds, corr);
                t.corr = corr;
            }
            k->im->kern(&t);
        }
    }
}

/* ---- driver ------------------------------------------------------------------------------ */

static int setup(bin_ctx *c, int threads) {
    const xnor_call *k = c->k;
    const xnor_geom *g = k->g;
    c->act = (char *)xnor_alloc((size_t)g->n * c->units * c->plane * c->esz);
    c->scratch = (void **)calloc((size_t)threads, sizeof(void *));
    if (!c->act || !c->scratch) return XNOR_ENOMEM;
    c->alpha = k->alpha;
    if (k->w->planes == 2) {   /* D comes out doubled: halve alpha (exact, see xnor.h) */
        if (!(c->alpha_half = (float *)malloc(sizeof(float) * (size_t)g->m))) return XNOR_ENOMEM;
        for (int32_t m = 0; m < g->m; ++m) c->alpha_half[m] = k->alpha[m] * 0.5f;
        c->alpha = c->alpha_half;
    }
    size_t per = (size_t)c->kunits * c->np * c->esz + sizeof(int32_t) * ((size_t)c->mr + 2) * c->np +
                 sizeof(run) * ((size_t)c->np + 1);
    for (int i = 0; i < threads; ++i)
        if (!(c->scratch[i] = xnor_alloc(per))) return XNOR_ENOMEM;
    return XNOR_OK;
}

static void teardown(bin_ctx *c, int threads) {
    if (c->scratch)
        for (int i = 0; i < threads; ++i) free(c->scratch[i]);
    free(c->scratch);
    free(c->act);
    free(c->alpha_half);
    free(c->rowkind);
    free(c->colkind);
    free(c->corrkind);
}

int xnor_run_binary(const xnor_call *k, int threads, xnor_timing *tm) {
    const xnor_geom *g = k->g;
    bin_ctx c;
    memset(&c, 0, sizeof c);
    c.k = k;
    c.upw = 64 / k->im->lane_bits;
    c.esz = k->im->lane_bits / 8;
    c.pu = k->w->units;
    c.units = k->w->units * k->w->planes;
    c.kunits = (int32_t)k->w->kunits;
    c.mr = k->w->mr;
    c.np = k->im->np;
    c.mblocks = k->w->mblocks;
    c.mpad = k->w->mpad;
    c.wpan = (const char *)k->w->panel;
    c.tapsum = k->w->tapsum;
    c.hp = g->h + g->pt + g->pb;
    c.wp = g->w + g->pl + g->pr;
    c.plane = (int64_t)c.hp * c.wp;
    c.panels_per_img = (k->p + c.np - 1) / c.np;
    c.panels = c.panels_per_img * g->n;
    threads = xnor_useful_threads(threads, k->p * g->n * g->m * (int64_t)g->c * k->taps);
    if (threads > c.panels) threads = (int)c.panels;
    int rc = setup(&c, threads);
    if (rc == XNOR_OK) rc = build_kinds(&c);   /* needs only the prepared weights */
    if (rc == XNOR_OK) {   /* clocks only when asked: the thread CPU clock is a syscall */
        double t0 = tm ? xnor_now() : 0.0, c0 = tm ? xnor_cpu_now() : 0.0, t1, c1;
        zero_pads(&c);
        xnor_parallel2(threads, pack_phase, gemm_phase, &c, tm ? &t1 : NULL, tm ? &c1 : NULL);
        if (tm) {
            tm->pack = t1 - t0;
            tm->pack_cpu = c1 - c0;
            tm->gemm = xnor_now() - t1;
            tm->gemm_cpu = xnor_cpu_now() - c1;
        }
    }
    teardown(&c, threads);
    return rc;
}
