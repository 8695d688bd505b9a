"""TensorProto helpers shared by the container writer and reader: data bytes and sizes."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import BadInputError

DATA_FIELDS = ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data")
PACKED_4BIT = frozenset(
    getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(TensorProto, n)
)


# External-data location of an initializer whose data is held beside the proto as a numpy array
# (model.normalize_file, graph.to_light_model): one copy of a large model in memory, not two.
IN_MEMORY = "onnxcompress:in-memory"


def mark_in_memory(t: TensorProto) -> None:
    """Drop `t`'s data and mark it IN_MEMORY."""
    clear_data(t)
    del t.external_data[:]
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", IN_MEMORY


def is_in_memory(t: TensorProto) -> bool:
    return t.data_location == TensorProto.EXTERNAL and any(
        kv.key == "location" and kv.value == IN_MEMORY for kv in t.external_data)


def unmark(t: TensorProto) -> None:
    """An IN_MEMORY initializer as a plain one without data (dims and type kept)."""
    del t.external_data[:]
    t.ClearField("data_location")


def clear_data(t: TensorProto) -> None:
    """Drop every numeric data field, keeping name, type, dims and metadata."""
    for f in DATA_FIELDS:
        t.ClearField(f)


def stored_apart(t: TensorProto) -> bool:
    """Whether `tensor_bytes(t)` returns bytes (its data gets a section of its own), decided
    without copying the data."""
    if t.data_location == TensorProto.EXTERNAL:
        return True  # tensor_bytes raises the clear error
    if t.data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
        return False
    return t.HasField("raw_data") or t.data_type not in PACKED_4BIT


def tensor_bytes(t: TensorProto) -> bytes | None:
    """The tensor's data as ONNX raw_data bytes (little-endian), or None to keep it inline.

    Raises BadInputError for external data that was not loaded and for data whose size does not
    match the dims, so that no container is written that could not be read back.
    """
    if t.data_location == TensorProto.EXTERNAL:
        raise BadInputError(
            f"initializer '{t.name}' has external data that was not loaded; "
            "load the model with load_external_data=True first"
        )
    if t.data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
        return None
    if t.HasField("raw_data"):
        raw = t.raw_data
    elif t.data_type in PACKED_4BIT:
        return None
    else:
        arr = numpy_helper.to_array(t)
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    want = expected_nbytes(t)
    if want is not None and len(raw) != want:
        raise BadInputError(
            f"initializer '{t.name}' holds {len(raw)} bytes of data, but dims {list(t.dims)} of "
            f"{TensorProto.DataType.Name(t.data_type)} need {want}"
        )
    return raw


def expected_nbytes(t: TensorProto) -> int | None:
    """raw_data size the dims and data type call for, or None when unknown."""
    n = math.prod(t.dims)  # exact (np.prod in int64 would wrap on absurd dims)
    if t.data_type in PACKED_4BIT:
        return (n + 1) // 2
    width = element_width(t.data_type)
    return None if width is None else n * width


def element_width(data_type: int) -> int | None:
    """Bytes per element of an ONNX data type, or None when numpy does not know it."""
    if data_type in PACKED_4BIT:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
