"""RTL simulation (cocotb + Icarus, cocotbext-axi AXI RAM) of the load call, vqhls_loader
(hls_templates/rtl/loader.v.j2), against the C-sim engine.

(a) Real programs (the default model lenet-digits MVQ, tests/flow/small_cases.tiny_program, random VQ and dense
    programs with a residual and pools, and a program whose weights unpack byte by byte: dense C=3, a VQ
    layer of d=2 with an odd number of codeword entries) on the PYNQ-Z2 build and on random_ops.SMALL_CFG
    (and on an engine too small to hold every op's weights): after the load, every memory the loader wrote
    through pw_* equals the C-sim engine's own memories (CsimEngine.onchip_memories) -- which the test first
    holds equal to flow/rtl/onchip.py's onchip_state -- and STATUS, prog_ops, in/out bytes equal the C-sim's.
(b) Corrupted images (magic, version, header fields, flipped body bytes, a descriptor field changed and the
    image re-sealed, shift 0 / 32, codeword index >= k, weights past a memory's end, io bytes and flags):
    the RTL's STATUS word (code and op index) equals the C-sim engine's register-level load call
    (the bridge's vqhls_call on the same DDR bytes), which is the reference, not an expectation written here.
Everything measured here is measured in RTL simulation (Icarus); the cycle counts printed are the loader's
cycles from start to done with a zero-latency AXI RAM (cocotbext-axi), not a board's.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from engine_io import regmap
from engine_io.program_image import DESC_FIELDS, HEADER_WORDS, WORD, seal
from flow.compile.engine import EngineConfig
from flow.compile.program import AVGPOOL, CODEBOOK, Op, Program
from flow.compile.validate import prepare
from flow.rtl import onchip
from flow.rtl.cosim import run_cocotb
from flow.rtl.random_ops import SMALL_CFG, act_range, conv_op, random_program
from flow.rtl.render import context, write_rtl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flow"))
from small_cases import tiny_program  # noqa: E402


pytestmark = [pytest.mark.cosim,
              pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")]

STREAM_CFG = dataclasses.replace(SMALL_CFG, vmem_entries=256, dmem_words=256)
BASE = 0x10F40          # PARAMS: word aligned, not page aligned, so bursts split at 4 KiB boundaries
_CSIM: dict = {}


def csim_engine(engine: EngineConfig):
    from flow.hls.csim import CsimEngine   # deferred: jinja2 + g++ (the cached build)

    key = engine.hash()
    if key not in _CSIM:
        _CSIM[key] = CsimEngine(engine)
    return _CSIM[key]


def csim_load(engine: EngineConfig, image: bytes) -> dict:
    """The C-sim engine's load call on DDR holding ``image`` (zeros after it): the register-level bridge entry
    vqhls_call with N_IMAGES = 0, as host.sim does. Returns status, the loaded in/out bytes and CYCLES (modelled)."""
    eng = csim_engine(engine)
    lib = eng._lib
    buf = np.frombuffer(bytes(image), np.uint8).copy()
    dummy = np.zeros(1, np.uint8)
    consumed, out_len, cycles = ctypes.c_ulonglong(), ctypes.c_ulonglong(), ctypes.c_ulonglong()
    chash = ctypes.c_uint()
    in_b, out_b = ctypes.c_ulonglong(), ctypes.c_ulonglong()
    with eng._lock:
        status = int(lib.vqhls_call(buf.ctypes.data, buf.size, 0, dummy.ctypes.data, 0, -1, ctypes.byref(consumed),
                                    dummy.ctypes.data, dummy.ctypes.data, 0, ctypes.byref(out_len),
                                    ctypes.byref(cycles), ctypes.byref(chash)))
        loaded = int(lib.vqhls_loaded(ctypes.byref(in_b), ctypes.byref(out_b)))
        eng._loaded[0] = None   # the library's program changed under CsimEngine's cache
    return dict(status=status, loaded=loaded, in_bytes=int(in_b.value), out_bytes=int(out_b.value),
                cycles=int(cycles.value))


def bytes_program() -> Program:
    """Weights that unpack byte by byte: a dense 3x3 conv with C = 3 (162 bytes: a partial last beat), a 1x1 VQ
    conv of d = 2 (codebook bytes one per step) with 15 codeword entries (an odd count: half a beat), an
    average pool."""
    rng = np.random.default_rng(7)
    ops = [conv_op(rng, H=6, W=6, C=3, OC=6, K=3, pad=1, in_unsigned=1, out_unsigned=1, shift_range=(8, 24),
                   in_buf=0, out_buf=1, name="dense_c3"),
           conv_op(rng, H=6, W=6, C=6, OC=5, K=1, pad=0, in_unsigned=1, out_unsigned=1, shift_range=(8, 24),
                   in_buf=1, out_buf=2, wfmt=CODEBOOK, n=2, m=2, d=2, k=8, name="vq_d2")]
    lo, hi = act_range(1)
    ops.append(Op(AVGPOOL, 2, 0, H=6, W=6, C=5, OH=3, OW=3, OC=5, KH=2, KW=2, stride=2, in_unsigned=1,
                  out_unsigned=1, lo=lo, hi=hi, name="avgpool",
                  arrays=dict(mult=np.full(5, (1 << 20) // 4), shift=np.full(5, 20))))
    return Program(ops=ops, in_shape=(6, 6, 3))


def pq_program_case() -> Program:
    """A dense conv writing a residual, then a PQ op (v 9, K 16) reading it: check_op's PQ rules and the PQ op's
    channel parameters (res_mult included); its prototypes and LUT are run-call loads, not on chip after it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flow" / "hls"))
    from hls_testlib import pq_program   # noqa: E402

    return pq_program(np.random.default_rng(4), residual=True, H=4, W=4, C=4, OC=8, K=3, v=9)


