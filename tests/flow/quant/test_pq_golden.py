"""PQ in the golden model: the integer encoder, conversion of PQ layers, the Program format (PQ op,
checksum) and the PQ lowering limits."""
from __future__ import annotations

import copy
import itertools
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from flow.compile import EngineConfig, LoweringError, Program, ProgramFormatError, lower
from flow.compile.program import HEADER_WORDS, PQ, Op, image_crc, proto_values
from flow.compress.pq import PQConv2d, PQLinear
from flow.quant import ops as K
from flow.quant.convert import quantize_model
from flow.quant.golden import predict, run
from flow.compile.program_exec import run_program
from quant_testlib import images, randomize_bn


# --------------------------------------------------------------------------- the integer encoder
def brute_force_nearest(a: np.ndarray, proto: np.ndarray) -> np.ndarray:
    """Independent reference: explicit loops, squared distance, first strict minimum wins."""
    N, Cs, v = a.shape
    out = np.zeros((N, Cs), np.int64)
    for n in range(N):
        for s in range(Cs):
            best, best_k = None, 0
            for k in range(proto.shape[1]):
                dist = 0
                for e in range(v):
                    diff = int(a[n, s, e]) - int(proto[s, k, e])
                    dist += diff * diff
                if best is None or dist < best:
                    best, best_k = dist, k
            out[n, s] = best_k
    return out


@pytest.mark.parametrize("v,Kp,unsigned", list(itertools.product([1, 3, 9], [2, 8, 64], [0, 1])))
def test_encoder_equals_brute_force_with_ties(v, Kp, unsigned):
    rng = np.random.default_rng(v * 1000 + Kp * 10 + unsigned)
    lo, hi = (0, 255) if unsigned else (-128, 127)
    Cs, N = 5, 40
    proto = rng.integers(lo, hi + 1, size=(Cs, Kp, v))
    a = rng.integers(lo, hi + 1, size=(N, Cs, v))
    # planted ties: duplicated prototypes, subvectors equal to a prototype that has a duplicate,
    # and subvectors exactly half-way between two prototypes 2*delta apart
    for s in range(Cs):
        k1, k2 = sorted(rng.choice(Kp, 2, replace=False))
        proto[s, k2] = proto[s, k1]
        a[s, s] = proto[s, k1]
        mid = np.clip(proto[s, k1], lo + 3, hi - 3)
        proto[s, k1], proto[s, k2] = mid - 3, mid + 3      # equidistant from mid (lower index must win)
        a[Cs + s, s] = mid
    want = brute_force_nearest(a, proto)
    assert np.array_equal(K.pq_encode(a, proto), want)
    # distances are the exact integers
    d = K.pq_distances(a, proto)
    assert d.dtype == np.int64 and np.array_equal(d, ((a[:, :, None, :] - proto[None]) ** 2).sum(-1))


def test_pq_conv_matches_explicit_loops():
    rng = np.random.default_rng(7)
    B, H, W, C, OC, KH, stride, pad, v, Kp = 2, 5, 4, 3, 6, 3, 2, 1, 9, 4
    x = rng.integers(-128, 128, size=(B, H, W, C))
    Cs = KH * KH * C // v
    proto = rng.integers(-128, 128, size=(Cs, Kp, v))
    proto[:, 1] = 0                                      # all-zero patches (padding) pick k=1 ...
    proto[:, 3] = 0                                      # ... not its duplicate k=3
    lut = rng.integers(-127, 128, size=(Cs, Kp, OC))
    bias = rng.integers(-500, 500, size=OC)
    got = K.pq_conv(x, proto, lut, bias, KH, KH, stride, pad)
    OH, OW = K.out_size(H, KH, stride, pad), K.out_size(W, KH, stride, pad)
    want = np.zeros((B, OH, OW, OC), np.int64)
    for b, oh, ow in itertools.product(range(B), range(OH), range(OW)):
        patch = []
        for kh, kw, c in itertools.product(range(KH), range(KH), range(C)):
            ih, iw = oh * stride - pad + kh, ow * stride - pad + kw
            patch.append(int(x[b, ih, iw, c]) if 0 <= ih < H and 0 <= iw < W else 0)
        idx = brute_force_nearest(np.array(patch).reshape(1, Cs, v), proto)[0]
        want[b, oh, ow] = bias + sum(lut[s, idx[s]] for s in range(Cs))
    assert np.array_equal(got, want)


