"""Offline datasets behind one function: ``load(name, split)``.

Every loader returns ``(x, y)`` with ``x`` float32 ``[N, C, H, W]`` in [0, 1]
and ``y`` int64 ``[N]``. Nothing is downloaded: digits ships with
scikit-learn, Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist``, CIFAR-10 from a directory the user gives, and a
user's own set from a ``.npz`` file (``load("path/to/set.npz", split)``): arrays
``x_train``, ``y_train``, ``x_test``, ``y_test``, images NCHW (uint8 0..255 is
scaled to [0, 1]; float is kept as given), integer labels 0..classes-1.

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


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def is_npz(name: str | os.PathLike) -> bool:
    """Whether ``name`` names a user's ``.npz`` data set rather than a built-in one."""
    return str(name).endswith(".npz")


def npz_problems(path: str | os.PathLike) -> list[str]:
    """Every problem of a user's ``.npz`` data set, one line each (empty when it loads): the file, its keys,
    dtypes, shapes (NCHW, the same C H W in both splits, as many labels as images), finite values, labels."""
    p = Path(path)
    where = f"--data {path}"
    if not p.is_file():
        return [f"{where}: file not found (give an .npz with {', '.join(NPZ_KEYS)})"]
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:   # not a zip, truncated, object arrays (pickles are refused): one line
        return [f"{where}: not a readable .npz ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): "
                "save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"]
    problems = []
    missing = [k for k in NPZ_KEYS if k not in arrays]
    if missing:
        problems.append(f"{where}: missing array(s) {', '.join(missing)} (it has: {', '.join(arrays) or 'none'})")
    for split in ("train", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is not None:
            if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
                problems.append(f"{where}: x_{split} has dtype {x.dtype}: use uint8 (0..255) or float")
            if x.ndim != 4:
                problems.append(f"{where}: x_{split} has shape {x.shape}: give images as N x C x H x W (NCHW)")
            elif x.shape[1] > x.shape[3] and x.shape[3] in (1, 3, 4):
                problems.append(f"{where}: x_{split} has shape {x.shape}, which looks like NHWC: transpose it to "
                                "NCHW (x.transpose(0, 3, 1, 2))")
            elif len(x) == 0:
                problems.append(f"{where}: x_{split} has no images")
            if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                problems.append(f"{where}: x_{split} has {int((~np.isfinite(x)).sum())} NaN/Inf values")
        if y is not None:
            if not np.issubdtype(y.dtype, np.integer):
                problems.append(f"{where}: y_{split} has dtype {y.dtype}: labels must be integers 0..classes-1")
            elif y.ndim != 1:
                problems.append(f"{where}: y_{split} has shape {y.shape}: give one label per image (shape [N])")
            elif len(y) and y.min() < 0:
                problems.append(f"{where}: y_{split} has negative labels (min {int(y.min())}): use 0..classes-1")
        if x is not None and y is not None and x.ndim == 4 and y.ndim == 1 and len(x) != len(y):
            problems.append(f"{where}: x_{split} has {len(x)} images but y_{split} {len(y)} labels")
    xtr, xte = arrays.get("x_train"), arrays.get("x_test")
    if xtr is not None and xte is not None and xtr.ndim == 4 and xte.ndim == 4 and xtr.shape[1:] != xte.shape[1:]:
        problems.append(f"{where}: x_train images are {xtr.shape[1:]} (C, H, W) but x_test {xte.shape[1:]}")
    ytr, yte = arrays.get("y_train"), arrays.get("y_test")
    if (not problems and ytr is not None and yte is not None and len(yte)
            and yte.max() > ytr.max()):
        problems.append(f"{where}: y_test has label {int(yte.max())} that y_train never has "
                        f"(y_train's labels are 0..{int(ytr.max())})")
    return problems


def info(name: str | os.PathLike) -> dict:
    """``{"shape": (C, H, W), "classes": n}`` of a built-in data set or a user's ``.npz`` (read, not trained)."""
    if not is_npz(name):
        if name not in INFO:
            raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)} or give a .npz")
        return INFO[name]
    with np.load(name, allow_pickle=False) as z:
        return {"shape": tuple(int(s) for s in z["x_train"].shape[1:]),
                "classes": int(max(z["y_train"].max(), z["y_test"].max())) + 1}


def _npz(path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    problems = npz_problems(path)
    if problems:
        raise DatasetError("; ".join(problems))
    with np.load(path, allow_pickle=False) as z:
        x, y = z[f"x_{split}"], z[f"y_{split}"]
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return np.ascontiguousarray(x), y.astype(np.int64)


def load(name: str, split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``split`` ('train' or 'test') of dataset ``name`` (a built-in name or a path ending in .npz).

    Returns x float32 [N, C, H, W] (in [0, 1] for the built-in sets and uint8 .npz) and y int64 [N].
    """
    if split not in ("train", "test"):
        raise DatasetError(f"unknown split {split!r}: use 'train' or 'test'")
    if is_npz(name):
        return _npz(name, split)
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
