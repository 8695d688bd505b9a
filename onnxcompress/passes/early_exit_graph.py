"""The early-exit graph in plain ONNX (the early_exit pass's helper; its docstring has the method).

The backbone is cut at the exits' tensors a_0 … a_{E-1} into segments S_0 (input to a_0), S_1
(a_0 to a_1) … S_E (a_{E-1} to the output). S_0 and head 0 stay in the main graph; then one
`If` on the batch size picks one of two forms of the rest, built from the same segments:

    batch 1:  If(exit_0) then [out_0, 0]
                         else S_1 -> head 1 -> If(exit_1) then [out_1, 1] else … S_E -> [y, E]
    batch n:  keep = NonZero(not exit_0); If(|keep| > 0)
                  then a = Gather(a_0, keep); S_1(a) -> head 1 -> … (the same, one level down)
                       out = ScatterND(out_0, keep, out_rest)  (ids likewise)
                  else [out_0, (0 …)]

so a sample that leaves costs nothing downstream, the others run on as a smaller batch, and
ScatterND puts every result back in input order. At batch 1 no Gather/ScatterND runs: an If on
a one-element condition per exit (the first If of all asks "batch 1 and it leaves at exit 0",
the commonest path, so that it takes one If). Heads: [AveragePool | GlobalAveragePool] -> Flatten -> Gemm,
then the criterion: Softmax -> ReduceMax (max-prob), TopK(2) -> Sub (margin) or
ReduceSum(Softmax * LogSoftmax) (= -entropy), and GreaterOrEqual(threshold). The exit's output
passes through the model's own tail (Softmax, Reshape to (n, K, 1, 1) …), so every exit returns
what the original output returns.

Every constant a branch uses (backbone weights, head weights, thresholds, shapes) stays an
initializer of the main graph, reached from the branches through an Identity in the main graph
(ONNX Runtime folds it away): the weights are stored once, and the container codes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from ..graph.cuts import Classifier, Cut, constant_tensors
from ..graph.topology import fresh_name

SMALL_BYTES = 256  # constants up to this size are copied into each branch
EMITTED_OPS = frozenset({
    "If", "NonZero", "ScatterND", "Size", "Greater", "GreaterOrEqual", "Equal", "Not", "TopK",
    "And",
    "ReduceMax", "ReduceSum", "ConstantOfShape", "AveragePool", "GlobalAveragePool", "Flatten",
    "Gemm", "Softmax", "LogSoftmax", "Mul", "Sub", "Gather", "Reshape", "Unsqueeze", "Identity",
    "Shape", "Constant",
})


@dataclass(frozen=True)
class ExitHead:
    """What to build at one exit."""

    cut: Cut
    weight: np.ndarray  # (D, K) float32
    bias: np.ndarray  # (K,) float32
    pool: tuple[tuple[int, int], tuple[int, int]] | str | None  # (kernel, strides), "global", None
    threshold: float  # the confidence s(z) >= threshold leaves


class _Builder:
    """Fresh names, constants reached through the main graph, and the two forms of the rest."""

    def __init__(self, graph: gs.Graph, classifier: Classifier, heads: Sequence[ExitHead],
                 criterion: str, segments: list[list[gs.Node]]):
        self.graph, self.cls, self.heads, self.criterion = graph, classifier, heads, criterion
        self.segments = segments
        tensors = graph.tensors()
        # the original cut tensors and output, before any change: segment k runs cuts[k] ->
        # ends[k]
        self.cuts = [tensors[h.cut.tensor] for h in heads]
        self.ends = self.cuts[1:] + [graph.outputs[0]]
        self.prefix = fresh_name(graph, "early_exit")
        # each head's weights, stored once whichever form (batch 1 or any batch) reads them
        self.weights = {id(h): (gs.Constant(f"{self.prefix}/exit{i}/weight", h.weight),
                                gs.Constant(f"{self.prefix}/exit{i}/bias", h.bias),
                                gs.Constant(f"{self.prefix}/exit{i}/threshold",
                                            np.array(h.threshold, np.float32)))
                        for i, h in enumerate(heads)}
        self.count = 0
        self.main: list[gs.Node] = []
        self.hoisted: dict[int, tuple[gs.Constant, gs.Variable]] = {}
        self.out_dtype = graph.outputs[0].dtype or np.float32

    def name(self, base: str) -> str:
        self.count += 1
        return f"{self.prefix}/{base}_{self.count}"

    def reach(self, c: gs.Constant) -> gs.Variable:
        """A main-graph constant as a branch sees it: through one Identity in the main graph."""
        if id(c) not in self.hoisted:  # (c kept alive with it: its id stays its own)
            ref = gs.Variable(self.name("ref"), dtype=np.asarray(c.values).dtype,
                              shape=list(np.asarray(c.values).shape))
            self.main.append(gs.Node("Identity", self.name("ref"), inputs=[c], outputs=[ref]))
            self.hoisted[id(c)] = (c, ref)
        return self.hoisted[id(c)][1]


class _Scope:
    """The nodes of one graph: the main graph (sub=False) or an If branch."""

    def __init__(self, b: _Builder, sub: bool):
        self.b, self.sub, self.nodes = b, sub, []
        self.made: set[int] = set()
        # constant -> how this scope reads it; the constant is kept alive with it, so that
        # its id is never reused for another while the scope is built
        self.consts: dict[int, tuple[gs.Constant, gs.Tensor]] = {}

    def op(self, op: str, inputs: Sequence[gs.Tensor], attrs: dict | None = None,
           dtypes: Sequence = (np.float32,)) -> gs.Variable | list[gs.Variable]:
        outs = [gs.Variable(self.b.name(op), dtype=dt) for dt in dtypes]
        self.nodes.append(gs.Node(op, self.b.name(op), attrs=attrs or {}, inputs=list(inputs),
                                  outputs=outs))
        self.made.update(id(t) for t in outs)
        return outs[0] if len(outs) == 1 else outs

    def c(self, value, dtype=np.int64) -> gs.Tensor:
        """A new small constant of this scope."""
        return gs.Constant(self.b.name("c"), np.asarray(value, dtype=dtype))

    def constant(self, c: gs.Constant) -> gs.Tensor:
        """Constant `c` as this scope reads it. The main graph reads it directly. A branch gets
        a copy of a small one, and reads a large one (a weight) as Reshape(main-graph value,
        its shape): ONNX Runtime folds that into an initializer of the branch, where its
        convolutions can pre-pack it (they cannot pre-pack a value of an outer scope)."""
        if not self.sub:
            return c
        if id(c) not in self.consts:
            values = np.asarray(c.values)
            if values.nbytes <= SMALL_BYTES:  # a copy, named after it
                self.b.count += 1
                read = gs.Constant(f"{c.name}_{self.b.count}", values)
            else:
                shape = gs.Constant(self.b.name("shape"), np.asarray(values.shape, np.int64))
                read = self.op("Reshape", [self.b.reach(c), shape], dtypes=[values.dtype])
            self.consts[id(c)] = (c, read)
        return self.consts[id(c)][1]

    def local(self, t: gs.Tensor, dtype) -> gs.Tensor:
        """`t` produced in this scope (an Identity when it comes from outside): branch outputs."""
        return t if id(t) in self.made else self.op("Identity", [t], dtypes=[dtype])

    def reduce(self, op: str, x: gs.Tensor, axis: int) -> gs.Variable:
        if self.b.graph.opset >= 18 or (op == "ReduceSum" and self.b.graph.opset >= 13):
            return self.op(op, [x, self.c([axis])], {"keepdims": 0})
        return self.op(op, [x], {"axes": [axis], "keepdims": 0})


def build(graph: gs.Graph, classifier: Classifier, heads: Sequence[ExitHead], criterion: str,
          exit_output: str, doc: str) -> None:
    """Insert `heads` (in graph order) into `graph`, in place (module docstring)."""
    graph.toposort()
    segments, kept = _segments(graph, heads)
    b = _Builder(graph, classifier, heads, criterion, segments)
    main = _Scope(b, sub=False)
    a0 = _tensor(graph, heads[0].cut.tensor)
    z, p, e = _head(main, a0, heads[0])
    is_one = main.op("Equal", [main.op("Size", [e], dtypes=[np.int64]), main.c(1)],
                     dtypes=[np.bool_])
    # the commonest path, one sample leaving at the first exit, takes one If: "batch 1 and
    # it leaves"; otherwise "batch 1" picks the rest of the batch-1 form or the batch form
    first = main.op("Gather", [e, main.c(0)], {"axis": 0}, dtypes=[np.bool_])
    leave_now = main.op("And", [is_one, first], dtypes=[np.bool_])
    leave, one, many = (_Scope(b, sub=True) for _ in range(3))
    leave_out = _leave(leave, 0, z, p)
    one_out = _go_one(one, 0, a0)
    many_out = _level_many(many, 0, a0, z, p, e)
    rest = _Scope(b, sub=True)
    rest_out = tuple(rest.op("If", [is_one], {"then_branch": _graph(one, one_out, b),
                                              "else_branch": _graph(many, many_out, b)},
                             dtypes=[b.out_dtype, np.int64]))
    old_out = graph.outputs[0]
    moved = [n for seg in segments for n in seg]
    for node in moved:
        node.inputs.clear()
        node.outputs.clear()
    exit_t = gs.Variable(exit_output, dtype=np.int64, shape=[_batch_dim(old_out)])
    main.nodes.append(gs.Node("If", b.name("first_exit"), inputs=[leave_now],
                              outputs=[old_out, exit_t],
                              attrs={"then_branch": _graph(leave, leave_out, b),
                                     "else_branch": _graph(rest, rest_out, b)}))
    graph.nodes = kept + b.main + main.nodes
    graph.outputs.append(exit_t)
    graph.doc_string = doc
    graph.cleanup().toposort()


def _segments(graph: gs.Graph, heads: Sequence[ExitHead]) -> tuple[list[list[gs.Node]],
                                                                    list[gs.Node]]:
    """(S_1 … S_E, the main graph's nodes: S_0 and every node computing constants only)."""
    const = constant_tensors(graph)
    bounds = [h.cut.position for h in heads] + [len(graph.nodes) - 1]
    kept, segments = [], [[] for _ in heads]
    for i, node in enumerate(graph.nodes):
        if i <= bounds[0] or all(t.name in const for t in node.outputs):
            kept.append(node)
            continue
        k = next(j for j in range(len(heads)) if i <= bounds[j + 1])
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            raise UnsupportedModelError(f"node '{node.name}' ({node.op}) after the first exit "
                                        "holds a subgraph; early exit supports plain backbones")
        segments[k].append(node)
    return segments, kept


def _head(s: _Scope, a: gs.Tensor, head: ExitHead):
    """(logits, softmax, exit condition) of one exit head on activation `a`."""
    x = a
    if head.pool == "global":
        x = s.op("GlobalAveragePool", [x])
    elif head.pool is not None:
        kernel, strides = head.pool
        x = s.op("AveragePool", [x], {"kernel_shape": list(kernel), "strides": list(strides)})
    if len(head.cut.dims) > 1:
        x = s.op("Flatten", [x], {"axis": 1})
    weight, bias, threshold = s.b.weights[id(head)]
    z = s.op("Gemm", [x, s.constant(weight), s.constant(bias)])
    p = s.op("Softmax", [z], {"axis": 1})
    if s.b.criterion == "max-prob":
        score = s.reduce("ReduceMax", p, 1)
    elif s.b.criterion == "margin":
        top, _ = s.op("TopK", [p, s.c([2])], {"axis": 1}, dtypes=[np.float32, np.int64])
        first = s.op("Gather", [top, s.c(0)], {"axis": 1})
        second = s.op("Gather", [top, s.c(1)], {"axis": 1})
        score = s.op("Sub", [first, second])
    else:
        logp = s.op("LogSoftmax", [z], {"axis": 1})
        score = s.reduce("ReduceSum", s.op("Mul", [p, logp]), 1)
    e = s.op("GreaterOrEqual", [score, s.constant(threshold)], dtypes=[np.bool_])
    return z, p, e


def _tail(s: _Scope, z: gs.Tensor, p: gs.Tensor) -> gs.Tensor:
    """What the model's own tail makes of logits z: its output format."""
    cls = s.b.cls
    y = z
    if cls.activation == "Softmax":
        y = p
    elif cls.activation == "LogSoftmax":
        y = s.op("LogSoftmax", [z], {"axis": 1})
    if len(cls.out_dims) > 1:
        y = s.op("Reshape", [y, s.c([-1, *cls.out_dims])])
    return y


def _leave(s: _Scope, k: int, z, p) -> tuple[gs.Tensor, gs.Tensor]:
    """A batch-1 sample leaving at exit k: its output, and k."""
    return _tail(s, z, p), s.op("Constant", [], {"value": _ids([k])}, dtypes=[np.int64])


def _go_one(s: _Scope, k: int, a_k) -> tuple[gs.Tensor, gs.Tensor]:
    """A batch-1 sample going on past exit k: the next segment, then exit k+1 or the end."""
    a = _clone(s, k, a_k, "b1")
    if k + 1 < len(s.b.heads):
        return _level_one(s, k + 1, a, *_head(s, a, s.b.heads[k + 1]))
    return a, s.op("Constant", [], {"value": _ids([len(s.b.heads)])}, dtypes=[np.int64])


def _level_one(s: _Scope, k: int, a_k, z, p, e) -> tuple[gs.Tensor, gs.Tensor]:
    """Batch 1 from exit k on: If(exit_k) then its output else the rest."""
    b = s.b
    leave, go = _Scope(b, sub=True), _Scope(b, sub=True)
    leave_out, go_out = _leave(leave, k, z, p), _go_one(go, k, a_k)
    return tuple(s.op("If", [e], {"then_branch": _graph(leave, leave_out, b),
                                  "else_branch": _graph(go, go_out, b)},
                      dtypes=[b.out_dtype, np.int64]))


def _level_many(s: _Scope, k: int, a_k, z, p, e) -> tuple[gs.Tensor, gs.Tensor]:
    """Any batch from exit k on: the samples that stay go on, gathered; results scattered back."""
    b = s.b
    y = _tail(s, z, p)
    rows = s.op("NonZero", [s.op("Not", [e], dtypes=[np.bool_])], dtypes=[np.int64])
    keep = s.op("Reshape", [rows, s.c([-1])], dtypes=[np.int64])
    any_left = s.op("Greater", [s.op("Size", [keep], dtypes=[np.int64]), s.c(0)],
                    dtypes=[np.bool_])
    ids = s.op("ConstantOfShape", [s.op("Shape", [e], dtypes=[np.int64])],
               {"value": _ids([k])}, dtypes=[np.int64])
    go = _Scope(b, sub=True)
    a = _clone(go, k, go.op("Gather", [a_k, keep], {"axis": 0}), "bn")
    if k + 1 < len(b.heads):
        rest, rest_ids = _level_many(go, k + 1, a, *_head(go, a, b.heads[k + 1]))
    else:
        rest = a
        rest_ids = go.op("ConstantOfShape", [go.op("Shape", [keep], dtypes=[np.int64])],
                         {"value": _ids([len(b.heads)])}, dtypes=[np.int64])
    col = go.op("Unsqueeze", [keep, go.c([1])], dtypes=[np.int64])
    go_out = (go.op("ScatterND", [y, col, rest], dtypes=[b.out_dtype]),
              go.op("ScatterND", [ids, col, rest_ids], dtypes=[np.int64]))
    stay = _Scope(b, sub=True)
    stay_out = (stay.local(y, b.out_dtype), stay.local(ids, np.int64))
    return tuple(s.op("If", [any_left], {"then_branch": _graph(go, go_out, b),
                                         "else_branch": _graph(stay, stay_out, b)},
                      dtypes=[b.out_dtype, np.int64]))


def _clone(s: _Scope, k: int, start: gs.Tensor, tag: str) -> gs.Tensor:
    """Copy segment S_{k+1} into scope `s`, reading `start` where the original read the cut
    tensor a_k; returns the copy of its last output (the next cut, or the model's output)."""
    b = s.b
    readers = sum(t is b.cuts[k] for n in b.segments[k] for t in n.inputs)
    if readers > 1 and len(b.heads[k].cut.dims) == 3:
        # a layout hint for ONNX Runtime: its blocked (NCHWc) convolutions can fuse a residual
        # Add only if both addends are blocked; a tensor from an outer scope is not, but the
        # output of a 1x1 max-pool (an identity) is
        start = s.op("MaxPool", [start], {"kernel_shape": [1, 1]})
    mapping: dict[int, gs.Tensor] = {id(b.cuts[k]): start}
    for node in b.segments[k]:
        ins = []
        for t in node.inputs:
            if id(t) in mapping:
                ins.append(mapping[id(t)])
            elif isinstance(t, gs.Constant):
                ins.append(s.constant(t))
            else:
                ins.append(t)  # a main-graph tensor computed from constants only
        outs = [gs.Variable(f"{b.prefix}/{tag}/{t.name}", dtype=t.dtype) for t in node.outputs]
        mapping.update((id(t), o) for t, o in zip(node.outputs, outs))
        s.nodes.append(gs.Node(node.op, node.name, attrs=dict(node.attrs), inputs=ins,
                               outputs=outs, domain=node.domain))
        s.made.update(id(o) for o in outs)
    return mapping[id(b.ends[k])]


def _tensor(graph: gs.Graph, name: str) -> gs.Tensor:
    return graph.tensors()[name]


def _graph(s: _Scope, outputs: tuple[gs.Tensor, gs.Tensor], b: _Builder) -> gs.Graph:
    out, ids = s.local(outputs[0], b.out_dtype), s.local(outputs[1], np.int64)
    out.dtype, ids.dtype = b.out_dtype, np.int64
    return gs.Graph(nodes=s.nodes, outputs=[out, ids], name=b.name("branch"),
                    opset=b.graph.opset)


def _ids(values: list[int]) -> gs.Constant:
    return gs.Constant("", np.asarray(values, dtype=np.int64))


def _batch_dim(t: gs.Tensor):
    return t.shape[0] if t.shape else "N"
