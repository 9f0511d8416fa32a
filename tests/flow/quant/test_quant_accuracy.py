"""Trained-model check: integer accuracy within 2 points of float accuracy (lenet-digits on digits)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from flow.compile import EngineConfig, lower
from flow.quant.convert import quantize_model
from flow.compile.program_exec import run_program
from flow.quant.golden import evaluate, quantize_input, run


@pytest.mark.slow
def test_lenet_digits_integer_accuracy():
    from models import data, zoo
    from models.train import train

    xtr, ytr = data.load("digits", "train")
    xte, yte = data.load("digits", "test")
    model = zoo.get("lenet-digits", in_channels=1)
    train(model, xtr, ytr, epochs=5, seed=0, progress=False)
    g = quantize_model(model, torch.from_numpy(xtr[:512]))
    res = evaluate(model, g, xte, yte)
    assert res["float_acc"] > 0.9, res
    assert res["int_acc"] >= res["float_acc"] - 0.02, res
    # the packed program gives the same integers
    prog = lower(g, EngineConfig())
    xi = quantize_input(xte, prog.in_scale, True)
    assert np.array_equal(run_program(prog, xi), run(g, xi))
