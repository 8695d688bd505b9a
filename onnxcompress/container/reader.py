"""Read a container (`unpack`): check every CRC, decode each weight, rebuild the model.

Decoding inverts Deep Compression's storage stages (Han et al., ICLR 2016): Huffman streams are
decoded by the C library (csrc/huffman.c), then codebook indices are mapped back to values and
sparse (gap, value) entries are scattered into a dense tensor. `read_container` returns a plain
ModelProto with every weight inline; `load_for_ort` skips building that proto for big weights and
hands ONNX Runtime numpy arrays instead (see `ort_session`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
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
    graph_limit,
    prefix_size,
    tensor_section,
)
from .inflate import inflate
from .ordered import in_order
from .protos import PACKED_4BIT, clear_data, element_width

log = logging.getLogger(__name__)

EXTERNAL_MIN_BYTES = 1024  # load_for_ort hands tensors at least this big to ORT as arrays
DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))  # sections decoded at once (ordered.py)
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


def stored_tensors(path: str | os.PathLike) -> dict[str, tuple[str, int]]:
    """Initializer name -> (codec, stored bytes), read off the section table and the graph:
    what `report` shows of a container, without decoding (or re-encoding) a weight."""
    p = _parse(_read_file(path), str(path))
    inits = _graph(p).graph.initializer
    return {inits[e.index].name: (e.codec.name.lower(), e.length) for e in p.tensors}


def read_container_bytes(data: bytes, where: str = "<bytes>") -> onnx.ModelProto:
    """Like read_container, from the container's bytes; `where` names them in errors."""
    return _to_model(_parse(memoryview(data), where))


def load_for_ort(
    source: str | os.PathLike | bytes, where: str | None = None
) -> tuple[bytes, dict[str, np.ndarray]]:
    """(model bytes, arrays) for ONNX Runtime without building a proto of the big weights.

    `source` is a container file or a container's bytes (`where` names them in errors).
    Initializers of at least EXTERNAL_MIN_BYTES with a dtype ORT takes from numpy (bfloat16 and
    float8 as onnx's ml_dtypes arrays), which some node consumes, are left out of the model bytes
    (marked external) and returned as arrays; feed them to
    `SessionOptions.add_external_initializers` (`session_from_arrays` does) and keep them alive as
    long as the session. Initializers nothing uses are decoded (so a damaged one is still
    refused) and left out: ORT would drop them, after parsing a copy of each.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        p = _parse(memoryview(source), where or "<bytes>")
    else:
        p = _parse(_read_file(source), where or str(source))
    model = _graph(p)
    used = _consumed_names(model.graph) | {i.name for i in model.graph.input}
    arrays: dict[str, np.ndarray] = {}
    unused = []
    for e, t, flat in _decoded(p, model):
        clear_data(t)
        if t.name not in used:
            unused.append(e.index)
            continue
        dtype = _ort_dtype(t.data_type)
        if dtype is None or flat.nbytes < EXTERNAL_MIN_BYTES:
            t.raw_data = flat.tobytes()
            continue
        arrays[t.name] = flat.view(dtype).reshape(tuple(t.dims))
        t.data_location = TensorProto.EXTERNAL
        entry = t.external_data.add()
        entry.key, entry.value = "location", EXTERNAL_LOCATION
    for index in sorted(unused, reverse=True):
        del model.graph.initializer[index]
    return model.SerializeToString(), arrays


def ort_session(source: str | os.PathLike | bytes, sess_options=None, providers=None):
    """An onnxruntime.InferenceSession over a container (file or bytes), through load_for_ort's
    fast path (see session_from_arrays)."""
    return session_from_arrays(*load_for_ort(source), sess_options, providers)


def session_from_arrays(model_bytes: bytes, arrays: dict[str, np.ndarray], sess_options=None,
                        providers=None):
    """An onnxruntime.InferenceSession over load_for_ort's result.

    The arrays are registered on `sess_options` (pass a fresh one per session) and attached to
    the session (`_onnxcompress_arrays`, with their OrtValues) to live as long as it does.
    """
    import onnxruntime as ort

    so = sess_options or ort.SessionOptions()
    values = [_ort_value(ort, a) for a in arrays.values()]
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
        if p.graph.codec in (Codec.ZLIB, Codec.LZMA):
            data = inflate(p.graph.codec, data, graph_limit(len(data)))
        elif p.graph.codec != Codec.STORED:
            raise _fail(p.where, GRAPH_SECTION, f"codec {p.graph.codec.name} is not for graphs")
        model = onnx.ModelProto()
        model.ParseFromString(data)  # any bytes-like object: no copy of an inflated graph
    except (PayloadError, DecodeError, RuntimeError, ValueError) as e:
        raise _fail(p.where, GRAPH_SECTION, f"does not decode: {e}") from e
    except MemoryError as e:
        raise _fail(p.where, GRAPH_SECTION, "too large to decode in the memory available") from e
    n = len(model.graph.initializer)
    bad = [e.index for e in p.tensors if e.index >= n]
    if bad:
        raise _fail(p.where, TABLE_SECTION, f"initializer index {bad[0]} past the {n} in the graph")
    external = next(_external_tensors(model.graph), None)
    if external is not None:
        # the format holds every byte of a model: a reference to another file would make `run`
        # read, and `unpack` point to, a file the container's author chose
        raise _fail(
            p.where,
            tensor_section(external),
            "declares external data; a container holds all of its data, so it is refused",
        )
    return model


def _external_tensors(graph: onnx.GraphProto) -> Iterator[str]:
    """Names of the tensors anywhere in the graph (initializers, sparse initializers, Constant
    and other tensor attributes, subgraphs) that say their data lives in another file."""
    for t in graph.initializer:
        if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
            yield t.name
    for sp in graph.sparse_initializer:
        for t in (sp.values, sp.indices):
            if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
                yield t.name or sp.values.name
    for node in graph.node:
        for a in node.attribute:
            tensors = ([a.t] if a.HasField("t") else []) + list(a.tensors)
            if a.HasField("sparse_tensor"):
                tensors += [a.sparse_tensor.values, a.sparse_tensor.indices]
            for t in tensors:
                if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
                    yield t.name or f"{node.name}.{a.name}"
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _external_tensors(g)


def _declared(t: TensorProto, name: str, where: str) -> tuple[int, int | None]:
    """(bytes, element width or None) that the initializer's dims and type declare: the most its
    section may decode to, known before anything is allocated."""
    if any(d < 0 for d in t.dims):
        raise _fail(where, name, f"negative dims {list(t.dims)}")
    count = math.prod(t.dims)  # exact: an attacker's dims may overflow int64
    width = element_width(t.data_type)
    if t.data_type in PACKED_4BIT:
        want, width = (count + 1) // 2, None
    elif width is None or t.data_type == TensorProto.STRING:
        raise _fail(where, name, f"a tensor of type {_type_name(t.data_type)} has no data section")
    else:
        want = count * width
    memory = physical_memory()
    if memory is not None and want > memory:
        # dims alone could otherwise send a few hundred bytes of section into the OOM killer
        raise _fail(where, name, f"its dims {list(t.dims)} declare {want} bytes, more than this "
                                 f"machine's {memory} bytes of memory")
    return want, width if width in codecs.ELEMENT_SIZES else None


@lru_cache(maxsize=1)
def physical_memory() -> int | None:
    """Bytes of RAM of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _type_name(data_type: int) -> str:
    try:
        return TensorProto.DataType.Name(data_type)
    except ValueError:
        return f"#{data_type}"