def program(case: str, engine: EngineConfig, build: Path) -> Program:
    if case == "lenet-mvq":
        return Program.from_bytes((build / "program.bin").read_bytes())
    if case == "vq":
        return random_program(CODEBOOK)
    if case == "dense":
        return random_program(0)
    if case == "bytes":
        return bytes_program()
    if case == "pq":
        return pq_program_case()
    return tiny_program(engine)


def render(engine: EngineConfig, out: Path) -> list[Path]:
    """The loader and its testbench wrapper (hls_templates/rtl/tb/loader_wrap.v.j2) rendered into ``out``."""
    from flow.hls.project import _environment   # deferred: jinja2

    out.mkdir(parents=True, exist_ok=True)
    core = write_rtl("loader", engine, out)
    wrap = out / "vqhls_loader_wrap.v"
    banner = f"Generated by vqhls (tests/rtl/test_loader.py) from hls_templates/rtl/tb/loader_wrap.v.j2 for {engine.hash()}"
    wrap.write_text(_environment().get_template("rtl/tb/loader_wrap.v.j2").render(banner=banner, **context(engine)))
    return [core, wrap]


def run_loads(tmp: Path, engine: EngineConfig, loads: list[dict], *, pause: bool = False, seed: int = 1) -> dict:
    """Simulate the loads (dicts: name, image bytes, reference fields, mem arrays or None); returns the results."""
    tmp.mkdir(parents=True, exist_ok=True)
    case_loads = []
    span = 0
    for i, ld in enumerate(loads):
        img = tmp / f"image{i}.bin"
        img.write_bytes(ld["image"])
        total = struct.unpack_from("<I", ld["image"], 4 * WORD["total_bytes"])[0]
        reach = max(len(ld["image"]), total if total <= engine.param_bytes else 0) + 8
        span = max(span, reach)
        entry = {k: v for k, v in ld.items() if k not in ("image", "mem")}
        entry.update(image=str(img), span=reach)
        if ld.get("mem") is not None:
            npz = tmp / f"mem{i}.npz"
            np.savez(npz, **ld["mem"])
            entry["mem"] = str(npz)
        case_loads.append(entry)
    cfg = dict(cols=engine.cols, ch_rows=engine.ch_rows, d_max=engine.d_max, lanes=engine.lanes,
               max_ops=engine.max_ops)
    case = dict(engine=cfg, base=BASE, ram_size=BASE + span + 8192, pause=pause, seed=seed, loads=case_loads)
    (tmp / "case.json").write_text(json.dumps(case))
    result = tmp / "result.json"
    r = run_cocotb(render(engine, tmp / "rtl"), "vqhls_loader_wrap", "flow.rtl.tb.loader", build_dir=tmp / "sim",
                   parameters={"AXI_AW": 64},
                   extra_env={"VQHLS_CASE": str(tmp / "case.json"), "VQHLS_RESULT": str(result)})
    out = json.loads(result.read_text()) if result.exists() else {"loads": [], "errors": ["no result file"]}
    out["cocotb"] = r
    return out


