/* Random-geometry run of every XnorConv path and mode, meant for a sanitizer build
 * (tests/kernels/test_xnor.py compiles it with -fsanitize=address,undefined):
 *     xnor_fuzz [iterations] [seed]
 * Checks memory safety and return codes only; numerics are checked from Python. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "xnor.h"

static uint64_t state = 88172645463325252ull;

static uint64_t next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static int between(int lo, int hi) { return lo + (int)(next() % (uint64_t)(hi - lo + 1)); }

static xnor_geom random_geom(void) {
    xnor_geom g;
    g.n = between(1, 2);
    g.c = between(1, 140);
    g.h = between(1, 19);
    g.w = between(1, 23);
    g.m = between(1, 20);
    g.kh = between(1, 5);
    g.kw = between(1, 5);
    g.sh = between(1, 3);
    g.sw = between(1, 3);
    g.dh = between(1, 2);
    g.dw = between(1, 2);
    g.pt = between(0, 4);
    g.pl = between(0, 4);
    g.pb = between(0, 4);
    g.pr = between(0, 4);
    return g;
}

/* Every supported path and both modes on one geometry; returns the number of calls or -1. */
static int run_all(const xnor_geom *g, int32_t oh, int32_t ow, int variant) {
    size_t nx = (size_t)g->n * g->c * g->h * g->w, ny = (size_t)g->n * g->m * oh * ow;
    size_t nw = (size_t)g->m * g->kh * g->kw * ((g->c + 63) / 64);
    float *x = malloc(nx * sizeof(float)), *y = malloc(ny * sizeof(float));
    float *alpha = malloc((size_t)g->m * sizeof(float)), *bias = malloc((size_t)g->m * sizeof(float));
    uint64_t *w = malloc(nw * sizeof(uint64_t));
    int calls = 0;
    for (size_t i = 0; i < nx; ++i) x[i] = (float)((int)(next() % 7) - 3);
    for (size_t i = 0; i < nw; ++i) w[i] = next();
    for (int i = 0; i < g->m; ++i) alpha[i] = bias[i] = 0.5f;
    /* buffers one element short of what the geometry needs are refused before any access */
    if (xnor_conv2d(g, 0, x, nx - 1, w, nw, alpha, NULL, y, ny, 1, 0, NULL) != XNOR_EARG ||
        xnor_conv2d(g, 0, x, nx, w, nw - 1, alpha, NULL, y, ny, 1, 0, NULL) != XNOR_EARG ||
        xnor_conv2d(g, 0, x, nx, w, nw, alpha, NULL, y, ny - 1, 1, 0, NULL) != XNOR_EARG) {
        fprintf(stderr, "a short buffer was not refused\n");
        calls = -1;
    }
    for (int path = 0; path < XNOR_PATH_COUNT && calls >= 0; ++path) {
        if (!xnor_path_supported(path)) continue;
        for (int mode = 0; mode < 3; ++mode) {   /* xnor, bwn, sign */
            xnor_timing tm;
            int rc = xnor_conv2d(g, mode, x, nx, w, nw, alpha, (variant & 1) ? bias : NULL, y,
                                 ny, between(1, 3), path, (variant & 2) ? &tm : NULL);
            if (rc != XNOR_OK) {
                fprintf(stderr, "path %d mode %d: status %d\n", path, mode, rc);
                calls = -1;
                break;
            }
            ++calls;
        }
    }
    free(x);
    free(y);
    free(alpha);
    free(bias);
    free(w);
    return calls;
}

int main(int argc, char **argv) {
    int iterations = argc > 1 ? atoi(argv[1]) : 150;
    if (argc > 2) state ^= strtoull(argv[2], NULL, 10) * 0x9E3779B97F4A7C15ull;
    int total = 0;
    for (int it = 0; it < iterations; ++it) {
        xnor_geom g = random_geom();
        int32_t oh, ow;
        if (xnor_out_hw(&g, &oh, &ow) != XNOR_OK) continue;
        int calls = run_all(&g, oh, ow, it);
        if (calls < 0) return 1;
        total += calls;
    }
    printf("ok %d calls\n", total);
    return 0;
}