def _decode_tensor(p: _Parsed, e: Entry, t: TensorProto) -> np.ndarray:
    name = tensor_section(t.name)
    data = _section(p, e, name)
    want, width = _declared(t, name, p.where)
    try:
        flat = codecs.decode(e.codec, data, want, width)
    except PayloadError as err:
        raise _fail(p.where, name, str(err)) from err
    except MemoryError as err:
        raise _fail(
            p.where, name, f"its dims {list(t.dims)} need {want} bytes, more than is available"
        ) from err
    if flat.nbytes != want:
        raise _fail(
            p.where,
            name,
            f"decodes to {flat.nbytes} bytes, dims {list(t.dims)} of "
            f"{_type_name(t.data_type)} need {want}",
        )
    return flat


def _to_model(p: _Parsed) -> onnx.ModelProto:
    model = _graph(p)
    for _, t, flat in _decoded(p, model):
        clear_data(t)
        t.raw_data = flat.tobytes()
    return model


def _decoded(p: _Parsed, model: onnx.ModelProto
             ) -> Iterator[tuple[Entry, TensorProto, np.ndarray]]:
    """Each tensor section with its initializer, decoded, in section order (so the first bad
    section is the one reported); up to DECODE_THREADS at once (ordered.py)."""
    inits = model.graph.initializer
    sections = ((e, inits[e.index]) for e in p.tensors)
    for (e, t), flat in in_order(sections, lambda et: _decode_tensor(p, *et), DECODE_THREADS):
        yield e, t, flat


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
# Types numpy lacks (onnx's ml_dtypes arrays), which ORT takes as the raw bits of the same width
_ORT_BITS = frozenset({TensorProto.BFLOAT16, TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ,
                       TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ})


def _ort_dtype(data_type: int) -> np.dtype | None:
    if data_type in _ORT_BITS:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))
    dtype = _ORT_DTYPES.get(data_type)
    return None if dtype is None else np.dtype(dtype).newbyteorder("<")


_NATIVE = frozenset(np.dtype(d).name for d in _ORT_DTYPES.values())


def _ort_value(ort, a: np.ndarray):
    """An OrtValue over `a`'s memory (types numpy lacks go as their bits)."""
    if a.dtype.name in _NATIVE:
        return ort.OrtValue.ortvalue_from_numpy(a)
    bits = a.view(f"<u{a.dtype.itemsize}")
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
        bits, onnx.helper.np_dtype_to_tensor_dtype(a.dtype)
    )
