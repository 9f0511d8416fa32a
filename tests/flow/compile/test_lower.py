"""lower(): packing (run(graph) == run_program(lower(graph))), buffers, limits, the binary image."""
from __future__ import annotations

import dataclasses
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
from quant_testlib import LeNetLike, SmallResNet, images, randomize_bn  # noqa: E402

from flow.compile import EngineConfig, LoweringError, Program, ProgramFormatError, lower  # noqa: E402
from flow.compile.program import CODEBOOK, CONV, DENSE, HEADER_WORDS, MAXPOOL, AVGPOOL  # noqa: E402
from flow.quant.convert import quantize_model  # noqa: E402
from flow.quant.golden import quantize_input, run
from flow.compile.program_exec import run_program  # noqa: E402
from flow.quant.ops import mask_bits_to_keep  # noqa: E402


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    model = randomize_bn(LeNetLike(mvq=True))
    x = images(96, (1, 8, 8))
    return quantize_model(model, x[:64]), x


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(1)
    model = randomize_bn(SmallResNet(mvq=True), seed=2)
    x = images(48, (3, 16, 16))
    return quantize_model(model, x[:32]), x


def xint(g, x):
    return quantize_input(x, g.in_tensor.scale, g.in_tensor.unsigned)


@pytest.mark.parametrize("name", ["lenet", "resnet"])
def test_program_matches_graph_bit_exactly(name, request):
    g, x = request.getfixturevalue(name)
    prog = lower(g, EngineConfig())
    xi = xint(g, x)
    want = run(g, xi)
    assert np.array_equal(run_program(prog, xi), want)
    again = Program.from_bytes(prog.to_bytes())
    assert np.array_equal(run_program(again, xi), want)
    # every intermediate, too (what C-sim mismatches are located with)
    per_node = run(g, xi, return_all=True)
    per_op = run_program(prog, xi, return_all=True)
    for nd, y in zip(g.nodes, per_op):
        assert np.array_equal(per_node[nd.name], y), nd.name


@pytest.mark.slow
def test_zoo_resnet20_lowers_and_matches():
    from models import zoo

    torch.manual_seed(2)
    model = randomize_bn(zoo.get("resnet20", in_channels=3))
    x = images(8, (3, 32, 32))
    g = quantize_model(model, x)
    prog = lower(g, EngineConfig())   # default engine: 16 KB buffers, 3 of them
    assert prog.meta["num_bufs_used"] == 3 and len(prog.ops) == 23
    xi = xint(g, x)
    assert np.array_equal(run_program(prog, xi), run(g, xi))
    with pytest.raises(LoweringError, match="num_bufs = 2"):
        lower(g, EngineConfig(num_bufs=2))


