"""The deploy bundle format and its loader: everything the board needs to run one compiled model, verified on load.

    path = write_bundle("build/lenet/deploy", program_image=prog.to_bytes(), engine_config=cfg.to_dict(),
                        config_hash=cfg.hash(), ..., hls_dir="build/lenet/hls")
    bundle = load("build/lenet/deploy")        # BundleError unless every file is what was written
    blob = bundle.program_image()

Layout (every path relative to the bundle directory)::

    manifest.json          format version, model, EngineConfig, config hash, register-map version,
                           input/output scales, shapes and signedness, accuracy, tool versions, and
                           ``files``: {path: {sha256, bytes}} of every other file
    program.bin            the placed Program image (Program.to_bytes()), read by the engine over m_axi
    hls/project.json       the HLS project's manifest (EngineConfig, template and content hashes)
    hls/firmware/*         the engine's sources (the sim backend compiles them)
    hls/tb/tb.cpp, hls/tb/bridge.cpp   the testbench main and the C ABI of the C-simulation library,
                           rendered with the firmware (engine_io.gxx_build builds all three for the sim backend)
    vectors/inputs.bin     test inputs (raw bytes; dtype and shape in the manifest), when given
    vectors/expected.bin   their expected outputs
    vqhls.bit, vqhls.hwh   the bitstream and its hardware handoff (same base name, as PYNQ's Overlay
                           expects), when built
    rtl/*.v                the engine in RTL (flow.rtl.engine_rtl.engine_sources of the bundle's EngineConfig,
                           top ``vqhls_engine_top``), when the writer was given it: the rtl backend
                           (host/rtl_backend.py) builds it with Verilator (engine_io.verilator_build). An optional
                           section like the bitstream: a bundle without it still loads (format 1), and only
                           ``backend="rtl"`` needs it

The bundle is written whole or not at all: into a temporary sibling directory, verified with
``load``, then renamed into place (an older bundle is replaced only by that final rename). ``load``
refuses a bundle with a missing, resized, modified or added file, a manifest of another format
version or with a field the host could not use as written (types, shapes, scales, paths), a program
image whose header or CRC32 is wrong (engine_io.program_image), or a manifest whose input / output scale,
signedness or sizes differ from what the program image's header says; every error is a
``BundleError`` whose one-line message names the file and the fix.

This module runs on the board: it imports the standard library, numpy and its siblings in ``engine_io``,
never torch nor the flow. Python 3.8 compatible (the PYNQ images' Python). The writer is ``flow.bundle``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Optional, Tuple

import numpy as np

from engine_io import program_image as _image
from engine_io import regmap as _regmap
from engine_io.files import file_sha256

BUNDLE_FORMAT = 1


MANIFEST = "manifest.json"


PROGRAM = "program.bin"


HLS_DIR = "hls"


HLS_PROJECT = "hls/project.json"


HLS_FIRMWARE = "hls/firmware"


HLS_TB_SOURCES = ("tb/tb.cpp", "tb/bridge.cpp")   # relative to the HLS project, and to the bundle's hls/


VECTORS_INPUTS = "vectors/inputs.bin"


VECTORS_EXPECTED = "vectors/expected.bin"


BITSTREAM = "vqhls.bit"


HWH = "vqhls.hwh"


RTL_DIR = "rtl"                     # the engine's Verilog (manifest section "rtl": dir, top, files in read order)


RTL_TOP = "vqhls_engine_top"


CREATED_BY = "vqhls flow.bundle"


REBUILD = "rebuild it with python -m flow.build"


# Program image header: engine_io/program_image.py (its one definition; stdlib only, it runs on the board)
PROGRAM_MAGIC = _image.MAGIC


PROGRAM_HEADER_WORDS = _image.HEADER_WORDS


def _regmap_version() -> str:
    """8 hex digits naming the register map the host and the engine share (engine_io/regmap.py): a sha1 over
    every register (name, offset, access, width, port), the address range, the CTRL bits and the
    STATUS codes. A bundle built against another register map cannot be driven by this host."""
    regs = [[r.name, r.offset, r.access, r.width, r.port] for r in sorted(_regmap.REGISTERS, key=lambda r: r.offset)]
    consts = sorted((n, getattr(_regmap, n)) for n in dir(_regmap)
                    if n.isupper() and isinstance(getattr(_regmap, n), int)
                    and (n.startswith(("CTRL_", "ERR_")) or n in ("OK", "STATUS_OP_NONE", "ADDRESS_RANGE")))
    text = json.dumps({"registers": regs, "constants": consts}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


REGMAP_VERSION = _regmap_version()


class BundleError(ValueError):
    """A bundle that cannot be written or does not verify; the message names the file and the fix."""


def _err(where, what: str, fix: str = REBUILD) -> BundleError:
    return BundleError(f"bundle {where}: {what}: {fix}")


def check_program_header(blob: bytes, prefix: str, name: str, fix: str = REBUILD,
                          format_version: Optional[int] = None) -> "_image.Header":
    """Magic, format version, size, CRC32, scales and flags of a Program image (engine_io.program_image);
    returns its header. Errors read "{prefix}: {name} <problem>: {fix}"."""
    try:
        return _image.parse_header(blob, format_version)
    except _image.HeaderError as e:
        raise BundleError(f"{prefix}: {name} {e}: {fix}") from None


def io_mismatch(hdr: "_image.Header", in_scale, out_scale, in_unsigned, out_unsigned) -> Optional[str]:
    """What the given scales / signedness contradict in the image's header, or None."""
    for what, given, have in (("input scale", in_scale, hdr.in_scale), ("output scale", out_scale, hdr.out_scale),
                              ("input signedness (unsigned)", in_unsigned, hdr.in_unsigned),
                              ("output signedness (unsigned)", out_unsigned, hdr.out_unsigned)):
        if (float(given) if isinstance(have, float) else bool(given)) != have:
            return f"{what} {given!r} differs from the program image header's {have!r}"
    return None


