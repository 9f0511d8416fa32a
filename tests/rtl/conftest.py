"""The default model's build for the RTL cases, made once per session on first use (not at collection):
flow.rtl.default_program builds it into the kit's cache, keyed by its inputs, never into build/."""
from __future__ import annotations

from pathlib import Path

import pytest

from flow.rtl.default_program import default_program_dir


@pytest.fixture(scope="session")
def default_model_build() -> Path:
    """The folder of the default model's MVQ build (program.bin, hls/)."""
    return default_program_dir()
