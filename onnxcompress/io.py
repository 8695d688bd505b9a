"""Model files in and out: load and check, save atomically, containers, sizes.

The one module that reads and writes models. Writing goes through `files.atomic_output` (the
single atomic writer), so no output is ever half-written; `write_output` picks the container
for a `.onnxc` path and plain ONNX otherwise. Sizes count external data files too.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .container import is_container, read_container, write_container
from .container.protos import mark_in_memory
from .container.writer import ContainerReport
from .errors import BadInputError
from .files import atomic_output
from .graph.convert import with_arrays
from .wire import external_locations

TWO_GB = 2**31


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Read an ONNX file (external data included), check it fully and infer shapes."""
    model = parse_model(Path(path), load_external_data=True)
    if check:
        check_file(path)
    return model


def check_file(path: str | os.PathLike) -> None:
    """Full onnx.checker pass on a file (the checker reads it itself: no in-memory copy of a
    large model is serialized for it); raises BadInputError with the checker's words."""
    check_path(str(path), where=str(path))


def parse_model(path: Path, *, load_external_data: bool, where: str | os.PathLike | None = None
                ) -> onnx.ModelProto:
    """The model in `path`; errors name `where` (the user's file when `path` is a working copy)."""
    where = where or path
    if not path.is_file():
        raise BadInputError(f"{where}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except DecodeError as e:
        raise BadInputError(
            f"{where}: not an ONNX model (protobuf parse failed: {e}); "
            "is the file truncated, or is it a container (.onnxc) that needs 'unpack'?"
        ) from e
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise BadInputError(f"{where}: cannot read the model or its external data: "
                            f"{first_line(e)} (external data must be a file beside the model "
                            "or in a folder below it)") from e
    if not model.graph.node:
        raise BadInputError(f"{where}: not an ONNX model (no graph nodes found); is the file truncated?")
    if not model.graph.output:
        raise BadInputError(f"{where}: the graph has no outputs, so there is nothing to compute or "
                            "compare; list the outputs the model should produce")
    return model


def first_line(e: BaseException) -> str:
    """The first line of an error's message (ONNX and ONNX Runtime errors run for lines)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_path(path: str, where: str) -> None:
    """Full onnx.checker pass (with shape inference) on a file; BadInputError with its words."""
    try:
        onnx.checker.check_model(path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as e:
        raise BadInputError(f"{where}: invalid ONNX model: {first_line(e)}") from e


def load_any(path: str | os.PathLike) -> onnx.ModelProto:
    """A plain ONNX model from a .onnx file or a container."""
    return read_container(path) if Path(path).is_file() and is_container(path) else load_model(path)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               external: bool | None = None) -> Path:
    """Write `model` atomically. Models over 2 GB are written with their tensors in one external
    data file beside the output (`<name>.data`); `external=True` forces that layout."""
    path = Path(path)
    if external is None:
        external = not _all_data_inline(model) or model.ByteSize() >= TWO_GB
    if not external:
        with atomic_output(path) as tmp:
            onnx.save(model, str(tmp))
        return path
    data_name = path.name + ".data"
    # the data file lands first: a model file never points at a missing one
    with atomic_output(path) as tmp, atomic_output(path.parent / data_name) as tmp_data:
        onnx.save(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=tmp_data.name, size_threshold=1024)
        _rename_external_location(tmp, tmp_data.name, data_name)
    return path


def _all_data_inline(model: onnx.ModelProto) -> bool:
    return all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def _rename_external_location(model_path: Path, old: str, new: str) -> None:
    """Point the saved model's external-data entries at the final data file name."""
    m = onnx.load(str(model_path), load_external_data=False)
    for t in m.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location" and kv.value == old:
                kv.value = new
    onnx.save(m, str(model_path))


def in_memory_tensor(name: str, arr: np.ndarray) -> onnx.TensorProto:
    """An initializer with `arr`'s type and shape whose data is held beside the proto."""
    t = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(arr.dtype),
                         dims=list(arr.shape))
    mark_in_memory(t)
    return t


def write_output(model: onnx.ModelProto, path: str | os.PathLike,
                 arrays: dict[str, np.ndarray] | None = None) -> ContainerReport | None:
    """Write ONNX or, for a .onnxc path, a container; return the container report (or None).

    `arrays` holds the data of the model's IN_MEMORY initializers (graph.to_light_model)."""
    path = Path(path)
    if path.suffix == ".onnxc":
        return write_container(model, path, arrays=arrays)
    save_model(with_arrays(model, arrays) if arrays else model, path)
    return None


def file_size(path: str | os.PathLike) -> int:
    """Bytes of a model file plus its external data files, if any."""
    path = Path(path)
    size = path.stat().st_size
    if not is_container(path):  # the locations are read without parsing the (maybe GB) model
        size += sum((path.parent / loc).stat().st_size for loc in external_locations(path))
    return size
