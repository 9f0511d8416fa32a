"""Issue 12, bad input: every case of the issue run as written gives one line, exit 2, no traceback, nothing
written to --out, and -- for what can be checked before training -- no training (a fresh VQHLS_CACHE stays
without a checkpoint); NaN / inf are refused where they enter, with the tensor's name."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]


def _run(args, tmp_path, module="flow.build", env=None, out=True):
    """Run a CLI with a fresh checkpoint cache; returns (CompletedProcess, cache dir, --out dir)."""
    cache = tmp_path / "cache"
    outdir = tmp_path / "out"
    e = dict(os.environ, VQHLS_CACHE=str(cache), OMP_WAIT_POLICY="PASSIVE")
    e.update(env or {})
    cmd = [sys.executable, "-m", module, *args] + (["--out", str(outdir)] if out else [])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=e, timeout=600)
    return r, cache, outdir


def _one_line_error(r, *needles):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1, r.stderr
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _no_training(cache: Path, outdir: Path):
    ckpts = list((cache / "checkpoints").glob("*")) if (cache / "checkpoints").is_dir() else []
    assert ckpts == [], ckpts          # nothing was trained
    assert not outdir.exists()         # nothing written to --out


# ---------------------------------------------------------------------------
# flags not validated
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--limit", "0"], "--limit 0: must be at least 1"),
    (["--limit", "-5"], "--limit -5: must be at least 1"),
    (["--limit", "-360"], "--limit -360: must be at least 1"),
    (["--k", "0"], "--k 0: must be at least 1"),
    (["--d", "0"], "--d 0: must be at least 1"),
])
def test_flags_below_their_minimum(tmp_path, args, needle):
    r, cache, out = _run(args, tmp_path)
    _one_line_error(r, needle)
    _no_training(cache, out)


def test_every_bad_flag_is_reported_at_once(tmp_path):
    r, cache, out = _run(["--limit", "0", "--k", "0", "--json", str(tmp_path / "nope" / "x.json"),
                          "--method", "vecq", "--bits", "9"], tmp_path)
    _one_line_error(r, "4 problems", "(1) command line: --limit 0: must be at least 1",
                    "(2) command line: --k 0: must be at least 1", f"(3) --json {tmp_path / 'nope' / 'x.json'}",
                    "(4) --bits 9:")
    _no_training(cache, out)


@pytest.mark.parametrize("args, needle", [(["--epochs", "-1"], "--epochs -1: must be at least 1"),
                                          (["--epochs", "0"], "--epochs 0"),
                                          (["--limit", "-5"], "--limit -5")])
def test_models_train_refuses_nonpositive_epochs(tmp_path, args, needle):
    """models.train --epochs -1 used to train nothing and cache a 16.9 % checkpoint."""
    r, cache, out = _run(["--model", "lenet-digits", *args], tmp_path, module="models.train", out=False)
    _one_line_error(r, needle)
    _no_training(cache, out)


# ---------------------------------------------------------------------------
# failing late: engine / board limits, the compression plan and the toolchain, before any training
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, needles", [
    (["--k", "100000"], ["codebook size k > engine.k_max = 256", "features.4 (k = 576)",
                         "classifier.1 (k = 1024)", "use --k 256 or less"]),
    (["--method", "pq", "--K", "128"], ["K > engine.pq_k_max = 16", "features.4", "use --K 16"]),
    (["--method", "vecq", "--m", "3"], ["--m 3", "lanes=8 must be a multiple of m=3"]),
    (["--method", "pq", "--v", "7"], ["--method pq --v 7 compresses no layer", "features.4 144", "--v 8"]),
    (["--model", "resnet20", "--k", "100000"], ["engine.k_max = 256", "layers.8.conv2 (k = 4608)"]),
])
def test_engine_and_plan_limits_fail_before_training(tmp_path, args, needles):
    t0 = time.perf_counter()
    r, cache, out = _run(args, tmp_path)
    err = _one_line_error(r, *needles)
    assert "convert_to_pq" not in err and "anneal_pq" not in err
    _no_training(cache, out)
    assert time.perf_counter() - t0 < 120   # resnet20 would train for ~20 minutes on 2 cores


def test_every_broken_limit_is_reported_at_once(tmp_path):
    r, cache, out = _run(["--method", "pq", "--K", "128", "--v", "12"], tmp_path)
    _one_line_error(r, "2 problems", "(1) PQ subvector length v > engine.pq_v_max = 9",
                    "(2) PQ prototypes per subspace K > engine.pq_k_max = 16")
    _no_training(cache, out)


def test_missing_compiler_is_found_before_training(tmp_path):
    """No g++ on PATH: the csim stage's need is known before any work, with the Debian package to install."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {"PATH": str(bindir), "CXX": "g++"}   # an empty PATH: no g++
    r, cache, out = _run(["--stage", "csim"], tmp_path, env=env)
    _one_line_error(r, "C++ compiler", "apt-get install g++")
    _no_training(cache, out)
    # a build that stops before C-simulation needs no compiler
    r, cache, out = _run(["--stage", "train", "--train-epochs", "1"], tmp_path, env=env)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------
