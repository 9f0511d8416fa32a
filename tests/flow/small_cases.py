"""Small inputs several flow tests share: a CNN trained on 400 sklearn digits, and a one-op Program.
Importable from tests/flow/* (pytest puts the test file's folder on sys.path: no __init__.py)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flow.compile.engine import EngineConfig
from flow.compile.layout import place
from flow.compile.program import CONV, Op, Program


class DigitsCNN(nn.Module):
    """conv 1->8, conv 8->16, 2x2 max pool, linear 256->10: for 8x8 sklearn digits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def trained_digits_cnn():
    """A DigitsCNN trained on 400 sklearn digits (~97 % on 100 test images; a few seconds), in eval mode,
    with its data: (model, (x_train, y_train), (x_test, y_test))."""
    from models.data import load

    torch.manual_seed(0)
    xtr, ytr = load("digits", "train")
    xte, yte = load("digits", "test")
    xtr, ytr, xte, yte = xtr[:400], ytr[:400], xte[:100], yte[:100]
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    X, Y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(30):
        for i in range(0, len(X), 50):
            opt.zero_grad()
            F.cross_entropy(model(X[i: i + 50]), Y[i: i + 50]).backward()
            opt.step()
    return model.eval(), (xtr, ytr), (xte, yte)


def tiny_program(cfg: EngineConfig | None = None) -> Program:
    """One 3x3 dense conv 4x4x8 -> 4x4x8, placed for ``cfg`` (default: the default engine)."""
    rng = np.random.default_rng(0)
    op = Op(CONV, 0, 1, H=4, W=4, C=8, OH=4, OW=4, OC=8, KH=3, KW=3, pad=1, in_unsigned=1, out_unsigned=0,
            name="conv", arrays=dict(weight=rng.integers(-128, 128, (8, 3, 3, 8)),
                                     bias=rng.integers(-100, 100, 8), mult=np.full(8, 1000), shift=np.full(8, 16)))
    return place(Program([op], in_scale=0.5, out_scale=0.25, in_shape=(4, 4, 8)), cfg or EngineConfig())
