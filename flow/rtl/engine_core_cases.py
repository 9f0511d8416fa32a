"""Cases of the engine core ``vqhls_engine_core`` in RTL simulation, and their references.

    prog = pool_program(engine, rng, [("max", 2, 2), ("avg", 2, 1)], H=6, W=9, C=12)
    image = prepare(prog, engine).to_bytes()
    run = run_core(image, engine, [CoreCall.images(x_bytes)], simulator="icarus")
    np.array_equal(run.outputs(0, out_bytes), golden_bytes(prog, engine, x))

The core's memories are preloaded through its parameter port with the writes of ``pw_writes`` (the
memories the HLS load call leaves, flow.rtl.onchip.onchip_state, written densely from address 0 up to each
memory's last non-zero entry so that no word the program reads is left undefined in a simulator that starts
memories at X), the run calls go through flow/rtl/tb/engine_core.py. References: the golden model
(flow.compile.program_exec.run_program) for the outputs, the C-sim engine's register-level call
(flow.hls.csim.CsimEngine's library, ``vqhls_call``, the one host.sim uses) for the status, the bytes
consumed, the output bytes and TLAST flags of calls with a misplaced or missing TLAST.

Every cycle figure a CoreRun holds is MEASURED in RTL simulation (testbench clock edges between the core's
op_start and op_done pulses, and between run_start and run_done); ``model_op_cycles`` gives the cycle
model's (flow/boards/cycle_model.py) per-op figures, MODELLED, to print beside them.
"""
from __future__ import annotations

import ctypes
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flow.compile.engine import EngineConfig
from flow.compile.program import AVGPOOL, MAXPOOL, Op, Program
from flow.quant.ops import out_size
from flow.quant.requant import act_range
from flow.rtl.cosim import run_cocotb
from flow.rtl.onchip import PW_MEMS, apply_writes, onchip_state, op_fields, resident
from flow.rtl.engine_rtl import op_table
from flow.rtl.render import render_rtl
from flow.boards.cycle_model import op_cycles
from flow.compile.program_exec import run_program

TOP = "vqhls_engine_core"
TB_MODULE = "flow.rtl.tb.engine_core"
# the units the core instantiates
CORE_UNITS = ("requant", "conv_unit", "pool_unit", "stream_in", "stream_out", "engine_core")


def core_sources(engine: EngineConfig, out_dir: Path, bugs: dict | None = None) -> list[Path]:
    """Render the core and its units into ``out_dir``."""
    bugs = bugs or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for u in CORE_UNITS:
        p = out_dir / f"vqhls_{u}.v"
        p.write_text(render_rtl(u, engine, **({"bug": bugs[u]} if u in bugs else {})))
        paths.append(p)
    return paths


def pw_writes(image: bytes, engine: EngineConfig) -> list[tuple[int, int, int, int]]:
    """Parameter-port writes (pw_mem, pw_addr, pw_col, pw_data) that leave the memories of the HLS load call
    of ``image`` (flow.rtl.onchip.onchip_state): every entry of a memory from address 0 up to its last
    non-zero one (zeros included, so nothing the program reads is undefined), all columns of a channel row.
    Checked: applied to zeroed memories they give exactly onchip_state's."""
    st = onchip_state(image, engine)
    out: list[tuple[int, int, int, int]] = []
    n_ops = len(op_fields(image, engine))
    ow = st.op_words.reshape(-1)
    out += [(PW_MEMS["op_words"], a, 0, int(ow[a])) for a in range(n_ops * st.op_words.shape[1])]
    for name in ("vidx", "vmask"):
        arr = getattr(st, name)
        nz = np.flatnonzero(arr)
        out += [(PW_MEMS[name], a, 0, int(arr[a])) for a in range(int(nz[-1]) + 1 if nz.size else 0)]
    for name in ("cb", "dmem"):
        arr = getattr(st, name)
        nz = np.flatnonzero(np.any(arr != 0, axis=1))
        out += [(PW_MEMS[name], a, 0, int.from_bytes(arr[a].astype(np.uint8).tobytes(), "little"))
                for a in range(int(nz[-1]) + 1 if nz.size else 0)]
    chs = ("ch_bias", "ch_mult", "ch_shift", "ch_res_mult")
    rows = max((int(np.flatnonzero(np.any(getattr(st, n) != 0, axis=0))[-1]) + 1
                if np.any(getattr(st, n) != 0) else 0) for n in chs)
    for name in chs:
        arr = getattr(st, name)
        out += [(PW_MEMS[name], r, c, int(arr[c, r]) & 0xFFFFFFFF) for r in range(rows) for c in range(engine.cols)]
    back = apply_writes(engine, out)
    for name, arr in st.memories().items():
        if not np.array_equal(getattr(back, name), arr):
            raise AssertionError(f"pw_writes: {name} after the writes differs from onchip_state")
    return out


