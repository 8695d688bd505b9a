"""Compare two runs of /work/baseline/make.sh output by output (issue 7 record).

Usage: python issue7_compare.py DIR_A DIR_B
For each .onnx/.onnxc output: byte identity; when the bytes differ, per-initializer
max |a-b|, max |a-b| / max|a| of the layer, changed elements, zero counts, file sizes,
and whether the graphs (nodes, attributes, initializer names) are otherwise the same.
"""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcompress.container.reader import is_container, read_container


def load(p: Path) -> onnx.ModelProto:
    return read_container(p) if is_container(p) else onnx.load(str(p))


def weights(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def graph_only(m: onnx.ModelProto) -> bytes:
    g = onnx.GraphProto()
    g.CopyFrom(m.graph)
    del g.initializer[:]
    return g.SerializeToString(deterministic=True)


def main(a_dir: str, b_dir: str) -> None:
    a_dir, b_dir = Path(a_dir), Path(b_dir)
    for a in sorted(a_dir.glob("*.onnx*")):
        b = b_dir / a.name
        ba, bb = a.read_bytes(), b.read_bytes()
        if ba == bb:
            print(f"{a.name}: byte-identical ({len(ba)} B)")
            continue
        ma, mb = load(a), load(b)
        wa, wb = weights(ma), weights(mb)
        same_graph = graph_only(ma) == graph_only(mb)
        print(f"{a.name}: DIFFERENT bytes, {len(ba)} B vs {len(bb)} B; "
              f"graph without weights {'identical' if same_graph else 'DIFFERS'}; "
              f"initializer names {'identical' if list(wa) == list(wb) else 'DIFFER'}")
        worst = 0.0
        for name in wa:
            x, y = wa[name], wb.get(name)
            if y is None or x.shape != y.shape or x.dtype != y.dtype:
                print(f"  {name}: shape/dtype {x.shape} {x.dtype} vs "
                      f"{None if y is None else (y.shape, y.dtype)}")
                continue
            if np.array_equal(x, y):
                continue
            xf, yf = x.astype(np.float64), y.astype(np.float64)
            d = np.abs(xf - yf)
            scale = float(np.abs(xf).max()) or 1.0
            rel = float(d.max()) / scale
            worst = max(worst, rel)
            print(f"  {name} {x.shape}: {int((d > 0).sum())}/{x.size} elements differ, "
                  f"max |diff| {d.max():.3g}, / max|w| {rel:.3g}; zeros {int((x == 0).sum())} "
                  f"vs {int((y == 0).sum())} (same positions: {np.array_equal(x == 0, y == 0)}); distinct values {len(np.unique(x))} vs "
                  f"{len(np.unique(y))}")
        print(f"  worst relative difference (max|diff| / max|w| of the layer): {worst:.3g}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
