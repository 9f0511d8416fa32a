"""The whole pipeline, stage by stage.

    python -m flow.build --stage csim --model lenet-digits [--data digits] [--method mvq] [--limit N]

Stages, in order: train (or reuse the cached checkpoint) -> compress ->
quantize (golden integer model) -> lower (Program) -> hls (render + g++) ->
csim (C-simulate every test image, compare with golden). Every stage prints
its time; the run exits 1 if any C-sim output differs from golden, 2 on bad
input.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

STAGES = ("compress", "quantize", "lower", "hls", "csim")

# per-model defaults for the main job: (k, d, finetune epochs, finetune images)
RECIPES = {
    "lenet-digits": dict(k=64, d=8, finetune_epochs=8, finetune_limit=None, calib=256),
    "cnn-fmnist": dict(k=128, d=8, finetune_epochs=1, finetune_limit=10000, calib=256),
    "resnet20": dict(k=256, d=8, finetune_epochs=1, finetune_limit=10000, calib=256),
}


class Timer:
    """Collects the wall time of each stage for the final table."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        yield
        self.times[name] = time.perf_counter() - t0
        print(f"[{name}] done in {self.times[name]:.2f} s", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from models import zoo

    ap = argparse.ArgumentParser(prog="python -m flow.build", description=__doc__.splitlines()[0])
    ap.add_argument("--stage", default="csim", choices=STAGES, help="run the pipeline up to this stage")
    ap.add_argument("--model", default="lenet-digits", help=f"one of {', '.join(zoo.names())}")
    ap.add_argument("--data", default=None, help="dataset (default: the model's own; resnet20 -> fashion-mnist)")
    ap.add_argument("--method", default="mvq", choices=("mvq", "vq", "pq", "vecq", "none"))
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--m", type=int, default=4)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--d", type=int, default=None)
    ap.add_argument("--v", type=int, default=9, help="pq: subvector length")
    ap.add_argument("--K", type=int, default=16, help="pq: prototypes per subspace")
    ap.add_argument("--bits", type=int, default=4, help="vecq: weight bits (2..8)")
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--train-epochs", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="use the first N test images")
    ap.add_argument("--board", default="pynq-z2")
    ap.add_argument("--out", default=None, help="build directory (default build/<model>-<method>)")
    ap.add_argument("--json", default=None, help="also write the summary as JSON here")
    return ap.parse_args(argv)


