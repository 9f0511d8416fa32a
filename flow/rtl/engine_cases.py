"""Whole-model Programs for the RTL engine tests and `make cosim`: image, engine, inputs, golden outputs.

    case = engine_case("lenet-digits", "mvq")     # built on first use, then read from the kit cache
    case.image, case.engine                       # placed Program image (bytes), its EngineConfig
    case.inputs, case.golden                      # engine bytes [B, input_bytes] / [B, output_bytes] uint8
    case.non_resident                             # ops whose weights the load call leaves off chip

Cases (CASES): lenet-digits on the digits test set (all 360 images) compressed with mvq, vq, pq and vecq
(the trained zoo checkpoint, fine-tuned, as ``python -m flow.build`` makes it), and resnet20 on
Fashion-MNIST (its first 20 test images) with mvq and vq. resnet20 has no trained checkpoint in the
cache and training it on the CPUs here takes far too long, so its cases start from the UNTRAINED zoo
model (torch seed 0), as bench/engine.py does, with everything else the real flow: compression, BatchNorm
statistics re-estimated on Fashion-MNIST training images, fine-tuning off (``--finetune-epochs 0``),
quantization calibrated on Fashion-MNIST, engine sizing and lowering (``case.source`` says which).
Every case is ``python -m flow.build --stage lower`` (flow/build/stages.py): stage_lower sizes the
engine for the model (flow.boards.sizing.size_engine: the PQ case gets a build with the lookup unit),
lowers and places the Program. The golden outputs are flow.compile.program_exec.run_program's on the
placed Program (the engine's reference), not the quantized graph's.

Cache: ``engine_io.cache.cache_dir("rtl", "engine-cases") / <model>-<method>-<key>/`` (program.bin,
engine.json, inputs.npy, golden.npy, meta.json), the key a digest of the build's arguments and of the
sources that make it (flow/ outside flow/rtl, and models/; lowering renders no template, so
hls_templates/ is not part of it), as flow/rtl/default_program.py does; a build is written into a
temporary sibling folder and renamed into place.

    python -m flow.rtl.engine_cases        # build every case, print the residency table
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine_io.cache import cache_dir
from flow.boards.sizing import config_for_board
from flow.compile.engine import EngineConfig
from flow.compile.program import CONV, PQ, Program
from flow.compile.program_exec import run_program
from flow.compile.untrained import untrained_program
from flow.compile.validate import prepare
from flow.hls import vectors
from flow.rtl.onchip import resident

# (model, method): (dataset, test images (None: all), source)
TRAINED = "trained zoo checkpoint (models.train cache), fine-tuned as flow.build does"
UNTRAINED = ("UNTRAINED zoo model (torch seed 0, as bench/engine.py), BatchNorm statistics and quantization "
             "calibrated on Fashion-MNIST training images, no fine-tuning")
SYNTHETIC = ("UNTRAINED zoo model with RANDOM calibration and inputs (flow.compile.untrained; no CIFAR-10 on this "
             "machine): for the engine's cycles and bit-exactness only, its accuracy means nothing")
CASES: dict[tuple[str, str], tuple[str, int | None, str]] = {
    ("lenet-digits", "mvq"): ("digits", None, TRAINED),
    ("lenet-digits", "vq"): ("digits", None, TRAINED),
    ("lenet-digits", "pq"): ("digits", None, TRAINED),
    ("lenet-digits", "vecq"): ("digits", None, TRAINED),
    ("resnet20", "mvq"): ("fashion-mnist", 20, UNTRAINED),
    ("resnet20", "vq"): ("fashion-mnist", 20, UNTRAINED),
    ("resnet8", "mvq"): ("random", 8, SYNTHETIC),
    ("resnet8", "vq"): ("random", 8, SYNTHETIC),
}
STAGE = "lower"
FILES = ("program.bin", "engine.json", "inputs.npy", "golden.npy", "meta.json")

_KIT_ROOT = Path(__file__).resolve().parents[2]
_RTL_DIR = Path(__file__).resolve().parent


@dataclass
class EngineCase:
    """One whole-model case: the placed Program image for ``engine``, its inputs and golden outputs."""
    model: str
    method: str
    data: str
    source: str                 # TRAINED or UNTRAINED (above)
    image: bytes                # Program.to_bytes() of the placed program
    engine: EngineConfig
    inputs: np.ndarray          # [B, input_bytes] uint8: the engine's input stream bytes per image
    golden: np.ndarray          # [B, output_bytes] uint8: run_program's outputs as stream bytes
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.model}-{self.method}"

    @property
    def program(self) -> Program:
        return Program.from_bytes(self.image)

    @property
    def non_resident(self) -> list[int]:
        """Ops whose weights the load call does not put on chip (flow.rtl.onchip.resident)."""
        return resident(self.image, self.engine)

    def golden_outputs(self) -> np.ndarray:
        """The golden outputs as codes [B, OH, OW, OC] (int8 or uint8)."""
        return vectors.bytes_to_outputs(self.program, self.golden, len(self.golden))


def _sources() -> list[Path]:
    """flow/ (without flow/rtl, which only consumes the build) and models/."""
    files = [p for p in (_KIT_ROOT / "flow").rglob("*.py") if _RTL_DIR not in p.parents]
    files += (_KIT_ROOT / "models").rglob("*.py")
    return sorted(files)


def build_key(model: str, method: str) -> str:
    """Digest of the case's arguments and of every source file (path and bytes)."""
    data, limit, source = CASES[(model, method)]
    h = hashlib.sha256(f"{model}\0{method}\0{STAGE}\0{data}\0{limit}\0{source}\0".encode())
    for p in _sources():
        h.update(str(p.relative_to(_KIT_ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _untrained_checkpoint(model: str, data: str, path: Path) -> None:
    """The zoo model's initial weights (torch seed 0), shaped for ``data``, as a state_dict at ``path``."""
    import torch   # deferred: torch, only to write the untrained checkpoint (importing this module needs none)

    from models import train as trainer   # deferred: imports torch

    torch.manual_seed(0)
    torch.save(trainer.build(model, data).state_dict(), path)


def _flow_build(model: str, method: str, out: Path) -> None:
    """``python -m flow.build ... --stage lower`` into ``out`` (cwd: out's parent)."""
    data, limit, source = CASES[(model, method)]
    args = [sys.executable, "-m", "flow.build", "--model", model, "--method", method, "--data", data,
            "--stage", STAGE, "--out", str(out)]
    if limit:
        args += ["--limit", str(limit)]
    if source == UNTRAINED:
        out.mkdir(parents=True, exist_ok=True)
        ckpt = out.parent / "untrained.pt"
        _untrained_checkpoint(model, data, ckpt)
        args += ["--checkpoint", str(ckpt), "--finetune-epochs", "0"]
    r = subprocess.run(args, capture_output=True, text=True, cwd=out.parent)
    if r.returncode != 0:
        raise RuntimeError(f"building {model} {method} failed ({' '.join(args[1:])}):\n{r.stderr[-3000:]}")


def _finish(model: str, method: str, build: Path, out: Path) -> None:
    """From a flow.build folder: the case files into ``out`` (golden by run_program on the placed Program)."""
    data, limit, source = CASES[(model, method)]
    info = json.loads((build / "program.json").read_text())
    engine = EngineConfig(**info["engine"])
    program = prepare(Program.from_bytes((build / "program.bin").read_bytes()), engine)
    image = program.to_bytes()
    gold = np.load(build / "golden.npz")
    x = gold["inputs"]
    inputs = vectors.check_inputs(program, x)
    outputs = run_program(program, x)
    golden = vectors.outputs_to_bytes(program, outputs)
    qgraph_out = gold["outputs"]
    agree = bool(np.array_equal(np.asarray(outputs).reshape(len(x), -1).astype(np.int64),
                                np.asarray(qgraph_out).reshape(len(x), -1).astype(np.int64)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "program.bin").write_bytes(image)
    (out / "engine.json").write_text(json.dumps(engine.to_dict(), indent=1, sort_keys=True) + "\n")
    np.save(out / "inputs.npy", np.ascontiguousarray(inputs, np.uint8))
    np.save(out / "golden.npy", np.ascontiguousarray(golden, np.uint8))
    meta = dict(model=model, method=method, data=data, images=int(len(x)), source=source,
                engine_hash=engine.hash(), ops=[op["name"] for op in info["ops"]],   # (the image holds no names)
                resident=[int(op.resident) for op in program.ops],
                program_equals_quantized_graph=agree)
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def _synthetic(model: str, method: str, out: Path) -> None:
    """An untrained model's placed Program for the PYNQ-Z2 build, random input images (seeded) and their
    golden outputs (run_program): ResNet-8's case, whose dataset this machine does not have."""
    data, limit, source = CASES[(model, method)]
    engine = config_for_board("pynq-z2")
    program = prepare(untrained_program(model, method, engine), engine)
    first = program.ops[0]
    lo, hi = (0, 255) if first.in_unsigned else (-128, 127)
    x = np.random.default_rng(0).integers(lo, hi + 1, (limit, first.H, first.W, first.C))
    x = x.astype(np.uint8 if first.in_unsigned else np.int8)
    out.mkdir(parents=True, exist_ok=True)
    (out / "program.bin").write_bytes(program.to_bytes())
    (out / "engine.json").write_text(json.dumps(engine.to_dict(), indent=1, sort_keys=True) + "\n")
    np.save(out / "inputs.npy", np.ascontiguousarray(vectors.check_inputs(program, x), np.uint8))
    np.save(out / "golden.npy", np.ascontiguousarray(vectors.outputs_to_bytes(program, run_program(program, x)), np.uint8))
    meta = dict(model=model, method=method, data=data, images=int(limit), source=source, engine_hash=engine.hash(),
                ops=[op.name for op in program.ops], resident=[int(op.resident) for op in program.ops])
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def case_dir(model: str, method: str, build: bool = True) -> Path | None:
    """The cached folder of a case; built first when missing (``build``), else None."""
    if (model, method) not in CASES:
        raise KeyError(f"engine_cases: no case {model} {method} (known: {sorted(CASES)})")
    parent = cache_dir("rtl", "engine-cases")
    out = parent / f"{model}-{method}-{build_key(model, method)}"
    if all((out / f).is_file() for f in FILES):
        return out
    if not build:
        return None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=parent))
    try:
        if CASES[(model, method)][2] == SYNTHETIC:
            _synthetic(model, method, tmp / "case")
        else:
            _flow_build(model, method, tmp / "build")
            _finish(model, method, tmp / "build", tmp / "case")
        if out.is_dir():   # a damaged earlier build
            shutil.rmtree(out, ignore_errors=True)
        try:
            (tmp / "case").rename(out)
        except OSError:    # another session renamed its build into place first: same inputs, same build
            if not all((out / f).is_file() for f in FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def engine_case(model: str, method: str, build: bool = True) -> EngineCase | None:
    """The case (built and cached on first use; None when missing and not ``build``)."""
    d = case_dir(model, method, build)
    if d is None:
        return None
    meta = json.loads((d / "meta.json").read_text())
    return EngineCase(model=model, method=method, data=meta["data"], source=meta["source"],
                      image=(d / "program.bin").read_bytes(),
                      engine=EngineConfig(**json.loads((d / "engine.json").read_text())),
                      inputs=np.load(d / "inputs.npy"), golden=np.load(d / "golden.npy"), meta=meta)


def residency_table(cases: list[EngineCase]) -> str:
    """One line per case: engine, ops, which ops' weights are not resident after the load."""
    rows = ["case | images | engine (hash: differs from EngineConfig()) | ops (conv/pq) | all resident | "
            "non-resident ops"]
    base = EngineConfig().to_dict()
    for c in cases:
        prog = c.program
        grown = {k: v for k, v in c.engine.to_dict().items() if base.get(k) != v}
        nr = c.non_resident
        names = c.meta.get("ops") or [""] * len(prog.ops)
        mac = sum(op.opcode in (CONV, PQ) for op in prog.ops)
        rows.append(f"{c.name} | {len(c.inputs)} | {c.engine.hash()}: "
                    f"{', '.join(f'{k}={v}' for k, v in sorted(grown.items())) or 'EngineConfig()'} | "
                    f"{len(prog.ops)} ({mac}) | {'yes' if not nr else 'no'} | "
                    f"{', '.join(f'{i} {names[i]}' for i in nr) or '-'}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flow.rtl.engine_cases", description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", help="model-method (default: all), e.g. lenet-digits-mvq")
    a = ap.parse_args(argv)
    keys = [k for k in CASES if not a.cases or f"{k[0]}-{k[1]}" in a.cases]
    cases = []
    for model, method in keys:
        c = engine_case(model, method)
        print(f"{c.name}: {case_dir(model, method)}", flush=True)
        cases.append(c)
    print(residency_table(cases))
    return 0


__all__ = ["CASES", "EngineCase", "build_key", "case_dir", "engine_case", "residency_table"]

if __name__ == "__main__":
    sys.exit(main())