def test_op_fields_and_packing(lenet):
    g, _ = lenet
    prog = lower(g, EngineConfig())
    kinds = [(op.opcode, op.wfmt) for op in prog.ops]
    assert kinds == [(CONV, DENSE), (MAXPOOL, DENSE), (CONV, CODEBOOK), (MAXPOOL, DENSE), (CONV, DENSE), (CONV, CODEBOOK)]
    # ping-pong between buffers 0 and 1; the input arrives in 0
    assert [(op.in_buf, op.out_buf, op.res_buf) for op in prog.ops] == [(0, 1, -1), (1, 0, -1)] * 3
    c0, mp, c1, _, fc1, fc2 = prog.ops
    assert (c0.H, c0.W, c0.C, c0.OC, c0.KH, c0.pad, c0.in_unsigned, c0.out_unsigned, c0.lo, c0.hi) == \
        (8, 8, 1, 8, 3, 1, 1, 1, 0, 255)
    assert (mp.KH, mp.stride, mp.in_unsigned, mp.out_unsigned, mp.arrays) == (2, 2, 1, 1, {})
    # linear after a 2x2x16 flatten: placed as the equivalent 2x2-kernel conv on the 2x2x16 map it
    # reads (a flat 1x1x64 view would not match the map's word layout in the engine's buffers)
    assert (fc1.H, fc1.W, fc1.C, fc1.KH, fc1.KW, fc1.OH, fc1.OC) == (2, 2, 16, 2, 2, 1, 32)
    assert fc1.arrays["weight"].shape == (32, 2, 2, 16)
    assert (fc2.lo, fc2.hi, fc2.out_unsigned) == (-128, 127, 0)
    # codebook packing: idx verbatim, mask bit e == element e of the vector, codebook int8
    nd = g.nodes[2]
    assert (c1.n, c1.m, c1.d, c1.k) == (2, 4, 8, 16)
    assert c1.arrays["idx"].dtype == np.uint16 and np.array_equal(c1.arrays["idx"], nd.idx)
    assert np.array_equal(mask_bits_to_keep(c1.arrays["mask"], 8), nd.keep)
    assert int(c1.arrays["mask"][0, 0, 0, 0]) == sum(1 << e for e in range(8) if nd.keep[0, 0, 0, 0, e])
    assert np.array_equal(c1.arrays["codebook"], nd.codebook)
    assert fc2.wfmt == CODEBOOK and (fc2.n, fc2.m) == (4, 4)  # VQ layer: n == m
    assert np.array_equal(c0.arrays["weight"], g.nodes[0].weight)
    for op in prog.ops:
        for key in ("bias", "mult", "shift", "res_mult"):
            if key in op.arrays:
                assert op.arrays[key].dtype == np.int32
    # metadata: names and scales per op
    assert [m["name"] for m in prog.meta["ops"]] == [nd.name for nd in g.nodes]
    assert prog.meta["ops"][2]["out_scale"] == g.tensors[g.nodes[2].out].scale
    assert prog.in_scale == g.in_tensor.scale and prog.out_scale == g.out_tensor.scale
    assert prog.in_shape == (8, 8, 1)


def test_residual_fields(resnet):
    g, _ = resnet
    prog = lower(g, EngineConfig())
    ops = {op.name: op for op in prog.ops}
    b1, b2, sc = ops["b1.conv2"], ops["b2.conv2"], ops["b2.shortcut.0"]
    assert b1.res_buf >= 0 and b1.res_unsigned == 1 and "res_mult" in b1.arrays
    assert b2.res_buf == sc.out_buf and b2.res_unsigned == 0
    assert b2.out_buf not in (b2.in_buf, b2.res_buf)
    assert ops["stem.0"].res_buf == -1 and "res_mult" not in ops["stem.0"].arrays
    pool = ops["pool"]
    assert pool.opcode == AVGPOOL and (pool.KH, pool.KW, pool.OH, pool.OC) == (8, 8, 1, 32)


def test_roundtrip_is_exact(resnet):
    g, _ = resnet
    prog = lower(g, EngineConfig())
    blob = prog.to_bytes()
    again = Program.from_bytes(blob, in_scale=prog.in_scale)
    assert again.to_bytes() == blob and again.config_hash() == prog.config_hash()
    assert again.in_scale == prog.in_scale
    for a, b in zip(prog.ops, again.ops):
        for f in ("opcode", "in_buf", "out_buf", "res_buf", "H", "W", "C", "OH", "OW", "OC", "KH", "KW",
                  "stride", "pad", "in_unsigned", "res_unsigned", "out_unsigned", "lo", "hi", "wfmt", "n", "m", "d", "k"):
            assert getattr(a, f) == getattr(b, f), f
        assert a.arrays.keys() == b.arrays.keys()
        for k in a.arrays:
            assert a.arrays[k].dtype == b.arrays[k].dtype
            assert np.array_equal(a.arrays[k].reshape(b.arrays[k].shape), b.arrays[k]), k


