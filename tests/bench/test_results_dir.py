"""make bench writes where git does not track (build/bench) unless told to update bench/results."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _results_dir(env_extra: dict) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "VQHLS_BENCH_OUT"} | env_extra
    r = subprocess.run([sys.executable, "-c", "from bench.common import RESULTS; print(RESULTS)"], cwd=REPO,
                       env=env, capture_output=True, text=True, check=True)
    return Path(r.stdout.strip())


def test_results_go_where_the_environment_says(tmp_path):
    assert _results_dir({}) == REPO / "bench" / "results"
    assert _results_dir({"VQHLS_BENCH_OUT": str(tmp_path)}) == tmp_path


def test_make_bench_defaults_to_an_untracked_directory():
    dry = subprocess.run(["make", "-n", "bench"], cwd=REPO, capture_output=True, text=True).stdout
    runs = [ln for ln in dry.splitlines() if "bench/" in ln and ".py" in ln]
    assert len(runs) >= 6 and all(f"VQHLS_BENCH_OUT={REPO}/build/bench " in ln for ln in runs), runs
    ignored = subprocess.run(["git", "check-ignore", "-q", "build/bench/frontier.json"], cwd=REPO)
    assert ignored.returncode == 0   # git does not track it
    dry = subprocess.run(["make", "-n", "bench", "BENCH_OUT=bench/results"], cwd=REPO, capture_output=True,
                         text=True).stdout
    assert f"VQHLS_BENCH_OUT={REPO}/bench/results " in dry


PROVENANCE = ("commit", "script", "argv", "date", "cpu", "cores", "platform", "python")


def test_save_records_what_produced_the_result(tmp_path):
    import json
    import re

    from bench.common import save

    path = save("probe", {"rows": [1]}, REPO / "bench" / "area.py", ["--rows", "2"], out=tmp_path)
    m = json.loads(path.read_text())["machine"]
    assert set(PROVENANCE) <= set(m)
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", m["commit"]), m["commit"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert m["commit"].split("+")[0] == head
    assert (m["script"], m["argv"], m["cores"]) == ("bench/area.py", ["--rows", "2"], os.cpu_count())
    assert m["cpu"] and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", m["date"])
    # the ISA flags that pick code paths, as /proc/cpuinfo lists them (an independent read of the file)
    flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
    assert m["isa"] == {f: f in flags for f in ("avx2", "avx512f", "fma")}
    assert set(m["threads"]) == {"torch", "OMP_NUM_THREADS"}


def test_every_committed_result_says_what_produced_it():
    """bench/results/*.json: the provenance fields exist and name a script that exists (results from before
    the scripts recorded them say 'not recorded' for what is unknown, never nothing)."""
    import json

    files = sorted((REPO / "bench" / "results").glob("*.json"))
    assert files
    for f in files:
        m = json.loads(f.read_text()).get("machine", {})
        missing = [k for k in PROVENANCE if m.get(k) in (None, "")]
        assert not missing, f"{f.name}: no {missing}"
        assert (REPO / m["script"]).is_file(), f"{f.name}: script {m['script']} does not exist"
