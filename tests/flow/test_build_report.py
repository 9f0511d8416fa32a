"""flow.build.report with vendor reports: a real one is used, a corrupted one is an error in the report.

The reports are real Xilinx reports (hls4ml's test fixtures, ``shared/fixtures/vendor-reports/``, see
tests/flow/boards/test_reports.py); the corrupted ones are copies cut or edited in tmp_path. The build
is the minimum ``sections`` reads: no program, no compression report, a modelled usage.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from shared_fixtures import shared_fixture_dir

from flow.build.report import _md, sections

FIXTURES = shared_fixture_dir("vendor-reports")

CSYNTH_XML = FIXTURES / "myproject_csynth.xml"   # BRAM_18K 0, DSP48E 73, FF 7969, LUT 2532
UTIL_RPT = FIXTURES / "vivado_synth.rpt"
ERROR_SECTION = "Vendor reports that did not parse"


def _build(tmp_path: Path) -> SimpleNamespace:
    """The fields of flow.build.stages.Build that ``sections`` reads, with vendor reports under tmp_path."""
    return SimpleNamespace(
        out=tmp_path, project=SimpleNamespace(path=tmp_path / "hls"), summary={"model": "m", "data": "d"},
        opts=SimpleNamespace(board="pynq-z2", method="mvq", engine="hls"), creport=None, program=None, vendor={}, times={},
        engine=None, bundle_path=None,
        usage=SimpleNamespace(bram36=10.0, dsp=64, lut=20_000, ff=30_000))


def _csynth_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hls" / "vqhls_prj" / "solution1" / "syn" / "report"
    d.mkdir(parents=True)
    return d


def _util_path(tmp_path: Path) -> Path:
    d = tmp_path / "vivado" / "out"
    d.mkdir(parents=True)
    return d / "utilization.rpt"


def _by_title(secs) -> dict:
    return {s.title: s for s in secs}


def test_a_real_csynth_report_is_used_and_no_error_is_shown(tmp_path):
    shutil.copy(CSYNTH_XML, _csynth_dir(tmp_path) / "csynth.xml")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        secs = _by_title(sections(_build(tmp_path), {}))
    head, rows = secs["Resources"].table
    assert head[-2:] == ["Vitis HLS csynth estimate", "model error"]
    assert {r[0]: r[4] for r in rows} == {"BRAM36": 0.0, "DSP": 73, "LUT": 2532, "FF": 7969}
    assert ERROR_SECTION not in secs


def test_a_corrupted_csynth_report_is_an_error_in_the_report_and_a_warning(tmp_path):
    text = CSYNTH_XML.read_text()
    bad = _csynth_dir(tmp_path) / "csynth.xml"
    bad.write_text(text[: len(text) // 2])          # cut mid-file: not well-formed XML
    with pytest.warns(UserWarning, match="csynth report .*csynth.xml did not parse"):
        secs = sections(_build(tmp_path), {})
    by = _by_title(secs)
    assert str(bad) in by[ERROR_SECTION].text and "XML parse error" in by[ERROR_SECTION].text
    assert "No vendor report parsed" in by["Resources"].text
    assert len(by["Resources"].table[0]) == 4                  # no vendor column made up
    md = _md(secs, "t")
    assert f"## {ERROR_SECTION}" in md and "ERROR:" in md


def test_a_corrupted_utilization_report_is_named_beside_a_good_csynth(tmp_path):
    shutil.copy(CSYNTH_XML, _csynth_dir(tmp_path) / "csynth.xml")
    util = _util_path(tmp_path)
    # the utilization table's rows removed: the header survives, the numbers do not
    util.write_text("\n".join(ln for ln in UTIL_RPT.read_text().splitlines() if not ln.startswith("|")))
    with pytest.warns(UserWarning, match="utilization report .*utilization.rpt did not parse"):
        secs = _by_title(sections(_build(tmp_path), {}))
    assert str(util) in secs[ERROR_SECTION].text
    assert secs["Resources"].table[0][-2] == "Vitis HLS csynth estimate"   # the good one still used
    assert "did not parse" in secs["Resources"].text


def test_a_sub_function_report_does_not_stand_in_for_the_top(tmp_path):
    d = _csynth_dir(tmp_path)
    shutil.copy(CSYNTH_XML, d / "csynth.xml")
    # a per-function report sorts first and parses, with other numbers; the top's summary must win
    (d / "a_sub_csynth.xml").write_text(CSYNTH_XML.read_text().replace("<LUT>2532</LUT>", "<LUT>1</LUT>"))
    secs = _by_title(sections(_build(tmp_path), {}))
    assert {r[0]: r[4] for r in secs["Resources"].table[1]}["LUT"] == 2532


# ---------------------------------------------------------------------------
# engine, ratios, bundle status and next steps
# ---------------------------------------------------------------------------
def test_the_report_names_the_engine_the_two_ratios_and_the_next_steps(tmp_path):
    from flow.compile import EngineConfig

    b = _build(tmp_path)
    b.usage, b.project = None, None
    engine = EngineConfig()
    b.engine = engine
    b.summary.update(ratio=9.5, stored_ratio=7.25, dense_fallback=["fc1"], program_bytes=1234,
                     engine_sized={"act_words": 4096}, warnings=["golden integer accuracy 10.00% is ..."])
    b.bundle_path = tmp_path / "deploy"           # not a loadable bundle: no verified bitstream
    by = _by_title(sections(b, {}))
    eng = by["Engine"]
    assert engine.hash() in eng.text and "SIZED FOR THIS MODEL" in eng.text and "act_words=4096" in eng.text
    assert dict((r[0], r[1]) for r in eng.table[1]) == {k: str(v) for k, v in engine.to_dict().items()}
    ratios = by["Compression ratios"].text
    assert "Compressed model: 9.50x" in ratios and "Engine stores: 7.25x" in ratios and "fc1" in ratios
    status = by["Bundle status and next steps"].text
    assert status.startswith("SIMULATION-ONLY until a verified bitstream is added")
    d = tmp_path.name   # outside the current directory: relative to the folder holding the build
    assert f"python -m flow.bundle add-bitstream {d}/deploy {d}/vivado/out" in status
    assert "(its command is under 'Vendor tools' below" in status   # no vendor/run_vendor.sh in this folder
    assert f"python -m host.run {d}/deploy --backend pynq" in status and str(tmp_path) not in status
    assert "WARNING: golden integer accuracy" in by["Warning"].text
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / "run_vendor.sh").write_text("")
    assert f"sh {d}/vendor/run_vendor.sh board_repo=" in _by_title(sections(b, {}))["Bundle status and next steps"].text
    b.summary.pop("engine_sized")
    b.summary.pop("stored_ratio")
    by = _by_title(sections(b, {}))
    assert "standard engine" in by["Engine"].text and "equals the model's" in by["Compression ratios"].text


def test_mask_lines_state_the_convention_and_the_ratio_without_masks():
    """The report's mask line for an MVQ model: the mask bits and their share, and the ratio with the masks left
    out, against a hand count (2:4 shared by 4 output channels: 3 bits per 4 inputs per 4 channels)."""
    from flow.build.report import mask_lines
    from flow.compress.api import LayerRow, Report

    conv = LayerRow("c1", "conv", "mvq", params=16 * 32 * 9, bits={"indices": 4608, "masks": 16 * 32 * 9 // 16 * 3,
                                                                   "codebook": 2048})
    dense = LayerRow("fc", "linear", "dense", params=100, bits={"weights": 800, "scale": 32})
    rep = Report([conv, dense])
    masks = 16 * 32 * 9 // 16 * 3                       # 864 bits
    total = 4608 + masks + 2048 + 800 + 32
    line, claim = mask_lines(rep)
    assert f"{masks:,} bits" in line and f"{100 * masks / total:.1f} %" in line
    assert f"{32 * (16 * 32 * 9 + 100) / (total - masks):.2f}x" in line
    assert "MVQ against VQ, with every bit counted" in claim and "from 32x" in claim
    assert mask_lines(Report([dense])) == [] and mask_lines(None) == []
