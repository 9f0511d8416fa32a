"""Run a deploy bundle: ``python -m host.run BUNDLE [--backend sim|pynq|rtl] [--data NAME|set.npz [--limit N] [--clip]]
[--batch N] [--timeout S]``.

1. opens the bundle (every checksum verified), makes the backend, makes the load call;
2. runs the bundle's own test vectors and compares the outputs with its expected ones bit for bit;
3. with ``--data``, the dataset's test split (models.data, the loader the build used; it needs only
   numpy): accuracy, bit-exactness against the bundle vectors on the images they hold, throughput
   (measured images/s, the engine's MODELLED cycles from the CYCLES register and, on the board, its
   MEASURED cycles from the REAL_CYCLES register: a free-running counter; C-simulation has none and
   says "real cycles: not available (C-simulation)"; ``--backend rtl`` runs the bundle's Verilog under
   Verilator and prints REAL_CYCLES measured in RTL simulation).

Exit 0 when every comparison is bit-exact, 1 when one differs, 2 on an error (one line ``error: ...``).
Imports neither torch nor the flow (only engine_io, and models.data): this runs on the board.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

import numpy as np

from host.accelerator import DEFAULT_TIMEOUT, Accelerator, AcceleratorError, images_per_s
from host.sim import SimError
from models import data as datasets


class DataError(RuntimeError):
    """A ``--data`` run this bundle cannot make (bad --limit / --batch, images of another shape)."""


# --------------------------------------------------------------------------- the run

def _fmt_rate(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def real_cycles_text(real: Optional[int], n: int, fclk_mhz: Optional[float], backend: str) -> str:
    """The REAL_CYCLES report of a call of ``n`` images: measured cycles per image and images/s at the
    build's clock, or why there is no measurement (C-simulation has no real counter)."""
    if real is None:
        why = "C-simulation" if backend == "sim" else "the engine's REAL_CYCLES register reads all ones"
        return f"real cycles: not available ({why})"
    where = {"pynq": "on the board", "rtl": "in RTL simulation (Verilator)"}.get(
        backend, f"by the {backend} backend's engine")
    per = real / n if n else float(real)
    rate = images_per_s(n, real, fclk_mhz)
    clock = (f" = {_fmt_rate(rate)} images/s at {fclk_mhz:g} MHz" if rate is not None
             else " (clock unknown: no images/s)")
    return f"{per:,.0f} cycles/image measured {where} (REAL_CYCLES register, the engine's counter){clock}"


def modelled_text(tp: dict, manifest: dict, fclk: Optional[float]) -> str:
    """The modelled cycles of a throughput test: the CYCLES register's, or, where it reads all ones (the RTL
    engine computes no model), the build's cycle model (flow.boards.cycle_model) from the bundle manifest."""
    at = f" at {fclk:g} MHz" if fclk else ""
    per = tp["modelled_cycles_per_image"]
    if per is not None:
        return f"{per:,.0f} cycles/image (CYCLES register) = {_fmt_rate(tp['modelled_throughput[images/s]'])} images/s{at}"
    extra = manifest.get("extra") if isinstance(manifest.get("extra"), dict) else {}
    per = extra.get("modelled_cycles_per_image")
    if not isinstance(per, (int, float)) or isinstance(per, bool) or not per > 0:
        return "not available (CYCLES reads all ones: the RTL engine has no cycle model; the bundle records none)"
    rate = images_per_s(1, per, fclk)
    return (f"{per:,.0f} cycles/image (the build's cycle model, flow.boards.cycle_model, from the bundle manifest: "
            f"the RTL engine's CYCLES reads all ones) = {_fmt_rate(rate)} images/s{at}")


def _speed_where(backend: str) -> str:
    """Whose speed the wall-clock throughput line measures."""
    return {"sim": "C-simulation speed on this CPU, not the board",
            "rtl": "RTL simulation speed on this CPU, not the board"}.get(backend, "on the board")


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm   # deferred: tqdm, only for a progress bar (optional: none without it)
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=not sys.stderr.isatty())


def run(args) -> int:
    backend_kw = {}
    if args.backend in ("sim", "rtl") and args.cache_dir:
        backend_kw["cache_dir"] = args.cache_dir
    acc = Accelerator.open(args.bundle, backend=args.backend, timeout=args.timeout, batch_size=args.batch,
                           **backend_kw)
    rc = 0
    with acc:
        b = acc.bundle
        print(f"bundle     {b.path}: {b.model} ({b.manifest.get('method')}), data {b.manifest.get('data')}, "
              f"engine {b.config_hash}")
        print(f"           in {list(acc.in_shape)} {acc.in_dtype.name} (scale {acc.in_scale:.6g}), "
              f"out {list(acc.out_shape)} {acc.out_dtype.name} (scale {acc.out_scale:.6g})")
        print(f"backend    {acc.backend.describe()}")
        acc.load()
        print(f"load       ok: {len(b.program_image()):,}-byte program on chip, CONFIG_HASH 0x{acc.config_hash:08x}, "
              + (f"{acc.load_cycles:,} modelled cycles (CYCLES), " if acc.load_cycles is not None
                 else "modelled cycles: not available (CYCLES reads all ones: the RTL engine has no cycle model), ")
              + (f"{acc.load_real_cycles:,} measured cycles (REAL_CYCLES)" if acc.load_real_cycles is not None
                 else real_cycles_text(None, 0, None, acc.backend.name)))

        vec = b.vectors()
        if vec is None:
            print("vectors    none in this bundle")
        else:
            vin, vexp = vec
            vin = vin.reshape(-1, *acc.in_shape)
            got = acc.infer(vin).reshape(vexp.shape)
            same = int(np.all(got.reshape(len(vin), -1) == vexp.reshape(len(vin), -1), axis=1).sum())
            ok = same == len(vin)
            print(f"vectors    {same}/{len(vin)} bit-exact with the bundle's expected outputs"
                  + ("" if ok else "  MISMATCH"))
            if not ok:
                rc = 1

        if args.data:
            rc = max(rc, _run_dataset(acc, args))

        tp = acc.throughput_test(batch=args.batch or min(acc.batch_size, 256))
        fclk = tp["fclk[mhz]"]
        print(f"throughput {_fmt_rate(tp['throughput[images/s]'])} images/s measured "
              f"({_speed_where(acc.backend.name)}; "
              f"batch {tp['batch_size']}, {tp['runtime[ms]']:.2f} ms, DMA in {tp['DRAM_in_bandwidth[MB/s]']:.2f} MB/s, "
              f"out {tp['DRAM_out_bandwidth[MB/s]']:.2f} MB/s)")
        print(f"modelled   {modelled_text(tp, b.manifest, fclk)}")
        print(f"measured   {real_cycles_text(tp['measured_cycles'], tp['batch_size'], fclk, acc.backend.name)}")
    return rc


