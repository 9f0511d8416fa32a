"""Fine-tuning through the decoding: pruned weights stay exactly zero, codebooks move and are re-quantized."""
from __future__ import annotations

import torch
from torch import nn

from flow.compress import compress, finetune
from flow.compress.mvq import MVQConv2d, MVQLinear


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3),
    )


def test_finetune_keeps_pruned_weights_zero_and_trains_codebooks():
    torch.manual_seed(0)
    x = torch.randn(96, 1, 6, 6)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    model = compress(tiny_net(), "mvq", n=2, m=4, k=8, d=8, iters=5)
    layers = [mod for mod in model.modules() if isinstance(mod, (MVQConv2d, MVQLinear))]
    assert len(layers) == 2
    before = {id(layer): (layer.codebook.detach().clone(), layer.indices.clone(), layer.mask.clone())
              for layer in layers}
    first_conv = model[0].weight.detach().clone()
    loss0 = nn.functional.cross_entropy(model.eval()(x), y).item()
    out = finetune(model, x, y, epochs=4, lr=1e-2, batch_size=16)
    assert out is model and not model.training
    assert nn.functional.cross_entropy(model(x), y).item() < loss0
    assert not torch.equal(model[0].weight, first_conv)  # uncompressed layers train too
    for layer in layers:
        cb, idx, mask = before[id(layer)]
        assert not torch.equal(layer.codebook.detach(), cb)  # the codebook learned
        assert torch.equal(layer.indices, idx) and torch.equal(layer.mask, mask)  # structure is fixed
        w = layer.decoded_weight().detach()
        assert bool((w[mask == 0] == 0).all())  # exactly zero, not merely small
        # re-quantized: the codebook is exactly int8 codes times the (new) scale
        q, s = layer.int_codebook()
        assert torch.equal(layer.codebook.detach(), torch.from_numpy(q).float() * torch.tensor(s))
        assert s == float(layer.codebook_scale) and abs(int(q.min())) <= 127


def test_finetune_keeps_float_codebooks_float_and_zero_epochs_is_a_no_op():
    torch.manual_seed(1)
    x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 3, (32,))
    model = compress(tiny_net(), "mvq", k=8, iters=3, quantize_codebooks=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, x, y, epochs=0)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    finetune(model, x, y, epochs=1, lr=1e-2, batch_size=8)
    assert all(mod.codebook_scale is None for mod in model.modules() if isinstance(mod, MVQConv2d))


def test_nm_prune_finetune_keeps_nm_sparsity_and_retrains_survivors():
    import copy

    from flow.compress import nm_prune_finetune

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 4 * 4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = torch.randn(96, 1, 4, 4)
    y = torch.randint(0, 3, (96,))
    before = copy.deepcopy(net)
    masks = nm_prune_finetune(net, x, y, n=2, m=4, epochs=3, lr=1e-2)
    assert set(masks) == {"2", "5"}  # first and last layer are skipped, as compress() skips them
    for name, mask in masks.items():
        w = dict(net.named_modules())[name].weight.detach()
        w0 = dict(before.named_modules())[name].weight.detach()
        if name == "5":   # the Linear reads the flattened 8x4x4 map: its groups run along the 8 channels
            def hwc(t):
                return t.reshape(16, 8, 4, 4).permute(0, 2, 3, 1).reshape(16, 128)
            mask, w, w0 = hwc(mask), hwc(w), hwc(w0)
        # every group of 4 consecutive input channels keeps exactly 2 non-pruned positions
        groups = mask.transpose(0, 1).reshape(mask.shape[1] // 4, 4, -1)
        assert torch.all(groups.sum(1) == 2)
        assert torch.all(w[mask == 0] == 0)  # pruned stay exactly zero through training
        # the kept weights were the largest of their group before training, and training moved them
        kept = w0.abs().transpose(0, 1).reshape(w0.shape[1] // 4, 4, -1)
        top2 = kept.topk(2, dim=1).values[:, -1:, :]
        assert torch.all((kept >= top2) == (groups == 1))
        assert not torch.equal(w[mask == 1], w0[mask == 1])
    assert torch.equal(net[0].weight.detach() != 0, before[0].weight.detach() != 0)  # the first layer is dense
