"""Model zoo: ``get(name, **kw) -> nn.Module``.

All models use only layers the kit lowers: Conv2d, BatchNorm2d, ReLU,
MaxPool2d, AvgPool2d / AdaptiveAvgPool2d(1), Flatten, Linear, and ResNet
basic blocks whose shortcut is identity or 1x1 conv + BN.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class LeNetDigits(nn.Module):
    """2-conv CNN for 8x8 digits: [B,1,8,8] -> [B,10]."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 2 * 2, 64), nn.ReLU(), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class CNNFmnist(nn.Module):
    """Small CNN for 28x28: [B,1,28,28] -> [B,10]."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block; shortcut is identity or 1x1 conv + BN (option B)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet20 (3 stages of 16/32/64 channels, 3 blocks each): [B,C,H,W] -> [B,classes]."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, blocks: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        layers, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.flatten(self.pool(x)))


class ResNet8(nn.Module):
    """MLPerf Tiny image-classification ResNet-8 (``resnet_v1_eembc`` of the MLPerf Tiny reference,
    training/image_classification/keras_model.py): [B,3,32,32] -> [B,classes].

    conv 16 3x3 + BN + ReLU, then three stacks of 16 / 32 / 64 channels, each two 3x3 convs (BN, ReLU
    after the first, BN after the second), stride 2 in the first conv of stacks 2 and 3; the shortcut is
    the identity in stack 1 and a 1x1 stride-2 conv (with bias, no BN, as in the reference) in stacks 2
    and 3; add, ReLU; average pool over the 8x8 map, dense 10. 8 weight layers on the main path.
    Padding is PyTorch's symmetric padding=1 where Keras pads 'same' (0 top/left, 1 bottom/right for a
    stride-2 3x3 on an even map): the shapes and MAC counts are the same.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stacks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            blk = BasicBlock(cin, cout, stride)
            if stride != 1 or cin != cout:   # the reference's shortcut: a 1x1 conv with bias, no BN
                blk.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=True))
            stacks.append(blk)
            cin = cout
        self.stacks = nn.Sequential(*stacks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.stacks(x)
        return self.fc(self.flatten(self.pool(x)))


_ZOO: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "lenet-digits": (LeNetDigits, "digits"),
    "cnn-fmnist": (CNNFmnist, "fashion-mnist"),
    "resnet20": (ResNet20, "cifar10"),
    "resnet8": (ResNet8, "cifar10"),
}


def names() -> list[str]:
    return sorted(_ZOO)


def default_dataset(name: str) -> str:
    """The dataset a zoo model is meant for (resnet20 -> cifar10)."""
    _check(name)
    return _ZOO[name][1]


class UnknownModelError(ValueError):
    """The model name is not in the zoo."""


def _check(name: str) -> None:
    if name not in _ZOO:
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(names())}")


def get(name: str, **kw) -> nn.Module:
    """Build a fresh, untrained zoo model. kw: in_channels, num_classes, ..."""
    _check(name)
    return _ZOO[name][0](**kw)
