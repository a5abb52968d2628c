"""Layers as matrix products at chosen output positions (im2col), for the least-squares refit.

A Conv2d's output at position (n, y, x) is its weight ``[Cout, D]`` times a row of ``D`` input
values (``layer_rows``); a ConvTranspose2d is the ordinary convolution it equals over its
zero-spaced, padded input, with the kernel flipped and in/out swapped per group
(``transpose_weight_to_conv``); a Linear is its own row. ``conv_form_weight`` /
``set_conv_form_weight`` read and write any of them in that ``[Cout, D]`` form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_rows(layer: nn.Conv2d, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """im2col of ``x [N, C, H, W]`` at output positions ``pos [P, 3]`` (n, y, x):
    ``[P, C * kh * kw]`` in the order of ``weight.flatten(1)`` (per input channel, then kernel)."""
    if isinstance(layer.padding, str):
        raise ValueError(f"padding {layer.padding!r} is not supported")
    ph, pw = _pair(layer.padding)
    mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
    xp = F.pad(x, (pw, pw, ph, ph), mode=mode) if (ph or pw) else x
    return _gather(xp, pos, _pair(layer.kernel_size), _pair(layer.stride), _pair(layer.dilation))


def _gather(
    xp: torch.Tensor,
    pos: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    n, y, x = pos[:, 0], pos[:, 1] * stride[0], pos[:, 2] * stride[1]
    cols = [
        xp[n, :, y + i * dilation[0], x + j * dilation[1]] for i in range(kernel[0]) for j in range(kernel[1])
    ]
    return torch.stack(cols, dim=2).flatten(1)  # [P, C, kh*kw] -> [P, C*kh*kw]


def conv_transpose_as_conv(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """The zero-spaced, padded input over which a stride-1 convolution with
    ``transpose_weight_to_conv(layer.weight)`` equals ``layer(x)``."""
    if layer.padding_mode != "zeros":
        raise ValueError(f"padding_mode {layer.padding_mode!r} is not supported")
    (sh, sw), (dh, dw) = _pair(layer.stride), _pair(layer.dilation)
    (kh, kw), (ph, pw) = _pair(layer.kernel_size), _pair(layer.padding)
    oh, ow = _pair(layer.output_padding)
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
    z[:, :, ::sh, ::sw] = x
    top, left = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    return F.pad(z, (left, left + ow, top, top + oh))  # negative padding crops


def transpose_weight_to_conv(w: torch.Tensor, groups: int) -> torch.Tensor:
    """ConvTranspose weight ``[Cin, Cout/g, kh, kw]`` -> the equivalent conv weight
    ``[Cout, Cin/g, kh, kw]`` (per group: swap in/out, flip the kernel)."""
    cin, cog, kh, kw = w.shape
    return (
        w.reshape(groups, cin // groups, cog, kh, kw)
        .transpose(1, 2)
        .reshape(groups * cog, cin // groups, kh, kw)
        .flip(-1, -2)
    )


def conv_weight_to_transpose(w: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of ``transpose_weight_to_conv``."""
    cout, cig, kh, kw = w.shape
    return (
        w.flip(-1, -2)
        .reshape(groups, cout // groups, cig, kh, kw)
        .transpose(1, 2)
        .reshape(groups * cig, cout // groups, kh, kw)
    )


def layer_rows(layer: nn.Module, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The rows ``X`` whose product with the layer's (conv-form) weight gives its output at ``pos``."""
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1])[pos[:, 0]]
    if isinstance(layer, nn.ConvTranspose2d):
        xp = conv_transpose_as_conv(layer, x)
        return _gather(xp, pos, _pair(layer.kernel_size), (1, 1), _pair(layer.dilation))
    return conv_rows(layer, x, pos)  # type: ignore[arg-type]


def output_rows(out: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """A layer's output at ``pos``: ``[P, C]``."""
    if out.dim() == 4:
        return out[pos[:, 0], :, pos[:, 1], pos[:, 2]]
    return out.reshape(-1, out.shape[-1])[pos[:, 0]]


def sample_positions(out: torch.Tensor, rows: int, gen: torch.Generator) -> torch.Tensor:
    """Up to ``rows`` distinct output positions: ``[P, 3]`` (n, y, x) for 4-d outputs, ``[P, 1]``
    (flattened row) otherwise."""
    if out.dim() == 4:
        n, _, h, w = out.shape
        total = n * h * w
        flat = torch.randperm(total, generator=gen)[:rows] if total > rows else torch.arange(total)
        return torch.stack([flat // (h * w), (flat // w) % h, flat % w], dim=1)
    total = out.numel() // out.shape[-1]
    flat = torch.randperm(total, generator=gen)[:rows] if total > rows else torch.arange(total)
    return flat[:, None]


def conv_form_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as ``[Cout, D]`` rows matching ``layer_rows`` (D per group)."""
    w = layer.weight.detach()
    if isinstance(layer, nn.ConvTranspose2d):
        w = transpose_weight_to_conv(w, layer.groups)
    return w.reshape(w.shape[0], -1)


def set_conv_form_weight(layer: nn.Module, w: torch.Tensor) -> None:
    if isinstance(layer, nn.ConvTranspose2d):
        kh, kw = _pair(layer.kernel_size)
        w = conv_weight_to_transpose(w.reshape(w.shape[0], -1, kh, kw), layer.groups)
    layer.weight.data.copy_(w.reshape(layer.weight.shape))