def reference_load(name: str, image: bytes, engine: EngineConfig, *, memories: bool) -> dict:
    """A load entry whose expected values come from the C-sim engine (and its memories when asked)."""
    ref = csim_load(engine, image)
    ld = dict(name=name, image=image, status=ref["status"], loaded=ref["loaded"], modelled_cycles=ref["cycles"])
    if ref["status"] == 0:
        ld.update(in_bytes=ref["in_bytes"], out_bytes=ref["out_bytes"],
                  prog_ops=struct.unpack_from("<I", image, 4 * WORD["n_ops"])[0])
    if memories:
        got = csim_engine(engine).onchip_memories(image)
        want = onchip.onchip_state(image, engine).memories()
        for m, arr in want.items():   # the two references agree (tests/rtl/test_onchip_reference.py holds this)
            assert np.array_equal(arr, got[m]), f"{name}: onchip_state and the C-sim differ in {m}"
        ld["mem"] = {m: got[m] for m in want}
    return ld


def report(out: dict) -> None:
    for res in out["loads"]:
        print(f"  {res['name']}: STATUS 0x{res['status']:04x} loaded {res['loaded']}, {res['cycles']} cycles "
              f"(RTL simulation), {res['bursts']} bursts / {res['beats']} beats, {res['writes']} pw writes")


ENGINES = {"default": EngineConfig(), "small": SMALL_CFG, "stream": STREAM_CFG}
PROGRAMS = {"default": ["lenet-mvq", "tiny", "vq", "dense", "bytes"], "small": ["lenet-mvq", "vq", "bytes", "pq"],
            "stream": ["vq", "dense"]}


@pytest.mark.parametrize("eng", sorted(PROGRAMS))
def test_load_real_programs(tmp_path, eng, default_model_build):
    """(a) Every memory after the load equals the C-sim engine's; STATUS 0 and prog_* equal the C-sim's."""
    engine = ENGINES[eng]
    loads = []
    for case in PROGRAMS[eng]:
        image = prepare(program(case, engine, default_model_build), engine).to_bytes()
        loads.append(reference_load(case, image, engine, memories=True))
        assert loads[-1]["status"] == 0, f"{case}: the C-sim refuses it: 0x{loads[-1]['status']:x}"
    out = run_loads(tmp_path, engine, loads, pause=(eng == "small"))
    print(f"\nload call in RTL on {eng} ({engine.hash()}):")
    report(out)
    for ld, res in zip(loads, out["loads"]):
        print(f"  {ld['name']}: modelled CYCLES of the HLS load call {ld['modelled_cycles']}, RTL {res['cycles']}")
    assert out["cocotb"].failed == 0 and out["cocotb"].passed == 1, out["cocotb"].summary() + "\n" + \
        "\n".join(out["errors"])
    assert len(out["loads"]) == len(loads)


# ---------------------------------------------------------------- corrupted images
def _words(image: bytes) -> np.ndarray:
    return np.frombuffer(image, "<u4").copy()


def set_word(image: bytes, index: int, value: int, reseal: bool = False) -> bytes:
    w = _words(image)
    w[index] = value & 0xFFFFFFFF
    return seal(w.tobytes()) if reseal else w.tobytes()


def set_field(image: bytes, op: int, field: str, value: int) -> bytes:
    """Descriptor field of op ``op`` set to ``value``, the image re-sealed (a valid CRC)."""
    return set_word(image, HEADER_WORDS + 64 * op + DESC_FIELDS.index(field), value, reseal=True)


def field(image: bytes, op: int, name: str) -> int:
    return struct.unpack_from("<i", image, 4 * (HEADER_WORDS + 64 * op + DESC_FIELDS.index(name)))[0]


def set_value(image: bytes, byte_off: int, fmt: str, value: int) -> bytes:
    b = bytearray(image)
    struct.pack_into(fmt, b, byte_off, value)
    return seal(bytes(b))


