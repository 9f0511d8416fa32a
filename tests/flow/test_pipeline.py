"""A whole ResNet20 through compress -> quantize -> lower -> C-sim, bit-exact against golden."""
import numpy as np
import pytest
import torch

from flow.compile import EngineConfig, lower
from flow.compress import compress
from flow.quant import quantize_input, quantize_model
from flow.quant import run as golden_run
from models import zoo
from small_cases import DigitsCNN, trained_digits_cnn


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            c = mod.num_features
            mod.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


@pytest.mark.csim
@pytest.mark.slow
@pytest.mark.parametrize("method,in_shape", [("mvq", (1, 28, 28)), ("vq", (3, 32, 32))])
def test_resnet20_csim_bit_exact(method, in_shape):
    from flow.hls.csim import CsimEngine

    torch.manual_seed(0)
    model = zoo.get("resnet20", in_channels=in_shape[0]).eval()
    _randomize_bn(model, 1)
    c = compress(model, method=method, n=2, m=4, k=32, d=8, iters=3, clip_k=True)
    calib = torch.rand(16, *in_shape)
    q = quantize_model(c, calib)
    x = quantize_input(torch.rand(4, *in_shape).numpy(), q.in_tensor.scale, q.in_tensor.unsigned)
    engine = EngineConfig(pq=True)
    prog = lower(q, engine)
    # every conv of the model must run on the engine: 19 3x3 convs + 2 projections + pool + fc
    assert sum(op.opcode == 1 for op in prog.ops) == 22
    gold = golden_run(q, x)
    sim = CsimEngine(engine).predict(prog, x)
    assert sim.shape == gold.shape
    assert np.array_equal(sim.astype(np.int64), gold.astype(np.int64))
    # not a degenerate pass: outputs vary between images and are not all saturated
    assert len({bytes(s.tobytes()) for s in sim}) == len(sim)
    assert ((sim > -128) & (sim < 127)).any()


@pytest.mark.csim
@pytest.mark.slow
def test_mixed_mvq_pq_vecq_model_end_to_end():
    """A recipe: PQ for 3x3 convs after the first, VecQ for the 1x1 shortcuts, MVQ elsewhere."""
    from flow.compress import compression_report, recipe
    from flow.compress.mvq import MVQLinear
    from flow.compress.pq import PQConv2d
    from flow.compress.vecq import VecQConv2d
    from flow.hls.csim import CsimEngine

    torch.manual_seed(0)
    model = zoo.get("resnet20", in_channels=1, blocks=1).eval()
    _randomize_bn(model, 2)
    calib = torch.rand(64, 1, 16, 16)

    def rule(name, mod):
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3) and name.startswith("layers.2"):
            return dict(method="pq", v=9, K=16)   # PQA default; 64 subspaces on 64 channels fit the board build
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (1, 1):
            return dict(method="vecq", bits=4)
        return None

    c = compress(model, method="mvq", n=2, m=4, k=16, d=8, iters=3, data=calib, overrides=recipe(model, rule),
                 skip=("first",))
    kinds = {type(m) for m in c.modules()}
    assert {PQConv2d, VecQConv2d, MVQLinear} <= kinds
    report = compression_report(c)
    assert {r.method for r in report.rows} >= {"pq", "vecq", "mvq"}
    q = quantize_model(c, calib)
    x = quantize_input(torch.rand(3, 1, 16, 16).numpy(), q.in_tensor.scale, q.in_tensor.unsigned)
    prog = lower(q, EngineConfig(pq=True))
    assert {op.opcode for op in prog.ops} >= {1, 4}  # conv and PQ ops
    gold = golden_run(q, x)
    sim = CsimEngine(EngineConfig(pq=True)).predict(prog, x)
    assert np.array_equal(sim.astype(np.int64), gold.astype(np.int64))


