/*
 * Static range-ANS (rANS) streams over byte alphabets, the container's alternative to canonical
 * Huffman streams (codecs 6 and 7 of docs/FORMAT.md).
 *
 * Asymmetric numeral systems after Duda (2013); byte-wise renormalization as Giesen describes it
 * for rans_byte. A symbol s of frequency f (out of 2^P) moves a 32-bit state x to
 * (x / f) * 2^P + (x mod f) + start(s), so it costs log2(2^P / f) bits, within a hair of the
 * entropy, where a Huffman code rounds every cost to whole bits.
 *
 * State: 32 bits, kept within [L, 2^8 L) with L = 2^23. The encoder runs over the symbols in
 * reverse, starting from x = L, and pushes the low byte of x while the next symbol would carry
 * it past 2^8 L; it ends by storing x as 4 little-endian bytes. The payload is those 4 bytes
 * followed by the pushed bytes in the order the decoder pulls them (last pushed first).
 *
 * Plain C99, no Python headers: loaded through ctypes, linkable by a native runtime unchanged.
 */
#ifndef ONNXCOMPRESS_RANS_H
#define ONNXCOMPRESS_RANS_H

#include <stddef.h>
#include <stdint.h>

#define OCX_RANS_MIN_PRECISION 1
#define OCX_RANS_MAX_PRECISION 15 /* the decoder's slot table then has at most 32 KiB */
#define OCX_RANS_LOW (1u << 23)   /* L: the state's lower bound, and where encoding starts */
#define OCX_RANS_SYMBOLS 256

/* Return codes (0 is success). Besides these, the decoders return OCX_E_EXHAUSTED (-2, the
 * payload ended before the last symbol) and OCX_E_TRAILING (-4, payload bytes left over) of
 * huffman.h, the sparse decoder OCX_E_RANGE and OCX_E_WIDTH of codebook.h. */
#define OCX_E_FREQS (-9)   /* precision outside 1..15, alphabet outside 1..256, or frequencies
                              that do not sum to exactly 2^precision */
#define OCX_E_STATE (-10)  /* the first state is outside [L, 2^8 L) or the last is not L */
#define OCX_E_NOFREQ (-11) /* encoder: a symbol whose frequency is 0 (or past the alphabet) */
#define OCX_E_SPACE (-12)  /* encoder: the output buffer is too small */
#define OCX_E_MEMORY (-13) /* decoder: no memory for the 2^P-entry slot table */

/* Encode sym[0..n) with the frequencies freqs[0..alphabet) (0 = unused; they must sum to
 * 2^precision). Writes the payload to dst[0..) and returns its length (4 + pushed bytes, at
 * most 4 + 2n), or a negative error; never writes outside dst[0..dst_cap). */
int64_t ocx_rans_encode(const uint32_t *freqs, int alphabet, int precision, const uint8_t *sym,
                        size_t n, uint8_t *dst, size_t dst_cap);

/* Decode n symbols (n >= 1) from the payload src[0..src_len) into out[0..n). Refuses a stream
 * that ends early, leaves bytes over, or does not end in state L. Never reads outside src nor
 * writes outside out. */
int ocx_rans_decode(const uint32_t *freqs, int alphabet, int precision, const uint8_t *src,
                    size_t src_len, uint8_t *out, size_t n);

/* Deep Compression's sparse form (see ocx_sparse_decode in huffman.h) from two rANS streams,
 * read in step without materializing them: m entries, entry j skips gap[j] elements, then
 * occupies one element that becomes book[val[j]], or stays untouched when val[j] == filler.
 * out (n elements of elem_size bytes) must hold the fill value beforehand. m == 0 needs empty
 * payloads (the frequency tables are then not looked at). */
int ocx_rans_sparse_decode(const uint32_t *gap_freqs, int gap_alphabet, int gap_precision,
                           const uint8_t *gap_src, size_t gap_len, const uint32_t *val_freqs,
                           int val_alphabet, int val_precision, const uint8_t *val_src,
                           size_t val_len, size_t m, int filler, const void *book, int k,
                           int elem_size, void *out, size_t n);

/* Both rANS payloads of the sparse form at gap width gap_bits (1..8), straight from the
 * entries: gaps[j] fill elements precede the j-th non-fill element, whose value symbol is
 * vals[j]. A gap g becomes g >> gap_bits filler entries (gap 2^gap_bits - 1, value filler) then
 * the entry (g mod 2^gap_bits, vals[j]), as in codecs.sparse_entries, without building those
 * streams. Writes the payloads to gap_dst and val_dst and their lengths to lens[0], lens[1];
 * returns 0 or a negative error. With entries == 0 both lengths are 0. */
int ocx_rans_sparse_encode(const uint32_t *gaps, const uint8_t *vals, size_t entries,
                           int gap_bits, int filler, const uint32_t *gap_freqs, int gap_alphabet,
                           int gap_precision, const uint32_t *val_freqs, int val_alphabet,
                           int val_precision, uint8_t *gap_dst, size_t gap_cap, uint8_t *val_dst,
                           size_t val_cap, uint64_t *lens);

#endif
