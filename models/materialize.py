"""Materialize the legacy ImageNet topologies shipped in the onnx wheel with full-size weights.

The onnx package ships "light" copies of classic model-zoo networks
(`onnx/backend/test/data/light/light_*.onnx`): the real graphs (opset 9, IR 3), but most weights
replaced by `ConstantOfShape(shape)` nodes filled with 0.02. This script swaps every such node
for a seeded random initializer of the same shape, named as the node's output, and keeps
everything else: opset, node order, the remaining (real) initializers and the legacy habit of
listing every initializer as a graph input.

    python models/materialize.py --out /tmp/zoo vgg19 alexnet resnet50

Values by role (what consumes the tensor, looking through Unsqueeze/Reshape):
  Conv/Gemm weight  He-normal, std = sqrt(2 / fan_in)
  Conv/Gemm bias    N(0, 0.01²)
  BN scale, Mul     U(0.9, 1.1)        BN mean   N(0, 0.01²)
  BN bias, Add/Sum  N(0, 0.01²)        BN var    U(0.9, 1.1)
The outputs are random (untrained), but finite, and the file sizes are the real ones
(VGG-19: about 143.7 M parameters, 575 MB).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

LIGHT = {
    "vgg19": "light_vgg19.onnx",
    "alexnet": "light_bvlc_alexnet.onnx",
    "resnet50": "light_resnet50.onnx",
    "squeezenet": "light_squeezenet.onnx",
    "densenet121": "light_densenet121.onnx",
    "inception_v1": "light_inception_v1.onnx",
    "shufflenet": "light_shufflenet.onnx",
    "zfnet512": "light_zfnet512.onnx",
}
_PASS_THROUGH = {"Unsqueeze", "Reshape", "Identity"}
_ROLES = {
    ("Conv", 1): "weight", ("Gemm", 1): "weight",
    ("Conv", 2): "bias", ("Gemm", 2): "bias",
    ("BatchNormalization", 1): "scale", ("BatchNormalization", 2): "bias",
    ("BatchNormalization", 3): "mean", ("BatchNormalization", 4): "var",
}  # fmt: skip
_ELEMENTWISE = {"Mul": "scale", "Add": "bias", "Sum": "bias"}


def light_dir() -> Path:
    """Where the onnx wheel keeps the light models."""
    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"


def consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """Tensor name → the (node, input index) pairs that read it."""
    table: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            table.setdefault(name, []).append((node, i))
    return table


def role_of(
    name: str, uses: dict[str, list[tuple[onnx.NodeProto, int]]]
) -> tuple[str, onnx.NodeProto]:
    """The role of tensor `name` ('weight', 'bias', 'scale', 'mean', 'var') and its consumer."""
    readers = uses.get(name, [])
    if not readers:
        raise ValueError(f"Expected a consumer for ConstantOfShape output '{name}', found none")
    node, index = readers[0]
    if node.op_type in _PASS_THROUGH and index == 0:
        return role_of(node.output[0], uses)
    if (node.op_type, index) in _ROLES:
        return _ROLES[(node.op_type, index)], node
    if node.op_type in _ELEMENTWISE:
        return _ELEMENTWISE[node.op_type], node
    raise ValueError(
        f"Expected '{name}' to feed Conv, Gemm, BatchNormalization, Mul or Add, "
        f"got input {index} of {node.op_type} '{node.name or node.output[0]}'"
    )


def fan_in(shape: tuple[int, ...], consumer: onnx.NodeProto) -> int:
    """Inputs per output unit of a Conv (C/group·kh·kw) or Gemm (honouring transB) weight."""
    if consumer.op_type == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return shape[1] if trans_b else shape[0]
    return int(np.prod(shape[1:]))


def synth(
    shape: tuple[int, ...], role: str, consumer: onnx.NodeProto, rng: np.random.Generator
) -> np.ndarray:
    """Seeded float32 values for one tensor of the given role."""
    if role == "weight":
        std = np.sqrt(2.0 / fan_in(shape, consumer))
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    if role in ("scale", "var"):
        return rng.uniform(0.9, 1.1, size=shape).astype(np.float32)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01)


def materialize(model: onnx.ModelProto, seed: int) -> onnx.ModelProto:
    """Replace each ConstantOfShape(initializer) by a seeded random initializer, in place."""
    graph = model.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in graph.initializer}
    uses = consumers(graph)
    replaced: dict[str, list[onnx.ValueInfoProto]] = {}  # shape tensor → the weights it sized
    for node in [n for n in graph.node if n.op_type == "ConstantOfShape" and n.input[0] in inits]:
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
        role, consumer = role_of(node.output[0], uses)
        values = synth(shape, role, consumer, rng)
        graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
        del values
        info = helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, shape)
        replaced.setdefault(node.input[0], []).append(info)
        graph.node.remove(node)
    _drop_unused_shapes(graph, replaced)
    return model


def _drop_unused_shapes(
    graph: onnx.GraphProto, replaced: dict[str, list[onnx.ValueInfoProto]]
) -> None:
    """Remove the shape initializers no node reads any more, and list the new weights as graph
    inputs, each in the slot of the shape input it replaces (so the legacy order is kept)."""
    still_read = {name for node in graph.node for name in node.input}
    dead = {name for name in replaced if name not in still_read}
    kept = [t for t in graph.initializer if t.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    inputs, placed = [], set()
    for value in graph.input:
        if value.name in dead:
            inputs += replaced[value.name]
            placed.add(value.name)
        else:
            inputs.append(value)
    inputs += [info for name, infos in replaced.items() if name not in placed for info in infos]
    del graph.input[:]
    graph.input.extend(inputs)


def run_check(path: Path, seed: int) -> tuple[str, tuple[int, ...], float]:
    """Run ONNX Runtime once on a seeded input of the declared shape; returns the first output's
    name, shape and max |value|, raising if any value is not finite."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feeds = {i.name: rng.standard_normal(i.shape, dtype=np.float32) for i in sess.get_inputs()}
    out = sess.run(None, feeds)[0]
    if not np.isfinite(out).all():
        raise ValueError(f"{path}: output '{sess.get_outputs()[0].name}' has non-finite values")
    return sess.get_outputs()[0].name, out.shape, float(np.abs(out).max())


def count_parameters(model: onnx.ModelProto) -> int:
    """Number of float initializer elements."""
    return sum(
        int(np.prod(t.dims, dtype=np.int64))
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT
    )


def write_one(name: str, out: Path, seed: int, check: bool) -> Path:
    """Materialize one light model to `out/<name>.onnx`, check it and report."""
    start = time.perf_counter()
    model = materialize(onnx.load(str(light_dir() / LIGHT[name])), seed)
    onnx.checker.check_model(model)
    params = count_parameters(model)
    path = out / f"{name}.onnx"
    onnx.save(model, str(path))
    del model
    line = f"{path}: {params:,} parameters, {path.stat().st_size:,} bytes"
    if check:
        output, shape, peak = run_check(path, seed)
        line += f"; ONNX Runtime ran it: {output} {shape}, max |y| {peak:.3g}"
    print(f"{line} ({time.perf_counter() - start:.1f} s)", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"any of {', '.join(LIGHT)} (default: all)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime run")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in LIGHT]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; expected any of {', '.join(LIGHT)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(LIGHT):
        write_one(name, args.out, args.seed, not args.no_check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
