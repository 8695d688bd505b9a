"""Normalization: the model every pass sees.

After `normalize`, BatchNormalization is folded into the Conv/Gemm before it, constants are
folded, every prunable weight is an initializer, no initializer is listed as a graph input, the
opset is at least MIN_OPSET and every node has a unique name. Large models are normalized from
their file without ever holding the whole model as one proto (`normalize_file`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .container.protos import mark_in_memory
from .errors import BadInputError, OnnxCompressError, UnsupportedModelError
from .graph.topology import unique_names
from .io import check_path, first_line, in_memory_tensor, parse_model, with_arrays
from .wire import split_weights

log = logging.getLogger(__name__)

MIN_OPSET = 13  # Gather/Reshape/Squeeze forms the passes emit assume opset >= 13


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy ready for the passes; the input proto is not modified.

    1. initializers that are also graph inputs (legacy exporters) stop being inputs, so they
       count as constants;
    2. ONNX Runtime's basic offline optimizer folds constants (Constant, ConstantOfShape …) into
       initializers and BatchNormalization into the Conv before it; it emits standard ONNX only;
    3. old opsets are upgraded to MIN_OPSET;
    4. BatchNormalization left after a Gemm/MatMul is folded by us;
    5. a weight the optimizer stored twice (a tied embedding and its transpose) is one again.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # saving with external data rewrites the proto it is given
    with tempfile.TemporaryDirectory(prefix="onnxcompress-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(copy, str(path), save_as_external_data=True, location="model.data",
                  size_threshold=1024)
        del copy
        light, arrays = normalize_file(path, check=False)
    return with_arrays(light, arrays)


def normalize_file(path: str | os.PathLike, *, check: bool = True
                   ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """`normalize` for a model file, without ever holding the whole model as one proto.

    Returns the normalized graph whose large initializers carry no data (their external-data
    location is IN_MEMORY) and those initializers as numpy arrays by name: at VGG-19 scale a
    proto of the weights beside their numpy arrays would double the memory, and protobuf frees a
    message's bytes only with the whole message. `to_graph(model, arrays)` joins them.
    With `check`, the file first goes through the full onnx.checker (as in load_model).
    """
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise BadInputError(f"{path}: not readable (permission denied)")
    try:
        return _normalize_file(path, check)
    except OSError as e:  # the temporary copies of the weights (2x the model) did not fit
        raise OnnxCompressError(
            f"{path}: cannot write the temporary files normalization needs in "
            f"{tempfile.gettempdir()} ({e}); point TMPDIR at a folder with free space for twice "
            "the model's weights") from e


def _normalize_file(path: Path, check: bool) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    with tempfile.TemporaryDirectory(prefix="onnxcompress-") as tmp:
        tmp = Path(tmp)
        # weights to a data file first, streamed: the checker and ONNX Runtime then load the
        # model at a fraction of the memory an inline file costs them (wire.py)
        src = tmp / "in.onnx"
        if split_weights(path, src, "in.data")[1]:
            src = path  # it keeps (some) weights apart already, relative to its own folder
        head = parse_model(src, load_external_data=False, where=path)
        if check:
            check_path(str(src), where=str(path))
        _refuse_low_precision(head, path)
        meta = (head.producer_name, head.producer_version, head.ir_version)
        if _initializer_inputs(head):
            head = _drop_initializer_inputs(head)
            if src == path:  # its data files sit beside it: take them along into tmp
                full = _drop_initializer_inputs(parse_model(src, load_external_data=True,
                                                            where=path))
                onnx.save(full, str(tmp / "in.onnx"), save_as_external_data=True,
                          location="in.data", size_threshold=1024)
                del full
            else:  # weights-free: its tensors point at in.data, which stays beside it
                onnx.save(head, str(tmp / "in.onnx"))
            src = tmp / "in.onnx"
        del head
        light = _ort_basic_optimize(src, tmp, meta, where=path)
        arrays = _take_external_data(light, tmp)
    light = _upgrade_opset(light)
    fold_batchnorm_after_gemm(light, arrays)
    retie_transposed(light, arrays)
    for node, name in zip(light.graph.node,
                          unique_names([(n.name, n.op_type) for n in light.graph.node])):
        node.name = name
    for node in light.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedModelError(
                f"normalization produced non-standard op {node.domain}::{node.op_type} "
                f"('{node.name}'); please report this model")
    return light, arrays


def _take_external_data(model: onnx.ModelProto, base: Path) -> dict[str, np.ndarray]:
    """Read every external initializer of `model` (files under `base`) into a numpy array and
    mark it IN_MEMORY."""
    arrays = {}
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {kv.key: kv.value for kv in t.external_data}
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
        count = int(np.prod(t.dims, dtype=np.int64))
        arr = np.fromfile(base / info["location"], dtype=dtype.newbyteorder("<"), count=count,
                          offset=int(info.get("offset", 0)))
        if arr.size != count:
            raise UnsupportedModelError(f"initializer '{t.name}': ONNX Runtime's optimized "
                                        f"model holds {arr.size} of its {count} values")
        arrays[t.name] = arr.astype(dtype, copy=False).reshape(tuple(t.dims))
        mark_in_memory(t)
    return arrays


def _initializer_inputs(model: onnx.ModelProto) -> bool:
    init_names = {t.name for t in model.graph.initializer}
    return any(i.name in init_names for i in model.graph.input)


def _drop_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    init_names = {t.name for t in model.graph.initializer}
    if not _initializer_inputs(model):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = max(m.ir_version, 4)  # IR >= 4 lets initializers stay out of the inputs
    keep = [i for i in m.graph.input if i.name not in init_names]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    return m


def _upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or version >= MIN_OPSET:
        return model
    # The converter copies the whole proto several times; it never reads weight data, so hand
    # it the graph with the large tensors set aside and put them back afterwards.
    light, set_aside = _without_large_data(model)
    try:
        up = onnx.version_converter.convert_version(light, MIN_OPSET)
    except Exception as e:  # the converter raises bare RuntimeErrors
        raise UnsupportedModelError(
            f"cannot upgrade the model from opset {version} to {MIN_OPSET}: {e}") from e
    for t in up.graph.initializer:
        if t.name in set_aside and t.data_location == onnx.TensorProto.EXTERNAL:
            t.raw_data = set_aside[t.name]
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    log.info("upgraded opset %d -> %d", version, MIN_OPSET)
    return up


def _without_large_data(model: onnx.ModelProto, min_bytes: int = 4096
                        ) -> tuple[onnx.ModelProto, dict[str, bytes]]:
    """A copy of `model` whose large raw tensors are marked external, and their bytes by name."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    set_aside: dict[str, bytes] = {}
    for t in light.graph.initializer:
        if t.HasField("raw_data") and len(t.raw_data) >= min_bytes:
            set_aside[t.name] = t.raw_data
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            entry = t.external_data.add()
            entry.key, entry.value = "location", "set-aside"
    return light, set_aside


