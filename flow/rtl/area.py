"""yosys area of the RTL cores: ``synth_xilinx`` cell counts (LUT, FF, CARRY4, DSP48, RAMB18/36).

    from flow.rtl.area import synth_area
    a = synth_area(write_rtl("pe_array", engine, out_dir), "vqhls_pe_array")
    a["lut"], a["ff"], a["carry4"], a["dsp"], a["bram18"], a["bram36"], a["cells"]

The script run is::

    read_verilog [-sv] SRC...; synth_xilinx -family xc7 -top TOP -flatten -noiopad -noclkbuf [-nodsp];
    tee -q -o stat.json stat -json

``-noiopad -noclkbuf``: the cores are synthesized out of context (they sit inside the engine, not on
the package pins), so no IBUF/OBUF/BUFG cells are inserted. ``-nodsp`` maps every multiplier to LUTs
and CARRY4s instead of DSP48E1s (yosys' ``mul2dsp`` + ``xilinx_dsp`` otherwise absorb the multiplier,
its input/output registers and a post-adder into one DSP48E1).

What the counts mean: these are yosys' technology-mapped cells before place and route (ABC LUT
mapping), not Vivado's. yosys maps a LUT-only multiplier with noticeably more LUTs than Vivado does
(an 8 x 9 signed product is ~180 LUT6 + MUXF7/F8 in yosys 0.23, ~70 LUT in Vivado), and Vivado packs
LUT pairs into one LUT6_2 slice site; so compare configurations with each other, not absolute counts
with a Vivado utilisation report.

Results are cached by the sha1 of the yosys version, the script's flags, the top and every source's
text, as JSON under ``.cache/yosys-area/`` in the repository (``VQHLS_AREA_CACHE`` overrides), because
a big array takes minutes of yosys.

Two options for whole designs (flow/rtl/engine_area.py): ``flatten=False`` keeps the hierarchy (each
module synthesized alone, no optimisation across its ports) and adds ``modules`` (each module's own
cells, submodule instances as cell types) and ``hierarchy`` (each module with everything under it,
summed over its instances); ``netlist=True`` then runs ``flatten; write_json`` on the mapped netlist and
keeps it, gzipped, beside the cache entry (``res["netlist"]``: its path) for analyses such as the logic
depth. Either option is part of the cache key.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TIMEOUT = 900.0
INSTALL_HINT = "apt-get install yosys"

# cell type -> summary key (exact names first; prefixes below)
LUT_CELLS = ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6")
FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE", "FDRE_1", "FDSE_1", "FDCE_1", "FDPE_1")
LATCH_CELLS = ("LDCE", "LDPE")
LUTRAM_PREFIXES = ("RAM16", "RAM32", "RAM64", "RAM128", "RAM256")
# LUT6 sites a distributed-RAM cell occupies (a SLICEM LUT6 holds 64 x 1 bit per read port)
LUTRAM_SITES = {"RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
                "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8,
                "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8}
SRL_CELLS = ("SRL16E", "SRLC16E", "SRLC32E")


class AreaError(RuntimeError):
    """yosys is missing, failed, timed out, or its stat output could not be read."""


def find_yosys() -> str:
    """Path of ``yosys``; AreaError naming the install when it is missing."""
    path = shutil.which("yosys")
    if path is None:
        raise AreaError(f"yosys not found on PATH: install it ({INSTALL_HINT})")
    return path


def yosys_version(exe: str | None = None) -> str:
    exe = exe or find_yosys()
    try:
        out = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AreaError(f"yosys -V failed: {e}") from e
    return out.stdout.strip()


def _sources(verilog) -> list[tuple[str, str]]:
    """(file name, text) of each source. A Path is a file; a str is Verilog text when it holds a
    newline or the word ``module``, otherwise a file name; a list mixes both."""
    items = list(verilog) if isinstance(verilog, (list, tuple)) else [verilog]
    if not items:
        raise AreaError("synth_area: no Verilog sources given")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Path) or (isinstance(item, str) and "\n" not in item and "module" not in item):
            p = Path(item)
            if not p.is_file():
                raise AreaError(f"synth_area: Verilog source {p} does not exist")
            out.append((p.name, p.read_text()))
        elif isinstance(item, str):
            out.append((f"src{i}.v", item))
        else:
            raise AreaError(f"synth_area: a source must be a path or Verilog text, got {type(item).__name__}")
    # distinct names in the work directory
    seen: dict[str, int] = {}
    uniq = []
    for name, text in out:
        k = seen.get(name, 0)
        seen[name] = k + 1
        uniq.append((name if k == 0 else f"{k}_{name}", text))
    return uniq


def script_flags(top: str, *, nodsp: bool, family: str, flatten: bool = True) -> list[str]:
    """The synth_xilinx arguments (without the sources)."""
    flags = ["-family", family, "-top", top, *(["-flatten"] if flatten else []), "-noiopad", "-noclkbuf"]
    if nodsp:
        flags.append("-nodsp")
    return flags


def parse_stat(stat: dict, top: str | None = None) -> dict:
    """Summary of ``stat -json``: cells by type of the whole design (the "design" totals when the
    hierarchy was kept; the top module otherwise) folded into lut / ff / carry4 / dsp / bram18 /
    bram36 / muxf7 / muxf8 / lutram / lutram_luts / srl / latch, with ``cells`` the raw counts.

    ``lut`` counts logic LUTs (LUT1..LUT6) only; ``lutram`` counts distributed-RAM cells and
    ``lutram_luts`` the LUT6 sites they occupy (RAM32M / RAM64M: 4, RAM64X1D: 2, ...); ``srl`` the
    shift-register cells (one LUT each). A slice total is lut + lutram_luts + srl."""
    block = stat.get("design")
    if not block or "num_cells_by_type" not in block:
        mods = stat.get("modules", {})
        key = next((k for k in mods if top is not None and k.lstrip("\\") == top), None)
        if key is None:
            if len(mods) != 1:
                raise AreaError(f"stat -json: no 'design' totals and no single top module ({sorted(mods)})")
            key = next(iter(mods))
        block = mods[key]
    cells = {str(k): int(v) for k, v in block.get("num_cells_by_type", {}).items()}

    def total(pred) -> int:
        return sum(v for k, v in cells.items() if pred(k))

    return {
        "lut": total(lambda k: k in LUT_CELLS),
        "ff": total(lambda k: k in FF_CELLS),
        "carry4": total(lambda k: k in ("CARRY4", "CARRY8")),
        "dsp": total(lambda k: k.startswith("DSP48")),
        "bram18": total(lambda k: k.startswith("RAMB18")),
        "bram36": total(lambda k: k.startswith("RAMB36")),
        "muxf7": cells.get("MUXF7", 0),
        "muxf8": cells.get("MUXF8", 0),
        "lutram": total(lambda k: k.startswith(LUTRAM_PREFIXES)),
        "lutram_luts": sum(v * LUTRAM_SITES.get(k, 4) for k, v in cells.items() if k.startswith(LUTRAM_PREFIXES)),
        "srl": total(lambda k: k in SRL_CELLS),
        "latch": total(lambda k: k in LATCH_CELLS),
        "cells": dict(sorted(cells.items())),
    }


def parse_modules(stat: dict) -> tuple[dict, dict]:
    """Per-module summaries of a hierarchical ``stat -json``: (own, inclusive).

    own: module -> parse_stat of its own cells (instances of other modules of the design appear in its
    ``cells`` under their module name and are not folded into lut / ff / ...); inclusive: module -> the
    same summary of its own cells plus, per instance, everything under that module (the module's whole
    subtree, as if it were synthesized alone and flattened)."""
    mods = {k.lstrip("\\"): v for k, v in stat.get("modules", {}).items()}
    raw = {m: {str(k).lstrip("\\"): int(n) for k, n in v.get("num_cells_by_type", {}).items()} for m, v in mods.items()}
    own = {m: parse_stat({"modules": {m: {"num_cells_by_type": c}}}, m) for m, c in raw.items()}
    memo: dict[str, dict[str, int]] = {}

    def flat(m: str, depth: int = 0) -> dict[str, int]:
        if m in memo:
            return memo[m]
        if depth > 64:
            raise AreaError(f"stat -json: module hierarchy deeper than 64 at {m} (a loop?)")
        out: dict[str, int] = {}
        for t, n in raw[m].items():
            sub = flat(t, depth + 1) if t in raw else {t: 1}
            for k, v in sub.items():
                out[k] = out.get(k, 0) + n * v
        memo[m] = out
        return out

    incl = {m: parse_stat({"modules": {m: {"num_cells_by_type": flat(m)}}}, m) for m in raw}
    return own, incl


_STAT_TREE_LINE = re.compile(r'(?m)^[ \t]+[^\s"{}\[\]:,][^"{}:]*[ \t]+\d+[ \t]*\n')


def load_stat_json(text: str) -> dict:
    """``stat -json`` output as a dict. yosys 0.23 writes the text hierarchy tree ("  vqhls_pool_unit  1",
    one line per instance) into the JSON of a design whose hierarchy is deeper than one level; those lines
    are dropped before parsing."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(_STAT_TREE_LINE.sub("", text))


