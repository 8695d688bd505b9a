"""Write an ONNX model as a container (`pack`): the graph once, then one payload per weight.

The last two stages of Deep Compression (Han et al., ICLR 2016): the passes already pruned and
clustered the weights; here each initializer gets the smallest lossless encoding among raw
(zlib/LZMA), codebook + Huffman indices, and the sparse relative-index form with Huffman-coded
gaps and values, or those two with rANS streams in place of the Huffman ones (`codecs.py`). The
file is written to a temporary file beside the target and renamed over it, so a crash never
leaves half a container under the final name.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from .. import ops
from ..errors import BadInputError
from ..files import write_bytes
from . import codecs
from .format import (
    PROTOBUF_MAX_BYTES,
    Codec,
    Entry,
    SectionKind,
    crc32,
    graph_limit,
    pack_header,
    prefix_size,
)
from .ordered import in_order
from .protos import (
    clear_data,
    element_width,
    expected_nbytes,
    is_in_memory,
    stored_apart,
    tensor_bytes,
    unmark,
)

log = logging.getLogger(__name__)

# Deep Compression's relative-index widths per layer kind (conv 8, fc 5; tables like fc), for
# callers that pin them with tensor_kinds; otherwise each sparse section gets the width (1..8
# bits) that makes it smallest, priced from its gap histogram
GAP_BITS = {"conv": 8, "fc": 5, "embedding": 5}
ENCODE_THREADS = max(1, min(2, os.cpu_count() or 1))  # tensors encoded at once (ordered.py)


@dataclass(frozen=True)
class TensorRow:
    """How one initializer was stored."""

    name: str
    codec: str  # "stored", "zlib", "lzma", "codebook", "sparse", "bitgroups", "codebook_rans",
    # "sparse_rans"
    original_bytes: int
    stored_bytes: int  # the payload section, headers included
    n_symbols: int  # Huffman- or rANS-coded symbols (gaps + values for sparse); 0 for raw codecs
    bits_per_symbol: float | None  # coded payload bits / n_symbols; None for raw codecs
    entropy_bits: float | None  # empirical entropy of those symbols, in bits (total)

    @property
    def entropy_bits_per_symbol(self) -> float | None:
        if self.entropy_bits is None or not self.n_symbols:
            return None
        return self.entropy_bits / self.n_symbols


@dataclass(frozen=True)
class ContainerReport:
    """Sizes of a written container; rendering is the report package's job."""

    path: str
    total_bytes: int
    graph_bytes: int  # the compressed graph section
    tensors: list[TensorRow] = field(default_factory=list)

    @property
    def original_bytes(self) -> int:
        return sum(r.original_bytes for r in self.tensors)

    @property
    def ratio(self) -> float:
        """Weight bytes before / whole file after."""
        return self.original_bytes / self.total_bytes if self.total_bytes else 0.0


