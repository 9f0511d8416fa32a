"""C-simulation throughput through the shared-library bridge (the targets bench/ measures):
> ~240 images/s on a small 8x8 digits CNN, >= 10 images/s on a ResNet20-sized program (32x32, 2:4 MVQ)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from hls_testlib import lenet_program, macs, rand_inputs, resnet20_program

pytestmark = [pytest.mark.csim, pytest.mark.slow]


def _images_per_s(engine, prog, x, repeats: int = 3) -> float:
    engine.predict(prog, x[:1])                     # load the program once
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        engine.predict(prog, x)
        best = min(best, time.perf_counter() - t)
    return len(x) / best


def test_lenet_like_throughput(engine):
    rng = np.random.default_rng(0)
    prog = lenet_program(rng)
    rate = _images_per_s(engine, prog, rand_inputs(rng, prog, 1000))
    print(f"lenet-like 8x8: {rate:.0f} images/s")
    assert rate > 240, f"{rate:.0f} images/s"


def test_resnet20_throughput(engine):
    rng = np.random.default_rng(0)
    prog = resnet20_program(rng, size=32)
    assert 35e6 < macs(prog) < 45e6
    rate = _images_per_s(engine, prog, rand_inputs(rng, prog, 12))
    print(f"resnet20 32x32 2:4: {rate:.1f} images/s ({macs(prog) / 1e6:.1f} M dense MACs)")
    assert rate >= 10, f"{rate:.1f} images/s"
