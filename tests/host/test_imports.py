"""host/* runs on the board: it imports neither torch nor the flow nor the models package (models.data,
numpy only, excepted; what it shares with the flow is in engine_io), at import time or while it runs. Checked in a fresh interpreter where those imports fail, through a full sim inference."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    ALLOWED = {"models", "models.data"}   # models.data: numpy only (host.run's datasets)

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top in ("torch", "jinja2") or (top in ("flow", "models") and name not in ALLOWED):
                raise ImportError(f"blocked import of {name} (host must not import it)")
            return None

    sys.meta_path.insert(0, Blocker())
""")


def run_blocked(body: str, env_extra: dict) -> subprocess.CompletedProcess:
    code = BLOCKER + textwrap.dedent(body)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", **env_extra)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_host_runs_without_torch_or_the_flow(bundle_path, sim_cache, sim_library):
    proc = run_blocked(f"""
        import numpy as np
        import host, engine_io.regmap, host.accelerator, host.sim, host.run
        from host.accelerator import Accelerator

        acc = Accelerator.open({str(bundle_path)!r}, backend="sim")
        acc.load()
        x, e = acc.bundle.vectors()
        assert np.array_equal(acc.infer(x), e)
        assert np.array_equal(np.concatenate(list(acc.stream([x[:5], x[5:]]))), e)
        acc.throughput_test(batch=4)
        acc.close()
        rc = host.run.main([{str(bundle_path)!r}, "--backend", "sim", "--data", "digits", "--limit", "20"])
        assert rc == 0, rc
        bad = sorted(m for m in sys.modules
                     if m.split(".")[0] in ("torch", "hls4ml", "jinja2")
                     or m == "flow" or m.startswith("flow.")
                     or (m.startswith("models.") and m != "models.data"))
        assert not bad, bad
        print("HOST-ISOLATED-OK")
    """, {"VQHLS_CACHE": str(sim_cache)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "HOST-ISOLATED-OK" in proc.stdout


def test_regmap_import_is_light():
    proc = run_blocked("""
        import engine_io.regmap
        assert "numpy" not in sys.modules and "host.accelerator" not in sys.modules, sorted(sys.modules)
        import host
        assert host.Accelerator.__name__ == "Accelerator"
        print("LIGHT-OK")
    """, {})
    assert proc.returncode == 0 and "LIGHT-OK" in proc.stdout, proc.stderr[-3000:]
