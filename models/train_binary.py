"""Train a binary (XNOR-Net style) Fashion-MNIST network and its float twin; export both to ONNX.

XNOR-Net (Rastegari et al. 2016): in the middle layers both the activations and the weights are
binary. The forward pass uses

    a_b = sign(a)                       (ONNX Sign: sign(0) = 0)
    W_b = alpha * sgn(W),  alpha[m] = mean |W[m]|,  sgn(w) = +1 if w >= 0 else -1

and the backward pass the straight-through estimator, d sign(a)/da ~ 1[|a| <= 1] (Hubara et al.
2016). The first conv and the classifier stay in float, as in the paper. The float twin has the
same layers with ReLU where the binary net has Sign, and float weights everywhere.

Both export with input `input` float32 (N, 1, 28, 28) and output `logits` (N, 10). In the binary
export each binary conv reads the output of a `Sign` node and its weight initializer holds exactly
the two values +-alpha[m] per output channel, which is what the binarize pass detects as a model
trained binary and lowers without changing its outputs.

    python models/train_binary.py --epochs 2 --out models/
    python models/train_binary.py --evaluate      # ORT accuracies -> models/binary_zoo.json

`--evaluate` measures, on the 10,000 test images with ONNX Runtime: both exported models; the
binary one lowered by the binarize pass (native XnorConv and portable; it must not change); and
the float twin binarized post-training (lossy), with and without calibration data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fashion_mnist import load


class _SignSTE(torch.autograd.Function):
    """sign(x) forward (torch.sign, exported as ONNX Sign); 1[|x| <= 1] * grad backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _WeightSTE(torch.autograd.Function):
    """sgn(w) (+1 for w >= 0, else -1) forward; 1[|w| <= 1] * grad backward."""

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


class BinarySign(nn.Module):
    """Activation binarization; exports as a plain ONNX Sign node."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x) if torch.onnx.is_in_onnx_export() else _SignSTE.apply(x)


def binary_weight(w: torch.Tensor) -> torch.Tensor:
    """alpha[m] * sgn(w) with the straight-through estimator (clipped at |w| <= 1) on sgn."""
    return w.abs().mean(dim=(1, 2, 3), keepdim=True) * _WeightSTE.apply(w)


class BinaryConv2d(nn.Conv2d):
    """Conv2d whose forward uses alpha * sgn(W) (XNOR-Net), bias-free."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, binary_weight(self.weight), None, self.stride, self.padding)


def network(binary: bool) -> nn.Sequential:
    """conv1(float) - [Sign, bconv]x3 - avgpool - fc(float); ReLU in place of Sign when float."""
    conv = BinaryConv2d if binary else nn.Conv2d
    act = BinarySign if binary else nn.ReLU
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.MaxPool2d(2),
        act(), conv(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
        act(), conv(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.MaxPool2d(2),
        act(), conv(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip


def freeze_binary(model: nn.Sequential) -> nn.Sequential:
    """Replace each BinaryConv2d by a plain Conv2d holding alpha * sgn(W) (two values per
    output channel), so the export has +-alpha initializers."""
    for i, layer in enumerate(model):
        if isinstance(layer, BinaryConv2d):
            plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                              stride=layer.stride, padding=layer.padding, bias=False)
            w = layer.weight.detach()
            alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
            plain.weight.data = alpha * torch.where(w >= 0, 1.0, -1.0)
            model[i] = plain
    return model


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy (%) of `model` in eval mode."""
    model.eval()
    hits = 0
    with torch.no_grad():
        for s in range(0, len(x), batch):
            hits += (model(torch.from_numpy(x[s : s + batch])).argmax(1).numpy()
                     == y[s : s + batch]).sum()
    return 100.0 * hits / len(x)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float,
          seed: int, batch: int = 128) -> None:
    """Adam with a cosine schedule over `epochs` epochs; prints one line per epoch."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        t0, total = time.perf_counter(), 0.0
        for s in range(0, len(x) - batch + 1, batch):
            idx = order[s : s + batch]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / (len(x) // batch):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


def export(model: nn.Module, path: Path) -> None:
    """TorchScript exporter, opset 17, dynamic batch, BatchNormalization kept."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 1, 28, 28),), str(path), dynamo=False,
                          opset_version=17, do_constant_folding=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _ort_logits(model: onnx.ModelProto | Path, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Logits on ONNX Runtime (one thread, XnorConv registered)."""
    import onnxruntime as ort

    from onnxcompress.runtime import session_options

    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    sess = ort.InferenceSession(src, session_options(threads=1), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[s : s + batch]})[0]
                           for s in range(0, len(x), batch)])


