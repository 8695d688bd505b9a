"""Read a container (`unpack`): check every CRC, decode each weight, rebuild the model.

Decoding inverts Deep Compression's storage stages (Han et al., ICLR 2016): Huffman streams are
decoded by the C library (csrc/huffman.c), then codebook indices are mapped back to values and
sparse (gap, value) entries are scattered into a dense tensor. `read_container` returns a plain
ModelProto with every weight inline; `load_for_ort` skips building that proto for big weights and
hands ONNX Runtime numpy arrays instead (see `ort_session`).
"""

from __future__ import annotations

import logging
import lzma
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from ..errors import ContainerError
from . import codecs
from .format import (
    ENTRY,
    GRAPH_SECTION,
    HEADER,
    HEADER_SECTION,
    MAGIC,
    TABLE_SECTION,
    VERSION,
    Codec,
    Entry,
    PayloadError,
    SectionKind,
    crc32,
    prefix_size,
    tensor_section,
)
from .protos import clear_data, expected_nbytes

log = logging.getLogger(__name__)

EXTERNAL_MIN_BYTES = 1024  # load_for_ort hands tensors at least this big to ORT as arrays
EXTERNAL_LOCATION = "onnxcompress-container"  # placeholder location, never opened


@dataclass
class _Parsed:
    where: str
    buf: memoryview
    graph: Entry
    tensors: list[Entry]


def is_container(path: str | os.PathLike) -> bool:
    """True when the file starts with the container magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_container(path: str | os.PathLike) -> onnx.ModelProto:
    """The model stored in a container file, every initializer inline and bit-identical."""
    return _to_model(_parse(_read_file(path), str(path)))


def read_container_bytes(data: bytes) -> onnx.ModelProto:
    """Like read_container, from the container's bytes."""
    return _to_model(_parse(memoryview(data), "<bytes>"))


def load_for_ort(path: str | os.PathLike) -> tuple[bytes, dict[str, np.ndarray]]:
    """(model bytes, arrays) for ONNX Runtime without building a proto of the big weights.

    Initializers of at least EXTERNAL_MIN_BYTES with a numpy dtype ORT accepts, which some node
    consumes (ORT drops unused ones before it would take the arrays), are left out of the model
    bytes (marked external) and returned as arrays; feed them to
    `SessionOptions.add_external_initializers` and keep them alive as long as the session.
    """
    p = _parse(_read_file(path), str(path))
    model = _graph(p)
    used = _consumed_names(model.graph)
    arrays: dict[str, np.ndarray] = {}
    for e in p.tensors:
        t = model.graph.initializer[e.index]
        flat = _decode_tensor(p, e, t)
        dtype = _ort_dtype(t.data_type)
        clear_data(t)
        if dtype is None or flat.nbytes < EXTERNAL_MIN_BYTES or t.name not in used:
            t.raw_data = flat.tobytes()
            continue
        arrays[t.name] = flat.view(dtype).reshape(tuple(t.dims))
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", EXTERNAL_LOCATION
    return model.SerializeToString(), arrays


def ort_session(path: str | os.PathLike, sess_options=None, providers=None):
    """An onnxruntime.InferenceSession over a container, through load_for_ort's fast path.

    The arrays are registered on `sess_options` (pass a fresh one per session) and attached to
    the session (`_onnxcompress_arrays`, with their OrtValues) to live as long as it does.
    """
    import onnxruntime as ort

    model_bytes, arrays = load_for_ort(path)
    so = sess_options or ort.SessionOptions()
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
    if arrays:
        so.add_external_initializers(list(arrays), values)
    sess = ort.InferenceSession(model_bytes, so, providers=providers or ["CPUExecutionProvider"])
    sess._onnxcompress_arrays = (arrays, values)  # ORT reads these buffers, never copies them
    return sess


