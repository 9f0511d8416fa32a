"""The emitted HLS project: files, atomic writes, register map, Tcl, lint, build cache, toolchain errors."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from flow.compile.engine import EngineConfig
from flow.hls import lint as lint_mod
from flow.hls import project as project_mod
from flow.hls.project import UnsupportedEngineConfig, load_project, write_project
from hls_testlib import DEFAULT_CFG, ODD_CFG, SMALL_CFG
from engine_io import regmap

FIRMWARE = ["codebook_decoder.h", "cycle_counter.cpp", "cycle_counter.h", "engine_config.h", "lookup_engine.h",
            "memories.h", "op_plan.h", "param_loader.h", "post_op.h", "regmap.h", "systolic_array.h", "top.cpp", "top.h",
            "vqhls_cycle_counter.v"]


# ---------------------------------------------------------------------------
# files and atomicity
# ---------------------------------------------------------------------------
def test_write_project_layout(tmp_path):
    proj = write_project(DEFAULT_CFG, tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p" / "firmware").iterdir()) == FIRMWARE
    for rel in ("tb/tb.cpp", "tb/bridge.cpp", "Makefile", "build.tcl", "project.json"):
        assert (tmp_path / "p" / rel).is_file(), rel
    again = load_project(tmp_path / "p")
    assert again.engine == DEFAULT_CFG and again.content_hash == proj.content_hash
    # deterministic: rendering twice gives the same bytes
    proj2 = write_project(DEFAULT_CFG, tmp_path / "q")
    assert proj2.content_hash == proj.content_hash
    # a different config renders differently
    assert write_project(SMALL_CFG, tmp_path / "r").content_hash != proj.content_hash
    # no leftovers next to the project
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "q", "r"]
    # every rendered file is in the manifest and the template table, and top.cpp includes the firmware headers
    assert set(proj.files) == set(project_mod.TEMPLATES) | {"project.json"}
    top = (tmp_path / "p" / "firmware" / "top.cpp").read_text()
    for header in ("engine_config.h", "memories.h", "param_loader.h", "codebook_decoder.h", "systolic_array.h",
                   "lookup_engine.h", "post_op.h", "regmap.h", "top.h"):
        assert f'#include "{header}"' in top, header
    # no lookup unit without PQ: lookup_engine.h is rendered but top.cpp does not include it
    assert '#include "lookup_engine.h"' not in write_project(EngineConfig(pq=False), tmp_path / "s").firmware_sources[0].read_text()


def test_write_project_writes_placed_vectors(tmp_path):
    """tb/data/program.bin is what the testbench hands to the engine's load call as it is: write_project
    places the Program for the engine and checks it (flow.compile.validate.prepare), as csim() and
    CsimEngine.load do; a Program the engine cannot run is refused before anything is written."""
    from flow.compile.layout import is_placed, place
    from flow.compile.validate import ProgramError, validate_image
    from hls_testlib import lenet_program

    prog = lenet_program(np.random.default_rng(0))
    assert not is_placed(prog, DEFAULT_CFG)
    for given in (prog, place(prog, DEFAULT_CFG)):
        proj = write_project(DEFAULT_CFG, tmp_path / "p", program=given)
        blob = (proj.data_dir / "program.bin").read_bytes()
        assert blob == place(prog, DEFAULT_CFG).to_bytes()
        assert is_placed(validate_image(blob, DEFAULT_CFG), DEFAULT_CFG)
    # placed for another engine: placed again for this one
    proj = write_project(SMALL_CFG, tmp_path / "p", program=place(prog, DEFAULT_CFG))
    assert (proj.data_dir / "program.bin").read_bytes() == place(prog, SMALL_CFG).to_bytes()
    # refused: no project, no leftovers
    prog.ops[0].arrays["shift"][0] = 0
    with pytest.raises(ProgramError) as info:
        write_project(DEFAULT_CFG, tmp_path / "bad", program=prog)
    assert (info.value.code, info.value.op) == (regmap.ERR_PARAM, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_write_project_is_atomic(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = project_mod._render_one

    def flaky(env, template, context):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("template exploded")
        return real(env, template, context)

    monkeypatch.setattr(project_mod, "_render_one", flaky)
    with pytest.raises(RuntimeError, match="exploded"):
        write_project(DEFAULT_CFG, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []          # no project, no temporary directory

    # an existing project survives a failed rewrite untouched
    monkeypatch.setattr(project_mod, "_render_one", real)
    old = write_project(DEFAULT_CFG, tmp_path / "old")
    before = {p: p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    calls["n"] = 0
    monkeypatch.setattr(project_mod, "_render_one", flaky)
    with pytest.raises(RuntimeError):
        write_project(SMALL_CFG, tmp_path / "old")
    after = {p: p.read_bytes() for p in (tmp_path / "old").rglob("*") if p.is_file()}
    assert before == after and load_project(old.path).engine == DEFAULT_CFG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_write_project_fails_on_bad_vectors_without_leftovers(tmp_path):
    from hls_testlib import lenet_program

    prog = lenet_program(np.random.default_rng(0))
    with pytest.raises(ValueError, match="shape"):
        write_project(DEFAULT_CFG, tmp_path / "p", program=prog, inputs=np.zeros((1, 3, 3, 1), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a vqhls HLS project"):
        write_project(DEFAULT_CFG, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_unsupported_engine_configs():
    for kw, what in ((dict(act_bits=4), "act_bits"), (dict(acc_bits=24), "acc_bits"), (dict(weight_bits=4), "weight_bits"),
                     (dict(max_ops=300), "max_ops"), (dict(num_bufs=1), "num_bufs"), (dict(max_stride=3), "max_stride"),
                     (dict(lut_bytes=1001), "lut_bytes"), (dict(param_bytes=(1 << 20) + 2), "param_bytes")):
        with pytest.raises(UnsupportedEngineConfig, match=what):
            project_mod.render(EngineConfig(**kw))


# ---------------------------------------------------------------------------
# register map: one definition, rendered
# ---------------------------------------------------------------------------
def _regmap_ints() -> dict[str, int]:
    return {n: getattr(regmap, n) for n in dir(regmap) if n.isupper() and isinstance(getattr(regmap, n), int)}


def test_regmap_rendered_from_host_regmap(default_project):
    fw = default_project.firmware_dir
    header = (fw / "regmap.h").read_text()
    consts = {m.group(1): int(m.group(2), 0)
              for m in re.finditer(r"static const unsigned (?:long long )?(\w+) = (0x[0-9A-Fa-f]+|\d+)(?:ULL)?;", header)}
    # every register offset, CTRL bit and STATUS code of engine_io/regmap.py, with its value (nothing stale, nothing extra)
    assert consts == _regmap_ints()
    for name in ("CONFIG_HASH_CTRL", "CYCLES_CTRL", "STATUS_CTRL", "ERR_CRC", "ERR_NOT_LOADED", "ERR_TLAST",
                 "REAL_CYCLES_CTRL", "REAL_CYCLES_NA"):
        assert name in consts, name
    # the layout as Vitis HLS lays out the top's arguments (engine_io/regmap.py docstring)
    assert (regmap.N_IMAGES, regmap.PARAMS_LO, regmap.PARAMS_HI, regmap.CONFIG_HASH, regmap.CONFIG_HASH_CTRL,
            regmap.CYCLES_LO, regmap.CYCLES_HI, regmap.CYCLES_CTRL, regmap.STATUS, regmap.STATUS_CTRL) == \
        (0x10, 0x18, 0x1C, 0x28, 0x2C, 0x30, 0x34, 0x38, 0x40, 0x44)
    assert consts["CONFIG_HASH"] == 0x28
    # every STATUS code has a message
    codes = {v for n, v in _regmap_ints().items() if n.startswith("ERR_") or n == "OK"}
    assert codes == set(regmap.STATUS_NAMES) and len(codes) == len([n for n in _regmap_ints() if n.startswith("ERR_")]) + 1

    top = (fw / "top.cpp").read_text()
    offsets = {m.group(1): int(m.group(2), 16)
               for m in re.finditer(r"#pragma HLS INTERFACE s_axilite port=(\w+) offset=0x([0-9A-Fa-f]+)", top)}
    assert offsets == regmap.PORT_OFFSETS
    assert "port=return bundle=control" in top
    cfg_h = (fw / "engine_config.h").read_text()
    m = re.search(r"config_hash = 0x([0-9A-F]{8})u", cfg_h)
    assert int(m.group(1), 16) == regmap.config_hash_u32(DEFAULT_CFG.hash())


def _top_ports(top_cpp: str) -> dict[str, tuple[str, int]]:
    """The AXI-Lite ports of vqhls_engine from its C signature: name -> (direction, data bits).
    A by-value scalar is an input, a non-const scalar pointer an output (Vitis gives it an ap_vld),
    an m_axi pointer with offset=slave a 64-bit input (its DDR address); streams have no register."""
    sig = re.search(r"void vqhls_engine\((.*?)\)\s*\{", top_cpp, re.S).group(1)
    ports = {}
    for arg in (a.strip() for a in sig.split(",")):
        name = re.search(r"(\w+)$", arg).group(1)
        if arg.startswith("hls::stream"):
            assert re.search(rf"#pragma HLS INTERFACE axis port={name}\b", top_cpp), name
            continue
        if re.search(rf"#pragma HLS INTERFACE m_axi port={name}\b[^\n]*offset=slave", top_cpp):
            assert "*" in arg and arg.startswith("const"), arg
            ports[name] = ("in", 64)
            continue
        m = re.match(r"ap_u?int<(\d+)>\s*(\*?)\s*\w+$", arg)
        assert m, f"unexpected argument type of vqhls_engine: {arg!r}"
        ports[name] = ("out" if m.group(2) else "in", int(m.group(1)))
    return ports


def _axilite_words(ports: dict[str, tuple[str, int]], offsets: dict[str, int]) -> dict[int, str]:
    """Byte offset of every AXI-Lite word the ports take as Vitis HLS lays them out -> 'port:role'.
    An input takes ceil(bits/32) data words and a reserved word (a 32-bit input data + reserved, a 64-bit
    pointer two data words + reserved); an output its data word(s) and a control word (bit 0 ap_vld).
    Raises AssertionError when two ports share a word or a port reaches into the ap_ctrl block."""
    words: dict[int, str] = {}
    for name, (direction, bits) in ports.items():
        off = offsets[name]
        assert off % 4 == 0 and off >= 0x10, f"{name} at 0x{off:02X}: unaligned or inside the ap_ctrl block"
        ndata = -(-bits // 32)
        roles = [f"data{i}" for i in range(ndata)] + ["ap_vld" if direction == "out" else "reserved"]
        for i, role in enumerate(roles):
            at = off + 4 * i
            assert at not in words, f"{name}:{role} at 0x{at:02X} lies on {words[at]}"
            words[at] = f"{name}:{role}"
    return words


def test_regmap_layout_matches_vitis(default_project):
    """No port's data word lies on another port's reserved / ap_vld word, as Vitis HLS lays them out."""
    top = (default_project.firmware_dir / "top.cpp").read_text()
    ports = _top_ports(top)
    assert ports == {"n_images": ("in", 32), "params": ("in", 64), "config_hash": ("out", 32),
                     "cycles": ("out", 64), "status": ("out", 32), "real_cycles": ("out", 64)}
    offsets = {m.group(1): int(m.group(2), 16)
               for m in re.finditer(r"#pragma HLS INTERFACE s_axilite port=(\w+) offset=0x([0-9A-Fa-f]+)", top)}
    words = _axilite_words(ports, offsets)
    assert max(words) + 4 <= regmap.ADDRESS_RANGE
    # the registers the host reads are where the layout puts them
    assert words[regmap.N_IMAGES] == "n_images:data0" and words[regmap.N_IMAGES + 4] == "n_images:reserved"
    assert words[regmap.PARAMS_LO] == "params:data0" and words[regmap.PARAMS_HI] == "params:data1"
    assert words[regmap.PARAMS_HI + 4] == "params:reserved"
    assert words[regmap.CONFIG_HASH] == "config_hash:data0" and words[regmap.CONFIG_HASH_CTRL] == "config_hash:ap_vld"
    assert words[regmap.CYCLES_LO] == "cycles:data0" and words[regmap.CYCLES_HI] == "cycles:data1"
    assert words[regmap.CYCLES_CTRL] == "cycles:ap_vld"
    assert words[regmap.STATUS] == "status:data0" and words[regmap.STATUS_CTRL] == "status:ap_vld"
    assert words[regmap.REAL_CYCLES_LO] == "real_cycles:data0" and words[regmap.REAL_CYCLES_HI] == "real_cycles:data1"
    assert words[regmap.REAL_CYCLES_CTRL] == "real_cycles:ap_vld"
    # engine_io/regmap.py's own description of the ports agrees with the C signature
    for r in regmap.REGISTERS:
        if r.port:
            direction, bits = ports[r.port]
            assert (r.width, r.access) == (bits, "wo" if direction == "in" else "ro"), r
    # the check bites: the pre-Vitis layout (CONFIG_HASH right after PARAMS_HI) puts a data word on
    # the pointer's reserved word, and a 64-bit output packed right after a 32-bit one its data on the ap_vld
    with pytest.raises(AssertionError, match="config_hash:data0 at 0x20 lies on params:reserved"):
        _axilite_words(ports, {**offsets, "config_hash": 0x20})
    with pytest.raises(AssertionError, match="cycles:data0 at 0x2C lies on config_hash:ap_vld"):
        _axilite_words(ports, {**offsets, "cycles": 0x2C})


def test_regmap_helpers():
    assert regmap.decode_status(0) == (0, None)
    assert regmap.decode_status(regmap.ERR_LIMIT | (3 << 8)) == (regmap.ERR_LIMIT, 3)
    assert regmap.decode_status(regmap.ERR_MAGIC | (0xFF << 8)) == (regmap.ERR_MAGIC, None)
    assert "op 3" in regmap.status_message(regmap.ERR_SHAPE | (3 << 8))
    assert regmap.config_hash_u32("deadbeef") == 0xDEADBEEF
    assert regmap.PORT_OFFSETS["params"] == regmap.PARAMS_LO
    src = Path(regmap.__file__).read_text()
    assert "import torch" not in src and "from flow" not in src


@pytest.mark.csim
def test_config_hash_register(engine):
    assert engine.config_hash == regmap.config_hash_u32(DEFAULT_CFG.hash())


# ---------------------------------------------------------------------------
# Vitis HLS Tcl and Makefile
# ---------------------------------------------------------------------------
def test_build_tcl(default_project):
    tcl = default_project.build_tcl.read_text()
    for needle in ("open_project", "set_top vqhls_engine", "add_files firmware/top.cpp", "add_files -tb tb/tb.cpp",
                   "set_part xc7z020clg400-1", "create_clock -period 10", "csim_design", "csynth_design",
                   "cosim_design", "export_design"):
        assert needle in tcl, needle
    assert tcl.count("{") == tcl.count("}")


@pytest.mark.vitis
def test_vitis_csim_and_synthesis(tmp_path):
    from hls_testlib import lenet_program, rand_inputs
    from flow.compile.program_exec import run_program

    if not shutil.which("vitis_hls"):
        pytest.skip("vitis_hls not installed: where it is, run `python -c \"from flow.hls.project import write_project; "
                    "from flow.compile.engine import EngineConfig; write_project(EngineConfig(), 'build/hls', program=..., "
                    "inputs=..., expected=...)\" && cd build/hls && vitis_hls -f build.tcl -tclargs csim=1 synth=1`")
    rng = np.random.default_rng(0)
    prog = lenet_program(rng)
    x = rand_inputs(rng, prog, 4)
    proj = write_project(DEFAULT_CFG, tmp_path / "p", program=prog, inputs=x, expected=run_program(prog, x))
    r = subprocess.run(["vitis_hls", "-f", "build.tcl", "-tclargs", "csim=1", "synth=1"], cwd=proj.path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


@pytest.mark.csim
@pytest.mark.slow
def test_makefile_csim(tmp_path):
    """The emitted Makefile builds the testbench with g++ on its own and `make csim` passes on tb/data.

    The testbench hands tb/data/program.bin to the engine's load call as it is (write_project placed
    it: test_write_project_writes_placed_vectors). Only the return code counts: the hls4ml ap_types headers make g++ warn ("iteration N invokes
    undefined behavior" in ap_private.h), which is not our code."""
    from hls_testlib import lenet_program, rand_inputs
    from flow.compile.program_exec import run_program

    if not shutil.which("make"):
        pytest.skip("make not installed: apt-get install make")
    rng = np.random.default_rng(1)
    prog = lenet_program(rng)
    x = rand_inputs(rng, prog, 5)
    want = run_program(prog, x)
    proj = write_project(DEFAULT_CFG, tmp_path / "p", program=prog, inputs=x, expected=want)
    r = subprocess.run(["make", "-s", "csim", f"PYTHON={sys.executable}"], cwd=proj.path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "tb: load call: STATUS 0x0000" in r.stdout
    assert "tb: PASS" in r.stdout and "mismatching bytes 0" in r.stdout
    m = re.search(r"tb: images 5, output bytes 50, modelled cycles (\d+), config_hash 0x([0-9a-f]{8})", r.stdout)
    assert m and int(m.group(1)) > 0 and int(m.group(2), 16) == regmap.config_hash_u32(DEFAULT_CFG.hash()), r.stdout
    got = np.frombuffer((proj.data_dir / "outputs.bin").read_bytes(), np.int8).reshape(want.shape)
    assert np.array_equal(got, want)


# ---------------------------------------------------------------------------
# lint
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [DEFAULT_CFG, SMALL_CFG, ODD_CFG, EngineConfig(pq=False),
                                 EngineConfig(pq_v_max=9, pq_k_max=12, pq_subspaces_max=64, lut_bytes=1024)],
                         ids=["default", "small", "odd", "no-pq", "pq-odd"])
def test_lint_clean_on_emitted_projects(tmp_path, cfg):
    proj = write_project(cfg, tmp_path / "p")
    assert lint_mod.lint_project(proj.path) == []
    r = subprocess.run([sys.executable, "-m", "flow.hls.lint", str(proj.path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# (id, rule, file, anchor regex, replacement): one violation planted into a copy of the default project.
# The anchors are lines of the current templates; the test fails loudly when one moves.
PLANTS = [
    ("alloc-top", "alloc", "firmware/top.cpp", r"(\n    E::cycles_t cyc = 0;\n)",
     r"\1    int *scratch = new int[16];\n"),
    ("alloc-memories", "alloc", "firmware/memories.h", r"static E::cbrow_t cb_mem\[E::cb_rows\];",
     "static E::cbrow_t *cb_mem = new E::cbrow_t[E::cb_rows];"),
    ("stl-post_op", "stl", "firmware/post_op.h", r"(namespace vqhls \{\n)", r"\1static std::vector<int> lut;\n"),
    ("recursion-top", "recursion", "firmware/top.cpp",
     r"static bool out_of\(int v, int lo, int hi\) \{ return v < lo \|\| v > hi; \}",
     "static bool out_of(int v, int lo, int hi) { return v < lo ? true : (v > hi || out_of(v, lo + 1, hi)); }"),
    ("float-post_op", "float", "firmware/post_op.h", r"(\n    v >>= shift;[^\n]*\n)", r"\1    float scale = 0.5f;\n"),
    # the tile loop runs a run-time length (from the descriptor): only its tripcount pragma bounds it
    ("loop-bound-systolic", "loop-bound", "firmware/systolic_array.h",
     r"(        for \(E::tcnt_t i = 0; i < len; i\+\+\) \{[^\n]*\n)#pragma HLS loop_tripcount min=1 max=\d+\n", r"\1"),
    # the parameter loader's chunks of one array: nwords from the descriptor
    ("loop-bound-param_loader", "loop-bound", "firmware/param_loader.h",
     r"(    for \(unsigned done = 0; done < nwords; done \+= LOAD_CHUNK\) \{\n)#pragma HLS loop_tripcount min=1 max=\d+\n",
     r"\1"),
    ("interface-axis", "interface", "firmware/top.cpp", r"#pragma HLS INTERFACE axis port=out_stream\n", ""),
    ("interface-status", "interface", "firmware/top.cpp",
     r"#pragma HLS INTERFACE s_axilite port=status offset=0x[0-9A-F]+ bundle=control\n", ""),
    ("io-top", "io", "firmware/top.cpp", r"(\n    \*config_hash = E::config_hash;\n)",
     r'\1    printf("engine start\\n");\n'),
    ("io-param_loader", "io", "firmware/param_loader.h", r'(#include "memories.h"\n)', r"\1#include <cstdio>\n"),
    ("virtual-engine_config", "virtual", "firmware/engine_config.h", r"(struct op_t \{\n)",
     r"\1    virtual int kind() const { return 0; }\n"),
]


def test_plants_cover_every_rule():
    rules = {"alloc", "stl", "recursion", "virtual", "float", "io", "loop-bound", "interface"}
    assert {rule for _, rule, *_ in PLANTS} == rules
    assert all(f"  {rule} " in lint_mod.__doc__ for rule in rules)


@pytest.mark.parametrize("plant", PLANTS, ids=[p[0] for p in PLANTS])
def test_lint_catches_planted_violation(default_project, tmp_path, plant):
    _, rule, rel, anchor, repl = plant
    copy = tmp_path / "planted"
    shutil.copytree(default_project.path, copy)
    path = copy / rel
    text, n = re.subn(anchor, repl, path.read_text(), count=1)
    assert n == 1, f"anchor {anchor!r} for {rule} not in {rel}: the template moved, pick a new anchor"
    path.write_text(text)
    found = lint_mod.lint_project(copy)
    # relative to the unplanted project, so that these tests say which rule the plant trips even while
    # the templates still fail the pipeline rules (test_default_build_has_no_lint_finding says that)
    base = Counter(v.rule for v in lint_mod.lint_project(default_project.path))
    have = Counter(v.rule for v in found)
    assert {r for r in have if have[r] > base[r]} == {rule}, [str(v) for v in found]
    assert all(v.path == rel for v in found if not base[v.rule])
    r = subprocess.run([sys.executable, "-m", "flow.hls.lint", str(copy)], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{rel}:" in r.stdout and f":{rule}:" in r.stdout


def test_lint_respects_synthesis_guard():
    src = """
#include "ap_int.h"
#ifndef __SYNTHESIS__
#include <cstdio>
static void dump(double v) { printf("%f", v); }
#endif
#ifdef __SYNTHESIS__
static int fast(int a) { return a; }
#else
static int fast(int a) { float f = a; return (int)f; }
#endif
void vqhls_engine(int *p) {
#pragma HLS INTERFACE s_axilite port=return
#pragma HLS INTERFACE m_axi port=p
    for (int i = 0; i < 8; i++) p[i] = fast(i);
}
"""
    assert lint_mod.lint_sources({"firmware/top.cpp": src}) == []
    bad = src.replace("#ifndef __SYNTHESIS__\n#include <cstdio>", "#include <cstdio>\n#ifndef __SYNTHESIS__")
    assert {v.rule for v in lint_mod.lint_sources({"firmware/top.cpp": bad})} == {"io"}


def test_lint_loop_bounds():
    ok = """
void vqhls_engine(int *p, int n) {
#pragma HLS INTERFACE s_axilite port=return
#pragma HLS INTERFACE m_axi port=p
#pragma HLS INTERFACE s_axilite port=n
    A: for (unsigned i = 0; i < CONFIG_T::rows * 2 + sizeof(int); i++) p[i] = 0;
    B: for (int i = 0; i < n; i++) {
#pragma HLS loop_tripcount min=1 max=64
        for (int j = 0; j < MAX_J; j++) p[j] += i;
    }
}
"""
    assert lint_mod.lint_sources({"firmware/top.cpp": ok}) == []
    bad = ok.replace("#pragma HLS loop_tripcount min=1 max=64\n", "") + "\nvoid g(int n) { while (n) n--; }\n"
    rules = [(v.rule, v.line) for v in lint_mod.lint_sources({"firmware/top.cpp": bad})]
    assert rules == [("loop-bound", 7), ("loop-bound", 12)]


def test_lint_cli_usage(tmp_path):
    r = subprocess.run([sys.executable, "-m", "flow.hls.lint", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "firmware" in r.stderr


def test_write_project_refuses_a_config_that_does_not_fit_the_board(tmp_path):
    """A config over the board's budget fails before any file is written, naming every over-used resource."""
    from flow.boards.resource_model import ResourceError
    from flow.compile.engine import EngineConfig

    big = EngineConfig(rows=16, dsp_rows=16, act_buf_bytes=1 << 18)
    with pytest.raises(ResourceError) as info:
        write_project(big, tmp_path / "p", board="pynq-z2")
    msg = str(info.value)
    assert "BRAM36" in msg and "DSP" in msg and "LUT" in msg
    assert not (tmp_path / "p").exists() and not list(tmp_path.iterdir())
    write_project(EngineConfig(), tmp_path / "ok", board="pynq-z2")   # the default build fits
