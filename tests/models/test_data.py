import pickle

import numpy as np
import pytest

from models import data


def test_digits_split_is_disjoint_and_complete():
    xtr, ytr = data.load("digits", "train")
    xte, yte = data.load("digits", "test")
    assert xtr.shape[1:] == (1, 8, 8) and xte.shape[1:] == (1, 8, 8)
    assert len(xtr) + len(xte) == 1797
    assert xtr.dtype == np.float32 and 0.0 <= xtr.min() and xtr.max() <= 1.0
    # no image row appears in both splits more often than in the full set (the split is a permutation)
    from sklearn.datasets import load_digits

    full = load_digits().images.reshape(len(ytr) + len(yte), -1) / 16.0
    both = np.concatenate([xtr, xte]).reshape(len(full), -1)
    assert sorted(map(bytes, full.astype(np.float32))) == sorted(map(bytes, both))


def test_fashion_mnist_from_debian_package():
    x, y = data.load("fashion-mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert set(np.unique(y)) == set(range(10))
    assert np.bincount(y).tolist() == [1000] * 10  # the documented balanced test split


def test_fashion_mnist_missing_names_the_install_command(tmp_path):
    with pytest.raises(data.DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        data.load("fashion-mnist", "train", root=tmp_path)


def test_fashion_mnist_dir_from_the_environment_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv(data.FMNIST_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(data.DatasetError, match="elsewhere"):
        data.load("fashion-mnist", "test")


def test_fashion_mnist_unreadable_files_name_the_fix(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(b"not gzip")
    with pytest.raises(data.DatasetError, match="unreadable .*reinstall dataset-fashion-mnist"):
        data.load("fashion-mnist", "test", root=tmp_path)


def test_digits_without_scikit_learn_names_the_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.split(".")[0] == "sklearn":
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(data.DatasetError, match="pip install scikit-learn"):
        data.load("digits", "test")


def test_loads_without_torch():
    """host.run (the board, no torch) loads its test split here: models.data imports neither torch nor
    the flow, in a fresh interpreter where those imports fail."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import importlib.abc, sys\n"
            "class B(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'flow'):\n"
            "            raise ImportError(name)\n"
            "sys.meta_path.insert(0, B())\n"
            "from models import data\n"
            "x, y = data.load('digits', 'test')\n"
            "assert x.shape == (360, 1, 8, 8)\n"
            "print('OK')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]


def _write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with open(path, "wb") as f:
        pickle.dump({b"data": arr, b"labels": labels, b"batch_label": b"x"}, f)
    return arr, labels


def test_cifar10_pickle_format(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    arrs = [_write_cifar_batch(d / f"data_batch_{i}", 7, i) for i in range(1, 6)]
    tarr, tlab = _write_cifar_batch(d / "test_batch", 5, 99)
    x, y = data.load("cifar10", "train", root=tmp_path)
    assert x.shape == (35, 3, 32, 32) and y.shape == (35,)
    # pixel (c=1, h=2, w=3) of image 0 of batch 1 lives at 1*1024 + 2*32 + 3 in CIFAR's row layout
    assert x[0, 1, 2, 3] == pytest.approx(arrs[0][0][0, 1024 + 64 + 3] / 255.0)
    assert y.tolist() == sum((lab for _, lab in arrs), [])
    xt, yt = data.load("cifar10", "test", root=d)
    assert xt.shape == (5, 3, 32, 32) and yt.tolist() == tlab


def test_cifar10_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(data.CIFAR_ENV, raising=False)
    with pytest.raises(data.DatasetError, match="cannot be downloaded"):
        data.load("cifar10", "train")
    with pytest.raises(data.DatasetError, match="no CIFAR-10 batch files"):
        data.load("cifar10", "test", root=tmp_path)
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(data.DatasetError, match="not a CIFAR-10"):
        data.load("cifar10", "test", root=tmp_path)


def test_unknown_dataset_and_split():
    with pytest.raises(data.DatasetError, match="choose one of digits"):
        data.load("imagenet", "train")
    with pytest.raises(data.DatasetError, match="unknown split"):
        data.load("digits", "val")


# ---------------------------------------------------------------------------
# a user's own .npz
# ---------------------------------------------------------------------------
def test_an_npz_loads_uint8_scaled_and_float_as_given(tmp_path):
    rng = np.random.default_rng(0)
    xu = rng.integers(0, 256, (6, 3, 12, 12), dtype=np.uint8)
    xf = rng.normal(size=(4, 3, 12, 12)).astype(np.float64)
    p = tmp_path / "own.npz"
    np.savez(p, x_train=xu, y_train=np.array([0, 1, 2, 3, 4, 5], np.int32), x_test=xf,
             y_test=np.array([5, 0, 1, 2]))
    x, y = data.load(str(p), "train")
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (6, 3, 12, 12)
    assert np.array_equal(x * 255, xu.astype(np.float32)) and list(y) == [0, 1, 2, 3, 4, 5]
    x, _ = data.load(str(p), "test")
    assert np.allclose(x, xf.astype(np.float32))                 # float: not rescaled
    assert data.info(str(p)) == {"shape": (3, 12, 12), "classes": 6}


def test_npz_problems_are_all_named(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, x_train=np.zeros((3, 1, 8, 8), np.int32), y_train=np.array([0, -1, 2]),
             x_test=np.full((2, 1, 9, 9), np.nan, np.float32), y_test=np.zeros((2, 1), np.int64))
    probs = data.npz_problems(p)
    text = "\n".join(probs)
    for needle in ("x_train has dtype int32", "y_train has negative labels", "x_test has 162 NaN/Inf values",
                   "y_test has shape (2, 1)", "x_train images are (1, 8, 8) (C, H, W) but x_test (1, 9, 9)"):
        assert needle in text, text
    with pytest.raises(data.DatasetError, match="dtype int32"):
        data.load(str(p), "train")
    assert data.npz_problems(tmp_path / "none.npz") == [f"--data {tmp_path / 'none.npz'}: file not found "
                                                       "(give an .npz with x_train, y_train, x_test, y_test)"]
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert "not a readable .npz" in data.npz_problems(tmp_path / "junk.npz")[0]


def test_a_state_dict_mismatch_lists_missing_unexpected_and_shapes():
    import torch
    from torch import nn

    from models.train import state_dict_mismatch

    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = model.state_dict()
    assert state_dict_mismatch(model, state) is None
    state.pop("0.bias")
    state["2.weight"] = torch.zeros(1)
    state["1.weight"] = torch.zeros(2, 5)
    why = state_dict_mismatch(model, state)
    assert why == ("1 missing key(s): 0.bias; 1 unexpected key(s): 2.weight; "
                   "1 shape mismatch(es): 1.weight (2, 5) vs the model's (2, 3)")
    assert "not a state_dict" in state_dict_mismatch(model, [1, 2])