def _consumed_names(graph: onnx.GraphProto) -> set[str]:
    """Names read by a node of the graph or of any subgraph, and the graph outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _consumed_names(g)
    return names


# ----------------------------------------------------------------------------- parsing


def _read_file(path: str | os.PathLike) -> memoryview:
    try:
        return memoryview(Path(path).read_bytes())
    except OSError as e:
        raise ContainerError(f"{path}: cannot read the container: {e}", section=None) from e


def _fail(where: str, section: str, message: str) -> ContainerError:
    return ContainerError(f"{where}: {section}: {message}", section=section)


def _parse(buf: memoryview, where: str) -> _Parsed:
    """Check magic, header CRC, version, table CRC and section bounds."""
    if bytes(buf[: len(MAGIC)]) != MAGIC:
        raise _fail(
            where,
            HEADER_SECTION,
            "not an onnxcompress container (wrong magic; "
            f"expected {MAGIC!r}, found {bytes(buf[: len(MAGIC)])!r})",
        )
    if len(buf) < HEADER.size:
        raise _fail(where, HEADER_SECTION, f"truncated: {len(buf)} of {HEADER.size} bytes")
    _magic, version, flags, count, table_crc, head_crc = HEADER.unpack(buf[: HEADER.size])
    if crc32(buf[: HEADER.size - 4]) != head_crc:
        raise _fail(where, HEADER_SECTION, "corrupted (CRC-32 mismatch)")
    if version != VERSION or flags:
        raise _fail(
            where,
            HEADER_SECTION,
            f"unknown format version {version} (flags {flags}); "
            f"this reader knows version {VERSION}",
        )
    end = prefix_size(count)
    if len(buf) < end:
        raise _fail(
            where,
            TABLE_SECTION,
            f"truncated: the table of {count} sections ends at byte {end}, the file has {len(buf)}",
        )
    if crc32(buf[HEADER.size : end]) != table_crc:
        raise _fail(where, TABLE_SECTION, "corrupted (CRC-32 mismatch)")
    entries = [_entry(buf, HEADER.size + i * ENTRY.size, where) for i in range(count)]
    _check_layout(entries, end, where)
    if sum(e.length for e in entries) + end < len(buf):
        raise _fail(
            where,
            TABLE_SECTION,
            f"{len(buf) - end - sum(e.length for e in entries)} bytes after the last section",
        )
    return _Parsed(where, buf, entries[0], entries[1:])


def _entry(buf: memoryview, at: int, where: str) -> Entry:
    kind, codec, _r, index, offset, length, crc, _r2 = ENTRY.unpack(buf[at : at + ENTRY.size])
    try:
        return Entry(SectionKind(kind), Codec(codec), index, offset, length, crc)
    except ValueError as e:
        raise _fail(where, TABLE_SECTION, f"unknown section kind or codec: {e}") from e


def _check_layout(entries: list[Entry], start: int, where: str) -> None:
    """Graph first, tensors after; sections back to back from `start`; unique indices."""
    if not entries or entries[0].kind != SectionKind.GRAPH:
        raise _fail(where, TABLE_SECTION, "the first section must be the graph")
    if any(e.kind != SectionKind.TENSOR for e in entries[1:]):
        raise _fail(where, TABLE_SECTION, "more than one graph section")
    if len({e.index for e in entries[1:]}) != len(entries) - 1:
        raise _fail(where, TABLE_SECTION, "two sections name the same initializer")
    pos = start
    for e in entries:
        if e.offset != pos:
            raise _fail(where, TABLE_SECTION, f"a section starts at {e.offset}, expected {pos}")
        pos += e.length


def _section(p: _Parsed, e: Entry, name: str) -> memoryview:
    """The section's bytes after the bounds and CRC checks."""
    if e.offset + e.length > len(p.buf):
        raise _fail(
            p.where,
            name,
            f"truncated: the section spans bytes {e.offset}.."
            f"{e.offset + e.length}, the file has {len(p.buf)}",
        )
    data = p.buf[e.offset : e.offset + e.length]
    if crc32(data) != e.crc:
        raise _fail(p.where, name, "corrupted (CRC-32 mismatch)")
    return data


def _graph(p: _Parsed) -> onnx.ModelProto:
    data = _section(p, p.graph, GRAPH_SECTION)
    try:
        if p.graph.codec == Codec.ZLIB:
            data = zlib.decompress(data)
        elif p.graph.codec == Codec.LZMA:
            data = lzma.decompress(data, format=lzma.FORMAT_ALONE)
        elif p.graph.codec != Codec.STORED:
            raise _fail(p.where, GRAPH_SECTION, f"codec {p.graph.codec.name} is not for graphs")
        model = onnx.ModelProto()
        model.ParseFromString(bytes(data))
    except (zlib.error, lzma.LZMAError, DecodeError) as e:
        raise _fail(p.where, GRAPH_SECTION, f"does not decode: {e}") from e
    n = len(model.graph.initializer)
    bad = [e.index for e in p.tensors if e.index >= n]
    if bad:
        raise _fail(p.where, TABLE_SECTION, f"initializer index {bad[0]} past the {n} in the graph")
    return model


def _decode_tensor(p: _Parsed, e: Entry, t: TensorProto) -> np.ndarray:
    name = tensor_section(t.name)
    data = _section(p, e, name)
    try:
        flat = codecs.decode(e.codec, data)
    except PayloadError as err:
        raise _fail(p.where, name, str(err)) from err
    want = expected_nbytes(t)
    if want is not None and flat.nbytes != want:
        raise _fail(
            p.where,
            name,
            f"decodes to {flat.nbytes} bytes, dims {list(t.dims)} of "
            f"{TensorProto.DataType.Name(t.data_type)} need {want}",
        )
    return flat


def _to_model(p: _Parsed) -> onnx.ModelProto:
    model = _graph(p)
    for e in p.tensors:
        t = model.graph.initializer[e.index]
        data = _decode_tensor(p, e, t).tobytes()
        clear_data(t)
        t.raw_data = data
    return model


_ORT_DTYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
    TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8,
    TensorProto.INT16: np.int16,
    TensorProto.UINT16: np.uint16,
    TensorProto.INT32: np.int32,
    TensorProto.UINT32: np.uint32,
    TensorProto.INT64: np.int64,
    TensorProto.UINT64: np.uint64,
    TensorProto.BOOL: np.bool_,
}


def _ort_dtype(data_type: int) -> np.dtype | None:
    dtype = _ORT_DTYPES.get(data_type)
    return None if dtype is None else np.dtype(dtype).newbyteorder("<")
