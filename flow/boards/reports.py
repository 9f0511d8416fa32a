"""Parsers for vendor-tool reports: measured numbers beside the models.

``flow.boards.resource_model`` (BRAM36 / DSP / LUT / FF / LUTRAM) and
``flow.boards.cycle_model`` (cycles) are models; the reports parsed here are what the
tools say about a real build, so the build report can show the model's error
(``compare``).

* ``parse_csynth_xml``: Vivado HLS / Vitis HLS ``<top>_csynth.xml`` / ``csynth.xml``
  (C synthesis estimates: clock, latency, interval, BRAM_18K / DSP / FF / LUT /
  URAM against the part's totals).
* ``parse_csynth_rpt``: the text ``<top>_csynth.rpt`` of the same run.
* ``parse_utilization``: Vivado ``report_utilization`` text (after synthesis or
  implementation), 7-series ("Slice Logic") and UltraScale(+) ("CLB Logic") names.

Format notes handled here:

* The DSP column is ``DSP48E`` in Vivado HLS and ``DSP`` in Vitis HLS (xml tag
  and rpt column alike); ``URAM`` may be absent (then 0).
* Latency and interval are ``undef`` in the xml and ``?`` in the rpt when HLS
  cannot bound them (data-dependent loops): parsed as ``None``.
* In the rpt's Utilization Summary ``-`` means none (0); the ``Available`` row is
  the whole part (multi-SLR parts add an ``Available SLR`` row, ignored).
* ``report_utilization`` tables are read by their header, so the optional
  ``Prohibited`` column of newer Vivado versions (absent in 2020.1) does not shift
  ``Used`` / ``Available``; ``*`` markers after site names ("Slice LUTs*",
  "RAMB36/FIFO*") are dropped. "Block RAM Tile" can be fractional (x.5: a RAMB18
  counts half a tile). Tables of "... Distribution" sections (post-implementation
  reports repeat "LUT as Memory" there) are skipped.
* The ``Device`` line of a 7-series utilization report omits the ``xc`` prefix
  ("7z020clg400-1"); it is kept as written. HLS writes the part with a dash
  after the device ("xc7z020-clg400-1"), also kept as written.

No tool runs here; only the stdlib (``xml.etree``, ``re``). A file that is not
such a report raises ``ReportError`` naming the file and what is missing; a
missing file raises the usual ``FileNotFoundError``.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ReportError",
    "HlsReport",
    "UtilizationReport",
    "parse_csynth_xml",
    "parse_csynth_rpt",
    "parse_utilization",
    "compare",
]


class ReportError(ValueError):
    """The file is not a report of the expected kind (one line: file and what is missing)."""


# ---- data ------------------------------------------------------------------

HLS_RESOURCES = ("bram18", "dsp", "ff", "lut", "uram")


@dataclass
class HlsReport:
    """C-synthesis estimates of one HLS top function.

    Latency / interval in clock cycles (``None`` when the tool could not bound
    them). ``available`` holds the part's totals under the same keys as the
    used resources (bram18, dsp, ff, lut, uram).
    """

    top: str | None
    part: str | None
    target_clock_ns: float | None
    estimated_clock_ns: float | None
    latency_min: int | None
    latency_max: int | None
    interval_min: int | None
    interval_max: int | None
    bram18: int
    dsp: int
    ff: int
    lut: int
    uram: int = 0
    available: dict[str, int] = field(default_factory=dict)
    source: str = ""
    tool: str | None = None
    version: str | None = None

    def usage(self) -> dict[str, float]:
        """Used resources under ``resources.Usage`` names, for ``compare``.

        BRAM is given as BRAM36 tiles (``bram18 / 2``, Vivado's half-tile count).
        HLS reports no LUTRAM split, so there is no ``lutram`` key.
        """
        return {"bram36": self.bram18 / 2, "dsp": self.dsp, "lut": self.lut, "ff": self.ff}


UTIL_RESOURCES = ("lut", "lutram", "ff", "bram36", "dsp")


@dataclass
class UtilizationReport:
    """Vivado ``report_utilization`` numbers.

    ``lut`` is all LUTs (logic + memory), ``lutram`` the "LUT as Memory" part of
    them (distributed RAM and shift registers), ``ff`` all registers,
    ``bram36`` Block RAM tiles (fractional x.5 when a RAMB18 is used alone),
    ``dsp`` DSP slices. ``available`` holds the part's totals under the same
    keys (a key is absent when the report leaves that cell blank).
    """

    part: str | None
    lut: int
    lutram: int
    ff: int
    bram36: float
    dsp: int
    available: dict[str, float] = field(default_factory=dict)
    source: str = ""
    tool: str | None = None
    version: str | None = None

    def usage(self) -> dict[str, float]:
        """Used resources under ``resources.Usage`` names, for ``compare``."""
        return {"bram36": self.bram36, "dsp": self.dsp, "lut": self.lut, "ff": self.ff,
                "lutram": self.lutram}


# ---- helpers ----------------------------------------------------------------

def _read_text(path: Path, kind: str) -> str:
    """The report's text; ReportError when the file is empty (not a ``kind`` report)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ReportError(f"{path}: empty file, not a {kind} report")
    return text


def _num(text: str | None) -> float | int | None:
    """'12' -> 12, '4.049' / '4.049 ns' -> 4.049, 'undef' / '?' / '-' / '' -> None."""
    if text is None:
        return None
    t = text.strip().replace(",", "")
    t = re.sub(r"\s*(ns|us|ms|MHz)$", "", t)
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    try:
        return float(t)
    except ValueError:
        return None


def _int_or_none(text: str | None) -> int | None:
    v = _num(text)
    return None if v is None else int(v)


def _count(text: str | None) -> int:
    """Resource cell: '-' or blank means 0."""
    v = _num(text)
    return 0 if v is None else int(v)


# ---- csynth.xml -------------------------------------------------------------

# xml tag -> HlsReport key (DSP48E in Vivado HLS, DSP in Vitis HLS)
_XML_RESOURCE_TAGS = {"BRAM_18K": "bram18", "DSP48E": "dsp", "DSP": "dsp", "FF": "ff",
                      "LUT": "lut", "URAM": "uram"}


def _xml_resources(elem: ET.Element) -> dict[str, int]:
    out: dict[str, int] = {}
    for child in elem:
        key = _XML_RESOURCE_TAGS.get(child.tag)
        if key is not None and key not in out:
            out[key] = _count(child.text)
    return out


def parse_csynth_xml(path: str | Path) -> HlsReport:
    """Parse a Vivado HLS / Vitis HLS ``csynth.xml`` (top-level summary only)."""
    path = Path(path)
    text = _read_text(path, "csynth.xml")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ReportError(f"{path}: not a csynth.xml report (XML parse error: {e})") from None

    def find(p: str) -> ET.Element | None:
        return root.find(p)

    def txt(p: str) -> str | None:
        e = find(p)
        return None if e is None or e.text is None else e.text.strip()

    resources = find("AreaEstimates/Resources")
    if resources is None:
        raise ReportError(f"{path}: not a csynth.xml report: no AreaEstimates/Resources section")
    used = _xml_resources(resources)
    missing = [k for k in ("bram18", "dsp", "ff", "lut") if k not in used]
    if missing:
        raise ReportError(f"{path}: AreaEstimates/Resources has no {'/'.join(missing)} "
                          f"(expected BRAM_18K, DSP48E or DSP, FF, LUT)")
    latency = find("PerformanceEstimates/SummaryOfOverallLatency")
    if latency is None:
        raise ReportError(f"{path}: not a csynth.xml report: "
                          f"no PerformanceEstimates/SummaryOfOverallLatency section")
    avail_elem = find("AreaEstimates/AvailableResources")
    available = _xml_resources(avail_elem) if avail_elem is not None else {}

    return HlsReport(
        top=txt("UserAssignments/TopModelName"),
        part=txt("UserAssignments/Part"),
        target_clock_ns=_num(txt("UserAssignments/TargetClockPeriod")),
        estimated_clock_ns=_num(txt("PerformanceEstimates/SummaryOfTimingAnalysis/EstimatedClockPeriod")),
        latency_min=_int_or_none(txt("PerformanceEstimates/SummaryOfOverallLatency/Best-caseLatency")),
        latency_max=_int_or_none(txt("PerformanceEstimates/SummaryOfOverallLatency/Worst-caseLatency")),
        interval_min=_int_or_none(txt("PerformanceEstimates/SummaryOfOverallLatency/Interval-min")),
        interval_max=_int_or_none(txt("PerformanceEstimates/SummaryOfOverallLatency/Interval-max")),
        bram18=used["bram18"],
        dsp=used["dsp"],
        ff=used["ff"],
        lut=used["lut"],
        uram=used.get("uram", 0),
        available=available,
        source=str(path),
        tool=None,          # the xml does not name the tool (Vivado HLS and Vitis HLS alike)
        version=txt("ReportVersion/Version"),
    )


# ---- ASCII tables (shared by the .rpt parsers) ------------------------------

@dataclass
class _Table:
    line: int                   # index of the table's first line
    header: list[list[str]]     # header rows (before the first +---+ after the top)
    body: list[list[str]]       # all rows after the header


def _cells(line: str) -> list[str]:
    s = line.strip()
    return [c.strip() for c in s.strip("|").split("|")]


def _tables(lines: list[str]) -> list[_Table]:
    """ASCII tables: runs of lines starting with '+-' or '|' (after indentation)."""
    out: list[_Table] = []
    i, n = 0, len(lines)
    while i < n:
        if not lines[i].lstrip().startswith("+-"):
            i += 1
            continue
        start = i
        blocks: list[list[list[str]]] = [[]]
        while i < n:
            s = lines[i].lstrip()
            if s.startswith("+-"):
                if blocks[-1]:
                    blocks.append([])
            elif s.startswith("|"):
                blocks[-1].append(_cells(s))
            else:
                break
            i += 1
        blocks = [b for b in blocks if b]
        if blocks:
            out.append(_Table(start, blocks[0], [r for b in blocks[1:] for r in b]))
    return out


# ---- csynth.rpt -------------------------------------------------------------

_RPT_COLUMNS = {"BRAM_18K": "bram18", "DSP48E": "dsp", "DSP": "dsp", "FF": "ff",
                "LUT": "lut", "URAM": "uram"}


def _rpt_sections(lines: list[str]) -> dict[str, tuple[int, int]]:
    """'== Title' banners (between '====' rules) -> (first line, end line) of the section."""
    heads: list[tuple[str, int]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^==\s+(.+?)\s*$", line)
        if m and not line.startswith("==="):
            heads.append((m.group(1), i))
    out: dict[str, tuple[int, int]] = {}
    for k, (title, i) in enumerate(heads):
        end = heads[k + 1][1] if k + 1 < len(heads) else len(lines)
        out.setdefault(title, (i, end))
    return out


def parse_csynth_rpt(path: str | Path) -> HlsReport:
    """Parse the text C-synthesis report (``<top>_csynth.rpt``) of Vivado HLS / Vitis HLS."""
    path = Path(path)
    text = _read_text(path, "csynth.rpt")
    lines = text.splitlines()
    sections = _rpt_sections(lines)

    tool = top = version = part = None
    for title in sections:
        m = re.match(r"^(.*?HLS) Report for '([^']*)'", title)
        if m:
            tool, top = m.group(1), m.group(2)
            break
    for line in lines:
        m = re.match(r"^\*\s*Version:\s*(\S+)", line)
        if m and version is None:
            version = m.group(1)
        m = re.match(r"^\*\s*Target device:\s*(\S+)", line)
        if m and part is None:
            part = m.group(1)

    if "Performance Estimates" not in sections:
        raise ReportError(f"{path}: not a csynth.rpt report: no 'Performance Estimates' section")
    if "Utilization Estimates" not in sections:
        raise ReportError(f"{path}: not a csynth.rpt report: no 'Utilization Estimates' section")

    # Performance: the first timing table (Clock | Target | Estimated | Uncertainty)
    # and the first latency table (Latency (cycles) ... Interval ... Pipeline).
    a, b = sections["Performance Estimates"]
    perf_tables = _tables(lines[a:b])
    timing = next((t for t in perf_tables
                   if t.header and t.header[0][:3] == ["Clock", "Target", "Estimated"]), None)
    if timing is None or not timing.body:
        raise ReportError(f"{path}: no timing summary table (Clock | Target | Estimated) "
                          f"under 'Performance Estimates'")
    target, estimated = _num(timing.body[0][1]), _num(timing.body[0][2])
    lat = next((t for t in perf_tables
                if t.header and "Latency (cycles)" in t.header[0] and "Interval" in t.header[0]), None)
    if lat is None or not lat.body or len(lat.body[0]) < 6:
        raise ReportError(f"{path}: no latency summary table (Latency (cycles) | Interval) "
                          f"under 'Performance Estimates'")
    row = lat.body[0]   # min | max | abs min | abs max | interval min | interval max | pipeline type

    # Utilization: the Summary table (Name | BRAM_18K | DSP48E or DSP | FF | LUT | URAM),
    # rows Total and Available.
    a, b = sections["Utilization Estimates"]
    summary = next((t for t in _tables(lines[a:b]) if t.header and t.header[-1][0] == "Name"), None)
    if summary is None:
        raise ReportError(f"{path}: no Summary table (Name | BRAM_18K | ...) under 'Utilization Estimates'")
    cols = {i: _RPT_COLUMNS[c] for i, c in enumerate(summary.header[-1]) if c in _RPT_COLUMNS}
    rows = {r[0]: r for r in summary.body if r}
    if "Total" not in rows:
        raise ReportError(f"{path}: Utilization Summary table has no Total row")
    used = {k: _count(rows["Total"][i]) for i, k in cols.items() if i < len(rows["Total"])}
    missing = [k for k in ("bram18", "dsp", "ff", "lut") if k not in used]
    if missing:
        raise ReportError(f"{path}: Utilization Summary table has no {'/'.join(missing)} column")
    available = ({k: _count(rows["Available"][i]) for i, k in cols.items() if i < len(rows["Available"])}
                 if "Available" in rows else {})

    return HlsReport(
        top=top,
        part=part,
        target_clock_ns=target,
        estimated_clock_ns=estimated,
        latency_min=_int_or_none(row[0]),
        latency_max=_int_or_none(row[1]),
        interval_min=_int_or_none(row[4]),
        interval_max=_int_or_none(row[5]),
        bram18=used["bram18"],
        dsp=used["dsp"],
        ff=used["ff"],
        lut=used["lut"],
        uram=used.get("uram", 0),
        available=available,
        source=str(path),
        tool=tool,
        version=version,
    )


# ---- report_utilization -----------------------------------------------------

# site-type row name (without '*') -> UtilizationReport key; 7-series and UltraScale names.
_UTIL_ROWS = {
    "Slice LUTs": "lut", "CLB LUTs": "lut",
    "LUT as Memory": "lutram",
    "Slice Registers": "ff", "CLB Registers": "ff",
    "Block RAM Tile": "bram36",
    "DSPs": "dsp",
}
_UTIL_NAMES = {"lut": "'Slice LUTs' / 'CLB LUTs'", "lutram": "'LUT as Memory'",
               "ff": "'Slice Registers' / 'CLB Registers'", "bram36": "'Block RAM Tile'",
               "dsp": "'DSPs'"}


def parse_utilization(path: str | Path) -> UtilizationReport:
    """Parse a Vivado ``report_utilization`` text report (flat, not ``-hierarchical``)."""
    path = Path(path)
    text = _read_text(path, "report_utilization")
    lines = text.splitlines()

    part = tool = version = None
    for line in lines[:40]:
        m = re.match(r"^\|\s*Device\s*:\s*(\S+)", line)
        if m and part is None:
            part = m.group(1)
        m = re.match(r"^\|\s*Tool Version\s*:\s*(\S+)\s+v\.(\S+)", line)
        if m and tool is None:
            tool, version = m.group(1), m.group(2)

    # section titles ("1. Slice Logic" over a rule of dashes), to skip "... Distribution" tables
    section_at: list[tuple[int, str]] = []
    for i in range(len(lines) - 1):
        m = re.match(r"^\d+(?:\.\d+)*\.?\s+(\S.*?)\s*$", lines[i])
        if m and re.match(r"^-{3,}\s*$", lines[i + 1]):
            section_at.append((i, m.group(1)))

    def section_of(line_no: int) -> str:
        title = ""
        for i, t in section_at:
            if i > line_no:
                break
            title = t
        return title

    used: dict[str, float] = {}
    available: dict[str, float] = {}
    for table in _tables(lines):
        if not table.header:
            continue
        head = [c.rstrip("*").strip() for c in table.header[-1]]
        if not head or head[0] != "Site Type" or "Used" not in head:
            continue
        if "Distribution" in section_of(table.line):
            continue
        i_used = head.index("Used")
        i_avail = head.index("Available") if "Available" in head else None
        for row in table.body:
            name = row[0].rstrip("*").strip() if row else ""
            key = _UTIL_ROWS.get(name)
            if key is None or key in used or i_used >= len(row):
                continue
            v = _num(row[i_used])
            if v is None:
                continue
            used[key] = v
            if i_avail is not None and i_avail < len(row):
                a = _num(row[i_avail])
                if a is not None:
                    available[key] = a

    missing = [_UTIL_NAMES[k] for k in UTIL_RESOURCES if k not in used]
    if missing:
        raise ReportError(f"{path}: not a report_utilization report: no {', '.join(missing)} row")
    return UtilizationReport(
        part=part,
        lut=int(used["lut"]),
        lutram=int(used["lutram"]),
        ff=int(used["ff"]),
        bram36=float(used["bram36"]),
        dsp=int(used["dsp"]),
        available=available,
        source=str(path),
        tool=tool,
        version=version,
    )


# ---- model vs report --------------------------------------------------------

def compare(model: dict[str, float], measured: dict[str, float]) -> list[dict]:
    """Rows ``{resource, model, report, error}`` for the resources both sides have, in
    ``model``'s order; ``error = model / report - 1`` (relative error of the model,
    positive: the model overestimates), ``None`` when the report says 0."""
    rows = []
    for name, m in model.items():
        if name not in measured:
            continue
        r = measured[name]
        rows.append({"resource": name, "model": m, "report": r,
                     "error": None if r == 0 else m / r - 1})
    return rows
