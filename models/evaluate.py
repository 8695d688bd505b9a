"""Measure the zoo's top-1 accuracy with ONNX Runtime (CPUExecutionProvider).

    python models/evaluate.py --dir models --write-json

Prints a markdown table (model, parameters, file size, top-1 on the full 10,000-image test set
and on models/data/eval.npz). With --write-json it stores both accuracies in models/zoo.json,
the figures tests/test_zoo.py checks against.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from fashion_mnist import load
from onnx.helper import tensor_dtype_to_np_dtype

ZOO = ("lenet300", "lenet5", "vgg", "resnet", "squeezenet", "mobilenet", "vit")


def count_parameters(model: onnx.ModelProto) -> int:
    """Number of floating-point initializer elements (weights, biases, BN statistics)."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor_dtype_to_np_dtype(tensor.data_type).kind == "f":
            total += int(np.prod(tensor.dims, dtype=np.int64))
    return total


def top1(
    session: ort.InferenceSession, images: np.ndarray, labels: np.ndarray, batch_size: int = 500
) -> float:
    """Top-1 accuracy (%) of an ONNX Runtime session taking `input` and returning `logits`."""
    hits = 0
    for i in range(0, len(images), batch_size):
        logits = session.run(["logits"], {"input": images[i : i + batch_size]})[0]
        hits += int((logits.argmax(axis=1) == labels[i : i + batch_size]).sum())
    return 100.0 * hits / len(images)


def evaluate(path: Path, test: tuple[np.ndarray, np.ndarray], feed: Path) -> dict:
    """Parameters, file size and top-1 (full test set and eval.npz) of one model file."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with np.load(feed) as data:
        eval_top1 = top1(session, data["input"], data["labels"])
    return {
        "params": count_parameters(onnx.load(str(path))),
        "file_bytes": path.stat().st_size,
        "top1_test": round(top1(session, *test), 2),
        "top1_eval_npz": round(eval_top1, 2),
    }


def render(rows: dict[str, dict]) -> str:
    """The results as a markdown table."""
    lines = [
        "| model | parameters | file size (bytes) | top-1 % (10,000 test) | top-1 % (eval.npz) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['params']:,} | {r['file_bytes']:,} | {r['top1_test']:.2f} "
            f"| {r['top1_eval_npz']:.2f} |"
        )
    return "\n".join(lines)


def write_json(path: Path, rows: dict[str, dict]) -> None:
    """Merge the measured figures into the zoo JSON under each model's 'onnxruntime' key."""
    zoo = json.loads(path.read_text()) if path.is_file() else {}
    for name, r in rows.items():
        zoo.setdefault(name, {})["onnxruntime"] = r
    path.write_text(json.dumps(zoo, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent)
    parser.add_argument("--models", nargs="*", default=list(ZOO), choices=ZOO)
    parser.add_argument("--write-json", action="store_true", help="update <dir>/zoo.json")
    args = parser.parse_args(argv)
    test = load("test")
    feed = args.dir / "data" / "eval.npz"
    rows = {name: evaluate(args.dir / f"{name}.onnx", test, feed) for name in args.models}
    print(render(rows))
    if args.write_json:
        write_json(args.dir / "zoo.json", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
