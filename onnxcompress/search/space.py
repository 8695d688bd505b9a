"""What the budget search chooses from, per layer, and what each choice costs in the container.

A setting is (sparsity, bits): magnitude pruning to `sparsity` (Deep Compression), then k-means
sharing with 2^bits values (bits None: the nonzeros stay float32). (0, None) leaves the layer
untouched. The ladders are the same for every model: nothing here is tuned per model.

The size of a setting is priced exactly, without writing a container: the layer's weights are
pruned and clustered as the passes would (magnitude mask of the original weights, k-means on the
nonzeros) and `container.codecs.coded_size` plans the codebook and sparse codecs from their
histograms; float weights are priced at 4 bytes per stored value plus their sparse positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..container.codecs import coded_size
from ..container.writer import GAP_BITS
from ..kernels.kmeans import rows_value, share_rows, share_weights
from ..kernels.masks import apply_mask, magnitude_mask
from ..passes.cluster import unpruned

SPARSITIES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)
BITS: tuple[float | None, ...] = (None, 8, 6, 5, 4.5, 4, 3.5, 3)
# A layer holding a large share of the model's weights gets quarter-bit rungs where most
# choices fall: one step of half a bit in it moves the whole model's size and drop a lot.
FINE_BITS: tuple[float | None, ...] = (None, 8, 6, 5, 4.75, 4.5, 4.25, 4, 3.75, 3.5, 3.25, 3)
FINE_SHARE = 0.1


def bit_ladder(params: int, total_params: int) -> tuple[float | None, ...]:
    return FINE_BITS if params >= FINE_SHARE * total_params else BITS
FLOAT_BITS = 32
PRICE_FIT_SAMPLES = 1 << 16  # k-means fitted on this many weights is close enough to price


@dataclass(frozen=True)
class Setting:
    sparsity: float
    bits: float | None  # log2 of the codebook size; None: not clustered

    @property
    def untouched(self) -> bool:
        return self.sparsity == 0 and self.bits is None

    def __str__(self) -> str:
        return f"s={self.sparsity:g}/{'f32' if self.bits is None else f'{self.bits:g}'}b"


def prune(w: np.ndarray, sparsity: float) -> np.ndarray:
    return apply_mask(w, magnitude_mask(w, sparsity)) if sparsity > 0 else w


def by_rows(w: np.ndarray, kind: str) -> bool:
    """As the cluster pass decides: embedding tables not pruned are shared by rows."""
    return kind == "embedding" and w.ndim == 2 and unpruned(w)


def clustered(w: np.ndarray, bits: float, kind: str, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, codebook) of w shared at `bits` as the cluster pass would; the codebook is
    None for a table shared by rows (its values are not one codebook's)."""
    if by_rows(w, kind):
        return rows_value(*share_rows(w, bits, seed=seed)), None
    book, idx = share_weights(w, bits, seed=seed)
    return book[idx], book


def stored_bytes(w: np.ndarray, sparsity: float, bits: float | None, kind: str) -> int:
    """Container bytes of a layer's weight at this setting."""
    return pruned_bytes(prune(w, sparsity), sparsity, bits, kind)


def pruned_bytes(pruned: np.ndarray, sparsity: float, bits: float | None, kind: str) -> int:
    """`stored_bytes` of a weight already pruned at `sparsity` (one mask serves every bit
    width)."""
    if bits is None:
        nnz = int(np.count_nonzero(pruned))
        if sparsity == 0:
            return pruned.size * FLOAT_BITS // 8
        positions = _position_bits(pruned.reshape(-1) != 0, GAP_BITS.get(kind, 8))
        return (nnz * FLOAT_BITS + positions) // 8
    # the codebook and sparse forms as the writer prices them (its best gap width)
    if by_rows(pruned, kind):
        book, idx, mean, std = share_rows(pruned, bits, fit_samples=PRICE_FIT_SAMPLES)
        return coded_size(book, idx) + mean.nbytes + std.nbytes
    book, idx = share_weights(pruned, bits, fit_samples=PRICE_FIT_SAMPLES)
    return coded_size(book, idx)


def _position_bits(mask: np.ndarray, gap_bits: int) -> int:
    """Huffman-coded gap bits of the nonzero positions (entropy of the capped gaps)."""
    pos = np.flatnonzero(mask)
    if not pos.size:
        return 0
    gaps = np.minimum(np.diff(pos, prepend=-1) - 1, (1 << gap_bits) - 1)
    counts = np.bincount(gaps)
    p = counts[counts > 0] / gaps.size
    return int(np.ceil(-(counts[counts > 0] * np.log2(p)).sum()))
