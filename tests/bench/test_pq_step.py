"""bench/pq_step.py --quick: the float and PQ training steps side by side, the table and the JSON."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench/ is not installed

from bench import pq_step  # noqa: E402


def test_quick_run_times_every_phase_and_records_the_machine(tmp_path, capsys):
    # --native-only: the native path's equivalence to the torch path is tests/flow/compress/test_pq_train_fused.py's
    # (and the bench's own full run); here the bench's plumbing, without the torch rows' time
    assert pq_step.main(["--quick", "--batch", "8", "--native-only", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "avx2" in out and "x_float" in out and "code path: native/" in out
    data = json.loads((tmp_path / "pq_step_quick.json").read_text())
    rows = data["rows"]
    phases = {r["phase"] for r in rows}
    assert phases == {"float", "pq soft T=1", "pq soft T=0.03", "pq hard"}
    assert {r["impl"] for r in rows} == {"-", "native"}
    assert data["pq_layers"] == 18 and (data["v"], data["K"], data["batch"]) == (9, 16, 8)
    assert data["code_path"] in ("native/avx512", "native/avx2", "native/base")
    for r in rows:
        assert r["ms_per_step"] > 0 and r["cpu_ms_per_step"] >= 0 and r["x_float"] > 0
    m = data["machine"]
    assert m["threads"]["torch"] == 1 and set(m["isa"]) == {"avx2", "avx512f", "fma"} and m["commit"]
