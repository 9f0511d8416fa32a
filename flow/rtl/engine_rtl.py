"""The whole engine in RTL (``vqhls_engine_top``): render its units, build a simulator model once per source
digest, and run Programs through it at its AXI ports (flow/rtl/tb/engine_top.py plays the host).

    run = run_engine(image, engine, inputs, batches=[8, 8])        # Verilator by default
    run.outputs            # [n, out_bytes] uint8, read from the output AXI-Stream
    run.statuses           # STATUS of each run call; run.load_status of the load call
    run.image_cycles       # MEASURED cycles per image: REAL_CYCLES of each run call / its images
    run.op_cycles          # MEASURED cycles of every op, image by image (op_start .. op_done of the core)

Every cycle figure here is measured in RTL simulation (the engine's free-running counter REAL_CYCLES, and
the testbench's count of clock edges between the core's op_start and op_done pulses); the cycle model's
figures are flow.boards.cycle_model's, and callers print them beside, labelled.

Builds are cached in the kit cache (``$VQHLS_CACHE/rtl/engine/<simulator>-<digest>/``), keyed by the rendered
Verilog and the simulator (the testbench is Python, read at run time), so a rerun with the same engine and sources does not rebuild.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine_io import program_image
from engine_io.cache import cache_dir
from flow.compile.engine import EngineConfig
from flow.compile.program import Program
from flow.rtl.cosim import CosimError, find_simulator, run_cocotb
from flow.rtl.render import render_rtl

TOP = "vqhls_engine_top"
TB_MODULE = "flow.rtl.tb.engine_top"
# the units the engine top instantiates, in the order they are read (pq_unit only in a build with the lookup
# unit, engine.pq: ``units``)
ENGINE_UNITS = ("cycle_counter", "requant", "control", "loader", "conv_unit", "pool_unit", "stream_in",
                "stream_out", "engine_core", "engine_top")
PQ_UNITS = ("pq_unit",)


def units(engine: EngineConfig) -> tuple[str, ...]:
    """The units of ``engine``'s top: ENGINE_UNITS, with PQ_UNITS before the core when engine.pq."""
    if not engine.pq:
        return ENGINE_UNITS
    i = ENGINE_UNITS.index("engine_core")
    return ENGINE_UNITS[:i] + PQ_UNITS + ENGINE_UNITS[i:]


# The RTL engine's fill depths in the cycle model's terms (flow.boards.cycle_model, ``depth=``), read off its
# pipelines, where the HLS engine's DEPTH are stated guesses only csynth can replace:
#   conv 7        per tile-loop entry (decode prologue, each tile, the final drain): the loop's last accumulate
#                 leaves the array 7 cycles after its last issue (operand register, mux, product, adder tree,
#                 accumulate), and the next loop's drain reads it (hls_templates/rtl/conv_unit.v.j2)
#   conv_plan 18  per conv op: plan_op's products on one shared multiplier before the first loop
#   maxpool 6, avgpool 10   per pool op: BRAM read, compare / add, write; the average's requantization lane 4 more
#   stream 0, op_gap 2, image_glue 9   the core's sequencer: two cycles from one op's done to the next op's
#                 start, nine per image around its streams (flow/rtl/tb: measured, then written down here)
#   pq 9          per PQ output pixel (hls_templates/rtl/pq_unit.v.j2): the pixel's setup cycle, the lookup stream's
#                 D = 3 cycles behind the encoder's, the drain's last channel through L1 (1) and the
#                 requantization lane (4) before its word is written
#   pq_op 25      per PQ op besides its loads and pixels: the plan's 10 products on one multiplier, and the two
#                 run-time requests' round trips through the loader's burst reader to the testbench's AXI RAM
#                 (cocotbext-axi AxiRamRead: a few cycles; real DDR is slower: DDR_LATENCY once per request)
#   pq_stream 10, pq_row 8, pq_op_stream 18   a PQ op whose LUT streams (pq_unit.v.j2 S_ROWQ .. S_DRN): per
#                 pixel the setup cycle, the encoder's D = 3 tail before the last code, S_DRN (1: the last row
#                 tile's accumulator write lands) and the drain's L1 (1) + requantization lane (4); per row S_ROWQ
#                 (code * OC) and S_ROWG (the request), then 6 cycles from the request to its first beat through
#                 the loader to the testbench's AXI RAM (real DDR: DDR_LATENCY more per row); per op the plan and
#                 the prototypes' request only (25 less the LUT request's 7). Read off the pipeline, then
#                 confirmed to the cycle on random layers (tests/rtl/test_pq_streamed_lut.py)
#   load_chunk 0  per 64-beat chunk of a run-time load: the burst reader keeps up to 8 bursts in flight, so a
#                 load streams one beat per unpacker step after its first beat (the HLS pays DDR_LATENCY +
#                 DEPTH["load"] per chunk: one DATAFLOW region per burst)
# Per call (not per image) the sequencer also reads op 0's and the last op's descriptors (about 130 cycles).
RTL_DEPTH = {"conv": 7, "conv_plan": 18, "pool": 6, "maxpool": 6, "avgpool": 10, "stream": 0, "op_gap": 2,
             "image_glue": 9, "pq": 9, "pq_op": 25, "load_chunk": 0, "pq_row": 8, "pq_stream": 10, "pq_op_stream": 18}


