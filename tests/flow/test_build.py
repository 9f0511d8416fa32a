"""python -m flow.build: the main job (C-sim), the full build to a deploy bundle and a report,
a model defined outside the zoo, a recipe TOML, and the documented errors."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(*args, cwd=None):
    env = dict(os.environ, PATH="/usr/bin:/bin")   # no vitis_hls / vivado: the vendor stages must skip
    return subprocess.run([sys.executable, "-m", "flow.build", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env)


@pytest.mark.csim
@pytest.mark.slow
@pytest.mark.parametrize("method", ["mvq", "vq", "pq", "vecq"])
def test_main_job_is_bit_exact_on_digits(tmp_path, method):
    summary = tmp_path / "summary.json"
    r = _run("--stage", "csim", "--model", "lenet-digits", "--method", method, "--finetune-epochs", "2",
             "--out", str(tmp_path / "build"), "--json", str(summary))
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads(summary.read_text())
    assert s["images"] == 360 and s["bit_exact"] == 360
    assert "bit-exact: 360/360" in r.stdout
    # golden and C-sim agree exactly, so their accuracies must too; the integer model stays near float
    assert s["csim_acc"] == s["golden_acc"]
    assert s["golden_acc"] > s["float_acc"] - 0.05
    assert s["ratio"] > (1.0 if method == "pq" else 4)  # PQ trades multiplies for (large) tables, not size
    # the C-sim CYCLES register is the cycle model
    assert s["csim_cycles_per_image"] == s["modelled_cycles_per_image"]


@pytest.mark.csim
@pytest.mark.slow
def test_shared_masks_on_the_row_mux_engine_are_bit_exact(tmp_path):
    """--mask-group 8 --row-mux (issue 22): the engine is the row-mux build, the codebook convs are stored once
    per 8-channel tile (wfmt CODEBOOK_SHARED, mg 8), their masks are shared in the compressed model, and C-sim
    equals the golden model on every image it runs; the mask bits counted are the shared count (hand formula)."""
    import torch

    from flow.compile.program import CODEBOOK_SHARED, CONV, Program
    from flow.compress.mvq import mask_bits

    out, summary = tmp_path / "build", tmp_path / "summary.json"
    r = _run("--stage", "csim", "--model", "lenet-digits", "--method", "mvq", "--mask-group", "8", "--row-mux",
             "--finetune-epochs", "1", "--limit", "60", "--out", str(out), "--json", str(summary))
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads(summary.read_text())
    assert s["images"] == 60 and s["bit_exact"] == 60
    assert s["csim_cycles_per_image"] == s["modelled_cycles_per_image"]
    prog = Program.from_bytes((out / "program.bin").read_bytes())
    shared = [op for op in prog.ops if op.opcode == CONV and op.wfmt == CODEBOOK_SHARED]
    assert shared and all(op.mg == 8 for op in shared)
    assert json.loads((out / "program.json").read_text())["engine"]["row_mux"] is True
    model = torch.load(out / "compressed.pt", weights_only=False)
    layers = [m for m in model.modules() if getattr(m, "mask_group", 1) != 1]
    assert layers and all(m.mask_group == 8 for m in layers)
    rows = {row["name"]: row for row in json.loads((out / "compression.json").read_text())["layers"]}
    for name, m in model.named_modules():
        if getattr(m, "mask_group", 1) == 8:
            w = m.mask.numel()
            assert rows[name]["bits"]["masks"] == mask_bits(w, m.n, m.m, 8) == w // (m.m * 8) * 3   # 2:4: 3 bits


def test_mask_group_and_row_mux_refusals():
    """--mask-group needs mvq; --row-mux needs a sparse build: one line each, exit 2, nothing written."""
    r = _run("--method", "vq", "--mask-group", "8", "--stage", "compress")
    assert r.returncode == 2 and "--mask-group 8: only mvq" in r.stderr and "Traceback" not in r.stderr
    r = _run("--n", "4", "--m", "4", "--row-mux", "--stage", "compress")
    assert r.returncode == 2 and "--row-mux with --n 4 --m 4" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------
# the full build: vendor stages skipped, bundle and report written
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "lenet"
    r = _run("--board", "pynq-z2", "--out", str(out), "--finetune-epochs", "1", "--limit", "120",
             "--vectors", "5")
    return out, r


@pytest.mark.csim
@pytest.mark.slow
def test_full_build_makes_a_loadable_bundle_and_a_report(full_build):
    from flow import bundle
    from flow.compile.program import Program
    from flow.compile.program_exec import run_program

    out, r = full_build
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"deploy bundle: {out / 'deploy'}" in r.stdout and f"build report:  {out / 'report.md'}" in r.stdout
    assert "skipped: vitis_hls not found" in r.stdout + r.stderr
    assert "skipped: vivado not found" in r.stdout + r.stderr
    assert "bit-exact: 120/120" in r.stdout
    # every stage left its output in the build directory
    for name in ("model.pt", "compression.json", "compressed.pt", "golden.npz", "program.bin", "program.json",
                 "resources.json", "hls/project.json", "csim.json", "vivado/vivado.tcl", "report.md",
                 "report.html", "plots/cycles.png", "plots/resources.png", "plots/bits.png"):
        assert (out / name).is_file(), name
    b = bundle.load(out / "deploy")
    assert b.program_image() == (out / "program.bin").read_bytes()
    from flow.compile import EngineConfig

    assert b.engine_config() == EngineConfig().to_dict() and not b.has_bitstream   # the standard PYNQ-Z2 build
    # the bundle's vectors are the golden model's outputs on its inputs (independent check through the image)
    inputs, expected = b.vectors()
    assert len(inputs) == 5
    prog = Program.from_bytes(b.program_image())
    assert np.array_equal(run_program(prog, inputs), expected)
    report = (out / "report.md").read_text()
    for heading in ("## Accuracy", "## Compression", "## Resources", "## Cycles (modelled)", "## Vendor tools"):
        assert heading in report
    assert "bit-exact with the golden model on 120 of 120" in report
    assert "<table>" in (out / "report.html").read_text()


@pytest.mark.csim
@pytest.mark.slow
def test_a_corrupt_bundle_is_refused(full_build, tmp_path):
    import shutil

    from flow import bundle

    out, r = full_build
    assert r.returncode == 0
    copy = tmp_path / "deploy"
    shutil.copytree(out / "deploy", copy)
    data = bytearray((copy / "program.bin").read_bytes())
    data[100] ^= 0x01
    (copy / "program.bin").write_bytes(bytes(data))
    with pytest.raises(bundle.BundleError, match="program.bin"):
        bundle.load(copy)


# ---------------------------------------------------------------------------
# a model outside the zoo, a recipe
# ---------------------------------------------------------------------------
MODEL_FILE = textwrap.dedent('''
    from torch import nn

    def tiny():
        """8x8 digits: conv 1->8, relu, pool, conv 8->16, relu, global pool, linear 16->10."""
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
''')


@pytest.mark.csim
@pytest.mark.slow
def test_model_file_with_checkpoint(tmp_path):
    import torch

    src = tmp_path / "mymodel.py"
    src.write_text(MODEL_FILE)
    sys.path.insert(0, str(tmp_path))
    try:
        import mymodel
        torch.manual_seed(0)
        torch.save(mymodel.tiny().state_dict(), tmp_path / "tiny.pt")
    finally:
        sys.path.remove(str(tmp_path))
    r = _run("--model-file", f"{src}:tiny", "--checkpoint", str(tmp_path / "tiny.pt"), "--data", "digits",
             "--method", "vq", "--k", "16", "--finetune-epochs", "0", "--stage", "csim", "--limit", "40",
             "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bit-exact: 40/40" in r.stdout
    # the summary names the model file without the build machine's absolute path (tmp_path is outside the repo)
    assert "model mymodel.py:tiny on digits, method vq" in r.stdout and str(tmp_path) not in r.stdout


def _model_file(tmp_path, text: str, factory: str):
    """Write a --model-file and a checkpoint of its factory's seeded initial weights: (source, checkpoint)."""
    import torch

    src = tmp_path / f"user_{factory}.py"
    src.write_text(text)
    ns: dict = {}
    exec(compile(text, str(src), "exec"), ns)
    torch.manual_seed(0)
    ckpt = tmp_path / f"{factory}.pt"
    torch.save(ns[factory]().state_dict(), ckpt)
    return src, ckpt


