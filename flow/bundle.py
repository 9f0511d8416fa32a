"""Writing the deploy bundle (its format and the verifying loader: ``engine_io.bundle``).

    path = write_bundle("build/lenet/deploy", program_image=prog.to_bytes(), engine_config=cfg.to_dict(),
                        config_hash=cfg.hash(), ..., hls_dir="build/lenet/hls")
    bundle = load("build/lenet/deploy")        # BundleError unless every file is what was written
    add_bitstream("build/lenet/deploy", "build/lenet/vivado/out")   # vqhls.bit + vqhls.hwh, verified first

``rtl_sources`` ({file name: Verilog}, flow.rtl.engine_rtl.engine_sources(engine), which flow.build's bundle
stage passes: this module ranks beside flow.rtl and does not render it) puts the engine's RTL in ``rtl/``
with a manifest section ``rtl`` (dir, top, files in read order): what ``backend="rtl"`` builds with Verilator.

    python -m flow.bundle add-bitstream build/lenet/deploy build/lenet/vivado/out

The bundle is written whole or not at all: into a temporary sibling directory, verified with
``load``, then renamed into place (an older bundle is replaced only by that final rename).
``add_bitstream`` takes a bitstream only when its .hwh names the engine IP of the bundle's
``config_hash`` with engine_io/regmap.py's register offsets (``verify_bitstream``, engine_io/hwh.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from engine_io import program_image as _image
from engine_io.bundle import (BITSTREAM, BUNDLE_FORMAT, CREATED_BY, HLS_DIR, HLS_FIRMWARE, HLS_PROJECT,  # noqa: F401
                              HLS_TB_SOURCES, HWH, MANIFEST, PROGRAM, REGMAP_VERSION, RTL_DIR, RTL_TOP,
                              VECTORS_EXPECTED, VECTORS_INPUTS, Bundle, BundleError, check_program_header,
                              check_project_matches, io_mismatch, load, shape_size)
from engine_io import hwh as _hwh
from engine_io.files import file_sha256, swap_into_place


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _codes(arr, unsigned: bool, what: str) -> np.ndarray:
    """Integer activation codes as uint8 (unsigned) or int8, after a range check."""
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.integer):
        raise BundleError(f"write_bundle: {what} must be integer codes (int8/uint8), got dtype {arr.dtype}")
    lo, hi = (0, 255) if unsigned else (-128, 127)
    if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
        raise BundleError(f"write_bundle: {what} outside the {'uint8' if unsigned else 'int8'} range [{lo}, {hi}] "
                          f"(min {int(arr.min())}, max {int(arr.max())})")
    return np.ascontiguousarray(arr.astype(np.uint8 if unsigned else np.int8))


@dataclass(frozen=True)
class _HlsSources:
    """A checked HLS project: its project.json, its firmware directory and the files under it."""

    project: Path
    firmware: Path
    files: Tuple[Path, ...]


@dataclass(frozen=True)
class _Contents:
    """Every file the bundle will hold besides its manifest, checked and ready to write."""

    program_image: bytes
    hls: _HlsSources
    vectors: Optional[Tuple[Tuple[str, np.ndarray], ...]]   # ((rel path, array) for inputs, expected)
    bitstream: Optional[Tuple[Path, Path]]                  # (bit, hwh)
    rtl: Optional[Tuple[Tuple[str, bytes], ...]] = None     # ((file name, Verilog), ...) in read order


def write_bundle(
    out_dir,
    *,
    program_image: bytes,
    engine_config: dict,
    config_hash: str,
    model: str,
    method: str,
    data: str,
    in_scale: float,
    in_shape,
    in_unsigned: bool,
    out_shape,
    out_scale: float,
    out_unsigned: bool,
    hls_dir,
    vectors=None,
    golden_acc: Optional[float] = None,
    bit_exact: Optional[Tuple[int, int]] = None,
    tools: Optional[Dict[str, str]] = None,
    bitstream=None,
    extra: Optional[dict] = None,
    rtl_sources: Optional[Dict[str, str]] = None,
) -> Path:
    """Write the deploy bundle at ``out_dir`` whole or not at all; returns its resolved path.

    ``program_image``: the placed Program's ``to_bytes()``; ``engine_config``: ``EngineConfig.to_dict()``
    and ``config_hash`` its ``hash()``; ``in_shape`` (H, W, C); ``hls_dir``: an HLS project
    (``flow.hls.project.write_project``) whose ``firmware/`` and ``project.json`` are copied;
    ``vectors``: (inputs [N, H, W, C], expected [N, ...]) integer codes or None; ``bit_exact``:
    (images matching golden, images compared); ``tools``: {tool: version}; ``bitstream``:
    (bit path, hwh path) or None; ``extra``: JSON-serializable dict stored as the manifest's ``extra``;
    ``rtl_sources``: {file name: Verilog text} of the engine's RTL (flow.rtl.engine_rtl.engine_sources of
    this EngineConfig, top ``vqhls_engine_top``) or None, written to ``rtl/`` in the given order.
    An existing bundle at ``out_dir`` is replaced only once the new one is complete and verified.
    """
    out_dir = _replaceable(out_dir)
    # ---- validate everything before touching the disk, in this order (the first problem is raised)
    program_image, hdr = _checked_program_image(program_image)
    in_shape, out_shape = _checked_shapes(hdr, in_shape, out_shape)
    engine_config = _checked_engine(engine_config, config_hash)
    _check_io(hdr, in_scale=in_scale, out_scale=out_scale, in_unsigned=in_unsigned, out_unsigned=out_unsigned)
    contents = _Contents(
        program_image=program_image,
        hls=_checked_hls_project(Path(hls_dir), engine_config, config_hash),
        vectors=None if vectors is None else _vector_entries(vectors, in_shape, out_shape, in_unsigned=in_unsigned,
                                                             out_unsigned=out_unsigned),
        bitstream=None if bitstream is None else _checked_bitstream(bitstream),
        rtl=None if rtl_sources is None else _checked_rtl(rtl_sources, config_hash))
    manifest = _manifest(contents, hdr, engine_config=engine_config, config_hash=config_hash, model=model,
                         method=method, data=data, in_scale=in_scale, in_shape=in_shape, in_unsigned=in_unsigned,
                         out_scale=out_scale, out_shape=out_shape, out_unsigned=out_unsigned,
                         golden_acc=golden_acc, bit_exact=bit_exact, tools=tools, extra=extra)
    # ---- write into a temporary sibling, verify, then rename into place
    return _write_verified(out_dir, manifest, contents)


def _replaceable(out_dir) -> Path:
    """``out_dir`` resolved, unless something other than a bundle (or an empty directory) is there."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not (out_dir / MANIFEST).is_file() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BundleError(f"write_bundle: {out_dir} exists and is not a bundle (no {MANIFEST}): refusing to replace it")
    return out_dir


