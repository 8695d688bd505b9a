/*
 * Codebook helpers for the onnxcompress container: find the distinct element bit patterns of a
 * tensor (at most 256) and map indices back to elements (Deep Compression's codebook stage,
 * Han et al., ICLR 2016; its sparse form is decoded by ocx_sparse_decode in huffman.h).
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

/* out[i] = book[idx[i]] for i < n; book holds k elements of elem_size bytes. With elem_size 1,
 * out may be idx itself (each element is read before it is written). Every index is checked
 * against k before anything is written. */
int ocx_codebook_gather(const uint8_t *idx, size_t n, const void *book, int k, int elem_size,
                        void *out);

#endif
