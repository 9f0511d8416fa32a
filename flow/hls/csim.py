"""C-simulation of the engine: through the testbench executable (``csim``) or
in-process through the shared-library bridge (``CsimEngine.predict``), like
hls4ml's ``compile()`` / ``predict()``.

    outputs = csim(project, program, x_int)              # tb executable on files
    engine = CsimEngine(EngineConfig())                      # renders + compiles once (cached)
    outputs = engine.predict(program, x_int)             # in-process, batched

Inputs are integer activation codes [B, H, W, C] (int8, or uint8 when the first
op reads unsigned); outputs are [B, OH, OW, OC] int8/uint8 codes.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from flow.compile.engine import EngineConfig
from flow.compile.program import Program
from flow.compile.validate import prepare, validate_image
from flow.hls import vectors
from flow.hls.project import Project, load_project, rendered_hash, template_hash, write_project
from engine_io import gxx_build, regmap
from engine_io.cache import cache_root


class CSimError(RuntimeError):
    """The testbench could not run (bad files, crash)."""


class CSimMismatch(AssertionError):
    """The testbench ran and its outputs differ from the expected ones."""

    def __init__(self, message: str, outputs: np.ndarray):
        super().__init__(message)
        self.outputs = outputs


class InvariantError(RuntimeError):
    """A C-simulation check of a fact the engine's pragmas rely on failed (e.g. a loop read the buffer it writes)."""


class EngineError(RuntimeError):
    """The engine reported a non-zero STATUS (the program does not fit it, or a parameter is invalid)."""

    def __init__(self, status: int, context: str = ""):
        self.status = status
        self.code, self.op = regmap.decode_status(status)
        msg = regmap.status_message(status) if status != 0xFFFFFFFF else "bridge error: malformed stream or no program loaded"
        super().__init__(f"{context}engine STATUS 0x{status:04x}: {msg}")


def _as_project(project: Project | str | os.PathLike) -> Project:
    return project if isinstance(project, Project) else load_project(project)


def engine_sources(project: Project) -> gxx_build.EngineSources:
    """What ``engine_io.gxx_build`` builds of a rendered project (the same files a deploy bundle ships)."""
    return gxx_build.EngineSources(project.path, project.engine.hash())


