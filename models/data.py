"""Offline datasets behind one function: ``load(name, split)``.

Every loader returns ``(x, y)`` with ``x`` float32 ``[N, C, H, W]`` in [0, 1]
and ``y`` int64 ``[N]``. Nothing is downloaded: digits ships with
scikit-learn, Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist``, CIFAR-10 from a directory the user gives.

Needs only numpy (and scikit-learn for digits): the board's runner (host.run) loads its test split
from here, without torch.
"""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np

DATASETS = ("digits", "fashion-mnist", "cifar10")
FMNIST_ENV = "VQHLS_FMNIST_DIR"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")    # where the Debian package installs it
CIFAR_ENV = "VQHLS_CIFAR10_DIR"

# input shape and class count per dataset, so models can be built without loading data
INFO = {
    "digits": {"shape": (1, 8, 8), "classes": 10},
    "fashion-mnist": {"shape": (1, 28, 28), "classes": 10},
    "cifar10": {"shape": (3, 32, 32), "classes": 10},
}


class DatasetError(RuntimeError):
    """A dataset is unknown or its files are missing; the message says how to fix it."""


def load(name: str, split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``split`` ('train' or 'test') of dataset ``name``.

    Returns x float32 [N, C, H, W] in [0, 1] and y int64 [N].
    """
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}: use 'train' or 'test'")
    if name == "digits":
        return _digits(split)
    if name == "fashion-mnist":
        return _fashion_mnist(split, Path(root or os.environ.get(FMNIST_ENV) or FMNIST_DIR))
    if name == "cifar10":
        return _cifar10(split, root)
    raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits   # deferred, optional: scikit-learn (+ scipy), digits only
    except ImportError:
        raise DatasetError("the digits dataset needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    # fixed, seeded 80/20 split so every run sees the same test images
    perm = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    idx = perm[:cut] if split == "train" else perm[cut:]
    return x[idx], y[idx]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    img, lab = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.exists() or not lab.exists():
        raise DatasetError(
            f"Fashion-MNIST files not found in {root}: install them with "
            f"'sudo apt-get install -y dataset-fashion-mnist' (or set {FMNIST_ENV})"
        )
    try:
        x = _read_idx(img).astype(np.float32)[:, None] / 255.0
        y = _read_idx(lab).astype(np.int64)
    except (OSError, EOFError, ValueError) as e:
        raise DatasetError(f"Fashion-MNIST files in {root} are unreadable ({e}): "
                           "reinstall dataset-fashion-mnist") from None
    return x, y


def _cifar10(split: str, root) -> tuple[np.ndarray, np.ndarray]:
    root = root or os.environ.get(CIFAR_ENV)
    if not root:
        raise DatasetError(
            "CIFAR-10 cannot be downloaded here: pass root=<dir with data_batch_1..5 and "
            f"test_batch> (the python-pickle format) or set {CIFAR_ENV}"
        )
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    files = [root / n for n in names if (root / n).exists()]
    if not files:
        raise DatasetError(f"no CIFAR-10 batch files ({', '.join(names)}) in {root}")
    xs, ys = [], []
    for f in files:
        with open(f, "rb") as fh:
            try:
                batch = pickle.load(fh, encoding="bytes")
            except Exception as e:  # corrupted or not a pickle
                raise DatasetError(f"{f} is not a CIFAR-10 python-pickle batch: {e}") from None
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        if data is None or labels is None:
            raise DatasetError(f"{f} lacks the 'data'/'labels' entries of a CIFAR-10 batch")
        xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)
