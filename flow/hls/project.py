"""Render ``hls_templates/`` into an HLS project for one EngineConfig.

    project = write_project(EngineConfig(), "build/hls")

writes, atomically (rendered into a temporary sibling directory, then renamed
into place, so a failure never leaves a half-written project)::

    build/hls/firmware/   engine_config.h memories.h op_plan.h param_loader.h regmap.h codebook_decoder.h
                          systolic_array.h lookup_engine.h post_op.h top.h top.cpp   (the synthesizable
                          engine, docs/engine.md; lookup_engine.h is included only when EngineConfig.pq)
                          cycle_counter.h cycle_counter.cpp vqhls_cycle_counter.v  (the real cycle
                          counter: an RTL blackbox, its C model, its Verilog; flow/hls/cycle_counter.py)
    build/hls/cycle_counter.json   the RTL blackbox description (build.tcl: add_files -blackbox)
    build/hls/tb/         tb.cpp (testbench main) bridge.cpp (ctypes entry points)
                          data/*.bin (test vectors of the program placed for the engine, when given)
    build/hls/build.tcl   Vitis HLS: csim / csynth / cosim / export (-flow impl with impl=1)
    build/hls/Makefile    g++ C-simulation build
    build/hls/project.json
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from flow.boards import cycle_model
from flow.boards.resource_model import check_fit, memories
from flow.compile import program as program_mod
from flow.compile.engine import EngineConfig
from flow.compile.program import Program
from flow.compile.validate import prepare
from flow.hls import cycle_counter, vectors
from engine_io import program_image, regmap
from engine_io.files import swap_into_place
from engine_io.gxx_build import CXXFLAGS   # the Makefile's flags are the g++ build's

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "hls_templates"
PROJECT_NAME = "vqhls"
DEFAULT_PART = "xc7z020clg400-1"
DEFAULT_CLOCK_NS = 10.0

# output path -> template (relative to TEMPLATE_DIR)
TEMPLATES: dict[str, str] = {
    "firmware/engine_config.h": "engine/engine_config.h.j2",
    "firmware/memories.h": "engine/memories.h.j2",
    "firmware/op_plan.h": "engine/op_plan.h.j2",
    "firmware/param_loader.h": "engine/param_loader.h.j2",
    "firmware/regmap.h": "engine/regmap.h.j2",
    "firmware/codebook_decoder.h": "engine/codebook_decoder.h.j2",
    "firmware/systolic_array.h": "engine/systolic_array.h.j2",
    "firmware/lookup_engine.h": "engine/lookup_engine.h.j2",
    "firmware/post_op.h": "engine/post_op.h.j2",
    "firmware/top.h": "engine/top.h.j2",
    "firmware/top.cpp": "engine/top.cpp.j2",
    "tb/tb.cpp": "tb/tb.cpp.j2",
    "tb/bridge.cpp": "tb/bridge.cpp.j2",
    "build.tcl": "tcl/build.tcl.j2",
    "Makefile": "tcl/Makefile.j2",
    **cycle_counter.FILES,     # the real cycle counter: header, C model, Verilog, blackbox JSON
}
FIRMWARE_SOURCES = ("top.cpp",)
MANIFEST = "project.json"


class UnsupportedEngineConfig(ValueError):
    """The EngineConfig asks for something these templates do not implement."""


@dataclass(frozen=True)
class Project:
    """A rendered HLS project on disk."""

    path: Path
    engine: EngineConfig
    files: tuple[str, ...]
    content_hash: str     # sha1 over the rendered files (names + contents)
    template_hash: str    # sha1 over the template sources
    part: str = DEFAULT_PART
    clock_ns: float = DEFAULT_CLOCK_NS

    @property
    def firmware_dir(self) -> Path:
        return self.path / "firmware"

    @property
    def tb_dir(self) -> Path:
        return self.path / "tb"

    @property
    def data_dir(self) -> Path:
        return self.path / "tb" / "data"

    @property
    def build_tcl(self) -> Path:
        return self.path / "build.tcl"

    @property
    def makefile(self) -> Path:
        return self.path / "Makefile"

    @property
    def firmware_sources(self) -> list[Path]:
        return [self.firmware_dir / f for f in FIRMWARE_SOURCES]


def template_hash() -> str:
    """sha1 over every template file (names and bytes): half of the build cache key."""
    h = hashlib.sha1()
    for rel in sorted(set(TEMPLATES.values())):
        h.update(rel.encode() + b"\0" + (TEMPLATE_DIR / rel).read_bytes() + b"\0")
    return h.hexdigest()


def derived_params(engine: EngineConfig) -> dict:
    """Sizes the templates derive from an EngineConfig; raises UnsupportedEngineConfig."""
    problems = []
    if engine.act_bits != 8:
        problems.append(f"act_bits={engine.act_bits} (activations are int8/uint8 bytes: act_bits must be 8)")
    if engine.weight_bits != 8:
        problems.append(f"weight_bits={engine.weight_bits} (the Program stores int8 weights: weight_bits must be 8)")
    if engine.acc_bits != 32:
        problems.append(f"acc_bits={engine.acc_bits} (the numeric contract's accumulator is int32: acc_bits must be 32)")
    if engine.param_bytes % 4:
        problems.append(f"param_bytes={engine.param_bytes} is not a multiple of 4")
    if engine.max_ops > 255:
        problems.append(f"max_ops={engine.max_ops} > 255 (STATUS reports the op index in 8 bits)")
    if engine.num_bufs < 2:
        problems.append(f"num_bufs={engine.num_bufs} < 2 (an op cannot write the buffer it reads)")
    if engine.act_buf_bytes >= 1 << 28:
        problems.append(f"act_buf_bytes={engine.act_buf_bytes} too large")
    if engine.lut_bytes % 2:
        problems.append(f"lut_bytes={engine.lut_bytes} is odd (the LUT memory holds 16-bit entries)")
    if engine.max_stride > 2:
        problems.append(f"max_stride={engine.max_stride} > 2 (the bank crossbar serves strides 1 and 2)")
    if problems:
        raise UnsupportedEngineConfig("EngineConfig not supported by the HLS templates: " + "; ".join(problems))
    k_pow2 = 1 << max(0, (engine.pq_k_max - 1).bit_length())
    # largest squared distance of one subvector: v_max * (255 - (-128))^2, one spare bit for the sentinel
    pq_dist_bits = (engine.pq_v_max * 383 * 383).bit_length() + 1
    slots = engine.slots
    max_dim = max(1, engine.act_buf_bytes // engine.lanes)
    max_groups = max(1, engine.act_buf_bytes // engine.lanes)
    max_oc_tiles = -(-engine.max_channels // engine.cols)
    max_dec = -(-engine.cols * engine.lanes // 2)   # d = 1: lanes d-vectors per column and step
    max_passes = -(-engine.m // engine.n)
    return {
        "pq_k_pow2": k_pow2,
        "pq_k_levels": k_pow2.bit_length() - 1,
        "pq_code_bits": max(1, (k_pow2 - 1).bit_length()),
        "pq_dist_bits": pq_dist_bits,
        "pq_lut_depth": max(1, engine.lut_bytes // 2 // engine.cols),
        "pq_acc_depth": max_oc_tiles,
        "pq_max_pixels": engine.act_buf_bytes,
        "pq_max_span": max(engine.pq_v_max, engine.max_channels),
        "slots": slots,
        "lane_groups": engine.lanes // engine.m,
        "max_passes": max_passes,
        "banks": engine.act_banks,
        "bank_log2": engine.act_banks.bit_length() - 1,
        "bank_words": engine.bank_words,
        "sel_bits": max(1, (engine.m - 1).bit_length()),
        "idx_bits": max(1, (engine.k_max - 1).bit_length()),
        "psum_bits": 17 + max(1, (slots - 1).bit_length()) + 1,
        "param_words": engine.param_bytes // 4,
        "max_dim": max_dim,
        "max_groups": max_groups,
        "max_oc_tiles": max_oc_tiles,
        "max_dec": max_dec,
        "max_tiles": -(-max_groups // engine.acc_groups) * max_oc_tiles + 1,
        "max_tile_cycles": engine.max_kernel ** 2 * -(-engine.max_channels // engine.lanes) * max_passes
                           * engine.acc_groups,
        "max_act_bytes": engine.act_buf_bytes,
        "max_pool_cycles": engine.act_buf_bytes * engine.max_kernel ** 2,
        # widths of the per-image loops' counters and addresses (docs/engine.md, "Counters and addresses"):
        # what each needs, so no loop-carried 32-bit counter is left in a pipelined loop
        # signed: above a bank's words by at most a word row, below 0 by at most pad (< max_kernel) input rows
        "aaddr_bits": _bits((engine.max_kernel + 1) * engine.bank_words) + 1,
        "waddr_bits": _bits(max(engine.vmem_entries, engine.dmem_words, engine.cb_rows) + 1),
        "pos_bits": _bits(max_dim + engine.max_kernel + engine.rows * engine.max_stride) + 1,   # signed pixel position
        "tile_cycle_bits": _bits(engine.max_kernel ** 2 * -(-engine.max_channels // engine.lanes) * max_passes
                                 * engine.acc_groups + engine.rows * engine.acc_groups + 1),
        "pool_cycle_bits": _bits(engine.act_buf_bytes * engine.max_kernel ** 2 + 1),
        "act_byte_bits": _bits(engine.act_buf_bytes + 1),
    }


def _bits(x: int) -> int:
    """Bits of an unsigned counter that must hold values 0 .. x - 1."""
    return max(1, (x - 1).bit_length())


# resource-model memory name -> the C variable in memories.h
_MEMORY_VARS = {"act": "act_mem", "acc": "acc_mem", "vidx": "vidx_mem", "vmask": "vmask_mem", "cbmem": "cb_mem",
                "dmem": "dmem", "chmem": "ch_mem", "ops": "op_words", "proto": "proto_mem", "lut": "lut_mem",
                "pq_acc": "pq_acc"}
_PORT_TYPES = {"s2p": "ram_s2p", "t2p": "ram_t2p", "2r": "ram_2p"}


# read latency of the memories whose output register is used: a BRAM word then leaves through the RAMB36's
# own DO_REG before the crossbar's first mux level, instead of its ~2.5 ns clock-to-out plus routing in the
# same cycle as the mux (docs/engine.md, "Timing structure"); 0 = the tool's default for the binding
_LATENCY = {"act_mem": 2}


def storage_pragmas(engine: EngineConfig) -> list[tuple[str, str, str, int]]:
    """(variable, type, impl, latency) of every on-chip memory, from the resource model (flow.boards.resource_model)."""
    return [(_MEMORY_VARS[m.name], _PORT_TYPES[m.ports], m.impl, _LATENCY.get(_MEMORY_VARS[m.name], 0))
            for m in memories(engine) if m.name in _MEMORY_VARS]


def _context(engine: EngineConfig, part: str, clock_ns: float) -> dict:
    reg_names = [n for n in dir(regmap) if n.isupper() and isinstance(getattr(regmap, n), int)]
    regs = sorted(((n, getattr(regmap, n)) for n in reg_names
                   if not n.startswith(("ERR_", "STATUS_OP", "CTRL_")) and n != "OK"), key=lambda kv: (kv[1], kv[0]))
    ctrl_bits = sorted(((n, getattr(regmap, n)) for n in reg_names if n.startswith("CTRL_")), key=lambda kv: kv[1])
    status_codes = sorted(((n, getattr(regmap, n)) for n in reg_names if n.startswith("ERR_") or n == "OK"),
                          key=lambda kv: kv[1])
    return {
        "cfg": engine.to_dict(),
        "d": derived_params(engine),
        "engine_hash": engine.hash(),
        "config_hash": regmap.config_hash_u32(engine.hash()),
        "magic": program_mod.MAGIC,
        "format_version": program_mod.FORMAT_VERSION,
        "header_words": program_mod.HEADER_WORDS,
        "header_fields": list(program_image.HEADER_FIELDS),
        "crc_first_word": program_image.CRC_START // 4,
        "io_in_unsigned": program_image.IO_IN_UNSIGNED,
        "io_out_unsigned": program_image.IO_OUT_UNSIGNED,
        "desc_words": program_mod.DESC_WORDS,
        "desc_fields": list(program_mod.DESC_FIELDS),
        # C enum name of each descriptor word; PQ fields get a prefix (K and k differ only by case)
        "desc_enum": [(f, "D_PQ_" + f.upper() if f in program_mod.PQ_FIELDS else "D_" + f.upper())
                      for f in program_mod.DESC_FIELDS],
        "opcodes": dict(program_mod.OPCODES),
        "wfmt_dense": program_mod.DENSE,
        "wfmt_codebook": program_mod.CODEBOOK,
        "wfmt_codebook_shared": program_mod.CODEBOOK_SHARED,
        "regs": regs,
        "ctrl_bits": ctrl_bits,
        "status_codes": status_codes,
        "status_op_none": regmap.STATUS_OP_NONE,
        "ports": [(p, regmap.PORT_OFFSETS[p])
                  for p in ("n_images", "params", "config_hash", "cycles", "status", "real_cycles")],
        "cc": cycle_counter.context(),
        "cycle_model": {"ddr_latency": cycle_model.DDR_LATENCY, "acc_distance": cycle_model.ACC_DISTANCE,
                 "depth": sorted(cycle_model.DEPTH.items())},
        "storage": storage_pragmas(engine),
        "firmware_sources": list(FIRMWARE_SOURCES),
        "part": part,
        "clock_ns": clock_ns,
        "project_name": PROJECT_NAME,
        # the emitted Makefile's default interpreter: a name on PATH, never this machine's venv path (the
        # project is copied to other machines); `make PYTHON=...` overrides it
        "python": "python3",
        "cxxflags": " ".join(CXXFLAGS),
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _render_one(env: jinja2.Environment, template: str, context: dict) -> str:
    banner = f"Generated by vqhls (flow.hls) from hls_templates/{template} -- do not edit."
    return env.get_template(template).render(banner=banner, **context)


def render(engine: EngineConfig, *, part: str = DEFAULT_PART, clock_ns: float = DEFAULT_CLOCK_NS) -> dict[str, str]:
    """Every project file as text, keyed by its path in the project."""
    env = _environment()
    context = _context(engine, part, clock_ns)
    return {out: _render_one(env, tpl, context) for out, tpl in TEMPLATES.items()}


def _content_hash(files: dict[str, bytes]) -> str:
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name] + b"\0")
    return h.hexdigest()


def rendered_hash(engine: EngineConfig, *, part: str = DEFAULT_PART, clock_ns: float = DEFAULT_CLOCK_NS) -> str:
    """The content hash a project rendered now for ``engine`` would have (test vectors excluded)."""
    return _content_hash({name: text.encode() for name, text in render(engine, part=part, clock_ns=clock_ns).items()})


def write_project(
    engine: EngineConfig,
    outdir: str | os.PathLike,
    *,
    program: Program | None = None,
    inputs=None,
    expected=None,
    part: str = DEFAULT_PART,
    clock_ns: float = DEFAULT_CLOCK_NS,
    board: str | None = None,
    fit_level: str = "high",
) -> Project:
    """Render the HLS project for ``engine`` into ``outdir`` (replacing an earlier project there).

    With ``board`` the engine is first checked against the board's resource budget
    (flow.boards.resource_model.check_fit, at the ``fit_level`` end of the modelled range: "high", or
    "central" for a build the fit stage accepted at its central estimate): a config that does not
    fit raises ResourceError, listing every over-used resource, and nothing is written.

    With ``program`` (and ``inputs`` [B,H,W,C], optionally ``expected`` [B,OH,OW,OC])
    the test vectors go to ``tb/data/`` for ``make csim`` and Vitis csim/cosim.
    Refuses to replace a directory that is not a vqhls project.
    """
    outdir = Path(outdir).resolve()
    if outdir.exists() and not (outdir / MANIFEST).is_file() and any(outdir.iterdir()):
        raise FileExistsError(f"{outdir} exists and is not a vqhls HLS project: refusing to overwrite it")
    if (inputs is not None or expected is not None) and program is None:
        raise ValueError("test vectors need the program they belong to (program=...)")

    if board is not None:
        check_fit(engine, board, level=fit_level)
    texts = render(engine, part=part, clock_ns=clock_ns)
    files: dict[str, bytes] = {name: text.encode() for name, text in texts.items()}
    if program is not None:
        program = prepare(program, engine)   # the testbench loads it as the board does: placed and checked
        files["tb/data/program.bin"] = program.to_bytes()
        if inputs is not None:
            files["tb/data/inputs.bin"] = vectors.check_inputs(program, inputs).tobytes()
        if expected is not None:
            exp = vectors.outputs_to_bytes(program, expected)
            if inputs is not None and exp.shape[0] != np.asarray(inputs).shape[0]:
                raise ValueError(f"expected has {exp.shape[0]} images, inputs {np.asarray(inputs).shape[0]}")
            files["tb/data/expected.bin"] = exp.tobytes()
    tpl_hash = template_hash()
    content_hash = _content_hash({k: v for k, v in files.items() if not k.startswith("tb/data/")})
    manifest = {
        "name": PROJECT_NAME,
        "engine": engine.to_dict(),
        "engine_hash": engine.hash(),
        "template_hash": tpl_hash,
        "content_hash": content_hash,
        "part": part,
        "clock_ns": clock_ns,
        "files": sorted(files),
    }
    files[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()

    outdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=outdir.parent))
    try:
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        swap_into_place(tmp, outdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Project(outdir, engine, tuple(sorted(files)), content_hash, tpl_hash, part, clock_ns)


def load_project(path: str | os.PathLike) -> Project:
    """The Project written earlier at ``path``."""
    path = Path(path).resolve()
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a vqhls HLS project (no {MANIFEST}): write it with write_project()") from None
    engine = EngineConfig(**manifest["engine"])
    return Project(path, engine, tuple(manifest["files"]), manifest["content_hash"], manifest["template_hash"],
                   manifest.get("part", DEFAULT_PART), manifest.get("clock_ns", DEFAULT_CLOCK_NS))