def test_corrupted_images_raise(lenet):
    g, _ = lenet
    blob = lower(g, EngineConfig()).to_bytes()
    bad = bytearray(blob)
    bad[0] ^= 1
    with pytest.raises(ProgramFormatError, match="magic"):
        Program.from_bytes(bytes(bad))
    bad = bytearray(blob)
    bad[4] = 99
    with pytest.raises(ProgramFormatError, match="version"):
        Program.from_bytes(bytes(bad))
    for cut in (0, 10, HEADER_WORDS * 4, len(blob) // 2, len(blob) - 4):
        with pytest.raises(ProgramFormatError):
            Program.from_bytes(blob[:cut])
    with pytest.raises(ProgramFormatError):
        Program.from_bytes(blob + b"\0\0\0\0")


def test_random_header_corruption_never_escapes_as_another_error(lenet):
    """Flipping any descriptor/header word either still parses or raises ProgramFormatError."""
    g, _ = lenet
    blob = lower(g, EngineConfig()).to_bytes()
    head = (HEADER_WORDS + 6 * 40) * 4
    rng = np.random.default_rng(0)
    for _ in range(400):
        bad = bytearray(blob)
        pos = int(rng.integers(0, head))
        bad[pos] = int(rng.integers(0, 256))
        try:
            Program.from_bytes(bytes(bad))
        except ProgramFormatError:
            pass


# ------------------------------------------------------------------ limits


@pytest.mark.parametrize("engine,match", [
    (EngineConfig(act_buf_bytes=256), r"layer 'features\.0'.*512 bytes, engine\.act_buf_bytes = 256"),
    (EngineConfig(k_max=8), r"layer 'features\.4'.*k = 16 > engine\.k_max = 8"),
    (EngineConfig(d_max=4), r"layer 'features\.4'.*d = 8 > engine\.d_max = 4"),
    (EngineConfig(max_channels=24), r"layer 'classifier\.1'.*output channels 32 > engine\.max_channels = 24"),
    (EngineConfig(max_kernel=2), r"layer 'features\.0'.*kernel 3x3 > engine\.max_kernel = 2"),
    (EngineConfig(max_ops=5), r"6 ops > engine\.max_ops = 5"),
    (EngineConfig(param_bytes=1024), r"parameter image is \d+ bytes > engine\.param_bytes = 1024"),
    (EngineConfig(acc_bits=16), r"layer 'features\.0'.*accumulator can reach \d+.*int16"),
    (EngineConfig(num_bufs=1), r"engine\.num_bufs = 1"),
    (EngineConfig(act_bits=4), r"8-bit"),
])
def test_lowering_errors(lenet, engine, match):
    g, _ = lenet
    with pytest.raises(LoweringError, match=match):
        lower(g, engine)


def test_int32_accumulator_overflow_is_detected(lenet):
    import copy

    g, _ = lenet
    g = copy.deepcopy(g)
    g.nodes[0].bias = g.nodes[0].bias.copy()
    g.nodes[0].bias[3] = (1 << 31) - 100
    with pytest.raises(LoweringError, match=r"layer 'features\.0'.*channel 3.*int32"):
        lower(g, EngineConfig())


@pytest.mark.parametrize("kernel,stride,pad", [((1, 1), 1, 0), ((3, 3), 2, 1), ((5, 5), 1, 2), ((1, 3), 1, 0),
                                               ((3, 3), 3, 0), ((2, 2), 2, 1)])
def test_conv_shapes_and_pools(kernel, stride, pad):
    """Odd shapes (non-square kernels, overlapping max windows, non-global average pool): float-close and bit-exact."""
    from torch import nn

    torch.manual_seed(5)
    model = randomize_bn(nn.Sequential(
        nn.Conv2d(3, 8, kernel, stride, pad), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, 2), nn.Conv2d(8, 8, 1), nn.AvgPool2d(2),
    ))
    x = images(32, (3, 17, 16))
    with torch.no_grad():
        ref = model(x).numpy()  # [B,C,OH,OW]: predict returns torch layout for spatial outputs
    g = quantize_model(model, x)
    if stride > EngineConfig().max_stride:   # the banked buffers serve strides up to max_stride at II=1
        with pytest.raises(LoweringError, match="max_stride"):
            lower(g, EngineConfig())
    prog = lower(g, EngineConfig(max_stride=max(2, stride)))   # the golden model has no such limit
    xi = xint(g, x)
    assert np.array_equal(run_program(prog, xi), run(g, xi))
    from flow.quant.golden import predict

    got = predict(g, x)  # [B,OC] when the output map is 1x1
    if ref.shape[2:] == (1, 1):
        ref = ref[:, :, 0, 0]
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 3 * g.out_tensor.scale


