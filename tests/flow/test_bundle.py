"""flow.bundle: the deploy bundle is written whole or not at all, and load() verifies every byte of it."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flow import bundle as bundle_mod
from flow.bundle import BUNDLE_FORMAT, Bundle, BundleError, load, write_bundle
from flow.compile.engine import EngineConfig
from flow.compile.program import FORMAT_VERSION, Program
from flow.hls.project import write_project
from small_cases import tiny_program

REPO = Path(__file__).resolve().parents[2]
CFG = EngineConfig()


@pytest.fixture(scope="module")
def image() -> bytes:
    return tiny_program().to_bytes()


@pytest.fixture(scope="module")
def hls_dir(tmp_path_factory) -> Path:
    return write_project(CFG, tmp_path_factory.mktemp("hls") / "hls").path


@pytest.fixture(scope="module")
def bitfiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("vivado")
    bit, hwh = d / "design_1_wrapper.bit", d / "design_1.hwh"
    bit.write_bytes(bytes(range(256)) * 7)
    hwh.write_text("<MODULE>hwh</MODULE>\n")
    return bit, hwh


def vectors(n: int = 3):
    rng = np.random.default_rng(1)
    return (rng.integers(0, 256, (n, 4, 4, 8)).astype(np.uint8),
            rng.integers(-128, 128, (n, 4, 4, 8)).astype(np.int8))


def kwargs(image, hls_dir, **over):
    kw = dict(program_image=image, engine_config=CFG.to_dict(), config_hash=CFG.hash(), model="tiny",
              method="mvq", data="digits", in_scale=0.5, in_shape=(4, 4, 8), in_unsigned=True,
              out_shape=(4, 4, 8), out_scale=0.25, out_unsigned=False, hls_dir=hls_dir, vectors=vectors(),
              golden_acc=0.875, bit_exact=(3, 3), tools={"python": "3.11", "vitis_hls": "2023.2"},
              bitstream=None, extra={"board": "pynq-z2"})
    kw.update(over)
    return kw


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def built(tmp_path, image, hls_dir, bitfiles) -> Path:
    return write_bundle(tmp_path / "deploy", **kwargs(image, hls_dir, bitstream=bitfiles))


def rewrite_manifest(path: Path, edit) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m, indent=2))


def set_file(path: Path, rel: str, data: bytes) -> None:
    """Replace a file and update its manifest entry consistently (so only the deeper checks can object)."""
    (path / rel).write_bytes(data)
    rewrite_manifest(path, lambda m: m["files"].__setitem__(
        rel, {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}))


def expect_error(path: Path, *needles: str) -> str:
    with pytest.raises(BundleError) as ei:
        load(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# --------------------------------------------------------------------------- round trip

def test_round_trip(built, image, hls_dir, bitfiles):
    b = load(built)
    assert isinstance(b, Bundle) and b.path == built
    assert b.program_image() == image
    prog = Program.from_bytes(b.program_image())
    assert prog.to_bytes() == image
    assert b.engine_config() == CFG.to_dict() and EngineConfig(**b.engine_config()) == CFG
    assert b.config_hash == CFG.hash()
    assert b.regmap_version == bundle_mod.REGMAP_VERSION
    assert (b.model, b.in_scale, b.in_shape, b.in_unsigned) == ("tiny", 0.5, (4, 4, 8), True)
    assert (b.out_scale, b.out_shape, b.out_unsigned) == (0.25, (4, 4, 8), False)
    m = b.manifest
    assert m["bundle_format"] == BUNDLE_FORMAT
    assert (m["model"], m["method"], m["data"]) == ("tiny", "mvq", "digits")
    assert m["golden_acc"] == 0.875 and m["bit_exact"] == {"matched": 3, "images": 3}
    assert m["tools"] == {"python": "3.11", "vitis_hls": "2023.2"}
    assert m["extra"] == {"board": "pynq-z2"}
    assert m["program"]["bytes"] == len(image) and m["program"]["format_version"] == FORMAT_VERSION
    assert m["created_by"]["tool"]

    x, y = vectors()
    vx, vy = b.vectors()
    assert vx.dtype == np.uint8 and vy.dtype == np.int8
    np.testing.assert_array_equal(vx, x)
    np.testing.assert_array_equal(vy, y)
    assert m["vectors"]["count"] == 3

    assert b.has_bitstream
    assert b.bit_path == built / "vqhls.bit" and b.hwh_path == built / "vqhls.hwh"
    assert b.bit_path.read_bytes() == bitfiles[0].read_bytes() and b.hwh_path.read_bytes() == bitfiles[1].read_bytes()

    assert b.hls_dir == built / "hls"
    src = tree(hls_dir / "firmware")
    assert tree(b.hls_dir / "firmware") == src and "top.cpp" in src
    assert (b.hls_dir / "project.json").read_bytes() == (hls_dir / "project.json").read_bytes()
    # of tb/ only the testbench main and the bridge (engine_io.gxx_build builds them for the sim backend), no vectors
    assert tree(b.hls_dir / "tb") == {rel: (hls_dir / "tb" / rel).read_bytes() for rel in ("bridge.cpp", "tb.cpp")}

    # the manifest lists every other file, with its size and sha256
    files = tree(built)
    del files["manifest.json"]
    assert set(m["files"]) == set(files)
    for rel, data in files.items():
        assert m["files"][rel] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_minimal_bundle(tmp_path, image, hls_dir):
    out = write_bundle(tmp_path / "deploy", **kwargs(image, hls_dir, vectors=None, golden_acc=None,
                                                       bit_exact=None, tools={}, extra=None))
    b = load(out)
    assert b.vectors() is None
    assert not b.has_bitstream and b.bit_path is None and b.hwh_path is None
    assert b.manifest["golden_acc"] is None and b.manifest["bit_exact"] is None
    assert sorted(os.listdir(out)) == ["hls", "manifest.json", "program.bin"]


def test_rewrite_replaces_older_bundle(built, image, hls_dir):
    write_bundle(built, **kwargs(image, hls_dir, model="second", bitstream=None))
    b = load(built)
    assert b.model == "second" and not b.has_bitstream and not (built / "vqhls.bit").exists()
    assert sorted(p.name for p in built.parent.iterdir()) == ["deploy"]


# --------------------------------------------------------------------------- tampering

def test_modified_byte(built):
    p = built / "program.bin"
    data = bytearray(p.read_bytes())
    data[100] ^= 1
    p.write_bytes(bytes(data))
    expect_error(built, "program.bin", "sha256 mismatch", "python -m flow.build")


def test_truncated_file(built):
    p = built / "hls/firmware/top.cpp"
    p.write_bytes(p.read_bytes()[:-10])
    expect_error(built, "hls/firmware/top.cpp", "bytes")


def test_deleted_file(built):
    (built / "vectors/expected.bin").unlink()
    expect_error(built, "vectors/expected.bin", "missing")


def test_added_file(built):
    (built / "hls/firmware/evil.h").write_text("#define X 1\n")
    expect_error(built, "hls/firmware/evil.h", "not listed")


def test_added_symlinked_dir(built, tmp_path):
    (built / "extra").symlink_to(tmp_path)
    expect_error(built, "extra", "not listed")


def test_manifest_sha_edited(built):
    rewrite_manifest(built, lambda m: m["files"]["program.bin"].__setitem__("sha256", "0" * 64))
    expect_error(built, "program.bin", "sha256 mismatch")


def test_manifest_drops_a_file(built):
    rewrite_manifest(built, lambda m: m["files"].pop("vqhls.hwh"))
    expect_error(built, "vqhls.hwh", "not listed")


def test_format_version(built):
    rewrite_manifest(built, lambda m: m.__setitem__("bundle_format", BUNDLE_FORMAT + 1))
    expect_error(built, "manifest.json", f"bundle format {BUNDLE_FORMAT + 1}", f"reads format {BUNDLE_FORMAT}")


def test_truncated_manifest(built):
    p = built / "manifest.json"
    p.write_text(p.read_text()[:200])
    expect_error(built, "manifest.json", "not valid JSON")


def test_missing_manifest(built):
    (built / "manifest.json").unlink()
    expect_error(built, "manifest.json", "missing")


def test_not_a_directory(tmp_path):
    expect_error(tmp_path / "nope", "no such directory")


def test_manifest_path_escape(built):
    rewrite_manifest(built, lambda m: m["files"].__setitem__("../x", {"sha256": "0" * 64, "bytes": 0}))
    expect_error(built, "invalid file path", "../x")


def test_program_crc(built, image):
    data = bytearray(image)
    data[-1] ^= 0x80                     # body byte: the image's own CRC32 catches it
    set_file(built, "program.bin", bytes(data))
    expect_error(built, "program.bin", "CRC32 mismatch")


def test_program_magic(built, image):
    set_file(built, "program.bin", b"XXXX" + image[4:])
    expect_error(built, "program.bin", "magic")


def test_program_truncated_consistently(built, image):
    set_file(built, "program.bin", image[:-4])
    expect_error(built, "program.bin", "header says")


def test_program_shape_disagrees(built):
    rewrite_manifest(built, lambda m: m["input"].__setitem__("shape", [4, 4, 4]))
    expect_error(built, "program.bin", "[4, 4, 4]")


def test_vectors_shape_disagrees(built):
    rewrite_manifest(built, lambda m: m["vectors"]["inputs"].__setitem__("shape", [2, 4, 4, 8]))
    expect_error(built, "vectors/inputs.bin", "size disagrees")


@pytest.mark.parametrize("section, rel", [("vectors", "vectors/"), ("bitstream", "vqhls.")])
def test_a_dropped_section_leaves_its_files_behind(built, section, rel):
    """Found by the bundle fuzzer: 'vectors': null loaded a bundle without its self-test vectors."""
    rewrite_manifest(built, lambda m: m.__setitem__(section, None))
    expect_error(built, rel, "no section of it names the file")


def test_an_engine_source_removed_with_its_manifest_entry(built):
    """Found by the bundle fuzzer: top.cpp deleted and dropped from the manifest loaded, then could not run."""
    (built / "hls/firmware/top.cpp").unlink()
    rewrite_manifest(built, lambda m: m["files"].pop("hls/firmware/top.cpp"))
    expect_error(built, "hls/firmware/top.cpp missing", "the HLS project lists it")


def test_engine_config_edited(built):
    rewrite_manifest(built, lambda m: m["engine_config"].__setitem__("rows", 4))
    expect_error(built, "hls/project.json", "EngineConfig differs")


def test_config_hash_edited(built):
    rewrite_manifest(built, lambda m: m.__setitem__("config_hash", "deadbeef"))
    expect_error(built, "hls/project.json", "deadbeef")


def test_regmap_version(built):
    rewrite_manifest(built, lambda m: m.__setitem__("regmap_version", "00000000"))
    expect_error(built, "register map 00000000", bundle_mod.REGMAP_VERSION)


def test_regmap_version_tracks_offsets(monkeypatch):
    from engine_io import bundle as bundle_format, regmap

    before = bundle_format._regmap_version()
    regs = list(regmap.REGISTERS)
    regs[-1] = regmap.Register("STATUS", regmap.STATUS + 8, "ro", 32, "status")
    monkeypatch.setattr(regmap, "REGISTERS", tuple(regs))
    assert bundle_format._regmap_version() != before


# --------------------------------------------------------------------------- atomicity

def _listing(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def _failing_copy2(monkeypatch, after: int):
    real = bundle_mod.shutil.copy2
    calls = []

    def copy2(src, dst, *a, **k):
        calls.append(src)
        if len(calls) > after:
            raise OSError("disk full (test)")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(bundle_mod.shutil, "copy2", copy2)
    return calls


def test_failed_write_leaves_nothing(tmp_path, image, hls_dir, bitfiles, monkeypatch):
    calls = _failing_copy2(monkeypatch, after=3)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(tmp_path / "deploy", **kwargs(image, hls_dir, bitstream=bitfiles))
    assert len(calls) == 4
    assert _listing(tmp_path) == []


def test_failed_write_keeps_older_bundle(built, image, hls_dir, bitfiles, monkeypatch):
    old = tree(built)
    _failing_copy2(monkeypatch, after=5)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(built, **kwargs(image, hls_dir, model="newer", bitstream=bitfiles))
    assert tree(built) == old
    assert _listing(built.parent) == ["deploy"]
    assert load(built).model == "tiny"


def test_failed_bitstream_copy_keeps_older_bundle(built, image, hls_dir, bitfiles, monkeypatch):
    old = tree(built)
    n_fw = len(list((hls_dir / "firmware").iterdir()))
    _failing_copy2(monkeypatch, after=n_fw + 2)      # firmware, project.json, .bit succeed; .hwh fails
    with pytest.raises(OSError):
        write_bundle(built, **kwargs(image, hls_dir, model="newer", bitstream=bitfiles))
    assert tree(built) == old and _listing(built.parent) == ["deploy"]


def test_failed_write_bytes(tmp_path, image, hls_dir, monkeypatch):
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name == "expected.bin":
            raise OSError("io error (test)")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(OSError, match="io error"):
        write_bundle(tmp_path / "deploy", **kwargs(image, hls_dir))
    assert _listing(tmp_path) == []


def test_failed_final_rename_restores_older_bundle(built, image, hls_dir, monkeypatch):
    old = tree(built)
    real = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:                       # old bundle moved aside; the new one fails to move in
            raise OSError("rename failed (test)")
        return real(src, dst)

    monkeypatch.setattr(bundle_mod.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        write_bundle(built, **kwargs(image, hls_dir, model="newer"))
    assert tree(built) == old and _listing(built.parent) == ["deploy"]


def test_refuses_to_replace_other_directory(tmp_path, image, hls_dir):
    d = tmp_path / "deploy"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a bundle"):
        write_bundle(d, **kwargs(image, hls_dir))
    assert _listing(d) == ["notes.txt"]


# --------------------------------------------------------------------------- argument checks

@pytest.mark.parametrize("over, needle", [
    (dict(in_shape=(4, 4, 4)), "input bytes"),
    (dict(out_shape=(2, 2, 8)), "output bytes"),
    (dict(vectors=(np.zeros((2, 4, 4, 8), np.uint8), np.zeros((3, 4, 4, 8), np.int8))), "same N"),
    (dict(vectors=(np.zeros((2, 4, 4, 4), np.uint8), np.zeros((2, 4, 4, 8), np.int8))), "vector inputs"),
    (dict(vectors=(np.full((1, 4, 4, 8), -1), np.zeros((1, 4, 4, 8), np.int8))), "uint8 range"),
    (dict(vectors=(np.zeros((1, 4, 4, 8)), np.zeros((1, 4, 4, 8), np.int8))), "integer codes"),
    (dict(config_hash="xyz"), "not hexadecimal"),
    (dict(config_hash="00000000"), "HLS project built for engine"),
    (dict(in_scale=float("nan")), "in_scale"),
    (dict(program_image=b"XXXX" + bytes(40)), "magic"),
    (dict(program_image=b"VQHL" + bytes(60)), "format version 0"),
    (dict(program_image=b"VQHL" + FORMAT_VERSION.to_bytes(4, "little") + bytes(56)), "header says 0"),
    (dict(extra={"x": object()}), "JSON"),
])
def test_bad_arguments(tmp_path, image, hls_dir, over, needle):
    with pytest.raises(BundleError) as ei:
        write_bundle(tmp_path / "deploy", **kwargs(image, hls_dir, **over))
    assert needle in str(ei.value)
    assert _listing(tmp_path) == []


def test_bad_hls_dir(tmp_path, image):
    fake = tmp_path / "fakehls"
    fake.mkdir()
    (fake / "project.json").write_text("{}")
    with pytest.raises(BundleError, match="no engine sources"):
        write_bundle(tmp_path / "deploy", **kwargs(image, fake))
    with pytest.raises(BundleError, match="project.json missing"):
        write_bundle(tmp_path / "deploy", **kwargs(image, tmp_path / "nowhere"))


def test_other_engine_hls_project(tmp_path, image):
    other = write_project(EngineConfig(rows=4), tmp_path / "hls4").path
    with pytest.raises(BundleError, match="regenerate the HLS project"):
        write_bundle(tmp_path / "deploy", **kwargs(image, other))


def test_missing_bitstream(tmp_path, image, hls_dir, bitfiles):
    with pytest.raises(BundleError, match="Vivado"):
        write_bundle(tmp_path / "deploy", **kwargs(image, hls_dir, bitstream=(bitfiles[0], tmp_path / "x.hwh")))


def test_numpy_scalars_in_metadata(tmp_path, image, hls_dir):
    out = write_bundle(tmp_path / "deploy", **kwargs(image, hls_dir, golden_acc=np.float32(0.5),
                                                       in_scale=np.float64(0.5), extra={"n": np.int64(3)}))
    b = load(out)
    assert b.manifest["golden_acc"] == 0.5 and b.manifest["extra"] == {"n": 3}


# --------------------------------------------------------------------------- board-side imports

def test_import_pulls_in_neither_torch_nor_the_flow(built):
    code = (
        "import sys\n"
        "import engine_io.bundle as fb\n"
        f"b = fb.load({str(built)!r})\n"
        "b.vectors(); b.program_image()\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m == 'jinja2'\n"
        "             or m == 'flow' or m.startswith(('flow.', 'host', 'models')))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
