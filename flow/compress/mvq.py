"""MVQ layers: N:M-masked, vector-quantized Conv2d and Linear.

A weight ``[Cout, Cin, kh, kw]`` is cut into vectors of ``d`` consecutive input
channels (for each ``cout, kh, kw``: channels ``g*d .. g*d+d-1`` form vector
``g``); a Linear ``[Cout, Cin]`` is cut along its input dimension.  Each vector
keeps ``n`` of every ``m`` weights (magnitude N:M mask, ``d % m == 0`` so a group
never straddles two vectors) and stores one index into a per-layer codebook
``[k, d]``; the decoded weight is ``mask * codebook[indices]``.  With
``n == m`` the mask is all ones: plain VQ (see :mod:`flow.compress.vq`).

Layout contract read by flow/quant and flow/compile (do not rename):
``codebook [k, d]`` float32 Parameter, ``indices`` int64 buffer
``[Cout, kh, kw, Cin//d]`` (Linear ``[Cout, Cin//d]``), ``mask`` float32 0/1 buffer
``[Cout, Cin, kh, kw]`` (Linear ``[Cout, Cin]``), ``bias`` Parameter or None,
``codebook_scale`` 0-dim float32 buffer once the codebook is int8-quantized, ``mask_group`` int attribute
(``g``: the output channels ``[g*i, g*i+g)`` share one N:M pattern per input position, 1 = a pattern per
channel; ``mask`` stays per weight, its ``g`` rows equal, so readers of ``mask`` need not know ``g``).  A Linear that reads a
flattened CxHxW map may cut its vectors along C instead (``in_chw = (C, H, W)``, see
:mod:`flow.compress.flatten`): its ``indices`` are then in (h, w, c) column order; ``mask`` stays in the
weight's (torch) order.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import (
    ChannelDivisibilityError,
    CodebookSizeError,
    CompressionError,
    UnsupportedLayerError,
    VectorLengthError,
)
from .kmeans import masked_kmeans
from .flatten import from_hwc, to_hwc, vector_order
from .nm import check_mask_group, check_nm, is_nm_sparse, is_shared_mask, nm_mask

__all__ = ["MVQConv2d", "MVQLinear", "check_layer_config", "mask_bits_per_group", "mask_bits",
           "codebook_diagnostics", "mvq_diagnostics"]


def mask_bits_per_group(n: int, m: int) -> int:
    """Bits to store one N:M group's pattern: ``ceil(log2(C(m, n)))`` (0 when n == m).

    The pattern is stored as its rank among the C(m, n) possible patterns (2:4 ->
    6 patterns -> 3 bits per group of 4), which is what the bitstream unpacks.
    """
    return math.ceil(math.log2(math.comb(m, n))) if n < m else 0


def mask_bits(weights: int, n: int, m: int, group: int = 1) -> int:
    """Stored mask bits of a layer of ``weights`` weights (``Cout * Cin * kh * kw``) whose N:M patterns are
    shared by ``group`` output channels: ``(Cout/g) * kh*kw*Cin/m`` patterns of :func:`mask_bits_per_group`
    bits each, i.e. ``weights // (m * g) * mask_bits_per_group(n, m)`` (``g == 1``: one per group of m)."""
    return weights // (m * group) * mask_bits_per_group(n, m)