def _safe_relpath(rel: str) -> bool:
    p = PurePosixPath(rel)
    return (bool(rel) and not p.is_absolute() and ".." not in p.parts and "\\" not in rel and p.as_posix() == rel
            and all(c >= " " for c in rel))


def shape_size(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def check_project_matches(project, engine_config: dict, config_hash: str, where: str) -> None:
    """The HLS project was rendered for this EngineConfig (when its project.json says which)."""
    if not isinstance(project, dict):
        raise BundleError(f"{where}: not an HLS project manifest (a JSON object expected): {REBUILD}")
    if "engine_hash" in project and project["engine_hash"] != config_hash:
        raise BundleError(f"{where}: HLS project built for engine {project['engine_hash']}, the bundle's config hash "
                          f"is {config_hash}: regenerate the HLS project for this EngineConfig")
    if "engine" in project and project["engine"] != engine_config:
        raise BundleError(f"{where}: HLS project's EngineConfig differs from the bundle's engine_config: "
                          "regenerate the HLS project for this EngineConfig")


@dataclass
class Bundle:
    """A verified deploy bundle (see ``load``)."""

    path: Path
    manifest: dict = field(repr=False)

    def program_image(self) -> bytes:
        return (self.path / self.manifest["program"]["file"]).read_bytes()

    def engine_config(self) -> dict:
        return dict(self.manifest["engine_config"])

    @property
    def config_hash(self) -> str:
        return self.manifest["config_hash"]

    @property
    def regmap_version(self) -> str:
        return self.manifest["regmap_version"]

    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def in_scale(self) -> float:
        return float(self.manifest["input"]["scale"])

    @property
    def in_shape(self) -> Tuple[int, int, int]:
        return tuple(self.manifest["input"]["shape"])

    @property
    def in_unsigned(self) -> bool:
        return bool(self.manifest["input"]["unsigned"])

    @property
    def out_scale(self) -> float:
        return float(self.manifest["output"]["scale"])

    @property
    def out_shape(self) -> tuple:
        return tuple(self.manifest["output"]["shape"])

    @property
    def out_unsigned(self) -> bool:
        return bool(self.manifest["output"]["unsigned"])

    def vectors(self):
        """(inputs, expected) as numpy arrays with the manifest's dtype and shape, or None."""
        vec = self.manifest.get("vectors")
        if not vec:
            return None
        out = []
        for key in ("inputs", "expected"):
            ent = vec[key]
            arr = np.fromfile(str(self.path / ent["file"]), dtype=np.dtype(ent["dtype"]))
            out.append(arr.reshape(ent["shape"]))
        return out[0], out[1]

    @property
    def has_bitstream(self) -> bool:
        return bool(self.manifest.get("bitstream"))

    @property
    def bit_path(self) -> Optional[Path]:
        return self.path / self.manifest["bitstream"]["bit"] if self.has_bitstream else None

    @property
    def hwh_path(self) -> Optional[Path]:
        return self.path / self.manifest["bitstream"]["hwh"] if self.has_bitstream else None

    @property
    def hls_dir(self) -> Path:
        return self.path / self.manifest["hls"]["dir"]

    @property
    def has_rtl(self) -> bool:
        """The bundle carries the engine's RTL (``rtl/*.v``: the rtl backend's Verilator build)."""
        return bool(self.manifest.get("rtl"))

    @property
    def rtl_files(self) -> Tuple[Path, ...]:
        """The engine's Verilog files, in the order a simulator reads them (empty without an rtl section)."""
        rtl = self.manifest.get("rtl")
        return tuple(self.path / rel for rel in rtl["files"]) if rtl else ()

    @property
    def rtl_top(self) -> Optional[str]:
        """The RTL engine's top module (None without an rtl section)."""
        rtl = self.manifest.get("rtl")
        return rtl["top"] if rtl else None


_REQUIRED = {"bundle_format": int, "model": str, "method": str, "data": str, "engine_config": dict,
             "config_hash": str, "regmap_version": str, "program": dict, "input": dict, "output": dict,
             "tools": dict, "hls": dict, "files": dict}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _manifest_problem(m: dict) -> Optional[str]:
    """The first field of a manifest (whose top-level types were checked) that the loader or the host
    could not use as written, or None. Every value a Bundle property or the host reads is checked here,
    so a hand-edited manifest fails here with its field named, never later with a traceback."""
    def shape_ok(v) -> bool:
        return isinstance(v, list) and len(v) >= 1 and all(_is_int(s) and s >= 1 for s in v)

    prog = m["program"]
    for key in ("file", "format_version", "bytes", "input_bytes", "output_bytes"):
        if key not in prog:
            return f"'program' lacks {key!r}"
    if not isinstance(prog["file"], str):
        return "'program.file' is not a string"
    for key in ("format_version", "bytes", "input_bytes", "output_bytes"):
        if not _is_int(prog[key]) or prog[key] < 0:
            return f"'program.{key}' is {prog[key]!r}, not a count"
    for sec in ("input", "output"):
        ent = m[sec]
        scale = ent.get("scale")
        if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0):
            return f"'{sec}.scale' is {scale!r}, not a positive finite number"
        if not shape_ok(ent.get("shape")):
            return f"'{sec}.shape' is {ent.get('shape')!r}, not a list of positive integers"
        if not isinstance(ent.get("unsigned"), bool):
            return f"'{sec}.unsigned' is {ent.get('unsigned')!r}, not true/false"
    if len(m["input"]["shape"]) != 3:
        return f"'input.shape' is {m['input']['shape']!r}, not [H, W, C]"
    for key in ("dir", "project", "firmware"):
        rel = m["hls"].get(key, HLS_FIRMWARE if key == "firmware" else None)
        if not (isinstance(rel, str) and _safe_relpath(rel)):
            return f"'hls.{key}' is {rel!r}, not a relative path inside the bundle"
    if not isinstance(m["config_hash"], str) or not m["config_hash"] or any(
            c not in "0123456789abcdefABCDEF" for c in m["config_hash"]):
        return f"'config_hash' is {m['config_hash']!r}, not a hex string"
    for rel, ent in m["files"].items():
        if not isinstance(ent, dict) or not isinstance(ent.get("sha256"), str) or not _is_int(ent.get("bytes")) \
                or ent["bytes"] < 0:
            return f"entry of {rel} lacks sha256/bytes"
    vec = m.get("vectors")
    if vec is not None:
        if not isinstance(vec, dict) or not _is_int(vec.get("count")) or vec["count"] < 0:
            return "malformed 'vectors' section"
        for key, sec in (("inputs", "input"), ("expected", "output")):
            ent = vec.get(key)
            shape = ent.get("shape") if isinstance(ent, dict) else None
            if not (isinstance(ent.get("file") if isinstance(ent, dict) else None, str) and isinstance(shape, list)
                    and len(shape) >= 2 and _is_int(shape[0]) and shape[0] >= 0 and shape_ok(shape[1:])):
                return f"malformed 'vectors.{key}' section (file, shape [count, ...])"
            want = "uint8" if m[sec]["unsigned"] else "int8"
            if ent.get("dtype") != want:
                return f"'vectors.{key}.dtype' is {ent.get('dtype')!r}, the {sec} is {want}"
    bit = m.get("bitstream")
    if bit is not None and not (isinstance(bit, dict) and isinstance(bit.get("bit"), str)
                                and isinstance(bit.get("hwh"), str)):
        return "malformed 'bitstream' section"
    return _rtl_problem(m.get("rtl"))