# tracebacks with the mismatch exit code
# ---------------------------------------------------------------------------
def test_bad_paths_exit_2_without_traceback(tmp_path):
    r, cache, out = _run(["--json", "/nonexistent/x.json"], tmp_path)
    _one_line_error(r, "--json /nonexistent/x.json")
    _no_training(cache, out)
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = subprocess.run([sys.executable, "-m", "flow.build", "--out", str(afile)], capture_output=True, text=True,
                       cwd=REPO, env=dict(os.environ, VQHLS_CACHE=str(tmp_path / "c2")))
    _one_line_error(r, "is a file")
    assert afile.read_text() == "x"
    r = subprocess.run([sys.executable, "-m", "flow.build", "--out", str(tmp_path / "o3")], capture_output=True,
                       text=True, cwd=REPO, env=dict(os.environ, VQHLS_CACHE=str(afile)))
    _one_line_error(r, "VQHLS_CACHE")
    assert not (tmp_path / "o3").exists() and afile.read_text() == "x"


# ---------------------------------------------------------------------------
# unclear errors: empty calibration set, Conv1d / LSTM
# ---------------------------------------------------------------------------
class _Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.c1 = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 64, 10)

    def forward(self, x):
        x = torch.flatten(self.conv(x), 2)          # [B, 8, 64]
        return self.fc(torch.flatten(self.c1(x), 1))


MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.rnn = nn.LSTM(8, 16, batch_first=True)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            y, _ = self.rnn(torch.flatten(self.conv(x), 2).permute(0, 2, 1))
            return self.fc(y[:, -1])

    def lstm():
        return Net()
