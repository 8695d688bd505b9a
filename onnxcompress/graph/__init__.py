"""What the passes know about a graph (onnx_graphsurgeon), as small functions over it.

- `convert`: proto <-> graph without copying large weights;
- `weights`: which input of which op is a compressible weight (one table), its layout;
- `topology`: producers, consumers, fresh names, the op types passes know;
- `geometry`: one explicit convolution geometry;
- `cost`: FLOPs and parameters per node from shape inference;
- `channels`: the channel groups structured pruning must cut together.
"""

from .convert import exported_size, to_graph, to_light_model, to_model
from .geometry import ConvGeometry, GeometryError, conv_geometry
from .topology import (
    SAFE_OPS,
    all_nodes,
    downstream_nodes,
    find_node,
    fresh_name,
    unique_names,
    unknown_ops,
)
from .weights import (
    WEIGHT_INPUTS,
    Weight,
    iter_weights,
    resolve_weight,
    weight_index,
    weight_of,
    weight_size,
    weight_sources,
)

__all__ = [
    "SAFE_OPS", "WEIGHT_INPUTS", "ConvGeometry", "GeometryError", "Weight", "all_nodes",
    "conv_geometry",
    "downstream_nodes", "exported_size", "find_node", "fresh_name", "iter_weights",
    "resolve_weight", "to_graph", "to_light_model", "to_model", "unique_names", "unknown_ops",
    "weight_index", "weight_of", "weight_size", "weight_sources",
]