def corruptions(image: bytes, engine: EngineConfig) -> list[tuple[str, bytes]]:
    """(name, image) pairs: header, CRC and per-op faults of the 3-op ``bytes`` program image (op 0 dense C=3,
    op 1 VQ d=2, op 2 average pool)."""
    n = len(image) // 4
    out = [
        ("magic", set_word(image, WORD["magic"], 0x4C485157)),
        ("version 3", set_word(image, WORD["version"], 3)),
        ("desc_words 63", set_word(image, WORD["desc_words"], 63)),
        ("n_ops 0", set_word(image, WORD["n_ops"], 0)),
        ("n_ops past max_ops", set_word(image, WORD["n_ops"], engine.max_ops + 1)),
        ("total not words", set_word(image, WORD["total_bytes"], len(image) + 2)),
        ("total past param_bytes", set_word(image, WORD["total_bytes"], engine.param_bytes + 4)),
        ("total under the descriptors", set_word(image, WORD["total_bytes"], 4 * (HEADER_WORDS + 64 * 3) - 4)),
        ("total one word more", set_word(image, WORD["total_bytes"], len(image) + 4)),
        ("crc word", set_word(image, WORD["crc"], _words(image)[WORD["crc"]] ^ 1)),
        ("scale bit", set_word(image, WORD["in_scale_hi"], _words(image)[WORD["in_scale_hi"]] ^ 0x100)),
        ("body byte (descriptor)", set_word(image, HEADER_WORDS + 70, _words(image)[HEADER_WORDS + 70] ^ 0x80)),
        ("body byte (last word)", set_word(image, n - 1, _words(image)[n - 1] ^ 0x01000000)),
        ("input_bytes", set_word(image, WORD["input_bytes"], _words(image)[WORD["input_bytes"]] + 1)),
        ("output_bytes", set_word(image, WORD["output_bytes"], 7)),
        ("io_flags", set_word(image, WORD["io_flags"], _words(image)[WORD["io_flags"]] ^ 1, reseal=True)),
        ("io_flags unknown bit", set_word(image, WORD["io_flags"], 0x11, reseal=True)),
        # check_op, each on one op (the op index must come back in STATUS[15:8])
        ("op0 opcode 9", set_field(image, 0, "opcode", 9)),
        ("op1 opcode pq", set_field(image, 1, "opcode", 4)),
        ("op0 wfmt 2", set_field(image, 0, "wfmt", 2)),
        ("op1 out_buf = in_buf", set_field(image, 1, "out_buf", field(image, 1, "in_buf"))),
        ("op2 in_buf 3", set_field(image, 2, "in_buf", 3)),
        ("op2 residual on a pool", set_field(image, 2, "res_buf", 1)),
        ("op1 residual = out_buf", set_field(image, 1, "res_buf", field(image, 1, "out_buf"))),
        ("op0 C 0", set_field(image, 0, "C", 0)),
        ("op1 OC 513", set_field(image, 1, "OC", 513)),
        ("op0 pad -1", set_field(image, 0, "pad", -1)),
        ("op2 stride 0", set_field(image, 2, "stride", 0)),
        ("op0 KH 8", set_field(image, 0, "KH", 8)),
        ("op0 stride 3", set_field(image, 0, "stride", 3)),
        ("op2 pad 1", set_field(image, 2, "pad", 1)),
        ("op2 OC != C", set_field(image, 2, "OC", 4)),
        ("op0 H 9000", set_field(image, 0, "H", 9000)),
        ("op1 CW 2", set_field(image, 1, "CW", 2)),
        ("op0 WB 3", set_field(image, 0, "WB", 3)),
        ("op0 H 2000 (buffer)", set_field(image, 0, "H", 2000)),
        ("op1 lo > hi", set_field(image, 1, "lo", field(image, 1, "hi") + 1)),
        ("op2 hi 300", set_field(image, 2, "hi", 300)),
        ("op1 NOT 3", set_field(image, 1, "NOT", 3)),
        ("op2 ch_base past ch_rows", set_field(image, 2, "ch_base", engine.ch_rows)),
        ("op1 ch_base -1", set_field(image, 1, "ch_base", -1)),
        ("op0 NG", set_field(image, 0, "NG", field(image, 0, "NG") + 1)),
        ("op0 GR 0", set_field(image, 0, "GR", 0)),
        ("op1 NPT 2", set_field(image, 1, "NPT", 2)),
        ("op0 NSTEP", set_field(image, 0, "NSTEP", field(image, 0, "NSTEP") - 1)),
        ("op0 passes 0", set_field(image, 0, "passes", 0)),
        ("op1 dec 99", set_field(image, 1, "dec", 99)),
        ("op1 k 0", set_field(image, 1, "k", 0)),
        ("op1 d 9", set_field(image, 1, "d", 9)),
        ("op1 vpc 0", set_field(image, 1, "vpc", 0)),
        ("op1 cb_base past cb_rows", set_field(image, 1, "cb_base", engine.cb_rows - 4)),
        ("op1 v_base = vmem_entries", set_field(image, 1, "v_base", engine.vmem_entries)),
        ("op0 w_base -1", set_field(image, 0, "w_base", -1)),
        ("op0 off_mult unaligned", set_field(image, 0, "off_mult", field(image, 0, "off_mult") + 2)),
        ("op2 off_shift past the image", set_field(image, 2, "off_shift", len(image) - 8)),
        ("op0 off_bias in the descriptors", set_field(image, 0, "off_bias", 4 * HEADER_WORDS)),
        ("op1 off_idx past the image", set_field(image, 1, "off_idx", len(image) - 4)),
        ("op1 off_codebook negative", set_field(image, 1, "off_codebook", -4)),
        ("op0 off_weight past the image", set_field(image, 0, "off_weight", len(image) - 100)),
        # values as they pass (ERR_PARAM / ERR_LIMIT after the op's loads), and their op index
        ("op0 shift 0", set_value(image, field(image, 0, "off_shift") + 4, "<i", 0)),
        ("op2 shift 32", set_value(image, field(image, 2, "off_shift") + 8, "<i", 32)),
        ("op1 shift -5", set_value(image, field(image, 1, "off_shift"), "<i", -5)),
        ("op1 index = k", set_value(image, field(image, 1, "off_idx") + 2 * 14, "<H", field(image, 1, "k"))),
        ("op1 index 0xFFFF", set_value(image, field(image, 1, "off_idx"), "<H", 0xFFFF)),
        ("op0 dense past dmem", set_field(image, 0, "w_base", engine.dmem_words - 10)),
        ("op1 vmem past the end", set_field(image, 1, "v_base", engine.vmem_entries - 3)),
        ("op1 index >= k and vmem past the end",
         set_field(set_value(image, field(image, 1, "off_idx") + 2 * 14, "<H", 8), 1, "v_base",
                   engine.vmem_entries - 8)),
        ("op0 shift 0 and dense past dmem",
         set_field(set_value(image, field(image, 0, "off_shift"), "<i", 0), 0, "w_base", engine.dmem_words - 1)),
    ]
    return out