def test_clipped_codebooks_are_named(tmp_path):
    """flow.build clips k to a layer's vector count (clip_k=True, unlike compress()'s default): it says where."""
    src, ckpt = _model_file(tmp_path, MODEL_FILE, "tiny")
    r = _run("--model-file", f"{src}:tiny", "--checkpoint", str(ckpt), "--data", "digits",
             "--method", "vq", "--k", "256", "--d", "8", "--finetune-epochs", "0", "--stage", "compress",
             "--out", str(tmp_path / "b"), "--json", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    vectors = 16 * 3 * 3 * 8 // 8   # the 8->16 3x3 conv: 16 x 3 x 3 x 8 weights in codewords of 8
    assert f"note: --k 256 is more than some layers have vectors" in r.stdout and f"4 (k = {vectors})" in r.stdout
    assert json.loads((tmp_path / "s.json").read_text())["k_clipped"] == [f"4 (k = {vectors})"]


WIDE_MODEL_FILE = textwrap.dedent('''
    import torch.nn as nn
    import torch.nn.functional as F

    class Wide(nn.Module):
        """A user's own class (it must pickle into compressed.pt), flattening with view(x.size(0), -1)."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 96, 3, padding=1)   # 28x28x96 = 75,264 activation bytes
            self.conv2 = nn.Conv2d(96, 16, 3, padding=1)
            self.fc = nn.Linear(16 * 7 * 7, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 4)
            return self.fc(x.view(x.size(0), -1))

    def net():
        return Wide()
''')


@pytest.mark.csim
def test_model_file_too_big_for_the_standard_engine_gets_a_sized_one(tmp_path):
    """flow.build sizes the engine for the model (flow.boards.sizing) and C-simulates that engine bit-exactly."""
    from flow.boards.sizing import config_for_board

    src, ckpt = _model_file(tmp_path, WIDE_MODEL_FILE, "net")
    need = 28 * 28 * 96
    assert need > config_for_board("pynq-z2").act_buf_bytes   # the premise: the standard build is too small
    summary = tmp_path / "s.json"
    r = _run("--model-file", f"{src}:net", "--checkpoint", str(ckpt), "--data", "fashion-mnist",
             "--method", "vq", "--k", "16", "--finetune-epochs", "0", "--stage", "csim", "--limit", "10",
             "--out", str(tmp_path / "b"), "--json", str(summary))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "engine sized for the model on pynq-z2" in r.stdout and "bit-exact: 10/10" in r.stdout
    s = json.loads(summary.read_text())
    assert s["engine_sized"]["act_buf_bytes"] >= need
    engine = json.loads((tmp_path / "b" / "program.json").read_text())["engine"]
    assert engine["act_buf_bytes"] == s["engine_sized"]["act_buf_bytes"]
    assert s["csim_cycles_per_image"] == s["modelled_cycles_per_image"]


@pytest.mark.csim
@pytest.mark.slow
def test_recipe_sets_flags_and_per_layer_methods(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(textwrap.dedent('''
        model = "lenet-digits"
        method = "mvq"
        k = 32
        finetune_epochs = 0
        limit = 30
        stage = "csim"

        [[layers]]
        match = "features.4"
        method = "vecq"
        bits = 3
    '''))
    out = tmp_path / "b"
    r = _run("--recipe", str(recipe), "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bit-exact: 30/30" in r.stdout
    layers = {row["name"]: row for row in json.loads((out / "compression.json").read_text())["layers"]}
    assert layers["features.4"]["method"] == "vecq"
    assert not (out / "report.md").exists()          # the recipe's stage = "csim" stopped the build there
    # a flag given on the command line wins over the recipe
    r = _run("--recipe", str(recipe), "--out", str(out), "--stage", "lower")
    assert r.returncode == 0 and "bit-exact" not in r.stdout


# ---------------------------------------------------------------------------
# documented errors: one line, exit 2, no traceback, nothing half-written
# ---------------------------------------------------------------------------
def _clean_error(r, *needles):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1, r.stderr
    for n in needles:
        assert n in err[0], err[0]


def test_bad_input_is_a_clean_error(tmp_path):
    _clean_error(_run("--model", "vgg", "--out", str(tmp_path / "a")), "unknown model 'vgg'")
    _clean_error(_run("--board", "zcu999", "--out", str(tmp_path / "b")), "unknown board 'zcu999'", "pynq-z2",
                 "zcu104")
    assert not (tmp_path / "b").exists()


def test_missing_checkpoint_and_bad_recipe(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(MODEL_FILE)
    _clean_error(_run("--model-file", f"{src}:tiny", "--checkpoint", str(tmp_path / "nope.pt"), "--data",
                      "digits", "--out", str(tmp_path / "b")), "checkpoint", "nope.pt", "not found")
    _clean_error(_run("--model-file", f"{src}:missing", "--data", "digits", "--out", str(tmp_path / "b")),
                 "has no callable 'missing'")
    bad = tmp_path / "bad.toml"
    bad.write_text('methd = "mvq"\n')
    _clean_error(_run("--recipe", str(bad), "--out", str(tmp_path / "c")), "unknown key 'methd'")
    bad.write_text('[[layers]]\nmethod = "pq"\n')
    _clean_error(_run("--recipe", str(bad), "--out", str(tmp_path / "c")), "needs match")


def test_a_config_that_does_not_fit_stops_before_hls(tmp_path):
    """The fit stage alone: an engine over the board's budget raises ResourceError naming every resource."""
    from flow.boards.resource_model import ResourceError
    from flow.build.options import BuildOptions
    from flow.build.stages import Build, stage_fit
    from flow.compile.engine import EngineConfig

    b = Build(opts=BuildOptions(out=str(tmp_path)), out=tmp_path)
    b.engine = EngineConfig(rows=16, dsp_rows=16)
    with pytest.raises(ResourceError) as info:
        stage_fit(b)
    assert all(k in str(info.value) for k in ("BRAM36", "DSP", "LUT"))
    assert not (tmp_path / "hls").exists() and not (tmp_path / "resources.json").exists()


@pytest.mark.csim
@pytest.mark.slow
def test_an_interrupted_bundle_leaves_no_half_bundle(full_build, tmp_path, monkeypatch):
    """The bundle stage fails halfway (a copy raises): no deploy/ and no temporary directory remain."""
    import shutil

    from flow import bundle as bundle_mod

    out, r = full_build
    assert r.returncode == 0
    target = tmp_path / "deploy"
    calls = {"n": 0}
    real_copy = shutil.copy2

    def failing_copy(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interrupt")
        return real_copy(*a, **k)

    monkeypatch.setattr(shutil, "copy2", failing_copy)
    src = bundle_mod.load(out / "deploy")
    inputs, expected = src.vectors()
    with pytest.raises(KeyboardInterrupt):
        bundle_mod.write_bundle(target, program_image=src.program_image(), engine_config=src.engine_config(),
                                config_hash=src.config_hash, model="lenet-digits", method="mvq", data="digits",
                                in_scale=src.in_scale, in_shape=src.in_shape, in_unsigned=src.in_unsigned,
                                out_shape=src.out_shape, out_scale=src.out_scale, out_unsigned=src.out_unsigned,
                                hls_dir=out / "hls", vectors=(inputs, expected),
                                golden_acc=None, bit_exact=None, tools={}, bitstream=None, extra=None)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_out_of_range_flags_are_refused_before_any_work(tmp_path):
    """--limit 0 / -5, --k 0, --train-epochs 0 used to run (all images, the default k, an untrained
    checkpoint): each is now one line naming the flag and its minimum, and nothing is written."""
    for args, needle in ((["--limit", "0"], "--limit 0: must be at least 1"),
                         (["--limit", "-5"], "--limit -5: must be at least 1"),
                         (["--k", "0"], "--k 0: must be at least 1"),
                         (["--train-epochs", "0"], "--train-epochs 0: must be at least 1"),
                         (["--vectors", "-1"], "--vectors -1: must be at least 0")):
        _clean_error(_run(*args, "--out", str(tmp_path / "b")), needle)
    assert not (tmp_path / "b").exists()
    recipe = tmp_path / "r.toml"
    recipe.write_text("limit = -3\n")
    _clean_error(_run("--recipe", str(recipe), "--out", str(tmp_path / "b")), "--limit -3: must be at least 1")


def test_bad_paths_are_one_line_errors(tmp_path):
    """--json into a missing directory and --out on a file: refused before any work, exit 2."""
    _clean_error(_run("--json", str(tmp_path / "nope" / "x.json"), "--out", str(tmp_path / "b")), "--json")
    f = tmp_path / "afile"
    f.write_text("x")
    _clean_error(_run("--out", str(f)), "is a file")


def test_compress_stage_recalibrates_batchnorm(tmp_path):
    """Issue 12: flow.build skipped the BatchNorm recalibration flow.compress does after compression
    (resnet20 printed 'compressed accuracy 13.00 %'); the stage now re-estimates the statistics."""
    import torch

    from flow.build.options import BuildOptions
    from flow.build.stages import BN_CALIB_IMAGES, Build, stage_compress
    from flow.compress import compress, recalibrate_bn_
    from models import data as datasets
    from models import zoo

    torch.manual_seed(0)
    model = zoo.get("lenet-digits").eval()
    xtr, ytr = datasets.load("digits", "train")
    xte, yte = datasets.load("digits", "test")
    b = Build(opts=BuildOptions(method="vq", k=16, out=str(tmp_path)), out=tmp_path)
    b.model, b.data = model, dict(xtr=xtr, ytr=ytr, xte=xte[:50], yte=yte[:50])
    b.write_json = lambda *a, **k: None
    stage_compress(b)
    expected = recalibrate_bn_(compress(model, b.opts.compress_spec(model), example=torch.from_numpy(xtr[:1])),
                               torch.from_numpy(xtr[:BN_CALIB_IMAGES]))
    got = b.cmodel.state_dict()
    bn = "features.1.running_mean"
    assert not torch.equal(got[bn], model.state_dict()[bn])          # re-estimated, not the float model's
    for key, val in expected.state_dict().items():
        assert torch.equal(got[key], val), key
    assert not b.cmodel.training


# ---------------------------------------------------------------------------
# a user's own data (.npz, any size), the lock on --out, reruns with other settings
# ---------------------------------------------------------------------------
MODEL3_FILE = MODEL_FILE.replace("def tiny():", "def tiny3():").replace("nn.Conv2d(1, 8", "nn.Conv2d(3, 8")


def _digits_npz(path: Path, size: int = 16, channels: int = 3) -> Path:
    """Digits upsampled to size x size (nearest), repeated over channels, as uint8 0..255 (NCHW)."""
    from models import data

    def up(x):
        return np.repeat(np.kron(x, np.ones((size // 8, size // 8), np.float32)), channels, axis=1)

    (xtr, ytr), (xte, yte) = data.load("digits", "train"), data.load("digits", "test")
    np.savez(path, x_train=(up(xtr) * 255).round().astype(np.uint8), y_train=ytr,
             x_test=(up(xte) * 255).round().astype(np.uint8), y_test=yte)
    return path


@pytest.mark.csim
@pytest.mark.slow
def test_own_npz_data_of_another_size_is_bit_exact_through_csim(tmp_path):
    npz = _digits_npz(tmp_path / "digits16.npz")
    src = tmp_path / "m3.py"
    src.write_text(MODEL3_FILE)
    r = _run("--model-file", f"{src}:tiny3", "--data", str(npz), "--train-epochs", "10", "--method", "vq",
             "--k", "16", "--finetune-epochs", "0", "--stage", "csim", "--limit", "40",
             "--out", str(tmp_path / "b"), "--json", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["images"] == 40 and s["bit_exact"] == 40
    assert s["data"] == "digits16.npz" and s["model"] == "m3.py:tiny3"   # no absolute path
    assert s["float_acc"] > 0.3   # learnt from the file's labels: chance is 0.1, P(>= 12 of 40 by chance) < 1e-3
    gold = np.load(tmp_path / "b" / "golden.npz")
    assert gold["inputs"].shape[0] == 40 and gold["inputs"][0].size == 3 * 16 * 16   # the file's images
    assert json.loads((tmp_path / "b" / "build.json").read_text())["options"]["data"] == str(npz)


def _cheap_build(tmp_path, out, *extra):
    """A --model-file build to the train stage (no training: its checkpoint)."""
    src, ckpt = _model_file(tmp_path, MODEL_FILE, "tiny")
    return _run("--model-file", f"{src}:tiny", "--checkpoint", str(ckpt), "--data", "digits", "--method", "vq",
                "--k", "16", "--stage", "train", "--out", str(out), *extra)


def test_a_second_build_on_the_same_out_is_refused_while_one_runs(tmp_path):
    import fcntl

    out = tmp_path / "b"
    out.mkdir()
    with open(out / ".lock", "a+") as held:   # stands in for a running build: the same flock it takes
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242")
        held.flush()
        r = _cheap_build(tmp_path, out)
        _clean_error(r, f"--out {out}", "another build is running", "pid 4242")
        assert not (out / "model.pt").exists()
    r = _cheap_build(tmp_path, out)   # released: it runs
    assert r.returncode == 0, r.stderr
    assert (out / "model.pt").is_file()


def test_a_rerun_with_other_settings_clears_only_the_old_builds_outputs(tmp_path):
    out = tmp_path / "b"
    assert _cheap_build(tmp_path, out).returncode == 0
    rec = json.loads((out / "build.json").read_text())["options"]
    assert rec["k"] == 16 and "stage" not in rec
    # what a later stage of that build would have left, and a file of the user's
    (out / "deploy").mkdir()
    (out / "deploy" / "manifest.json").write_text("{}")
    (out / "report.md").write_text("old")
    (out / "notes.txt").write_text("mine")
    r = _cheap_build(tmp_path, out)   # the same settings: the same outputs, nothing cleared
    assert r.returncode == 0 and (out / "deploy" / "manifest.json").exists() and "other settings" not in r.stderr
    r = _cheap_build(tmp_path, out, "--k", "8")       # --k given twice: the last wins (argparse)
    assert r.returncode == 0, r.stderr
    assert "holds a build with other settings (k" in r.stderr
    assert not (out / "deploy").exists() and not (out / "report.md").exists()
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.pt").is_file()
    assert json.loads((out / "build.json").read_text())["options"]["k"] == 8


def test_an_out_with_unrecorded_build_names_is_refused_and_nothing_deleted(tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "model.pt").write_text("the user's own checkpoint")
    (out / "hls").mkdir()
    r = _cheap_build(tmp_path, out)
    assert r.returncode == 2 and "holds model.pt, hls but no build.json" in r.stderr, r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [r.stderr.strip().splitlines()[-1]]
    assert (out / "model.pt").read_text() == "the user's own checkpoint" and (out / "hls").is_dir()
    assert not (out / "build.json").exists()


def test_the_golden_drop_warning_names_the_likely_cause():
    from flow.quant.accuracy import golden_drop_warning

    calib = np.random.default_rng(0).uniform(0, 1, (256, 1, 8, 8)).astype(np.float32)
    assert golden_drop_warning(0.95, 0.94, calib, calib) is None           # 1 point: within the margin
    w = golden_drop_warning(0.90, 0.60, calib, calib * 255, what="the fine-tuned float model (finetuned_acc)")
    assert "30.00 points below the fine-tuned float model (finetuned_acc)" in w   # test images in 0..255
    assert "test images span [0.0202, 255]" in w and "[7.94e-05, 1]" in w
    w = golden_drop_warning(0.90, 0.60, calib[:1], calib)
    assert "the calibration set has only 1 image" in w
    assert "span" not in golden_drop_warning(0.90, 0.60, calib, calib[:200])   # same range: not named


def test_an_interrupt_says_that_a_rerun_redoes_every_stage(monkeypatch, capsys):
    """The interrupt message promises nothing the build does not do: no stage is reused on a rerun."""
    import flow.build as fb

    def interrupted(opts):
        raise KeyboardInterrupt

    monkeypatch.setattr(fb, "run", interrupted)
    assert fb.main(["--board", "pynq-z2", "--stage", "compress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: interrupted: no half-written bundle; a rerun redoes every stage (finished stages are "
                   "not reused)")
