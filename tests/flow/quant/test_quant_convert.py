"""quantize_model + golden run against torch float execution of the same model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flow.quant.convert import UnsupportedLayerError, quantize_model
from flow.quant.golden import predict, quantize_input, run
from quant_testlib import Block, LeNetLike, SmallResNet, images, mvq_linear, randomize_bn


def float_out(model, x):
    with torch.no_grad():
        return model.eval()(x).numpy()


def assert_close(graph, model, x, max_lsb=3.0, mean_lsb=0.6):
    """Golden vs float within a few output quantization steps (errors accumulate over layers)."""
    err = np.abs(predict(graph, x) - float_out(model, x)) / graph.out_tensor.scale
    assert err.max() <= max_lsb and err.mean() <= mean_lsb, (err.max(), err.mean())


@pytest.mark.parametrize("mvq", [False, True], ids=["dense", "mvq"])
def test_lenet_like_matches_float(mvq):
    torch.manual_seed(0)
    model = randomize_bn(LeNetLike(mvq=mvq))
    x = images(384, (1, 8, 8))
    g = quantize_model(model, x[:256])
    assert [nd.kind for nd in g.nodes] == ["conv", "maxpool", "conv", "maxpool", "conv", "conv"]
    assert g.nodes[2].wfmt == ("codebook" if mvq else "dense")
    # the flatten of a 2x2x16 map: the first linear reads 1x1x64 and its columns were permuted
    assert g.nodes[4].in_view == (1, 1, 64) and g.tensors[g.nodes[4].inp].shape == (2, 2, 16)
    assert_close(g, model, x)


@pytest.mark.parametrize("mvq", [False, True], ids=["dense", "mvq"])
def test_small_resnet_matches_float(mvq):
    torch.manual_seed(1)
    model = randomize_bn(SmallResNet(mvq=mvq), seed=3)
    x = images(256, (3, 16, 16))
    g = quantize_model(model, x[:128])
    by = {nd.name: nd for nd in g.nodes}
    # identity shortcut: the stem's uint8 output is b1.conv2's residual
    assert by["b1.conv2"].res == by["stem.0"].out and g.tensors[by["b1.conv2"].res].unsigned
    # projection shortcut: conv+BN (signed) computed before the conv that adds it
    assert by["b2.conv2"].res == by["b2.shortcut.0"].out and not g.tensors[by["b2.conv2"].res].unsigned
    names = [nd.name for nd in g.nodes]
    assert names.index("b2.shortcut.0") < names.index("b2.conv2")
    assert by["b2.conv2"].src.endswith("Add+ReLU") and by["b2.conv2"].lo == 0
    assert by["pool"].kind == "avgpool" and by["pool"].KH == 8
    assert_close(g, model, x)


@pytest.mark.slow
def test_zoo_resnet20_matches_float():
    from models import zoo

    torch.manual_seed(2)
    model = randomize_bn(zoo.get("resnet20", in_channels=3))
    x = images(48, (3, 32, 32))
    g = quantize_model(model, x[:32])
    assert sum(nd.res is not None for nd in g.nodes) == 9
    assert_close(g, model, x, max_lsb=4.0)


class SpatialFlatten(nn.Module):
    """Flatten of a 4x4x6 map straight into a Linear: wrong without the NCHW->NHWC column permutation."""

    def __init__(self, codebook_fc: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 12)
        if codebook_fc:
            self.fc = mvq_linear(self.fc, d=8, k=16, seed=5)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


@pytest.mark.parametrize("codebook_fc", [False, True], ids=["dense", "codebook"])
def test_flatten_permutation(codebook_fc):
    torch.manual_seed(3)
    model = SpatialFlatten(codebook_fc).eval()
    x = images(128, (2, 8, 8))
    g = quantize_model(model, x)
    fc = g.nodes[-1]
    assert fc.in_view == (1, 1, 128) and g.tensors[fc.inp].shape == (4, 4, 8)
    assert_close(g, model, x, max_lsb=2.0)
    if codebook_fc:  # vectors along torch's (c,h,w) order don't survive the permutation: stored dense
        assert fc.wfmt == "dense" and g.meta["dense_fallback"] == ["fc"]
    # without the permutation the same integers would give a different (wrong) answer
    wrong = fc.weight.reshape(12, 8, 4, 4).transpose(0, 2, 3, 1).reshape(12, 1, 1, 128)
    fc.weight = np.ascontiguousarray(wrong)
    err = np.abs(predict(g, x) - float_out(model, x)) / g.out_tensor.scale
    assert err.max() > 10


def test_constant_channels_from_zero_gamma():
    """gamma == 0 (zero-init residual BN) and tiny gamma: the channel is exactly round(beta/s_y) + residual."""
    torch.manual_seed(4)
    model = randomize_bn(Block(8, 8))
    with torch.no_grad():
        model.bn2.weight[:3] = 0.0
        model.bn2.weight[3] = 1e-12
    x = images(64, (8, 6, 6))
    g = quantize_model(model, x)
    node = next(nd for nd in g.nodes if nd.name == "conv2")
    assert g.meta["constant_channels"]["conv2"]["channels"] == [0, 1, 2, 3]
    assert np.all(node.weight[:4] == 0) and np.all(node.mult[:4] == 1 << node.shift[:4])
    err = np.abs(predict(g, x) - float_out(model, x)) / g.out_tensor.scale
    assert err.max() <= 3.0


def test_quantize_input_format():
    x = torch.tensor([[[[0.0, 0.25, 0.75], [1.0, 200.0, -0.1]]]])  # [1,1,2,3]
    q = quantize_input(x, 0.5, True)
    assert q.dtype == np.uint8 and q.shape == (1, 2, 3, 1)
    assert q[0, :, :, 0].tolist() == [[0, 0, 2], [2, 255, 0]]  # half to even, saturated
    assert quantize_input(x[:, :, :1] * 0 + 1.0, 1 / 255, True).max() == 255
    q = quantize_input(x.numpy(), 0.01, False)
    assert q.dtype == np.int8 and q[0, 1, :, 0].tolist() == [100, 127, -10]


def test_maxpool_keeps_scale_and_signedness():
    model = randomize_bn(LeNetLike())
    g = quantize_model(model, images(64))
    for nd in g.nodes:
        if nd.kind == "maxpool":
            ti, to = g.tensors[nd.inp], g.tensors[nd.out]
            assert ti.scale == to.scale and ti.unsigned == to.unsigned


def test_calibration_methods_and_input_format():
    model = randomize_bn(LeNetLike())
    x = images(64)
    gmax = quantize_model(model, x, method="max")
    gp = quantize_model(model, x, method="percentile", percentile=99.0)
    # the percentile clips: smaller scales on the ReLU tensors; the output is always calibrated with max
    assert gp.tensors[gp.nodes[0].out].scale < gmax.tensors[gmax.nodes[0].out].scale
    assert gp.out_tensor.scale == gmax.out_tensor.scale
    assert gmax.in_tensor.scale == 1 / 255 and gmax.in_tensor.unsigned
    gs = quantize_model(model, x * 2 - 1)  # data outside [0, 1]: signed input, max-abs scale
    assert not gs.in_tensor.unsigned and gs.in_tensor.scale == pytest.approx(float((x * 2 - 1).abs().max()) / 127)
    with pytest.raises(ValueError, match="calibration method"):
        quantize_model(model, x, method="mse")


def test_run_is_integer_and_batched_consistently():
    model = randomize_bn(SmallResNet())
    x = images(20, (3, 16, 16))
    g = quantize_model(model, x)
    xi = quantize_input(x, g.in_tensor.scale, g.in_tensor.unsigned)
    full = run(g, xi)
    assert full.dtype == np.int64 and full.shape == (20, 1, 1, 10)
    assert np.array_equal(run(g, xi, batch_size=3), full)
    assert np.array_equal(run(g, xi[7:8])[0], full[7])
    trace = run(g, xi, return_all=True)
    assert np.array_equal(trace["fc"], full)


# ------------------------------------------------------------------ unsupported layers


class Wrap(nn.Module):
    def __init__(self, body, fn=None):
        super().__init__()
        self.body = body
        self.fn = fn

    def forward(self, x):
        y = self.body(x)
        return self.fn(y) if self.fn else y


def conv_bn_relu(cin=4, cout=8, **kw):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, **kw), nn.BatchNorm2d(cout), nn.ReLU())


@pytest.mark.parametrize("model,match", [
    (Wrap(nn.Sequential(nn.Conv2d(4, 8, 3), nn.Sigmoid())), r"'body\.1' \(Sigmoid\).*layer type Sigmoid.*Supported"),
    (Wrap(conv_bn_relu(groups=2)), r"'body\.0' \(Conv2d\).*grouped.*groups=2"),
    (Wrap(conv_bn_relu(dilation=2)), r"'body\.0'.*dilat"),
    (Wrap(nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.BatchNorm2d(8))), r"'body\.2'.*BatchNorm2d"),
    (Wrap(nn.Sequential(nn.Conv2d(4, 8, 3)), torch.sigmoid), r"sigmoid.*not supported"),
    (Wrap(nn.Sequential(nn.Conv2d(4, 8, 3), nn.Linear(6, 3))), r"'body\.1'.*Linear on a 4-D"),
    (Wrap(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"))), r"padding_mode"),
    (Wrap(nn.Sequential(nn.Conv2d(4, 8, 3), nn.MaxPool2d(2, padding=1))), r"MaxPool2d padding"),
    (Wrap(nn.Sequential(nn.Conv2d(4, 8, 3), nn.LeakyReLU())), r"LeakyReLU"),
    (Wrap(nn.Sequential(nn.Conv2d(4, 8, 3), nn.MaxPool2d(2)), F.relu), r"ReLU on a signed tensor"),
])
def test_unsupported_layers(model, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        quantize_model(model, images(4, (4, 8, 8)))


class TwoPoolAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.p1, self.p2 = nn.MaxPool2d(2), nn.MaxPool2d(2)

    def forward(self, x):
        y = self.conv(x)
        return self.p1(y) + self.p2(y)


class SharedConvAdd(nn.Module):
    """conv output used twice, the other operand the model input: nothing to fuse the first add into."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return (y + x) + y


