"""python -m host.run: the bundle's vectors and a dataset on the sim backend; every error is one line, exit 2."""
from __future__ import annotations

import importlib.util

import os
import shutil
import subprocess
import sys
from pathlib import Path

from host import run as host_run

REPO = Path(__file__).resolve().parents[2]


def test_cli_sim_digits_bit_exact(bundle_path, sim_cache, sim_library):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", VQHLS_CACHE=str(sim_cache))
    proc = subprocess.run([sys.executable, "-m", "host.run", str(bundle_path), "--backend", "sim", "--data", "digits",
                           "--limit", "60"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "8/8 bit-exact with the bundle's expected outputs" in out
    assert "digits test split: 60 images, accuracy" in out
    assert "the first 8 images are the bundle's vectors: 8/8 outputs bit-exact" in out
    assert "cycles/image (CYCLES register)" in out and "images/s" in out
    # C-simulation has no real counter: REAL_CYCLES is reported as not available, never as a number
    assert out.count("real cycles: not available (C-simulation)") == 2, out       # the load call, the throughput
    assert "modelled cycles (CYCLES)" in out and "measured cycles (REAL_CYCLES)" not in out
    assert "Traceback" not in proc.stderr


def test_real_cycles_text():
    """The REAL_CYCLES report: measured cycles per image and images/s at the clock (100 images in 1,000,000
    cycles at 100 MHz take 10 ms: 10,000 images/s), labelled measured; without a counter, not available."""
    line = host_run.real_cycles_text(1_000_000, 100, 100.0, "pynq")
    assert line == ("10,000 cycles/image measured on the board (REAL_CYCLES register, the engine's counter) = "
                    "10,000 images/s at 100 MHz")
    assert host_run.real_cycles_text(None, 100, 100.0, "sim") == "real cycles: not available (C-simulation)"
    assert "not available" in host_run.real_cycles_text(None, 1, 100.0, "pynq")
    assert "clock unknown" in host_run.real_cycles_text(500, 1, None, "pynq")


def one_error_line(capsys, argv) -> str:
    rc = host_run.main(argv)
    cap = capsys.readouterr()
    assert rc == 2, cap.out + cap.err
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), cap.err
    return lines[0]


def test_errors_are_one_line(capsys, bundle_path, sim_cache, sim_library, tmp_path, monkeypatch):
    assert "no such directory" in one_error_line(capsys, [str(tmp_path / "nope"), "--backend", "sim"])
    bad = tmp_path / "corrupt"
    shutil.copytree(bundle_path, bad)
    (bad / "program.bin").write_bytes(b"\0" * 64)
    assert "program.bin" in one_error_line(capsys, [str(bad), "--backend", "sim"])
    assert "unknown backend 'tpu'" in one_error_line(capsys, [str(bundle_path), "--backend", "tpu"])
    if importlib.util.find_spec("pynq") is None:
        assert "pip install vqhls[board]" in one_error_line(capsys, [str(bundle_path), "--backend", "pynq"])
    line = one_error_line(capsys, [str(bundle_path), "--backend", "sim", "--data", "fashion-mnist",
                                   "--cache-dir", str(sim_cache)])
    assert "[1, 28, 28]" in line and "[1, 8, 8]" in line
    monkeypatch.setenv("VQHLS_FMNIST_DIR", str(tmp_path / "no-fmnist"))   # models.data's DatasetError, one line
    assert "apt-get install -y dataset-fashion-mnist" in one_error_line(
        capsys, [str(bundle_path), "--backend", "sim", "--data", "fashion-mnist", "--cache-dir", str(sim_cache)])
    monkeypatch.delenv("VQHLS_FMNIST_DIR")
    monkeypatch.setenv("VQHLS_AP_TYPES", str(tmp_path))
    assert "pip install hls4ml" in one_error_line(capsys, [str(bundle_path), "--backend", "sim",
                                                           "--cache-dir", str(tmp_path / "c")])
    monkeypatch.delenv("VQHLS_AP_TYPES")
    monkeypatch.setenv("CXX", str(tmp_path / "no-g++"))
    assert "install g++ (apt-get install g++)" in one_error_line(capsys, [str(bundle_path), "--backend", "sim",
                                                                          "--cache-dir", str(tmp_path / "c")])


def test_flags_that_would_be_ignored_are_errors(capsys, bundle_path):
    """--timeout 0 / negative / NaN and --limit or --clip without --data were ignored: now one line, exit 2,
    before the bundle is opened (the path here does not exist: the flag is named, not the bundle)."""
    missing = "no-such-bundle"
    for t in ("0", "-1", "nan"):
        assert "--timeout must be a number of seconds > 0" in one_error_line(capsys, [missing, "--timeout", t])
    assert "--limit 5 needs --data" in one_error_line(capsys, [missing, "--limit", "5"])
    assert "--clip needs --data" in one_error_line(capsys, [missing, "--clip"])
    assert "choose one of digits" in one_error_line(capsys, [missing, "--data", "mnist"])
    assert "--limit must be >= 0" in one_error_line(capsys, [missing, "--data", "digits", "--limit", "-1"])


def test_every_flag_has_help():
    for action in host_run.build_parser()._actions:
        assert action.help and action.help.strip(), action.option_strings or action.dest
