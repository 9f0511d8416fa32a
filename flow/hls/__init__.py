"""The HLS engine: render ``hls_templates/`` into a Vitis HLS project, lint it, C-simulate it.

    from flow.hls.project import write_project          # EngineConfig -> firmware/ tb/ Makefile build.tcl
    from engine_io.gxx_build import build                     # g++: testbench executable + ctypes library (cached)
    from flow.hls.csim import csim, CsimEngine               # tb on files / in-process bridge (predict)
    python -m flow.hls.lint PROJECT_DIR                  # synthesizable-subset checks

The register map is ``engine_io/regmap.py``; the parameter image is
``flow.compile.program.Program.to_bytes()``; the numeric reference is
``flow.compile.program_exec.run_program`` (C-simulation matches it bit for bit).
"""
