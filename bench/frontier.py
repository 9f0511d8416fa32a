"""Accuracy against compression ratio: each method's Pareto frontier (VQ, MVQ, PQ, VecQ, dense int8).

    python bench/frontier.py [--quick] [--jobs 2] [--backend process|ray|serial] [--dry-run]
    python bench/frontier.py --only-shared --merge bench/results/frontier.json   # shared-mask points only

For lenet-digits (digits) and resnet20 (Fashion-MNIST) this sweeps every method's knobs
(VQ: k, d; MVQ: N:M in {1:4, 2:4, 2:8}, k, d, plus the Taylor importance criterion; shared-mask MVQ:
the same N:M, k, d with one pattern per group of g output channels, g in :func:`shared_groups`; PQ: v, K;
VecQ: bits and scheme; dense int8 as the reference), trains every compressed model with the
same budget and keeps each method's Pareto frontier of test accuracy against the
whole-model compression ratio (every stored bit; dense layers int8 + a scale), with the
N:M masks counted and, the MVQ paper's convention being unpublished, without them.
Every point also reports its MACs per image (MVQ: n/m of the dense MACs; PQ: the
distance MACs of the encoder, its LUT lookups apart).

The float baselines are trained here (Adam, cosine, per-epoch test accuracy recorded so
the table can show convergence) and cached; MVQ's prune-and-retrain step is one cached
stage per (model, N:M, importance), shared by all its (k, d) points.  A point is
``run_point(spec)`` of a pure, picklable spec (model, method, knobs, budget, seed); the
points run in parallel processes (``--backend process``, one torch thread each), through
Ray (``--backend ray``, optional: ``pip install ray``; ``--ray-address`` for a cluster) or
in this process (``serial``).  Finished points are cached as one JSON file each under
``<VQHLS_CACHE or .cache/vqhls>/frontier/points/<hash of the spec>.json`` (written
atomically), so an interrupted run resumes; the hash covers the spec and the source of
flow/compress and models, so a code change recomputes.

Budget of the full run (``SETUPS``; chosen for a 2-core machine and about two hours): resnet20
float 12 epochs on all 60000 images (measured 210-230 s per epoch on one core, so ~30 min on
2 threads), then 42 points and 4 prune stages, each 2 epochs on the first 15000 training images
(~130 s per VQ / MVQ / VecQ point, ~900-1300 s per PQ point, on one thread, two at a time:
~70 min); lenet-digits (30 + 8 epochs, ~3 min) runs alongside.  ``--dry-run`` lists the tasks.
The shared-mask points came later (issue 22): ``--only-shared`` runs only them (with the float and int8
references and the stages they need) and ``--merge FILE`` takes every other row from a finished run's JSON
of the same budget, checking that the re-trained float baseline matches that file's.

Writes RESULTS/ (bench/results, or $VQHLS_BENCH_OUT: ``make bench`` puts build/bench there) frontier.json and frontier.png (``--quick``: lenet-digits only, a
tiny grid, frontier_quick.*; ``--out DIR`` elsewhere).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see flow/__init__.py

import argparse
import copy
import functools
import hashlib
import io
import json
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import RESULTS, atomic_write_text, best_at, pareto_front, save, table  # noqa: E402

VERSION = 1  # bump when run_point's procedure changes in a way the source hash does not see
METHOD_ORDER = ("float", "int8", "vq", "mvq", "pq", "vecq")
RATIO_MARKS = (2, 4, 8, 12, 16, 24, 32, 48)

# ---------------------------------------------------------------------------------------------------------
# budgets and grids

# Training budget per model.  train_epochs: the float baseline (Adam lr_train, cosine, batch);
# ft_epochs over the first ft_images training images (None: all): every compressed model's training
# (codebooks / prototypes+LUT / quantized weights, with BN and the dense layers); MVQ's pruned float
# model is retrained for the same ft_epochs before clustering (its paper's procedure).  calib: images for
# BN re-estimation after compression (all methods), PQ's prototype k-means and the Taylor importance.
SETUPS = {
    "lenet-digits": dict(data="digits", train_epochs=30, ft_epochs=8, ft_images=None, test_images=None,
                         calib=256, batch=64, lr_train=2e-3, lr_ft=1e-3),
    # resnet20: see docs/design-notes.md "Frontier" for how the numbers were chosen (2 cores, ~2 hours)
    "resnet20": dict(data="fashion-mnist", train_epochs=12, ft_epochs=2, ft_images=15000, test_images=None,
                     calib=256, batch=64, lr_train=2e-3, lr_ft=1e-3),
}
QUICK_SETUPS = {
    "lenet-digits": dict(SETUPS["lenet-digits"], train_epochs=15, ft_epochs=2),
}

# Which layers stay dense (int8 + scale in the count).  VQ / MVQ: the first conv (1 input channel:
# nothing to cut into vectors), everything else compressed, classifier included.  PQ and VecQ: the
# library's per-method default (PQA's / VecQ's own choices; recorded per point as 'dense_layers').
SKIP = {"vq": ["first"], "mvq": ["first"]}
DENSE_BITS = 8
SEED = 0


def shared_groups() -> tuple[int, ...]:
    """The shared-mask group sizes of the sweep: 4, 8 and the engine's column count (EngineConfig().cols, a
    group then being one column tile) when that is another."""
    from flow.compile.engine import EngineConfig

    return tuple(dict.fromkeys((4, 8, int(EngineConfig().cols))))


def grid(model: str, quick: bool) -> list[dict]:
    """The points of ``model``: ``[{method, knobs, check}]`` (check: a budget-check point, 2x epochs)."""
    pts: list[dict] = [dict(method="float", knobs={}), dict(method="int8", knobs={})]

    def add(method, check=False, **knobs):
        pts.append(dict(method=method, knobs=knobs, check=check))

    schemes = _vecq_schemes()
    if quick:
        add("vq", k=16, d=4)
        add("vq", k=64, d=8)
        add("vq", k=16, d=4, check=True)
        for n, m, k, d in ((2, 4, 16, 4), (1, 4, 16, 8), (2, 8, 16, 8)):
            add("mvq", n=n, m=m, k=k, d=d, importance="magnitude")
        add("mvq", n=2, m=4, k=16, d=4, importance="taylor")
        add("mvq", n=2, m=4, k=16, d=4, importance="magnitude", mask_group=4)
        add("mvq", n=2, m=4, k=16, d=8, importance="magnitude", mask_group=8)
        add("pq", v=9, K=8)
        for s in schemes:
            add("vecq", bits=2, **({"vecq_scheme": s} if s else {}))
        return pts
    ks = (16, 64, 256)
    for d in (4, 8, 16):
        for k in ks:
            add("vq", k=k, d=d)
    for n, m in ((1, 4), (2, 4), (2, 8)):
        for d in (8, 16):
            for k in ks:
                add("mvq", n=n, m=m, k=k, d=d, importance="magnitude")
    for k in (64, 256):  # the second importance criterion, at the paper's default 2:4, d=8
        add("mvq", n=2, m=4, k=k, d=8, importance="taylor")
    for g in shared_groups():  # shared masks (issue 22): MVQ's (N:M, d, k) grid, one pattern per g channels
        for n, m in ((1, 4), (2, 4), (2, 8)):
            for d in (8, 16):
                for k in ks:
                    add("mvq", n=n, m=m, k=k, d=d, importance="magnitude", mask_group=g)
    pq = ((9, 8), (9, 16), (9, 64), (3, 64)) if model == "lenet-digits" else ((9, 8), (9, 16))
    for v, K in pq:
        add("pq", v=v, K=K)
    for s in schemes:
        for b in (2, 3, 4):
            add("vecq", bits=b, **({"vecq_scheme": s} if s else {}))
    # budget check: the middle of each codebook method's range at twice the epochs
    add("vq", k=64, d=8, check=True)
    add("mvq", n=2, m=4, k=64, d=8, importance="magnitude", check=True)
    add("vecq", bits=3, check=True, **({"vecq_scheme": schemes[0]} if schemes[0] else {}))
    if model == "lenet-digits":
        add("pq", v=9, K=16, check=True)
    return pts


def _vecq_schemes() -> list:
    """VecQ schemes ``compress`` offers ('paper', 'sweep'), or [None] when it has no ``vecq_scheme``."""
    import inspect

    from flow.compress import compress

    if "vecq_scheme" in inspect.signature(compress).parameters:
        return ["paper", "sweep"]
    return [None]


# ---------------------------------------------------------------------------------------------------------
# specs, keys, cache


@functools.lru_cache(maxsize=None)
def _source_hash(*patterns: str) -> str:
    """sha256 of the files matching ``patterns`` (globs relative to the repo): part of every cache key."""
    h = hashlib.sha256()
    for pat in patterns:
        for f in sorted(REPO.glob(pat)):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


# the sources a result depends on: the model definitions and data for a baseline, plus the whole
# compression package for a pruned model or a point (this file's procedure is covered by VERSION)
_MODEL_SRC = ("models/zoo.py", "models/data.py")
_FLOW_SRC = _MODEL_SRC + ("flow/compress/*.py", "flow/compress/*.cpp")


def key(spec: dict) -> str:
    """Cache key of a spec: sha256 of its canonical JSON (sorted keys), 20 hex digits."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]


