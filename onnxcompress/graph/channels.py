"""Channel groups: the output channels that structured pruning must cut together.

Removing output channel c of a Conv (a filter, SSL: Wen et al. 2016) or unit c of a Gemm also
removes position c of every tensor that channel flows into, up to the layers that read it:

- elementwise ops, activations, pooling and Dropout carry the channel unchanged;
- BatchNormalization, PRelu, a per-channel constant in Add/Mul/…, a depthwise Conv and the
  producer's own bias hold one value per channel: they are *followers*, sliced with it;
- an elementwise op with two channel-carrying inputs (a residual `Add`, the gate `Mul` of a
  squeeze-excitation block) ties their producers: their channels are one group, cut alike;
- `Concat` on the channel axis places each input's channels at an offset of its output;
- `Flatten` (or the equivalent Reshape) turns channel c of (C, H, W) into the block of H*W
  inputs [c*H*W, (c+1)*H*W) of the next Gemm;
- a Conv (group 1), Gemm or MatMul reading the channels is a *consumer*: its input columns go.

A group is cuttable only if every path ends in consumers; otherwise `blocked` says why (it
reaches a graph output, an op that mixes channels such as LRN or a Reshape to attention heads,
a grouped convolution …). `channel_groups` returns the plan as data; nothing is changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .cost import infer_shapes
from .topology import fresh_name
from .weights import weight_of

CARRY_OPS = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Erf", "Gelu", "Identity", "Dropout", "Cast", "Neg", "Abs", "Exp", "Log", "Sqrt", "Sign",
    "Softplus", "Mish", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "LpPool", "Resize", "Upsample",
})
JOIN_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "PRelu"})


@dataclass(frozen=True)
class ChannelUse:
    """Where a group's channels sit in one input of one node: positions
    offset + c * block … offset + (c + 1) * block - 1 along `axis` for channel c."""

    node: gs.Node
    input: int
    offset: int = 0
    block: int = 1
    axis: int = 1

    def __repr__(self) -> str:
        return (f"{self.node.op} '{self.node.name}' input {self.input} "
                f"(offset {self.offset}, block {self.block}, axis {self.axis})")


@dataclass
class ChannelGroup:
    size: int  # channels in the group
    producers: list[gs.Node] = field(default_factory=list)  # layers whose outputs they are
    consumers: list[ChannelUse] = field(default_factory=list)  # layers reading them
    followers: list[ChannelUse] = field(default_factory=list)  # per-channel values on the way
    blocked: str = ""  # why the group cannot be cut; "" if it can

    @property
    def cuttable(self) -> bool:
        return not self.blocked

    def describe(self) -> str:
        head = f"{self.size} channels of {', '.join(p.name for p in self.producers)}"
        if self.blocked:
            return f"{head}: not cuttable ({self.blocked})"
        return (f"{head} -> {', '.join(c.node.name for c in self.consumers)}"
                + (f"; with {', '.join(f.node.name for f in self.followers)}"
                   if self.followers else ""))


@dataclass(frozen=True)
class _Mark:
    """A source's channels in a tensor: source id, offset, block and axis (non-negative)."""

    source: int
    offset: int
    block: int
    axis: int


