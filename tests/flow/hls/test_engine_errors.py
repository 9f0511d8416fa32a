"""Error paths: programs the host refuses (ProgramError), the hardware's own cheap checks (STATUS of the
load call), the stream protocol (ERR_NOT_LOADED, ERR_TLAST) at the engine's ports, bad inputs, a tampered
testbench vector, missing toolchain pieces, and the build cache."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from flow.compile.layout import PlacementError, place
from flow.compile.program import CODEBOOK, DESC_FIELDS, DESC_WORDS, HEADER_WORDS, Program, replace, seal
from flow.compile.validate import ProgramError, validate
from flow.hls.csim import CSimMismatch, CsimEngine, EngineError, csim, engine_sources
from flow.hls.project import Project, write_project
from flow.compile.program_exec import run_program
from hls_testlib import (DEFAULT_CFG, SMALL_CFG, conv_op, conv_program, lenet_program, pool_op, pq_op, program,
                         rand_inputs)
from engine_io import gxx_build, regmap
from engine_io.gxx_build import CXXFLAGS, APTypesNotFound, ToolchainError, ap_types_dir, build_key, find_cxx
from engine_io.cache import cache_root


def _refusal(engine: CsimEngine, prog: Program) -> tuple[int, int | None]:
    """(code, op) of the ProgramError the host check raises when ``prog`` is loaded; nothing reaches the engine."""
    with pytest.raises(ProgramError) as info:
        engine.load(prog)
    e = info.value
    if e.op is not None:
        assert str(e).startswith(f"op {e.op}"), str(e)
    return e.code, e.op


def _as_bytes(outputs: np.ndarray) -> np.ndarray:
    """Output codes [B, ...] as the bytes the output stream carries, [B, output_bytes]."""
    return (outputs.astype(np.int64) & 0xFF).astype(np.uint8).reshape(outputs.shape[0], -1)


# ---------------------------------------------------------------------------
# programs the host refuses (flow.compile.validate, before the load call)
# ---------------------------------------------------------------------------
@pytest.mark.csim
def test_program_limits_are_reported_with_the_op(small_engine):
    """SMALL_CFG: lanes 4, max_channels 64, max_kernel 5, d_max 8, k_max 64, pq_v_max 16, pq_k_max 64,
    3 buffers, max_ops 8. Op 0 writes a 4x4x8 tensor into buffer 1; the refused op is op 1. An op whose
    input is not that tensor reads buffer 2, which no op wrote (placement follows shapes through buffers)."""
    rng = np.random.default_rng(0)
    ok = conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, name="ok")
    nxt = dict(in_buf=1, out_buf=0)
    fresh = dict(in_buf=2, out_buf=0)
    cases = {
        regmap.ERR_LIMIT: [
            conv_op(rng, H=1, W=1, C=80, OC=8, K=1, pad=0, **fresh),                     # C > max_channels
            conv_op(rng, H=1, W=1, C=8, OC=72, K=1, pad=0, **fresh),                     # OC > max_channels
            conv_op(rng, H=4, W=4, C=8, OC=8, K=7, pad=3, **nxt),                        # K > max_kernel
            conv_op(rng, H=4, W=4, C=16, OC=8, K=3, pad=1, wfmt=CODEBOOK, d=16, n=2, m=4, k=16, **fresh),  # d > d_max
            conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, wfmt=CODEBOOK, d=8, n=2, m=4, k=128, **nxt),    # k > k_max
            pq_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, v=18, Kp=4, **nxt),               # v > pq_v_max
            pq_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, v=9, Kp=80, ties=False, **nxt),  # K > pq_k_max
        ],
        regmap.ERR_BUFFER: [conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, in_buf=1, out_buf=1),
                            conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, in_buf=1, out_buf=3),
                            conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, in_buf=1, out_buf=0, res_buf=1),
                            pool_op(rng, "max", H=4, W=4, C=8, K=2, stride=2, in_buf=1, out_buf=1)],
        regmap.ERR_SHAPE: [replace(conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, **nxt), OH=5),
                           replace(pool_op(rng, "max", H=4, W=4, C=8, K=2, stride=2, **nxt), pad=1)],
        regmap.ERR_OPCODE: [replace(conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, **nxt), opcode=9),
                            replace(pool_op(rng, "max", H=4, W=4, C=8, K=2, stride=2, **nxt), opcode=0)],
    }
    for code, bad_ops in cases.items():
        for bad in bad_ops:
            got = _refusal(small_engine, program(ok, bad))
            assert got == (code, 1), (regmap.STATUS_NAMES[code], bad)
    # program-wide: more ops than max_ops (op None)
    chain = [conv_op(rng, H=2, W=2, C=4, OC=4, K=1, pad=0, in_buf=i % 2, out_buf=1 - i % 2) for i in range(9)]
    assert _refusal(small_engine, program(*chain)) == (regmap.ERR_HEADER, None)
    # a valid program still loads and runs afterwards
    prog = program(ok)
    x = rand_inputs(rng, prog, 1)
    assert np.array_equal(small_engine.predict(prog, x), run_program(prog, x))


def _placement_refusals() -> dict[str, tuple[Program, tuple[int, int | None]]]:
    """Programs place() refuses (or trips over) on SMALL_CFG (act_banks 8, bank_words 64, max_stride 2,
    ch_rows 64, vmem_entries 4096) and the ProgramError validate() gives each."""
    rng = np.random.default_rng(10)
    ok = conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, name="ok")
    fresh = dict(in_buf=2, out_buf=0)
    return {
        # a 12x12x16 output: 2304 bytes > act_buf_bytes 2048 (96 words per bank > 64)
        "buf-size": (program(ok, conv_op(rng, H=12, W=12, C=8, OC=16, K=3, pad=1, **fresh)), (regmap.ERR_BUF_SIZE, 1)),
        "stride": (program(ok, conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, stride=3, in_buf=1, out_buf=0)),
                   (regmap.ERR_LIMIT, 1)),
        # 5 ops x 16 rows of 4 channels = 80 channel-parameter rows > ch_rows 64
        "ch-rows": (program(*[conv_op(rng, H=1, W=1, C=64, OC=64, K=1, pad=0, in_buf=i % 2, out_buf=1 - i % 2)
                              for i in range(5)]), (regmap.ERR_LIMIT, None)),
        # one output-channel tile of dense weights (streamed when they do not fit): 4 x 5 x 5 x 16 = 1600
        # words > dmem_words 1024
        "dmem-tile": (program(conv_op(rng, H=3, W=3, C=64, OC=8, K=5, pad=2)), (regmap.ERR_LIMIT, 0)),
        # an unknown weight format: op_need() divides by d = 0 (ZeroDivisionError, not even a PlacementError)
        "wfmt": (program(ok, replace(conv_op(rng, H=4, W=4, C=8, OC=8, K=3, pad=1, in_buf=1, out_buf=0), wfmt=5)),
                 (regmap.ERR_OPCODE, 1)),
    }


PLACE_FAILS = (PlacementError, ZeroDivisionError)


@pytest.mark.parametrize("case", sorted(_placement_refusals()))
def test_validator_codes_of_placement_refusals(case):
    """The host validator classifies these (code, op); on the placed program it would be the same."""
    prog, want = _placement_refusals()[case]
    with pytest.raises(PLACE_FAILS):
        place(prog, SMALL_CFG)
    with pytest.raises(ProgramError) as info:
        validate(prog, SMALL_CFG)
    assert (info.value.code, info.value.op) == want, str(info.value)


@pytest.mark.csim
@pytest.mark.parametrize("case", sorted(_placement_refusals()))
def test_engine_load_reports_placement_refusals_with_code(small_engine, case):
    """CsimEngine.load (place -> validate -> load call) reports what place() refuses with the validator's code."""
    prog, want = _placement_refusals()[case]
    assert _refusal(small_engine, prog) == want


