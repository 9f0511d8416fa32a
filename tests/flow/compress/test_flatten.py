"""A Linear that reads a flattened CxHxW map cuts its codeword vectors and N:M groups along C
(flow.compress.flatten): found by tracing, decoded back to torch's column order, N:M along C."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flow.compress import compress
from flow.compress.errors import CompressionError
from flow.compress.flatten import flatten_sources
from flow.compress.mvq import MVQLinear

IDIOMS = {
    "nn.Flatten": lambda self, x: self.flat(x),
    "torch.flatten": lambda self, x: torch.flatten(x, 1),
    "view size(0)": lambda self, x: x.view(x.size(0), -1),
    "reshape shape[0]": lambda self, x: x.reshape(x.shape[0], -1),
    "dropout after": lambda self, x: self.drop(torch.flatten(x, 1)),
}


class Net(nn.Module):
    """conv 1->8 -> maxpool 2 -> <flatten idiom> -> Linear(8*3*3, 10)."""

    def __init__(self, idiom: str):
        super().__init__()
        self.idiom = idiom
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(IDIOMS[self.idiom](self, x))


@pytest.mark.parametrize("idiom", sorted(IDIOMS))
def test_flatten_sources_finds_every_idiom(idiom):
    net = Net(idiom).train()
    stats = net.bn.running_mean.clone()
    assert flatten_sources(net, torch.rand(4, 1, 6, 6)) == {"fc": (8, 3, 3)}
    assert net.training and torch.equal(net.bn.running_mean, stats)   # the example left no trace


def test_no_spatial_flatten_no_example_or_no_trace_gives_nothing():
    pooled = nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    assert flatten_sources(pooled, torch.rand(1, 1, 6, 6)) == {}      # H*W == 1: the orders coincide
    assert flatten_sources(Net("nn.Flatten"), None) == {}

    class DataDependent(Net):
        def forward(self, x):
            if x.sum() > 0:   # torch.fx cannot trace this
                x = x * 2
            return super().forward(x)

    assert flatten_sources(DataDependent("nn.Flatten"), torch.rand(1, 1, 6, 6)) == {}


def _hwc(a: np.ndarray, c: int, h: int, w: int) -> np.ndarray:
    """Columns of a [O, C*H*W] array from torch's (c, h, w) order to (h, w, c), written out by hand."""
    out = np.empty_like(a)
    for ci in range(c):
        for hi in range(h):
            for wi in range(w):
                out[:, (hi * w + wi) * c + ci] = a[:, (ci * h + hi) * w + wi]
    return out


def test_mvq_linear_cuts_vectors_and_groups_along_channels():
    torch.manual_seed(0)
    lin = nn.Linear(8 * 3 * 3, 10)
    layer = MVQLinear.from_linear(lin, n=2, m=4, k=16, d=8, iters=5, in_chw=(8, 3, 3))
    assert layer.in_chw == (8, 3, 3) and tuple(layer.indices.shape) == (10, 9)
    w_hwc = _hwc(lin.weight.detach().numpy(), 8, 3, 3)
    mask_hwc = _hwc(layer.mask.numpy(), 8, 3, 3)
    groups, wg = mask_hwc.reshape(10, -1, 4), np.abs(w_hwc).reshape(10, -1, 4)
    assert np.all(groups.sum(-1) == 2)                                  # 2:4 along the 8 channels of a pixel
    kth = np.sort(wg, -1)[..., 2:3]
    assert np.all((wg >= kth) == (groups == 1))                         # the two largest of each group kept
    cb = layer.codebook.detach().numpy()
    dec_hwc = cb[layer.indices.numpy()].reshape(10, -1) * mask_hwc      # vector j of a row = pixel j's 8 channels
    assert np.array_equal(_hwc(layer.decoded_weight().detach().numpy(), 8, 3, 3), dec_hwc)
    x = torch.rand(5, 72)
    assert torch.allclose(layer(x), x @ layer.decoded_weight().T + lin.bias, atol=1e-6)
    with pytest.raises(CompressionError, match="in_chw"):
        MVQLinear(72, 10, layer.codebook, layer.indices, layer.mask, None, 2, 4, in_chw=(4, 3, 6))   # 4 % d


def test_compress_uses_the_example_and_keeps_torch_order_without_one():
    torch.manual_seed(0)
    net = Net("view size(0)").eval()
    x = torch.rand(16, 1, 6, 6)
    with_ex = compress(net, "mvq", n=2, m=4, k=16, d=8, iters=3, skip=("first",), example=x[:1])
    without = compress(net, "mvq", n=2, m=4, k=16, d=8, iters=3, skip=("first",))
    assert with_ex.fc.in_chw == (8, 3, 3) and without.fc.in_chw is None
    assert compress(net, "mvq", n=2, m=4, k=16, d=8, iters=3, skip=("first",), data=x).fc.in_chw == (8, 3, 3)
    # either way the compressed model is a model of the same function: its forward uses the decoded weight
    for c in (with_ex, without):
        ref = F.linear(torch.flatten(F.max_pool2d(F.relu(c.bn(c.conv(x))), 2), 1), c.fc.decoded_weight(), c.fc.bias)
        assert torch.allclose(c(x), ref, atol=1e-6)
