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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F

from fashion_mnist import load

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
    """Caffe's LeNet-5 (the one pruned in Han et al. 2015): conv20-pool-conv50-pool-fc500-fc10."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500), nn.ReLU(),
        nn.Linear(500, 10),
    )  # fmt: skip


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    """3x3 conv (no bias), BatchNorm2d, ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def vgg() -> nn.Module:
    """VGG-style: 3 stages of two 3x3 conv+BN+ReLU (32, 64, 128) with max-pooling, then
    Linear 1152→512, BatchNorm1d, ReLU, Dropout, Linear 512→10."""
    return nn.Sequential(
        *_conv_bn(1, 32), *_conv_bn(32, 32), nn.MaxPool2d(2),
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
    """Small ResNet: 3x3 stem (32), blocks 32@28x28, 64@14x14, 128@7x7 (projection shortcuts
    where the shape changes), global average pool, Linear 128→10."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        BasicBlock(32, 32, 1), BasicBlock(32, 64, 2), BasicBlock(64, 128, 2),
        BasicBlock(128, 128, 1),
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


def squeezenet() -> nn.Module:
    """SqueezeNet-style: conv 3x3 (64), pool, fire x2 (s16, e64), pool, fire x2 (s32, e128),
    dropout, conv 1x1 → 10 classes, global average pool, flatten."""
    return nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        Fire(64, 16, 64), Fire(128, 16, 64), nn.MaxPool2d(2),
        Fire(128, 32, 128), Fire(256, 32, 128),
        nn.Dropout(0.3), nn.Conv2d(256, 10, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is built and trained."""

    build: object  # () -> nn.Module
    epochs: int
    lr: float  # peak learning rate of the one-cycle schedule (SGD, Nesterov momentum 0.9)
    weight_decay: float
    augment: bool  # random horizontal flip and ±2 px translation


RECIPES: dict[str, Recipe] = {
    "lenet300": Recipe(lenet300, 12, 0.05, 5e-4, False),
    "lenet5": Recipe(lenet5, 12, 0.05, 5e-4, False),
    "vgg": Recipe(vgg, 12, 0.1, 5e-4, True),
    "resnet": Recipe(resnet, 12, 0.1, 5e-4, True),
    "squeezenet": Recipe(squeezenet, 15, 0.05, 5e-4, True),
}
