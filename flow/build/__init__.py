"""The whole pipeline, stage by stage: ``python -m flow.build --board pynq-z2``.

    python -m flow.build --board pynq-z2 [--model NAME | --model-file path.py:factory --checkpoint FILE]
                         [--data NAME|path.npz] [--method mvq|vq|pq|vecq | --recipe recipe.toml] [--out build/NAME]
                         [--stage STAGE]

Stages (flow/build/stages.py, each a function writing into the build directory):
train -> compress -> finetune -> quantize -> lower -> fit -> hls -> csim -> vitis ->
vivado -> bundle -> report. Vendor stages run where `vitis_hls` / `vivado` are on
PATH, else print `skipped: <tool> not found` and the command. ``--engine rtl``: the
vitis stage packages the RTL engine as the IP with Vivado instead (flow/build/rtl_ip.py). Exit status: 0 done,
1 C-simulation differs from golden, 2 bad input or a failed stage (one line, no
traceback, no half-written bundle; VQHLS_TRACEBACK=1 re-raises for debugging).
Bad input is found before any training where it can be (flow/build/preflight.py).
One build at a time per build directory (a flock on ``<out>/.lock``); every stage reruns
on every build, and a rerun with other options clears the earlier build's outputs
(``<out>/build.json`` records them).
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads: spinning OpenMP threads stall a busy machine

from flow.boards import get_board   # noqa: E402
from flow.build.options import STAGES, BuildOptions, OptionsError, parse   # noqa: E402
from flow.build.options import one_line as _one_line   # noqa: E402
from flow.build.preflight import preflight as _preflight   # noqa: E402  (flow.build.preflight stays the module)
from flow.build.stages import Build, BuildError, clean_partial, display_path, run_stages   # noqa: E402

__all__ = ["main", "run", "Build", "BuildOptions", "BuildError", "OptionsError", "STAGES"]


def run(opts: BuildOptions) -> Build:
    """Run the build described by ``opts`` up to ``opts.stage``; returns the Build (summary, paths)."""
    get_board(opts.board)   # an unknown board fails before any work
    t0 = time.perf_counter()
    print("[preflight] ...", file=sys.stderr, flush=True)
    _preflight(opts)        # flags, compression plan, engine and board limits, toolchain: before any training
    b = Build(opts=opts, out=opts.out_dir.resolve())
    b.times["preflight"] = time.perf_counter() - t0
    print(f"[preflight] done in {b.times['preflight']:.2f} s", file=sys.stderr, flush=True)
    with out_lock(b.out):   # a second build on the same --out is refused while this one runs
        start_record(b.out, opts)   # a rerun with other settings clears the earlier build's outputs first
        try:
            return run_stages(b, opts.stage)
        finally:
            clean_partial(b)


# what a build writes into --out (stages.py); only these are ever cleared, never anything else there
OUTPUTS = ("model.pt", "compression.json", "compressed.pt", "golden.npz", "program.bin", "program.json",
           "resources.json", "hls", "csim.json", "vitis", "vitis.log", "rtl", "vivado-ip.log", "vivado", "vivado.log",
           "deploy", "report.md", "report.html", "plots")
RECORD = "build.json"
# options that do not change what the stages write (where to, how far, the summary file)
_NOT_RECORDED = ("out", "stage", "json", "retrain")


@contextmanager
def out_lock(out: Path):
    """An exclusive lock on ``<out>/.lock`` for the build's lifetime (released on exit, also when killed:
    the kernel drops a dead process's flock). A second build on the same folder gets OptionsError."""
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        raise OptionsError(f"--out {out}: another build is running in this directory"
                           + (f" (pid {holder})" if holder else "") + ": wait for it or give another --out") from None
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def recorded_options(opts: BuildOptions) -> dict:
    """The options that decide the build's outputs, as recorded in ``<out>/build.json``."""
    return {k: v for k, v in dataclasses.asdict(opts).items() if k not in _NOT_RECORDED}


