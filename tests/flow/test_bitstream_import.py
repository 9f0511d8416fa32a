"""Importing a bitstream built elsewhere: engine_io/hwh.py reads a real Vivado .hwh, flow.bundle.add_bitstream
adds a .bit + .hwh only when the .hwh names this bundle's engine (config hash, register offsets).

The .hwh files are derived from a REAL one: the PYNQ-Z2 base overlay's (../shared/fixtures/pynq-z2,
Vivado 2018.2). Its Vivado HLS IP ``trace_cntrl_64`` (an ap_ctrl_hs block CTRL / GIER / IP_IER / IP_ISR at
0x00..0x0C as Vivado wrote it, then argument registers) becomes our engine: its VLNV, instance and interface
renamed, its argument registers replaced by clones of its own ``trigger_V_1`` element named and placed as
Vitis HLS lays out engine_io/regmap.py. The control block's offsets stay Vivado's own.
"""
from __future__ import annotations

import copy
import gzip
import json
import os
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine_io import hwh, regmap
from flow import bundle as bundle_mod
from flow.bundle import BundleError, add_bitstream, load, write_bundle
from flow.compile.engine import EngineConfig
from flow.hls.project import write_project
from small_cases import tiny_program

REPO = Path(__file__).resolve().parents[2]
BASE_HWH = REPO.parent / "shared" / "fixtures" / "pynq-z2" / "base.hwh.gz"
CFG = EngineConfig()
HASH = CFG.hash()
SOURCE_IP = "trace_analyzer_pi_trace_cntrl_64_0"     # the real HLS IP the engine is made from
pytestmark = pytest.mark.skipif(not BASE_HWH.is_file(), reason=f"{BASE_HWH} missing: ../shared must sit beside the clone")


# ---------------------------------------------------------------------------
# the real .hwh, read as it is
# ---------------------------------------------------------------------------
def test_reads_the_real_hwh():
    h = hwh.parse(BASE_HWH)
    assert h.vivado_version == "2018.2"
    mods = {m.instance: m for m in h.modules}
    pack = mods["video_hdmi_in_pixel_pack"]
    assert pack.vlnv == "xilinx.com:hls:pixel_pack:1.0" and pack.modtype == "pixel_pack"
    assert pack.base_address == 0x43C40000
    assert {n: r.offset for n, r in pack.registers("s_axi_AXILiteS").items()} == {"mode": 16, "alpha_V": 24}
    trace = mods[SOURCE_IP]
    regs = trace.registers("s_axi_trace_cntrl")
    assert [(n, regs[n].offset) for n in ("CTRL", "GIER", "IP_IER", "IP_ISR")] == list(hwh.CONTROL_REGISTERS)
    assert hwh.find_engine(h) is None
    with pytest.raises(hwh.HwhError, match="no vqhls engine IP"):
        hwh.check_engine(h, HASH)


def test_not_a_hwh(tmp_path):
    (tmp_path / "x.hwh").write_text("<html/>")
    with pytest.raises(hwh.HwhError, match="root element <html>"):
        hwh.parse(tmp_path / "x.hwh")
    (tmp_path / "y.hwh").write_text("not xml")
    with pytest.raises(hwh.HwhError, match="not a hardware handoff"):
        hwh.parse(tmp_path / "y.hwh")


# ---------------------------------------------------------------------------
# derived .hwh files
# ---------------------------------------------------------------------------
def derived_hwh(config_hash: str | None = HASH, *, move: tuple[str, int] | None = None, vlnv: str | None = None) -> bytes:
    """base.hwh with its trace_cntrl_64 IP turned into the engine of ``config_hash`` (None: no engine at all);
    ``move``: (register, new offset); ``vlnv``: the engine's VLNV as given."""
    root = ET.fromstring(gzip.decompress(BASE_HWH.read_bytes()))
    if config_hash is None:
        return ET.tostring(root)
    (mod,) = [m for m in root.iter("MODULE") if m.get("INSTANCE") == SOURCE_IP]
    vlnv = vlnv or hwh.engine_vlnv(config_hash)
    mod.set("VLNV", vlnv)
    mod.set("MODTYPE", vlnv.split(":")[2])
    mod.set("INSTANCE", "vqhls_engine_0")
    mod.set("FULLNAME", "/vqhls_engine_0")
    (blk,) = mod.findall("./ADDRESSBLOCKS/ADDRESSBLOCK")
    blk.set("INTERFACE", hwh.LITE_INTERFACE)
    regs = blk.find("REGISTERS")
    template = [r for r in regs if r.get("NAME") == "trigger_V_1"][0]
    for r in list(regs):
        if r.get("NAME") not in dict(hwh.CONTROL_REGISTERS):
            regs.remove(r)
    control = dict(hwh.CONTROL_REGISTERS)
    for name, off in hwh.expected_registers():
        if name in control:
            continue
        r = copy.deepcopy(template)
        r.set("NAME", name)
        if move and move[0] == name:
            off = move[1]
        [p for p in r.findall("PROPERTY") if p.get("NAME") == "ADDRESS_OFFSET"][0].set("VALUE", str(off))
        regs.append(r)
    for rng in root.iter("MEMRANGE"):
        if rng.get("INSTANCE") == SOURCE_IP:
            rng.set("INSTANCE", "vqhls_engine_0")
    return ET.tostring(root)


