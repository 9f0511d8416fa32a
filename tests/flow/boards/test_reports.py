"""Vendor-report parsers (flow.boards.reports) on real Xilinx reports.

The fixtures are hls4ml's test reports (Apache-2.0), kept outside the repo in
``shared/fixtures/vendor-reports/`` (see its README.md) and read from there at
run time. Expected values below were read by hand from those files; each
comment says where. Variants (Vitis HLS tags, undefined latency, newer
report_utilization columns) are made in tmp_path by editing the fixture text.
"""
from __future__ import annotations

import re

import pytest
from shared_fixtures import shared_fixture_dir

from flow.boards.reports import (
    HlsReport,
    ReportError,
    UtilizationReport,
    compare,
    parse_csynth_rpt,
    parse_csynth_xml,
    parse_utilization,
)

FIXTURES = shared_fixture_dir("vendor-reports")

CSYNTH_XML = FIXTURES / "myproject_csynth.xml"
CSYNTH_RPT = FIXTURES / "myproject_csynth.rpt"
UTIL_RPT = FIXTURES / "vivado_synth.rpt"


# ---- csynth.xml ----------------------------------------------------------------

def test_csynth_xml_values():
    r = parse_csynth_xml(CSYNTH_XML)
    assert isinstance(r, HlsReport)
    assert r.version == "2020.1"                  # <ReportVersion><Version>
    assert r.tool is None                         # the xml does not name the tool
    assert r.top == "myproject"                   # <UserAssignments><TopModelName>
    assert r.part == "xc7z020-clg400-1"           # <UserAssignments><Part>
    assert r.target_clock_ns == 5.0               # <TargetClockPeriod>5.00
    assert r.estimated_clock_ns == 4.049          # <SummaryOfTimingAnalysis><EstimatedClockPeriod>
    # <SummaryOfOverallLatency>: Best-/Worst-caseLatency 10, Interval-min/max 8
    assert (r.latency_min, r.latency_max) == (10, 10)
    assert (r.interval_min, r.interval_max) == (8, 8)
    # <AreaEstimates><Resources>: BRAM_18K 0, DSP48E 73, FF 7969, LUT 2532, URAM 0
    assert (r.bram18, r.dsp, r.ff, r.lut, r.uram) == (0, 73, 7969, 2532, 0)
    # <AreaEstimates><AvailableResources>: 280 / 220 / 106400 / 53200 / 0
    assert r.available == {"bram18": 280, "dsp": 220, "ff": 106400, "lut": 53200, "uram": 0}
    assert r.source == str(CSYNTH_XML)
    assert r.usage() == {"bram36": 0.0, "dsp": 73, "lut": 2532, "ff": 7969}


def test_csynth_xml_vitis_tags_and_undef(tmp_path):
    """Vitis HLS writes <DSP> for <DSP48E>, may omit <URAM>, and 'undef' for unbounded latency."""
    text = CSYNTH_XML.read_text()
    text = text.replace("DSP48E>", "DSP>").replace("<URAM>0</URAM>\n", "")
    text = re.sub(r"<(Best-caseLatency|Worst-caseLatency|Interval-min|Interval-max)>\d+<",
                  r"<\1>undef<", text)
    assert text.count("<DSP>") == 2 and "undef" in text and "URAM" not in text
    p = tmp_path / "csynth.xml"
    p.write_text(text)
    r = parse_csynth_xml(p)
    assert (r.bram18, r.dsp, r.ff, r.lut, r.uram) == (0, 73, 7969, 2532, 0)
    assert r.available == {"bram18": 280, "dsp": 220, "ff": 106400, "lut": 53200}
    assert (r.latency_min, r.latency_max, r.interval_min, r.interval_max) == (None,) * 4
    assert r.estimated_clock_ns == 4.049


# ---- csynth.rpt ----------------------------------------------------------------

def test_csynth_rpt_values():
    r = parse_csynth_rpt(CSYNTH_RPT)
    assert r.tool == "Vivado HLS"                 # "== Vivado HLS Report for 'myproject'"
    assert r.top == "myproject"
    assert r.version == "2020.1"                  # "* Version:        2020.1 (Build 2897737 ...)"
    assert r.part == "xc7z020-clg400-1"           # "* Target device:  xc7z020-clg400-1"
    # Timing summary: "|ap_clk  | 5.00 ns | 4.049 ns |   0.62 ns  |"
    assert (r.target_clock_ns, r.estimated_clock_ns) == (5.0, 4.049)
    # Latency summary: "|       10|       10| 50.000 ns | 50.000 ns |    8|    8| dataflow |"
    assert (r.latency_min, r.latency_max, r.interval_min, r.interval_max) == (10, 10, 8, 8)
    # Utilization Estimates, Summary, "|Total |  0|  73|  7969|  2532|  0|"
    assert (r.bram18, r.dsp, r.ff, r.lut, r.uram) == (0, 73, 7969, 2532, 0)
    # "|Available |  280|  220|  106400|  53200|  0|"
    assert r.available == {"bram18": 280, "dsp": 220, "ff": 106400, "lut": 53200, "uram": 0}


