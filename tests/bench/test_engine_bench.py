"""bench/engine.py on lenet-digits: its numbers against an independent count from the float model.

MACs come from forward hooks on the untrained torch model (OH*OW*OC*KH*KW*Cin per Conv2d,
in*out per Linear), by hand for one layer, and the derived columns (images/s, MAC
utilisation, percentages, phase split) from their formulas. The cycle model itself is
not re-implemented: its exactness against the C-simulation counter is tested elsewhere.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the repository root: bench/ is not installed

from bench import engine as eb  # noqa: E402
from flow.boards import get_board  # noqa: E402
from flow.boards.cycle_model import image_cycles  # noqa: E402

pytestmark = pytest.mark.slow


def _hook_macs(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, int]:
    """Dense MACs of every Conv2d / Linear of ``model`` on one input of ``shape``, by module name."""
    macs: dict[str, int] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            def hook(m, inp, out, name=name):
                _, oc, oh, ow = out.shape
                macs[name] = oh * ow * oc * m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        elif isinstance(mod, nn.Linear):
            def hook(m, inp, out, name=name):
                macs[name] = m.in_features * m.out_features
        else:
            continue
        handles.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return macs


@pytest.fixture(scope="module")
def lenet():
    engine = eb.engines()["sparse"]
    prog = eb.build_program("lenet-digits", "mvq", engine)
    return engine, prog, eb.model_report(prog, engine)


def test_macs_match_the_float_model(lenet):
    _, _, rep = lenet
    model, shape = eb.build_model("lenet-digits")
    expected = _hook_macs(model, shape)
    got = {L["name"]: L["macs"] for L in rep["layers"] if L["kind"] == "conv"}
    assert got == expected
    # by hand: features.4 is a 3x3 conv, 16 -> 32 channels, pad 1, on the 4x4 map after the first pool
    assert got["features.4"] == 4 * 4 * 32 * 3 * 3 * 16 == 73_728
    # classifier.1: Linear(2*2*32 -> 64), lowered as a 2x2 kernel on the 2x2x32 map: the same MACs
    assert got["classifier.1"] == 128 * 64
    assert rep["macs"] == sum(expected.values())
    assert all(L["macs"] == 0 for L in rep["layers"] if L["kind"] != "conv")


def test_products_follow_the_2_4_masks(lenet):
    _, _, rep = lenet
    by = {L["name"]: L for L in rep["layers"]}
    # compress() skips the first and last layer; classifier.1 (an MVQ Linear on the flattened 2x2x32
    # map, its vectors cut along the 32 channels) stays a codebook layer on the engine
    assert rep["dense_fallback"] == []
    for name in ("features.0", "classifier.3"):
        assert by[name]["fmt"] == "int8"
        assert by[name]["products"] == by[name]["macs"]
    # the codebook layers keep exactly 2 of every 4 weights, and a 2:4 group fits one pass
    for name in ("features.4", "classifier.1"):
        assert by[name]["fmt"] == "codebook" and by[name]["passes"] == 1
        assert 2 * by[name]["products"] == by[name]["macs"]
    assert rep["products"] == sum(L["products"] for L in rep["layers"])


def test_derived_columns(lenet):
    engine, prog, rep = lenet
    b = get_board("pynq-z2")
    assert b.family == "7series" and b.dsp == 220
    assert rep["roofline_products_per_cycle"] == 220      # one int8 product per DSP48E1, no packing
    total = rep["cycles"]
    assert total == sum(L["cycles"] for L in rep["layers"]) + rep["stream_in"] + rep["stream_out"]
    assert rep["images_per_s"] == pytest.approx(100e6 / total)
    assert rep["mac_util"] == pytest.approx(rep["macs"] / (total * 220))
    assert rep["array_util"] == pytest.approx(rep["products"] / (total * engine.multipliers))
    assert rep["roofline_images_per_s"] == pytest.approx(100e6 * 220 / rep["macs"])
    pct = sum(L["percent"] for L in rep["layers"]) + 100 * (rep["stream_in"] + rep["stream_out"]) / total
    assert pct == pytest.approx(100.0)
    for L in rep["layers"]:
        assert L["mac_util"] == pytest.approx(L["macs"] / (L["cycles"] * 220))
        assert sum(L["split"].values()) == L["cycles"]
        assert all(v >= 0 for v in L["split"].values()), L
    assert rep["stream_bytes"] == 8 * 8 * 1 + 10


def test_report_passes_the_cycle_model_through(lenet):
    engine, prog, rep = lenet
    ic = image_cycles(prog, engine)
    assert [(o.name, o.cycles, o.ddr_bytes) for o in ic.ops] == \
        [(L["name"], L["cycles"], L["ddr_bytes"]) for L in rep["layers"]]
    # lenet's parameters all fit on chip: nothing is read from DDR per image
    assert rep["resident_all"] and rep["ddr_bytes"] == 0
    assert all(L["resident"] for L in rep["layers"] if L["kind"] == "conv")


def test_tables_compare_targets_without_gating(lenet):
    _, _, rep = lenet
    # the verdict is arithmetic on the modelled number, never a pass/fail
    assert eb.versus(650.0, 700.0) == "modelled < target (short by 50.0)"
    assert eb.versus(700.0, 700.0) == "modelled >= target"
    assert eb.versus(1.0, None) == "-"
    row = dict(model="lenet-digits", build="sparse", method="mvq", target=eb.TARGETS["lenet-digits"], **rep)
    s = eb.summary_table([row])
    assert "lenet-digits" in s and f"{rep['cycles']:,}" in s
    assert eb.versus(rep["images_per_s"], eb.TARGETS["lenet-digits"]) in s
    assert "MET" not in s and "NO " not in s
    lt = eb.layer_table(rep)
    assert "TOTAL" in lt and "features.4" in lt
    assert len({len(line) for line in lt.splitlines()[:2]}) == 1      # header and rule line up


def test_resnet8_macs_match_the_float_model():
    """MLPerf Tiny ResNet-8 on the default build: per-layer MACs against forward hooks of the float model,
    and the reference shapes by hand (32x32x3 in, 16/32/64 channels, 1x1 stride-2 shortcuts)."""
    engine = eb.engines()["sparse"]
    rep = eb.model_report(eb.build_program("resnet8", "mvq", engine), engine)
    model, shape = eb.build_model("resnet8")
    assert shape == (3, 32, 32)
    expected = _hook_macs(model, shape)
    got = {L["name"]: L["macs"] for L in rep["layers"] if L["kind"] == "conv"}
    assert got == expected
    assert got["conv1"] == 32 * 32 * 16 * 9 * 3
    assert got["stacks.1.conv1"] == 16 * 16 * 32 * 9 * 16          # stride 2: 32x32 -> 16x16
    assert got["stacks.2.shortcut.0"] == 8 * 8 * 64 * 1 * 32        # 1x1 stride-2 shortcut
    assert got["fc"] == 64 * 10
    assert rep["macs"] == sum(expected.values())


def test_build_is_deterministic(lenet):
    engine, prog, _ = lenet
    assert eb.build_program("lenet-digits", "mvq", engine).to_bytes() == prog.to_bytes()
