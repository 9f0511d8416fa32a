"""Users' own models, written as their authors write them, through compression, quantization, lowering
and C-simulation (issue 12: compressed layers keep the original layout; every flatten idiom is supported;
the engine is sized for the model; one call from an nn.Module to a bit-exact C-simulation)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flow.compress.mvq import MVQConv2d, MVQLinear
from flow.compress.vecq import VecQConv2d, VecQLinear
from flow.compress.vq import VQConv2d, VQLinear
from small_cases import trained_digits_cnn


# ------------------------------------------------------------------------------------------------------
# 1. a compressed layer's output has the shape, dtype and memory layout of the layer it replaces

def _conv(cin=16, cout=8, k=3, stride=1, pad=1, bias=True):
    torch.manual_seed(0)
    return nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=bias).eval()


def _linear(cin=32, cout=10):
    torch.manual_seed(0)
    return nn.Linear(cin, cout).eval()


def _same_layout(ref: torch.Tensor, got: torch.Tensor):
    assert got.shape == ref.shape
    assert got.dtype == ref.dtype
    assert got.is_contiguous() == ref.is_contiguous()
    assert got.stride() == ref.stride()
    assert got.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(memory_format=torch.channels_last)


CONV_MAKERS = {
    "mvq": lambda c: MVQConv2d.from_conv(c, n=2, m=4, k=16, d=8, iters=2),
    "vq": lambda c: VQConv2d.from_conv(c, k=16, d=8, iters=2),
    "vecq": lambda c: VecQConv2d.from_conv(c, bits=4),
}
LINEAR_MAKERS = {
    "mvq": lambda l: MVQLinear.from_linear(l, n=2, m=4, k=8, d=8, iters=2),
    "vq": lambda l: VQLinear.from_linear(l, k=8, d=8, iters=2),
    "vecq": lambda l: VecQLinear.from_linear(l, bits=4),
}


def _pq_conv(c, x):
    from flow.compress.pq import PQConv2d
    return PQConv2d.from_conv(c, v=8, K=4, calib_x=x, iters=2).eval()


@pytest.mark.parametrize("method", sorted(CONV_MAKERS))
@pytest.mark.parametrize("geom", [(3, 1, 1), (1, 1, 0), (3, 2, 1)])
def test_compressed_conv_keeps_the_output_layout(method, geom):
    k, stride, pad = geom
    conv = _conv(k=k, stride=stride, pad=pad)
    layer = CONV_MAKERS[method](conv).eval()
    x = torch.rand(3, 16, 9, 9)
    with torch.no_grad():
        _same_layout(conv(x), layer(x))
        _same_layout(conv(x[0]), layer(x[0]))                          # unbatched input
        xc = x.contiguous(memory_format=torch.channels_last)           # a channels-last user keeps channels-last
        _same_layout(conv(xc), layer(xc))
        layer(x).view(x.size(0), -1)                                   # the idiom that crashed


def test_pq_conv_keeps_the_output_layout():
    conv = _conv()
    x = torch.rand(3, 16, 9, 9)
    layer = _pq_conv(conv, x)
    with torch.no_grad():
        _same_layout(conv(x), layer(x))


@pytest.mark.parametrize("method", sorted(LINEAR_MAKERS))
def test_compressed_linear_keeps_the_output_layout(method):
    lin = _linear()
    layer = LINEAR_MAKERS[method](lin).eval()
    for x in (torch.rand(5, 32), torch.rand(2, 3, 32), torch.rand(32)):
        with torch.no_grad():
            _same_layout(lin(x), layer(x))


class _ViewNet(nn.Module):
    """Flattens as many published CNNs do: x.view(x.size(0), -1) right after a conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = self.conv2(x)
        x = x.view(x.size(0), -1)
        return self.fc(x)


@pytest.mark.parametrize("method", ["mvq", "vq"])
def test_compressed_model_with_view_flatten_runs_its_own_forward(method):
    from flow.compress import compress

    torch.manual_seed(0)
    model = _ViewNet().eval()
    c = compress(model, method=method, k=16, d=8, iters=2, clip_k=True, skip=("first",))
    assert isinstance(c.conv2, MVQConv2d)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert c(x).shape == model(x).shape == (4, 10)


# ------------------------------------------------------------------------------------------------------
# 2. flatten idioms of published CNNs, through quantize -> lower -> C-sim, bit-exact against golden