def test_xml_and_rpt_of_same_design_agree():
    x, t = parse_csynth_xml(CSYNTH_XML), parse_csynth_rpt(CSYNTH_RPT)
    for f in ("top", "part", "target_clock_ns", "estimated_clock_ns", "latency_min", "latency_max",
              "interval_min", "interval_max", "bram18", "dsp", "ff", "lut", "uram", "available",
              "version"):
        assert getattr(x, f) == getattr(t, f), f
    assert x.usage() == t.usage()


def test_csynth_rpt_vitis_column_and_unknown_latency(tmp_path):
    """Vitis HLS names the column 'DSP'; unbounded latency/interval cells are '?'."""
    text = CSYNTH_RPT.read_text()
    text = text.replace("| DSP48E|", "|    DSP|")
    text = text.replace("|       10|       10| 50.000 ns | 50.000 ns |    8|    8| dataflow |",
                        "|        ?|        ?|         ? |         ? |    ?|    ?| dataflow |")
    assert "?|" in text
    p = tmp_path / "x_csynth.rpt"
    p.write_text(text)
    r = parse_csynth_rpt(p)
    assert (r.bram18, r.dsp, r.ff, r.lut) == (0, 73, 7969, 2532)
    assert (r.latency_min, r.latency_max, r.interval_min, r.interval_max) == (None,) * 4


# ---- report_utilization ---------------------------------------------------------

def test_utilization_values():
    r = parse_utilization(UTIL_RPT)
    assert isinstance(r, UtilizationReport)
    assert r.part == "7z020clg400-1"             # "| Device       : 7z020clg400-1" (no "xc")
    assert (r.tool, r.version) == ("Vivado", "2020.1")   # "| Tool Version : Vivado v.2020.1 ..."
    # 1. Slice Logic: "| Slice LUTs* | 1526 | 0 | 53200 |", "|   LUT as Memory | 48 | 0 | 17400 |",
    #                 "| Slice Registers | 2428 | 0 | 106400 |"
    assert (r.lut, r.lutram, r.ff) == (1526, 48, 2428)
    # 2. Memory: "| Block RAM Tile | 0 | 0 | 140 |"; 3. DSP: "| DSPs | 66 | 0 | 220 |"
    assert r.bram36 == 0.0 and isinstance(r.bram36, float)
    assert r.dsp == 66
    assert r.available == {"lut": 53200, "lutram": 17400, "ff": 106400, "bram36": 140, "dsp": 220}
    assert r.usage() == {"bram36": 0.0, "dsp": 66, "lut": 1526, "ff": 2428, "lutram": 48}


def test_utilization_prohibited_column_and_half_tiles(tmp_path):
    """Newer Vivado adds a 'Prohibited' column before Available; BRAM tiles can be x.5."""
    out = []
    for line in UTIL_RPT.read_text().splitlines():
        if re.match(r"^\|\s*Site Type\s*\|", line):
            line = line.replace("| Available |", "| Prohibited | Available |")
        elif re.match(r"^\+(-+\+){4}-+\+$", line):      # rules of 5-column Site Type tables
            parts = line.split("+")
            parts.insert(4, "-" * 12)
            line = "+".join(parts)
        elif line.startswith("| ") and line.count("|") == 6:   # 5-column data rows
            cells = line.split("|")
            cells.insert(4, "          0 ")
            line = "|".join(cells)
        out.append(line)
    text = "\n".join(out).replace("| Block RAM Tile |    0 |", "| Block RAM Tile |  2.5 |")
    assert "Prohibited" in text
    p = tmp_path / "util.rpt"
    p.write_text(text)
    r = parse_utilization(p)
    assert (r.lut, r.lutram, r.ff, r.bram36, r.dsp) == (1526, 48, 2428, 2.5, 66)
    assert r.available == {"lut": 53200, "lutram": 17400, "ff": 106400, "bram36": 140, "dsp": 220}


