"""Build options: the command line and the recipe TOML, merged into one ``BuildOptions``.

Precedence: a flag given on the command line, then the recipe (``--recipe
recipe.toml``, read with ``tomllib``), then the defaults below. A recipe can
set every flag (its key is the flag's name with ``_`` for ``-``) and, in
``[[layers]]`` tables, per-layer compression settings::

    model = "resnet20"
    data = "fashion-mnist"
    method = "mvq"
    k = 256
    finetune_epochs = 2

    [[layers]]
    match = "layers.6.*"        # fnmatch pattern over Conv2d / Linear names
    method = "pq"
    v = 9
    K = 16
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import tempfile
try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10 (requires-python >= 3.10): the same parser, from PyPI
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flow.compress import recipe as compress_recipe   # not the BuildOptions.recipe field (a TOML path)
from flow.compress.spec import LAYER_KEYS
from flow.compress.spec import METHODS as COMPRESS_METHODS
from flow.compress.spec import CompressSpec
from flow.compress.vecq import SCHEMES as VECQ_SCHEMES
from flow.compress.vecq import BitWidthError, check_bits

STAGES = ("train", "compress", "finetune", "quantize", "lower", "fit", "hls", "csim", "vitis", "vivado",
          "bundle", "report")
METHODS = COMPRESS_METHODS + ("none",)
# the engine IP the block design takes: the HLS engine (Vitis HLS synthesizes and exports it) or the RTL engine
# (hls_templates/rtl, packaged by Vivado's IP packager: no Vitis HLS; flow/build/rtl_ip.py)
ENGINES = ("hls", "rtl")
# the compression settings' defaults, names and per-layer keys (a [[layers]] table's) are flow.compress.spec's
_SPEC = CompressSpec()

# per-model defaults: (k, d, finetune epochs, finetune images, calibration images)
MODEL_DEFAULTS = {
    "lenet-digits": dict(k=64, d=8, finetune_epochs=8, finetune_limit=None, calib=256),
    "cnn-fmnist": dict(k=128, d=8, finetune_epochs=1, finetune_limit=10000, calib=256),
    "resnet20": dict(k=256, d=8, finetune_epochs=1, finetune_limit=10000, calib=256),
}


class OptionsError(ValueError):
    """A flag or recipe value is invalid (the message names it and the fix)."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (the ``error: ...`` line flow.build prints), with the file an
    OSError names when its message does not."""
    msg = "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in msg:
        msg += f": {e.filename}"
    return msg


@dataclass
class BuildOptions:
    """Everything a build needs to know; see ``python -m flow.build --help``."""

    board: str = "pynq-z2"
    engine: str = "hls"                 # "rtl": the RTL engine as the Vivado IP, no Vitis HLS stages
    model: str = "lenet-digits"
    model_file: str | None = None       # path.py:factory (a model defined outside the zoo)
    checkpoint: str | None = None       # state_dict for --model-file (or to replace a zoo model's training)
    data: str | None = None
    method: str = _SPEC.method
    n: int = _SPEC.n
    m: int = _SPEC.m
    k: int | None = None                # None: the model's (MODEL_DEFAULTS)
    d: int | None = None
    v: int = _SPEC.v
    K: int = _SPEC.K
    bits: int = _SPEC.bits
    vecq_scheme: str = _SPEC.vecq_scheme
    mask_group: int = 1                 # mvq: output channels sharing one N:M pattern (1: per channel)
    row_mux: bool = False               # the engine's sparse array selects once per row (shared masks, issue 22)
    finetune_epochs: int | None = None
    train_epochs: int | None = None
    retrain: bool = False               # train the zoo model again, replacing its cached checkpoint
    limit: int | None = None            # test images for golden / C-sim (default: the whole test split)
    vectors: int = 8                    # test vectors in the bundle
    out: str | None = None
    stage: str = "report"
    json: str | None = None
    recipe: str | None = None
    layers: list[dict[str, Any]] = field(default_factory=list)   # from the recipe

    @property
    def name(self) -> str:
        base = Path(self.model_file.split(":")[0]).stem if self.model_file else self.model
        return f"{base}-{self.method}"

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"build/{self.name}")

    def defaults(self) -> dict:
        """The per-model defaults (k, d, fine-tuning budget, calibration images)."""
        return dict(MODEL_DEFAULTS.get(self.model, MODEL_DEFAULTS["cnn-fmnist"]))

    def overrides(self, model) -> dict[str, dict[str, Any]]:
        """Per-layer compress() overrides from the recipe's [[layers]] rules (first match wins)."""
        def rule(name, _mod):
            for entry in self.layers:
                if fnmatch.fnmatchcase(name, entry["match"]):
                    return {k: v for k, v in entry.items() if k != "match"}
            return None

        return compress_recipe(model, rule) if self.layers else {}

    def compress_spec(self, model) -> CompressSpec:
        """The :class:`~flow.compress.spec.CompressSpec` of this build for ``model`` (method not 'none'): the
        flags, the model's k and d where not given, ``clip_k`` on, the recipe's [[layers]] as overrides."""
        d = self.defaults()
        return CompressSpec(method=self.method, n=self.n, m=self.m, k=self.k or d["k"], d=self.d or d["d"],
                            clip_k=True, v=self.v, K=self.K, bits=self.bits, vecq_scheme=self.vecq_scheme,
                            mask_group=self.mask_group, overrides=self.overrides(model))


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m flow.build",
        description="From a model to a Vivado project, a deploy bundle and a build report. Stages, in "
                    "order: " + " -> ".join(STAGES) + ". Vendor stages (vitis, vivado) run where the tools "
                    "are on PATH and otherwise print the command to run elsewhere.",
        argument_default=argparse.SUPPRESS)   # unset flags stay unset: the recipe, then the defaults, fill them
    a = ap.add_argument
    a("--board", help="target board: pynq-z2 (default) or zcu104")
    a("--engine", choices=ENGINES,
      help="the engine IP in the block design: hls (default: Vitis HLS synthesizes and exports the C++ engine) or "
           "rtl (the RTL engine of hls_templates/rtl, packaged as an IP by Vivado: no Vitis HLS; a model it does "
           "not run yet, e.g. weights streamed from DDR at run time, is refused)")
    a("--model", help="a zoo model: lenet-digits (default), cnn-fmnist, resnet20")
    a("--model-file", help="a model outside the zoo: path/to/file.py:factory (factory() returns an nn.Module); "
                           "needs --data, and --checkpoint or training (--train-epochs)")
    a("--checkpoint", help="a state_dict (.pt) for --model-file, or to use instead of training a zoo model")
    a("--data", help="dataset: digits, fashion-mnist, cifar10 (default: the model's; resnet20 uses fashion-mnist), "
                     "or a .npz with x_train, y_train, x_test, y_test (NCHW images, uint8 or float; any size)")
    a("--method", choices=METHODS, help=f"compression: {', '.join(METHODS)} (default {_SPEC.method})")
    a("--recipe", help="a TOML file setting any of these flags, and per-layer rules in [[layers]]")
    a("--n", type=int, help=f"mvq: kept weights per group (default {_SPEC.n})")
    a("--m", type=int, help=f"mvq: group size (default {_SPEC.m})")
    a("--k", type=int, help="mvq/vq: codebook size (default: per model)")
    a("--d", type=int, help="mvq/vq: codeword length (default: per model)")
    a("--v", type=int, help=f"pq: subvector length (default {_SPEC.v})")
    a("--K", type=int, help=f"pq: prototypes per subspace (default {_SPEC.K})")
    a("--bits", type=int,
      help=f"vecq: weight bits, 1..7 with the paper scheme, 2..8 with sweep (default {_SPEC.bits})")
    a("--vecq-scheme", choices=VECQ_SCHEMES,
      help="vecq: paper (default: half-integer levels, lambda*std step, least-squares scale, every layer "
           "quantized) or sweep (symmetric levels, exact vector-loss step, first/last layers dense)")
    a("--mask-group", type=int,
      help="mvq: g consecutive output channels share one N:M pattern per input position (default 1: per channel; "
           "8 = the PYNQ-Z2 array's column tile, the grouping --row-mux runs at full speed); every layer's Cout "
           "must be a multiple (a recipe's [[layers]] can set another g per layer)")
    a("--row-mux", action="store_true",
      help="build the sparse array with the N:M selection once per array row, broadcast to the columns (smaller "
           "than a mux per PE; layers whose masks are shared by the column tile run at full speed, others on the "
           "union of their tile's masks, in more passes)")
    a("--finetune-epochs", type=int, help="fine-tuning epochs after compression (default: per model)")
    a("--train-epochs", type=int, help="training epochs when no checkpoint is cached (default: per model)")
    a("--retrain", action="store_true",
      help="train the zoo model again, replacing its cached checkpoint (e.g. a corrupt one)")
    a("--limit", type=int, help="use the first N test images for golden / C-simulation")
    a("--vectors", type=int, help="test vectors stored in the bundle (default 8)")
    a("--out", help="build directory (default build/<model>-<method>); one build at a time (locked), and a "
                    "rerun with other settings clears the earlier build's outputs there")
    a("--stage", choices=STAGES, help="run the stages up to this one (default: report, i.e. all)")
    a("--json", help="also write the build summary as JSON here")
    return ap


