/*
 * Codebook helpers for the onnxcompress container: find the distinct element bit patterns of a
 * tensor (at most 256), map indices back to elements, and expand Deep Compression's sparse
 * relative-index form (Han et al., ICLR 2016, section 4) into a dense tensor.
 *
 * Elements are opaque bit patterns of 1, 2, 4 or 8 bytes in host order, so -0.0 and every NaN
 * payload stay distinct and exact. Plain C99, no Python headers.
 */
#ifndef ONNXCOMPRESS_CODEBOOK_H
#define ONNXCOMPRESS_CODEBOOK_H

#include <stddef.h>
#include <stdint.h>

#define OCX_E_WIDTH (-6) /* element size not 1, 2, 4 or 8 */
#define OCX_E_RANGE (-7) /* an index past the codebook or a position past the tensor */

/* Distinct values of data[0..n) in order of first appearance into book (as uint64), and the
 * index of each element into idx. Returns K, or -1 when there are more than max_k (<= 256). */
int ocx_codebook_index(const void *data, size_t n, int elem_size, int max_k, uint64_t *book,
                       uint8_t *idx);

/* out[i] = book[idx[i]] for i < n; book holds k elements of elem_size bytes. */
int ocx_codebook_gather(const uint8_t *idx, size_t n, const void *book, int k, int elem_size,
                        void *out);

/* Walk m (gap, value) entries: each entry skips gaps[j] elements, then occupies one element that
 * becomes book[vals[j]], or stays untouched when vals[j] == filler. out (n elements) must hold
 * the fill value beforehand. */
int ocx_sparse_scatter(const uint8_t *gaps, const uint8_t *vals, size_t m, int filler,
                       const void *book, int k, int elem_size, void *out, size_t n);

#endif