class LeNet5(nn.Module):
    """LeNet-5 as in the PyTorch "Neural Networks" tutorial (padding 2 on conv1 for 28x28 Fashion-MNIST),
    flattening with the tutorial's x.view(-1, 16 * 5 * 5)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


class DigitsLeNet(nn.Module):
    """A LeNet for the 8x8 sklearn digits, as a tutorial writes it: x.view(x.size(0), -1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


class VGGish(nn.Module):
    """A VGG-style network as torchvision's VGG is written (features / classifier, ReLU(True), Dropout),
    flattening with x.view(x.size(0), -1)."""

    def __init__(self, cfg=(16, 16, "M", 32, 32, "M"), in_channels=3, num_classes=10, spatial=4):
        super().__init__()
        layers, c = [], in_channels
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(c * spatial * spatial, 64), nn.ReLU(True), nn.Dropout(),
            nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        x = self.classifier(x)
        return x


class _Flat(nn.Module):
    """conv -> maxpool -> <flatten idiom> -> linear; the idioms must all give the nn.Flatten() graph."""

    IDIOMS = {
        "nn.Flatten": lambda self, x: self.flat(x),
        "torch.flatten": lambda self, x: torch.flatten(x, 1),
        "x.flatten": lambda self, x: x.flatten(1),
        "view size(0)": lambda self, x: x.view(x.size(0), -1),
        "view size()[0]": lambda self, x: x.view(x.size()[0], -1),
        "reshape shape[0]": lambda self, x: x.reshape(x.shape[0], -1),
        "torch.reshape": lambda self, x: torch.reshape(x, (x.size(0), -1)),
        "view -1, CHW": lambda self, x: x.view(-1, 8 * 3 * 3),
        "view size(0), CHW": lambda self, x: x.view(x.size(0), 8 * 3 * 3),
        "view tuple": lambda self, x: x.view((x.size(0), -1)),
    }

    def __init__(self, idiom: str):
        super().__init__()
        self.idiom = idiom
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc(self.IDIOMS[self.idiom](self, x))


def _randomize_bn(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


def _golden_vs_csim(model: nn.Module, in_shape, engine=None, n_calib=32, n_test=6, seed=0):
    """quantize -> lower -> golden and C-sim; returns (golden, csim, float logits, dequantized golden)."""
    from flow.compile import EngineConfig, lower
    from flow.hls.csim import CsimEngine
    from flow.quant import quantize_input, quantize_model
    from flow.quant import run as golden_run

    engine = engine or EngineConfig()
    g = torch.Generator().manual_seed(seed)
    calib = torch.rand(n_calib, *in_shape, generator=g)
    xt = torch.rand(n_test, *in_shape, generator=g)
    q = quantize_model(model, calib)
    x = quantize_input(xt.numpy(), q.in_tensor.scale, q.in_tensor.unsigned)
    prog = lower(q, engine)
    gold = golden_run(q, x)
    sim = CsimEngine(engine).predict(prog, x)
    with torch.no_grad():
        ref = model.eval()(xt).numpy()
    deq = gold.reshape(len(xt), -1).astype(np.float64) * q.out_tensor.scale
    return gold, sim, ref, deq


def _close_to_float(ref: np.ndarray, deq: np.ndarray, tol: float = 0.1) -> None:
    """The integer model computes the float model (a wrong flatten order would not): relative error < tol."""
    assert deq.shape == ref.shape
    err = np.linalg.norm(deq - ref) / max(np.linalg.norm(ref), 1e-9)
    assert err < tol, f"integer logits differ from the float model's by {err:.3f} (relative)"


@pytest.mark.parametrize("idiom", sorted(_Flat.IDIOMS))
def test_every_flatten_idiom_quantizes_to_the_nn_flatten_graph(idiom):
    from flow.quant import quantize_model
    from flow.quant import run as golden_run
    from flow.quant import quantize_input

    torch.manual_seed(0)
    ref_model = _Flat("nn.Flatten").eval()
    _randomize_bn(ref_model, 0)
    model = _Flat(idiom).eval()
    model.load_state_dict(ref_model.state_dict())
    calib = torch.rand(16, 1, 6, 6)
    qa, qb = quantize_model(ref_model, calib), quantize_model(model, calib)
    assert [(nd.kind, nd.in_view, nd.is_linear) for nd in qa.nodes] == [(nd.kind, nd.in_view, nd.is_linear)
                                                                        for nd in qb.nodes]
    x = quantize_input(torch.rand(4, 1, 6, 6).numpy(), qa.in_tensor.scale, qa.in_tensor.unsigned)
    assert np.array_equal(golden_run(qa, x), golden_run(qb, x))


@pytest.mark.parametrize("spec", ["x.view(1, -1)", "x.view(x.size(0), 8, -1)",
                                  "x.view(-1, 8)"])
def test_other_views_are_refused_with_a_clear_error(spec):
    from flow.quant import quantize_model
    from flow.quant.convert import UnsupportedLayerError

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.fc = nn.Linear({"x.view(-1, 8)": 8, "x.view(x.size(0), 8, -1)": 36}.get(spec, 288), 10)

        def forward(self, x):
            x = F.relu(self.conv(x))
            x = eval(spec)
            return self.fc(x)

    with pytest.raises(UnsupportedLayerError, match="flatten from dim 1"):
        quantize_model(M().eval(), torch.rand(4, 1, 6, 6))


@pytest.mark.csim
@pytest.mark.parametrize("name", ["lenet5-fmnist", "lenet-digits", "vgg-mvq"])
def test_published_style_cnns_are_bit_exact_in_csim(name):
    from flow.compress import compress

    torch.manual_seed(0)
    if name == "lenet5-fmnist":
        model, shape = LeNet5().eval(), (1, 28, 28)
    elif name == "lenet-digits":
        model, shape = DigitsLeNet().eval(), (1, 8, 8)
    else:
        model, shape = VGGish().eval(), (3, 16, 16)
        _randomize_bn(model, 3)
    x0 = torch.rand(2, *shape)
    with torch.no_grad():
        assert model(x0).shape == (2, 10)
    if name == "vgg-mvq":   # compressed convs keep the layout the view(x.size(0), -1) needs
        model = compress(model, method="mvq", n=2, m=4, k=32, d=8, iters=3, clip_k=True, skip=("first", "last"))
        with torch.no_grad():
            assert model(x0).shape == (2, 10)
    gold, sim, ref, deq = _golden_vs_csim(model, shape)
    assert sim.shape == gold.shape
    assert np.array_equal(sim.astype(np.int64), gold.astype(np.int64))
    assert len({bytes(s.tobytes()) for s in sim}) == len(sim)   # not degenerate: images differ
    _close_to_float(ref, deq, tol=0.15)


# ------------------------------------------------------------------------------------------------------
# 3. engine sizing for a model, within a board's resources

class MNISTNet(nn.Module):
    """The 28x28 MNIST CNN of many tutorials: a 28x28x32 map (25 KB) and a 1,152-input Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3)
        self.fc1 = nn.Linear(32 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


class _Wide(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.pool = nn.AvgPool2d(size // 4)
        self.fc = nn.Linear(64 * 16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(F.relu(self.conv(x))), 1))


def test_size_engine_keeps_the_default_build_when_the_model_fits_it():
    from flow.boards.sizing import model_needs, size_engine
    from flow.compile import EngineConfig
    from flow.quant import quantize_model

    torch.manual_seed(0)
    q = quantize_model(MNISTNet().eval(), torch.rand(8, 1, 28, 28))
    need = model_needs(q, 8, EngineConfig().act_banks)
    assert need["max_channels"] == 64 and need["max_kernel"] == 6     # the 1,152-input Linear is a 6x6x32 conv
    assert size_engine(q) == EngineConfig()


def test_size_engine_grows_the_activation_buffer_within_the_board():
    from flow.boards.resource_model import check_fit
    from flow.boards.sizing import size_engine
    from flow.compile import EngineConfig, LoweringError, lower
    from flow.quant import quantize_model

    torch.manual_seed(0)
    q = quantize_model(_Wide(48).eval(), torch.rand(4, 3, 48, 48))
    with pytest.raises(LoweringError):
        lower(q, EngineConfig())
    cfg = size_engine(q, "pynq-z2")
    assert cfg.act_buf_bytes >= 48 * 48 * 64
    check_fit(cfg, "pynq-z2")
    lower(q, cfg)


def test_size_engine_lists_every_broken_limit_at_once():
    from flow.boards.sizing import SizingError, size_engine
    from flow.quant import quantize_model

    torch.manual_seed(0)
    q = quantize_model(_Wide(128).eval(), torch.rand(2, 3, 128, 128))
    with pytest.raises(SizingError) as e:
        size_engine(q, "pynq-z2")
    msg = str(e.value)
    assert "act_buf_bytes: the model needs 1048576" in msg and "BRAM36" in msg


@pytest.mark.csim
def test_mnist_cnn_runs_bit_exact_on_the_sized_engine():
    from flow.boards.sizing import size_engine
    from flow.quant import quantize_model

    torch.manual_seed(0)
    model = MNISTNet().eval()
    cfg = size_engine(quantize_model(model, torch.rand(8, 1, 28, 28)), "pynq-z2")
    gold, sim, ref, deq = _golden_vs_csim(model, (1, 28, 28), engine=cfg)
    assert np.array_equal(sim.astype(np.int64), gold.astype(np.int64))
    _close_to_float(ref, deq, tol=0.15)


# ------------------------------------------------------------------------------------------------------
# 4. one call from an nn.Module to a bit-exact C-simulation; 5. lost compression is reported loudly

@pytest.mark.csim
def test_simulate_one_call_vgg_mvq():
    import flow

    torch.manual_seed(0)
    model = VGGish().eval()
    _randomize_bn(model, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_calib, x_test = torch.rand(32, 3, 16, 16), np.random.default_rng(0).random((5, 3, 16, 16)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # nothing stored dense, nothing to warn about
        r = flow.simulate(model, x_calib, x_test, method="mvq", n=2, m=4, k=32, d=8, iters=3)
    assert r.bit_exact
    assert r.golden.shape == r.csim.shape == r.logits.shape == (5, 10)
    assert np.array_equal(r.golden, r.csim)
    # classifier.0 reads the flattened 32x4x4 map: compressed with its vectors along the 32 channels, the
    # engine stores its codebook (the dense fallback is compress() without an example, tested below)
    assert r.dense_fallback == [] and r.model.classifier[0].in_chw == (32, 4, 4)
    op = next(o for o in r.program.ops if o.name == "classifier.0")
    assert (op.KH, op.KW, op.C, op.d) == (4, 4, 32, 8) and op.k == 32
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # the user's model untouched


@pytest.mark.csim
def test_simulate_method_none_on_the_tutorial_lenet():
    import flow

    torch.manual_seed(0)
    model = LeNet5().eval()
    r = flow.simulate(model, torch.rand(16, 1, 28, 28), torch.rand(4, 1, 28, 28), method="none")
    assert r.bit_exact and r.csim.shape == (4, 10) and r.compression is None
    with torch.no_grad():
        ref = model(torch.rand(1, 1, 28, 28))
    assert ref.shape[1] == r.csim.shape[1]


@pytest.mark.csim
def test_mixed_2_4_and_4_8_layers_run_in_passes_bit_exact():
    from flow.compile import EngineConfig, lower
    from flow.compile.layout import passes_of
    from flow.compress import compress

    torch.manual_seed(0)
    model = VGGish(cfg=(16, 16, "M", 32, 32, "M")).eval()
    _randomize_bn(model, 5)
    c = compress(model, method="mvq", n=2, m=4, k=32, d=8, iters=3, clip_k=True, skip=("first", "last"),
                 overrides={"features.7": dict(n=4, m=8)})
    assert (c.features[7].n, c.features[7].m) == (4, 8) and (c.features[3].n, c.features[3].m) == (2, 4)
    gold, sim, ref, deq = _golden_vs_csim(c, (3, 16, 16))
    assert np.array_equal(sim.astype(np.int64), gold.astype(np.int64))
    from flow.quant import quantize_model
    prog = lower(quantize_model(c, torch.rand(8, 3, 16, 16)), EngineConfig())
    by_name = {op.name: op for op in prog.ops}
    assert by_name["features.7"].m == 8 and passes_of(by_name["features.7"], EngineConfig()) >= 1


@pytest.mark.csim
def test_codeword_lengths_other_than_8_and_sparser_masks_run_bit_exact():
    """lower() takes any d the word layout accepts, not only d % engine.m == 0 with d = 8: a 1:2 layer with
    d = 2, a 2:4 layer with d = 4 and a VQ (4:4) layer with d = 4, on the default 2:4 engine (d_max = 8), golden
    == C-sim."""
    from flow.compile import EngineConfig, lower
    from flow.compress import compress
    from flow.quant import quantize_model

    torch.manual_seed(0)
    model = VGGish(cfg=(16, 16, "M", 32, 32, "M")).eval()
    _randomize_bn(model, 5)
    over = {"features.3": dict(n=1, m=2, d=2), "features.7": dict(n=2, m=4, d=4),
            "features.10": dict(method="vq", d=4)}
    c = compress(model, method="mvq", n=2, m=4, k=32, d=8, iters=3, clip_k=True, skip=("first", "classifier"),
                 overrides=over)
    assert (c.features[3].n, c.features[3].m, c.features[3].d) == (1, 2, 2)
    prog = lower(quantize_model(c, torch.rand(8, 3, 16, 16)), EngineConfig())
    by_name = {op.name: op for op in prog.ops}
    assert [(by_name[n].m, by_name[n].d) for n in over] == [(2, 2), (4, 4), (4, 4)]
    gold, sim, ref, deq = _golden_vs_csim(c, (3, 16, 16))
    assert np.array_equal(sim.astype(np.int64), gold.astype(np.int64))
    _close_to_float(ref, deq, tol=0.5)


# ------------------------------------------------------------------------------------------------------
# 6. flow.simulate's rough edges (issue 19): float64 / half models, NHWC images, a collapsed golden accuracy

@pytest.fixture(scope="module")
def digits_cnn():
    """A small CNN trained on 400 sklearn digits (~97 % on 100 test images; a few seconds)."""
    return trained_digits_cnn()


@pytest.mark.csim
def test_simulate_reports_accuracies_and_warns_when_golden_collapses(digits_cnn):
    """With y_test the Result holds float / golden / C-sim accuracy; a golden accuracy more than 2 points below
    float warns (UserWarning and Result.warnings) naming the likely cause: calibration images in another range
    (here a tenth of the test images' brightness), or a one-image calibration set (here a blank one). A good
    calibration set warns about nothing. bit_exact stays True: it compares C-sim with golden, not with float."""
    import flow
    from flow.quant.accuracy import MARGIN_POINTS

    margin = MARGIN_POINTS / 100

    model, (xtr, _), (xte, yte) = digits_cnn
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        good = flow.simulate(model, xtr[:256], xte, method="none", y_test=yte)
    assert good.bit_exact and good.warnings == []
    ref = (model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean()
    assert good.float_acc == pytest.approx(ref) and good.float_acc > 0.9
    assert good.golden_acc >= good.float_acc - margin
    assert good.csim_acc == pytest.approx((good.csim.argmax(1) == yte).mean())
    for xc, cause in ((xtr[:256] * 0.1, "the test images span [0, 1] but the calibration images [0, 0.1]"),
                      (xtr[:1] * 0, "the calibration set has only 1 image")):
        with pytest.warns(UserWarning, match="points below the float model") as rec:
            r = flow.simulate(model, xc, xte, method="none", y_test=yte)
        assert r.bit_exact and r.golden_acc < r.float_acc - margin
        msg = next(str(w.message) for w in rec if "points below" in str(w.message))
        assert cause in msg and msg in r.warnings, msg
        assert f"{100 * r.golden_acc:.2f} %" in msg and "margin 2 points" in msg
    # no labels: no accuracies, the golden / float agreement still says how close they are
    r = flow.simulate(model, xtr[:256], xte[:10], method="none")
    assert r.float_acc is None and r.golden_acc is None and 0.0 <= r.agreement <= 1.0


@pytest.mark.csim
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_simulate_converts_float64_and_half_models(digits_cnn, dtype):
    """A float64 / half model is simulated as a float32 copy (said in a warning); the user's model keeps its
    dtype; the result equals the float32 model's (for float64, whose float32 copy is the same model exactly)."""
    import copy

    import flow

    model, (xtr, _), (xte, _) = digits_cnn
    m = copy.deepcopy(model).to(dtype)
    with pytest.warns(UserWarning, match=f"parameters are {str(dtype).replace('torch.', '')}: simulated a float32"):
        r = flow.simulate(m, xtr[:64], xte[:8], method="none")
    assert r.bit_exact and all(p.dtype == dtype for p in m.parameters())
    if dtype == torch.float64:
        ref = flow.simulate(model, xtr[:64], xte[:8], method="none")
        assert np.array_equal(r.csim, ref.csim)


def test_simulate_refuses_nhwc_images_naming_the_nchw_shape(digits_cnn):
    import flow

    model, (xtr, _), (xte, _) = digits_cnn
    nhwc = xte[:4].transpose(0, 2, 3, 1)                       # [4, 8, 8, 1]
    with pytest.raises(ValueError) as e:
        flow.simulate(model, xtr[:16], nhwc, method="none")
    msg = str(e.value)
    assert "looks like NHWC" in msg and "(4, 1, 8, 8)" in msg and "transpose(0, 3, 1, 2)" in msg and "\n" not in msg
    with pytest.raises(ValueError, match=r"x_calib has 3 channel\(s\).*reads 1"):
        flow.simulate(model, np.zeros((2, 3, 8, 8), np.float32), xte[:2], method="none")
    with pytest.raises(ValueError, match="NaN/inf"):
        flow.simulate(model, xtr[:16], np.full((1, 1, 8, 8), np.nan, np.float32), method="none")
