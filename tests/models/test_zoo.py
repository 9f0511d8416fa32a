import subprocess
import sys

import pytest
import torch

from models import train, zoo


@pytest.mark.parametrize("name,shape", [("lenet-digits", (1, 8, 8)), ("cnn-fmnist", (1, 28, 28)),
                                        ("resnet20", (3, 32, 32)), ("resnet20", (1, 28, 28))])
def test_models_build_and_run(name, shape):
    m = zoo.get(name, in_channels=shape[0])
    assert m(torch.zeros(2, *shape)).shape == (2, 10)


def test_resnet20_has_20_weight_layers():
    m = zoo.get("resnet20")
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3)]
    fcs = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert len(convs) + len(fcs) == 20  # 19 3x3 convs + fc; 1x1 projection shortcuts are extra
    assert [c.out_channels for c in convs][::6] == [16, 16, 32, 64]


def test_resnet8_is_the_mlperf_tiny_shape():
    m = zoo.get("resnet8")
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    k3 = [c for c in convs if c.kernel_size == (3, 3)]
    k1 = [c for c in convs if c.kernel_size == (1, 1)]
    fcs = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert len(k3) + len(fcs) == 8                              # 7 3x3 convs + dense: "ResNet-8"
    assert [c.out_channels for c in k3] == [16, 16, 16, 32, 32, 64, 64]
    assert [c.stride for c in k3] == [(1, 1), (1, 1), (1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]
    assert [(c.in_channels, c.out_channels, c.stride, c.bias is not None) for c in k1] == \
        [(16, 32, (2, 2), True), (32, 64, (2, 2), True)]        # the reference's shortcuts: 1x1 conv, no BN
    assert fcs[0].in_features == 64 and fcs[0].out_features == 10
    # 78k parameters in the reference (weights + biases, BN not counted): 3x3 and 1x1 kernels, dense
    n = sum(p.numel() for mod in convs + fcs for p in mod.parameters())
    assert n == sum(c.weight.numel() for c in convs) + 32 + 64 + 64 * 10 + 10


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*lenet-digits"):
        zoo.get("vgg")


def test_training_learns_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("VQHLS_CACHE", str(tmp_path))
    m = train.get_trained("lenet-digits", "digits", epochs=3, progress=False)
    from models import data

    x, y = data.load("digits", "test")
    acc = train.evaluate(m, x, y)
    assert acc > 0.8  # chance is 0.1
    assert list((tmp_path / "checkpoints").glob("*.pt"))
    # the second call loads the checkpoint: identical weights
    m2 = train.get_trained("lenet-digits", "digits", epochs=3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_train_cli(tmp_path):
    env = {"VQHLS_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "models.train", "--model", "lenet-digits", "--epochs", "1"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    r = subprocess.run([sys.executable, "-m", "models.train", "--model", "nope"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "unknown model" in r.stderr and "Traceback" not in r.stderr


def test_training_is_reproducible_whatever_the_callers_rng(tmp_path, monkeypatch):
    """Two caches, two different global RNG states: the same checkpoint (init and order seeded)."""
    states = []
    for i, pre in enumerate((1, 12345)):
        monkeypatch.setenv("VQHLS_CACHE", str(tmp_path / str(i)))
        torch.manual_seed(pre)
        before = torch.random.get_rng_state()
        m = train.get_trained("lenet-digits", "digits", epochs=1, train_limit=128, progress=False)
        assert torch.equal(torch.random.get_rng_state(), before)   # the caller's RNG is left alone
        states.append(m.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    monkeypatch.setenv("VQHLS_CACHE", str(tmp_path / "s1"))
    other = train.get_trained("lenet-digits", "digits", epochs=1, train_limit=128, progress=False, seed=1)
    assert not torch.equal(other.state_dict()["features.0.weight"], states[0]["features.0.weight"])
    assert [p.name for p in (tmp_path / "s1" / "checkpoints").glob("*.pt")] == ["lenet-digits-digits-e1-n128-s1.pt"]
