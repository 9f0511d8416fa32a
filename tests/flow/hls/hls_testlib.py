"""Random Programs for the HLS engine tests, built directly from flow.compile.program.Op / Program
(random integer arrays within their dtype ranges; mult / shift chosen so outputs do not always saturate)."""
from __future__ import annotations

import numpy as np

from flow.compile.engine import EngineConfig
from flow.compile.program import AVGPOOL, CODEBOOK, CONV, DENSE, MAXPOOL, PQ, Op, Program
from flow.quant.ops import out_size
# the random conv ops and the small geometry are the package's (the RTL cases draw the same ones)
from flow.rtl.random_ops import SMALL_CFG, act_range, add_post_arrays, conv_op, nm_masks, requant_params  # noqa: F401


# the default engine: the PYNQ-Z2 build (EngineConfig(): the largest 2:4 array of 8-lane PEs that fits the
# xc7z020 at the HIGH end of the resource model, d_max 8, k_max 256) with the lookup unit added, the build
# flow.boards.sizing.size_engine makes for a model with PQ layers (it fits at the central estimate only)
DEFAULT_CFG = EngineConfig(pq=True)
# odd geometry: non-power-of-two array (5 rows, 12 lanes), 3:4 PEs, codewords that tile a word (d 4 or 12),
# 4 buffers, 3 groups per accumulator tile
ODD_CFG = EngineConfig(pq=True, rows=5, cols=12, lanes=12, n=3, m=4, k_max=32, d_max=12, act_buf_bytes=6144, num_bufs=4,
                       acc_groups=3, vmem_entries=4096, cb_rows=256, dmem_words=2048, ch_rows=64, dsp_rows=1,
                       max_channels=96, max_kernel=5, max_ops=8, param_bytes=1 << 20)
# a C-simulation build past the board's limits (codewords up to 16, 512 channels, large buffers): the
# semantics tests of shapes the PYNQ-Z2 build refuses run here, everything that fits runs on DEFAULT_CFG
WIDE_CFG = EngineConfig(pq=True, rows=8, dsp_rows=4, d_max=16, act_buf_bytes=131072, vmem_entries=65536, cb_rows=8192, dmem_words=16384,
                        ch_rows=1024, max_ops=64)


def rand_inputs(rng: np.random.Generator, program: Program, batch: int) -> np.ndarray:
    op = program.ops[0]
    lo, hi = act_range(op.in_unsigned)
    return rng.integers(lo, hi + 1, size=(batch, op.H, op.W, op.C)).astype(np.uint8 if op.in_unsigned else np.int8)


def pq_op(rng: np.random.Generator, *, H: int, W: int, C: int, OC: int, K: int = 3, stride: int = 1,
          pad: int = 1, v: int = 9, Kp: int = 16, lut_bits: int = 8, in_unsigned: int = 0,
          out_unsigned: int = 0, in_buf: int = 0, out_buf: int = 1, res_buf: int = -1, res_unsigned: int = 0,
          ties: bool = True, bias_scale: float = 2000.0, shift_range=(1, 31), name: str = "pq") -> Op:
    """A random PQ op (KH*KW*C must be a multiple of v). With ``ties``, distance ties are planted:
    duplicate prototypes (k1 < k2 identical: every subvector that picks them is a tie) and, for
    signed inputs, mirrored pairs +p / -p (an all-zero subvector, e.g. padding, is a tie)."""
    D = K * K * C
    assert D % v == 0, (D, v)
    Cs = D // v
    lo, hi = act_range(in_unsigned)
    # prototypes near the data: a few clusters, so the argmin is not trivially one prototype
    proto = rng.integers(lo, hi + 1, size=(Cs, Kp, v))
    if ties and Kp >= 2:
        for s in range(Cs):
            k1, k2 = sorted(rng.choice(Kp, size=2, replace=False))
            proto[s, k2] = proto[s, k1]
            if not in_unsigned and Kp >= 4 and rng.random() < 0.5:
                k3, k4 = sorted(rng.choice([k for k in range(Kp) if k not in (k1, k2)], size=2, replace=False))
                proto[s, k4] = -np.clip(proto[s, k3], -127, 127)
                proto[s, k3] = np.clip(proto[s, k3], -127, 127)
    qmax = (1 << (lut_bits - 1)) - 1
    lut = rng.integers(-qmax, qmax + 1, size=(Cs, Kp, OC))
    OH, OW = out_size(H, K, stride, pad), out_size(W, K, stride, pad)
    arrays: dict[str, np.ndarray] = dict(proto=proto, lut=lut)
    add_post_arrays(arrays, rng, np.full(OC, np.sqrt(Cs) * qmax * 0.6 + 1), res_buf >= 0, bias_scale, shift_range)
    olo, ohi = act_range(out_unsigned)
    return Op(PQ, in_buf, out_buf, H=H, W=W, C=C, OH=OH, OW=OW, OC=OC, KH=K, KW=K, stride=stride, pad=pad,
              res_buf=res_buf, in_unsigned=in_unsigned, res_unsigned=res_unsigned, out_unsigned=out_unsigned,
              lo=olo, hi=ohi, v=v, K=Kp, lut_bits=lut_bits, name=name, arrays=arrays)