def cache_dir() -> Path:
    return Path(os.environ.get("VQHLS_AREA_CACHE", REPO_ROOT / ".cache" / "yosys-area"))


def cache_key(version: str, flags: list[str], post: list[str], srcs: list[tuple[str, str]]) -> str:
    """The key a synth_area run is cached under: sha1 of the yosys version, the synth_xilinx flags with the
    post-steps, and every (file name, text) source (a reader of the cache computes the same key)."""
    h = hashlib.sha1()
    for part in (version, " ".join(flags + (["+"] + post if post else [])), *(f"{n}\0{t}" for n, t in srcs)):
        h.update(part.encode())
        h.update(b"\0\0")
    return h.hexdigest()


def synth_area(verilog: str | Path | list, top: str, *, nodsp: bool = False, family: str = "xc7",
               timeout: float = DEFAULT_TIMEOUT, cache: bool = True, flatten: bool = True,
               netlist: bool = False) -> dict:
    """Synthesize ``verilog`` for ``family`` with ``top`` as top module and return its cell counts.

    Returns ``{"lut", "ff", "carry4", "dsp", "bram18", "bram36", "muxf7", "muxf8", "lutram", "lutram_luts", "srl",
    "latch", "cells": {type: count}, "top", "family", "nodsp", "yosys", "runtime_s", "cached"}``
    (``runtime_s``: yosys' wall time when it ran; on a cache hit the stored one, ``cached`` True).
    AreaError when yosys is missing ("apt-get install yosys"), exits non-zero (the end of its log),
    runs past ``timeout`` seconds, or writes no readable stat.
    ``flatten=False``: hierarchy kept, plus ``modules`` / ``hierarchy`` (see parse_modules);
    ``netlist=True``: plus ``netlist``, the path of the flattened mapped netlist (yosys JSON, gzipped).
    """
    exe = find_yosys()
    version = yosys_version(exe)
    srcs = _sources(verilog)
    flags = script_flags(top, nodsp=nodsp, family=family, flatten=flatten)
    post = ["flatten", "write_json netlist.json"] if netlist else []
    key = cache_key(version, flags, post, srcs)
    cfile = cache_dir() / f"{key}.json"
    nfile = cache_dir() / f"{key}.netlist.json.gz"
    if cache and cfile.is_file() and (not netlist or nfile.is_file()):
        try:
            res = json.loads(cfile.read_text())
            res["cached"] = True
            if netlist:
                res["netlist"] = str(nfile)
            return res
        except (OSError, json.JSONDecodeError):
            pass   # a broken entry: synthesize again

    with tempfile.TemporaryDirectory(prefix="vqhls-yosys-") as tmp:
        tmpd = Path(tmp)
        reads = []
        for name, text in srcs:
            (tmpd / name).write_text(text)
            reads.append(f"read_verilog {'-sv ' if name.endswith('.sv') else ''}{name}")
        script = "; ".join([*reads, "synth_xilinx " + " ".join(flags), "tee -q -o stat.json stat -json", *post])
        (tmpd / "synth.ys").write_text(script.replace("; ", "\n") + "\n")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([exe, "-q", "-l", "yosys.log", "-s", "synth.ys"], cwd=tmpd,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise AreaError(f"yosys ({top}, {' '.join(flags)}) ran past {timeout:.0f} s; "
                            "make the configuration smaller") from e
        runtime = time.perf_counter() - t0
        if proc.returncode != 0:
            log = (tmpd / "yosys.log").read_text(errors="replace") if (tmpd / "yosys.log").exists() else ""
            tail = "\n".join((log or proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise AreaError(f"yosys failed (exit {proc.returncode}) on {top} with `{script}`:\n{tail}")
        try:
            stat = load_stat_json((tmpd / "stat.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise AreaError(f"yosys wrote no readable stat -json for {top}: {e}") from e
        if netlist:
            try:
                nfile.parent.mkdir(parents=True, exist_ok=True)
                tmpn = nfile.with_suffix(".tmp")
                with open(tmpd / "netlist.json", "rb") as src, gzip.open(tmpn, "wb", compresslevel=6) as dst:
                    shutil.copyfileobj(src, dst)
                tmpn.replace(nfile)
            except OSError as e:
                raise AreaError(f"could not keep the netlist of {top} at {nfile}: {e}") from e

    res = parse_stat(stat, top)
    res.update(top=top, family=family, nodsp=nodsp, yosys=version, runtime_s=round(runtime, 3), cached=False)
    if not flatten:
        own, incl = parse_modules(stat)
        res.update(modules=own, hierarchy=incl)
    if netlist:
        res["netlist"] = str(nfile)
    if cache:
        try:
            cfile.parent.mkdir(parents=True, exist_ok=True)
            tmpf = cfile.with_suffix(".tmp")
            tmpf.write_text(json.dumps(res, indent=1))
            tmpf.replace(cfile)
        except OSError:
            pass   # a read-only checkout still synthesizes, just without the cache
    return res
