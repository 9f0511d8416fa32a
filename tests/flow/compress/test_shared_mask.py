"""Shared-mask MVQ (``mask_group=g``): one N:M pattern per group of g output channels and input position.

Checked against independent references: the pattern by brute force over all C(m, n) patterns of the
group's summed importance (numpy, float64), the mask bits by the hand formula
``(Cout/g) * kh*kw*Cin/m * ceil(log2 C(m, n))``, and g = 1 against the per-channel mask built without
the group argument (today's MVQ).
"""
from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from flow.compress import compress, compression_report, nm_mask, nm_prune_finetune
from flow.compress.__main__ import main as cli_main
from flow.compress.errors import CompressionError, NMConfigError
from flow.compress.mvq import MVQConv2d, MVQLinear, codebook_diagnostics, mask_bits
from flow.compress.nm import MaskGroupError, importance_scores, is_nm_sparse, is_shared_mask


def brute_force_patterns(imp: np.ndarray, n: int, m: int, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Best summed importance per (group, Cin block, kh, kw), by trying every C(m, n) pattern.

    ``imp [Cout, Cin, kh, kw]`` (a Linear as kh = kw = 1). Returns (best total ``[Cout/g, Cin/m, kh, kw]``,
    best pattern as a 0/1 array ``[Cout/g, Cin/m, kh, kw, m]``), the first best pattern in lexicographic order.
    """
    cout, cin, kh, kw = imp.shape
    best = np.full((cout // g, cin // m, kh, kw), -np.inf)
    pat = np.zeros((cout // g, cin // m, kh, kw, m))
    for gi in range(cout // g):
        for b in range(cin // m):
            for i in range(kh):
                for j in range(kw):
                    s = [sum(float(imp[c, b * m + p, i, j]) for c in range(gi * g, gi * g + g)) for p in range(m)]
                    for combo in itertools.combinations(range(m), n):
                        tot = sum(s[p] for p in combo)
                        if tot > best[gi, b, i, j]:
                            best[gi, b, i, j] = tot
                            pat[gi, b, i, j] = 0
                            pat[gi, b, i, j, list(combo)] = 1
    return best, pat


def chosen_total(mask: np.ndarray, imp: np.ndarray, m: int, g: int) -> np.ndarray:
    """The summed importance of the pattern ``mask`` keeps, per (group, Cin block, kh, kw)."""
    cout, cin, kh, kw = imp.shape
    kept = (mask * imp).reshape(cout // g, g, cin // m, m, kh, kw)
    return kept.astype(np.float64).sum(axis=(1, 3))


@pytest.mark.parametrize("g", [1, 4, 8])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8)])
def test_conv_mask_is_shared_nm_and_maximises_the_group_importance(g, n, m):
    torch.manual_seed(g * 10 + n + m)
    conv = nn.Conv2d(8, 16, 3)
    layer = MVQConv2d.from_conv(conv, n=n, m=m, k=8, d=8, iters=2, mask_group=g)
    mask = layer.mask.numpy()
    assert layer.mask_group == g and mask.shape == (16, 8, 3, 3)
    assert is_nm_sparse(layer.mask, n, m, dim=1)
    grouped = mask.reshape(16 // g, g, 8, 3, 3)
    assert (grouped == grouped[:, :1]).all()  # every channel of a group has the group's pattern
    imp = conv.weight.detach().abs().numpy().astype(np.float64)
    best, pat = brute_force_patterns(imp, n, m, g)
    assert np.allclose(chosen_total(mask, imp, m, g), best, rtol=0, atol=1e-9)
    # random weights: no ties, so the pattern itself is the brute-force one
    got = grouped[:, 0].reshape(16 // g, 8 // m, m, 3, 3).transpose(0, 1, 3, 4, 2)
    assert np.array_equal(got, pat)
    # the layer decodes with that mask (kept weights only)
    w = layer.decoded_weight().detach().numpy()
    assert np.all(w[mask == 0] == 0)


def test_linear_mask_shared_also_along_c_of_a_flattened_map():
    torch.manual_seed(3)
    lin = nn.Linear(4 * 2 * 2, 8)  # reads a flattened 4x2x2 map: vectors and groups along C
    layer = MVQLinear.from_linear(lin, n=2, m=4, k=4, d=4, iters=2, in_chw=(4, 2, 2), mask_group=4)
    assert layer.in_chw == (4, 2, 2) and is_shared_mask(layer.mask, 4)
    # in (h, w, c) order the N:M groups run along C; brute force there
    imp = lin.weight.detach().abs().numpy().astype(np.float64)
    hwc = imp.reshape(8, 4, 2, 2).transpose(0, 2, 3, 1).reshape(8, 16, 1, 1)
    mhwc = layer.mask.numpy().reshape(8, 4, 2, 2).transpose(0, 2, 3, 1).reshape(8, 16, 1, 1)
    best, _ = brute_force_patterns(hwc, 2, 4, 4)
    assert is_nm_sparse(torch.from_numpy(mhwc), 2, 4, dim=1)
    assert np.allclose(chosen_total(mhwc, hwc, 4, 4), best, rtol=0, atol=1e-9)


def test_g1_is_todays_mvq_bit_for_bit():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3))
    # integer-valued weights: many ties, which per-channel MVQ breaks to the lower index
    with torch.no_grad():
        net[2].weight.copy_(torch.randint(-3, 4, net[2].weight.shape).float())
    a = compress(net, "mvq", n=2, m=4, k=8, d=8, iters=3, mask_group=1)
    b = compress(net, "mvq", n=2, m=4, k=8, d=8, iters=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    # the mask is the per-channel N:M mask, each channel ranked on its own, ties to the lower index
    w = net[2].weight.detach().abs().numpy()
    ref = np.zeros_like(w)
    for co in range(16):
        for i in range(3):
            for j in range(3):
                for blk in range(2):
                    v = w[co, blk * 4:blk * 4 + 4, i, j]
                    keep = sorted(range(4), key=lambda p: (-v[p], p))[:2]
                    ref[co, [blk * 4 + p for p in keep], i, j] = 1
    assert np.array_equal(a[2].mask.numpy(), ref) and a[2].mask_group == 1
    assert torch.equal(nm_mask(net[2].weight, 2, 4, group=1), nm_mask(net[2].weight, 2, 4))


def test_mask_bits_against_the_hand_formula():
    torch.manual_seed(2)
    conv, lin = nn.Conv2d(16, 32, 3), nn.Linear(64, 16)
    for g in (1, 4, 8):
        c = MVQConv2d.from_conv(conv, n=2, m=4, k=8, d=8, iters=1, mask_group=g).quantize_codebook_(8)
        lay = MVQLinear.from_linear(lin, n=1, m=8, k=8, d=8, iters=1, mask_group=g).quantize_codebook_(8)
        conv_hand = (32 // g) * 3 * 3 * (16 // 4) * math.ceil(math.log2(math.comb(4, 2)))   # 3 bits per 2:4 group
        lin_hand = (16 // g) * (64 // 8) * math.ceil(math.log2(math.comb(8, 1)))             # 3 bits per 1:8 group
        rep = compression_report(nn.Sequential(c, lay))
        assert [r.bits["masks"] for r in rep.rows] == [conv_hand, lin_hand]
        assert codebook_diagnostics(c, conv.weight)["bits_mask"] == conv_hand
        assert mask_bits(32 * 16 * 9, 2, 4, g) == conv_hand
        # everything else is counted as for per-channel MVQ
        assert rep.rows[0].bits["indices"] == 32 * 3 * 3 * 2 * 3 and rep.rows[0].bits["codebook"] == 8 * 8 * 8
    assert (conv_hand, lin_hand) == (32 // 8 * 9 * 4 * 3, 2 * 8 * 3)


def test_taylor_shared_mask_maximises_the_summed_taylor_score():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))
    scores = importance_scores(copy.deepcopy(net), ["2"], "taylor", x, y, batch_size=64, max_images=32)
    masks = nm_prune_finetune(net, x, y, n=2, m=4, epochs=0, skip=("first", "last"), batch_size=64,
                              importance="taylor", calib_images=32, progress=False, mask_group=4)
    mask = masks["2"].numpy()
    imp = scores["2"].numpy().astype(np.float64)
    best, pat = brute_force_patterns(imp, 2, 4, 4)
    assert is_shared_mask(masks["2"], 4) and is_nm_sparse(masks["2"], 2, 4)
    assert np.allclose(chosen_total(mask, imp, 4, 4), best, rtol=0, atol=1e-9)
    assert np.array_equal(mask.reshape(2, 4, 2, 4, 3, 3)[:, 0].transpose(0, 1, 3, 4, 2), pat)
    assert torch.all(net[2].weight[masks["2"] == 0] == 0)
    # compress() on the pruned model finds the same shared mask (the pruned weights are the group's zeros)
    c = compress(net, "mvq", n=2, m=4, k=8, d=8, iters=2, mask_group=4, skip=("first", "last"))
    assert torch.equal(c[2].mask, masks["2"]) and c[2].mask_group == 4


def test_per_layer_override_and_bad_group_errors():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 10))
    with pytest.raises(MaskGroupError, match=r"layer '3': mask_group=4 does not divide the 10 output channels"):
        compress(net, "mvq", n=2, m=4, k=4, d=8, iters=1, skip=(), mask_group=4)
    c = compress(net, "mvq", n=2, m=4, k=4, d=8, iters=1, skip=(), mask_group=4, overrides={"3": dict(mask_group=2)})
    assert (c[0].mask_group, c[3].mask_group) == (4, 2) and is_shared_mask(c[3].mask, 2)
    for bad in (0, -4, 2.0, True):
        with pytest.raises(MaskGroupError, match="must be an integer >= 1"):
            compress(net, "mvq", n=2, m=4, k=4, d=8, mask_group=bad)
    assert issubclass(MaskGroupError, NMConfigError)
    with pytest.raises(MaskGroupError, match="does not divide the 16 output channels"):
        MVQConv2d.from_conv(net[0], 2, 4, 4, 8, mask_group=3)
    with pytest.raises(CompressionError, match="not shared by groups of mask_group=4"):
        MVQConv2d.from_conv(net[0], 2, 4, 4, 8, mask_group=4, mask=nm_mask(net[0].weight, 2, 4))
    # VQ has no mask: the group is ignored, the layer keeps g = 1
    assert compress(net, "vq", k=4, d=8, iters=1, skip=(), mask_group=8)[0].mask_group == 1


def test_cli_bad_group_exits_2_with_one_line(capsys):
    # checked on the untrained model before any training: milliseconds
    assert cli_main(["--model", "lenet-digits", "--method", "mvq", "--mask-group", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: layer ") and "mask_group=3 does not divide" in err[0]
    assert cli_main(["--model", "lenet-digits", "--method", "mvq", "--mask-group", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mask_group=0 is invalid" in err[0]
