"""Layer inputs computed by ONNX Runtime with the weights as constant initializers (as the
pre-refactor code captured them) against the same graph with the weights fed as graph inputs
(as the calibration service's GraphSession(variable=...) feeds them since the refactor).

Run from a checkout of 2f7bef1 with its environment:  python issue7_ort_inputs.py
"""

import numpy as np
import onnx_graphsurgeon as gs

from onnxcompress.calibration.runner import GraphSession
from onnxcompress.data import Dataset
from onnxcompress.graph import to_graph
from onnxcompress.normalize import normalize_file

LAYERS = ("Conv", "Gemm", "MatMul")

for path in ["models/lenet300.onnx", "models/vgg.onnx", "models/resnet.onnx"]:
    g = to_graph(*normalize_file(path))
    d = np.load("models/data/calib.npz")
    data = Dataset({k: d[k] for k in d.files if k != "labels"}, None)
    names = [n.inputs[0].name for n in g.nodes if n.op in LAYERS]
    weights = [n.inputs[1].name for n in g.nodes
               if n.op in LAYERS and isinstance(n.inputs[1], gs.Constant)]
    const = GraphSession(g, names).collect(data)
    fed = GraphSession(g, names, variable=weights).collect(data)
    differ = sum(int((const[n] != fed[n]).sum()) for n in names)
    total = sum(const[n].size for n in names)
    worst = max(float(np.abs(const[n].astype(np.float64) - fed[n]).max()
                      / max(float(np.abs(const[n]).max()), 1e-30)) for n in names)
    print(f"{path}: {differ}/{total} layer-input values differ; "
          f"worst max|diff| / max|x| of a tensor {worst:.3g}")
