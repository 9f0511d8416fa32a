"""Open synthesis of the whole RTL engine (``vqhls_engine_top``, flow/rtl/engine_rtl.py): yosys 0.23
``synth_xilinx -family xc7`` cell counts, per unit and in total, the block RAM each memory became, the DSPs
each multiply became, and the longest register-to-register path in logic levels -- beside the resource
model (flow/boards/resource_model.py) of the same EngineConfig.

    from flow.rtl.engine_area import engine_area
    rec = engine_area("default")        # or "dense", or an EngineConfig
    rec["total"]          # flattened synthesis: lut, ff, carry4, dsp, bram36, bram18, lutram_luts, ...
    rec["units"]          # hierarchical synthesis: per RTL unit (everything under it)
    rec["memories"]       # memory name -> cells it was mapped to (RAMB36E1 / RAMB18E1 / RAM64M / ...)
    rec["depth"]          # longest paths (see logic_depth)
    rec["rows"]           # modelled (low / central / high) beside yosys, per unit and total

Two yosys runs per EngineConfig, both cached (flow/rtl/area.py: the sha1 of yosys, the flags and every
source; the netlist and the depth result beside): ``-flatten`` (the totals, the memories, the depth:
optimisation across unit boundaries, unused descriptor bits removed) and one with the hierarchy kept
(each unit synthesized alone; its counts are what the unit costs with its ports as they are, so the sum of
the units is larger than the flattened total). Every number here is a yosys technology-mapped cell count
before place and route, or a count over its netlist, never a Vivado figure; the resource model's are
modelled.

Logic depth (``logic_depth``), on the flattened mapped netlist: a path starts at a top-level input, a
flip-flop's Q (FDRE/FDSE/FDCE/FDPE), a block RAM's data output (RAMB18E1/RAMB36E1), a DSP48E1 output whose
PREG is set, or an SRL's Q; it ends at an input of one of those (or a top-level output; a DSP48E1 input
ends there when a register of the DSP lies between it and P: AREG/BREG/CREG, MREG, or PREG). Counted along
it, one level per cell: LUT1..LUT6, INV, MUXF7, MUXF8, CARRY4 (each CARRY4 of a chain), the read of a
distributed RAM (RAM32M/RAM64M/RAM*X1D: address to data), and a DSP48E1 with no register on the way
(PREG = 0). ``levels`` is that count (Vivado's "logic levels" counts the same cells); ``lut_levels`` the
LUTs (LUT1..6, INV, LUTRAM reads) only. The cells are the whole path, but a path that enters a DSP48E1
with AREG = BREG = MREG = 0 also spends the multiplier's delay inside the DSP before its register
(``dsp_entry``), which the level count does not show; so does a path that starts at a block RAM without
its output register (clock-to-out ~2 ns instead of ~0.4 ns).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

from flow.boards import resource_model as rm
from flow.boards.sizing import config_for_board
from flow.compile.engine import EngineConfig
from flow.rtl import area
from flow.rtl.engine_rtl import engine_sources
from flow.rtl.area import REPO_ROOT, AreaError, LUT_CELLS, FF_CELLS, LUTRAM_PREFIXES, SRL_CELLS, synth_area

TOP = "vqhls_engine_top"
DEPTH_VERSION = 3
SYNTH_TIMEOUT = 7200.0
BUILD = REPO_ROOT / "build" / "rtl_engine_area"

# xc7z020 (PYNQ-Z2): the part's resources
XC7Z020 = {"lut": 53200, "ff": 106400, "bram36": 140, "dsp": 220, "lutram": 17400}

# instance name -> RTL unit (engine_top.v.j2, engine_core.v.j2, pool_unit.v.j2)
INSTANCES = {"u_control": "control", "u_loader": "loader", "u_core": "engine_core", "u_conv": "conv_unit",
             "u_pool": "pool_unit", "u_sin": "stream_in", "u_sout": "stream_out", "u_rq": "requant"}
# the rows of the per-unit comparison: RTL unit -> (the modules whose cells count for it, resource-model units
# with the fraction of each). Model units not listed here are the block design's (bd.*), added to the total.
# requant: the cols lanes that drain the conv unit; requant.pool: the pool unit's lane; mult.runtime (the
# allowance of 3 run-time multiplies, 1/3/4 DSP each): a third each to the conv unit's and the pool unit's
# plan_op multipliers and the loader's check_op one.
UNIT_MAP: dict[str, dict[str, float]] = {
    "conv_unit": {"array.mult_dsp": 1, "array.mult_fabric": 1, "array.mux": 1, "array.adders": 1, "mem.acc": 1,
                  "acc.read_mux": 1, "crossbar": 1, "decoder": 1, "requant": 1, "control.counters": 1,
                  "control.pipe": 1, "mult.runtime": 1 / 3},
    "pool_unit": {"pool": 1, "requant.pool": 1, "mult.runtime": 1 / 3},
    "engine_core": {"mem.act": 1, "mem.vidx": 1, "mem.vmask": 1, "mem.cbmem": 1, "mem.dmem": 1, "mem.chmem": 1,
                    "mem.ops": 1, "glue.port_mux": 1, "control.sequencer": 1, "control.unpack_op": 1},
    "loader": {"control.check_op": 1, "control.loaders": 1, "control.crc32": 1, "mem.loader_fifos": 1,
               "axi.m_axi": 1, "mult.runtime": 1 / 3},
    "stream_in+stream_out": {"control.streams": 1, "axi.axis": 1},
    "control": {"axi.s_axilite": 1},
    "engine_top": {"control.cycles": 1},
}
# the RTL modules of each row (hierarchical run): inclusive counts, except engine_core (its own cells: the
# memories, the sequencer, the port muxes; conv / pool / streams are rows of their own) and engine_top (own)
ROW_MODULES = {"conv_unit": ("vqhls_conv_unit", "incl"), "pool_unit": ("vqhls_pool_unit", "incl"),
               "engine_core": ("vqhls_engine_core", "own"), "loader": ("vqhls_loader", "incl"),
               "stream_in+stream_out": (("vqhls_stream_in", "vqhls_stream_out"), "incl"),
               "control": ("vqhls_control", "incl"), "engine_top": ("vqhls_engine_top", "own")}
# a build with the lookup unit (engine.pq): vqhls_pq_unit (instance u_pq of the core) holds the PQ op's encoder,
# argmin and lookup, its prototype, LUT and accumulator memories and its requantization lane
PQ_ROW = {"pq_unit": {"pq": 1, "mem.proto": 1, "mem.lut": 1, "mem.pq_acc": 1, "requant.pq": 1}}
PQ_ROW_MODULES = {"pq_unit": ("vqhls_pq_unit", "incl")}
RESOURCES = ("bram36", "dsp", "lut", "ff", "lutram")


def unit_map(engine: EngineConfig) -> dict[str, dict[str, float]]:
    """The comparison rows of ``engine``: UNIT_MAP, and PQ_ROW when the build has the lookup unit."""
    return {**UNIT_MAP, **PQ_ROW} if engine.pq else dict(UNIT_MAP)


def row_modules(engine: EngineConfig) -> dict[str, tuple]:
    """The RTL modules of each row of unit_map(engine)."""
    return {**ROW_MODULES, **PQ_ROW_MODULES} if engine.pq else dict(ROW_MODULES)


# ---- the EngineConfigs ----------------------------------------------------------------------------
def build_config(build: str | EngineConfig) -> EngineConfig:
    """"default": config_for_board("pynq-z2") (== EngineConfig()); "dense": config_for_board("pynq-z2", n=4, m=4)."""
    if isinstance(build, EngineConfig):
        return build
    if build == "default":
        return config_for_board("pynq-z2")
    if build == "dense":
        return config_for_board("pynq-z2", n=4, m=4)
    raise ValueError(f"unknown build {build!r}: 'default' or 'dense', or pass an EngineConfig")


def rtl_digest(engine: EngineConfig) -> str:
    """sha256 (16 hex digits) of the engine's rendered Verilog, file names included: what a yosys figure was
    measured on (the engine hash names the configuration only; the RTL text changes under it)."""
    h = hashlib.sha256()
    for name, text in sorted(engine_sources(engine).items()):
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()[:16]


def write_sources(engine: EngineConfig) -> list[Path]:
    """The engine's Verilog (flow.rtl.engine_rtl.engine_sources) written under build/rtl_engine_area/<hash>/,
    one file per unit (the file names are part of the synthesis cache key and of yosys' cell names)."""
    out = BUILD / str(engine.hash())
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in engine_sources(engine).items():
        p = out / name
        if not p.is_file() or p.read_text() != text:
            p.write_text(text)
        paths.append(p)
    return paths


def synth_engine(engine: EngineConfig, *, flatten: bool, timeout: float = SYNTH_TIMEOUT) -> dict:
    """synth_area of vqhls_engine_top: flattened with the netlist kept, or with the hierarchy kept."""
    return synth_area(write_sources(engine), TOP, flatten=flatten, netlist=flatten, timeout=timeout)


# ---- counts -------------------------------------------------------------------------------------------
def summary(a: dict) -> dict:
    """One synth_area summary as the comparison counts it: bram36 = RAMB36 + RAMB18 / 2 (two RAMB18 share a
    tile), lut = every LUT6 site (logic LUTs + INV + LUT sites of distributed RAM + SRLs), lutram = the
    distributed-RAM and SRL sites, ff, dsp, carry4, muxf7, muxf8 as counted."""
    inv = a["cells"].get("INV", 0)
    return {"bram36": a["bram36"] + a["bram18"] / 2, "ramb36": a["bram36"], "ramb18": a["bram18"], "dsp": a["dsp"],
            "lut": a["lut"] + inv + a["lutram_luts"] + a["srl"], "logic_lut": a["lut"] + inv, "ff": a["ff"],
            "lutram": a["lutram_luts"] + a["srl"], "carry4": a["carry4"], "muxf7": a["muxf7"], "muxf8": a["muxf8"]}


def unit_counts(hier: dict, engine: EngineConfig) -> dict[str, dict]:
    """Row -> summary of the hierarchical synthesis of ``engine`` (row_modules(engine))."""
    out = {}
    for row, (mods, kind) in row_modules(engine).items():
        mods = (mods,) if isinstance(mods, str) else mods
        acc: dict | None = None
        for m in mods:
            src = hier["hierarchy" if kind == "incl" else "modules"].get(m)
            if src is None:
                raise AreaError(f"hierarchical synthesis has no module {m} (modules: {sorted(hier['modules'])})")
            s = summary(src)
            acc = s if acc is None else {k: acc[k] + s[k] for k in s}
        out[row] = acc
    return out


# ---- the resource model ---------------------------------------------------------------------------------
def model_rows(engine: EngineConfig, board: str = "pynq-z2", usage: rm.Usage | None = None) -> tuple[dict, dict, dict]:
    """(rows, block design, engine total), each resource as (low, central, high), MODELLED: the resource
    model's units summed per UNIT_MAP row (requant: the conv lanes; requant.pool: the pool's), the bd.* units, and
    every non-bd unit. Raises when a model unit is neither mapped nor bd (so a new unit is not lost).
    ``usage``: the estimate to split (a build's own, e.g. with the firmware's multiply counts); default
    rm.estimate(engine, board)."""
    usage = usage if usage is not None else rm.estimate(engine, board)
    mapped = defaultdict(float)
    rows: dict[str, dict] = {}
    for row, units in unit_map(engine).items():
        r = {res: [0.0, 0.0, 0.0] for res in RESOURCES}
        for name, f in units.items():
            mapped[name] += f
            u = usage.units.get(name)
            if u is None:
                continue
            for res in RESOURCES:
                for i, x in enumerate(u.get(res).as_tuple()):
                    r[res][i] += f * x
        rows[row] = {res: tuple(v) for res, v in r.items()}
    bd = {res: [0.0, 0.0, 0.0] for res in RESOURCES}
    eng = {res: [0.0, 0.0, 0.0] for res in RESOURCES}
    for name, u in usage.units.items():
        target = bd if name.startswith("bd.") else eng
        if not name.startswith("bd.") and abs(mapped.get(name, 0.0) - 1.0) > 1e-9 and \
                any(u.get(res).high for res in RESOURCES):
            raise AreaError(f"resource-model unit {name} is mapped {mapped.get(name, 0.0):g} times to an RTL unit "
                            "(UNIT_MAP, PQ_ROW): map it once")
        for res in RESOURCES:
            for i, x in enumerate(u.get(res).as_tuple()):
                target[res][i] += x
    return rows, {k: tuple(v) for k, v in bd.items()}, {k: tuple(v) for k, v in eng.items()}


# ---- the netlist: memories and logic depth ------------------------------------------------------------
_COMB_LUT = set(LUT_CELLS) | {"INV"}
_MUXF = {"MUXF7", "MUXF8"}
_BRAM = ("RAMB18E1", "RAMB36E1", "RAMB18", "RAMB36")
_LUTRAM_ADDR = re.compile(r"^(ADDR[A-H]|A\d*|DPRA\d*|ADDR)$")


def unit_of(name: str) -> str:
    """The RTL unit a flattened cell or net belongs to, from the instance names in it (u_core.u_conv...)."""
    insts = re.findall(r"(?:^|[.\\])(u_[A-Za-z]+)(?=\.)", name)
    return INSTANCES.get(insts[-1], insts[-1]) if insts else "engine_top"


def memory_of(cell_name: str) -> str:
    """'u_core.act_mem_0_0.0.1' -> 'u_core.act_mem_0_0' (memory_libmap names its cells <memory>.<i>.<j>)."""
    return re.sub(r"(\.\d+)+$", "", cell_name.replace("$flatten\\", "").replace("\\", ""))


def _param(cell: dict, name: str, default: int = 0) -> int:
    v = cell.get("parameters", {}).get(name)
    if v is None:
        return default
    try:
        return int(str(v), 2) if set(str(v)) <= {"0", "1"} else int(v)
    except ValueError:
        return default


def _classify(ctype: str, cell: dict) -> tuple[str, set[str], int, int]:
    """(kind, comb input ports, level weight, LUT weight). kind: "comb" (outputs are functions of the comb
    inputs, its other inputs end paths), "seq" (outputs start paths, every input ends one)."""
    ports = cell.get("port_directions", {})
    ins = {p for p, d in ports.items() if d == "input"}
    if ctype in _COMB_LUT:
        return "comb", ins, 1, 1
    if ctype in _MUXF or ctype in ("CARRY4", "CARRY8"):
        return "comb", ins, 1, 0
    if ctype.startswith(LUTRAM_PREFIXES):
        return "comb", {p for p in ins if _LUTRAM_ADDR.match(p)}, 1, 1
    if ctype.startswith("DSP48"):
        if _param(cell, "PREG", 1):
            return "seq", set(), 0, 0
        comb = set()
        for p in ins:
            if p in ("A", "ACIN") and (_param(cell, "AREG", 1) or _param(cell, "MREG", 1)):
                continue
            if p in ("B", "BCIN") and (_param(cell, "BREG", 1) or _param(cell, "MREG", 1)):
                continue
            if p == "C" and _param(cell, "CREG", 1):
                continue
            if p in ("A", "ACIN", "B", "BCIN", "C", "PCIN", "D", "CARRYIN"):
                comb.add(p)
        return "comb", comb, 1, 0
    if ctype in FF_CELLS or ctype in SRL_CELLS or ctype.startswith(_BRAM) or ctype in ("LDCE", "LDPE"):
        return "seq", set(), 0, 0
    return "unknown", ins, 1, 0


def _netnames(mod: dict) -> dict[int, str]:
    """bit -> the best name of its net (a public name before an internal one, then the shortest)."""
    best: dict[int, tuple] = {}
    for name, n in mod.get("netnames", {}).items():
        hidden = n.get("hide_name", 0)
        for i, b in enumerate(n["bits"]):
            if isinstance(b, int):
                label = name if len(n["bits"]) == 1 else f"{name}[{i}]"
                key = (hidden, len(label), label)
                if b not in best or key < best[b]:
                    best[b] = key
    return {b: k[2] for b, k in best.items()}


def netlist_facts(netlist: str | Path, top: str = TOP) -> dict:
    """Memories and logic depth of a flattened mapped netlist (yosys write_json, gzipped), cached beside it
    (``<netlist>.facts-v<DEPTH_VERSION>.json``). See the module docstring for what a path and a level are.

    Returns {"memories": {memory: {cell type: count}}, "depth": {"levels": {...}, "lut_levels": {...},
    "dsp_entry": {...}, "unknown_cells": {...}, "histogram": {levels: endpoints}}} where each path record holds
    levels, lut_levels, start / end (kind, unit, net) and the cells along it (type, unit, output net); "by_unit":
    the worst path (by levels) ending in each unit, its cells as types only."""
    netlist = Path(netlist)
    side = netlist.with_name(netlist.name.replace(".netlist.json.gz", f".facts-v{DEPTH_VERSION}.json"))
    if side.is_file():
        try:
            return json.loads(side.read_text())
        except (OSError, json.JSONDecodeError):
            pass
    with gzip.open(netlist, "rt") as f:
        data = json.load(f)
    mod = data["modules"].get(top)
    if mod is None:
        raise AreaError(f"netlist {netlist} has no module {top}")
    facts = {"memories": _memories(mod), "depth": _depth(mod)}
    try:
        side.write_text(json.dumps(facts, indent=1))
    except OSError:
        pass
    return facts


def _memories(mod: dict) -> dict[str, dict[str, int]]:
    mems: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, c in mod["cells"].items():
        t = c["type"]
        if t.startswith(_BRAM) or t.startswith(LUTRAM_PREFIXES):
            mems[memory_of(name)][t] += 1
    return {m: dict(v) for m, v in sorted(mems.items())}


def _depth(mod: dict) -> dict:
    cells = mod["cells"]
    names = _netnames(mod)
    driver: dict[int, tuple[str, str]] = {}          # bit -> (cell, port) or ("<port>", port name)
    for pname, p in mod["ports"].items():
        if p["direction"] in ("input", "inout"):
            for b in p["bits"]:
                if isinstance(b, int):
                    driver[b] = ("<in>", pname)
    info = {}
    unknown: dict[str, int] = defaultdict(int)
    for cname, c in cells.items():
        kind, comb_in, w, wl = _classify(c["type"], c)
        if kind == "unknown":
            unknown[c["type"]] += 1
            kind = "comb"
        info[cname] = (kind, comb_in, w, wl)
        for port, d in c.get("port_directions", {}).items():
            if d == "output":
                for b in c["connections"].get(port, []):
                    if isinstance(b, int):
                        driver[b] = (cname, port)

    def out_net(cname: str) -> str:
        c = cells[cname]
        for port, d in c.get("port_directions", {}).items():
            if d == "output":
                for b in c["connections"].get(port, []):
                    if isinstance(b, int) and b in names:
                        return names[b]
        return cname

    def cell_unit(cname: str) -> str:
        """The unit from the cell's name, else from its output net's (ABC's LUTs and yosys' FFs are anonymous)."""
        u = unit_of(cname)
        return u if u != "engine_top" else unit_of(out_net(cname))

    # comb graph: fan-in cells of every comb cell (through its comb inputs)
    fanin: dict[str, set[str]] = {}
    start_in: dict[str, set] = {}
    for cname, (kind, comb_in, _, _) in info.items():
        if kind != "comb":
            continue
        fi, st = set(), set()
        for port in comb_in:
            for b in cells[cname]["connections"].get(port, []):
                if not isinstance(b, int) or b not in driver:
                    continue
                dc, _ = driver[b]
                if dc != "<in>" and info[dc][0] == "comb":
                    fi.add(dc)
                else:
                    st.add(dc)
        fanin[cname] = fi
        start_in[cname] = st
    # topological order (Kahn)
    fanout: dict[str, list[str]] = defaultdict(list)
    indeg = {c: len(fi) for c, fi in fanin.items()}
    for c, fi in fanin.items():
        for p in fi:
            fanout[p].append(c)
    order = [c for c, k in indeg.items() if k == 0]
    for c in order:
        for o in fanout[c]:
            indeg[o] -= 1
            if indeg[o] == 0:
                order.append(o)
    loops = len(fanin) - len(order)

    def longest(weight: int) -> tuple[dict, dict]:
        arr, pred = {}, {}
        for c in order:
            best, bp = 0, None
            for p in fanin[c]:
                if arr[p] > best:
                    best, bp = arr[p], p
            if bp is None and start_in[c]:
                bp = ("start", sorted(start_in[c])[0])
            arr[c] = best + info[c][weight]
            pred[c] = bp
        return arr, pred

    def start_kind(s: str) -> str:
        if s == "<in>":
            return "top input"
        t = cells[s]["type"]
        return "bram" if t.startswith(_BRAM) else "dsp" if t.startswith("DSP48") else "srl" if t in SRL_CELLS \
            else "ff" if t in FF_CELLS else t

    def endpoints() -> list[tuple[str, str, str]]:
        """(cell or <out>, port, comb driver cell) for every path end fed by a comb cell: every input of a
        seq cell, the non-comb inputs of a comb cell (a distributed RAM's write port, a registered DSP input),
        every top-level output. Clocks come from the top-level input, never from a comb cell."""
        out = []
        for cname, c in cells.items():
            kind, comb_in = info[cname][0], info[cname][1]
            for port, d in c.get("port_directions", {}).items():
                if d != "input" or (kind == "comb" and port in comb_in):
                    continue
                for b in c["connections"].get(port, []):
                    if isinstance(b, int) and b in driver and driver[b][0] != "<in>" and \
                            info[driver[b][0]][0] == "comb":
                        out.append((cname, port, driver[b][0]))
        for pname, p in mod["ports"].items():
            if p["direction"] == "output":
                for b in p["bits"]:
                    if isinstance(b, int) and b in driver and driver[b][0] != "<in>" and \
                            info[driver[b][0]][0] == "comb":
                        out.append(("<out>", pname, driver[b][0]))
        return out

    ends = endpoints()
    res: dict = {"loops": loops, "unknown_cells": dict(unknown), "comb_cells": len(fanin)}

    def path_record(arr: dict, pred: dict, end: tuple, arr_l: dict) -> dict:
        ecell, eport, last = end
        chain, c = [], last
        start = None
        while c is not None:
            chain.append(c)
            p = pred[c]
            if isinstance(p, tuple):
                start = p[1]
                break
            c = p
        chain.reverse()
        rec = {"levels": sum(info[x][2] for x in chain), "lut_levels": sum(info[x][3] for x in chain),
               "start": {"kind": start_kind(start) if start else "constant",
                         "unit": cell_unit(start) if start and start != "<in>" else "engine_top",
                         "net": out_net(start) if start and start != "<in>" else str(start)},
               "end": {"kind": "top output" if ecell == "<out>" else start_kind(ecell) if info[ecell][0] == "seq"
                       else cells[ecell]["type"], "port": eport,
                       "unit": cell_unit(ecell) if ecell != "<out>" else "engine_top",
                       "net": eport if ecell == "<out>" else out_net(ecell)},
               "cells": [{"type": cells[x]["type"], "unit": cell_unit(x), "net": out_net(x)} for x in chain]}
        return rec

    hist: dict[int, int] = defaultdict(int)
    for weight, key in ((2, "levels"), (3, "lut_levels")):
        arr, pred = longest(weight)
        if not ends:
            res[key] = None
            continue
        best = max(ends, key=lambda e: (arr[e[2]], e[0], e[1]))
        res[key] = path_record(arr, pred, best, arr)
        if weight == 2:
            seen = {}
            for e in ends:
                k = (e[0], e[1])
                seen[k] = max(seen.get(k, 0), arr[e[2]])
            for v in seen.values():
                hist[v] += 1
            # paths into a DSP48E1 whose multiplier has no register before it (AREG = BREG = MREG = 0)
            dsp_ends = [e for e in ends if e[0] != "<out>" and cells[e[0]]["type"].startswith("DSP48")
                        and e[1] in ("A", "B") and not _param(cells[e[0]], "MREG", 1)
                        and not _param(cells[e[0]], "AREG" if e[1] == "A" else "BREG", 1)]
            res["dsp_entry"] = path_record(arr, pred, max(dsp_ends, key=lambda e: (arr[e[2]], e[0], e[1])), arr) \
                if dsp_ends else None
            res["dsp_unregistered_inputs"] = len({e[0] for e in dsp_ends})
            # the worst path ending in each unit (the unit of the endpoint register / memory / port)
            per: dict[str, tuple] = {}
            for e in ends:
                u = cell_unit(e[0]) if e[0] != "<out>" else "engine_top"
                if u not in per or (arr[e[2]], e[0], e[1]) > (arr[per[u][2]], per[u][0], per[u][1]):
                    per[u] = e
            res["by_unit"] = {}
            for u, e in sorted(per.items()):
                r = path_record(arr, pred, e, arr)
                r["cells"] = [f"{c['type']}" for c in r["cells"]]
                res["by_unit"][u] = r
    res["histogram"] = {str(k): v for k, v in sorted(hist.items())}
    return res


# ---- the multiplies the RTL writes, and the DSP48E1s yosys makes of them -----------------------------------
# xc7 map_dsp (yosys 0.23 synth_xilinx): techmap +/mul2dsp.v -D DSP_A_MAXWIDTH=25 -D DSP_B_MAXWIDTH=18
# -D DSP_A_MAXWIDTH_PARTIAL=18 -D DSP_A_MINWIDTH=2 -D DSP_B_MINWIDTH=2 -D DSP_Y_MINWIDTH=9 -D DSP_SIGNEDONLY=1
MUL2DSP_XC7 = {"a_max": 25, "b_max": 18, "a_partial": 18, "b_partial": 18, "a_min": 2, "b_min": 2, "y_min": 9}


def dsp48e1_tiles(a_width: int, b_width: int, y_width: int, a_signed: bool, b_signed: bool) -> int:
    """DSP48E1s of one $mul as yosys' mul2dsp.v splits it for xc7 (MUL2DSP_XC7): an unsigned product gets a
    sign bit on each operand; the wider operand is A; A wider than 25 bits is cut into 17-bit slices (18 with
    the sign headroom), then B wider than 18 likewise; a slice is one DSP48E1 unless an operand is under 2 bits
    or its product under 9 (then LUTs). A slice whose product starts at or above bit y_width of the result
    drives nothing and is removed; so a 32 x 32 -> 64 product is 4 DSPs, 32 x 32 -> 32 is 3, 9 x 32 -> 41 is 2,
    8 x 9 -> 17 is 1."""
    k = MUL2DSP_XC7
    hr = 1                                       # DSP_SIGNEDONLY: sign headroom of a slice

    def rec(aw: int, bw: int, yw: int, asg: bool, bsg: bool, top: bool, off: int) -> int:
        if aw < k["a_min"] or bw < k["b_min"] or yw < k["y_min"]:
            return 0
        if top and not asg and not bsg:
            return rec(aw + 1, bw + 1, yw, True, True, top, off)
        if top and aw < bw:
            return rec(bw, aw, yw, bsg, asg, top, off)
        if aw > k["a_max"]:
            step = k["a_partial"] - hr
            n = (aw - k["a_max"] + k["a_partial"] - hr - 1) // step
            py = min(yw, bw + k["a_partial"])
            total = sum(rec(k["a_partial"], bw, py, bool(hr), bsg, False, off + i * step) for i in range(n))
            last = aw - n * step
            return total + rec(last, bw, bw + last, asg, bsg, False, off + n * step)
        if bw > k["b_max"]:
            step = k["b_partial"] - hr
            n = (bw - k["b_max"] + k["b_partial"] - hr - 1) // step
            py = min(yw, aw + k["b_partial"])
            total = sum(rec(aw, k["b_partial"], py, asg, bool(hr), False, off + i * step) for i in range(n))
            last = bw - n * step
            return total + rec(aw, last, aw + last, asg, bsg, False, off + n * step)
        return 1 if off < y_width else 0

    return rec(a_width, b_width, y_width, a_signed, b_signed, True, 0)


_DUMP_CELL = re.compile(r"^\s*cell \$mul (\S+)$")
_DUMP_PARAM = re.compile(r"^\s*parameter \\(\w+) (\S+)$")
_DUMP_SRC = re.compile(r'^\s*attribute \\src "([^"]*)"$')


def parse_mul_dump(text: str) -> list[dict]:
    """The $mul cells of a yosys ``dump`` (RTLIL text): name, src, A/B/Y widths and signedness."""
    out, cur, src = [], None, ""
    for line in text.splitlines():
        m = _DUMP_SRC.match(line)
        if m:
            src = m.group(1)
            continue
        m = _DUMP_CELL.match(line)
        if m:
            cur = {"name": m.group(1), "src": src}
            out.append(cur)
            continue
        if line.strip() == "end":
            cur, src = None, ""
            continue
        m = _DUMP_PARAM.match(line)
        if m and cur is not None:
            v = m.group(2)
            cur[m.group(1).lower()] = int(v, 2) if v.startswith(("0", "1")) and set(v) <= {"0", "1"} and len(v) > 8 \
                else int(v) if v.lstrip("-").isdigit() else v
        elif not line.startswith(" ") and not line.startswith("\t"):
            src = ""
    for c in out:
        c["a_signed"], c["b_signed"] = bool(c.get("a_signed", 0)), bool(c.get("b_signed", 0))
    return out


def multiplies(engine: EngineConfig, timeout: float = SYNTH_TIMEOUT) -> list[dict]:
    """The engine's multiplies as yosys elaborates the RTL just before it maps them (``synth_xilinx -flatten
    -run :map_dsp``: proc, flatten, opt, fsm, wreduce, peepopt -- every step before map_dsp), one
    record per $mul: src (file:line), unit (the file's unit), a/b/y widths and signedness, and ``dsp``: its
    DSP48E1s by dsp48e1_tiles. Cached like synth_area (``<key>.muls.json`` under the area cache)."""
    exe = area.find_yosys()
    version = area.yosys_version(exe)
    srcs = area._sources(write_sources(engine))
    script = ["synth_xilinx -family xc7 -top " + TOP + " -flatten -noiopad -noclkbuf -run :map_dsp",
              "tee -q -o muls.txt dump t:$mul"]
    h = hashlib.sha1()
    for part in (version, "muls", *script, *(f"{n}\0{t}" for n, t in srcs)):
        h.update(part.encode())
        h.update(b"\0\0")
    cfile = area.cache_dir() / f"{h.hexdigest()}.muls.json"
    if cfile.is_file():
        try:
            return _mul_fields(json.loads(cfile.read_text()))
        except (OSError, json.JSONDecodeError, KeyError, ValueError):
            pass
    with tempfile.TemporaryDirectory(prefix="vqhls-yosys-muls-") as tmp:
        tmpd = Path(tmp)
        reads = []
        for name, text in srcs:
            (tmpd / name).write_text(text)
            reads.append(f"read_verilog {name}")
        (tmpd / "muls.ys").write_text("\n".join(reads + script) + "\n")
        try:
            proc = subprocess.run([exe, "-q", "-l", "yosys.log", "-s", "muls.ys"], cwd=tmpd, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise AreaError(f"yosys elaboration of {TOP} ran past {timeout:.0f} s") from e
        if proc.returncode != 0 or not (tmpd / "muls.txt").is_file():
            raise AreaError(f"yosys elaboration of {TOP} failed (exit {proc.returncode}): "
                            f"{(proc.stdout + proc.stderr)[-2000:]}")
        muls = parse_mul_dump((tmpd / "muls.txt").read_text())
    try:
        cfile.parent.mkdir(parents=True, exist_ok=True)
        cfile.write_text(json.dumps(muls, indent=1))
    except OSError:
        pass
    return _mul_fields(muls)


def _mul_fields(muls: list[dict]) -> list[dict]:
    """unit and line of the multiply itself (from the cell's name, $mul$<file>:<line>$<n>: its src attribute
    lists the instance sites too, in no fixed order), and its DSP48E1s."""
    for m in muls:
        site = re.search(r"\$mul\$([^:$|]+):(\d+)", m["name"])       # $flatten\u_core.\u_conv.$mul$<file>:<line>$<n>
        f, line = (site.group(1), int(site.group(2))) if site else ("?", 0)
        m["unit"] = f[len("vqhls_"):-2] if f.startswith("vqhls_") and f.endswith(".v") else f
        m["line"] = line
        m["dsp"] = dsp48e1_tiles(m["a_width"], m["b_width"], m["y_width"], m["a_signed"], m["b_signed"])
    return muls


# ---- everything for one build ----------------------------------------------------------------------
def engine_area(build: str | EngineConfig = "default", board: str = "pynq-z2") -> dict:
    """The record of one EngineConfig: its totals (flattened), units (hierarchy kept), memories, depth, and
    the comparison rows against the resource model. Runs yosys twice unless cached."""
    engine = build_config(build)
    mrows, bd, meng = model_rows(engine, board)     # first: a model unit with no row fails before any yosys
    flat = synth_engine(engine, flatten=True)
    hier = synth_engine(engine, flatten=False)
    facts = netlist_facts(flat["netlist"])
    units = unit_counts(hier, engine)
    total = summary(flat)
    rows = []
    for row in unit_map(engine):
        rows.append({"unit": row, "modelled": {r: list(mrows[row][r]) for r in RESOURCES},
                     "yosys": units[row]})
    hier_total = summary(hier)
    rows.append({"unit": "engine (sum of units, hierarchy kept)", "modelled": {r: list(meng[r]) for r in RESOURCES},
                 "yosys": hier_total})
    rows.append({"unit": "engine (flattened)", "modelled": {r: list(meng[r]) for r in RESOURCES}, "yosys": total})
    with_bd = {r: [total[r] + bd[r][i] for i in range(3)] for r in RESOURCES}
    rows.append({"unit": "block design (modelled)", "modelled": {r: list(bd[r]) for r in RESOURCES}, "yosys": None})
    rows.append({"unit": "engine flattened (yosys) + block design (modelled)",
                 "modelled": {r: [meng[r][i] + bd[r][i] for i in range(3)] for r in RESOURCES},
                 "yosys_plus_bd": with_bd})
    return {"build": build if isinstance(build, str) else "custom", "engine": engine.__dict__ if hasattr(engine, "__dict__")
            else str(engine), "engine_hash": engine.hash(), "rtl_sha256": rtl_digest(engine), "yosys": flat["yosys"],
            "script": "synth_xilinx -family xc7 -top vqhls_engine_top [-flatten] -noiopad -noclkbuf; stat -json; "
                      "[flatten; write_json]",
            "total": total, "total_cells": flat["cells"], "hier_total": hier_total,
            "units": units, "unit_cells": {m: hier["hierarchy"][m]["cells"] for m in sorted(hier["hierarchy"])
                                           if m.startswith("vqhls_")},
            "memories": facts["memories"], "depth": facts["depth"], "rows": rows, "part": dict(XC7Z020),
            "runtime_s": {"flat": flat["runtime_s"], "hier": hier["runtime_s"]},
            "cached": {"flat": flat["cached"], "hier": hier["cached"]}}


# ---- read-only lookup of the yosys figures (the build report: never runs yosys) ----------------------------
RESULTS_JSON = REPO_ROOT / "bench" / "results" / "rtl_engine_area.json"
RESULTS_ENV = "VQHLS_RTL_AREA_RESULTS"      # overrides RESULTS_JSON (tests point it at a file in tmp)


def _shown(path: Path) -> str:
    """A path relative to the repository when under it (what a report may print), else as given."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def cached_area(engine: EngineConfig, versions: tuple[str, ...] | None = None) -> dict | None:
    """The yosys figures engine_area gives for ``engine``, read from the synth_area cache ONLY (yosys is never run;
    ``yosys -V`` is, for the key): {"source", "yosys", "engine_hash", "total" (flattened: summary()), "units"
    (row -> summary of the run with the hierarchy kept) and "hier_total", both None when that run is not cached};
    None when the flattened run is not cached. ``versions``: yosys version strings to try (default: the installed
    yosys'; none when it is missing)."""
    if versions is None:
        try:
            versions = (area.yosys_version(),)
        except AreaError:
            return None
    srcs = list(engine_sources(engine).items())          # the names and texts write_sources gives synth_area
    flat_flags = area.script_flags(TOP, nodsp=False, family="xc7", flatten=True)
    hier_flags = area.script_flags(TOP, nodsp=False, family="xc7", flatten=False)
    for version in versions:
        flat_key = area.cache_key(version, flat_flags, ["flatten", "write_json netlist.json"], srcs)
        flat_file = area.cache_dir() / f"{flat_key}.json"
        if not flat_file.is_file():
            continue
        try:
            flat = json.loads(flat_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        units = hier_total = None
        hier_file = area.cache_dir() / f"{area.cache_key(version, hier_flags, [], srcs)}.json"
        if hier_file.is_file():
            try:
                hier = json.loads(hier_file.read_text())
                units, hier_total = unit_counts(hier, engine), summary(hier)
            except (OSError, json.JSONDecodeError, KeyError, AreaError):
                units = hier_total = None
        return {"source": f"the synth_area cache ({_shown(area.cache_dir())})", "yosys": flat.get("yosys", version),
                "engine_hash": engine.hash(), "total": summary(flat), "units": units, "hier_total": hier_total}
    return None


def yosys_reference(engine: EngineConfig, results_json: str | Path | None = None,
                    versions: tuple[str, ...] | None = None) -> tuple[dict | None, str]:
    """(figures, "") or (None, why): the yosys figures of ``engine`` WITHOUT running yosys, as cached_area gives
    them; from the synth_area cache first, else from a build of the bench results (``results_json``, default
    $VQHLS_RTL_AREA_RESULTS or bench/results/rtl_engine_area.json) whose engine_hash is ``engine``'s."""
    try:
        rec = cached_area(engine, versions)
        why = [f"no cached yosys run of this engine in {_shown(area.cache_dir())}"]
    except Exception as e:        # a config the RTL does not render is "no cached figures", never a failed report
        rec, why = None, [f"the RTL does not render for this engine ({type(e).__name__}: {e})"]
    if rec is not None:
        return rec, ""
    path = Path(results_json or os.environ.get(RESULTS_ENV) or RESULTS_JSON)
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        why.append(f"{_shown(path)} is not readable ({type(e).__name__})")
        return None, "; ".join(why)
    builds = payload.get("builds", [])
    for b in builds:
        if b.get("engine_hash") == engine.hash():
            commit = payload.get("machine", {}).get("commit", "?")
            same = b.get("rtl_sha256") is not None and b.get("rtl_sha256") == rtl_digest(engine)
            text = ("synthesized from this very Verilog (rtl_sha256 " + b["rtl_sha256"] + ")" if same else
                    "synthesized from OTHER Verilog than this build's (the RTL changed since, or the record predates "
                    "rtl_sha256): rerun python bench/rtl_engine_area.py")
            return {"source": f"{_shown(path)} (build {b.get('build')}, written at commit {commit}; {text})",
                    "yosys": b.get("yosys", payload.get("yosys", "yosys")), "engine_hash": engine.hash(),
                    "total": b["total"], "units": b.get("units"), "hier_total": b.get("hier_total")}, ""
    why.append(f"{_shown(path)} holds engines " + (", ".join(f"{b.get('engine_hash')} ({b.get('build')})" for b in builds)
                                           or "none"))
    return None, "; ".join(why)


# ---- the table ------------------------------------------------------------------------------------------
def _rng(v) -> str:
    lo, ce, hi = v
    f = (lambda x: f"{x:.0f}") if max(abs(lo), abs(hi)) >= 10 else (lambda x: f"{x:g}")
    return f"{f(lo)}/{f(ce)}/{f(hi)}"


def _verdict(y: float, lo: float, hi: float) -> str:
    if lo <= y <= hi:
        return "in"
    if y > hi:
        return f"yosys +{y - hi:.0f} over high" if hi else "yosys only"
    return f"yosys -{lo - y:.0f} under low"


def format_rows(rec: dict) -> str:
    """The comparison as text: per row and resource, modelled low/central/high beside yosys, with a verdict."""
    lines = [f"build {rec['build']} (engine {rec['engine_hash']}): modelled = flow/boards/resource_model.py "
             f"low/central/high; yosys = {rec['yosys'].split(' (')[0]} synth_xilinx cells",
             f"{'unit':<38}{'res':>7}  {'modelled (low/central/high)':>28}  {'yosys':>9}  verdict"]
    for row in rec["rows"]:
        for r in RESOURCES:
            m = row["modelled"][r]
            if row.get("yosys") is not None:
                y = row["yosys"][r]
                if not any(m) and not y:
                    continue
                lines.append(f"{row['unit']:<38}{r:>7}  {_rng(m):>28}  {y:>9g}  {_verdict(y, m[0], m[2])}")
            elif "yosys_plus_bd" in row:
                y = row["yosys_plus_bd"][r]
                part = rec["part"][r]
                lines.append(f"{row['unit']:<38}{r:>7}  {_rng(m):>28}  {_rng(y):>9}  "
                             f"{100 * y[1] / part:.1f}% of xc7z020 ({part}) at central bd")
            else:
                if any(m):
                    lines.append(f"{row['unit']:<38}{r:>7}  {_rng(m):>28}  {'-':>9}")
    return "\n".join(lines)


__all__ = ["TOP", "XC7Z020", "UNIT_MAP", "PQ_ROW", "unit_map", "row_modules", "build_config", "write_sources", "synth_engine", "summary", "unit_counts",
           "model_rows", "netlist_facts", "engine_area", "format_rows", "unit_of", "memory_of",
           "cached_area", "yosys_reference", "RESULTS_JSON", "RESULTS_ENV"]