def test_unfusable_add_is_a_clear_error():
    with pytest.raises(UnsupportedLayerError, match="cannot be fused"):
        quantize_model(TwoPoolAdd(), images(4, (4, 8, 8)))
    with pytest.raises(UnsupportedLayerError, match="cannot be fused"):
        quantize_model(SharedConvAdd(), images(4, (4, 8, 8)))


def test_identity_dropout_and_functional_forms_are_accepted():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.drop = nn.Dropout(0.5)
            self.id = nn.Identity()
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = self.drop(F.relu(self.bn(self.c(x))))
            y = F.adaptive_avg_pool2d(self.id(y), 1)
            return self.fc(torch.flatten(y, 1))

    model = randomize_bn(M())
    x = images(64, (3, 8, 8))
    g = quantize_model(model, x)
    assert [nd.kind for nd in g.nodes] == ["conv", "avgpool", "conv"]
    assert g.nodes[0].src == "Conv2d+BatchNorm2d+ReLU"
    assert_close(g, model, x, max_lsb=2.0)


@pytest.mark.parametrize("scheme", ["sweep", "paper"])
def test_vecq_layers_run_dense(scheme):
    vecq = pytest.importorskip("flow.compress.vecq")
    torch.manual_seed(6)
    model = randomize_bn(LeNetLike())
    model.features[4] = vecq.VecQConv2d.from_conv(model.features[4], bits=4, scheme=scheme)
    model.classifier[1] = vecq.VecQLinear.from_linear(model.classifier[1], bits=6, scheme=scheme)  # after the flatten
    model.eval()
    x = images(256, (1, 8, 8))
    g = quantize_model(model, x[:128])
    conv, fc = g.nodes[2], g.nodes[4]
    # sweep: codes within +-(2^(b-1) - 1); paper: odd codes (half-integer levels x 2) within +-(2^b - 1)
    top4, top6 = (7, 31) if scheme == "sweep" else (15, 63)
    assert conv.wfmt == "dense" and np.abs(conv.weight).max() <= top4 and len(set(conv.w_scale)) == 1
    assert np.abs(fc.weight).max() <= top6
    if scheme == "paper":
        assert np.all(conv.weight % 2 == 1) and np.all(fc.weight % 2 == 1)
    codes, step = model.features[4].int_weight()
    assert np.array_equal(conv.weight, codes.transpose(0, 2, 3, 1)) and conv.w_scale[0] == step
    assert_close(g, model, x)


def test_float_codebook_is_refused():
    from flow.compress.mvq import MVQConv2d
    from flow.quant.convert import QuantizationError

    model = LeNetLike()
    model.features[4] = MVQConv2d.from_conv(model.features[4], n=2, m=4, k=8, d=8, iters=2)  # not int8 yet
    with pytest.raises(QuantizationError, match=r"'features\.4' \(MVQConv2d\).*quantize_codebook_"):
        quantize_model(model, images(8))


def test_codebook_integers_are_the_layers():
    """The graph's codebook layer holds exactly the layer's int8 codebook, indices and mask."""
    model = randomize_bn(LeNetLike(mvq=True))
    g = quantize_model(model, images(32))
    layer, nd = model.features[4], g.nodes[2]
    cb, scale = layer.int_codebook()
    assert np.array_equal(nd.codebook, cb) and np.all(nd.w_scale == scale)
    assert np.array_equal(nd.idx, layer.indices.numpy())
    w = nd.int_weight().transpose(0, 3, 1, 2) * scale  # [OC,C,KH,KW]
    assert np.allclose(w, layer.decoded_weight().detach().numpy(), rtol=0, atol=1e-6)
