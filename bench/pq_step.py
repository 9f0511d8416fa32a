"""PQ training step against the float training step, side by side in one run (issue 21, item 2).

    python bench/pq_step.py [--quick] [--steps S] [--repeats R] [--threads T] [--batch B] [--out DIR]

Model: the zoo's ResNet20 shaped for Fashion-MNIST (28x28x1): the cached 3-epoch checkpoint when there is
one, else the seeded untrained model (the step's cost does not depend on the weights; the JSON says which).
PQ: ``compress(model, "pq", v=9, K=16, lut_bits=8, data=first 256 training images)``, the configuration
``bench/pq_train.py`` trains for (9, 16) (PQ's default skip: first conv, 1x1 shortcuts and classifier
dense; 18 PQConv2d layers).

Rows, each a training step of ``--batch`` Fashion-MNIST images (forward, cross-entropy, backward, Adam
step), as :func:`flow.compress.finetune.pq_finetune` runs it:

* ``float``: the float ResNet20, every parameter trained;
* ``pq soft T=<t>``: the joint soft phase (every parameter trained, float LUT, straight-through
  assignment, the temperature ``t`` times each layer's distance scale): at ``t_start`` (1.0) and at
  ``t_end`` (0.03), where almost every soft weight underflows (the cost of the exponentials differs);
* ``pq hard``: the hard phase (LUT int8, BatchNorm re-estimated, only BatchNorm and biases trained).

``impl``: ``native`` is the default path, the fused kernel :mod:`flow.compress._pq_native` (its code path,
e.g. ``native/avx512``, is printed and saved); ``torch`` is the previous fused torch formulation of the same
tree (``VQHLS_PQ=torch``), run on a copy of the same model. ``same_forward``: the native row's model output
on a fixed batch equals the torch row's bit for bit (the hard lookup), and ``grad_rel_diff`` is the largest
relative difference of the parameter gradients between the two.

Timing: ``--repeats`` interleaved rounds; in each, every row runs one untimed step and then ``--steps``
timed steps, one row after the other, so a load spike from other processes hits all rows alike. The
table shows the median over the rounds of the wall-clock ms per step and of the process CPU ms per step;
``x_float`` is the median of the per-round ratios to that round's float row (wall clock) and ``cpu_x_float``
the same ratio of CPU ms. Threads: ``--threads`` (default 1: the comparison is per core). Writes
RESULTS/pq_step.json (``--quick``: pq_step_quick.json) with the commit, CPU model, ISA flags, thread
counts and the code path.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see flow/__init__.py

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, cpu_info, git_commit, save, table  # noqa: E402
from flow.compress import compress  # noqa: E402
from flow.compress import _pq_native  # noqa: E402
from flow.compress import pq as pq_mod  # noqa: E402
from flow.compress.finetune import (  # noqa: E402
    PQTrainSpec,
    _harden,
    _only_bn_and_bias_trainable,
    _soften,
    _start_pq_run,
)
from models import data as datasets  # noqa: E402
from models import train as trainer  # noqa: E402

V, K, LUT_BITS = 9, 16, 8
T_START, T_END = 1.0, 0.03  # pq_train.py's schedule (relative temperatures)
COLS = ["phase", "impl", "ms_per_step", "cpu_ms_per_step", "x_float", "cpu_x_float", "same_forward",
        "grad_rel_diff"]


class Row:
    """One configuration: a model, what trains, the PQ backend (``VQHLS_PQ``), an Adam optimizer, and its timings."""

    def __init__(self, phase: str, impl: str, model: torch.nn.Module, bn_only: bool = False):
        self.phase, self.impl, self.model, self.bn_only = phase, impl, model, bn_only
        self.backend = "native" if impl == "native" else "torch"
        with _only_bn_and_bias_trainable(model, bn_only):
            self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=1e-3)
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        os.environ["VQHLS_PQ"] = self.backend
        with _only_bn_and_bias_trainable(self.model, self.bn_only):
            self.model.train()
            self.opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(x), y).backward()
            self.opt.step()

    def probe(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Output and parameter gradients on (x, y), parameters unchanged (a copy of the model)."""
        os.environ["VQHLS_PQ"] = self.backend
        m = copy.deepcopy(self.model)
        with _only_bn_and_bias_trainable(m, self.bn_only):
            m.train()
            out = m(x)
            F.cross_entropy(out, y).backward()
            return out.detach(), [p.grad.clone() for p in m.parameters() if p.requires_grad]