def check_layer_config(name: str, cin: int, n_vectors: int, n: int, m: int, k: int, d: int) -> None:
    """Validate an (n, m, k, d) choice for a layer with ``cin`` input channels; raise the documented error."""
    where = f"layer {name!r}: " if name else ""
    check_nm(n, m)
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise VectorLengthError(f"{where}d={d!r} is invalid: the vector length d must be a positive integer")
    if d % m:
        raise VectorLengthError(
            f"{where}d={d} is not a multiple of m={m}: an N:M group must not straddle two vectors; "
            f"use d in {{{', '.join(str(m * i) for i in range(1, 5))}, ...}} or change m"
        )
    if cin % d:
        divisors = [v for v in range(m, cin + 1, m) if cin % v == 0]
        hint = f"pick d from {divisors}" if divisors else "leave it uncompressed (skip=...)"
        raise ChannelDivisibilityError(
            f"{where}input channels Cin={cin} are not divisible by d={d}: {hint}, "
            f"or set a per-layer override, e.g. overrides={{{name!r}: dict(d=...)}}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CodebookSizeError(f"{where}k={k!r} is invalid: the codebook size k must be a positive integer")
    if k > n_vectors:
        raise CodebookSizeError(
            f"{where}k={k} is larger than its number of vectors ({n_vectors}): use k <= {n_vectors}, "
            f"a per-layer override overrides={{{name!r}: dict(k={_pow2_floor(n_vectors)})}}, or clip_k=True"
        )


def _pow2_floor(v: int) -> int:
    return 1 << (max(1, v).bit_length() - 1)


class _CodebookLayer(nn.Module):
    """Shared state and codebook handling of :class:`MVQConv2d` and :class:`MVQLinear`."""

    codebook: nn.Parameter
    indices: Tensor
    mask: Tensor
    codebook_scale: Tensor | None
    mask_group: int = 1  # class default: layers pickled before shared masks existed

    def _init_codebook_state(self, codebook: Tensor, indices: Tensor, mask: Tensor, bias: Tensor | None,
                             n: int, m: int, mask_group: int = 1) -> None:
        self.n, self.m = int(n), int(m)
        self.k, self.d = int(codebook.shape[0]), int(codebook.shape[1])
        self.codebook = nn.Parameter(codebook.detach().to(torch.float32).clone())
        self.register_buffer("indices", indices.detach().to(torch.int64).clone())
        self.register_buffer("mask", (mask.detach() != 0).to(torch.float32).clone())
        self.bias = nn.Parameter(bias.detach().to(torch.float32).clone()) if bias is not None else None
        self.register_buffer("codebook_scale", None)
        self.codebook_bits: int | None = None  # bits of the quantized codebook entries, None = float32
        check_mask_group(mask_group, int(mask.shape[0]))
        if not is_shared_mask(self.mask, mask_group):
            raise CompressionError(f"mask_group={mask_group}: the mask's rows differ within a group of "
                                   f"{mask_group} output channels; build it with nm_mask(..., group={mask_group})")
        self.mask_group = int(mask_group)  # g output channels share one N:M pattern (1 = per channel)

    # -- codebook quantization ------------------------------------------------------------------
    @torch.no_grad()
    def quantize_codebook_(self, bits: int = 8) -> "_CodebookLayer":
        """Symmetric per-layer quantization of the codebook, in place.

        ``scale = max|codebook| / (2^(bits-1) - 1)``; ``codebook = round(codebook/scale)
        .clamp(-qmax, qmax) * scale`` (127 levels each side for int8, no -128 so the
        range is symmetric); sets ``codebook_scale``.  An all-zero codebook gets scale 1.
        Returns self.
        """
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise CompressionError(f"bits={bits!r}: codebooks are stored as int8, use 2 <= bits <= 8")
        qmax = 2 ** (bits - 1) - 1
        amax = float(self.codebook.detach().abs().max())
        scale = amax / qmax if amax > 0 else 1.0
        scale_t = torch.tensor(scale, dtype=torch.float32)
        q = torch.round(self.codebook.detach() / scale_t).clamp_(-qmax, qmax)
        self.codebook.data.copy_(q * scale_t)
        self.codebook_scale = scale_t.to(self.codebook.device)
        self.codebook_bits = bits
        return self

    def int_codebook(self) -> tuple[np.ndarray, float]:
        """The quantized codebook as (``np.int8 [k, d]``, float scale): ``codebook == q * scale``."""
        if self.codebook_scale is None:
            raise CompressionError("the codebook is not quantized yet: call quantize_codebook_() first")
        scale = self.codebook_scale.detach().cpu().to(torch.float32)
        q = torch.round(self.codebook.detach().cpu() / scale)
        return q.to(torch.int8).numpy(), float(scale)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # A quantized checkpoint carries codebook_scale; an unquantized module has that buffer as None,
        # which load_state_dict would otherwise report as an unexpected key.
        key = prefix + "codebook_scale"
        if key in state_dict and self.codebook_scale is None:
            self.codebook_scale = torch.zeros((), dtype=torch.float32)
            self.codebook_bits = 8
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- sizes ----------------------------------------------------------------------------------------------
    @property
    def n_vectors(self) -> int:
        """Number of stored codeword indices (vectors)."""
        return int(self.indices.numel())

    @property
    def method(self) -> str:
        return "mvq" if self.n < self.m else "vq"


class MVQConv2d(_CodebookLayer):
    """N:M-masked VQ Conv2d: ``forward(x [B,Cin,H,W]) = conv2d(x, decoded_weight(), bias, stride, padding)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int], codebook: Tensor, indices: Tensor, mask: Tensor,
                 bias: Tensor | None, n: int, m: int, mask_group: int = 1):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = tuple(int(v) for v in kernel_size)
        self.stride = tuple(int(v) for v in stride)
        self.padding = tuple(int(v) for v in padding)
        self.dilation, self.groups = (1, 1), 1  # the only supported values; here for conv-like readers
        self._init_codebook_state(codebook, indices, mask, bias=bias, n=n, m=m, mask_group=mask_group)
        kh, kw = self.kernel_size
        if tuple(self.indices.shape) != (self.out_channels, kh, kw, self.in_channels // self.d):
            raise CompressionError(f"indices shape {tuple(self.indices.shape)} does not match "
                                   f"[Cout, kh, kw, Cin//d] = {[self.out_channels, kh, kw, self.in_channels // self.d]}")
        if tuple(self.mask.shape) != (self.out_channels, self.in_channels, kh, kw):
            raise CompressionError(f"mask shape {tuple(self.mask.shape)} != weight shape "
                                   f"{(self.out_channels, self.in_channels, kh, kw)}")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, n: int, m: int, k: int, d: int, iters: int = 20, seed: int = 0,
                  name: str = "", mask: Tensor | None = None, mask_group: int = 1) -> "MVQConv2d":
        """Compress ``conv``: N:M mask along Cin (n of every m), masked k-means of the ``[*, d]`` vectors.

        ``mask``: a given N:M mask (0/1, the weight's shape, e.g. from
        :func:`~flow.compress.finetune.nm_prune_finetune`) instead of the magnitude mask.
        ``mask_group``: g output channels ``[g*i, g*i+g)`` share one pattern per input position, chosen by
        the summed ``|w|`` of the group (a given ``mask`` must be shared so); g must divide Cout.
        ``name`` only improves error messages.  Raises the :mod:`flow.compress.errors` classes.
        """
        _check_conv(conv, name)
        w = conv.weight.detach().to("cpu", torch.float32)
        cout, cin, kh, kw = w.shape
        nvec = cout * kh * kw * (cin // d) if _is_pos_int(d) and cin % d == 0 else 0
        check_layer_config(name, cin, nvec, n=n, m=m, k=k, d=d)
        check_mask_group(mask_group, cout, f"layer {name!r}: " if name else "")
        mask = (nm_mask(w, n, m, dim=1, group=mask_group) if mask is None
                else _given_mask(mask, w, n, m=m, name=name, group=mask_group))
        # [Cout, Cin, kh, kw] -> [Cout, kh, kw, Cin] -> [Cout*kh*kw*(Cin/d), d]: vector g = channels g*d..g*d+d-1
        vec = w.permute(0, 2, 3, 1).reshape(-1, d)
        vmask = mask.permute(0, 2, 3, 1).reshape(-1, d)
        res = masked_kmeans(vec, vmask if n < m else None, k, iters=iters, seed=seed)
        return cls(cin, cout, (kh, kw), stride=_pair(conv.stride), padding=_pair(conv.padding),
                   codebook=res.codebook, indices=res.assign.view(cout, kh, kw, cin // d), mask=mask, bias=conv.bias,
                   n=n, m=m, mask_group=mask_group)

    def decoded_weight(self) -> Tensor:
        """``mask * codebook[indices]`` as ``[Cout, Cin, kh, kw]`` (differentiable w.r.t. the codebook)."""
        kh, kw = self.kernel_size
        w = self.codebook[self.indices]  # [Cout, kh, kw, Cin/d, d]
        # .contiguous(): a permuted (channels-last) weight would make F.conv2d return a channels-last
        # output, unlike the nn.Conv2d this layer replaces (x.view(B, -1) after it would then fail)
        w = w.reshape(self.out_channels, kh, kw, self.in_channels).permute(0, 3, 1, 2).contiguous()
        return w * self.mask

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, Cin, H, W] -> [B, Cout, H', W']``."""
        return F.conv2d(x, self.decoded_weight(), self.bias, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, n:m={self.n}:{self.m}, k={self.k}, d={self.d}, "
                + (f"mask shared by {self.mask_group} output channels, " if self.mask_group > 1 else "")
                + f"bias={self.bias is not None}, codebook={'int%d' % self.codebook_bits if self.codebook_bits else 'float32'}")


class MVQLinear(_CodebookLayer):
    """N:M-masked VQ Linear: ``forward(x [..., Cin]) = linear(x, decoded_weight(), bias)``."""

    in_chw: tuple[int, int, int] | None = None   # class default: layers pickled before in_chw existed

    def __init__(self, in_features: int, out_features: int, codebook: Tensor, indices: Tensor, mask: Tensor,
                 bias: Tensor | None, n: int, m: int, in_chw: tuple[int, int, int] | None = None,
                 mask_group: int = 1):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._init_codebook_state(codebook, indices, mask, bias=bias, n=n, m=m, mask_group=mask_group)
        # (C, H, W) when the input is a flattened CxHxW map and the vectors (indices) run along C, in
        # (h, w, c) column order (flow.compress.flatten); None: along the input, torch's order
        self.in_chw = vector_order(in_chw, self.in_features, self.d, m=self.m)
        if in_chw is not None and self.in_chw is None:
            raise CompressionError(f"in_chw={tuple(in_chw)} does not split {self.in_features} inputs into "
                                   f"d={self.d} vectors along C")
        if tuple(self.indices.shape) != (self.out_features, self.in_features // self.d):
            raise CompressionError(f"indices shape {tuple(self.indices.shape)} != [Cout, Cin//d] = "
                                   f"{[self.out_features, self.in_features // self.d]}")
        if tuple(self.mask.shape) != (self.out_features, self.in_features):
            raise CompressionError(f"mask shape {tuple(self.mask.shape)} != weight shape "
                                   f"{(self.out_features, self.in_features)}")

    @classmethod
    def from_linear(cls, linear: nn.Linear, n: int, m: int, k: int, d: int, iters: int = 20, seed: int = 0,
                    name: str = "", mask: Tensor | None = None,
                    in_chw: tuple[int, int, int] | None = None, mask_group: int = 1) -> "MVQLinear":
        """Compress ``linear``: N:M mask along the input dimension, masked k-means of its ``[*, d]`` vectors.

        ``mask``: a given N:M mask (0/1, the weight's shape) instead of the magnitude mask.
        ``mask_group``: g outputs ``[g*i, g*i+g)`` share one pattern per input (see :meth:`MVQConv2d.from_conv`).
        ``in_chw``: the (C, H, W) map this Linear reads flattened (:func:`flow.compress.flatten.flatten_sources`):
        vectors and N:M groups are then cut along C, as the engine stores them; ignored when C is not a
        multiple of d and m (the quantizer then stores the layer dense, and says so).
        """
        if not isinstance(linear, nn.Linear):
            raise UnsupportedLayerError(f"{_who(name)}is a {type(linear).__name__}, not nn.Linear")
        w = linear.weight.detach().to("cpu", torch.float32)
        cout, cin = w.shape
        nvec = cout * (cin // d) if _is_pos_int(d) and cin % d == 0 else 0
        check_layer_config(name, cin, nvec, n=n, m=m, k=k, d=d)
        check_mask_group(mask_group, cout, f"layer {name!r}: " if name else "")
        chw = vector_order(in_chw, cin, d, m=m)
        wv = to_hwc(w, chw) if chw else w   # the weight in the order its vectors are cut
        if mask is None:
            mask_v = nm_mask(wv, n, m, dim=1, group=mask_group)
        else:
            mask_v = _given_mask(to_hwc(mask, chw) if chw and isinstance(mask, Tensor) and
                                 tuple(mask.shape) == tuple(w.shape) else mask, wv, n, m=m, name=name,
                                 group=mask_group)
        res = masked_kmeans(wv.reshape(-1, d), mask_v.reshape(-1, d) if n < m else None, k, iters=iters, seed=seed)
        return cls(cin, cout, res.codebook, indices=res.assign.view(cout, cin // d),
                   mask=from_hwc(mask_v, chw) if chw else mask_v, bias=linear.bias, n=n, m=m, in_chw=chw,
                   mask_group=mask_group)

    def decoded_weight(self) -> Tensor:
        """``mask * codebook[indices]`` as ``[Cout, Cin]`` in torch's column order (differentiable w.r.t. the
        codebook)."""
        w = self.codebook[self.indices].reshape(self.out_features, self.in_features)
        return (from_hwc(w, self.in_chw) if self.in_chw else w) * self.mask

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., Cin] -> [..., Cout]``."""
        return F.linear(x, self.decoded_weight(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, n:m={self.n}:{self.m}, "
                f"k={self.k}, d={self.d}, bias={self.bias is not None}, "
                + (f"mask shared by {self.mask_group} outputs, " if self.mask_group > 1 else "")
                + (f"vectors along C of a flattened {'x'.join(map(str, self.in_chw))} map, " if self.in_chw else "")
                + f"codebook={'int%d' % self.codebook_bits if self.codebook_bits else 'float32'}")


def _given_mask(mask: Tensor, w: Tensor, n: int, m: int, name: str, group: int = 1) -> Tensor:
    """A caller's N:M mask as float32 0/1 on the CPU, checked against the weight, (n, m) and its sharing by
    ``group`` output channels."""
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(w.shape):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise CompressionError(f"{_who(name)}mask shape {got} != weight shape {tuple(w.shape)}")
    mask = (mask.detach().cpu() != 0).to(torch.float32)
    if not is_nm_sparse(mask, n, m, dim=1):
        raise CompressionError(f"{_who(name)}the given mask does not keep exactly n={n} of every m={m} weights "
                               f"along Cin: build it with nm_mask(weight, {n}, {m}, dim=1)")
    if group > 1 and not is_shared_mask(mask, group):
        raise CompressionError(f"{_who(name)}the given mask is not shared by groups of mask_group={group} output "
                               f"channels: build it with nm_mask(weight, {n}, {m}, dim=1, group={group})")
    return mask


def _is_pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _who(name: str) -> str:
    return f"layer {name!r} " if name else "the layer "


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _check_conv(conv: nn.Module, name: str = "") -> None:
    """Raise :class:`UnsupportedLayerError` unless ``conv`` is a plain Conv2d the engine runs."""
    if not isinstance(conv, nn.Conv2d):
        raise UnsupportedLayerError(f"{_who(name)}is a {type(conv).__name__}, not nn.Conv2d")
    problems = []
    if conv.groups != 1:
        problems.append(f"groups={conv.groups} (grouped/depthwise conv)")
    if tuple(conv.dilation) != (1, 1):
        problems.append(f"dilation={tuple(conv.dilation)}")
    if isinstance(conv.padding, str):
        problems.append(f"padding={conv.padding!r} (give explicit integer padding)")
    if conv.padding_mode != "zeros":
        problems.append(f"padding_mode={conv.padding_mode!r}")
    if problems:
        raise UnsupportedLayerError(
            f"{_who(name)}cannot be compressed: {', '.join(problems)}; only groups=1, dilation=1, zero-padded "
            f"Conv2d vectors map onto the engine — leave it uncompressed (skip=[{name!r}])"
        )


# ----------------------------------------------------------------------------------------------------------
# diagnostics: why a codebook layer loses what it loses


@torch.no_grad()
def codebook_diagnostics(layer: _CodebookLayer, source_weight: Tensor) -> dict:
    """Reconstruction error, bit split and codebook use of one MVQ/VQ layer.

    ``source_weight`` is the weight k-means clustered (the N:M-pruned, retrained weight for
    MVQ; the float weight for VQ), in the layer's weight shape ``[Cout, Cin, kh, kw]`` /
    ``[Cout, Cin]``.  With ``D = decoded_weight()``, ``W = source_weight``, ``M = mask``:

    * ``mse_kept = sum(M (D - W)^2) / sum(M)``: mean squared error over the kept positions;
      ``rel_err_kept = sum(M (D - W)^2) / sum(M W^2)`` (0 = exact, 1 = as bad as all zeros);
      ``energy_kept = sum(M W^2)``;
    * ``rel_err_all = sum((D - W)^2) / sum(W^2)``: over every position, so the energy of the
      source at pruned positions counts too (0 there when the source was pruned already);
    * ``bits_index``, ``bits_mask``, ``bits_codebook`` (as :func:`flow.compress.compression_report`
      counts them) and the same per weight (``bpw_*``);
    * ``used``: fraction of the k codewords that at least one vector uses; ``entropy``: entropy of
      the index histogram in bits (``log2 k`` when all codewords are used equally),
      ``entropy_ratio = entropy / log2 k``: how much of each stored index carries information.
    """
    w = source_weight.detach().to("cpu", torch.float32)
    mask = layer.mask.detach().cpu()
    if tuple(w.shape) != tuple(mask.shape):
        raise CompressionError(f"source weight shape {tuple(w.shape)} != layer weight shape {tuple(mask.shape)}")
    dec = layer.decoded_weight().detach().cpu()
    err2 = (dec - w) ** 2
    kept = float(mask.sum())
    num = float((err2 * mask).sum())
    den = float((w * w * mask).sum())
    all_den = float((w * w).sum())
    counts = torch.bincount(layer.indices.detach().cpu().flatten(), minlength=layer.k).double()
    p = counts[counts > 0] / counts.sum()
    entropy = float(-(p * torch.log2(p)).sum())
    nw = mask.numel()
    bits_index = layer.n_vectors * (math.ceil(math.log2(layer.k)) if layer.k > 1 else 0)
    bits_mask = mask_bits(nw, layer.n, layer.m, layer.mask_group)
    bits_codebook = layer.k * layer.d * (layer.codebook_bits or 32)
    return dict(
        n=layer.n, m=layer.m, k=layer.k, d=layer.d, weights=nw, kept=int(kept), vectors=layer.n_vectors,
        mse_kept=num / kept if kept else 0.0, rel_err_kept=num / den if den else 0.0, energy_kept=den,
        rel_err_all=float(err2.sum()) / all_den if all_den else 0.0,
        bits_index=bits_index, bits_mask=bits_mask, bits_codebook=bits_codebook,
        bpw_index=bits_index / nw, bpw_mask=bits_mask / nw, bpw_codebook=bits_codebook / nw,
        used=float((counts > 0).sum()) / layer.k, entropy=entropy,
        entropy_ratio=entropy / math.log2(layer.k) if layer.k > 1 else 1.0,
    )


def mvq_diagnostics(model: nn.Module, source: nn.Module) -> dict[str, dict]:
    """:func:`codebook_diagnostics` of every MVQ/VQ layer of ``model`` against the same-named
    module's weight in ``source`` (the model that was compressed); ``{layer name: dict}``."""
    src = dict(source.named_modules())
    out: dict[str, dict] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, _CodebookLayer):
            ref = src.get(name)
            if ref is None or not isinstance(getattr(ref, "weight", None), Tensor):
                raise CompressionError(f"source model has no weight for layer {name!r}: pass the model that "
                                       f"was compressed")
            out[name] = codebook_diagnostics(mod, ref.weight)
    return out
