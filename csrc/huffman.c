/*
 * Table-driven canonical Huffman decoder and a matching encoder (see huffman.h).
 *
 * Decoding peeks PRIMARY_BITS bits of a 64-bit MSB-aligned bit buffer and looks them up in a
 * 2^PRIMARY_BITS table that maps every code of at most PRIMARY_BITS bits straight to
 * (symbol, length). Longer codes (12..15 bits) miss the table and take a short canonical walk:
 * the codes of one length are consecutive integers starting at first[len]. The bit buffer is
 * refilled 8 bytes at a time, which leaves >= 56 valid bits, enough for three 15-bit codes.
 */
#include "huffman.h"

#include "codebook.h"

#include <string.h>

#define PRIMARY_BITS 11

typedef struct {
    uint16_t primary[1u << PRIMARY_BITS]; /* (symbol << 4) | length; 0 = long code or no code */
    uint32_t first[OCX_HUFF_MAX_BITS + 1];  /* first canonical code of each length */
    uint32_t count[OCX_HUFF_MAX_BITS + 1];  /* number of codes of each length */
    uint32_t offset[OCX_HUFF_MAX_BITS + 2]; /* index in sorted[] of each length's first symbol */
    uint8_t sorted[OCX_HUFF_MAX_SYMBOLS];   /* used symbols ordered by (length, symbol) */
    int n_used;
    int max_len;
    int only_symbol; /* the symbol of a one-symbol code, else -1 */
} table_t;

static int build_table(const uint8_t *lengths, int alphabet, table_t *t) {
    uint32_t kraft = 0, code = 0;
    uint32_t next[OCX_HUFF_MAX_BITS + 2];
    int s, l;

    if (alphabet < 1 || alphabet > OCX_HUFF_MAX_SYMBOLS) return OCX_E_LENGTHS;
    memset(t, 0, sizeof *t);
    t->only_symbol = -1;
    for (s = 0; s < alphabet; s++) {
        l = lengths[s];
        if (l > OCX_HUFF_MAX_BITS) return OCX_E_LENGTHS;
        if (l) {
            t->count[l]++;
            t->n_used++;
            t->only_symbol = s;
            if (l > t->max_len) t->max_len = l;
        }
    }
    if (t->n_used == 0) return OCX_E_LENGTHS;
    if (t->n_used > 1) t->only_symbol = -1;
    for (l = 1; l <= OCX_HUFF_MAX_BITS; l++) kraft += t->count[l] << (OCX_HUFF_MAX_BITS - l);
    if (kraft > (1u << OCX_HUFF_MAX_BITS)) return OCX_E_LENGTHS;

    t->offset[1] = 0;
    for (l = 1; l <= OCX_HUFF_MAX_BITS; l++) t->offset[l + 1] = t->offset[l] + t->count[l];
    memcpy(next, t->offset, sizeof next);
    for (s = 0; s < alphabet; s++)
        if (lengths[s]) t->sorted[next[lengths[s]]++] = (uint8_t)s;

    for (l = 1; l <= OCX_HUFF_MAX_BITS; l++) {
        t->first[l] = code;
        code = (code + t->count[l]) << 1;
    }
    for (l = 1; l <= PRIMARY_BITS && l <= OCX_HUFF_MAX_BITS; l++) {
        uint32_t j, span = 1u << (PRIMARY_BITS - l);
        for (j = 0; j < t->count[l]; j++) {
            uint32_t base = (t->first[l] + j) << (PRIMARY_BITS - l), k;
            uint16_t entry = (uint16_t)((t->sorted[t->offset[l] + j] << 4) | l);
            for (k = 0; k < span; k++) t->primary[base + k] = entry;
        }
    }
    return OCX_OK;
}

int ocx_huff_codes(const uint8_t *lengths, int alphabet, uint16_t *codes) {
    table_t t;
    int rc = build_table(lengths, alphabet, &t), l;
    uint32_t j;
    if (rc) return rc;
    memset(codes, 0, sizeof(uint16_t) * (size_t)alphabet);
    for (l = 1; l <= OCX_HUFF_MAX_BITS; l++)
        for (j = 0; j < t.count[l]; j++) codes[t.sorted[t.offset[l] + j]] = (uint16_t)(t.first[l] + j);
    return OCX_OK;
}

static inline uint64_t load_be64(const uint8_t *p) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
#else
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
           ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | (uint64_t)p[7];
