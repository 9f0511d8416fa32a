"""``python -m flow.compress``: a small run exits 0 with the report; bad input exits 2 with one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flow.compress.__main__ import main

ROOT = Path(__file__).resolve().parents[3]


def run_cli(args, cache: Path):
    env = dict(os.environ, VQHLS_CACHE=str(cache), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "flow.compress", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_runs(tmp_path):
    out = tmp_path / "r.json"
    r = run_cli(["--model", "lenet-digits", "--method", "mvq", "--n", "2", "--m", "4", "--k", "16", "--d", "8",
                 "--train-epochs", "1", "--train-limit", "300", "--finetune-epochs", "0", "--calibrate", "200",
                 "--iters", "5", "--quiet", "--json", str(out)], tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "TOTAL" in r.stdout and "MVQConv2d" in r.stdout and "test accuracy" in r.stdout
    assert "compressed+bn-calibrated" in r.stdout
    rep = json.loads(out.read_text())
    assert rep["report"]["ratio"] > 1 and set(rep["accuracy"]) >= {"float", "compressed"}


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    r = run_cli(["--model", "lenet-digits", "--k", "100000", "--train-epochs", "1"], tmp_path / "cache")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "k <= 576" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))  # failed before training


@pytest.mark.parametrize("args,pattern", [
    (["--model", "nope"], "unknown model"),
    (["--model", "lenet-digits", "--method", "kmeans"], "unknown method"),
    (["--model", "lenet-digits", "--method", "vecq", "--bits", "8"], "vecq_scheme='sweep'"),
    (["--model", "lenet-digits", "--method", "vecq", "--vecq-scheme", "sweep", "--bits", "1"], "2..8"),
    (["--model", "lenet-digits", "--n", "4", "--m", "4"], "method='vq'"),
    (["--model", "lenet-digits", "--d", "6"], "multiple of m=4"),
    (["--model", "lenet-digits", "--skip", "first", "nope"], "not a module"),
    (["--model", "lenet-digits", "--k", "abc"], "invalid int"),
    (["--model", "lenet-digits", "--finetune-epochs", "-1"], "finetune-epochs"),
    ([], "required"),
])
def test_cli_bad_input_in_process(args, pattern, capsys):
    try:
        rc = main(args)
    except SystemExit as e:  # argparse errors exit from inside parse_args
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and pattern in err[0]