# ---------------------------------------------------------------------------- programs
def pool_op(rng: np.random.Generator, kind: str, *, H: int, W: int, C: int, K: int, stride: int, in_buf: int,
            out_buf: int, in_unsigned: int, name: str) -> Op:
    """A max or average pool (average: mult / 2^shift near 1/(K*K) for half the channels, random others)."""
    OH, OW = out_size(H, K, stride, 0), out_size(W, K, stride, 0)
    if kind == "max":
        lo, hi = act_range(in_unsigned)
        return Op(MAXPOOL, in_buf, out_buf, H=H, W=W, C=C, OH=OH, OW=OW, OC=C, KH=K, KW=K, stride=stride,
                  in_unsigned=in_unsigned, out_unsigned=in_unsigned, lo=lo, hi=hi, name=name)
    lo, hi = act_range(in_unsigned)
    shift = rng.integers(8, 24, C)
    mult = rng.integers(1, 1 << 16, C)
    avg = rng.random(C) < 0.5
    shift = np.where(avg, 20, shift)
    mult = np.where(avg, np.round((1 << 20) / (K * K)), mult).astype(np.int64)
    return Op(AVGPOOL, in_buf, out_buf, H=H, W=W, C=C, OH=OH, OW=OW, OC=C, KH=K, KW=K, stride=stride,
              in_unsigned=in_unsigned, out_unsigned=in_unsigned, lo=lo, hi=hi, name=name,
              arrays=dict(mult=mult, shift=shift))


def pool_program(rng: np.random.Generator, layers: list[tuple[str, int, int]], *, H: int, W: int, C: int,
                 in_unsigned: int = 0, num_bufs: int = 3) -> Program:
    """A chain of pools ("max" | "avg", K, stride) on an HxWxC input, buffers in rotation."""
    ops = []
    buf = 0
    for i, (kind, K, s) in enumerate(layers):
        op = pool_op(rng, kind, H=H, W=W, C=C, K=K, stride=s, in_buf=buf, out_buf=(buf + 1) % num_bufs,
                     in_unsigned=in_unsigned, name=f"{kind}{i}")
        ops.append(op)
        H, W, buf = op.OH, op.OW, op.out_buf
    return Program(ops=ops, in_shape=(ops[0].H, ops[0].W, ops[0].C))


# ---------------------------------------------------------------------------- running the core
@dataclass
class CoreCall:
    """One run call: N_IMAGES, the bytes offered on the input stream, the byte with TLAST (-1: none)."""
    n_images: int
    stream: bytes
    tlast_at: int

    @classmethod
    def images(cls, x: np.ndarray) -> "CoreCall":
        """A well-formed call: every image's bytes, TLAST on the last one. x: [n, in_bytes] uint8."""
        b = np.ascontiguousarray(x, np.uint8).tobytes()
        return cls(len(x), b, len(b) - 1)


@dataclass
class CoreRun:
    """What the testbench saw (cycles MEASURED in RTL simulation, testbench clock edges)."""
    calls: list[dict]                 # status, out (bytes), last (TLAST flags), consumed, cycles (run_start..run_done),
    #                                   x_beats (output beats whose byte was not 0/1: X or Z, recorded as 0)
    ops: list[list[int]]              # [event 0 start / 1 done, op index, cycle]
    readback: list[int]
    simulator: str = ""
    info: dict = field(default_factory=dict)

    def op_cycles(self, n_ops: int) -> np.ndarray:
        """[images run, n_ops] cycles op_start .. op_done of every op, image after image."""
        return op_table(self.ops, n_ops)