class EngineRtlError(RuntimeError):
    """A Program the RTL engine cannot run yet, or a simulation that did not complete."""


def engine_sources(engine: EngineConfig, bugs: dict | None = None) -> dict[str, str]:
    """{file name: Verilog text} of every unit of the engine top. ``bugs``: {unit: bug name} renders a planted
    bug into that unit (the tests of the tests)."""
    bugs = bugs or {}
    return {f"vqhls_{u}.v": render_rtl(u, engine, **({"bug": bugs[u]} if u in bugs else {})) for u in units(engine)}


def unsupported(prog) -> str | None:
    """Why the RTL engine cannot run the placed Program ``prog`` (one line naming the op), or None. The one
    statement of the rule: run_engine refuses with it, and ``flow.build --engine rtl`` before packaging. No op
    is refused today: every op the compiler places runs (streamed conv weights per oc tile, PQ LUTs on chip or
    streamed per pixel); the hook stays so that a future limit has one place to be stated."""
    del prog
    return None


def _digest(sources: dict[str, str], simulator: str) -> str:
    h = hashlib.sha256(simulator.encode() + b"\0")
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name].encode() + b"\0")
    return h.hexdigest()[:16]


def build_dir_for(engine: EngineConfig, simulator: str, bugs: dict | None = None) -> tuple[Path, list[Path]]:
    """(build folder, source paths) of the engine's model: the sources are written there once."""
    sources = engine_sources(engine, bugs)
    out = cache_dir("rtl", "engine", f"{simulator}-{_digest(sources, simulator)}")
    paths = []
    for name, text in sources.items():
        p = out / "src" / name
        if not p.is_file() or p.read_text() != text:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        paths.append(p)
    return out, paths


@dataclass
class EngineRun:
    """What the testbench saw (every cycle count MEASURED in RTL simulation)."""
    outputs: np.ndarray                  # [n, out_bytes] uint8
    load_status: int
    statuses: list[int]                  # per run call
    real_cycles: list[int]               # REAL_CYCLES per run call
    calls: list[tuple[int, int]]         # (first image, images) per run call
    load_real_cycles: int
    config_hash: int
    op_cycles: np.ndarray                # [images, ops] op_start..op_done per op (cycles)
    info: dict = field(default_factory=dict)
    simulator: str = ""

    @property
    def image_cycles(self) -> list[float]:
        """REAL_CYCLES of each run call divided by its images."""
        return [r / n for r, (_, n) in zip(self.real_cycles, self.calls) if n]


def op_table(ops, n_ops: int) -> np.ndarray:
    """[images, ops] cycles from the (event, op, cycle) log (event 0 start, 1 done), image after image."""
    starts: dict[int, int] = {}
    rows: list[list[int]] = []
    cur = [0] * n_ops
    for ev, op, cyc in np.asarray(ops, np.int64).reshape(-1, 3).tolist():
        if ev == 0:
            starts[op] = cyc
        elif op in starts:
            cur[op] = cyc - starts.pop(op)
            if op == n_ops - 1:
                rows.append(cur)
                cur = [0] * n_ops
    return np.array(rows, np.int64).reshape(-1, n_ops)