@pytest.mark.csim
@pytest.mark.parametrize("scheme,bits", [("sweep", b) for b in range(2, 9)] + [("paper", b) for b in (1, 2, 4, 7)])
def test_vecq_csim_bit_exact_for_every_bit_width(scheme, bits):
    """VecQ layers run on the array's dense mode: golden == C-sim for sweep b = 2..8 (first conv dense) and for
    the paper scheme (every layer VecQ, first conv and classifier included; odd codes up to +-(2^b - 1))."""
    from flow.compress.vecq import VecQConv2d, VecQLinear
    from flow.hls.csim import CsimEngine

    torch.manual_seed(bits)
    model = zoo.get("lenet-digits").eval()
    _randomize_bn(model, bits)
    if scheme == "sweep":
        c = compress(model, method="vecq", bits=bits, vecq_scheme="sweep", skip=("first",))
    else:
        c = compress(model, method="vecq", bits=bits)  # the paper's default: every conv and linear layer
        n_layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
        assert sum(isinstance(m, (VecQConv2d, VecQLinear)) for m in c.modules()) == n_layers
    layers = [m for m in c.modules() if isinstance(m, VecQConv2d)]
    assert layers and all(m.bits == bits and m.scheme == scheme for m in layers)
    codes, _ = layers[0].int_weight()
    if scheme == "sweep":
        assert np.abs(codes).max() <= 2 ** (bits - 1) - 1  # really b-bit codes in the int8 datapath
    else:
        assert np.all(codes % 2 == 1) and len(np.unique(codes)) <= 2**bits and np.abs(codes).max() <= 2**bits - 1
    calib = torch.rand(32, 1, 8, 8)
    q = quantize_model(c, calib)
    x = quantize_input(torch.rand(8, 1, 8, 8).numpy(), q.in_tensor.scale, q.in_tensor.unsigned)
    prog = lower(q, EngineConfig(pq=True))
    gold = golden_run(q, x)
    sim = CsimEngine(EngineConfig(pq=True)).predict(prog, x)
    assert np.array_equal(sim.astype(np.int64), gold.astype(np.int64))
    assert len({bytes(r.tobytes()) for r in sim}) > 1  # not a degenerate pass: the images differ


# ------------------------------------------------------------------------------------------------------
# flow.deploy: one Python path from a user's in-memory model and arrays to a fine-tuned, bit-exact bundle

@pytest.mark.csim
@pytest.mark.slow
def test_deploy_in_memory_model_to_a_verified_bit_exact_bundle(tmp_path, capsys):
    """flow.deploy runs flow.build's stages (compress, fine-tune, quantize, lower, hls, csim, bundle, report) on
    a model and arrays in memory: the bundle loads verified (engine_io.bundle.load), its vectors are the user's
    first test images quantized (flow.quant.quantize_input), the host sim backend reproduces its expected
    outputs and the golden outputs of every test image bit for bit, and host.run reads the written data.npz."""
    import flow
    from engine_io.bundle import load
    from host import run as host_run
    from host.accelerator import Accelerator

    model, train, (xte, yte) = trained_digits_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "tiny"
    d = flow.deploy(model, train, (torch.from_numpy(xte), yte), out=out, method="mvq", k=32, finetune_epochs=1,
                    vectors=8)
    s = d.summary
    assert d.bit_exact and s["images"] == 100
    assert {"float_acc", "finetuned_acc", "golden_acc", "csim_acc"} <= set(s) and s["golden_acc"] > 0.8
    assert d.bundle == out.resolve() / "deploy" and d.report is not None and d.report.is_file()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # the user's model untouched
    b = load(d.bundle)
    assert b.manifest["method"] == "mvq"
    vin, vexp = b.vectors()
    assert np.array_equal(vin.reshape(8, -1), quantize_input(xte[:8], b.in_scale, b.in_unsigned).reshape(8, -1))
    with Accelerator.open(d.bundle, backend="sim", cache_dir=tmp_path / "sim-cache") as acc:
        assert np.array_equal(acc.infer(vin.reshape(-1, *acc.in_shape)).reshape(vexp.shape), vexp)
        got = acc.infer(xte)
        assert np.array_equal(got.reshape(100, -1).astype(np.int64),
                              np.asarray(d.build.gold).reshape(100, -1).astype(np.int64))
    capsys.readouterr()
    rc = host_run.main([str(d.bundle), "--backend", "sim", "--data", str(out / "inputs" / "data.npz"),
                        "--cache-dir", str(tmp_path / "sim-cache")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"100 images, accuracy {100 * s['csim_acc']:.2f} %" in text


def test_deploy_refuses_unknown_and_own_options_before_any_work(tmp_path):
    import flow

    model = DigitsCNN()
    data = (np.zeros((4, 1, 8, 8), np.float32), np.arange(4))
    with pytest.raises(ValueError) as e:
        flow.deploy(model, data, data, out=tmp_path / "x", kk=3, epochs=2, train_epochs=3)
    msg = str(e.value)
    assert "epochs, kk, train_epochs" in msg and "deploy sets these itself" in msg
    with pytest.raises(ValueError, match="--k 0: must be at least 1"):
        flow.deploy(model, data, data, out=tmp_path / "x", k=0)
    with pytest.raises(ValueError, match="looks like NHWC"):
        flow.deploy(model, (data[0].transpose(0, 2, 3, 1), data[1]), data, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
