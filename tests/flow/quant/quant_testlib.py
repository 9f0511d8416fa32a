"""Shared helpers of the quant / compile tests: small models and codebook layers.

``mvq_conv`` / ``mvq_linear`` build flow.compress.mvq layers (k-means of the
layer's own weights, int8 codebook), the layers quantize_model consumes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flow.compress.mvq import MVQConv2d, MVQLinear


def mvq_conv(conv: nn.Conv2d, n: int = 2, m: int = 4, d: int = 8, k: int = 16, seed: int = 0) -> MVQConv2d:
    """MVQ (n < m) or VQ (n == m) replacement of ``conv`` with an int8 codebook."""
    return MVQConv2d.from_conv(conv, n=n, m=m, k=k, d=d, iters=8, seed=seed).quantize_codebook_(8)


def mvq_linear(lin: nn.Linear, n: int = 2, m: int = 4, d: int = 8, k: int = 16, seed: int = 0) -> MVQLinear:
    return MVQLinear.from_linear(lin, n=n, m=m, k=k, d=d, iters=8, seed=seed).quantize_codebook_(8)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (negative gammas included)."""
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_((torch.rand(c, generator=gen) - 0.5) * 0.6)
            mod.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
            mod.weight.data.copy_((torch.rand(c, generator=gen) - 0.3) * 2.0)
            mod.bias.data.copy_((torch.rand(c, generator=gen) - 0.5))
    return model.eval()


class LeNetLike(nn.Module):
    """conv-bn-relu-maxpool x2, flatten of a 2x2 map (exercises the NCHW->NHWC permutation), 2 linears."""

    def __init__(self, cin: int = 1, width: int = 8, mvq: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=True), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4, 32), nn.ReLU(), nn.Linear(32, 10))
        if mvq:
            self.features[4] = mvq_conv(self.features[4], d=8, k=16, seed=1)
            self.classifier[3] = mvq_linear(self.classifier[3], n=4, m=4, d=8, k=8, seed=2)  # VQ: n == m

    def forward(self, x):
        return self.classifier(self.features(x))


class Block(nn.Module):
    """ResNet basic block (as models.zoo.BasicBlock), with functional relu/add to test those forms."""

    def __init__(self, cin: int, cout: int, stride: int = 1, mvq: bool = False, seed: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        if mvq:
            self.conv1 = mvq_conv(self.conv1, d=8, k=32, seed=seed)
            self.conv2 = mvq_conv(self.conv2, n=8, m=8, d=8, k=32, seed=seed + 1)  # VQ

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(torch.add(out, self.shortcut(x)))


class SmallResNet(nn.Module):
    """stem, identity block, projection block (stride 2), global pool, linear: [B,3,16,16] -> [B,10]."""

    def __init__(self, mvq: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b1 = Block(16, 16, 1, mvq, seed=10)
        self.b2 = Block(16, 32, 2, mvq, seed=20)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.b2(self.b1(self.stem(x)))), 1))


def images(n: int, shape=(1, 8, 8), seed: int = 0) -> torch.Tensor:
    """Random float images in [0, 1] (smooth-ish so activations are not pure noise)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=gen)
    return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1) * 0.5 + x * 0.5