class _Groups:
    """Union-find over sources, each root holding its group's facts."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.groups: list[ChannelGroup] = []

    def add(self, producer: gs.Node, size: int) -> int:
        self.parent.append(len(self.parent))
        self.groups.append(ChannelGroup(size, producers=[producer]))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def get(self, i: int) -> ChannelGroup:
        return self.groups[self.find(i)]

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ga, gb = self.groups[ra], self.groups[rb]
        self.parent[rb] = ra
        if ga.size != gb.size:
            ga.blocked = ga.blocked or f"joins groups of {ga.size} and {gb.size} channels"
        ga.producers += gb.producers
        ga.consumers += gb.consumers
        ga.followers += gb.followers
        ga.blocked = ga.blocked or gb.blocked

    def block(self, i: int, why: str) -> None:
        g = self.get(i)
        g.blocked = g.blocked or why

    def roots(self) -> list[ChannelGroup]:
        return [self.groups[i] for i in range(len(self.parent)) if self.find(i) == i]


def channel_groups(graph: gs.Graph, dims: Mapping[str, int] | None = None
                   ) -> list[ChannelGroup]:
    """Every group of output channels of the graph's Conv/Gemm/MatMul layers (see the module
    docstring), in the order of their first producer."""
    shapes = infer_shapes(graph, dims)
    groups = _Groups()
    marks: dict[str, list[_Mark]] = {}
    outputs = {t.name for t in graph.outputs}
    for node in graph.nodes:
        source = _source(node, shapes)
        if source is not None:
            size, axis = source
            sid = groups.add(node, size)
            _bias_follower(node, groups.get(sid), axis)
            marks.setdefault(node.outputs[0].name, []).append(_Mark(sid, 0, 1, axis))
        for i, t in enumerate(node.inputs):
            for m in marks.get(t.name, []) if t is not None else []:
                _visit(node, i, m, marks, groups, shapes)
    for name, ms in marks.items():
        if name in outputs:
            for m in ms:
                groups.block(m.source, f"reaches the graph output '{name}'")
    return groups.roots()


def _source(node: gs.Node, shapes: Mapping[str, Sequence[int]]) -> tuple[int, int] | None:
    """(channels, axis) if the node's output channels are a group's own, else None."""
    w, _ = weight_of(node)
    out = shapes.get(node.outputs[0].name) if node.outputs else None
    if w is None or out is None or w.index != 1:
        return None
    if node.op == "Conv":
        if _depthwise(node, shapes):
            return None  # its channels are its input's (a follower)
        return w.values.shape[0], 1
    if node.op in ("Gemm", "MatMul") and len(out) >= 1:
        return w.out_channels, len(out) - 1
    return None


def _depthwise(node: gs.Node, shapes: Mapping[str, Sequence[int]]) -> bool:
    x = shapes.get(node.inputs[0].name)
    group = int(node.attrs.get("group", 1))
    w = shapes.get(node.inputs[1].name)
    return group > 1 and x is not None and w is not None and group == x[1] == w[0] and w[1] == 1


def _bias_follower(node: gs.Node, group: ChannelGroup, axis: int) -> None:
    if node.op in ("Conv", "Gemm") and len(node.inputs) > 2 and node.inputs[2] is not None \
            and node.inputs[2].name:
        group.followers.append(ChannelUse(node, 2, 0, 1, 0))


def _visit(node: gs.Node, i: int, m: _Mark, marks: dict[str, list[_Mark]], groups: _Groups,
           shapes: Mapping[str, Sequence[int]]) -> None:
    """Carry mark `m`, arriving at input `i` of `node`, through it (or end it there)."""
    op = node.op
    x = shapes.get(node.inputs[i].name)
    out = node.outputs[0].name if node.outputs else None

    def carry(mark: _Mark = m) -> None:
        marks.setdefault(out, []).append(mark)

    def block(why: str) -> None:
        groups.block(m.source, f"{why} at {op} '{node.name}'")

    if x is None:
        return block("unknown shape")
    if op == "Conv" and i == 0 and _depthwise(node, shapes) and m.axis == 1:
        group = groups.get(m.source)  # one filter per channel: it carries them through
        group.followers.append(ChannelUse(node, 1, m.offset, m.block, 0))
        if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name:
            group.followers.append(ChannelUse(node, 2, m.offset, m.block, 0))
        return carry()
    if op in ("Conv", "Gemm", "MatMul") and i == 0:
        return _consume(node, m, groups, shapes, x)
    if op in CARRY_OPS and i == 0:
        return carry()
    if op == "BatchNormalization" and i == 0:
        for k in range(1, 5):
            groups.get(m.source).followers.append(ChannelUse(node, k, m.offset, m.block, 0))
        return carry()
    if op in JOIN_OPS:
        return _join(node, i, m, marks, groups, shapes, x, carry, block)
    if op == "Concat":
        axis = int(node.attrs.get("axis", 0)) % len(x)
        if axis != m.axis:
            return carry()
        start = sum(shapes[t.name][axis] for t in node.inputs[:i] if t.name in shapes)
        if any(t.name not in shapes for t in node.inputs[:i]):
            return block("Concat of an input of unknown size")
        return carry(_Mark(m.source, m.offset + start * m.block, m.block, m.axis))
    if op in ("Flatten", "Reshape") and i == 0:
        y = shapes.get(out)
        flat = (y is not None and len(y) == 2 and m.axis == 1 and len(x) >= 2
                and y[0] == x[0] and y[1] == int(np.prod(x[1:])))
        if not flat:
            return block("reshaped")
        inner = int(np.prod(x[2:], dtype=np.int64))
        return carry(_Mark(m.source, m.offset * inner, m.block * inner, 1))
    if op == "Transpose" and i == 0:
        perm = list(node.attrs.get("perm", reversed(range(len(x)))))
        return carry(_Mark(m.source, m.offset, m.block, perm.index(m.axis)))
    if op == "Pad" and i == 0:
        pads = node.inputs[1] if len(node.inputs) > 1 else None
        values = np.asarray(pads.values) if isinstance(pads, gs.Constant) else None
        if values is not None and values[m.axis] == 0 and values[len(x) + m.axis] == 0:
            return carry()
        return block("padded along the channels")
    return block("mixes or reshapes channels")


def _consume(node: gs.Node, m: _Mark, groups: _Groups, shapes, x) -> None:
    group = groups.get(m.source)
    use = ChannelUse(node, 0, m.offset, m.block, m.axis)
    if node.op == "Conv":
        w = shapes.get(node.inputs[1].name)
        if m.axis != 1:
            groups.block(m.source, f"channels on axis {m.axis} at Conv '{node.name}'")
        elif int(node.attrs.get("group", 1)) != 1 or w is None:
            groups.block(m.source, f"grouped convolution '{node.name}'")
        else:
            group.consumers.append(use)
        return
    w, _ = weight_of(node)
    trans_a = node.op == "Gemm" and node.attrs.get("transA", 0)
    if w is None or w.index != 1 or trans_a or m.axis != len(x) - 1:
        groups.block(m.source, f"{node.op} '{node.name}' reads the channels as its weight "
                               "or along another axis")
    else:
        group.consumers.append(use)


def _join(node, i, m, marks, groups, shapes, x, carry, block) -> None:
    """An elementwise op with several inputs: constants per channel are followers, another
    channel-carrying input ties the groups, a broadcast (size 1 on the axis) is harmless."""
    y = shapes.get(node.outputs[0].name)
    if y is None:
        return block("unknown shape")
    axis_out = m.axis + len(y) - len(x)
    first = True
    for k, t in enumerate(node.inputs):
        if k == i or t is None:
            continue
        s = shapes.get(t.name)
        along = None if s is None else _along(s, len(y), axis_out)
        if isinstance(t, gs.Constant):
            if along not in (None, 1):
                groups.get(m.source).followers.append(
                    ChannelUse(node, k, m.offset, m.block, axis_out - (len(y) - len(s))))
            continue
        same = [o for o in marks.get(t.name, []) if (o.offset, o.block) == (m.offset, m.block)]
        for o in same:
            groups.union(m.source, o.source)
        if same and k < i:
            first = False  # the mark of the lowest input carries the tied group on
        if along not in (None, 1) and not marks.get(t.name):
            return block("combined with a tensor whose channels no layer owns")
    if first:
        carry(_Mark(m.source, m.offset, m.block, axis_out))


def _along(shape: Sequence[int], rank: int, axis: int) -> int | None:
    """Size of a broadcast operand along output axis `axis` (None if it does not reach it)."""
    k = axis - (rank - len(shape))
    return shape[k] if 0 <= k < len(shape) else None


# ----------------------------------------------------------------------------- applying a plan


def remove_channels(graph: gs.Graph, group: ChannelGroup, keep: np.ndarray) -> None:
    """Cut `graph` down to the channels `keep` (sorted indices into the group) of a cuttable
    group, in place: producers lose output rows, followers their entries, consumers their input
    columns (a block of positions per channel after a Flatten). Shapes of the intermediate
    tensors are cleared for export to infer again."""
    if group.blocked:
        raise ValueError(f"group is not cuttable: {group.blocked}")
    keep = np.asarray(keep, dtype=np.int64)
    for node in group.producers:
        w, _ = weight_of(node)
        axis = 0 if node.op == "Conv" or (node.op == "Gemm" and node.attrs.get("transB", 0)) \
            else w.values.ndim - 1
        _slice_input(graph, ChannelUse(node, 1, 0, 1, axis), keep, group.size)
    for use in group.followers:
        _slice_input(graph, use, keep, group.size)
        if use.node.op == "Conv" and use.input == 1:  # a depthwise conv: one group per channel
            use.node.attrs["group"] = int(np.asarray(use.node.inputs[1].values).shape[0])
    for use in group.consumers:
        node = use.node
        w, _ = weight_of(node)
        if node.op == "Conv":
            axis = 1
        elif node.op == "Gemm":
            axis = 1 if node.attrs.get("transB", 0) else 0
        else:  # MatMul: (K, N)
            axis = w.values.ndim - 2
        _slice_input(graph, ChannelUse(node, 1, use.offset, use.block, axis), keep, group.size)
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and t not in graph.inputs and t not in graph.outputs:
            t.shape = None


def _positions(use: ChannelUse, keep: np.ndarray, size: int, length: int) -> np.ndarray:
    """Indices along the axis that survive: the group's kept channels (blocks of `use.block`
    at `use.offset`) and every position outside the group's span."""
    span = np.arange(use.offset, use.offset + size * use.block)
    kept = (use.offset + keep[:, None] * use.block + np.arange(use.block)).reshape(-1)
    return np.setdiff1d(np.arange(length), np.setdiff1d(span, kept))


def _slice_input(graph: gs.Graph, use: ChannelUse, keep: np.ndarray, size: int) -> None:
    node, t = use.node, use.node.inputs[use.input]
    if not isinstance(t, gs.Constant):
        raise TypeError(f"{node.op} '{node.name}' input {use.input} is not a constant")
    values = np.asarray(t.values)
    axis = use.axis % values.ndim
    sliced = np.take(values, _positions(use, keep, size, values.shape[axis]), axis=axis)
    # a private copy: the same constant may feed other nodes that keep every channel
    node.inputs[use.input] = gs.Constant(fresh_name(graph, f"{t.name}_cut"), sliced)