def _rtl_problem(rtl) -> Optional[str]:
    """What is wrong with the manifest's optional 'rtl' section (None: absent or well formed): a relative
    ``dir``, a Verilog module name ``top``, and ``files``, a non-empty list of distinct ``<dir>/<name>.v``."""
    if rtl is None:
        return None
    if not isinstance(rtl, dict):
        return "malformed 'rtl' section (dir, top, files)"
    rdir = rtl.get("dir")
    if not (isinstance(rdir, str) and _safe_relpath(rdir)):
        return f"'rtl.dir' is {rdir!r}, not a relative path inside the bundle"
    top = rtl.get("top")
    if not (isinstance(top, str) and top[:1].isalpha() and top.replace("_", "").isalnum() and top.isascii()):
        return f"'rtl.top' is {top!r}, not a Verilog module name"
    files = rtl.get("files")
    if not (isinstance(files, list) and files and len(set(map(str, files))) == len(files)):
        return f"'rtl.files' is {files!r}, not a list of distinct Verilog files"
    for rel in files:
        if not (isinstance(rel, str) and _safe_relpath(rel) and rel.startswith(rdir.rstrip("/") + "/")
                and rel.endswith(".v") and "/" not in rel[len(rdir.rstrip("/")) + 1:]):
            return f"'rtl.files' entry {rel!r} is not a .v file in {rdir!r}"
    return None