def _checked_program_image(program_image) -> Tuple[bytes, "_image.Header"]:
    """The image as bytes and its header (engine_io.program_image checks magic, version, size, CRC32)."""
    if not isinstance(program_image, (bytes, bytearray, memoryview)):
        raise BundleError(f"write_bundle: program_image must be bytes (Program.to_bytes()), "
                          f"got {type(program_image).__name__}")
    program_image = bytes(program_image)
    hdr = check_program_header(program_image, "write_bundle", "program_image",
                                "pass Program.to_bytes() of the placed program")
    return program_image, hdr


def _checked_shapes(hdr: "_image.Header", in_shape, out_shape) -> Tuple[tuple, tuple]:
    """(in_shape, out_shape) as int tuples, checked against the bytes and first op the header gives."""
    in_shape = tuple(int(s) for s in in_shape)
    out_shape = tuple(int(s) for s in out_shape)
    prog_in, prog_out = hdr.input_bytes, hdr.output_bytes
    if len(in_shape) != 3:
        raise BundleError(f"write_bundle: in_shape must be (H, W, C), got {in_shape}")
    if prog_in != shape_size(in_shape):
        raise BundleError(f"write_bundle: program image reads {prog_in} input bytes, in_shape {in_shape} "
                          f"has {shape_size(in_shape)}")
    if in_shape != tuple(hdr.in_shape):
        raise BundleError(f"write_bundle: in_shape {in_shape} differs from the program's first op "
                          f"{tuple(hdr.in_shape)} (H, W, C): pass the program's own (Program.in_shape)")
    if prog_out != shape_size(out_shape):
        raise BundleError(f"write_bundle: program image writes {prog_out} output bytes, out_shape {out_shape} "
                          f"has {shape_size(out_shape)}")
    return in_shape, out_shape