_INT_KEYS = {"n", "m", "k", "d", "v", "K", "bits", "iters", "seed", "lut_bits", "finetune_epochs", "train_epochs",
             "limit", "vectors", "mask_group"}
_STR_KEYS = {"board", "engine", "model", "model_file", "checkpoint", "data", "method", "out", "stage", "json",
             "vecq_scheme"}


# the smallest value each integer option takes (a 0 or negative --limit / --k must not mean "all" / default)
_INT_MIN = {"n": 1, "m": 1, "k": 1, "d": 1, "v": 1, "K": 1, "bits": 1, "limit": 1, "vectors": 0,
            "finetune_epochs": 0, "train_epochs": 1, "mask_group": 1}


def _check_value(key: str, value: Any, where: str) -> Any:
    if key in _INT_KEYS and not (isinstance(value, int) and not isinstance(value, bool)):
        raise OptionsError(f"{where}: {key} = {value!r} must be an integer")
    if key in _INT_MIN and value < _INT_MIN[key]:
        flag = "--" + key.replace("_", "-")
        raise OptionsError(f"{where}: {flag} {value}: must be at least {_INT_MIN[key]}")
    if key in _STR_KEYS and not isinstance(value, str):
        raise OptionsError(f"{where}: {key} = {value!r} must be a string")
    if key == "method" and value not in METHODS:
        raise OptionsError(f"{where}: method {value!r}: choose one of {', '.join(METHODS)}")
    if key == "engine" and value not in ENGINES:
        raise OptionsError(f"{where}: engine {value!r}: choose one of {', '.join(ENGINES)}")
    if key == "vecq_scheme" and value not in VECQ_SCHEMES:
        raise OptionsError(f"{where}: vecq_scheme {value!r}: choose one of {', '.join(VECQ_SCHEMES)}")
    if key in ("retrain", "row_mux") and not isinstance(value, bool):
        raise OptionsError(f"{where}: {key} = {value!r} must be true or false")
    if key == "stage" and value not in STAGES:
        raise OptionsError(f"{where}: stage {value!r}: choose one of {', '.join(STAGES)}")
    return value