def start_record(out: Path, opts: BuildOptions) -> None:
    """Compare the options with the previous build's record in ``out``; when they differ, clear that build's
    outputs (OUTPUTS only), then record these options. A folder holding such names without a record is refused
    (OptionsError): they may be the user's own files.

    Every stage reruns on every build (nothing is reused), so a rerun with the same options rewrites the same
    files; one with other options starts from a folder without the old bundle, report or vendor files."""
    new = recorded_options(opts)
    rec = out / RECORD
    old = None
    if rec.is_file():
        try:
            old = json.loads(rec.read_text()).get("options")
        except (ValueError, AttributeError):
            old = None
    present = [n for n in OUTPUTS if (out / n).exists()]
    if present and not isinstance(old, dict):
        # no record: these may be the user's own files (a model.pt, an hls/ folder), never delete them
        raise OptionsError(f"--out {display_path(str(out))} holds {', '.join(present)} but no {RECORD} of the "
                           "build that wrote them: give an empty or new --out, or remove those files")
    if present and old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        print(f"note: --out {display_path(str(out))} holds a build with other settings ({', '.join(changed)}): "
              f"clearing its outputs ({', '.join(present)})", file=sys.stderr)
        for n in present:
            p = out / n
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    tmp = rec.with_name(rec.name + ".tmp")
    tmp.write_text(json.dumps({"options": new}, indent=2, default=str) + "\n")
    tmp.replace(rec)


def _print_summary(b: Build) -> int:
    s = b.summary
    print()
    print(f"model {s.get('model')} on {s.get('data')}, method {s.get('method')}, board {b.opts.board}")
    for key, label in [("float_acc", "float accuracy"), ("compressed_acc", "compressed accuracy"),
                       ("finetuned_acc", "after fine-tuning"), ("golden_acc", "golden integer accuracy"),
                       ("csim_acc", "C-sim accuracy")]:
        if key in s:
            print(f"  {label:<26} {100 * s[key]:6.2f}%")
    if "ratio" in s:
        print(f"  {'compression ratio':<26} {s['ratio']:6.2f}x (every stored bit vs float32)")
    if "stored_ratio" in s:
        print(f"  {'ratio the engine stores':<26} {s['stored_ratio']:6.2f}x: stored dense int8 (a codebook layer "
              f"after a flatten): {', '.join(s['dense_fallback'])}")
    if "program_bytes" in s:
        # the Program image is word-aligned for the engine (uint16 indices and masks), so it is
        # larger than the format's bit count above
        print(f"  {'program image':<26} {s['program_bytes']:,} bytes "
              f"({s['float_bytes'] / s['program_bytes']:.2f}x smaller than float32 parameters)")
    if "modelled_cycles_per_image" in s and "resources" in s:
        r = s["resources"]
        print(f"  {'engine (modelled)':<26} {s['modelled_cycles_per_image']:,} cycles/image = "
              f"{s['modelled_images_per_s']:,.0f} images/s at the board clock; "
              f"{r['bram36']:.0f} BRAM36, {r['dsp']} DSP, {r['lut']:,} LUT")
    if "csim_cycles_per_image" in s:
        print(f"  {'C-sim CYCLES register':<26} {s['csim_cycles_per_image']:,} per image "
              f"(the same model, counted by the engine)")
    if "csim_images_per_s" in s:
        print(f"  {'C-sim speed':<26} {s['csim_images_per_s']:.1f} images/s")
    for name, sec in b.times.items():
        print(f"  time {name:<21} {sec:7.2f} s")
    for tool, res in b.vendor.items():
        print(f"  {tool:<26} {res.message.splitlines()[0]}")
    if "bundle" in s:
        print(f"deploy bundle: {s['bundle']}")
    if "report" in s:
        print(f"build report:  {s['report']}")
    rc = 0
    if "bit_exact" in s:
        ok = s["bit_exact"] == s["images"]
        print(f"bit-exact: {s['bit_exact']}/{s['images']}" + ("" if ok else "  MISMATCH"))
        rc = 0 if ok else 1
    if b.opts.json:
        Path(b.opts.json).write_text(json.dumps({**s, "stage_seconds": b.times}, indent=2, default=str))
    return rc


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse(argv)
        b = run(opts)
        return _print_summary(b)
    except KeyboardInterrupt:
        print("error: interrupted: no half-written bundle; a rerun redoes every stage (finished stages are not "
              "reused)", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as e:   # the kit's bad-input and stage errors: one line
        if os.environ.get("VQHLS_TRACEBACK"):
            raise
        # one line, keeping every part (a resource error lists each over-used resource)
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:   # a bug, not bad input: still one line and never exit 1 (that means "outputs differ")
        if os.environ.get("VQHLS_TRACEBACK"):
            raise
        print(f"error: internal error, please report it: {type(e).__name__}: {_one_line(e)} "
              "(VQHLS_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 2