def _binarized(path: Path, calib: dict[str, np.ndarray] | None, **cfg) -> tuple[onnx.ModelProto, list[str]]:
    """The model at `path` through normalization and the binarize pass."""
    from onnxcompress.calibration import Calibration
    from onnxcompress.data import Dataset
    from onnxcompress.graph import to_graph, to_model
    from onnxcompress.io import load_model
    from onnxcompress.normalize import normalize
    from onnxcompress.passes import binarize
    from onnxcompress.passes.base import Context

    model = normalize(load_model(path))
    graph = to_graph(model)
    calibration = Calibration(Dataset(calib, None), graph.outputs[0].name) if calib else None
    report = binarize.run(graph, binarize.Config(**cfg), Context(calibration))
    return to_model(graph, like=model), report.notes


def evaluate(out: Path) -> dict[str, dict[str, float | int | str]]:
    """Accuracies (%) of the zoo pair and of their binarized forms on the full test split."""
    x, y = load("test")
    calib = dict(np.load(out / "data" / "calib.npz"))
    calib.pop("labels", None)
    acc = lambda logits: round(100.0 * float((logits.argmax(1) == y).mean()), 2)
    res: dict[str, dict[str, float | int | str]] = {}
    base = _ort_logits(out / "binary_xnor.onnx", x)
    res["binary_xnor"] = {"accuracy": acc(base)}
    for target in ("portable", "native"):
        t0 = time.perf_counter()
        model, _ = _binarized(out / "binary_xnor.onnx", None, mode="xnor", target=target)
        got = _ort_logits(model, x)
        res[f"binary_xnor lowered {target}"] = {
            "accuracy": acc(got), "changed_predictions": int((got.argmax(1) != base.argmax(1)).sum()),
            "max_abs_logit_diff": float(np.abs(got - base).max()),
            "seconds": round(time.perf_counter() - t0, 1)}
        print(target, res[f"binary_xnor lowered {target}"], flush=True)
    res["binary_float"] = {"accuracy": acc(_ort_logits(out / "binary_float.onnx", x))}
    variants = (("xnor", {}), ("xnor + K", {"input_scaling": True}), ("bwn", {}))
    for label, extra in variants:
        for name, data in (("no calib", None), ("calib refit", calib)):
            mode = label.split()[0]
            model, _ = _binarized(out / "binary_float.onnx", data, mode=mode, target="portable",
                                  **extra)
            key = f"binary_float post-training {label}, {name}"
            res[key] = {"accuracy": acc(_ort_logits(model, x))}
            print(key, res[key], flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    """Train both networks, export them and print their test accuracies as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--evaluate", action="store_true", help="measure the exported models instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.evaluate:
        results = evaluate(args.out)
        (args.out / "binary_zoo.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        return 0
    torch.set_flush_denormal(True)
    x, y = load("train", args.limit)
    xt, yt = load("test")
    results = {}
    for name, binary in (("binary_xnor", True), ("binary_float", False)):
        torch.manual_seed(args.seed)
        model = network(binary)
        print(f"{name}: training {args.epochs} epoch(s)", flush=True)
        train(model, x, y, args.epochs, args.lr, args.seed)
        acc = accuracy(model, xt, yt)
        if binary:
            model = freeze_binary(model)
            frozen = accuracy(model, xt, yt)
            if abs(frozen - acc) > 0.02:
                raise AssertionError(f"freezing changed the accuracy: {acc} -> {frozen}")
        export(model, args.out / f"{name}.onnx")
        results[name] = {"torch_test_accuracy": round(acc, 2), "epochs": args.epochs}
        print(f"{name}: test accuracy {acc:.2f}% -> {args.out / (name + '.onnx')}", flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
