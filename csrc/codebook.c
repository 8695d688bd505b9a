/* Codebook helpers (see codebook.h). One body per element width through small macros. */
#include "codebook.h"

#include <string.h>

#define HASH_BITS 10 /* 1024 slots for at most 256 keys: load factor <= 1/4 */

static inline uint32_t slot_of(uint64_t x) {
    return (uint32_t)((x * 0x9E3779B97F4A7C15ull) >> (64 - HASH_BITS));
}

#define INDEX_BODY(T)                                                              \
    do {                                                                           \
        const T *d = (const T *)data;                                              \
        uint64_t keys[1u << HASH_BITS];                                            \
        int16_t vals[1u << HASH_BITS];                                             \
        T last = 0;                                                                \
        int last_idx = -1, k = 0;                                                  \
        size_t i;                                                                  \
        memset(vals, 0xff, sizeof vals);                                           \
        for (i = 0; i < n; i++) {                                                  \
            T x = d[i];                                                            \
            if (last_idx < 0 || x != last) {                                       \
                uint32_t h = slot_of((uint64_t)x);                                 \
                while (vals[h] >= 0 && keys[h] != (uint64_t)x)                     \
                    h = (h + 1) & ((1u << HASH_BITS) - 1);                         \
                if (vals[h] < 0) {                                                 \
                    if (k == max_k) return -1;                                     \
                    keys[h] = (uint64_t)x;                                         \
                    vals[h] = (int16_t)k;                                          \
                    book[k++] = (uint64_t)x;                                       \
                }                                                                  \
                last = x;                                                          \
                last_idx = vals[h];                                                \
            }                                                                      \
            idx[i] = (uint8_t)last_idx;                                            \
        }                                                                          \
        return k;                                                                  \
    } while (0)

int ocx_codebook_index(const void *data, size_t n, int elem_size, int max_k, uint64_t *book,
                       uint8_t *idx) {
    if (max_k > 256) max_k = 256;
    if (elem_size == 1) { /* direct table, no hashing */
        const uint8_t *d = (const uint8_t *)data;
        int16_t map[256];
        int k = 0;
        size_t i;
        memset(map, 0xff, sizeof map);
        for (i = 0; i < n; i++) {
            if (map[d[i]] < 0) {
                if (k == max_k) return -1;
                map[d[i]] = (int16_t)k;
                book[k++] = d[i];
            }
            idx[i] = (uint8_t)map[d[i]];
        }
        return k;
    }
    if (elem_size == 2) INDEX_BODY(uint16_t);
    if (elem_size == 4) INDEX_BODY(uint32_t);
    if (elem_size == 8) INDEX_BODY(uint64_t);
    return OCX_E_WIDTH;
}

#define GATHER_BODY(T)                                              \
    do {                                                            \
        const T *b = (const T *)book;                               \
        T *o = (T *)out;                                            \
        for (i = 0; i < n; i++) o[i] = b[idx[i]];                   \
    } while (0)

int ocx_codebook_gather(const uint8_t *idx, size_t n, const void *book, int k, int elem_size,
                        void *out) {
    size_t i;
    uint8_t bad = 0;
    for (i = 0; i < n; i++) bad |= (uint8_t)(idx[i] >= k);
    if (bad) return OCX_E_RANGE;
    switch (elem_size) {
    case 1: GATHER_BODY(uint8_t); break;
    case 2: GATHER_BODY(uint16_t); break;
    case 4: GATHER_BODY(uint32_t); break;
    case 8: GATHER_BODY(uint64_t); break;
    default: return OCX_E_WIDTH;
    }
    return 0;
}