def _checked_engine(engine_config, config_hash) -> dict:
    """``engine_config`` as JSON gives it back, after checking it and ``config_hash`` (a hex string)."""
    if not isinstance(engine_config, dict) or not engine_config:
        raise BundleError("write_bundle: engine_config must be EngineConfig.to_dict()")
    try:   # as JSON gives it back (tuples -> lists, numpy scalars -> numbers), to compare with project.json
        engine_config = json.loads(json.dumps(engine_config, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise BundleError(f"write_bundle: engine_config not JSON-serializable ({e})") from None
    if not isinstance(config_hash, str) or not config_hash:
        raise BundleError(f"write_bundle: config_hash must be EngineConfig.hash() (a hex string), got {config_hash!r}")
    try:
        int(config_hash, 16)
    except ValueError:
        raise BundleError(f"write_bundle: config_hash {config_hash!r} is not hexadecimal "
                          "(pass EngineConfig.hash())") from None
    return engine_config


def _check_io(hdr: "_image.Header", *, in_scale, out_scale, in_unsigned, out_unsigned) -> None:
    """Positive finite scales, and scales / signedness equal to the program image header's."""
    for name, val in (("in_scale", in_scale), ("out_scale", out_scale)):
        number = isinstance(val, (int, float, np.integer, np.floating)) and not isinstance(val, bool)
        if not (number and math.isfinite(float(val)) and float(val) > 0):
            raise BundleError(f"write_bundle: {name} must be a positive finite number, got {val!r}")
    bad = io_mismatch(hdr, in_scale, out_scale, in_unsigned, out_unsigned)
    if bad:
        raise BundleError(f"write_bundle: {bad}: pass the program's own (Program.in_scale, .out_scale, "
                          ".in_unsigned, .out_unsigned)")


def _checked_hls_project(hls_dir: Path, engine_config: dict, config_hash: str) -> _HlsSources:
    """The HLS project at ``hls_dir``: its project.json (valid, rendered for this engine) and firmware files."""
    hls_project = hls_dir / "project.json"
    firmware = hls_dir / "firmware"
    if not hls_project.is_file():
        raise BundleError(f"write_bundle: {hls_project} missing: hls_dir must be an HLS project (flow.hls.project)")
    firmware_files = sorted(p for p in firmware.rglob("*") if p.is_file()) if firmware.is_dir() else []
    if not firmware_files:
        raise BundleError(f"write_bundle: no engine sources under {firmware}: write the HLS project first")
    missing_tb = [str(hls_dir / rel) for rel in HLS_TB_SOURCES if not (hls_dir / rel).is_file()]
    if missing_tb:
        raise BundleError(f"write_bundle: {', '.join(missing_tb)} missing: write the HLS project first")
    try:
        project = json.loads(hls_project.read_text())
    except ValueError as e:
        raise BundleError(f"write_bundle: {hls_project} is not valid JSON ({e})") from None
    check_project_matches(project, engine_config, config_hash, f"write_bundle: {hls_project}")
    return _HlsSources(hls_project, firmware, tuple(firmware_files))


def _vector_entries(vectors, in_shape: tuple, out_shape: tuple, *, in_unsigned,
                    out_unsigned) -> Tuple[Tuple[str, np.ndarray], ...]:
    """((VECTORS_INPUTS, inputs [N, *in_shape]), (VECTORS_EXPECTED, expected [N, *out_shape])): the
    shapes the host reads them with, as int8 / uint8 codes after a range and shape check."""
    inputs, expected = vectors
    inputs = _codes(inputs, bool(in_unsigned), "vector inputs")
    expected = _codes(expected, bool(out_unsigned), "vector expected outputs")
    if inputs.ndim < 1 or expected.ndim < 1 or inputs.shape[0] != expected.shape[0]:
        raise BundleError(f"write_bundle: vectors must be [N, ...] arrays of the same N, got inputs "
                          f"{list(inputs.shape)} and expected {list(expected.shape)}")
    if shape_size(inputs.shape[1:]) != shape_size(in_shape):
        raise BundleError(f"write_bundle: vector inputs {list(inputs.shape)} are not [N, *{list(in_shape)}]")
    if shape_size(expected.shape[1:]) != shape_size(out_shape):
        raise BundleError(f"write_bundle: vector expected {list(expected.shape)} do not hold "
                          f"{shape_size(out_shape)} outputs ({list(out_shape)}) per image")
    return ((VECTORS_INPUTS, inputs.reshape(inputs.shape[0], *in_shape)),
            (VECTORS_EXPECTED, expected.reshape(expected.shape[0], *out_shape)))


def _checked_bitstream(bitstream) -> Tuple[Path, Path]:
    """(bit, hwh) paths, both existing files."""
    bit_src = (Path(bitstream[0]), Path(bitstream[1]))
    for p in bit_src:
        if not p.is_file():
            raise BundleError(f"write_bundle: bitstream file {p} missing: run the Vivado stage first "
                              "(or pass bitstream=None)")
    return bit_src


def _checked_rtl(rtl_sources, config_hash: str) -> Tuple[Tuple[str, bytes], ...]:
    """((name, Verilog bytes), ...): plain ``<name>.v`` file names, text that is not empty, the top module
    ``RTL_TOP`` defined in one of them, and the engine's CONFIG_HASH constant (the top's ``32'h...``) equal
    to ``config_hash``: RTL rendered for another EngineConfig is refused here, not on the first load call."""
    if not isinstance(rtl_sources, dict) or not rtl_sources:
        raise BundleError("write_bundle: rtl_sources must be {file name: Verilog} "
                          "(flow.rtl.engine_rtl.engine_sources(engine))")
    out = []
    for name, text in rtl_sources.items():
        if not (isinstance(name, str) and name.endswith(".v") and name[:-2].replace("_", "").isalnum()
                and name.isascii()):
            raise BundleError(f"write_bundle: rtl_sources file name {name!r} is not a plain <name>.v")
        if not isinstance(text, str) or not text.strip():
            raise BundleError(f"write_bundle: rtl_sources[{name!r}] is not Verilog text")
        out.append((name, text.encode()))
    tops = [name for name, text in rtl_sources.items() if f"module {RTL_TOP}" in text]
    if not tops:
        raise BundleError(f"write_bundle: no rtl_sources file defines module {RTL_TOP}: pass "
                          "flow.rtl.engine_rtl.engine_sources(engine)")
    if f"32'h{int(config_hash, 16):08X}" not in rtl_sources[tops[0]]:
        raise BundleError(f"write_bundle: the RTL in rtl_sources was rendered for another EngineConfig (its top "
                          f"does not carry CONFIG_HASH {config_hash}): render it for this engine")
    return tuple(out)


def _manifest(contents: _Contents, hdr: "_image.Header", *, engine_config: dict, config_hash: str, model, method,
              data, in_scale, in_shape: tuple, in_unsigned, out_scale, out_shape: tuple, out_unsigned, golden_acc,
              bit_exact, tools, extra) -> Dict[str, Any]:
    """The manifest of a bundle holding ``contents`` (``files`` still empty), checked to serialize as JSON."""
    if bit_exact is not None:
        bit_exact = {"matched": int(bit_exact[0]), "images": int(bit_exact[1])}
    vec = contents.vectors
    manifest: Dict[str, Any] = {
        "bundle_format": BUNDLE_FORMAT,
        "created_by": {"tool": CREATED_BY, "version": _vqhls_version()},
        "model": str(model),
        "method": str(method),
        "data": str(data),
        "engine_config": engine_config,
        "config_hash": config_hash,
        "regmap_version": REGMAP_VERSION,
        "program": {"file": PROGRAM, "format_version": hdr.version, "bytes": len(contents.program_image),
                    "input_bytes": hdr.input_bytes, "output_bytes": hdr.output_bytes},
        "input": {"scale": float(in_scale), "shape": list(in_shape), "unsigned": bool(in_unsigned)},
        "output": {"scale": float(out_scale), "shape": list(out_shape), "unsigned": bool(out_unsigned)},
        "golden_acc": None if golden_acc is None else float(golden_acc),
        "bit_exact": bit_exact,
        "tools": {str(k): str(v) for k, v in (tools or {}).items()},
        "vectors": None if vec is None else {
            "count": int(vec[0][1].shape[0]),
            "inputs": {"file": VECTORS_INPUTS, "dtype": vec[0][1].dtype.name, "shape": list(vec[0][1].shape)},
            "expected": {"file": VECTORS_EXPECTED, "dtype": vec[1][1].dtype.name, "shape": list(vec[1][1].shape)},
        },
        "bitstream": None if contents.bitstream is None else {"bit": BITSTREAM, "hwh": HWH},
        "rtl": None if contents.rtl is None else {"dir": RTL_DIR, "top": RTL_TOP,
                                                  "files": [f"{RTL_DIR}/{name}" for name, _ in contents.rtl]},
        "hls": {"dir": HLS_DIR, "project": HLS_PROJECT, "firmware": HLS_FIRMWARE},
        "extra": extra,
        "files": {},
    }
    try:   # fail before writing anything on an unserializable engine_config / extra
        json.dumps(manifest, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise BundleError(f"write_bundle: manifest not JSON-serializable ({e}): check extra / tools") from None
    return manifest


def _write_contents(tmp: Path, contents: _Contents) -> Dict[str, dict]:
    """Write ``contents`` under ``tmp``; returns the manifest's ``files``: {rel path: {sha256, bytes}}."""
    files: Dict[str, dict] = {}

    def put(rel: str, blob: bytes) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        files[rel] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}

    def copy(src: Path, rel: str) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, path)
        files[rel] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}

    put(PROGRAM, contents.program_image)
    for src in contents.hls.files:
        copy(src, f"{HLS_FIRMWARE}/{src.relative_to(contents.hls.firmware).as_posix()}")
    for rel in HLS_TB_SOURCES:   # the project's tb/ beside its project.json
        copy(contents.hls.project.parent / rel, f"{HLS_DIR}/{rel}")
    copy(contents.hls.project, HLS_PROJECT)
    if contents.vectors is not None:
        for rel, arr in contents.vectors:
            put(rel, arr.tobytes())
    if contents.bitstream is not None:
        copy(contents.bitstream[0], BITSTREAM)
        copy(contents.bitstream[1], HWH)
    for name, blob in contents.rtl or ():
        put(f"{RTL_DIR}/{name}", blob)
    return dict(sorted(files.items()))