def csim(
    project: Project | str | os.PathLike,
    program: Program,
    inputs: np.ndarray,
    *,
    expected: np.ndarray | None = None,
    workdir: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> np.ndarray:
    """Run the testbench executable of ``project`` on ``inputs``; return outputs [B, OH, OW, OC].

    With ``expected`` the testbench compares byte for byte and a difference
    raises CSimMismatch (carrying the outputs). A non-zero engine STATUS raises
    EngineError. Files go to ``workdir`` (default: a temporary directory).
    """
    project = _as_project(project)
    x = vectors.check_inputs(program, inputs)
    program = prepare(program, project.engine)
    exe = gxx_build.build_testbench(engine_sources(project))
    with tempfile.TemporaryDirectory(prefix="vqhls-csim-") as tmp:
        wd = Path(workdir) if workdir is not None else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        paths = {k: wd / f"{k}.bin" for k in ("program", "inputs", "outputs", "expected")}
        paths["program"].write_bytes(program.to_bytes())
        paths["inputs"].write_bytes(x.tobytes())
        args = [str(exe), str(paths["program"]), str(paths["inputs"]), str(paths["outputs"])]
        if expected is not None:
            paths["expected"].write_bytes(vectors.outputs_to_bytes(program, expected).tobytes())
            args.append(str(paths["expected"]))
        n = x.shape[0]
        if n == 0:
            return vectors.bytes_to_outputs(program, np.zeros(0, np.uint8), 0)
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise CSimError(f"testbench timed out after {timeout} s: {' '.join(args)}") from exc
        log = proc.stdout + proc.stderr
        if proc.returncode == 2:
            m = re.search(r"STATUS 0x([0-9a-f]+)", log)
            if m:
                raise EngineError(int(m.group(1), 16), "testbench: ")
            raise CSimError(f"testbench: engine stream error:\n{log}")
        if proc.returncode not in (0, 1):
            raise CSimError(f"testbench failed (exit {proc.returncode}): {' '.join(args)}\n{log}")
        raw = np.frombuffer(paths["outputs"].read_bytes(), dtype=np.uint8)
        if raw.size != n * program.output_bytes:
            raise CSimError(f"testbench wrote {raw.size} output bytes, expected {n * program.output_bytes}\n{log}")
        outputs = vectors.bytes_to_outputs(program, raw, n)
        if proc.returncode == 1:
            summary = "\n".join(line for line in log.splitlines() if "mismatch" in line)
            raise CSimMismatch(f"C-simulation differs from the expected outputs:\n{summary}", outputs)
        return outputs


def _image_sizes(image: bytes) -> tuple[int, int]:
    """(input bytes, output bytes) per image from a program image's header."""
    hdr = np.frombuffer(bytes(image[:32]), dtype="<u4")
    return int(hdr[5]), int(hdr[6])


# ---------------------------------------------------------------------------
# in-process bridge
# ---------------------------------------------------------------------------
_LIBS: dict[str, tuple[ctypes.CDLL, threading.Lock, list]] = {}
_LIBS_LOCK = threading.Lock()


def _open_library(path: Path) -> tuple[ctypes.CDLL, threading.Lock, list]:
    """One handle, lock and 'loaded program' slot per library file (dlopen shares statics per path)."""
    key = str(path.resolve())
    with _LIBS_LOCK:
        if key not in _LIBS:
            _LIBS[key] = (gxx_build.open_library(path), threading.Lock(), [None])
        return _LIBS[key]


def engine_project_dir(engine: EngineConfig) -> Path:
    """Where CsimEngine() keeps the project it renders for ``engine`` (inside the build cache)."""
    return cache_root() / "projects" / f"{engine.hash()}-{template_hash()[:12]}"


class CsimEngine:
    """The engine for one EngineConfig, compiled into a shared library and called in-process.

    Renders the project (into the build cache unless ``project`` is given) and
    compiles it once; later instances with the same config reuse the build.
    Thread-safe (calls into one library are serialized).
    """

    def __init__(self, engine_config: EngineConfig | None = None, *, project: Project | str | os.PathLike | None = None,
                 exact: bool = False):
        if project is not None:
            self.project = _as_project(project)
            if engine_config is not None and engine_config != self.project.engine:
                raise ValueError("engine_config differs from the project's EngineConfig")
        else:
            engine_config = engine_config or EngineConfig()
            pdir = engine_project_dir(engine_config)
            try:
                self.project = load_project(pdir)
                # the rendering depends on flow code too (derived sizes, the resource and cycle models)
                if self.project.content_hash != rendered_hash(engine_config):
                    raise ValueError("stale project")
            except (FileNotFoundError, ValueError, KeyError):
                self.project = write_project(engine_config, pdir)
        self.config: EngineConfig = self.project.engine
        self.exact = exact   # the exact-width datapath types of synthesis (VQHLS_EXACT_TYPES)
        self.library_path = gxx_build.build_library(engine_sources(self.project), exact=exact)
        self._lib, self._lock, self._loaded = _open_library(self.library_path)
        self._violations = [int(self._lib.vqhls_csim_violations())]
        self.config_hash: int = int(self._lib.vqhls_config_hash())
        expected = regmap.config_hash_u32(self.config.hash())
        if self.config_hash != expected:
            raise RuntimeError(f"library {self.library_path} reports CONFIG_HASH 0x{self.config_hash:08x}, "
                               f"expected 0x{expected:08x}: stale build cache? (delete {cache_root()})")
        # the CYCLES register after the last call: MODELLED cycles (flow/boards/cycle_model.py), not measured
        self.modelled_cycles: int = 0
        # the REAL_CYCLES register after the last call: MEASURED cycles, or None where there is no real
        # counter -- always None here (C-simulation: the counter is its C model, engine_io/regmap.REAL_CYCLES_NA)
        self.real_cycles: int | None = None
        self._image_key: bytes | None = None
        self._image_sizes: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"CsimEngine({self.config!r}, library={str(self.library_path)!r})"

    def _load_locked(self, image: bytes) -> None:
        key = hashlib.sha1(image).digest()
        self._image_key = key
        if self._loaded[0] == key:
            return
        self._loaded[0] = None
        in_b, out_b, cyc = ctypes.c_ulonglong(), ctypes.c_ulonglong(), ctypes.c_ulonglong()
        status = int(self._lib.vqhls_load(image, len(image), ctypes.byref(in_b), ctypes.byref(out_b), ctypes.byref(cyc)))
        self.modelled_cycles = int(cyc.value)
        self.real_cycles = regmap.real_cycles(int(self._lib.vqhls_real_cycles()))
        self._check_invariants()
        if status != 0:
            raise EngineError(status, "load: ")
        self._loaded[0] = key

    def _check_invariants(self) -> None:
        """Raise InvariantError when an invariant check of the C-simulation failed during the last call (the
        facts behind the engine's DEPENDENCE pragmas and FIFO depths; the engine prints which on stderr)."""
        count = int(self._lib.vqhls_csim_violations())
        seen = self._violations[0]
        self._violations[0] = count
        if count > seen:
            raise InvariantError(f"{count - seen} C-simulation invariant check(s) failed in this call (see stderr): "
                                 "the engine relies on a fact its pragmas assert and the program broke it")

    def load(self, program: Program) -> None:
        """Place ``program`` for this engine, check it on the host (ProgramError), then make the load call
        (EngineError on a non-zero STATUS)."""
        self.load_image(prepare(program, self.config).to_bytes(), validate=False)

    def load_image(self, image: bytes, *, validate: bool = True) -> None:
        """Load a parameter image (``Program.to_bytes()`` of a placed program, e.g. from a bundle) as the
        board's load() does: the host check first (``validate=False`` skips it, to exercise the hardware's
        own checks), then the load call."""
        image = bytes(image)
        if validate:
            validate_image(image, self.config)
        with self._lock:
            self._load_locked(image)
        self._image_sizes = _image_sizes(image)

    def run_bytes(self, inputs: np.ndarray) -> np.ndarray:
        """Stream raw input bytes [B, input_bytes] (uint8) through the loaded image; returns [B, output_bytes] uint8.

        The byte-level path the host's sim backend mirrors (no dtype/shape interpretation)."""
        if getattr(self, "_image_sizes", None) is None or self._loaded[0] is None:
            raise RuntimeError("no program loaded: call load_image() (or load()) first")
        in_bytes, out_bytes = self._image_sizes
        x = np.ascontiguousarray(inputs)
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != in_bytes:
            raise ValueError(f"inputs must be uint8 bytes [B, {in_bytes}], got {x.dtype} {list(x.shape)}")
        out = np.empty((x.shape[0], out_bytes), dtype=np.uint8)
        if x.shape[0] == 0:
            return out
        with self._lock:
            if self._loaded[0] != self._image_key:
                raise RuntimeError("another CsimEngine on this library loaded a different program: load_image() again")
            cyc = ctypes.c_ulonglong()
            status = int(self._lib.vqhls_run(x.ctypes.data, out.ctypes.data, x.shape[0], ctypes.byref(cyc)))
            self.modelled_cycles = int(cyc.value)
            self.real_cycles = regmap.real_cycles(int(self._lib.vqhls_real_cycles()))
            self._check_invariants()
        if status != 0:
            raise EngineError(status, "run: ")
        return out

    # vqhls_csim_dump's memories: name, C dtype of its values, shape (from the EngineConfig)
    _DUMPS = (("op_words", np.uint32, lambda e: (e.max_ops, 64)), ("vidx", np.uint32, lambda e: (e.vmem_entries,)),
              ("vmask", np.uint32, lambda e: (e.vmem_entries,)), ("cb", np.int8, lambda e: (e.cb_rows, e.d_max)),
              ("dmem", np.int8, lambda e: (e.dmem_words, e.lanes)), ("ch_bias", np.int32, lambda e: (e.cols, e.ch_rows)),
              ("ch_mult", np.int32, lambda e: (e.cols, e.ch_rows)), ("ch_shift", np.uint32, lambda e: (e.cols, e.ch_rows)),
              ("ch_res_mult", np.int32, lambda e: (e.cols, e.ch_rows)),
              ("act", np.uint8, lambda e: (e.num_bufs, e.act_banks, e.bank_words, e.lanes)))

    def onchip_memories(self, image: bytes | None = None, inputs: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The engine's own on-chip parameter memories (memories.h, copied out by the bridge's vqhls_csim_dump):
        name -> array (op_words [max_ops, 64] uint32, vidx / vmask [vmem_entries] uint32, cb [cb_rows, d_max]
        int8, dmem [dmem_words, lanes] int8, ch_bias / ch_mult / ch_res_mult [cols, ch_rows] int32, ch_shift
        [cols, ch_rows] uint8; and act [num_bufs, banks, bank_words, lanes] uint8, the activation buffers):
        the reference of flow/rtl/onchip.py. With ``image``: after its load call on a
        fresh private instance of the library (all memories zero before; EngineError on a non-zero STATUS),
        and then, with ``inputs`` (raw bytes [B, input_bytes] uint8), after a run call on them; without
        ``image``: the memories of this library instance as they are now."""
        if image is None:
            with self._lock:
                return self._dump(self._lib)
        lib = gxx_build.open_private(self.library_path)
        try:
            image = bytes(image)
            in_b, out_b, cyc = ctypes.c_ulonglong(), ctypes.c_ulonglong(), ctypes.c_ulonglong()
            status = int(lib.vqhls_load(image, len(image), ctypes.byref(in_b), ctypes.byref(out_b), ctypes.byref(cyc)))
            if status != 0:
                raise EngineError(status, "load (onchip_memories): ")
            if inputs is not None:
                x = np.ascontiguousarray(inputs, dtype=np.uint8)
                out = np.empty((x.shape[0], int(out_b.value)), np.uint8)
                if x.ndim != 2 or x.shape[1] != int(in_b.value):
                    raise ValueError(f"inputs must be uint8 bytes [B, {int(in_b.value)}], got {list(x.shape)}")
                status = int(lib.vqhls_run(x.ctypes.data, out.ctypes.data, x.shape[0], ctypes.byref(cyc)))
                if status != 0:
                    raise EngineError(status, "run (onchip_memories): ")
            return self._dump(lib)
        finally:
            gxx_build.close_private(lib._handle)

    def _dump(self, lib: ctypes.CDLL) -> dict[str, np.ndarray]:
        fn = lib.vqhls_csim_dump
        fn.restype, fn.argtypes = ctypes.c_ulonglong, [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulonglong]
        out = {}
        for which, (name, dtype, shape) in enumerate(self._DUMPS):
            arr = np.zeros(shape(self.config), dtype)
            size = int(fn(which, arr.ctypes.data, arr.nbytes))
            if size != arr.nbytes:
                raise RuntimeError(f"vqhls_csim_dump({which}) reports {size} bytes for {name}, expected {arr.nbytes}")
            out[name] = arr.astype(np.uint8) if name == "ch_shift" else arr
        return out

    def predict(self, program: Program, inputs: np.ndarray) -> np.ndarray:
        """Run ``inputs`` [B, H, W, C] through ``program``; outputs [B, OH, OW, OC] (int8 or uint8)."""
        x = vectors.check_inputs(program, inputs)
        n = x.shape[0]
        image = prepare(program, self.config).to_bytes()
        out = np.empty((n, program.output_bytes), dtype=np.uint8)
        with self._lock:
            self._load_locked(image)
            if n == 0:
                return vectors.bytes_to_outputs(program, out, 0)
            cyc = ctypes.c_ulonglong()
            status = int(self._lib.vqhls_run(x.ctypes.data, out.ctypes.data, n, ctypes.byref(cyc)))
            self.modelled_cycles = int(cyc.value)
            self.real_cycles = regmap.real_cycles(int(self._lib.vqhls_real_cycles()))
            self._check_invariants()
        if status != 0:
            raise EngineError(status, "predict: ")
        return vectors.bytes_to_outputs(program, out, n)


def predict(engine_config: EngineConfig, program: Program, inputs: np.ndarray) -> np.ndarray:
    """One-shot ``CsimEngine(engine_config).predict(program, inputs)`` (the build is cached)."""
    return CsimEngine(engine_config).predict(program, inputs)


__all__ = ["CSimError", "CSimMismatch", "CsimEngine", "EngineError", "csim", "predict", "engine_project_dir",
           "engine_sources"]
