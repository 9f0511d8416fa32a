"""compress(): layer selection, overrides, documented errors; compression_report(): hand-counted bits."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from flow.compress import (
    ChannelDivisibilityError,
    CodebookSizeError,
    CompressionError,
    MVQConv2d,
    MVQLinear,
    NMConfigError,
    UnknownLayerError,
    UnknownMethodError,
    UnsupportedLayerError,
    VectorLengthError,
    VQConv2d,
    compress,
    compression_report,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1))
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(32, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = self.body(torch.relu(self.bn(self.stem(x))))
        return self.fc2(torch.relu(self.fc1(self.pool(self.dw(x)).flatten(1))))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Net().eval()


def test_default_compress_replaces_middle_layers(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = compress(net, k=16, iters=5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # original untouched
    assert type(out.stem) is nn.Conv2d and type(out.fc2) is nn.Linear  # first / last stay dense
    assert isinstance(out.body[0], MVQConv2d) and isinstance(out.body[2], MVQConv2d)
    assert isinstance(out.fc1, MVQLinear) and type(out.dw) is nn.Conv2d  # depthwise: left dense by the sweep
    assert out.body[0].codebook_scale is not None  # int8 codebooks by default
    assert out(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert compress(net, k=16, iters=5, quantize_codebooks=False).fc1.codebook_scale is None


def test_skip_names_overrides_and_vq(net):
    out = compress(net, k=16, iters=3, skip=("first", "last", "body"),
                   overrides={"body.2": dict(method="vq", k=8), "fc1": dict(n=1, k=4)})
    assert type(out.body[0]) is nn.Conv2d  # skipped with its parent name
    assert isinstance(out.body[2], VQConv2d) and out.body[2].k == 8 and out.body[2].n == out.body[2].m == 4
    assert out.fc1.n == 1 and out.fc1.k == 4
    out = compress(net, method="vq", k=16, iters=3, skip=[], overrides={"stem": dict(method="none")})
    assert type(out.stem) is nn.Conv2d and isinstance(out.fc2, MVQLinear) and out.fc2.n == out.fc2.m
    out = compress(net, k=16, iters=3, skip="stem")  # a single string is one name
    assert type(out.stem) is nn.Conv2d and isinstance(out.fc2, MVQLinear)


def test_bn_recalibration_with_data(net):
    x = torch.randn(64, 3, 8, 8)
    a = compress(net, k=16, iters=3)
    b = compress(net, k=16, iters=3, data=x)
    assert not torch.equal(a.bn.running_mean, b.bn.running_mean)
    assert not b.training and b.bn.momentum == net.bn.momentum


def test_clip_k(net):
    # body.2 is a 1x1 conv 16->32: 32 * 16/8 = 64 vectors
    with pytest.raises(CodebookSizeError, match=r"'body.2'.*k=100.*64.*overrides=.*clip_k=True"):
        compress(net, k=100, iters=2)
    out = compress(net, k=100, iters=2, clip_k=True)
    assert out.body[2].k == 64 and out.body[0].k == 100


@pytest.mark.parametrize("kwargs,cls,pattern", [
    (dict(method="kmeans"), UnknownMethodError, "'mvq', 'vq', 'pq', 'vecq'"),
    (dict(method="pq"), CompressionError, "needs? data=|learns its prototypes"),
    (dict(method="vecq", bits=9), CompressionError, "bits"),
    (dict(n=4, m=4), NMConfigError, "method='vq'"),
    (dict(n=5, m=4), NMConfigError, "n <= m"),
    (dict(n=0), NMConfigError, "at least one"),
    (dict(d=6), VectorLengthError, "multiple of m=4"),
    (dict(d=32, k=4), ChannelDivisibilityError, r"'body.0'.*Cin=16.*d=32.*\[4, 8, 16\]"),
    (dict(skip=("nope",)), UnknownLayerError, "'first', 'last'"),
    (dict(overrides={"nope": dict(k=2)}), UnknownLayerError, "compressible layers"),
    (dict(overrides={"bn": dict(k=2)}), UnsupportedLayerError, "BatchNorm2d"),
    (dict(overrides={"dw": dict(k=2)}), UnsupportedLayerError, "groups=32"),
    (dict(overrides={"fc1": dict(kk=2)}), CompressionError, "unknown keys"),
    (dict(overrides={"fc1": dict(method="foo")}), UnknownMethodError, "'fc1'"),
    (dict(overrides={"fc1": dict(n=4, m=4)}), NMConfigError, "'fc1'.*method='vq'"),
])
def test_bad_input_raises_documented_error(net, kwargs, cls, pattern):
    kw = dict(k=16, iters=2)
    kw.update(kwargs)
    with pytest.raises(cls, match=pattern) as e:
        compress(net, **kw)
    assert isinstance(e.value, ValueError)


def test_compress_spec_is_the_one_home_of_the_settings(net):
    """compress(model, method=..., ...) builds a CompressSpec: the same result from the spec, the same errors from
    building it, and the build's recipe keys are its per-layer keys (issue 18 item 4)."""
    import dataclasses

    from flow.build.options import LAYER_KEYS as RECIPE_LAYER_KEYS
    from flow.compress import CompressSpec, plan
    from flow.compress.spec import DEFAULT_SKIP, LAYER_KEYS

    spec = CompressSpec(method="vq", k=16, d=8, iters=2, skip="stem")
    assert spec.skip == ("stem",) and CompressSpec().skip is DEFAULT_SKIP and CompressSpec().skipped == ("first", "last")
    assert CompressSpec(method="vecq").skipped == () and CompressSpec.of("vq", k=16, d=8, iters=2, skip="stem") == spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.k = 8  # type: ignore[misc]
    a = compress(net, spec)
    b = compress(net, method="vq", k=16, d=8, iters=2, skip="stem")
    assert all(torch.equal(a.state_dict()[key], val) for key, val in b.state_dict().items())
    assert [p.k for p in plan(net, spec)] == [p.k for p in plan(net, "vq", k=16, d=8, iters=2, skip="stem")]
    with pytest.raises(NMConfigError, match="method='vq'"):
        CompressSpec(n=4, m=4)
    with pytest.raises(TypeError, match="kk"):
        compress(net, kk=3)
    with pytest.raises(TypeError, match="method given twice"):
        plan(net, "vq", method="mvq")
    assert RECIPE_LAYER_KEYS == LAYER_KEYS and set(LAYER_KEYS) <= {f.name for f in dataclasses.fields(CompressSpec)}