def baseline_spec(model: str, setup: dict) -> dict:
    return dict(kind="baseline", model=model, data=setup["data"], epochs=setup["train_epochs"],
                batch=setup["batch"], lr=setup["lr_train"], seed=SEED, version=VERSION,
                code=_source_hash(*_MODEL_SRC))


def prune_spec(model: str, setup: dict, n: int, m: int, importance: str, mask_group: int = 1) -> dict:
    spec = dict(kind="prune", baseline=baseline_spec(model, setup), n=n, m=m, importance=importance,
                epochs=setup["ft_epochs"], images=setup["ft_images"], calib=setup["calib"], batch=setup["batch"],
                lr=setup["lr_ft"], skip=SKIP["mvq"], seed=SEED, version=VERSION,
                code=_source_hash(*_FLOW_SRC))
    if mask_group != 1:  # absent for per-channel masks: those specs read as they always did
        spec["mask_group"] = mask_group
    return spec


def point_spec(model: str, setup: dict, method: str, knobs: dict, check: bool = False) -> dict:
    """The pure, picklable description of one point; ``run_point(spec)`` is a function of it alone."""
    ft_epochs = setup["ft_epochs"] * (2 if check else 1)
    knobs = dict(knobs)
    prune = None
    if method == "mvq":
        imp = knobs.pop("importance", "magnitude")
        g = knobs.pop("mask_group", 1)
        prune = prune_spec(model, setup, knobs["n"], knobs["m"], imp, g)
        knobs["importance"] = imp
        if g != 1:
            knobs["mask_group"] = g
    return dict(kind="point", model=model, data=setup["data"], method=method, knobs=knobs, check=bool(check),
                baseline=baseline_spec(model, setup), prune=prune,
                budget=dict(ft_epochs=ft_epochs if method not in ("float", "int8") else 0,
                            ft_images=setup["ft_images"], test_images=setup["test_images"], calib=setup["calib"],
                            batch=setup["batch"], lr=setup["lr_ft"]),
                skip=SKIP.get(method), dense_bits=DENSE_BITS, seed=SEED, version=VERSION,
                code=_source_hash(*_FLOW_SRC))


def _cache_root() -> Path:
    from engine_io.cache import cache_dir

    return cache_dir("frontier")


def point_path(spec: dict) -> Path:
    return _cache_root() / "points" / f"{key(spec)}.json"


def _stage_path(spec: dict) -> Path:
    tag = spec["baseline"]["model"] if spec["kind"] == "prune" else spec["model"]
    if spec["kind"] == "prune":
        tag += f"-{spec['n']}of{spec['m']}-{spec['importance']}" + (f"-g{spec['mask_group']}"
                                                                      if spec.get("mask_group", 1) != 1 else "")
    return _cache_root() / f"{spec['kind']}s" / f"{tag}-{key(spec)}.pt"


def cached(spec: dict) -> dict | None:
    """The cached result of a point or stage spec, or None."""
    path = point_path(spec) if spec["kind"] == "point" else _stage_path(spec).with_suffix(".json")
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec.get("result") if rec.get("spec") == spec else None


def store_point(spec: dict, result: dict) -> Path:
    return atomic_write_text(point_path(spec), json.dumps({"spec": spec, "result": result}, indent=1))


def _save_stage(spec: dict, state: dict, info: dict) -> None:
    path = _stage_path(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps({"spec": spec, "result": info}, indent=1))


# ---------------------------------------------------------------------------------------------------------
# data and models (per process, memoised)


@functools.lru_cache(maxsize=None)
def _data(name: str):
    from models import data as datasets

    xtr, ytr = datasets.load(name, "train")
    xte, yte = datasets.load(name, "test")
    return torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte)


def _split(spec_data: str, budget: dict):
    xtr, ytr, xte, yte = _data(spec_data)
    nft = budget.get("ft_images") or len(xtr)
    nte = budget.get("test_images") or len(xte)
    return xtr[:nft], ytr[:nft], xte[:nte], yte[:nte], xtr[:budget["calib"]], ytr[:budget["calib"]]


def _evaluate(model, x, y) -> float:
    from models import train as trainer

    return 100.0 * trainer.evaluate(model, x, y)


