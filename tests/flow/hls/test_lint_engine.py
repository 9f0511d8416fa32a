"""The lint's engine rules (dependence, ports, multipliers, widths, m_axi; flow/hls/lint.py).

(a) small firmware snippets with and without each bug: what the rule must say is read off the snippet
    by hand (which memory is stored and loaded, how many reads reach a partition, ...);
(b) the second engine review's bugs re-inserted by text edit into a rendered default project, located by
    loop label so that the test follows the templates; each must be reported with its file and rule;
(c) the default build itself has no finding (test_default_build_has_no_lint_finding).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flow.hls import lint as lint_mod
from flow.hls.lint_mult import multiplier_counts
from flow.hls.project import write_project
from hls_testlib import DEFAULT_CFG

HEAD = """#include "ap_int.h"
namespace fw {
static const unsigned N = 64;
struct cfg {
    static const unsigned rows = 2;
    typedef ap_uint<16> cnt_t;
    typedef ap_uint<20> big_t;
};
typedef cfg C;
"""
TAIL = "\n} // namespace fw\n"


def lint(body: str, extra_top: str = "") -> list:
    """Lint one firmware file: HEAD + body + a top that partitions / binds the snippet's memories."""
    top = f"""
void vqhls_engine(int *p) {{
#pragma HLS INTERFACE s_axilite port=return
#pragma HLS INTERFACE m_axi port=p
{extra_top}
    fw::run(p);
}}
"""
    return lint_mod.lint_sources({"firmware/top.cpp": HEAD + body + TAIL + top})


def rules(found) -> list[tuple[str, int]]:
    return sorted((v.rule, v.line) for v in found)


def line_of(src: str, needle: str) -> int:
    """1-based line of `needle` in HEAD + src (the file lint() writes)."""
    text = HEAD + src
    return text[:text.index(needle)].count("\n") + 1


# ---------------------------------------------------------------------------
# (a) dependence
# ---------------------------------------------------------------------------
DEP = """
static int mem[N];
inline void put(unsigned a, int v) {
#pragma HLS INLINE
    mem[a] = v;
}
inline void put_call(unsigned a, int v) { mem[a] = v; }
void run(int *p) {
L: for (ap_uint<8> i = 0; i < 64; i++) {
#pragma HLS PIPELINE II=1
        BODY
    }
}
"""


@pytest.mark.parametrize("body, fires", [
    ("mem[i] = mem[(i + 1) & 63] + 1;", True),          # store and load
    ("mem[i] += 1;", True),                              # read-modify-write
    ("int &r = mem[i]; r = r + 1;", True),               # reference bound then assigned
    ("int v = mem[i]; put((i + 3) & 63, v);", True),     # the store inside an INLINE helper
    ("int v = mem[i]; put_call((i + 3) & 63, v);", False),  # a called (not inlined) function is not expanded
    ("int v = mem[i]; int w = mem[(i + 1) & 63]; p[0] = v + w;", False),  # loads only
    ("mem[i] = 7;", False),                              # stores only
])
def test_dependence_snippets(body, fires):
    src = DEP.replace("BODY", body)
    found = [v for v in lint(src) if v.rule == "dependence"]
    assert bool(found) == fires, [str(v) for v in found]
    if fires:
        assert found[0].line == line_of(src, "L: for") and "'mem'" in found[0].message and "L " in found[0].message


def test_dependence_pragma_and_its_justification():
    body = "mem[i] = mem[(i + 1) & 63] + 1;"
    pragma = "#pragma HLS DEPENDENCE variable=mem type=inter dependent=false\n        "
    comment = "// i and i + 1 never meet within the pipeline depth (test invariant)\n"
    ok = DEP.replace("BODY", body).replace("#pragma HLS PIPELINE II=1\n", "#pragma HLS PIPELINE II=1\n" + comment + pragma)
    assert [v for v in lint(ok) if v.rule == "dependence"] == []
    bare = DEP.replace("BODY", body).replace("#pragma HLS PIPELINE II=1\n", "#pragma HLS PIPELINE II=1\n" + pragma)
    found = [v for v in lint(bare) if v.rule == "dependence"]
    assert rules(found) == [("dependence", line_of(bare, "#pragma HLS DEPENDENCE"))]
    assert "justification" in found[0].message
    empty = ok.replace(comment, "//\n")
    assert rules([v for v in lint(empty) if v.rule == "dependence"]) == [("dependence", line_of(empty, "#pragma HLS DEPENDENCE"))]
    # a pragma naming another array leaves mem uncovered
    other = ok.replace("variable=mem", "variable=nothing")
    assert [v.line for v in lint(other) if v.rule == "dependence"] == [line_of(other, "L: for")]


def test_dependence_exempts_registers():
    src = DEP.replace("BODY", "mem[i & 3] = mem[(i + 1) & 3] + 1;")
    assert [v for v in lint(src, "#pragma HLS ARRAY_PARTITION variable=mem complete dim=0") if v.rule == "dependence"] == []


# ---------------------------------------------------------------------------
# (a) ports
# ---------------------------------------------------------------------------
PORTS = """
static int m[2][N];
void run(int *p) {
    int pp = p[1] & 1;
L: for (ap_uint<8> i = 0; i < 64; i++) {
#pragma HLS PIPELINE II=1
        BODY
    }
}
"""
PART = "#pragma HLS ARRAY_PARTITION variable=m complete dim=1\n#pragma HLS BIND_STORAGE variable=m type={} impl=bram"


@pytest.mark.parametrize("binding, body, fires", [
    # one read per physical memory m[0], m[1]
    ("ram_s2p", "p[0] = m[0][i] + m[1][i];", False),
    # the review's acc_mem pattern: m[pp] and m[1 - pp] with a run-time pp both reach m[0] and m[1]
    ("ram_s2p", "p[0] = m[pp][i] + m[1 - pp][(i + 1) & 63];", True),
    # the same two reads on the two arms of one if/else: one read per iteration
    ("ram_s2p", "int v; if (i[0]) v = m[pp][i]; else v = m[1 - pp][i]; p[0] = v;", False),
    # different predicates are not exclusive
    ("ram_s2p", "int v = 0; if (i[0]) v = m[pp][i]; if (i[1]) v += m[1 - pp][i]; p[0] = v;", True),
    # an unrolled loop: k a compile-time index, one read per partition
    ("ram_s2p", "int s = 0;\n U: for (unsigned k = 0; k < C::rows; k++) {\n#pragma HLS UNROLL\n s += m[k][i]; }\n p[0] = s;", False),
    # unrolled twice into the same partition
    ("ram_s2p", "int s = 0;\n U: for (unsigned k = 0; k < 2; k++) {\n#pragma HLS UNROLL\n s += m[0][(i + k) & 63]; }\n p[0] = s;", True),
    # a loop inside a pipelined loop is unrolled without the pragma too
    ("ram_s2p", "int s = 0;\n for (unsigned k = 0; k < 2; k++) s += m[0][(i + k) & 63];\n p[0] = s;", True),
    # one read + one write: s2p yes, 1p no, t2p yes, 1wnr yes
    ("ram_s2p", "m[0][i] = m[0][(i + 1) & 63];", False),
    ("ram_1p", "m[0][i] = m[0][(i + 1) & 63];", True),
    ("ram_t2p", "m[0][i] = m[0][(i + 1) & 63];", False),
    ("ram_t2p", "m[0][i] = m[0][(i + 1) & 63] + m[0][(i + 2) & 63];", True),
    ("ram_1wnr", "p[0] = m[0][i] + m[0][(i + 1) & 63] + m[0][(i + 2) & 63];", False),
    ("ram_1wnr", "m[pp][i] = 1; m[0][(i + 1) & 63] = 2;", True),   # two writes reach m[0]
])
def test_ports_snippets(binding, body, fires):
    src = PORTS.replace("BODY", body)
    found = [v for v in lint(src, PART.format(binding)) if v.rule == "ports"]
    assert bool(found) == fires, [str(v) for v in found]
    if fires:
        assert found[0].line == line_of(src, "L: for") and "memory m[" in found[0].message


def test_ports_counts_in_the_message():
    src = PORTS.replace("BODY", "p[0] = m[pp][i] + m[1 - pp][(i + 1) & 63];")
    found = [v for v in lint(src, PART.format("ram_s2p")) if v.rule == "ports"]
    assert len(found) == 1 and "2 read(s) and 0 write(s)" in found[0].message, found
    assert "reaches every partition" in found[0].message


# ---------------------------------------------------------------------------
# (a) widths
# ---------------------------------------------------------------------------
WIDTH = """
struct st_t { int n; C::cnt_t k; };
void run(int *p) {
    DECL
L: for (IV i = 0; i < 64; i++) {
#pragma HLS PIPELINE II=1
        BODY
    }
}
"""


@pytest.mark.parametrize("decl, iv, body, fires", [
    ("int cnt = 0;", "ap_uint<8>", "cnt++; p[0] = cnt;", True),
    ("unsigned cnt = 0;", "ap_uint<8>", "cnt += 2; p[0] = cnt;", True),
    ("long cnt = 0;", "ap_uint<8>", "cnt = cnt + 1; p[0] = cnt;", True),
    ("ap_uint<17> cnt = 0;", "ap_uint<8>", "cnt++; p[0] = cnt;", True),
    ("C::big_t cnt = 0;", "ap_uint<8>", "cnt++; p[0] = cnt;", True),          # typedef in a struct: 20 bits
    ("st_t s; s.n = 0;", "ap_uint<8>", "s.n++; p[0] = s.n;", True),            # a struct member
    ("ap_uint<16> cnt = 0;", "ap_uint<8>", "cnt++; p[0] = cnt;", False),
    ("C::cnt_t cnt = 0;", "ap_uint<8>", "cnt++; p[0] = cnt;", False),          # typedef ap_uint<16>
    ("st_t s; s.k = 0;", "ap_uint<8>", "s.k++; p[0] = s.k;", False),
    ("int cnt = 0;", "ap_uint<8>", "cnt = p[1]; p[0] = cnt;", False),         # assigned, not from itself
    ("int x = 0;", "ap_uint<8>", "int t = 0; t++; p[0] = t + x;", False),     # declared inside the loop
    ("int x = 0;", "int", "p[0] = x;", True),                                 # the induction variable
    ("int x = 0;", "unsigned", "p[0] = x;", True),
    ("int x = 0;", "C::cnt_t", "p[0] = x;", False),
])
def test_widths_snippets(decl, iv, body, fires):
    src = WIDTH.replace("DECL", decl).replace("IV", iv).replace("BODY", body)
    found = [v for v in lint(src) if v.rule == "widths"]
    assert bool(found) == fires, [str(v) for v in found]


def test_widths_waiver_needs_a_reason():
    src = WIDTH.replace("DECL", "unsigned cnt = 0;   // lint: wide-counter beats past 65535 in one burst") \
        .replace("IV", "ap_uint<8>").replace("BODY", "cnt++; p[0] = cnt;")
    assert [v for v in lint(src) if v.rule == "widths"] == []
    bare = src.replace("beats past 65535 in one burst", "")
    assert [v.line for v in lint(bare) if v.rule == "widths"] == [line_of(bare, "cnt++")]
    iv = WIDTH.replace("DECL", "").replace("BODY", "p[0] = 0;") \
        .replace("L: for (IV i = 0; i < 64; i++) {", "L: for (unsigned i = 0; i < 64; i++) {   // lint: wide-counter >64k beats")
    assert [v for v in lint(iv) if v.rule == "widths"] == []


# ---------------------------------------------------------------------------
# (a) m_axi
# ---------------------------------------------------------------------------
MAXI = """
inline int fetch(const int *q, unsigned a) {
#pragma HLS INLINE
    return q[a];
}
void inner(const int *q, int *acc) {
I: for (ap_uint<8> i = 0; i < 8; i++) {
#pragma HLS PIPELINE II=1
        acc[i] += q[i];
    }
}
inline void inner_inline(const int *q, int *acc) {
#pragma HLS INLINE
I2: for (ap_uint<8> i = 0; i < 8; i++) {
#pragma HLS PIPELINE II=1
        acc[i] += fetch(q, i);
    }
}
void run(int *p) {
    int acc[8];
BODY
}
"""


@pytest.mark.parametrize("body, fires", [
    # a burst-like loop at the top of its function: fine
    ("T: for (ap_uint<8> i = 0; i < 8; i++) {\n#pragma HLS PIPELINE II=1\n acc[i] = p[i]; }", False),
    # the old PQ_CYCLE shape: a pipelined loop reading the m_axi port inside two loops of its function
    ("O: for (ap_uint<8> o = 0; o < 4; o++) {\n S: for (ap_uint<8> s = 0; s < 4; s++) {\n"
     " I: for (ap_uint<8> i = 0; i < 8; i++) {\n#pragma HLS PIPELINE II=1\n acc[i] += p[o * 8 + i]; } } }", True),
    # the same through an INLINE helper (its loop lands inside O) and a helper read of the pointer
    ("O: for (ap_uint<8> o = 0; o < 4; o++) inner_inline(p, acc);", True),
    # a called function's loop is at the top of that function
    ("O: for (ap_uint<8> o = 0; o < 4; o++) inner(p, acc);", False),
    # a non-m_axi array in the same place
    ("O: for (ap_uint<8> o = 0; o < 4; o++) {\n I: for (ap_uint<8> i = 0; i < 8; i++) {\n#pragma HLS PIPELINE II=1\n"
     " acc[i] += acc[(i + 1) & 7]; } }", False),
])
def test_m_axi_snippets(body, fires):
    src = MAXI.replace("BODY", body)
    found = [v for v in lint(src) if v.rule == "m_axi"]
    assert bool(found) == fires, [str(v) for v in found]


# ---------------------------------------------------------------------------
# (a) multipliers (g++)
# ---------------------------------------------------------------------------
MULT_SRC = """#include "ap_int.h"
namespace fw {
inline int pe_mul_dsp(int w, int x) {
#pragma HLS INLINE
    return w * x;
}
inline unsigned addr(unsigned a, unsigned b) {
#pragma HLS INLINE
    return a * b + 1;
}
// run once per call: may multiply
unsigned check(unsigned a, unsigned b, unsigned c, unsigned d) { return a * b + c * d; }
void layer(int *p, int w, unsigned stride) {
L: for (ap_uint<8> i = 0; i < 64; i++) {
#pragma HLS PIPELINE II=1
        p[i] = pe_mul_dsp(w, p[i]) + (int)(3 * (unsigned)i) + (int)BODY;
    }
}
} // namespace fw
void vqhls_engine(int *p, int w, unsigned s) {
#pragma HLS INTERFACE s_axilite port=return
#pragma HLS INTERFACE m_axi port=p
#pragma HLS INTERFACE s_axilite port=w
#pragma HLS INTERFACE s_axilite port=s
    p[0] = (int)fw::check((unsigned)p[1], (unsigned)p[2], (unsigned)p[3], s);
    fw::layer(p, w, s);
}
"""


def _mult_project(tmp_path: Path, body: str) -> Path:
    fw = tmp_path / "firmware"
    fw.mkdir(parents=True)
    (fw / "top.cpp").write_text(MULT_SRC.replace("BODY", body))
    return tmp_path


@pytest.mark.csim
def test_multiplier_counts_snippet(tmp_path):
    proj = _mult_project(tmp_path, "addr((unsigned)p[i], stride)")
    counts = multiplier_counts(proj)
    # by hand: check a*b + c*d; addr a*b; pe_mul_dsp w*x; layer: 3*i is by a constant
    assert counts["check"] == 2 and counts["addr"] == 1 and counts["pe_mul_dsp"] == 1 and counts["layer"] == 0, counts
    found = [v for v in lint_mod.lint_project(proj) if v.rule == "multipliers"]
    # addr is an INLINE helper of the function with the pipelined loop; pe_mul_dsp is a declared unit;
    # check has no pipelined loop
    assert [(v.path, v.line) for v in found] == [("firmware/top.cpp", 9)], [str(v) for v in found]
    assert "'addr'" in found[0].message


@pytest.mark.csim
def test_multipliers_in_the_pipelined_function(tmp_path):
    proj = _mult_project(tmp_path, "((unsigned)p[i] * stride)")
    assert multiplier_counts(proj)["layer"] == 1
    found = [v for v in lint_mod.lint_project(proj) if v.rule == "multipliers"]
    assert [(v.path, v.line) for v in found] == [("firmware/top.cpp", 16)], [str(v) for v in found]
    clean = _mult_project(tmp_path / "c", "((unsigned)p[i] * 5u)")
    assert [v for v in lint_mod.lint_project(clean) if v.rule == "multipliers"] == []


def test_declared_units_tuple():
    assert lint_mod.DECLARED_MULT_UNITS == ("pe_mul_dsp", "pe_mul_lut", "requantize", "resid_mul", "pq_square")
    for rule in ("dependence", "ports", "multipliers", "widths", "m_axi"):
        assert f"  {rule} " in lint_mod.__doc__, rule


# ---------------------------------------------------------------------------
# (b) the review's bugs re-inserted into the rendered default project
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return write_project(DEFAULT_CFG, tmp_path_factory.mktemp("lint") / "default").path


def _copy(rendered: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "p"
    shutil.copytree(rendered, dst)
    return dst


def _files(proj: Path) -> dict[str, str]:
    return {p.relative_to(proj).as_posix(): p.read_text() for p in sorted((proj / "firmware").iterdir())
            if p.suffix in (".h", ".cpp")}


def _loop(text: str, label: str) -> tuple[int, int, int]:
    """(start of the label, start of the body after '{', end of the body '}') of the loop labelled `label`."""
    m = re.search(r"\b" + label + r":\s*\n\s*for\s*\(", text)
    assert m, f"loop {label} not found: the template moved, update the test's label"
    depth, k = 0, m.end() - 1
    while True:                                    # the header's closing parenthesis
        depth += {"(": 1, ")": -1}.get(text[k], 0)
        if depth == 0:
            break
        k += 1
    b = text.index("{", k)
    depth, e = 0, b
    while True:
        depth += {"{": 1, "}": -1}.get(text[e], 0)
        if depth == 0:
            break
        e += 1
    return m.start(), b + 1, e


def _after_pipeline(text: str, label: str) -> int:
    """Offset just after the '#pragma HLS PIPELINE' line of the loop's body."""
    _, b, e = _loop(text, label)
    m = re.compile(r"#pragma HLS PIPELINE[^\n]*\n").search(text, b, e)
    assert m, f"{label} is not pipelined"
    return m.end()


def _ivar(text: str, label: str) -> str:
    s, b, _ = _loop(text, label)
    m = re.match(r"\w+:\s*for\s*\(\s*[\w:<>, ]+?\s+(\w+)\s*=", text[s:b])
    assert m, f"no induction variable in {label}"
    return m.group(1)


def _lint_files(proj: Path) -> list:
    return lint_mod.lint_sources(_files(proj))


@pytest.mark.parametrize("rel, label", [("firmware/systolic_array.h", "TILE_CYCLE"), ("firmware/post_op.h", "POOL")])
def test_reinserted_missing_act_mem_dependence(rendered, tmp_path, rel, label):
    proj = _copy(rendered, tmp_path)
    path = proj / rel
    text = path.read_text()
    s, b, e = _loop(text, label)
    body = re.sub(r"[ \t]*#pragma HLS DEPENDENCE variable=act_mem\b[^\n]*\n", "", text[b:e])
    path.write_text(text[:b] + body + text[e:])
    line = path.read_text()[:path.read_text().index(label + ":")].count("\n") + 2
    found = [v for v in _lint_files(proj) if v.rule == "dependence" and "'act_mem'" in v.message and label in v.message]
    assert [(v.path, v.line) for v in found] == [(rel, line)], [str(v) for v in found]


def test_reinserted_missing_justification(rendered, tmp_path):
    proj = _copy(rendered, tmp_path)
    rel = "firmware/systolic_array.h"
    path = proj / rel
    text = path.read_text()
    _, b, e = _loop(text, "TILE_CYCLE")
    m = re.compile(r"((?:[ \t]*//[^\n]*\n)+)([ \t]*#pragma HLS DEPENDENCE[^\n]*\n)").search(text, b, e)
    assert m, "TILE_CYCLE has no commented DEPENDENCE pragma"
    before = [v for v in _lint_files(proj) if v.rule == "dependence" and "justification" in v.message]
    assert before == [], [str(v) for v in before]
    path.write_text(text[:m.start()] + m.group(2) + text[m.end():])
    line = text[:m.start()].count("\n") + 1
    found = [v for v in _lint_files(proj) if v.rule == "dependence" and "justification" in v.message]
    assert [(v.path, v.line) for v in found] == [(rel, line)], [str(v) for v in found]


def test_reinserted_acc_mem_ping_pong_double_read(rendered, tmp_path):
    proj = _copy(rendered, tmp_path)
    rel = "firmware/systolic_array.h"
    path = proj / rel
    text = path.read_text()
    dims = re.search(r"\bacc_mem((?:\[[^\]]+\])+)\s*;", (proj / "firmware/memories.h").read_text())
    assert dims, "acc_mem is not declared in memories.h"
    rest = "[0]" * (dims.group(1).count("[") - 1)
    iv = _ivar(text, "TILE_CYCLE")
    probe = (f"            const int lint_pp = (int){iv} & 1;\n"
             f"            const E::accum_t lint_a = acc_mem[lint_pp]{rest};\n"
             f"            const E::accum_t lint_b = acc_mem[1 - lint_pp]{rest};\n"
             f"            (void)(lint_a + lint_b);\n")
    k = _after_pipeline(text, "TILE_CYCLE")
    path.write_text(text[:k] + probe + text[k:])
    line = text[:text.index("TILE_CYCLE:")].count("\n") + 2
    found = [v for v in _lint_files(proj) if v.rule == "ports" and "acc_mem" in v.message]
    assert [(v.path, v.line) for v in found] == [(rel, line)], [str(v) for v in found]
    assert "TILE_CYCLE" in found[0].message


@pytest.mark.parametrize("typ, fires", [("int", True), ("ap_uint<16>", False)])
def test_reinserted_int_counter(rendered, tmp_path, typ, fires):
    proj = _copy(rendered, tmp_path)
    rel = "firmware/systolic_array.h"
    path = proj / rel
    text = path.read_text()
    k = _after_pipeline(text, "TILE_CYCLE")
    text = text[:k] + "            lint_ctr++;\n" + text[k:]
    s = text.index("TILE_CYCLE:")
    s = text.rindex("\n", 0, s) + 1
    text = text[:s] + f"        {typ} lint_ctr = 0;\n" + text[s:]
    path.write_text(text)
    line = text[:text.index("lint_ctr++")].count("\n") + 1
    found = [v for v in _lint_files(proj) if v.rule == "widths" and "'lint_ctr'" in v.message]
    assert [(v.path, v.line) for v in found] == ([(rel, line)] if fires else []), [str(v) for v in found]


@pytest.mark.parametrize("nested", [True, False])
def test_reinserted_m_axi_read_in_nested_pipelined_loop(rendered, tmp_path, nested):
    proj = _copy(rendered, tmp_path)
    rel = "firmware/top.cpp"
    path = proj / rel
    text = path.read_text()
    top = text.index("void vqhls_engine(")
    body = text.index("{", text.index(")", top))
    pragmas = list(re.finditer(r"\n[ \t]*#pragma HLS[^\n]*", text[body:]))
    k = body + max(m.end() for m in pragmas if m.start() < text[body:].index(";")) + 1
    inner = ("    LINT_INNER:\n        for (ap_uint<4> li = 0; li < 4; li++) {\n#pragma HLS PIPELINE II=1\n"
             "            lint_acc ^= params[li];\n        }\n")
    loop = ("    ap_uint<32> lint_acc = 0;\n" +
            ("LINT_OUTER:\n    for (ap_uint<2> lo = 0; lo < 2; lo++) {\n" + inner + "    }\n" if nested else inner))
    text = text[:k] + loop + text[k:]
    path.write_text(text)
    line = text[:text.index("lint_acc ^= params")].count("\n") + 1
    found = [v for v in _lint_files(proj) if v.rule == "m_axi" and "LINT_INNER" in v.message]
    assert [(v.path, v.line) for v in found] == ([(rel, line)] if nested else []), [str(v) for v in found]


def test_burst_read_is_not_an_m_axi_finding(rendered):
    found = [v for v in lint_mod.lint_sources(_files(rendered)) if v.rule == "m_axi"]
    assert not any("BURST" in v.message or "burst_read" in v.message for v in found), [str(v) for v in found]


@pytest.mark.csim
def test_reinserted_runtime_multiply(rendered, tmp_path):
    proj = _copy(rendered, tmp_path)
    rel = "firmware/systolic_array.h"
    path = proj / rel
    text = path.read_text()
    iv = _ivar(text, "TILE_CYCLE")
    k = _after_pipeline(text, "TILE_CYCLE")
    probe = f"            {{ volatile int lint_sink = (int)({iv}) * (int)({iv} + 1); (void)lint_sink; }}\n"
    path.write_text(text[:k] + probe + text[k:])
    line = text[:k].count("\n") + 1
    # the function holding TILE_CYCLE, read off the text: the last function definition opened before it
    func = re.findall(r"\n(?:inline |static )*[\w:<>]+\s+(\w+)\s*\([^;{]*\)\s*\{", text[:text.index("TILE_CYCLE:")])[-1]
    before = multiplier_counts(rendered).get(func, 0)
    assert multiplier_counts(proj)[func] == before + 1
    found = [v for v in lint_mod.lint_project(proj) if v.rule == "multipliers" and (v.path, v.line) == (rel, line)]
    assert len(found) == 1 and f"'{func}'" in found[0].message, [str(v) for v in found]


# ---------------------------------------------------------------------------
# (c) the default build
# ---------------------------------------------------------------------------
@pytest.mark.csim
def test_default_build_has_no_lint_finding(rendered):
    found = lint_mod.lint_project(rendered)
    assert found == [], "\n".join(map(str, found))
    r = subprocess.run([sys.executable, "-m", "flow.hls.lint", str(rendered)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
