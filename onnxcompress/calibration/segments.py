"""Running part of a graph from values already computed: what makes searches and sweeps cheap.

ONNX Runtime computes every node of a session whatever is fetched, so evaluating a change to
one layer by running the whole model wastes everything upstream of it. Instead:

- `downstream_runner` runs only the layer and what follows it up to the scored output, fed the
  values the rest of the graph already had (the frontier, captured once from the model);
- `incremental_inputs` walks a list of layers in topological order and yields each layer's
  current input, computing only the nodes between the previous layer and this one: a sweep
  that changes each layer before moving on costs one pass over the model instead of one pass
  per layer.

Values are kept per batch of the data (`Batches`): tensors without a sample axis (the shapes
an exporter computes at run time) stay consistent with their batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from ..data import Dataset
from ..graph.topology import downstream_nodes
from .runner import GraphSession

Batches = list[dict[str, np.ndarray]]  # one dict of tensor values per batch of the data


def needed(graph: gs.Graph, targets: Sequence[str], available: set[str]) -> list[gs.Node]:
    """The nodes that compute `targets` from the `available` tensors and constants, in the
    graph's (topological) order."""
    producer = {t.name: n for n in graph.nodes for t in n.outputs}
    wanted, stack = set(), [t for t in targets if t not in available]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in wanted:
            continue
        wanted.add(node.name)
        stack += [t.name for t in node.inputs
                  if t.name and not isinstance(t, gs.Constant) and t.name not in available]
    return [n for n in graph.nodes if n.name in wanted]


def frontier(nodes: Sequence[gs.Node]) -> list[str]:
    """Tensors the nodes read that none of them makes (constants aside)."""
    made = {t.name for n in nodes for t in n.outputs}
    out: dict[str, None] = {}
    for n in nodes:
        for t in n.inputs:
            if t.name and not isinstance(t, gs.Constant) and t.name not in made:
                out[t.name] = None
    return list(out)


def subgraph_session(graph: gs.Graph, nodes: Sequence[gs.Node], inputs: Sequence[str],
                     outputs: Sequence[str], sample: dict[str, np.ndarray],
                     variable: Sequence[str] = (), threads: int | None = 1) -> GraphSession:
    """A session over `nodes` alone, fed `inputs` (their dtypes and ranks from `sample`); its
    `variable` initializers take their current values in `graph`."""
    keep = {n.name for n in nodes}
    sub = graph.copy()
    tensors = sub.tensors()
    sub.nodes = [n for n in sub.nodes if n.name in keep]
    for name in inputs:
        t = tensors[name]
        t.inputs.clear()
        t.dtype = sample[name].dtype
        t.shape = [f"d{i}_{name}" for i in range(sample[name].ndim)]
    sub.inputs = [tensors[n] for n in inputs]
    sub.outputs = [tensors[n] for n in outputs]
    sub.cleanup(remove_unused_graph_inputs=False).toposort()
    return GraphSession(sub, list(outputs), variable, threads, values=graph)


def run_batches(sess: GraphSession, state: Batches) -> Batches:
    """The session's outputs for each batch of values (fed the inputs it needs)."""
    names = [t.name for t in sess.graph.inputs]
    return [sess.run({n: b[n] for n in names}) for b in state]


def capture(graph: gs.Graph, names: Sequence[str], data: Dataset,
            threads: int | None = 1) -> Batches:
    """The named tensors (and the graph inputs) of `graph` on `data`, batch by batch."""
    names = list(dict.fromkeys(names))
    sess = GraphSession(graph, names, threads=threads)
    return [{**feeds, **sess.run(feeds)} for feeds in data.batches()]


def downstream_runner(graph: gs.Graph, node: gs.Node, output: str, state: Batches,
                      variable: Sequence[str], threads: int | None = 1
                      ) -> tuple[GraphSession, list[str]]:
    """A session computing `output` from the frontier of `node` and everything after it (the
    layer's weights `variable`), and that frontier's names (to capture into `state`)."""
    after = {node.name} | downstream_nodes(node)
    nodes = [n for n in needed(graph, [output], set()) if n.name in after]
    inputs = frontier(nodes)
    return subgraph_session(graph, nodes, inputs, [output], state[0], variable, threads), inputs


def incremental_inputs(graph: gs.Graph, layers: Sequence[gs.Node], data: Dataset,
                       threads: int | None = 1) -> Iterator[tuple[gs.Node, Batches]]:
    """For each layer in order: its current input batch by batch, computed only through the
    nodes since the previous layer (which the caller may have changed meanwhile)."""
    state: Batches = [dict(feeds) for feeds in data.batches()]
    available = {t.name for t in graph.inputs}
    producer = {t.name: n.name for n in graph.nodes for t in n.outputs}
    for layer in layers:
        target = layer.inputs[0].name
        nodes = needed(graph, [target], available)
        if nodes:
            made = [t.name for n in nodes for t in n.outputs if t.name]
            live = _live(graph, nodes, made)
            sess = subgraph_session(graph, nodes, frontier(nodes), live, state[0],
                                    threads=threads)
            for b, values in zip(state, run_batches(sess, state)):
                b.update(values)
            available |= set(live)
        yield layer, [{target: b[target]} for b in state]
        # the layer may change now: nothing computed from its output is kept
        stale = {layer.name} | downstream_nodes(layer)
        gone = {n for n in available if producer.get(n) in stale}
        for b in state:
            for name in gone:
                b.pop(name, None)
        available -= gone


def _live(graph: gs.Graph, nodes: Sequence[gs.Node], made: Sequence[str]) -> list[str]:
    """Of the tensors `nodes` make, those read by a node outside them (or graph outputs)."""
    inside = {n.name for n in nodes}
    outputs = {t.name for t in graph.outputs}
    tensors = graph.tensors()
    return [m for m in made if m in outputs or
            any(c.name not in inside for c in tensors[m].outputs)]
