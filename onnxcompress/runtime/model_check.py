"""Refuse a model whose custom-op nodes would fail, before ONNX Runtime sees it.

XnorConv's attributes reach the op only when a node runs, and a failing op can stop a run but not
the session's creation; checking each node here names the node and the file at load time, and
the op's own checks (``ops.decode_op_attrs``) stay as the second line.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from google.protobuf.message import DecodeError

from .. import ops
from ..errors import BadInputError

_XNOR_INPUTS = 4  # X, W_bits, alpha, B: these Python ops have no optional inputs
_INT_LIST = {ops.ATTR_KERNEL_SHAPE, ops.ATTR_STRIDES, ops.ATTR_PADS, ops.ATTR_DILATIONS}


def parse_model(data: bytes, where: str) -> onnx.ModelProto:
    """The ModelProto in `data`, or a BadInputError naming `where`."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise BadInputError(f"{where}: not an ONNX model (the protobuf does not parse: {e})") from e
    return model


def check_custom_nodes(model: onnx.ModelProto, where: str) -> None:
    """Raise BadInputError for the first XnorConv node (in any graph) the op would refuse."""
    for i, node in enumerate(_nodes(model.graph)):
        if node.domain == ops.DOMAIN and node.op_type == ops.XNOR_CONV:
            problem = xnor_node_problem(node)
            if problem:
                label = f"'{node.name}'" if node.name else f"#{i} (unnamed)"
                problem = problem.removeprefix(f"{ops.XNOR_CONV}: ")
                raise BadInputError(f"{where}: {ops.XNOR_CONV} node {label}: {problem}")


def xnor_node_problem(node: onnx.NodeProto) -> str | None:
    """Why the XnorConv op would refuse this node, or None."""
    if len(node.input) != _XNOR_INPUTS or not all(node.input):
        return (f"needs {_XNOR_INPUTS} inputs (X, W_bits, alpha, B), got "
                f"{list(node.input)[:8]}")
    attrs = {a.name: a for a in node.attribute}
    text = {}
    for name in (ops.ATTR_MODE, ops.CONV_ATTRS):
        a = attrs.get(name)
        if a is None or a.type != onnx.AttributeProto.STRING:
            return f"needs the string attribute '{name}'"
        try:
            text[name] = a.s.decode("utf-8")
        except UnicodeDecodeError:
            return f"attribute '{name}' is not UTF-8 text"
    try:
        geo = ops.decode_op_attrs(text[ops.ATTR_MODE], text[ops.CONV_ATTRS])
    except ValueError as e:
        return str(e)
    return _mirror_problem(attrs, geo)


def _mirror_problem(attrs: dict[str, onnx.AttributeProto], geo: dict[str, object]) -> str | None:
    """The integer-list attributes, when present, must say what conv_attrs says (the op reads
    only conv_attrs; a disagreement means the node was edited by hand or damaged)."""
    for name in sorted(_INT_LIST | {ops.ATTR_GROUP}):
        a = attrs.get(name)
        if a is None:
            continue
        value = a.i if name == ops.ATTR_GROUP else tuple(a.ints)
        if value != geo[name]:
            return (f"attribute {name} = {value!r} disagrees with {ops.CONV_ATTRS}, "
                    f"which says {geo[name]!r}")
    return None


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `graph` and of its subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for a in node.attribute:
            if a.HasField("g"):
                yield from _nodes(a.g)
            for g in a.graphs:
                yield from _nodes(g)
