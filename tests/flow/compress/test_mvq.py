"""MVQ / VQ layers: decoding by explicit loops, forward = conv2d/linear, codebook quantization, errors."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flow.compress.errors import (
    ChannelDivisibilityError,
    CodebookSizeError,
    CompressionError,
    NMConfigError,
    UnsupportedLayerError,
    VectorLengthError,
)
from flow.compress.mvq import MVQConv2d, MVQLinear
from flow.compress.nm import is_nm_sparse
from flow.compress.vq import VQConv2d, VQLinear


def decode_conv_by_loops(codebook, indices, mask, cin):
    """W[co, ci, i, j] = mask * codebook[indices[co, i, j, ci // d], ci % d], one element at a time."""
    cout, kh, kw, _ = indices.shape
    d = codebook.shape[1]
    w = np.zeros((cout, cin, kh, kw), dtype=np.float32)
    for co in range(cout):
        for i in range(kh):
            for j in range(kw):
                for ci in range(cin):
                    w[co, ci, i, j] = mask[co, ci, i, j] * codebook[indices[co, i, j, ci // d], ci % d]
    return w


def decode_linear_by_loops(codebook, indices, mask):
    cout, cin = mask.shape
    d = codebook.shape[1]
    w = np.zeros((cout, cin), dtype=np.float32)
    for o in range(cout):
        for i in range(cin):
            w[o, i] = mask[o, i] * codebook[indices[o, i // d], i % d]
    return w


@pytest.fixture
def conv():
    torch.manual_seed(0)
    return nn.Conv2d(16, 6, (3, 2), stride=(2, 1), padding=(1, 0), bias=True)


def test_conv_layout_forward_and_attributes(conv):
    layer = MVQConv2d.from_conv(conv, n=2, m=4, k=16, d=8, iters=10, seed=1)
    assert (layer.in_channels, layer.out_channels, layer.kernel_size) == (16, 6, (3, 2))
    assert (layer.stride, layer.padding, layer.n, layer.m, layer.d, layer.k) == ((2, 1), (1, 0), 2, 4, 8, 16)
    assert layer.codebook.shape == (16, 8) and layer.codebook.dtype == torch.float32
    assert isinstance(layer.codebook, nn.Parameter)
    assert layer.indices.shape == (6, 3, 2, 2) and layer.indices.dtype == torch.int64
    assert layer.mask.shape == (6, 16, 3, 2) and layer.mask.dtype == torch.float32
    assert set(dict(layer.named_buffers())) == {"indices", "mask"}  # codebook_scale is None until quantized
    assert layer.codebook_scale is None and layer.bias is not None
    assert is_nm_sparse(layer.mask, 2, 4, dim=1)
    ref = decode_conv_by_loops(layer.codebook.detach().numpy(), layer.indices.numpy(), layer.mask.numpy(), 16)
    np.testing.assert_array_equal(layer.decoded_weight().detach().numpy(), ref)
    x = torch.randn(2, 16, 7, 5)
    expect = F.conv2d(x, torch.from_numpy(ref), conv.bias, (2, 1), (1, 0))
    torch.testing.assert_close(layer(x), expect, rtol=0, atol=0)
    # the mask is the magnitude 2:4 mask of the original weight, and decoding approximates it
    assert torch.equal(layer.mask, __import__("flow.compress.nm", fromlist=["nm_mask"]).nm_mask(conv.weight, 2, 4))
    err = (layer.decoded_weight() - conv.weight * layer.mask).norm() / (conv.weight * layer.mask).norm()
    assert err < 0.6


def test_linear_layout_and_forward():
    torch.manual_seed(1)
    lin = nn.Linear(24, 5)
    layer = MVQLinear.from_linear(lin, n=1, m=4, k=8, d=8, iters=5)
    assert (layer.in_features, layer.out_features, layer.n, layer.m, layer.d, layer.k) == (24, 5, 1, 4, 8, 8)
    assert layer.indices.shape == (5, 3) and layer.mask.shape == (5, 24)
    ref = decode_linear_by_loops(layer.codebook.detach().numpy(), layer.indices.numpy(), layer.mask.numpy())
    np.testing.assert_array_equal(layer.decoded_weight().detach().numpy(), ref)
    x = torch.randn(3, 24)
    torch.testing.assert_close(layer(x), F.linear(x, torch.from_numpy(ref), lin.bias), rtol=0, atol=0)
    assert MVQLinear.from_linear(nn.Linear(16, 4, bias=False), 2, 4, 4, 8).bias is None


def test_vq_is_mvq_without_mask(conv):
    layer = VQConv2d.from_conv(conv, k=16, d=8)
    assert isinstance(layer, MVQConv2d) and layer.n == layer.m == 8 and torch.equal(layer.mask, torch.ones(6, 16, 3, 2))
    assert VQConv2d.from_conv(conv, k=16, d=8, m=4).n == 4
    lin = VQLinear.from_linear(nn.Linear(16, 4), k=4, d=4)
    assert isinstance(lin, MVQLinear) and lin.n == lin.m == 4 and bool((lin.mask == 1).all())
    assert layer.method == "vq" and MVQConv2d.from_conv(conv, 2, 4, 16, 8).method == "mvq"


def test_quantize_codebook(conv):
    layer = MVQConv2d.from_conv(conv, 2, 4, 16, 8)
    before = layer.codebook.detach().clone()
    layer.quantize_codebook_()
    scale = float(before.abs().max()) / 127
    assert layer.codebook_scale.dim() == 0 and float(layer.codebook_scale) == pytest.approx(scale, rel=1e-6)
    q, s = layer.int_codebook()
    assert q.dtype == np.int8 and q.shape == (16, 8) and np.abs(q).max() == 127
    np.testing.assert_array_equal(q, np.round(before.numpy() / np.float32(s)).astype(np.int8))
    torch.testing.assert_close(layer.codebook.detach(), torch.from_numpy(q).float() * s, rtol=0, atol=0)
    assert (layer.codebook.detach() - before).abs().max() <= s / 2 + 1e-7
    # the forward uses the quantized codebook
    x = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(layer(x), F.conv2d(x, layer.decoded_weight(), layer.bias, layer.stride, layer.padding))
    # a quantized state_dict loads into a fresh (unquantized) layer, and deep copies keep the scale
    fresh = MVQConv2d.from_conv(conv, 2, 4, 16, 8)
    fresh.load_state_dict(layer.state_dict())
    assert float(fresh.codebook_scale) == float(layer.codebook_scale)
    assert float(copy.deepcopy(layer).codebook_scale) == float(layer.codebook_scale)
    with pytest.raises(CompressionError, match="quantize_codebook_"):
        MVQConv2d.from_conv(conv, 2, 4, 16, 8).int_codebook()
    with pytest.raises(CompressionError, match="bits"):
        layer.quantize_codebook_(bits=9)


def test_layer_errors(conv):
    with pytest.raises(ChannelDivisibilityError, match="'conv_a'.*Cin=16.*d=12"):
        MVQConv2d.from_conv(conv, 2, 4, 8, 12, name="conv_a")
    with pytest.raises(VectorLengthError, match="multiple of m=4"):
        MVQConv2d.from_conv(conv, 2, 4, 8, 6)
    with pytest.raises(CodebookSizeError, match="k <= 72"):
        MVQConv2d.from_conv(conv, 2, 4, 100, 8)
    with pytest.raises(NMConfigError):
        MVQConv2d.from_conv(conv, 5, 4, 8, 8)
    with pytest.raises(UnsupportedLayerError, match="groups=2"):
        MVQConv2d.from_conv(nn.Conv2d(16, 8, 3, groups=2), 2, 4, 8, 8)
    with pytest.raises(UnsupportedLayerError, match="dilation"):
        MVQConv2d.from_conv(nn.Conv2d(16, 8, 3, dilation=2), 2, 4, 8, 8)
    with pytest.raises(UnsupportedLayerError, match="not nn.Conv2d"):
        MVQConv2d.from_conv(nn.BatchNorm2d(16), 2, 4, 8, 8)
    with pytest.raises(UnsupportedLayerError, match="not nn.Linear"):
        MVQLinear.from_linear(conv, 2, 4, 8, 8)


def test_given_mask_is_used_and_checked(conv):
    from flow.compress.nm import nm_mask

    score = torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(5))
    mask = nm_mask(conv.weight, 2, 4, dim=1, score=score)
    layer = MVQConv2d.from_conv(conv, 2, 4, 16, 8, mask=mask)
    assert torch.equal(layer.mask, mask) and not torch.equal(mask, nm_mask(conv.weight, 2, 4))
    assert torch.all(layer.decoded_weight()[mask == 0] == 0)
    lin = nn.Linear(16, 4)
    lmask = nm_mask(lin.weight, 1, 4, score=torch.rand(4, 16))
    assert torch.equal(MVQLinear.from_linear(lin, 1, 4, 4, 8, mask=lmask).mask, lmask)
    with pytest.raises(CompressionError, match="exactly n=2 of every m=4"):
        MVQConv2d.from_conv(conv, 2, 4, 16, 8, mask=torch.ones_like(conv.weight))
    with pytest.raises(CompressionError, match="mask shape"):
        MVQConv2d.from_conv(conv, 2, 4, 16, 8, mask=torch.ones(3))


def test_codebook_diagnostics_by_hand(conv):
    from flow.compress.mvq import codebook_diagnostics, mvq_diagnostics

    layer = MVQConv2d.from_conv(conv, 2, 4, 16, 8, iters=5)
    w = conv.weight.detach()
    d = codebook_diagnostics(layer, w)
    dec, m = layer.decoded_weight().detach(), layer.mask
    assert d["kept"] == int(m.sum()) == w.numel() // 2 and d["weights"] == w.numel() and d["vectors"] == 6 * 3 * 2 * 2
    assert d["mse_kept"] == pytest.approx(float((((dec - w) * m) ** 2).sum() / m.sum()), rel=1e-6)
    assert d["rel_err_kept"] == pytest.approx(float((((dec - w) * m) ** 2).sum() / ((w * m) ** 2).sum()), rel=1e-6)
    assert d["rel_err_all"] == pytest.approx(float(((dec - w) ** 2).sum() / (w ** 2).sum()), rel=1e-6)
    assert d["energy_kept"] == pytest.approx(float(((w * m) ** 2).sum()), rel=1e-6)
    assert d["rel_err_all"] > d["rel_err_kept"]  # the pruned weights' energy counts there
    # bits as compression_report counts them: 4-bit indices, 3 bits per 2:4 group, float32 codebook
    assert (d["bits_index"], d["bits_mask"], d["bits_codebook"]) == (72 * 4, w.numel() // 4 * 3, 16 * 8 * 32)
    assert d["bpw_mask"] == 0.75 and d["bpw_index"] == pytest.approx(288 / w.numel()) == 0.5
    counts = np.bincount(layer.indices.flatten().numpy(), minlength=16)
    p = counts[counts > 0] / counts.sum()
    assert d["used"] == (counts > 0).mean()
    assert d["entropy"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert d["entropy_ratio"] == pytest.approx(d["entropy"] / 4)
    # a 1-codeword layer: everything uses it, entropy 0
    one = codebook_diagnostics(MVQConv2d.from_conv(conv, 4, 4, 1, 8), w)
    assert (one["used"], one["entropy"], one["bits_index"], one["bits_mask"]) == (1.0, 0.0, 0, 0)
    # whole model: one entry per codebook layer, against the same-named source weights
    from flow.compress import compress

    net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), conv)
    c = compress(net, "mvq", n=2, m=4, k=16, d=8, skip=("first",), iters=5)
    diag = mvq_diagnostics(c, net)
    assert list(diag) == ["2"] and diag["2"]["kept"] == w.numel() // 2
    with pytest.raises(CompressionError, match="source weight shape"):
        codebook_diagnostics(layer, w[:, :8])
