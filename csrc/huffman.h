/*
 * Canonical Huffman coding over byte alphabets (at most 256 symbols, codes at most 15 bits).
 *
 * Plain C99, no Python or ONNX Runtime headers: the onnxcompress container reader loads this
 * through ctypes, and a native runtime could link it unchanged. Bit order is MSB-first, codes
 * are assigned canonically from the code lengths alone (shorter codes first, ties by symbol),
 * as in Deep Compression's Huffman stage (Han et al., ICLR 2016) and DEFLATE (RFC 1951 3.2.2).
 */
#ifndef ONNXCOMPRESS_HUFFMAN_H
#define ONNXCOMPRESS_HUFFMAN_H

#include <stddef.h>
#include <stdint.h>

#define OCX_HUFF_MAX_BITS 15
#define OCX_HUFF_MAX_SYMBOLS 256

/* Return codes (0 is success, errors are negative). */
#define OCX_OK 0
#define OCX_E_LENGTHS (-1)    /* code lengths invalid: > 15 bits, oversubscribed, or no symbol */
#define OCX_E_EXHAUSTED (-2)  /* the bit stream ended before all symbols were decoded */
#define OCX_E_BADCODE (-3)    /* a bit pattern that is no code (incomplete code table) */
#define OCX_E_TRAILING (-4)   /* bytes left over after the last symbol */
#define OCX_E_SYMBOL (-5)     /* encoder: a symbol without a code, or output buffer too small */

/* Decode n_out symbols from src[0..src_len) into out. lengths[s] is the code length of symbol s
 * (0 = unused) for s < alphabet. Never reads outside src nor writes outside out[0..n_out). */
int ocx_huff_decode(const uint8_t *lengths, int alphabet, const uint8_t *src, size_t src_len,
                    uint8_t *out, size_t n_out);

/* Deep Compression's sparse form (Han et al., ICLR 2016, section 4) straight from its two
 * Huffman streams, without materializing them: m entries, entry j skips gap[j] elements, then
 * occupies one element that becomes book[val[j]], or stays untouched when val[j] == filler.
 * out (n elements of elem_size bytes) must hold the fill value beforehand. Errors: those of
 * ocx_huff_decode for either stream, OCX_E_RANGE (codebook.h) for a value past the codebook or a
 * position past n. An empty sparse tensor (m == 0) has empty streams. */
int ocx_sparse_decode(const uint8_t *gap_lengths, int gap_alphabet, const uint8_t *gap_src,
                      size_t gap_len, const uint8_t *val_lengths, int val_alphabet,
                      const uint8_t *val_src, size_t val_len, size_t m, int filler,
                      const void *book, int k, int elem_size, void *out, size_t n);

/* Encode n symbols into dst (capacity dst_cap bytes); returns the bytes written or an error. */
int64_t ocx_huff_encode(const uint8_t *lengths, int alphabet, const uint8_t *sym, size_t n,
                        uint8_t *dst, size_t dst_cap);

/* Canonical codes for the given lengths (codes[s] right-aligned); returns OCX_OK or an error. */
int ocx_huff_codes(const uint8_t *lengths, int alphabet, uint16_t *codes);

#endif
