"""Locate the Xilinx ``ap_types`` headers (ap_int.h, hls_stream.h, ...) at run time.

They ship inside the hls4ml package (``hls4ml/templates/vivado/ap_types``);
nothing is vendored into this repository. ``VQHLS_AP_TYPES`` overrides the
location (a directory holding ap_int.h).
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

REQUIRED = ("ap_int.h", "hls_stream.h")


class APTypesNotFound(RuntimeError):
    """The ap_types headers are not installed."""


@lru_cache(maxsize=None)
def ap_types_dir() -> Path:
    """Directory holding ap_int.h / hls_stream.h; raises APTypesNotFound with the fix."""
    override = os.environ.get("VQHLS_AP_TYPES")
    if override:
        path = Path(override)
        if not all((path / f).is_file() for f in REQUIRED):
            raise APTypesNotFound(f"VQHLS_AP_TYPES={override} does not hold {', '.join(REQUIRED)}")
        return path
    if importlib.util.find_spec("hls4ml") is None:
        raise APTypesNotFound(
            "the ap_types headers come with the hls4ml package, which is not installed: "
            "run `pip install hls4ml` (or set VQHLS_AP_TYPES to a directory holding ap_int.h)"
        )
    path = Path(str(importlib.resources.files("hls4ml") / "templates" / "vivado" / "ap_types"))
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise APTypesNotFound(
            f"hls4ml is installed but {path} lacks {', '.join(missing)}: reinstall it with "
            "`pip install --force-reinstall hls4ml` (or set VQHLS_AP_TYPES)"
        )
    return path