def load(path) -> Bundle:
    """Open and verify the bundle at ``path``; raises BundleError naming the offending file and the fix."""
    path = Path(path)
    where = os.fspath(path)
    manifest = _read_manifest(path, where)
    _check_listed_files(path, where, manifest["files"])
    _check_sections(where, manifest)
    _check_program(path, where, manifest)
    _check_hls_project(path, where, manifest)
    if manifest["regmap_version"] != REGMAP_VERSION:
        raise _err(where, f"{MANIFEST}: register map {manifest['regmap_version']}, this host drives "
                          f"{REGMAP_VERSION} (engine_io/regmap.py changed since the bundle was built)",
                   f"{REBUILD} (or use the kit that built it)")
    return Bundle(path.resolve(), manifest)


def _read_manifest(path: Path, where: str) -> dict:
    """manifest.json parsed, of this format, with every required field of its type."""
    if not path.is_dir():
        raise _err(where, "no such directory", "build the bundle with python -m flow.build (or check the path)")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise _err(where, f"{MANIFEST} missing (not a bundle, or an incomplete copy)")
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise _err(where, f"{MANIFEST} is not valid JSON ({type(e).__name__} at {_where_json(e)}; truncated or edited)")
    if not isinstance(manifest, dict):
        raise _err(where, f"{MANIFEST} is not a JSON object")
    fmt = manifest.get("bundle_format")
    if fmt != BUNDLE_FORMAT:
        raise _err(where, f"{MANIFEST} has bundle format {fmt!r}, this kit reads format {BUNDLE_FORMAT}",
                   "rebuild the bundle with this kit's python -m flow.build, or use the kit that wrote it")
    for key, typ in _REQUIRED.items():
        if not isinstance(manifest.get(key), typ) or (typ is int and isinstance(manifest.get(key), bool)):
            raise _err(where, f"{MANIFEST}: field {key!r} missing or not a {typ.__name__}")
    problem = _manifest_problem(manifest)
    if problem:
        raise _err(where, f"{MANIFEST}: {problem}")
    return manifest