def _run_dataset(acc: Accelerator, args) -> int:
    b = acc.bundle
    x, y = datasets.load(args.data, "test")
    if args.limit is not None:
        x, y = x[: args.limit], y[: args.limit]
    if tuple(x.shape[1:]) != acc.ishape_float()[1:]:
        raise DataError(f"--data {args.data} images are {list(x.shape[1:])}, the bundle's model reads "
                        f"{list(acc.ishape_float()[1:])} (it was built for --data {b.manifest.get('data')})")
    if len(x) == 0:
        print(f"data       {args.data}: no images (--limit {args.limit})")
        return 0
    bs = acc.batch_size
    bar = _progress(len(x), args.data)
    outs = []
    t0 = time.perf_counter()
    for out in acc.stream((x[i: i + bs] for i in range(0, len(x), bs)), clip=args.clip):
        outs.append(out)
        if bar is not None:
            bar.update(len(out))
    dt = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    logits = np.concatenate(outs)
    pred = logits.reshape(len(x), -1).argmax(axis=1)
    acc_pct = 100.0 * float((pred == y).mean())
    golden = b.manifest.get("golden_acc")
    same_data = b.manifest.get("data") == args.data
    gtxt = ""
    if golden is not None and same_data:
        gtxt = f" (the build's golden model: {100 * golden:.2f} % on its test images)"
    print(f"data       {args.data} test split: {len(x)} images, accuracy {acc_pct:.2f} %{gtxt}, "
          f"{len(x) / dt:,.0f} images/s end to end (quantize + DMA + engine)")
    rc = 0
    vec = b.vectors()
    if vec is not None and same_data:
        vin, vexp = vec
        k = min(len(vin), len(x))
        q = acc.quantize(x[:k], clip=args.clip)
        if k and np.array_equal(q, vin[:k].reshape(q.shape)):
            same = int(np.all(logits[:k].reshape(k, -1) == vexp[:k].reshape(k, -1), axis=1).sum())
            print(f"           the first {k} images are the bundle's vectors: {same}/{k} outputs bit-exact"
                  + ("" if same == k else "  MISMATCH"))
            if same != k:
                rc = 1
        elif k:
            print("           this split's first images differ from the bundle's vectors: bit-exactness checked "
                  "on the bundle vectors only")
    return rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m host.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="deploy bundle directory (build/<name>/deploy)")
    p.add_argument("--backend", default="pynq", help="pynq (the board, default), sim (C-simulation with g++) or rtl "
                                                     "(the bundle's Verilog engine under Verilator: measured cycles)")
    p.add_argument("--data", help=f"also run this data set's test split: {', '.join(datasets.DATASETS)}, or the "
                                   ".npz the bundle was built with (x_test, y_test)")
    p.add_argument("--limit", type=int, help="with --data: the first N test images only")
    p.add_argument("--batch", type=int, help="images per engine call (default 256)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds an engine call may take, > 0 (default {DEFAULT_TIMEOUT:g}; +10 ms per image)")
    p.add_argument("--clip", action="store_true",
                   help="with --data: saturate float images outside the bundle's input range (as the build's "
                        "golden model does) instead of refusing them")
    p.add_argument("--cache-dir", help="sim and rtl backends: where compiled engines are cached "
                                       "(default $VQHLS_CACHE or <repo>/.cache/vqhls)")
    return p


def check_args(args) -> None:
    """Flags that would be ignored or cannot work: DataError (one line naming the flag and the fix)."""
    if not (args.timeout > 0) or args.timeout == float("inf"):   # not (> 0): NaN too
        raise DataError(f"--timeout must be a number of seconds > 0, got {args.timeout:g}")
    if args.limit is not None and not args.data:
        raise DataError(f"--limit {args.limit} needs --data (it limits the data set's test images; "
                        "the bundle's vectors always all run)")
    if args.data and not str(args.data).endswith(".npz") and args.data not in datasets.DATASETS:
        raise DataError(f"--data {args.data!r}: choose one of {', '.join(datasets.DATASETS)} or give a .npz file")
    if args.clip and not args.data:
        raise DataError("--clip needs --data (it applies to the data set's float images)")
    if args.limit is not None and args.limit < 0:
        raise DataError(f"--limit must be >= 0, got {args.limit}")
    if args.batch is not None and args.batch < 1:
        raise DataError(f"--batch must be >= 1, got {args.batch}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        return run(args)
    except (AcceleratorError, SimError, DataError, datasets.DatasetError, ValueError, OSError) as e:   # BundleError: a ValueError
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
