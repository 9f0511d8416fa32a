"""The engine's real cycle counter (REAL_CYCLES, engine_io/regmap.py): the names and numbers its templates share.

The counter is Verilog (``hls_templates/rtl/cycle_counter.v.j2``) that Vitis HLS instantiates as an RTL
blackbox (``hls_templates/tcl/cycle_counter.json.j2``, ``add_files -blackbox`` in build.tcl) for the
calls the top makes through ``hls_templates/engine/cycle_counter.h.j2``; ``cycle_counter.cpp.j2`` is
the C model Vitis C-simulation runs in its place. ``flow.hls.project`` renders them into a project as
``FILES`` says and gives the templates ``context()`` as ``cc``.
"""
from __future__ import annotations

MODULE = "vqhls_cycle_counter"      # the C function and the Verilog module: Vitis wants the same name
JSON = "cycle_counter.json"         # at the project root, beside build.tcl: its paths are from there
MACRO = "VQHLS_RTL_BLACKBOX"        # defined by build.tcl: the header declares the blackbox, no C model inline
LATENCY = 1                         # cycles from ap_start to ap_done (rtl_performance in the JSON)

# The resources the JSON declares (Vitis adds them to its report; it does not synthesize a blackbox):
# MEASURED with yosys 0.23 `synth_xilinx -family xc7` on the rendered module (129 flip-flops: the 64-bit
# count, the 64-bit `now`, `done`; 13 LUTs and 16 CARRY4 for the +1 and the saturation compare).
# tests/flow/hls/test_tcl.py re-synthesizes the module and checks these. Vivado's numbers will differ.
FF = 129
LUT = 13

# project path -> template (relative to hls_templates/)
FILES: dict[str, str] = {
    "firmware/cycle_counter.h": "engine/cycle_counter.h.j2",
    "firmware/cycle_counter.cpp": "engine/cycle_counter.cpp.j2",
    f"firmware/{MODULE}.v": "rtl/cycle_counter.v.j2",
    JSON: "tcl/cycle_counter.json.j2",
}

# the C model: compiled by Vitis from the JSON only, never with the design sources (add_files)
C_MODEL = "cycle_counter.cpp"


def context() -> dict:
    """The ``cc`` variable of the templates."""
    return {"module": MODULE, "json": JSON, "macro": MACRO, "latency": LATENCY, "ff": FF, "lut": LUT,
            "c_model": C_MODEL}