@pytest.mark.csim
def test_invalid_parameters_are_reported(engine):
    rng = np.random.default_rng(1)
    prog = conv_program(rng, H=4, W=4, C=8, OC=4, K=3, pad=1)
    prog.ops[0].arrays["shift"][2] = 0                       # shift outside 1..31
    x = rand_inputs(rng, prog, 1)
    with pytest.raises(ProgramError, match=r"shift\[2\]") as info:
        engine.predict(prog, x)
    assert (info.value.code, info.value.op) == (regmap.ERR_PARAM, 0)
    prog = conv_program(rng, H=4, W=4, C=8, OC=4, K=3, pad=1, wfmt=CODEBOOK, d=8, k=16)
    prog.ops[0].k = 8                                        # indices now reach past the codebook
    prog.ops[0].arrays["codebook"] = prog.ops[0].arrays["codebook"][:8]
    prog.ops[0].arrays["idx"][:] = 12
    with pytest.raises(ProgramError, match="codeword index") as info:
        engine.predict(prog, x)
    assert (info.value.code, info.value.op) == (regmap.ERR_PARAM, 0)
    prog = conv_program(rng, H=4, W=4, C=8, OC=4, K=3, pad=1)
    del prog.ops[0].arrays["mult"]                           # missing array
    with pytest.raises(ProgramError, match="parameter array") as info:
        engine.load(prog)
    assert (info.value.code, info.value.op) == (regmap.ERR_OFFSET, 0)
    prog = conv_program(rng, H=4, W=4, C=8, OC=4, K=3, pad=1)
    prog.ops[0].hi = 300                                     # clamp outside the output format
    assert _refusal(engine, prog) == (regmap.ERR_PARAM, 0)