def _check_listed_files(path: Path, where: str, files: dict) -> None:
    """Every listed file present and unchanged (size, sha256), and nothing else in the folder."""
    for rel, ent in files.items():
        if not _safe_relpath(rel) or rel == MANIFEST:
            raise _err(where, f"{MANIFEST} lists an invalid file path {rel!r}")
        fpath = path / rel
        if not fpath.is_file():
            raise _err(where, f"{rel} missing (listed in {MANIFEST})")
        size = fpath.stat().st_size
        if size != ent["bytes"]:
            raise _err(where, f"{rel} is {size} bytes, {MANIFEST} says {ent['bytes']} (truncated or modified)")
        if file_sha256(fpath) != ent["sha256"]:
            raise _err(where, f"{rel} sha256 mismatch (corrupted or modified)")
    for root, dirs, names in os.walk(path):
        for name in sorted(names) + sorted(d for d in dirs if os.path.islink(os.path.join(root, d))):
            rel = Path(os.path.relpath(os.path.join(root, name), path)).as_posix()
            if rel != MANIFEST and rel not in files:
                raise _err(where, f"{rel} is not listed in {MANIFEST} (a file added to the bundle)",
                           f"remove it, or {REBUILD}")


def _check_vectors(where: str, vec: dict, files: dict) -> list:
    """The vectors section's files, each sized as its dtype and shape say; their paths."""
    try:
        for key in ("inputs", "expected"):
            dt = np.dtype(vec[key]["dtype"])
            shape = [int(s) for s in vec[key]["shape"]]
            if shape_size(shape) * dt.itemsize != files.get(vec[key]["file"], {}).get("bytes"):
                raise _err(where, f"{vec[key]['file']} size disagrees with the vectors' dtype {dt.name} "
                                  f"and shape {shape} in {MANIFEST}")
            if shape[0] != vec["count"]:
                raise _err(where, f"{vec[key]['file']} holds {shape[0]} vectors, {MANIFEST} 'vectors.count' "
                                  f"says {vec['count']}")
        return [vec["inputs"]["file"], vec["expected"]["file"]]
    except (KeyError, TypeError):
        raise _err(where, f"{MANIFEST}: malformed 'vectors' section") from None