def test_dilated_conv_override():
    m = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3, dilation=2), nn.Conv2d(8, 8, 3))
    assert type(compress(m, k=4, iters=2)[1]) is nn.Conv2d
    with pytest.raises(UnsupportedLayerError, match="dilation"):
        compress(m, k=4, iters=2, overrides={"1": dict(k=4)})


def test_report_matches_a_hand_count():
    torch.manual_seed(0)
    toy = nn.Sequential(nn.Conv2d(16, 8, 3, bias=True), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 4))
    out = compress(toy, "mvq", n=2, m=4, k=16, d=8, skip=("last",), iters=3)
    rep = compression_report(out)
    conv, bn, fc = rep.rows
    # conv: 8*16*3*3 = 1152 weights, 1152/8 = 144 vectors
    #   indices 144 * log2(16) = 576; masks 1152/4 = 288 groups * ceil(log2 C(4,2)=6) = 3 bits = 864
    #   codebook 16*8 int8 = 1024; scale 32; bias 8*32 = 256  -> 2752 bits
    assert conv.bits == {"indices": 576, "masks": 864, "codebook": 1024, "scale": 32, "bias": 256}
    assert conv.total_bits == 2752 and conv.params == 1160 and conv.float_bits == 37120
    assert conv.ratio == pytest.approx(37120 / 2752)
    assert bn.total_bits == 2 * 8 * 32 and bn.ratio == 1.0  # folded scale + shift
    assert fc.bits == {"weights": 32 * 32, "scale": 0, "bias": 4 * 32} and fc.method == "dense"
    assert rep.total_bits == 2752 + 512 + 1152
    assert rep.float_bits == 37120 + 512 + 1152
    assert rep.ratio == pytest.approx(38784 / 4416)
    table = rep.table()
    assert "TOTAL" in table and "MVQConv2d" in table and "8.78x" in table
    # VQ: no mask bits; float codebook: 32 bits per entry and no scale; int8 dense layers add a scale
    vq = compression_report(compress(toy, "vq", k=16, d=8, skip=("last",), iters=3, quantize_codebooks=False))
    assert vq.rows[0].bits == {"indices": 576, "masks": 0, "codebook": 16 * 8 * 32, "scale": 0, "bias": 256}
    assert compression_report(toy, dense_bits=8).rows[2].bits == {"weights": 256, "scale": 32, "bias": 128}
    # odd k: ceil(log2 10) = 4 bits per index; 1:4 -> ceil(log2 4) = 2 bits per group; 3:8 -> ceil(log2 56) = 6
    odd = compress(nn.Sequential(nn.Linear(16, 8, bias=False)), n=1, m=4, k=10, d=8, skip=(), iters=2)
    assert compression_report(odd).rows[0].bits["indices"] == 16 * 4
    assert compression_report(odd).rows[0].bits["masks"] == 32 * 2
    odd = compress(nn.Sequential(nn.Linear(16, 8, bias=False)), n=3, m=8, k=10, d=8, skip=(), iters=2)
    assert compression_report(odd).rows[0].bits["masks"] == 16 * 6
    d = rep.as_dict()
    assert d["total_bits"] == rep.total_bits and len(d["layers"]) == 3


def test_compress_is_deterministic(net):
    a, b = compress(net, k=16, iters=4, seed=3), compress(net, k=16, iters=4, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
