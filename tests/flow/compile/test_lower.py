"""lower(): packing (run(graph) == run_program(lower(graph))), buffers, limits, the binary image."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quant"))
from quant_testlib import LeNetLike, SmallResNet, images, randomize_bn  # noqa: E402

from flow.compile import EngineConfig, LoweringError, Program, ProgramFormatError, lower  # noqa: E402
from flow.compile.program import CODEBOOK, CONV, DENSE, HEADER_WORDS, MAXPOOL, AVGPOOL  # noqa: E402
from flow.quant.convert import quantize_model  # noqa: E402
from flow.quant.golden import quantize_input, run, run_program  # noqa: E402
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
    assert np.array_equal(run(again, xi), want)
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