@pytest.mark.csim
def test_corrupted_images_refused_on_the_host(engine):
    """load_image() checks an image on the host first: a refused image never reaches the load call, so
    the program loaded before stays loaded."""
    rng = np.random.default_rng(2)
    prog = place(lenet_program(rng), DEFAULT_CFG)
    image = bytearray(prog.to_bytes())
    x = rand_inputs(rng, prog, 2)
    want = _as_bytes(run_program(prog, x))
    engine.load_image(bytes(image))
    for word, value, code in ((0, 0x12345678, regmap.ERR_MAGIC), (1, 7, regmap.ERR_VERSION),
                              (2, 10_000, regmap.ERR_HEADER), (5, 3, regmap.ERR_IO), (7, 1, regmap.ERR_CRC)):
        bad = bytearray(image)
        bad[4 * word: 4 * word + 4] = value.to_bytes(4, "little")
        with pytest.raises(ProgramError) as info:
            engine.load_image(bytes(bad))
        assert (info.value.code, info.value.op) == (code, None), (word, str(info.value))
    with pytest.raises(ProgramError) as info:
        engine.load_image(bytes(image[:-4]))                 # truncated
    assert info.value.code == regmap.ERR_HEADER
    with pytest.raises(ProgramError) as info:                 # not placed: the descriptors lack the derived fields
        engine.load_image(lenet_program(np.random.default_rng(2)).to_bytes())
    assert (info.value.code, info.value.op) == (regmap.ERR_PARAM, 0)
    assert np.array_equal(engine.run_bytes(x.view(np.uint8).reshape(2, -1)), want)


# ---------------------------------------------------------------------------
# the hardware's own cheap checks: the load call (validate=False sends the image straight to it)
# ---------------------------------------------------------------------------
def _desc(i: int, field: str) -> int:
    """Byte offset of descriptor word ``field`` of op ``i`` in a program image."""
    return 4 * (HEADER_WORDS + i * DESC_WORDS + DESC_FIELDS.index(field))


def _word(image: bytes, pos: int) -> int:
    return int.from_bytes(image[pos:pos + 4], "little")