def test_derived_engine_reads_back():
    ip = hwh.check_engine(derived_hwh(), HASH)
    assert ip.instance == "vqhls_engine_0" and ip.vlnv == f"vqhls:vqhls:vqhls_engine_{HASH}:1.0"
    regs = ip.registers(hwh.LITE_INTERFACE)
    assert regs["status"].offset == regmap.STATUS and regs["params_2"].offset == regmap.PARAMS_HI
    assert regs["real_cycles_ctrl"].offset == regmap.REAL_CYCLES_CTRL
    assert ip.base_address is not None


# ---------------------------------------------------------------------------
# a bundle (as tests/flow/test_bundle.py builds one)
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hls_dir(tmp_path_factory) -> Path:
    return write_project(CFG, tmp_path_factory.mktemp("hls") / "hls").path


@pytest.fixture
def bundle(tmp_path, hls_dir) -> Path:
    rng = np.random.default_rng(1)
    vec = (rng.integers(0, 256, (2, 4, 4, 8)).astype(np.uint8), rng.integers(-128, 128, (2, 4, 4, 8)).astype(np.int8))
    return write_bundle(tmp_path / "deploy", program_image=tiny_program().to_bytes(), engine_config=CFG.to_dict(),
                        config_hash=HASH, model="tiny", method="mvq", data="digits", in_scale=0.5, in_shape=(4, 4, 8),
                        in_unsigned=True, out_shape=(4, 4, 8), out_scale=0.25, out_unsigned=False, hls_dir=hls_dir,
                        vectors=vec)


def vivado_out(tmp: Path, hwh_bytes: bytes | None, bit: bool = True) -> Path:
    d = tmp / "vivado" / "out"
    d.mkdir(parents=True)
    if bit:
        (d / "vqhls.bit").write_bytes(bytes(range(256)) * 9)
    if hwh_bytes is not None:
        (d / "vqhls.hwh").write_bytes(hwh_bytes)
    return d


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_matching_bitstream_is_added(bundle, tmp_path):
    assert not load(bundle).has_bitstream
    src = vivado_out(tmp_path, derived_hwh())
    before = tree(bundle)
    assert add_bitstream(bundle, src) == bundle.resolve()
    b = load(bundle)     # verifies every file against the manifest
    assert b.has_bitstream and b.bit_path.read_bytes() == (src / "vqhls.bit").read_bytes()
    assert b.hwh_path.read_bytes() == (src / "vqhls.hwh").read_bytes()
    assert b.manifest["bitstream"]["engine_ip"] == hwh.engine_vlnv(HASH)
    assert set(b.manifest["files"]) >= {"vqhls.bit", "vqhls.hwh"}
    after = tree(bundle)
    assert {k: v for k, v in after.items() if k not in ("vqhls.bit", "vqhls.hwh", "manifest.json")} == \
        {k: v for k, v in before.items() if k != "manifest.json"}
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]     # no temporary copy left
    # again (a rebuilt bitstream): replaced, still verified
    (src / "vqhls.bit").write_bytes(b"other bits")
    add_bitstream(bundle, src)
    assert load(bundle).bit_path.read_bytes() == b"other bits"


WRONG = "0badc0de"


@pytest.mark.parametrize("case", ["wrong hash", "moved register", "missing register", "no engine", "no hash",
                                  "no hwh", "no bit", "not a hwh"])
