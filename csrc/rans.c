/*
 * Static rANS encoder and decoders (see rans.h).
 *
 * Decoding looks the symbol up from the low P bits of the state in a 2^P-entry byte table (one
 * load, then the symbol's frequency and start), so a step is a load, a multiply and an add,
 * plus at most two byte reads: after a step the state is at least 2^(23 - P) >= 2^8, and two
 * bytes bring it back to L = 2^23 or above.
 */
#include "rans.h"

#include "codebook.h"
#include "huffman.h"

#include <stdlib.h>
#include <string.h>

/* A frequency table checked once: each symbol's frequency and where its slots start. Symbols
 * past the alphabet keep frequency 0, so an encoder meeting one refuses it. */
typedef struct {
    uint32_t freq[OCX_RANS_SYMBOLS];
    uint32_t start[OCX_RANS_SYMBOLS];
    uint64_t recip[OCX_RANS_SYMBOLS]; /* encoder: x / f == (x * recip) >> (31 + shift) */
    uint8_t shift[OCX_RANS_SYMBOLS];
    int precision;
} model_t;

/* Division by an invariant integer (Granlund & Montgomery 1994, theorem 4.2): with
 * s = ceil(log2 f) and m = ceil(2^(31 + s) / f), m f - 2^(31 + s) < f <= 2^s, so
 * floor(x m / 2^(31 + s)) == floor(x / f) for every x < 2^31, which the encoder's states are;
 * m <= 2^32 keeps x m below 2^63. A multiply and a shift instead of a 32-bit division. */
static void set_recip(model_t *m, int s) {
    uint32_t f = m->freq[s];
    int sh = 0;
    while ((1u << sh) < f) sh++;
    m->shift[s] = (uint8_t)sh;
    m->recip[s] = (((uint64_t)1 << (31 + sh)) + f - 1) / f;
}

static int model_init(model_t *m, const uint32_t *freqs, int alphabet, int precision) {
    uint64_t sum = 0;
    int s;

    if (precision < OCX_RANS_MIN_PRECISION || precision > OCX_RANS_MAX_PRECISION)
        return OCX_E_FREQS;
    if (alphabet < 1 || alphabet > OCX_RANS_SYMBOLS) return OCX_E_FREQS;
    memset(m, 0, sizeof *m);
    for (s = 0; s < alphabet; s++) {
        /* each at most 2^P first: the running sum then stays far below 2^32 */
        if (freqs[s] > (1u << precision)) return OCX_E_FREQS;
        m->freq[s] = freqs[s];
        m->start[s] = (uint32_t)sum;
        if (freqs[s]) set_recip(m, s);
        sum += freqs[s];
    }
    if (sum != (1u << precision)) return OCX_E_FREQS;
    m->precision = precision;
    return OCX_OK;
}

/* ------------------------------------------------------------------------------ encoding */

/* rANS is last in, first out: the encoder takes the symbols in reverse and fills its buffer from
 * the end backwards, so the decoder reads it forwards. */
typedef struct {
    const model_t *m;
    uint8_t *lo, *p, *hi;
    uint32_t x;
} encoder_t;

static void enc_open(encoder_t *e, const model_t *m, uint8_t *dst, size_t cap) {
    e->m = m;
    e->lo = dst;
    e->hi = e->p = dst + cap;
    e->x = OCX_RANS_LOW;
}

static inline int enc_put(encoder_t *e, unsigned s) {
    const model_t *m = e->m;
    const int prec = m->precision;
    uint32_t f = m->freq[s], x = e->x, x_max, q;

    if (!f) return OCX_E_NOFREQ;
    /* the states from which s lands below 2^8 L are those below ((L >> P) << 8) * f (<= 2^31);
     * shift bytes out until x is one of them, so the state never needs more than 32 bits.
     * x < 2^31 and x_max >= 2^(31 - P) >= 2^16, so at most two bytes go out; with room for
     * two, both are stored and the pointer moves by the count: no branch on the data */
    x_max = ((OCX_RANS_LOW >> prec) << 8) * f;
    if (e->p - e->lo >= 2) {
        unsigned out = (x >= x_max) + ((x >> 8) >= x_max);
        e->p[-1] = (uint8_t)x;
        e->p[-2] = (uint8_t)(x >> 8);
        e->p -= out;
        x >>= 8 * out;
    } else {
        while (x >= x_max) {
            if (e->p == e->lo) return OCX_E_SPACE;
            *--e->p = (uint8_t)x;
            x >>= 8;
        }
    }
    q = (uint32_t)(((uint64_t)x * m->recip[s]) >> (31 + m->shift[s]));
    e->x = (q << prec) + (x - q * f) + m->start[s];
    return OCX_OK;
}