def run_core(image: bytes, engine: EngineConfig, calls: list[CoreCall], *, simulator: str = "icarus",
             in_gaps: float = 0.0, out_stalls: float = 0.0, seed: int = 1, bugs: dict | None = None,
             work: Path | None = None, max_cycles: int = 2_000_000) -> CoreRun:
    """Preload ``image``'s on-chip state into the RTL core through its parameter port and make ``calls``.
    ValueError for a Program the RTL does not run (weights streamed at run time, PQ ops)."""
    image = bytes(image)
    skipped = resident(image, engine)
    if skipped:
        raise ValueError(f"ops {skipped} stream their parameters at run time (non-resident conv / PQ): the RTL "
                         "core runs resident ops only")
    fields_ = op_fields(image, engine)
    first, last = fields_[0], fields_[-1]
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="vqhls-core-"))
    sources = core_sources(engine, work / "src", bugs)
    n_words = len(fields_) * 64
    case = {"writes": pw_writes(image, engine), "readback": list(range(n_words)), "prog_ops": len(fields_),
            "in_bytes": first["H"] * first["W"] * first["C"], "out_bytes": last["OH"] * last["OW"] * last["OC"],
            "calls": [{"n_images": c.n_images, "stream": list(c.stream), "tlast_at": c.tlast_at} for c in calls],
            "in_gaps": in_gaps, "out_stalls": out_stalls, "seed": seed, "max_cycles": max_cycles}
    case_path, result_path = work / "case.json", work / "result.json"
    case_path.write_text(json.dumps(case))
    res = run_cocotb(sources, TOP, TB_MODULE, build_dir=work / f"sim-{simulator}", simulator=simulator,
                     extra_env={"VQHLS_CORE_CASE": str(case_path), "VQHLS_CORE_RESULT": str(result_path)},
                     seed=seed)
    if res.failed or not result_path.is_file():
        raise AssertionError(f"engine core simulation failed: {res.summary()}")
    r = json.loads(result_path.read_text())
    for c in r["calls"]:
        c["out"] = bytes(c["out"])
    return CoreRun(calls=r["calls"], ops=r["ops"], readback=r["readback"], simulator=simulator,
                   info={"writes": len(case["writes"]), "sim_ns": res.sim_time_ns})


# ---------------------------------------------------------------------------- references
def golden_bytes(program: Program, x: np.ndarray) -> np.ndarray:
    """The golden model's output bytes [n, out_bytes] (uint8) of ``program`` (placed) on inputs x [n, H, W, C]."""
    y = run_program(program, x)
    return (np.asarray(y, np.int64) & 0xFF).astype(np.uint8).reshape(len(x), -1)


def csim_call(image: bytes, engine: EngineConfig, call: CoreCall) -> dict:
    """The C-sim engine's register-level run call (the bridge's ``vqhls_call``, as host.sim makes it) after a
    load call of ``image``: {status, out, last, consumed}. The bytes offered stop at TLAST (as the DMA's)."""
    from flow.hls.csim import CsimEngine   # deferred: jinja2 + g++ (the C-sim build), only for the TLAST reference
    eng = CsimEngine(engine)
    lib = eng._lib
    with eng._lock:
        eng._loaded[0] = None   # this call replaces whatever program the shared library held
        params = np.frombuffer(image, np.uint8).copy()
        z = ctypes.c_ulonglong()
        chash = ctypes.c_uint()
        one = np.zeros(1, np.uint8)
        st = int(lib.vqhls_call(params.ctypes.data, params.size, 0, one.ctypes.data, 0, -1, ctypes.byref(z),
                                one.ctypes.data, one.ctypes.data, 0, ctypes.byref(z), ctypes.byref(z),
                                ctypes.byref(chash)))
        if st != 0:
            raise AssertionError(f"C-sim load call: status 0x{st:x}")
        fields_ = op_fields(image, engine)
        out_bytes = fields_[-1]["OH"] * fields_[-1]["OW"] * fields_[-1]["OC"]
        take = call.tlast_at + 1 if call.tlast_at >= 0 else len(call.stream)
        inp = np.frombuffer(call.stream[:take] or b"\0", np.uint8).copy()
        cap = call.n_images * out_bytes
        out = np.zeros(max(cap, 1), np.uint8)
        out_last = np.zeros(max(cap, 1), np.uint8)
        consumed, out_len, cyc = ctypes.c_ulonglong(), ctypes.c_ulonglong(), ctypes.c_ulonglong()
        st = int(lib.vqhls_call(params.ctypes.data, params.size, call.n_images, inp.ctypes.data, take,
                                call.tlast_at, ctypes.byref(consumed), out.ctypes.data, out_last.ctypes.data, cap,
                                ctypes.byref(out_len), ctypes.byref(cyc), ctypes.byref(chash)))
        n = int(out_len.value)
    return {"status": st, "out": out[:n].tobytes(), "last": out_last[:n].tolist(), "consumed": int(consumed.value)}


def model_op_cycles(program: Program, engine: EngineConfig) -> list[int]:
    """The cycle model's cycles of every op per image (descriptor fetch included): MODELLED."""
    return [op_cycles(op, engine).cycles for op in program.ops]


__all__ = ["CORE_UNITS", "CoreCall", "CoreRun", "core_sources", "csim_call", "golden_bytes",
           "model_op_cycles", "pool_program", "pw_writes", "run_core"]