def test_refused_bitstreams_leave_the_bundle_unchanged(bundle, tmp_path, case):
    hwh_bytes, bit, want = {
        "wrong hash": (derived_hwh(WRONG), True, [f"built for engine config {WRONG}", f"config_hash is {HASH}"]),
        "moved register": (derived_hwh(move=("config_hash", 0x30)), True,
                           ["register config_hash at 0x30", "engine_io/regmap.py has it at 0x28"]),
        "missing register": (derived_hwh().replace(b'NAME="real_cycles_2"', b'NAME="rc2"'), True,
                             ["register real_cycles_2 missing", "0x4C"]),
        "no engine": (derived_hwh(None), True, ["no vqhls engine IP"]),
        "no hash": (derived_hwh(vlnv="vqhls:vqhls:vqhls_engine:1.0"), True, ["carries no config hash"]),
        "no hwh": (None, True, ["vqhls.hwh missing"]),
        "no bit": (derived_hwh(), False, ["vqhls.bit missing"]),
        "not a hwh": (b"<MODULE>hwh</MODULE>", True, ["not a hardware handoff"]),
    }[case]
    src = vivado_out(tmp_path, hwh_bytes, bit)
    before = tree(bundle)
    with pytest.raises(BundleError) as err:
        add_bitstream(bundle, src)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in want), msg
    assert tree(bundle) == before
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]


def test_moved_control_register_is_refused(bundle, tmp_path):
    data = derived_hwh()
    root = ET.fromstring(data)
    (mod,) = [m for m in root.iter("MODULE") if m.get("INSTANCE") == "vqhls_engine_0"]
    (ier,) = [r for r in mod.iter("REGISTER") if r.get("NAME") == "IP_IER"]
    [p for p in ier.findall("PROPERTY") if p.get("NAME") == "ADDRESS_OFFSET"][0].set("VALUE", "12")
    src = vivado_out(tmp_path, ET.tostring(root))
    with pytest.raises(BundleError, match=r"register IP_IER at 0x0C, engine_io/regmap.py has it at 0x08"):
        add_bitstream(bundle, src)


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "flow.bundle", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli(bundle, tmp_path):
    before = tree(bundle)
    r = _cli("--help")
    assert r.returncode == 0 and "add-bitstream" in r.stdout and tree(bundle) == before
    r = _cli("add-bitstream", "--help")
    assert r.returncode == 0 and "config hash" in r.stdout and tree(bundle) == before
    r = _cli()
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    bad = vivado_out(tmp_path / "bad", derived_hwh(WRONG))
    r = _cli("add-bitstream", str(bundle), str(bad))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert WRONG in r.stderr and "Traceback" not in r.stderr and tree(bundle) == before
    r = _cli("add-bitstream", str(tmp_path / "nowhere"), str(bad))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    good = vivado_out(tmp_path / "good", derived_hwh())
    r = _cli("add-bitstream", str(bundle), str(good))
    assert r.returncode == 0, r.stderr
    assert "board-ready" in r.stdout and load(bundle).has_bitstream


# ---------------------------------------------------------------------------
# the build's bundle stage takes only a verified vivado/out/vqhls.{bit,hwh}
# ---------------------------------------------------------------------------
def test_build_bundles_only_a_verified_bitstream(tmp_path):
    from flow.build.stages import _verified_bitstream   # deferred: flow.build imports torch

    b = SimpleNamespace(out=tmp_path, engine=CFG, summary={})
    assert _verified_bitstream(b) is None and b.summary["bitstream"] == {"status": "absent"}
    src = vivado_out(tmp_path, derived_hwh(WRONG))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert _verified_bitstream(b) is None
    (msg,) = [str(x.message) for x in w]
    assert "simulation-only" in msg and WRONG in msg and "\n" not in msg
    assert b.summary["bitstream"]["status"] == "refused"
    (src / "vqhls.hwh").write_bytes(derived_hwh())
    assert _verified_bitstream(b) == (src / "vqhls.bit", src / "vqhls.hwh")
    assert b.summary["bitstream"] == {"status": "verified", "engine_ip": hwh.engine_vlnv(HASH)}
    json.dumps(b.summary)
    assert bundle_mod.verify_bitstream(src / "vqhls.bit", src / "vqhls.hwh", HASH).instance == "vqhls_engine_0"


def test_skipped_vendor_stage_prints_the_handoff_command(tmp_path, monkeypatch):
    """Without the tools, the vitis / vivado stages print the one command that runs the handoff elsewhere:
    relative to the working directory, board_repo= named, where the PYNQ-Z2's board files come from."""
    from flow.build.stages import _skipped   # deferred: flow.build imports torch
    from flow.hls import vendor

    monkeypatch.chdir(tmp_path)
    b = SimpleNamespace(out=tmp_path / "build" / "lenet", opts=SimpleNamespace(board="pynq-z2", engine="hls"))
    res = _skipped(vendor.VendorResult(False, None, None, "skipped: vivado not found\nrun ...", "cd /x && vivado"),
                   "vivado", b)
    first, second, third = res.message.splitlines()
    assert first == "skipped: vivado not found"
    assert second.endswith("sh build/lenet/vendor/run_vendor.sh board_repo=DIR") and str(tmp_path) not in second
    assert "XilinxBoardStore" in third and "TUL" in third
