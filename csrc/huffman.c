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

/* Decode one symbol from buf/cnt into *dst; on a bad code return from the caller. */
#define DECODE_ONE(dst)                                                      \
    do {                                                                     \
        uint32_t e_ = t.primary[buf >> (64 - PRIMARY_BITS)];                \
        int len_;                                                            \
        if (e_) {                                                            \
            (dst) = (uint8_t)(e_ >> 4);                                      \
            len_ = (int)(e_ & 15u);                                          \
        } else {                                                             \
            int s_ = decode_long(&t, buf, &len_);                            \
            if (s_ < 0) return OCX_E_BADCODE;                                \
            (dst) = (uint8_t)s_;                                             \
        }                                                                    \
        buf <<= len_;                                                        \
        cnt -= len_;                                                         \
    } while (0)

int ocx_huff_decode(const uint8_t *lengths, int alphabet, const uint8_t *src, size_t src_len,
                    uint8_t *out, size_t n_out) {
    table_t t;
    const uint8_t *p = src, *end = src + src_len;
    uint64_t buf = 0, consumed;
    size_t virt = 0, i = 0;
    int cnt = 0, rc = build_table(lengths, alphabet, &t);

    if (rc) return rc;
    if (t.only_symbol >= 0) { /* a one-symbol code stores no bits */
        if (src_len) return OCX_E_TRAILING;
        memset(out, t.only_symbol, n_out);
        return OCX_OK;
    }
    while (i < n_out) {
        if (end - p >= 8) {
            buf |= load_be64(p) >> cnt;
            p += (63 - cnt) >> 3;
            cnt |= 56;
        } else {
            consumed = (uint64_t)(p - src + virt) * 8 - (uint64_t)cnt;
            if (consumed > (uint64_t)src_len * 8) return OCX_E_EXHAUSTED;
            while (cnt <= 56) {
                uint64_t b = 0;
                if (p < end) b = *p++; else virt++;
                buf |= b << (56 - cnt);
                cnt += 8;
            }
        }
        if (n_out - i >= 3) {
            DECODE_ONE(out[i]);
            DECODE_ONE(out[i + 1]);
            DECODE_ONE(out[i + 2]);
            i += 3;
        } else {
            while (i < n_out) {
                DECODE_ONE(out[i]);
                i++;
            }
        }
    }
    consumed = (uint64_t)(p - src + virt) * 8 - (uint64_t)cnt;
    if (consumed > (uint64_t)src_len * 8) return OCX_E_EXHAUSTED;
    if ((consumed + 7) / 8 != (uint64_t)src_len) return OCX_E_TRAILING;
    return OCX_OK;
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