def prepare_run(image: bytes, inputs: np.ndarray, batches: list[int] | None,
                raw: bool) -> tuple[int, np.ndarray, list[int]]:
    """(output bytes per image, inputs as [n, in_bytes] uint8, the run calls' image counts) of a run of
    ``image``; EngineRtlError for a Program the RTL engine does not run (``unsupported``), unless ``raw``
    (the image unchecked: a corrupted image, the engine's own checks under test)."""
    if raw:
        out_bytes = program_image.header_words(image)[program_image.WORD["output_bytes"]]
    else:
        out_bytes = program_image.parse_header(image).output_bytes
        why = unsupported(Program.from_bytes(image))
        if why:
            raise EngineRtlError(why)
    inputs = np.ascontiguousarray(inputs, np.uint8).reshape(len(inputs), -1)
    batches = list(batches) if batches else [len(inputs)]
    if sum(batches) != len(inputs):
        raise ValueError(f"batches {batches} do not add up to the {len(inputs)} inputs")
    return int(out_bytes), inputs, batches


def run_engine(image: bytes, engine: EngineConfig, inputs: np.ndarray, *, batches: list[int] | None = None,
               simulator: str = "verilator", in_gaps: float = 0.0, out_stalls: float = 0.0,
               tlast_at: int | None = None, run_before_load: bool = False, run_anyway: bool = False,
               bugs: dict | None = None, seed: int = 1, max_cycles: int = 50_000_000,
               work: Path | None = None, raw: bool = False) -> EngineRun:
    """Load ``image`` into the RTL engine and run ``inputs`` ([n, in_bytes] uint8, the engine's input bytes) in
    run calls of ``batches`` images (default: one call of all). EngineRtlError when the Program holds an op
    the RTL engine does not run (``unsupported``: none today) or the simulation fails. ``raw``: send the
    image as it is, unchecked (the engine's own checks are under test: a corrupted image)."""
    out_bytes, inputs, batches = prepare_run(image, inputs, batches, raw)
    find_simulator(simulator)
    build, sources = build_dir_for(engine, simulator, bugs)
    plan = {"out_bytes": out_bytes, "batches": batches, "in_gaps": in_gaps, "out_stalls": out_stalls,
            "tlast_at": tlast_at, "run_before_load": run_before_load, "run_anyway": run_anyway, "seed": seed,
            "max_cycles": max_cycles}
    keep = work is not None
    work = Path(work) if keep else Path(tempfile.mkdtemp(prefix="engine-", dir=cache_dir("rtl", "runs")))
    work.mkdir(parents=True, exist_ok=True)
    case, result = work / "case.npz", work / "result.npz"
    np.savez(case, image=np.frombuffer(image, np.uint8), inputs=inputs, plan=json.dumps(plan))
    with open(build / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # one build per folder; runs of a built model share it
        res = run_cocotb(sources, TOP, TB_MODULE, build_dir=build / "sim", simulator=simulator, rebuild=False,
                         extra_env={"VQHLS_ENGINE_CASE": str(case), "VQHLS_ENGINE_RESULT": str(result)},
                         seed=seed)
    if res.failed or not result.is_file():
        raise EngineRtlError(f"RTL engine simulation failed: {res.summary()}")
    with np.load(result) as r:
        info = json.loads(str(r["info"]))
        n_ops = program_image.header_words(image)[program_image.WORD["n_ops"]]
        run = EngineRun(outputs=r["outputs"], load_status=int(info["load_status"]),
                        statuses=[int(s) for s in r["statuses"]], real_cycles=[int(c) for c in r["real_cycles"]],
                        calls=[tuple(c) for c in r["calls"].tolist()], load_real_cycles=int(info["load_real_cycles"]),
                        config_hash=int(info["config_hash"]), op_cycles=op_table(r["ops"], n_ops),
                        info=info, simulator=simulator)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return run


__all__ = ["RTL_DEPTH", "op_table", "prepare_run", "ENGINE_UNITS", "PQ_UNITS", "units", "EngineRtlError", "EngineRun", "engine_sources", "build_dir_for", "run_engine",
           "unsupported", "CosimError"]