/* Store the final state (little-endian, read first by the decoder) and move the payload to the
 * start of the buffer; returns its length. */
static int64_t enc_close(encoder_t *e) {
    size_t len;
    int i;

    if (e->p - e->lo < 4) return OCX_E_SPACE;
    for (i = 3; i >= 0; i--) *--e->p = (uint8_t)(e->x >> (8 * i));
    len = (size_t)(e->hi - e->p);
    memmove(e->lo, e->p, len);
    return (int64_t)len;
}

int64_t ocx_rans_encode(const uint32_t *freqs, int alphabet, int precision, const uint8_t *sym,
                        size_t n, uint8_t *dst, size_t dst_cap) {
    model_t m;
    encoder_t e;
    size_t i;
    int rc = model_init(&m, freqs, alphabet, precision);

    if (rc) return rc;
    enc_open(&e, &m, dst, dst_cap);
    for (i = n; i-- > 0;)
        if ((rc = enc_put(&e, sym[i]))) return rc;
    return enc_close(&e);
}

int ocx_rans_sparse_encode(const uint32_t *gaps, const uint8_t *vals, size_t entries,
                           int gap_bits, int filler, const uint32_t *gap_freqs, int gap_alphabet,
                           int gap_precision, const uint32_t *val_freqs, int val_alphabet,
                           int val_precision, uint8_t *gap_dst, size_t gap_cap, uint8_t *val_dst,
                           size_t val_cap, uint64_t *lens) {
    model_t gm, vm;
    encoder_t ge, ve;
    unsigned max_gap;
    int64_t glen, vlen;
    size_t j;
    int rc;

    lens[0] = lens[1] = 0;
    if (gap_bits < 1 || gap_bits > 8 || filler < 0 || filler >= OCX_RANS_SYMBOLS)
        return OCX_E_RANGE;
    if (!entries) return OCX_OK;
    if ((rc = model_init(&gm, gap_freqs, gap_alphabet, gap_precision))) return rc;
    if ((rc = model_init(&vm, val_freqs, val_alphabet, val_precision))) return rc;
    enc_open(&ge, &gm, gap_dst, gap_cap);
    enc_open(&ve, &vm, val_dst, val_cap);
    max_gap = (1u << gap_bits) - 1;
    /* forwards, entry j is its fillers then itself; backwards, itself then its fillers */
    for (j = entries; j-- > 0;) {
        uint32_t g = gaps[j], r;
        if ((rc = enc_put(&ge, g & max_gap))) return rc;
        if ((rc = enc_put(&ve, vals[j]))) return rc;
        for (r = g >> gap_bits; r; r--) {
            if ((rc = enc_put(&ge, max_gap))) return rc;
            if ((rc = enc_put(&ve, (unsigned)filler))) return rc;
        }
    }
    if ((glen = enc_close(&ge)) < 0) return (int)glen;
    if ((vlen = enc_close(&ve)) < 0) return (int)vlen;
    lens[0] = (uint64_t)glen;
    lens[1] = (uint64_t)vlen;
    return OCX_OK;
}

/* ------------------------------------------------------------------------------ decoding */

typedef struct {
    model_t m;
    uint8_t *slot_sym; /* 2^P entries: the symbol owning each slot */
    const uint8_t *p, *end;
    uint32_t x, mask;
} decoder_t;

static int dec_open(decoder_t *d, const uint32_t *freqs, int alphabet, int precision,
                    const uint8_t *src, size_t len) {
    int rc = model_init(&d->m, freqs, alphabet, precision), s;

    d->slot_sym = NULL;
    if (rc) return rc;
    if (len < 4) return OCX_E_EXHAUSTED;
    d->x = (uint32_t)src[0] | (uint32_t)src[1] << 8 | (uint32_t)src[2] << 16 |
           (uint32_t)src[3] << 24;
    /* the encoder only ever leaves a state in [L, 2^8 L) */
    if (d->x < OCX_RANS_LOW || d->x >= OCX_RANS_LOW << 8) return OCX_E_STATE;
    d->p = src + 4;
    d->end = src + len;
    d->mask = (1u << precision) - 1;
    d->slot_sym = (uint8_t *)malloc((size_t)1 << precision);
    if (!d->slot_sym) return OCX_E_MEMORY;
    for (s = 0; s < alphabet; s++) memset(d->slot_sym + d->m.start[s], s, d->m.freq[s]);
    return OCX_OK;
}