def test_corrupted_images_match_csim(tmp_path, default_model_build):
    """(b) STATUS (code and op index) of every corrupted image equals the C-sim engine's; a good load after
    failing ones loads (loaded, prog_* from it), a failing one clears ``loaded``."""
    engine = EngineConfig()
    image = prepare(bytes_program(), engine).to_bytes()
    good = reference_load("good", image, engine, memories=False)
    assert good["status"] == 0
    loads = [dict(good, clear=True)]
    codes = {}
    for name, bad in corruptions(image, engine):
        ld = reference_load(name, bad, engine, memories=False)
        ld["clear"] = False
        loads.append(ld)
        codes[name] = ld["status"]
    loads.append(dict(good, name="good again", clear=False))
    out = run_loads(tmp_path, engine, loads)
    print("\ncorrupted images, STATUS of the C-sim engine (reference) = RTL:")
    for res in out["loads"]:
        code, op = regmap.decode_status(res["status"])
        print(f"  {res['name']}: 0x{res['status']:04x} ({regmap.STATUS_NAMES.get(code, code)}"
              f"{'' if op is None else f', op {op}'}), {res['cycles']} cycles")
    assert out["cocotb"].failed == 0 and out["cocotb"].passed == 1, out["cocotb"].summary() + "\n" + \
        "\n".join(out["errors"])
    # the corruptions reach every code the load call gives (so the comparison above covers each check)
    seen = {s & 0xFF for s in codes.values()}
    want = {regmap.ERR_MAGIC, regmap.ERR_VERSION, regmap.ERR_HEADER, regmap.ERR_CRC, regmap.ERR_OPCODE,
            regmap.ERR_BUFFER, regmap.ERR_SHAPE, regmap.ERR_LIMIT, regmap.ERR_BUF_SIZE, regmap.ERR_PARAM,
            regmap.ERR_OFFSET, regmap.ERR_IO}
    assert want <= seen, f"codes not reached: {sorted(want - seen)}"
    assert {(s >> 8) & 0xFF for s in codes.values()} >= {0, 1, 2, 0xFF}