def read_recipe(path: str) -> dict[str, Any]:
    """The recipe's settings, checked; raises OptionsError naming the file and the key."""
    p = Path(path)
    if not p.is_file():
        raise OptionsError(f"recipe {path} not found: give the path of a TOML file")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise OptionsError(f"recipe {path}: not valid TOML ({e})") from None
    fields = {f.name for f in dataclasses.fields(BuildOptions)} - {"layers", "recipe"}
    unknown = [k for k in raw if k != "layers" and k.replace("-", "_") not in fields]
    if unknown:   # every one at once, not the first
        raise OptionsError(f"recipe {path}: unknown key{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(map(repr, unknown))}: use a flag name of python -m flow.build --help, "
                           "or [[layers]]")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "layers":
            if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
                raise OptionsError(f"recipe {path}: layers must be an array of tables ([[layers]])")
            for i, entry in enumerate(value):
                where = f"recipe {path}: [[layers]] #{i + 1}"
                if not isinstance(entry.get("match"), str):
                    raise OptionsError(f"{where}: needs match = \"<layer name pattern>\"")
                bad = set(entry) - set(LAYER_KEYS) - {"match"}
                if bad:
                    raise OptionsError(f"{where}: unknown key(s) {', '.join(sorted(bad))}: "
                                       f"use {', '.join(LAYER_KEYS)}")
                for k, v in entry.items():
                    if k != "match":
                        _check_value(k, v, where)
            out["layers"] = value
            continue
        key_ = key.replace("-", "_")
        if key_ not in fields:
            raise OptionsError(f"recipe {path}: unknown key {key!r}: use a flag name of python -m flow.build "
                               "--help, or [[layers]]")
        out[key_] = _check_value(key_, value, f"recipe {path}")
    return out