def pq_program(rng: np.random.Generator, *, residual: bool = False, res_unsigned: int = 0, **kw) -> Program:
    """One PQ op (buffer 0 -> 1); with ``residual`` a dense conv first writes the residual into buffer 2."""
    if not residual:
        return program(pq_op(rng, **kw))
    geo = {k: kw[k] for k in ("H", "W", "C", "OC", "K", "stride", "pad") if k in kw}
    res = conv_op(rng, **geo, in_unsigned=kw.get("in_unsigned", 0), out_unsigned=res_unsigned,
                  in_buf=0, out_buf=2, shift_range=(8, 24), name="residual_src")
    main = pq_op(rng, **kw, in_buf=0, out_buf=1, res_buf=2, res_unsigned=res_unsigned)
    return program(res, main)


def pool_op(rng: np.random.Generator, kind: str, *, H: int, W: int, C: int, K: int, stride: int,
            in_unsigned: int = 0, out_unsigned: int | None = None, in_buf: int = 0, out_buf: int = 1,
            name: str = "pool") -> Op:
    OH, OW = out_size(H, K, stride, 0), out_size(W, K, stride, 0)
    if kind == "max":
        lo, hi = act_range(in_unsigned)
        return Op(MAXPOOL, in_buf, out_buf, H=H, W=W, C=C, OH=OH, OW=OW, OC=C, KH=K, KW=K, stride=stride,
                  in_unsigned=in_unsigned, out_unsigned=in_unsigned, lo=lo, hi=hi, name=name)
    out_unsigned = in_unsigned if out_unsigned is None else out_unsigned
    lo, hi = act_range(out_unsigned)
    acc_scale = np.full(C, K * K * (147.0 if in_unsigned else 74.0))
    mult, shift, _ = requant_params(rng, acc_scale, None, (1, 31))
    # an average: mult / 2^shift ~ 1 / (K*K) for some channels
    avg = rng.random(C) < 0.5
    shift = np.where(avg, 20, shift)
    mult = np.where(avg, np.round((1 << 20) / (K * K)), mult).astype(np.int64)
    return Op(AVGPOOL, in_buf, out_buf, H=H, W=W, C=C, OH=OH, OW=OW, OC=C, KH=K, KW=K, stride=stride,
              in_unsigned=in_unsigned, out_unsigned=out_unsigned, lo=lo, hi=hi, name=name,
              arrays=dict(mult=mult, shift=shift))


def program(*ops: Op) -> Program:
    first = ops[0]
    return Program(ops=list(ops), in_shape=(first.H, first.W, first.C))


def lenet_program(rng: np.random.Generator, *, wfmt: int = CODEBOOK, k: int = 64, d: int = 8) -> Program:
    """A small digits CNN on 8x8x1: conv3x3(1->8, dense) relu, maxpool2, conv3x3(8->16) relu, linear(16*2*2 -> 10)."""
    ops = [
        conv_op(rng, H=8, W=8, C=1, OC=8, K=3, pad=1, in_unsigned=1, out_unsigned=1, shift_range=(8, 24),
                in_buf=0, out_buf=1, name="conv1"),
        pool_op(rng, "max", H=8, W=8, C=8, K=2, stride=2, in_unsigned=1, in_buf=1, out_buf=0, name="pool1"),
        conv_op(rng, H=4, W=4, C=8, OC=16, K=3, pad=1, wfmt=wfmt, d=d, n=2, m=4, k=k, in_unsigned=1,
                out_unsigned=1, shift_range=(8, 24), in_buf=0, out_buf=1, name="conv2"),
        pool_op(rng, "max", H=4, W=4, C=16, K=2, stride=2, in_unsigned=1, in_buf=1, out_buf=0, name="pool2"),
        conv_op(rng, H=1, W=1, C=64, OC=10, K=1, pad=0, wfmt=wfmt, d=d, n=2, m=4, k=k, in_unsigned=1,
                out_unsigned=0, shift_range=(8, 24), in_buf=0, out_buf=1, name="fc"),
    ]
    return program(*ops)


