"""Train the Fashion-MNIST zoo with PyTorch and export each model to ONNX (opset 17).

Every model takes `input` float32 (N, 1, 28, 28) with a dynamic batch and returns `logits`
(N, 10). BatchNormalization stays in the exported graphs (constant folding off) because
onnxcompress folds it itself; all weights are plain initializers in one file.

    python models/train.py --model all --epochs 0 --seed 0 --out models/

`--epochs 0` uses each model's default epoch count (DEFAULT_EPOCHS). PyTorch is needed only
here; nothing else in the repository imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from fashion_mnist import MEAN, STD, load
from torch import nn
from torch.nn import functional as F

BACKGROUND = -MEAN / STD  # a black pixel after normalization

# ---------------------------------------------------------------------------------------------
# Architectures


def lenet300() -> nn.Module:
    """LeNet-300-100 (LeCun et al. 1998): a 784-300-100-10 MLP with ReLU."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, 10),
    )  # fmt: skip


def lenet5() -> nn.Module:
    """LeNet-5 as in Caffe and Han et al. 2015 (conv20-pool-conv50-pool-fc500-fc10), plus ReLU
    after each conv."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500), nn.ReLU(),
        nn.Linear(500, 10),
    )  # fmt: skip


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    """3x3 conv (no bias), BatchNorm2d, ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def vgg() -> nn.Module:
    """VGG-style: 3x3 conv+BN+ReLU stages of widths 32 | 64, 64 | 128, 128, each closed by
    max-pooling, then Linear 1152→512, BatchNorm1d, ReLU, Dropout, Linear 512→10."""
    return nn.Sequential(
        *_conv_bn(1, 32), nn.MaxPool2d(2),
        *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2),
        *_conv_bn(64, 128), *_conv_bn(128, 128), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 3 * 3, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(512, 10),
    )  # fmt: skip


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 conv+BN, identity or 1x1-conv+BN shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


def resnet() -> nn.Module:
    """Small ResNet: 3x3 stem (32) + max-pool, basic blocks 32@14x14, 64@7x7, 128@4x4 (1x1
    projection shortcuts where the shape changes), global average pool, Linear 128→10."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        BasicBlock(32, 32, 1), BasicBlock(32, 64, 2), BasicBlock(64, 128, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip


class Fire(nn.Module):
    """SqueezeNet fire module (Iandola et al. 2016): squeeze 1x1, then expand 1x1 ‖ 3x3, Concat."""

    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(s)), F.relu(self.expand3x3(s))], dim=1)


def he_init(model: nn.Module) -> nn.Module:
    """He-normal conv weights and zero biases; the last conv (the classifier) gets N(0, 0.01²)
    as in SqueezeNet. Without BatchNorm, PyTorch's default init leaves this net stuck at chance."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(conv.bias)
    nn.init.normal_(convs[-1].weight, std=0.01)
    return model


def squeezenet() -> nn.Module:
    """SqueezeNet-style, no BatchNorm: conv 3x3 (32), pool, fire x2 (s16, e64), pool, fire x2
    (s32, e128), dropout, conv 1x1 → 10 classes, global average pool, flatten."""
    return he_init(nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        Fire(32, 16, 64), Fire(128, 16, 64), nn.MaxPool2d(2),
        Fire(128, 32, 128), Fire(256, 32, 128),
        nn.Dropout(0.3), nn.Conv2d(256, 10, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ))  # fmt: skip


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): global average pool, 1x1 conv down + SiLU,
    1x1 conv up, then a sigmoid gate that rescales each channel of the input."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.silu(self.reduce(F.adaptive_avg_pool2d(x, 1)))
        return x * torch.sigmoid(self.expand(s))


