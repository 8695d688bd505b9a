"""Move a model file's large initializers to an external-data file without parsing the model.

Parsing a 575 MB ONNX file in Python holds its bytes and the parsed message at once (1.2 GB),
and ONNX Runtime needs 2.5x the model to load it with inline weights but 1.7x with external
ones. `split_weights` walks the protobuf wire format instead (ModelProto.graph -> GraphProto
.initializer -> TensorProto.raw_data), copying each large raw_data payload to the data file in
chunks, so memory stays at a few MB whatever the model size. The result is exactly what
`onnx.save(..., save_as_external_data=True)` writes for those tensors: `location`, `offset` and
`length` entries and `data_location = EXTERNAL`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from .container.huffman import varint as _varint  # protobuf varints are LEB128 too
from .errors import BadInputError

# field numbers (onnx.proto)
MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 9, 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
EXTERNAL = 1
VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
CHUNK = 16 << 20


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def split_weights(src: str | os.PathLike, model_out: str | os.PathLike, data_name: str,
                  min_bytes: int = 1024) -> tuple[int, int]:
    """Write `src` to `model_out` with every initializer whose raw_data has at least `min_bytes`
    moved to `data_name` (beside model_out); return (tensors moved, tensors that were already
    external: their locations are relative to `src`'s folder). Typed-field data and subgraph
    initializers are copied as they are."""
    src, model_out = Path(src), Path(model_out)
    data_path = model_out.parent / data_name
    size = src.stat().st_size
    try:
        with open(src, "rb") as f, open(data_path, "wb") as data:
            moved = [0, 0]
            out = bytearray()
            for number, wtype, start, end in _fields(f, 0, size):
                if number == MODEL_GRAPH and wtype == LEN:
                    graph = _graph(f, start, end, data, data_name, min_bytes, moved)
                    out += _tag(MODEL_GRAPH, LEN) + _varint(len(graph)) + graph
                else:
                    out += _raw_field(f, number, wtype, start, end)
    except WireError as e:
        raise BadInputError(f"{src}: not an ONNX model (protobuf parse failed: {e}); "
                            "is the file truncated, or is it a container (.onnxc)?") from e
    model_out.write_bytes(bytes(out))
    return moved[0], moved[1]


def external_locations(path: str | os.PathLike) -> set[str]:
    """The `location` of every external initializer, read without loading any tensor data."""
    path = Path(path)
    found: set[str] = set()
    try:
        with open(path, "rb") as f:
            for number, wtype, start, end in _fields(f, 0, path.stat().st_size):
                if number != MODEL_GRAPH or wtype != LEN:
                    continue
                for n, w, s, e in _fields(f, start, end):
                    if n != GRAPH_INITIALIZER or w != LEN:
                        continue
                    for tn, tw, ts, te in list(_fields(f, s, e)):
                        if tn == TENSOR_EXTERNAL_DATA and tw == LEN:
                            entry = {k: v for k, _, v in _entry(f, ts, te)}
                            if entry.get(ENTRY_KEY) == b"location" and ENTRY_VALUE in entry:
                                found.add(entry[ENTRY_VALUE].decode())
    except WireError as e:
        raise BadInputError(f"{path}: not an ONNX model (protobuf parse failed: {e})") from e
    return found


def _entry(f: BinaryIO, start: int, end: int):
    for number, wtype, s, e in list(_fields(f, start, end)):
        if wtype == LEN:
            f.seek(s)
            yield number, wtype, _read(f, e - s)


def _graph(f: BinaryIO, start: int, end: int, data: BinaryIO, data_name: str, min_bytes: int,
           moved: list[int]) -> bytes:
    out = bytearray()
    for number, wtype, s, e in _fields(f, start, end):
        if number == GRAPH_INITIALIZER and wtype == LEN:
            t = _tensor(f, s, e, data, data_name, min_bytes, moved)
            out += _tag(GRAPH_INITIALIZER, LEN) + _varint(len(t)) + t
        else:
            out += _raw_field(f, number, wtype, s, e)
    return bytes(out)


def _tensor(f: BinaryIO, start: int, end: int, data: BinaryIO, data_name: str, min_bytes: int,
            moved: list[int]) -> bytes:
    fields = list(_fields(f, start, end))
    raw = [(s, e) for n, w, s, e in fields if n == TENSOR_RAW_DATA and w == LEN]
    if any(n == TENSOR_EXTERNAL_DATA for n, *_ in fields):
        moved[1] += 1
    if len(raw) != 1 or raw[0][1] - raw[0][0] < min_bytes or any(
            n in (TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION) for n, *_ in fields):
        f.seek(start)
        return _read(f, end - start)
    out = bytearray()
    for number, wtype, s, e in fields:
        if number != TENSOR_RAW_DATA:
            out += _raw_field(f, number, wtype, s, e)
    offset = data.tell()
    _copy(f, raw[0][0], raw[0][1] - raw[0][0], data)
    for key, value in (("location", data_name), ("offset", str(offset)),
                       ("length", str(raw[0][1] - raw[0][0]))):
        entry = _string(ENTRY_KEY, key) + _string(ENTRY_VALUE, value)
        out += _tag(TENSOR_EXTERNAL_DATA, LEN) + _varint(len(entry)) + entry
    out += _tag(TENSOR_DATA_LOCATION, VARINT) + _varint(EXTERNAL)
    moved[0] += 1
    return bytes(out)


def _fields(f: BinaryIO, start: int, end: int):
    """(field number, wire type, payload start, payload end) of each field in [start, end);
    for varint and fixed fields the "payload" is the value's bytes."""
    pos = start
    while pos < end:
        f.seek(pos)
        key, pos = _read_varint(f, pos, end)
        number, wtype = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wtype == VARINT:
            _, after = _read_varint(f, pos, end)
        elif wtype == FIXED64:
            after = pos + 8
        elif wtype == FIXED32:
            after = pos + 4
        elif wtype == LEN:
            n, pos = _read_varint(f, pos, end)
            after = pos + n
        else:
            raise WireError(f"unsupported wire type {wtype} at byte {pos}")
        if after > end:
            raise WireError(f"field {number} runs past the end of its message (byte {end})")
        yield number, wtype, pos, after
        pos = after


def _read_varint(f: BinaryIO, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError(f"bad varint at byte {pos}")
        b = f.read(1)
        if not b:
            raise WireError(f"file ends inside a varint at byte {pos}")
        value |= (b[0] & 0x7F) << shift
        shift += 7
        pos += 1
        if b[0] < 0x80:
            return value, pos


def _raw_field(f: BinaryIO, number: int, wtype: int, start: int, end: int) -> bytes:
    f.seek(start)
    body = _read(f, end - start)
    return _tag(number, wtype) + (_varint(len(body)) if wtype == LEN else b"") + body


def _read(f: BinaryIO, n: int) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise WireError("file ends early")
    return b


def _copy(f: BinaryIO, start: int, n: int, out: BinaryIO) -> None:
    f.seek(start)
    while n:
        chunk = _read(f, min(n, CHUNK))
        out.write(chunk)
        n -= len(chunk)


def _tag(number: int, wtype: int) -> bytes:
    return _varint(number << 3 | wtype)


def _string(number: int, text: str) -> bytes:
    b = text.encode()
    return _tag(number, LEN) + _varint(len(b)) + b
