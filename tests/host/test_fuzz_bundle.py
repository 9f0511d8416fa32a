"""Fuzzing the deploy-bundle loader (engine_io.bundle.load, and the host's Accelerator on top of it) with
hypothesis: a real bundle (python -m flow.build, tests/host/conftest.py) is copied and mutated -
manifest fields set to other values and types, removed or added; any file's bytes flipped, cut or
extended; files removed, added or replaced by a directory. Every mutant is either refused with a
one-line BundleError naming the bundle, or loads as a bundle whose program image, engine, scales,
shapes, signedness and test vectors are the original's; the accelerator (sim backend) then runs the
vectors exactly.

``make test`` runs FAST_EXAMPLES examples; ``-m fuzz`` the long campaign (VQHLS_FUZZ_EXAMPLES).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from engine_io.bundle import MANIFEST, BundleError, load  # noqa: E402

FAST_EXAMPLES = 100
LONG_EXAMPLES = int(os.environ.get("VQHLS_FUZZ_EXAMPLES", "5000"))


def _leaves(obj, path=()):
    """Every (path, value) of a JSON document, containers included."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([-1, 0, 1, 3, 4, 8, 10, 255, 256, 2 ** 31, 2 ** 63]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["", "x", "0", "uint8", "int8", "float32", "object",
                                                                     "../x", "/etc/passwd", "program.bin", "hls",
                                                                     "a\x00b", "ffffffff"]),
    st.lists(st.integers(-2, 9), max_size=5), st.just({}), st.just({"file": "program.bin"}),
)


@st.composite
def bundle_edit(draw, doc: dict, files: list[str]):
    kind = draw(st.sampled_from(["set", "set", "set", "delete", "add", "file_bytes", "file_cut", "file_extend",
                                 "file_remove", "file_add", "file_dir", "manifest_bytes"]))
    if kind in ("set", "delete", "add"):
        paths = [p for p, _ in _leaves(doc) if p]
        path = draw(st.sampled_from(paths))
        if kind == "set":
            value = draw(st.one_of(_VALUES, st.sampled_from([v for _, v in _leaves(doc)])))
            return ("set", path, value)
        if kind == "add":
            return ("add", path, draw(_VALUES))
        return ("delete", path, None)
    if kind == "manifest_bytes":
        return (kind, MANIFEST, draw(st.integers(0, 10_000)))
    rel = draw(st.sampled_from(files))
    return (kind, rel, draw(st.integers(0, 1 << 20)))


def _apply(root: Path, edits) -> None:
    doc = json.loads((root / MANIFEST).read_text())
    for kind, where, value in edits:
        if kind in ("set", "delete", "add"):
            if not (root / MANIFEST).is_file():
                continue    # an earlier edit removed it
            node = doc
            try:
                for k in where[:-1]:
                    node = node[k]
                if kind == "set":
                    node[where[-1]] = value
                elif kind == "delete":
                    del node[where[-1]]
                elif isinstance(node, dict):
                    node[f"extra_{where[-1]}"] = value
                elif isinstance(node, list):
                    node.append(value)
            except (KeyError, IndexError, TypeError):
                pass        # an earlier edit removed the path
            (root / MANIFEST).write_text(json.dumps(doc))
            continue
        path = root / where
        if not path.is_file():
            continue
        data = path.read_bytes()
        if kind == "file_bytes" or kind == "manifest_bytes":
            if data:
                i = value % len(data)
                path.write_bytes(data[:i] + bytes([data[i] ^ (1 + value % 255)]) + data[i + 1:])
        elif kind == "file_cut":
            path.write_bytes(data[: value % max(len(data), 1)])
        elif kind == "file_extend":
            path.write_bytes(data + bytes(1 + value % 64))
        elif kind == "file_remove":
            path.unlink()
        elif kind == "file_add":
            (path.parent / f"added_{value}.bin").write_bytes(b"x")
        elif kind == "file_dir":
            path.unlink()
            path.mkdir()
        if kind == "manifest_bytes":
            doc = None
        if doc is None:
            try:
                doc = json.loads((root / MANIFEST).read_text())
            except (OSError, ValueError, UnicodeDecodeError):
                doc = {}