#endif
}

/* Resolve a code that missed the primary table; returns the symbol or -1. */
static inline int decode_long(const table_t *t, uint64_t buf, int *len_out) {
    uint32_t c15 = (uint32_t)(buf >> (64 - OCX_HUFF_MAX_BITS));
    int l;
    for (l = PRIMARY_BITS + 1; l <= t->max_len; l++) {
        uint32_t d = (c15 >> (OCX_HUFF_MAX_BITS - l)) - t->first[l];
        if (d < t->count[l]) {
            *len_out = l;
            return t->sorted[t->offset[l] + d];
        }
    }
    return -1;
}

/* A stream being decoded: its code table and a 64-bit MSB-aligned bit buffer. Past the end of
 * src the buffer is fed zero bytes (counted in virt), so a refill never reads outside src; the
 * refill that finds more bits consumed than src holds reports OCX_E_EXHAUSTED. */
typedef struct {
    table_t t;
    const uint8_t *src, *p, *end;
    size_t len, virt;
    uint64_t buf;
    int cnt; /* valid bits in buf */
} reader_t;

static int reader_open(reader_t *r, const uint8_t *lengths, int alphabet, const uint8_t *src,
                       size_t len) {
    int rc = build_table(lengths, alphabet, &r->t);
    if (rc) return rc;
    if (r->t.only_symbol >= 0 && len) return OCX_E_TRAILING; /* a one-symbol code stores no bits */
    r->src = r->p = src;
    r->end = src + len;
    r->len = len;
    r->virt = 0;
    r->buf = 0;
    r->cnt = 0;
    return OCX_OK;
}

static inline uint64_t reader_consumed(const reader_t *r) {
    return (uint64_t)(r->p - r->src + r->virt) * 8 - (uint64_t)r->cnt;
}

/* Leave at least 56 valid bits in the buffer (enough for three 15-bit codes). */
static inline int reader_refill(reader_t *r) {
    if (r->end - r->p >= 8) {
        r->buf |= load_be64(r->p) >> r->cnt;
        r->p += (63 - r->cnt) >> 3;
        r->cnt |= 56;
        return OCX_OK;
    }
    if (reader_consumed(r) > (uint64_t)r->len * 8) return OCX_E_EXHAUSTED;
    while (r->cnt <= 56) {
        uint64_t b = 0;
        if (r->p < r->end) b = *r->p++;
        else r->virt++;
        r->buf |= b << (56 - r->cnt);
        r->cnt += 8;
    }
    return OCX_OK;
}

/* Decode one symbol; the buffer must hold at least 15 valid bits. */
static inline int reader_next(reader_t *r, uint8_t *sym) {
    uint32_t e = r->t.primary[r->buf >> (64 - PRIMARY_BITS)];
    int len;
    if (e) {
        *sym = (uint8_t)(e >> 4);
        len = (int)(e & 15u);
    } else {
        int s = decode_long(&r->t, r->buf, &len);
        if (s < 0) return OCX_E_BADCODE;
        *sym = (uint8_t)s;
    }
    r->buf <<= len;
    r->cnt -= len;
    return OCX_OK;
}

/* One symbol at a time, refilling when needed (for interleaved streams). */
static inline int reader_symbol(reader_t *r, uint8_t *sym) {
    if (r->t.only_symbol >= 0) {
        *sym = (uint8_t)r->t.only_symbol;
        return OCX_OK;
    }
    if (r->cnt < OCX_HUFF_MAX_BITS) {
        int rc = reader_refill(r);
        if (rc) return rc;
    }
    return reader_next(r, sym);
}

/* After the last symbol: the stream must end within its last byte. */
static int reader_close(const reader_t *r) {
    uint64_t consumed;
    if (r->t.only_symbol >= 0) return OCX_OK;
    consumed = reader_consumed(r);
    if (consumed > (uint64_t)r->len * 8) return OCX_E_EXHAUSTED;
    if ((consumed + 7) / 8 != (uint64_t)r->len) return OCX_E_TRAILING;
    return OCX_OK;
}