def train_baseline(spec: dict) -> tuple[dict, dict]:
    """Train the float model of a baseline spec: ``models.train.train``'s recipe (Adam, cosine decay per
    step, batch, seed) with the test accuracy recorded after every epoch.  Returns (state_dict, info)."""
    from torch import nn

    from models import train as trainer

    torch.manual_seed(spec["seed"])
    model = trainer.build(spec["model"], spec["data"])
    xtr, ytr, xte, yte = _data(spec["data"])
    g = torch.Generator().manual_seed(spec["seed"])
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    bs, epochs = spec["batch"], spec["epochs"]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * -(-len(xtr) // bs)))
    loss_fn = nn.CrossEntropyLoss()
    curve, sec = [], []
    for _ in range(epochs):
        t = time.perf_counter()
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), bs):
            idx = perm[i:i + bs]
            opt.zero_grad()
            loss_fn(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            sched.step()
        sec.append(time.perf_counter() - t)
        curve.append(_evaluate(model, xte, yte))
    model.eval()
    info = dict(acc=curve[-1] if curve else _evaluate(model, xte, yte), curve=curve, sec_per_epoch=sec,
                threads=torch.get_num_threads(), train_images=len(xtr))
    return model.state_dict(), info


@functools.lru_cache(maxsize=4)
def _stage_state(spec_json: str) -> dict:
    """The stage's saved state (loaded or computed and saved); memoised per process."""
    spec = json.loads(spec_json)
    path = _stage_path(spec)
    if path.exists() and cached(spec) is not None:
        return torch.load(path, map_location="cpu", weights_only=True)
    state, info = (train_baseline if spec["kind"] == "baseline" else prune_retrain)(spec)
    _save_stage(spec, state, info)
    return state


def load_baseline(spec: dict):
    from models import train as trainer

    model = trainer.build(spec["model"], spec["data"])
    model.load_state_dict(_stage_state(json.dumps(spec, sort_keys=True)))
    return model.eval()


def prune_retrain(spec: dict) -> tuple[dict, dict]:
    """MVQ's first step on the baseline: N:M mask by importance, then retraining with the mask fixed."""
    from flow.compress import nm_prune_finetune

    b = spec["baseline"]
    base = load_baseline(b)
    budget = dict(ft_images=spec["images"], test_images=None, calib=spec["calib"])
    xft, yft, xte, yte, _, _ = _split(b["data"], budget)
    kw = dict(n=spec["n"], m=spec["m"], skip=tuple(spec["skip"]), lr=spec["lr"], batch_size=spec["batch"],
              seed=spec["seed"], importance=spec["importance"], calib_images=spec["calib"], progress=False)
    g = spec.get("mask_group", 1)
    if g != 1:
        kw.update(mask_group=g, overrides=group_overrides(base, g, spec["skip"]))
    t = time.perf_counter()
    pruned0 = copy.deepcopy(base)
    nm_prune_finetune(pruned0, xft, yft, epochs=0, **kw)
    acc0 = _evaluate(pruned0, xte, yte)
    pruned = copy.deepcopy(base)
    masks = nm_prune_finetune(pruned, xft, yft, epochs=spec["epochs"], **kw)
    info = dict(acc_pruned=acc0, acc_retrained=_evaluate(pruned, xte, yte), seconds=time.perf_counter() - t)
    return {"model": pruned.state_dict(), **{f"mask:{k}": v for k, v in masks.items()}}, info


def load_pruned(spec: dict):
    """(pruned and retrained float model, {layer: mask}) of a prune spec."""
    from models import train as trainer

    b = spec["baseline"]
    state = _stage_state(json.dumps(spec, sort_keys=True))
    model = trainer.build(b["model"], b["data"])
    model.load_state_dict(state["model"])
    masks = {k[len("mask:"):]: v for k, v in state.items() if k.startswith("mask:")}
    return model.eval(), masks


def group_overrides(model, g: int, skip) -> dict[str, dict]:
    """``{layer: dict(mask_group=gcd(Cout, g))}`` for the compressed Conv2d/Linear layers whose output channels
    ``g`` does not divide (the classifiers' 10 outputs): they share their masks by the largest group that fits.
    ``skip``: the bench's skip list ('first', 'last', names); skipped layers get no override (it would
    compress them)."""
    import math

    from torch import nn

    names = [(n, mod) for n, mod in model.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    skipped = {n for n, _ in names[:1]} if "first" in skip else set()
    skipped |= {n for n, _ in names[-1:]} if "last" in skip else set()
    skipped |= {n for n, _ in names for s in skip if n == s or n.startswith(s + ".")}
    return {n: dict(mask_group=math.gcd(int(mod.weight.shape[0]), g)) for n, mod in names
            if n not in skipped and mod.weight.shape[0] % g}


def run_stage(spec: dict) -> dict:
    """Compute (or load) a baseline / prune stage; returns its info."""
    _stage_state(json.dumps(spec, sort_keys=True))
    return cached(spec) or {}


# ---------------------------------------------------------------------------------------------------------
# one point


@torch.no_grad()
def quantize_dense_int8_(model) -> int:
    """Every plain Conv2d / Linear weight to symmetric per-layer int8 (127 levels each side), in place.

    What ``compression_report(model, dense_bits=8)`` counts for a dense layer; returns how many layers.
    """
    from torch import nn

    count = 0
    for mod in model.modules():
        if type(mod) in (nn.Conv2d, nn.Linear):
            w = mod.weight
            amax = float(w.abs().max())
            scale = amax / 127 if amax > 0 else 1.0
            w.copy_(torch.round(w / scale).clamp_(-127, 127) * scale)
            count += 1
    return count


def count_macs(model, input_shape) -> dict:
    """Multiply-accumulates and LUT lookups of one image through ``model`` (forward hooks, batch 1).

    * Conv2d / Linear / VecQ layers: ``out positions x weight elements`` (conv: OH*OW*Cout*Cin*kh*kw/groups,
      linear: in*out); VecQ's b-bit weights are still one MAC each.
    * MVQ / VQ layers: ``out positions x kept weights`` (n/m of the dense count for N:M; all for VQ).
    * PQ layers: the encoder's distance MACs, ``out positions x C x K x v`` (each subvector against the K
      prototypes of its subspace), in ``macs``; the LUT reads-and-adds, ``out positions x C x Cout``, in
      ``lookups`` (no multiplies).
    BatchNorm (folded), activations, pooling and residual adds are not counted.
    """

    from flow.compress.mvq import _CodebookLayer

    tot = {"macs": 0, "lookups": 0}

    def hook(mod, inp, out):
        cout = out.shape[1] if out.dim() > 1 else out.shape[-1]
        pos = out.numel() // cout
        if isinstance(mod, _CodebookLayer):
            tot["macs"] += pos * int(mod.mask.sum())
        elif hasattr(mod, "prototypes") and hasattr(mod, "num_subspaces"):
            tot["macs"] += pos * mod.num_subspaces * mod.K * mod.v
            tot["lookups"] += pos * mod.num_subspaces * cout
        else:
            tot["macs"] += pos * mod.weight.numel()

    handles = []
    for mod in model.modules():
        is_pq = hasattr(mod, "prototypes") and hasattr(mod, "num_subspaces")
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear, _CodebookLayer)) or is_pq or \
                (hasattr(mod, "stored_bits") and isinstance(getattr(mod, "weight", None), torch.Tensor)):
            handles.append(mod.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return tot


def ratios(model) -> dict:
    """Whole-model ratios of ``compression_report(model, dense_bits=8)``: with and without the N:M masks."""
    from flow.compress import compression_report

    rep = compression_report(model, dense_bits=DENSE_BITS)
    masks = sum(r.bits.get("masks", 0) for r in rep.rows)
    parts: dict[str, int] = {}
    for r in rep.rows:
        for c, b in r.bits.items():
            parts[c] = parts.get(c, 0) + int(b)
    return dict(ratio=rep.ratio, ratio_nomask=rep.float_bits / (rep.total_bits - masks),
                stored_bits=rep.total_bits, mask_bits=masks, float_bits=rep.float_bits, bits=parts,
                dense_layers=[r.name for r in rep.rows if r.method == "dense"])


def _train_pq(model, x, y, epochs: int, batch: int, seed: int) -> str:
    """PQ's training: ``flow.compress.finetune.pq_finetune`` (PQA / LUT-NN: prototypes and LUT trained
    jointly, the soft assignment annealed to hard, its defaults) for exactly ``epochs`` epochs, like every
    other method (``hard_epochs=0``: its BatchNorm re-estimation stays, its extra BN-only epoch goes).
    Returns the function used."""
    from flow.compress.finetune import pq_finetune

    pq_finetune(model, x, y, epochs=epochs, batch_size=batch, seed=seed, hard_epochs=0, progress=False)
    return "flow.compress.finetune.pq_finetune(hard_epochs=0)"


def run_point(spec: dict) -> dict:
    """Compress, train and measure one point of the sweep; a pure function of ``spec`` (see point_spec).

    Returns accuracy before (acc0) and after (acc) training, ratios with and without masks, MACs per
    image, per-layer MVQ/VQ diagnostics and timings.  Dense layers are int8-quantized before the final
    evaluation, as they are counted.
    """
    from flow.compress import compress, finetune
    from flow.compress.mvq import MVQConv2d, MVQLinear, mvq_diagnostics

    t0 = time.perf_counter()
    torch.manual_seed(spec["seed"])
    method, knobs, budget = spec["method"], dict(spec["knobs"]), spec["budget"]
    base = load_baseline(spec["baseline"])
    xft, yft, xte, yte, calib, _ = _split(spec["data"], budget)
    shape = tuple(xte.shape[1:])
    out: dict = dict(extra={})
    if method in ("float", "int8"):
        c = copy.deepcopy(base)
        if method == "int8":
            quantize_dense_int8_(c)
        acc = _evaluate(c, xte, yte)
        r = ratios(c)
        if method == "float":
            r.update(ratio=1.0, ratio_nomask=1.0, stored_bits=r["float_bits"], bits={}, dense_layers=[])
        out.update(acc0=acc, acc=acc, **r, **count_macs(c, shape), t_compress=0.0, t_train=0.0,
                   t_eval=time.perf_counter() - t0)
        return out
    src, masks = base, None
    if method == "mvq":
        src, masks = load_pruned(spec["prune"])
        out["extra"]["prune"] = cached(spec["prune"])
    kw = dict(knobs)
    kw.pop("importance", None)
    if spec["skip"] is not None:
        kw["skip"] = tuple(spec["skip"])
    if kw.get("mask_group", 1) != 1:
        kw["overrides"] = group_overrides(src, kw["mask_group"], spec["skip"] or ())
        out["extra"]["mask_group_overrides"] = {n: o["mask_group"] for n, o in kw["overrides"].items()}
    if method in ("vq", "mvq"):
        kw["clip_k"] = True
    t = time.perf_counter()
    c = compress(src, method=method, data=calib, seed=spec["seed"], **kw)
    if masks is not None:  # the clustered masks must be the pruning masks (kept weights are nonzero)
        mods = dict(c.named_modules())
        srcmods = dict(src.named_modules())
        fixed = 0
        for name, mask in masks.items():
            layer = mods[name]
            if not torch.equal(layer.mask, mask.to(layer.mask.dtype)):
                cls = MVQConv2d.from_conv if isinstance(layer, MVQConv2d) else MVQLinear.from_linear
                new = cls(srcmods[name], layer.n, layer.m, layer.k, layer.d, seed=spec["seed"], name=name, mask=mask,
                          mask_group=layer.mask_group)
                new.quantize_codebook_(8)
                parent, _, leaf = name.rpartition(".")
                setattr(c.get_submodule(parent) if parent else c, leaf, new)
                fixed += 1
        out["extra"]["mask_fixups"] = fixed
    t_compress = time.perf_counter() - t
    if method in ("vq", "mvq"):
        diag = mvq_diagnostics(c, src)
        if method == "mvq":  # the same decoded weights against the unpruned float weights
            for name, dfl in mvq_diagnostics(c, base).items():
                diag[name]["rel_err_vs_float"] = dfl["rel_err_all"]
        out["layers"] = diag
        out["diag"] = summarize_diag(diag)
    t = time.perf_counter()
    acc0 = _evaluate(c, xte, yte)
    t_eval = time.perf_counter() - t
    t = time.perf_counter()
    if budget["ft_epochs"]:
        if method == "pq":
            out["extra"]["pq_train"] = _train_pq(c, xft, yft, budget["ft_epochs"], budget["batch"], spec["seed"])
        else:
            finetune(c, xft, yft, epochs=budget["ft_epochs"], lr=budget["lr"], batch_size=budget["batch"],
                     seed=spec["seed"], progress=False)
    t_train = time.perf_counter() - t
    quantize_dense_int8_(c)
    t = time.perf_counter()
    acc = _evaluate(c, xte, yte)
    t_eval += time.perf_counter() - t
    out.update(acc0=acc0, acc=acc, **ratios(c), **count_macs(c, shape), t_compress=t_compress, t_train=t_train,
               t_eval=t_eval)
    return out


def summarize_diag(layers: dict) -> dict:
    """Whole-model MVQ/VQ diagnostics: error ratios over all layers' sums, bits per compressed weight,
    codebook use weighted by vectors."""
    if not layers:
        return {}
    w = sum(d["weights"] for d in layers.values())
    kept = sum(d["kept"] for d in layers.values())
    vec = sum(d["vectors"] for d in layers.values())
    num = sum(d["mse_kept"] * d["kept"] for d in layers.values())  # sum m (w - w^)^2 over all layers
    den = sum(d["energy_kept"] for d in layers.values())  # sum m w^2
    out = dict(weights=w, kept=kept, vectors=vec, rel_err_kept=num / den if den else 0.0,
               mse_kept=num / kept if kept else 0.0,
               bpw_index=sum(d["bits_index"] for d in layers.values()) / w,
               bpw_mask=sum(d["bits_mask"] for d in layers.values()) / w,
               bpw_codebook=sum(d["bits_codebook"] for d in layers.values()) / w,
               used=sum(d["used"] * d["vectors"] for d in layers.values()) / vec,
               entropy_ratio=sum(d["entropy_ratio"] * d["vectors"] for d in layers.values()) / vec)
    if all("rel_err_vs_float" in d for d in layers.values()):
        out["rel_err_vs_float_max"] = max(d["rel_err_vs_float"] for d in layers.values())
    return out


# ---------------------------------------------------------------------------------------------------------
# execution: serial, process pool, Ray


def run_task(spec: dict) -> dict:
    """Run a point or a stage spec."""
    return run_point(spec) if spec["kind"] == "point" else run_stage(spec)


def _run_task(task: tuple[dict, int]) -> dict:
    """Worker entry: ``(spec, torch threads)`` -> result, or ``{"error": traceback}``."""
    spec, threads = task
    torch.set_num_threads(max(1, int(threads)))
    t = time.perf_counter()
    try:
        res = run_task(spec)
    except Exception:  # noqa: BLE001 - reported by the driver, the sweep goes on
        return {"error": traceback.format_exc(), "wall": time.perf_counter() - t}
    res = dict(res)
    res["wall"] = time.perf_counter() - t
    return res


class Scheduler:
    """Runs tasks with dependencies on a backend; a task is submitted once its dependencies are done.

    ``tasks``: ``{name: (spec, threads, deps, cost)}``; ready tasks are submitted most costly first.
    ``on_done(name, result)`` is called in the driver for each finished task.
    """

    def __init__(self, backend: str, jobs: int, ray_address: str | None = None):
        self.backend, self.jobs, self.ray_address = backend, max(1, jobs), ray_address

    def run(self, tasks: dict, on_done, desc: str = "frontier") -> None:
        from tqdm import tqdm

        done: set[str] = set()
        pending = dict(tasks)
        bar = tqdm(total=len(tasks), desc=desc, unit="task", file=sys.stderr, dynamic_ncols=True)

        def ready():
            r = [n for n, (_, _, deps, _) in pending.items() if all(d in done for d in deps)]
            r.sort(key=lambda n: -pending[n][3])
            return r

        def finish(name, res):
            done.add(name)
            bar.update(1)
            bar.set_postfix_str(name[-40:])
            on_done(name, res)

        if self.backend == "serial":
            while pending:
                r = ready()
                if not r:
                    raise RuntimeError(f"unsatisfiable dependencies: {sorted(pending)}")
                name = r[0]
                spec, threads, _, _ = pending.pop(name)
                finish(name, _run_task((spec, threads)))
        elif self.backend == "process":
            self._run_pool(pending, ready, finish)
        elif self.backend == "ray":
            self._run_ray(pending, ready, finish)
        else:
            raise ValueError(f"unknown backend {self.backend!r}: use process, ray or serial")
        bar.close()

    def _run_pool(self, pending, ready, finish) -> None:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        from bench import frontier as me  # pickled by reference to an importable module, not __main__

        running = {}
        # spawn: a fresh interpreter per worker (forking a process whose OpenMP runtime has started can hang)
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=mp.get_context("spawn")) as ex:
            while pending or running:
                for name in ready():
                    if len(running) >= self.jobs:
                        break
                    spec, threads, _, _ = pending.pop(name)
                    running[ex.submit(me._run_task, (spec, threads))] = name
                if not running:
                    raise RuntimeError(f"unsatisfiable dependencies: {sorted(pending)}")
                fin, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in fin:
                    finish(running.pop(f), f.result())

    def _run_ray(self, pending, ready, finish) -> None:
        import ray  # optional: pip install ray (the 'ray' extra)

        from bench import frontier as me

        if not ray.is_initialized():
            env = {"env_vars": {"PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}}
            if self.ray_address:  # a cluster: ship the code (data and packages must exist on the nodes)
                env = {"working_dir": str(REPO), "excludes": [".venv*", ".cache", "build", ".git", "*.pt",
                                                              "bench/results"], **env}
                env["env_vars"] = {"OMP_WAIT_POLICY": "PASSIVE"}
            ray.init(address=self.ray_address, runtime_env=env, include_dashboard=False, log_to_driver=False,
                     **({} if self.ray_address else {"num_cpus": self.jobs}))
        remote = ray.remote(me._run_task)
        running = {}
        while pending or running:
            for name in ready():
                spec, threads, _, _ = pending.pop(name)
                running[remote.options(num_cpus=threads).remote((spec, threads))] = name
            if not running:
                raise RuntimeError(f"unsatisfiable dependencies: {sorted(pending)}")
            fin, _ = ray.wait(list(running), num_returns=1)
            for ref in fin:
                finish(running.pop(ref), ray.get(ref))


# ---------------------------------------------------------------------------------------------------------
# the sweep


def plan_tasks(models: list[str], setups: dict, quick: bool, jobs: int) -> tuple[dict, list[dict]]:
    """``({task name: (spec, threads, deps, cost)}, [point records])`` for the models' grids."""
    tasks: dict = {}
    points: list[dict] = []
    for model in models:
        setup = setups[model]
        bspec = baseline_spec(model, setup)
        bname = f"{model}/baseline"
        heavy = model == "resnet20"
        tasks[bname] = (bspec, jobs if heavy else 1, [], 1000.0 if heavy else 10.0)
        for p in grid(model, quick):
            spec = point_spec(model, setup, p["method"], p["knobs"], p.get("check", False))
            deps = [bname]
            if spec["prune"] is not None:
                pn = f"{model}/prune {spec['prune']['n']}:{spec['prune']['m']} {spec['prune']['importance']}" + (
                    f" g={spec['prune']['mask_group']}" if spec["prune"].get("mask_group", 1) != 1 else "")
                tasks.setdefault(pn, (spec["prune"], 1, [bname], 50.0))
                deps.append(pn)
            name = f"{model}/{p['method']} {label(p['method'], spec['knobs'])}" + (" [2x epochs]" if spec["check"]
                                                                                    else "")
            cost = {"pq": 12.0, "float": 0.1, "int8": 0.1}.get(p["method"], 1.0) * (2 if spec["check"] else 1)
            tasks[name] = (spec, 1, deps, cost)
            points.append(dict(name=name, model=model, method=p["method"], knobs=spec["knobs"], check=spec["check"],
                               spec=spec))
    return tasks, points


def select_points(points: list[dict], tasks: dict, keep) -> tuple[list[dict], dict]:
    """The points ``keep(point)`` selects and the tasks they need (themselves and their stages)."""
    points = [p for p in points if keep(p)]
    need: set[str] = set()
    todo = [p["name"] for p in points]
    while todo:
        name = todo.pop()
        if name not in need:
            need.add(name)
            todo.extend(tasks[name][2])
    return points, {n: t for n, t in tasks.items() if n in need}


def merge_rows(rows: list[dict], merged: dict, models: list[str], bases: dict) -> tuple[list[dict], dict]:
    """This run's rows plus the ``merged`` run's rows of ``models`` for every point not run now (marked
    ``merged: True``), and what was checked: the float baseline (accuracy and per-epoch curve) and the float and
    int8 rows of both runs, which must agree for the rows to compare."""
    have = {r["name"] for r in rows}
    old = [dict(r, merged=True) for r in merged.get("rows", []) if r["model"] in models and r["name"] not in have]
    info: dict = {"file_rows": len(old), "run_rows": len(rows), "checks": {}}
    lines = []
    for m_ in models:
        ob, nb = (merged.get("baselines") or {}).get(m_), bases.get(m_)
        chk = dict(baseline_acc=(ob or {}).get("acc"), baseline_acc_now=(nb or {}).get("acc"),
                   curve_equal=bool(ob and nb and ob.get("curve") == nb.get("curve")))
        for meth in ("float", "int8"):
            o = next((r.get("acc") for r in merged.get("rows", []) if r["model"] == m_ and r["method"] == meth), None)
            n = next((r.get("acc") for r in rows if r["model"] == m_ and r["method"] == meth), None)
            chk[f"{meth}_acc"], chk[f"{meth}_acc_now"] = o, n
        chk["same"] = chk["curve_equal"] and chk["float_acc"] is not None and \
            chk["float_acc"] == chk["float_acc_now"] and \
            chk["int8_acc"] == chk["int8_acc_now"]
        info["checks"][m_] = chk
        lines.append(f"merge {m_}: {'the same' if chk['same'] else 'NOT the same'} float baseline as the merged "
                     f"file (float {chk['float_acc']} vs {chk['float_acc_now']} now, int8 {chk['int8_acc']} vs "
                     f"{chk['int8_acc_now']}, per-epoch curve {'equal' if chk['curve_equal'] else 'different'})")
    info["text"] = "\n".join(lines)
    info["same_baseline"] = all(c["same"] for c in info["checks"].values())
    # this run's float / int8 rows replace the file's (the same when the baseline is), the rest are the file's
    return [r for r in old if r["method"] not in ("float", "int8")] + rows, info


def label(method: str, knobs: dict) -> str:
    if method == "vq":
        return f"k={knobs['k']} d={knobs['d']}"
    if method == "mvq":
        imp = "" if knobs.get("importance", "magnitude") == "magnitude" else f" {knobs['importance']}"
        g = f" g={knobs['mask_group']}" if knobs.get("mask_group", 1) != 1 else ""
        return f"{knobs['n']}:{knobs['m']} k={knobs['k']} d={knobs['d']}{imp}{g}"
    if method == "pq":
        return f"v={knobs['v']} K={knobs['K']}"
    if method == "vecq":
        return f"b={knobs['bits']}" + (f" {knobs['vecq_scheme']}" if knobs.get("vecq_scheme") else "")
    return "-"


def series(row: dict) -> str:
    """The frontier a row belongs to: its method, or ``"mvq g=G"`` for shared-mask MVQ (G output channels per
    N:M pattern)."""
    g = row.get("knobs", {}).get("mask_group", 1)
    return f"{row['method']} g={g}" if row["method"] == "mvq" and g != 1 else row["method"]


def frontiers(rows: list[dict]) -> dict:
    """Per model and series (:func:`series`): the Pareto frontier (masks counted; per-channel MVQ also without
    masks), as row indices."""
    out: dict = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        fm: dict = {}
        names = sorted({series(r) for r in rows if r["model"] == model},
                       key=lambda n: (METHOD_ORDER.index(n.split()[0]), int(n.split("g=")[1]) if "g=" in n else 0))
        for name in names:
            idx = [i for i, r in enumerate(rows) if r["model"] == model and series(r) == name
                   and not r["check"] and "acc" in r]
            if not idx:
                continue
            pts = [rows[i] for i in idx]
            fm[name] = [idx[j] for j in pareto_front(pts, "ratio", "acc")]
            if name == "mvq":
                fm["mvq (no masks)"] = [idx[j] for j in pareto_front(pts, "ratio_nomask", "acc")]
        out[model] = fm
    return out


def best_point(rows: list[dict], idx: list[int], r: float) -> dict | None:
    """The most accurate of ``rows[idx]`` with ``ratio >= r`` (every bit counted), None if none reaches it;
    of equal accuracies the higher ratio."""
    pts = [rows[i] for i in idx if rows[i]["ratio"] >= r]
    return max(pts, key=lambda q: (q["acc"], q["ratio"])) if pts else None


def budget_text(model: str, setup: dict, base: dict | None) -> str:
    ft = f"the first {setup['ft_images']}" if setup["ft_images"] else "all"
    s = (f"{model} on {setup['data']}: float baseline {setup['train_epochs']} epochs (Adam {setup['lr_train']:g}, "
         f"cosine, batch {setup['batch']}, all training images)")
    if base:
        curve = " ".join(f"{a:.2f}" for a in base["curve"])
        sec = sum(base["sec_per_epoch"]) / max(1, len(base["sec_per_epoch"]))
        s += (f" -> {base['acc']:.2f}% test; test accuracy after each epoch: {curve}; "
              f"{sec:.3g} s/epoch on {base['threads']} thread(s)")
    s += (f".  Every compressed model: {setup['ft_epochs']} epochs on {ft} training images (Adam "
          f"{setup['lr_ft']:g}, cosine, batch {setup['batch']}; PQ: the library's PQ training (pq_finetune: "
          f"prototypes and LUT trained jointly, soft assignment annealed to hard, LUT int8) for the same epochs); MVQ also retrains the "
          f"N:M-pruned float model for {setup['ft_epochs']} epochs on them before clustering.  BN re-estimated on "
          f"{setup['calib']} training images; test: {setup['test_images'] or 'all'} test images; seed {SEED}.")
    return s


def report(rows: list[dict], fr: dict, setups: dict, bases: dict, prunes: dict) -> str:
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [(i, r) for i, r in enumerate(rows) if r["model"] == model]
        lines.append(f"== {model} ==")
        lines.append(budget_text(model, setups[model], bases.get(model)))
        dense: dict[str, str] = {}
        for _, r in mine:
            if r["method"] not in ("float", "int8") and "dense_layers" in r:
                tag = r["method"] + (f" {r['knobs']['vecq_scheme']}" if r["knobs"].get("vecq_scheme") else "")
                dense.setdefault(tag, ", ".join(r["dense_layers"]) or "none")
        lines.append("layers kept dense (int8 + scale): " + "; ".join(f"{k}: {v}" for k, v in dense.items()))
        on = {i for m_, idx in fr[model].items() if m_ != "mvq (no masks)" for i in idx}
        on_nm = set(fr[model].get("mvq (no masks)", []))
        body = []
        for i, r in sorted(mine, key=lambda t: (METHOD_ORDER.index(t[1]["method"]), series(t[1]), t[1]["check"],
                                                t[1].get("ratio", 0))):
            if r["check"]:
                continue
            if "error" in r:
                body.append(dict(method=r["method"], config=r["config"], front="ERROR"))
                continue
            body.append(dict(method=series(r), config=r["config"], ratio=r["ratio"], ratio_nm=r["ratio_nomask"],
                             MMACs=r["macs"] / 1e6, Mlookups=r["lookups"] / 1e6 if r["lookups"] else "-",
                             acc0=r["acc0"], acc=r["acc"],
                             front=("*" if i in on else "") + ("+" if i in on_nm else "")))
        lines.append("all points (acc0 = after compression, acc = after training; front: * = on its method's "
                     "frontier, + = on MVQ's frontier with masks not counted)")
        lines.append(table(body, ["method", "config", "ratio", "ratio_nm", "MMACs", "Mlookups", "acc0", "acc",
                                  "front"]))
        lines.append("")
        lines.append("frontiers (each method's Pareto points, ratio ascending)")
        body = []
        for meth, idx in fr[model].items():
            x = "ratio_nomask" if meth == "mvq (no masks)" else "ratio"
            for i in idx:
                r = rows[i]
                body.append(dict(method=meth, config=r["config"], ratio=r[x], acc=r["acc"], MMACs=r["macs"] / 1e6))
        lines.append(table(body, ["method", "config", "ratio", "acc", "MMACs"]))
        lines.append("")
        lines.append("best accuracy at ratio >= r (the frontier read at fixed ratios; '-' = never reached)")
        body = []
        for meth, idx in fr[model].items():
            if meth == "float":
                continue
            x = "ratio_nomask" if meth == "mvq (no masks)" else "ratio"
            pts = [dict(ratio=rows[i][x], acc=rows[i]["acc"]) for i in idx]
            row = {"method": meth}
            for rr in RATIO_MARKS:
                b = best_at(pts, rr)
                row[f">={rr}x"] = "-" if b is None else f"{b:.2f}"
            body.append(row)
        lines.append(table(body, ["method"] + [f">={rr}x" for rr in RATIO_MARKS]))
        lines.append("")
        cmp_ = [m_ for m_ in fr[model] if m_ == "vq" or m_.startswith("mvq") and m_ != "mvq (no masks)"]
        if any(m_.startswith("mvq g=") for m_ in cmp_):
            lines.append("every bit counted (masks included: one pattern per group of g output channels): VQ, "
                         "per-channel MVQ and shared-mask MVQ; best accuracy at ratio >= r / MMACs per image of "
                         "that point ('-' = never reached)")
            body = []
            for meth in cmp_:
                row = {"method": meth}
                for rr in RATIO_MARKS:
                    b = best_point(rows, fr[model][meth], rr)
                    row[f">={rr}x"] = "-" if b is None else f"{b['acc']:.2f} / {b['macs'] / 1e6:.4g}"
                body.append(row)
            lines.append(table(body, ["method"] + [f">={rr}x" for rr in RATIO_MARKS]))
            lines.append("")
        checks = [r for _, r in mine if r["check"] and "acc" in r]
        if checks:
            lines.append(f"budget check: the same point trained {2 * setups[model]['ft_epochs']} instead of "
                         f"{setups[model]['ft_epochs']} epochs")
            body = []
            for r in checks:
                twin = next((q for _, q in mine if not q["check"] and q["method"] == r["method"]
                             and q["knobs"] == r["knobs"] and "acc" in q), None)
                if twin:
                    body.append(dict(method=r["method"], config=r["config"], acc=twin["acc"], acc_2x=r["acc"],
                                     gain=r["acc"] - twin["acc"]))
            lines.append(table(body, ["method", "config", "acc", "acc_2x", "gain"]))
            lines.append("")
        diag = [r for _, r in mine if r["method"] in ("vq", "mvq") and not r["check"] and r.get("diag")]
        if diag:
            lines.append("MVQ vs VQ: bits per compressed weight (index / mask / codebook), relative error of the "
                         "kept weights after k-means (sum m(w-w^)^2 / sum m w^2, w = the clustered weights), "
                         "codebook use (fraction of codewords used; index entropy / log2 k), accuracy of the "
                         "pruned float model (before / after retraining)")
            body = []
            for r in sorted(diag, key=lambda q: (q["method"], q["ratio"])):
                d = r["diag"]
                pr = r.get("extra", {}).get("prune") or {}
                body.append(dict(method=series(r), config=r["config"], ratio=r["ratio"], ratio_nm=r["ratio_nomask"],
                                 b_idx=d["bpw_index"], b_mask=d["bpw_mask"], b_cb=d["bpw_codebook"],
                                 rel_err=d["rel_err_kept"], used=d["used"], H=d["entropy_ratio"],
                                 pruned=(f"{pr['acc_pruned']:.2f}/{pr['acc_retrained']:.2f}" if pr else "-"),
                                 acc0=r["acc0"], acc=r["acc"]))
            lines.append(table(body, ["method", "config", "ratio", "ratio_nm", "b_idx", "b_mask", "b_cb", "rel_err",
                                      "used", "H", "pruned", "acc0", "acc"]))
            lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], fr: dict, path: Path, bases: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(fr)
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    styles = {"vq": ("tab:blue", "o"), "mvq": ("tab:green", "s"), "mvq (no masks)": ("tab:green", "s"),
              "pq": ("tab:red", "^"), "vecq": ("tab:purple", "D"), "int8": ("k", "*")}
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model and not r["check"] and "acc" in r]
        for meth, (color, marker) in styles.items():
            if meth == "mvq (no masks)":
                continue
            pts = [r for r in mine if r["method"] == meth]
            ax.scatter([r["ratio"] for r in pts], [r["acc"] for r in pts], color=color, marker=marker, alpha=0.3,
                       s=20)
        for meth, idx in fr[model].items():
            if meth == "float":
                continue
            color, marker = styles.get(meth, ("tab:olive" if meth.endswith("g=4") else "tab:cyan", "v"))
            x = "ratio_nomask" if meth == "mvq (no masks)" else "ratio"
            ls = ":" if meth == "mvq (no masks)" else "--" if meth.startswith("mvq g=") else "-"
            ax.plot([rows[i][x] for i in idx], [rows[i]["acc"] for i in idx], ls=ls, marker=marker, color=color,
                    label=f"{meth} frontier", ms=6, mfc="none" if meth == "mvq (no masks)" else color)
        fl = [r for r in mine if r["method"] == "float"]
        if fl:
            ax.axhline(fl[0]["acc"], color="k", lw=0.8, ls="--", label=f"float32 ({fl[0]['acc']:.2f}%)")
        ax.set_xscale("log")
        xs = [r["ratio"] for r in mine if r["method"] != "float"] + [r["ratio_nomask"] for r in mine]
        ticks = [t for t in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128) if min(xs) / 1.5 <= t <= max(xs) * 1.5]
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        accs = [r["acc"] for r in mine]
        top = max(accs)
        ax.set_ylim(max(min(accs), top - 15) - 0.5, top + 0.5)
        ax.set_xlabel("whole-model compression ratio (every stored bit; dense layers int8)")
        ax.set_ylabel("test accuracy (%)")
        b = bases.get(model)
        ax.set_title(f"{model}" + (f" (float trained {len(b['curve'])} epochs)" if b else ""))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="lenet-digits only, a tiny grid and 2 fine-tuning epochs "
                                                         "(the test's mode; writes frontier_quick.*)")
    ap.add_argument("--models", nargs="+", default=None, help="subset of lenet-digits, resnet20")
    ap.add_argument("--backend", choices=("process", "ray", "serial"), default="process",
                    help="how points run: process pool (default), Ray, or one after another")
    ap.add_argument("--jobs", type=int, default=2, help="parallel points (processes or Ray CPUs); default 2")
    ap.add_argument("--ray-address", default=None, help="a Ray cluster to join (default: a local Ray)")
    ap.add_argument("--train-epochs", type=int, default=None, help="resnet20 float baseline epochs")
    ap.add_argument("--ft-epochs", type=int, default=None, help="resnet20 training epochs per compressed model")
    ap.add_argument("--ft-images", type=int, default=None, help="resnet20 training images per compressed model")
    ap.add_argument("--out", type=Path, default=None, help="directory for the JSON and PNG (default bench/results)")
    ap.add_argument("--dry-run", action="store_true", help="list the tasks and which are cached; run nothing")
    ap.add_argument("--only-shared", action="store_true",
                    help="run only the shared-mask MVQ points (and the float / int8 references and the stages "
                         "they need); with --merge the other rows come from that file")
    ap.add_argument("--merge", type=Path, default=None, metavar="JSON",
                    help="a finished run's frontier JSON of the same budget: its rows stand for every point not "
                         "run now (the float baseline is re-trained and checked against it)")
    a = ap.parse_args(argv)

    setups = {k: dict(v) for k, v in (QUICK_SETUPS if a.quick else SETUPS).items()}
    for opt, field in (("train_epochs", "train_epochs"), ("ft_epochs", "ft_epochs"), ("ft_images", "ft_images")):
        if getattr(a, opt) is not None and "resnet20" in setups:
            setups["resnet20"][field] = getattr(a, opt)
    models = a.models or list(setups)
    bad = [m for m in models if m not in setups]
    if bad:
        ap.error(f"unknown model(s) {bad}: use {', '.join(setups)}" + (" (--quick has lenet-digits only)"
                                                                         if a.quick else ""))
    tasks, points = plan_tasks(models, setups, a.quick, a.jobs)
    merged = None
    if a.merge is not None:
        try:
            merged = json.loads(a.merge.read_text())
        except (OSError, ValueError) as e:
            ap.error(f"--merge {a.merge}: cannot read it ({e})")
        for m_ in models:
            if merged.get("setups", {}).get(m_) != setups[m_]:
                ap.error(f"--merge {a.merge}: its {m_} budget {merged.get('setups', {}).get(m_)} is not this run's "
                         f"{setups[m_]}: rows of different budgets do not compare")
    if a.only_shared:
        points, tasks = select_points(points, tasks, lambda p: series(p) != p["method"] or
                                      p["method"] in ("float", "int8"))
    results: dict = {}
    todo = {}
    for name, t in tasks.items():
        res = cached(t[0])
        if res is not None:
            results[name] = res
        else:
            todo[name] = t
    print(f"{len(tasks)} tasks ({len(points)} points): {len(tasks) - len(todo)} cached, {len(todo)} to run; "
          f"backend {a.backend}, {a.jobs} job(s); cache {_cache_root()}", file=sys.stderr)
    if a.dry_run:
        for name, (spec, threads, deps, cost) in tasks.items():
            print(f"{'cached' if name in results else 'todo  '}  {name}  (threads {threads})")
        return 0
    errors = []

    def on_done(name, res):
        if "error" in res:
            errors.append((name, res["error"]))
            print(f"\nFAILED {name}:\n{res['error']}", file=sys.stderr)
            return
        results[name] = res
        spec = tasks[name][0]
        if spec["kind"] == "point":
            store_point(spec, res)

    t0 = time.perf_counter()
    # ready-to-run tasks whose dependencies are cached count as done
    sched_tasks = {n: (s, th, [d for d in deps if d in todo], c) for n, (s, th, deps, c) in todo.items()}
    if sched_tasks:
        Scheduler(a.backend, a.jobs, a.ray_address).run(sched_tasks, on_done)
    wall = time.perf_counter() - t0

    rows = []
    for p in points:
        res = results.get(p["name"])
        row = dict(name=p["name"], model=p["model"], method=p["method"], knobs=p["knobs"], check=p["check"],
                   config=label(p["method"], p["knobs"]), key=key(p["spec"]))
        row.update(res if res is not None else {"error": "not run"})
        rows.append(row)
    merge_info = None
    if merged is not None:
        rows, merge_info = merge_rows(rows, merged, models, {m_: results.get(f"{m_}/baseline") for m_ in models})
        merge_info.update(file=str(a.merge), file_machine=merged.get("machine"))
        print(merge_info["text"], file=sys.stderr)
    ok = [r for r in rows if "acc" in r]
    fr = frontiers(rows)
    bases = {m: results.get(f"{m}/baseline") for m in models}
    prunes = {n: r for n, r in results.items() if "/prune " in n}
    if merged is not None:
        prunes = {**{n: r for n, r in merged.get("prune_stages", {}).items() if n.split("/")[0] in models},
                  **prunes}
    text = report(rows, fr, setups, bases, prunes)
    print("Accuracy-ratio frontier: test accuracy (%) against whole-model compression ratio (float32 bits / "
          f"every stored bit; dense layers int8 + a per-layer scale, BN 2x32 bits per channel); ratio_nm = the same "
          f"without the N:M masks; MMACs per image (MVQ: n/m of the dense MACs; PQ: encoder distance MACs, "
          f"Mlookups its LUT reads).  Skipped layers: VQ/MVQ {SKIP['vq']}, PQ and VecQ their library default.")
    print(text)
    run_s = sum(r.get("wall", 0.0) for r in results.values())
    print(f"wall time {wall:.0f} s for {len(todo)} task(s) ({run_s:.0f} s of task time in all, cached included), "
          f"backend {a.backend}, {a.jobs} job(s)")
    out_dir = a.out or RESULTS
    stem = "frontier_quick" if a.quick else "frontier"
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{stem}.png"
    if ok:
        plot(rows, fr, png, bases)
    payload = {
        "setups": setups, "skip": SKIP, "dense_bits": DENSE_BITS, "seed": SEED, "quick": a.quick,
        "budget": {m: budget_text(m, setups[m], bases.get(m)) for m in models},
        "baselines": bases, "prune_stages": prunes, "rows": [{k: v for k, v in r.items() if k != "spec"} for r in rows],
        "frontiers": {m: {meth: [rows[i]["name"] for i in idx] for meth, idx in f.items()} for m, f in fr.items()},
        "ratio_marks": list(RATIO_MARKS), "wall_s": wall, "task_s": run_s, "backend": a.backend, "jobs": a.jobs,
        "only_shared": a.only_shared, "merge": merge_info,
        "conventions": {
            "ratio": "float32 bits of every weight, bias and folded BN / stored bits (compression_report, "
                     "dense_bits=8)",
            "ratio_nomask": "the same without the N:M mask bits",
            "macs": "per image; conv OH*OW*Cout*Cin*kh*kw/groups, linear in*out; MVQ/VQ: kept weights only; "
                    "PQ: encoder distances C*K*v per output position",
            "lookups": "PQ LUT reads per image (C*Cout per output position)",
        },
    }
    path = save(stem, payload, __file__, argv, out=out_dir)
    print(f"wrote {path}" + (f" and {png}" if ok else ""))
    if errors:
        print(f"{len(errors)} task(s) failed: {', '.join(n for n, _ in errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
