"""bench/pq_train.py --quick: one PQ config through every stage on lenet-digits, the table and the JSON."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench/ is not installed

from bench import common  # noqa: E402
from bench import pq_train  # noqa: E402


def test_quick_run_reports_every_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    assert pq_train.main(["--quick", "--images", "128", "--test-images", "100", "--golden-images", "50"]) == 0
    out = capsys.readouterr().out
    assert "kmeans" in out and "joint" in out and "lenet-digits" in out and "hard phase: hard_ep" in out
    data = json.loads((tmp_path / "pq_train_quick.json").read_text())
    (row,) = data["rows"]
    assert (row["model"], row["v"], row["K"], row["layers"]) == ("lenet-digits", 9, 16, "1/4")
    for key in ("float", "kmeans", "joint", "hard", "int"):
        assert 0 <= row[key] <= 100 and not math.isnan(row[key]), key
    assert row["drop"] == row["float"] - row["hard"]
    # the textbook binomial SE of a difference of two proportions on the same 100 images
    p1, p2 = row["float"] / 100, row["hard"] / 100
    assert row["drop_se"] == pytest.approx(100 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 100))
    assert pq_train.drop_se(90.0, 90.0, 10000) == pytest.approx(100 * math.sqrt(2 * 0.09 / 10000))
    b = data["budgets"]["lenet-digits"]
    assert (b["test_images"], b["golden_images"]) == (100, 50)
    assert (row["soft_epochs"], row["images_per_epoch"], row["hard_epochs"]) == (1, 128, 1)
    assert len(row["loss"]) == 1 and len(row["hard_loss"]) == 1


def test_device_cuda_without_a_gpu_is_refused_in_one_line(capsys, monkeypatch):
    """--device cuda where torch sees no CUDA device: argparse's exit 2 and a line naming the flag and the fix,
    before any model is loaded."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        pq_train.main(["--quick", "--device", "cuda"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--device cuda" in err and "use --device cpu" in err