def resnet20_program(rng: np.random.Generator, *, size: int = 32, in_ch: int = 3, wfmt: int = CODEBOOK,
                     n: int = 2, m: int = 4, d: int = 8, k: int = 256, classes: int = 10) -> Program:
    """ResNet20-shaped Program (CIFAR layout: 16/32/64 channels, 3 blocks per stage, 1x1 projection
    shortcuts at stage changes, global average pool, linear). Random parameters."""
    kw = dict(wfmt=wfmt, n=n, m=m, d=d, k=k, shift_range=(10, 24))
    ops = [conv_op(rng, H=size, W=size, C=in_ch, OC=16, K=3, pad=1, in_unsigned=0, out_unsigned=1,
                   shift_range=(10, 24), in_buf=0, out_buf=1, name="stem")]
    cur, hw, ch = 1, size, 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if (stage > 0 and block == 0) else 1
            ohw = out_size(hw, 3, stride, 1)
            free = [b for b in range(3) if b != cur]
            if stride != 1 or width != ch:
                sc, mid = free
                ops.append(conv_op(rng, H=hw, W=hw, C=ch, OC=width, K=1, stride=stride, pad=0, in_unsigned=1,
                                   out_unsigned=0, in_buf=cur, out_buf=sc, name=f"s{stage}b{block}sc", **kw))
                ops.append(conv_op(rng, H=hw, W=hw, C=ch, OC=width, K=3, stride=stride, pad=1, in_unsigned=1,
                                   out_unsigned=1, in_buf=cur, out_buf=mid, name=f"s{stage}b{block}c1", **kw))
                res, res_uns, out = sc, 0, cur
            else:
                mid, out = free
                ops.append(conv_op(rng, H=hw, W=hw, C=ch, OC=width, K=3, stride=1, pad=1, in_unsigned=1,
                                   out_unsigned=1, in_buf=cur, out_buf=mid, name=f"s{stage}b{block}c1", **kw))
                res, res_uns = cur, 1
            ops.append(conv_op(rng, H=ohw, W=ohw, C=width, OC=width, K=3, stride=1, pad=1, in_unsigned=1,
                               out_unsigned=1, in_buf=mid, out_buf=out, res_buf=res, res_unsigned=res_uns,
                               name=f"s{stage}b{block}c2", **kw))
            cur, hw, ch = out, ohw, width
    pool_out = (cur + 1) % 3
    ops.append(pool_op(rng, "avg", H=hw, W=hw, C=ch, K=hw, stride=1, in_unsigned=1, in_buf=cur, out_buf=pool_out,
                       name="gap"))
    ops.append(conv_op(rng, H=1, W=1, C=ch, OC=classes, K=1, pad=0, in_unsigned=1, out_unsigned=0,
                       shift_range=(10, 24), in_buf=pool_out, out_buf=cur, name="fc"))
    return program(*ops)


def macs(program: Program) -> int:
    """Dense multiply-accumulates of the conv ops."""
    return sum(op.OH * op.OW * op.OC * op.KH * op.KW * op.C for op in program.ops if op.opcode == CONV)


def conv_program(rng: np.random.Generator, *, residual: bool = False, res_unsigned: int = 0, **kw) -> Program:
    """One conv (in buffer 0 -> 1); with ``residual`` a dense conv of the same geometry first writes
    the residual tensor into buffer 2 (with signedness ``res_unsigned``)."""
    if not residual:
        return program(conv_op(rng, **kw))
    geo = {k: kw[k] for k in ("H", "W", "C", "OC", "K", "stride", "pad") if k in kw}
    res = conv_op(rng, **geo, in_unsigned=kw.get("in_unsigned", 0), out_unsigned=res_unsigned,
                  in_buf=0, out_buf=2, shift_range=(8, 24), name="residual_src")
    main = conv_op(rng, **kw, in_buf=0, out_buf=1, res_buf=2, res_unsigned=res_unsigned)
    return program(res, main)


def fits(engine, prog: Program) -> bool:
    """True when the host-side check accepts ``prog`` for ``engine`` (placement + validation)."""
    from flow.compile.layout import PlacementError
    from flow.compile.validate import ProgramError
    from flow.compile.validate import prepare

    try:
        prepare(prog, engine.config)
        return True
    except (ProgramError, PlacementError):
        return False


def check_exact_on(engine, wide_engine, prog: Program, x: np.ndarray) -> np.ndarray:
    """check_exact on the board build when ``prog`` fits it, else on the wide C-simulation build."""
    return check_exact(engine if fits(engine, prog) else wide_engine, prog, x)


def check_exact(engine, prog: Program, x: np.ndarray) -> np.ndarray:
    """C-sim (bridge) vs the golden model, bit-exact; returns the outputs."""
    from flow.compile.program_exec import run_program

    want = run_program(prog, x)
    got = engine.predict(prog, x)
    if not np.array_equal(got, want):
        bad = np.argwhere(got.astype(np.int64) != want)
        i = tuple(bad[0])
        raise AssertionError(
            f"C-sim differs from golden at {len(bad)} of {want.size} outputs; first {i}: "
            f"csim {int(got[i])} golden {int(want[i])}\nops: {[(op.name, op.opcode) for op in prog.ops]}")
    return got