''')


def _LSTMNet() -> nn.Module:
    """The model file's LSTM network, built in this process."""
    ns: dict = {}
    exec(compile(MODEL_FILE, "<model file>", "exec"), ns)
    return ns["lstm"]()


@pytest.mark.parametrize("net, kind, name", [(_Conv1dNet, "Conv1d", "'c1'"), (_LSTMNet, "LSTM", "'rnn'")])
def test_unsupported_module_is_named_first(net, kind, name):
    from flow.quant import quantize_model
    from flow.quant.convert import UnsupportedLayerError

    with pytest.raises(UnsupportedLayerError) as info:
        quantize_model(net(), torch.rand(4, 1, 8, 8))
    msg = str(info.value)
    assert msg.startswith(f"{name} ({kind}): layer type {kind} is not supported"), msg
    assert "flatten" not in msg.split(".")[0] and "permute" not in msg and "getitem" not in msg


def test_unsupported_module_in_a_model_file_fails_before_training(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(MODEL_FILE)
    r, cache, out = _run(["--model-file", f"{src}:lstm", "--data", "digits", "--train-epochs", "50"], tmp_path)
    _one_line_error(r, "'rnn' (LSTM): layer type LSTM is not supported")
    _no_training(cache, out)


def test_empty_calibration_set():
    from flow.quant import quantize_model
    from flow.quant.calibrate import activation_ranges
    from flow.quant.convert import QuantizationError, trace
    from models import zoo

    model = zoo.get("lenet-digits").eval()
    with pytest.raises(QuantizationError, match="calibration set is empty"):
        quantize_model(model, torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="calibration set is empty"):
        activation_ranges(trace(model), torch.zeros(0, 1, 8, 8), ["features_0"])


def test_a_failing_forward_is_one_line():
    from flow.quant import quantize_model
    from flow.quant.convert import UnsupportedLayerError

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(99, 10))
    with pytest.raises(UnsupportedLayerError) as info:
        quantize_model(model, torch.rand(2, 1, 8, 8))
    msg = str(info.value)
    assert "\n" not in msg and "'2' (Linear)" in msg and "mat1 and mat2" in msg


# ---------------------------------------------------------------------------
# NaN / inf, refused where they enter, with the tensor's name
# ---------------------------------------------------------------------------
def _lenet():
    from models import zoo

    torch.manual_seed(0)
    return zoo.get("lenet-digits").eval()


def test_nan_in_one_calibration_image():
    """It used to give in_scale = nan and 10 % accuracy with every stage passing."""
    from flow.finite import NonFiniteError
    from flow.quant import quantize_model

    x = torch.rand(16, 1, 8, 8)
    x[5, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"calibration images contains NaN \(1 of 1024 values\) \(item 5 of 16\)"):
        quantize_model(_lenet(), x)
    with pytest.raises(NonFiniteError, match="calibration images"):
        from flow.compress import compress

        compress(_lenet(), "pq", data=x)


def test_nan_in_an_uncompressed_conv_weight():
    """It used to give 16 % accuracy and 'bit-exact'."""
    from flow.finite import NonFiniteError
    from flow.quant import quantize_model

    model = _lenet()
    with torch.no_grad():
        model.features[0].weight[2, 0, 1, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"parameter 'features.0.weight' contains NaN"):
        quantize_model(model, torch.rand(8, 1, 8, 8))


def test_nan_in_bn_running_var():
    """It used to say 'bias does not fit int32'."""
    from flow.compress import compress
    from flow.finite import NonFiniteError
    from flow.quant import quantize_model

    model = _lenet()
    model.features[1].running_var[3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"buffer 'features.1.running_var' contains NaN"):
        quantize_model(model, torch.rand(8, 1, 8, 8))
    with pytest.raises(NonFiniteError, match=r"compress\(model\): buffer 'features.1.running_var'"):
        compress(model, "vq", k=16)
    model.features[1].running_var[3] = -1.0
    with pytest.raises(NonFiniteError, match="negative"):
        quantize_model(model, torch.rand(8, 1, 8, 8))


def test_inf_in_a_weight():
    """It used to say 'x contains NaN or inf ... clean the data' (the k-means input)."""
    from flow.compress import compress
    from flow.finite import NonFiniteError

    model = _lenet()
    with torch.no_grad():
        model.features[4].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"compress\(model\): parameter 'features.4.weight' contains inf"):
        compress(model, "mvq", k=16)


def test_nan_at_the_golden_and_csim_input():
    from flow.finite import NonFiniteError
    from flow.quant import quantize_input

    x = np.random.default_rng(0).random((3, 1, 8, 8))
    x[2, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"quantize_input: input images contains NaN .*item 2 of 3"):
        quantize_input(x, 1 / 255, True)


@pytest.mark.parametrize("where, value", [("features.0.weight", float("nan")),
                                          ("features.1.running_var", float("nan")),
                                          ("features.4.weight", float("inf"))])
def test_non_finite_checkpoint_is_refused_before_training(tmp_path, where, value):
    """flow.build --checkpoint with a NaN / inf: one line naming the tensor, nothing trained or written."""
    model = _lenet()
    state = model.state_dict()
    state[where].view(-1)[0] = value
    ckpt = tmp_path / "bad.pt"
    torch.save(state, ckpt)
    r, cache, out = _run(["--checkpoint", str(ckpt)], tmp_path)
    _one_line_error(r, str(ckpt), f"'{where}' contains {'inf' if value == float('inf') else 'NaN'}")
    _no_training(cache, out)


def test_an_overflowing_activation_is_named():
    """Finite weights and inputs whose float forward overflows to inf: the activation is named."""
    from flow.quant import quantize_model

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1e30)
        model[2].weight.fill_(1e30)
    with pytest.raises(ValueError, match="activation '.*' reaches inf"):
        quantize_model(model, torch.rand(4, 1, 8, 8))


# ---------------------------------------------------------------------------
# user mistakes named in one line (never "internal error"), ignored settings refused, paths checked first
# ---------------------------------------------------------------------------
USER_MODELS = textwrap.dedent('''
    from torch import nn

    def as_dict():
        return {"conv": nn.Conv2d(1, 8, 3)}

    def five():
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 5))

    def ten():
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 10))
''')


@pytest.fixture
def user_models(tmp_path):
    src = tmp_path / "user_models.py"
    src.write_text(USER_MODELS)
    return src


def test_a_factory_returning_a_dict_is_named(tmp_path, user_models):
    r, cache, out = _run(["--model-file", f"{user_models}:as_dict", "--data", "digits"], tmp_path)
    _one_line_error(r, "as_dict() returned a dict, not a torch.nn.Module")
    assert "internal error" not in r.stderr
    _no_training(cache, out)


def test_a_model_with_other_output_count_than_classes_leaves_no_folder(tmp_path, user_models):
    r, cache, out = _run(["--model-file", f"{user_models}:five", "--data", "digits", "--train-epochs", "1"],
                         tmp_path)
    _one_line_error(r, "has 5 outputs but the data set digits has 10 classes")
    _no_training(cache, out)   # no empty build folder either


def test_a_checkpoint_that_does_not_fit_lists_the_keys(tmp_path, user_models):
    ns: dict = {}
    exec(USER_MODELS, ns)
    state = ns["ten"]().state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["0.bias"]
    state["4.weight"] = torch.zeros(10, 4)
    torch.save(state, tmp_path / "c.pt")
    r, cache, out = _run(["--model-file", f"{user_models}:ten", "--data", "digits", "--method", "none",
                          "--checkpoint", str(tmp_path / "c.pt")], tmp_path)
    _one_line_error(r, "does not fit the model", "1 missing key(s): 0.bias", "1 unexpected key(s): extra.weight",
                    "4.weight (10, 4) vs the model's (10, 8)")
    _no_training(cache, out)


def test_method_none_with_compression_flags_is_refused(tmp_path):
    r, cache, out = _run(["--method", "none", "--k", "64", "--finetune-epochs", "2"], tmp_path)
    _one_line_error(r, "--method none compresses nothing", "--k", "--finetune-epochs")
    _no_training(cache, out)


def test_every_unknown_recipe_key_at_once(tmp_path):
    rec = tmp_path / "r.toml"
    rec.write_text('methd = "vq"\nkk = 4\nmodel = "lenet-digits"\n')
    r, cache, out = _run(["--recipe", str(rec)], tmp_path)
    _one_line_error(r, "unknown keys 'methd', 'kk'")
    _no_training(cache, out)


def test_a_layer_rule_matching_no_layer_is_an_error(tmp_path):
    rec = tmp_path / "r.toml"
    rec.write_text('method = "vq"\n[[layers]]\nmatch = "feature.*"\nmethod = "vq"\nk = 8\n')
    r, cache, out = _run(["--recipe", str(rec)], tmp_path)
    _one_line_error(r, "match = 'feature.*' matches no layer", "features.0", "classifier.3")
    _no_training(cache, out)


def test_output_paths_are_checked_before_any_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    r, cache, _ = _run(["--out", str(afile / "build"), "--json", str(tmp_path / "nodir" / "s.json")], tmp_path,
                       out=False)
    _one_line_error(r, "2 problems", "--json", "does not exist", f"--out {afile / 'build'}", "is a file")
    r, cache, _ = _run(["--json", str(tmp_path)], tmp_path)
    _one_line_error(r, f"--json {tmp_path}: is a directory")
    _no_training(cache, tmp_path / "out")


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_bad_npz_data_is_listed_one_problem_per_line_part(tmp_path):
    x = np.zeros((4, 1, 8, 8), np.uint8)
    y = np.arange(4)
    bad = _npz(tmp_path / "d.npz", x_train=x.transpose(0, 2, 3, 1), y_train=y.astype(np.float32),
               x_test=x[:3], y_test=y)
    r, cache, out = _run(["--data", str(bad)], tmp_path)
    _one_line_error(r, "looks like NHWC", "y_train has dtype float32", "x_test has 3 images but y_test 4 labels")
    _no_training(cache, out)
    r, cache, out = _run(["--data", str(_npz(tmp_path / "e.npz", x_train=x, y_train=y))], tmp_path)
    _one_line_error(r, "missing array(s) x_test, y_test")


# ---------------------------------------------------------------------------
# --help never runs work; every flag has help text
# ---------------------------------------------------------------------------
def _parsers():
    import argparse
    import importlib

    from flow.build.options import parser as build_parser
    from flow.compress.__main__ import _parser as compress_parser
    from flow.rtl.__main__ import parser as rtl_parser
    from models.train import parser as train_parser

    out = {"flow.build": build_parser(), "flow.compress": compress_parser(), "models.train": train_parser(),
           "flow.rtl": rtl_parser()}

    class _Got(Exception):
        pass

    def grab(self, *a, **k):   # the bench scripts build their parser inside main(): take it at parse time
        raise _Got(self)

    for name in ("area", "csim", "engine", "frontier", "kmeans", "pq_train", "pq_vecq", "pq_step", "rtl_engine",
                 "rtl_engine_area"):
        mod = importlib.import_module(f"bench.{name}")
        orig = argparse.ArgumentParser.parse_args
        argparse.ArgumentParser.parse_args = grab
        try:
            mod.main()
        except _Got as g:
            out[f"bench.{name}"] = g.args[0]
        finally:
            argparse.ArgumentParser.parse_args = orig
    return out


def test_every_flag_has_help_text():
    parsers = _parsers()
    assert len(parsers) == 14
    missing = [f"{name} {'/'.join(a.option_strings)}" for name, p in parsers.items() for a in p._actions
               if a.option_strings and not (a.help or "").strip()]
    assert missing == []


def test_flow_rtl_help_prints_and_runs_nothing(tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "flow.rtl", "--help"], capture_output=True, text=True, cwd=REPO,
                       timeout=60)
    assert r.returncode == 0 and "usage: python -m flow.rtl" in r.stdout
    assert "==" not in r.stdout and time.perf_counter() - t0 < 30   # no co-simulation started