def run(a: argparse.Namespace) -> int:
    import torch

    from flow.boards import get_board
    from models import data as datasets
    from models import train as trainer
    from models import zoo

    get_board(a.board)
    zoo._check(a.model)
    data_name = a.data or ("fashion-mnist" if zoo.default_dataset(a.model) == "cifar10" else zoo.default_dataset(a.model))
    recipe = dict(RECIPES.get(a.model, RECIPES["cnn-fmnist"]))
    k = a.k or recipe["k"]
    d = a.d or recipe["d"]
    ft_epochs = recipe["finetune_epochs"] if a.finetune_epochs is None else a.finetune_epochs
    out = Path(a.out or f"build/{a.model}-{a.method}")
    T = Timer()
    summary: dict = {"model": a.model, "data": data_name, "method": a.method}

    with T.stage("train"):
        model = trainer.get_trained(a.model, data_name, a.train_epochs)
        xtr, ytr = datasets.load(data_name, "train")
        xte, yte = datasets.load(data_name, "test")
        if a.limit:
            xte, yte = xte[: a.limit], yte[: a.limit]
        summary["float_acc"] = trainer.evaluate(model, xte, yte)

    if a.method != "none":
        from flow.compress import compress, compression_report, finetune

        with T.stage("compress"):
            calib = torch.from_numpy(xtr[:512]) if a.method == "pq" else None
            cmodel = compress(model, method=a.method, n=a.n, m=a.m, k=k, d=d, clip_k=True, data=calib,
                              v=a.v, K=a.K, bits=a.bits)
            summary["compressed_acc"] = trainer.evaluate(cmodel, xte, yte)
            if ft_epochs:
                lim = recipe["finetune_limit"] or len(xtr)
                xf, yf = torch.from_numpy(xtr[:lim]), torch.from_numpy(ytr[:lim])
                if a.method == "pq":  # LUT-NN: soft assignment annealed towards the hard lookup
                    from flow.compress.pq import anneal_pq

                    anneal_pq(cmodel, xf, yf, epochs=ft_epochs)
                else:
                    finetune(cmodel, xf, yf, epochs=ft_epochs)
            summary["finetuned_acc"] = trainer.evaluate(cmodel, xte, yte)
            report = compression_report(cmodel)
            summary["ratio"] = report.ratio
            print(report.table())
    else:
        cmodel = model
    if a.stage == "compress":
        return _finish(summary, T, a)

    from flow.quant import quantize_input, quantize_model
    from flow.quant import run as golden_run

    with T.stage("quantize"):
        calib = torch.from_numpy(xtr[: recipe["calib"]])
        qgraph = quantize_model(cmodel, calib)
        x_int = quantize_input(xte, qgraph.in_tensor.scale, qgraph.in_tensor.unsigned)
        gold = golden_run(qgraph, x_int)
        summary["golden_acc"] = float((gold.reshape(len(xte), -1).argmax(1) == yte).mean())
    if a.stage == "quantize":
        return _finish(summary, T, a)

    from flow.boards import perf
    from flow.boards.resources import check_fit
    from flow.compile import EngineConfig, lower

    with T.stage("lower"):
        # the engine sized for the board, checked against the part before any HLS is written
        engine = EngineConfig.for_board(a.board, n=a.n, m=a.m)
        usage = check_fit(engine, a.board)
        program = lower(qgraph, engine)
        summary["program_bytes"] = len(program.to_bytes())
        summary["float_bytes"] = 4 * sum(p.numel() for p in model.parameters())
        board = get_board(a.board)
        cyc = perf.image_cycles(program, engine).total
        summary["modelled_cycles_per_image"] = cyc
        summary["modelled_images_per_s"] = board.clock_mhz * 1e6 / cyc
        summary["resources"] = {"bram36": usage.bram36, "dsp": usage.dsp, "lut": usage.lut, "ff": usage.ff}
        summary["resident_ops"] = sum(op.resident for op in program.ops if op.opcode == 1)
    if a.stage == "lower":
        return _finish(summary, T, a)

    from flow.hls.csim import Engine
    from flow.hls.lint import lint_project
    from flow.hls.project import write_project

    with T.stage("hls"):
        # the project carries the test vectors, so its own `make csim` re-checks them without Python
        project = write_project(engine, out / "hls", program=program, inputs=x_int, expected=gold, board=a.board)
        problems = lint_project(project.path)
        if problems:
            raise RuntimeError("emitted HLS fails the synthesizability lint:\n" + "\n".join(map(str, problems)))
        hw = Engine(engine, project=project)
        print(f"HLS project: {project.path}", file=sys.stderr)
    if a.stage == "hls":
        return _finish(summary, T, a)

    with T.stage("csim"):
        t0 = time.perf_counter()
        sim = hw.predict(program, x_int)
        summary["csim_images_per_s"] = len(x_int) / (time.perf_counter() - t0)
        summary["csim_cycles_per_image"] = hw.modelled_cycles // max(1, len(x_int))
        same = np.array([np.array_equal(s, g) for s, g in zip(sim, gold)])
        summary["csim_acc"] = float((sim.reshape(len(xte), -1).argmax(1) == yte).mean())
        summary["bit_exact"] = int(same.sum())
        summary["images"] = len(same)
    return _finish(summary, T, a)


def _finish(summary: dict, T: Timer, a: argparse.Namespace) -> int:
    summary["stage_seconds"] = T.times
    print()
    print(f"model {summary['model']} on {summary['data']}, method {summary['method']}")
    for key, label in [("float_acc", "float accuracy"), ("compressed_acc", "compressed accuracy"),
                       ("finetuned_acc", "after fine-tuning"), ("golden_acc", "golden integer accuracy"),
                       ("csim_acc", "C-sim accuracy")]:
        if key in summary:
            print(f"  {label:<26} {100 * summary[key]:6.2f}%")
    if "ratio" in summary:
        print(f"  {'compression ratio':<26} {summary['ratio']:6.2f}x (every stored bit vs float32)")
    if "program_bytes" in summary:
        # the Program image is word-aligned for the engine (uint16 indices and masks), so it is
        # larger than the format's bit count above
        print(f"  {'program image':<26} {summary['program_bytes']:,} bytes "
              f"({summary['float_bytes'] / summary['program_bytes']:.2f}x smaller than float32 parameters)")
    if "modelled_cycles_per_image" in summary:
        r = summary["resources"]
        print(f"  {'engine (modelled)':<26} {summary['modelled_cycles_per_image']:,} cycles/image = "
              f"{summary['modelled_images_per_s']:,.0f} images/s at the board clock; "
              f"{r['bram36']:.0f} BRAM36, {r['dsp']} DSP, {r['lut']:,} LUT")
    if "csim_cycles_per_image" in summary:
        print(f"  {'C-sim CYCLES register':<26} {summary['csim_cycles_per_image']:,} per image "
              f"(the same model, counted by the engine)")
    if "csim_images_per_s" in summary:
        print(f"  {'C-sim speed':<26} {summary['csim_images_per_s']:.1f} images/s")
    for name, sec in T.times.items():
        print(f"  time {name:<21} {sec:7.2f} s")
    rc = 0
    if "bit_exact" in summary:
        ok = summary["bit_exact"] == summary["images"]
        print(f"bit-exact: {summary['bit_exact']}/{summary['images']}" + ("" if ok else "  MISMATCH"))
        rc = 0 if ok else 1
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))
    return rc


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        return run(a)
    except (ValueError, RuntimeError) as e:  # the kit's bad-input errors (ValueError, DatasetError)
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