def _write_verified(out_dir: Path, manifest: Dict[str, Any], contents: _Contents) -> Path:
    """Write the bundle into a temporary sibling of ``out_dir``, verify it with ``load``, then swap it
    into place; nothing is left behind when any step fails."""
    return _publish(out_dir, manifest, lambda tmp: _write_contents(tmp, contents))


def _publish(out_dir: Path, manifest: Dict[str, Any], write_files: Callable[[Path], Dict[str, dict]]) -> Path:
    """``write_files(tmp)`` (it returns the manifest's ``files``) into a temporary sibling of ``out_dir``,
    the manifest beside them, ``load`` to verify, then the swap into place; nothing is left behind when
    any step fails, and ``out_dir`` is at every moment the old bundle or the new one."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        manifest["files"] = write_files(tmp)
        text = json.dumps(manifest, indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n"
        (tmp / MANIFEST).write_text(text)
        load(tmp)   # a bundle that does not verify never replaces anything
        swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ---------------------------------------------------------------------------
# adding a bitstream built elsewhere (Vitis HLS + Vivado from the build's vendor/run_vendor.sh)
# ---------------------------------------------------------------------------
def verify_bitstream(bit, hwh, config_hash: str, where: str = "bitstream") -> "_hwh.Ip":
    """The engine IP of the .hwh ``hwh``, after checking that ``bit`` and ``hwh`` exist and that the .hwh
    names the engine of ``config_hash`` with engine_io/regmap.py's register offsets; BundleError (one
    line naming the mismatch) otherwise."""
    for p in (Path(bit), Path(hwh)):
        if not p.is_file():
            raise BundleError(f"{where}: {p} missing: run the vendor handoff (vendor/run_vendor.sh) first, or "
                              "name the folder holding vqhls.bit and vqhls.hwh")
    try:
        return _hwh.check_engine(Path(hwh), config_hash)
    except _hwh.HwhError as e:
        raise BundleError(f"{where}: {e}") from None


def add_bitstream(bundle_dir, src_dir, *, bit_name: str = BITSTREAM, hwh_name: str = HWH) -> Path:
    """Add ``src_dir/bit_name`` and ``src_dir/hwh_name`` to the bundle at ``bundle_dir`` as its bitstream
    (vqhls.bit, vqhls.hwh), after ``verify_bitstream`` against the bundle's config hash; returns the
    bundle's path. The bundle is rewritten whole (a verified copy swapped into place): on any error it
    is left byte for byte as it was. A bitstream already in the bundle is replaced."""
    bundle_dir = Path(bundle_dir)
    old = load(bundle_dir)
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise BundleError(f"add-bitstream: {src_dir} is not a folder: name the folder holding {bit_name} and "
                          f"{hwh_name} (the build's vivado/out)")
    bit, hwh = src_dir / bit_name, src_dir / hwh_name
    ip = verify_bitstream(bit, hwh, old.config_hash, "add-bitstream")
    manifest = json.loads((old.path / MANIFEST).read_text())
    manifest["bitstream"] = {"bit": BITSTREAM, "hwh": HWH, "engine_ip": ip.vlnv, "engine_instance": ip.instance}
    keep = [rel for rel in manifest["files"] if rel not in (BITSTREAM, HWH)]

    def write_files(tmp: Path) -> Dict[str, dict]:
        files: Dict[str, dict] = {}
        for rel, src in [(rel, old.path / rel) for rel in keep] + [(BITSTREAM, bit), (HWH, hwh)]:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            files[rel] = {"sha256": file_sha256(dst), "bytes": dst.stat().st_size}
        return dict(sorted(files.items()))

    return _publish(old.path, manifest, write_files)


class _Parser(argparse.ArgumentParser):
    """argparse with the kit's one-line ``error: ...`` and exit code 2 for a malformed command line."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (python -m flow.bundle --help)\n")


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m flow.bundle add-bitstream BUNDLE DIR``: 0 when added, 2 with one ``error:`` line otherwise."""
    ap = _Parser(prog="python -m flow.bundle", description="Deploy bundle tools.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    add = sub.add_parser("add-bitstream", help="add a Vivado bitstream (.bit + .hwh) to a bundle after checking "
                                               "that the .hwh names this bundle's engine",
                         description="Add DIR/vqhls.bit and DIR/vqhls.hwh (the build's vivado/out after "
                                     "vendor/run_vendor.sh) to the deploy bundle BUNDLE. Refused, with the bundle "
                                     "unchanged, unless the .hwh holds the vqhls engine IP built for the bundle's "
                                     "config hash with engine_io/regmap.py's register offsets.")
    add.add_argument("bundle", metavar="BUNDLE", help="the deploy bundle (the build's deploy/ folder)")
    add.add_argument("src", metavar="DIR", help="folder holding the bitstream and its .hwh (the build's vivado/out)")
    add.add_argument("--bit", default=BITSTREAM, help=f"bitstream file name in DIR (default {BITSTREAM})")
    add.add_argument("--hwh", default=HWH, help=f"hardware handoff file name in DIR (default {HWH})")
    args = ap.parse_args(argv)
    if args.command is None:
        ap.error("name a command: add-bitstream")
    try:
        path = add_bitstream(args.bundle, args.src, bit_name=args.bit, hwh_name=args.hwh)
    except (BundleError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    b = load(path)
    print(f"added {b.bit_path.name} + {b.hwh_path.name} to {args.bundle}: engine {b.manifest['bitstream']['engine_ip']} "
          f"(config {b.config_hash}); the bundle is board-ready")
    return 0


def _vqhls_version() -> str:
    try:
        from importlib.metadata import version

        return version("vqhls")
    except Exception:   # not installed (a copied kit on the board)
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