def _ort_basic_optimize(src: Path, tmp: Path, meta: tuple, where: Path) -> onnx.ModelProto:
    """ONNX Runtime's basic offline optimization of the model file `src`; the result is loaded
    without its large initializers (they stay in tmp/out.data)."""
    import onnxruntime as ort

    dst = tmp / "out.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.log_severity_level = 3
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                "out.data")
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        # its message names the working copy: say the user's file instead
        message = first_line(e).replace(str(src), str(where)).replace(str(tmp), str(where.parent))
        raise UnsupportedModelError(f"{where}: ONNX Runtime cannot load this model: {message}") \
            from e
    out = onnx.load(str(dst), load_external_data=False)
    # ORT stamps its own producer; keep the user's metadata
    out.producer_name, out.producer_version = meta[0], meta[1]
    out.ir_version = max(out.ir_version, meta[2])
    used = {n.domain or "" for n in out.graph.node} | {""}
    keep = [o for o in out.opset_import if (o.domain or "") in used]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def fold_batchnorm_after_gemm(model: onnx.ModelProto,
                              arrays: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Fold BatchNormalization(Gemm(x, W, b)) into the Gemm (transB-aware), in place.

    ORT's basic level folds Conv+BN but leaves BN after a fully connected layer. Initializers
    named in `arrays` (see normalize_file) are read from there, and new ones go there too.
    """
    arrays = {} if arrays is None else arrays

    def value(name: str) -> np.ndarray:
        return arrays[name] if name in arrays else numpy_helper.to_array(inits[name])

    def initializer(name: str, arr: np.ndarray) -> onnx.TensorProto:
        if name in arrays or arr.nbytes >= 1024:
            arrays[name] = arr
            return in_memory_tensor(name, arr)
        return numpy_helper.from_array(arr, name)

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}
    drop = []
    for bn in g.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        gemm = producer.get(bn.input[0])
        if gemm is None or gemm.op_type != "Gemm" or len(consumers.get(gemm.output[0], [])) != 1:
            continue
        if any(a.name in ("alpha", "beta") and a.f != 1.0 for a in gemm.attribute):
            continue
        if not all(x in inits for x in bn.input[1:5]) or gemm.input[1] not in inits:
            continue
        scale, bias, mean, var = (value(x).astype(np.float64) for x in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        k = scale / np.sqrt(var + eps)
        w = value(gemm.input[1]).astype(np.float64)
        trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
        w = w * k[:, None] if trans_b else w * k[None, :]
        b = (value(gemm.input[2]).astype(np.float64)
             if len(gemm.input) > 2 and gemm.input[2] in inits else np.zeros_like(k))
        b = (b - mean) * k + bias
        wt = initializer(gemm.input[1] + "_bnfold", w.astype(np.float32))
        bt = initializer(gemm.output[0] + "_bias_bnfold", b.astype(np.float32))
        g.initializer.extend([wt, bt])
        del gemm.input[1:]
        gemm.input.extend([wt.name, bt.name])
        gemm.output[0] = bn.output[0]
        drop.append(bn)
    for bn in drop:
        g.node.remove(bn)
    if drop:
        used = {i for n in g.node for i in n.input}
        keep = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(keep)
        for name in set(arrays) - used:
            del arrays[name]
    return model


LOW_PRECISION = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}


def _refuse_low_precision(model: onnx.ModelProto, path: Path) -> None:
    """The passes work on float32 (and float64) weights; ONNX Runtime's optimizer would wrap a
    half-precision model in Casts that hide every weight, so say so plainly instead."""
    half = sorted({LOW_PRECISION[t.data_type] for t in model.graph.initializer
                   if t.data_type in LOW_PRECISION and len(t.dims) >= 2})
    if half:
        raise UnsupportedModelError(
            f"{path}: its weights are {' and '.join(half)}; onnxcompress compresses float32 "
            "models: export the model in float32 (its pruned and clustered weights then pack "
            "smaller than half precision does)")


def retie_transposed(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> int:
    """Tied weights (an embedding table E in a Gather and E^T in a MatMul): ONNX Runtime's
    constant folding stores E^T as a second initializer. Give it back as Transpose(E), so the
    weight is stored, compressed and counted once. Returns how many were re-tied."""
    g = model.graph
    value = lambda t: arrays[t.name] if t.name in arrays else numpy_helper.to_array(t)
    by_shape: dict[tuple, list[onnx.TensorProto]] = {}
    for t in g.initializer:
        big = len(t.dims) == 2 and t.dims[0] * t.dims[1] >= 1024
        if big and t.data_type == onnx.TensorProto.FLOAT:
            by_shape.setdefault(tuple(t.dims), []).append(t)
    gathered = {n.input[0] for n in g.node if n.op_type == "Gather"}
    replaced: dict[str, str] = {}
    for shape, tables in by_shape.items():
        for a in tables:
            if a.name not in gathered or shape[0] == shape[1]:
                continue
            for b in by_shape.get(shape[::-1], []):
                if b.name not in replaced and np.array_equal(value(a).T, value(b)):
                    replaced[b.name] = a.name
    if not replaced:
        return 0
    for b, a in replaced.items():
        g.node.insert(0, onnx.helper.make_node("Transpose", [a], [b], name=f"{b}_tied",
                                               perm=[1, 0]))
    keep = [t for t in g.initializer if t.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(keep)
    for name in replaced:
        arrays.pop(name, None)
    log.info("re-tied %d transposed copies of embedding tables", len(replaced))
    return len(replaced)
