"""Error paths: programs the engine rejects (STATUS), bad inputs, a tampered testbench vector,
missing toolchain pieces, and the build cache."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest

from flow.compile.program import CODEBOOK, Program, replace
from flow.hls import compile as compile_mod
from flow.hls.ap_types import APTypesNotFound, ap_types_dir
from flow.hls.compile import ToolchainError, build, build_key
from flow.hls.csim import CSimMismatch, Engine, EngineError, csim
from flow.hls.project import write_project
from flow.quant.golden import run_program
from hls_testlib import DEFAULT_CFG, SMALL_CFG, conv_op, conv_program, lenet_program, pool_op, program, rand_inputs
from host import regmap


def _status(engine: Engine, prog: Program) -> tuple[int, int | None]:
    with pytest.raises(EngineError) as info:
        engine.load(prog)
    return info.value.code, info.value.op


# ---------------------------------------------------------------------------
# programs the engine refuses (validated before any stream beat)
# ---------------------------------------------------------------------------
@pytest.mark.csim
def test_program_limits_are_reported_with_the_op(small_engine):
    rng = np.random.default_rng(0)
    ok = conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, name="ok")
    nxt = dict(in_buf=1, out_buf=0)
    cases = {
        regmap.ERR_LIMIT: [
            conv_op(rng, H=1, W=1, C=80, OC=8, K=1, pad=0, **nxt),                      # C > max_channels
            conv_op(rng, H=8, W=8, C=8, OC=8, K=7, pad=3, **nxt),                       # K > max_kernel
            conv_op(rng, H=4, W=4, C=16, OC=8, K=3, pad=1, wfmt=CODEBOOK, d=16, n=2, m=4, k=16, **nxt),  # d > d_max
            conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, wfmt=CODEBOOK, d=8, n=2, m=4, k=128, **nxt),   # k > k_max
        ],
        regmap.ERR_BUF_SIZE: [conv_op(rng, H=12, W=12, C=8, OC=16, K=3, pad=1, **nxt)],  # 2304-byte output
        regmap.ERR_BUFFER: [conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, in_buf=1, out_buf=1),
                            conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, in_buf=1, out_buf=3),
                            pool_op(rng, "max", H=4, W=4, C=8, K=2, stride=2, in_buf=1, out_buf=1)],
        regmap.ERR_SHAPE: [replace(conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, **nxt), OH=5)],
        regmap.ERR_OPCODE: [replace(conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, **nxt), opcode=9)],
    }
    for code, bad_ops in cases.items():
        for bad in bad_ops:
            assert _status(small_engine, program(ok, bad)) == (code, 1), (code, bad)
    # a valid program still loads and runs afterwards
    prog = program(ok)
    x = rand_inputs(rng, prog, 1)
    assert np.array_equal(small_engine.predict(prog, x), run_program(prog, x))


@pytest.mark.csim
def test_invalid_parameters_are_reported(engine):
    rng = np.random.default_rng(1)
    prog = conv_program(rng, H=4, W=4, C=8, OC=4, K=3, pad=1)
    prog.ops[0].arrays["shift"][2] = 0                       # shift outside 1..31
    x = rand_inputs(rng, prog, 1)
    with pytest.raises(EngineError) as info:
        engine.predict(prog, x)
    assert (info.value.code, info.value.op) == (regmap.ERR_PARAM, 0)
    prog = conv_program(rng, H=4, W=4, C=8, OC=4, K=3, pad=1, wfmt=CODEBOOK, d=8, k=16)
    prog.ops[0].k = 8                                        # indices now reach past the codebook
    prog.ops[0].arrays["codebook"] = prog.ops[0].arrays["codebook"][:8]
    prog.ops[0].arrays["idx"][:] = 12
    with pytest.raises(EngineError, match="codeword index"):
        engine.predict(prog, x)
    prog = conv_program(rng, H=4, W=4, C=8, OC=4, K=3, pad=1)
    del prog.ops[0].arrays["mult"]                           # missing array
    with pytest.raises(EngineError, match="parameter array"):
        engine.load(prog)
    prog = conv_program(rng, H=4, W=4, C=8, OC=4, K=3, pad=1)
    prog.ops[0].hi = 300                                     # clamp outside the output format
    assert _status(engine, prog) == (regmap.ERR_PARAM, 0)


@pytest.mark.csim
def test_corrupted_images(engine):
    rng = np.random.default_rng(2)
    image = bytearray(lenet_program(rng).to_bytes())
    for word, value, code in ((0, 0x12345678, regmap.ERR_MAGIC), (1, 7, regmap.ERR_VERSION),
                              (2, 10_000, regmap.ERR_HEADER), (5, 3, regmap.ERR_IO)):
        bad = bytearray(image)
        bad[4 * word: 4 * word + 4] = value.to_bytes(4, "little")
        with pytest.raises(EngineError) as info:
            engine.load_image(bytes(bad))
        assert info.value.code == code, (word, info.value)
    with pytest.raises(EngineError) as info:
        engine.load_image(bytes(image[:-4]))                 # truncated
    assert info.value.code == regmap.ERR_HEADER
    engine.load_image(bytes(image))


@pytest.mark.csim
def test_raw_byte_streams(engine):
    rng = np.random.default_rng(3)
    prog = lenet_program(rng)
    x = rand_inputs(rng, prog, 5)
    engine.load_image(prog.to_bytes())
    raw = engine.run_bytes(x.view(np.uint8).reshape(5, -1))
    assert raw.dtype == np.uint8 and raw.shape == (5, prog.output_bytes)
    assert np.array_equal(raw.view(np.int8).reshape(run_program(prog, x).shape), run_program(prog, x))
    with pytest.raises(ValueError, match="bytes"):
        engine.run_bytes(np.zeros((2, 3), np.uint8))


# ---------------------------------------------------------------------------
# inputs checked before anything runs
# ---------------------------------------------------------------------------
@pytest.mark.csim
def test_input_checks(engine):
    rng = np.random.default_rng(4)
    prog = lenet_program(rng)                                # uint8 input [8, 8, 1]
    with pytest.raises(TypeError, match="integer"):
        engine.predict(prog, np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"\[B, 8, 8, 1\]"):
        engine.predict(prog, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"\[B, 8, 8, 1\]"):
        engine.predict(prog, np.zeros((2, 1, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8 range"):
        engine.predict(prog, np.full((1, 8, 8, 1), -1, np.int16))
    with pytest.raises(TypeError, match="numpy"):
        engine.predict(prog, [[1, 2]])
    out = engine.predict(prog, np.zeros((0, 8, 8, 1), np.uint8))
    assert out.shape == (0, 1, 1, 10)
    # wider integer dtypes within range are accepted
    x = rand_inputs(rng, prog, 2)
    assert np.array_equal(engine.predict(prog, x.astype(np.int64)), engine.predict(prog, x))


# ---------------------------------------------------------------------------
# the testbench: exit status and counts
# ---------------------------------------------------------------------------
@pytest.mark.csim
def test_testbench_detects_tampered_expected_output(engine, tmp_path):
    rng = np.random.default_rng(5)
    prog = lenet_program(rng)
    x = rand_inputs(rng, prog, 6)
    want = run_program(prog, x)
    tampered = want.copy()
    tampered[3, 0, 0, 7] += 1 if tampered[3, 0, 0, 7] < 127 else -1
    with pytest.raises(CSimMismatch, match="mismatch") as info:
        csim(engine.project, prog, x, expected=tampered, workdir=tmp_path)
    assert np.array_equal(info.value.outputs, want)
    # the executable itself: exit 1, counts printed
    exe = compile_mod.build_testbench(engine.project)
    files = [str(tmp_path / f"{k}.bin") for k in ("program", "inputs", "outputs", "expected")]
    r = subprocess.run([str(exe), *files], capture_output=True, text=True)
    assert r.returncode == 1
    assert "mismatching images 1 of 6" in r.stdout and "mismatching bytes 1 of 60" in r.stdout
    assert "tb: FAIL" in r.stdout
    # untampered: exit 0
    (tmp_path / "expected.bin").write_bytes((want.astype(np.int64) & 0xFF).astype(np.uint8).tobytes())
    r = subprocess.run([str(exe), *files], capture_output=True, text=True)
    assert r.returncode == 0 and "tb: PASS" in r.stdout
    # an engine error is exit 2, a bad file exit 3
    bad = bytearray(prog.to_bytes())
    bad[0:4] = b"XXXX"
    (tmp_path / "program.bin").write_bytes(bytes(bad))
    assert subprocess.run([str(exe), *files], capture_output=True).returncode == 2
    assert subprocess.run([str(exe), str(tmp_path / "nope.bin"), *files[1:]], capture_output=True).returncode == 3


# ---------------------------------------------------------------------------
# toolchain pieces missing; the build cache
# ---------------------------------------------------------------------------
def test_missing_compiler_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    proj = write_project(DEFAULT_CFG, tmp_path / "p")
    with pytest.raises(ToolchainError, match="apt-get install g\\+\\+"):
        build(proj)


def test_missing_ap_types_names_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.delenv("VQHLS_AP_TYPES", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "hls4ml" else real(name, *a, **k))
    ap_types_dir.cache_clear()
    try:
        with pytest.raises(APTypesNotFound, match="pip install hls4ml"):
            ap_types_dir()
    finally:
        monkeypatch.undo()
        ap_types_dir.cache_clear()
    assert (ap_types_dir() / "ap_int.h").is_file()
    assert "site-packages" in str(ap_types_dir()) or "hls4ml" in str(ap_types_dir())


def test_bad_ap_types_override(monkeypatch, tmp_path):
    monkeypatch.setenv("VQHLS_AP_TYPES", str(tmp_path))
    ap_types_dir.cache_clear()
    try:
        with pytest.raises(APTypesNotFound, match="VQHLS_AP_TYPES"):
            ap_types_dir()
    finally:
        monkeypatch.undo()
        ap_types_dir.cache_clear()


@pytest.mark.csim
@pytest.mark.slow
def test_build_cache_does_not_recompile(tmp_path, monkeypatch):
    monkeypatch.setenv("VQHLS_CACHE", str(tmp_path / "cache"))
    proj = write_project(SMALL_CFG, tmp_path / "p")
    tb, lib = build(proj)
    assert tb.is_file() and lib.is_file()
    assert tb.parent.name == build_key(proj) and build_key(proj).startswith(SMALL_CFG.hash())

    def no_compiler(*a, **k):
        raise AssertionError("recompiled although cached")

    monkeypatch.setattr(compile_mod.subprocess, "Popen", no_compiler)
    assert build(proj) == (tb, lib)
    # a second project rendered from the same config hits the same cache entry
    assert build(write_project(SMALL_CFG, tmp_path / "p2")) == (tb, lib)
    # Engine() for that config renders into the cache and reuses the build as well
    eng = Engine(SMALL_CFG)
    assert eng.library_path == lib
    # an edited source is a different build
    top = proj.firmware_dir / "top.cpp"
    top.write_text(top.read_text() + "\n// edited\n")
    assert build_key(proj) != tb.parent.name
