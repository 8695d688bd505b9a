"""Deep Compression's relative-index form (Han et al., "Deep Compression", ICLR 2016, section 4)
of a codebook index tensor: its entries, and the gap and value streams at a gap width.

The most frequent index is the fill; every other element is an entry (gap, value) where gap
counts the fill elements since the previous entry. A gap too long for `gap_bits` is bridged with
filler entries (gap = 2^gap_bits - 1, value = the reserved symbol K, where K is the codebook
size without the fill), which occupy a fill element. codecs.py codes the two streams with
Huffman (codec 4) or rANS (codec 7); docs/FORMAT.md gives the layout.
"""

from __future__ import annotations

import numpy as np

GAP_WIDTHS = tuple(range(1, 9))  # the sparse form's gap widths (bits) a writer may choose
SHORT_GAPS = 256  # gaps below this are counted in a histogram; longer ones kept as they are


def entry_gaps(idx: np.ndarray, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """(fill elements before each non-fill element of `idx`, its value symbol): the entries
    before any width splits their gaps. Value symbols index the codebook without the fill."""
    flat = idx.reshape(-1)
    pos = np.flatnonzero(flat != fill)
    if flat.size < 2**31 - 1:  # int32 halves the temporaries, as in sparse_entries
        pos = pos.astype(np.int32)
    sym = flat[pos]
    sym = (sym - (sym > fill)).astype(np.uint8)  # drop the fill from the codebook
    gap = np.diff(pos, prepend=pos.dtype.type(-1))
    del pos
    gap -= 1
    return gap, sym


def gap_histogram(gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries' gaps as a histogram of those below SHORT_GAPS and an array of the longer
    ones: enough to price every gap width."""
    short = gaps < SHORT_GAPS
    return np.bincount(gaps[short], minlength=SHORT_GAPS), gaps[~short]


def fill_gaps(gap_hist: np.ndarray, long_gaps: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """(histogram of the gap stream, filler entries) at `width` bits: a gap g is g >> width
    fillers of gap 2^width - 1 then an entry of gap g mod 2^width (see sparse_entries)."""
    step = 1 << width
    g = np.arange(gap_hist.size)
    counts = np.bincount(g & (step - 1), weights=gap_hist, minlength=step).astype(np.int64)
    counts += np.bincount(long_gaps & (step - 1), minlength=step)
    fillers = int(np.dot(gap_hist, g >> width)) + int((long_gaps >> width).sum())
    counts[step - 1] += fillers
    return counts, fillers


def sparse_entries(
    idx: np.ndarray, book: np.ndarray, fill: int, gap_bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gap stream, value stream, codebook without the fill) of Deep Compression's sparse form.

    Value symbols index the codebook without the fill; symbol K = len(that codebook) marks a
    filler entry, inserted wherever a gap exceeds 2^gap_bits - 1.
    """
    # int32 positions and in-place steps: on a 100 M-element layer each int64 temporary of
    # the entries is 80 MB
    max_gap = (1 << gap_bits) - 1
    pos = np.flatnonzero(idx != fill)
    if idx.size < 2**31 - 1:
        pos = pos.astype(np.int32)
    sym = idx[pos]
    sym = (sym - (sym > fill)).astype(np.uint8)  # drop the fill from the codebook
    nz_book = np.delete(book, fill)
    gap = np.diff(pos, prepend=pos.dtype.type(-1))
    del pos
    gap -= 1
    fillers = gap >> gap_bits  # filler entries before each real one: gap // (max_gap + 1)
    if not fillers.any():
        return gap.astype(np.uint8), sym, nz_book
    fillers += 1
    last = np.cumsum(fillers, out=fillers)  # where each real entry lands after its fillers
    last -= 1
    gaps = np.full(int(last[-1]) + 1, max_gap, dtype=np.uint8)
    vals = np.full(gaps.size, nz_book.size, dtype=np.uint8)
    gaps[last] = gap & max_gap
    vals[last] = sym
    return gaps, vals, nz_book