def write_container(
    model: onnx.ModelProto, path: str | os.PathLike, *, tensor_kinds: dict[str, str] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> ContainerReport:
    """Encode `model` and write it atomically to `path`; returns the sizes per tensor.

    `arrays` holds the data of the model's IN_MEMORY initializers (graph.to_light_model)."""
    path = Path(path)
    chunks, rows, graph_bytes = encode_container(model, tensor_kinds=tensor_kinds, arrays=arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, chunks)  # the one atomic writer: never half a container
    total = sum(len(c) for c in chunks)
    log.info("wrote %s: %d bytes, %d tensors", path, total, len(rows))
    return ContainerReport(str(path), total, graph_bytes, rows)


def container_bytes(model: onnx.ModelProto, *, tensor_kinds: dict[str, str] | None = None,
                    arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """The container as one bytes object (what write_container would write)."""
    return b"".join(encode_container(model, tensor_kinds=tensor_kinds, arrays=arrays)[0])


def encode_container(
    model: onnx.ModelProto, *, tensor_kinds: dict[str, str] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> tuple[list[bytes], list[TensorRow], int]:
    """(file chunks in order, per-tensor rows, graph section size)."""
    gap_bits = _gap_bits_by_name(model, tensor_kinds or {})
    groups = bit_groups_by_name(model)
    graph_codec, graph = _compress_graph(stripped_graph_bytes(model))
    payloads: list[tuple[SectionKind, Codec, int, bytes]] = [
        (SectionKind.GRAPH, graph_codec, 0, graph)
    ]
    rows = []

    def encoded(item: tuple) -> codecs.Encoded:
        _, tensor, raw, elem_size = item
        return codecs.encode(raw, elem_size, gap_bits.get(tensor.name), groups.get(tensor.name))

    for (index, tensor, raw, _), enc in in_order(_data_tensors(model, arrays or {}), encoded,
                                                  ENCODE_THREADS):
        payloads.append((SectionKind.TENSOR, enc.codec, index, enc.payload))
        rows.append(_row(tensor.name, raw, enc))
        log.debug("%s: %s, %d -> %d bytes", tensor.name, enc.codec.name, len(raw), len(enc.payload))
    entries, offset = [], prefix_size(len(payloads))
    for kind, codec, index, payload in payloads:
        entries.append(Entry(kind, codec, index, offset, len(payload), crc32(payload)))
        offset += len(payload)
    return [pack_header(entries)] + [p[3] for p in payloads], rows, len(graph)


def _row(name: str, raw: bytes, enc: codecs.Encoded) -> TensorRow:
    bps = enc.coded_bits / enc.n_symbols if enc.n_symbols else None
    if enc.entropy_bits is not None and not enc.n_symbols:
        bps = 0.0
    return TensorRow(
        name,
        enc.codec.name.lower(),
        len(raw),
        len(enc.payload),
        enc.n_symbols,
        bps,
        enc.entropy_bits,
    )


def _gap_bits_by_name(model: onnx.ModelProto, kinds: dict[str, str]) -> dict[str, int]:
    names = {t.name for t in model.graph.initializer}
    unknown = sorted(set(kinds) - names)
    if unknown:
        raise BadInputError(f"tensor_kinds names tensors that are no initializer: {unknown[:5]}")
    out = {}
    for name, kind in kinds.items():
        if kind not in GAP_BITS:
            raise BadInputError(
                f"tensor_kinds['{name}'] = {kind!r}; expected one of {sorted(GAP_BITS)}"
            )
        out[name] = GAP_BITS[kind]
    return out


def bit_groups_by_name(model: onnx.ModelProto) -> dict[str, int]:
    """XnorConv weight bits: initializer name -> bits per tap (whole 64-bit channel words, the
    top ones padding when C is not a multiple of 64; see ops.py)."""
    inits = {t.name: t for t in model.graph.initializer}
    groups = {}
    for node in model.graph.node:
        if node.op_type != ops.XNOR_CONV or node.domain != ops.DOMAIN or len(node.input) < 2:
            continue
        t = inits.get(node.input[ops.IN_WEIGHT_BITS])
        ks = next((list(a.ints) for a in node.attribute if a.name == ops.ATTR_KERNEL_SHAPE), [])
        width = element_width(t.data_type) if t is not None else None
        if len(ks) != 2 or min(ks) < 1 or width is None or len(t.dims) != 2:
            continue
        row_bits, taps = t.dims[1] * 8 * width, ks[0] * ks[1]
        if row_bits % taps == 0:
            groups[t.name] = row_bits // taps
    return groups


def stripped_graph_bytes(model: onnx.ModelProto) -> bytes:
    """The serialized model with its initializers' data left out (kept: strings and typed-field
    4-bit tensors, which stay in the graph). The full copy this takes is freed on return."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for src, dst in zip(model.graph.initializer, out.graph.initializer):
        if is_in_memory(src):
            unmark(dst)
        elif stored_apart(src):
            clear_data(dst)
    return out.SerializeToString()


def _data_tensors(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]):
    """(index, tensor, raw bytes, element width) of each initializer with data, one at a time;
    IN_MEMORY initializers give a byte view of their array (no copy)."""
    for i, src in enumerate(model.graph.initializer):
        raw = _array_bytes(src, arrays) if is_in_memory(src) else tensor_bytes(src)
        if raw is None:
            continue
        width = element_width(src.data_type)
        yield i, src, raw, width if width in codecs.ELEMENT_SIZES else 0


def _array_bytes(t: TensorProto, arrays: Mapping[str, np.ndarray]) -> memoryview:
    if t.name not in arrays:
        raise BadInputError(f"initializer '{t.name}' is held in memory, but no array was given")
    arr = np.ascontiguousarray(arrays[t.name])
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    want = expected_nbytes(t)
    if want != arr.nbytes:
        raise BadInputError(f"initializer '{t.name}': its array has {arr.nbytes} bytes, its dims "
                            f"{list(t.dims)} need {want}")
    return memoryview(arr.reshape(-1).view(np.uint8))


def _compress_graph(data: bytes) -> tuple[Codec, bytes]:
    """The smallest of stored, zlib and LZMA for the serialized graph, among those a reader
    inflates (format.graph_limit: LZMA beyond GRAPH_MAX_RATIO leaves the graph to zlib)."""
    if len(data) > PROTOBUF_MAX_BYTES:
        raise BadInputError(
            f"the graph without its weights is {len(data)} bytes, more than protobuf's "
            f"{PROTOBUF_MAX_BYTES}; move large Constant nodes into initializers"
        )
    options = [
        (Codec.STORED, data),
        (Codec.ZLIB, zlib.compress(data, 9)),
        (Codec.LZMA, codecs.lzma_alone(data)),
    ]
    readable = [o for o in options if len(data) <= graph_limit(len(o[1]))]
    return min(readable, key=lambda o: (len(o[1]), o[0]))