# ------------------------------------------------------------------ a residual that is the op's own input


@pytest.fixture(scope="module")
def self_res():
    """name -> (QGraph, integer inputs, float images) of three torch models with a self-residual layer."""
    from self_residual_lib import SelfResidual, SelfResidualNet, SharedSkip, quantized

    torch.manual_seed(7)
    return {"tiny": quantized(randomize_bn(SelfResidual(), seed=3), (8, 6, 6)),
            "net": quantized(randomize_bn(SelfResidualNet(), seed=4), (3, 8, 8)),
            "shared": quantized(randomize_bn(SharedSkip(), seed=5), (3, 8, 8))}


def test_self_residual_reads_a_copy_of_its_input(self_res):
    """y = relu(x + conv(x)) on the network input: a 1x1 max-pool copy of x into a third buffer, then the
    conv reading x and its residual from the copy; the validator and write_project accept it."""
    from flow.compile.validate import validate

    g, xi, _ = self_res["tiny"]
    assert [(nd.inp, nd.res) for nd in g.nodes] == [("input", "input")]   # the quantizer's graph
    prog = lower(g, EngineConfig())
    assert g.nodes[0].res == "input" and len(g.nodes) == 1                 # the caller's graph is untouched
    cp, conv = prog.ops
    assert (cp.opcode, cp.KH, cp.KW, cp.stride, cp.pad, cp.C, cp.OC, cp.res_buf) == (MAXPOOL, 1, 1, 1, 0, 8, 8, -1)
    assert cp.in_unsigned == cp.out_unsigned == conv.in_unsigned == conv.res_unsigned == 1
    assert (cp.in_buf, cp.out_buf) == (0, 1) and (conv.in_buf, conv.out_buf, conv.res_buf) == (0, 2, 1)
    assert prog.meta["residual_copies"] == [cp.name] and cp.name == "conv.res_copy"
    assert [m["name"] for m in prog.meta["ops"]] == [cp.name, "conv"]
    validate(prog, EngineConfig())
    assert np.array_equal(run_program(prog, xi), run(g, xi))     # golden on the graph, which has no copy
    assert len(np.unique(run(g, xi))) > 8


@pytest.mark.parametrize("name,copies,bufs", [("net", 2, 3), ("shared", 1, 3)])
def test_self_residuals_in_networks_are_exact(self_res, name, copies, bufs):
    """Inside a net with a downsampling block, and two skips from one tensor: bit-exact, 3 buffers."""
    from flow.compile.validate import validate

    g, xi, _ = self_res[name]
    prog = lower(g, EngineConfig())
    validate(prog, EngineConfig())
    assert len(prog.meta["residual_copies"]) == copies and len(prog.ops) == len(g.nodes) + copies
    assert prog.meta["num_bufs_used"] == bufs
    for op in prog.ops:
        assert op.res_buf < 0 or op.res_buf not in (op.in_buf, op.out_buf)
    assert np.array_equal(run_program(prog, xi), run(g, xi))
    # every model node's output equals the op that computes it (a copy op is between them)
    per_node, per_op = run(g, xi, return_all=True), run_program(prog, xi, return_all=True)
    by_name = {op.name: y for op, y in zip(prog.ops, per_op)}
    for nd in g.nodes:
        assert np.array_equal(per_node[nd.name], by_name[nd.name]), nd.name