# --------------------------------------------------------------------------- conversion
class PQNet(nn.Module):
    """conv-bn-relu, PQ conv (+BN+ReLU), maxpool, flatten, linear: [B,1,8,8] -> [B,10]."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.c2 = nn.Conv2d(8, 16, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 16, 10)

    def forward(self, x):
        y = self.pool(torch.relu(self.bn2(self.c2(self.c1(x)))))
        return self.fc(torch.flatten(y, 1))


def pq_net(v: int = 9, Kp: int = 16, lut_bits: int = 8, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = randomize_bn(PQNet(), seed=seed)
    x = images(320, (1, 8, 8), seed=seed)
    with torch.no_grad():
        xin = model.c1(x[:96])
    model.c2 = PQConv2d.from_conv(model.c2, v=v, K=Kp, calib_x=xin, iters=6, max_samples=2048)
    model.c2.quantize_lut_(lut_bits)
    return model.eval(), x


@pytest.mark.slow
@pytest.mark.parametrize("lut_bits", [8, 16])
def test_pq_conversion_close_to_torch(lut_bits):
    model, x = pq_net(lut_bits=lut_bits)
    g = quantize_model(model, x[:256])
    nd = next(n for n in g.nodes if n.kind == "pq")
    assert nd.src == "PQConv2d+BatchNorm2d+ReLU" and nd.lo == 0
    assert nd.proto.shape == (8, 16, 9) and nd.lut.shape == (8, 16, 16) and nd.lut_bits == lut_bits
    assert nd.proto.min() >= 0 and nd.proto.max() <= 255                  # the uint8 input grid
    assert np.abs(nd.lut).max() <= (1 << (lut_bits - 1)) - 1
    # the PQ layer's own output: golden vs torch eval mode, within quantization error
    outs = run(g, _quant_in(g, x[256:]), return_all=True)
    with torch.no_grad():
        want = torch.relu(model.bn2(model.c2(model.c1(x[256:])))).numpy().transpose(0, 2, 3, 1)
    s_y = g.tensors[nd.out].scale
    err = np.abs(outs[nd.name] * s_y - want) / s_y
    # a few subvectors sit near a Voronoi boundary and encode differently in the integer grid
    assert np.mean(err) < 1.0 and np.percentile(err, 95) <= 3.0, (np.mean(err), np.percentile(err, 95))
    # end to end: logits close, predictions agree
    logits = predict(g, x[256:])
    with torch.no_grad():
        ref = model(x[256:]).numpy()
    scale = np.abs(ref).max()
    assert np.abs(logits - ref).mean() < 0.05 * scale
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.85


def _quant_in(g, x):
    from flow.quant.golden import quantize_input
    return quantize_input(x, g.in_tensor.scale, g.in_tensor.unsigned)


def test_pq_linear_and_residual_conversion():
    """PQLinear after a 1x1 map; a PQ conv with a fused residual add; lowered program == graph."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.c2 = nn.Conv2d(8, 8, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = self.c1(x)
            y = torch.relu(self.c2(y) + y)
            return self.fc(torch.flatten(self.pool(y), 1))

    torch.manual_seed(3)
    model = Net().eval()
    x = images(64, (3, 6, 6), seed=3)
    with torch.no_grad():
        h = model.c1(x)
        p = torch.flatten(model.pool(torch.relu(model.c2(h) + h)), 1)
    model.c2 = PQConv2d.from_conv(model.c2, v=8, K=8, calib_x=h, iters=5).quantize_lut_(16)
    model.fc = PQLinear.from_linear(model.fc, v=4, K=4, calib_x=p, iters=5).quantize_lut_(8)
    g = quantize_model(model, x)
    kinds = {nd.name: nd.kind for nd in g.nodes}
    assert kinds["c2"] == "pq" and kinds["fc"] == "pq"
    assert g.nodes[[n.name for n in g.nodes].index("c2")].res is not None
    prog = lower(g, EngineConfig(pq=True))
    xi = _quant_in(g, x)
    assert np.array_equal(run_program(prog, xi), run(g, xi))
    again = Program.from_bytes(prog.to_bytes())
    assert np.array_equal(run_program(again, xi), run(g, xi))


# --------------------------------------------------------------------------- program format
def _pq_op(rng, in_unsigned=0, **kw) -> Op:
    lo, hi = (0, 255) if in_unsigned else (-128, 127)
    Cs, Kp, v, OC = 6, 4, 3, 5         # 3x3 kernel on C=2: D = 18 = 6 * 3
    return Op(PQ, 0, 1, H=4, W=4, C=2, OH=4, OW=4, OC=OC, KH=3, KW=3, pad=1, in_unsigned=in_unsigned,
              v=v, K=Kp, lut_bits=16, name="pq", arrays=dict(
                  proto=rng.integers(lo, hi + 1, size=(Cs, Kp, v)), lut=rng.integers(-30000, 30000, size=(Cs, Kp, OC)),
                  bias=rng.integers(-99, 99, size=OC), mult=np.full(OC, 1 << 20), shift=np.full(OC, 24)), **kw)