def _edit(image: bytes, edits, fix_crc: bool = True) -> bytes:
    """``image`` with (byte offset, value, bytes) edits; with ``fix_crc`` header word 7 is recomputed
    (program.seal: zlib.crc32 over everything after word 7) so only the engine's other checks can catch the edit."""
    b = bytearray(image)
    for pos, value, n in edits:
        b[pos:pos + n] = (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")
    if fix_crc:
        return seal(b)
    return bytes(b)


@pytest.mark.csim
def test_hardware_checks_of_the_load_call(engine):
    """Each corruption reaches the engine's load call (validate=False) and comes back as STATUS (code, op);
    the host validator refuses the same image (with its own classification where noted)."""
    rng = np.random.default_rng(6)
    prog = place(lenet_program(rng), DEFAULT_CFG)             # conv1, pool1, conv2 (codebook k 64), pool2, fc
    assert all(op.resident for op in prog.ops)               # every op's weights are copied by the load call
    image = prog.to_bytes()
    off_shift0, off_shift4 = _word(image, _desc(0, "off_shift")), _word(image, _desc(4, "off_shift"))
    off_idx2 = _word(image, _desc(2, "off_idx"))
    k2 = prog.ops[2].k
    NONE = None
    cases = [
        # name, edits, fix the CRC, engine (code, op), host (code, op) when it classifies differently
        ("magic", [(0, 0x12345678, 4)], True, (regmap.ERR_MAGIC, NONE), None),
        ("version", [(4, 7, 4)], True, (regmap.ERR_VERSION, NONE), None),
        ("n_ops > max_ops", [(8, 10_000, 4)], True, (regmap.ERR_HEADER, NONE), None),
        ("n_ops 0", [(8, 0, 4)], True, (regmap.ERR_HEADER, NONE), None),
        ("desc_words", [(12, DESC_WORDS // 2, 4)], True, (regmap.ERR_HEADER, NONE), None),
        ("crc word", [(28, 1, 4)], False, (regmap.ERR_CRC, NONE), None),
        ("body byte", [(len(image) - 1, image[-1] ^ 0x5A, 1)], False, (regmap.ERR_CRC, NONE), None),
        # the CRC is checked before any descriptor: an edited descriptor without the fix-up is ERR_CRC
        ("k > k_max, stale crc", [(_desc(2, "k"), 300, 4)], False, (regmap.ERR_CRC, NONE), None),
        ("k > k_max", [(_desc(2, "k"), 300, 4)], True, (regmap.ERR_LIMIT, 2), None),
        ("C > max_channels", [(_desc(4, "C"), 600, 4)], True, (regmap.ERR_LIMIT, 4), None),
        ("kernel > max_kernel", [(_desc(2, "KH"), 9, 4), (_desc(2, "KW"), 9, 4), (_desc(2, "pad"), 4, 4)], True,
         (regmap.ERR_LIMIT, 2), None),
        ("stride > max_stride", [(_desc(2, "stride"), 3, 4)], True, (regmap.ERR_LIMIT, 2), (regmap.ERR_SHAPE, 2)),
        ("opcode", [(_desc(3, "opcode"), 9, 4)], True, (regmap.ERR_OPCODE, 3), None),
        ("out_buf == in_buf", [(_desc(3, "out_buf"), prog.ops[3].in_buf, 4)], True, (regmap.ERR_BUFFER, 3), None),
        ("tensor > bank", [(_desc(0, "H"), DEFAULT_CFG.bank_words + 1, 4)], True, (regmap.ERR_BUF_SIZE, 0), None),
        ("placed field CW", [(_desc(2, "CW"), 5, 4)], True, (regmap.ERR_PARAM, 2), None),
        ("cb_base past cb_rows", [(_desc(2, "cb_base"), DEFAULT_CFG.cb_rows - 1, 4)], True, (regmap.ERR_LIMIT, 2),
         (regmap.ERR_PARAM, 2)),
        ("shift 0", [(off_shift0 + 4 * 2, 0, 4)], True, (regmap.ERR_PARAM, 0), None),
        ("shift 32", [(off_shift4, 32, 4)], True, (regmap.ERR_PARAM, 4), None),
        ("codeword index k", [(off_idx2 + 2 * 3, k2, 2)], True, (regmap.ERR_PARAM, 2), None),
        ("input bytes", [(20, 3, 4)], True, (regmap.ERR_IO, NONE), None),
    ]
    for name, edits, fix_crc, want, host in cases:
        bad = _edit(image, edits, fix_crc)
        with pytest.raises(EngineError) as info:
            engine.load_image(bad, validate=False)
        assert (info.value.code, info.value.op) == want, (name, str(info.value))
        # a failed load call leaves nothing loaded
        with pytest.raises(RuntimeError, match="no program loaded"):
            engine.run_bytes(np.zeros((1, prog.input_bytes), np.uint8))
        with pytest.raises(ProgramError) as info:
            engine.load_image(bad)
        assert (info.value.code, info.value.op) == (host or want), (name, str(info.value))
    # the untouched image loads and runs bit-exact (nothing of the failed loads lingers on chip)
    x = rand_inputs(rng, prog, 3)
    engine.load_image(image, validate=False)
    assert engine.modelled_cycles > 0
    assert np.array_equal(engine.run_bytes(x.view(np.uint8).reshape(3, -1)), _as_bytes(run_program(prog, x)))


# ---------------------------------------------------------------------------
# the stream protocol at the engine's ports: a C++ driver against the firmware
# ---------------------------------------------------------------------------
DRIVER_CPP = r"""// vqhls test driver: load and run calls of vqhls_engine with AXI-Stream beats as the test wants
// them (malformed ones included), one line per call on stdout.
//   driver (load IMAGE.bin | run INPUTS.bin N_IMAGES LAST_AT)...    LAST_AT: the beat with TLAST, -1 none
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "top.h"

static std::vector<unsigned char> slurp(const char *path) {
    std::vector<unsigned char> b;
    FILE *f = std::fopen(path, "rb");
    if (!f) {
        std::printf("error cannot open %s\n", path);
        std::exit(3);
    }
    int c;
    while ((c = std::fgetc(f)) != EOF) b.push_back((unsigned char)c);
    std::fclose(f);
    return b;
}

int main(int argc, char **argv) {
    std::vector<vqhls::word_t> params(1, vqhls::word_t(0));   // DDR: the image of the last load command
    for (int a = 1; a < argc;) {
        hls::stream<vqhls::axis_byte_t> in("in"), out("out");
        ap_uint<32> hash = 0, status = 0xDEADu;
        ap_uint<64> cycles = 0;
        unsigned n = 0;
        long last_at = -1;
        if (!std::strcmp(argv[a], "load") && a + 1 < argc) {
            std::vector<unsigned char> img = slurp(argv[a + 1]);
            params.assign(img.size() / 4 + 1, vqhls::word_t(0));
            for (size_t i = 0; i + 3 < img.size(); i += 4)
                params[i / 4] = (unsigned)img[i] | ((unsigned)img[i + 1] << 8) | ((unsigned)img[i + 2] << 16) |
                                ((unsigned)img[i + 3] << 24);
            a += 2;
        } else if (!std::strcmp(argv[a], "run") && a + 3 < argc) {
            std::vector<unsigned char> x = slurp(argv[a + 1]);
            n = (unsigned)std::atoi(argv[a + 2]);
            last_at = std::atol(argv[a + 3]);
            for (size_t i = 0; i < x.size(); i++) {
                vqhls::axis_byte_t beat;
                beat.data = x[i];
                beat.keep = 1;
                beat.strb = 1;
                beat.last = (long)i == last_at ? 1 : 0;
                in.write(beat);
            }
            a += 4;
        } else {
            std::printf("error usage at %s\n", argv[a]);
            return 3;
        }
        ap_uint<64> real_cycles = 0;   // REAL_CYCLES: the counter's C model, "not available" in C-simulation
        vqhls_engine(in, out, &params[0], n, &hash, &cycles, &status, &real_cycles);
        size_t in_left = 0;
        while (!in.empty()) {
            in.read();
            in_left++;
        }
        std::vector<unsigned char> bytes;
        std::vector<size_t> lasts;
        while (!out.empty()) {
            vqhls::axis_byte_t beat = out.read();
            if (beat.last) lasts.push_back(bytes.size());
            bytes.push_back((unsigned char)(unsigned)beat.data);
        }
        std::printf("%s status=%u hash=%u cycles=%llu in_left=%zu out_beats=%zu tlast_at=", n ? "run" : "load",
                    (unsigned)status, (unsigned)hash, (unsigned long long)cycles, in_left, bytes.size());
        for (size_t i = 0; i < lasts.size(); i++) std::printf("%s%zu", i ? "," : "", lasts[i]);
        std::printf(" out=");
        for (size_t i = 0; i < bytes.size(); i++) std::printf("%02x", bytes[i]);
        std::printf("\n");
    }
    return 0;
}
"""


def build_stream_driver(project: Project) -> Path:
    """The driver compiled with g++ against the project's firmware (cached next to the engine builds)."""
    cxx, _ = find_cxx()
    tag = hashlib.sha1(DRIVER_CPP.encode() + b"\0" + " ".join(CXXFLAGS).encode()).hexdigest()[:12]
    out = cache_root() / "drivers" / f"{build_key(engine_sources(project))}-{tag}"
    exe = out / "stream_driver"
    if exe.is_file():
        return exe
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as work:
        src = Path(work) / "driver.cpp"
        src.write_text(DRIVER_CPP)
        cmd = [cxx, *CXXFLAGS, "-I", str(project.firmware_dir), "-I", str(ap_types_dir()), str(src),
               str(project.firmware_dir / "top.cpp"), "-o", str(Path(work) / "stream_driver")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"$ {' '.join(cmd)}\n{r.stderr[-6000:]}"   # warnings (ap_types) are fine
        os.replace(Path(work) / "stream_driver", exe)
    return exe


def _drive(exe: Path, *args) -> list[dict]:
    r = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = []
    for line in r.stdout.splitlines():
        kind, *fields = line.split()
        f = dict(kv.split("=", 1) for kv in fields)
        status = int(f["status"])
        calls.append({"kind": kind, "status": status, "code_op": regmap.decode_status(status),
                      "hash": int(f["hash"]), "cycles": int(f["cycles"]), "in_left": int(f["in_left"]),
                      "out_beats": int(f["out_beats"]),
                      "tlast_at": [int(v) for v in f["tlast_at"].split(",") if v],
                      "out": np.frombuffer(bytes.fromhex(f["out"]), np.uint8)})
    return calls


@pytest.mark.csim
def test_stream_protocol_not_loaded_and_tlast(small_engine, tmp_path):
    """A fresh engine (the driver is its own process: nothing loaded) answers a run call with ERR_NOT_LOADED
    and consumes nothing; a failed load leaves it unloaded. Input TLAST must be on the call's final byte:
    an early one stops the reading there (the rest stays in the stream), the images not computed come out as
    zeros, and the output stream still carries N x output_bytes beats with TLAST on the final one; a missing
    one is reported too. The program stays loaded after a stream error."""
    rng = np.random.default_rng(7)
    prog = place(program(conv_op(rng, H=4, W=4, C=4, OC=8, K=3, pad=1, name="conv"),
                         pool_op(rng, "max", H=4, W=4, C=8, K=2, stride=2, in_buf=1, out_buf=0, name="pool")),
                 SMALL_CFG)
    validate(prog, SMALL_CFG)
    IN, OUT, N = prog.input_bytes, prog.output_bytes, 3                      # 64 and 32 bytes per image
    x = rand_inputs(rng, prog, N)
    want = _as_bytes(run_program(prog, x)).reshape(-1)
    image = prog.to_bytes()
    (tmp_path / "prog.bin").write_bytes(image)
    (tmp_path / "bad.bin").write_bytes(_edit(image, [(len(image) - 1, image[-1] ^ 1, 1)], fix_crc=False))
    (tmp_path / "x.bin").write_bytes(x.tobytes())
    exe = build_stream_driver(small_engine.project)
    xs, last = tmp_path / "x.bin", N * IN - 1
    calls = _drive(exe, "run", xs, N, last,                  # 0: before any load call
                   "load", tmp_path / "bad.bin",             # 1: corrupted image
                   "run", xs, N, last,                       # 2: still nothing loaded
                   "load", tmp_path / "prog.bin",            # 3
                   "run", xs, N, last,                       # 4: well-formed
                   "run", xs, N, IN + 5,                     # 5: TLAST early, in image 1
                   "run", xs, N, IN - 1,                     # 6: TLAST on every image's final byte (here: image 0's)
                   "run", xs, N, -1,                         # 7: TLAST missing
                   "run", xs, N - 1, last,                   # 8: N - 1 images, TLAST one image too late (missing)
                   "run", xs, N, last)                       # 9: well-formed again
    assert [c["kind"] for c in calls] == ["run", "load", "run", "load"] + ["run"] * 6
    assert all(c["hash"] == regmap.config_hash_u32(SMALL_CFG.hash()) for c in calls)
    not_loaded = (regmap.ERR_NOT_LOADED, None)
    c = calls[0]
    assert c["code_op"] == not_loaded and c["status"] == regmap.ERR_NOT_LOADED | regmap.STATUS_OP_NONE << 8
    assert (c["in_left"], c["out_beats"], c["cycles"]) == (N * IN, 0, 0)
    assert calls[1]["code_op"] == (regmap.ERR_CRC, None) and calls[1]["out_beats"] == 0
    assert calls[2]["code_op"] == not_loaded and (calls[2]["in_left"], calls[2]["out_beats"]) == (N * IN, 0)
    assert calls[3]["status"] == 0 and calls[3]["cycles"] > 0 and calls[3]["in_left"] == 0

    def check(c, code, in_left, images_ok, n=N):
        assert c["code_op"] == ((code, None) if code else (0, None)), c["status"]
        assert c["in_left"] == in_left
        assert c["out_beats"] == n * OUT and c["tlast_at"] == [n * OUT - 1]
        out = c["out"].reshape(n, OUT)
        for i in range(n):
            expect = want.reshape(N, OUT)[i] if i < images_ok else np.zeros(OUT, np.uint8)
            assert np.array_equal(out[i], expect), (i, c["status"])

    check(calls[4], 0, 0, N)
    assert calls[4]["cycles"] > 0
    check(calls[5], regmap.ERR_TLAST, N * IN - (IN + 6), 1)      # image 0 computed, 1 and 2 blank
    check(calls[6], regmap.ERR_TLAST, (N - 1) * IN, 1)           # TLAST on image 0's last byte: image 0 complete
                                                                 # and computed, the reading stops there
    check(calls[7], regmap.ERR_TLAST, 0, N)                      # every byte read, every image computed
    check(calls[8], regmap.ERR_TLAST, IN, N - 1, n=N - 1)        # nothing past the call's bytes consumed
    check(calls[9], 0, 0, N)


# ---------------------------------------------------------------------------
# the bridge: raw bytes
# ---------------------------------------------------------------------------
@pytest.mark.csim
def test_raw_byte_streams(engine):
    rng = np.random.default_rng(3)
    prog = place(lenet_program(rng), DEFAULT_CFG)
    x = rand_inputs(rng, prog, 5)
    engine.load_image(prog.to_bytes())
    load_cycles = engine.modelled_cycles
    assert load_cycles > 0                                   # the load call's modelled cycles
    assert engine.real_cycles is None                        # no real counter in C-simulation: not available
    raw = engine.run_bytes(x.view(np.uint8).reshape(5, -1))
    assert raw.dtype == np.uint8 and raw.shape == (5, prog.output_bytes)
    assert np.array_equal(raw.view(np.int8).reshape(run_program(prog, x).shape), run_program(prog, x))
    assert engine.modelled_cycles > 0 and engine.real_cycles is None
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
    # csim() wrote the placed program: what the testbench's load call reads
    assert (tmp_path / "program.bin").read_bytes() == place(prog, DEFAULT_CFG).to_bytes()
    # the executable itself: exit 1, counts printed
    exe = gxx_build.build_testbench(engine_sources(engine.project))
    files = [str(tmp_path / f"{k}.bin") for k in ("program", "inputs", "outputs", "expected")]
    r = subprocess.run([str(exe), *files], capture_output=True, text=True)
    assert r.returncode == 1
    assert "mismatching images 1 of 6" in r.stdout and "mismatching bytes 1 of 60" in r.stdout
    assert "tb: FAIL" in r.stdout
    # untampered: exit 0, the load call first, modelled cycles reported
    (tmp_path / "expected.bin").write_bytes((want.astype(np.int64) & 0xFF).astype(np.uint8).tobytes())
    r = subprocess.run([str(exe), *files], capture_output=True, text=True)
    assert r.returncode == 0 and "tb: PASS" in r.stdout
    assert "tb: load call: STATUS 0x0000" in r.stdout
    m = re.search(r"tb: images 6, output bytes 60, modelled cycles (\d+)", r.stdout)
    assert m and int(m.group(1)) > 0, r.stdout
    # an engine error is exit 2 with the STATUS printed (the load call's), a bad file exit 3
    good = place(prog, DEFAULT_CFG).to_bytes()
    for bad, status in ((b"XXXX" + good[4:], regmap.ERR_MAGIC | 0xFF00),
                        (_edit(good, [(len(good) - 1, good[-1] ^ 1, 1)], fix_crc=False), regmap.ERR_CRC | 0xFF00),
                        (lenet_program(np.random.default_rng(5)).to_bytes(), regmap.ERR_PARAM)):   # unplaced: op 0
        (tmp_path / "program.bin").write_bytes(bad)
        r = subprocess.run([str(exe), *files], capture_output=True, text=True)
        assert r.returncode == 2 and f"tb: load: engine STATUS 0x{status:04x}" in r.stdout, (hex(status), r.stdout)
    assert subprocess.run([str(exe), str(tmp_path / "nope.bin"), *files[1:]], capture_output=True).returncode == 3


# ---------------------------------------------------------------------------
# toolchain pieces missing; the build cache
# ---------------------------------------------------------------------------
def test_missing_compiler_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    proj = write_project(DEFAULT_CFG, tmp_path / "p")
    with pytest.raises(ToolchainError, match="apt-get install g\\+\\+"):
        gxx_build.build(engine_sources(proj))


def test_missing_ap_types_names_the_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.delenv("VQHLS_AP_TYPES", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == "hls4ml" else real(name, *a, **k))
    try:   # looked up on each call (not cached): a changed environment is seen at once
        with pytest.raises(APTypesNotFound, match="pip install hls4ml"):
            ap_types_dir()
    finally:
        monkeypatch.undo()
    assert (ap_types_dir() / "ap_int.h").is_file()
    assert "site-packages" in str(ap_types_dir()) or "hls4ml" in str(ap_types_dir())


def test_bad_ap_types_override(monkeypatch, tmp_path):
    monkeypatch.setenv("VQHLS_AP_TYPES", str(tmp_path))
    with pytest.raises(APTypesNotFound, match="VQHLS_AP_TYPES"):
        ap_types_dir()


@pytest.mark.csim
@pytest.mark.slow
def test_build_cache_does_not_recompile(tmp_path, monkeypatch):
    monkeypatch.setenv("VQHLS_CACHE", str(tmp_path / "cache"))
    proj = engine_sources(write_project(SMALL_CFG, tmp_path / "p"))
    build = gxx_build.build
    tb, lib = build(proj)
    assert tb.is_file() and lib.is_file()
    assert tb.parent.name == build_key(proj) and build_key(proj).startswith(SMALL_CFG.hash())

    def no_compiler(*a, **k):
        raise AssertionError("recompiled although cached")

    monkeypatch.setattr(gxx_build.subprocess, "Popen", no_compiler)
    assert build(proj) == (tb, lib)
    # a second project rendered from the same config hits the same cache entry
    assert build(engine_sources(write_project(SMALL_CFG, tmp_path / "p2"))) == (tb, lib)
    # CsimEngine() for that config renders into the cache and reuses the build as well
    eng = CsimEngine(SMALL_CFG)
    assert eng.library_path == lib
    # an edited source is a different build
    top = proj.firmware_dir / "top.cpp"
    top.write_text(top.read_text() + "\n// edited\n")
    assert build_key(proj) != tb.parent.name
