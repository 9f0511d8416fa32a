"""Fixtures of the HLS engine tests: one compiled engine per EngineConfig per session.

The engine is runtime-configured (layer shapes come from the op descriptors),
so every test of a config shares one build; builds are cached across sessions
in $VQHLS_CACHE (default <repo>/.cache/vqhls).
"""
from __future__ import annotations

import pytest


from hls_testlib import DEFAULT_CFG, ODD_CFG, SMALL_CFG, WIDE_CFG  # noqa: F401  (re-exported to the tests)


@pytest.fixture(scope="session")
def engine():
    from flow.hls.csim import CsimEngine
    return CsimEngine(DEFAULT_CFG)


@pytest.fixture(scope="session")
def wide_engine():
    from flow.hls.csim import CsimEngine
    return CsimEngine(WIDE_CFG)


@pytest.fixture(scope="session")
def small_engine():
    from flow.hls.csim import CsimEngine
    return CsimEngine(SMALL_CFG)


@pytest.fixture(scope="session")
def odd_engine():
    from flow.hls.csim import CsimEngine
    return CsimEngine(ODD_CFG)


@pytest.fixture(scope="session")
def default_project(tmp_path_factory):
    from flow.hls.project import write_project
    return write_project(DEFAULT_CFG, tmp_path_factory.mktemp("hls") / "default")