@pytest.mark.parametrize("in_unsigned", [0, 1])
def test_program_roundtrip_with_pq(in_unsigned):
    rng = np.random.default_rng(in_unsigned)
    op = _pq_op(rng, in_unsigned)
    values = proto_values(op)
    prog = Program(ops=[op], in_shape=(4, 4, 2))
    blob = prog.to_bytes()
    again = Program.from_bytes(blob)
    b = again.ops[0]
    assert (b.opcode, b.v, b.K, b.lut_bits) == (PQ, 3, 4, 16)
    assert np.array_equal(proto_values(b), values) and b.arrays["lut"].dtype == np.int16
    assert np.array_equal(b.arrays["lut"], op.arrays["lut"])
    assert again.to_bytes() == blob
    x = rng.integers(*((0, 256) if in_unsigned else (-128, 128)), size=(3, 4, 4, 2))
    assert np.array_equal(run_program(again, x), run_program(prog, x))
    with pytest.raises(ValueError, match="input format"):   # 200 is no int8 prototype
        Op(PQ, 0, 1, H=4, W=4, C=2, OH=4, OW=4, OC=5, KH=3, KW=3, pad=1, v=3, K=4, lut_bits=8,
           arrays=dict(proto=np.full((6, 4, 3), 200)))


def test_checksum_detects_corruption():
    rng = np.random.default_rng(5)
    blob = Program(ops=[_pq_op(rng)], in_shape=(4, 4, 2)).to_bytes()
    hdr = np.frombuffer(blob, "<u4", count=HEADER_WORDS)
    assert int(hdr[7]) == image_crc(blob) == zlib.crc32(blob[32:])        # every byte after word 7
    # a scale in the header, a descriptor, the arrays, the end
    for pos in (33, HEADER_WORDS * 4 + 5, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        with pytest.raises(ProgramFormatError, match="checksum mismatch: corrupted image"):
            Program.from_bytes(bytes(bad))
    bad = bytearray(blob)
    bad[28] ^= 1                                                          # the checksum word itself
    with pytest.raises(ProgramFormatError, match="checksum"):
        Program.from_bytes(bytes(bad))


# --------------------------------------------------------------------------- lowering limits
@pytest.fixture(scope="module")
def pq_graph():
    model, x = pq_net(v=9, Kp=16, lut_bits=8, seed=1)
    return quantize_model(model, x[:128]), x


@pytest.mark.parametrize("engine,match", [
    (EngineConfig(pq=False), r"layer 'c2'.*engine has no lookup unit \(engine\.pq = False\)"),
    (EngineConfig(pq=True, pq_v_max=8), r"layer 'c2'.*v = 9 > engine\.pq_v_max = 8"),
    (EngineConfig(pq=True, pq_k_max=8), r"layer 'c2'.*K = 16 > engine\.pq_k_max = 8"),
    (EngineConfig(pq=True, pq_subspaces_max=4), r"layer 'c2'.*subspaces KH\*KW\*C/v = 8 > engine\.pq_subspaces_max = 4"),
])
def test_pq_lowering_errors(pq_graph, engine, match):
    g, _ = pq_graph
    with pytest.raises(LoweringError, match=match):
        lower(g, engine)


def test_pq_lowering_overflow_and_streaming(pq_graph):
    g, x = pq_graph
    prog = lower(g, EngineConfig(pq=True))
    assert prog.meta["pq_streamed"] == []
    # a LUT larger than the on-chip memory is streamed, not rejected
    small = lower(g, EngineConfig(pq=True, lut_bytes=256))
    assert small.meta["pq_streamed"] == ["c2"]
    bad = copy.deepcopy(g)
    nd = next(n for n in bad.nodes if n.kind == "pq")
    nd.bias = nd.bias.copy()
    nd.bias[2] = (1 << 31) - 10
    with pytest.raises(LoweringError, match=r"layer 'c2'.*accumulator can reach \d+ \(channel 2: sum_s max_k \|lut\|"):
        lower(bad, EngineConfig(pq=True))
    nd.bias[2] = 0
    nd.lut = nd.lut.copy()
    nd.lut[0, 0, 0] = 300                                                # beyond lut_bits = 8
    with pytest.raises(LoweringError, match=r"layer 'c2'.*LUT values exceed lut_bits = 8"):
        lower(bad, EngineConfig(pq=True))