def _essentials(b) -> dict:
    v = b.vectors()
    return dict(image=b.program_image(), engine=b.engine_config(), config_hash=b.config_hash,
                scales=(b.in_scale, b.out_scale), shapes=(tuple(b.in_shape), tuple(b.out_shape)),
                unsigned=(b.in_unsigned, b.out_unsigned), vectors=None if v is None else (v[0].tobytes(),
                                                                                          v[1].tobytes()),
                regmap=b.regmap_version)


@pytest.fixture(scope="module")
def original(bundle):
    return _essentials(bundle)


@pytest.fixture(scope="module")
def doc_and_files(bundle_path):
    doc = json.loads((bundle_path / MANIFEST).read_text())
    files = sorted(p.relative_to(bundle_path).as_posix() for p in bundle_path.rglob("*") if p.is_file())
    return doc, files


def _check(bundle_path, sim_cache, original, tmp: Path, edits) -> str:
    from host.accelerator import Accelerator, AcceleratorError

    root = tmp / "b"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(bundle_path, root)
    _apply(root, edits)
    try:
        b = load(root)
    except BundleError as e:
        msg = str(e)
        assert "\n" not in msg and str(root) in msg, msg
        return "refused"
    got = _essentials(b)
    assert got == original, "a bundle that differs from the one written loaded without an error"
    assert all(math.isfinite(s) and s > 0 for s in got["scales"])
    # the host on top of it: the accelerator runs the test vectors exactly
    try:
        with Accelerator.open(root, backend="sim", cache_dir=sim_cache) as acc:
            acc.load()
            x, want = b.vectors()
            assert np.array_equal(acc.infer(x), want)
    except AcceleratorError as e:   # pragma: no cover - a verified bundle must run
        pytest.fail(f"a bundle that loaded does not run: {e}")
    return "loaded"


def _strategy(doc_and_files):
    doc, files = doc_and_files
    return st.lists(bundle_edit(doc, files), min_size=1, max_size=3)


def _run(n: int, bundle_path, sim_cache, original, doc_and_files, tmp_path) -> None:
    @given(_strategy(doc_and_files))
    @settings(max_examples=n, deadline=None, derandomize=n == FAST_EXAMPLES, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    def prop(edits):
        event(_check(bundle_path, sim_cache, original, tmp_path, edits))

    prop()


@pytest.mark.csim
def test_unmutated_bundle_loads_and_runs(bundle_path, sim_cache, original, tmp_path):
    assert _check(bundle_path, sim_cache, original, tmp_path, []) == "loaded"


@pytest.mark.csim
@pytest.mark.parametrize("edit", [
    ("set", ("input", "scale"), 0.5), ("set", ("input", "shape"), [1, 8, 8]), ("set", ("input", "unsigned"), False),
    ("set", ("output", "scale"), "1"), ("set", ("vectors", "inputs", "dtype"), "float64"),
    ("set", ("program", "format_version"), 3), ("set", ("hls", "firmware"), "../x"), ("delete", ("input", "scale"), None),
])
def test_manifest_disagreeing_with_the_image_is_refused(bundle_path, sim_cache, original, tmp_path, edit):
    """Manifest values the host would use as written (the input scale and layout it quantizes with, the
    signedness, the vectors' dtype) must agree with the program image's header: else a clear refusal."""
    assert _check(bundle_path, sim_cache, original, tmp_path, [edit]) == "refused"


@pytest.mark.csim
def test_fuzz_bundle_loader(bundle_path, sim_cache, original, doc_and_files, tmp_path):
    _run(FAST_EXAMPLES, bundle_path, sim_cache, original, doc_and_files, tmp_path)


@pytest.mark.csim
@pytest.mark.fuzz
def test_fuzz_bundle_loader_long(bundle_path, sim_cache, original, doc_and_files, tmp_path):
    _run(LONG_EXAMPLES, bundle_path, sim_cache, original, doc_and_files, tmp_path)