_ULTRASCALE = """\
| Tool Version : Vivado v.2022.2 (lin64)
| Device       : xczu7ev-ffvc1156-2-e

1. CLB Logic
------------

+----------------------------+-------+-------+------------+-----------+-------+
|          Site Type         |  Used | Fixed | Prohibited | Available | Util% |
+----------------------------+-------+-------+------------+-----------+-------+
| CLB LUTs*                  | 12000 |     0 |          0 |    230400 |  5.21 |
|   LUT as Logic             | 11000 |     0 |          0 |    230400 |  4.77 |
|   LUT as Memory            |  1000 |     0 |          0 |    101760 |  0.98 |
| CLB Registers              | 20000 |     0 |          0 |    460800 |  4.34 |
+----------------------------+-------+-------+------------+-----------+-------+

2. CLB Logic Distribution
-------------------------

+--------------------------------------------+-------+-------+------------+-----------+-------+
|                  Site Type                 |  Used | Fixed | Prohibited | Available | Util% |
+--------------------------------------------+-------+-------+------------+-----------+-------+
| LUT as Memory                              |   999 |     0 |            |    101760 |  0.98 |
+--------------------------------------------+-------+-------+------------+-----------+-------+

3. BLOCKRAM
-----------

+-------------------+------+-------+------------+-----------+-------+
|     Site Type     | Used | Fixed | Prohibited | Available | Util% |
+-------------------+------+-------+------------+-----------+-------+
| Block RAM Tile    | 40.5 |     0 |          0 |       312 | 12.98 |
|   RAMB36/FIFO*    |   40 |     0 |          0 |       312 | 12.82 |
|   RAMB18          |    1 |     0 |          0 |       624 |  0.16 |
| URAM              |    0 |     0 |          0 |        96 |  0.00 |
+-------------------+------+-------+------------+-----------+-------+

4. ARITHMETIC
-------------

+----------------+------+-------+------------+-----------+-------+
|    Site Type   | Used | Fixed | Prohibited | Available | Util% |
+----------------+------+-------+------------+-----------+-------+
| DSPs           |  300 |     0 |          0 |      1728 | 17.36 |
|   DSP48E2 only |  300 |       |            |           |       |
+----------------+------+-------+------------+-----------+-------+
"""


def test_utilization_ultrascale_names(tmp_path):
    """CLB LUTs / CLB Registers, BLOCKRAM / ARITHMETIC sections; the Distribution table is skipped."""
    p = tmp_path / "zu_util.rpt"
    p.write_text(_ULTRASCALE)
    r = parse_utilization(p)
    assert r.part == "xczu7ev-ffvc1156-2-e"
    assert (r.tool, r.version) == ("Vivado", "2022.2")
    assert (r.lut, r.lutram, r.ff, r.bram36, r.dsp) == (12000, 1000, 20000, 40.5, 300)
    assert r.available == {"lut": 230400, "lutram": 101760, "ff": 460800, "bram36": 312, "dsp": 1728}


# ---- bad inputs -------------------------------------------------------------------

PARSERS = [parse_csynth_xml, parse_csynth_rpt, parse_utilization]


@pytest.mark.parametrize("parse", PARSERS, ids=lambda f: f.__name__)
def test_empty_file(tmp_path, parse):
    p = tmp_path / "empty_report.txt"
    p.write_text("")
    with pytest.raises(ReportError, match="empty_report.txt"):
        parse(p)


@pytest.mark.parametrize("parse", PARSERS, ids=lambda f: f.__name__)
def test_random_text(tmp_path, parse):
    p = tmp_path / "notes.txt"
    p.write_text("Lorem ipsum dolor sit amet.\n| a | b |\n+---+---+\n== not a banner\n")
    with pytest.raises(ReportError, match="notes.txt") as e:
        parse(p)
    assert "\n" not in str(e.value)


def test_xml_without_resources(tmp_path):
    text = re.sub(r"<Resources>.*?</Resources>", "", CSYNTH_XML.read_text(), flags=re.S)
    assert "<AvailableResources>" in text and "<Resources>" not in text
    p = tmp_path / "no_resources_csynth.xml"
    p.write_text(text)
    with pytest.raises(ReportError, match=r"no_resources_csynth\.xml.*AreaEstimates/Resources"):
        parse_csynth_xml(p)


def test_wrong_kind_of_report():
    with pytest.raises(ReportError, match="myproject_csynth.rpt"):
        parse_csynth_xml(CSYNTH_RPT)
    with pytest.raises(ReportError, match="vivado_synth.rpt"):
        parse_csynth_rpt(UTIL_RPT)
    with pytest.raises(ReportError, match="myproject_csynth.rpt"):
        parse_utilization(CSYNTH_RPT)


def test_report_error_is_value_error():
    assert issubclass(ReportError, ValueError)


# ---- compare -------------------------------------------------------------------------

def test_compare_arithmetic():
    model = {"bram36": 10.0, "dsp": 80, "lut": 1500, "ff": 2000, "lutram": 5}
    measured = {"bram36": 8.0, "dsp": 0, "lut": 2000, "ff": 2000}
    rows = compare(model, measured)
    assert [r["resource"] for r in rows] == ["bram36", "dsp", "lut", "ff"]   # lutram: not measured
    by = {r["resource"]: r for r in rows}
    assert by["bram36"] == {"resource": "bram36", "model": 10.0, "report": 8.0, "error": pytest.approx(0.25)}
    assert by["dsp"]["error"] is None                       # report 0: no relative error
    assert by["lut"]["error"] == pytest.approx(-0.25)       # 1500 / 2000 - 1
    assert by["ff"]["error"] == 0


def test_compare_with_parsed_report():
    r = parse_utilization(UTIL_RPT)
    rows = compare({"lut": 1526 * 1.1, "dsp": 66, "bram36": 1.0}, r.usage())
    by = {row["resource"]: row for row in rows}
    assert by["lut"]["error"] == pytest.approx(0.1)
    assert by["dsp"]["error"] == 0
    assert by["bram36"]["report"] == 0.0 and by["bram36"]["error"] is None