def parse(argv: list[str] | None = None) -> BuildOptions:
    """Command line (+ recipe) -> BuildOptions. argparse exits 2 on a malformed command line.

    Every bad value is reported at once: one OptionsError, its problems numbered."""
    given = vars(parser().parse_args(argv))
    merged: dict[str, Any] = {}
    if "recipe" in given:
        merged.update(read_recipe(given["recipe"]))
    problems: list[str] = []

    for key, value in given.items():
        try:
            _check_value(key, value, where="command line")
        except OptionsError as e:
            problems.append(str(e))
    merged.update(given)
    opts = BuildOptions(**merged)
    if opts.json:
        why = _unwritable_file(Path(opts.json))
        if why:
            problems.append(f"--json {opts.json}: {why}")
    why = _unwritable_dir(opts.out_dir)
    if why:
        problems.append(f"--out {opts.out_dir}: {why}")
    if opts.method == "none":
        # settings a build without compression would silently ignore (n and m still shape the engine)
        ignored = [f"--{k.replace('_', '-')}" for k in _COMPRESSION_ONLY if k in merged]
        if opts.layers:
            ignored.append("the recipe's [[layers]]")
        if ignored:
            problems.append(f"--method none compresses nothing, so {', '.join(ignored)} would be ignored: "
                            "drop them or choose a compression method")
    if opts.mask_group != 1 and opts.method != "mvq" and "mask_group" in merged:
        problems.append(f"--mask-group {opts.mask_group}: only mvq has N:M masks to share (--method {opts.method})")
    if opts.row_mux and opts.n == opts.m:
        problems.append(f"--row-mux with --n {opts.n} --m {opts.m}: a dense build has no N:M selection to move; "
                        "keep n < m or drop --row-mux")
    if opts.model_file and ":" not in opts.model_file:
        problems.append(f"--model-file {opts.model_file}: give path/to/file.py:factory")
    if opts.method == "vecq" and not any(p.startswith("command line: --bits") for p in problems):
        try:
            check_bits(opts.bits, opts.vecq_scheme)
        except BitWidthError as e:
            problems.append(f"--bits {opts.bits}: {e}")
    if problems:
        raise _all(problems)
    return opts


# settings that only a compression method uses (with --method none they would be ignored)
_COMPRESSION_ONLY = ("k", "d", "v", "K", "bits", "vecq_scheme", "finetune_epochs")


def _probe_write(d: Path) -> str | None:
    """Why no file can be created in the existing directory ``d`` (tried, not guessed: root ignores modes)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=d)
    except OSError as e:
        return f"cannot write into {d} ({e.strerror or type(e).__name__})"
    os.close(fd)
    os.unlink(name)
    return None


def _existing_parent(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _unwritable_dir(p: Path) -> str | None:
    """Why the build directory ``p`` cannot be used (checked before any work), or None."""
    if p.exists() and not p.is_dir():
        return "is a file: give a directory for the build"
    base = _existing_parent(p)
    if not base.is_dir():
        return f"{base} is a file, so the directory cannot be created there"
    return _probe_write(base)


def _unwritable_file(p: Path) -> str | None:
    """Why the file ``p`` cannot be written (checked before the build, not after it), or None."""
    if p.is_dir():
        return "is a directory: give a file name"
    if not p.absolute().parent.is_dir():
        return f"directory {p.absolute().parent} does not exist"
    if p.exists() and not os.access(p, os.W_OK):
        return "is not writable"
    return _probe_write(p.absolute().parent)


def _all(problems: list[str]) -> OptionsError:
    """One OptionsError for every problem (numbered when there are several)."""
    if len(problems) == 1:
        return OptionsError(problems[0])
    return OptionsError(f"{len(problems)} problems: " + "; ".join(f"({i + 1}) {p}" for i, p in enumerate(problems)))
