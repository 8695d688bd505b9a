/*
 * The container's bitgroups codec (docs/FORMAT.md): G groups of B bits whose high bits are 0,
 * stored as only the low `keep` bits of each group (XnorConv's weight bits, where each tap's
 * channel bits are padded to whole 64-bit words). Bits are numbered little-endian: bit k of a
 * byte string is bit k mod 8 of byte k div 8. Plain C99, no Python headers.
 */
#ifndef ONNXCOMPRESS_BITGROUPS_H
#define ONNXCOMPRESS_BITGROUPS_H

#include <stddef.h>
#include <stdint.h>

#define OCX_E_SIZES (-8) /* buffer sizes that do not match the groups */

/* Bit i < keep of group g (bit g * keep + i of kept) becomes bit g * group_bits + i of out;
 * every other bit of out is left as it is (the caller passes zeros). out_len * 8 must equal
 * groups * group_bits and kept_len must be ceil(groups * keep / 8), or nothing is written and
 * OCX_E_SIZES is returned. */
int ocx_bitgroups_expand(const uint8_t *kept, size_t kept_len, uint32_t keep, uint32_t group_bits,
                         uint64_t groups, uint8_t *out, size_t out_len);

#endif
