/* Expansion of the bitgroups codec (see bitgroups.h): a bit copy per group, straight into the
 * tensor's bytes, so decoding needs no byte-per-bit temporaries (8x the tensor). */
#include "bitgroups.h"

/* OR bits [from, from + n) of src into bits [to, to + n) of dst, up to 8 bits a step. */
static void copy_bits(const uint8_t *src, uint64_t from, uint8_t *dst, uint64_t to, uint64_t n) {
    while (n) {
        unsigned so = (unsigned)(from & 7), dof = (unsigned)(to & 7);
        unsigned take = 8 - (so > dof ? so : dof);
        if (take > n) take = (unsigned)n;
        unsigned bits = ((unsigned)src[from >> 3] >> so) & ((1u << take) - 1);
        dst[to >> 3] |= (uint8_t)(bits << dof);
        from += take;
        to += take;
        n -= take;
    }
}

int ocx_bitgroups_expand(const uint8_t *kept, size_t kept_len, uint32_t keep, uint32_t group_bits,
                         uint64_t groups, uint8_t *out, size_t out_len) {
    uint64_t g;
    if (group_bits == 0 || keep > group_bits) return OCX_E_SIZES;
    /* groups * group_bits == 8 * out_len and groups * keep bits fill kept_len bytes, checked
       without overflow */
    if ((uint64_t)out_len > UINT64_MAX / 8 || (8 * (uint64_t)out_len) % group_bits ||
        (8 * (uint64_t)out_len) / group_bits != groups)
        return OCX_E_SIZES;
    if (keep && groups > UINT64_MAX / keep) return OCX_E_SIZES;
    if ((uint64_t)kept_len != (groups * keep + 7) / 8) return OCX_E_SIZES;
    for (g = 0; g < groups; g++) copy_bits(kept, g * keep, out, g * group_bits, keep);
    return 0;
}