static void dec_free(decoder_t *d) {
    free(d->slot_sym);
    d->slot_sym = NULL;
}

/* One symbol: the inverse of enc_put, then pull bytes until the state is back to >= L. The
 * state was >= L, so the step leaves it >= 2^(23 - P) >= 2^8: two bytes always suffice, and
 * while two remain they are pulled without a branch on the data (which mispredicts often). */
static inline int dec_get(decoder_t *d, uint8_t *out) {
    uint32_t x = d->x, slot = x & d->mask, pull;
    unsigned s = d->slot_sym[slot];
    const uint8_t *p = d->p;

    x = d->m.freq[s] * (x >> d->m.precision) + slot - d->m.start[s];
    if (d->end - p >= 2) {
        pull = x < OCX_RANS_LOW;
        x = pull ? (x << 8) | p[0] : x;
        p += pull;
        pull = x < OCX_RANS_LOW;
        x = pull ? (x << 8) | p[0] : x;
        p += pull;
    } else {
        while (x < OCX_RANS_LOW) {
            if (p == d->end) return OCX_E_EXHAUSTED;
            x = (x << 8) | *p++;
        }
    }
    d->p = p;
    d->x = x;
    *out = (uint8_t)s;
    return OCX_OK;
}

/* After the last symbol: every byte read, and back at the state the encoder started from. */
static int dec_close(const decoder_t *d) {
    if (d->p != d->end) return OCX_E_TRAILING;
    return d->x == OCX_RANS_LOW ? OCX_OK : OCX_E_STATE;
}

int ocx_rans_decode(const uint32_t *freqs, int alphabet, int precision, const uint8_t *src,
                    size_t src_len, uint8_t *out, size_t n) {
    decoder_t d;
    size_t i;
    int rc = dec_open(&d, freqs, alphabet, precision, src, src_len);

    for (i = 0; !rc && i < n; i++) rc = dec_get(&d, &out[i]);
    if (!rc) rc = dec_close(&d);
    dec_free(&d);
    return rc;
}

#define RANS_SPARSE_BODY(T)                                                       \
    do {                                                                          \
        const T *b = (const T *)book;                                             \
        T *o = (T *)out;                                                          \
        for (j = 0; j < m; j++) {                                                 \
            uint8_t gap, val;                                                     \
            if ((rc = dec_get(&g, &gap)) || (rc = dec_get(&v, &val))) break;      \
            pos += gap;                                                           \
            if (pos >= n || (val != filler && val >= k)) {                        \
                rc = OCX_E_RANGE;                                                 \
                break;                                                            \
            }                                                                     \
            if (val != filler) o[pos] = b[val];                                   \
            pos++;                                                                \
        }                                                                         \
    } while (0)

int ocx_rans_sparse_decode(const uint32_t *gap_freqs, int gap_alphabet, int gap_precision,
                           const uint8_t *gap_src, size_t gap_len, const uint32_t *val_freqs,
                           int val_alphabet, int val_precision, const uint8_t *val_src,
                           size_t val_len, size_t m, int filler, const void *book, int k,
                           int elem_size, void *out, size_t n) {
    decoder_t g, v;
    size_t j, pos = 0;
    int rc;

    if (m == 0) return gap_len || val_len ? OCX_E_TRAILING : OCX_OK;
    if (elem_size != 1 && elem_size != 2 && elem_size != 4 && elem_size != 8) return OCX_E_WIDTH;
    v.slot_sym = NULL;
    rc = dec_open(&g, gap_freqs, gap_alphabet, gap_precision, gap_src, gap_len);
    if (!rc) rc = dec_open(&v, val_freqs, val_alphabet, val_precision, val_src, val_len);
    if (!rc) {
        switch (elem_size) {
        case 1: RANS_SPARSE_BODY(uint8_t); break;
        case 2: RANS_SPARSE_BODY(uint16_t); break;
        case 4: RANS_SPARSE_BODY(uint32_t); break;
        default: RANS_SPARSE_BODY(uint64_t); break;
        }
    }
    if (!rc) rc = dec_close(&g);
    if (!rc) rc = dec_close(&v);
    dec_free(&g);
    dec_free(&v);
    return rc;
}