int ocx_huff_decode(const uint8_t *lengths, int alphabet, const uint8_t *src, size_t src_len,
                    uint8_t *out, size_t n_out) {
    reader_t r;
    size_t i = 0, j, k;
    int rc = reader_open(&r, lengths, alphabet, src, src_len);

    if (rc) return rc;
    if (r.t.only_symbol >= 0) {
        memset(out, r.t.only_symbol, n_out);
        return OCX_OK;
    }
    while (i < n_out) {
        if ((rc = reader_refill(&r))) return rc;
        k = n_out - i < 3 ? n_out - i : 3; /* 56 bits hold three codes */
        for (j = 0; j < k; j++)
            if ((rc = reader_next(&r, &out[i + j]))) return rc;
        i += k;
    }
    return reader_close(&r);
}

#define SPARSE_BODY(T)                                                   \
    do {                                                                 \
        const T *b = (const T *)book;                                    \
        T *o = (T *)out;                                                 \
        for (j = 0; j < m; j++) {                                        \
            uint8_t gap, val;                                            \
            if ((rc = reader_symbol(&g, &gap))) return rc;               \
            if ((rc = reader_symbol(&v, &val))) return rc;               \
            pos += gap;                                                  \
            if (pos >= n) return OCX_E_RANGE;                            \
            if (val != filler) {                                         \
                if (val >= k) return OCX_E_RANGE;                        \
                o[pos] = b[val];                                         \
            }                                                            \
            pos++;                                                       \
        }                                                                \
    } while (0)

int ocx_sparse_decode(const uint8_t *gap_lengths, int gap_alphabet, const uint8_t *gap_src,
                      size_t gap_len, const uint8_t *val_lengths, int val_alphabet,
                      const uint8_t *val_src, size_t val_len, size_t m, int filler,
                      const void *book, int k, int elem_size, void *out, size_t n) {
    reader_t g, v;
    size_t j, pos = 0;
    int rc;

    if (m == 0) return gap_len || val_len ? OCX_E_TRAILING : OCX_OK;
    if ((rc = reader_open(&g, gap_lengths, gap_alphabet, gap_src, gap_len))) return rc;
    if ((rc = reader_open(&v, val_lengths, val_alphabet, val_src, val_len))) return rc;
    switch (elem_size) {
    case 1: SPARSE_BODY(uint8_t); break;
    case 2: SPARSE_BODY(uint16_t); break;
    case 4: SPARSE_BODY(uint32_t); break;
    case 8: SPARSE_BODY(uint64_t); break;
    default: return OCX_E_WIDTH;
    }
    if ((rc = reader_close(&g))) return rc;
    return reader_close(&v);
}

int64_t ocx_huff_encode(const uint8_t *lengths, int alphabet, const uint8_t *sym, size_t n,
                        uint8_t *dst, size_t dst_cap) {
    uint16_t codes[OCX_HUFF_MAX_SYMBOLS];
    uint8_t lens[OCX_HUFF_MAX_SYMBOLS];
    uint64_t acc = 0;
    size_t i, o = 0;
    int nacc = 0, used = 0, s, rc = ocx_huff_codes(lengths, alphabet, codes);

    if (rc) return rc;
    memset(lens, 0, sizeof lens);
    memcpy(lens, lengths, (size_t)alphabet);
    for (s = 0; s < alphabet; s++) used += lens[s] != 0;
    if (used == 1) { /* one-symbol code: no bits, but every symbol must be that one */
        for (i = 0; i < n; i++)
            if (!lens[sym[i]]) return OCX_E_SYMBOL;
        return 0;
    }
    for (i = 0; i < n; i++) {
        int l = lens[sym[i]];
        if (!l) return OCX_E_SYMBOL;
        acc = (acc << l) | codes[sym[i]];
        nacc += l;
        if (nacc >= 32) {
            uint32_t w;
            if (o + 4 > dst_cap) return OCX_E_SYMBOL;
            nacc -= 32;
            w = (uint32_t)(acc >> nacc);
            dst[o] = (uint8_t)(w >> 24);
            dst[o + 1] = (uint8_t)(w >> 16);
            dst[o + 2] = (uint8_t)(w >> 8);
            dst[o + 3] = (uint8_t)w;
            o += 4;
        }
    }
    while (nacc > 0) {
        if (o >= dst_cap) return OCX_E_SYMBOL;
        if (nacc >= 8) {
            nacc -= 8;
            dst[o++] = (uint8_t)(acc >> nacc);
        } else {
            dst[o++] = (uint8_t)(acc << (8 - nacc));
            nacc = 0;
        }
    }
    return (int64_t)o;
}