class InvertedResidual(nn.Module):
    """MobileNet-V2 inverted residual with squeeze-excitation, as in EfficientNet's MBConv
    (Sandler et al. 2018, Tan & Le 2019): 1x1 expand + BN + act (skipped when expand == 1),
    3x3 depthwise + BN + act, SE, 1x1 linear projection + BN, identity Add when the stride is 1
    and the channel count is unchanged. `act` is nn.SiLU (swish) or nn.Hardswish."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), act(),
            SqueezeExcite(hidden, max(8, cin // 4)),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        ]  # fmt: skip
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def mobilenet() -> nn.Module:
    """MobileNet-V2 / EfficientNet-style net for 28x28: 3x3 stem (16) + BN + SiLU, inverted
    residual blocks with SE (SiLU at 28² and 14², hard-swish at 7²), 1x1 head conv (384) + BN +
    hard-swish, global average pool, Dropout, Linear 384→10."""
    silu, hswish = nn.SiLU, nn.Hardswish
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), silu(),
        InvertedResidual(16, 16, 1, 1, silu),     # 28x28
        InvertedResidual(16, 24, 6, 2, silu),     # 14x14
        InvertedResidual(24, 24, 6, 1, silu),
        InvertedResidual(24, 48, 6, 2, hswish),   # 7x7
        InvertedResidual(48, 48, 6, 1, hswish),
        InvertedResidual(48, 96, 6, 1, hswish),
        InvertedResidual(96, 96, 6, 1, hswish),
        nn.Conv2d(96, 384, 1, bias=False), nn.BatchNorm2d(384), hswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(384, 10),
    )  # fmt: skip


class SelfAttention(nn.Module):
    """Multi-head self-attention written out (Vaswani et al. 2017): one Linear for q, k, v,
    softmax(q kᵀ / √d) v per head, an output Linear."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block: x + MSA(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A small ViT (Dosovitskiy et al. 2021) for 28x28: non-overlapping patches embedded by a
    strided conv, a class token, learned position embeddings, pre-norm encoder blocks, a final
    LayerNorm and a Linear head on the class token."""

    def __init__(
        self, patch: int = 4, dim: int = 128, depth: int = 6, heads: int = 4, hidden: int = 256
    ) -> None:
        super().__init__()
        tokens = (28 // patch) ** 2
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit() -> nn.Module:
    """ViT: 7x7 patches (16 tokens + class token), width 96, 6 blocks of 4 heads, MLP 192.
    (4x4 patches cost 3x more per step, too much for this machine's training budget.)"""
    return VisionTransformer(patch=7, dim=96, depth=6, heads=4, hidden=192)


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is built and trained."""

    build: object  # () -> nn.Module
    epochs: int
    optimizer: str  # "sgd" (Nesterov momentum 0.9) or "adamw"
    lr: float  # peak learning rate of the one-cycle schedule
    weight_decay: float
    augment: bool  # random horizontal flip and ±2 px translation
    exporter: str = "torchscript"  # or "dynamo" (torch.export-based); see export()


RECIPES: dict[str, Recipe] = {
    "lenet300": Recipe(lenet300, 12, "sgd", 0.05, 5e-4, False),
    "lenet5": Recipe(lenet5, 10, "sgd", 0.05, 5e-4, False),
    "vgg": Recipe(vgg, 6, "sgd", 0.1, 5e-4, True),
    "resnet": Recipe(resnet, 8, "sgd", 0.1, 5e-4, True),
    "squeezenet": Recipe(squeezenet, 8, "adamw", 0.002, 5e-4, True),
    "mobilenet": Recipe(mobilenet, 8, "sgd", 0.1, 5e-4, True),
    "vit": Recipe(vit, 12, "adamw", 0.001, 0.05, True, exporter="dynamo"),
}
BN_KEPT = ("vgg", "resnet", "mobilenet")  # models whose export must keep BatchNormalization

# ---------------------------------------------------------------------------------------------
# Training


def augment(x: torch.Tensor, gen: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and random translation by up to `shift` pixels (black fill)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (shift, shift, shift, shift), value=BACKGROUND)
    side = 2 * shift + 1
    offset = torch.randint(0, side * side, (n,), generator=gen)
    out = torch.empty_like(x)
    for k in offset.unique().tolist():  # one slice per distinct (dy, dx): at most side² copies
        dy, dx = divmod(k, side)
        sel = offset == k
        out[sel] = padded[sel, :, dy : dy + h, dx : dx + w]
    return out


def batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """A seeded random split of range(n) into index batches of `size` (the last may be short)."""
    return list(torch.randperm(n, generator=gen).split(size))


def train_epoch(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    gen: torch.Generator,
    aug: bool,
    batch_size: int,
) -> float:
    """One pass over the training set; returns the mean training loss."""
    x_all, y_all = data
    model.train()
    total = 0.0
    for idx in batches(len(x_all), batch_size, gen):
        x = augment(x_all[idx], gen) if aug else x_all[idx]
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item() * len(idx)
    return total / len(x_all)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy (%) of `model` in eval mode."""
    model.eval()
    hits = 0
    for i in range(0, len(x), batch_size):
        hits += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return 100.0 * hits / len(x)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer over all parameters."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=recipe.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=recipe.weight_decay,
        )
    raise ValueError(f"Expected optimizer 'sgd' or 'adamw', got {recipe.optimizer!r}")