def build(a) -> tuple[list[Row], dict, torch.Tensor, torch.Tensor]:
    xtr, ytr = datasets.load("fashion-mnist", "train")
    n = 512 if a.quick else 4096     # the images BatchNorm is re-estimated on (--quick: the tests)
    x = torch.from_numpy(xtr[:n]).float()
    y = torch.from_numpy(ytr[:n]).long()
    cached = trainer.cache_dir("checkpoints") / "resnet20-fashion-mnist-e3.pt"
    if cached.exists():
        model, weights = trainer.get_trained("resnet20", "fashion-mnist", 3, progress=False), "checkpoint e3"
    else:
        torch.manual_seed(0)
        model, weights = trainer.build("resnet20", "fashion-mnist"), "untrained (seed 0)"
    torch.manual_seed(0)
    pq_model = compress(model, "pq", v=V, K=K, lut_bits=LUT_BITS, data=x[:256], iters=2 if a.quick else 20)
    spec = PQTrainSpec(epochs=1, assignment="ste")
    rows = [Row("float", "-", copy.deepcopy(model))]
    impls = ["native"] + ([] if a.native_only else ["torch"])
    for t in (T_START, T_END):
        run = _start_pq_run(copy.deepcopy(pq_model), x, y, spec=spec, teacher=None, progress=False, log=None)
        _soften(run)
        run.set_temperature(t)
        for impl in impls:
            rows.append(Row(f"pq soft T={t:g}", impl, copy.deepcopy(run.model)))
    _soften(run)
    _harden(run)  # T = t_end, LUT int8, BatchNorm re-estimated
    for impl in impls:
        rows.append(Row("pq hard", impl, copy.deepcopy(run.model), bn_only=True))
    info = dict(weights=weights, pq_layers=len(pq_mod.pq_layers(pq_model)), code_path=f"native/{_pq_native.isa()}")
    return rows, info, x, y


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 1 step, k-means 2 iterations (the tests)")
    ap.add_argument("--steps", type=int, help="timed steps per row and round (default 4; --quick 1)")
    ap.add_argument("--repeats", type=int, help="interleaved rounds (default 3; --quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--batch", type=int, default=64, help="images per step (default 64)")
    ap.add_argument("--native-only", action="store_true", help="time the native path only (no torch rows)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON (default bench/results)")
    a = ap.parse_args(argv)
    steps = a.steps or (1 if a.quick else 4)
    repeats = a.repeats or (1 if a.quick else 3)
    if steps < 1 or repeats < 1 or a.threads < 1 or a.batch < 1:
        ap.error("--steps, --repeats, --threads and --batch must be >= 1")
    torch.set_num_threads(a.threads)
    os.environ["VQHLS_PQ"] = "native"  # the kernel must load: no silent fall back to torch in this bench
    _pq_native.load()
    t0 = time.perf_counter()
    rows, info, x, y = build(a)
    B = a.batch
    xb, yb = x[:B], y[:B]
    # the same forward: every torch row's output on a fixed batch against its phase's native row
    ref: dict[str, tuple] = {}
    for r in rows:
        out, grads = r.probe(xb, yb)
        if r.impl == "torch" and r.phase in ref:
            o, g = ref[r.phase]
            r.same_forward = bool(torch.equal(out, o))
            r.grad_rel_diff = max(float((a_ - b_).abs().max() / b_.abs().max().clamp_min(1e-30))
                                  for a_, b_ in zip(grads, g))
        else:
            ref[r.phase] = (out, grads)
            r.same_forward, r.grad_rel_diff = "-", "-"
    batch_at = 0
    for _ in range(repeats):
        for r in rows:
            r.step(xb, yb)  # untimed: first-touch allocations, caches
            w0, c0 = time.perf_counter(), time.process_time()
            for s in range(steps):
                i = (batch_at + s * B) % (len(x) - B + 1)
                r.step(x[i:i + B], y[i:i + B])
            r.wall.append((time.perf_counter() - w0) / steps * 1e3)
            r.cpu.append((time.process_time() - c0) / steps * 1e3)
        batch_at += steps * B
    fl = rows[0]
    out_rows = []
    for r in rows:
        out_rows.append(dict(phase=r.phase, impl=r.impl, ms_per_step=statistics.median(r.wall),
                             cpu_ms_per_step=statistics.median(r.cpu),
                             x_float=statistics.median(w / f for w, f in zip(r.wall, fl.wall)),
                             cpu_x_float=statistics.median(c / f for c, f in zip(r.cpu, fl.cpu)),
                             same_forward=r.same_forward, grad_rel_diff=r.grad_rel_diff,
                             wall_ms_rounds=r.wall, cpu_ms_rounds=r.cpu))
    cpu = cpu_info()
    result = dict(rows=out_rows, model="resnet20", data="fashion-mnist", v=V, K=K, lut_bits=LUT_BITS, batch=B,
                  steps=steps, repeats=repeats, threads=a.threads, torch_threads=torch.get_num_threads(),
                  t_start=T_START, t_end=T_END, cpu=cpu, wall_s=time.perf_counter() - t0, **info)
    flags = ", ".join(f"{f} {'?' if v is None else ('yes' if v else 'no')}" for f, v in cpu["flags"].items())
    print(f"machine: {cpu['model']}, {cpu['cores']} cores; {flags}; commit {git_commit()}; "
          f"threads: torch {torch.get_num_threads()}; code path: {info['code_path']}")
    print(f"ResNet20 / Fashion-MNIST 28x28x1 ({info['weights']}), PQ (v={V}, K={K}), {info['pq_layers']} PQConv2d "
          f"layers; one training step = forward + cross-entropy + backward + Adam, batch {B}")
    print(f"median of {repeats} interleaved rounds of {steps} steps; x_float (cpu_x_float) = median per-round ratio "
          f"of wall (CPU) ms to the float row; native = the fused kernel (default), torch = the previous fused "
          f"torch path (VQHLS_PQ=torch)")
    print(table(out_rows, COLS))
    name = "pq_step_quick" if a.quick else "pq_step"
    path = save(name, result, __file__, argv, out=a.out)
    print("wrote", path)
    ok = all(r["same_forward"] in ("-", True) for r in out_rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
