"""End to end: the main job on lenet-digits, as `make csim` runs it."""
import json
import subprocess
import sys

import pytest


@pytest.mark.csim
@pytest.mark.slow
@pytest.mark.parametrize("method", ["mvq", "vq", "pq", "vecq"])
def test_main_job_is_bit_exact_on_digits(tmp_path, method):
    summary = tmp_path / "summary.json"
    r = subprocess.run([sys.executable, "-m", "flow.build", "--stage", "csim", "--model", "lenet-digits",
                        "--method", method, "--finetune-epochs", "2", "--out", str(tmp_path / "build"),
                        "--json", str(summary)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads(summary.read_text())
    assert s["images"] == 360 and s["bit_exact"] == 360
    assert f"bit-exact: 360/360" in r.stdout
    # golden and C-sim agree exactly, so their accuracies must too; the integer model stays near float
    assert s["csim_acc"] == s["golden_acc"]
    assert s["golden_acc"] > s["float_acc"] - 0.05
    assert s["ratio"] > (1.0 if method == "pq" else 4)  # PQ trades multiplies for (large) tables, not size


def test_bad_input_is_a_clean_error():
    r = subprocess.run([sys.executable, "-m", "flow.build", "--model", "vgg"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown model 'vgg'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "flow.build", "--board", "zcu999"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown board 'zcu999'" in r.stderr