def test_self_residual_that_cannot_be_lowered_is_refused_in_lower(self_res):
    """Two buffers cannot hold input, copy and output: lower() refuses it (not write_project later),
    and a max_ops limit counts the copies."""
    g, _, _ = self_res["tiny"]
    with pytest.raises(LoweringError,
                       match=r"num_bufs = 2.*its residual is its own input.*raise EngineConfig\.num_bufs"):
        lower(g, EngineConfig(num_bufs=2))
    g, _, _ = self_res["net"]
    with pytest.raises(LoweringError, match=r"10 ops \(8 layers and 2 copies.*max_ops = 9"):
        lower(g, EngineConfig(max_ops=9))
    assert len(lower(g, EngineConfig(max_ops=10)).ops) == 10


def test_engine_sizing_counts_the_copy(self_res):
    from flow.boards.sizing import model_needs

    g, _, _ = self_res["tiny"]
    need = model_needs(g, lanes=8, act_banks=16)
    assert need["num_bufs"] == 3 and need["max_ops"] == 2


def test_self_residual_copy_is_in_the_cycle_model(self_res):
    """The copy's pool loop costs OH*OW*ceil(C/lanes) + pool depth modelled cycles, and run_cycles counts it."""
    from flow.boards import cycle_model

    g, _, _ = self_res["net"]
    cfg = EngineConfig()
    prog = lower(g, cfg)
    copies = [op for op in prog.ops if op.name in prog.meta["residual_copies"]]
    assert len(copies) == 2
    by_name = {c.name: c.cycles for c in cycle_model.image_cycles(prog, cfg).ops}
    for op in copies:   # the pool loop walks one activation word per cycle (cycle_model.py's max-pool term)
        assert cycle_model.op_cycles(op, cfg).phases["window"] == op.H * op.W * -(-op.C // cfg.lanes) + cycle_model.DEPTH["pool"]
    # a Program without them (one the engine would refuse; the model adds per-op terms) costs that less
    without = dataclasses.replace(prog, ops=[op for op in prog.ops if op not in copies])
    assert cycle_model.run_cycles(prog, cfg, 1) - cycle_model.run_cycles(without, cfg, 1) == sum(by_name[op.name] for op in copies)


def test_write_project_accepts_what_lower_gives(self_res, tmp_path):
    """The symptom of the bug: write_project refused a lowered self-residual program."""
    from flow.hls.project import write_project

    g, xi, _ = self_res["tiny"]
    prog = lower(g, EngineConfig())
    write_project(EngineConfig(), tmp_path / "p", program=prog, inputs=xi, expected=run(g, xi))


SELF_CASES = [dict(H=6, W=5, C=8, K=3, wfmt="dense"),
              dict(H=5, W=7, C=16, K=3, wfmt="codebook", stem=True, layers=2, shared=True, signs=(True, False)),
              dict(H=4, W=4, C=8, K=5, wfmt="codebook", d=4, in_unsigned=False, signs=(False,)),
              dict(H=5, W=5, C=8, K=3, wfmt="dense", v=9, in_unsigned=False),
              dict(H=4, W=7, C=8, K=1, wfmt="dense", v=4, layers=2, shared=True, stem=True),
              dict(H=1, W=1, C=24, K=1, wfmt="codebook", layers=3, signs=(False, True))]


@pytest.mark.parametrize("case", SELF_CASES, ids=[str(i) for i in range(len(SELF_CASES))])
def test_random_self_residual_graphs_lower_exactly(case):
    """Random QGraphs of self-residual conv / codebook / PQ layers (first op or after a stem, chained,
    a second skip from the same tensor): the Program equals the golden run of the graph, and validates."""
    from self_residual_lib import graph_inputs, random_graph

    from flow.compile.validate import validate

    rng = np.random.default_rng(zlib.crc32(repr(sorted(case.items())).encode()))
    g = random_graph(rng, **case)
    prog = lower(g, EngineConfig(pq=True))
    validate(prog, EngineConfig(pq=True))
    assert len(prog.meta["residual_copies"]) == case.get("layers", 1)
    x = graph_inputs(rng, g, 3)
    want = run(g, x)
    assert np.array_equal(run_program(prog, x), want) and len(np.unique(want)) > 2