def test_pq_checks_on_a_pq_build(tmp_path):
    """check_op's PQ rules (a build with the lookup unit: SMALL_CFG): STATUS equals the C-sim's."""
    engine = SMALL_CFG
    image = prepare(pq_program_case(), engine).to_bytes()
    loads = [reference_load("pq", image, engine, memories=True)]
    assert loads[0]["status"] == 0
    for name, bad in [("op1 lut_bits 12", set_field(image, 1, "lut_bits", 12)),
                      ("op1 v 0", set_field(image, 1, "v", 0)),
                      ("op1 K past pq_k_max", set_field(image, 1, "K", engine.pq_k_max + 1)),
                      ("op1 nsub 0", set_field(image, 1, "nsub", 0)),
                      ("op1 GR 0", set_field(image, 1, "GR", 0)),
                      ("op1 LUT past lut_depth", set_field(image, 1, "NOT", 4000)),
                      ("op1 off_lut past the image", set_field(image, 1, "off_lut", len(image) - 4)),
                      ("op1 off_proto unaligned", set_field(image, 1, "off_proto", field(image, 1, "off_proto") + 1)),
                      ("op1 shift 0", set_value(image, field(image, 1, "off_shift"), "<i", 0))]:
        loads.append(dict(reference_load(name, bad, engine, memories=False), clear=False))
    out = run_loads(tmp_path, engine, loads)
    print("\nPQ build:")
    report(out)
    assert out["cocotb"].failed == 0 and out["cocotb"].passed == 1, out["cocotb"].summary() + "\n" + \
        "\n".join(out["errors"])
    # the corruptions reach the PQ rules' codes (so the comparison covers them)
    assert {ld["status"] & 0xFF for ld in loads} >= {regmap.ERR_LIMIT, regmap.ERR_PARAM, regmap.ERR_OFFSET}


# Mutants of the rendered loader: each must make the comparison with the C-sim fail (tests of the tests).
LOADER_MUTANTS = {
    # bursts that run across a 4 KiB page (PARAMS is not page aligned): the AR monitor
    "no 4 KiB split": ("wire [31:0] ar_len = (len_a < to4k_beats) ? len_a : to4k_beats;",
                       "wire [31:0] ar_len = len_a;", []),
    # a shift of 32 accepted
    "shift 32 accepted": ("$signed(bt) > 31", "$signed(bt) > 32", ["op2 shift 32"]),
    # codebook bytes one per step all taken from byte 0 of the beat: the memories
    "codebook byte order": ("cb_row_n[8 * (cb_e + b) +: 8] = j_wide ? bt[8 * b +: 8] : bt_byte;",
                            "cb_row_n[8 * (cb_e + b) +: 8] = bt[8 * b +: 8];", []),
    # the header's io_flags not compared
    "io flags unchecked": ("hdr_io != {30'd0, f_out_unsigned != 0, first_in_unsigned != 0}", "1'b0",
                           ["io_flags unknown bit"]),
    # the CRC started one header word late
    "crc from word 9": ("if (j_i >= 8) crc <= crc32_word(crc, bt);", "if (j_i >= 9) crc <= crc32_word(crc, bt);", []),
}


@pytest.mark.parametrize("name", sorted(LOADER_MUTANTS))
def test_loader_mutant_is_caught(tmp_path, name, monkeypatch):
    old, new, bad = LOADER_MUTANTS[name]
    engine = EngineConfig()
    image = prepare(bytes_program(), engine).to_bytes()
    loads = [reference_load("good", image, engine, memories=True)]
    for cname, cimg in corruptions(image, engine):
        if cname in bad:
            loads.append(dict(reference_load(cname, cimg, engine, memories=False), clear=False))
    import flow.rtl.render as render_mod

    real = render_mod.render_rtl

    def mutated(unit, eng, **params):
        text = real(unit, eng, **params)
        if unit == "loader":
            assert old in text, f"mutant {name}: pattern not in the rendered loader"
            text = text.replace(old, new, 1)
        return text

    monkeypatch.setattr(render_mod, "render_rtl", mutated)
    out = run_loads(tmp_path, engine, loads)
    assert out["cocotb"].failed == 1, f"mutant {name} passed: {out['cocotb'].summary()}"
    print(f"\nmutant {name}: caught: {out['errors'][:2]}")
