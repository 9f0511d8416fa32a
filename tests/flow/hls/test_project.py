"""The emitted HLS project: files, atomic writes, register map, Tcl, lint, build cache, toolchain errors."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flow.compile.engine import EngineConfig
from flow.hls import lint as lint_mod
from flow.hls import project as project_mod
from flow.hls.project import UnsupportedEngineConfig, load_project, write_project
from hls_testlib import DEFAULT_CFG, ODD_CFG, SMALL_CFG
from host import regmap

FIRMWARE = ["codebook_decoder.h", "engine_config.h", "lookup_engine.h", "post_op.h", "regmap.h", "systolic_array.h", "top.cpp", "top.h"]


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
                     (dict(max_ops=300), "max_ops"), (dict(num_bufs=1), "num_bufs")):
        with pytest.raises(UnsupportedEngineConfig, match=what):
            project_mod.render(EngineConfig(**kw))


# ---------------------------------------------------------------------------
# register map: one definition, rendered
# ---------------------------------------------------------------------------
def test_regmap_rendered_from_host_regmap(default_project):
    fw = default_project.firmware_dir
    header = (fw / "regmap.h").read_text()
    consts = {m.group(1): int(m.group(2), 0) for m in re.finditer(r"static const unsigned (\w+) = (0x[0-9A-Fa-f]+|\d+);", header)}
    for name in ("CTRL", "GIE", "IER", "ISR", "N_IMAGES", "PARAMS_LO", "PARAMS_HI", "CONFIG_HASH", "CYCLES_LO",
                 "CYCLES_HI", "STATUS", "CTRL_AP_START", "CTRL_AP_DONE", "CTRL_AP_IDLE", "ERR_PARAM", "ERR_LIMIT"):
        assert consts[name] == getattr(regmap, name), name
    top = (fw / "top.cpp").read_text()
    offsets = {m.group(1): int(m.group(2), 16)
               for m in re.finditer(r"#pragma HLS INTERFACE s_axilite port=(\w+) offset=0x([0-9A-Fa-f]+)", top)}
    assert offsets == regmap.PORT_OFFSETS
    assert "port=return bundle=control" in top
    cfg_h = (fw / "engine_config.h").read_text()
    m = re.search(r"config_hash = 0x([0-9A-F]{8})u", cfg_h)
    assert int(m.group(1), 16) == regmap.config_hash_u32(DEFAULT_CFG.hash())


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
    from flow.quant.golden import run_program

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
    """The emitted Makefile builds the testbench with g++ on its own and `make csim` passes."""
    from hls_testlib import lenet_program, rand_inputs
    from flow.quant.golden import run_program

    if not shutil.which("make"):
        pytest.skip("make not installed: apt-get install make")
    rng = np.random.default_rng(1)
    prog = lenet_program(rng)
    x = rand_inputs(rng, prog, 5)
    proj = write_project(DEFAULT_CFG, tmp_path / "p", program=prog, inputs=x, expected=run_program(prog, x))
    r = subprocess.run(["make", "-s", "csim", f"PYTHON={sys.executable}"], cwd=proj.path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tb: PASS" in r.stdout and "mismatching bytes 0" in r.stdout


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


PLANTS = {
    # rule: (file, anchor, replacement)
    "alloc": ("firmware/top.cpp", "    engine_config::cycles_t cyc = 0;\n",
              "    engine_config::cycles_t cyc = 0;\n    int *scratch = new int[16];\n"),
    "stl": ("firmware/post_op.h", "namespace vqhls {\n", "namespace vqhls {\nstatic std::vector<int> lut;\n"),
    "recursion": ("firmware/top.cpp", "static bool out_of(int v, int lo, int hi) { return v < lo || v > hi; }",
                  "static bool out_of(int v, int lo, int hi) { return v < lo ? true : (v > hi || out_of(v, lo + 1, hi)); }"),
    "float": ("firmware/post_op.h", "    const wide_t lo_w = lo;\n",
              "    const wide_t lo_w = lo;\n    float scale = 0.5f;\n"),
    "loop-bound": ("firmware/codebook_decoder.h", "#pragma HLS loop_tripcount min=1 max={max_vectors}\n", ""),
    "interface": ("firmware/top.cpp", "#pragma HLS INTERFACE axis port=out_stream\n", ""),
    "io": ("firmware/top.cpp", "    *config_hash = engine_config::config_hash;\n",
           "    *config_hash = engine_config::config_hash;\n    printf(\"engine start\\n\");\n"),
    "virtual": ("firmware/engine_config.h", "struct op_t {\n", "struct op_t {\n    virtual int kind() const { return 0; }\n"),
}


@pytest.mark.parametrize("rule", sorted(PLANTS))
def test_lint_catches_planted_violation(default_project, tmp_path, rule):
    copy = tmp_path / "planted"
    shutil.copytree(default_project.path, copy)
    rel, anchor, repl = PLANTS[rule]
    anchor = anchor.replace("{max_vectors}", str(project_mod.derived_params(DEFAULT_CFG)["max_vectors"]))
    path = copy / rel
    text = path.read_text()
    assert anchor in text, f"anchor for {rule} not in {rel}"
    path.write_text(text.replace(anchor, repl, 1))
    found = lint_mod.lint_project(copy)
    assert [v.rule for v in found] and {v.rule for v in found} == {rule}, [str(v) for v in found]
    assert all(v.path == rel for v in found)
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
