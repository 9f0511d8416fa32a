"""The build cache: a VQHLS_CACHE that is a file, a corrupt cached checkpoint, a damaged cached engine
library and the working folders of killed g++ builds get a one-line error or are repaired; the emitted
HLS project's Makefile names no machine-specific Python."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine_io.cache import CacheError, cache_dir, cache_root
from models.train import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_vqhls_cache_that_is_a_file(tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    monkeypatch.setenv("VQHLS_CACHE", str(f))
    for call in (cache_root, lambda: cache_dir("checkpoints")):
        with pytest.raises(CacheError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and f"VQHLS_CACHE={f}" in msg and "not a directory" in msg


def test_vqhls_cache_below_a_file(tmp_path, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    monkeypatch.setenv("VQHLS_CACHE", str(f / "sub"))
    with pytest.raises(CacheError) as e:
        cache_dir("checkpoints")
    assert "\n" not in str(e.value) and "VQHLS_CACHE" in str(e.value) and "writable directory" in str(e.value)


def test_models_train_cli_names_a_bad_cache(tmp_path):
    """python -m models.train with VQHLS_CACHE=<a file>: exit 2, one line naming VQHLS_CACHE."""
    f = tmp_path / "afile"
    f.write_text("x")
    env = dict(os.environ, VQHLS_CACHE=str(f), OMP_WAIT_POLICY="PASSIVE")
    r = subprocess.run([sys.executable, "-m", "models.train", "--model", "lenet-digits", "--epochs", "1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "VQHLS_CACHE" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_model"])
def test_corrupt_cached_checkpoint_names_the_path_and_the_fix(tmp_path, monkeypatch, damage):
    torch = pytest.importorskip("torch")
    from models import train as trainer

    monkeypatch.setenv("VQHLS_CACHE", str(tmp_path / "cache"))
    model = trainer.build("lenet-digits", "digits")
    path = cache_dir("checkpoints") / "lenet-digits-digits-e1-n64.pt"
    if damage == "other_model":
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    else:
        torch.save(model.state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 50)
    with pytest.raises(CacheError) as e:
        load_checkpoint(trainer.build("lenet-digits", "digits"), path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "--retrain" in msg and "delete it" in msg
    # the same through get_trained (the cache lookup flow.build uses), and --retrain replaces the file
    with pytest.raises(CacheError, match="cached checkpoint"):
        trainer.get_trained("lenet-digits", "digits", epochs=1, train_limit=64, progress=False)
    trainer.get_trained("lenet-digits", "digits", epochs=1, train_limit=64, progress=False, retrain=True)
    trainer.get_trained("lenet-digits", "digits", epochs=1, train_limit=64, progress=False)   # loads now


# --------------------------------------------------------------------------- the compiled-engine cache
class _FakeGpp:
    """Stands in for g++ in engine_io.gxx_build._run: writes the -o file, optionally 'hangs' (never exits)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, cmd, cwd):
        self.calls += 1
        out = Path(cmd[cmd.index("-o") + 1])
        out.write_bytes(b"\x7fELF fake " + out.name.encode() * 100)
        return subprocess.Popen(["true"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def fake_build(tmp_path, monkeypatch):
    from flow.compile.engine import EngineConfig
    from flow.hls.csim import engine_sources
    from flow.hls.project import write_project
    from engine_io import gxx_build

    monkeypatch.setenv("VQHLS_CACHE", str(tmp_path / "cache"))
    gpp = _FakeGpp()
    monkeypatch.setattr(gxx_build, "_run", gpp)
    proj = engine_sources(write_project(EngineConfig(), tmp_path / "proj"))
    return gxx_build, proj, gpp


def test_a_damaged_cached_library_is_rebuilt(fake_build):
    gxx_build, proj, gpp = fake_build
    tb, lib = gxx_build.build(proj)
    first = gpp.calls
    assert gxx_build.verify_build(lib.parent) and (lib.parent / gxx_build.SUMS_NAME).is_file()
    assert gxx_build.build(proj) == (tb, lib) and gpp.calls == first          # cached: no g++
    good = lib.read_bytes()
    lib.write_bytes(good[: len(good) // 2])                                    # truncated (SIGBUS on dlopen)
    assert not gxx_build.verify_build(lib.parent)
    assert gxx_build.build(proj) == (tb, lib) and gpp.calls > first          # rebuilt
    assert lib.read_bytes() == good and gxx_build.verify_build(lib.parent)
    # a build killed before its sums were written is not used either
    (lib.parent / gxx_build.SUMS_NAME).unlink()
    n = gpp.calls
    gxx_build.build(proj)
    assert gpp.calls > n


def test_working_folders_of_killed_builds_are_removed(fake_build):
    gxx_build, proj, gpp = fake_build
    root = cache_root()
    entry = root / "someconfig-abc"
    entry.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = entry / f"{gxx_build.TMP_PREFIX}{dead.pid}-x1"       # its process is gone
    alive = entry / f"{gxx_build.TMP_PREFIX}{os.getppid()}-x2"    # a build still running elsewhere
    old = entry / f"{gxx_build.TMP_PREFIX}{os.getppid()}-x3"      # alive pid, but far too old (pid reused)
    legacy = entry / "build-abcd"                                   # an older kit's folder, old
    for d in (killed, alive, old, legacy):
        d.mkdir()
        (d / "top.o").write_bytes(b"partial")
    past = time.time() - gxx_build.STALE_SECONDS - 60
    for d in (old, legacy):
        os.utime(d, (past, past))
    gxx_build.build(proj)    # the next build cleans up
    assert not killed.exists() and not old.exists() and not legacy.exists()
    assert alive.exists()
    # and its own working folder is gone once it is done
    assert not list(root.glob(f"*/{gxx_build.TMP_PREFIX}{os.getpid()}-*"))


def test_emitted_makefile_names_no_venv_python(tmp_path):
    from flow.compile.engine import EngineConfig
    from flow.hls.project import write_project

    proj = write_project(EngineConfig(), tmp_path / "p")
    text = (proj.path / "Makefile").read_text()
    assert "PYTHON ?= python3" in text
    assert sys.executable not in text and str(REPO / ".venv") not in text
    # an interpreter without hls4ml: a clear error from make, not a g++ include failure
    env = {k: v for k, v in os.environ.items() if k not in ("VQHLS_AP_TYPES", "AP_TYPES")}
    r = subprocess.run(["make", "-s", "tb", "PYTHON=/bin/false"], cwd=proj.path, capture_output=True, text=True,
                       env=env)
    if r.returncode == 127:   # pragma: no cover - no make
        pytest.skip("make not installed")
    assert r.returncode == 2 and "ap_types headers not found" in r.stderr and "AP_TYPES=" in r.stderr