def fit(name: str, epochs: int, seed: int, batch_size: int = 128) -> tuple[nn.Module, dict]:
    """Build and train one zoo model; returns it (eval mode) and a record of the run."""
    recipe = RECIPES[name]
    epochs = epochs or recipe.epochs
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = recipe.build().to(memory_format=torch.channels_last)
    x, y = (torch.from_numpy(a) for a in load("train"))
    steps = epochs * math.ceil(len(x) / batch_size)
    opt = make_optimizer(model, recipe)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        loss = train_epoch(model, (x, y), opt, sched, gen, recipe.augment, batch_size)
        print(
            f"{name} epoch {epoch + 1}/{epochs} loss {loss:.4f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    seconds = time.perf_counter() - start
    model = model.to(memory_format=torch.contiguous_format).eval()
    xt, yt = (torch.from_numpy(a) for a in load("test"))
    record = {
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "optimizer": recipe.optimizer,
        "lr": recipe.lr,
        "train_seconds": round(seconds, 1),
        "torch_test_top1": round(accuracy(model, xt, yt), 2),
        "torch_threads": torch.get_num_threads(),
    }
    return model, record


# ---------------------------------------------------------------------------------------------
# Export


def inline_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each Identity of an initializer (the exporter's de-duplication of equal tensors)
    by a copy of that initializer under the Identity's output name."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    for node in [n for n in graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)
    return model


def _rank(graph: onnx.GraphProto, name: str) -> int | None:
    """Rank of tensor `name` from (inferred) value info, None if unknown."""
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def gemm_from_transposed_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite MatMul(x, Transpose(W)) with a 2-D x and a constant W as Gemm(x, W, transB=1).

    With constant folding off, the exporter emits a bias-free nn.Linear as Transpose + MatMul;
    as Gemm, the weight is a plain initializer that passes can see.
    """
    graph = onnx.shape_inference.infer_shapes(model).graph
    inits = {t.name for t in model.graph.initializer}
    producer = {out: n for n in model.graph.node for out in n.output}
    readers = [name for n in model.graph.node for name in n.input]
    for node in [n for n in model.graph.node if n.op_type == "MatMul"]:
        t = producer.get(node.input[1])
        perm = [list(a.ints) for a in t.attribute if a.name == "perm"] if t is not None else []
        if (
            t is None
            or t.op_type != "Transpose"
            or t.input[0] not in inits
            or perm not in ([], [[1, 0]])
            or readers.count(t.output[0]) != 1
            or _rank(graph, node.input[0]) != 2
        ):
            continue
        gemm = onnx.helper.make_node(
            "Gemm",
            [node.input[0], t.input[0]],
            list(node.output),
            name=node.name.replace("MatMul", "Gemm"),
            transB=1,
        )
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(index, gemm)
        model.graph.node.remove(t)
    return model


def _export_torchscript(model: nn.Module, dummy: torch.Tensor, path: Path) -> None:
    """The TorchScript exporter, constant folding off: BN nodes stay, a Linear on a 3-D input
    becomes MatMul(x, Transpose(W)) + Add."""
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but keeps BN nodes
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        )


def _export_dynamo(model: nn.Module, dummy: torch.Tensor, path: Path) -> None:
    """The torch.export-based exporter (needs onnxscript) with its graph optimizer: Linear
    weights become pre-transposed MatMul initializers with generated names (`val_13`), nodes are
    named after ATen ops (`node_layer_norm`). It builds opset 18 and converts down to 17; a
    model whose conversion fails (ReduceMean in the MobileNet's SE blocks) stays at 18, which is
    an error here. Its optimizer also folds eval-mode BatchNorm into Conv, so BN nets use the
    TorchScript exporter."""
    program = torch.onnx.export(
        model,
        (dummy,),
        dynamo=True,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("N")},),
        optimize=True,
        verbose=False,
    )
    program.save(str(path))


def export(model: nn.Module, path: Path, exporter: str = "torchscript") -> onnx.ModelProto:
    """Export with the given exporter (opset 17, dynamic batch, weights inline) and check it."""
    dummy = torch.zeros(2, 1, 28, 28)
    if exporter == "torchscript":
        _export_torchscript(model, dummy, path)
    elif exporter == "dynamo":
        _export_dynamo(model, dummy, path)
    else:
        raise ValueError(f"Expected exporter 'torchscript' or 'dynamo', got {exporter!r}")
    proto = gemm_from_transposed_matmul(inline_identities(onnx.load(str(path))))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset != 17:
        raise RuntimeError(f"{path}: expected opset 17 from the {exporter} exporter, got {opset}")
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def count_ops(proto: onnx.ModelProto, op_type: str) -> int:
    """How many nodes of `op_type` the graph has."""
    return sum(n.op_type == op_type for n in proto.graph.node)


def check_against_torch(model: nn.Module, path: Path, x: np.ndarray) -> float:
    """Largest |ONNX Runtime − PyTorch| logit difference on `x`."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    return float(np.abs(got - want).max())


# ---------------------------------------------------------------------------------------------
# CLI


def run_one(name: str, epochs: int, seed: int, out: Path) -> dict:
    """Train, export, verify one model; returns its training record."""
    model, record = fit(name, epochs, seed)
    path = out / f"{name}.onnx"
    proto = export(model, path, RECIPES[name].exporter)
    record["exporter"] = RECIPES[name].exporter
    if name in BN_KEPT and count_ops(proto, "BatchNormalization") == 0:
        raise RuntimeError(f"{path}: expected BatchNormalization nodes, the exporter folded them")
    diff = check_against_torch(model, path, load("test", limit=256)[0])
    if diff > 1e-3:
        raise RuntimeError(f"{path}: ONNX Runtime and PyTorch disagree by {diff:.2e}")
    record["params"] = sum(p.numel() for p in model.parameters())
    print(f"{name}: {record}", flush=True)
    return record


def update_zoo_json(path: Path, name: str, record: dict) -> None:
    """Store `record` under models[name]['training'] in the zoo JSON, keeping other entries."""
    zoo = json.loads(path.read_text()) if path.is_file() else {}
    zoo.setdefault(name, {})["training"] = record
    path.write_text(json.dumps(zoo, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all", choices=["all", *RECIPES])
    parser.add_argument("--epochs", type=int, default=0, help="0: each model's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(args.threads, 2))
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)  # denormal activations slow CPU training many times over
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(RECIPES) if args.model == "all" else [args.model]
    for name in names:
        record = run_one(name, args.epochs, args.seed, args.out)
        update_zoo_json(args.out / "zoo.json", name, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
