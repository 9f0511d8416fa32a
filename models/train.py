"""Training and evaluation of zoo models on the offline datasets.

``python -m models.train --model resnet20 --data fashion-mnist --epochs 3``
trains with progress bars and writes the checkpoint into the cache
(``engine_io.cache.cache_dir('checkpoints')``); ``get_trained`` reuses it.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models import data as datasets
from models import zoo
from engine_io.cache import CacheError, cache_dir


def _first(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def state_dict_mismatch(model: nn.Module, state) -> str | None:
    """Why ``state`` does not fit ``model``, in one line: the missing and unexpected keys and the shape
    mismatches, the first few of each; None when it fits (torch's own message stops at its first line)."""
    if not isinstance(state, dict):
        return (f"it holds a {type(state).__name__}, not a state_dict: save it with "
                "torch.save(model.state_dict(), path)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs the model's {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {_first(shapes, 3)}")
    return "; ".join(parts) or None


def load_checkpoint(model, path, fix: str = "delete it (or pass --retrain) to train the model again") -> None:
    """Load the state_dict cached at ``path`` into ``model``; CacheError naming the path and ``fix`` when
    the file is truncated, corrupt or from another model (torch's zip / unpickling / size errors; a state_dict
    of another model lists its missing / unexpected keys and shape mismatches)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # RuntimeError (zip), UnpicklingError, EOFError, ...
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CacheError(f"cached checkpoint {path} is corrupt ({type(e).__name__}: {detail}): {fix}") from None
    why = state_dict_mismatch(model, state)
    if why:
        raise CacheError(f"cached checkpoint {path} does not fit the model ({why}): {fix}")
    try:
        model.load_state_dict(state)
    except Exception as e:   # anything the key / shape comparison above did not catch
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CacheError(f"cached checkpoint {path} is corrupt or does not fit the model ({type(e).__name__}: "
                         f"{detail}): {fix}") from None


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def evaluate(model: nn.Module, x, y, batch_size: int = 512) -> float:
    """Top-1 accuracy (0..1) of ``model`` on x [N,C,H,W], y [N]."""
    x, y = _as_tensor(x).float(), _as_tensor(y).long()
    model.eval()
    correct = 0
    device = next(model.parameters()).device  # batches go where the model is (bench/pq_train.py --device cuda)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            pred = model(x[i:i + batch_size].to(device)).argmax(1).cpu()
            correct += (pred == y[i:i + batch_size]).sum().item()
    return correct / max(len(x), 1)


def train(
    model: nn.Module,
    x,
    y,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    params=None,
) -> nn.Module:
    """Train in place with Adam + cosine decay on x [N,C,H,W], y [N]; returns the model.

    ``params`` restricts which parameters are trained (default: all).
    """
    x, y = _as_tensor(x).float(), _as_tensor(y).long()
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps = max(1, epochs * ((len(x) + batch_size - 1) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss_fn = nn.CrossEntropyLoss()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        bar = tqdm(range(0, len(x), batch_size), desc=f"epoch {ep + 1}/{epochs}", disable=not progress,
                   leave=False, file=sys.stderr)
        total = 0.0
        for i in bar:
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if progress:
            print(f"epoch {ep + 1}/{epochs}: loss {total / len(x):.4f}", file=sys.stderr)
    model.eval()
    return model


def default_epochs(model_name: str) -> int:
    return {"lenet-digits": 30, "cnn-fmnist": 3, "resnet20": 3}.get(model_name, 3)


def build(model_name: str, data_name: str) -> nn.Module:
    """A fresh zoo model shaped for ``data_name``'s images."""
    info = datasets.info(data_name)   # a built-in set or a user's .npz; DatasetError when unknown
    return zoo.get(model_name, in_channels=info["shape"][0], num_classes=info["classes"])


def get_trained(
    model_name: str,
    data_name: str | None = None,
    epochs: int | None = None,
    train_limit: int | None = None,
    progress: bool = True,
    retrain: bool = False,
    seed: int = 0,
) -> nn.Module:
    """A trained zoo model, from the checkpoint cache when present, else trained and cached.

    ``train_limit`` trains on the first N training images only (for short budgets). ``seed`` fixes
    the initial weights and the training order (a cached checkpoint is the same whoever trained
    it, whatever the caller's torch RNG state; the caller's RNG state is left as it was).
    """
    zoo._check(model_name)
    data_name = data_name or zoo.default_dataset(model_name)
    epochs = default_epochs(model_name) if epochs is None else epochs
    data_tag = data_name
    if datasets.is_npz(data_name):   # a user's file: its name and content hash (a changed file trains again)
        data_tag = f"{Path(data_name).stem}-{hashlib.sha256(Path(data_name).read_bytes()).hexdigest()[:12]}"
    tag = (f"{model_name}-{data_tag}-e{epochs}" + (f"-n{train_limit}" if train_limit else "")
           + (f"-s{seed}" if seed else ""))
    path = cache_dir("checkpoints") / f"{tag}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(model_name, data_name)
    # One trainer per tag at a time (two pytest workers, or `make csim` beside `make test`): the second waits
    # for the first's checkpoint instead of training the same model again. The kernel drops a dead process's lock.
    with open(path.with_name(f".{tag}.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and not retrain:
            load_checkpoint(model, path)   # CacheError (one line: the path, delete it or --retrain) when corrupt
            return model.eval()
        return _train_and_save(model, data_name, path, tag, epochs, train_limit, progress, seed)


def _train_and_save(model: nn.Module, data_name: str, path: Path, tag: str, epochs: int, train_limit: int | None,
                    progress: bool, seed: int) -> nn.Module:
    """Train ``model`` and write its checkpoint to ``path`` (atomically, under the caller's lock)."""
    x, y = datasets.load(data_name, "train")
    if train_limit:
        x, y = x[:train_limit], y[:train_limit]
    t0 = time.time()
    with torch.random.fork_rng(devices=[]):
        train(model, x, y, epochs=epochs, progress=progress, seed=seed)
    if progress:
        print(f"trained {tag} in {time.time() - t0:.1f} s -> {path}", file=sys.stderr)
    tmp = path.with_name(f".{tag}.{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)  # atomic: a killed run never leaves a truncated checkpoint
    return model


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m models.train``."""
    ap = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help=f"one of {', '.join(zoo.names())}")
    ap.add_argument("--data", default=None, help=f"one of {', '.join(datasets.DATASETS)} (default: the model's)")
    ap.add_argument("--epochs", type=int, default=None,
                    help="training epochs (default: the model's, e.g. 30 for lenet-digits, 3 otherwise); "
                         "the checkpoint is cached per epoch count")
    ap.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    ap.add_argument("--retrain", action="store_true", help="ignore a cached checkpoint")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    # 0 or negative would train nothing (or everything but the last N images) and cache that checkpoint
    for flag, value in (("--epochs", a.epochs), ("--limit", a.limit)):
        if value is not None and value < 1:
            print(f"error: {flag} {value}: must be at least 1", file=sys.stderr)
            return 2
    try:
        model = get_trained(a.model, a.data, a.epochs, a.limit, retrain=a.retrain)
        data_name = a.data or zoo.default_dataset(a.model)
        xt, yt = datasets.load(data_name, "test")
    except (ValueError, CacheError, datasets.DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.model} on {data_name}: test accuracy {100 * evaluate(model, xt, yt):.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
