"""Lowering: quantized model (QGraph) -> Program for an EngineConfig."""
from flow.compile.engine import EngineConfig
from flow.compile.lower import LoweringError, allocate_buffers, lower
from flow.compile.program import Op, Program, ProgramFormatError

__all__ = ["lower", "LoweringError", "allocate_buffers", "Program", "Op", "ProgramFormatError", "EngineConfig"]