def _check_sections(where: str, manifest: dict) -> None:
    """The files the manifest's sections name are listed, and every listed file belongs to a section: a
    dropped 'vectors' or 'bitstream' section leaves its files behind, and a bundle that silently lost its
    self-test vectors or bitstream is not the one written."""
    files = manifest["files"]
    needed = [manifest["program"].get("file"), manifest["hls"].get("project")]
    if manifest.get("vectors"):
        needed += _check_vectors(where, manifest["vectors"], files)
    bit = manifest.get("bitstream")
    if bit:
        needed += [bit.get("bit"), bit.get("hwh")]
    rtl = manifest.get("rtl")
    if rtl:
        needed += list(rtl["files"])
    for rel in needed:
        if rel not in files:
            raise _err(where, f"{MANIFEST} does not list {rel!r}, which the bundle needs")
    hls_dir = str(manifest["hls"].get("dir", "hls")).rstrip("/") + "/"
    for rel in files:
        if rel not in needed and not rel.startswith(hls_dir):
            raise _err(where, f"{rel} is listed in {MANIFEST} but no section of it names the file (a section "
                              f"was removed or edited)")
    fw = manifest["hls"].get("firmware", HLS_FIRMWARE) + "/"
    if not any(rel.startswith(fw) for rel in files):
        raise _err(where, f"no engine sources under {fw} (listed in {MANIFEST})")


def _check_program(path: Path, where: str, manifest: dict) -> None:
    """The program image's own header and checksum, and its sizes, shapes and scales as the manifest says."""
    prog = manifest["program"]
    prog_rel = prog["file"]
    blob = (path / prog_rel).read_bytes()
    hdr = check_program_header(blob, f"bundle {where}", prog_rel, format_version=prog["format_version"])
    prog_in, prog_out = hdr.input_bytes, hdr.output_bytes
    in_shape, out_shape = manifest["input"]["shape"], manifest["output"]["shape"]
    if prog_in != shape_size(in_shape) or prog_out != shape_size(out_shape) or tuple(in_shape) != tuple(hdr.in_shape):
        raise _err(where, f"{prog_rel} moves {list(hdr.in_shape)} ({prog_in} bytes) -> {prog_out} bytes, "
                          f"{MANIFEST} says input {in_shape}, output {out_shape}")
    if (prog["bytes"], prog["input_bytes"], prog["output_bytes"]) != (len(blob), prog_in, prog_out):
        raise _err(where, f"{MANIFEST}: 'program' says {prog['bytes']} bytes moving {prog['input_bytes']} -> "
                          f"{prog['output_bytes']}, {prog_rel} is {len(blob)} bytes moving {prog_in} -> {prog_out}")
    bad = io_mismatch(hdr, manifest["input"]["scale"], manifest["output"]["scale"], manifest["input"]["unsigned"],
                      manifest["output"]["unsigned"])
    if bad:
        raise _err(where, f"{MANIFEST}: {bad} ({prog_rel})")
    vec = manifest.get("vectors")
    if vec:   # the host reads them as [count, *input shape] / [count, *output shape]
        for key, sec in (("inputs", "input"), ("expected", "output")):
            if vec[key]["shape"][1:] != manifest[sec]["shape"]:
                raise _err(where, f"{vec[key]['file']}: {MANIFEST} gives it shape {vec[key]['shape']}, not "
                                  f"[count, *{manifest[sec]['shape']}] (the {sec} shape)")


def _check_hls_project(path: Path, where: str, manifest: dict) -> None:
    """The HLS project is the manifest's engine, and every engine source it lists is in the bundle (the sim
    backend compiles them, Vitis builds them)."""
    try:
        project = json.loads((path / manifest["hls"]["project"]).read_text())
    except ValueError:
        raise _err(where, f"{manifest['hls']['project']} is not valid JSON") from None
    check_project_matches(project, manifest["engine_config"], manifest["config_hash"],
                          f"bundle {where}: {manifest['hls']['project']}")
    proj_files = project.get("files") if isinstance(project.get("files"), list) else []
    hls_root = str(manifest["hls"].get("dir", "hls")).rstrip("/")
    for rel in proj_files:
        if isinstance(rel, str) and rel.startswith("firmware/") and f"{hls_root}/{rel}" not in manifest["files"]:
            raise _err(where, f"{hls_root}/{rel} missing: the HLS project lists it as an engine source")


def _where_json(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno} column {e.colno}"
    return "byte ?"
